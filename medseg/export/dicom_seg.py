"""DICOM-SEG with highdicom: write from a label map on a reference series, read back to masks.

Writing: one segment per label value present (numbered 1..N in increasing label value, as the
standard requires consecutive segment numbers), SNOMED CT coded category/type (see
:mod:`medseg.export.colors`), CIELab display colour, algorithm identification (medseg, version,
model name). highdicom takes the patient/study identifiers, frame of reference and per-frame plane
positions from the referenced instances themselves, and omits empty frames.

Reading: a FRACTIONAL segment holds the voxels of at least half its maximum fractional value; a file whose
Number of Frames disagrees with its frames or pixel data is refused as damaged.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

import medseg
from medseg.cpu import ignored_warnings
from medseg.errors import InputError
from medseg.io.image import LPS_TO_RAS, Image
from medseg.io.limits import check_fits

SEG_TYPES = ("binary", "labelmap")


def _algorithm(model_name: str | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    params = {"model": model_name} if model_name else None
    return hd.AlgorithmIdentificationSequence(name="medseg" if not model_name else f"medseg {model_name}"[:64],
                                              family=codes.DCM.ArtificialIntelligence,
                                              version=str(medseg.__version__), source="medseg", parameters=params)


def segment_descriptions(infos, model_name: str | None = None) -> list:
    """highdicom ``SegmentDescription`` per :class:`~medseg.export.colors.SegmentInfo` (numbered 1..N).

    Parameters
    ----------
    infos : list of SegmentInfo
        In segment order.
    model_name : str, optional
        Recorded in each segment's algorithm identification.

    Returns
    -------
    list of highdicom.seg.SegmentDescription

    Examples
    --------
    >>> from medseg.export.colors import segment_info
    >>> descs = segment_descriptions([segment_info(4, "liver"), segment_info(7, "kidney_left")])
    >>> [(d.SegmentNumber, d.SegmentLabel, d.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) for d in descs]
    [(1, 'liver', 'Liver'), (2, 'kidney_left', 'Kidney')]
    """
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    algo = _algorithm(model_name)
    out = []
    for number, info in enumerate(infos, start=1):
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=info.name[:64],
            segmented_property_category=info.category, segmented_property_type=info.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            display_color=hd.color.CIELabColor.from_rgb(*info.color),
        )
        if info.laterality is not None:  # e.g. Kidney + Left (the standard's modifier, not a new code)
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                CodedConcept(info.laterality.value, info.laterality.scheme_designator, info.laterality.meaning)]
        out.append(desc)
    return out


# Patient and General Study attributes highdicom copies from the source images; Type 2 in the SEG IOD.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_dicom_seg(labels_on_ref: np.ndarray, ref, infos, out_path: str | os.PathLike, *,
                    model_name: str | None = None, seg_type: str = "binary", protect=()) -> Path:
    """Write a DICOM-SEG for a label array on the reference grid.

    Parameters
    ----------
    labels_on_ref : ndarray, shape (columns, rows, slices)
        Label values on ``ref``'s grid, in its slice order (see ``resample_to_reference``).
    ref : ReferenceSeries
    infos : list of SegmentInfo
        One per label value to write, in segment order.
    out_path : path
        The DICOM file to write.
    model_name : str, optional
        Recorded in the algorithm identification.
    seg_type : {'binary', 'labelmap'}
        BINARY (default; what older validators know) or LABELMAP (DICOM 2024, one frame per slice).
    protect : iterable of path
        Input paths that must not be overwritten.

    Returns
    -------
    Path
        ``out_path``.

    Examples
    --------
    A label map of two segments on three slices made from pydicom's example CT (128 x 128 pixels), 5 mm apart:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from pydicom import dcmread, examples
    >>> from pydicom.uid import generate_uid
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.reference import load_reference
    >>> root, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> (root / "ct").mkdir()
    >>> for k in range(3):
    ...     ds = examples.ct
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] += 5 * k
    ...     ds.save_as(root / "ct" / f"{k}.dcm")
    >>> ref = load_reference(root / "ct")
    >>> labels = np.zeros(ref.shape, np.uint8)  # (columns, rows, slices)
    >>> labels[40:80, 50:90, 1:] = 1; labels[10:20, 10:20, 0] = 2
    >>> out = write_dicom_seg(labels, ref, [segment_info(1, "liver"), segment_info(2, "spleen")], root / "seg.dcm")
    >>> seg = dcmread(out)
    >>> seg.Modality, int(seg.NumberOfFrames), [s.SegmentLabel for s in seg.SegmentSequence]  # empty frames omitted
    ('SEG', 3, ['liver', 'spleen'])
    """
    import highdicom as hd
    import pydicom

    from medseg.io.atomic import atomic_path

    seg_type = seg_type.lower()
    if seg_type not in SEG_TYPES:
        raise InputError(f"unknown SEG type {seg_type!r} (use one of {', '.join(SEG_TYPES)})")
    # segment numbers on the series grid, frames in the reference's slice order: (slices, rows, columns)
    seg_arr = np.zeros(labels_on_ref.shape[::-1], np.uint16 if len(infos) > 255 else np.uint8)
    frames = np.transpose(labels_on_ref, (2, 1, 0))
    for number, info in enumerate(infos, start=1):
        seg_arr[frames == info.value] = number
    sources = []
    for f in ref.files:  # highdicom reads geometry and identifiers; pixel data is not needed
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty = default repertoire; highdicom rejects the empty value
        for keyword in _TYPE2_COPIED:  # Type 2 in the SEG: present, possibly empty (real series omit some)
            if keyword not in ds:
                setattr(ds, keyword, "")
        sources.append(ds)
    desc = str(ref.meta.get("series_description") or "")
    with ignored_warnings(UserWarning):  # highdicom's person-name style hints on source names
        try:
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=seg_arr,
                segmentation_type=hd.seg.SegmentationTypeValues[seg_type.upper()],
                segment_descriptions=segment_descriptions(infos, model_name),
                series_instance_uid=hd.UID(), series_number=_series_number(ref), sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer="medseg", manufacturer_model_name=(model_name or "medseg")[:64],
                software_versions=str(medseg.__version__), device_serial_number="none",
                series_description=f"medseg segmentation{' of ' + desc if desc else ''}"[:64],
                content_label="MEDSEG", content_description="medseg segmentation",
                content_creator_name="medseg^", omit_empty_frames=True,
            )
        except (ValueError, TypeError, AttributeError) as exc:  # highdicom's own checks of the reference
            raise InputError(f"cannot build a DICOM-SEG on this series ({exc})", path=ref.path) from exc
    with atomic_path(out_path, protect=protect) as tmp:
        seg.save_as(str(tmp))
    return Path(out_path)


def _series_number(ref) -> int:
    try:
        return int(ref.datasets[0].get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def read_seg_masks(path: str | os.PathLike, *, slabs: bool = False):
    """Read a DICOM-SEG into per-segment binary masks on its own frame grid.

    Parameters
    ----------
    path : path
        The DICOM-SEG file.
    slabs : bool
        Take each frame as a slab of its Slice Thickness when the SEG states no Spacing Between Slices: frames a
        whole multiple of it apart get the empty slices between them back (see :func:`_restore_omitted_slices`).
        For resampling onto another grid; by default the slice step is the one highdicom finds between the frames.

    Returns
    -------
    masks : Image
        ``channels_first`` uint8 stack ``[segment, i, j, k]`` with a RAS affine (frames the SEG omits
        are empty). A FRACTIONAL segment holds the voxels of at least half its maximum fractional value.
    names : dict[int, str]
        Segment number -> segment label, in channel order.
    seg : highdicom.seg.Segmentation

    Examples
    --------
    Written by :func:`write_dicom_seg`: a label map of two segments on three slices made from pydicom's example CT
    (128 x 128 pixels), 5 mm apart:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.reference import load_reference
    >>> root, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> (root / "ct").mkdir()
    >>> for k in range(3):
    ...     ds = examples.ct
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] += 5 * k
    ...     ds.save_as(root / "ct" / f"{k}.dcm")
    >>> ref = load_reference(root / "ct")
    >>> labels = np.zeros(ref.shape, np.uint8)  # (columns, rows, slices)
    >>> labels[40:80, 50:90, 1:] = 1; labels[10:20, 10:20, 0] = 2
    >>> out = write_dicom_seg(labels, ref, [segment_info(1, "liver"), segment_info(2, "spleen")], root / "seg.dcm")
    >>> masks, names, seg = read_seg_masks(out)
    >>> masks.array.shape, masks.array.dtype.name, names, masks.array.sum(axis=(1, 2, 3)).tolist()
    ((2, 128, 128, 3), 'uint8', {1: 'liver', 2: 'spleen'}, [3200, 100])
    >>> bool(np.allclose(masks.affine, ref.grid_affine()))  # the series' grid
    True
    """
    path = Path(path)
    seg, numbers = _read_segments(path)
    try:
        vol = seg.get_volume(segment_numbers=numbers, combine_segments=False)
    except Exception as exc:
        raise InputError(f"the DICOM-SEG frames do not form one volume ({exc})", path=path) from exc
    arr = np.asarray(vol.array)
    if arr.ndim == 3:
        arr = arr[..., None]
    # highdicom: axes (slice, row, column[, segment]), affine to LPS; medseg: [i=column, j=row, k=slice]
    arr = _inside(np.transpose(arr, (3, 2, 1, 0)), seg)
    aff_lps = np.asarray(vol.affine, float)[:, [2, 1, 0, 3]]
    if np.dot(np.cross(aff_lps[:3, 0], aff_lps[:3, 1]), aff_lps[:3, 2]) < 0:  # slices along the normal, as a series
        arr = arr[..., ::-1]
        aff_lps[:3, 3] += (arr.shape[-1] - 1) * aff_lps[:3, 2]
        aff_lps[:3, 2] *= -1
    if slabs:
        arr, aff_lps = _restore_omitted_slices(arr, aff_lps, seg)
    names, meta = _names_and_meta(seg, numbers, path)
    return Image(arr.astype(np.uint8), LPS_TO_RAS @ aff_lps, meta, channels_first=True), names, seg


def _inside(values: np.ndarray, seg) -> np.ndarray:
    """Segment membership from highdicom's pixels: a FRACTIONAL segment (values rescaled to [0, 1]) holds the voxels
    of at least half its maximum fractional value (probability >= 0.5, or at least half occupied), not every voxel
    with a trace of it; BINARY and LABELMAP values are 0/1."""
    if str(seg.get("SegmentationType", "")).upper() == "FRACTIONAL":
        return values >= 0.5
    return values > 0


def _pixel_measure(seg, keyword: str):
    """A Pixel Measures attribute (shared, else the first frame's), or None."""
    for groups in (seg.get("SharedFunctionalGroupsSequence"), seg.get("PerFrameFunctionalGroupsSequence")):
        if groups and "PixelMeasuresSequence" in groups[0] and keyword in groups[0].PixelMeasuresSequence[0]:
            return groups[0].PixelMeasuresSequence[0].get(keyword)
    return None


def _restore_omitted_slices(arr: np.ndarray, aff_lps: np.ndarray, seg):
    """Put back the empty frames a sparse SEG without Spacing Between Slices left out between its frames.

    highdicom then takes the slice step from the frames present, so frames a whole multiple of their Slice
    Thickness apart (lesions on slices 0 and 3) become a volume 3 slices thick per step, which nearest-neighbour
    resampling would smear over the slices in between. The step is cut back to the thickness, with empty slices.
    (A SEG on a series with gaps, 1 mm slices every 10 mm, gets its gaps as empty slices too: right for resampling.)
    """
    if arr.shape[-1] < 2 or _pixel_measure(seg, "SpacingBetweenSlices") is not None:
        return arr, aff_lps
    try:
        thickness = float(_pixel_measure(seg, "SliceThickness") or 0)
    except (TypeError, ValueError):
        return arr, aff_lps
    step = float(np.linalg.norm(aff_lps[:3, 2]))
    ratio = step / thickness if thickness > 0 else 0.0
    if ratio < 1.5 or abs(ratio - round(ratio)) > 0.01:  # frames adjacent (or not on a grid of the thickness)
        return arr, aff_lps
    m = int(round(ratio))
    shape = (*arr.shape[:-1], (arr.shape[-1] - 1) * m + 1)
    check_fits(shape, arr.dtype, getattr(seg, "filename", None), "segment voxels")  # a Slice Thickness of 1e-9 mm
    out = np.zeros(shape, arr.dtype)
    out[..., ::m] = arr
    aff_lps = aff_lps.copy()
    aff_lps[:3, 2] /= m
    return out, aff_lps


def _read_segments(path: Path):
    """The parsed SEG and its segment numbers (``InputError`` when unreadable or without segments)."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise InputError(f"cannot read DICOM-SEG ({exc})", path=path) from exc
    _check_frames(seg, path)
    numbers = [n for n in seg.get_segment_numbers() if n != 0]  # LABELMAP SEGs may describe background as 0
    if not numbers:
        raise InputError("the DICOM-SEG has no segments", path=path)
    check_seg_fits(seg, path, len(numbers))
    return seg, numbers


def check_seg_fits(seg, path, segments: int | None = None) -> None:
    """``InputError`` when the frames highdicom decodes, or the volume of one mask per segment it returns (at least
    one slice per frame position), cannot be allocated twice by this process: a 2 MB SEG declaring 10,000 segments
    on 65535 x 65535 compressed frames made highdicom allocate its frames before failing deep inside. ``seg``: the
    SEG's dataset (pixels not needed); ``segments``: their count (default: its Segment Sequence's)."""
    if segments is None:
        segments = sum(1 for s in seg.get("SegmentSequence") or [] if s.get("SegmentNumber") != 0)
    items = seg.get("PerFrameFunctionalGroupsSequence") or []
    try:  # damaged positions are reported where the volume is built: here they count as one slice
        positions = {tuple(map(float, fg.PlanePositionSequence[0].ImagePositionPatient)) for fg in items
                     if "PlanePositionSequence" in fg and "ImagePositionPatient" in fg.PlanePositionSequence[0]}
    except Exception:
        positions = set()
    rows, cols, frames = int(seg.Rows), int(seg.Columns), int(seg.get("NumberOfFrames") or 1)
    shape = max((frames, rows, cols), (max(1, len(positions)), rows, cols, segments), key=math.prod)
    check_fits(shape, np.uint8, path, "segment voxels", copies=2)


def _check_frames(seg, path: Path) -> None:
    """``InputError`` when Number of Frames disagrees with the per-frame items or the pixel data: highdicom reads
    the first Number of Frames frames and drops the rest without a word (a damaged or truncated file)."""
    frames = int(seg.get("NumberOfFrames") or 1)
    items = len(seg.get("PerFrameFunctionalGroupsSequence") or [])
    if items != frames:
        raise InputError(f"damaged DICOM-SEG: NumberOfFrames is {frames} but {items} frames are described", path=path)
    if "PixelData" in seg and not seg.file_meta.TransferSyntaxUID.is_encapsulated:
        bits = frames * int(seg.Rows) * int(seg.Columns) * int(seg.BitsAllocated) * int(seg.get("SamplesPerPixel", 1))
        if len(seg.PixelData) < (bits + 7) // 8:  # 1-bit frames are packed across frame boundaries
            raise InputError(f"damaged DICOM-SEG: its pixel data holds {len(seg.PixelData)} bytes, {frames} frames "
                             f"need {(bits + 7) // 8} (a truncated file?)", path=path)


def _names_and_meta(seg, numbers, path: Path) -> tuple[dict, dict]:
    names = {n: str(seg.get_segment_description(n).SegmentLabel) for n in numbers}
    meta = {"source": str(path), "format": "dicom-seg", "frame_of_reference_uid": str(seg.FrameOfReferenceUID),
            "referenced_series_uids": [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])]}
    return names, meta


def read_seg_on_reference(path: str | os.PathLike, ref):
    """Per-segment masks ``[segment, i, j, k]`` on ``ref``'s slices, each frame placed on the instance it
    references (no regular volume needed: tilted and unevenly spaced series read back exactly).

    Parameters
    ----------
    path : path
        The DICOM-SEG file.
    ref : ReferenceSeries
        The series it references (:func:`medseg.export.reference.load_reference`).

    Returns
    -------
    tuple or None
        ``(masks, names, meta)``: boolean ``masks`` ``[segment, i, j, k]`` on ``ref.shape``, segment number -> label,
        and the SEG's ``source``, ``format``, ``frame_of_reference_uid`` and ``referenced_series_uids``. None when
        the SEG's frames do not all reference instances of ``ref`` with preserved spatial locations (then its own
        volume geometry must be used, :func:`read_seg_masks`).

    Examples
    --------
    Written by :func:`write_dicom_seg`: a label map of two segments on three slices made from pydicom's example CT
    (128 x 128 pixels), 5 mm apart:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.reference import load_reference
    >>> root, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> (root / "ct").mkdir()
    >>> for k in range(3):
    ...     ds = examples.ct
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] += 5 * k
    ...     ds.save_as(root / "ct" / f"{k}.dcm")
    >>> ref = load_reference(root / "ct")
    >>> labels = np.zeros(ref.shape, np.uint8)  # (columns, rows, slices)
    >>> labels[40:80, 50:90, 1:] = 1; labels[10:20, 10:20, 0] = 2
    >>> out = write_dicom_seg(labels, ref, [segment_info(1, "liver"), segment_info(2, "spleen")], root / "seg.dcm")
    >>> masks, names, meta = read_seg_on_reference(out, ref)
    >>> masks.shape, names, bool((masks[0] == (labels == 1)).all() and (masks[1] == (labels == 2)).all())
    ((2, 128, 128, 3), {1: 'liver', 2: 'spleen'}, True)
    """
    path = Path(path)
    seg, numbers = _read_segments(path)
    uids = [str(ds.SOPInstanceUID) for ds in ref.datasets]
    referenced = {str(u[2]) for u in seg.get_source_image_uids()}
    if not referenced or not referenced <= set(uids):
        return None
    if (int(seg.Rows), int(seg.Columns)) != (ref.rows, ref.columns):
        return None
    check_fits((len(uids), ref.rows, ref.columns, len(numbers)), np.uint8, path, "segment voxels", copies=2)
    try:
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                                assert_missing_frames_are_empty=True)
    except (ValueError, KeyError, RuntimeError, AttributeError):
        return None
    masks = _inside(np.transpose(arr, (3, 2, 1, 0)), seg)  # (slice, row, column, segment) -> [segment, i, j, k]
    return (masks, *_names_and_meta(seg, numbers, path))
