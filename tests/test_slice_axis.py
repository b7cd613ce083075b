"""2D plans: one slice axis, the plan's, everywhere (plan, preprocessing, cache, training, prediction), and plans
that follow a permutation of the data's axes. Synthetic data only (mechanics); each test runs in seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from test_plan import _fp


def _affine(spacing, degrees: float = 0.0) -> np.ndarray:
    """Voxel sizes ``spacing``, rotated by ``degrees`` about the third world axis (an oblique scan)."""
    t = np.radians(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(spacing)
    return a


def _volume(shape, seed: int):
    """A bright ellipsoid (label 1, its +x part label 2) in noise."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = sum(x ** 2 for x in g)
    lab = (r < 0.5).astype(np.uint8)
    lab[(g[0] > 0.2) & (r < 0.5)] = 2
    return (lab * 100 + rng.normal(0, 10, shape)).astype(np.float32), lab


def _dataset(root: Path, cases, transpose=None) -> Path:
    """An MSD folder of ``cases`` = [(id, shape, spacing, degrees)]; ``transpose`` permutes every case's axes (the
    same voxels and world geometry: the affine's columns are permuted alike)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, (cid, shape, spacing, degrees) in enumerate(cases):
        img, lab = _volume(shape, i)
        aff = _affine(spacing, degrees)
        if transpose is not None:
            img, lab = img.transpose(transpose), lab.transpose(transpose)
            aff[:3, :3] = aff[:3, list(transpose)]
        nib.save(nib.Nifti1Image(img, aff), root / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": root.name, "modality": {"0": "MRI"},
                                                    "labels": {"0": "background", "1": "a", "2": "b"}}))
    return root


def _plan(**kw):
    from medseg.plan.plan import Plan

    base = dict(channels=["MRI"], labels={0: "background", 1: "a", 2: "b"}, spatial_dims=2, patch_size=[16, 16],
                target_spacing=[1.0, 1.0, 4.0], base_filters=4, max_filters=8, batch_size=2, bf16=False,
                iterations_per_epoch=2, max_epochs=1, num_folds=2, num_threads=1, val_every=1, cache="memory")
    return Plan(**{**base, **kw}).validate()


# --- one slice axis: the plan's ------------------------------------------------------------------------------------

def test_network_grid_of_a_2d_plan_keeps_the_plans_slice_axis():
    """A case whose own coarsest axis is not the plan's (a thin-slice case in a thick-slice dataset, a single-slice
    file) keeps the plan's slice axis and is resampled in-plane; it was sliced along its own first axis instead."""
    from medseg.train.preprocess import network_shape

    plan = _plan()  # slices along the last axis
    assert network_shape((32, 32, 8), (1.0, 1.0, 4.0), plan) == (32, 32, 8)
    assert network_shape((32, 32, 32), (1.0, 1.0, 1.0), plan) == (32, 32, 32)  # was (32, 32, 8)
    assert network_shape((32, 32, 32), (1.0, 1.2, 0.9), plan) == (32, 38, 32)  # was (32, 32, 7)
    assert network_shape((24, 24, 1), (1.5, 1.5, 1.0), plan) == (36, 36, 1)  # was (24, 36, 1)


def test_cached_cases_of_a_2d_plan_are_all_sliced_along_the_plans_axis(tmp_path):
    """Every training case is cut into slices along the axis the network and the augmentation were built for."""
    from medseg.train.cache import cache_cases
    from medseg.train.dataset import open_dataset

    ds = _dataset(tmp_path / "ds", [("thick0", (32, 28, 8), (1, 1, 4), 0), ("thick1", (32, 28, 8), (1, 1, 4), 0),
                                    ("thin", (32, 28, 24), (1, 1, 1), 0)])
    plan = _plan(dataset=str(ds))
    shapes = [tuple(c.image.shape) for c in cache_cases(plan, open_dataset(ds).cases)]
    assert shapes == [(1, 8, 32, 28), (1, 8, 32, 28), (1, 24, 32, 28)]  # thin was (1, 32, 28, 16): along x


def test_hand_edited_isotropic_2d_plan_slices_every_case_alike(tmp_path):
    """spatial_dims: 2 written by hand on isotropic data: the slice axis must not depend on the rounding of each
    case's spacing (an oblique affine gives 0.99999998 mm in-plane and slices along z; a straight one along x)."""
    from medseg.train.cache import cache_cases
    from medseg.train.dataset import open_dataset

    ds = _dataset(tmp_path / "ds", [(f"iso{d}", (24, 28, 12), (1, 1, 1), d) for d in (0, 10, 30)])
    plan = _plan(dataset=str(ds), target_spacing=[1.0, 1.0, 1.0])
    shapes = {tuple(c.image.shape) for c in cache_cases(plan, open_dataset(ds).cases)}
    assert len(shapes) == 1, shapes  # was {(1, 24, 28, 16), (1, 12, 24, 28)}


def test_prediction_of_a_2d_plan_slices_along_the_plans_axis(monkeypatch):
    """A single-slice input (pixdim 1.0 on its singleton axis, 1.5 mm pixels) is one slice for the network, not 24
    slices of 36 x 1 voxels; the label map still has exactly the input's shape."""
    from medseg.infer import predict as predict_mod
    from medseg.train.artifact import build_from_plan

    plan = _plan()
    seen = []
    real = predict_mod.sliding_window

    def spy(network, x, patch, *a, **kw):
        seen.append((tuple(x.shape), list(patch)))
        return real(network, x, patch, *a, **kw)

    monkeypatch.setattr(predict_mod, "sliding_window", spy)
    arr = np.random.default_rng(0).random((1, 24, 24, 1), dtype=np.float32)
    lab, _ = predict_mod.predict_labels(build_from_plan(plan).eval(), plan, arr, (1.5, 1.5, 1.0))
    assert lab.shape == (24, 24, 1)
    assert seen == [((1, 1, 36, 36), [1, 16, 16])]  # was ((1, 24, 36, 1), ...)


# --- plans follow a permutation of the data's axes ---------------------------------------------------------------

def _equivariant(plan_a, plan_b, perm):
    """plan_b is plan_a for the data transposed by ``perm`` (axis i of B is axis perm[i] of A)."""
    assert plan_b.target_spacing == [plan_a.target_spacing[p] for p in perm]
    assert plan_b.spatial_dims == plan_a.spatial_dims
    if plan_a.spatial_dims == 3:
        assert plan_b.patch_size == [plan_a.patch_size[p] for p in perm]
        return
    ax_a, ax_b = (int(np.argmax(p.target_spacing)) for p in (plan_a, plan_b))
    assert perm[ax_b] == ax_a, "the two plans slice different axes of the same data"
    in_a = [i for i in range(3) if i != ax_a]
    in_b = [perm[i] for i in range(3) if i != ax_b]  # B's in-plane axes, as axes of A
    assert plan_b.patch_size == [plan_a.patch_size[in_a.index(a)] for a in in_b]


@pytest.mark.parametrize("perm", [(2, 0, 1), (1, 2, 0), (0, 2, 1), (1, 0, 2)])
def test_2d_plan_of_permuted_data_is_the_permuted_plan(perm):
    """Thick slices along any axis: the same plan up to the permutation (1f8d55a, for every permutation)."""
    from medseg.plan.planner import make_plan
    from medseg.train.dataset import Dataset

    ds = Dataset(Path("d"), {"labels": {"0": "background", "1": "a"}})
    sp, sh = [0.7, 0.9, 5.0], [300, 200, 40]
    a = make_plan(ds, fingerprint=_fp([sp] * 2, [sh] * 2), memory_gb=4)
    b = make_plan(ds, fingerprint=_fp([[sp[p] for p in perm]] * 2, [[sh[p] for p in perm]] * 2), memory_gb=4)
    _equivariant(a, b, perm)


def test_plan_with_two_equally_coarse_axes_follows_a_permutation():
    """5 x 5 x 1 mm voxels: a tie for the slice axis. Swapping the two coarse axes must not make the plan slice
    another axis of the same data (it sliced the first coarse axis in index order: patch [64, 224] vs [20, 224])."""
    from medseg.plan.planner import make_plan
    from medseg.train.dataset import Dataset

    ds = Dataset(Path("d"), {"labels": {"0": "background", "1": "a"}})
    a = make_plan(ds, fingerprint=_fp([[5.0, 5.0, 1.0]] * 2, [[20, 60, 200]] * 2), memory_gb=4)
    b = make_plan(ds, fingerprint=_fp([[5.0, 5.0, 1.0]] * 2, [[60, 20, 200]] * 2), memory_gb=4)
    _equivariant(a, b, (1, 0, 2))


@pytest.mark.parametrize("shape,spacing", [([96, 160], [0.8, 0.8]), ([128, 128, 128], [1.0, 1.0, 1.0])])
def test_fit_patch_follows_a_permutation(shape, spacing):
    """Shrinking ties (equal extents in mm) went to the lowest axis: [96, 160] gave [64, 80] and so did [160, 96]."""
    from medseg.plan.planner import fit_patch

    budget = 2e8 if len(shape) == 2 else 2e9
    batch = 12 if len(shape) == 2 else 2
    p = fit_patch(shape, spacing, len(shape), budget, 32, batch)
    q = fit_patch(shape[::-1], spacing[::-1], len(shape), budget, 32, batch)
    assert q == p[::-1]


def test_2d_training_and_prediction_follow_a_permutation(tmp_path):
    """Guard: the same data with its slices first instead of last trains the same losses and predicts the same
    labels, transposed, on exactly the input's shape and affine (passes today; fixes must keep it)."""
    from medseg.infer.predict import predict_image
    from medseg.io.readers import read_image
    from medseg.train.artifact import load_model
    from medseg.train.trainer import train

    cases = [(f"c{i}", (32, 28, 8), (1.0, 1.1, 4.0), 0) for i in range(4)]
    runs = {}
    for name, perm in (("last", None), ("first", (2, 0, 1))):
        ds = _dataset(tmp_path / name, cases, perm)
        target = [1.0, 1.1, 4.0] if perm is None else [4.0, 1.0, 1.1]
        plan = _plan(dataset=str(ds), target_spacing=target, augment={"rotate_deg": 10, "scale": [0.9, 1.1],
                                                                         "flip_axes": [0], "prob": 0.5})
        res = train(plan, tmp_path / f"run_{name}", device="cpu", progress=False, num_threads=1)
        img = read_image(ds / "imagesTr" / "c0.nii.gz")
        lab, _ = predict_image(load_model(res.model_path).build(), plan, img)
        assert lab.shape == img.shape and np.array_equal(lab.affine, img.affine)
        with open(res.run_dir / "log.csv") as f:
            row = next(csv.DictReader(f))
        runs[name] = ((row["train_loss"], row["val_mean"]), lab.array)
    assert runs["first"][0] == runs["last"][0]  # the epoch's train loss and validation Dice
    assert np.array_equal(runs["first"][1], runs["last"][1].transpose(2, 0, 1))
