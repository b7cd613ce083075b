"""Pixel data of DICOM images: stored values per frame, and the rescale to modality units.

Uncompressed pixel data is read straight from the file (the header parse deferred it, so
every file is parsed once); JPEG 2000 frames go to OpenJPEG directly, through imagecodecs when it
is installed (it releases the GIL, so the files of a series decode in parallel threads) or
pylibjpeg-openjpeg (pydicom's generic pipeline costs ~60% more per frame); every other transfer
syntax goes through ``Dataset.pixel_array`` (pydicom with the pylibjpeg / pyjpegls plugins: JPEG,
JPEG-LS, RLE, deflate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.cpu import ignored_warnings
from medseg.errors import InputError

PIXEL_DATA = 0x7FE00010
_DEFLATED = "1.2.840.10008.1.2.1.99"
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
#: transfer syntaxes of uncompressed pixel data (implicit/explicit little endian, explicit big endian, deflated)
_NATIVE = {"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", _DEFLATED}
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000): the first fragment item of encapsulated pixel data


def syntax_label(tsuid: str) -> str:
    """A transfer syntax as error messages name it: its name and UID (the UID alone when pydicom does not know it).

    Examples
    --------
    >>> syntax_label("1.2.840.10008.1.2.4.50"), syntax_label("1.2.840.10008.1.2.4.110")
    ('JPEG Baseline (Process 1), 1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.4.110')
    """
    from pydicom.uid import UID

    name = UID(tsuid).name
    return tsuid if name == tsuid else f"{name}, {tsuid}"


def stored_dtype(bits_allocated: int, signed: bool, little_endian: bool = True) -> np.dtype:
    """NumPy dtype of stored pixel values.

    Examples
    --------
    >>> stored_dtype(16, True).str, stored_dtype(16, False, little_endian=False).str
    ('<i2', '>u2')
    """
    if bits_allocated not in (8, 16, 32):
        raise ValueError(f"BitsAllocated {bits_allocated} is not supported (8, 16 or 32)")
    dt = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    return dt.newbyteorder("<" if little_endian else ">")


def fix_stored_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep only the ``bits_stored`` low bits: sign-extend signed values, mask unsigned ones.

    Examples
    --------
    >>> fix_stored_bits(np.array([0x0FFF, 0xF001], np.uint16), 12, False)
    array([4095,    1], dtype=uint16)
    >>> fix_stored_bits(np.array([0x0FFF], np.int16), 12, True)
    array([-1], dtype=int16)
    """
    nbits = arr.dtype.itemsize * 8
    if bits_stored >= nbits or bits_stored <= 0:
        return arr
    if signed:
        shift = nbits - bits_stored
        return (arr << shift) >> shift
    return arr & np.array((1 << bits_stored) - 1, dtype=arr.dtype)


def rescaled_dtype(bits_stored: int, signed: bool, slopes, intercepts, stored: np.dtype) -> np.dtype:
    """Output dtype after RescaleSlope/Intercept, chosen from the header alone (not the voxel values).

    Integral slopes and intercepts keep integers: the smallest of the stored type, int16, int32
    that holds every value the stored bits can produce (the rule GDCM/SimpleITK apply). Anything
    else is float32.

    Examples
    --------
    >>> rescaled_dtype(12, False, [1.0], [-1024.0], np.dtype('uint16'))
    dtype('int16')
    >>> rescaled_dtype(16, True, [1.0], [-1024.0], np.dtype('int16'))
    dtype('int32')
    """
    slopes = np.asarray(slopes, float)
    intercepts = np.asarray(intercepts, float)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return np.dtype(stored.newbyteorder("="))
    if not (np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))):
        return np.dtype(np.float32)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    ends = np.concatenate([slopes * lo + intercepts, slopes * hi + intercepts])
    vmin, vmax = float(ends.min()), float(ends.max())
    for dt in (np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= vmin and vmax <= info.max:
            return np.dtype(dt)
    return np.dtype(np.float64)


def apply_rescale(frames: np.ndarray, slopes, intercepts, dtype: np.dtype) -> np.ndarray:
    """``value = stored * slope + intercept`` per frame (axis 0), cast to ``dtype``.

    Parameters
    ----------
    frames : ndarray, shape (frames, rows, columns)
        Stored values.
    slopes, intercepts : sequence of float
        RescaleSlope and RescaleIntercept of each frame.
    dtype : dtype
        Output type, as :func:`rescaled_dtype` chooses it.

    Returns
    -------
    ndarray
        Same shape, ``dtype``.

    Examples
    --------
    >>> stored = np.array([[[0, 10]], [[0, 10]]], np.uint16)  # two frames of 1 x 2 pixels
    >>> apply_rescale(stored, [1, 2], [-1024, 0], np.dtype(np.int16)).tolist()
    [[[-1024, -1014]], [[0, 20]]]
    """
    slopes = np.asarray(slopes, float)
    intercepts = np.asarray(intercepts, float)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return frames.astype(dtype, copy=False)
    if np.issubdtype(dtype, np.integer):
        out = frames.astype(dtype)
        if np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]):
            if slopes[0] != 1:
                out *= dtype.type(slopes[0])
            out += dtype.type(intercepts[0])
            return out
        return (out * slopes.astype(dtype)[:, None, None] + intercepts.astype(dtype)[:, None, None]).astype(dtype)
    calc = np.float64 if dtype == np.float64 else np.float32
    scaled = frames.astype(calc) * slopes.astype(calc)[:, None, None] + intercepts.astype(calc)[:, None, None]
    return scaled.astype(dtype, copy=False)


def _raw_pixel_bytes(ds, path: Path) -> tuple[bytes, bool]:
    """Bytes of the PixelData element and whether they are encapsulated (compressed)."""
    try:
        elem = ds.get_item(PIXEL_DATA, keep_deferred=True)
    except TypeError:  # older pydicom without keep_deferred
        elem = ds.get_item(PIXEL_DATA)
    if elem is None:
        raise InputError("no pixel data (file truncated, or not an image)", path=path)
    length = getattr(elem, "length", None)
    encapsulated = length == 0xFFFFFFFF
    value = elem.value
    file_meta = getattr(ds, "file_meta", None)
    if value is None and str(file_meta.get("TransferSyntaxUID", "") if file_meta is not None else "") == _DEFLATED:
        import pydicom  # offsets point into the inflated stream, not the file: let pydicom inflate it all

        value = pydicom.dcmread(path).get_item(PIXEL_DATA).value
    if value is None:  # deferred by the header read: fetch it from the file ourselves
        with open(path, "rb") as fh:
            fh.seek(elem.value_tell)
            value = fh.read() if encapsulated else fh.read(length)
        if not encapsulated and len(value) < length:
            raise InputError(f"truncated pixel data ({len(value)} of {length} bytes)", path=path)
    return bytes(value), encapsulated


def read_frames(ds, path: Path, n_frames: int) -> np.ndarray:
    """Stored pixel values of every frame of one file: shape (frames, rows, columns).

    Sign and unused high bits are fixed (``fix_stored_bits``); no rescale.

    Parameters
    ----------
    ds : pydicom.Dataset
        The file's header (pixel data read, or deferred by the header parse).
    path : Path
        The file (deferred pixel data is read from it; named in errors).
    n_frames : int
        NumberOfFrames (1 for a single-frame file).

    Returns
    -------
    ndarray, shape (n_frames, rows, columns)
        Native byte order.

    Examples
    --------
    >>> from pydicom import Dataset
    >>> ds = Dataset(); ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 1, 2, 16, 12
    >>> ds.PixelData = np.array([4095, 0xF001], "<u2").tobytes()  # high bits above the 12 stored are noise
    >>> read_frames(ds, Path("IM1"), 1).tolist()
    [[[4095, 1]]]
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"colour images are not supported (SamplesPerPixel={ds.SamplesPerPixel})", path=path)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    try:
        enc = getattr(ds, "original_encoding", (None, True))  # (implicit VR, little endian) as read
        dt = stored_dtype(int(ds.BitsAllocated), signed, enc[1] is not False)
    except ValueError as exc:
        raise InputError(str(exc), path=path) from None
    file_meta = getattr(ds, "file_meta", None)
    tsuid = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    data, encapsulated = _raw_pixel_bytes(ds, path)
    # a compressed transfer syntax pydicom does not know (JPEG XL, a private one): its fragments were read as one
    # plain value, which would be reported as truncated pixel data
    encapsulated = encapsulated or (tsuid not in _NATIVE and data[:4] == _ITEM)
    try:
        with ignored_warnings():  # decoder plugins warn about what we turn into an InputError
            arr = _decode(ds, data, encapsulated, tsuid, n_frames, rows, cols, dt, path)
    except InputError:
        raise
    except Exception as exc:  # decoders raise many types on corrupt streams, or none is installed for the syntax
        raise InputError(f"cannot decode pixel data in transfer syntax {syntax_label(tsuid)} "
                         f"({type(exc).__name__}: {exc})", path=path) from None
    if arr.dtype != dt.newbyteorder("="):
        arr = arr.astype(dt.newbyteorder("="))
    return fix_stored_bits(arr, bits_stored, signed)


def _decode(ds, data: bytes, encapsulated: bool, tsuid: str, n_frames: int, rows: int, cols: int, dt: np.dtype,
            path: Path) -> np.ndarray:
    if not encapsulated:
        need = rows * cols * n_frames * dt.itemsize
        if len(data) < need:
            raise InputError(f"truncated pixel data ({len(data)} of {need} bytes)", path=path)
        arr = np.frombuffer(data, dtype=dt, count=rows * cols * n_frames).reshape(n_frames, rows, cols)
        return arr.astype(dt.newbyteorder("="), copy=False)
    if tsuid in _J2K:
        return _decode_j2k(ds, data, n_frames, rows, cols, dt)
    return np.asarray(ds.pixel_array).reshape(n_frames, rows, cols)


def _j2k_decoder():
    """The JPEG 2000 frame decoder: imagecodecs (releases the GIL, so files decode in parallel threads)
    when installed, else pylibjpeg-openjpeg (holds the GIL), else ``None`` (pydicom decides)."""
    try:
        import imagecodecs

        if imagecodecs.JPEG2K.available:
            return imagecodecs.jpeg2k_decode, True
    except ImportError:
        pass
    try:
        import openjpeg

        return (lambda b: openjpeg.decode(b, j2k_format=0 if b[:2] == b"\xff\x4f" else None)), False
    except ImportError:
        return None, False


def parallel_decode_helps(ds) -> bool:
    """Whether decoding this file's pixel data in threads beside others runs in parallel (GIL released).

    True only for JPEG 2000 pixel data when imagecodecs is installed.

    Examples
    --------
    >>> from pydicom import Dataset
    >>> parallel_decode_helps(Dataset())  # no transfer syntax: uncompressed
    False
    """
    file_meta = getattr(ds, "file_meta", None)
    tsuid = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    return tsuid in _J2K and _j2k_decoder()[1]


def _decode_j2k(ds, data: bytes, n_frames: int, rows: int, cols: int, dt: np.dtype) -> np.ndarray:
    decode, _ = _j2k_decoder()
    if decode is None:  # pydicom finds another plugin, or says which one to install
        return np.asarray(ds.pixel_array).reshape(n_frames, rows, cols)
    from pydicom.encaps import generate_frames

    frames = []
    for frame in generate_frames(data, number_of_frames=n_frames):
        frames.append(frame)
        if len(frames) == n_frames:
            break
    if len(frames) < n_frames:
        raise ValueError(f"only {len(frames)} of {n_frames} frames in the pixel data")
    out = np.empty((n_frames, rows, cols), dtype=dt.newbyteorder("="))
    for k, frame in enumerate(frames):
        dec = np.asarray(decode(frame))
        if dec.size != rows * cols or (dec.dtype.kind == "i") != (dt.kind == "i"):
            # J2K header disagrees with the DICOM header: pydicom knows the corrections
            return np.asarray(ds.pixel_array).reshape(n_frames, rows, cols)
        out[k] = dec.reshape(rows, cols)
    return out
