"""Bringing an image to a standard axis order and back, by transposes and flips only (lossless, no resampling).

A network learns the anatomy in the axis order it was trained on: a model trained on RAS-stored NIfTI files that is
given a DICOM series stored LPS sees the head mirrored twice and swaps anterior and posterior structures. Plans made
by :func:`medseg.plan.planner.make_plan` therefore bring every case, in training and in prediction, to
``Plan.orientation`` (``'RAS'``) first, the way MONAI's ``Orientationd`` and TotalSegmentator's canonical reorientation
do, and prediction maps the result back onto the input's own grid.
"""

from __future__ import annotations

import numpy as np

from medseg.io.image import Image


def _transform(affine: np.ndarray, codes: str) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))


def reorient(image: Image, codes: str) -> tuple[Image, np.ndarray]:
    """``image`` re-indexed so that its axes point closest to ``codes``, and the transform that undoes it.

    Parameters
    ----------
    image : Image
        3D, with or without a leading channel axis.
    codes : str
        Three axis codes, e.g. ``'RAS'``.

    Returns
    -------
    Image
        The same voxels and world positions, stored in the new axis order (the affine follows); ``image``
        itself when it is stored so already.
    back : ndarray
        The nibabel orientation transform for :func:`restore`.

    Examples
    --------
    >>> lps = Image(np.arange(24.0).reshape(2, 3, 4), np.diag([-1.0, -2.0, 3.0, 1.0]))
    >>> ras, back = reorient(lps, "RAS")
    >>> lps.orientation, ras.orientation, ras.shape
    ('LPS', 'RAS', (2, 3, 4))
    >>> bool(np.allclose(ras.index_to_world([[0, 0, 0]]), lps.index_to_world([[1, 2, 0]])))  # same world point
    True
    >>> bool(np.array_equal(restore(ras.array, back), lps.array))
    True
    """
    import nibabel as nib

    tf = _transform(image.affine, codes)
    if (tf[:, 0] == np.arange(len(tf))).all() and (tf[:, 1] == 1).all():  # already so: no copy of the voxels
        return image, tf
    arr = _apply(image.array, tf, image.channels_first)
    affine = image.affine @ nib.orientations.inv_ornt_aff(tf, image.shape)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(tuple(codes)),
                                           nib.orientations.io_orientation(image.affine))
    return Image(np.ascontiguousarray(arr), affine, dict(image.meta), image.channels_first), back


def _apply(array: np.ndarray, ornt: np.ndarray, channels_first: bool) -> np.ndarray:
    """A view: transposes and flips do not copy (a memory-mapped probability map stays on disk)."""
    import nibabel as nib

    if not channels_first:
        return nib.orientations.apply_orientation(array, ornt)
    return np.moveaxis(nib.orientations.apply_orientation(np.moveaxis(array, 0, -1), ornt), -1, 0)


def restore(array: np.ndarray, back: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """An array of the reoriented grid (a label map, probabilities) put back in the original axis order.

    Parameters
    ----------
    array : ndarray
        On the grid :func:`reorient` returned (a leading channel axis with ``channels_first``).
    back : ndarray
        The transform :func:`reorient` returned with it.

    Returns
    -------
    ndarray
        On the original image's grid (its shape; with the image's affine, the same world positions). A view of
        ``array`` (transposes and flips copy nothing).

    Examples
    --------
    >>> img = Image(np.zeros((2, 3, 4)), np.diag([-1.0, 1.0, 1.0, 1.0]))
    >>> ras, back = reorient(img, "RAS")
    >>> restore(np.zeros((5, 2, 3, 4)), back, channels_first=True).shape
    (5, 2, 3, 4)
    """
    return _apply(array, back, channels_first)


def reorient_onto(image: Image, ref: Image, atol: float) -> Image | None:
    """``image`` re-indexed (transposed and flipped, no resampling: :func:`reorient`) into ``ref``'s axis order when
    its voxels are the same world points stored in another orientation (within ``atol`` mm); None otherwise.

    Examples
    --------
    >>> ref = Image(np.arange(24).reshape(2, 3, 4), np.diag([1.0, 2.0, 3.0, 1.0]))
    >>> lps = reorient(ref, "LPS")[0]
    >>> bool((reorient_onto(lps, ref, 1e-3).array == ref.array).all())
    True
    >>> shifted = Image(lps.array, lps.affine + np.array([[0, 0, 0, 5.0]] + [[0, 0, 0, 0]] * 3))  # 5 mm off
    >>> print(reorient_onto(shifted, ref, 1e-3))
    None
    """
    if image.ndim != 3 or ref.ndim != 3 or sorted(image.shape) != sorted(ref.shape):
        return None
    out = reorient(image, ref.orientation)[0]
    return out if out.same_grid(ref, atol) else None


def valid_codes(codes: str) -> bool:
    """Whether ``codes`` names one direction of each world axis, e.g. ``'RAS'`` or ``'LPI'``.

    Examples
    --------
    >>> valid_codes("RAS"), valid_codes("LPS"), valid_codes("RRS"), valid_codes("RA")
    (True, True, False, False)
    """
    pairs = ("LR", "PA", "IS")
    return isinstance(codes, str) and len(codes) == 3 and sorted(
        next(i for i, p in enumerate(pairs) if c in p) if any(c in p for p in pairs) else -1 for c in codes
    ) == [0, 1, 2]
