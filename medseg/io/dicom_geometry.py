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

    Examples
    --------
    >>> spacing, drift = stack_geometry([[0, 0, 0], [0, 0, 2], [0, 0, 4]], [0, 0, 1])
    >>> spacing, drift.tolist()
    (2.0, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> stack_geometry([[0, 0, 0], [0, 0, 2], [0, 0, 4], [0, 0, 8]], [0, 0, 1])
    Traceback (most recent call last):
    ...
    ValueError: missing slices: gap of 4 mm between slices 2 and 3 where the series steps 2 mm (1 irregular gaps)
    """
    p = np.asarray(positions, dtype=float)
    n = np.asarray(normal, dtype=float)
    if len(p) == 1:
        return float(fallback_spacing), np.zeros((1, 3))
    along = (p - p[0]) @ n
    steps = np.diff(along)
    same = steps < 1e-4
    if np.any(same):
        # slices at shared positions: each run of equal steps is one position holding (run length + 1) slices
        shared = int(np.sum(same[1:] & ~same[:-1]) + same[0])
        raise ValueError(f"{int(same.sum()) + shared} slices share a position with another ({shared} position"
                         f"{'s hold' if shared > 1 else ' holds'} several): several volumes in one series "
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
    """Whether the in-plane drift of a stack is a real gantry tilt rather than rounding.

    Parameters
    ----------
    drift : (N, 3) array
        In-plane offset of each slice, as :func:`stack_geometry` returns it (mm).
    spacing : float
        Slice spacing along the normal (mm).

    Returns
    -------
    bool
        True when the last slice drifts by more than ``TILT_ATOL`` mm and ``TILT_RTOL`` of the stack length.

    Examples
    --------
    >>> is_tilted([[0, 0, 0], [0, 1, 0], [0, 2, 0]], 2.0), is_tilted([[0, 0, 0], [0, 0.001, 0]], 2.0)
    (True, False)
    """
    drift = np.asarray(drift, dtype=float)
    total = float(np.linalg.norm(drift[-1]))
    length = spacing * (len(drift) - 1)
    return total > max(TILT_ATOL, TILT_RTOL * length)


def tilt_degrees(drift, spacing: float) -> float:
    """Gantry tilt angle implied by the drift of the last slice (degrees).

    Parameters
    ----------
    drift : (N, 3) array
        In-plane offset of each slice (mm), as :func:`stack_geometry` returns it.
    spacing : float
        Slice spacing along the normal (mm).

    Returns
    -------
    float
        ``atan(|drift[-1]| / stack length)`` in degrees; 0 for a single slice.

    Examples
    --------
    >>> tilt_degrees([[0, 0, 0], [0, 1, 0], [0, 2, 0]], 1.0)  # 2 mm sideways over a 2 mm long stack
    45.0
    """
    drift = np.asarray(drift, dtype=float)
    length = spacing * (len(drift) - 1)
    return float(np.degrees(np.arctan2(np.linalg.norm(drift[-1]), length))) if length else 0.0


def lps_affine(row, col, pixel_spacing, first_position, normal, slice_spacing) -> np.ndarray:
    """4x4 index-to-LPS affine of a stack; index axes are (column i, row j, slice k).

    Parameters
    ----------
    row, col : (3,) array
        Unit vectors of increasing column index (along a row) and of increasing row index (ImageOrientationPatient).
    pixel_spacing : (float, float)
        DICOM's PixelSpacing: (distance between rows, distance between columns).
    first_position : (3,) array
        ImagePositionPatient of the first slice.
    normal : (3,) array
        Unit slice normal.
    slice_spacing : float
        Distance between slices along ``normal``.

    Returns
    -------
    ndarray, shape (4, 4)

    Examples
    --------
    >>> a = lps_affine([1, 0, 0], [0, 1, 0], (0.5, 0.8), [10, 20, 30], [0, 0, 1], 3.0)
    >>> a.diagonal().tolist(), a[:3, 3].tolist()
    ([0.8, 0.5, 3.0, 1.0], [10.0, 20.0, 30.0])
    """
    aff = np.eye(4)
    aff[:3, 0] = np.asarray(row, float) * float(pixel_spacing[1])
    aff[:3, 1] = np.asarray(col, float) * float(pixel_spacing[0])
    aff[:3, 2] = np.asarray(normal, float) * float(slice_spacing)
    aff[:3, 3] = np.asarray(first_position, float)
    return aff


def ras_affine(*args, **kwargs) -> np.ndarray:
    """:func:`lps_affine` converted to medseg's RAS convention (the first two world axes negated).

    Examples
    --------
    >>> ras_affine([1, 0, 0], [0, 1, 0], (0.5, 0.8), [10, 20, 30], [0, 0, 1], 3.0)[:3, 3].tolist()
    [-10.0, -20.0, 30.0]
    """
    return LPS_TO_RAS @ lps_affine(*args, **kwargs)


def untilt(volume: np.ndarray, drift, row, col, pixel_spacing, order: int = 1) -> np.ndarray:
    """Resample a tilted stack onto the orthogonal grid of its first slice.

    Each slice ``k`` of ``volume`` (indexed ``[i, j, k]``) is shifted in-plane to cancel its drift,
    so that voxel ``(i, j, k)`` lies at ``first + i*dx*row + j*dy*col + k*dz*normal``.
    Linear interpolation; points that fall outside a slice get the volume's minimum.

    Parameters
    ----------
    volume : ndarray, shape (columns, rows, slices)
        The stack, indexed ``[i, j, k]``.
    drift : (N, 3) array
        In-plane offset of each slice (mm, LPS), as :func:`stack_geometry` returns it.
    row, col : (3,) array
        Unit vectors of the column (i) and row (j) index axes.
    pixel_spacing : (float, float)
        DICOM's PixelSpacing (between rows, between columns).
    order : int
        Spline order of :func:`scipy.ndimage.shift` (1: linear).

    Returns
    -------
    ndarray
        Same shape; float32 for integer or float32 input, else ``volume``'s dtype.

    Examples
    --------
    >>> vol = np.zeros((4, 1, 2)); vol[1, 0, :] = 1  # a bright pixel at i = 1 in both slices
    >>> drift = [[0, 0, 0], [1, 0, 0]]  # slice 1 lies 1 mm further along its rows
    >>> untilt(vol, drift, [1, 0, 0], [0, 1, 0], (1.0, 1.0))[:, 0, :].T.tolist()
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
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
