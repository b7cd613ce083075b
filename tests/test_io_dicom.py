"""DICOM loading on the real data: geometry and voxel values equal SimpleITK's ImageSeriesReader
(GDCM sorts the files and builds the geometry independently of medseg), and converted NIfTI
files carry the same affine in nibabel."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_path, run_cli
from medseg.io.dicom import discover_series, load_series
from medseg.io.image import Image

SITK_TOL = dict(spacing=1e-4, direction=1e-4, origin=1e-3)


def sitk_series(folder, uid=None):
    """SimpleITK's reading of one series of ``folder`` (GDCM's own file discovery and sort)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(folder))
    assert uids, f"SimpleITK found no series in {folder}"
    uid = uids[0] if uid is None else uid
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def assert_same_geometry(img: Image, simg):
    """The acceptance tolerances: shape equal, spacing/direction to 1e-4, origin to 1e-3 mm."""
    ref = Image.from_sitk(simg)
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.spacing, simg.GetSpacing(), atol=SITK_TOL["spacing"])
    np.testing.assert_allclose(img.direction_lps.ravel(), simg.GetDirection(), atol=SITK_TOL["direction"])
    np.testing.assert_allclose(img.origin_lps, simg.GetOrigin(), atol=SITK_TOL["origin"])
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-3)
    return ref


MR_SERIES = ["12-T1post-05670", "13_HCropVolume", "34909-T1prereg-84610", "36459-FLAIRreg-76244",
             "37916-T2reg-88910"]


@pytest.fixture(scope="module")
def mr_study():
    folder = data_path("dicom", "mr_study")
    return folder, discover_series(folder)


def test_mr_study_discovers_one_series_per_folder(mr_study):
    folder, found = mr_study
    assert len(found) == 5
    assert sorted(s.folder.name for s in found) == MR_SERIES
    for s in found:
        assert s.problem is None and s.tilt_degrees == 0
        assert len(set(s.files)) == s.num_slices == len(list(s.folder.glob("*.dcm")))
        assert [i for i in range(5)].count(s.index) == 1


@pytest.mark.parametrize("name", MR_SERIES)
def test_mr_series_geometry_and_values_equal_simpleitk(mr_study, name):
    folder, found = mr_study
    info = next(s for s in found if s.folder.name == name)
    img = load_series(info)
    ref = assert_same_geometry(img, sitk_series(folder / name, info.series_uid))
    np.testing.assert_array_equal(img.array, ref.array)
    # meta: the names the export and prediction code build on
    m = img.meta
    assert m["modality"] == "MR" and m["series_uid"] == info.series_uid
    assert len(m["files"]) == len(m["sop_instance_uids"]) == img.shape[2]
    for key in ("study_uid", "frame_of_reference_uid", "series_description"):
        assert key in m


def test_mr_slices_are_sorted_along_the_normal_not_by_name(mr_study):
    import pydicom

    _, found = mr_study
    info = next(s for s in found if s.folder.name == "12-T1post-05670")
    img = load_series(info)
    # slice k of the volume is file k of meta['files'], and it sits at index_to_world(0, 0, k)
    for k in (0, 7, img.shape[2] - 1):
        ds = pydicom.dcmread(img.meta["files"][k])
        ipp_ras = np.array([-1, -1, 1]) * np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(img.index_to_world([0, 0, k])[0], ipp_ras, atol=1e-3)
        np.testing.assert_array_equal(img.array[:, :, k], ds.pixel_array.T)
    # file names are not in slice order in this series, so a name sort would be wrong
    names = [p.rsplit("/", 1)[-1] for p in img.meta["files"]]
    assert names != sorted(names)


def test_ct_jpeg2000_with_empty_uids_loads_as_one_series():
    folder = data_path("totalseg_example", "ct_dicom")
    found = discover_series(folder)
    assert len(found) == 1 and found[0].series_uid == "" and found[0].num_slices == 20
    img = load_series(folder)
    ref = assert_same_geometry(img, sitk_series(folder))
    np.testing.assert_array_equal(img.array, ref.array)  # J2K decode + rescale (-1024) equal to GDCM's
    assert img.array.min() < -900  # rescaled to HU, not raw stored values


@pytest.mark.parametrize("rel", [("dicom", "dcmqi_segmentations", "ct-3slice"), ("dicom", "ct_rtstruct"),
                                 ("dicom", "dcmqi_segmentations", "24x38x3", "image")])
def test_small_ct_series_equal_simpleitk(rel):
    folder = data_path(*rel)
    img = load_series(folder)
    ref = assert_same_geometry(img, sitk_series(folder))
    np.testing.assert_array_equal(img.array, ref.array)


def test_enhanced_multiframe_equals_its_single_frame_source():
    """dcmqi's Legacy Converted Enhanced CT was made from the single-frame series next to it."""
    import SimpleITK as sitk

    base = data_path("dicom", "dcmqi_segmentations", "24x38x3")
    mf = load_series(base / "multiframe" / "mf.dcm")
    single = load_series(base / "image")
    assert sorted(mf.meta["frame_numbers"]) == [1, 2, 3] and len(set(mf.meta["files"])) == 1
    np.testing.assert_allclose(mf.affine, single.affine, atol=1e-4)
    np.testing.assert_array_equal(mf.array, single.array)
    assert_same_geometry(mf, sitk.ReadImage(str(base / "multiframe" / "mf.dcm")))


def test_monai_tiny_ct_with_a_gap_is_refused_with_the_reason():
    from medseg.errors import InputError

    folder = data_path("dicom", "monai_ct_tiny")
    with pytest.raises(InputError, match="missing slices"):
        load_series(folder)


def test_converted_nifti_has_the_simpleitk_affine_in_nibabel(tmp_path, mr_study):
    import nibabel as nib

    from medseg.io.series_names import series_case_names

    folder, found = mr_study
    res = run_cli("convert", folder, tmp_path / "out")
    assert res.code == 0, res.err
    names = series_case_names(found, folder)  # one series per subfolder: named after it, as predict names them
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.nii.gz" for n in MR_SERIES)
    for s in found:
        path = tmp_path / "out" / f"{names[s.index]}.nii.gz"
        assert names[s.index] == s.folder.name
        ref = Image.from_sitk(sitk_series(s.folder, s.series_uid))
        nimg = nib.load(str(path))
        np.testing.assert_allclose(nimg.affine, ref.affine, atol=1e-3)
        np.testing.assert_array_equal(np.asanyarray(nimg.dataobj), ref.array)


def test_convert_one_series_by_uid_and_by_index(tmp_path, mr_study):
    import nibabel as nib

    folder, found = mr_study
    s = next(s for s in found if s.description == "HippoCrop")  # the small one: keeps the test fast
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert run_cli("convert", folder, a, "--series", s.series_uid).code == 0
    assert run_cli("convert", folder, b, "--series", str(s.index)).code == 0
    assert nib.load(str(a)).shape == (35, 51, 32)
    np.testing.assert_array_equal(nib.load(str(a)).get_fdata(), nib.load(str(b)).get_fdata())


@pytest.mark.parametrize("rel", [("totalseg_example", "ct_dicom"), ("dicom", "dcmqi_segmentations", "ct-3slice")])
def test_converted_ct_values_equal_simpleitk_after_rescale(tmp_path, rel):
    import nibabel as nib

    folder = data_path(*rel)
    out = tmp_path / "ct.nii.gz"
    res = run_cli("convert", folder, out)
    assert res.code == 0, res.err
    ref = Image.from_sitk(sitk_series(folder))
    nimg = nib.load(str(out))
    np.testing.assert_allclose(nimg.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(nimg.dataobj), ref.array)
    assert ref.array.min() < 0  # HU after RescaleIntercept, in both


def test_oblique_mr_equals_plastimatch_conversion(tmp_path):
    """A second, independent DICOM reader (plastimatch, dcmtk-based) agrees on the oblique series."""
    import shutil
    import subprocess

    from medseg.io.readers import read_image

    exe = shutil.which("plastimatch")
    if exe is None:
        pytest.skip("plastimatch is not installed (apt-get install plastimatch)")
    folder = data_path("dicom", "mr_study", "12-T1post-05670")
    out = tmp_path / "pm.nii.gz"
    subprocess.run([exe, "convert", "--input", str(folder), "--output-img", str(out)], check=True,
                   capture_output=True, timeout=300)
    ours, theirs = load_series(folder), read_image(out)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.array, theirs.array)


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial-reversed"])
def test_reformatted_planes_read_like_simpleitk(tmp_path, plane):
    """The real HippoCrop MR written out as sagittal / coronal / head-first-reversed slices (the slices'
    own geometry in the headers): medseg and SimpleITK must agree on every orientation, and both must put
    each voxel back at its original world position."""
    import pydicom
    from pydicom.uid import generate_uid

    src = data_path("dicom", "mr_study", "13_HCropVolume")
    vol = load_series(src)  # [i, j, k], LPS geometry from the headers: identity orientation, 1 mm
    template = pydicom.dcmread(sorted(src.glob("*.dcm"))[0])
    lps = np.diag([-1, -1, 1, 1]) @ vol.affine
    arr = np.asarray(vol.array)
    if plane == "sagittal":  # slices along i; rows run along -k (superior to inferior), columns along j
        slices = [(arr[i, :, ::-1].T, [0, 1, 0, 0, 0, -1], (i, 0, arr.shape[2] - 1)) for i in range(arr.shape[0])]
    elif plane == "coronal":  # slices along j; columns along i, rows along -k
        slices = [(arr[:, j, ::-1].T, [1, 0, 0, 0, 0, -1], (0, j, arr.shape[2] - 1)) for j in range(arr.shape[1])]
    else:  # axial, but the row direction flipped: the normal points to the feet
        slices = [(arr[:, ::-1, k].T, [1, 0, 0, 0, -1, 0], (0, arr.shape[1] - 1, k)) for k in range(arr.shape[2])]
    uid = generate_uid()
    (tmp_path / "d").mkdir()
    for n, (pix, iop, corner) in enumerate(slices):
        ds = template.copy()
        ds.Rows, ds.Columns = pix.shape
        ds.PixelData = np.ascontiguousarray(pix.astype(np.int16)).tobytes()
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in (lps @ [*corner, 1])[:3]]
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), n + 1
        ds.save_as(tmp_path / "d" / f"{n:03d}.dcm")
    img = load_series(tmp_path / "d")
    assert_same_geometry(img, sitk_series(tmp_path / "d"))
    # every voxel is where it was: sample world points of the original and compare the values there
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, s, 200) for s in vol.shape], axis=1)
    world = vol.index_to_world(ijk)
    back = np.rint(img.world_to_index(world)).astype(int)
    np.testing.assert_array_equal(img.array[tuple(back.T)], arr[tuple(ijk.T)])
