"""Bad input, built in the tests from the real DICOM/NIfTI files (truncate, drop a slice, shuffle,
mix two series, corrupt a header, tilt, duplicate, localizer, ...): each case gets a one-line
error naming the file and the problem, exit code 2, and nothing written."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from medseg.io.dicom import discover_series, load_series

T1 = ("dicom", "mr_study", "12-T1post-05670")
T2 = ("dicom", "mr_study", "37916-T2reg-88910")


def copy_series(rel, dest: Path, prefix: str = "") -> list[Path]:
    src = data_path(*rel)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in sorted(src.glob("*.dcm")):
        shutil.copyfile(f, dest / f"{prefix}{f.name}")
        out.append(dest / f"{prefix}{f.name}")
    return out


def sorted_by_position(files: list[Path]) -> list[Path]:
    """Independent sort (pydicom + numpy) of the files along their slice normal."""
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    return [f for _, f in sorted(zip([np.dot(n, np.array(d.ImagePositionPatient, float)) for d in dss], files))]


def assert_convert_fails(tmp_path, src, *needles):
    out = tmp_path / "out"
    res = run_cli("convert", src, out)
    assert_clean_error(res, *needles)
    assert not out.exists(), "a failed convert must write nothing"
    res = run_cli("convert", src, tmp_path / "one.nii.gz", "--series", "0")
    assert res.code == 2
    assert not list(tmp_path.glob("*.nii.gz")) and not list(tmp_path.glob(".one*")), "no partial or temp file"
    return res


def test_truncated_pixel_data(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    victim = sorted_by_position(files)[5]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert_convert_fails(tmp_path, tmp_path / "s", victim.name, "truncated")


def test_truncated_header(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    files[3].write_bytes(files[3].read_bytes()[:700])
    assert_convert_fails(tmp_path, tmp_path / "s", files[3].name)


def test_dropped_slice(tmp_path):
    files = sorted_by_position(copy_series(T1, tmp_path / "s"))
    files[10].unlink()
    assert_convert_fails(tmp_path, tmp_path / "s", "s", "missing slices")


def test_irregular_spacing(tmp_path):
    files = sorted_by_position(copy_series(T1, tmp_path / "s"))
    ds = pydicom.dcmread(files[8])
    iop = np.array(ds.ImageOrientationPatient, float)
    n = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ds.ImagePositionPatient, float) + 2.0 * n]
    ds.save_as(files[8])
    assert_convert_fails(tmp_path, tmp_path / "s", "inconsistent slice spacing")


def test_duplicated_slice_is_4d(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "dup.dcm")
    assert_convert_fails(tmp_path, tmp_path / "s", "share a position")


def test_shuffled_file_names_load_identically(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    names = [f.name for f in files]
    random.Random(0).shuffle(names)
    for f, new in zip(files, names):
        f.rename(f.with_name("tmp_" + new))
    ref = load_series(data_path(*T1))
    shuffled = load_series(tmp_path / "s")
    np.testing.assert_array_equal(shuffled.array, ref.array)
    np.testing.assert_allclose(shuffled.affine, ref.affine, atol=1e-9)


def test_two_series_mixed_in_one_folder(tmp_path):
    copy_series(T1, tmp_path / "mix", "a_")
    copy_series(T2, tmp_path / "mix", "b_")
    found = discover_series(tmp_path / "mix")
    assert len(found) == 2 and all(s.num_slices == 22 for s in found)
    res = run_cli("convert", tmp_path / "mix", tmp_path / "one.nii.gz")
    assert_clean_error(res, "mix", "2 series", "--series")
    assert not (tmp_path / "one.nii.gz").exists()
    for s in found:  # each separately equals the unmixed series
        ref = load_series(data_path(*(T1 if s.description == "T1post" else T2)))
        np.testing.assert_array_equal(load_series(s).array, ref.array)


def test_corrupt_header_value(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    raw = files[2].read_bytes()
    ds = pydicom.dcmread(files[2], stop_before_pixels=True)
    old = "\\".join(str(v) for v in ds.ImageOrientationPatient.original_string.decode().split("\\")) \
        if hasattr(ds.ImageOrientationPatient, "original_string") else None
    start = raw.find(b"0.999679")
    assert start > 0
    files[2].write_bytes(raw[:start] + b"X.9Q9679" + raw[start + 8:])  # same length, not a number
    res = assert_convert_fails(tmp_path, tmp_path / "s", files[2].name, "ImageOrientationPatient")
    assert old is None or old not in res.err


def test_corrupt_element_length(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    raw = bytearray(files[1].read_bytes())
    tag = raw.find(b"\x20\x00\x37\x00DS")  # (0020,0037) explicit VR: 2-byte length follows
    assert tag > 0
    raw[tag + 6: tag + 8] = b"\xff\xf0"  # length beyond the end of the element
    files[1].write_bytes(bytes(raw))
    assert_convert_fails(tmp_path, tmp_path / "s", files[1].name)


def test_non_dicom_file_with_dicom_name(tmp_path):
    copy_series(T1, tmp_path / "s")
    png = data_path("dicom", "dcmqi_segmentations", "24x38x3", "screenshots", "slicer.png")
    shutil.copyfile(png, tmp_path / "s" / "000099.dcm")
    assert_convert_fails(tmp_path, tmp_path / "s", "000099.dcm", "not a DICOM file")


def test_files_named_as_non_dicom_are_ignored(tmp_path):
    copy_series(T1, tmp_path / "s")
    (tmp_path / "s" / "README.txt").write_text("acquisition notes")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\x00\x01")
    assert load_series(tmp_path / "s").shape == (512, 512, 22)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_convert_fails(tmp_path, tmp_path / "empty", "empty", "no DICOM image series")


def test_unsupported_format_and_missing_file(tmp_path):
    p = tmp_path / "scan.xyz"
    p.write_bytes(b"not an image")
    assert_clean_error(run_cli("info", p), "scan.xyz", "unsupported format")
    assert_clean_error(run_cli("info", tmp_path / "nope.nii.gz"), "nope.nii.gz", "no such file")
    assert_clean_error(run_cli("convert", data_path("totalseg_example", "example_ct_sm.nii.gz"),
                               tmp_path / "x.vtk"), "x.vtk", "cannot write format")
    assert not (tmp_path / "x.vtk").exists()


def test_truncated_and_corrupt_nifti(tmp_path):
    src = data_path("totalseg_example", "example_ct_sm.nii.gz")
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    assert_clean_error(run_cli("convert", bad, tmp_path / "o.nrrd"), "cut.nii.gz")
    noise = tmp_path / "noise.nii"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    assert_clean_error(run_cli("info", noise), "noise.nii")
    assert not (tmp_path / "o.nrrd").exists()
    assert [p.name for p in tmp_path.iterdir()] == sorted(["cut.nii.gz", "noise.nii"]) or \
        sorted(p.name for p in tmp_path.iterdir()) == sorted(["cut.nii.gz", "noise.nii"])


@pytest.mark.parametrize("damage", ["crc", "junk"])
def test_nifti_gz_with_a_bad_checksum_or_appended_junk(tmp_path, damage):
    """Both decode to the right number of voxels; only the gzip trailer (CRC, length) or the data after it tells."""
    raw = bytearray(data_path("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz").read_bytes())
    if damage == "crc":
        raw[-8] ^= 0xFF
    else:
        raw += b"garbage after the stream"
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    assert_clean_error(run_cli("info", bad), "bad.nii.gz", "gzip")
    assert_clean_error(run_cli("convert", bad, tmp_path / "o.nii.gz"), "bad.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()


def test_nifti2_and_big_endian_gz_still_read(tmp_path):
    import nibabel as nib

    from medseg.io.readers import read_image

    a = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.Nifti2Image(a, np.diag([2.0, 3.0, 4.0, 1.0])), tmp_path / "n2.nii.gz")
    nib.save(nib.Nifti1Image(a.astype(">f4"), np.eye(4), nib.Nifti1Header(endianness=">")), tmp_path / "be.nii.gz")
    n2, be = read_image(tmp_path / "n2.nii.gz"), read_image(tmp_path / "be.nii.gz")
    np.testing.assert_array_equal(n2.array, a)
    np.testing.assert_array_equal(be.array, a)
    assert n2.spacing == (2.0, 3.0, 4.0)


def _itk_copies(tmp_path: Path) -> dict[str, Path]:
    """The real hippocampus image written by SimpleITK as MHA (raw and compressed), MHD+raw and NRRD."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(data_path("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz")))
    out = {}
    for name, compress in (("raw.mha", False), ("zip.mha", True), ("pair.mhd", False), ("raw.nrrd", False)):
        sitk.WriteImage(img, str(tmp_path / name), useCompression=compress)
        out[name] = tmp_path / name
    return out


def test_truncated_itk_files_give_one_line_on_the_real_stderr(tmp_path):
    """ITK's MetaIO prints a cut-short file's reason on std::cerr (file descriptor 2, which the in-process
    CLI runner cannot see) and throws with a stale errno; the subprocess sees both streams as a user does."""
    from conftest import run_cli_subprocess

    files = _itk_copies(tmp_path)
    for f in (files["raw.mha"], files["zip.mha"], tmp_path / "pair.raw", files["raw.nrrd"]):
        data = f.read_bytes()
        f.write_bytes(data[: int(len(data) * 0.7)])
    for name in ("raw.mha", "zip.mha", "pair.mhd"):
        res = run_cli_subprocess("info", files[name], timeout=120)
        assert_clean_error(res, name, "truncated", "bytes the header declares")
        assert "No such file" not in res.err
    assert_clean_error(run_cli_subprocess("convert", files["raw.nrrd"], tmp_path / "o.nii.gz", timeout=120),
                       "raw.nrrd", "62475")
    assert not (tmp_path / "o.nii.gz").exists()


def test_native_stderr_capture_and_a_clean_itk_read(tmp_path, capfd):
    """What C code writes to descriptor 2 inside the capture is collected; a good read prints nothing."""
    import os

    from medseg.io.readers import _native_stderr, read_image

    files = _itk_copies(tmp_path)
    capfd.readouterr()  # SimpleITK's writer warns about NIfTI-only metadata: not ours to test
    captured: list[str] = []
    with _native_stderr(captured):
        os.write(2, b"native line\n")
    assert captured == ["native line\n"]
    img = read_image(files["raw.mha"])
    assert img.shape == (35, 51, 35)
    assert capfd.readouterr().err == ""


def test_itk_reads_from_threads_keep_stderr(tmp_path, capfd):
    """Reads from several threads at once (a thread data loader) give every array and leave descriptor 2 where it
    was: unguarded, one thread's capture restored another's temporary file and stderr was lost."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from medseg.errors import InputError
    from medseg.io.readers import read_image

    files = _itk_copies(tmp_path)
    bad = tmp_path / "cut.mha"
    bad.write_bytes(files["raw.mha"].read_bytes()[:20000])
    before = os.fstat(2)
    capfd.readouterr()

    def read(k):
        try:
            return read_image(files["raw.mha"] if k % 3 else bad).shape
        except InputError as exc:
            return str(exc)

    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(read, range(24)))
    assert out.count((35, 51, 35)) == 16
    assert all("truncated" in o for o in out if isinstance(o, str)) and len(out) == 24
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


def test_itk_read_without_a_stderr_descriptor(tmp_path):
    """A daemon without descriptor 2: reads still work and a cut file still gives an InputError naming it."""
    import subprocess
    import sys

    files = _itk_copies(tmp_path)
    cut = tmp_path / "cut.mha"
    cut.write_bytes(files["raw.mha"].read_bytes()[:20000])
    code = ("import os\nos.close(2)\nfrom medseg.errors import InputError\nfrom medseg.io.readers import read_image\n"
            f"print(read_image({str(files['raw.mha'])!r}).shape)\n"
            f"try:\n    read_image({str(cut)!r})\nexcept InputError as exc:\n    print('refused', exc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0] == "(35, 51, 35)" and lines[1].startswith("refused") and "cut.mha" in lines[1]


def test_4d_where_3d_expected(tmp_path):
    import nibabel as nib

    from medseg.io.readers import read_volume

    src = nib.load(str(data_path("totalseg_example", "example_ct_sm.nii.gz")))
    vol = np.asanyarray(src.dataobj)
    p = tmp_path / "ct4d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([vol, vol], -1), src.affine), str(p))
    with pytest.raises(InputError, match="expected a 3D image"):
        read_volume(p)
    assert read_volume(data_path("totalseg_example", "example_ct_sm.nii.gz")).ndim == 3


def test_never_overwrites_its_input(tmp_path):
    src = tmp_path / "ct.nii.gz"
    shutil.copyfile(data_path("totalseg_example", "example_ct_sm.nii.gz"), src)
    before = src.read_bytes()
    assert_clean_error(run_cli("convert", src, src), "ct.nii.gz", "overwrite")
    assert src.read_bytes() == before


def _tilt(files: list[Path], pixels_per_slice: float) -> None:
    """Shift slice k's ImagePositionPatient along the column direction: a gantry-tilted stack."""
    for k, f in enumerate(sorted_by_position(files)):
        ds = pydicom.dcmread(f)
        iop = np.array(ds.ImageOrientationPatient, float)
        dy = float(ds.PixelSpacing[0])
        ds.ImagePositionPatient = [f"{v:.10g}" for v in np.array(ds.ImagePositionPatient, float)
                                   + k * pixels_per_slice * dy * iop[3:]]
        ds.save_as(f)


def test_gantry_tilt_refused_then_resampled_with_allow_tilt(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    _tilt(files, 1.0)  # one row per slice: about 3.8 degrees for 0.43 mm pixels and 6.5 mm slices
    res = assert_convert_fails(tmp_path, tmp_path / "s", "gantry tilt", "--allow-tilt")
    out = tmp_path / "t.nii.gz"
    assert run_cli("convert", tmp_path / "s", out, "--allow-tilt").code == 0, res.err
    from medseg.io.readers import read_image

    fixed = read_image(out)
    orig = load_series(data_path(*T1))
    # slice k was shifted by k rows: on the orthogonal grid, row j of slice k is row j-k of the original.
    # Not bit-exact: the resampling also removes the original series' own IPP rounding drift (~1e-3 px);
    # a shift off by one row would differ by ~300 on average.
    span = float(np.ptp(orig.array))
    for k in (1, 5, 21):
        diff = np.abs(fixed.array[:, k:, k] - orig.array[:, : 512 - k, k])
        assert diff.mean() < 1.0 and np.percentile(diff, 99.9) < 0.01 * span, (k, diff.mean(), diff.max())
    np.testing.assert_allclose(fixed.affine, orig.affine, atol=1e-3)


def test_localizer_mixed_into_a_series(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # a sagittal scout with the same SeriesInstanceUID
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "scout.dcm")
    found = discover_series(tmp_path / "s")
    assert sorted(s.num_slices for s in found) == [1, 22]
    assert all("mixes 2 orientations" in s.meta["split"] for s in found)
    uid = found[0].series_uid
    assert_clean_error(run_cli("convert", tmp_path / "s", tmp_path / "v.nii.gz", "--series", uid),
                       "mixes orientations", "by index", "scout.dcm")  # the stray slice is named
    assert_clean_error(run_cli("convert", tmp_path / "s", tmp_path / "v.nii.gz"), "2 series", "1 slice: scout.dcm")
    assert not (tmp_path / "v.nii.gz").exists()
    main = next(s for s in found if s.num_slices == 22)
    np.testing.assert_array_equal(load_series(main).array, load_series(data_path(*T1)).array)


def test_truncated_jpeg2000(tmp_path):
    src = data_path("totalseg_example", "ct_dicom")
    (tmp_path / "ct").mkdir()
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, tmp_path / "ct" / f.name)
    victim = sorted((tmp_path / "ct").iterdir())[7]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size - 20000])
    assert_convert_fails(tmp_path, tmp_path / "ct", victim.name)


def test_image_without_geometry_is_listed_not_fatal(tmp_path):
    """A screenshot-like image (no ImagePositionPatient) beside a real series: listed as 'not a volume',
    skipped (with a note) when the whole folder is converted, refused when asked for by itself."""
    copy_series(T1, tmp_path / "s")
    ds = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    del ds.ImagePositionPatient
    ds.SeriesInstanceUID, ds.SeriesDescription = pydicom.uid.generate_uid(), "screenshot"
    ds.save_as(tmp_path / "s" / "sc.dcm")
    found = discover_series(tmp_path / "s")
    assert [s.is_volume for s in found] == [True, False]
    assert "ImagePositionPatient" in found[1].problem
    res = run_cli("convert", tmp_path / "s", tmp_path / "out")
    assert res.code == 0 and "skipped" in res.err and "screenshot" in res.err
    assert len(list((tmp_path / "out").iterdir())) == 1
    assert_clean_error(run_cli("convert", tmp_path / "s", tmp_path / "sc.nii.gz", "--series", "1"),
                       "not a volume", "ImagePositionPatient")
    assert not (tmp_path / "sc.nii.gz").exists()


def test_orientation_that_is_not_a_rotation(tmp_path):
    files = copy_series(T1, tmp_path / "s")
    for f in files:  # every slice: row and column cosines parallel
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
        ds.save_as(f)
    assert_convert_fails(tmp_path, tmp_path / "s", "not perpendicular")


def test_folder_of_nifti_files_says_to_pass_a_file(tmp_path):
    folder = data_path("brats2015_sample", "brats_2013_pat0001_1")
    assert_clean_error(run_cli("info", folder), "no DICOM image series", "pass one of them")
    assert_clean_error(run_cli("convert", folder, tmp_path / "o"), "no DICOM image series", "pass one of them")
    assert not (tmp_path / "o").exists()
