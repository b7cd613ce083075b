"""Label map → reference grid by nearest neighbour through world coordinates.

Never by assuming axes: every target voxel centre is placed in the patient (from the target's own
geometry, slice by slice for DICOM series, so tilted or unevenly spaced series are exact), mapped
into the label map's continuous index space with the inverse of its affine, and rounded.
"""

from __future__ import annotations

import warnings

import numpy as np

from medseg.errors import InputError
from medseg.io.image import LPS_TO_RAS, Image

#: a target voxel centre may lie this far (in label voxels) outside the label map's voxel extent
COVER_TOL = 1e-3
#: target-index offset that breaks exact nearest-neighbour ties in the target's (world) direction
TIE_NUDGE = 1e-6


def _sample_slice(label: Image, slice_ras: np.ndarray, size_ij: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Nearest-neighbour sample of ``label`` at the voxel centres of one target slice.

    ``slice_ras`` maps ``(i, j, 0, 1)`` of the target slice to RAS. Returns the values and the number
    of centres outside the label map's voxel extent (those get 0).
    """
    ni, nj = size_ij
    ii, jj = np.meshgrid(np.arange(ni, dtype=float), np.arange(nj, dtype=float), indexing="ij")
    m = np.linalg.inv(label.affine) @ slice_ras  # target (i, j, 0, 1) -> label continuous index
    # a target centre exactly half-way between two label voxels goes to the one further along the target's
    # own axes (a world direction), not along the label's index axes: the same map stored flipped or
    # permuted gives the same result
    m = m.copy()
    m[:3, 3] += m[:3, :3] @ (np.array([1.0, 1.0, 1.0]) * TIE_NUDGE)
    shape = np.array(label.shape, float)
    out = np.zeros((ni, nj), label.array.dtype)
    inside = np.ones((ni, nj), bool)
    idx = []
    for a in range(3):
        c = m[a, 0] * ii + m[a, 1] * jj + m[a, 3]
        inside &= (c >= -0.5 - COVER_TOL) & (c <= shape[a] - 0.5 + COVER_TOL)
        idx.append(np.clip(np.floor(c + 0.5).astype(np.int64), 0, int(shape[a]) - 1))
    out[inside] = label.array[idx[0][inside], idx[1][inside], idx[2][inside]]
    return out, int((~inside).sum())


def resample_to_slices(label: Image, slice_matrices_ras, size_ij: tuple[int, int], *, require_cover: bool = True,
                       what: str = "the reference series") -> np.ndarray:
    """Sample ``label`` on a stack of target slices (one RAS matrix per slice).

    Returns an array ``[i, j, k]``. With ``require_cover``, target voxel centres outside the label map
    raise ``InputError`` (a prediction that does not cover the series would silently lose structures).

    Parameters
    ----------
    label : Image
        3D single-channel label map.
    slice_matrices_ras : sequence of (4, 4) array
        Per target slice, the matrix mapping ``(i, j, 0, 1)`` to RAS world.
    size_ij : (int, int)
        Number of target voxels along i and j.
    require_cover : bool
        Refuse target voxels outside the label map (else they get 0).
    what : str
        The target, as error messages name it.

    Returns
    -------
    ndarray, shape (size_ij[0], size_ij[1], len(slice_matrices_ras))

    Examples
    --------
    >>> lab = Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), np.eye(4))
    >>> m = np.eye(4); m[2, 3] = 1.0  # the plane k = 1 of the label map
    >>> resample_to_slices(lab, [m], (2, 2))[..., 0].tolist()
    [[1, 3], [5, 7]]
    """
    arr, outside = _sample_slices(label, slice_matrices_ras, size_ij)
    if require_cover and outside:
        raise InputError(f"the label map does not cover {what}: {outside} of {arr.size} voxel centres lie outside it",
                         path=label.meta.get("source"))
    return arr


def _sample_slices(label: Image, slice_matrices_ras, size_ij: tuple[int, int]) -> tuple[np.ndarray, int]:
    """:func:`resample_to_slices`'s array (0 outside the label map) and how many centres lie outside it."""
    if label.channels_first or label.ndim != 3:
        raise InputError(f"expected a 3D single-channel label map, got shape {label.array.shape}",
                         path=label.meta.get("source"))
    slices, outside = [], 0
    for m in slice_matrices_ras:
        s, n_out = _sample_slice(label, np.asarray(m, float), size_ij)
        slices.append(s)
        outside += n_out
    return np.stack(slices, axis=-1), outside


def resample_to_grid(label: Image, affine: np.ndarray, shape: tuple[int, int, int], *,
                     require_cover: bool = True) -> Image:
    """Nearest-neighbour resampling of ``label`` onto the regular grid (``affine``, ``shape``).

    Examples
    --------
    >>> lab = Image(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), np.eye(4))
    >>> flipped = np.diag([-1.0, 1, 1, 1]); flipped[0, 3] = 1.0  # same voxels, i axis reversed
    >>> resample_to_grid(lab, flipped, (2, 2, 2)).array[:, 0, 0].tolist()
    [4, 0]
    """
    affine = np.asarray(affine, float)
    if label.shape == tuple(shape) and np.allclose(label.affine, affine, atol=1e-4):
        return label.with_array(label.array.copy())
    mats = []
    for k in range(shape[2]):
        m = affine.copy()
        m[:3, 3] = affine[:3, 3] + k * affine[:3, 2]
        mats.append(m)
    arr = resample_to_slices(label, mats, (shape[0], shape[1]), require_cover=require_cover, what="the target grid")
    return Image(arr, affine.copy(), dict(label.meta))


def resample_to_reference(label: Image, ref, require_cover: bool = True) -> np.ndarray:
    """Label map values at every voxel centre of a :class:`~medseg.export.reference.ReferenceSeries`.

    Returns an array ``[i, j, k]`` = (column, row, slice) in the reference's slice order. Exact copy
    when the label map already lies on the series grid.

    Parameters
    ----------
    label : Image
        3D single-channel label map.
    ref : ReferenceSeries
    require_cover : bool
        Refuse series voxels outside the label map (else they get 0).

    Returns
    -------
    ndarray, shape ``ref.shape``

    Examples
    --------
    >>> from pydicom import Dataset
    >>> from medseg.export.reference import ReferenceSeries
    >>> ref = ReferenceSeries("ct", [Dataset(), Dataset()], [], 1, 2, np.array([1.0, 0, 0]), np.array([0.0, 1, 0]),
    ...                       (1.0, 1.0), np.array([[0.0, 0, 0], [0, 0, 1]]))  # 2 columns, 1 row, 2 slices
    >>> flip = np.diag([-1.0, 1, 1, 1]); flip[0, 3] = 1  # label index i lies at series column 1 - i
    >>> lab = Image(np.arange(4, dtype=np.uint8).reshape(2, 1, 2), ref.grid_affine() @ flip)
    >>> resample_to_reference(lab, ref).tolist()
    [[[2, 3]], [[0, 1]]]
    """
    if label.channels_first or label.ndim != 3:
        raise InputError(f"expected a 3D single-channel label map, got shape {label.array.shape}",
                         path=label.meta.get("source"))
    if label.shape == ref.shape and ref.is_regular() and np.allclose(label.affine, ref.grid_affine(), atol=1e-3):
        return np.asarray(label.array).copy()
    mats = [LPS_TO_RAS @ ref.slice_lps(k) for k in range(len(ref.datasets))]
    if label.shape == ref.shape and np.allclose(label.affine, ref.untilted_affine(), atol=1e-3):
        # a prediction on the grid `convert --allow-tilt` made of this tilted series: the corners of the slices
        # that the resampling cut off were never predicted, so they are background, said once
        arr, outside = _sample_slices(label, mats, (ref.columns, ref.rows))
        if outside:
            warnings.warn(f"{outside} of {arr.size} voxel centres of the tilted series lie outside the label map's "
                          "untilted grid (the slice corners `convert --allow-tilt` cut off): exported as background")
        return arr
    return resample_to_slices(label, mats, (ref.columns, ref.rows), require_cover=require_cover,
                              what="the reference series")
