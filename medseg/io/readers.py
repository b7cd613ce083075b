"""``read_image`` / ``write_image``: one entry point for every supported format.

First version (skeleton): NIfTI through nibabel, NRRD/MHA through SimpleITK, TIFF/PNG through
``medseg.io.microscopy``, DICOM folders through ``medseg.io.dicom``. Hardened in issue 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, full_suffix
from medseg.io.image import Image

NIFTI = (".nii", ".nii.gz")
ITK = (".nrrd", ".seg.nrrd", ".mha", ".mhd")
MICROSCOPY = (".tif", ".tiff", ".png")
WRITABLE = NIFTI + ITK + MICROSCOPY


def read_image(path: str | os.PathLike, series: str | int | None = None) -> Image:
    """Read a file (NIfTI, NRRD, MHA/MHD, TIFF, PNG) or a DICOM folder into an ``Image``.

    ``series`` picks one DICOM series (UID or index) when a folder holds several.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_dir():
        from medseg.io.dicom import load_series

        return load_series(path, series=series)
    suffix = full_suffix(path)
    if suffix in NIFTI:
        import nibabel as nib

        try:
            nimg = nib.load(str(path))
            return Image.from_nibabel(nimg, meta={"source": str(path), "format": "nifti"})
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise InputError(f"cannot read NIfTI ({exc})", path=path) from exc
    if suffix in ITK:
        import SimpleITK as sitk

        try:
            simg = sitk.ReadImage(str(path))
        except Exception as exc:
            raise InputError(f"cannot read image ({str(exc).strip().splitlines()[-1]})", path=path) from exc
        return Image.from_sitk(simg, meta={"source": str(path), "format": suffix.lstrip(".")})
    if suffix in MICROSCOPY:
        from medseg.io.microscopy import read_microscopy

        return read_microscopy(path)
    if suffix in (".dcm", "") and path.is_file():
        from medseg.io.dicom import load_series

        return load_series(path, series=series)
    raise InputError(f"unsupported format '{suffix or path.name}'", path=path)


def write_image(image: Image, path: str | os.PathLike, protect=()) -> Path:
    """Write ``image`` atomically; the format follows the suffix. Returns the path written."""
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in WRITABLE:
        raise InputError(f"cannot write format '{suffix}' (use one of {', '.join(WRITABLE)})", path=path)
    with atomic_path(path, protect=protect) as tmp:
        if suffix in NIFTI:
            import nibabel as nib

            nib.save(image.to_nibabel(), str(tmp))
        elif suffix in ITK:
            import SimpleITK as sitk

            sitk.WriteImage(image.to_sitk(), str(tmp), useCompression=True)
        else:
            from medseg.io.microscopy import write_microscopy

            write_microscopy(image, tmp)
    return path


def label_dtype(max_label: int) -> np.dtype:
    """Smallest unsigned dtype for a label map."""
    return np.dtype(np.uint8) if max_label < 256 else np.dtype(np.uint16) if max_label < 65536 else np.dtype(np.uint32)
