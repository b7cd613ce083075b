"""Training mechanics against independent computations (audit): augmentation geometry, patch sampling, the network's
patch constraints, validation Dice = ``medseg evaluate`` = numpy on the written predictions, fold and seed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from conftest import assert_clean_error, run_cli
from test_train import read_log, tiny_plan

AUG = {"rotate_deg": 25, "scale": [0.8, 1.25], "intensity": False, "gamma": False, "noise": 0, "prob": 0.7}


def _mm_coords(shape, spacing) -> np.ndarray:
    """Voxel centres in mm about the patch centre, one channel per axis."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


@pytest.mark.parametrize("shape, spacing", [((16, 20, 24), (3.0, 0.8, 0.8)), ((24, 30), (0.7, 1.3))])
def test_augment_is_a_similarity_in_mm_and_labels_follow_their_voxels(shape, spacing):
    """Image channels = coordinates: where a sample stayed inside the patch, the map from output to input mm is a
    rotation times one scale (least squares, numpy), and every label is the label of the input voxel nearest to where
    the image was sampled (flips included); every channel moves alike; no new label values."""
    from medseg.train.sampling import augment

    dims, rng, b = len(shape), np.random.default_rng(0), 8
    lab = np.zeros(shape, np.int64)
    for k in (1, 2, 3):
        for _ in range(3):
            lo = [int(rng.integers(0, n - 4)) for n in shape]
            lab[tuple(slice(a, a + int(rng.integers(2, 8))) for a in lo)] = k
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    chans = np.concatenate([_mm_coords(shape, spacing), index + 1, np.ones((1, *shape), np.float32)])
    x = torch.from_numpy(chans)[None].repeat(b, *[1] * (dims + 1))
    y = torch.from_numpy(lab)[None].repeat(b, *[1] * dims)
    cfg = {**AUG, "flip_axes": list(range(dims))}
    xa, ya = (t.numpy() for t in augment(x.clone(), y.clone(), torch.Generator().manual_seed(2), cfg, spacing))
    assert set(np.unique(ya)) <= set(np.unique(lab))
    out_mm = _mm_coords(shape, spacing).reshape(dims, -1).T
    for i in range(b):
        inside = xa[i, -1] > 0.9999  # the ones channel: sampled wholly within the input
        a = np.c_[out_mm[inside.ravel()], np.ones(inside.sum())]
        sol = np.linalg.lstsq(a, xa[i, :dims].reshape(dims, -1).T[inside.ravel()], rcond=None)[0]
        m = sol[:-1].T
        if not np.allclose(np.abs(m), np.eye(dims), atol=1e-4):  # flips alone are checked by the labels below
            scale = abs(np.linalg.det(m)) ** (1 / dims)
            assert np.allclose(m @ m.T, scale ** 2 * np.eye(dims), atol=1e-3 * scale ** 2)
            assert 0.8 - 1e-4 <= 1 / scale <= 1.25 + 1e-4
        src = xa[i, dims:2 * dims] - 1  # input voxel index sampled (bilinear of a linear function: exact)
        tie = (np.abs(np.abs(src - np.rint(src)) - 0.5) < 1e-3).any(0)
        ok = inside & ~tie
        nearest = lab[tuple(np.clip(np.rint(s).astype(int), 0, n - 1) for s, n in zip(src, shape))]
        assert np.array_equal(ya[i][ok], nearest[ok])


def test_foreground_patches_pick_each_class_equally():
    """Four classes of 1 to 5120 voxels far apart (a patch holds at most one): each is in about a quarter of the
    foreground-centred patches; uniform patches find the 1-voxel class almost never."""
    from medseg.train.sampling import CachedCase, foreground_index, sample_batch

    lab = torch.zeros(64, 64, 64, dtype=torch.int16)
    lab[2, 2, 2] = 1
    lab[55:60, 2:6, 2:6] = 2
    lab[2:12, 50:60, 2:12] = 3
    lab[40:56, 40:56, 40:60] = 4
    case = CachedCase("c", torch.zeros(1, 64, 64, 64), lab, foreground_index(lab))
    rng = np.random.default_rng(0)
    _, y = sample_batch([case], [12, 12, 12], 2000, rng, oversample=1.0)
    share = [float((y == k).flatten(1).any(1).float().mean()) for k in (1, 2, 3, 4)]
    assert all(0.22 < s < 0.28 for s in share), share
    _, y = sample_batch([case], [12, 12, 12], 2000, rng, oversample=0.0)
    assert float((y == 1).flatten(1).any(1).float().mean()) < 0.01


@pytest.mark.parametrize("batch, share, n_fg", [(2, 0.5, 1), (3, 0.33, 1), (4, 0.66, 3), (12, 0.33, 4), (1, 0.33, 1)])
def test_foreground_centred_patches_per_batch(batch, share, n_fg):
    """The documented count: max(1, round(share * batch)) patches (the last ones) hold a foreground voxel."""
    from medseg.train.sampling import CachedCase, foreground_index, sample_batch

    lab = torch.zeros(40, 40, 40, dtype=torch.int16)
    lab[20, 20, 20] = 1  # a single voxel: a uniform 8^3 patch holds it with probability < 1 %
    case = CachedCase("c", torch.zeros(1, 40, 40, 40), lab, foreground_index(lab))
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, y = sample_batch([case], [8, 8, 8], batch, rng, share)
        hits = y.flatten(1).any(1)
        assert hits[batch - n_fg:].all() and hits.sum() <= n_fg + 1


def test_padding_empty_cases_and_patches_larger_than_the_case():
    """pad_to pads image and label with 0 alike (every channel), keeps the foreground index on its voxels; a case
    without foreground and smaller than the patch still gives full-size background patches."""
    from medseg.train.sampling import CachedCase, foreground_index, pad_to, sample_batch

    lab = torch.full((3, 4, 5), 2, dtype=torch.int16)
    p = pad_to(CachedCase("s", torch.full((2, 3, 4, 5), 7.0), lab, foreground_index(lab)), [8, 9, 8])
    assert p.image.shape == (2, 8, 9, 8) and set(p.image.unique().tolist()) == {0.0, 7.0}
    assert all(torch.equal(p.image[c] == 7, p.label == 2) for c in range(2))
    assert {tuple(v) for v in p.fg[2]} == {tuple(v) for v in np.argwhere(p.label.numpy() == 2)}
    empty = torch.zeros(1, 5, 6, dtype=torch.int16)  # 2D plan: slice axis first, size 1
    e = pad_to(CachedCase("e", torch.randn(1, 1, 5, 6), empty, foreground_index(empty)), [1, 8, 8])
    x, y = sample_batch([e], [1, 8, 8], 3, np.random.default_rng(0), 1.0, squeeze_first=True)
    assert x.shape == (3, 1, 8, 8) and not y.any()


def test_patches_the_network_cannot_run_on_are_input_errors(one_torch_thread):
    """A patch either builds a network that runs (deep supervision, training mode) or is an InputError: never a
    MONAI ValueError or a tensor-size RuntimeError in the first iteration (e.g. 36 halves to an odd 9)."""
    from medseg.errors import InputError
    from medseg.train.network import build_network

    for size in [(8, 8), (12, 15), (16, 16), (18, 18), (36, 40), (20, 28), (9, 40), (24, 40), (40, 18), (64, 48)]:
        try:
            net = build_network(2, 1, 2, list(size), [1.0, 1.0], base_filters=2, max_filters=4, deep_supervision=True)
        except InputError:
            continue
        with torch.no_grad():
            out = net.train()(torch.zeros(2, 1, *size))  # (B, heads, K, *S)
            assert out.shape[2:] == (2, *size)


@pytest.mark.parametrize("edit, needle", [({"patch_size": [36, 36, 36]}, "multiple of [8, 8, 8]"),
                                          ({"patch_size": [12, 12, 12], "deep_supervision": True}, "too small")])
def test_train_refuses_a_patch_its_network_cannot_run_on(tmp_path, edit, needle):
    plan = tiny_plan(tmp_path, n_cases=3, max_epochs=1, **edit)
    res = run_cli("train", plan, "-o", tmp_path / "run", "--device", "cpu", "-q")
    assert_clean_error(res, needle)


def _dice(p, r, k):
    return 2 * np.sum((p == k) & (r == k)) / (np.sum(p == k) + np.sum(r == k))


def test_logged_validation_dice_equals_evaluate_and_numpy_on_the_fold(tmp_path):
    """--fold 1 validates on splits.json's fold 1: the logged per-class Dice equals `medseg evaluate` and a numpy Dice
    of the final model's predictions of exactly those cases (the last epoch validates the final weights)."""
    plan = tiny_plan(tmp_path, n_cases=6, num_folds=3, max_epochs=2, iterations_per_epoch=4, val_every=1)
    run = tmp_path / "run"
    assert run_cli("train", plan, "-o", run, "--fold", "1", "--device", "cpu", "-q").code == 0
    split = json.loads((run / "splits.json").read_text())[1]
    ds = yaml.safe_load(plan.read_text())["dataset"]
    inp, ref = tmp_path / "in", tmp_path / "ref"
    inp.mkdir(), ref.mkdir()
    for case in split["val"]:
        (inp / f"{case}.nii.gz").symlink_to(f"{ds}/imagesTr/{case}.nii.gz")
        (ref / f"{case}.nii.gz").symlink_to(f"{ds}/labelsTr/{case}.nii.gz")
    assert run_cli("predict", "-m", run, "-i", inp, "-o", tmp_path / "pred", "--device", "cpu").code == 0
    assert run_cli("evaluate", "--pred", tmp_path / "pred", "--ref", ref, "--labels", f"{ds}/dataset.json",
                   "-o", tmp_path / "eval").code == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    logged = read_log(run)[-1]
    assert float(logged["val_mean"]) > 0  # not a trivial agreement on empty predictions
    for k, name in ((1, "anterior"), (2, "posterior")):
        ours = np.mean([_dice(np.asarray(nib.load(tmp_path / "pred" / f"{c}.nii.gz").dataobj),
                              np.asarray(nib.load(ref / f"{c}.nii.gz").dataobj), k) for c in split["val"]])
        assert float(logged[f"val_{name}"]) == pytest.approx(ours, abs=1e-5)
        assert metrics["mean"][name]["dice"] == pytest.approx(ours, abs=1e-9)


def test_same_seed_same_weights_another_seed_other_weights(tmp_path):
    def weights(seed):
        plan = tiny_plan(tmp_path / f"run{len(list(tmp_path.iterdir()))}", n_cases=3, max_epochs=1, seed=seed)
        run = plan.parent / "run"
        assert run_cli("train", plan, "-o", run, "--device", "cpu", "-q").code == 0
        return torch.load(run / "checkpoint_latest.pt", weights_only=True)["model"]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_fitted_patches_are_patches_the_network_runs_on():
    """Both patch fitters return patches whose every axis the network's strides divide (they rounded up once, or
    not at all after shrinking: 200x200x30 at 1 mm gave [208, 208, 32], whose strides need multiples of 32)."""
    from medseg.cells.config import fit_patch as fit_cell_patch
    from medseg.plan.planner import fit_patch
    from medseg.train.network import check_patch, dynunet_strides

    def divides(patch, spacing=None, rule="nnunet"):  # the planner's rule (recorded in plans); cells: the older
        _, strides = dynunet_strides(patch, spacing, rule=rule)
        return all(p % int(np.prod([st[i] for st in strides])) == 0 for i, p in enumerate(patch))

    assert divides(fit_patch([200, 200, 30], [1.0] * 3, 3, 1e12, 32, 2), [1.0] * 3)
    assert divides(fit_patch([200, 200, 15], [1.0, 1.0, 3.0], 3, 2e9, 32, 2), [1.0, 1.0, 3.0])
    assert divides(fit_cell_patch([(20, 40, 90)]), rule="finest")
    rng = np.random.default_rng(0)
    for _ in range(300):
        dims = int(rng.choice([2, 3]))
        sp = [float(x) for x in rng.choice([0.5, 0.8, 1.0, 1.5, 3.0, 5.0], dims)]
        shape = [int(x) for x in rng.integers(16, 400, dims)]
        patch = fit_patch(shape, sp, dims, float(rng.choice([1e8, 2e9, 1e12])), 32, 2,
                          None if rng.random() < 0.5 else float(rng.choice([32 ** 3, 64 ** 3, 256 ** 2])))
        assert divides(patch, sp), (shape, sp, patch)
        cell = fit_cell_patch([tuple(int(x) for x in rng.integers(5, 300, 3))])
        check_patch(cell)
