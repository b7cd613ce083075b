"""Slice geometry of a DICOM series: sort, check regularity, build the affine, undo gantry tilt.

Pure functions on arrays (positions in DICOM's LPS frame, mm); the DICOM reader turns their
``ValueError`` into an ``InputError`` that names the series.
"""

from __future__ import annotations

import numpy as np

from medseg.io.image import LPS_TO_RAS

#: relative tolerance on slice steps: a step that differs from the median by more than this
#: (or 0.02 mm, whichever is larger) means a missing, duplicated or misplaced slice.
STEP_RTOL = 0.01
STEP_ATOL = 0.02
#: in-plane drift of the stack (mm over the whole stack) above which the series counts as tilted;
#: IPP is usually written with 3-6 decimals, so real untilted stacks drift by far less.
TILT_ATOL = 0.01
TILT_RTOL = 1e-3  # ... or this fraction of the stack length (about 0.06 degrees)


def slice_axes(iop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction, column direction and slice normal (unit vectors, LPS) from ImageOrientationPatient.

    Examples
    --------
    >>> r, c, n = slice_axes([1, 0, 0, 0, 1, 0])
    >>> n
    array([0., 0., 1.])
    """
    iop = np.asarray(iop, dtype=float).reshape(2, 3)
    if not np.all(np.isfinite(iop)):
        raise ValueError("ImageOrientationPatient is not finite")
    norms = np.linalg.norm(iop, axis=1)
    if np.any(norms < 1e-6):
        raise ValueError(f"ImageOrientationPatient has a zero vector ({iop.ravel().tolist()})")
    row, col = iop[0] / norms[0], iop[1] / norms[1]
    normal = np.cross(row, col)
    nn = np.linalg.norm(normal)
    if nn < 0.99:  # rows and columns must be perpendicular (to ~8 degrees)
        raise ValueError(f"ImageOrientationPatient row and column are not perpendicular ({iop.ravel().tolist()})")
    return row, col, normal / nn


def sort_positions(positions, normal) -> np.ndarray:
    """Indices that sort slice positions along the slice normal (ascending, like ITK/GDCM).

    Examples
    --------
    >>> sort_positions([[0, 0, 5], [0, 0, -1], [0, 0, 2]], [0, 0, 1])
    array([1, 2, 0])
    """
    d = np.asarray(positions, dtype=float) @ np.asarray(normal, dtype=float)
    return np.argsort(d, kind="stable")


def stack_geometry(positions, normal, fallback_spacing: float = 1.0) -> tuple[float, np.ndarray]:
    """Check that sorted slice positions form a regular stack; return (spacing, in-plane drift).

    Parameters
    ----------
    positions : (N, 3) array
        ImagePositionPatient of each slice, already sorted along ``normal``.
    normal : (3,) array
        Unit slice normal.
    fallback_spacing : float
        Spacing of a single-slice stack (SpacingBetweenSlices or SliceThickness).

    Returns
    -------
    spacing : float
        Distance between slices along the normal (mm).
    drift : (N, 3) array
        In-plane offset of each slice from the line through the first slice along the normal;
        zero for an untilted stack (see :func:`is_tilted`).

    Raises
    ------
    ValueError
        Duplicate positions (several slices at one place: a 4D series), missing slices or
        irregular spacing; the message says which and where.
    """
    p = np.asarray(positions, dtype=float)
    n = np.asarray(normal, dtype=float)
    if len(p) == 1:
        return float(fallback_spacing), np.zeros((1, 3))
    along = (p - p[0]) @ n
    steps = np.diff(along)
    dup = int(np.sum(steps < 1e-4))
    if dup:
        raise ValueError(f"{dup + 1} slices share a position: several volumes in one series "
                         "(4D: echoes, phases or time points) or duplicated files")
    med = float(np.median(steps))
    bad = np.abs(steps - med) > max(STEP_ATOL, STEP_RTOL * med)
    if np.any(bad):
        k = int(np.argmax(np.abs(steps - med)))
        kind = "missing slices" if steps[k] > 1.5 * med else "inconsistent slice spacing"
        raise ValueError(f"{kind}: gap of {steps[k]:.4g} mm between slices {k} and {k + 1} "
                         f"where the series steps {med:.4g} mm ({int(bad.sum())} irregular gaps)")
    spacing = float(along[-1] / (len(p) - 1))
    drift = (p - p[0]) - along[:, None] * n[None, :]
    return spacing, drift


def is_tilted(drift, spacing: float) -> bool:
    """Whether the in-plane drift of a stack is a real gantry tilt rather than rounding."""
    drift = np.asarray(drift, dtype=float)
    total = float(np.linalg.norm(drift[-1]))
    length = spacing * (len(drift) - 1)
    return total > max(TILT_ATOL, TILT_RTOL * length)


def tilt_degrees(drift, spacing: float) -> float:
    """Gantry tilt angle implied by the drift of the last slice (degrees)."""
    drift = np.asarray(drift, dtype=float)
    length = spacing * (len(drift) - 1)
    return float(np.degrees(np.arctan2(np.linalg.norm(drift[-1]), length))) if length else 0.0


def lps_affine(row, col, pixel_spacing, first_position, normal, slice_spacing) -> np.ndarray:
    """4x4 index-to-LPS affine of a stack; index axes are (column i, row j, slice k).

    ``pixel_spacing`` is DICOM's PixelSpacing: (distance between rows, distance between columns).
    """
    aff = np.eye(4)
    aff[:3, 0] = np.asarray(row, float) * float(pixel_spacing[1])
    aff[:3, 1] = np.asarray(col, float) * float(pixel_spacing[0])
    aff[:3, 2] = np.asarray(normal, float) * float(slice_spacing)
    aff[:3, 3] = np.asarray(first_position, float)
    return aff


def ras_affine(*args, **kwargs) -> np.ndarray:
    """:func:`lps_affine` converted to medseg's RAS convention."""
    return LPS_TO_RAS @ lps_affine(*args, **kwargs)


def untilt(volume: np.ndarray, drift, row, col, pixel_spacing, order: int = 1) -> np.ndarray:
    """Resample a tilted stack onto the orthogonal grid of its first slice.

    Each slice ``k`` of ``volume`` (indexed ``[i, j, k]``) is shifted in-plane to cancel its drift,
    so that voxel ``(i, j, k)`` lies at ``first + i*dx*row + j*dy*col + k*dz*normal``.
    Linear interpolation; points that fall outside a slice get the volume's minimum.
    """
    from scipy import ndimage

    drift = np.asarray(drift, dtype=float)
    di = drift @ np.asarray(row, float) / float(pixel_spacing[1])
    dj = drift @ np.asarray(col, float) / float(pixel_spacing[0])
    out_dtype = np.float32 if np.issubdtype(volume.dtype, np.integer) or volume.dtype == np.float32 else volume.dtype
    out = np.empty(volume.shape, dtype=out_dtype)
    cval = float(volume.min()) if volume.size else 0.0
    for k in range(volume.shape[2]):
        # output (i, j) samples input (i - di, j - dj); ndimage.shift computes out[x] = in[x - shift]
        out[:, :, k] = ndimage.shift(volume[:, :, k].astype(out_dtype), (di[k], dj[k]), order=order,
                                     mode="constant", cval=cval)
    return out
