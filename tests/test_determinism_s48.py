"""Determinism and order independence (audit s48): results must not depend on the machine's clock when an
iteration cap ends a run, on the order the file system lists a folder in, or on Python's string hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, data_path, linked_cell_dataset


def _fake_clock(tick: float):
    """A ``time`` stand-in whose ``perf_counter`` advances ``tick`` seconds per call: a faster or slower machine."""
    now = [0.0]

    def perf_counter() -> float:
        now[0] += tick
        return now[0]

    return SimpleNamespace(perf_counter=perf_counter)


def test_cell_training_capped_by_max_steps_does_not_depend_on_the_clock(tmp_path, monkeypatch, one_torch_thread):
    """Same seed and data, --max-steps ending the run long before the (always present) time budget: the weights are
    the same bit for bit on a machine whose clock runs 0.1 s or 2 s per look. The first step's learning rate used
    to follow the few microseconds (here: seconds) spent before it, so two runs differed in every weight."""
    import torch

    from medseg.cells import train as cell_train
    from medseg.cells.config import CellTrainConfig

    linked_cell_dataset(tmp_path / "ds", 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=3, threads=1,
                          tune_fraction=0, max_minutes=20)
    weights = []
    for k, tick in enumerate((0.1, 2.0)):
        monkeypatch.setattr(cell_train, "time", _fake_clock(tick))
        run = cell_train.train_cells(tmp_path / "ds", tmp_path / f"run{k}", cfg, progress=False)
        assert json.loads((run / "model.json").read_text())["steps"] == 3  # the cap ended it, not the budget
        weights.append(torch.load(run / "model.pt", weights_only=True))
    a, b = weights
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[0]}"


def _reversed_listings(monkeypatch) -> None:
    """Make ``os.listdir`` (``Path.iterdir``) and ``os.scandir`` (``Path.glob``, ``walk_files``) list every folder
    in reverse name order, where ext4 gives an arbitrary (hash) order that differs between machines."""
    listdir, scandir = os.listdir, os.scandir

    class Entries(list):
        def __init__(self, it):
            super().__init__(sorted(it, key=lambda e: e.name, reverse=True))
            self._it = it

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

        def close(self):
            self._it.close()

    monkeypatch.setattr(os, "listdir", lambda path=".": sorted(listdir(path), reverse=True))
    monkeypatch.setattr(os, "scandir", lambda path=".": Entries(scandir(path)))


def _listing_results() -> dict:
    """What every folder-listing entry point decides on real data: dataset cases and channels, cell cases and
    their split, the files and series of a DICOM study, a CT series' voxels."""
    import numpy as np

    from medseg.cells.data import list_cases, list_images
    from medseg.cells.splits import dataset_split
    from medseg.infer.cases import list_cases as predict_cases
    from medseg.io.dicom import load_series
    from medseg.io.dicom_files import list_candidate_files
    from medseg.train.dataset import open_dataset

    cells = data_path("dsb2018_fluo")
    cases = list_cases(cells)
    study = data_path("dicom", "mr_study")
    ct = load_series(data_path("totalseg_example", "ct_dicom"))
    return {"dataset": [(c.id, [p.name for p in c.images], c.label.name) for c in
                        open_dataset(data_path("msd_hippocampus")).cases[:40]],
            "cells": [c.case for c in cases],
            "split": {k: [c.case for c in v] for k, v in dataset_split(cells, cases).items()},
            "images": [p.name for p in list_images(cells / "images")],
            "dicom_files": [str(p) for p in list_candidate_files(study)],
            "series": [c.name for c in predict_cases(study, 1, None, [])],
            "ct": (float(ct.array.astype(np.float64).sum()), np.round(ct.affine, 6).tolist())}


def test_results_do_not_depend_on_the_directory_listing_order(monkeypatch):
    """Every listing is sorted before it decides anything: the same cases, channels, split, DICOM files, series
    and volume when the file system lists folders in reverse order."""
    natural = _listing_results()
    _reversed_listings(monkeypatch)
    assert [p.name for p in Path(data_path("dsb2018_fluo", "images")).iterdir()][:2] == \
        sorted(os.listdir(data_path("dsb2018_fluo", "images")), reverse=True)[:2]  # the patch is in effect
    assert _listing_results() == natural


_SPLITS = """
import json
from medseg.cells.data import list_cases
from medseg.cells.splits import dataset_split, tuning_images
from medseg.train.dataset import open_dataset
from medseg.train.splits import make_splits
hip, cells = {hip!r}, {cells!r}
ds = open_dataset(hip)
cases = list_cases(cells)
train = dataset_split(cells, cases)["train"]
print(json.dumps({{"folds": make_splits([c.id for c in ds.cases if c.label is not None], 5, 0),
                  "cells": [c.case for c in train], "tune": [c.case for c in tuning_images(train, 0.1)],
                  "cell_folds": [[c.case for c in dataset_split(cells, cases, fold=k)["val"]] for k in range(5)]}}))
"""


def test_splits_do_not_depend_on_the_string_hash_seed(tmp_path):
    """The semantic trainer's k-fold split and the cell trainer's validation, tuning and fold splits are the same
    under PYTHONHASHSEED 0 and 1 (sets of case ids iterate in another order under each)."""
    code = _SPLITS.format(hip=str(data_path("msd_hippocampus")), cells=str(data_path("dsb2018_fluo")))
    outs = []
    for seed in ("0", "1"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO)}
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout))
    assert outs[0] == outs[1]
    assert len(outs[0]["folds"]) == 5 and outs[0]["tune"]  # a real split, not an empty agreement
