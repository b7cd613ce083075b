"""Loading a model builds its network, whose initial weights are drawn and at once replaced by the saved ones: the
drawing must not consume the caller's torch random stream (a notebook that seeds torch, loads a model and then draws
got other numbers than without the load)."""

from __future__ import annotations

import torch

from conftest import linked_cell_dataset
from test_predict import make_model


def _draws_after(load) -> torch.Tensor:
    torch.manual_seed(123)
    load()
    return torch.rand(5)


def test_loading_a_semantic_model_leaves_the_random_stream(tmp_path):
    from medseg.train.artifact import load_model

    for ds in (False, True):  # a deep-supervision plan also names its heads (built on the meta device)
        path = make_model(tmp_path / f"m{ds}.pt", deep_supervision=ds)
        torch.manual_seed(123)
        want = torch.rand(5)
        assert torch.equal(_draws_after(lambda: load_model(path).build()), want), ds
        art = load_model(path)
        net = art.build()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in art.state_dict.items() if k in net.state_dict())


def test_loading_a_cell_model_leaves_the_random_stream(tmp_path):
    from medseg.cells.segmenters import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    linked_cell_dataset(tmp_path / "ds", 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=1, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          tune_fraction=0)
    run = train_cells(tmp_path / "ds", tmp_path / "run", cfg, progress=False)
    torch.manual_seed(123)
    want = torch.rand(5)
    assert torch.equal(_draws_after(lambda: CellModel.load(run)), want)
    saved = torch.load(run / "model.pt", weights_only=True)
    loaded = CellModel.load(run).net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
