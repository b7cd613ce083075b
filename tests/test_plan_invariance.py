"""Invariance of the fingerprint, plan and preprocessed cases: the same data stored or presented another way (4D vs
one file per channel, NIfTI vs NRRD, RAS vs LPS, label dtypes, case names and order) gives the same result; and the
statistics equal independent numpy/nibabel computations. Real data from ../shared/data, read in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import data_path
from medseg.plan.fingerprint import compute_fingerprint
from medseg.plan.planner import make_plan
from medseg.train.cache import preprocess_case
from medseg.train.dataset import load_case, open_dataset

HIPPO = ("hippocampus_001", "hippocampus_004", "hippocampus_006")


def _save(arr, affine, path):
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))


def _flip_xy(arr, affine):
    """The same voxels stored with the first two axes reversed (RAS -> LPS): same world positions."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [arr.shape[0] - 1, arr.shape[1] - 1]
    return arr[::-1, ::-1], affine @ flip


def _layout(root, meta):
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _hippocampus(root, image=lambda a, f: (a, f), label=lambda a, f: (a, f), suffix=".nii.gz", names=None):
    """Three real hippocampus cases, each array/affine passed through ``image`` / ``label`` before saving."""
    src = data_path("msd_hippocampus")
    _layout(root, {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "anterior", "2": "posterior"}})
    for case, name in zip(HIPPO, names or HIPPO):
        for sub, fn in (("imagesTr", image), ("labelsTr", label)):
            n = nib.load(src / sub / f"{case}.nii.gz")
            _save(*fn(np.asanyarray(n.dataobj), n.affine), root / sub / f"{name}{suffix}")
    return root


def _summary(root):
    """Fingerprint, plan (without name/dataset) and preprocessed cases of a dataset folder."""
    ds = open_dataset(root)
    fp = compute_fingerprint(ds, orientation="RAS")
    plan = make_plan(ds, fingerprint=fp, memory_gb=4)
    d = plan.to_dict()
    d.pop("name"), d.pop("dataset")
    return fp.to_dict(), d, {c.id: preprocess_case(plan, c) for c in ds.cases}


def _assert_same(a, b):
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        assert torch.equal(torch.as_tensor(a[2][k].image), torch.as_tensor(b[2][k].image)), k
        assert torch.equal(torch.as_tensor(a[2][k].label), torch.as_tensor(b[2][k].label)), k


# --- defects -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["lps", "permuted"])
def test_label_stored_in_another_axis_order_is_reindexed(tmp_path, how):
    """A label holding the image's voxels in another axis order (LPS against a RAS image, or z-first) was used as
    stored: mirrored (5494 of 62475 voxels wrong on hippocampus_001, foreground mean 368 -> 447) or refused for
    its shape. It is re-indexed onto the image's grid, losslessly."""
    def perm(a, f):
        return a.transpose(2, 0, 1), f[:, [2, 0, 1, 3]]

    ref = _hippocampus(tmp_path / "ref")
    other = _hippocampus(tmp_path / how, label=_flip_xy if how == "lps" else perm)
    for c0, c1 in zip(open_dataset(ref).cases, open_dataset(other).cases):
        for orientation in (None, "RAS"):
            _, l0 = load_case(c0, orientation=orientation)
            _, l1 = load_case(c1, orientation=orientation)
            assert np.array_equal(l0.array, l1.array), c0.id
    _assert_same(_summary(ref), _summary(other))


def test_fingerprint_does_not_depend_on_case_names(tmp_path):
    """Two real CTs whose foregrounds exceed the per-case sample: swapping their names (so the order they are
    read in) changed the CT normalisation (mean 17.88 -> 21.40, clip 319.0 -> 328.0): one random stream was
    shared by the cases in reading order. Each case is now sampled on its own."""
    pairs = {"a": (data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz"),
                   data_path("ct_spleen_sample", "derivatives", "labels", "sub-spleen2", "ct",
                             "sub-spleen2_ct_seg-manual.nii.gz")),
             "b": (data_path("totalseg_example", "example_ct_sm.nii.gz"),
                   data_path("totalseg_example", "example_seg.nii.gz"))}
    fps = []
    for order in (("a", "b"), ("b", "a")):
        root = _layout(tmp_path / "".join(order), {"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "fg"}})
        for name, key in zip(("case1", "case2"), order):
            img, lab = (nib.load(p) for p in pairs[key])
            _save(np.asanyarray(img.dataobj), img.affine, root / "imagesTr" / f"{name}.nii.gz")
            _save((np.asanyarray(lab.dataobj) > 0).astype(np.uint8), lab.affine, root / "labelsTr" / f"{name}.nii.gz")
        fps.append(compute_fingerprint(open_dataset(root)))
    assert fps[0].intensity == fps[1].intensity
    assert fps[0].class_voxels == fps[1].class_voxels
    plans = [make_plan(tmp_path / name, memory_gb=4) for name in ("ab", "ba")]
    assert plans[0].normalisation == plans[1].normalisation


def test_fingerprint_sampling_is_per_case_and_order_free(tmp_path):
    """Synthetic: with a small sample per case, the statistics depend on each case's content only."""
    rng = np.random.default_rng(1)
    vols = [rng.normal(m, 10.0, (12, 12, 12)).astype(np.float32) for m in (0.0, 100.0, 300.0)]
    fps = []
    for names in (("a", "b", "c"), ("c", "a", "b")):
        root = _layout(tmp_path / "".join(names), {"labels": {"0": "bg", "1": "fg"}})
        for name, vol in zip(names, vols):
            _save(vol, np.eye(4), root / "imagesTr" / f"{name}.nii.gz")
            _save(np.ones(vol.shape, np.uint8), np.eye(4), root / "labelsTr" / f"{name}.nii.gz")
        fps.append(compute_fingerprint(open_dataset(root), samples_per_case=50))
    assert fps[0].intensity == fps[1].intensity


# --- properties found to hold (kept as regression tests) ----------------------------------------------------------

@pytest.mark.parametrize("variant", ["nii", "lps", "label_float32", "label_int16", "json_reversed"])
def test_storage_does_not_change_fingerprint_plan_or_arrays(tmp_path, variant):
    """.nii vs .nii.gz, LPS vs RAS storage, label dtypes and dataset.json order: identical results."""
    ref = _summary(_hippocampus(tmp_path / "ref"))
    kw = {"nii": {"suffix": ".nii"}, "lps": {"image": _flip_xy, "label": _flip_xy},
          "label_float32": {"label": lambda a, f: (a.astype(np.float32), f)},
          "label_int16": {"label": lambda a, f: (a.astype(np.int16), f)}}.get(variant, {})
    root = _hippocampus(tmp_path / variant, **kw)
    if variant == "json_reversed":
        meta = json.loads((root / "dataset.json").read_text())
        meta["training"] = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in HIPPO[::-1]]
        (root / "dataset.json").write_text(json.dumps(meta))
    _assert_same(ref, _summary(root))


def test_msd_4d_equals_split_channels(tmp_path):
    """A two-channel BraTS case (cropped) as one MSD 4D file and as nnU-Net v2 ``_0000``/``_0001`` files."""
    src = data_path("brats2015_sample", "brats_2013_pat0001_1")
    chans = [nib.load(src / f"{m}_subtrMeanDivStd.nii.gz") for m in ("Flair", "T1c")]
    lab = nib.load(src / "OTMultiClass.nii.gz")
    box = tuple(slice(c - 24, c + 24) for c in np.argwhere(np.asanyarray(lab.dataobj) > 0).mean(0).astype(int))
    aff = chans[0].affine.copy()
    aff[:3, 3] += aff[:3, :3] @ [b.start for b in box]
    arrs = [np.asanyarray(c.dataobj)[box] for c in chans]
    labels = {"0": "background", "1": "necrosis", "2": "edema", "3": "non-enhancing", "4": "enhancing"}
    split = _layout(tmp_path / "split", {"channel_names": {"0": "Flair", "1": "T1c"}, "labels": labels})
    msd = _layout(tmp_path / "msd", {"modality": {"0": "Flair", "1": "T1c"}, "labels": labels})
    for i, a in enumerate(arrs):
        _save(a, aff, split / "imagesTr" / f"pat1_{i:04d}.nii.gz")
    _save(np.stack(arrs, -1), aff, msd / "imagesTr" / "pat1.nii.gz")
    for root in (split, msd):
        _save(np.asanyarray(lab.dataobj)[box].astype(np.uint8), aff, root / "labelsTr" / "pat1.nii.gz")
    _assert_same(_summary(split), _summary(msd))


def test_fingerprint_statistics_equal_numpy(tmp_path):
    """Spacings, shapes, class counts and foreground (label > 0) mean/std/0.5/99.5 percentiles (numpy's linear
    method) of every foreground voxel, computed with nibabel + numpy on the RAS-reoriented cases."""
    root = _hippocampus(tmp_path / "h", image=_flip_xy, label=_flip_xy)
    fp = compute_fingerprint(open_dataset(root), samples_per_case=10**9)
    vals, counts = [], {}
    for i, case in enumerate(HIPPO):
        img = nib.as_closest_canonical(nib.load(root / "imagesTr" / f"{case}.nii.gz"))
        lab = np.asarray(nib.as_closest_canonical(nib.load(root / "labelsTr" / f"{case}.nii.gz")).dataobj)
        assert fp.shapes[i] == list(lab.shape)
        assert np.allclose(fp.spacings[i], img.header.get_zooms()[:3])
        vals.append(np.asarray(img.dataobj, np.float64)[lab > 0])
        for v, n in zip(*np.unique(lab, return_counts=True)):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    v = np.concatenate(vals)
    st = fp.intensity[0]
    assert st["mean"] == pytest.approx(v.mean()) and st["std"] == pytest.approx(v.std())
    assert st["p00_5"] == pytest.approx(np.percentile(v, 0.5)) and st["p99_5"] == pytest.approx(np.percentile(v, 99.5))
    assert fp.class_voxels == counts


def test_resampling_equals_scipy_on_anisotropic_ct():
    """Image: linear with the field of view kept (voxel ``i`` at source coordinate ``(i + 0.5) * n / m - 0.5``,
    edges clamped) = scipy ``map_coordinates(order=1, mode='nearest')``; label: its mask so, >= 0.5."""
    from scipy import ndimage

    from medseg.plan.plan import Normalisation, Plan
    from medseg.train.preprocess import network_shape, preprocess

    img = nib.load(data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz"))
    lab = nib.load(data_path("ct_spleen_sample", "derivatives", "labels", "sub-spleen2", "ct",
                             "sub-spleen2_ct_seg-manual.nii.gz"))
    x, y = np.asarray(img.dataobj, np.float32), np.asarray(lab.dataobj).astype(np.int16)
    sp = [float(s) for s in img.header.get_zooms()]
    plan = Plan(channels=["CT"], normalisation=[Normalisation("none")], target_spacing=[0.6, 1.1, 3.3],
                labels={0: "background", 1: "spleen"})
    X, Y = preprocess(x[None], sp, plan, y)
    shape = network_shape(x.shape, sp, plan)
    grid = np.meshgrid(*[(np.arange(m) + 0.5) * n / m - 0.5 for n, m in zip(x.shape, shape)], indexing="ij")
    ref = ndimage.map_coordinates(x.astype(np.float64), grid, order=1, mode="nearest")
    assert np.abs(X[0].numpy() - ref).max() < 1e-5 * np.abs(ref).max()
    # label: the spleen's mask resampled the same way, the class where it reaches 0.5 (nnU-Net's rule)
    v = ndimage.map_coordinates((y == 1).astype(np.float64), grid, order=1, mode="nearest")
    tie = np.abs(v - 0.5) < 1e-6
    assert np.array_equal(Y.numpy()[~tie], (v >= 0.5)[~tie].astype(np.int16))


def test_normalisation_equals_numpy(tmp_path):
    """CT: clip to the plan's foreground 0.5/99.5 percentiles, then the dataset mean/std; MR: per case over the
    whole image (the documented choice: no nonzero mask)."""
    from medseg.train.preprocess import normalise

    root = _layout(tmp_path / "ct", {"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "spleen"}})
    for sub, p in (("imagesTr", data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz")),
                   ("labelsTr", data_path("ct_spleen_sample", "derivatives", "labels", "sub-spleen2", "ct",
                                          "sub-spleen2_ct_seg-manual.nii.gz"))):
        shutil.copy(p, root / sub / "spleen.nii.gz")
    plan = make_plan(root, memory_gb=4)
    n = plan.normalisation[0]
    image, _ = load_case(open_dataset(root).cases[0], orientation=plan.orientation)
    x = image.array[0].astype(np.float64)
    assert n.scheme == "ct"
    assert np.abs(normalise(image.array, plan)[0] - (np.clip(x, *n.clip) - n.mean) / n.std).max() < 1e-5
    mr = _hippocampus(tmp_path / "mr")
    plan = make_plan(mr, memory_gb=4)
    image, _ = load_case(open_dataset(mr).cases[0], orientation=plan.orientation)
    x = image.array[0].astype(np.float64)
    assert plan.normalisation[0].scheme == "zscore"
    assert np.abs(normalise(image.array, plan)[0] - (x - x.mean()) / x.std()).max() < 1e-5


def test_fingerprint_sampling_picks_numpy_s_voxels_without_an_index_of_every_voxel():
    """The foreground sample is ``np.flatnonzero(mask)[ranks]`` (so plans stay as they were), found a chunk at a time:
    the int64 index of every foreground voxel took 8 bytes per voxel (840 MB on a half-foreground 512x512x800 CT)."""
    import tracemalloc

    from medseg.plan.fingerprint import nth_true

    rng = np.random.default_rng(7)
    for _ in range(200):
        mask = rng.random(int(rng.integers(1, 3000))) < rng.random()
        if mask.any():
            ranks = rng.choice(int(mask.sum()), min(int(mask.sum()), 40), replace=False)
            assert np.array_equal(nth_true(mask, ranks, chunk=int(rng.integers(1, 500))), np.flatnonzero(mask)[ranks])
    big = np.ones(40_000_000, bool)  # 40 MB of foreground
    ranks = rng.choice(big.size, 10_000, replace=False)
    tracemalloc.start()
    try:
        got = nth_true(big, ranks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, ranks)
    assert peak < 80e6, f"{peak / 1e6:.0f} MB (an index of every voxel is 320 MB)"
