"""`medseg train` and `medseg cells train` never change their inputs: a plan file kept in the run folder it trains
into, and the dataset folder (a run folder in it, or in its image/label folders, is refused before anything is
written; another folder inside the dataset is allowed, as the readers do not look there)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import assert_clean_error, linked_cell_dataset, run_cli
from test_train import TINY, read_log
from test_dataset import tiny_dataset

ONE_STEP = {**TINY, "max_epochs": 1, "iterations_per_epoch": 1}
USER_PLAN = "# my hippocampus plan: 1 epoch for a smoke test\n"


def files(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (links not followed) with the SHA-256 of a file's bytes ("" for a folder)."""
    return {p.relative_to(folder).as_posix(): "" if p.is_dir() and not p.is_symlink() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


@pytest.fixture
def run_with_own_plan(tmp_path):
    """A new run folder holding only the user's plan file, with a comment and the dataset relative to the file."""
    tiny_dataset(tmp_path / "ds", 4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.yaml").write_text(USER_PLAN + yaml.safe_dump({**ONE_STEP, "dataset": "../ds"}, sort_keys=False))
    return run


def test_training_from_the_run_folders_own_plan_leaves_it_as_the_user_wrote_it(run_with_own_plan, one_torch_thread):
    from medseg.plan.plan import Plan
    from medseg.train.artifact import load_model

    run = run_with_own_plan
    before = files(run)["plan.yaml"]
    res = run_cli("train", run / "plan.yaml", "-o", run, "--device", "cpu", "-q")
    assert res.code == 0, res.err
    assert files(run)["plan.yaml"] == before  # comment and relative dataset kept
    assert load_model(run).plan.to_dict() == Plan.from_yaml(run / "plan.yaml").to_dict()  # and it was trained
    # a resume still continues the run's own plan.yaml, updated with the settings a resume may change
    res = run_cli("train", run / "plan.yaml", "-o", run, "--device", "cpu", "-q", "--resume", "--max-epochs", "2")
    assert res.code == 0, res.err
    assert Plan.from_yaml(run / "plan.yaml").max_epochs == 2
    assert [int(r["epoch"]) for r in read_log(run)] == [1, 2]


@pytest.mark.parametrize("options, setting", [(["--max-epochs", "2"], "max_epochs"), (["--fold", "1"], "fold"),
                                              (["--max-minutes", "5"], "max_minutes"),
                                              (["--ensemble", "2"], "ensemble")])
def test_options_that_would_rewrite_the_run_folders_own_plan_are_refused(run_with_own_plan, options, setting):
    run = run_with_own_plan
    before = files(run)
    res = run_cli("train", run / "plan.yaml", "-o", run, "--device", "cpu", "-q", *options)
    assert_clean_error(res, str(run / "plan.yaml"), setting)
    assert files(run) == before  # nothing written


def test_python_api_refuses_to_rewrite_the_plan_file_it_was_given(run_with_own_plan):
    from medseg.errors import InputError
    from medseg.train.trainer import train

    before = files(run_with_own_plan)
    with pytest.raises(InputError, match="max_epochs"):
        train(run_with_own_plan / "plan.yaml", run_with_own_plan, max_epochs=3, device="cpu", progress=False)
    assert files(run_with_own_plan) == before


@pytest.fixture
def plan_outside(tmp_path):
    ds = tiny_dataset(tmp_path / "ds", 4)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({**ONE_STEP, "dataset": str(ds)}))
    return tmp_path / "plan.yaml", ds


@pytest.mark.parametrize("inside, options", [(".", []), ("imagesTr", []), ("labelsTr/run", []),
                                             ("imagesTr", ["--ensemble", "2"]),
                                             ("../run", ["--cache", "disk", "--cache-dir", "{ds}/imagesTr"])])
def test_a_run_in_the_dataset_or_its_data_folders_is_refused(plan_outside, inside, options):
    plan, ds = plan_outside
    before = files(ds)
    run = ds / inside
    res = run_cli("train", plan, "-o", run, "--device", "cpu", "-q", *[o.format(ds=ds) for o in options])
    refused = f"{ds}/imagesTr" if "--cache-dir" in options else str(run)
    assert_clean_error(res, refused, "dataset folder")
    assert files(ds) == before
    assert not (ds.parent / "run").exists()


def test_a_run_in_another_folder_inside_the_dataset_does_not_change_what_is_read(plan_outside, one_torch_thread):
    """DATASET/runs/fold0 is allowed: open_dataset lists imagesTr/ and labelsTr/ only, not recursively."""
    from medseg.train.dataset import open_dataset

    plan, ds = plan_outside
    data = {d: files(ds / d) for d in ("imagesTr", "labelsTr")}
    cases = [(c.id, c.images, c.label) for c in open_dataset(ds).cases]
    res = run_cli("train", plan, "-o", ds / "runs" / "fold0", "--device", "cpu", "-q")
    assert res.code == 0, res.err
    assert (ds / "runs" / "fold0" / "model.pt").is_file()
    assert {d: files(ds / d) for d in data} == data
    assert [(c.id, c.images, c.label) for c in open_dataset(ds).cases] == cases


def _cells_train(ds, run, *more):
    return run_cli("cells", "train", ds, "-o", run, "--patch", "64", "--batch-size", "1", "--max-steps", "1",
                   "--tune-fraction", "0", "--threads", "1", *more)


@pytest.mark.parametrize("inside, options", [(".", []), ("images", []), ("labels/run", []),
                                             ("../run", ["--cache", "disk", "--cache-dir", "{ds}/images"])])
def test_cells_run_in_the_dataset_or_its_image_folders_is_refused(tmp_path, inside, options):
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    before = files(ds)
    run = ds / inside
    res = _cells_train(ds, run, *[o.format(ds=ds) for o in options])
    assert_clean_error(res, f"{ds}/images" if "--cache-dir" in options else str(run), "dataset folder")
    assert files(ds) == before
    assert not (tmp_path / "run").exists()


def test_cells_run_in_another_folder_inside_the_dataset_does_not_change_what_is_read(tmp_path, one_torch_thread):
    from medseg.cells.data import list_cases

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cases = [(c.case, c.image_path, c.label_path) for c in list_cases(ds)]
    data = {d: files(ds / d) for d in ("images", "labels")}
    res = _cells_train(ds, ds / "runs" / "a")
    assert res.code == 0, res.err
    assert (ds / "runs" / "a" / "model.pt").is_file()
    assert {d: files(ds / d) for d in data} == data
    assert [(c.case, c.image_path, c.label_path) for c in list_cases(ds)] == cases
