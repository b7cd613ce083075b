"""Weight averaging (medseg.train.ema) and its use by both trainers."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_clean_error, linked_cell_dataset, run_cli
from test_train import kill_when_logged, tiny_plan


def test_ema_follows_the_closed_form():
    """First update copies the weights; then each update moves the average (decay) towards them, buffers too."""
    from medseg.train.ema import WeightEMA

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net, 0.8)
    ema.update(net)
    w1 = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean += 2.0
    for _ in range(3):  # the weights stay put: the average approaches them geometrically
        ema.update(net)
    got = ema.state_dict()
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], v + (w1[k] - v) * 0.8 ** 3)
    assert not torch.equal(got["1.running_mean"], w1["1.running_mean"])
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(net, 1.0)
    with pytest.raises(KeyError):
        ema.load_state_dict({"x": torch.zeros(1)})
    # a resumed average continues from the saved weights instead of copying the network again
    fresh = WeightEMA(net, 0.8)
    fresh.load_state_dict(got)
    fresh.update(net)
    torch.testing.assert_close(fresh.state_dict()["0.weight"], net[0].weight + (got["0.weight"] - net[0].weight) * 0.8)


def test_averaged_weights_restores_the_training_weights():
    from medseg.train.ema import WeightEMA, averaged_weights

    net = torch.nn.Linear(2, 2)
    ema = WeightEMA(net, 0.5)
    ema.update(net)
    with torch.no_grad():
        net.weight.mul_(3.0)
    ema.update(net)
    raw = net.weight.detach().clone()
    with averaged_weights(net, ema):
        torch.testing.assert_close(net.weight, ema.state_dict()["weight"])
        assert not torch.equal(net.weight, raw)
    assert torch.equal(net.weight, raw)
    with averaged_weights(net, None):
        assert torch.equal(net.weight, raw)


def test_semantic_training_saves_and_resumes_the_average(tmp_path):
    """With ``ema`` the model file holds the averaged weights, and a resumed run continues the same average."""
    from medseg.train.artifact import load_model

    plan = tiny_plan(tmp_path, max_epochs=4, ema=0.9)
    assert run_cli("train", plan, "-o", tmp_path / "ref", "-q").code == 0
    ck = torch.load(tmp_path / "ref" / "checkpoint_latest.pt", weights_only=True)
    saved = load_model(tmp_path / "ref").state_dict
    k = next(k for k, v in saved.items() if v.is_floating_point())
    torch.testing.assert_close(saved[k], ck["ema"][k])
    assert not torch.allclose(saved[k], ck["model"][k])
    # killed after an epoch or two, then resumed: the same average as the uninterrupted run
    kill_when_logged(plan, tmp_path / "run", tmp_path / "run" / "log.csv", 2)
    assert "ema" in torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert run_cli("train", plan, "-o", tmp_path / "run", "--resume", "-q").code == 0
    resumed = load_model(tmp_path / "run").state_dict
    for name, v in saved.items():
        torch.testing.assert_close(resumed[name], v, atol=1e-4, rtol=1e-3)


def test_plan_rejects_an_ema_decay_of_one(tmp_path):
    plan = tiny_plan(tmp_path, ema=1.0)
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "run", "-q"), "ema")
    assert not (tmp_path / "run").exists()


def test_cell_training_saves_the_average(tmp_path):
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1,
                          ema=0.9)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    cfg.max_steps = 4
    train_cells(ds, run, cfg, resume=True, progress=False)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    saved = torch.load(run / "model.pt", weights_only=True)
    assert ck["step"] == 4 and json.loads((run / "model.json").read_text())["config"]["ema"] == 0.9
    for k, v in saved.items():
        torch.testing.assert_close(v, ck["ema"][k])
    assert any(not torch.allclose(v, ck["model"][k]) for k, v in saved.items() if v.is_floating_point())
