"""Zoom augmentation of the cell trainer (issue 5): crops resized by a random factor, targets kept consistent."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage as ndi

from medseg.cells.augment import zoom_crop
from medseg.cells.targets import boundary_targets, offset_targets
from conftest import data_path, linked_cell_dataset


def _real_labels():
    import tifffile

    root = data_path("dsb2018_fluo")
    files = sorted((root / "labels").glob("*.tif"))
    # an image with many nuclei, so that crops hold several
    return max((tifffile.imread(f) for f in files[:20]), key=lambda lab: len(np.unique(lab)))


def test_zoom_scales_the_nuclei_and_their_offsets():
    """Nuclei come out z times larger per axis (area z²), and the resized offsets still point from each pixel to
    its nucleus's centre (nuclei inside the crop: within the nearest-neighbour sampling error)."""
    lab = _real_labels()
    rng = np.random.default_rng(0)
    off = offset_targets(lab)
    seen = 0
    for _ in range(12):
        img, out, dy, dx = zoom_crop(lab.astype(np.float32), lab, (128, 128), rng, (0.6, 1.6),
                                     vectors=tuple(off))
        assert img.shape == out.shape == dy.shape == dx.shape == (128, 128)
        assert not (dy[out == 0].any() or dx[out == 0].any())  # offsets only on nuclei, as the labels say
        for i in np.unique(out[out > 0]):
            m = out == i
            if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m.sum() < 50:
                continue  # cut by the crop: its centre is not the visible part's
            cy, cx = ndi.center_of_mass(m)
            yy, xx = np.nonzero(m)
            err = np.hypot(yy + dy[m] - cy, xx + dx[m] - cx)
            assert np.median(err) < 1.5, (i, np.median(err))
            seen += 1
    assert seen > 10


def test_zoom_factor_follows_the_range():
    lab = np.zeros((400, 400), np.int32)
    lab[100:140, 100:140] = 1  # a 40 x 40 square
    rng = np.random.default_rng(1)
    areas = []
    for _ in range(40):
        _, out = zoom_crop(lab.astype(np.float32), lab, (300, 300), rng, (0.5, 2.0))
        if (out == 1).any() and not ((out[0] == 1).any() or (out[-1] == 1).any() or (out[:, 0] == 1).any()
                                     or (out[:, -1] == 1).any()):
            areas.append((out == 1).sum())
    side = np.sqrt(areas) / 40
    assert side.min() >= 0.5 - 0.05 and side.max() <= 2.0 + 0.05
    assert side.min() < 0.8 and side.max() > 1.4  # both shrinking and enlarging are drawn


def test_zoomed_batches_have_consistent_targets(tmp_path):
    """With scale_prob 1 every crop is zoomed: the class target is the one drawn from the resized labels (a
    boundary ring around every interior), and training runs with it; the setting is saved with the model."""
    from medseg.cells.saved_config import load_config
    from medseg.cells.batches import training_batch
    from medseg.cells.train import CellTrainConfig, prepare_training_data, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1,
                          tune_fraction=0, scale_range=(0.7, 1.4), scale_prob=1.0)
    pairs, *_ = prepare_training_data(ds, cfg)
    for seed in range(5):
        x, y, d, w, o = training_batch(pairs, cfg, np.random.default_rng(seed))
        assert x.shape == y.shape == d.shape == w.shape == (2, 1, 64, 64) and o.shape == (2, 2, 64, 64)
        assert not (o * (y == 0)).any()  # offsets on nuclei only
        assert ((d[:, 0] > 0) <= (y[:, 0] > 0)).all()  # the distance target inside the nuclei
        interior = y[:, 0] == 1
        # no interior pixel touches the background directly (a boundary pixel always lies between)
        for b in range(2):
            grown = ndi.binary_dilation(interior[b], ndi.generate_binary_structure(2, 1))
            assert not (grown & (y[b, 0] == 0))[1:-1, 1:-1].any()
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    assert json.loads((run / "model.json").read_text())["config"]["scale_range"] == [0.7, 1.4]
    assert load_config(run)[1].scale_range == (0.7, 1.4)


def test_boundary_targets_of_zoomed_labels_separate_touching_nuclei():
    lab = np.zeros((20, 20), np.int32)
    lab[2:18, 2:10] = 1
    lab[2:18, 10:18] = 2
    _, out = zoom_crop(lab.astype(np.float32), lab, (20, 20), np.random.default_rng(0), (0.9, 0.9))
    t = boundary_targets(out)
    interiors = ndi.label(t == 1)[1]
    assert interiors == len(np.unique(out[out > 0])) == 2
