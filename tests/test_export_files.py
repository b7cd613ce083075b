"""seg.nrrd, NIfTI + colour tables, colour/code tables, label names, resampling mechanics, and the
`medseg export` CLI's answers to bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from medseg.export import export_segmentation
from medseg.export.colors import read_label_names, segment_info
from medseg.io.image import LPS_TO_RAS, Image, affine_from_geometry

DCMQI = ("dicom", "dcmqi_segmentations")
CT_RT = ("dicom", "ct_rtstruct")  # 4-slice CT + Mask.nii.gz with values 1 and 2


@pytest.fixture(scope="module")
def liver_spine():
    import SimpleITK as sitk

    path = data_path(*DCMQI, "liver_spine_seg.nrrd")
    return path, Image.from_sitk(sitk.ReadImage(str(path)), meta={"source": str(path)})


def test_seg_nrrd_is_a_slicer_segmentation(liver_spine, tmp_path):
    import nrrd
    import SimpleITK as sitk

    src, label = liver_spine
    out = export_segmentation(label, None, "seg-nrrd", tmp_path / "x.seg.nrrd", labels={1: "liver", 2: "spine"})
    data, header = nrrd.read(str(out), index_order="F")
    assert np.array_equal(data, label.array)
    assert header["space"] == "left-posterior-superior"
    back = Image.from_sitk(sitk.ReadImage(str(out)))  # SimpleITK reads the geometry independently
    assert back.same_grid(label) and np.array_equal(back.array, label.array)
    assert header["Segment0_Name"] == "liver" and header["Segment1_Name"] == "spine"
    assert header["Segment0_LabelValue"] == "1" and header["Segment1_LabelValue"] == "2"
    assert "SCT^10200004^Liver" in header["Segment0_Tags"]
    for n, v in enumerate((1, 2)):
        idx = np.argwhere(label.array == v)
        lo, hi = idx.min(0), idx.max(0)
        assert header[f"Segment{n}_Extent"] == " ".join(f"{a} {b}" for a, b in zip(lo, hi))
        rgb = [float(c) for c in header[f"Segment{n}_Color"].split()]
        assert all(0 <= c <= 1 for c in rgb)


def test_nifti_with_itksnap_and_slicer_tables(liver_spine, tmp_path):
    import nibabel as nib

    _, label = liver_spine
    out = export_segmentation(label, None, "nifti", tmp_path / "x.nii.gz", labels={1: "liver", 2: "spine"})
    nimg = nib.load(str(out))
    assert np.array_equal(np.asanyarray(nimg.dataobj), label.array)
    assert np.allclose(nimg.affine, label.affine, atol=1e-4)
    snap = [ln.split() for ln in (tmp_path / "x.itksnap.txt").read_text().splitlines() if not ln.startswith("#")]
    assert [row[0] for row in snap] == ["0", "1", "2"] and snap[1][-1] == '"liver"' and len(snap[1]) == 8
    ctbl = [ln.split() for ln in (tmp_path / "x.ctbl").read_text().splitlines() if not ln.startswith("#")]
    assert ctbl[1][:2] == ["1", "liver"] and ctbl[2][:2] == ["2", "spine"] and len(ctbl[1]) == 6


def test_nifti_on_the_series_grid_with_reference(liver_spine, tmp_path):
    from medseg.export.reference import load_reference

    _, label = liver_spine
    ref_dir = data_path(*DCMQI, "ct-3slice")
    out = export_segmentation(label, ref_dir, "nifti", tmp_path / "x.nii.gz")
    import nibabel as nib

    assert np.allclose(nib.load(str(out)).affine, load_reference(ref_dir).grid_affine(), atol=1e-4)


def test_empty_label_map_is_a_documented_empty_result_for_files_and_an_error_for_dicom(liver_spine, tmp_path):
    _, label = liver_spine
    empty = label.with_array(np.zeros(label.shape, np.uint8))
    out = export_segmentation(empty, None, "seg-nrrd", tmp_path / "e.seg.nrrd")
    import nrrd

    assert not any(k.startswith("Segment0_") for k in nrrd.read_header(str(out)))
    with pytest.raises(InputError, match="empty"):
        export_segmentation(empty, data_path(*DCMQI, "ct-3slice"), "dicom-seg", tmp_path / "e.dcm")
    assert not (tmp_path / "e.dcm").exists()


def test_segment_info_codes_and_fallback():
    from pydicom.sr.codedict import codes

    liver = segment_info(1, "Liver")
    assert (liver.type.value, liver.category.value, liver.known) == (codes.SCT.Liver.value, "91723000", True)
    for name in ("kidney_left", "Left Kidney", "left-kidney"):
        info = segment_info(2, name)
        assert info.type == codes.SCT.Kidney and info.laterality == codes.SCT.Left
    assert segment_info(3, "tumour").category.value == "49755003"
    other = segment_info(4, "hippocampus anterior part x")
    assert (other.type, other.category, other.known) == (codes.SCT.Tissue, codes.SCT.Tissue, False)
    assert segment_info(5).name == "label_5"


def test_read_label_names_msd_and_nnunet(tmp_path):
    msd = data_path("msd_hippocampus", "dataset.json")
    assert read_label_names(msd) == {1: "anterior", 2: "posterior"}
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2, "whole": [1, 2]}}))
    with pytest.warns(UserWarning, match=r"region entries skipped \('whole' = \[1, 2\]\)"):
        assert read_label_names(v2) == {1: "liver", 2: "tumour"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read labels"):
        read_label_names(bad)


def test_read_label_names_refuses_one_name_for_two_labels(tmp_path):
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"labels": {"0": "background", "1": "BODY", "2": "BODY", "3": "cord"}}))
    with pytest.raises(InputError, match=r"'BODY' names 1, 2"):
        read_label_names(dup)


def test_resample_to_grid_goes_through_world_coordinates():
    """Mechanics: an oblique grid and its axis-permuted, mirrored twin hold the same voxels."""
    from medseg.export.resample import resample_to_grid

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 4, (6, 7, 5)).astype(np.uint8)
    theta = np.deg2rad(23)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = affine_from_geometry([0.8, 1.1, 2.0], [3.0, -4.0, 10.0], rot)
    img = Image(arr, aff)
    # twin: index axes (k, i, j) with i reversed
    twin_arr = np.transpose(arr[::-1], (2, 0, 1)).copy()
    perm = np.zeros((4, 4))
    perm[0, 1] = -1.0
    perm[0, 3] = arr.shape[0] - 1
    perm[1, 2] = perm[2, 0] = perm[3, 3] = 1.0
    twin = Image(twin_arr, aff @ perm)
    assert np.array_equal(resample_to_grid(twin, aff, arr.shape).array, arr)
    with pytest.raises(InputError, match="does not cover"):
        bigger = aff.copy()
        bigger[:3, 3] -= 5 * aff[:3, 0]
        resample_to_grid(img, bigger, arr.shape)


# --- CLI: bad input gives one line, exit 2, no output ------------------------------------------------


def test_cli_dicom_seg_and_rtstruct_succeed(liver_spine, tmp_path):
    src, _ = liver_spine
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "spine"}}))
    ref = data_path(*DCMQI, "ct-3slice")
    for fmt in ("dicom-seg", "rtstruct"):
        res = run_cli("export", src, "--reference", ref, "--format", fmt, "-o", tmp_path / f"{fmt}.dcm",
                      "--labels", labels, "--model-name", "test-model")
        assert res.code == 0, res.err
        assert (tmp_path / f"{fmt}.dcm").stat().st_size > 0
    import pydicom

    rt = pydicom.dcmread(str(tmp_path / "rtstruct.dcm"))
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["liver", "spine"]
    assert rt.FrameOfReferenceUID == rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID


def test_cli_refuses_series_with_empty_uids(liver_spine, tmp_path):
    src, _ = liver_spine
    res = run_cli("export", src, "--reference", data_path("totalseg_example", "ct_dicom"), "--format", "dicom-seg",
                  "-o", tmp_path / "x.dcm")
    assert_clean_error(res, "ct_dicom", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "empty")
    assert not list(tmp_path.iterdir())


def test_cli_several_series_need_a_choice(liver_spine, tmp_path):
    src, _ = liver_spine
    mr = data_path("dicom", "mr_study")
    res = run_cli("export", src, "--reference", mr, "--format", "rtstruct", "-o", tmp_path / "x.dcm")
    assert_clean_error(res, "series", "--series")
    assert not list(tmp_path.iterdir())


def test_cli_label_map_not_covering_the_series(liver_spine, tmp_path):
    """The CT liver map lies nowhere near the MR series (same command, another reference)."""
    src, _ = liver_spine
    mr = data_path("dicom", "mr_study", "12-T1post-05670")
    res = run_cli("export", src, "--reference", mr, "--format", "dicom-seg", "-o", tmp_path / "x.dcm")
    assert_clean_error(res, "does not cover")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["--format", "rtstruct"], "--reference"),
    (["--format", "stl"], "unknown --format"),
    (["--format", "nifti", "--labels", "/nonexistent/dataset.json"], "no such labels file"),
    (["--format", "dicom-seg", "--reference", "/nonexistent/series"], "no such reference"),
])
def test_cli_usage_errors(liver_spine, tmp_path, args, needle):
    src, _ = liver_spine
    res = run_cli("export", src, "-o", tmp_path / "out.nii.gz", *args)
    assert_clean_error(res, needle)
    assert not list(tmp_path.iterdir())


def test_cli_probability_map_is_refused(tmp_path):
    prob = Image(np.full((4, 4, 3), 0.5, np.float32), np.eye(4))
    from medseg.io.writers import write_image

    write_image(prob, tmp_path / "prob.nii.gz")
    res = run_cli("export", tmp_path / "prob.nii.gz", "--format", "nifti", "-o", tmp_path / "o.nii.gz")
    assert_clean_error(res, "prob.nii.gz", "non-integer")
    assert not (tmp_path / "o.nii.gz").exists()


def test_lps_ras_boundary_in_seg_nrrd_origin(liver_spine):
    """The NRRD header carries LPS: the origin is the RAS origin with x, y negated."""
    from medseg.export.slicer import seg_nrrd_header

    _, label = liver_spine
    hdr = seg_nrrd_header(label, [])
    assert np.allclose(hdr["space origin"], (LPS_TO_RAS @ label.affine)[:3, 3])


@pytest.mark.parametrize("seed", range(4))
def test_keyhole_contours_read_the_same_by_union_and_even_odd_readers(seed):
    """Mechanics on random masks with holes and islands in holes: keyhole contours filled one by one
    with skimage.draw.polygon and OR-ed (a 'union' reader) give the mask, and so does medseg's even-odd
    fill; separate hole contours give it under even-odd only."""
    from scipy import ndimage as ndi
    from skimage.draw import polygon

    from medseg.export.contours import mask_contours
    from medseg.export.raster import fill_polygons

    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.normal(size=(60, 70)), 2.0) > 0.05
    mask[20:40, 20:40] = True
    mask[25:35, 25:35] = False  # a hole
    mask[29:31, 29:31] = True  # an island in the hole

    def union(contours):
        out = np.zeros(mask.shape, bool)
        for c in contours:
            rr, cc = polygon(c[:, 0], c[:, 1], mask.shape)
            out[rr, cc] = True
        return out

    keyhole, separate = mask_contours(mask), mask_contours(mask, holes="separate")
    assert len(keyhole) < len(separate)
    assert np.array_equal(fill_polygons(keyhole, mask.shape), mask)
    assert np.array_equal(union(keyhole), mask)
    assert np.array_equal(fill_polygons(separate, mask.shape), mask)
    assert not np.array_equal(union(separate), mask)  # a union reader fills separate holes


@pytest.mark.parametrize("seed, density", [(0, 0.05), (1, 0.1), (2, 0.2)])
def test_keyholes_join_every_hole_of_a_region_riddled_with_pinholes(seed, density):
    """Mechanics: hundreds of one-pixel holes, many walled in by others (a noisy prediction, a lung with its
    vessels), are all joined to the outline, so a union reader fills none of them; before, holes whose way out was
    blocked by holes not yet joined stayed separate contours, which a union reader filled."""
    from scipy import ndimage as ndi
    from skimage.draw import polygon

    from medseg.export.contours import mask_contours
    from medseg.export.raster import fill_polygons

    rng = np.random.default_rng(seed)
    mask = np.pad(rng.random((128, 128)) >= density, 3)
    holes = ndi.label(~mask)[1] - 1
    assert holes > 400
    contours = mask_contours(mask)
    union = np.zeros(mask.shape, bool)
    for c in contours:
        rr, cc = polygon(c[:, 0], c[:, 1], mask.shape)
        union[rr, cc] = True
    islands = ndi.label(mask)[1]  # 4-connected pieces cut off by diagonal pinholes: contours of their own
    assert len(contours) == islands
    assert np.array_equal(union, mask)
    assert np.array_equal(fill_polygons(contours, mask.shape), mask)


def test_resample_to_reference_uses_each_slice_position():
    """Mechanics: an irregular series (uneven slice gaps, each slice shifted along the column direction)
    samples the label map at every slice's own voxel centres, not on a grid through the first slice."""
    from medseg.export.reference import ReferenceSeries
    from medseg.export.resample import resample_to_reference

    arr = np.arange(10 * 12 * 8, dtype=np.uint16).reshape(10, 12, 8)
    label = Image(arr, np.diag([-1.0, -1.0, 2.0, 1.0]))  # LPS: identity in-plane, 2 mm slices
    shift = [0.0, 0.6, 1.7, 2.2]  # mm along the column direction
    z = [0.0, 2.0, 4.2, 9.9]
    pos = np.array([[0.0, 2 + s, zz] for s, zz in zip(shift, z)])
    ref = ReferenceSeries(path=None, datasets=[None] * 4, files=[], rows=6, columns=5,
                          row_dir=np.array([1.0, 0, 0]), col_dir=np.array([0, 1.0, 0]), spacing_rc=(1.0, 1.0),
                          positions=pos)
    assert not ref.is_regular()
    got = resample_to_reference(label, ref)
    for k in range(4):
        j0, kk = int(np.floor(2 + shift[k] + 0.5)), int(np.floor(z[k] / 2 + 0.5))
        assert np.array_equal(got[:, :, k], arr[:5, j0:j0 + 6, kk])


def test_cli_never_overwrites_its_input(liver_spine, tmp_path):
    import shutil

    src, label = liver_spine
    copy = tmp_path / "seg.nrrd"
    shutil.copy(src, copy)
    before = copy.read_bytes()
    res = run_cli("export", copy, "--format", "seg-nrrd", "-o", copy)
    assert_clean_error(res, "overwrite an input")
    assert copy.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["seg.nrrd"]


def _labels_file(tmp_path, labels: dict):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"labels": labels}))
    return path


@pytest.mark.parametrize("fmt", ["dicom-seg", "nifti"])
def test_cli_labels_file_must_name_every_value_of_the_map(tmp_path, fmt):
    """The map holds 1 and 2, the file names only 1: no silent 'label_2' segment (as evaluate refuses it)."""
    labels = _labels_file(tmp_path, {"0": "background", "1": "BODY"})
    out = tmp_path / "out" / ("seg.dcm" if fmt == "dicom-seg" else "seg.nii.gz")
    res = run_cli("export", data_path(*CT_RT, "Mask.nii.gz"), "-r", data_path(*CT_RT), "-f", fmt, "-o", out,
                  "--labels", labels)
    assert_clean_error(res, "labels.json", "value(s) 2 ", "Mask.nii.gz", "no name")
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_cli_labels_file_with_one_name_for_two_labels(tmp_path):
    labels = _labels_file(tmp_path, {"0": "background", "1": "BODY", "2": "BODY"})
    out = tmp_path / "out" / "rt.dcm"
    res = run_cli("export", data_path(*CT_RT, "Mask.nii.gz"), "-r", data_path(*CT_RT), "-f", "rtstruct", "-o", out,
                  "--labels", labels)
    assert_clean_error(res, "labels.json", "'BODY'", "share one name")
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
@pytest.mark.parametrize("name, suffix", [("x.nii.gz", ".nii.gz"), ("x.seg.nrrd", ".seg.nrrd"), ("x.json", ".json")])
def test_cli_dicom_output_named_as_another_format_is_refused(tmp_path, fmt, name, suffix):
    res = run_cli("export", data_path(*CT_RT, "Mask.nii.gz"), "-r", data_path(*CT_RT), "-f", fmt,
                  "-o", tmp_path / name)
    assert_clean_error(res, name, "DICOM", ".dcm", f"not {suffix}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["RS", "1.2.826.0.1.3680043.8.498", "rt.DCM"])
def test_cli_dicom_output_without_extension_or_dcm_is_accepted(tmp_path, name):
    import pydicom

    res = run_cli("export", data_path(*CT_RT, "Mask.nii.gz"), "-r", data_path(*CT_RT), "-f", "rtstruct",
                  "-o", tmp_path / name)
    assert res.code == 0, res.err
    assert pydicom.dcmread(str(tmp_path / name)).Modality == "RTSTRUCT"


def test_cli_reference_file_that_is_not_dicom(tmp_path):
    """A NIfTI file given as the series: the message speaks of that file, not of a folder to clean."""
    res = run_cli("export", data_path(*CT_RT, "Mask.nii.gz"), "-r", data_path(*CT_RT, "Image.nii.gz"),
                  "-f", "dicom-seg", "-o", tmp_path / "seg.dcm")
    assert_clean_error(res, "Image.nii.gz", "not a DICOM file", "--reference takes the DICOM series folder")
    assert "remove it" not in res.err
    assert not list(tmp_path.iterdir())
