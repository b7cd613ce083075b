"""Import of DICOM-SEG and RTSTRUCT objects written by other tools (highdicom, plastimatch, hand-built with pydicom):
storage variants must import to the same masks, and every mask must equal an independent reading.

Expected masks come from the arrays handed to highdicom (placed by each slice's Image Position along the normal),
from ``skimage.draw.polygon`` on contour points projected by hand (XOR over one slice's contours, DICOM's
even-odd rule), or from the label images plastimatch wrote the RTSTRUCT from; never from medseg's own output.
Synthetic 20 x 24 series of 6 slices; no real data needed.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings

import numpy as np
import pytest

from _dicom_series import write_ct_series
from conftest import assert_clean_error, run_cli
from medseg.export.importers import import_masks, import_segmentation

ROWS, COLS, SPACING = 20, 24, (0.8, 1.1)  # PixelSpacing: between rows, between columns


# ---------------------------------------------------------------------------------------------------- builders
def _series(folder, positions, iop=(1, 0, 0, 0, 1, 0), study=None, frame=None):
    """CT slices (headers + pixels, slice k all k) at the given LPS positions; the datasets in the order given."""
    return write_ct_series(folder, [np.full((ROWS, COLS), k, np.int16) for k in range(len(positions))], positions,
                           iop, SPACING, study=study, frame=frame, patient=("Audit^S46", "S46"))


def _axial(folder, n=6):
    return _series(folder, [(-10.0, -8.0, 2.0 * k) for k in range(n)])


def _seg(dss, pixels, path, kind="BINARY", **kw):
    """A highdicom SEG of ``pixels`` (frames in ``dss`` order, rows, columns[, segment]) on ``dss``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    n = int(pixels.max()) if kind == "LABELMAP" else (1 if pixels.ndim == 3 else pixels.shape[-1])
    algo = hd.AlgorithmIdentificationSequence(name="other", family=codes.DCM.ArtificialIntelligence, version="1")
    descs = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=f"seg{i}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo) for i in range(1, n + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=dss, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues[kind],
            segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="other", manufacturer_model_name="other", software_versions="1",
            device_serial_number="1", **kw)
        seg.save_as(str(path))
    return path


def _edit(src, dst, change):
    """A copy of a DICOM file with ``change(ds)`` applied (the input is left as it is)."""
    import pydicom

    ds = pydicom.dcmread(str(src))
    change(ds)
    ds.save_as(str(dst))
    return dst


def _drop_frame_references(ds):
    for item in ds.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in item:
            del item.DerivationImageSequence


def _expected(frames, dss):
    """``frames`` (slice in ``dss`` order, row, column[, segment]) as medseg's ``[segment, column, row, slice]``,
    slices by increasing position along the normal (how a series is stacked)."""
    a = frames if frames.ndim == 4 else frames[..., None]
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    depth = [np.array([float(v) for v in ds.ImagePositionPatient]) @ normal for ds in dss]
    return np.transpose(a[np.argsort(depth)], (3, 2, 1, 0)).astype(bool)


def _world(dss, k, xy):
    """Pixel coordinates (column x, row y) on slice ``k`` of ``dss`` -> LPS points."""
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    pos = np.array([float(v) for v in dss[k].ImagePositionPatient])
    xy = np.asarray(xy, float)
    return pos + xy[:, :1] * SPACING[1] * iop[:3] + xy[:, 1:2] * SPACING[0] * iop[3:]


def _ellipse(cx, cy, r, n=40, clockwise=False):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) * (-1 if clockwise else 1)
    return np.c_[cx + r * np.cos(t), cy + 1.1 * r * np.sin(t)]


def _skimage_fill(polygons):
    """Independent even-odd fill: skimage's polygon per contour (pixel centres inside), XOR; returns [row, col]."""
    from skimage.draw import polygon

    out = np.zeros((ROWS, COLS), bool)
    for p in polygons:
        one = np.zeros_like(out)
        rr, cc = polygon(p[:, 1], p[:, 0], out.shape)
        one[rr, cc] = True
        out ^= one
    return out


def _ds_text(values, fmt: str) -> bytes:
    """Decimal String bytes of ``values``, space-padded to even length."""
    text = "\\".join(fmt.format(v) for v in np.ravel(values)).encode()
    return text + b" " * (len(text) % 2)


def _rtstruct(path, dss, rois, contour_text=None):
    """A hand-built RTSTRUCT (Implicit VR). ``rois``: (number, name, [(type, LPS points), ...] or None, FoR or None).
    ``contour_text(points) -> bytes`` writes ContourData verbatim (as other writers format it)."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.StructureSetLabel = "RTSTRUCT", "Audit^S46", "S46", "other"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = dss[0].StudyInstanceUID, generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = dss[0].SeriesInstanceUID
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", dss[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = dss[0].FrameOfReferenceUID, [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, name, contours, for_uid in rois:
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = number, name, "MANUAL"
        roi.ReferencedFrameOfReferenceUID = for_uid or dss[0].FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor, rc.ReferencedROINumber = [255, 0, 0], number
        if contours is not None:
            rc.ContourSequence = []
            for kind, pts in contours:
                c = Dataset()
                c.ContourGeometricType, c.NumberOfContourPoints = kind, len(pts)
                if contour_text is None:
                    c.ContourData = [f"{v:.6g}" for v in np.ravel(pts)]
                else:
                    c[0x30060050] = DataElement(0x30060050, "OB", contour_text(pts))  # bytes as they are
                rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(str(path), enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------ DICOM-SEG
def test_fractional_seg_holds_voxels_of_at_least_half_the_maximum(tmp_path):
    """FRACTIONAL: stored value v of MaximumFractionalValue 255 is inside when v / 255 >= 0.5 (v >= 128). The old
    reader took every voxel with any fraction (v >= 1) as inside: 2,338 voxels instead of 1,500 here."""
    dss = _axial(tmp_path / "ct")
    stored = np.random.default_rng(0).integers(0, 256, (6, ROWS, COLS))
    stored[stored < 50] = 0
    seg = _seg(dss, (stored / 255.0).astype(np.float32), tmp_path / "frac.dcm", kind="FRACTIONAL",
               max_fractional_value=255)
    import pydicom

    raw = pydicom.dcmread(str(seg)).pixel_array  # what the file holds, read without highdicom
    assert raw.max() == 255 and (raw > 0).sum() > (raw >= 128).sum()  # fractions on both sides of the cut
    expected = _expected(stored >= 128, dss)
    for reference in (tmp_path / "ct", None):  # on the series (frames by instance) and on its own grid (volume)
        masks, _ = import_masks(seg, reference)
        np.testing.assert_array_equal(masks.array.astype(bool), expected)
    res = run_cli("convert", seg, tmp_path / "frac.nii.gz", "--reference", tmp_path / "ct")  # the CLI agrees
    assert res.code == 0, res.err
    from medseg.io.readers import read_image

    np.testing.assert_array_equal(read_image(tmp_path / "frac.nii.gz").array > 0, expected[0])


def test_sparse_seg_without_slice_spacing_is_not_smeared(tmp_path):
    """A SEG that omits empty frames, states no Spacing Between Slices and whose frames carry no per-frame source
    references (all optional): with frames on slices 0 and 3 only, highdicom's volume has a 6 mm step, and nearest
    neighbour put each frame on the slices beside it too (724 voxels instead of 292 here). Frames lie 3 Slice
    Thicknesses apart, so on the reference the omitted frames are put back as empty slices."""
    dss = _axial(tmp_path / "ct", n=8)
    frames = np.random.default_rng(1).random((8, ROWS, COLS)) < 0.3
    frames[[1, 2, 4, 5, 6, 7]] = False

    def strip(ds):
        _drop_frame_references(ds)
        del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices

    seg = _edit(_seg(dss, frames.astype(np.uint8), tmp_path / "sparse.dcm"), tmp_path / "sparse_bare.dcm", strip)
    expected = _expected(frames, dss)
    masks, _ = import_masks(seg, tmp_path / "ct")
    np.testing.assert_array_equal(masks.array.astype(bool), expected)
    own, _ = import_masks(seg)  # its own grid (unchanged): the two frames, 6 mm apart
    np.testing.assert_array_equal(own.array.astype(bool), expected[..., [0, 3]])
    assert own.spacing == pytest.approx((1.1, 0.8, 6.0))


@pytest.mark.parametrize("damage", ["fewer_frames_declared", "more_frames_declared", "truncated_pixels"])
def test_seg_with_inconsistent_frames_is_refused(tmp_path, damage):
    """NumberOfFrames disagreeing with the frames described, or pixel data cut short: one line naming the file, exit 2,
    nothing written, with or without the reference. The old reader imported the first NumberOfFrames frames of a
    file declaring 9 of its 12 (444 of 1,740 voxels lost, exit 0), and one declaring 15 with a reference (exit 0);
    truncated pixels were refused, but as 'frames do not form one volume (cannot reshape ...)'."""
    dss = _axial(tmp_path / "ct")
    frames = np.random.default_rng(2).random((6, ROWS, COLS, 2)) < 0.3
    good = _seg(dss, frames.astype(np.uint8), tmp_path / "good.dcm")
    bad = tmp_path / "bad.dcm"
    if damage == "truncated_pixels":
        bad.write_bytes(good.read_bytes()[:-100])
    else:
        delta = -3 if damage == "fewer_frames_declared" else 3
        _edit(good, bad, lambda ds: setattr(ds, "NumberOfFrames", int(ds.NumberOfFrames) + delta))
    for reference in (["--reference", tmp_path / "ct"], []):
        out = tmp_path / "out.nii.gz"
        assert_clean_error(run_cli("convert", bad, out, *reference), "bad.dcm", "damaged")
        assert not out.exists()


@pytest.mark.parametrize("variant", ["overlapping_sparse", "shuffled_frames", "segments_2_and_7",
                                     "no_per_frame_references", "reversed_orientation", "sagittal", "labelmap"])
def test_seg_storage_variants_import_as_written(tmp_path, variant):
    """Checked correct (old and new): the same masks however another writer stored them."""
    rng = np.random.default_rng(3)
    if variant == "reversed_orientation":
        dss = _series(tmp_path / "ct", [(10.0, 8.0, -2.0 * k) for k in range(6)], iop=(-1, 0, 0, 0, -1, 0))
    elif variant == "sagittal":
        dss = _series(tmp_path / "ct", [(2.0 * k, -10.0, 8.0) for k in range(6)], iop=(0, 1, 0, 0, 0, -1))
    else:
        dss = _axial(tmp_path / "ct")
    frames = rng.random((6, ROWS, COLS, 3)) < 0.3
    frames[2] = False  # an empty frame, omitted
    if variant == "labelmap":
        labels = np.where(frames[..., 0], 1, np.where(frames[..., 1], 2, 0)).astype(np.uint8)
        seg = _seg(dss, labels, tmp_path / "seg.dcm", kind="LABELMAP")
        frames = np.stack([labels == 1, labels == 2], axis=-1)
    else:
        seg = _seg(dss, frames.astype(np.uint8), tmp_path / "seg.dcm")
    numbers = [1, 2, 3][:frames.shape[-1]]
    if variant == "shuffled_frames":
        def shuffle(ds):  # 20 x 24 bits = 60 whole bytes a frame: frames move as byte blocks
            n = int(ds.NumberOfFrames)
            order = rng.permutation(n)
            blocks = np.frombuffer(ds.PixelData, np.uint8)[:n * ROWS * COLS // 8].reshape(n, -1)
            ds.PixelData = blocks[order].tobytes()
            items = list(ds.PerFrameFunctionalGroupsSequence)
            ds.PerFrameFunctionalGroupsSequence = [items[i] for i in order]
        seg = _edit(seg, tmp_path / "edited.dcm", shuffle)
    elif variant == "segments_2_and_7":
        numbers = [2, 7, 9]

        def renumber(ds):
            new = dict(zip([1, 2, 3], numbers))
            for s in ds.SegmentSequence:
                s.SegmentNumber = new[int(s.SegmentNumber)]
            for item in ds.PerFrameFunctionalGroupsSequence:
                ident = item.SegmentIdentificationSequence[0]
                ident.ReferencedSegmentNumber = new[int(ident.ReferencedSegmentNumber)]
        seg = _edit(seg, tmp_path / "edited.dcm", renumber)
    elif variant == "no_per_frame_references":  # placed through the plane positions alone
        seg = _edit(seg, tmp_path / "edited.dcm", _drop_frame_references)
    expected = _expected(frames, dss)
    for reference in (tmp_path / "ct", None):
        masks, names = import_masks(seg, reference)
        assert list(names) == numbers
        np.testing.assert_array_equal(masks.array.astype(bool), expected)


def test_seg_on_another_grid_of_the_frame_of_reference(tmp_path):
    """Checked correct: a SEG on an 18 x 22 grid shifted (+0.3, -0.3) pixels imports by nearest neighbour, computed
    here pixel by pixel from the two grids' positions."""
    import highdicom as hd

    dss = _axial(tmp_path / "ct")
    small = np.random.default_rng(4).random((6, 18, 22)) < 0.3
    x0, y0 = -10.0 + 0.3 * SPACING[1], -8.0 - 0.3 * SPACING[0]
    seg = _seg(dss, small.astype(np.uint8), tmp_path / "seg.dcm",
               plane_positions=[hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, (x0, y0, 2.0 * k))
                                for k in range(6)],
               pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=SPACING, slice_thickness=2.0),
               plane_orientation=hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, (1, 0, 0, 0, 1, 0)))
    expected = np.zeros((1, COLS, ROWS, 6), bool)
    for i in range(COLS):
        for j in range(ROWS):
            c = round((-10.0 + i * SPACING[1] - x0) / SPACING[1])  # i - 0.3
            r = round((-8.0 + j * SPACING[0] - y0) / SPACING[0])  # j + 0.3
            if 0 <= c < 22 and 0 <= r < 18:
                expected[0, i, j] = small[:, r, c]
    masks, _ = import_masks(seg, tmp_path / "ct")
    np.testing.assert_array_equal(masks.array.astype(bool), expected)


# -------------------------------------------------------------------------------------------------- RTSTRUCT
def test_rtstruct_roi_in_another_frame_of_reference_is_not_drawn(tmp_path):
    """An ROI whose Referenced Frame of Reference is not the series' (drawn on a registered MR) has coordinates that
    mean nothing on this CT: the old reader drew it there anyway (181 voxels); now it stays empty, counted as skipped,
    while the ROI in the series' frame imports as skimage fills it."""
    from pydicom.uid import generate_uid

    dss = _axial(tmp_path / "ct")
    outline = _ellipse(11.3, 9.7, 7.2)
    rt = _rtstruct(tmp_path / "ct" / "rt.dcm", dss, [(1, "ct_roi", [("CLOSED_PLANAR", _world(dss, 1, outline))], None),
                                                     (2, "mr_roi", [("CLOSED_PLANAR", _world(dss, 1, outline))],
                                                      generate_uid())])
    masks, names = import_masks(rt)
    assert names == {1: "ct_roi", 2: "mr_roi"}
    np.testing.assert_array_equal(masks.array[0, :, :, 1].astype(bool), _skimage_fill([outline]).T)
    assert masks.array[0].sum() == masks.array[0, :, :, 1].sum()
    assert not masks.array[1].any()
    assert masks.meta["skipped_contours"] == 1
    res = run_cli("convert", rt, tmp_path / "rt.nii.gz")  # the user is told what the label map lacks
    assert res.code == 0, res.err
    assert "1 contour left out" in res.err and len(res.err.strip().splitlines()) == 1


def test_rtstruct_contour_data_padded_with_nul_imports(tmp_path):
    """A ContourData of odd length padded with a NUL byte (pydicom reads it): the old fast parser raised ValueError,
    'internal error', exit 1."""
    dss = _axial(tmp_path / "ct")
    outline = _ellipse(11.3, 9.7, 7.2)

    def nul_padded(pts):  # the text made odd in length, then one NUL byte
        text = "\\".join(f"{v:.4f}" for v in np.ravel(pts)).encode()
        return text + (b"\0" if len(text) % 2 else b"0\0")  # a trailing "0" digit: the same number

    rt = _rtstruct(tmp_path / "ct" / "rt.dcm", dss, [(1, "roi", [("CLOSED_PLANAR", _world(dss, 3, outline))], None)],
                   contour_text=nul_padded)
    res = run_cli("convert", rt, tmp_path / "rt.nii.gz")
    assert res.code == 0, res.err
    masks, _ = import_masks(rt)
    np.testing.assert_array_equal(masks.array[0, :, :, 3].astype(bool), _skimage_fill([outline]).T)
    assert masks.array[0].sum() == masks.array[0, :, :, 3].sum()


@pytest.mark.parametrize("damage", ["truncated", "points_not_triples"])
def test_damaged_rtstruct_is_a_clean_error(tmp_path, damage):
    """A truncated RTSTRUCT (pydicom reads it without a word, the ROI Contour item losing its Referenced ROI Number) or
    a ContourData whose count is not a multiple of 3: one line naming the file, exit 2, nothing written. The old
    reader stopped with AttributeError / ValueError, 'internal error', exit 1."""
    dss = _axial(tmp_path / "ct")
    contours = [("CLOSED_PLANAR", _world(dss, k, _ellipse(11.3, 9.7, 7.2))) for k in range(6)]

    def points_not_triples(pts):
        return _ds_text(np.ravel(pts)[:-1], "{:.4f}")

    text = points_not_triples if damage == "points_not_triples" else None
    rt = _rtstruct(tmp_path / "full.dcm", dss, [(1, "roi", contours, None)], contour_text=text)
    data = rt.read_bytes()
    bad = tmp_path / "ct" / "rt.dcm"
    bad.write_bytes(data[: int(len(data) * 0.8)] if damage == "truncated" else data)
    out = tmp_path / "out.nii.gz"
    assert_clean_error(run_cli("convert", bad, out), "rt.dcm", "damaged RTSTRUCT")
    assert not out.exists()


def test_rtstruct_contour_variants_match_skimage(tmp_path):
    """Checked correct (old and new): a hole and an island on one slice (even-odd), a duplicated closing point,
    clockwise winding, z off by 1e-3 mm and by 0.4 mm, exponent decimal strings, an ROI without contours, POINT and
    OPEN_PLANAR contours (not filled), a repeated ROI name."""
    dss = _axial(tmp_path / "ct")
    outer, hole, island = _ellipse(11.3, 9.7, 7.2), _ellipse(11.1, 9.4, 3.1, clockwise=True), _ellipse(20.2, 3.3, 1.7)
    closed = np.r_[outer, outer[:1]]

    def at(k, xy, dz=0.0):
        return _world(dss, k, xy) + [0.0, 0.0, dz]

    rois = [(1, "ring", [("CLOSED_PLANAR", at(1, outer)), ("CLOSED_PLANAR", at(1, hole)),
                         ("CLOSED_PLANAR", at(1, island))], None),
            (3, "closing_point_cw", [("CLOSED_PLANAR", at(2, closed)),
                                     ("CLOSED_PLANAR", at(3, _ellipse(11.3, 9.7, 7.2, clockwise=True)))], None),
            (5, "off_plane", [("CLOSED_PLANAR", at(4, outer, 1e-3)), ("CLOSED_PLANAR", at(5, outer, -0.4))], None),
            (7, "empty", None, None),
            (8, "not_areas", [("POINT", at(1, outer[:1])), ("OPEN_PLANAR", at(1, outer[:10]))], None),
            (9, "ring", [("CLOSED_PLANAR", at(0, island))], None)]
    rt = _rtstruct(tmp_path / "ct" / "rt.dcm", dss, rois, contour_text=lambda p: _ds_text(p, "{:.6E}"))
    expected = np.zeros((6, COLS, ROWS, 6), bool)
    expected[0, :, :, 1] = _skimage_fill([outer, hole, island]).T
    expected[1, :, :, 2], expected[1, :, :, 3] = _skimage_fill([closed]).T, _skimage_fill([outer]).T
    expected[2, :, :, 4] = expected[2, :, :, 5] = _skimage_fill([outer]).T
    expected[5, :, :, 0] = _skimage_fill([island]).T
    masks, names = import_masks(rt)
    assert list(names.values()) == [r[1] for r in rois]
    np.testing.assert_array_equal(masks.array.astype(bool), expected)


@pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch is not installed")
def test_plastimatch_written_rtstruct_imports_its_label_images(tmp_path):
    """Checked correct: plastimatch writes an RTSTRUCT from label images (a ring with a hole, two boxes); each ROI
    imports to the label image it was made from. (plastimatch's own rasteriser fills the ring's hole: 236 voxels.)"""
    import SimpleITK as sitk
    from skimage.draw import ellipse

    dss = _axial(tmp_path / "ct")
    ring = np.zeros((6, ROWS, COLS), np.uint8)
    for k in range(1, 5):
        ring[(k, *ellipse(10, 12, 7, 9, (ROWS, COLS)))] = 1
        ring[(k, *ellipse(10, 11, 3, 3.5, (ROWS, COLS)))] = 0
    boxes = np.zeros_like(ring)
    boxes[2:4, 1:3, 15:22] = 1  # off the image border (plastimatch clips contours there)
    boxes[2, 16:19, 1:3] = 1
    assert not (ring & boxes).any()
    grid = sitk.ReadImage([str(tmp_path / "ct" / f"{k:03d}.dcm") for k in range(6)])
    (tmp_path / "labels").mkdir()
    for name, arr in (("ring", ring), ("boxes", boxes)):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(grid)
        sitk.WriteImage(img, str(tmp_path / "labels" / f"{name}.mha"))
    subprocess.run(["plastimatch", "convert", "--input-prefix", str(tmp_path / "labels"), "--referenced-ct",
                    str(tmp_path / "ct"), "--output-dicom", str(tmp_path / "rt")], check=True, capture_output=True)
    rt = next((tmp_path / "rt").glob("*.dcm"))
    masks, names = import_masks(rt, tmp_path / "ct")
    truth = {"ring": ring, "boxes": boxes}
    assert sorted(names.values()) == sorted(truth)
    for c, name in enumerate(names.values()):
        np.testing.assert_array_equal(masks.array[c].astype(bool), _expected(truth[name].astype(bool), dss)[0])
    lab = import_segmentation(rt, tmp_path / "ct")  # the label map: disjoint ROIs, so each keeps all its voxels
    for value, name in lab.meta["labels"].items():
        assert (lab.array == value).sum() == truth[name].sum()


@pytest.mark.parametrize("obj, kind", [(("dicom", "dcmqi_segmentations", "liver.dcm"), "DICOM-SEG"),
                                       (("dicom", "ct_rtstruct", "RS_Body_SpinalCord.dcm"), "RTSTRUCT")])
def test_a_segmentation_object_handed_to_evaluate_says_how_to_make_it_an_image(tmp_path, obj, kind):
    """evaluate and predict take images; a real SEG or RTSTRUCT handed to them said only 'no DICOM image series
    found', as if the file were not DICOM."""
    import nibabel as nib
    from conftest import data_path

    path = data_path(*obj)
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), ref)
    res = run_cli("evaluate", "--pred", path, "--ref", ref, "-o", tmp_path / "out")
    assert_clean_error(res, path.name, f"this is a {kind}", "medseg convert")
    assert not (tmp_path / "out").exists()
