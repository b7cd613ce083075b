"""Output names on file systems that do not tell case apart (macOS, Windows, SMB, a Docker bind mount of a macOS
folder): ``Case1`` and ``case1`` are one file there, and the second case's output silently replaced the first's."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import data_path, run_cli
from test_predict import make_model


@pytest.fixture
def folding(monkeypatch):
    """The output folder's file system folds case (this machine's does not; the probe is tested below)."""
    from medseg.io import folding as mod

    monkeypatch.setattr(mod, "folds_names", lambda folder: True)


def test_this_file_system_keeps_case_apart(tmp_path):
    """The probe on a real folder (Linux's file systems tell case apart) and on one not yet made; it leaves nothing."""
    from medseg.io.folding import folds_names, name_key

    assert folds_names(tmp_path) is False and folds_names(tmp_path / "not" / "yet") is False
    assert os.listdir(tmp_path) == [] and name_key(tmp_path)("Case1.nii.gz") == "Case1.nii.gz"


def _copies(folder, source, *names):
    """``source`` copied under each of ``names`` into ``folder`` (made); returns the folder."""
    folder.mkdir()
    for n in names:
        shutil.copy(source, folder / n)
    return folder


def test_predict_refuses_cases_one_file_apart_in_case(tmp_path, folding):
    src = _copies(tmp_path / "in", data_path("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz"),
                  "Case1.nii.gz", "case1.nii.gz")
    model = make_model(tmp_path / "m.pt")
    res = run_cli("predict", "-m", model, "-i", src, "-o", tmp_path / "out", "-q")
    assert res.code == 2 and "case1.nii.gz" in res.err and "Case1" in res.err, res.err
    assert "does not tell them apart" in res.err and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_predict_still_takes_cases_that_differ_in_more_than_case(tmp_path, folding):
    src = _copies(tmp_path / "in", data_path("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz"),
                  "Case1.nii.gz", "case2.nii.gz")
    res = run_cli("predict", "-m", make_model(tmp_path / "m.pt"), "-i", src, "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["Case1.nii.gz", "case2.nii.gz"]


def test_cell_counting_refuses_images_one_file_apart_in_case(tmp_path, folding):
    src = _copies(tmp_path / "in", sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0],
                  "Cell1.png", "cell1.png")
    res = run_cli("cells", "count", "--classical", "-i", src, "-o", tmp_path / "out")
    assert res.code == 2 and "Cell1.png" in res.err and "cell1.png" in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
