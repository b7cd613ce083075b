"""DICOM series reading, audited against independent readings: a header value medseg cannot use (a rescale that is
not a number, a pixel spacing that is not positive, a transfer syntax nothing decodes) is refused in one line naming
the file, never read as a silently wrong volume; values follow each slice's own header (pydicom + numpy from first
principles); the geometry does not depend on the file names (SimpleITK's ImageSeriesReader)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.io.dicom import load_series

HIPPO = ("dicom", "mr_study", "13_HCropVolume")  # 32 small axial MR slices, no rescale
CT = ("dicom", "ct_rtstruct")  # 4 CT slices (signed 16 bits, intercept -1024) beside an RTSTRUCT


def _sorted_slices(rel) -> list[tuple[str, pydicom.Dataset]]:
    """(file name, dataset) of the image slices, sorted along the slice normal (pydicom + numpy)."""
    out = []
    for f in sorted(data_path(*rel).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        if ds.Modality in ("CT", "MR"):
            out.append((f.name, ds))
    iop = np.array(out[0][1].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(out, key=lambda t: float(np.dot(normal, np.array(t[1].ImagePositionPatient, float))))


def _copy(rel, dest, edit=None, name=None):
    """The real slices written under ``dest``, each passed through ``edit(ds, k)`` (``k``: its place in slice order)
    and named ``name(k, original name)``; returns the paths in slice order."""
    dest.mkdir(parents=True)
    paths = []
    for k, (fname, ds) in enumerate(_sorted_slices(rel)):
        if edit is not None:
            edit(ds, k)
        p = dest / (name(k, fname) if name else fname)
        ds.save_as(p)
        paths.append(p)
    return paths


def _first_principles_values(paths) -> np.ndarray:
    """Modality values of uncompressed little-endian slices: each slice's own BitsStored (high bits masked, sign
    extended) and rescale, in int64/float64, indexed [column, row, slice]."""
    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
        raw = np.frombuffer(ds.PixelData, "<u2").astype(np.int64).reshape(ds.Rows, ds.Columns) & ((1 << bits) - 1)
        if signed:
            raw = np.where(raw >= 1 << (bits - 1), raw - (1 << bits), raw)
        out.append(raw * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0)))
    return np.stack(out).transpose(2, 1, 0)


def test_a_slice_with_more_stored_bits_than_the_first_does_not_wrap(tmp_path):
    """Unsigned 12-bit slices with one 16-bit slice (a metal implant) and intercept -1024: the output type must hold
    that slice's values. It was chosen from the lowest slice's 12 bits (int16), so 40000 - 1024 read as -26560
    (SimpleITK 2.5 wraps the same way: the reference is numpy)."""

    def edit(ds, k):
        arr = np.clip(np.frombuffer(ds.PixelData, "<i2").astype(np.int32), 0, 4095).astype(np.uint16)
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        if k == 2:
            arr = arr.reshape(ds.Rows, ds.Columns).copy()
            arr[10, 20] = 40000
            ds.BitsStored, ds.HighBit = 16, 15
        ds.PixelData = arr.tobytes()

    paths = _copy(CT, tmp_path / "ct", edit)
    img = load_series(tmp_path / "ct")
    expected = _first_principles_values(paths)
    assert expected[20, 10, 2] == 40000 - 1024
    np.testing.assert_array_equal(np.asarray(img.array, np.int64), expected)


@pytest.mark.parametrize("keyword,written,damaged", [("RescaleSlope", "9.8765", b"9.87.5"),
                                                     ("RescaleSlope", "9.8765", b"2.0\\.3"),
                                                     ("RescaleIntercept", "-1024.5", b"-10x4.5")],
                         ids=["slope-not-a-number", "slope-two-values", "intercept-not-a-number"])
def test_an_unreadable_rescale_value_is_refused_naming_the_file(tmp_path, keyword, written, damaged):
    """One slice's RescaleSlope/Intercept is not one number: that slice was scaled by 1 (or shifted by 0) without
    a word, and the volume converted with exit 0."""
    paths = _copy(CT, tmp_path / "ct", lambda ds, k: setattr(ds, keyword, written) if k == 1 else None)
    raw = paths[1].read_bytes()
    assert raw.count(written.encode()) == 1
    paths[1].write_bytes(raw.replace(written.encode(), damaged))  # same length: the element stays parseable
    out = tmp_path / "out.nii.gz"
    assert_clean_error(run_cli("convert", tmp_path / "ct", out), paths[1].name, keyword, "not one number")
    assert not out.exists()


@pytest.mark.parametrize("spacing", [[0, 0], [-1, -1]], ids=["zero", "negative"])
def test_pixel_spacing_that_is_not_positive_is_refused(tmp_path, spacing):
    """Zero ended as an internal error (exit 1) while listing the folder; a negative spacing mirrored the image
    in-plane (SimpleITK reads it as its absolute value: the two readings put each voxel on opposite sides)."""
    _copy(HIPPO, tmp_path / "s", lambda ds, k: setattr(ds, "PixelSpacing", spacing))
    assert_clean_error(run_cli("info", tmp_path / "s"), "PixelSpacing must be positive")
    out = tmp_path / "out.nii.gz"
    assert_clean_error(run_cli("convert", tmp_path / "s", out), str(tmp_path / "s"), "PixelSpacing")
    assert not out.exists()


def _swap_bytes(path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, new))


def test_an_undecodable_transfer_syntax_is_named(tmp_path):
    """A slice in JPEG XL (no decoder here, unknown to pydicom 3.0) was called 'truncated pixel data (122 of 3570
    bytes)'; a damaged JPEG stream was refused without saying which syntax. Both now name the file and the syntax."""
    from pydicom.encaps import encapsulate

    placeholder = "9.9.999.99999.9.9.9.999"  # private, as long as JPEG XL's UID: pydicom writes it, then it is swapped
    for what, uid, stream in (("jxl", placeholder, b"\xff\x0a" + bytes(5000)),
                              ("jpeg", "1.2.840.10008.1.2.4.50", b"\xff\xd8" + bytes(50))):
        def edit(ds, k):
            if k == 3:
                ds.PixelData = encapsulate([stream])
                ds["PixelData"].VR = "OB"
                ds.file_meta.TransferSyntaxUID = uid

        paths = _copy(HIPPO, tmp_path / what, edit)
        if uid == placeholder:
            _swap_bytes(paths[3], placeholder.encode(), b"1.2.840.10008.1.2.4.110")
        res = run_cli("convert", tmp_path / what, tmp_path / f"{what}.nii.gz")
        expected = "1.2.840.10008.1.2.4.110" if what == "jxl" else "JPEG Baseline (Process 1), 1.2.840.10008.1.2.4.50"
        assert_clean_error(res, paths[3].name, "cannot decode", expected)
        assert "truncated" not in res.err
        assert not (tmp_path / f"{what}.nii.gz").exists()


def test_the_geometry_does_not_depend_on_which_file_is_listed_first(tmp_path):
    """Slice cosines of one stack may differ within the grouping tolerance (1e-3). The affine was built from the
    first file listed, so renaming one file moved the image (0.0009 in the direction cosines); it is the lowest
    slice's, as SimpleITK's ImageSeriesReader takes it."""
    sitk = pytest.importorskip("SimpleITK")

    def edit(ds, k):
        if k == 20:  # one slice's orientation rounded differently, well within the tolerance
            iop = np.array(ds.ImageOrientationPatient, float) + [0, 9e-4, 0, -9e-4, 0, 0]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]

    affines = []
    for first in ("a", "z"):  # the odd slice listed first, then last
        folder = tmp_path / first
        paths = _copy(HIPPO, folder, edit, lambda k, n: f"{first if k == 20 else 'm'}{k:03d}.dcm")
        img = load_series(folder)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        ref = reader.Execute()
        np.testing.assert_allclose(img.direction_lps.ravel(), ref.GetDirection(), atol=1e-9)
        np.testing.assert_allclose(img.origin_lps, ref.GetOrigin(), atol=1e-6)
        lowest = pydicom.dcmread(paths[0], stop_before_pixels=True)
        np.testing.assert_allclose(img.direction_lps[:, 0], np.array(lowest.ImageOrientationPatient[:3], float),
                                   atol=1e-9)
        affines.append(img.affine)
    np.testing.assert_allclose(affines[0], affines[1], atol=1e-12)


@pytest.mark.parametrize("end", [0, -1])
def test_a_slice_that_lost_its_position_at_an_end_of_the_stack_is_refused(tmp_path, end):
    """A slice of the series without ImagePositionPatient leaves no gap when it is the first or the last: the volume
    read without it (one slice short, exit 0, before) must be refused like a gap, naming the file, before anything is
    written. An image of another size without geometry in the same series (a screenshot) stays only a note."""
    paths = _copy(HIPPO, tmp_path / "s")
    ds = pydicom.dcmread(paths[end])
    del ds.ImagePositionPatient
    ds.save_as(paths[end])
    out = tmp_path / "out"
    assert_clean_error(run_cli("convert", tmp_path / "s", out), paths[end].name, "no geometry")
    assert not out.exists()
    res = run_cli("convert", tmp_path / "s", tmp_path / "v.nii.gz", "--series", str(ds.SeriesInstanceUID))
    assert_clean_error(res, "not slices of its volume", "by index")  # not 'mixes orientations or image sizes'

    shot = pydicom.dcmread(paths[1])  # the same series UID, another size, no geometry
    del shot.ImagePositionPatient
    shot.Rows, shot.Columns, shot.PixelData = 4, 4, bytes(32)
    paths[end].unlink()
    shot.save_as(tmp_path / "s" / "shot.dcm")
    res = run_cli("convert", tmp_path / "s", out)
    assert res.code == 0 and "skipped series" in res.err, res.err
    import nibabel as nib

    assert nib.load(next(out.glob("*.nii.gz"))).shape[2] == len(paths) - 1
