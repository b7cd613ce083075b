"""The cell trainer's time budget holds the threshold search: its time is measured a quarter into training, on
the tuning image of median size with the network as it then is, and kept back from training (a 1-minute run on
DSB2018 took 133 s: the search took 68 s where 3 s were kept back)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import linked_cell_dataset


def _searched(net, cfg, meta, cases):
    """The threshold search's result, without searching (these tests are about which images it gets)."""
    return {"n_images": len(cases), "threshold": 0.5, "seed_threshold": 0.5, "seeds": "boundary"}


def _small(**kw):
    from medseg.cells.train import CellTrainConfig

    return CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, threads=1, tune_fraction=0.3, **kw)


def test_measured_search_time_is_kept_back_and_resume_keeps_it(tmp_path, monkeypatch):
    """A search measured to take longer than the budget left ends training at the measurement; the run saves what
    it measured, and --resume with more minutes trains on without measuring again."""
    import medseg.cells.train as train

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 12)
    calls = []

    def measured(net, cfg, meta, cases):
        calls.append(len(cases))
        return np.full(len(cases), 1e4)  # far more than the run has

    monkeypatch.setattr(train, "tuning_costs", measured)
    monkeypatch.setattr(train, "tune_network", _searched)
    run = train.train_cells(ds, tmp_path / "run", _small(max_minutes=0.15), progress=False)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert calls and calls[0] >= 3 and len(calls) == 1
    # the search takes the 3 first tuning images, the fewest it takes
    assert ck["reserve_measured"] is True and ck["reserve_s"] == 3e4 and ck["tune_images"] == 3
    assert json.loads((run / "model.json").read_text())["tuning"]["n_images"] == 3
    steps = ck["step"]
    # training stopped at the measurement, a quarter into a budget of under 9 s
    assert steps >= 1 and ck["elapsed_s"] < 0.6 * 9
    monkeypatch.setattr(train, "tuning_costs", lambda *a: np.zeros(100))  # must not be asked again
    more = 3e4 / 60 + 0.05  # minutes beyond the measured search: about 3 s more training
    train.train_cells(ds, run, _small(max_minutes=0.15 + more), resume=True, progress=False)
    ck2 = torch.load(run / "checkpoint.pt", weights_only=True)
    assert len(calls) == 1 and ck2["reserve_s"] == 3e4 and ck2["step"] > steps and ck2["tune_images"] == 3


def test_without_tuning_images_nothing_is_measured(tmp_path, monkeypatch):
    import medseg.cells.train as train

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 12)
    monkeypatch.setattr(train, "tuning_costs", lambda *a: (_ for _ in ()).throw(AssertionError("measured")))
    cfg = _small(max_minutes=5, max_steps=3)
    cfg.tune_fraction = 0
    run = train.train_cells(ds, tmp_path / "run", cfg, progress=False)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and ck["reserve_s"] == 0.0


def test_a_search_that_fits_takes_every_tuning_image(tmp_path, monkeypatch):
    """A search measured to fit in a quarter of the budget takes every tuning image, and its time is what is
    kept back."""
    import medseg.cells.train as train

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 12)
    monkeypatch.setattr(train, "tuning_costs", lambda net, cfg, meta, cases: np.full(len(cases), 0.25))
    monkeypatch.setattr(train, "tune_network", _searched)
    run = train.train_cells(ds, tmp_path / "run", _small(max_minutes=0.12), progress=False)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    n = len(json.loads((run / "model.json").read_text())["split"]["tune"])
    assert n >= 3 and ck["tune_images"] == n and ck["reserve_s"] == 0.25 * n
    assert json.loads((run / "model.json").read_text())["tuning"]["n_images"] == n


def test_search_time_is_the_median_case_scaled_by_pixels(monkeypatch):
    """The search timed on the case of median size, scaled by all cases' pixels and the margin (a fake clock: the
    timed search costs 1 s per 1,000 pixels)."""
    import medseg.cells.tune as tune
    from medseg.cells.config import CellTrainConfig
    from medseg.cells.data import CellCase

    clock = [0.0]
    seen = []

    def search(model, cases):
        seen.extend(c.case for c in cases)
        assert not model.net.training  # a copy in eval mode
        clock[0] += cases[0].image.size / 1000

    monkeypatch.setattr(tune, "per_image_table", search)
    monkeypatch.setattr(tune.time, "perf_counter", lambda: clock[0])
    cases = [CellCase(name, Path(f"{name}.tif"), None, np.zeros(shape), np.zeros(shape, int))
             for name, shape in (("a", (10, 10)), ("b", (100, 100)), ("c", (40, 50)), ("d", (20, 20)), ("e", (30, 30)))]
    net = torch.nn.Conv2d(1, 3, 3).train()
    got = tune.tuning_costs(net, CellTrainConfig(), {}, cases, margin=1.25)
    assert seen == ["e"]  # sizes 100, 10000, 2000, 400, 900: the median is 900
    assert np.allclose(got, [1.25 * c.image.size / 1000 for c in cases])
    assert net.training  # training's own network is left as it was


def test_a_saved_budget_resumes_as_it_was_with_the_minutes_added():
    from medseg.cells.budget import CellBudget

    b = CellBudget.start(max_minutes=2, prepared_s=10.0, n_tune=6)
    assert b.reserve_s == 6.0 and not b.measured  # the first guess: 5 % of the budget
    b.settle([4.0, 5.0, 6.0, 7.0, 8.0, 9.0])  # a quarter of 2 minutes holds the first 5 (30 s)
    again = CellBudget.resumed(b.saved(), max_minutes=3, n_tune=6)
    assert (again.base_s, again.reserve_s, again.measured, again.tune_images) == (110.0 + 60.0, 30.0, True, 5)
    assert not again.due(elapsed=1e6, step=10)  # measured once only
    # a budget the search ate whole stays whole when resumed, not clipped at 0
    starved = CellBudget.start(max_minutes=1, prepared_s=0.0, n_tune=3)
    starved.settle([100.0, 100.0, 100.0])
    assert starved.training_s == 0.0
    assert CellBudget.resumed(starved.saved(), max_minutes=6, n_tune=3).training_s == 60.0
    # a checkpoint from before the reserve was measured: no reserve, nothing to measure
    old = CellBudget.resumed({"budget_s": 50.0, "max_minutes": 1}, max_minutes=1, n_tune=4)
    assert (old.training_s, old.measured, old.tune_images) == (50.0, True, 4)
