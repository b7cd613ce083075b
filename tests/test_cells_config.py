"""Cell training settings as a YAML file (`medseg cells train --config`), their validation, and `--resume` keeping
the run's own settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import assert_clean_error, linked_cell_dataset, run_cli
from medseg.cells.config import CellTrainConfig
from medseg.cells.saved_config import resumed_config
from medseg.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_example_config_states_the_defaults():
    """configs/cells_dsb2018.yaml documents the default recipe: it must not drift from the code's defaults."""
    assert CellTrainConfig.from_yaml(REPO / "configs" / "cells_dsb2018.yaml") == CellTrainConfig()


def test_yaml_round_trip_and_number_text(tmp_path):
    cfg = CellTrainConfig(patch_size=(128, 128), ema=0.999, scale_range=(0.8, 1.25), contact_boundary=2, seed=3,
                          max_steps=100, diameter=17.0)
    p = tmp_path / "c.yaml"
    cfg.to_yaml(p)
    assert CellTrainConfig.from_yaml(p) == cfg
    # YAML 1.1 reads 3e-3 (no dot) as text; a whole number is a valid float setting
    p.write_text("lr: 3e-3\nmax_minutes: 5\npatch_size: [64, 64]\n")
    got = CellTrainConfig.from_yaml(p)
    assert got.lr == pytest.approx(0.003) and got.max_minutes == 5.0 and got.patch_size == (64, 64)


@pytest.mark.parametrize("text, needle", [
    ("max_minute: 5\n", "did you mean 'max_minutes'"),
    ("patch_size: [8, 8]\n", "patch_size"),
    ("patch_size: [64, 64, 64]\n", "spatial_dims"),
    ("ema: 1.0\n", "ema must be in [0, 1)"),
    ("low_light_prob: 1.5\n", "low_light_prob must be in [0, 1]"),
    ("merge_boundary: -0.1\n", "merge_boundary must be in [0, 1]"),
    ("merge_area_ratio: 2\n", "merge_area_ratio must be in [0, 1]"),
    ("offset_head: false\nseeds: votes\n", "needs offset_head"),
    ("lr: fast\n", "lr must be a number"),
    ("batch_size: 2.5\n", "whole number"),
    ("distance_head: 'yes'\n", "true or false"),
    ("norm: group\n", "norm 'group'"),
    ("tune_objective: f1\n", "tune_objective 'f1'"),
    ("tune_selection: best\n", "tune_selection 'best' is not one of plateau, peak"),
    ("tune_fraction: 1\n", "tune_fraction"),
    ("max_minutes: .nan\n", "max_minutes"),
    ("scale_range: [1.3, 0.7]\n", "scale_range"),
    ("fold: 5\n", "fold must be in 0..4"),
    ("folds: 1\n", "folds must be >= 2"),
    ("[1, 2]\n", "expected a mapping"),
    ("lr: [\n", "invalid YAML"),
])
def test_bad_settings_name_the_file_and_the_problem(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as exc:
        CellTrainConfig.from_yaml(p)
    assert needle in str(exc.value) and str(p) in str(exc.value)


def test_validate_catches_python_api_values():
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        CellTrainConfig(batch_size=0).validate()
    assert CellTrainConfig().validate() == CellTrainConfig()


def test_cli_config_options_override_and_resume_keeps_the_runs_settings(tmp_path):
    """A YAML config plus options trains; --resume continues with the run's settings (here a non-default head and
    width) and may extend only its budget; anything else is refused before training."""
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_filters: 4\noffset_head: false\ntune_fraction: 0\nmax_steps: 50\nthreads: 1\n")
    run = tmp_path / "run"
    res = run_cli("cells", "train", ds, "-o", run, "--config", cfg, "--patch", "64", "--max-steps", "2")
    assert res.code == 0, res.err
    meta = json.loads((run / "model.json").read_text())
    assert meta["steps"] == 2  # the option beat the file's 50
    assert meta["config"]["base_filters"] == 4 and meta["config"]["offset_head"] is False
    assert meta["config"]["patch_size"] == [64, 64]
    res = run_cli("cells", "train", ds, "-o", run, "--resume", "--max-steps", "3")
    assert res.code == 0, res.err
    meta = json.loads((run / "model.json").read_text())
    assert meta["steps"] == 3 and meta["config"]["offset_head"] is False and meta["config"]["base_filters"] == 4
    before = (run / "model.pt").read_bytes()
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--resume", "--patch", "32"), "--patch", "--resume")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--resume", "--config", cfg), "--config")
    assert (run / "model.pt").read_bytes() == before
    # the Python API refuses a resume whose network or data settings differ from the run's
    saved = resumed_config(run)
    with pytest.raises(InputError, match="base_filters 4"):
        resumed_config(run, dataclasses.replace(saved, base_filters=8))
    assert resumed_config(run, dataclasses.replace(saved, max_minutes=60)).max_minutes == 60


def test_cli_bad_config_and_options_write_nothing(tmp_path):
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    run = tmp_path / "run"
    bad = tmp_path / "bad.yaml"
    bad.write_text("contact_boundary: 0\n")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--config", bad), "bad.yaml", "contact_boundary")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--config", tmp_path / "none.yaml"), "does not exist")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--max-minutes", "0"), "--max-minutes")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--tune-fraction", "1"), "--tune-fraction")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--patch", "8"), "--patch")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--fold", "3", "--folds", "3"), "--fold", "0..2")
    # the test dataset has a split.json: a fold would be a second definition of its validation images
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--fold", "0"), "split.json", "fold")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--tune-objective", "f1"), "--tune-objective",
                       "ap-count")
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--tune-selection", "best"), "--tune-selection",
                       "plateau")
    assert not run.exists()


def test_3d_example_config_is_valid_and_3d():
    """configs/cells_3d.yaml (benchmarks/cells3d.py's recipe) loads, validates and keeps the 2D recipe otherwise."""
    cfg = CellTrainConfig.from_yaml(REPO / "configs" / "cells_3d.yaml")
    assert cfg.spatial_dims == 3 and len(cfg.patch_size) == 3
    assert (cfg.offset_head, cfg.distance_head, cfg.contact_weight) == (True, True, CellTrainConfig().contact_weight)


def test_without_a_config_3d_stacks_get_a_fitted_3d_crop(tmp_path):
    """`cells train` without --config on TIFF stacks trains a 3D model with a crop fitted to the smallest stack
    (the real sample stack's halves); on 2D images the defaults are the 2D recipe; a mix is refused."""
    import numpy as np

    from benchmarks.cells3d import halves, write_case
    from conftest import data_path
    from medseg.cells.config import config_for_data
    from medseg.cells.data import read_labels
    from medseg.io.microscopy import read_microscopy, single_channel

    stack = data_path("nuclei_stardist")
    image = single_channel(read_microscopy(stack / "img3d.tif"), None)
    labels = read_labels(stack / "mask3d.tif").astype(np.uint16)
    ds = tmp_path / "stacks"
    for i, part in enumerate(halves(image.shape[-1])):
        write_case(ds, f"half{i}", image[..., part], labels[..., part], (2.0, 1.0, 1.0))
    (ds / "split.json").write_text(json.dumps({"train": ["half0"], "val": ["half1"]}))
    cfg = config_for_data(ds)
    # half0 is 31 x 61 x 28; less its tuning block (13 rows) 31 x 48 x 28: multiples of 8
    assert cfg.spatial_dims == 3 and cfg.patch_size == (24, 48, 24)
    run = tmp_path / "run"
    res = run_cli("cells", "train", str(ds), "-o", str(run), "--max-steps", "2", "--threads", "1")
    assert res.code == 0, res.err
    saved = json.loads((run / "model.json").read_text())["config"]
    assert saved["spatial_dims"] == 3 and saved["patch_size"] == [24, 48, 24]
    res = run_cli("cells", "train", str(ds), "-o", str(tmp_path / "p16"), "--max-steps", "1", "--threads", "1",
                  "--patch", "16", "--tune-fraction", "0")
    assert res.code == 0, res.err  # --patch: one size for every axis of the run's images
    assert json.loads((tmp_path / "p16" / "model.json").read_text())["config"]["patch_size"] == [16, 16, 16]

    flat = tmp_path / "flat"
    linked_cell_dataset(flat, 3)
    assert config_for_data(flat) == CellTrainConfig()
    (ds / "images" / "half1.tif").unlink()
    (ds / "images" / "half1.png").symlink_to(next((flat / "images").iterdir()))
    (ds / "split.json").unlink()
    with pytest.raises(InputError, match="mix 2D images and 3D stacks"):
        config_for_data(ds)


def test_fitted_3d_crop_follows_the_tune_fraction(tmp_path, monkeypatch):
    """With no tuning blocks held out (--tune-fraction 0) the crop may use the whole stack; the shapes come from
    the headers (training reads the pixels, once)."""
    import numpy as np

    from benchmarks.cells3d import halves, write_case
    from conftest import data_path
    from medseg.cells.config import config_for_data
    from medseg.cells.data import read_labels
    from medseg.io.microscopy import read_microscopy, single_channel

    stack = data_path("nuclei_stardist")
    image = single_channel(read_microscopy(stack / "img3d.tif"), None)
    labels = read_labels(stack / "mask3d.tif").astype(np.uint16)
    part = halves(image.shape[-1])[0]
    write_case(tmp_path, "half0", image[..., part], labels[..., part], (2.0, 1.0, 1.0))

    def no_pixels(*args, **kw):
        raise AssertionError("config_for_data read pixels")

    monkeypatch.setattr("medseg.io.microscopy.read_microscopy", no_pixels)
    assert config_for_data(tmp_path).patch_size == (24, 48, 24)  # 61 rows less a 13-row tuning block
    assert config_for_data(tmp_path, tune_fraction=0.0).patch_size == (24, 56, 24)  # all 61 rows
