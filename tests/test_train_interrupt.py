"""Training interrupted inside an epoch (Ctrl-C, SIGTERM) keeps its completed iterations: the semantic trainer saves
a mid-epoch checkpoint_latest.pt and --resume finishes that epoch exactly as the uninterrupted run would have; the
cell trainer saves checkpoint.pt at the last completed step."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, assert_clean_error, fake_batch_clock, linked_cell_dataset, run_cli
from test_train import read_log, tiny_plan

from medseg.train.trainer import validate as _real_validate


def _train(plan, run, **kw):
    from medseg.train.trainer import train

    return train(plan, run, device="cpu", progress=False, **kw)


def _interrupt_on_call(monkeypatch, module, name: str, k: int, action=None):
    """Make ``module.name`` raise KeyboardInterrupt (or run ``action``) on its ``k``-th call."""
    real, calls = getattr(module, name), [0]

    def hooked(*args, **kw):
        calls[0] += 1
        if calls[0] == k:
            if action is None:
                raise KeyboardInterrupt
            action()
        return real(*args, **kw)

    monkeypatch.setattr(module, name, hooked)


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_same_log(ref, run):
    a, b = read_log(ref), read_log(run)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
        assert ra == rb


@pytest.mark.parametrize("where, call, epoch, done", [
    ("sample_batch", 3, 0, 2),  # drawing the 3rd batch, in the first epoch (which used to leave no checkpoint)
    ("sample_batch", 6, 1, 1),  # the 6th: one iteration into the second epoch
    ("validate", 1, 0, 4),      # after the first epoch's last iteration, during its validation
])
def test_interrupted_epoch_resumes_exactly(tmp_path, monkeypatch, where, call, epoch, done):
    """Interrupted mid-epoch, then resumed: the same weights, optimiser state, EMA and log as an uninterrupted run."""
    from medseg.train import trainer
    from medseg.train.artifact import load_model

    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=4, ema=0.9)
    _train(plan, tmp_path / "ref")
    with monkeypatch.context() as m:
        _interrupt_on_call(m, trainer, where, call)
        with pytest.raises(KeyboardInterrupt):
            _train(plan, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"], len(ck["epoch_losses"])) == (epoch, 4 * epoch + done, done)
    log = tmp_path / "run" / "log.csv"
    assert len(read_log(tmp_path / "run")) == epoch if epoch else not log.exists()  # completed epochs' rows only
    res = _train(None, tmp_path / "run", resume=True)
    assert (res.epochs, res.iterations) == (2, 8)
    _assert_same_log(tmp_path / "ref", tmp_path / "run")
    a = torch.load(tmp_path / "ref" / "checkpoint_latest.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    for key in ("model", "ema"):
        _assert_same_weights(a[key], b[key])
    assert str(a["optimizer"]) == str(b["optimizer"])  # every moment tensor, bit for bit
    assert a["scheduler"] == b["scheduler"] and a["history"][-1]["lr"] == b["history"][-1]["lr"]
    _assert_same_weights(load_model(tmp_path / "ref").state_dict, load_model(tmp_path / "run").state_dict)


@pytest.mark.parametrize("more_minutes", [False, True])
def test_interrupted_after_the_budget_stopped_the_epoch(tmp_path, monkeypatch, more_minutes):
    """Interrupted in the final validation of a budget-stopped epoch, the resumed run only finishes that epoch (it
    trained on past the budget); given more minutes it trains on. A fake clock: 10 s per batch, 1-minute budget."""
    from medseg.train import trainer

    plan = tiny_plan(tmp_path, max_epochs=3, iterations_per_epoch=4, ema=0.9, max_minutes=1.0)
    clock = fake_batch_clock(monkeypatch)
    ref = _train(plan, tmp_path / "ref")
    assert ref.iterations == 6  # stopped by the budget in the second epoch
    clock[0] = 0.0
    _interrupt_on_call(monkeypatch, trainer, "validate", 3)  # 1: timing the validation, 2: epoch 1, 3: epoch 2
    with pytest.raises(KeyboardInterrupt):
        _train(plan, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"], len(ck["epoch_losses"])) == (1, 6, 2)
    monkeypatch.setattr(trainer, "validate", _real_validate)
    clock[0] = 0.0
    res = _train(None, tmp_path / "run", resume=True, **({"max_minutes": 2.0} if more_minutes else {}))
    if more_minutes:
        assert res.iterations > 6
    else:
        assert res.iterations == 6
        _assert_same_log(tmp_path / "ref", tmp_path / "run")
        a, b = (torch.load(tmp_path / r / "checkpoint_latest.pt", weights_only=True) for r in ("ref", "run"))
        _assert_same_weights(a["model"], b["model"])
        _assert_same_weights(a["ema"], b["ema"])


def test_a_signal_during_the_update_waits_for_the_step_to_complete(tmp_path, monkeypatch):
    """SIGINT arriving between the optimiser step and the step count (here: in the EMA update) is delivered after
    the iteration completes, so the checkpoint pairs the stepped weights with the right counter."""
    from medseg.train import trainer
    from medseg.train.artifact import load_model

    plan = tiny_plan(tmp_path, max_epochs=1, iterations_per_epoch=5, ema=0.9)
    _train(plan, tmp_path / "ref")
    with monkeypatch.context() as m:
        _interrupt_on_call(m, trainer.WeightEMA, "update", 3, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            _train(plan, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"], len(ck["epoch_losses"])) == (0, 3, 3)
    _train(None, tmp_path / "run", resume=True)
    _assert_same_log(tmp_path / "ref", tmp_path / "run")
    _assert_same_weights(load_model(tmp_path / "ref").state_dict, load_model(tmp_path / "run").state_dict)


def test_a_second_interrupt_during_the_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C again while the mid-epoch checkpoint is being written: the epoch-end checkpoint before it stays whole
    (temporary file and rename), no temporary file is left, and --resume continues from it."""
    from medseg.train import trainer

    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=3)
    real_save, saves = torch.save, []

    def save(obj, f, *a, **kw):
        saves.append(obj)
        real_save(obj, f, *a, **kw)  # written whole to the temporary file, then interrupted before the rename
        raise KeyboardInterrupt

    def interrupt():  # the first Ctrl-C, in the second epoch; the second one during the save it causes
        monkeypatch.setattr(torch, "save", save)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        _interrupt_on_call(m, trainer, "sample_batch", 5, interrupt)
        with pytest.raises(KeyboardInterrupt):
            _train(plan, tmp_path / "run")
    monkeypatch.undo()
    assert [(s["epoch"], s["iteration"], len(s["epoch_losses"])) for s in saves] == [(1, 4, 1)]  # the mid-epoch save
    ck = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"], ck["epoch_losses"]) == (1, 3, [])
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []
    assert _train(None, tmp_path / "run", resume=True).iterations == 6


def test_resume_without_checkpoint_names_the_cases_that_have_none(tmp_path):
    plan = tiny_plan(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.yaml").write_text(plan.read_text())
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "run", "--resume", "-q"), "Ctrl-C or SIGTERM",
                       "SIGKILL", "first epoch")


def terminate_after_progress(cmd: list, env: dict, pattern: bytes, iterations: int) -> tuple[int, bytes]:
    """Run ``cmd``; SIGTERM it once its progress bar (stderr, group 1 of ``pattern``) shows ``iterations`` done;
    its exit code and stderr."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err, seen = bytearray(), threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            err.extend(chunk)
            done = [int(n) for n in re.findall(pattern, bytes(err[-4096:]))]
            if done and max(done) >= iterations:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert seen.wait(240), f"no training progress: {bytes(err)[-2000:]!r}"
    assert proc.poll() is None, "training finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    reader.join(10)
    return code, bytes(err)


def test_sigterm_in_the_first_epoch_then_resume(tmp_path):
    """A real `medseg train` process gets SIGTERM during its first (and only) epoch: it exits 143 with a checkpoint
    of the iterations done, and --resume finishes the epoch."""
    ipe = 400
    plan = tiny_plan(tmp_path, max_epochs=1, iterations_per_epoch=ipe)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    code, err = terminate_after_progress([sys.executable, "-m", "medseg", "train", str(plan), "-o", str(run),
                                          "--device", "cpu"], env, rb"\b(\d+)/%d" % ipe, 10)
    assert code == 143
    assert b"medseg: terminated" in err and b"Traceback" not in err
    ck = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert ck["epoch"] == 0 and 10 <= ck["iteration"] == len(ck["epoch_losses"]) < ipe
    assert not (run / "model.pt").exists() and not list(run.glob(".*.tmp*"))
    res = run_cli("train", plan, "-o", run, "--resume", "-q")
    assert res.code == 0, res.err
    rows = read_log(run)
    assert [(r["epoch"], r["iteration"]) for r in rows] == [("1", str(ipe))] and rows[0]["val_mean"] != ""
    assert (run / "model.pt").is_file()


def test_interrupted_cell_training_resumes_from_its_last_step(tmp_path, monkeypatch):
    """Ctrl-C inside a cell run saves checkpoint.pt at the last completed step (not only every
    ``checkpoint_every_s``); the resumed run continues from there, drawing the batches the uninterrupted run drew."""
    from medseg.cells import train as cells_train
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    # a stopped clock: the learning rate then follows max_steps alone (not the few ms of the time budget a step
    # uses, which Adam can amplify), so the two runs can be compared bit for bit
    monkeypatch.setattr(cells_train, "time", SimpleNamespace(perf_counter=lambda: 0.0))
    cfg = dict(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=6, max_minutes=5, threads=1, bf16=False,
               tune_fraction=0.0, checkpoint_every_s=3600.0)
    train_cells(ds, tmp_path / "ref", CellTrainConfig(**cfg), progress=False)
    with monkeypatch.context() as m:
        _interrupt_on_call(m, cells_train, "training_batch", 4)  # 3 steps done
        with pytest.raises(KeyboardInterrupt):
            train_cells(ds, tmp_path / "run", CellTrainConfig(**cfg), progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3
    train_cells(ds, tmp_path / "run", CellTrainConfig(**cfg), resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["steps"] == 6
    _assert_same_weights(torch.load(tmp_path / "ref" / "model.pt", weights_only=True),
                         torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    _assert_same_weights(a["model"], b["model"])
    assert str(a["optimizer"]) == str(b["optimizer"]) and a["rng"] == b["rng"]
