"""One reader of label-name files (``medseg.io.labels.read_label_names``) behind ``--labels`` of both ``medseg
evaluate`` and ``medseg export``: the same forms accepted, the same one-line errors naming the file, nnU-Net region
entries skipped with one warning line by both (evaluate refused them, export skipped them silently)."""

from __future__ import annotations

import json
import warnings

import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from medseg.io.labels import label_names, read_label_names

HIPPO = ("msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz")
NAMES = {1: "anterior", 2: "posterior"}

FORMS = {  # every form either reader accepted, and the nnU-Net one with string values (as training reads it)
    "msd": {"labels": {"0": "background", "1": "anterior", "2": "posterior"}},
    "nnunet": {"labels": {"background": 0, "anterior": 1, "posterior": 2}},
    "bare_msd": {"0": "background", "1": "anterior", "2": "posterior"},
    "bare_nnunet": {"background": 0, "anterior": 1, "posterior": 2},
    "nnunet_string_values": {"labels": {"background": "0", "anterior": "1", "posterior": "2"}},
}

BAD = {  # file content -> what the one line says (after the file's name)
    "{not json": "cannot read labels JSON",
    "[1, 2]": "no 'labels' mapping",
    '{"labels": {}}': "labels mapping is empty",
    '{"labels": {"anterior": 1, "posterior": 1}}': "label 1 has two names",
    '{"labels": {"1": "BODY", "2": "BODY"}}': "'BODY' names 1, 2",
    '{"labels": {"ignore": -1, "anterior": 1}}': "integers >= 0",
    '{"labels": {"anterior": 1.5}}': "names no integer label value",
    '{"labels": {"anterior": true}}': "names no integer label value",
    '{"name": "Hippocampus", "training": []}': "no 'labels' mapping, and not a bare",
}


def _write(tmp_path, content, name="labels.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_reads_the_same(tmp_path, form):
    assert read_label_names(_write(tmp_path, FORMS[form])) == NAMES


@pytest.mark.parametrize("form", ["bare_msd", "nnunet_string_values"])
def test_both_commands_take_every_form(tmp_path, form):
    """evaluate refused a bare mapping, export refused string values: each command now reads what the other did."""
    lab = data_path(*HIPPO)
    names = _write(tmp_path, FORMS[form])
    res = run_cli("evaluate", "--pred", lab, "--ref", lab, "--labels", names, "-o", tmp_path / "ev", "-q")
    assert res.code == 0, res.err
    assert set(json.loads((tmp_path / "ev" / "metrics.json").read_text())["mean"]) == set(NAMES.values())
    (tmp_path / "ex").mkdir()
    res = run_cli("export", lab, "-f", "nifti", "-o", tmp_path / "ex" / "m.nii.gz", "--labels", names)
    assert res.code == 0, res.err
    table = (tmp_path / "ex" / "m.itksnap.txt").read_text()
    assert '"anterior"' in table and '"posterior"' in table


@pytest.mark.parametrize("content", sorted(BAD))
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_both_commands_refuse_the_same_files_in_one_line(tmp_path, command, content):
    lab = data_path(*HIPPO)
    names = _write(tmp_path, content)
    if command == "evaluate":
        res = run_cli("evaluate", "--pred", lab, "--ref", lab, "--labels", names, "-o", tmp_path / "out", "-q")
    else:
        res = run_cli("export", lab, "-f", "nifti", "-o", tmp_path / "out" / "m.nii.gz", "--labels", names)
    assert_clean_error(res, str(names), BAD[content])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_missing_file_is_the_same_error(tmp_path, command):
    lab, names = data_path(*HIPPO), tmp_path / "nowhere.json"
    if command == "evaluate":
        res = run_cli("evaluate", "--pred", lab, "--ref", lab, "--labels", names, "-o", tmp_path / "out", "-q")
    else:
        res = run_cli("export", lab, "-f", "nifti", "-o", tmp_path / "out" / "m.nii.gz", "--labels", names)
    assert_clean_error(res, str(names), "no such labels file")


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_region_entries_are_skipped_with_one_warning_line_by_both(tmp_path, command):
    """An nnU-Net region (a union of values) next to labels that name every value: evaluate refused the whole
    file, export dropped the region without a word; both now score/export the values and say what was skipped."""
    lab = data_path(*HIPPO)
    names = _write(tmp_path, {"labels": {"background": 0, "anterior": 1, "posterior": 2, "hippocampus": [1, 2]}})
    if command == "evaluate":
        res = run_cli("evaluate", "--pred", lab, "--ref", lab, "--labels", names, "-o", tmp_path / "out", "-q")
    else:
        (tmp_path / "out").mkdir()
        res = run_cli("export", lab, "-f", "nifti", "-o", tmp_path / "out" / "m.nii.gz", "--labels", names)
    assert res.code == 0, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"medseg: warning: {names}: nnU-Net region entries skipped")
    assert "'hippocampus' = [1, 2]" in lines[0]


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_value_named_only_inside_a_region_is_refused(tmp_path, command):
    """BraTS-style regions name 1 and 2 only as parts of unions: a map holding them has no class for them."""
    lab = data_path(*HIPPO)
    names = _write(tmp_path, {"labels": {"background": 0, "whole": [1, 2], "anterior": 1}})
    (tmp_path / "out").mkdir()
    if command == "evaluate":
        res = run_cli("evaluate", "--pred", lab, "--ref", lab, "--labels", names, "-o", tmp_path / "out", "-q")
        says = "value(s) [2] not in the labels"
    else:
        res = run_cli("export", lab, "-f", "nifti", "-o", tmp_path / "out" / "m.nii.gz", "--labels", names)
        says = "value(s) 2 of"
    assert res.code == 2 and "Traceback" not in res.err
    warning, error = [ln for ln in res.err.splitlines() if ln.strip()]
    assert warning.startswith("medseg: warning:") and "'whole' = [1, 2]" in warning
    assert error.startswith("medseg: error:") and says in error, error
    assert not list((tmp_path / "out").iterdir())


def test_python_mappings_take_the_same_forms():
    """Export kept only digit keys of a mapping given in Python: {'anterior': 1} exported as 'label_1'."""
    assert label_names({"anterior": 1, "posterior": 2}) == label_names({1: "anterior", "2": "posterior"}) == NAMES
    assert label_names([2, 1]) == {1: "label_1", 2: "label_2"}
    with pytest.raises(InputError, match="share one name"):
        label_names({1: "a", 2: "a"})


def test_export_python_mapping_in_nnunet_form(tmp_path):
    from medseg.export import export_segmentation

    out = export_segmentation(data_path(*HIPPO), None, "nifti", tmp_path / "m.nii.gz",
                              labels={"background": 0, "anterior": 1, "posterior": 2})
    table = (tmp_path / "m.itksnap.txt").read_text()
    assert out.exists() and '"anterior"' in table and "label_1" not in table


def test_one_reader():
    """The reader export imported is the one evaluate uses (the old evaluate-only reader is gone)."""
    import medseg.evaluate.cases as cases
    from medseg.export.colors import read_label_names as export_reader

    assert export_reader is read_label_names and not hasattr(cases, "read_labels_json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert label_names({"1": "a"}) == {1: "a"}
