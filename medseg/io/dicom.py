"""DICOM series discovery and loading.

Public API (others build on these names):

* ``discover_series(path) -> list[SeriesInfo]``: every image series under ``path`` (a folder,
  searched recursively, or one file), split by SeriesInstanceUID and, within one UID, by
  orientation / size / pixel spacing; ordered by (study, SeriesNumber, description, UID) and
  numbered from 0. Non-image objects (SEG, RTSTRUCT, SR, ...) are not series here.
* ``load_series(path, series=None, allow_tilt=False) -> Image``: one series as an ``Image``
  (RAS affine), RescaleSlope/Intercept applied. ``series`` is an index, a SeriesInstanceUID, or
  a ``SeriesInfo`` from ``discover_series``. ``meta`` holds ``modality``, ``series_uid``,
  ``study_uid``, ``frame_of_reference_uid``, ``series_description``, ``series_number``,
  ``sop_instance_uids`` and ``files`` in volume (slice) order: element ``k`` belongs to slice
  ``k`` (for an enhanced multi-frame file, ``files`` repeats the file and ``frame_numbers``
  gives the 1-based frame of each slice).

Geometry: slices are sorted by ImagePositionPatient along the slice normal (row x column
cosines), ascending, like ITK; index axes are (column, row, slice). A series that is not a
regular volume (missing slices, irregular spacing, several slices at one position, gantry
tilt unless ``allow_tilt``, slices that disagree on their frame of reference, modality, rescale or
SOPInstanceUID: :mod:`medseg.io.dicom_consistency`) raises ``InputError`` with the reason; ``SeriesInfo.problem``
holds the same reason after discovery, so listing never fails on a bad series. Images that can
never be volume slices (no patient geometry, colour, cine) are listed with ``is_volume=False``.
Damaged files (truncated, corrupt, not DICOM under a DICOM-like name) raise ``InputError``
naming the file. ``select_series(series, which, path)`` is the picking rule shared by the CLI
(:mod:`medseg.io.series_names` picks and names the series ``convert`` and ``predict`` take).
``SeriesInfo.release_headers()`` drops the parsed headers a listed series holds (they are read
again on loading), for callers that keep many series.

Values: the output dtype follows from the header (not the voxels): the stored type when there is
no rescale, else the smallest of int16/int32 holding every rescaled value the stored bits allow
(SimpleITK's choice), else float32 for non-integral slopes. Values are the modality values whatever the
PhotometricInterpretation: MONOCHROME1 (inverted display) is not inverted, unlike SimpleITK/GDCM; PixelPaddingValue
voxels keep their rescaled value. Arrays are Fortran-ordered views
(``[i, j, k]`` over the ``(slice, row, column)`` buffer), like nibabel's.

Examples
--------
>>> from medseg.io.dicom import discover_series, load_series
>>> found = discover_series("../shared/data/dicom/mr_study")  # doctest: +SKIP
>>> [s.label() for s in found][:2]  # doctest: +SKIP
['0: T1post (MR, 22 slices)', '1: T1pre_reg (MR, 22 slices)']
>>> load_series(found[4]).shape  # doctest: +SKIP
(35, 51, 32)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.cpu import ignored_warnings
from medseg.errors import InputError
from medseg.io import dicom_geometry as geo
from medseg.io.dicom_consistency import inconsistency
from medseg.io.dicom_files import no_series_message
from medseg.io.dicom_headers import Frame, Rejected, progress_iter, read_headers
from medseg.io.image import Image

_ORIENT_ATOL = 1e-3  # cosines; slices within this are "the same orientation"
_SPACING_ATOL = 1e-4  # mm


@dataclass
class SeriesInfo:
    """One discovered series: its files in slice order (each file once) and the identifiers a user picks it by.

    ``meta`` holds ``study_uid``, ``frame_of_reference_uid``, ``series_number``, ``shape``,
    ``spacing``, ``affine`` (RAS, 4x4 list), ``orientation`` and, for a UID that had to be
    split, ``split`` (why). ``problem`` is why the series cannot load as a regular volume
    (``None`` when it can); ``tilt_degrees`` is non-zero for a gantry-tilted series. Images that
    can never be volume slices (no patient geometry, colour, cine) are listed too, with
    ``is_volume=False`` and the reason in ``problem``.

    Examples
    --------
    >>> s = SeriesInfo(0, "1.2.3", "Scout", "CT", [Path("ct/1.dcm"), Path("ct/2.dcm")], is_volume=False)
    >>> s.label(), s.folder.as_posix()
    ('0: Scout (CT, 2 slices)', 'ct')
    """

    index: int
    series_uid: str
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    problem: str | None = None
    tilt_degrees: float = 0.0
    frames: list[Frame] = field(default_factory=list, repr=False)
    is_volume: bool = True  # False for images that cannot be volume slices (screenshots, colour, cine)

    @property
    def num_slices(self) -> int:
        return len(self.frames) if self.is_volume else len(self.files)

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the series (what error messages name)."""
        if not self.files:
            return Path(".")
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))

    def label(self) -> str:
        """Short one-line description: ``index: description (modality, N slices)``; a single file is named, so that
        a stray slice split off a series (another size or orientation) can be found."""
        desc = self.description or "(no description)"
        n = self.num_slices
        what = f"1 slice: {self.files[0].name}" if n == 1 and len(self.files) == 1 else f"{n} slices"
        return f"{self.index}: {desc} ({self.modality or '?'}, {what})"

    def release_headers(self) -> "SeriesInfo":
        """Drop the parsed headers (pydicom datasets, ~60 kB per slice) the frames hold; returns the series.

        What listing, naming and export use stays; :func:`load_series` reads each file's header again (once per
        file) when the series is loaded. For callers that keep many series, such as a cohort being predicted.
        """
        for f in self.frames:
            f.dataset = None
        return self


def _same_stack(a: Frame, b: Frame) -> bool:
    return (a.rows == b.rows and a.cols == b.cols
            and np.allclose(a.iop, b.iop, atol=_ORIENT_ATOL)
            and np.allclose(a.pixel_spacing, b.pixel_spacing, atol=_SPACING_ATOL))


def _stack_order(stack: list[Frame]) -> tuple:
    """Largest stack first; equal sizes by their smallest SOPInstanceUID: a property of the slices, not of the order
    their files were found in, so that renaming files never renumbers the parts of a split series (blank UIDs, as
    some anonymisers leave them: by orientation and position, the path last)."""
    return -len(stack), min((f.sop_uid, tuple(np.round(f.iop, 4)), tuple(np.round(f.ipp, 3)), str(f.path),
                             f.frame_index or 0) for f in stack)


def _group_key(f: Frame | Rejected) -> tuple:
    # Empty SeriesInstanceUIDs happen (anonymisers): fall back to what identifies a series to a human.
    if f.series_uid:
        return (f.study_uid, f.series_uid)
    return (f.study_uid, "", f.series_number, f.description, f.modality)


def _lacks_slices(info: SeriesInfo, rejected: list[Rejected]) -> SeriesInfo:
    """``info`` not loadable when its series' ``rejected`` images include some of its slices' size that cannot be
    read as slices (no geometry, colour, an unsupported pixel depth): slices at an end of the stack, where no gap
    shows them missing (a volume short of them, with exit 0, before)."""
    size = (info.frames[0].rows, info.frames[0].cols) if info.frames else None
    lost = [r for r in rejected if r.size is not None and r.size == size]
    if lost and info.problem is None:
        what = "no geometry" if lost[0].no_geometry else "cannot be read as its slices"
        info.problem = (f"{len(lost)} image(s) of this series have its slices' size but {what} ({lost[0].path}: "
                        f"{lost[0].reason}): the volume would lack them; remove them if they are not its slices")
    return info


def _series_sort_key(info: SeriesInfo):
    num = info.meta.get("series_number")
    return (info.meta.get("study_uid", ""), num if isinstance(num, int) else 1 << 30, info.description,
            info.series_uid, info.meta.get("_split_order", 0))


def _build_series(frames: list[Frame], split_note: str | None, split_order: int) -> SeriesInfo:
    first = frames[0]
    try:
        frames = [frames[i] for i in geo.sort_positions([f.ipp for f in frames], geo.slice_axes(first.iop)[2])]
        # the axes of the lowest slice, as ITK takes them: never those of whichever file was listed first (the
        # cosines of a stack's slices may differ by up to _ORIENT_ATOL)
        first = frames[0]
        row, col, normal = geo.slice_axes(first.iop)
    except ValueError as exc:  # a broken orientation: listed with the reason, never loaded
        info = SeriesInfo(-1, first.series_uid, first.description, first.modality,
                          list(dict.fromkeys(f.path for f in frames)), {}, str(exc), 0.0, frames)
        info.meta.update(study_uid=first.study_uid, series_number=first.series_number, _split_order=split_order)
        return info
    files = list(dict.fromkeys(f.path for f in frames))  # unique, in slice order (a multi-frame file once)
    info = SeriesInfo(-1, first.series_uid, first.description, first.modality, files, {}, None, 0.0, frames)
    info.meta.update(study_uid=first.study_uid, frame_of_reference_uid=first.frame_of_reference_uid,
                     series_number=first.series_number, _split_order=split_order)
    if split_note:
        info.meta["split"] = split_note
    positions = np.array([f.ipp for f in frames])
    try:
        spacing, drift = geo.stack_geometry(positions, normal, fallback_spacing=first.slice_spacing_hint or 1.0)
    except ValueError as exc:
        info.problem = str(exc)
        spacing, drift = float(np.linalg.norm(positions[-1] - positions[0])) / max(len(frames) - 1, 1), None
    if drift is not None and geo.is_tilted(drift, spacing):
        info.tilt_degrees = geo.tilt_degrees(drift, spacing)
        info.meta["_drift"] = drift
    aff = geo.ras_affine(row, col, first.pixel_spacing, positions[0], normal, spacing)
    info.meta.update(shape=(first.cols, first.rows, len(frames)),
                     spacing=(float(first.pixel_spacing[1]), float(first.pixel_spacing[0]), float(spacing)),
                     affine=aff.tolist(), orientation=Image(np.zeros((1, 1, 1)), aff).orientation)
    return info


def discover_series(path: str | os.PathLike, progress: bool = False) -> list[SeriesInfo]:
    """Every DICOM image series in a folder (recursively) or a file.

    Raises ``InputError`` for a missing path, a corrupt or truncated DICOM file, or a file with a
    DICOM-like name (``.dcm``, ``.ima``, no suffix) that is not DICOM. Files whose names say they
    are something else (``.txt``, ``.nrrd``, ``.png``, ``AUTORUN.INF``, hidden files, ...) are ignored, and so
    are files with other suffixes that lack the DICM preamble. Symlinked folders are followed (each folder and
    file once). A DICOMDIR stands for the folder it indexes.

    Examples
    --------
    >>> discover_series("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    medseg.errors.InputError: /nonexistent: no such file or folder
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    frames, rejected = read_headers(path, progress=progress)
    others: dict[tuple, list[Rejected]] = {}
    for r in rejected:
        others.setdefault(_group_key(r), []).append(r)
    groups: dict[tuple, list[Frame]] = {}
    for f in frames:
        groups.setdefault(_group_key(f), []).append(f)
    series: list[SeriesInfo] = []
    for key, members in groups.items():
        stacks: list[list[Frame]] = []
        for f in members:
            for st in stacks:
                if _same_stack(st[0], f):
                    st.append(f)
                    break
            else:
                stacks.append([f])
        stacks.sort(key=_stack_order)
        for k, st in enumerate(stacks):
            note = None
            if len(stacks) > 1:
                note = (f"SeriesInstanceUID {key[1] or '(empty)'} mixes {len(stacks)} orientations/sizes "
                        f"({', '.join(str(len(s)) for s in stacks)} slices); this is part {k + 1}"
                        + (" (a single slice: a localizer?)" if len(st) == 1 else ""))
            info = _build_series(st, note, k)
            # slices that disagree on what one volume shares: said first (a frame of reference mix would else
            # show only as an odd gap, or not at all)
            info.problem = inconsistency(st) or info.problem
            series.append(_lacks_slices(info, others.get(key, [])))
    for members in others.values():
        r = members[0]
        info = SeriesInfo(-1, r.series_uid, r.description, r.modality, [m.path for m in members],
                          {"study_uid": r.study_uid, "series_number": r.series_number, "_split_order": 1 << 20},
                          f"not a volume: {r.reason}", is_volume=False)
        series.append(info)
    series.sort(key=_series_sort_key)
    for i, s in enumerate(series):
        s.index = i
        s.meta.pop("_split_order", None)
    return series


def select_series(series: list[SeriesInfo], which: str | int | None, path) -> SeriesInfo:
    """Pick one series by index or SeriesInstanceUID; ``None`` works only when there is one (else ``InputError``).

    Examples
    --------
    >>> found = [SeriesInfo(i, f"1.2.{i}", name, "MR") for i, name in enumerate(["T1", "T2"])]
    >>> select_series(found, 1, "study").description, select_series(found, "1.2.0", "study").description
    ('T2', 'T1')
    """
    if not series:
        raise InputError(no_series_message(path), path=path)
    if which is None:
        if len(series) == 1:
            return series[0]
        listing = "; ".join(s.label() for s in series[:8]) + ("; ..." if len(series) > 8 else "")
        raise InputError(f"holds {len(series)} series, pick one with --series INDEX|UID: {listing}", path=path)
    if isinstance(which, (int, np.integer)) or (isinstance(which, str) and re.fullmatch(r"\d{1,6}", which.strip())):
        i = int(which)
        if not 0 <= i < len(series):
            raise InputError(f"series index {i} out of range (0..{len(series) - 1})", path=path)
        return series[i]
    uid = str(which).strip()
    hits = [s for s in series if s.series_uid == uid]
    if not hits:
        raise InputError(f"no series with SeriesInstanceUID {uid}", path=path)
    if len(hits) > 1:
        why = ("mixes orientations or image sizes" if all(s.is_volume for s in hits) else
               "holds images that are not slices of its volume")
        raise InputError(f"series {uid} {why} ({len(hits)} parts: {', '.join(s.label() for s in hits)}); pick one "
                         "by index", path=path)
    return hits[0]


def _dataset(frame: Frame):
    """The frame's parsed header, read again when it was released (:meth:`SeriesInfo.release_headers`)."""
    if frame.dataset is not None:
        return frame.dataset
    from medseg.io.dicom_headers import _read_one

    ds = _read_one(frame.path)  # large values deferred again: pixel data is read from its offset
    if (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) != (frame.rows, frame.cols):
        raise InputError("the file changed since its folder was listed (image size differs)", path=frame.path)
    return ds


def _read_pixels(frames: list[Frame], progress: bool = False) -> np.ndarray:
    """Stored values of every frame, stacked in slice order: (slices, rows, columns).

    Files whose decoder releases the GIL (JPEG 2000 through imagecodecs) decode in a thread pool.
    """
    from concurrent.futures import ThreadPoolExecutor

    from medseg.cpu import usable_cores
    from medseg.io.dicom_pixels import parallel_decode_helps, read_frames

    by_file: dict[Path, list[int]] = {}
    for k, f in enumerate(frames):
        by_file.setdefault(f.path, []).append(k)
    jobs = [(p, ks, _dataset(frames[ks[0]])) for p, ks in by_file.items()]

    def read(job) -> np.ndarray:
        path, ks, ds = job
        try:
            return read_frames(ds, path, frames[ks[0]].n_frames_in_file)
        except InputError:
            raise
        except Exception as exc:  # an attribute pydicom cannot convert: the file is damaged
            raise InputError(f"unreadable image attributes ({type(exc).__name__}: {exc})", path=path) from None

    # the cores this process may use (a cpuset, a container's quota), not the host's: more decoding threads than
    # that only contend
    workers = min(len(jobs), usable_cores(), 8)
    # pydicom warns (multi-line) about what we report in one line. Silenced for the whole pool: the filter list is
    # the process's, and a catch_warnings in each worker restored it out of order, leaving "ignore" installed for
    # good (every warning of the caller's program silenced after one JPEG 2000 series); ignored_warnings shares one
    # saved list among the blocks of all threads (the workers', and other calls' where a caller runs several)
    with ignored_warnings():
        if workers > 1 and parallel_decode_helps(jobs[0][2]):
            with ThreadPoolExecutor(workers) as pool:
                decoded = list(progress_iter(pool.map(read, jobs), len(jobs), "decoding DICOM", progress))
        else:
            decoded = [read(j) for j in progress_iter(jobs, len(jobs), "reading DICOM", progress)]
    first = frames[0]
    stacked = np.empty((len(frames), first.rows, first.cols), dtype=decoded[0].dtype)
    for (path, ks, _), data in zip(jobs, decoded):
        if data.dtype != stacked.dtype:
            raise InputError(f"slices differ in pixel type ({data.dtype} vs {stacked.dtype})", path=path)
        for k in ks:
            stacked[k] = data[frames[k].frame_index or 0]
    return stacked


def load_series(path: str | os.PathLike | SeriesInfo, series: str | int | SeriesInfo | None = None,
                allow_tilt: bool = False, progress: bool = False) -> Image:
    """Load one DICOM series as an ``Image`` (RAS affine, rescale applied).

    Parameters
    ----------
    path : path or SeriesInfo
        A folder (searched recursively), one DICOM file (a single slice or an enhanced
        multi-frame image), or a ``SeriesInfo`` from :func:`discover_series`.
    series : int, str or SeriesInfo, optional
        Index or SeriesInstanceUID; needed when the folder holds several series.
    allow_tilt : bool
        Resample a gantry-tilted series onto an orthogonal grid (linear interpolation)
        instead of refusing it.
    progress : bool
        Show a (transient) progress bar on a terminal for long series.

    Returns
    -------
    Image
        Indexed ``[column, row, slice]``, with the ``meta`` listed in the module docstring.

    Examples
    --------
    A series of three slices made from pydicom's example CT (128 x 128 pixels), 5 mm apart:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> folder, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> for k in range(3):
    ...     ds = examples.ct  # a fresh copy each time
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] += 5 * k
    ...     ds.save_as(folder / f"{k}.dcm")
    >>> image = load_series(folder)
    >>> image.shape, image.array.dtype.name, image.spacing, image.meta["modality"]  # rescaled: HU
    ((128, 128, 3), 'int32', (0.661468, 0.661468, 5.0), 'CT')
    """
    if isinstance(path, SeriesInfo):
        info, where = path, path.folder
    elif isinstance(series, SeriesInfo):
        info, where = series, Path(path)
    else:
        where = Path(path)
        info = select_series(discover_series(where), series, where)
    if info.problem:
        raise InputError(f"series {info.label()} is not a regular volume: {info.problem}", path=info.folder)
    if info.tilt_degrees and not allow_tilt:
        raise InputError(f"series {info.label()} has a gantry tilt of {info.tilt_degrees:.2f} degrees "
                         "(use --allow-tilt to resample it onto an orthogonal grid)", path=info.folder)
    from medseg.io.dicom_pixels import apply_rescale, rescaled_dtype

    from medseg.io.limits import check_fits

    frames = info.frames
    first = frames[0]
    # before any decoding: compressed frames (RLE, JPEG 2000) of a few bytes may claim 65535 x 65535 pixels each
    check_fits((first.cols, first.rows, len(frames)), np.uint8 if first.bits_stored <= 8 else np.uint16,
               first.path if len({f.path for f in frames}) == 1 else where, "voxels")
    stacked = _read_pixels(frames, progress)
    stored = stacked.dtype
    slopes = [f.slope for f in frames]
    intercepts = [f.intercept for f in frames]
    # the widest stored range of any slice: a slice with more BitsStored than the first must not wrap around
    out_dtype = rescaled_dtype(max(f.bits_stored for f in frames), any(f.signed for f in frames), slopes, intercepts,
                               np.dtype(stored))
    values = apply_rescale(stacked, slopes, intercepts, out_dtype)
    # (k, row, col) -> [i=col, j=row, k] as a view: Fortran-ordered, like nibabel's arrays, and what
    # NIfTI writing and SimpleITK conversion want (a C-ordered copy would cost ~60 ms per 512x512x22)
    volume = values.transpose(2, 1, 0)
    meta = {
        "source": str(where), "format": "dicom", "modality": info.modality, "series_uid": info.series_uid,
        "study_uid": info.meta.get("study_uid", ""),
        "frame_of_reference_uid": info.meta.get("frame_of_reference_uid", ""),
        "series_description": info.description, "series_number": info.meta.get("series_number"),
        "sop_instance_uids": [f.sop_uid for f in frames], "files": [str(f.path) for f in frames],
        "frame_numbers": [(f.frame_index or 0) + 1 for f in frames], "series_index": info.index,
    }
    affine = np.array(info.meta["affine"], dtype=float)
    if info.tilt_degrees:
        row, col, _ = geo.slice_axes(first.iop)
        volume = geo.untilt(volume, info.meta["_drift"], row, col, first.pixel_spacing)
        meta["tilt_corrected_degrees"] = info.tilt_degrees
    return Image(volume, affine, meta)
