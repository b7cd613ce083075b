"""The public CLI contract and settings files, audited: a plan file that names one label twice in two spellings,
a plan written through a link, a folder given as a settings file, an infinite demo budget. Each bad input is one
line naming the file (or option) and the problem, exit 2, before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from medseg.plan.plan import Plan

PLAN = "dataset: data\nchannels: [CT]\nlabels: {{0: background, 1: liver, {key}: tumour}}\n"


@pytest.mark.parametrize("key", ["1.0", "true", "0x1"])
def test_a_label_value_spelt_twice_is_refused(tmp_path, key):
    """``1`` and ``1.0`` (or ``true``, ``0x1``) are one key to a dict: PyYAML kept the last name, and the plan
    trained a class 'tumour' where the file also says 'liver' (the key-set-twice check compared the spellings)."""
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(key=key))
    written = yaml.compose(path.read_text())  # the file's own label keys, as written, before any dict
    labels = next(v for k, v in written.value if k.value == "labels")
    assert len(labels.value) == 3 and len(yaml.safe_load(path.read_text())["labels"]) == 2  # one name lost
    with pytest.raises(InputError, match="set twice") as exc:
        Plan.from_yaml(path)
    assert str(path) in str(exc.value) and f"'{key}'" in str(exc.value)
    assert_clean_error(run_cli("train", path, "-o", tmp_path / "run"), "plan.yaml", "set twice")
    assert not (tmp_path / "run").exists()


def test_label_values_that_differ_still_load(tmp_path):
    """The check compares values, not text: ``2.0`` is label 2, a third class beside 0 and 1."""
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(key="2.0"))
    assert Plan.from_yaml(path).labels == {0: "background", 1: "liver", 2: "tumour"}


def test_a_plan_written_to_a_linked_path_names_its_dataset(tmp_path, monkeypatch):
    """``medseg plan DATA -o current.yaml`` with current.yaml a link to plans/v3/plan.yaml: the link is replaced by
    the plan, but the relative dataset was written relative to the link's target (../../ds), and 'medseg train
    current.yaml' read it as a folder two levels above the plan: 'dataset folder does not exist'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds").mkdir()
    (tmp_path / "plans" / "v3").mkdir(parents=True)
    (tmp_path / "plans" / "v3" / "plan.yaml").write_text("# an older plan\n")
    os.symlink(Path("plans", "v3", "plan.yaml"), "current.yaml")
    Plan(dataset="ds", channels=["CT"], labels={0: "background", 1: "liver"}).to_yaml("current.yaml")
    # where the file now is, and the dataset it names, as a reader resolves it (YAML and os.path, not medseg)
    text = yaml.safe_load(Path("current.yaml").read_text())["dataset"]
    named = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath("current.yaml")), text))
    assert named == os.path.realpath(tmp_path / "ds")
    assert Plan.from_yaml("current.yaml").dataset == str((tmp_path / "ds").resolve())


def test_a_folder_given_as_a_settings_file_is_called_a_folder(tmp_path):
    """'--config DIR' said the config file 'does not exist', which a user can see is untrue."""
    folder = tmp_path / "configs"
    folder.mkdir()
    res = run_cli("cells", "train", tmp_path, "-o", tmp_path / "run", "--config", folder)
    assert_clean_error(res, "configs", "got a folder")
    assert "does not exist" not in res.err and not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="folder"):
        Plan.from_yaml(folder)


def test_demo_refuses_an_infinite_training_budget_before_writing(tmp_path):
    """``--train-minutes inf`` passed the option's range check: the demo converted the DICOM study, then training
    refused the budget (exit 2 with the first step's files left in the output folder)."""
    data = data_path("dicom", "mr_study").parents[1]
    out = tmp_path / "demo"
    res = run_cli("demo", "--data", data, "-o", out, "--train-minutes", "inf")
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert_clean_error(res, "--train-minutes")
