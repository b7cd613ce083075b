"""Inconsistent slices inside one DICOM series (audit s47): slices that disagree on their frame of reference, modality,
rescale or SOPInstanceUID were merged into one volume with exit 0, where the export's reference reader (and highdicom)
refuse the same series. Each is now one line naming a file, exit 2, no output; what may differ per slice (rescale
values, window, MONOCHROME1) still loads, equal to a pydicom + numpy reading."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import assert_clean_error, data_path, run_cli
from medseg.io.dicom import discover_series, load_series

HIPPO = ("dicom", "mr_study", "13_HCropVolume")  # 32 small axial MR slices, no rescale
CT = ("dicom", "ct_rtstruct")  # 4 CT slices (signed 16 bits, intercept -1024) beside an RTSTRUCT
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sorted_slices(rel) -> list[tuple[str, pydicom.Dataset]]:
    """(file name, dataset) of the real image slices, sorted along the slice normal (pydicom + numpy)."""
    out = [(f.name, pydicom.dcmread(f)) for f in sorted(data_path(*rel).glob("*.dcm"))]
    out = [(name, ds) for name, ds in out if ds.Modality in ("CT", "MR")]
    iop = np.array(out[0][1].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(out, key=lambda t: float(normal @ np.array(t[1].ImagePositionPatient, float)))


def _copy(rel, dest, edit=None) -> list:
    """The real slices written under ``dest``, each passed through ``edit(ds, k)`` (``k``: its place in slice order);
    returns the paths in slice order."""
    dest.mkdir(parents=True)
    paths = []
    for k, (name, ds) in enumerate(_sorted_slices(rel)):
        if edit is not None:
            edit(ds, k)
        ds.save_as(dest / name)
        paths.append(dest / name)
    return paths


def _first_principles(paths) -> tuple[np.ndarray, np.ndarray]:
    """Values (each slice's own rescale, float64, ``[column, row, slice]``) and RAS affine of slices in order."""
    dss = [pydicom.dcmread(p) for p in paths]
    vol = np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
                    for ds in dss]).transpose(2, 1, 0)
    iop = np.array(dss[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    along = [float(normal @ np.array(ds.ImagePositionPatient, float)) for ds in dss]
    dy, dx = (float(v) for v in dss[0].PixelSpacing)
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 3] = row * dx, col * dy, np.array(dss[0].ImagePositionPatient, float)
    aff[:3, 2] = normal * (along[-1] - along[0]) / max(len(dss) - 1, 1)
    return vol, LPS_TO_RAS @ aff


def _refused_by_convert_and_export(tmp_path, folder, culprits, *needles):
    """``convert`` and ``export --reference`` both refuse ``folder`` (exit 2, one line naming one of the ``culprits``
    files, no output); the listing says why without failing."""
    import nibabel as nib

    out = tmp_path / "out.nii.gz"
    res = run_cli("convert", folder, out)
    assert_clean_error(res, *needles)
    assert any(p.name in res.err for p in culprits), res.err
    assert not out.exists()
    found = discover_series(folder)
    assert len(found) == 1 and any(str(p) in found[0].problem for p in culprits)
    vol, aff = _first_principles(found[0].files)  # a label on the slices' own grid
    lab = np.zeros(vol.shape, np.uint8)
    lab[5:15, 5:15, 1:3] = 1
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "lab.nii.gz")
    seg = tmp_path / "seg.dcm"
    res = run_cli("export", tmp_path / "lab.nii.gz", "--reference", folder, "--format", "dicom-seg", "-o", seg)
    assert res.code == 2 and not seg.exists(), res.err


@pytest.mark.parametrize("which", [range(16, 32), [31]], ids=["half", "last-slice"])
def test_slices_in_two_frames_of_reference_are_refused(tmp_path, which):
    """Before: loaded as one 32-slice volume with exit 0 (SimpleITK and dcm2niix merge them too), while export refused
    the same series as a reference ('mix several FrameOfReferenceUIDs'). Positions in two frames of reference are in
    two coordinate systems: refused, as highdicom's legacy conversion does, not split."""
    other = generate_uid()
    paths = _copy(HIPPO, tmp_path / "s", lambda ds, k: setattr(ds, "FrameOfReferenceUID", other) if k in which
                  else None)
    culprits = paths if len(which) > 1 else [paths[31]]  # equal halves: either may be named
    _refused_by_convert_and_export(tmp_path, tmp_path / "s", culprits, "FrameOfReferenceUID")


def test_a_series_without_any_frame_of_reference_still_loads(tmp_path):
    """The check compares slices: a UID absent from every slice (anonymised data) is no disagreement."""
    paths = _copy(HIPPO, tmp_path / "s", lambda ds, k: delattr(ds, "FrameOfReferenceUID"))
    img = load_series(tmp_path / "s")
    vol, aff = _first_principles(paths)
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)


def test_a_slice_of_another_modality_is_refused(tmp_path):
    """One MR slice relabelled CT in an MR series: loaded as a 32-slice MR volume with exit 0 (dcm2niix splits it
    off). Modality is a series attribute: refused, naming the file."""
    paths = _copy(HIPPO, tmp_path / "s", lambda ds, k: setattr(ds, "Modality", "CT") if k == 5 else None)
    out = tmp_path / "out.nii.gz"
    assert_clean_error(run_cli("convert", tmp_path / "s", out), paths[5].name, "Modality")
    assert not out.exists()


def test_a_slice_without_the_rescale_of_the_others_is_refused(tmp_path):
    """A CT slice lacking RescaleSlope/Intercept (Type 1 in CT) among slices with intercept -1024 was read with
    intercept 0: its air at 0 HU (water) instead of -1024, exit 0. Per-slice values still load (each its own)."""
    def edit(ds, k):
        if k == 3:
            del ds.RescaleSlope, ds.RescaleIntercept

    paths = _copy(CT, tmp_path / "ct", edit)
    vol, _ = _first_principles(paths)  # what reading it anyway gives: the slice without a rescale 1024 above the rest
    ref, _ = _first_principles(_copy(CT, tmp_path / "orig"))
    assert np.all(vol[..., 3] - ref[..., 3] == 1024)
    out = tmp_path / "out.nii.gz"
    assert_clean_error(run_cli("convert", tmp_path / "ct", out), paths[3].name, "RescaleSlope/RescaleIntercept")
    assert not out.exists()

    def per_slice(ds, k):
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter = [1, 2, 1, 1][k], -1024 + 10 * k, 40 + k
        if k == 2:
            ds.PhotometricInterpretation = "MONOCHROME1"  # display only: the values stay the modality values

    paths = _copy(CT, tmp_path / "ok", per_slice)
    np.testing.assert_array_equal(load_series(tmp_path / "ok").array, _first_principles(paths)[0])


def test_slices_in_different_rescale_units_are_refused(tmp_path):
    """RescaleType HU on three slices and US on one: merged with exit 0. Slices that name no type are not compared
    (CT slices usually leave it out)."""
    paths = _copy(CT, tmp_path / "ct", lambda ds, k: setattr(ds, "RescaleType", "US" if k == 1 else "HU"))
    assert_clean_error(run_cli("convert", tmp_path / "ct", tmp_path / "out.nii.gz"), paths[1].name, "RescaleType")
    paths = _copy(CT, tmp_path / "ok", lambda ds, k: setattr(ds, "RescaleType", "HU") if k % 2 else None)
    np.testing.assert_array_equal(load_series(tmp_path / "ok").array, _first_principles(paths)[0])


def test_files_sharing_a_sop_instance_uid_are_refused(tmp_path):
    """Slices 0, 3 and 4 (other positions, other pixels) carrying one SOPInstanceUID: loaded with exit 0 and that UID
    three times in ``sop_instance_uids``, so a segmentation exported on the volume could not say which slice it
    meant; the export's reference reader refused the series ('duplicate SOPInstanceUIDs')."""
    uid = []

    def edit(ds, k):
        uid.append(ds.SOPInstanceUID)
        if k in (3, 4):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid[0]

    paths = _copy(HIPPO, tmp_path / "s", edit)
    assert len({pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}) == 30
    _refused_by_convert_and_export(tmp_path, tmp_path / "s", [paths[0], paths[3], paths[4]], "SOPInstanceUID")


def _colour(ds, size=None):
    """``ds`` as an 8-bit RGB image (its grey values in every channel), optionally cropped to ``size`` rows."""
    grey = ds.pixel_array.astype(np.float64)
    grey = (255 * (grey - grey.min()) / max(np.ptp(grey), 1)).astype(np.uint8)
    if size is not None:
        grey = grey[:size]
    ds.Rows = grey.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.repeat(grey[..., None], 3, axis=2).tobytes()
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "SmallestImagePixelValue",
                "LargestImagePixelValue"):
        if tag in ds:
            del ds[tag]


def test_a_colour_slice_at_an_end_of_a_grey_series_is_refused(tmp_path):
    """A colour image of the slices' size with its slice position, at an end of the stack, was left out as 'not a
    volume' and the grey part loaded one slice short with exit 0 (no gap shows it missing). Like a geometry-less
    image of the slices' size, it now makes the series refused, naming it; one of another size stays a note."""
    end = tmp_path / "end"
    paths = _copy(HIPPO, end, lambda ds, k: _colour(ds) if k == 31 else None)
    res = run_cli("convert", end, tmp_path / "out.nii.gz", "--series", "0")
    assert_clean_error(res, paths[31].name, "cannot be read as its slices")
    assert not (tmp_path / "out.nii.gz").exists()
    other = tmp_path / "other"
    paths = _copy(HIPPO, other, lambda ds, k: _colour(ds, size=ds.Rows // 2) if k == 31 else None)
    res = run_cli("convert", other, tmp_path / "ok.nii.gz", "--series", "0")  # a screenshot-like image: 31 load
    assert res.code == 0, res.err
    vol, aff = _first_principles(paths[:31])
    img = load_series(other, series=0)
    assert img.array.shape == vol.shape and np.allclose(img.affine, aff, atol=1e-4)


@pytest.mark.parametrize("edit, needle", [
    ("shift", "voxels up to 0.3 mm apart"),
    ("crop", "shape (34, 51, 34) against (35, 51, 35)"),
])
def test_channels_on_different_grids_say_how(tmp_path, edit, needle):
    """A case whose second channel is off the first's grid is named with how it is off (the label check said so in
    mm; the channel check said only 'different grids')."""
    import json

    import nibabel as nib

    src = data_path("msd_hippocampus")
    img = nib.load(src / "imagesTr" / "hippocampus_001.nii.gz")
    root = tmp_path / "ds"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    meta = json.loads((src / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI", "1": "MRI2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    data, aff = np.asarray(img.dataobj), img.affine.copy()
    nib.save(nib.Nifti1Image(data, aff), root / "imagesTr" / "hippocampus_001_0000.nii.gz")
    if edit == "shift":
        aff2 = aff.copy()
        aff2[0, 3] += 0.3
        nib.save(nib.Nifti1Image(data, aff2), root / "imagesTr" / "hippocampus_001_0001.nii.gz")
    else:
        nib.save(nib.Nifti1Image(data[:-1, :, :-1], aff), root / "imagesTr" / "hippocampus_001_0001.nii.gz")
    (root / "labelsTr" / "hippocampus_001.nii.gz").symlink_to(src / "labelsTr" / "hippocampus_001.nii.gz")
    res = run_cli("dataset", "check", root)
    assert res.code == 2, (res.out, res.err)
    text = res.out + res.err
    assert "hippocampus_001" in text and "channel files are on different grids" in text and needle in text, text
