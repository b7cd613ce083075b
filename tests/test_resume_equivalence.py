"""Interrupted and resumed training is the run that was never interrupted, on tiny synthetic data (mechanics only):
the same weights, EMA, optimiser, schedule, counters, log rows, sampled batches, best checkpoint and model; a
finished run resumed stays as it was; a resume under another plan, fold or dataset, or from a damaged checkpoint, is
refused in one line; the cell trainer keeps its log, running losses and time budget across a resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_clean_error, fake_batch_clock, run_cli

PLAN = {"channels": ["MRI"], "labels": {0: "background", 1: "inner", 2: "outer"},
        "normalisation": [{"scheme": "zscore"}], "target_spacing": [1.0, 1.0, 1.0], "patch_size": [16, 16, 16],
        "batch_size": 2, "base_filters": 4, "max_filters": 16, "iterations_per_epoch": 3, "max_epochs": 2,
        "val_every": 1, "num_folds": 4, "bf16": False, "num_threads": 1, "ema": 0.9}


def synthetic_dataset(root: Path, n: int = 4, seed: int = 0) -> Path:
    """An MSD-style folder of ``n`` 24^3 cases: a noisy ball split into two labels."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng, grid = np.random.default_rng(seed), np.indices((24, 24, 24))
    training = []
    for i in range(n):
        c, r = rng.uniform(8, 16, 3), rng.uniform(4, 7)
        lab = (((grid - c[:, None, None, None]) ** 2).sum(0) < r * r).astype(np.uint8)
        lab[(lab == 1) & (grid[0] > c[0])] = 2
        img = (lab + rng.normal(0, 0.5, lab.shape)).astype(np.float32)
        for folder, arr in (("imagesTr", img), ("labelsTr", lab)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), root / folder / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "synthetic", "modality": {"0": "MRI"}, "numTraining": n,
                                                   "labels": {"0": "background", "1": "inner", "2": "outer"},
                                                   "training": training}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "ds")


def plan_file(tmp_path: Path, dataset: Path, **kw) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**PLAN, "dataset": str(dataset), **kw}))
    return path


def train(plan, run, **kw):
    from medseg.train.trainer import train as _train

    return _train(plan, run, device="cpu", progress=False, **kw)


def recorded_batches(monkeypatch) -> list[str]:
    """Digests of every batch the trainer samples from now on."""
    from medseg.train import trainer

    real, seen = trainer.sample_batch, []

    def sample(*a, **kw):
        x, y = real(*a, **kw)
        seen.append(hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
        return x, y

    monkeypatch.setattr(trainer, "sample_batch", sample)
    return seen


def interrupted(monkeypatch, obj, name: str, k: int, how: str = "raise"):
    """``obj.name`` interrupted on its ``k``-th call: KeyboardInterrupt raised, or a real SIGINT sent (delivered
    when the trainer lets it through)."""
    real, calls = getattr(obj, name), [0]

    def hooked(*a, **kw):
        calls[0] += 1
        if calls[0] == k:
            if how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(obj, name, hooked)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def log_rows(run: Path) -> list[dict]:
    import csv

    with open(run / "log.csv") as f:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(f)]


def assert_same_run(ref: Path, run: Path):
    """Everything a run leaves, but for wall-clock times, equal to the reference run's."""
    a, b = load(ref / "checkpoint_latest.pt"), load(run / "checkpoint_latest.pt")
    for key in ("model", "ema"):
        assert_same_tensors(a[key], b[key])
    assert str(a["optimizer"]) == str(b["optimizer"])  # moments and step counts, bit for bit
    for key in ("scheduler", "epoch", "iteration", "best", "val", "data"):
        assert a.get(key) == b.get(key), key
    assert [r["numpy"] for r in a["rng"]] == [r["numpy"] for r in b["rng"]]
    assert torch.equal(a["rng"][0]["augment"], b["rng"][0]["augment"])
    assert log_rows(ref) == log_rows(run)  # no row missing or twice; the same losses, learning rates and Dice
    ba, bb = load(ref / "checkpoint_best.pt"), load(run / "checkpoint_best.pt")
    assert ba["epoch"] == bb["epoch"] and ba["val"] == bb["val"]
    assert_same_tensors(ba["model"], bb["model"])
    ma, mb = load(ref / "model.pt"), load(run / "model.pt")
    assert_same_tensors(ma["state_dict"], mb["state_dict"])
    assert ma["plan"] == mb["plan"]
    assert {k: v for k, v in ma["info"].items() if k != "elapsed_s"} == \
        {k: v for k, v in mb["info"].items() if k != "elapsed_s"}
    assert (ref / "splits.json").read_text() == (run / "splits.json").read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
    """The uninterrupted run (2 epochs of 3 iterations) and the batches it drew."""
    tmp = tmp_path_factory.mktemp("ref")
    plan = plan_file(tmp, dataset)
    with pytest.MonkeyPatch.context() as m:
        torch.set_num_threads(1)
        batches = recorded_batches(m)
        train(plan, tmp / "run")
    return plan, tmp / "run", batches


@pytest.mark.parametrize("where, k, how, state", [
    ("sample_batch", 1, "raise", (0, 0)),      # before the first iteration: the average has had no update yet
    ("sample_batch", 4, "raise", (1, 3)),      # at the epoch boundary
    ("sample_batch", 5, "raise", (1, 4)),      # in the last epoch
    ("ScalarLog.add", 1, "signal", (0, 3)),    # right after the first validation, before the epoch is committed
])
def test_interrupted_anywhere_then_resumed_is_the_uninterrupted_run(tmp_path, monkeypatch, one_torch_thread,
                                                                    reference, where, k, how, state):
    from medseg.train import trainer

    plan, ref, ref_batches = reference
    batches = recorded_batches(monkeypatch)
    with monkeypatch.context() as m:
        obj, name = (trainer.ScalarLog, "add") if "." in where else (trainer, where)
        interrupted(m, obj, name, k, how)
        with pytest.raises(KeyboardInterrupt):
            train(plan, tmp_path / "run")
    ck = load(tmp_path / "run" / "checkpoint_latest.pt")
    assert (ck["epoch"], ck["iteration"]) == state
    train(None, tmp_path / "run", resume=True)
    assert batches == ref_batches  # the same patches, in the same order
    assert_same_run(ref, tmp_path / "run")


def test_ema_resumed_before_its_first_update_starts_from_the_weights(tmp_path, monkeypatch, one_torch_thread,
                                                                     dataset):
    """Interrupted before the first iteration: after the one iteration the resumed run makes, the average is a copy
    of the weights (the first update copies), not 0.9 x initial weights + 0.1 x weights."""
    from medseg.train import trainer

    plan = plan_file(tmp_path, dataset, max_epochs=1, iterations_per_epoch=1)
    with monkeypatch.context() as m:
        interrupted(m, trainer, "sample_batch", 1)
        with pytest.raises(KeyboardInterrupt):
            train(plan, tmp_path / "run")
    train(None, tmp_path / "run", resume=True)
    ck = load(tmp_path / "run" / "checkpoint_latest.pt")
    assert ck["iteration"] == 1
    assert_same_tensors(ck["ema"], ck["model"])
    assert_same_tensors(load(tmp_path / "run" / "model.pt")["state_dict"], ck["model"])


def test_resuming_a_finished_run_leaves_it_as_it_was(tmp_path, one_torch_thread, dataset):
    """model.pt keeps its record (its validation Dice was emptied), the log its rows, and the user is told."""
    plan = plan_file(tmp_path, dataset, max_epochs=1)
    run = tmp_path / "run"
    train(plan, run)
    before = {f: (run / f).read_bytes() for f in ("model.pt", "log.csv", "checkpoint_latest.pt")}
    with pytest.warns(UserWarning, match="had finished"):
        res = train(None, run, resume=True)
    assert {f: (run / f).read_bytes() for f in before} == before
    last = log_rows(run)[-1]  # the reference: the log's last validation, written as it ran
    assert {k: round(v, 5) for k, v in res.val_dice.items()} == \
        {k[4:]: float(v) for k, v in last.items() if k.startswith("val_")}
    assert (res.epochs, res.iterations) == (1, 3)


@pytest.mark.parametrize("more_minutes", [False, True])
def test_a_run_the_budget_ended_resumes_to_no_more_training(tmp_path, monkeypatch, one_torch_thread, dataset,
                                                           more_minutes):
    """A fake clock, 10 s per batch, a 1-minute budget: the run stops after 6 iterations. Resumed with the same
    budget it trains no further iteration (it took another one, with learning rate 0, and a log row); with more
    minutes it trains on."""
    plan = plan_file(tmp_path, dataset, max_epochs=5, iterations_per_epoch=4, max_minutes=1.0)
    clock = fake_batch_clock(monkeypatch)
    assert train(plan, tmp_path / "run").iterations == 6
    rows, model = log_rows(tmp_path / "run"), (tmp_path / "run" / "model.pt").read_bytes()
    clock[0] = 0.0
    if more_minutes:
        assert train(None, tmp_path / "run", resume=True, max_minutes=2.0).iterations > 6
        return
    with pytest.warns(UserWarning, match="had finished"):
        assert train(None, tmp_path / "run", resume=True).iterations == 6
    assert log_rows(tmp_path / "run") == rows and (tmp_path / "run" / "model.pt").read_bytes() == model


def test_ensemble_interrupted_between_members_is_the_uninterrupted_ensemble(tmp_path, monkeypatch,
                                                                           one_torch_thread, dataset):
    """Stopped as the second member draws its first batch (its checkpoint has no iteration yet), then resumed:
    both members, the ensemble's model and its log equal the uninterrupted ensemble's."""
    from medseg.plan.plan import Plan
    from medseg.train import trainer
    from medseg.train.ensemble import train_ensemble

    plan = plan_file(tmp_path, dataset, max_epochs=1, ensemble=2)
    train_ensemble(Plan.from_yaml(plan), tmp_path / "ref", device="cpu", progress=False)
    with monkeypatch.context() as m:
        interrupted(m, trainer, "sample_batch", 4)
        with pytest.raises(KeyboardInterrupt):
            train_ensemble(Plan.from_yaml(plan), tmp_path / "run", device="cpu", progress=False)
    assert load(tmp_path / "run" / "member_1" / "checkpoint_latest.pt")["iteration"] == 0
    train_ensemble(Plan.from_yaml(plan), tmp_path / "run", device="cpu", progress=False, resume=True)
    a, b = load(tmp_path / "ref" / "model.pt"), load(tmp_path / "run" / "model.pt")
    for ma, mb in zip(a["members"], b["members"], strict=True):
        assert_same_tensors(ma, mb)
    assert a["info"]["val_dice"] == b["info"]["val_dice"]
    assert log_rows(tmp_path / "ref") == log_rows(tmp_path / "run")


@pytest.fixture
def stopped_run(tmp_path, monkeypatch, dataset):
    """A run interrupted in its second epoch: (plan file, run folder, its files' bytes)."""
    from medseg.train import trainer

    torch.set_num_threads(1)
    plan = plan_file(tmp_path, dataset)
    with monkeypatch.context() as m:
        interrupted(m, trainer, "sample_batch", 5)
        with pytest.raises(KeyboardInterrupt):
            train(plan, tmp_path / "run")
    run = tmp_path / "run"
    return plan, run, {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_resume_refuses_another_fold_plan_or_dataset(tmp_path, stopped_run, dataset):
    """Each refused in one line (exit 2) before anything is written; a moved copy of the same data resumes."""
    from medseg.errors import InputError
    from medseg.plan.plan import Plan

    plan, run, files = stopped_run
    assert_clean_error(run_cli("train", plan, "-o", run, "--resume", "--fold", "1", "-q"), "fold 0 (given 1)")
    # a plan file given to resume is compared too (the CLI trained the run's own plan whatever the file said)
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({**yaml.safe_load(Path(plan).read_text()), "learning_rate": 0.5}))
    assert_clean_error(run_cli("train", edited, "-o", run, "--resume", "-q"), "learning_rate")
    changed = Plan.from_yaml(run / "plan.yaml")
    changed.learning_rate = 0.1
    with pytest.raises(InputError, match="learning_rate"):
        train(changed, run, resume=True)
    other = synthetic_dataset(tmp_path / "other", seed=7)  # the same case ids, other images
    assert_clean_error(run_cli("train", other, "-o", run, "--resume", "-q"), str(other), "not the data")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    moved = shutil.copytree(dataset, tmp_path / "moved")
    assert run_cli("train", moved, "-o", run, "--resume", "-q").code == 0


@pytest.mark.parametrize("damage", ["truncated", "empty", "not torch", "foreign"])
def test_a_damaged_checkpoint_is_a_one_line_error_naming_it(stopped_run, damage):
    plan, run, _ = stopped_run
    ck = run / "checkpoint_latest.pt"
    data = ck.read_bytes()
    if damage == "foreign":
        torch.save({"weights": torch.zeros(2)}, ck)
    else:
        ck.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "not torch": b"plain text\n"}[damage])
    assert_clean_error(run_cli("train", plan, "-o", run, "--resume", "-q"), "checkpoint_latest.pt")


# --- the cell trainer -------------------------------------------------------------------------------------------

def cell_dataset(root: Path, n: int = 4, seed: int = 0) -> Path:
    """``n`` 48^2 images of bright discs (the last one validation)."""
    import tifffile
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng, (yy, xx), ids = np.random.default_rng(seed), np.indices((48, 48)), []
    for i in range(n):
        lab = np.zeros((48, 48), np.uint16)
        for j in range(5):
            c, r = rng.uniform(6, 42, 2), rng.uniform(3, 6)
            lab[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r] = j + 1
        img = np.clip(40 + 150 * (lab > 0) + rng.normal(0, 10, lab.shape), 0, 255).astype(np.uint8)
        ids.append(f"img{i}")
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        tifffile.imwrite(root / "labels" / f"img{i}.tif", lab)
    (root / "split.json").write_text(json.dumps({"train": ids[:-1], "val": ids[-1:]}))
    return root


CELLS = dict(patch_size=(32, 32), batch_size=2, base_filters=4, max_minutes=5, threads=1, bf16=False,
             tune_fraction=0.0, checkpoint_every_s=3600.0, ema=0.9)


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    return cell_dataset(tmp_path_factory.mktemp("cells") / "ds")


def fake_clock(monkeypatch, step_s: float = 0.0, prepare_s: list | None = None) -> list:
    """The cell trainer's clock: ``step_s`` per batch drawn, ``prepare_s[0]`` per preparation of the data."""
    from medseg.cells import train as ct

    clock = [0.0]
    monkeypatch.setattr(ct, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    real_batch, real_prepare = ct.training_batch, ct._prepare

    def batch(*a, **kw):
        clock[0] += step_s
        return real_batch(*a, **kw)

    def prepare(*a, **kw):
        clock[0] += prepare_s[0] if prepare_s else 0.0
        return real_prepare(*a, **kw)

    monkeypatch.setattr(ct, "training_batch", batch)
    monkeypatch.setattr(ct, "_prepare", prepare)
    return clock


def test_cell_run_killed_after_its_last_checkpoint_logs_each_step_once(tmp_path, monkeypatch, one_torch_thread,
                                                                      cells):
    """Killed (no save) at step 12 with its last checkpoint at step 5: the resumed run's log.csv and final loss
    equal the uninterrupted run's (the step-10 row was written twice, the second time averaging 5 losses, not
    10), and a run stopped before its first step averages its EMA as the uninterrupted run does."""
    from medseg.cells import train as ct
    from medseg.cells.train import CellTrainConfig, train_cells

    fake_clock(monkeypatch, step_s=1e-3)  # too little time for the schedule, which follows max_steps
    cfg = CellTrainConfig(**CELLS, max_steps=14)
    train_cells(cells, tmp_path / "ref", cfg, progress=False)
    real_ck, real_batch, calls = ct._checkpoint, ct.training_batch, [0]

    def checkpoint(net, opt, step, *a, **kw):  # due after every step, kept up to step 5
        if step <= 5:
            real_ck(net, opt, step, *a, **kw)

    def batch(*a, **kw):
        calls[0] += 1
        if calls[0] == 13:
            raise RuntimeError("killed")
        return real_batch(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(ct, "_checkpoint", checkpoint)
        m.setattr(ct, "training_batch", batch)
        with pytest.raises(RuntimeError):
            train_cells(cells, tmp_path / "run", cfg.updated(checkpoint_every_s=1e-9), progress=False)
    assert load(tmp_path / "run" / "checkpoint.pt")["step"] == 5
    train_cells(cells, tmp_path / "run", cfg, resume=True, progress=False)
    assert (tmp_path / "run" / "log.csv").read_text() == (tmp_path / "ref" / "log.csv").read_text()
    ja, jb = (json.loads((tmp_path / r / "model.json").read_text()) for r in ("ref", "run"))
    assert ja["final_loss"] == jb["final_loss"] and ja["steps"] == jb["steps"] == 14
    assert_same_tensors(load(tmp_path / "ref" / "model.pt"), load(tmp_path / "run" / "model.pt"))
    # stopped before its first step: the resumed average starts from the weights, as the uninterrupted one does
    with monkeypatch.context() as m:
        m.setattr(ct, "training_batch", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train_cells(cells, tmp_path / "run0", cfg, progress=False)
    train_cells(cells, tmp_path / "run0", cfg, resume=True, progress=False)
    assert_same_tensors(load(tmp_path / "ref" / "model.pt"), load(tmp_path / "run0" / "model.pt"))


def test_cell_resume_keeps_the_time_budget(tmp_path, monkeypatch, one_torch_thread, cells):
    """A fake clock: reading the data 30 s, a step 1 s, a 1-minute budget: 30 steps, 60 s. Stopped after 10 steps
    and resumed, the data read again in 5 s: the run ends at 60 s too, after 10 + (60 - 30 - 10 - 5) = 25 steps
    (it forgot the first reading: 55 steps in 90 s)."""
    from medseg.cells import train as ct
    from medseg.cells.train import CellTrainConfig, train_cells

    prepare = [30.0]
    clock = fake_clock(monkeypatch, step_s=1.0, prepare_s=prepare)
    cfg = CellTrainConfig(**{**CELLS, "max_minutes": 1.0, "batch_size": 1})
    train_cells(cells, tmp_path / "ref", cfg, progress=False)
    assert (json.loads((tmp_path / "ref" / "model.json").read_text())["steps"], clock[0]) == (30, 60.0)
    clock[0], real, calls = 0.0, ct.training_batch, [0]

    def batch(*a, **kw):
        calls[0] += 1
        if calls[0] == 11:
            raise KeyboardInterrupt
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(ct, "training_batch", batch)
        with pytest.raises(KeyboardInterrupt):
            train_cells(cells, tmp_path / "run", cfg, progress=False)
    prepare[0] = 5.0
    train_cells(cells, tmp_path / "run", cfg, resume=True, progress=False)
    assert (json.loads((tmp_path / "run" / "model.json").read_text())["steps"], clock[0]) == (25, 60.0)


def test_cell_resume_refuses_other_data_and_a_damaged_checkpoint(tmp_path, monkeypatch, one_torch_thread, cells):
    from medseg.cells import train as ct
    from medseg.cells.train import CellTrainConfig, train_cells

    fake_clock(monkeypatch)
    cfg = CellTrainConfig(**CELLS, max_steps=2)
    with monkeypatch.context() as m:
        interrupted(m, ct, "training_batch", 2)
        with pytest.raises(KeyboardInterrupt):
            train_cells(cells, tmp_path / "run", cfg, progress=False)
    run, files = tmp_path / "run", {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    other = cell_dataset(tmp_path / "other", seed=3)  # the same ids, other images
    assert_clean_error(run_cli("cells", "train", other, "-o", run, "--resume"), str(other), "not the data")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    ck = run / "checkpoint.pt"
    ck.write_bytes(files["checkpoint.pt"][:1000])
    assert_clean_error(run_cli("cells", "train", cells, "-o", run, "--resume"), "checkpoint.pt")
