"""Optional TensorBoard logging of both trainers (medseg.train.tblog)."""

from __future__ import annotations

import builtins

import pytest

from conftest import linked_cell_dataset, run_cli
from test_train import kill_when_logged, read_log, tiny_plan

pytest.importorskip("tensorboard", exc_type=ImportError,
                    reason="the tensorboard package is not installed (pip install 'medseg[tensorboard]')")


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_semantic_training_writes_the_log_csv_curves(tmp_path):
    plan = tiny_plan(tmp_path, max_epochs=3)
    assert run_cli("train", plan, "-o", tmp_path / "run", "--tensorboard", "-q").code == 0
    got, rows = scalars(tmp_path / "run" / "tensorboard"), read_log(tmp_path / "run")
    assert [s for s, _ in got["train/loss"]] == [int(r["iteration"]) for r in rows]
    assert [v for _, v in got["train/loss"]] == pytest.approx([float(r["train_loss"]) for r in rows], abs=1e-4)
    assert [v for _, v in got["val/dice_mean"]] == pytest.approx([float(r["val_mean"]) for r in rows], abs=1e-4)


def test_resumed_run_continues_the_curves_without_doubled_points(tmp_path):
    plan = tiny_plan(tmp_path, max_epochs=4)
    kill_when_logged(plan, tmp_path / "run", tmp_path / "run" / "log.csv", 3)
    assert run_cli("train", plan, "-o", tmp_path / "run", "--resume", "--tensorboard", "-q").code == 0
    steps = [s for s, _ in scalars(tmp_path / "run" / "tensorboard")["train/loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == int(read_log(tmp_path / "run")[-1]["iteration"])


def test_cell_training_curves(tmp_path):
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=20, max_minutes=5, threads=1,
                          tune_fraction=0)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False, tensorboard=True)
    got = scalars(run / "tensorboard")
    assert [s for s, _ in got["train/loss"]] == [10, 20] and len(got["train/lr"]) == 2


def test_missing_package_is_a_clean_error_before_anything_is_written(tmp_path, monkeypatch):
    from medseg.errors import InputError
    from medseg.train.trainer import train
    from medseg.plan.plan import Plan

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(InputError, match="tensorboard package"):
        train(Plan.from_yaml(tiny_plan(tmp_path)), tmp_path / "run", tensorboard=True, progress=False)
    assert not (tmp_path / "run").exists()
