"""Contact weight map (U-Net paper, eq. 2) and the weighted cell loss (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from medseg.cells.targets import contact_weights
from conftest import assert_clean_error, data_path, linked_cell_dataset, run_cli


def _brute_force(labels, w0, sigma):
    """d1, d2 from one full-image distance transform per object, sorted per pixel."""
    ids = [i for i in np.unique(labels) if i]
    d = np.sort(np.stack([ndi.distance_transform_edt(labels != i) for i in ids]), axis=0)
    d1, d2 = d[0], d[1] if len(ids) > 1 else np.full(labels.shape, np.inf)
    return w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), d1 + d2


def test_contact_weights_against_brute_force_on_real_labels():
    labs = sorted(data_path("dsb2018_fluo", "labels").glob("*.tif"))
    # images with touching nuclei: the first few whose objects share an edge
    checked = 0
    for p in labs:
        lab = tifffile.imread(p)
        if len(np.unique(lab)) > 60 or lab.size > 300_000:
            continue  # keep the brute force cheap
        w = contact_weights(lab, w0=10.0, sigma=5.0)
        ref, dsum = _brute_force(lab, 10.0, 5.0)
        near = dsum <= 15.0  # within the map's 3-sigma reach it must be exact
        np.testing.assert_allclose(w[near], ref[near], rtol=1e-5, atol=1e-5)
        assert np.all(w[~near] <= 10.0 * np.exp(-4.5) + 1e-6)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_contact_weights_are_high_between_touching_objects_only():
    lab = np.zeros((40, 60), int)
    lab[5:15, 5:15] = 1
    lab[5:15, 15:25] = 2  # touches 1
    lab[25:35, 45:55] = 3  # isolated
    w = contact_weights(lab, w0=10.0, sigma=5.0, spacing=(1.0, 1.0))
    assert w[10, 14] > 9 and w[10, 15] > 9  # either side of the contact
    assert w[30, 50] < 1e-3  # inside the isolated object: no neighbour within reach
    assert w[10, 6] < w[10, 12] < w[10, 14]  # decays away from the contact
    np.testing.assert_allclose(w[:, :20], w[:, 29:9:-1], atol=1e-5)  # symmetric about the contact
    assert contact_weights(np.zeros((8, 8), int)).max() == 0
    # anisotropic spacing: 3D distances in physical units
    lab3 = np.zeros((6, 10, 10), int)
    lab3[1:3, 2:8, 2:8] = 1
    lab3[3:5, 2:8, 2:8] = 2
    w3 = contact_weights(lab3, sigma=2.0, spacing=(2.0, 1.0, 1.0))
    assert w3[2, 5, 5] > w3[1, 5, 5] > w3[0, 5, 5]


def test_weighted_loss_is_dice_ce_without_weights_and_weights_the_cross_entropy():
    import torch
    import torch.nn.functional as F
    from monai.losses import DiceCELoss, DiceLoss

    from medseg.cells.batches import cell_loss

    torch.manual_seed(0)
    out = torch.randn(2, 4, 16, 16)
    y = torch.randint(0, 3, (2, 1, 16, 16))
    opts = dict(to_onehot_y=True, softmax=True, include_background=True, smooth_nr=1e-5, smooth_dr=1e-5)
    dice = DiceLoss(**opts)
    ref = DiceCELoss(**opts)(out[:, :3], y)
    torch.testing.assert_close(cell_loss(out, y, dice), ref)
    w = torch.zeros(2, 1, 16, 16)
    w[:, :, 4:8] = 9.0
    ce = F.cross_entropy(out[:, :3], y[:, 0], reduction="none")
    expected = dice(out[:, :3], y) + (ce * (1 + w[:, 0])).mean()
    torch.testing.assert_close(cell_loss(out, y, dice, contact=w), expected)
    d = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(cell_loss(out, y, dice, distance=d, distance_weight=0.5),
                               ref + 0.5 * F.mse_loss(torch.sigmoid(out[:, 3:]), d))


def test_training_with_contact_weights(tmp_path):
    """A few steps with the weight map on real images: the batch carries aligned weights, the setting is saved."""
    from medseg.cells.saved_config import load_config
    from medseg.cells.batches import training_batch
    from medseg.cells.train import CellTrainConfig, prepare_training_data, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1,
                          tune_fraction=0, contact_weight=10.0)
    pairs, *_ = prepare_training_data(ds, cfg)
    img, tgt, dist, weight, _, _ = pairs[0]
    assert dist is not None and weight.shape == tgt.shape and weight.max() > 5
    # the weights travel with the crop, flips and rotations: with the target itself as "weights", they must agree
    probe = [(im, t, dd, t.astype(np.float32), None, lab) for im, t, dd, _, _, lab in pairs]
    for seed in range(5):
        x, y, d, w, o = training_batch(probe, cfg, np.random.default_rng(seed))
        assert x.shape == w.shape == d.shape == y.shape == (2, 1, 64, 64) and o is None
        np.testing.assert_array_equal(w, y)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    assert json.loads((run / "model.json").read_text())["config"]["contact_weight"] == 10.0
    _, back = load_config(run)
    assert back.contact_weight == 10.0
    off = CellTrainConfig(patch_size=(64, 64), tune_fraction=0, contact_weight=0.0)
    assert prepare_training_data(ds, off)[0][0][3] is None


@pytest.mark.parametrize("option, value", [("--contact-weight", v) for v in ("-1", "nan", "inf")]
                         + [("--scale-range", v) for v in ("1.2", "a,b", "0,1", "1.5,1.2", "nan,1")])
def test_cli_rejects_a_bad_training_option(tmp_path, option, value):
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    assert_clean_error(run_cli("cells", "train", ds, "-o", tmp_path / "run", option, value), option)
    assert not (tmp_path / "run").exists()


def test_small_object_weights_on_real_labels_add_to_the_contact_map(tmp_path):
    """small_weight weighs exactly the nuclei under small_size_px (and the 1-pixel ring around them), on top of the
    contact map."""
    from medseg.cells.data import list_cases
    from medseg.cells.splits import dataset_split
    from medseg.cells.train import CellTrainConfig, prepare_training_data

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    train_ids = [c.case for c in dataset_split(ds, list_cases(ds))["train"]]
    labels = [tifffile.imread(ds / "labels" / f"{cid}.tif") for cid in train_ids]
    sizes = np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels])
    limit = float(np.median(sizes[sizes > 0]))  # about half the nuclei count as small
    base = dict(patch_size=(64, 64), tune_fraction=0)
    contact = prepare_training_data(ds, CellTrainConfig(**base))[0]
    only = prepare_training_data(ds, CellTrainConfig(**base, contact_weight=0, small_weight=4.0,
                                                     small_size_px=limit))[0]
    both = prepare_training_data(ds, CellTrainConfig(**base, small_weight=4.0, small_size_px=limit))[0]
    kinds = set()
    for lab, c, o, b in zip(labels, contact, only, both):
        np.testing.assert_allclose(b[3], c[3] + o[3], rtol=1e-6)
        counts = np.bincount(lab.ravel())
        small = (lab > 0) & (counts[lab] < limit)
        kinds |= {"small"} if small.any() else set()
        kinds |= {"large"} if ((lab > 0) & ~small).any() else set()
        near = ndi.binary_dilation(small, np.ones((3, 3), bool))
        assert np.all(o[3][near] == 4.0) and np.all(o[3][~near] == 0.0)  # the large nuclei among the latter
    assert kinds == {"small", "large"}
