"""A rerun of ``medseg predict`` skips only the cases this model and these options finished: label maps carry
the model file's SHA-256 and the options that change voxels, and anything else in the output folder is refused
before a case is predicted (``--overwrite`` predicts it again)."""

from __future__ import annotations

import hashlib
import shutil

import nibabel as nib
import numpy as np

from conftest import assert_clean_error, data_path, run_cli
from test_predict import HIPPO_IMG, make_model


def _cases(tmp_path, n=2):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (1, 4, 6)[:n]:
        shutil.copy(data_path(*HIPPO_IMG, f"hippocampus_00{i}.nii.gz"), folder)
    return folder


def _mtimes(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_label_map_records_the_model_digest_and_options(tmp_path):
    from medseg.infer.provenance import read_record

    folder, model = _cases(tmp_path, 1), make_model(tmp_path / "m.pt")
    res = run_cli("predict", "-m", model, "-i", folder, "-o", tmp_path / "out", "--overlap", "0.25", "--no-tta",
                  "--min-size", "7", "-q")
    assert res.code == 0, res.err
    rec = read_record(tmp_path / "out" / "hippocampus_001.nii.gz")
    assert rec["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert (rec["overlap"], rec["tta"], rec["min_size_mm3"], rec["largest_component"]) == (0.25, False, 7.0, False)
    assert rec["model"] == "m.pt"


def test_rerun_with_another_model_is_refused_and_changes_nothing(tmp_path):
    folder = _cases(tmp_path)
    first, other = make_model(tmp_path / "a.pt"), make_model(tmp_path / "b.pt", base_filters=8)
    out = tmp_path / "out"
    assert run_cli("predict", "-m", first, "-i", folder, "-o", out, "-q").code == 0
    before = _mtimes(out)
    assert_clean_error(run_cli("predict", "-m", other, "-i", folder, "-o", out, "-q"),
                       "hippocampus_001.nii.gz", "another model", "--overwrite")
    assert _mtimes(out) == before
    # the same model under another name or folder is the same model: skipped
    shutil.copy(first, tmp_path / "copy.pt")
    res = run_cli("predict", "-m", tmp_path / "copy.pt", "-i", folder, "-o", out, "-q")
    assert res.code == 0 and "skipped 2" in res.out, res
    res = run_cli("predict", "-m", other, "-i", folder, "-o", out, "--overwrite", "-q")
    assert res.code == 0 and "wrote 2" in res.out, res
    assert run_cli("predict", "-m", other, "-i", folder, "-o", out, "-q").code == 0  # now finished by `other`


def test_rerun_with_other_options_is_refused(tmp_path):
    folder, model = _cases(tmp_path, 1), make_model(tmp_path / "m.pt", augment={"flip_axes": [0, 1, 2]})
    out = tmp_path / "out"
    assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "--no-tta", "-q").code == 0
    for args, needle in ((["--tta"], "tta"), (["--no-tta", "--overlap", "0.25"], "overlap"),
                         (["--no-tta", "--largest-component"], "largest_component"),
                         (["--no-tta", "--min-size", "5"], "min_size")):
        assert_clean_error(run_cli("predict", "-m", model, "-i", folder, "-o", out, *args, "-q"), needle)
    res = run_cli("predict", "-m", model, "-i", folder, "-o", out, "--no-tta", "-q")
    assert res.code == 0 and "skipped 1" in res.out, res


def test_missing_extra_output_is_predicted_again(tmp_path):
    """A case finished without --probabilities is not finished for a run that asks for them."""
    folder, model = _cases(tmp_path, 1), make_model(tmp_path / "m.pt")
    out = tmp_path / "out"
    assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "-q").code == 0
    res = run_cli("predict", "-m", model, "-i", folder, "-o", out, "--probabilities", "-q")
    assert res.code == 0 and "wrote 1" in res.out, res
    probs = nib.load(out / "hippocampus_001_probs.nii.gz")
    assert probs.shape[:3] == nib.load(folder / "hippocampus_001.nii.gz").shape
    res = run_cli("predict", "-m", model, "-i", folder, "-o", out, "--probabilities", "-q")
    assert res.code == 0 and "skipped 1" in res.out, res


def test_foreign_file_in_the_output_folder_is_refused(tmp_path):
    """A label map another tool wrote, under a case's name, is not taken for this model's prediction."""
    folder, model = _cases(tmp_path, 1), make_model(tmp_path / "m.pt")
    out = tmp_path / "out"
    out.mkdir()
    src = nib.load(folder / "hippocampus_001.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(src.shape, np.uint8), src.affine), out / "hippocampus_001.nii.gz")
    before = _mtimes(out)
    assert_clean_error(run_cli("predict", "-m", model, "-i", folder, "-o", out, "-q"), "no record")
    assert _mtimes(out) == before
    (out / "hippocampus_001.nii.gz").write_bytes(b"not a nifti")
    assert_clean_error(run_cli("predict", "-m", model, "-i", folder, "-o", out, "-q"), "cannot read", "--overwrite")
    assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "--overwrite", "-q").code == 0
    assert nib.load(out / "hippocampus_001.nii.gz").shape == src.shape


def test_a_changed_input_is_not_finished(tmp_path):
    """An input replaced under the same name (re-converted, corrected) makes its label map stale."""
    folder, model = _cases(tmp_path, 1), make_model(tmp_path / "m.pt")
    out = tmp_path / "out"
    assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "-q").code == 0
    shutil.copy(data_path(*HIPPO_IMG, "hippocampus_004.nii.gz"), folder / "hippocampus_001.nii.gz")
    before = _mtimes(out)
    assert_clean_error(run_cli("predict", "-m", model, "-i", folder, "-o", out, "-q"),
                       "hippocampus_001.nii.gz", "input has changed")
    assert _mtimes(out) == before
    assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "--overwrite", "-q").code == 0
    assert nib.load(out / "hippocampus_001.nii.gz").shape == nib.load(folder / "hippocampus_001.nii.gz").shape


def test_extras_of_another_run_do_not_stay_beside_a_new_label_map(tmp_path):
    """Model A with --probabilities, then B with --overwrite: A's probabilities went with B's label map, and a
    later `B --probabilities` took them for B's."""
    folder = _cases(tmp_path, 1)
    a, b = make_model(tmp_path / "a.pt"), make_model(tmp_path / "b.pt", base_filters=8)
    out = tmp_path / "out"
    assert run_cli("predict", "-m", a, "-i", folder, "-o", out, "--probabilities", "-q").code == 0
    assert run_cli("predict", "-m", b, "-i", folder, "-o", out, "--overwrite", "-q").code == 0
    probs = out / "hippocampus_001_probs.nii.gz"
    a_probs = probs.read_bytes()
    res = run_cli("predict", "-m", b, "-i", folder, "-o", out, "--probabilities", "-q")
    assert res.code == 0 and "wrote 1" in res.out, res
    assert probs.read_bytes() != a_probs
    res = run_cli("predict", "-m", b, "-i", folder, "-o", out, "--probabilities", "-q")
    assert res.code == 0 and "skipped 1" in res.out, res


def test_a_case_named_like_another_case_s_extra_output_is_left_alone(tmp_path):
    """Cases `x` and `x_probs` (sharded): predicting `x` must not touch `x_probs.nii.gz`, another case's label map."""
    from medseg.infer.provenance import read_record

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data_path(*HIPPO_IMG, "hippocampus_001.nii.gz"), folder / "x.nii.gz")
    shutil.copy(data_path(*HIPPO_IMG, "hippocampus_004.nii.gz"), folder / "x_probs.nii.gz")
    model, out = make_model(tmp_path / "m.pt"), tmp_path / "out"
    for shard in ("1/2", "0/2"):
        assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "--shard", shard, "-q").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.nii.gz", "x_probs.nii.gz"]
    assert read_record(out / "x_probs.nii.gz") is not None


def test_records_from_before_the_input_digest_still_count():
    from medseg.infer.provenance import prediction_record, record_difference

    old = prediction_record("ab" * 32, 0.5, False)
    assert record_difference(old, {**old, "input_sha256": "cd" * 32}) is None
    assert "input has changed" in record_difference({**old, "input_sha256": "ef" * 32},
                                                   {**old, "input_sha256": "cd" * 32})


def test_info_says_what_predicted_a_label_map(tmp_path):
    import json

    folder, model = _cases(tmp_path, 1), make_model(tmp_path / "m.pt")
    out = tmp_path / "out"
    assert run_cli("predict", "-m", model, "-i", folder, "-o", out, "--no-tta", "-q").code == 0
    pred = out / "hippocampus_001.nii.gz"
    res = run_cli("info", pred)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert res.code == 0 and f"predicted by m.pt (sha256 {digest[:12]}), overlap 0.5, TTA off" in res.out, res
    rec = json.loads(run_cli("info", pred, "--json").out)[0]
    assert rec["predicted_by"]["model_sha256"] == digest
    assert "predicted_by" not in json.loads(run_cli("info", folder / "hippocampus_001.nii.gz", "--json").out)[0]
