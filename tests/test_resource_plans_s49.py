"""Plans that are type-valid but absurd for the machine are refused in one line before training allocates: a
``batch_size`` of 10⁹ trained on until the machine killed it, a ``target_spacing`` of 1e-9 mm failed deep in torch
("Storage size calculation overflowed", exit 1)."""

from __future__ import annotations

from conftest import assert_clean_error, run_cli
from test_train import tiny_plan


def test_a_batch_no_machine_holds_is_refused_before_training(tmp_path):
    plan = tiny_plan(tmp_path, batch_size=10**9)
    run = tmp_path / "run"
    res = run_cli("train", plan, "-o", run, "--max-epochs", "1", "--device", "cpu")
    assert_clean_error(res, "batch_size 1000000000", "memory")
    assert not run.exists()


def test_a_target_spacing_no_machine_holds_is_refused_naming_the_case(tmp_path):
    plan = tiny_plan(tmp_path, target_spacing=[1e-9, 1e-9, 1e-9])
    run = tmp_path / "run"
    res = run_cli("train", plan, "-o", run, "--max-epochs", "1", "--device", "cpu")
    assert_clean_error(res, "voxel size", "target_spacing")
    assert not run.exists()


def test_a_plan_that_fits_still_trains(tmp_path):
    run = tmp_path / "run"
    res = run_cli("train", tiny_plan(tmp_path), "-o", run, "--max-epochs", "1", "--device", "cpu")
    assert res.code == 0, res.err
    assert (run / "model.pt").is_file()
