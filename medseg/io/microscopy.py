"""Microscopy images: 2D/3D TIFF and PNG with pixel size from metadata (issue 5 fills this in).

Array axes are the file's: ``(y, x)`` or ``(z, y, x)``, channels first when present;
the affine is ``diag(spacing)`` in that order (microscopy has no patient frame).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.image import Image


def read_microscopy(path: str | os.PathLike) -> Image:
    """Read a TIFF or PNG (pixel size 1 where the file has none)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path))
        else:
            import tifffile

            arr = tifffile.imread(path)
    except Exception as exc:
        raise InputError(f"cannot read image ({exc})", path=path) from exc
    channels_first = False
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and path.suffix.lower() == ".png":
        arr = np.moveaxis(arr, -1, 0)
        channels_first = True
    ndim = arr.ndim - int(channels_first)
    aff = np.eye(4)
    return Image(arr, aff, {"source": str(path), "format": path.suffix.lower().lstrip("."), "spacing_from_file": False},
                 channels_first) if ndim in (2, 3) else (_ for _ in ()).throw(
        InputError(f"expected a 2D or 3D image, got shape {arr.shape}", path=path))


def write_microscopy(image: Image, path: str | os.PathLike) -> None:
    """Write TIFF (ImageJ-compatible, with spacing) or PNG."""
    path = Path(path)
    arr = image.array
    if path.suffix.lower() == ".png" or str(path).lower().endswith(".png"):
        import imageio.v3 as iio

        iio.imwrite(path, np.moveaxis(arr, 0, -1) if image.channels_first else arr, extension=".png")
    else:
        import tifffile

        tifffile.imwrite(path, arr, imagej=arr.dtype in (np.uint8, np.uint16, np.float32))
