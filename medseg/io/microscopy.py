"""Microscopy images: 2D/3D TIFF and PNG with the pixel size from the file's metadata.

Array axes are the file's: ``(y, x)`` or ``(z, y, x)``, channels first when present; the affine is
``diag(spacing)`` in that order (microscopy has no patient frame), spacing in micrometres when the
file says so (``meta["unit"] == "um"``) and 1 "pixel" otherwise.

Pixel size, first found wins: OME-XML ``PhysicalSizeX/Y/Z``; ImageJ ``spacing`` + ``unit`` (z) with
the TIFF resolution tags (x, y); TIFF ``XResolution``/``YResolution`` with a centimetre or inch unit. An inch
resolution of at most 1,000 dpi (the 72, 96 or 300 dpi that image editors write; a pixel of 25 µm or more) is a
print setting, not a microscope's calibration, and is ignored.

A PNG gives its stored values: 16-bit samples (colour and alpha too), a colour palette's indices (a label map's ids,
or an ImageJ LUT image's values) rather than its display colours.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.image import Image
from medseg.io.limits import check_fits
from medseg.io.png import read_png

_TO_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0,
          "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "\\u00B5m": 1.0, "\\u00b5m": 1.0}
_CHANNEL_AXES = "CS"
_MAX_CALIBRATED_DPI = 1000.0  # inch resolutions up to this are print settings (see the module docstring)
_Z_AXES = "ZQI"


def _unit_scale(unit) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip()
    return _TO_UM.get(u, _TO_UM.get(u.lower()))


def _tiff_spacing(tif) -> tuple[dict, str]:
    """Pixel size per axis letter ('Z', 'Y', 'X') in µm from OME, ImageJ or resolution tags."""
    sp: dict = {}
    source = "none"
    if tif.is_ome and tif.ome_metadata:
        pix = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", tif.ome_metadata)
        if pix:
            for ax in "XYZ":
                m = re.search(rf'PhysicalSize{ax}="([^"]+)"', pix.group(0))
                u = re.search(rf'PhysicalSize{ax}Unit="([^"]+)"', pix.group(0))
                if m:
                    scale = _unit_scale(u.group(1)) if u else 1.0
                    if scale and float(m.group(1)) > 0:
                        sp[ax] = float(m.group(1)) * scale
            source = "ome" if sp else source
    page = tif.pages[0]
    tags = page.tags
    if not ("X" in sp and "Y" in sp) and "XResolution" in tags:  # each axis the OME-XML left out
        resunit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        ij = tif.imagej_metadata or {}
        scale = {3: 1e4, 2: 25400.0}.get(resunit)
        x_res = tags["XResolution"].value
        if resunit == 2 and x_res[1] > 0 and x_res[0] <= _MAX_CALIBRATED_DPI * x_res[1]:
            scale = None
        if resunit == 1 and ij.get("unit"):  # ImageJ: resolution is pixels per `unit`
            scale = _unit_scale(ij["unit"])
        found = False
        for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
            if ax not in sp and tag in tags and scale:
                num, den = tags[tag].value
                if num > 0 and den > 0 and not (num == den == 1 and resunit != 1):
                    sp[ax], found = scale * den / num, True
        if found and source == "none":
            source = "imagej" if (resunit == 1 and ij.get("unit")) else "tiff-resolution"
    ij = tif.imagej_metadata or {}
    if "Z" not in sp and ij:
        scale = _unit_scale(ij.get("unit"))
        if scale:  # ImageJ leaves out "spacing=" when the voxel depth is 1 (in its unit)
            sp["Z"] = float(ij.get("spacing") or 1.0) * scale
            source = "imagej" if source == "none" else source
        elif ij.get("spacing"):  # uncalibrated ("pixel"): only the ratio of the z step to the pixel is known
            sp["Zpx"] = float(ij["spacing"])
    return sp, source


class _Errors(logging.Handler):
    """Collects the errors tifffile logs instead of raising (a stack cut short can come back as its first page)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def _tifffile_errors():
    """While the block runs, tifffile's records reach the handler it yields (whatever level the caller set on its
    logger), and not stderr: Python prints a record itself only when no handler takes it."""
    errors, logger = _Errors(), logging.getLogger("tifffile")
    level = logger.level
    logger.addHandler(errors)
    logger.setLevel(logging.WARNING)
    try:
        yield errors
    finally:
        logger.removeHandler(errors)
        logger.setLevel(level)


def _time_axis(shape, axes: str, path: Path) -> int | None:
    """Index of a single-frame time axis to drop (None without one); a time series is refused."""
    if "T" not in axes:
        return None
    i = axes.index("T")
    if shape[i] != 1:
        raise InputError(f"time series with {shape[i]} frames is not supported (axes {axes})", path=path)
    return i


def _read_tiff(path: Path):
    import tifffile

    with _tifffile_errors() as errors, tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputError("TIFF holds no image (no pages)", path=path)
        if len(tif.series) > 1:  # reading the first alone would drop the others without a word
            shapes = ", ".join(str(tuple(s.shape)) for s in tif.series[:4]) + (", ..." if len(tif.series) > 4 else "")
            raise InputError(f"holds {len(tif.series)} images of different shapes or types ({shapes}); save each "
                             "on its own", path=path)
        series = tif.series[0]
        check_fits(series.shape, series.dtype, path, "pixels")  # tifffile allocates the pages' claim first
        arr = series.asarray()
        axes = series.axes.upper()
        spacing, source = _tiff_spacing(tif)
    if errors.messages:
        raise InputError(f"truncated or corrupt TIFF ({errors.messages[0][:160]})", path=path)
    t = _time_axis(arr.shape, axes, path)
    if t is not None:
        arr, axes = arr.take(0, axis=t), axes.replace("T", "")
    arr, axes = _drop_single_slice(arr, axes, path)
    return arr, axes, spacing, source


def _drop_single_slice(arr, axes: str, path: Path):
    """A stack of one slice is the 2D image it holds (else every object touches the z faces)."""
    if arr.ndim >= 3:
        order, std = _standard_order(arr.ndim, axes, path)
        if "Z" in std and arr.shape[order[std.index("Z")]] == 1:
            z = order[std.index("Z")]
            axes = axes if len(axes) == arr.ndim else "ZYX"[-arr.ndim:]
            return arr.take(0, axis=z), axes[:z] + axes[z + 1:]
    return arr, axes


def spatial_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The ``(y, x)`` or ``(z, y, x)`` shape :func:`read_microscopy` would give, channels left out, from a TIFF's
    header alone (its pixels are not read; a PNG is read). For sizing crops over many large stacks.

    Errors in the pixel data are not found here: :func:`read_microscopy` finds them when the image is read.

    Parameters
    ----------
    path : path
        ``.tif``/``.tiff`` (header only) or ``.png``.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "stack.tif"
    >>> write_microscopy(Image(np.zeros((3, 4, 5), np.uint8), np.eye(4)), p)
    >>> spatial_shape(p)
    (3, 4, 5)
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        img = read_microscopy(path)
        return tuple(img.array.shape[1:] if img.channels_first else img.array.shape)
    if not path.is_file():
        raise InputError("no such file", path=path)
    import tifffile

    try:
        with _tifffile_errors() as errors, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError("TIFF holds no image (no pages)", path=path)
            shape, axes = tuple(tif.series[0].shape), tif.series[0].axes.upper()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read image ({' '.join(str(exc).split())[:200]})", path=path) from exc
    if errors.messages:
        raise InputError(f"truncated or corrupt TIFF ({errors.messages[0][:160]})", path=path)
    t = _time_axis(shape, axes, path)
    if t is not None:
        shape, axes = shape[:t] + shape[t + 1:], axes.replace("T", "")
    order, std = _standard_order(len(shape), axes, path)
    spatial = tuple(shape[i] for i, a in zip(order, std) if a != "C")
    if len(spatial) == 3 and spatial[0] == 1:  # as read_microscopy: one slice is a 2D image
        spatial = spatial[1:]
    if any(n == 0 for n in spatial) or len(spatial) not in (2, 3):
        raise InputError(f"expected a 2D or 3D image, got shape {shape}", path=path)
    return spatial


def read_microscopy(path: str | os.PathLike, channel: int | None = None,
                    pixel_size: tuple[float, ...] | float | None = None) -> Image:
    """Read a TIFF (2D, 3D stack, multi-channel, ImageJ, OME) or PNG microscopy image.

    Parameters
    ----------
    path : path
        ``.tif``/``.tiff``/``.png``.
    channel : int, optional
        Keep only this channel (0-based) of a multi-channel image. Without it, a multi-channel image keeps
        its channels (``channels_first=True``) unless all colour channels are equal (a grey image saved
        as RGB, or RGBA with a constant alpha), which is reduced to one channel.
    pixel_size : float or tuple, optional
        Override the file's pixel size (µm), ``(y, x)`` or ``(z, y, x)``; one number means isotropic in-plane.

    Returns
    -------
    Image
        ``meta`` has ``spacing_from_file`` (bool), ``spacing_source`` and ``unit`` ("um" or "pixel").

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "cells.png"
    >>> write_microscopy(Image(np.zeros((4, 6), np.uint8), np.eye(4)), p)
    >>> img = read_microscopy(p, pixel_size=0.5)  # a PNG records no pixel size: given here
    >>> img.shape, img.spacing, img.meta["unit"]
    ((4, 6), (0.5, 0.5), 'um')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError("no such file", path=path)
    try:
        if suffix == ".png":
            arr = read_png(path)
            axes = "YXS" if arr.ndim == 3 else "YX"
            spacing, source = {}, "none"
        elif suffix in (".tif", ".tiff"):
            arr, axes, spacing, source = _read_tiff(path)
        else:
            raise InputError(f"unsupported microscopy format '{suffix}' (use .tif, .tiff or .png)", path=path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read image ({' '.join(str(exc).split())[:200]})", path=path) from exc
    if arr.size == 0:
        raise InputError(f"empty image (shape {arr.shape})", path=path)
    arr, axes = _to_standard_axes(arr, axes, path)
    has_c = axes[0] == "C"
    if has_c:
        if channel is not None:  # the file's channel index: a constant last channel may be a real (empty) one
            if not -arr.shape[0] <= channel < arr.shape[0]:
                raise InputError(f"channel {channel} out of range: the image has {arr.shape[0]} channels",
                                 path=path)
            arr, has_c = arr[channel], False
        else:
            arr = _drop_constant_alpha(arr)
            if arr.shape[0] == 1 or all(np.array_equal(arr[0], arr[i]) for i in range(1, arr.shape[0])):
                arr, has_c = arr[0], False
    elif channel not in (None, 0, -1):
        raise InputError(f"channel {channel} requested but the image has a single channel", path=path)
    spatial = arr.shape[1:] if has_c else arr.shape
    if any(s == 0 for s in spatial) or len(spatial) not in (2, 3):
        raise InputError(f"expected a 2D or 3D image, got shape {arr.shape}", path=path)
    letters = "ZYX"[-len(spatial):]
    sp = [float(spacing.get(a, 1.0)) for a in letters]
    from_file = any(a in spacing for a in letters)
    if len(letters) == 3 and not from_file and "Zpx" in spacing:
        sp[0] = float(spacing["Zpx"])  # an uncalibrated ImageJ stack's z step, in pixels: the unit stays "pixel"
    z_known = len(letters) < 3 or "Z" in spacing
    if pixel_size is not None:
        sp = _override_spacing(sp, pixel_size, path, z_known="Z" in spacing)
        from_file, source = False, "user"
        z_known = z_known or len(np.atleast_1d(pixel_size)) == 3
    aff = np.eye(4)
    aff[range(len(sp)), range(len(sp))] = sp
    meta = {"source": str(path), "format": suffix.lstrip("."), "spacing_from_file": from_file,
            "spacing_source": source, "unit": "um" if (from_file or pixel_size is not None) else "pixel",
            "axes": ("C" if has_c else "") + letters, "z_step_known": z_known}
    return Image(arr, aff, meta, channels_first=has_c)


def _to_standard_axes(arr: np.ndarray, axes: str, path: Path) -> tuple[np.ndarray, str]:
    """Reorder to (C?, Z?, Y, X); any unknown leading axis of a 3D array counts as Z."""
    order, std = _standard_order(arr.ndim, axes, path)
    return np.transpose(arr, order), std


def _standard_order(ndim: int, axes: str, path: Path) -> tuple[list[int], str]:
    """The transpose to (C?, Z?, Y, X) of an array with ``ndim`` axes named ``axes``, and the new axes' letters."""
    if len(axes) != ndim:
        axes = "ZYX"[-ndim:] if ndim <= 3 else axes
    chan = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES]
    if len(chan) > 1:  # e.g. CYXS: merge is ambiguous
        raise InputError(f"unsupported axes {axes} (more than one channel axis)", path=path)
    other = [i for i, a in enumerate(axes) if a not in _CHANNEL_AXES and a not in "YX"]
    if len(other) > 1:
        raise InputError(f"unsupported axes {axes} (at most Z, Y, X and one channel axis)", path=path)
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"unsupported axes {axes}", path=path)
    order = chan + other + [axes.index("Y"), axes.index("X")]
    return order, ("C" if chan else "") + ("Z" if other else "") + "YX"


def _drop_constant_alpha(arr: np.ndarray) -> np.ndarray:
    if arr.shape[0] in (2, 4) and np.all(arr[-1] == arr[-1].flat[0]):
        return arr[:-1]
    return arr


def _override_spacing(sp: list, pixel_size, path: Path, z_known: bool = True) -> list:
    vals = [float(v) for v in np.atleast_1d(pixel_size)]
    if any(not np.isfinite(v) or v <= 0 for v in vals):
        raise InputError(f"pixel size must be positive, got {pixel_size}", path=path)
    if len(sp) == 3 and len(vals) < 3 and not z_known:
        # keeping the placeholder z of 1 pixel would report volumes in µm³ that mix µm and pixels
        given = ",".join(f"{v:g}" for v in vals)
        raise InputError(f"the stack records no z step: give the pixel size as Z,Y,X (got {given})", path=path)
    if len(vals) == 1:
        return sp[:-2] + vals * 2
    if len(vals) == len(sp):
        return vals
    if len(vals) == 2 and len(sp) == 3:
        return [sp[0]] + vals
    raise InputError(f"pixel size {pixel_size} does not fit a {len(sp)}D image", path=path)


def single_channel(image: Image, path=None) -> np.ndarray:
    """The image's pixel array, refusing a multi-channel image (choose one with ``channel=``).

    Parameters
    ----------
    image : Image
    path : path, optional
        Named in the error (default: ``image.meta["source"]``).

    Returns
    -------
    ndarray
        ``image.array``, ``(y, x)`` or ``(z, y, x)``.

    Examples
    --------
    >>> single_channel(Image(np.zeros((4, 6)), np.eye(4))).shape
    (4, 6)
    >>> single_channel(Image(np.zeros((2, 4, 6)), np.eye(4), channels_first=True), "cells.tif")
    Traceback (most recent call last):
    medseg.errors.InputError: cells.tif: image has 2 different channels: choose one with --channel
    """
    if image.channels_first:
        raise InputError(f"image has {image.array.shape[0]} different channels: choose one with --channel",
                         path=path or image.meta.get("source"))
    return image.array


def write_microscopy(image: Image, path: str | os.PathLike) -> None:
    """Write a TIFF (ImageJ-compatible, with the pixel size in µm when known) or a PNG.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.tif"
    >>> write_microscopy(Image(np.ones((3, 4, 5), np.uint16), np.diag([2.0, 0.5, 0.5, 1])), p)
    >>> read_microscopy(p).spacing
    (2.0, 0.5, 0.5)
    """
    path = Path(path)
    arr = image.array
    if str(path).lower().endswith(".png"):
        import imageio.v3 as iio

        iio.imwrite(path, np.moveaxis(arr, 0, -1) if image.channels_first else arr, extension=".png")
        return
    import tifffile

    sp = image.spacing
    ndim = len(image.shape)
    imagej = arr.dtype in (np.uint8, np.uint16, np.float32) and not image.channels_first
    if imagej:
        meta = {"unit": "um" if image.meta.get("unit", "um") == "um" else "pixel", "axes": "ZYX" if ndim == 3 else "YX"}
        if ndim == 3:
            meta["spacing"] = float(sp[0])
        tifffile.imwrite(path, arr, imagej=True, resolution=(1.0 / sp[-1], 1.0 / sp[-2]), metadata=meta)
    else:
        # OME-XML names the axes (else tifffile stores 3 or 4 planes as RGB, and any other stack loses its z step)
        meta = {"axes": ("C" if image.channels_first else "") + "ZYX"[-ndim:]}
        if image.meta.get("unit", "um") == "um":
            meta.update({f"PhysicalSize{a}": float(s) for a, s in zip("ZYX"[-ndim:], sp)})
        calibrated = image.meta.get("unit", "um") == "um"  # a pixel-unit image gets no resolution: it has none
        tifffile.imwrite(path, arr, ome=True, photometric="minisblack", metadata=meta,
                         **({"resolution": (1e4 / sp[-1], 1e4 / sp[-2]), "resolutionunit": "CENTIMETER"}
                            if calibrated else {}))
