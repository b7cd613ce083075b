"""Reading DICOM headers once: one ``Frame`` record per image slice (a file, or a frame of an
enhanced multi-frame file), with what series discovery and loading need.

Each file is parsed once with its large values deferred (``defer_size``): the pixel data is then
read from its file offset when the series is loaded, so no file is parsed twice.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
#: objects that are not images to stack into a volume
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "RWV", "DOC", "RTDOSE"}
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
#: SOP class prefixes of non-image objects: structured reports, presentation states, raw data,
#: registrations, SEG, RT objects (RT Image included: planar, no patient position), documents, waveforms
NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.66",
                          "1.2.840.10008.5.1.4.1.1.481", "1.2.840.10008.5.1.4.1.1.104", "1.2.840.10008.5.1.4.1.1.9.",
                          "1.2.840.10008.5.1.4.1.1.11", DICOMDIR_SOP)
_DEFER = 2048  # bytes: larger values (pixel data, big private blobs) are read only when needed


class NotAVolume(InputError):
    """A readable DICOM image that cannot be a slice of a volume (no patient geometry, colour, cine...).

    Discovery lists such images as a series with this reason instead of failing.

    Examples
    --------
    >>> str(NotAVolume("colour image", path="IM1")), issubclass(NotAVolume, InputError)
    ('IM1: colour image', True)
    """


@dataclass
class Rejected:
    """A DICOM image that is not a volume slice, with the identifiers its series is listed by."""

    path: Path
    reason: str
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str


@dataclass
class Frame:
    """One image slice: where its pixels are and where it sits in the patient (LPS)."""

    path: Path
    dataset: Any = field(repr=False)
    frame_index: int | None  # 0-based frame in a multi-frame file, None for single-frame files
    n_frames_in_file: int
    ipp: np.ndarray
    iop: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns), DICOM order
    rows: int
    cols: int
    slope: float
    intercept: float
    bits_stored: int
    signed: bool
    sop_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    series_number: int | None
    description: str
    modality: str
    slice_spacing_hint: float | None = None


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


def _floats(value, n: int, what: str, path: Path) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"unreadable {what} ({value!r})", path=path) from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must have {n} finite numbers, got {value!r}", path=path)
    return arr


def _num(ds, keyword: str, default=None):
    v = ds.get(keyword, None)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _read_one(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():  # pydicom warns about damage we report ourselves, in one line
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=_DEFER)
    except OSError as exc:  # permissions, vanished file, I/O error: not damage to the file itself
        raise InputError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    except InvalidDicomError:
        raise InputError("not a DICOM file (no DICM preamble); remove it from the folder", path=path) from None
    except Exception as exc:  # struct.error, EOFError, OSError...: a damaged file
        raise InputError(f"corrupt or truncated DICOM file ({type(exc).__name__}: {exc})", path=path) from None
    return ds


def _fg(item, seq: str, keyword: str):
    """Value of ``keyword`` inside functional-group sequence ``seq`` of one group item."""
    if item is None or seq not in item or not len(item[seq].value):
        return None
    return item[seq].value[0].get(keyword, None)


def frames_of(ds, path: Path) -> list[Frame]:
    """Frame records of one dataset; ``[]`` for non-image objects (SEG, RTSTRUCT, DICOMDIR, ...).

    Examples
    --------
    >>> from pydicom import Dataset
    >>> ds = Dataset(); ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelData = 2, 3, 16, bytes(12)
    >>> ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 5], [1, 0, 0, 0, 1, 0], [1, 1]
    >>> [(f.rows, f.cols, f.ipp.tolist()) for f in frames_of(ds, Path("IM1"))]
    [(2, 3, [0.0, 0.0, 5.0])]
    """
    sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta", None), "MediaStorageSOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "")
    if len(ds) == 0:  # pydicom gives up silently on an unterminated element at the end of the file
        raise InputError("no data elements could be read: truncated or corrupt DICOM file", path=path)
    if sop_class.startswith(NON_IMAGE_SOP_PREFIXES) or modality.upper() in NON_IMAGE_MODALITIES:
        return []
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds or "PixelData" not in ds:
        # pydicom stops quietly at the end of a truncated file
        what = "pixel data" if "Rows" in ds else "image attributes (Rows, Columns, BitsAllocated) or pixel data"
        raise InputError(f"DICOM image without {what}: truncated file, or not an image", path=path)
    common = dict(
        path=path, dataset=ds, rows=int(ds.Rows), cols=int(ds.Columns),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""), study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        series_number=_int_or_none(ds.get("SeriesNumber", None)),
        description=str(ds.get("SeriesDescription", "") or ""), modality=modality,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
    )
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise NotAVolume(f"colour image (SamplesPerPixel={ds.SamplesPerPixel}): not a grey-level volume", path=path)
    if int(ds.get("BitsAllocated", 16) or 16) not in (8, 16, 32):
        raise NotAVolume(f"BitsAllocated={ds.BitsAllocated} is not supported (8, 16 or 32)", path=path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, path, n, common)
    if n > 1:
        raise NotAVolume(f"multi-frame image ({n} frames) without per-frame positions is not a volume", path=path)
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise NotAVolume("no ImagePositionPatient/ImageOrientationPatient: not a cross-sectional slice "
                         "(medseg never invents geometry)", path=path)
    if "PixelSpacing" not in ds:
        raise NotAVolume("no PixelSpacing: the pixel size is unknown", path=path)
    return [Frame(frame_index=None, n_frames_in_file=1,
                  ipp=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),
                  iop=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
                  pixel_spacing=tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", path)),
                  slope=_num(ds, "RescaleSlope", 1.0), intercept=_num(ds, "RescaleIntercept", 0.0),
                  slice_spacing_hint=_num(ds, "SpacingBetweenSlices") or _num(ds, "SliceThickness"), **common)]


def _enhanced_frames(ds, path: Path, n: int, common: dict) -> list[Frame]:
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence
    if len(per) != n:
        raise InputError(f"{n} frames but {len(per)} per-frame functional groups", path=path)

    def get(item, seq, kw):
        v = _fg(item, seq, kw)
        return v if v is not None else _fg(shared, seq, kw)

    out = []
    for k, item in enumerate(per):
        ipp, iop = get(item, "PlanePositionSequence", "ImagePositionPatient"), get(
            item, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = get(item, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise NotAVolume(f"frame {k + 1} lacks its position, orientation or pixel spacing", path=path)
        slope = get(item, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = get(item, "PixelValueTransformationSequence", "RescaleIntercept")
        thick = get(item, "PixelMeasuresSequence", "SpacingBetweenSlices") or get(
            item, "PixelMeasuresSequence", "SliceThickness")
        out.append(Frame(frame_index=k, n_frames_in_file=n,
                         ipp=_floats(ipp, 3, "ImagePositionPatient", path),
                         iop=_floats(iop, 6, "ImageOrientationPatient", path),
                         pixel_spacing=tuple(_floats(ps, 2, "PixelSpacing", path)),
                         slope=float(slope) if slope not in (None, "") else _num(ds, "RescaleSlope", 1.0),
                         intercept=(float(intercept) if intercept not in (None, "")
                                    else _num(ds, "RescaleIntercept", 0.0)),
                         slice_spacing_hint=float(thick) if thick not in (None, "") else None, **common))
    return out


def progress_iter(items, total: int, what: str, progress: bool):
    """``items`` with a transient progress bar on stderr, when asked for, worth it, and stderr is a terminal."""
    import sys

    if not progress or total < 50 or not sys.stderr.isatty():
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description=what, transient=True, console=Console(stderr=True))


def read_headers(path: Path, progress: bool = False) -> tuple[list[Frame], list[Rejected]]:
    """Frame records of every DICOM image under ``path`` (one parse per file), and the images that
    cannot be volume slices (with the reason). Damaged files raise ``InputError``.

    Examples
    --------
    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "IM1").write_text("not DICOM")
    >>> read_headers(d)
    Traceback (most recent call last):
    medseg.errors.InputError: ...IM1: not a DICOM file (no DICM preamble); remove it from the folder
    """
    files = list_candidate_files(path)
    frames: list[Frame] = []
    rejected: list[Rejected] = []
    it = progress_iter(files, len(files), "reading DICOM headers", progress)
    with warnings.catch_warnings():  # pydicom validates values lazily, on access: damage is reported by us
        warnings.simplefilter("ignore")
        for f in it:
            _collect(f, frames, rejected)
    return frames, rejected


def _collect(f: Path, frames: list[Frame], rejected: list[Rejected]) -> None:
    ds = _read_one(f)
    try:
        frames.extend(frames_of(ds, f))
    except NotAVolume as exc:
        rejected.append(Rejected(f, exc.problem, str(ds.get("SeriesInstanceUID", "") or ""),
                                 str(ds.get("StudyInstanceUID", "") or ""), _int_or_none(ds.get("SeriesNumber")),
                                 str(ds.get("SeriesDescription", "") or ""), str(ds.get("Modality", "") or "")))
    except InputError:
        raise
    except Exception as exc:  # a value pydicom cannot convert (IS/DS garbage, odd VRs, broken sequences)
        raise InputError(f"unreadable DICOM header ({type(exc).__name__}: {exc})", path=f) from None
