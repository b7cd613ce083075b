"""Invariance of DICOM series reading: the real series stored or presented another way (renamed, nested, reordered,
re-encoded, rotated, per-slice rescale, split into several stacks) must give the same volume, and that volume must
equal an independent reading (pydicom + numpy from first principles, or SimpleITK)."""

from __future__ import annotations

import random
import shutil
import uuid

import numpy as np
import pydicom
import pytest

from conftest import data_path
from medseg.io.dicom import discover_series, load_series
from medseg.io.dicom_geometry import stack_geometry
from medseg.io.series_names import series_case_names

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HIPPO = ("dicom", "mr_study", "13_HCropVolume")  # 32 small axial MR slices
CT = ("dicom", "ct_rtstruct")  # 4 CT slices (implicit VR, signed, intercept -1024) beside an RTSTRUCT


def _slices(rel):
    return [f for f in sorted(data_path(*rel).glob("*.dcm")) if pydicom.dcmread(f, stop_before_pixels=True).Modality
            in ("CT", "MR")]


def first_principles(files):
    """pydicom + numpy: slices sorted by ImagePositionPatient along row x column, each slice's own rescale, float64
    ``[column, row, slice]``, and the RAS affine."""
    dss = [pydicom.dcmread(f) for f in files]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    along = [float(np.dot(np.array(ds.ImagePositionPatient, float), normal)) for ds in dss]
    order = np.argsort(along)
    dss, along = [dss[i] for i in order], np.sort(along)
    vol = np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
                    for ds in dss])
    dy, dx = (float(v) for v in dss[0].PixelSpacing)
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = row * dx, col * dy
    aff[:3, 2] = normal * (along[-1] - along[0]) / max(len(dss) - 1, 1)
    aff[:3, 3] = np.array(dss[0].ImagePositionPatient, float)
    return vol.transpose(2, 1, 0), LPS_TO_RAS @ aff


def _edited_copy(rel, dest, edit=None, names=None):
    """Copies of the real slices under ``dest`` (optionally renamed), each passed through ``edit(ds, k)``, ``k`` its
    index in slice order."""
    files = _slices(rel)
    dss = [pydicom.dcmread(f) for f in files]
    normal = np.cross(*np.array(dss[0].ImageOrientationPatient, float).reshape(2, 3))
    order = np.argsort([np.dot(np.array(ds.ImagePositionPatient, float), normal) for ds in dss])
    out = []
    for k, i in enumerate(order):
        ds = dss[i]
        if edit is not None:
            edit(ds, k)
        p = dest / (names[i] if names else files[i].name)
        p.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(p)
        out.append(p)
    return out


def test_names_nesting_order_and_instance_numbers_do_not_change_the_volume(tmp_path):
    ref = load_series(data_path(*HIPPO))
    n = len(_slices(HIPPO))
    rng = random.Random(0)
    names = [f"{rng.choice(['', 'a/', 'a/b/'])}{uuid.UUID(int=rng.getrandbits(128)).hex}" for _ in range(n)]
    edits = {"reversed": lambda ds, k: setattr(ds, "InstanceNumber", n - k),
             "duplicated": lambda ds, k: setattr(ds, "InstanceNumber", 1),
             "missing": lambda ds, k: delattr(ds, "InstanceNumber")}
    for what, edit in edits.items():
        files = _edited_copy(HIPPO, tmp_path / what, edit, names)
        img = load_series(tmp_path / what)
        np.testing.assert_array_equal(img.array, ref.array, err_msg=what)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-9)
        vol, aff = first_principles(files)
        np.testing.assert_array_equal(img.array, vol)
        np.testing.assert_allclose(img.affine, aff, atol=1e-4)


@pytest.mark.parametrize("slopes,intercepts,dtype", [([1, 2, 1, 3], [-1024, -1000, 0, -3000], np.int32),
                                                     ([1, 0.5, 1.25, 2], [-1024, -1000.5, 0, -3000], np.float32)])
def test_per_slice_rescale_equals_first_principles(tmp_path, slopes, intercepts, dtype):
    def edit(ds, k):
        ds.RescaleSlope, ds.RescaleIntercept = slopes[k], intercepts[k]

    files = _edited_copy(CT, tmp_path / "ct", edit)
    img = load_series(tmp_path / "ct")
    vol, aff = first_principles(files)
    assert img.array.dtype == dtype
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)


def test_monochrome1_keeps_the_modality_values(tmp_path):
    """Documented decision: MONOCHROME1 is a display inversion; the values stay the rescaled stored values."""
    _edited_copy(CT, tmp_path / "m1", lambda ds, k: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    np.testing.assert_array_equal(load_series(tmp_path / "m1").array, load_series(data_path(*CT), 0).array)


def test_big_endian_and_implicit_vr_equal_explicit_little_endian(tmp_path):
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

    def big_endian(ds, k):
        ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        list(ds.iterall())  # resolve the implicit VRs before writing them explicitly
        ds.set_original_encoding(False, False)

    def explicit(ds, k):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        list(ds.iterall())
        ds.set_original_encoding(False, True)

    ref = load_series(data_path(*CT), 0)  # the originals are implicit VR little endian
    for what, edit in {"be": big_endian, "le": explicit}.items():
        _edited_copy(CT, tmp_path / what, edit)
        img = load_series(tmp_path / what)
        assert img.array.dtype == ref.array.dtype
        np.testing.assert_array_equal(img.array, ref.array, err_msg=what)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-9)


def test_double_oblique_rotation_moves_only_the_affine(tmp_path):
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    centre = np.array([10.0, -20.0, 30.0])

    def edit(ds, k):
        ipp, iop = np.array(ds.ImagePositionPatient, float), np.array(ds.ImageOrientationPatient, float)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in rot @ (ipp - centre) + centre]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[rot @ iop[:3], rot @ iop[3:]]]

    _edited_copy(HIPPO, tmp_path / "obl", edit)
    ref = load_series(data_path(*HIPPO))
    img = load_series(tmp_path / "obl")
    move = np.eye(4)
    move[:3, :3], move[:3, 3] = rot, centre - rot @ centre  # in LPS
    np.testing.assert_array_equal(img.array, ref.array)
    np.testing.assert_allclose(img.affine, LPS_TO_RAS @ move @ LPS_TO_RAS @ ref.affine, atol=1e-4)


def test_split_series_parts_do_not_depend_on_file_names(tmp_path):
    """A SeriesInstanceUID holding two stacks of equal size (a localizer: 3 axial + 3 coronal slices) is split in
    the same order, with the same indices and output names, whatever the files are called."""
    src = _slices(HIPPO)[:6]

    def build(folder, names):
        folder.mkdir()
        for k, (f, name) in enumerate(zip(src, names)):
            ds = pydicom.dcmread(f)
            if k >= 3:
                ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
                ds.ImagePositionPatient = [0, float(k), 0]
            ds.save_as(folder / name)
        found = discover_series(folder)
        names = series_case_names(found, folder)
        return [(s.index, s.meta["orientation"], s.meta["split"], sorted(f.sop_uid for f in s.frames),
                 names[s.index]) for s in found]

    a = build(tmp_path / "a", [f"IM{k}" for k in range(6)])
    b = build(tmp_path / "b", [f"IM{5 - k}" for k in range(6)])
    assert len(a) == 2 and a == b


def test_duplicate_positions_message_counts_slices_and_positions():
    z = np.repeat(np.arange(32.0), 2)  # two echoes at every position
    with pytest.raises(ValueError, match=r"^64 slices share a position with another \(32 positions hold several\)"):
        stack_geometry(np.c_[np.zeros(64), np.zeros(64), z], [0, 0, 1])
    z = np.r_[0, 1, 1, 1, 2.0]
    with pytest.raises(ValueError, match=r"^3 slices share a position with another \(1 position holds several\)"):
        stack_geometry(np.c_[np.zeros(5), np.zeros(5), z], [0, 0, 1])


def test_echoes_in_one_series_are_refused_naming_the_folder(tmp_path):
    from medseg.errors import InputError

    def second_echo(ds, k):
        ds.EchoNumbers = 2
        ds.SOPInstanceUID = pydicom.uid.generate_uid()

    _edited_copy(HIPPO, tmp_path / "s")
    _edited_copy(HIPPO, tmp_path / "s", second_echo, names=[f"e2_{f.name}" for f in _slices(HIPPO)])
    with pytest.raises(InputError, match=r"64 slices share a position with another \(32 positions") as exc:
        load_series(tmp_path / "s")
    assert str(tmp_path / "s") in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("between", [None, 2.5, -2.5])
def test_single_slice_geometry_equals_simpleitk(tmp_path, between):
    """A lone slice: direction and origin as SimpleITK/GDCM read them, a negative SpacingBetweenSlices included
    (GDCM reads its sign as the stacking direction, as the NM reconstruction module defines it)."""
    sitk = pytest.importorskip("SimpleITK")
    src = sorted(data_path("dicom", "dcmqi_segmentations", "ct-3slice").glob("*.dcm"))[1]
    ds = pydicom.dcmread(src)
    if between is not None:
        ds.SpacingBetweenSlices = between
    ds.save_as(tmp_path / "one.dcm")
    img = load_series(tmp_path / "one.dcm")
    ref = sitk.ReadImage(str(tmp_path / "one.dcm"))
    np.testing.assert_allclose(img.direction_lps.ravel(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(img.origin_lps, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(img.array[:, :, 0], sitk.GetArrayFromImage(ref)[0].T)


def test_one_study_flattened_under_random_names_gives_the_same_series(tmp_path):
    study = data_path("dicom", "mr_study")
    files = sorted(study.rglob("*.dcm"))
    rng = random.Random(1)
    for f in files:
        shutil.copy(f, tmp_path / uuid.UUID(int=rng.getrandbits(128)).hex)
    ref, flat = discover_series(study), discover_series(tmp_path)
    key = [(s.index, s.series_uid, s.label(), s.meta["affine"]) for s in ref]
    assert [(s.index, s.series_uid, s.label(), s.meta["affine"]) for s in flat] == key
    assert [sorted(f.sop_uid for f in s.frames) for s in flat] == [sorted(f.sop_uid for f in s.frames) for s in ref]
    names = series_case_names(flat, tmp_path)
    assert len(set(names.values())) == len(flat)


def test_split_parts_do_not_depend_on_file_names_when_sop_uids_are_blank(tmp_path):
    src = sorted(data_path("dicom", "mr_study", "13_HCropVolume").glob("*.dcm"))[:6]

    def build(folder, names):
        folder.mkdir()
        for k, (f, name) in enumerate(zip(src, names)):
            ds = pydicom.dcmread(f)
            del ds.SOPInstanceUID  # anonymised
            if k >= 3:
                ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
                ds.ImagePositionPatient = [0, float(k), 0]
            ds.save_as(folder / name)
        return [(s.index, s.meta["orientation"]) for s in discover_series(folder)]

    assert build(tmp_path / "a", [f"IM{k}" for k in range(6)]) == build(tmp_path / "b", [f"IM{5 - k}" for k in range(6)])
