"""The I/O commands as a user meets them: `medseg --version`, `--help`, `info`, `convert`, `demo`,
`--debug`, run as a real process where exit codes and stderr matter."""

from __future__ import annotations

import json

import numpy as np
import pytest

import medseg
from conftest import assert_clean_error, data_path, run_cli, run_cli_subprocess


def test_version_and_help_as_a_process():
    res = run_cli_subprocess("--version", timeout=120)
    assert res.code == 0 and res.out.strip() == f"medseg {medseg.__version__}"
    res = run_cli_subprocess("--help", timeout=120)
    assert res.code == 0 and "info" in res.out and "convert" in res.out and "demo" in res.out


@pytest.mark.parametrize("cmd", [["info"], ["convert"], ["demo"]])
def test_help_on_io_commands(cmd):
    res = run_cli(*cmd, "--help")
    assert res.code == 0 and "Usage" in res.out, res.err


def test_bad_input_is_one_line_without_debug_and_a_traceback_with_it(tmp_path):
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x00" * 50)
    res = run_cli_subprocess("info", bad, timeout=120)
    assert_clean_error(res, "x.dcm", "not a DICOM file")
    res = run_cli_subprocess("info", bad, "--debug", timeout=120)
    assert res.code == 2 and "Traceback" in res.err  # the same exit code: scripts test it


def test_info_dicom_folder_text_and_json():
    folder = data_path("dicom", "mr_study")
    res = run_cli("info", folder)
    assert res.code == 0, res.err
    for word in ("T1post", "FLAIR_reg", "spacing", "orientation", "LPS", "range"):
        assert word in res.out
    recs = json.loads(run_cli("info", folder, "--json").out)
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 4]
    assert all(r["modality"] == "MR" and len(r["direction"]) == 3 for r in recs)


def test_info_lists_a_broken_series_with_its_problem():
    recs = json.loads(run_cli("info", data_path("dicom", "monai_ct_tiny"), "--json").out)
    assert len(recs) == 1 and "missing slices" in recs[0]["problem"]


def test_convert_dicom_file_with_odd_name_and_single_file(tmp_path):
    """The JPEG 2000 CT files are named CT.<uid> (no .dcm): recognised by their DICM preamble."""
    import nibabel as nib

    f = sorted(data_path("totalseg_example", "ct_dicom").iterdir())[0]
    out = tmp_path / "one.nii.gz"
    res = run_cli("convert", f, out)
    assert res.code == 0, res.err
    assert nib.load(str(out)).shape == (512, 512, 1)


def test_demo_writes_nifti_for_every_series(tmp_path):
    """The main job end to end (a very short training budget): every artefact it prints exists and validates."""
    import json
    import shutil
    import subprocess

    import nibabel as nib

    data = data_path()
    res = run_cli("demo", "--data", data, "--out", tmp_path / "demo", "--train-minutes", "0.2")
    assert res.code == 0, res.err
    out = tmp_path / "demo"
    report = out / "hippocampus_report"
    assert {p.name for p in report.iterdir()} >= {"metrics.json", "metrics.csv", "report.html", "report.md"}
    assert str(report / "report.html") in res.out
    assert len(json.loads((report / "metrics.json").read_text())["per_case"]) == 10
    assert (out / "cells" / "counts.csv").is_file() and "AP@0.5" in res.out
    for f in ("hippocampus_seg.dcm", "hippocampus_rtstruct.dcm"):
        if "nothing to export" in res.out:  # an untrained model may find nothing: then it says so
            break
        path = out / "dicom_out" / f
        assert path.is_file() and str(path) in res.out
        if shutil.which("dciodvfy"):
            v = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            assert not [ln for ln in (v.stdout + v.stderr).splitlines() if ln.startswith("Error")]
    written = sorted((tmp_path / "demo" / "mr_study_nifti").glob("*.nii.gz"))
    assert len(written) == 5
    assert all(str(p) in res.out for p in written)
    assert "spacing" in res.out and "orientation" in res.out
    assert all(np.isfinite(nib.load(str(p)).affine).all() for p in written)


def test_demo_without_data_says_what_to_pass(tmp_path, monkeypatch):
    res = run_cli("demo", "--data", tmp_path / "nowhere")
    assert_clean_error(res, "nowhere", "not found")
    from medseg.demo import find_data

    monkeypatch.setenv("MEDSEG_DATA", str(tmp_path))
    (tmp_path / "msd_hippocampus").mkdir()
    assert find_data() == tmp_path.resolve()


def test_convert_dicom_seg_goes_through_the_importer(tmp_path):
    """`convert SEG.dcm out.nii.gz --reference CT/` hands over to medseg.export.importers; the label map
    equals dcmqi's own NRRD export of the same segmentation, on the CT's grid."""
    pytest.importorskip("medseg.export.importers")
    from medseg.io.readers import read_image

    base = data_path("dicom", "dcmqi_segmentations")
    out = tmp_path / "liver.nii.gz"
    res = run_cli("convert", base / "liver.dcm", out, "--reference", base / "ct-3slice")
    assert res.code == 0, res.err
    ours, dcmqi, ct = read_image(out), read_image(base / "liver_seg.nrrd"), read_image(base / "ct-3slice")
    np.testing.assert_allclose(ours.affine, ct.affine, atol=1e-3)
    np.testing.assert_allclose(dcmqi.affine, ct.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.array > 0, dcmqi.array > 0)
    assert (ours.array > 0).sum() > 1000


def test_convert_seg_without_the_importer_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "medseg.export.importers", None)  # import fails
    res = run_cli("convert", data_path("dicom", "dcmqi_segmentations", "liver.dcm"), tmp_path / "x.nii.gz")
    assert_clean_error(res, "liver.dcm", "importers")
    assert not (tmp_path / "x.nii.gz").exists()


def test_library_notes_do_not_reach_stderr(tmp_path):
    """nibabel logs its header repairs (here a wrong sizeof_hdr) to stderr: medseg reads the file, exit 0, and
    says nothing a script would have to filter."""
    import gzip

    raw = bytearray(gzip.decompress(data_path("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz").read_bytes()))
    raw[:4] = (999).to_bytes(4, "little")
    odd = tmp_path / "odd.nii.gz"
    odd.write_bytes(gzip.compress(bytes(raw)))
    res = run_cli_subprocess("info", odd, timeout=120)
    assert res.code == 0 and res.err.strip() == "", res.err
