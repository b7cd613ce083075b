"""Ensembles (issue 4): members trained one after another in one budget, one artifact, averaged probabilities,
resume member by member, joining separately trained models, clean errors."""

from __future__ import annotations

import doctest
import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, fake_batch_clock, run_cli
from test_predict import make_model
from test_train import kill_when_logged, read_log, tiny_plan


def test_docstring_examples_run():
    res = doctest.testmod(importlib.import_module("medseg.train.ensemble"))
    assert res.attempted and res.failed == 0


def test_ensemble_predicts_the_mean_of_its_members(tmp_path):
    """On an image that fits one window the ensemble's probabilities are exactly the members' mean."""
    import nibabel as nib

    from medseg.infer.predict import predict_image
    from medseg.io.readers import read_image
    from medseg.train.artifact import load_model

    from medseg.train.artifact import build_from_plan, save_model

    a = make_model(tmp_path / "a.pt")
    torch.manual_seed(1)  # another network of the same plan
    b = save_model(tmp_path / "b.pt", load_model(a).plan, build_from_plan(load_model(a).plan).state_dict())
    arts = [load_model(a), load_model(b)]
    assert any(not torch.equal(arts[0].state_dict[k], arts[1].state_dict[k]) for k in arts[0].state_dict)
    res = run_cli("ensemble", a, b, "-o", tmp_path / "ens")
    assert res.code == 0, res.err
    ens = load_model(tmp_path / "ens")
    assert len(ens.members) == 2 and ens.plan.ensemble == 2
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 24, 18)).astype(np.float32), np.diag([1.0, 1, 1, 1])),
             tmp_path / "img.nii.gz")
    img = read_image(tmp_path / "img.nii.gz")
    probs = [predict_image(x.build(), x.plan, img, probabilities=True)[1].array for x in arts + [ens]]
    np.testing.assert_allclose(probs[2], (probs[0] + probs[1]) / 2, atol=1e-5)
    lab = predict_image(ens.build(), ens.plan, img)[0].array
    assert np.array_equal(lab, probs[2].argmax(0))
    # joining an ensemble with another model unpacks its members
    res = run_cli("ensemble", tmp_path / "ens", a, "-o", tmp_path / "three.pt")
    assert res.code == 0, res.err
    assert len(load_model(tmp_path / "three.pt").members) == 3


def test_ensemble_join_refuses_different_models(tmp_path):
    a = make_model(tmp_path / "a.pt")
    b = make_model(tmp_path / "b.pt", labels={0: "background", 1: "x", 2: "y"})
    c = make_model(tmp_path / "c.pt", base_filters=8)
    assert_clean_error(run_cli("ensemble", a, b, "-o", tmp_path / "o1"), "b.pt")
    assert_clean_error(run_cli("ensemble", a, c, "-o", tmp_path / "o2"), "base_filters")
    assert_clean_error(run_cli("ensemble", a, "-o", tmp_path / "o3"), "at least two")
    assert_clean_error(run_cli("ensemble", a, tmp_path / "missing.pt", "-o", tmp_path / "o4"), "missing.pt")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    before = a.read_bytes()
    d = make_model(tmp_path / "d.pt")
    assert_clean_error(run_cli("ensemble", a, d, "-o", a), "a.pt", "input")  # replaced model a, exit 0, before
    assert_clean_error(run_cli("ensemble", a, tmp_path / "a.pt", "-o", tmp_path / "o5"), "twice")
    assert a.read_bytes() == before and not (tmp_path / "o5").exists()


def test_train_ensemble_within_budget(tmp_path, monkeypatch):
    """`train --ensemble 2 --max-minutes M`: two members with different seeds on one split, each with half of the
    budget, one artifact, the ensemble validated once. A fake clock, 1 s per batch (the trainer's and the
    ensemble's): on a loaded machine the real 24 s went mostly to importing MONAI, reading the data and timing a
    validation, and the second member was refused its share, 0 minutes (exit 2)."""
    from medseg.train import ensemble
    from medseg.train.artifact import load_model

    plan = tiny_plan(tmp_path, max_epochs=1000)
    run = tmp_path / "run"
    clock = fake_batch_clock(monkeypatch, seconds=1.0)
    monkeypatch.setattr(ensemble, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    res = run_cli("train", plan, "-o", run, "--ensemble", "2", "--max-minutes", "0.4", "-q")
    assert res.code == 0, res.err
    m = [load_model(run / f"member_{i}") for i in range(2)]
    for i in range(2):
        assert (run / f"member_{i}" / "splits.json").read_text() == (run / "splits.json").read_text()
        assert m[i].plan.seed == i
        assert m[i].info["val_dice"] == {}  # members are not validated one by one
        assert m[i].info["elapsed_s"] == pytest.approx(0.4 * 60 / 2, abs=1.0)  # half the budget, to a batch
    assert any(not torch.equal(m[0].state_dict[k], m[1].state_dict[k]) for k in m[0].state_dict)
    art = load_model(run)
    assert len(art.members) == 2 and art.plan.ensemble == 2
    for sd, mm in zip(art.members, m):
        assert all(torch.equal(sd[k], mm.state_dict[k]) for k in sd)
    rows = read_log(run)
    assert [r["member"] for r in rows] == ["0", "1", "ensemble"]
    assert 0 <= float(rows[-1]["val_mean"]) <= 1
    assert art.info["iterations"] == sum(int(r["iterations"]) for r in rows[:2])
    assert res.out.startswith("trained an ensemble of 2 networks")
    # a finished ensemble run is not overwritten
    assert_clean_error(run_cli("train", plan, "-o", run, "--ensemble", "2", "-q"), "--resume")


def test_ensemble_kill_and_resume(tmp_path):
    """SIGKILL during the second member, then --resume: the first member is kept as it was, the second continues
    its epochs, and the result equals an uninterrupted run's."""
    plan = tiny_plan(tmp_path, max_epochs=4, ensemble=2)
    ref = run_cli("train", plan, "-o", tmp_path / "ref", "-q")
    assert ref.code == 0, ref.err
    kill_when_logged(plan, tmp_path / "run", tmp_path / "run" / "member_1" / "log.csv", 3)
    assert not (tmp_path / "run" / "model.pt").exists()
    first = (tmp_path / "run" / "member_0" / "model.pt").stat().st_mtime_ns
    res = run_cli("train", plan, "-o", tmp_path / "run", "--resume", "-q")
    assert res.code == 0, res.err
    assert (tmp_path / "run" / "member_0" / "model.pt").stat().st_mtime_ns == first
    for i in range(2):
        a, b = read_log(tmp_path / "ref" / f"member_{i}"), read_log(tmp_path / "run" / f"member_{i}")
        assert [r["epoch"] for r in b] == ["1", "2", "3", "4"]
        for ra, rb in zip(a, b):
            assert ra["lr"] == rb["lr"]
            assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-3, abs=1e-4)
    va, vb = read_log(tmp_path / "ref")[-1], read_log(tmp_path / "run")[-1]
    assert float(va["val_mean"]) == pytest.approx(float(vb["val_mean"]), abs=1e-3)
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "run", "--resume", "--ensemble", "3", "-q"),
                       "ensemble 2")


def test_ensemble_plan_values(tmp_path, monkeypatch):
    from medseg.errors import InputError
    from medseg.plan.plan import Plan

    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(InputError, match="ensemble"):
            Plan(ensemble=bad).validate()
    assert Plan.from_dict({"name": "x"}).ensemble == 1  # plans written before ensembles existed
    plan = tiny_plan(tmp_path)
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "r", "--ensemble", "0"), "ensemble")
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: members are trained as separate runs instead
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "r", "--ensemble", "2"), "medseg ensemble")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["x.PT", "model.pth", "x.Pth"])
def test_ensemble_output_suffix_is_a_file_in_any_case(tmp_path, name):
    from medseg.train.artifact import load_model

    a, b = make_model(tmp_path / "a.pt"), make_model(tmp_path / "b.pt")
    res = run_cli("ensemble", a, b, "-o", tmp_path / name)
    assert res.code == 0, res.err
    assert (tmp_path / name).is_file() and load_model(tmp_path / name).plan.ensemble == 2
    folder = tmp_path / "existing.pt"  # an existing folder stays a folder
    folder.mkdir()
    assert run_cli("ensemble", a, b, "-o", folder).code == 0 and (folder / "model.pt").is_file()


def test_a_spent_ensemble_budget_still_trains_each_member(tmp_path):
    """An ensemble whose budget is spent before a member starts trains that member as one network under a spent
    budget does (an iteration), instead of refusing the user's --max-minutes with 'got 0.0'."""
    plan = tiny_plan(tmp_path, max_epochs=1000)
    single = run_cli("train", plan, "-o", tmp_path / "one", "--max-minutes", "0.001", "-q")
    assert single.code == 0, single.err  # one network under a spent budget: trains, then stops
    res = run_cli("train", plan, "-o", tmp_path / "run", "--ensemble", "2", "--max-minutes", "0.001", "-q")
    assert res.code == 0, res.err
    assert "got 0.0" not in res.err
    rows = read_log(tmp_path / "run")
    assert [r["member"] for r in rows] == ["0", "1", "ensemble"] and all(int(r["iterations"]) >= 1 for r in rows[:2])
