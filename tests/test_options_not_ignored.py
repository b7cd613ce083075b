"""An option the user gave is used or refused, never silently ignored (``info``/``convert`` ``--series`` and
``--reference``, ``export`` ``--series``/``--seg-type``/``--rt-holes``/``--model-name``, ``evaluate``
``--lesion-classes`` and ``--geometry-tolerance``): a refusal is exit 2, one line naming the option, nothing written."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import assert_clean_error, data_path, run_cli

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


@pytest.fixture
def lab(tmp_path):
    """A label map with two separate blobs of class 1 (written with nibabel, not medseg)."""
    arr = np.zeros((10, 8, 5), np.uint8)
    arr[1:4, 1:4, 1:3] = 1
    arr[6:9, 4:7, 2:4] = 1
    path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))
    return path


def _written(folder, before):
    return sorted(p.name for p in folder.iterdir() if p.name not in before)


def test_series_of_a_non_dicom_file_is_refused_as_predict_refuses_it(lab, tmp_path):
    """info and convert say what predict says (its own check, medseg.infer.cases.list_cases) and write nothing."""
    from medseg.errors import InputError
    from medseg.infer.cases import list_cases

    with pytest.raises(InputError) as exc:
        list_cases(lab, series="1")
    predict_says = exc.value.problem
    before = {p.name for p in tmp_path.iterdir()}
    for args in (("info", lab, "--series", "5"), ("convert", lab, tmp_path / "x.nii.gz", "--series", "1")):
        res = run_cli(*args)
        assert_clean_error(res, "lab.nii.gz", predict_says)
    assert _written(tmp_path, before) == []


def test_convert_reference_for_an_image_input_is_refused(lab, tmp_path):
    """--reference only places a DICOM-SEG/RTSTRUCT: for an image (a missing path or a real folder) it is refused."""
    before = {p.name for p in tmp_path.iterdir()}
    for ref in (tmp_path / "nope", tmp_path):
        res = run_cli("convert", lab, tmp_path / "x.nii.gz", "--reference", ref)
        assert_clean_error(res, "lab.nii.gz", "--reference")
    assert _written(tmp_path, before) == []


def test_dicom_seg_series_picks_the_reference_series(tmp_path):
    """A DICOM-SEG's --series is the series of --reference it lies on: used (a wrong index refused, the right one
    gives dcmqi's own label map), refused without --reference, and refused by info."""
    base = data_path("dicom", "dcmqi_segmentations")
    seg, ct = base / "liver.dcm", base / "ct-3slice"
    res = run_cli("convert", seg, tmp_path / "a.nii.gz", "--reference", ct, "--series", "3")
    assert_clean_error(res, "ct-3slice", "out of range")
    res = run_cli("convert", seg, tmp_path / "b.nii.gz", "--series", "0")
    assert_clean_error(res, "liver.dcm", "--series", "--reference")
    assert_clean_error(run_cli("info", seg, "--series", "0"), "liver.dcm", "--series")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    res = run_cli("convert", seg, tmp_path / "c.nii.gz", "--reference", ct, "--series", "0")
    assert res.code == 0, res.err
    ours = np.asanyarray(nib.load(str(tmp_path / "c.nii.gz")).dataobj)
    import SimpleITK as sitk

    dcmqi = sitk.GetArrayFromImage(sitk.ReadImage(str(base / "liver_seg.nrrd"))).transpose(2, 1, 0)
    np.testing.assert_array_equal(ours > 0, dcmqi > 0)


def test_export_series_without_reference_is_refused(lab, tmp_path):
    before = {p.name for p in tmp_path.iterdir()}
    res = run_cli("export", lab, "-f", "seg-nrrd", "-o", tmp_path / "x.seg.nrrd", "--series", "2")
    assert_clean_error(res, "--series", "--reference")
    assert _written(tmp_path, before) == []


@pytest.mark.parametrize("fmt,out,option,value", [
    ("nifti", "x.nii.gz", "--seg-type", "bogus"),        # invalid for every format
    ("seg-nrrd", "x.seg.nrrd", "--seg-type", "bogus"),
    ("nifti", "x.nii.gz", "--seg-type", "labelmap"),     # valid, but only dicom-seg has a SEG type
    ("seg-nrrd", "x.seg.nrrd", "--rt-holes", "separate"),  # only rtstruct has holes to draw
    ("nifti", "x.nii.gz", "--model-name", "net"),        # only the DICOM objects record it
])
def test_export_option_of_another_format_is_refused(lab, tmp_path, fmt, out, option, value):
    before = {p.name for p in tmp_path.iterdir()}
    res = run_cli("export", lab, "-f", fmt, "-o", tmp_path / out, option, value)
    assert_clean_error(res, option)
    assert _written(tmp_path, before) == []


def test_export_without_those_options_still_writes_the_map(lab, tmp_path):
    res = run_cli("export", lab, "-f", "nifti", "-o", tmp_path / "x.nii.gz")
    assert res.code == 0, res.err
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "x.nii.gz")).dataobj),
                                  np.asanyarray(nib.load(str(lab)).dataobj))


def test_lesion_class_found_in_no_case_is_said_and_a_name_without_labels_refused(lab, tmp_path):
    """Without --labels the classes are the values found: '99' (in no case) gets a warning line, 'tumour' (which can
    name no class) is refused; '1' gets lesion metrics counting scipy's connected components."""
    res = run_cli("evaluate", "-p", lab, "-r", lab, "-o", tmp_path / "a", "-q", "--lesion-classes", "99,1")
    assert res.code == 0, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "99" in lines[0], res.err
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    n_blobs = ndi.label(np.asanyarray(nib.load(str(lab)).dataobj) == 1, np.ones((3, 3, 3)))[1]
    assert m["per_case"][0]["classes"]["label_1"]["lesions"]["n_ref"] == n_blobs == 2
    res = run_cli("evaluate", "-p", lab, "-r", lab, "-o", tmp_path / "b", "-q", "--lesion-classes", "tumour")
    assert_clean_error(res, "--lesion-classes", "tumour")
    assert not (tmp_path / "b").exists()


def test_geometry_tolerance_must_be_finite(lab, tmp_path):
    """inf takes every grid for the reference's, so a prediction stored flipped (same voxels in the world) is no
    longer re-indexed: refused. With a finite tolerance the flipped copy scores Dice 1, as its world content says."""
    arr = np.asanyarray(nib.load(str(lab)).dataobj)
    flip = AFFINE.copy()
    flip[0, 0], flip[0, 3] = -2.0, 2.0 * (arr.shape[0] - 1)  # index i -> x = 2 (n - 1 - i): the same world points
    pred = tmp_path / "pred.nii.gz"
    nib.save(nib.Nifti1Image(arr[::-1].copy(), flip), str(pred))
    res = run_cli("evaluate", "-p", pred, "-r", lab, "-o", tmp_path / "a", "-q", "--geometry-tolerance", "inf")
    assert_clean_error(res, "--geometry-tolerance")
    assert not (tmp_path / "a").exists()
    res = run_cli("evaluate", "-p", pred, "-r", lab, "-o", tmp_path / "b", "-q", "--geometry-tolerance", "0.01")
    assert res.code == 0, res.err
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["per_case"][0]["classes"]["label_1"]["dice"] == 1.0
