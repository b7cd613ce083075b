"""Reading DICOM headers once: one ``Frame`` record per image slice (a file, or a frame of an
enhanced multi-frame file), with what series discovery and loading need.

Each file is parsed once with its large values deferred (``defer_size``): the pixel data is then
read from its file offset when the series is loaded, so no file is parsed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cpu import ignored_warnings
from medseg.errors import InputError
from medseg.io.dicom_files import list_candidate_files, read_header

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


class NoGeometry(NotAVolume):
    """A grey-level single-frame image without position, orientation or pixel size: not a slice by itself, but in a
    series whose other images are slices of its size, one whose geometry was lost."""


@dataclass
class Rejected:
    """A DICOM image that is not a volume slice, with the identifiers its series is listed by; ``size`` (rows,
    columns) where the header gives it, and whether it was rejected as :class:`NoGeometry`."""

    path: Path
    reason: str
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str
    size: tuple[int, int] | None = None
    no_geometry: bool = False


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
    has_rescale: bool = False  # RescaleSlope or RescaleIntercept present (else 1 and 0 are assumed)
    rescale_type: str = ""  # RescaleType (units of the rescaled values), '' when absent


def _floats(value, n: int, what: str, path: Path, positive: bool = False) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"unreadable {what} ({value!r})", path=path) from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must have {n} finite numbers, got {value!r}", path=path)
    if positive and np.any(arr <= 0):  # a zero size has no geometry, a negative one would mirror the image
        raise InputError(f"{what} must be positive, got {value!r}", path=path)
    return arr


def _rescale(value, keyword: str, default: float, path: Path) -> float:
    """RescaleSlope or RescaleIntercept: ``default`` when absent or empty; a value that is not one finite number is
    damage, refused (taking the default instead would scale that slice wrongly without a word).

    Examples
    --------
    >>> _rescale("2.5", "RescaleSlope", 1.0, Path("IM1")), _rescale(None, "RescaleSlope", 1.0, Path("IM1"))
    (2.5, 1.0)
    >>> _rescale("1.5.0", "RescaleSlope", 1.0, Path("IM1"))
    Traceback (most recent call last):
    medseg.errors.InputError: IM1: unreadable RescaleSlope ('1.5.0'): not one number
    """
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not np.isfinite(out):
        raise InputError(f"unreadable {keyword} ({value!r}): not one number", path=path)
    return out


def _num(ds, keyword: str, default=None):
    v = ds.get(keyword, None)
    if v is None or v == "":
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _present(ds, keyword: str) -> bool:
    """Whether ``keyword`` holds a value (an empty element counts as absent, as :func:`_rescale` reads it)."""
    return ds.get(keyword, None) not in (None, "")


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _read_one(path: Path):
    from pydicom.errors import InvalidDicomError

    try:
        with ignored_warnings():  # pydicom warns about damage we report ourselves, in one line
            ds = read_header(path, defer_size=_DEFER)
    except InputError:
        raise
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
        rescale_type=str(ds.get("RescaleType", "") or "").strip().upper(),
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
        raise NoGeometry("no ImagePositionPatient/ImageOrientationPatient: not a cross-sectional slice "
                         "(medseg never invents geometry)", path=path)
    if "PixelSpacing" not in ds:
        raise NoGeometry("no PixelSpacing: the pixel size is unknown", path=path)
    return [Frame(frame_index=None, n_frames_in_file=1,
                  ipp=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path),
                  iop=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
                  pixel_spacing=tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", path, positive=True)),
                  slope=_rescale(ds.get("RescaleSlope"), "RescaleSlope", 1.0, path),
                  intercept=_rescale(ds.get("RescaleIntercept"), "RescaleIntercept", 0.0, path),
                  slice_spacing_hint=_num(ds, "SpacingBetweenSlices") or _num(ds, "SliceThickness"),
                  has_rescale=_present(ds, "RescaleSlope") or _present(ds, "RescaleIntercept"), **common)]


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
                         pixel_spacing=tuple(_floats(ps, 2, "PixelSpacing", path, positive=True)),
                         slope=_rescale(slope if slope not in (None, "") else ds.get("RescaleSlope"),
                                        "RescaleSlope", 1.0, path),
                         intercept=_rescale(intercept if intercept not in (None, "") else ds.get("RescaleIntercept"),
                                            "RescaleIntercept", 0.0, path),
                         slice_spacing_hint=float(thick) if thick not in (None, "") else None,
                         has_rescale=(slope not in (None, "") or intercept not in (None, "")
                                      or _present(ds, "RescaleSlope") or _present(ds, "RescaleIntercept")),
                         **common))
    return out


def progress_iter(items, total: int, what: str, progress: bool):
    """``items`` with a transient progress bar on stderr, when asked for, worth it, and stderr is a terminal."""
    from medseg.progress import track

    return track(items, what, progress and total >= 50, total=total)


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
    with ignored_warnings():  # pydicom validates values lazily, on access: damage is reported by us
        for f in it:
            _collect(f, frames, rejected)
    return frames, rejected


def _size(ds) -> tuple[int, int] | None:
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None


def _collect(f: Path, frames: list[Frame], rejected: list[Rejected]) -> None:
    ds = _read_one(f)
    try:
        frames.extend(frames_of(ds, f))
    except NotAVolume as exc:
        rejected.append(Rejected(f, exc.problem, str(ds.get("SeriesInstanceUID", "") or ""),
                                 str(ds.get("StudyInstanceUID", "") or ""), _int_or_none(ds.get("SeriesNumber")),
                                 str(ds.get("SeriesDescription", "") or ""), str(ds.get("Modality", "") or ""),
                                 _size(ds), isinstance(exc, NoGeometry)))
    except InputError:
        raise
    except Exception as exc:  # a value pydicom cannot convert (IS/DS garbage, odd VRs, broken sequences)
        raise InputError(f"unreadable DICOM header ({type(exc).__name__}: {exc})", path=f) from None
