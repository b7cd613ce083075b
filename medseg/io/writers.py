"""``write_image``: atomic writing in every writable format, keeping every value and the geometry or refusing in
one line (:func:`storable`).
"""

from __future__ import annotations

import os
import tempfile  # noqa: F401 (the examples')
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, full_suffix
from medseg.io.image import Image
from medseg.io.readers import _ITK_IO, ITK, MICROSCOPY, NIFTI, WRITABLE, read_image  # noqa: F401 (read_image: the examples')

__all__ = ["write_image", "write_unchecked", "storable", "label_dtype"]


def write_image(image: Image, path: str | os.PathLike, protect=()) -> Path:
    """Write ``image`` atomically; the format follows the suffix. Returns the path written.

    Parameters
    ----------
    image : Image
    path : path
        Its suffix picks the format: NIfTI, NRRD, MHA, TIFF or PNG (``WRITABLE``).
    protect : iterable of path
        Input paths that must not be overwritten.

    Examples
    --------
    >>> img = Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> back = read_image(write_image(img, Path(tempfile.mkdtemp()) / "ct.nrrd"))
    >>> back.spacing, back.array.dtype
    ((2.0, 2.0, 3.0), dtype('int16'))
    """
    if isinstance(image, np.ndarray):  # a bare array has no geometry to write (was: AttributeError 'meta')
        raise TypeError("write_image needs a medseg.io.Image (the array with its affine), not a bare array"
                        ": wrap it as Image(array, affine)")
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in WRITABLE:
        raise InputError(f"cannot write format '{suffix or path.name}' (use one of {', '.join(WRITABLE)})", path=path)
    with atomic_path(path, protect=protect) as tmp:
        write_unchecked(image, tmp, suffix)
    return path


def write_unchecked(image: Image, path: Path, suffix: str) -> None:
    """Write ``image`` to ``path`` in the format of ``suffix`` (no atomicity: callers use ``atomic_path``).

    Examples
    --------
    >>> p = Path(tempfile.mkdtemp()) / "a.nii"
    >>> write_unchecked(Image(np.ones((2, 3, 4), np.uint8), np.eye(4)), p, ".nii")
    >>> read_image(p).shape
    (2, 3, 4)
    """
    image = storable(image, suffix)
    if suffix in NIFTI:
        import nibabel as nib

        nib.save(image.to_nibabel(), str(path))
    elif suffix in ITK:
        import SimpleITK as sitk

        writer = sitk.ImageFileWriter()  # the ImageIO named from ``suffix``, whatever the case of the path's
        writer.SetImageIO(_ITK_IO[suffix])
        writer.SetFileName(str(path))
        writer.UseCompressionOn()
        writer.Execute(image.to_sitk())
    else:
        from medseg.io.microscopy import write_microscopy

        write_microscopy(image, path)


def storable(image: Image, suffix: str) -> Image:
    """``image`` as the format of ``suffix`` holds it, with the same values and the same geometry, or an
    ``InputError`` saying why it cannot.

    NIfTI, NRRD and MHA readers take positions in mm: a microscopy image in µm is written in mm. TIFF and PNG keep
    only a voxel size, in µm: an image in mm is written in µm, and refused when it has an origin or an orientation
    (they would be lost); they hold no 64-bit integers beyond int32 (narrower types are used where the values fit),
    and PNG holds only 2D images of bool, uint8 or uint16 with up to 4 channels.

    Examples
    --------
    >>> storable(Image(np.zeros((2, 3)), np.diag([0.5, 0.5, 1, 1])), ".tif").spacing  # mm -> µm
    (500.0, 500.0)
    >>> storable(Image(np.zeros((2, 3, 4)), np.diag([-1.0, -1, 1, 1])), ".tif")
    Traceback (most recent call last):
    medseg.errors.InputError: a TIFF/PNG keeps only the voxel size: this image's origin and orientation would be...
    """
    unit, arr, cf, n = image.meta.get("unit"), image.array, image.channels_first, image.ndim
    if suffix not in MICROSCOPY:
        if unit != "um":
            return image
        affine = image.affine.copy()
        affine[:3, [*range(n), 3]] *= 1e-3  # the index axes and the origin (a 2D image's third column stays)
        return Image(arr, affine, {k: v for k, v in image.meta.items() if k != "unit"}, cf)
    if arr.dtype == np.float16:  # tifffile's ImageJ and OME-XML writers have no half floats
        arr = arr.astype(np.float32)
    if arr.dtype in (np.int64, np.uint64) and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        dt = np.dtype(np.int32) if lo < 0 else label_dtype(hi)
        if dt.itemsize == 8 or lo < np.iinfo(dt).min or hi > np.iinfo(dt).max:
            raise InputError(f"a TIFF/PNG holds no 64-bit integers (values {lo} to {hi}): write .nrrd or .mha")
        arr = arr.astype(dt)
    if suffix == ".png" and (n != 2 or image.num_channels > 4 or arr.dtype not in (bool, np.uint8, np.uint16)):
        raise InputError(f"a PNG holds 2D bool/uint8/uint16 images with up to 4 channels, not this {n}D "
                         f"{arr.dtype} image with {image.num_channels} channel(s): write .tif")
    affine = image.affine
    if unit is None:  # patient frame, mm
        size = np.diag(affine)[:n]
        if not np.allclose(affine[:3, [*range(n), 3]], np.eye(4)[:3, [*range(n), 3]] * [*size, 0], atol=1e-9) \
                or np.any(size <= 0):
            raise InputError("a TIFF/PNG keeps only the voxel size: this image's origin and orientation would be lost "
                             "(write .nii.gz, .nrrd or .mha)")
        affine, unit = np.diag([*(size * 1000.0), *[1.0] * (4 - n)]), "um"
    return Image(arr, affine, {**image.meta, "unit": unit}, cf)


def label_dtype(max_label: int) -> np.dtype:
    """Smallest unsigned dtype for a label map.

    Examples
    --------
    >>> label_dtype(42), label_dtype(300), label_dtype(2**33)
    (dtype('uint8'), dtype('uint16'), dtype('uint64'))
    """
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)
