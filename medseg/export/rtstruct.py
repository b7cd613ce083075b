"""RTSTRUCT: planar contours from a label map on a reference series, and back to masks.

Built with pydicom (the RT Structure Set IOD, every Type 1/2 attribute filled: rt-utils leaves out
the Frame of Reference and several Type 2 attributes, writes Decimal Strings longer than 16
characters, and its OpenCV contours run through pixel centres, which makes the round trip depend on
the reader's rasteriser). Implicit VR Little Endian, as explicit VR caps one contour's text at 64 kB.

Contour convention (documented, and what the importer assumes):

* Contours are iso-lines at 0.5 of the binary mask, half-way between foreground and background
  pixel centres: every foreground pixel centre is strictly inside, every background centre strictly
  outside, so any reader that fills "pixel centres inside the polygon" recovers the mask, whichever
  way it breaks ties on the boundary (see :mod:`medseg.export.contours`).
* Holes are joined to their outer contour by zero-width keyholes by default (readers that take the
  union of contours and readers that XOR them then agree); ``holes="separate"`` writes them as
  separate contours for the even-odd rule instead.
* The importer fills the pixel centres inside the contours of one ROI on one slice by the even-odd
  rule (:func:`medseg.export.raster.fill_polygons`), which reads both styles.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import numpy as np

import medseg
from medseg.errors import InputError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (what RT references studies by)

# Type 2 attributes copied from the reference (empty when the reference lacks them)
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


def _contour_data(points: np.ndarray):
    """ContourData as preformatted DS text. pydicom would build one DS object per value (seconds for
    a large structure); in Implicit VR the bytes are written as they are and read back as DS."""
    from pydicom.dataelem import DataElement

    text = "\\".join(f"{v:.4f}" for v in points.ravel()).encode("ascii")  # 0.1 µm: far below a voxel
    if len(text) % 2:
        text += b" "
    return DataElement(0x30060050, "OB", text)  # bytes as they are; the implicit VR file carries no VR


def _read_contour_data(item) -> np.ndarray:
    """ContourData as floats without building one pydicom DS object per value (``ValueError`` when damaged)."""
    elem = item.get_item(0x30060050)
    if elem is not None and isinstance(elem.value, bytes):  # NUL padding, as some writers use, is padding too
        values = np.array(elem.value.replace(b"\\", b" ").replace(b"\0", b" ").split(), dtype=float)
    else:
        values = np.asarray([float(v) for v in item.get("ContourData") or []], float)
    if values.size % 3:
        raise ValueError(f"a ContourData of {values.size} numbers, not (x, y, z) triples")
    return values.reshape(-1, 3)


def _now():
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def build_rtstruct(labels_on_ref: np.ndarray, ref, infos, *, model_name: str | None = None,
                   holes: str = "keyhole"):
    """The RTSTRUCT dataset for a label array on ``ref``'s grid (``[column, row, slice]``).

    Parameters
    ----------
    labels_on_ref : ndarray, shape (columns, rows, slices)
        Label values on ``ref``'s grid, in its slice order.
    ref : ReferenceSeries
    infos : list of SegmentInfo
        One ROI per entry, numbered 1..N in this order.
    model_name : str, optional
        Recorded as the structure set name and in each ROI's generation description.
    holes : {'keyhole', 'separate'}
        How holes are written (see the module docstring).

    Returns
    -------
    pydicom.Dataset
        With its file meta (Implicit VR Little Endian), ready to save.

    Examples
    --------
    >>> from pydicom import Dataset
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.reference import ReferenceSeries
    >>> ds = Dataset(); ds.update(dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", SOPInstanceUID="1.2.3.1",
    ...     StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.4", FrameOfReferenceUID="1.2.5"))  # a CT slice's UIDs
    >>> ref = ReferenceSeries(Path("ct"), [ds], [], 4, 4, np.eye(3)[0], np.eye(3)[1], (1.0, 1.0), np.zeros((1, 3)))
    >>> lab = np.zeros((4, 4, 1), np.uint8); lab[1:3, 1:3] = 1  # a 2 x 2 pixel square on one 4 x 4 slice
    >>> rs = build_rtstruct(lab, ref, [segment_info(1, "liver")])
    >>> contours = rs.ROIContourSequence[0].ContourSequence  # one point per foreground/background pixel edge
    >>> rs.StructureSetROISequence[0].ROIName, len(contours), int(contours[0].NumberOfContourPoints)
    ('liver', 1, 8)
    """
    import highdicom as hd

    from medseg.export.contours import mask_contours
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    ds0 = ref.datasets[0]
    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = ds0.get("SpecificCharacterSet") or "ISO_IR 192"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = hd.UID()
    for key in _PATIENT_STUDY:
        setattr(ds, key, ds0.get(key, ""))
    ds.StudyInstanceUID = ds0.StudyInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = hd.UID()
    ds.SeriesNumber = int(ds0.get("SeriesNumber") or 0) + 2000
    ds.SeriesDescription = "medseg contours"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = ref.frame_of_reference_uid
    ds.PositionReferenceIndicator = ds0.get("PositionReferenceIndicator", "")
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = (model_name or "medseg")[:64]
    ds.SoftwareVersions = str(medseg.__version__)
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = (model_name or "medseg")[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ApprovalStatus = "UNAPPROVED"

    def image_ref(k):
        item = Dataset()
        item.ReferencedSOPClassUID = ref.datasets[k].SOPClassUID
        item.ReferencedSOPInstanceUID = ref.datasets[k].SOPInstanceUID
        return item

    series_item = Dataset()
    series_item.SeriesInstanceUID = ref.series_uid
    series_item.ContourImageSequence = Sequence([image_ref(k) for k in range(len(ref.datasets))])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = STUDY_SOP_CLASS
    study_item.ReferencedSOPInstanceUID = ds0.StudyInstanceUID
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    for_item = Dataset()
    for_item.FrameOfReferenceUID = ref.frame_of_reference_uid
    for_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([for_item])

    from tqdm import tqdm

    rois, contours, observations = [], [], []
    quiet = not sys.stderr.isatty()  # a bar on a terminal only (large CTs with many ROIs take minutes)
    for number, info in enumerate(tqdm(infos, desc="RTSTRUCT contours", leave=False, disable=quiet), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = ref.frame_of_reference_uid
        roi.ROIName = info.name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"medseg {medseg.__version__}" + (f" {model_name}" if model_name else "")
        rois.append(roi)
        cont = Dataset()
        cont.ROIDisplayColor = list(info.color)
        cont.ReferencedROINumber = number
        items = []
        for k in range(labels_on_ref.shape[2]):
            mask = labels_on_ref[:, :, k] == info.value
            if not mask.any():
                continue
            m = ref.slice_lps(k)
            for c in mask_contours(mask, holes):  # c[:, 0] = column index i, c[:, 1] = row index j
                pts = c[:, 0:1] * m[:3, 0] + c[:, 1:2] * m[:3, 1] + m[:3, 3]
                item = Dataset()
                item.ContourImageSequence = Sequence([image_ref(k)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(pts)
                item[0x30060050] = _contour_data(pts)
                items.append(item)
        cont.ContourSequence = Sequence(items)
        contours.append(cont)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian  # explicit VR caps a contour at 64 kB of text
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_rtstruct(labels_on_ref: np.ndarray, ref, infos, out_path: str | os.PathLike, *,
                   model_name: str | None = None, holes: str = "keyhole", protect=()) -> Path:
    """Write an RTSTRUCT (one ROI per ``infos`` entry) for a label array on ``ref``'s grid.

    Parameters
    ----------
    labels_on_ref, ref, infos, model_name, holes
        As in :func:`build_rtstruct`.
    out_path : path
        The DICOM file to write.
    protect : iterable of path
        Input paths that must not be overwritten.

    Returns
    -------
    Path
        ``out_path``.

    Examples
    --------
    >>> import pydicom, tempfile
    >>> from pydicom import Dataset
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.reference import ReferenceSeries
    >>> ds = Dataset(); ds.update(dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", SOPInstanceUID="1.2.3.1",
    ...     StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.4", FrameOfReferenceUID="1.2.5"))  # a CT slice's UIDs
    >>> ref = ReferenceSeries(Path("ct"), [ds], [], 4, 4, np.eye(3)[0], np.eye(3)[1], (1.0, 1.0), np.zeros((1, 3)))
    >>> lab = np.zeros((4, 4, 1), np.uint8); lab[1:3, 1:3] = 1  # a 2 x 2 pixel square on one 4 x 4 slice
    >>> p = write_rtstruct(lab, ref, [segment_info(1, "liver")], Path(tempfile.mkdtemp()) / "rt.dcm")
    >>> pydicom.dcmread(p).Modality
    'RTSTRUCT'
    """
    from medseg.io.atomic import atomic_path

    ds = build_rtstruct(labels_on_ref, ref, infos, model_name=model_name, holes=holes)
    with atomic_path(out_path, protect=protect) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return Path(out_path)


def read_rtstruct_masks(path: str | os.PathLike, ref, *, slice_tol: float | None = None, fill: str = "centre"):
    """Rasterise every ROI of an RTSTRUCT on the reference series grid.

    Parameters
    ----------
    path : path
        The RTSTRUCT file.
    ref : ReferenceSeries
        The series it refers to (same frame of reference).
    slice_tol : float, optional
        How far (mm, along the normal) a contour may lie from its slice (default: half the smallest slice gap).
    fill : {'centre', 'edge'}
        The rasterisation rule of :func:`medseg.export.raster.fill_polygons`.

    Returns
    -------
    masks : ndarray of bool, shape (rois, columns, rows, slices)
    names : dict of int to str
        ROI number -> name, in channel order.
    skipped : int
        Number of contours that lie on no slice of ``ref``, or belong to an ROI in another frame of
        reference (left empty: its coordinates mean nothing on this series).

    Examples
    --------
    >>> import tempfile
    >>> from pydicom import Dataset
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.reference import ReferenceSeries
    >>> ds = Dataset(); ds.update(dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", SOPInstanceUID="1.2.3.1",
    ...     StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.4", FrameOfReferenceUID="1.2.5"))  # a CT slice's UIDs
    >>> ref = ReferenceSeries(Path("ct"), [ds], [], 4, 4, np.eye(3)[0], np.eye(3)[1], (1.0, 1.0), np.zeros((1, 3)))
    >>> lab = np.zeros((4, 4, 1), np.uint8); lab[1:3, 1:3] = 1  # a 2 x 2 pixel square on one 4 x 4 slice
    >>> p = write_rtstruct(lab, ref, [segment_info(1, "liver")], Path(tempfile.mkdtemp()) / "rt.dcm")
    >>> masks, names, skipped = read_rtstruct_masks(p, ref)
    >>> bool((masks[0] == (lab == 1)).all()), names, skipped  # the round trip is exact
    (True, {1: 'liver'}, 0)
    """
    import pydicom

    from medseg.export.raster import fill_polygons

    path = Path(path)
    try:
        rs = pydicom.dcmread(str(path))
    except Exception as exc:
        raise InputError(f"cannot read RTSTRUCT ({exc})", path=path) from exc
    if rs.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in rs:
        raise InputError("not an RTSTRUCT (no Structure Set ROI Sequence)", path=path)
    fors = {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in rs.StructureSetROISequence} - {""}
    if fors and ref.frame_of_reference_uid not in fors:
        raise InputError(f"the RTSTRUCT's frame of reference ({', '.join(sorted(fors))}) is not the reference "
                         f"series' ({ref.frame_of_reference_uid})", path=path)
    names = {int(r.ROINumber): str(r.get("ROIName", f"roi_{r.ROINumber}")) for r in rs.StructureSetROISequence}
    numbers = list(names)
    masks = np.zeros((len(numbers), *ref.shape), bool)
    normal = ref.normal
    depth = ref.positions @ normal
    if slice_tol is None:  # half the smallest slice gap (or of the thickness for one slice)
        gaps = np.diff(depth)
        slice_tol = 0.5 * (float(gaps.min()) if gaps.size else float(ref.datasets[0].get("SliceThickness") or 1.0))
    # an ROI in another frame of reference (a structure drawn on a registered MR) has no place on this series
    elsewhere = {int(r.ROINumber) for r in rs.StructureSetROISequence
                 if str(r.get("ReferencedFrameOfReferenceUID", "") or ref.frame_of_reference_uid)
                 != ref.frame_of_reference_uid}
    skipped = 0
    polys: dict[tuple[int, int], list[np.ndarray]] = {}
    for roi in rs.get("ROIContourSequence", []):
        if "ReferencedROINumber" not in roi:  # the tag follows the contours: a file cut short in them
            raise InputError("damaged RTSTRUCT: an ROI Contour item has no Referenced ROI Number (a truncated "
                             "file?)", path=path)
        num = int(roi.ReferencedROINumber)
        if num not in names:
            continue
        ch = numbers.index(num)
        for c in roi.get("ContourSequence", []):
            if c.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR":
                continue
            if num in elsewhere:
                skipped += 1
                continue
            try:
                pts = _read_contour_data(c)
            except ValueError as exc:
                raise InputError(f"damaged RTSTRUCT: {exc} in ROI {names[num]!r}", path=path) from None
            if not len(pts):
                continue
            d = float(np.mean(pts @ normal))
            k = int(np.argmin(np.abs(depth - d)))
            if abs(depth[k] - d) > slice_tol:
                skipped += 1
                continue
            rel = pts - ref.positions[k]
            ij = np.c_[rel @ ref.row_dir / ref.spacing_rc[1], rel @ ref.col_dir / ref.spacing_rc[0]]
            polys.setdefault((ch, k), []).append(ij)
    for (ch, k), group in polys.items():  # even-odd rule over one ROI's contours on one slice
        masks[ch, :, :, k] = fill_polygons(group, (ref.columns, ref.rows), rule=fill)
    return masks, {n: names[n] for n in numbers}, skipped
