"""Audit of the training data pipeline (session 46): the disk cache against the in-RAM path, preprocessing against
scipy, and batches across processes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch


def _dataset(root: Path) -> Path:
    """Two 12^3 cases; case ``b`` holds class 2 as well as class 1."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "x", "2": "y"}}))
    rng = np.random.default_rng(0)
    for cid in ("a", "b"):
        lab = np.zeros((12, 12, 12), np.uint8)
        lab[2:5, 2:5, 2:5] = 1
        if cid == "b":
            lab[7:10, 7:10, 7:10] = 2
        nib.save(nib.Nifti1Image(rng.normal(size=lab.shape).astype(np.float32), np.eye(4)),
                 root / "imagesTr" / f"{cid}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"{cid}.nii.gz")
    return root


def test_disk_cache_hit_refuses_a_label_the_plan_lacks_as_ram_does(tmp_path, one_torch_thread):
    """A plan whose label list lost a class the data hold: in RAM an InputError names the label file; a disk cache
    written by the plan before the edit (its key holds no labels) returned the arrays unchecked, and training then
    crashed in the loss ('index 2 is out of bounds', exit 1) instead of exit 2."""
    from medseg.errors import InputError
    from medseg.plan.plan import Plan
    from medseg.train.cache import DiskCache, cache_cases
    from medseg.train.dataset import open_dataset

    cases = open_dataset(_dataset(tmp_path / "ds")).cases
    disk = DiskCache(tmp_path / "cache")
    full = Plan(labels={0: "background", 1: "x", 2: "y"}, patch_size=[8, 8, 8])
    cache_cases(full, cases, disk=disk, mode="disk")
    edited = Plan(labels={0: "background", 1: "x"}, patch_size=[8, 8, 8])
    messages = []
    for mode in ("memory", "disk", "auto"):
        with pytest.raises(InputError) as err:
            cache_cases(edited, cases, disk=disk, mode=mode, limit=1e12)
        messages.append(str(err.value))
    assert len(set(messages)) == 1 and "b.nii.gz" in messages[0] and "[2]" in messages[0]
    # the full plan still reads its cases from the cache, with class 2 where the label file has it
    again = cache_cases(full, cases, disk=disk, mode="disk")
    ref = np.asarray(nib.load(tmp_path / "ds" / "labelsTr" / "b.nii.gz").dataobj)
    assert not isinstance(again[1].label, torch.Tensor)  # memory-mapped: a hit
    assert np.array_equal(np.asarray(again[1].label) == 2, ref == 2)


@pytest.mark.parametrize("shape, spacing, target", [((10, 12, 7), (1.3, 0.7, 2.9), (1.0, 1.0, 1.0)),
                                                    ((21, 17, 9), (0.4, 0.45, 3.0), (0.6, 0.8, 1.5))])
def test_preprocess_equals_scipy_on_voxel_centres(shape, spacing, target, one_torch_thread):
    """Image: z-score (numpy, float64), then linear resampling with voxel centres fixed in mm, the edge repeated
    (scipy.ndimage.affine_transform); label: each class's mask resampled so, set where >= 0.5, no new classes. CT:
    clip, then the plan's mean and std."""
    from scipy import ndimage

    from medseg.plan.plan import Normalisation, Plan
    from medseg.train.preprocess import normalise, preprocess

    rng = np.random.default_rng(1)
    a = (rng.normal(size=(1, *shape)) * 40 + 90).astype(np.float32)
    lab = np.zeros(shape, np.int16)
    lab[2:7, 3:9, 1:5], lab[5:8, 8:11, 3:6] = 1, 3
    x, y = preprocess(a, spacing, Plan(target_spacing=list(target)), lab)
    out = tuple(x.shape[1:])
    assert out == tuple(int(round(n * s / t)) for n, s, t in zip(shape, spacing, target))
    z = (a[0] - a[0].astype(np.float64).mean()) / a[0].astype(np.float64).std()
    zoom = np.array(shape) / np.array(out)  # output voxel i sits at input (i + 0.5) * zoom - 0.5
    ref = ndimage.affine_transform(z, zoom, offset=0.5 * zoom - 0.5, output_shape=out, order=1, mode="nearest")
    np.testing.assert_allclose(x[0].numpy(), ref, atol=1e-5)
    # label: each class's mask resampled linearly the same way, the class set where it reaches 0.5 (nnU-Net's rule)
    lref, tie = np.zeros(out, np.int16), np.zeros(out, bool)
    for c in (1, 3):
        v = ndimage.affine_transform((lab == c).astype(np.float64), zoom, offset=0.5 * zoom - 0.5, output_shape=out,
                                     order=1, mode="nearest")
        lref[v >= 0.5] = c
        tie |= np.abs(v - 0.5) < 1e-6
    assert np.array_equal(y.numpy()[~tie], lref[~tie]) and set(np.unique(y.numpy())) == {0, 1, 3}
    ct = Plan(normalisation=[Normalisation("ct", clip=[60.0, 120.0], mean=85.0, std=20.0)])
    np.testing.assert_allclose(normalise(a, ct), (np.clip(a, 60, 120) - 85) / 20, atol=1e-6)


def test_label_centroid_in_mm_stays_put_at_2x_downsampling(one_torch_thread):
    """16 discs, one per slice, at random sub-voxel centres: their centroids in mm move by less than 0.1 mm on
    average when the in-plane spacing doubles (nnU-Net's per-class linear >= 0.5, now medseg's, gives about 0.03 mm;
    the nearest neighbour medseg used, ties taken upwards, -0.4 mm: half an old voxel, on both axes)."""
    from medseg.plan.plan import Plan
    from medseg.train.preprocess import preprocess

    g, n = np.random.default_rng(0), 16
    lab = np.zeros((40, 40, n), np.int16)
    yy, xx = np.mgrid[:40, :40]
    for k in range(n):
        cy, cx, r = g.uniform(15, 25), g.uniform(15, 25), g.uniform(6, 11)
        lab[..., k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    sp = np.array([0.8, 0.8])
    _, y = preprocess(np.zeros((1, *lab.shape), np.float32), [*sp, 2.0], Plan(target_spacing=[1.6, 1.6, 2.0]), lab)
    y = y.numpy()
    assert y.shape == (20, 20, n)
    shift = [(np.argwhere(y[..., k] == 1).mean(0) + 0.5) * 2 * sp - (np.argwhere(lab[..., k] == 1).mean(0) + 0.5) * sp
             for k in range(n)]
    assert np.abs(np.mean(shift, 0)).max() < 0.1


_BATCHES = """
import hashlib, sys, numpy as np, torch
torch.set_num_threads(1)
from medseg.plan.plan import DEFAULT_AUGMENT
from medseg.train.sampling import CachedCase, augment, foreground_index, sample_batch
g = np.random.default_rng(0)
lab = torch.from_numpy((g.random((30, 26, 20)) > 0.97).astype(np.int16) * 2)
case = CachedCase("a", torch.from_numpy(g.normal(size=(2, 30, 26, 20)).astype(np.float32)), lab, foreground_index(lab))
rng, gen, h = np.random.default_rng(5), torch.Generator().manual_seed(7), hashlib.sha256()
cfg = {**DEFAULT_AUGMENT, "prob": 0.5, "flip_axes": [0, 1, 2]}
for _ in range(4):
    x, y = augment(*sample_batch([case], [16, 16, 12], 3, rng, 0.5), gen, cfg, (1.0, 0.8, 2.5))
    h.update(x.numpy().tobytes()); h.update(y.numpy().tobytes())
print(h.hexdigest())
"""


def test_same_seeds_give_bitwise_equal_augmented_batches_in_two_processes(one_torch_thread):
    """Sampling and augmentation from the same seeds in two fresh interpreters: the same bytes."""
    import medseg

    env = {**os.environ, "PYTHONPATH": str(Path(medseg.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", _BATCHES], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-500:]
    digests = {r.stdout.strip() for r in runs}
    assert len(digests) == 1 and len(hashlib.sha256().hexdigest()) == len(digests.pop())


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 1.3)])
def test_a_rotated_patch_is_drawn_from_the_image_around_it(spacing, one_torch_thread):
    """Rotation and zoom-out reach beyond the patch: its corners are the image around it, turned about the patch
    centre in mm (scipy's affine_transform of the whole image), not zeros (5.8 % of the default plan's training
    voxels were such zeros, which on a CT look like soft tissue labelled background)."""
    from scipy import ndimage

    from medseg.train.sampling import CachedCase, _draw_start, augment, context_margin, foreground_index, sample_batch

    yy, xx = np.mgrid[:90, :80].astype(np.float64)
    img = np.sin(yy / 7.0) + np.cos(xx / 5.0) + 3.0  # smooth, nowhere 0
    lab = (img > 3.5).astype(np.int16)
    case = CachedCase("a", torch.from_numpy(img[None].astype(np.float32)), torch.from_numpy(lab),
                      foreground_index(torch.from_numpy(lab)))
    size, cfg = [32, 28], {"rotate_deg": 20.0, "scale": [0.8, 0.8], "flip_axes": [], "intensity": False,
                           "gamma": False, "noise": 0, "prob": 1.0}
    for seed in range(4):
        x, y = sample_batch([case], size, 1, np.random.default_rng(seed), 0.0,
                            margin=context_margin(size, cfg, spacing))
        rng = np.random.default_rng(seed)
        rng.integers(1)  # sample_batch's draw of the case
        c0 = np.array(_draw_start(case, size, rng, False))  # the patch's first voxel in the image
        g = torch.Generator().manual_seed(seed)
        draws = [float(torch.rand(1, generator=g)) for _ in range(3)]  # augment's: rotate?, scale?, the angle
        angle = math.radians(-20 + 40 * draws[2])
        xa, ya = augment(x, y, torch.Generator().manual_seed(seed), cfg, spacing, size=size)
        assert tuple(xa.shape[2:]) == tuple(size)
        # augment turns (x, y) = (axis 1, axis 0) about the patch centre, in mm; scale 0.8 zooms out
        rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        sp = np.array(spacing)
        m = np.diag(1 / sp) @ rot @ np.diag(sp) / 0.8  # output voxel offset -> input voxel offset
        half = (np.array(size) - 1) / 2
        ref = ndimage.affine_transform(img, m, offset=c0 + half - m @ half, output_shape=size, order=1,
                                       mode="grid-constant", cval=0.0)  # zeros only beyond the whole image
        out = xa[0, 0].numpy()
        assert np.abs(out - ref).max() < 1e-3
        src = np.stack(np.meshgrid(*map(np.arange, size), indexing="ij"), -1) @ m.T + (c0 + half - m @ half)
        beyond_patch = ((src < c0 - 0.5) | (src > c0 + np.array(size) - 0.5)).any(-1)
        in_image = ((src >= 0) & (src <= np.array(img.shape) - 1)).all(-1)
        assert (beyond_patch & in_image).sum() > 20 and (out[beyond_patch & in_image] > 1.0).all()


def test_context_is_cropped_only_where_a_case_has_it(one_torch_thread):
    """A case no larger than the patch (hippocampus crops padded to it) has no image around its patches: the batch
    and its augmentation equal those drawn without context, and the crop is not enlarged with zeros."""
    from medseg.train.sampling import CachedCase, augment, context_margin, foreground_index, sample_batch

    g = np.random.default_rng(0)
    lab = torch.from_numpy((g.random((40, 56, 40)) < 0.05).astype(np.int16))
    case = CachedCase("a", torch.randn(1, 40, 56, 40, generator=torch.Generator().manual_seed(0)), lab,
                      foreground_index(lab))
    cfg = {"rotate_deg": 15.0, "scale": [0.9, 1.1], "flip_axes": [], "intensity": True, "gamma": True,
           "noise": 0.05, "prob": 0.5}
    size = [40, 56, 40]
    margin = context_margin(size, cfg, [1.0, 1.0, 1.0])
    assert min(margin) > 0
    for seed in range(5):
        plain = sample_batch([case], size, 2, np.random.default_rng(seed), 0.33)
        ctx = sample_batch([case], size, 2, np.random.default_rng(seed), 0.33, margin=margin)
        assert tuple(ctx[0].shape[2:]) == tuple(size)
        a = augment(*plain, torch.Generator().manual_seed(seed), cfg, [1.0, 1.0, 1.0])
        b = augment(*ctx, torch.Generator().manual_seed(seed), cfg, [1.0, 1.0, 1.0], size=size)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
