"""NIfTI / NRRD / MHA reading and writing: geometry equal to SimpleITK for every NIfTI in the real
data, ITK's rule where sform and qform disagree, and lossless round trips between the formats."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, data_path, run_cli
from medseg.io.image import Image, affine_from_geometry
from medseg.io.readers import read_image
from medseg.io.writers import write_image


def _all_nifti():
    return sorted(DATA.rglob("*.nii*")) if DATA.exists() else []


def _sitk_geometry(path):
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return r


def test_every_nifti_in_the_data_has_simpleitks_geometry():
    files = _all_nifti()
    if not files:
        data_path("msd_hippocampus")  # skips with the reason
    checked = 0
    for f in files:
        img = read_image(f)
        r = _sitk_geometry(f)
        n = min(r.GetDimension(), 3)
        size = r.GetSize()[:n]
        assert img.shape == tuple(size), f
        np.testing.assert_allclose(img.spacing, r.GetSpacing()[:n], atol=1e-4, err_msg=str(f))
        d = np.array(r.GetDirection()).reshape(r.GetDimension(), -1)[:3, :3]
        np.testing.assert_allclose(img.direction_lps, d, atol=1e-4, err_msg=str(f))
        np.testing.assert_allclose(img.origin_lps, r.GetOrigin()[:3], atol=1e-3, err_msg=str(f))
        checked += 1
    assert checked == len(files) > 400


@pytest.mark.parametrize("rel", [("totalseg_example", "example_ct_sm.nii.gz"),
                                 ("brats2015_sample", "brats_2013_pat0001_1", "OTMultiClass.nii.gz"),
                                 ("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz")])
def test_nifti_values_equal_simpleitk(rel):
    import SimpleITK as sitk

    p = data_path(*rel)
    ref = Image.from_sitk(sitk.ReadImage(str(p)))
    img = read_image(p)
    np.testing.assert_array_equal(img.array, ref.array)


def _nifti_with(tmp_path, sform, s_code, qform, q_code, name="x.nii"):
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), None)
    img.set_qform(qform, code=q_code)
    img.set_sform(sform, code=s_code)
    p = tmp_path / name
    nib.save(img, str(p))
    return p


@pytest.mark.parametrize("s_code,q_code", [(1, 1), (2, 1), (4, 1), (1, 0), (0, 1), (2, 0), (1, 2), (3, 1), (2, 2),
                                            (1, 4), (3, 3)])
def test_sform_qform_disagreement_follows_itk(tmp_path, s_code, q_code):
    """Synthetic headers (mechanics only): where the two libraries differ, medseg reads what ITK reads."""
    import SimpleITK as sitk

    q = affine_from_geometry([2, 2, 3], [10, 20, 30], np.eye(3))
    th = np.deg2rad(10)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    s = affine_from_geometry([2, 2, 3], [11, 21, 31], rot)
    p = _nifti_with(tmp_path, s, s_code, q, q_code)
    ref = Image.from_sitk(sitk.ReadImage(str(p)))
    img = read_image(p)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    assert img.meta["affine_source"].startswith("sform" if np.allclose(img.affine, s, atol=1e-4) else "qform")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_through_every_writable_format(tmp_path, suffix):
    import SimpleITK as sitk

    src = read_image(data_path("dicom", "mr_study", "12-T1post-05670"))  # oblique geometry
    out = write_image(src, tmp_path / f"t1{suffix}")
    back = read_image(out)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, src.array)
    ref = Image.from_sitk(sitk.ReadImage(str(out)))  # an independent reader agrees
    np.testing.assert_allclose(ref.affine, src.affine, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [f"t1{suffix}"]  # no temp files left


def test_convert_between_formats_keeps_geometry_and_values(tmp_path):
    src = data_path("dicom", "dcmqi_segmentations", "liver_seg.nrrd")
    a, b = tmp_path / "liver.nii.gz", tmp_path / "liver.mha"
    assert run_cli("convert", src, a).code == 0
    assert run_cli("convert", a, b).code == 0
    x, y = read_image(src), read_image(b)
    np.testing.assert_allclose(y.affine, x.affine, atol=1e-4)
    np.testing.assert_array_equal(y.array, x.array)


def test_4d_nifti_reads_as_channels_and_singleton_4th_axis_as_3d(tmp_path):
    import nibabel as nib

    aff = affine_from_geometry([1, 1, 2], [0, 0, 0], np.eye(3))
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), aff), str(tmp_path / "a.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 1), np.float32), aff), str(tmp_path / "b.nii.gz"))
    a, b = read_image(tmp_path / "a.nii.gz"), read_image(tmp_path / "b.nii.gz")
    assert a.channels_first and a.num_channels == 2 and a.shape == (3, 4, 5)
    assert not b.channels_first and b.shape == (3, 4, 5)


def test_info_json_matches_simpleitk():
    import json

    import SimpleITK as sitk

    p = data_path("totalseg_example", "example_mr_sm.nii.gz")
    res = run_cli("info", p, "--json")
    assert res.code == 0, res.err
    rec = json.loads(res.out)[0]
    s = sitk.ReadImage(str(p))
    arr = sitk.GetArrayViewFromImage(s)
    assert rec["shape"] == list(s.GetSize())
    np.testing.assert_allclose(rec["spacing"], s.GetSpacing(), atol=1e-5)
    assert rec["frame"] == "RAS"  # says why x and y have the opposite sign of ITK's (LPS)
    np.testing.assert_allclose(rec["origin"], np.array(s.GetOrigin()) * [-1, -1, 1], atol=1e-3)
    assert rec["intensity_range"] == [float(arr.min()), float(arr.max())]
    assert rec["dtype"] == str(sitk.GetArrayFromImage(s).dtype)
    import nibabel as nib

    assert rec["orientation"] == "".join(nib.aff2axcodes(nib.load(str(p)).affine))


def test_sheared_sform_falls_back_to_qform_like_itk(tmp_path):
    import SimpleITK as sitk

    q = affine_from_geometry([2, 2, 3], [10, 20, 30], np.eye(3))
    s = q.copy()
    s[0, 1] += 0.5  # shear: not a rotation times a scale
    s[:3, 3] = [11, 21, 31]
    p = _nifti_with(tmp_path, s, 1, q, 1)
    ref = Image.from_sitk(sitk.ReadImage(str(p)))
    img = read_image(p)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    assert img.meta["affine_source"] == "qform (sform disagrees)"
