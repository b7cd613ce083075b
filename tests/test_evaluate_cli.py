"""``medseg evaluate`` end to end on real hippocampus labels: the four files, the HTML offline, bad inputs."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_clean_error, data_path, run_cli
from _evaluate_cases import hippocampus, perturb

KINDS = ("erode", "shift", "delete")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """ref/ = 3 real labels (copied into tmp only, never into the repo), pred/ = perturbed copies."""
    root = tmp_path_factory.mktemp("ev")
    (root / "ref").mkdir()
    (root / "pred").mkdir()
    for (case, ref, img), kind in zip(hippocampus(3), KINDS):
        nib.save(nib.Nifti1Image(ref, img.affine, img.header), str(root / "ref" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(perturb(ref, kind), img.affine, img.header), str(root / "pred" / f"{case}.nii.gz"))
    return root


def test_folder_report_four_files(folders, tmp_path):
    labels = data_path("msd_hippocampus", "dataset.json")
    out = tmp_path / "out"
    res = run_cli("evaluate", "--pred", folders / "pred", "--ref", folders / "ref", "--labels", labels, "-o", out,
                  "--lesion-classes", "anterior", "--nsd-tolerance", "anterior=1,default=2")
    assert res.code == 0, res.err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "report.html", "report.md"]
    m = json.loads((out / "metrics.json").read_text())
    assert set(m) >= {"per_case", "mean", "std", "foreground_mean", "settings"}
    assert [c["case"] for c in m["per_case"]] == sorted(p.name[:-7] for p in (folders / "ref").iterdir())
    assert set(m["mean"]) == {"anterior", "posterior"}
    # the JSON numbers equal the Python API on the same files, and the mean is the mean of the cases
    from medseg.evaluate.metrics import evaluate_case

    c0 = m["per_case"][0]
    ref = nib.load(str(folders / "ref" / f"{c0['case']}.nii.gz"))
    pred = nib.load(str(folders / "pred" / f"{c0['case']}.nii.gz"))
    direct = evaluate_case(np.asanyarray(pred.dataobj), np.asanyarray(ref.dataobj), labels={1: "anterior",
                           2: "posterior"}, spacing=ref.header.get_zooms(), nsd_tolerance={"anterior": 1.0})
    assert c0["classes"]["anterior"]["dice"] == pytest.approx(direct["classes"]["anterior"]["dice"], abs=1e-12)
    assert c0["classes"]["anterior"]["nsd"] == pytest.approx(direct["classes"]["anterior"]["nsd"], abs=1e-12)
    dices = [c["classes"]["posterior"]["dice"] for c in m["per_case"]]
    assert m["mean"]["posterior"]["dice"] == pytest.approx(np.mean(dices))
    assert "lesions" in m["per_case"][0]["classes"]["anterior"] and "lesions" in m["mean"]["anterior"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3 * 2 and {r["class"] for r in rows} == {"anterior", "posterior"}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "hippocampus" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    md = (out / "report.md").read_text()
    assert "| anterior |" in md and "Worst cases" in md and "pixel accuracy" in md


def test_single_files_and_workers_agree(folders, tmp_path):
    from medseg.evaluate.folder import evaluate_folder

    one = evaluate_folder(folders / "pred", folders / "ref", workers=1, progress=False)
    two = evaluate_folder(folders / "pred", folders / "ref", workers=2, progress=False)
    assert json.dumps(one["per_case"], sort_keys=True) == json.dumps(two["per_case"], sort_keys=True)
    f = sorted((folders / "ref").iterdir())[0]
    res = run_cli("evaluate", "--pred", folders / "pred" / f.name, "--ref", f, "-o", tmp_path / "o", "-q")
    assert res.code == 0, res.err
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["per_case"][0]["case"] == f.name[:-7] and set(m["mean"]) == {"label_1", "label_2"}


def _copy(folders, tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    shutil.copytree(folders / "pred", pred)
    shutil.copytree(folders / "ref", ref)
    return pred, ref, sorted(pred.iterdir())[0]


def _bad(pred, ref, tmp_path, *needles, extra=()):
    out = tmp_path / "out"
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", out, *extra)
    assert_clean_error(res, *needles)
    assert not out.exists()  # no partial output


def test_missing_counterpart(folders, tmp_path):
    pred, ref, first = _copy(folders, tmp_path)
    first.unlink()
    _bad(pred, ref, tmp_path, "no prediction for case", first.name[:-7])
    shutil.copy(ref / first.name, pred / first.name)
    shutil.copy(ref / first.name, pred / "extra_case.nii.gz")
    _bad(pred, ref, tmp_path, "no reference for case", "extra_case")


def test_shape_and_affine_mismatch(folders, tmp_path):
    pred, ref, first = _copy(folders, tmp_path)
    img = nib.load(str(first))
    arr = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(arr[:-1], img.affine), str(first))
    _bad(pred, ref, tmp_path, str(first), "shape")
    moved = img.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(arr, moved), str(first))
    _bad(pred, ref, tmp_path, str(first), "geometry differs")
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "tol", "--geometry-tolerance", "6", "-q")
    assert res.code == 0, res.err  # a 5 mm shift is within a (silly) 6 mm tolerance
    # the documented override: same shape, spacing taken from the reference
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "ok", "--spacing-from", "ref", "-q")
    assert res.code == 0, res.err


def test_non_integer_and_unknown_labels(folders, tmp_path):
    pred, ref, first = _copy(folders, tmp_path)
    img = nib.load(str(first))
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(arr + 0.5, img.affine), str(first))
    _bad(pred, ref, tmp_path, str(first), "non-integer")
    arr = np.asanyarray(img.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, img.affine), str(first))
    _bad(pred, ref, tmp_path, str(first), "not in the labels", extra=("--labels",
                                                                        data_path("msd_hippocampus", "dataset.json")))
    bad_json = tmp_path / "dataset.json"
    bad_json.write_text('{"labels": {"0": "background", "1": ')
    _bad(pred, ref, tmp_path, str(bad_json), extra=("--labels", bad_json))
    _bad(pred, ref, tmp_path, "nsd-tolerance", extra=("--nsd-tolerance", "abc"))
    _bad(pred, ref, tmp_path, "nsd-tolerance", extra=("--nsd-tolerance", "nan"))  # scored NSD 0 for equal maps
    _bad(pred, ref, tmp_path, "hippo", extra=("--labels", data_path("msd_hippocampus", "dataset.json"),
                                              "--nsd-tolerance", "hippo=1,default=2"))  # a misspelt class
    _bad(pred, ref, tmp_path, "distance-cap", extra=("--distance-cap", "-5"))
    _bad(pred, ref, tmp_path, "lesion class", extra=("--labels", data_path("msd_hippocampus", "dataset.json"),
                                                     "--lesion-classes", "tumour"))


def test_bad_case_with_workers(folders, tmp_path):
    pred, ref, first = _copy(folders, tmp_path)
    img = nib.load(str(first))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:-1], img.affine), str(first))
    _bad(pred, ref, tmp_path, str(first), "shape", extra=("--workers", "2"))
