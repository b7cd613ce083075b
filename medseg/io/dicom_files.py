"""Which files under a folder DICOM discovery reads: a recursive walk (links followed, loops guarded, pipes
skipped), names that say DICOM or certainly not, and a DICOMDIR standing for its folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import InputError
from medseg.io.readers import is_dicom_file

#: suffixes of files that are certainly not DICOM: skipped unread when they sit in a DICOM folder (case-insensitive).
#: CD/DVD exports ship a viewer beside the images (AUTORUN.INF, icons, DLLs, web pages): never a reason to refuse.
NON_DICOM_SUFFIXES = {
    ".txt", ".md", ".json", ".xml", ".csv", ".tsv", ".html", ".htm", ".pdf", ".nrrd", ".nhdr", ".nii", ".gz",
    ".mha", ".mhd", ".raw", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".zip", ".tar", ".py",
    ".yaml", ".yml", ".ini", ".log", ".seg", ".mgz", ".vtk", ".stl", ".obj", ".ply", ".exe", ".bat", ".sh",
    ".bak", ".tmp", ".part", ".old", ".orig", ".swp",  # backups and partial copies, which would duplicate a slice
}  # any other suffix (a CD viewer's .inf, .dll, .css, ...; a renamed .bak) is read when it has the DICM preamble
#: suffixes DICOM files are given (besides none, and numeric ones such as the last part of a UID): such a file
#: that does not parse is damaged, and an error
DICOM_NAME_SUFFIXES = {".dcm", ".dicom", ".dic", ".dc3", ".ima"}
#: names of files that are not images: the DICOMDIR index, and what exports put beside the images
NON_DICOM_NAMES = {"DICOMDIR", "LOCKFILE", "VERSION", "README", "LICENSE", "THUMBS.DB"}


def looks_like_dicom_name(path: Path) -> bool | None:
    """Whether a file's name says it is DICOM: ``True`` (no suffix, a numeric one, ``.dcm``, ``.ima``...: read it,
    and a file that does not parse is damaged), ``False`` (hidden files, DICOMDIR, and suffixes of other formats:
    skipped unread) or ``None`` (another suffix: taken only when it carries the DICM preamble).

    Examples
    --------
    >>> looks_like_dicom_name(Path("IM0001")), looks_like_dicom_name(Path("CT.1.2.840.5")),\
 looks_like_dicom_name(Path("notes.txt")), looks_like_dicom_name(Path("AUTORUN.INF")),\
 looks_like_dicom_name(Path("viewer.xyz"))
    (True, True, False, None, None)
    """
    name = path.name
    if name.startswith(".") or name.upper() in NON_DICOM_NAMES:
        return False
    suffix = path.suffix.lower()
    if suffix in NON_DICOM_SUFFIXES:
        return False
    if suffix == "" or suffix in DICOM_NAME_SUFFIXES or suffix[1:].isdigit():
        return True
    return None


def dicom_root(path: Path) -> Path:
    """The folder a DICOMDIR file indexes (the file set is read from there); any other path as it is.

    Examples
    --------
    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "DICOMDIR").touch()
    >>> dicom_root(d / "DICOMDIR") == d, dicom_root(d) == d
    (True, True)
    """
    return path.parent if path.name.upper() == "DICOMDIR" and path.is_file() else path


def walk_files(top: Path) -> list[Path]:
    """Every file below folder ``top`` that discovery looks at: recursive, hidden files and folders left out, files
    of a folder before its subfolders, names sorted.

    Symlinked folders are followed (after the real folders, so that a file keeps its real path where it has one);
    each real folder is visited once, by its (device, inode), so a link to an ancestor (``ln -s .. loop``) neither
    loops nor repeats files, and a file reached by several paths is listed once (by its resolved path). Paths keep
    the names they were reached by (a linked series folder keeps the link's name).

    Examples
    --------
    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "b").mkdir()
    >>> _ = [(d / name).touch() for name in ("b/IM2", "IM1", ".IM0")]
    >>> [p.relative_to(d).as_posix() for p in walk_files(d)]
    ['IM1', 'b/IM2']
    """
    out: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    pending = [Path(top)]  # the top, then folders reached through symbolic links
    while pending:
        start = pending.pop(0)
        try:
            st = start.stat()
        except OSError:  # a dangling link, no permission: nothing below it can be read
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        stack = [(start, os.path.realpath(start))]
        while stack:
            folder, real = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:  # unreadable folder: skipped, as os.walk does
                continue
            subdirs = []
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    is_dir = e.is_dir()  # follows a symbolic link
                except OSError:
                    is_dir = False
                if is_dir and e.is_symlink():
                    pending.append(folder / e.name)
                elif is_dir:
                    try:
                        dst = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (dst.st_dev, dst.st_ino) not in seen_dirs:
                        seen_dirs.add((dst.st_dev, dst.st_ino))
                        subdirs.append((folder / e.name, os.path.join(real, e.name)))
                elif _is_file(e):
                    resolved = os.path.realpath(e.path) if e.is_symlink() else os.path.join(real, e.name)
                    if resolved not in seen_files:
                        seen_files.add(resolved)
                        out.append(folder / e.name)
            stack.extend(reversed(subdirs))
    return out


def _is_file(entry: os.DirEntry) -> bool:
    """A regular file, or a dangling link (reading it says the file is missing); never a FIFO or socket (a read
    would block)."""
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:
        return False


def list_candidate_files(path: Path) -> list[Path]:
    """Files to look at: ``path`` itself, or every DICOM-like file below it (see :func:`walk_files` and
    :func:`looks_like_dicom_name`); a DICOMDIR stands for the folder it indexes.

    Examples
    --------
    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = [(d / name).touch() for name in ("IM1", "notes.txt", "viewer.xyz", "DICOMDIR")]
    >>> [p.name for p in list_candidate_files(d)]  # viewer.xyz would need the DICM preamble
    ['IM1']
    """
    path = dicom_root(path)
    if path.is_file():
        return [path]
    out = []
    for f in walk_files(path):
        kind = looks_like_dicom_name(f)
        if kind or (kind is None and is_dicom_file(f)):
            out.append(f)
    return out


def no_series_message(path) -> str:
    """'no DICOM image series found', with a hint when the folder holds images of other formats (counted among the
    files discovery looked at: hidden files such as AppleDouble ``._*`` ones are not).

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); (d / "ct.nii.gz").touch()
    >>> no_series_message(d)
    'no DICOM image series found (it holds 1 NIfTI/NRRD/MHA/TIFF/PNG file: pass one of them, e.g. ct.nii.gz)'
    """
    from medseg.io.atomic import full_suffix

    msg = "no DICOM image series found"
    kind = _object_kind(Path(path))
    if kind:  # commands that take images are handed a segmentation object: say how to make it an image
        return (f"{msg}: this is a {kind}, not an image; put it on its series first "
                f"(medseg convert {Path(path).name} OUT.nii.gz --reference SERIES_FOLDER)")
    p = dicom_root(Path(path))
    if p.is_dir():
        others = [f for f in walk_files(p) if full_suffix(f) in
                  (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".tif", ".tiff", ".png") and f.is_file()]
        if others:
            example = min(others, key=lambda f: len(f.relative_to(p).parts))  # one directly in the folder if any
            msg += (f" (it holds {len(others)} NIfTI/NRRD/MHA/TIFF/PNG file{'s' if len(others) > 1 else ''}: "
                    f"pass one of them, e.g. {example.relative_to(p)})")
    return msg


def dicom_modality(path: Path) -> str:
    """The Modality of one DICOM file, upper case ('' when ``path`` is not a DICOM file; ``InputError`` when its
    header cannot be read).

    Parameters
    ----------
    path : Path
        Any file or folder.

    Returns
    -------
    str
        The Modality (``CT``, ``MR``, ``SEG``, ``RTSTRUCT``, ...); ``''`` for a folder, a file that is not DICOM
        or one without a Modality.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from pydicom import examples
    >>> folder = Path(tempfile.mkdtemp())
    >>> examples.mr.save_as(folder / "IM1")  # pydicom's example MR slice
    >>> _ = (folder / "notes.txt").write_text("not DICOM")
    >>> dicom_modality(folder / "IM1"), dicom_modality(folder / "notes.txt"), dicom_modality(folder)
    ('MR', '', '')
    """
    if not (path.is_file() and is_dicom_file(path)):
        return ""
    try:
        return str(read_header(path, stop_before_pixels=True).get("Modality", "") or "").upper()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"corrupt DICOM file ({type(exc).__name__}: {exc})", path=path) from None


def read_header(path: Path, stop_before_pixels: bool = False, defer_size: int | None = None):
    """``pydicom.dcmread`` of a Part 10 file, refusing (``InputError``) a run of zero bytes where a data element
    should begin: pydicom reads one as tag (0000,0000) elements of length 0, eight bytes each, so a zero-filled or
    sparse 10 GB file with a DICM preamble (a partly written download) kept discovery busy for hours. pydicom's own
    errors are raised as they are.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "IM1"
    >>> _ = p.write_bytes(bytes(128) + b"DICM" + bytes(4096))
    >>> read_header(p)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ...IM1: corrupt DICOM file: zero bytes where a data element should begin (...)
    """
    from pydicom.filereader import read_partial
    from pydicom.tag import TupleTag

    pixels = {TupleTag((0x7FE0, 0x0010)), TupleTag((0x7FE0, 0x0008)), TupleTag((0x7FE0, 0x0009))}

    def stop_when(tag, vr, length) -> bool:
        if tag == 0 and not length:  # a real (0000,0000) element holds a 4-byte value
            raise _ZeroElement
        return stop_before_pixels and tag in pixels

    try:
        if _zeros_at_data_set(path):
            raise _ZeroElement
        with open(path, "rb") as fh:
            return read_partial(fh, stop_when, defer_size=defer_size)
    except _ZeroElement:
        raise InputError("corrupt DICOM file: zero bytes where a data element should begin (a zero-filled or "
                         "partly written file)", path=path) from None


class _ZeroElement(Exception):
    """A run of zero bytes where a data element should begin."""


def _zeros_at_data_set(path: Path) -> bool:
    """True when the data set after the DICM preamble and the file meta group (its length from (0002,0000)) starts
    with eight zero bytes: pydicom reads them as command set elements, one by one, with no check to hook."""
    with open(path, "rb") as fh:
        head = fh.read(144)
        start = 132
        if head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL" and len(head) == 144:
            start = 144 + int.from_bytes(head[140:144], "little")
        fh.seek(start)
        return head[128:132] == b"DICM" and fh.read(8) == bytes(8)


def _object_kind(path: Path) -> str | None:
    """'DICOM-SEG' or 'RTSTRUCT' for a file holding one of those objects, else None."""
    try:
        modality = dicom_modality(path)
    except InputError:  # unreadable: the plain message
        return None
    return {"SEG": "DICOM-SEG", "RTSTRUCT": "RTSTRUCT"}.get(modality)
