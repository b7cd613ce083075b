"""DICOM-SEG and RTSTRUCT export on real series, checked by independent tools.

* dciodvfy (dicom3tools): no "Error" lines;
* highdicom reads the SEG back: masks identical to the input on the series grid (frames looked up
  by the referenced SOP instances, not by medseg's reader) and per-segment centroids in patient
  coordinates within half a voxel of the label map's (catches mirroring and shifts);
* plastimatch rasterises the RTSTRUCT on the series: grid equal to the series, surface Dice at 1 mm
  and voxel Dice per ROI;
* SimpleITK resamples a label map given on another grid, for the world-coordinate resampling.

Label maps are real-data derived: an intensity-derived head / bright-tissue map on the oblique MR
series of ``dicom/mr_study`` (Otsu + largest components), and dcmqi's liver/spine NRRD on the
3-slice CT.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from conftest import data_path
from medseg.export import export_segmentation
from medseg.io.image import LPS_TO_RAS, Image

MR_SERIES = ("dicom", "mr_study", "12-T1post-05670")
CT3 = ("dicom", "dcmqi_segmentations", "ct-3slice")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt: dicom3tools / plastimatch; .ci/setup installs them)")
    return path


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run([_need("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _largest(mask):
    from skimage.measure import label

    lab = label(mask)
    if lab.max() == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


@pytest.fixture(scope="module")
def mr():
    """The oblique T1 MR series and a label map on its grid: 1 = head (Otsu foreground, largest
    component, holes filled per slice), 2 = bright tissue (upper multi-Otsu class, largest component)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_multiotsu, threshold_otsu

    from medseg.export.reference import load_reference
    from medseg.io.dicom import load_series

    path = data_path(*MR_SERIES)
    ref = load_reference(path)
    vol = load_series(path)  # medseg.io's loader: its grid must be the reference grid
    assert vol.shape == ref.shape and np.allclose(vol.affine, ref.grid_affine(), atol=1e-4)
    v = vol.array.astype(np.float32)
    head = _largest(v > threshold_otsu(v))
    head = np.stack([ndi.binary_fill_holes(head[:, :, k]) for k in range(head.shape[2])], axis=-1)
    bright = _largest((v > threshold_multiotsu(v[head], 3)[1]) & head)
    lab = np.zeros(v.shape, np.uint8)
    lab[head] = 1
    lab[bright] = 2
    return path, ref, vol.with_array(lab)


@pytest.fixture(scope="module")
def ct3():
    import SimpleITK as sitk

    ref_dir = data_path(*CT3)
    nrrd = data_path("dicom", "dcmqi_segmentations", "liver_spine_seg.nrrd")
    return ref_dir, Image.from_sitk(sitk.ReadImage(str(nrrd)), meta={"source": str(nrrd)})


def _highdicom_masks(seg_path, ref):
    """Per segment number: mask [i, j, k] on the series grid, frames looked up by SOP instance UID."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    uids = [str(ds.SOPInstanceUID) for ds in ref.datasets]
    numbers = [n for n in seg.get_segment_numbers() if n != 0]
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                            assert_missing_frames_are_empty=True)
    return seg, {n: np.transpose(arr[..., c], (2, 1, 0)) > 0 for c, n in enumerate(numbers)}


def _check_seg(seg_path, ref, label: Image, names: dict[int, str]):
    seg, masks = _highdicom_masks(seg_path, ref)
    values = [v for v in np.unique(label.array) if v]
    assert sorted(masks) == list(range(1, len(values) + 1))
    assert str(seg.FrameOfReferenceUID) == ref.frame_of_reference_uid
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == ref.series_uid
    assert seg.SegmentationType == "BINARY"
    # highdicom's volume geometry for the centroid check (independent of medseg's)
    vol = seg.get_volume(combine_segments=False)
    for n, v in enumerate(values, start=1):
        assert np.array_equal(masks[n], label.array == v), f"segment {n} differs from label {v}"
        desc = seg.get_segment_description(n)
        assert desc.SegmentLabel == names.get(v, f"label_{v}")
        ijk = np.argwhere(label.array == v).mean(axis=0)
        c_label = label.index_to_world(ijk)[0]
        skr = np.argwhere(np.asarray(vol.array[..., n - 1]) > 0).mean(axis=0)
        c_seg = (LPS_TO_RAS @ (vol.affine @ np.r_[skr, 1.0]))[:3]
        half_voxel = 0.5 * min(label.spacing)
        assert np.linalg.norm(c_seg - c_label) <= half_voxel, (c_seg, c_label)
    return seg


def test_dicom_seg_mr_oblique_validates_and_reads_back(mr, tmp_path):
    path, ref, label = mr
    names = {1: "head", 2: "bright tissue"}
    out = export_segmentation(label, path, "dicom-seg", tmp_path / "seg.dcm", labels=names, model_name="otsu-test")
    assert dciodvfy_errors(out) == []
    seg = _check_seg(out, ref, label, names)
    head = seg.get_segment_description(1)
    assert head.SegmentedPropertyTypeCodeSequence[0].CodeValue == "69536005"  # SCT Head
    import medseg

    algo = head.SegmentationAlgorithmIdentificationSequence[0]
    assert (head.SegmentAlgorithmType, head.SegmentAlgorithmName) == ("AUTOMATIC", "medseg otsu-test")
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("medseg otsu-test", medseg.__version__)
    assert "otsu-test" in str(algo.AlgorithmParameters) and str(seg.ManufacturerModelName) == "otsu-test"
    # medseg's importer, given the whole study (5 series), picks the series the SEG references
    from medseg.export.importers import import_segmentation

    back = import_segmentation(out, data_path("dicom", "mr_study"))
    assert back.same_grid(label) and np.array_equal(back.array, label.array)
    assert back.meta["labels"] == {1: "head", 2: "bright tissue"}
    # empty frames omitted: the bright structure is absent from the last slice
    n_frames_with = sum(int((label.array[:, :, k] == v).any()) for v in (1, 2) for k in range(label.shape[2]))
    assert int(seg.NumberOfFrames) == n_frames_with


def test_dicom_seg_ct_3slice_dcmqi_labels(ct3, tmp_path):
    from medseg.export.reference import load_reference

    ref_dir, label = ct3
    names = {1: "liver", 2: "spine"}
    out = export_segmentation(label, ref_dir, "dicom-seg", tmp_path / "seg.dcm", labels=names)
    assert dciodvfy_errors(out) == []
    seg = _check_seg(out, load_reference(ref_dir), label, names)
    liver = seg.get_segment_description(1)
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT Liver
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical structure
    assert out.stat().st_size < 0.5 * 512 * 512 * 3 * 2  # bit-packed, only frames with content


def test_mirrored_array_gives_the_same_seg(ct3, tmp_path):
    """Reversing the array along i with the matching affine is the same label map in the patient."""
    ref_dir, label = ct3
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, label.shape[0] - 1
    mirrored = Image(label.array[::-1].copy(), label.affine @ flip, dict(label.meta))
    a = export_segmentation(label, ref_dir, "dicom-seg", tmp_path / "a.dcm")
    b = export_segmentation(mirrored, ref_dir, "dicom-seg", tmp_path / "b.dcm")
    from medseg.export.reference import load_reference

    ref = load_reference(ref_dir)
    ma, mb = _highdicom_masks(a, ref)[1], _highdicom_masks(b, ref)[1]
    assert all(np.array_equal(ma[n], mb[n]) for n in ma)


def test_label_map_on_another_grid_matches_simpleitk(mr, tmp_path):
    """A map on a 1.5 mm axis-aligned RAS grid covering the oblique series: medseg's resampling to the
    series must agree with SimpleITK's nearest-neighbour resampling (ties at exactly half a voxel aside)."""
    import SimpleITK as sitk

    from medseg.export.resample import resample_to_reference

    path, ref, label = mr
    corners = np.array([[i, j, k] for i in (0, label.shape[0] - 1) for j in (0, label.shape[1] - 1)
                        for k in (0, label.shape[2] - 1)], float)
    world = label.index_to_world(corners)
    lo, hi = world.min(0) - 5.0, world.max(0) + 5.0
    sp = 1.5
    shape = tuple(int(np.ceil((hi[a] - lo[a]) / sp)) + 1 for a in range(3))
    grid = Image(np.zeros(shape, np.uint8), np.diag([sp, sp, sp, 1.0]) + np.c_[np.zeros((4, 3)), np.r_[lo, 0]])
    nn = sitk.sitkNearestNeighbor
    other = Image.from_sitk(sitk.Resample(label.to_sitk(), grid.to_sitk(), sitk.Transform(), nn, 0))
    series_grid = label.to_sitk()
    expected = Image.from_sitk(sitk.Resample(other.to_sitk(), series_grid, sitk.Transform(), nn, 0)).array
    got = resample_to_reference(other, ref)
    assert (got == expected).mean() > 0.999
    out = export_segmentation(other, path, "dicom-seg", tmp_path / "seg.dcm")
    masks = _highdicom_masks(out, ref)[1]
    assert np.array_equal(masks[1], got == 1) and np.array_equal(masks[2], got == 2)


def test_dicom_seg_labelmap_type_reads_back(ct3, tmp_path):
    from medseg.export.reference import load_reference

    ref_dir, label = ct3
    out = export_segmentation(label, ref_dir, "dicom-seg", tmp_path / "lm.dcm", seg_type="labelmap")
    import highdicom as hd

    seg = hd.seg.segread(str(out))
    assert seg.SegmentationType == "LABELMAP"
    masks = _highdicom_masks(out, load_reference(ref_dir))[1]
    assert np.array_equal(masks[1], label.array == 1) and np.array_equal(masks[2], label.array == 2)


def _plastimatch(rtss, ref_dir, tmp_path, xor=True):
    """plastimatch's rasterisation of ``rtss`` on ``ref_dir``: (Image of bit planes, names by index)."""
    import SimpleITK as sitk

    exe = _need("plastimatch")
    img, lst = tmp_path / "ss.nii.gz", tmp_path / "ss.txt"
    cmd = [exe, "convert", "--input", str(rtss), "--referenced-ct", str(ref_dir), "--output-ss-img", str(img),
           "--output-ss-list", str(lst)] + (["--xor-contours"] if xor else [])
    subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    ss = Image.from_sitk(sitk.ReadImage(str(img)))
    names = {int(ln.split("|")[0]): ln.split("|")[2] for ln in lst.read_text().splitlines() if ln.strip()}
    return ss, names


def _plastimatch_mask(ss: Image, index: int) -> np.ndarray:
    arr = ss.array if ss.channels_first else ss.array[None]
    return (arr[index // 8] >> (index % 8)) & 1 > 0


def _surface_dice(a, b, spacing, tol=1.0) -> float:
    import surface_distance as sd

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if np.array_equal(a, b):
        return 1.0  # identical masks: every surface point at distance 0 (and saves seconds per ROI)
    idx = np.argwhere(a | b)  # crop to both masks (+2 voxels): same distances, far less work
    lo, hi = np.maximum(idx.min(0) - 2, 0), idx.max(0) + 3
    box = tuple(slice(x, y) for x, y in zip(lo, hi))
    d = sd.compute_surface_distances(a[box], b[box], spacing)
    return float(sd.compute_surface_dice_at_tolerance(d, tol))


@pytest.mark.parametrize("holes", ["keyhole", "separate"])
def test_rtstruct_mr_dciodvfy_plastimatch_and_medseg_import(mr, tmp_path, holes):
    """Keyhole contours (default) through the issue's plastimatch command (union of contours);
    separate hole contours through plastimatch --xor-contours (even-odd). medseg's importer reads both."""
    from medseg.export.importers import import_masks

    path, ref, label = mr
    names = {1: "head", 2: "bright tissue"}
    out = export_segmentation(label, path, "rtstruct", tmp_path / "rtss.dcm", labels=names, rt_holes=holes)
    assert dciodvfy_errors(out) == []
    ss, pm_names = _plastimatch(out, path, tmp_path, xor=holes == "separate")
    assert ss.shape == label.shape and np.allclose(ss.affine, label.affine, atol=1e-2), "plastimatch used another grid"
    masks, med_names = import_masks(out, path)
    assert med_names == names
    for idx, (value, name) in enumerate(names.items()):
        truth = label.array == value
        assert pm_names[idx] == name
        pm = _plastimatch_mask(ss, idx)
        assert truth.sum() >= 1000
        assert _surface_dice(truth, pm, label.spacing) >= 0.95
        if value == 1:  # compact, organ-like
            assert dice(truth, pm) >= 0.95
        # medseg's own importer follows the writer's convention exactly
        assert np.array_equal(masks.array[idx] > 0, truth)


def test_rtstruct_ct_3slice_plastimatch_default_command(ct3, tmp_path):
    """The issue's plastimatch command (no --xor-contours) on dcmqi's liver/spine: compact ROIs."""
    ref_dir, label = ct3
    out = export_segmentation(label, ref_dir, "rtstruct", tmp_path / "rtss.dcm", labels={1: "liver", 2: "spine"})
    assert dciodvfy_errors(out) == []
    ss, pm_names = _plastimatch(out, ref_dir, tmp_path, xor=False)
    assert ss.shape == label.shape and np.allclose(ss.affine, label.affine, atol=1e-2)
    for idx, value in enumerate((1, 2)):
        truth, pm = label.array == value, _plastimatch_mask(ss, idx)
        assert _surface_dice(truth, pm, label.spacing) >= 0.95
        assert dice(truth, pm) >= 0.95


def test_dicom_seg_on_a_series_without_type2_patient_attributes(tmp_path):
    """The real HippoCrop series has no PatientBirthDate: the SEG gets it empty (Type 2), validates, reads back."""
    import shutil
    import subprocess

    import numpy as np
    import pydicom

    from medseg.export import export_segmentation
    from medseg.export.importers import import_segmentation
    from medseg.io import read_image

    series = data_path("dicom", "mr_study", "13_HCropVolume")
    first = pydicom.dcmread(next(p for p in sorted(series.iterdir()) if p.is_file()), stop_before_pixels=True)
    assert "PatientBirthDate" not in first  # the situation under test
    img = read_image(series)
    lab = np.zeros(img.shape, np.uint8)
    lab[img.array > np.percentile(img.array, 90)] = 1
    out = export_segmentation(img.with_array(lab), series, "dicom-seg", tmp_path / "seg.dcm", labels={1: "bright"})
    ds = pydicom.dcmread(out)
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""
    back = import_segmentation(out, reference=series)
    assert np.array_equal(back.array > 0, lab > 0)
    if shutil.which("dciodvfy"):
        res = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
        assert not [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
