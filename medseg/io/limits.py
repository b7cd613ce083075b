"""Checks made on a header before its voxels are read: files from outside must not make medseg allocate or read
beyond what the file holds and the machine has.

A header may claim any size (a 400-byte NIfTI saying 100000³ voxels, a DICOM saying 65535² pixels per frame, a
TIFF page of 10⁵ x 10⁵): the readers allocate what it says before they find the data missing, which is an OOM kill
or a swap storm rather than an error. The policy is a floor, never a guess: the image is refused only when its
voxels alone (the array the reader must return) are more than the memory this process can still allocate
(:func:`medseg.system.allocatable_memory`), so that every image that could be read still is (a 512x512x2000 CT,
a 2048x2048x500 light-sheet stack), and an uncompressed file whose header claims more bytes than the file holds is
truncated whatever the memory.

A detached header (NRRD ``data file``, MetaImage ``ElementDataFile``) naming an absolute path or one that climbs
out of its folder (``..``) is refused: converting an uploaded header would otherwise hand back any file the process
can read (``/etc/passwd`` as voxels).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from medseg.errors import InputError

#: the most header text read to find a detached data file name (a NRRD/MetaImage header is a few hundred bytes)
HEADER_BYTES = 1 << 20


def size_text(nbytes: int) -> str:
    """A byte count for a message, in binary units.

    Examples
    --------
    >>> size_text(3 * 2**30), size_text(512), size_text(10**21)
    ('3.0 GiB', '512 B', '867.4 EiB')
    """
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0 if nbytes < 1024 else min(len(units) - 1, int(math.log(nbytes, 1024)))
    return f"{nbytes} B" if i == 0 else f"{nbytes / 1024 ** i:.1f} {units[i]}"


def claimed_bytes(shape, itemsize: int) -> int:
    """Bytes of an array of ``shape`` (exact: Python integers do not overflow where a header's dims multiply past
    2**63)."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def check_fits(shape, dtype, path, what: str = "voxels", copies: int = 1) -> None:
    """``InputError`` naming the file, the claimed size and the memory available when ``copies`` arrays of
    ``shape`` and ``dtype`` cannot be allocated by this process now.

    Examples
    --------
    >>> check_fits((4, 5, 6), np.int16, "a.nii")  # a few bytes: fine
    >>> check_fits((100000, 100000, 100000), np.float32, "a.nii")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: a.nii: the header claims 100000 x 100000 x 100000 float32 voxels (3.6 PiB), more than ...
    """
    dtype = np.dtype(dtype)
    _check_room(shape, dtype.itemsize, str(dtype), path, what, copies)


def _check_room(shape, itemsize: int, type_name: str, path, what: str, copies: int) -> None:
    from medseg.system import allocatable_memory

    need = claimed_bytes(shape, itemsize)
    room = allocatable_memory()
    if need * copies > room:
        dims = " x ".join(str(int(s)) for s in shape)
        extra = f" ({copies} copies while it is read)" if copies > 1 else ""
        raise InputError(f"the header claims {dims} {type_name} {what} ({size_text(need)}){extra}, more than the "
                         f"{size_text(room)} of memory available: a damaged or hostile header, or an image too large "
                         "for this machine", path=path)


def check_file_holds(path, offset: int, need: int) -> None:
    """``InputError`` when an uncompressed file ends before the ``need`` bytes its header places at ``offset``:
    found from the file's size, before a reader allocates them.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.nii"
    >>> _ = p.write_bytes(bytes(400))
    >>> check_file_holds(p, 352, 4 * 10**9)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ...a.nii: truncated: the file holds 48 of the 4000000000 bytes (3.7 GiB) of voxels its header declares
    """
    held = max(0, os.path.getsize(path) - int(offset))
    if held < need:
        raise InputError(f"truncated: the file holds {held} of the {need} bytes ({size_text(need)}) of voxels its "
                         "header declares", path=path)


def check_nifti_claim(nimg, path, compressed: bool) -> None:
    """Refuse a nibabel image (voxels not read yet) whose voxels the file cannot hold (uncompressed) or this
    process cannot allocate."""
    header = nimg.header
    shape, dtype = header.get_data_shape(), header.get_data_dtype()
    if not compressed:  # where nibabel reads them from (the image's header copy says 0 for a single file)
        offset = getattr(nimg.dataobj, "offset", None)
        offset = header.get_data_offset() if offset is None else offset
        check_file_holds(path, int(offset), claimed_bytes(shape, dtype.itemsize))
    check_fits(shape, dtype, path)


_BITS = re.compile(r"(\d+)-bit")


def check_itk_claim(reader, path) -> None:
    """Refuse, from its header alone (``ReadImageInformation``), an image that ``reader`` (a SimpleITK
    ``ImageFileReader``) could not return: ITK's buffer and its NumPy copy are both held while it is read. A header
    ITK cannot parse is left to the read itself, which reports it."""
    import SimpleITK as sitk

    try:
        reader.ReadImageInformation()
        size, comps = tuple(reader.GetSize()), int(reader.GetNumberOfComponents())
        pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    except Exception:
        return
    bits = _BITS.search(pixel)
    itemsize = (int(bits[1]) // 8 if bits else 1) * (2 if "complex" in pixel else 1)
    shape = (*size, comps) if comps > 1 else size  # ITK's (x, y, z) order, as NIfTI's dims read
    _check_room(shape, itemsize, pixel or "pixel", path, "voxels", copies=2)


def detached_data_names(path) -> list[str]:
    """The data file names a NRRD (``data file:``/``datafile:``) or MetaImage (``ElementDataFile =``) header
    names, ``LIST`` entries included; ``[]`` for data in the file itself (``LOCAL``, or an attached NRRD).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.nhdr"
    >>> _ = p.write_text("NRRD0004\\ntype: float\\ndata file: LIST\\nslice1.raw\\n../x.raw\\n")
    >>> detached_data_names(p)
    ['slice1.raw', '../x.raw']
    """
    with open(path, "rb") as fh:
        text = fh.read(HEADER_BYTES).decode("latin-1")
    lines = text.splitlines()
    nrrd = text.startswith("NRRD")
    for i, line in enumerate(lines):
        if nrrd and not line.strip():  # the end of an attached NRRD's header: its data follows
            return []
        key, sep, value = line.partition(":" if nrrd else "=")
        key = key.strip().lower()
        if not sep or key not in (("data file", "datafile") if nrrd else ("elementdatafile",)):
            continue
        value = value.strip()
        if value.split()[:1] == ["LIST"]:  # one name a line, to the end of the header
            return [ln.strip() for ln in lines[i + 1:] if ln.strip()]
        return [] if value.upper() == "LOCAL" else [value]
    return []


def check_data_files(path) -> None:
    """``InputError`` when a detached header names a data file by an absolute path or a path that climbs out of its
    folder: a header from outside would make medseg read (and write into its outputs) any file it can reach.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.mhd"
    >>> _ = p.write_text("NDims = 3\\nDimSize = 4 4 4\\nElementType = MET_UCHAR\\nElementDataFile = /etc/passwd\\n")
    >>> check_data_files(p)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ...a.mhd: the header's data file '/etc/passwd' is outside its folder ...
    """
    for name in detached_data_names(path):
        # every word too: a NRRD pattern 'slice%03d.raw 1 10 1' names its files in the first one
        for part in {name, *name.split()}:
            if os.path.isabs(part) or re.match(r"^[A-Za-z]:[\\/]", part) or ".." in re.split(r"[\\/]", part):
                raise InputError(f"the header's data file '{name}' is outside its folder (an absolute path or '..'): "
                                 "medseg reads detached data only next to the header or below it; move the data "
                                 "file there, or save the image as one file (.nrrd, .mha, .nii.gz)", path=path)


def check_archive_fits(path) -> None:
    """``InputError`` when a zip archive (a ``torch.save`` file: ``model.pt``) unpacks to more bytes than this
    process can allocate, found from its central directory before anything is unpacked.

    ``torch.load`` allocates each record's declared uncompressed size before inflating it, so a zip bomb (a few
    megabytes of deflated zeros declaring gigabytes) filled memory, or failed deep in the allocator. A file that is
    not a zip (torch's legacy format) is left to ``torch.load``.

    Examples
    --------
    >>> import tempfile, zipfile
    >>> p = Path(tempfile.mkdtemp()) / "model.pt"
    >>> with zipfile.ZipFile(p, "w") as z:
    ...     z.writestr("archive/data/0", bytes(64))
    >>> check_archive_fits(p)  # 64 bytes: fine
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            need = sum(int(i.file_size) for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    from medseg.system import allocatable_memory

    room = allocatable_memory()
    if need > room:
        raise InputError(f"the archive declares {size_text(need)} of contents, more than the {size_text(room)} of "
                         "memory available to unpack it: a damaged or hostile file (a zip bomb), or a model too "
                         "large for this machine", path=path)
