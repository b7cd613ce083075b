"""The offset head and centre voting (medseg.cells.targets.offset_targets, medseg.postprocess.votes): targets,
augmentation of vector maps, grouping, threshold search, training and flip TTA (issue 5)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from medseg.cells.targets import offset_targets
from medseg.errors import InputError
from medseg.evaluate.instances import instance_metrics
from medseg.postprocess.votes import follow_offsets, vote_instances
from conftest import data_path, linked_cell_dataset, linked_stack_dataset


def _real_labels(n=4):
    labs = sorted(data_path("dsb2018_fluo", "labels").glob("*.tif"))
    return [tifffile.imread(p) for p in labs[:: max(1, len(labs) // n)][:n]]


def test_offset_targets_point_to_each_objects_centroid():
    """Against scipy's center_of_mass, object by object, on real label maps."""
    for lab in _real_labels(2):
        off = offset_targets(lab)
        ids = np.unique(lab[lab > 0])
        centres = ndi.center_of_mass(np.ones(lab.shape), lab, ids)
        grid = np.indices(lab.shape, dtype=float)
        for i, c in zip(ids[::7], centres[::7]):
            m = lab == i
            for ax in range(lab.ndim):
                np.testing.assert_allclose(off[ax][m], c[ax] - grid[ax][m], atol=1e-3)
        assert not off[:, lab == 0].any()


@pytest.mark.parametrize("shape", [(24, 24), (5, 16, 16)])
def test_flips_and_rotations_turn_the_offsets_with_the_image(shape):
    """Augmented offsets equal the offsets recomputed from the augmented label map (every flip/rotation drawn)."""
    from skimage.measure import label

    from medseg.cells.augment import flip_rotate

    rng = np.random.default_rng(0)
    for _ in range(40):
        lab = label(rng.random(shape) > 0.6)
        out = flip_rotate(rng.random(shape), lab, rng, vectors=tuple(offset_targets(lab)))
        np.testing.assert_allclose(np.stack(out[2:]), offset_targets(out[1]), atol=1e-5)


def test_augment_crops_the_offsets_with_the_labels():
    from medseg.cells.augment import augment
    from medseg.cells.targets import boundary_targets

    lab = _real_labels(1)[0]
    img = lab.astype(np.float32)
    rng = np.random.default_rng(1)
    for size in [(64, 64), (600, 80)]:  # the second pads one axis
        for _ in range(5):
            x, y, dy, dx = augment(img, boundary_targets(lab), size, rng, vectors=tuple(offset_targets(lab)))
            assert x.shape == y.shape == dy.shape == dx.shape == size
            assert not (dy[y == 0].any() or dx[y == 0].any())


def test_following_exact_offsets_ends_at_the_centres():
    lab = _real_labels(1)[0]
    off = offset_targets(lab)
    pts = follow_offsets(off, lab > 0, iterations=3)
    ids = lab[lab > 0]
    centres = np.array(ndi.center_of_mass(np.ones(lab.shape), lab, np.arange(1, lab.max() + 1)))
    # one step lands on the centroid; a centroid outside a concave object stops where it left the object
    assert np.median(np.linalg.norm(pts.T - centres[ids - 1], axis=1)) < 1e-3


def test_votes_separate_touching_real_nuclei():
    """Exact offsets and the union of the nuclei as foreground: voting recovers the annotated instances, where
    connected components of the same foreground merge touching ones (real DSB2018 masks)."""
    for lab in _real_labels(4):
        fg = (lab > 0).astype(np.float32)
        cc = ndi.label(fg > 0.5)[0]
        voted = vote_instances(fg, offset_targets(lab), min_votes=4.0)
        m_vote, m_cc = instance_metrics(lab, voted, [0.5]), instance_metrics(lab, cc, [0.5])
        assert m_vote["ap@0.5"] >= 0.97 and m_vote["ap@0.5"] >= m_cc["ap@0.5"]
        assert abs(int(voted.max()) - len(np.unique(lab[lab > 0]))) <= 0.03 * lab.max()


def test_vote_instances_drops_centres_with_too_few_votes():
    lab = np.zeros((20, 30), int)
    lab[2:12, 2:12] = 1
    lab[15:17, 20:22] = 2  # 4 px: fewer voters than min_size
    out = vote_instances((lab > 0).astype(float), offset_targets(lab), min_size=8)
    assert int(out.max()) == 1 and not out[15:17, 20:22].any()
    assert vote_instances(np.zeros((5, 5)), np.zeros((2, 5, 5))).max() == 0


def test_tune_searches_vote_markers_when_the_model_has_an_offset_head():
    """Classes without any boundary signal at a contact: only the offsets separate the two nuclei, and the search
    must find the vote markers (mechanics on a synthetic map)."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig
    from medseg.cells.tune import SEED_GRID, THRESHOLD_GRID, VOTE_GRID, tune_thresholds

    lab = np.zeros((12, 21), np.uint16)
    lab[2:10, 2:10], lab[2:10, 10:18] = 1, 2
    p1, p2 = np.where(lab > 0, 0.97, 0.0), np.where(lab > 0, 0.02, 0.0)
    prob = np.concatenate([np.stack([1 - p1 - p2, p1, p2]), offset_targets(lab)])
    real = CellModel(None, CellTrainConfig(min_size_px=1, distance_head=False, offset_head=True), {})
    model = SimpleNamespace(cfg=real.cfg, probabilities=lambda image: prob, postprocess=real.postprocess)
    res = tune_thresholds(model, [SimpleNamespace(image=lab.astype(np.float32), labels=lab)])
    assert len(res["table"]) == len(THRESHOLD_GRID) * (len(SEED_GRID) + len(VOTE_GRID))
    assert all(r["count_error"] == 0.5 for r in res["table"] if r["seeds"] == "boundary")
    assert res["seeds"] == "votes" and res["ap"] == 1.0


def test_training_with_an_offset_head_and_flip_tta(tmp_path):
    """A few steps with the offset head; the model loads, counts with votes, and its flip TTA is equivariant: a
    mirrored image gets the mirrored maps with the mirrored axis's offsets negated."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1,
                          offset_head=True)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["out_channels"] == 6 and meta["config"]["offset_head"]
    model = CellModel.load(run, rescale=False)  # a 2-step model's sizes are noise: keep the maps on the image's grid
    img = tifffile.imread(ds / "labels" / f"{ids[2]}.tif").astype(np.float32)
    p = model.probabilities(img)
    assert p.shape == (6,) + img.shape
    assert model.postprocess(p, threshold=0.3, seed_threshold=2.0, seeds="votes").shape == img.shape
    model.tta = True
    crop = np.ascontiguousarray(img[:64, :64])  # one window: no window-placement asymmetry
    pt = model.probabilities(crop)
    flipped = model.probabilities(np.ascontiguousarray(crop[:, ::-1]))[:, :, ::-1]
    flipped[-1] = -flipped[-1]
    np.testing.assert_allclose(flipped, pt, atol=2e-3 * max(1.0, np.abs(pt).max()))
    with pytest.raises(InputError, match="offset head"):
        CellModel(model.net, CellTrainConfig(offset_head=False), meta).postprocess(p, seeds="votes")


def test_3d_training_with_an_offset_head(tmp_path):
    """A 3D cell model (the real nuclei stack, linked twice) trains a few steps with three offset channels and
    counts with votes and with the watershed."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    src = linked_stack_dataset(ds)
    cfg = CellTrainConfig(spatial_dims=3, patch_size=(16, 32, 32), batch_size=1, base_filters=4, max_steps=2,
                          max_minutes=5, threads=1, tune_fraction=0)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    model = CellModel.load(run)
    stack = tifffile.imread(src / "img3d.tif").astype(np.float32)
    p = model.probabilities(stack)
    assert p.shape == (7,) + stack.shape  # 3 classes, distance, offsets along z, y, x
    assert model.segment(stack).shape == stack.shape
    assert model.postprocess(p, threshold=0.3, seed_threshold=8.0, seeds="votes").shape == stack.shape
