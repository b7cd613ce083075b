"""Hand-edited plans and cell training configs: every wrong value is one line naming the file and the setting
(exit 2), never a crash in training or a silently different run; files and the Python API's objects round-trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import assert_clean_error, run_cli
from medseg.cells.config import CellTrainConfig
from medseg.errors import InputError
from medseg.plan.plan import Normalisation, Plan

REPO = Path(__file__).resolve().parents[1]


def _plan_text(tmp_path) -> str:
    plan = Plan(dataset=str(tmp_path / "ds"), channels=["CT"], labels={0: "background", 1: "liver"},
                patch_size=[32, 32, 32], normalisation=[Normalisation("ct", (-100.0, 200.0), 40.0, 60.0)])
    # one line per setting, as a user edits them
    return "".join(f"{k}: {yaml.safe_dump(v, default_flow_style=True, width=10 ** 6).splitlines()[0]}\n"
                   for k, v in plan.to_dict().items())


def _edited(text: str, edit: str) -> str:
    """``text`` (a plan) with the top-level settings in ``edit`` replaced, line by line as a user edits."""
    keys = {line.split(":")[0] for line in edit.splitlines()}
    return "".join(line + "\n" for line in text.splitlines() if line.split(":")[0] not in keys) + edit + "\n"


@pytest.mark.parametrize("edit, needle", [
    # trained: the learning rate or weight decay infinite (every weight NaN after the first step, Dice 0)
    ("learning_rate: .inf", "learning_rate"),
    ("weight_decay: .inf", "weight_decay"),
    ("target_spacing: [.inf, 1, 1]", "target_spacing"),
    ("target_spacing: [.nan, 1, 1]", "target_spacing"),  # was 'patch_size [32, 32, 32] is too small'
    ("class_weights: [1, .nan]", "class_weights"),
    ("channels: []\nnormalisation: []", "channels"),  # was found only when the first case was read
    # label keys that are not whole numbers >= 0 became other labels (int(1.5) == int(True) == 1) or none at all
    ("labels: {0: background, 1.5: liver}", "1.5"),
    ("labels: {0: background, true: liver}", "True"),
    ("labels: {0: background, -1: liver}", ">= 0"),
    ("labels: {0: background, 1: liver, '1': tumour}", "two names"),
    ("labels: {0: background, 1: liver, 2: liver}", "share one name"),
    # normalisation values reached np.clip as they were: crashes (exit 1) or a negative std that flips intensities
    ("normalisation: [{scheme: ct, clip: [100], mean: 40, std: 60}]", "clip"),
    ("normalisation: [{scheme: ct, clip: [200, -100], mean: 40, std: 60}]", "clip"),
    ("normalisation: [{scheme: ct, clip: [-100, 200], mean: 40, std: -60}]", "std"),
    ("normalisation: [{scheme: ct, clip: [-100, 200], mean: 40, std: .nan}]", "std"),
    ("normalisation: [{scheme: ct, clip: [-100, 200], mean: forty, std: 60}]", "mean"),
    ("normalisation: zscore", "normalisation must be a list"),  # was "'str' object is not a mapping"
    ("normalisation: [{scheme: zscore, clpi: [0, 1]}]", "did you mean 'clip'"),
    # augmentation values were checked but used as written: crashes in the first step, or a NaN rotation grid
    ("augment: {flip_axes: '01'}", "flip_axes"),
    ("augment: {flip_axes: [0.5]}", "flip_axes"),
    ("augment: {rotate_deg: .nan}", "rotate_deg"),
    ("augment: {rotate_deg: true}", "rotate_deg"),
    ("augment: {noise: .inf}", "noise"),
    ("augment: {scale: [0.8, .inf]}", "scale"),
])
def test_plan_values_that_crashed_or_changed_training_are_refused(tmp_path, edit, needle):
    path = tmp_path / "plan.yaml"
    path.write_text(_edited(_plan_text(tmp_path), edit))
    assert_clean_error(run_cli("train", path, "-o", tmp_path / "run"), "plan.yaml", needle)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match=re.escape(needle)) as exc:  # the Python API: the same message
        Plan.from_yaml(path)
    assert str(path) in str(exc.value)


def test_numbers_written_as_text_give_the_same_plan_and_normalisation(tmp_path):
    """YAML 1.1 reads 8e-1 (no dot) as text: in augment and normalisation that text reached the training step
    (np.clip of strings, 1.2 - '8e-1': exit 1 after the data were read)."""
    from medseg.train.preprocess import normalise
    from medseg.train.sampling import augment

    text = _plan_text(tmp_path)
    as_text, as_numbers = tmp_path / "text.yaml", tmp_path / "numbers.yaml"
    as_text.write_text(_edited(text, "normalisation: [{scheme: ct, clip: [-1e2, 2e2], mean: 4e1, std: 6e1}]\n"
                                     "augment: {scale: [8e-1, 1.2], flip_axes: [1.0], prob: 1e0}"))
    as_numbers.write_text(_edited(text, "normalisation: [{scheme: ct, clip: [-100.0, 200.0], mean: 40.0, std: 60.0}]\n"
                                        "augment: {scale: [0.8, 1.2], flip_axes: [1], prob: 1.0}"))
    a, b = Plan.from_yaml(as_text), Plan.from_yaml(as_numbers)
    assert a == b
    x = np.random.default_rng(0).normal(50, 200, (1, 6, 7, 8)).astype(np.float32)
    np.testing.assert_allclose(normalise(x, a), (np.clip(x, -100, 200) - 40) / 60, rtol=1e-6, atol=1e-6)
    import torch

    xa, ya = augment(torch.ones(2, 1, 8, 8, 8), torch.ones(2, 8, 8, 8, dtype=torch.long),
                     torch.Generator().manual_seed(0), a.augment)
    assert xa.shape == (2, 1, 8, 8, 8) and ya.shape == (2, 8, 8, 8)


def test_a_setting_given_twice_and_unreadable_files_are_one_line_errors(tmp_path):
    """PyYAML keeps the last of two equal keys: a forgotten second learning_rate trained silently."""
    base = _plan_text(tmp_path)
    cases = {
        "twice.yaml": (base + "learning_rate: 0.5\n").encode(), "labels.yaml":
        _edited(base, "labels: {0: background, 1: liver, 1: spleen}").encode(),
        "latin1.yaml": _edited(base, "name: Foie é").encode("latin-1"), "empty.yaml": b"", "list.yaml": b"- a\n- b\n",
        "syntax.yaml": b"name: [\n",
    }
    needles = {"twice.yaml": "'learning_rate' is set twice (lines", "labels.yaml": "'1' is set twice",
               "latin1.yaml": "not UTF-8", "empty.yaml": "empty file", "list.yaml": "got a list",
               "syntax.yaml": "invalid YAML"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_clean_error(run_cli("train", tmp_path / name, "-o", tmp_path / "run"), name, needles[name])
    cfg = tmp_path / "cells.yaml"
    cfg.write_text("lr: 0.01\nseed: 1\nlr: 0.001\n")
    with pytest.raises(InputError, match=r"'lr' is set twice \(lines 1 and 3\)"):
        CellTrainConfig.from_yaml(cfg)
    # '<<' merges may be overridden: that is YAML's own way of setting a key again
    cfg.write_text("extra: {<<: {a: 1, b: 2}, a: 3}\n")
    assert CellTrainConfig.from_yaml(cfg).extra == {"a": 3, "b": 2}
    assert not (tmp_path / "run").exists()


def test_python_api_values_save_and_reread_as_they_are(tmp_path):
    """numpy scalars (a spacing from np.median) could not be written (yaml RepresenterError, exit 1) and tuples
    came back as other plans; wrong types were TypeErrors from validate, not InputErrors naming the setting."""
    spacing = np.median(np.array([[0.7, 0.7, 3.0], [0.8, 0.8, 2.0]]), axis=0)
    plan = Plan(channels=("CT",), target_spacing=tuple(spacing), patch_size=tuple(np.array([32, 32, 16])),
                learning_rate=np.float32(0.5) * 2e-3, labels={np.int64(0): "background", np.int64(1): "liver"},
                normalisation=[Normalisation("ct", (np.float64(-100), np.float64(200)), np.float64(40), 60.0)],
                class_weights=list(np.ones(2)), dataset=str(tmp_path)).validate()
    again = Plan.from_yaml(_written(plan, tmp_path / "p.yaml"))
    assert again == plan and json.loads(json.dumps(plan.to_dict()))["learning_rate"] == plan.learning_rate
    assert again.target_spacing == [0.75, 0.75, 2.5] and again.learning_rate == float(np.float32(0.5) * 2e-3)
    cfg = CellTrainConfig(patch_size=[np.int64(128)] * 2, lr=np.float64(1e-3), norm_percentiles=[1, 99.8]).validate()
    cfg.to_yaml(tmp_path / "c.yaml")
    assert CellTrainConfig.from_yaml(tmp_path / "c.yaml") == cfg and cfg.patch_size == (128, 128)
    with pytest.raises(InputError, match="seed needs a value"):
        Plan(seed=None).validate()
    with pytest.raises(InputError, match="lr must be a number"):
        CellTrainConfig(lr="fast").validate()


def _written(plan: Plan, path: Path) -> Path:
    plan.to_yaml(path)
    return path


def test_cell_config_values_refused_before_training(tmp_path):
    """seed -1 passed validation and ended the run in its first step (numpy generators take no negative seed);
    a plan's 'learning_rate' got no hint towards 'lr'."""
    with pytest.raises(ValueError):
        np.random.default_rng(-1)  # why: what train_cells seeds with
    p = tmp_path / "c.yaml"
    for text, needle in (("seed: -1\n", "seed must be >= 0"), ("learning_rate: 0.01\n", "did you mean 'lr'")):
        p.write_text(text)
        with pytest.raises(InputError, match=re.escape(needle)) as exc:
            CellTrainConfig.from_yaml(p)
        assert str(p) in str(exc.value)


def test_folders_in_settings_files_expand_home(tmp_path, monkeypatch):
    """'~/data' was a folder named '~' beside the file (a cache created there)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sub = tmp_path / "plans"
    sub.mkdir()
    (sub / "p.yaml").write_text(_edited(_plan_text(tmp_path), "dataset: ~/ds\ncache_dir: ~/cache"))
    plan = Plan.from_yaml(sub / "p.yaml")
    assert (plan.dataset, plan.cache_dir) == (str(tmp_path / "home" / "ds"), str(tmp_path / "home" / "cache"))
    (sub / "c.yaml").write_text("cache_dir: ~/cells\n")
    assert CellTrainConfig.from_yaml(sub / "c.yaml").cache_dir == str(tmp_path / "home" / "cells")


def test_shipped_configs_validate_round_trip_and_name_their_dataset_outside_configs(tmp_path):
    """configs/brats.yaml says to run 'medseg dataset convert ... -o brats_msd' in the repository root, but named
    'brats_msd' relative to itself: configs/brats_msd (exit 2, no dataset.json). A config folder holds no data."""
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith("cells_"):
            cfg = CellTrainConfig.from_yaml(path)
            assert CellTrainConfig.from_yaml(Path(_cell_written(cfg, tmp_path / path.name))) == cfg
            continue
        plan = Plan.from_yaml(path)
        assert Path(plan.dataset).parent != REPO / "configs", path.name
        out = tmp_path / "elsewhere" / path.name
        out.parent.mkdir(exist_ok=True)
        assert Plan.from_yaml(_written(plan, out)) == plan
        made = re.search(r"-o ([\w./-]*\w)", path.read_text().split("\n", 1)[0])
        if made:  # the first comment line's command, run in the repository root, writes the dataset
            assert plan.dataset == str(REPO / made.group(1)), path.name


def _cell_written(cfg: CellTrainConfig, path: Path) -> Path:
    cfg.to_yaml(path)
    return path


def test_yaml_floats_round_trip_exactly(tmp_path):
    """Every float a plan holds comes back bit for bit (PyYAML writes repr, adding '.0' where YAML 1.1 needs it)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        lr, wd = (float(v) for v in 10.0 ** rng.uniform(-12, 2, 2))
        spacing = [float(v) for v in rng.uniform(0.05, 6, 3)]
        plan = Plan(learning_rate=lr, weight_decay=wd, target_spacing=spacing, patch_size=[64, 64, 64])
        again = Plan.from_dict(yaml.safe_load(plan.to_yaml()))
        assert (again.learning_rate, again.weight_decay, again.target_spacing) == (lr, wd, spacing)


@pytest.mark.parametrize("entry", ["{scheme: zscore, clip: [-100, 200]}", "{scheme: none, mean: 10, std: 2}"])
def test_intensity_settings_a_scheme_would_ignore_are_refused(tmp_path, entry):
    """A zscore (or none) channel with clip/mean/std trained unclipped and unscaled by them, silently."""
    from medseg.errors import InputError
    from medseg.plan.plan import Plan

    path = tmp_path / "plan.yaml"
    path.write_text(f"dataset: data\nlabels: {{0: background, 1: liver}}\nchannels: [CT]\nnormalisation: [{entry}]\n")
    with pytest.raises(InputError, match="apply to scheme 'ct' only"):
        Plan.from_yaml(path)


def test_an_infinite_time_budget_is_refused_as_on_the_command_line(tmp_path):
    """`--max-minutes inf` and a cell config's max_minutes: .inf were refused, a plan's taken as no limit."""
    from medseg.errors import InputError
    from medseg.plan.plan import Plan

    path = tmp_path / "plan.yaml"
    path.write_text("dataset: data\nlabels: {0: background, 1: liver}\nchannels: [CT]\nmax_minutes: .inf\n")
    with pytest.raises(InputError, match="max_minutes must be a positive number"):
        Plan.from_yaml(path)
