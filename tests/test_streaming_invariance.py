"""Memory-bounded prediction gives the same result whatever the memory it is given: the streamed prediction
(slab by slab into the plane-by-plane resampler and the probability spill file) equals an independent reference
(numpy linear resampling to the plan's grid, MONAI's ``sliding_window_inference(mode="gaussian")``, numpy linear
resampling back, argmax) for any block, buffer and batch size, anisotropic up/down-sampling, 2D plans, several
channels, volumes smaller than or exactly one patch, TTA, and any storage of the input under a plan orientation;
float16 accumulation stays within its stated bound; the spill file never outlives the prediction."""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

import medseg.infer.blending as bl
import medseg.infer.native as nv
import medseg.infer.sliding_window as sw
from conftest import run_cli
from medseg.infer.predict import predict_image, predict_labels
from medseg.io.image import Image
from medseg.plan.plan import Normalisation, Plan
from medseg.train.artifact import build_from_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plan(dims=3, in_ch=1, classes=3, **kw) -> Plan:
    """A small plan without normalisation (the reference needs none), flips on every axis."""
    base = dict(channels=[f"c{i}" for i in range(in_ch)], normalisation=[Normalisation("none")] * in_ch,
                labels={i: f"l{i}" for i in range(classes)}, patch_size=[16] * dims, spatial_dims=dims,
                base_filters=4, max_filters=8, bf16=False, augment={"flip_axes": list(range(dims))})
    return Plan(**{**base, **kw}).validate()


def _net(plan: Plan) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_from_plan(plan).eval()


def _linear(a: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Linear resampling of one axis to ``n`` samples, half-pixel centres, clamped at the ends (float64)."""
    m = a.shape[axis]
    pos = np.maximum((np.arange(n) + 0.5) * m / n - 0.5, 0.0)
    i0 = np.minimum(np.floor(pos).astype(int), m - 1)
    w = (pos - i0).reshape([n if d == axis else 1 for d in range(a.ndim)])
    return np.take(a, i0, axis) * (1 - w) + np.take(a, np.minimum(i0 + 1, m - 1), axis) * w


def _resize(a: np.ndarray, shape) -> np.ndarray:
    """``(C, *S)`` resampled axis by axis (separable linear) to ``(C, *shape)``."""
    a = np.asarray(a, np.float64)
    for ax, n in enumerate(shape):
        a = _linear(a, ax + 1, n)
    return a


def _monai(net, x: np.ndarray, patch, overlap: float, flips) -> np.ndarray:
    """Softmax of MONAI's Gaussian-blended logits, each window's logits averaged over its mirrorings."""
    sets = [c for r in range(len(flips) + 1) for c in itertools.combinations(flips, r)]

    def mirrored(b):
        return sum(torch.flip(net(torch.flip(b, [a + 2 for a in s])), [a + 2 for a in s]) for s in sets) / len(sets)

    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(x).float()[None], patch, 2, mirrored, overlap=overlap,
                                          mode="gaussian")[0]
    return torch.softmax(logits.double(), 0).numpy()


def _reference(net, plan: Plan, arr: np.ndarray, spacing, overlap: float, tta: bool) -> np.ndarray:
    """Probabilities on ``arr``'s grid, computed without medseg: resample to the plan's spacing, MONAI, back."""
    grid = np.maximum(1, np.round(np.array(arr.shape[1:]) * spacing / np.array(plan.target_spacing))).astype(int)
    flips = tuple(plan.augment["flip_axes"]) if tta else ()
    if plan.spatial_dims == 2:  # slice by slice through the 2D network, the slice axis kept
        ax = plan.slice_axis
        grid[ax] = arr.shape[ax + 1]
        x = _resize(arr, grid)
        p = np.stack([_monai(net, np.take(x, s, ax + 1), plan.patch_size, overlap, flips)
                      for s in range(grid[ax])], ax + 1)
    else:
        p = _monai(net, _resize(arr, grid), plan.patch_size, overlap, flips)
    return _resize(p, arr.shape[1:])


def _assert_labels_equal_except_ties(lab, ref, tol=1e-4):
    top2 = np.sort(ref, 0)[-2:]
    clear = top2[1] - top2[0] > tol
    np.testing.assert_array_equal(lab[clear], ref.argmax(0)[clear])


@pytest.fixture
def tiny_blocks(monkeypatch):
    """The smallest slabs, popped blocks and spill buffers: one plane or one class at a time."""
    monkeypatch.setattr(bl.Slab, "BLOCK", 1)
    monkeypatch.setattr(bl.Slab, "BLOCK_BYTES", 1)
    monkeypatch.setattr(nv.ProbabilitySpill, "BUFFER_BYTES", 1)


CASES = {  # plan, native spacing, shape, overlap, TTA
    "3d-anisotropic-up-and-down-2-channels": (dict(in_ch=2, target_spacing=[0.8, 1.4, 0.6]), [1.3, 0.7, 1.0],
                                              (17, 23, 11), 0.6, True),
    "3d-smaller-than-the-patch": (dict(target_spacing=[1.0, 1.0, 1.0]), [1.0, 1.0, 1.0], (10, 19, 7), 0.5, False),
    "3d-exactly-one-patch": (dict(target_spacing=[1.0, 1.0, 1.0], classes=2), [1.0, 1.0, 1.0], (16, 16, 16), 0.5,
                             True),
    "2d-slices-along-z": (dict(dims=2, target_spacing=[0.7, 0.9, 2.5]), [1.0, 1.2, 0.9], (13, 21, 6), 0.4, True),
    "2d-slices-along-x-2-channels": (dict(dims=2, in_ch=2, target_spacing=[2.5, 1.1, 0.6]), [1.0, 0.8, 1.3],
                                     (5, 19, 14), 0.7, False),
    "2d-same-grid-slices-along-y": (dict(dims=2, target_spacing=[1.0, 2.5, 1.0]), [1.0, 2.5, 1.0], (12, 5, 18), 0.5,
                                    True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("small", [False, True], ids=["default-blocks", "tiny-blocks"])
def test_streamed_prediction_equals_monai_and_linear_resampling(case, small, request):
    """Labels and probabilities of the streamed prediction equal the independent reference, whatever the sizes of
    the popped blocks, the class steps and the spill buffer (every plane handed over alone in ``tiny-blocks``)."""
    if small:
        request.getfixturevalue("tiny_blocks")
    kw, spacing, shape, overlap, tta = CASES[case]
    plan = _plan(**kw)
    net = _net(plan)
    arr = np.random.default_rng(1).normal(size=(plan.in_channels, *shape)).astype(np.float32)
    lab, prob = predict_labels(net, plan, arr, spacing, overlap=overlap, tta=tta, probabilities=True,
                               batch_size=3, device="cpu")
    ref = _reference(net, plan, arr, np.array(spacing), overlap, tta)
    assert lab.shape == shape and prob.shape == (plan.num_classes, *shape)
    np.testing.assert_allclose(prob, ref, atol=2e-5)
    _assert_labels_equal_except_ties(lab, ref)


def test_block_sizes_change_no_bit(monkeypatch):
    """Popping one plane, adding one class and spilling one plane at a time gives bit-identical outputs."""
    plan = _plan(in_ch=2, target_spacing=[0.8, 1.4, 0.6])
    net = _net(plan)
    arr = np.random.default_rng(2).normal(size=(2, 15, 21, 12)).astype(np.float32)
    run = functools.partial(predict_labels, net, plan, arr, [1.3, 0.7, 1.0], tta=True, probabilities=True,
                            device="cpu")
    lab, prob = run()
    prob = np.array(prob)
    monkeypatch.setattr(bl.Slab, "BLOCK", 1)
    monkeypatch.setattr(bl.Slab, "BLOCK_BYTES", 1)
    monkeypatch.setattr(nv.ProbabilitySpill, "BUFFER_BYTES", 1)
    lab1, prob1 = run()
    np.testing.assert_array_equal(lab1, lab)
    np.testing.assert_array_equal(prob1, prob)


@pytest.mark.parametrize("overlap", [0.5, 0.8])
def test_float16_accumulation_stays_within_its_bound(overlap):
    """A memory budget too small for a float32 slab accumulates in float16: each window's addition is rounded
    once, so the blended logits are within ``n * 2**-11`` of the largest |logit| (n windows covering a voxel: at
    most ``ceil(patch / step) + 1`` per axis, the last window being flush with the end), and the labels differ only
    where the two best float32 logits are that close."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv3d(2, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(6, 4, 3, padding=1))

    def net(b):  # logits of a trained network's size
        return 20 * conv(b)

    x = torch.randn(2, 21, 18, 37)
    kw = dict(overlap=overlap, device="cpu", precision="fp32")
    with torch.no_grad():
        f32 = sw.sliding_window_predict(net, x, (16, 16, 16), output="logits", **kw)
        f16 = sw.sliding_window_predict(net, x, (16, 16, 16), output="logits", memory_budget=1, **kw)
        lab16 = sw.sliding_window_predict(net, x, (16, 16, 16), output="labels", memory_budget=1, **kw)
    n = (-(-16 // int(16 * (1 - overlap))) + 1) ** 3
    bound = n * 2.0**-11 * float(f32.abs().max())
    assert 0 < float((f16 - f32).abs().max()) <= bound
    top2 = f32.topk(2, 0).values
    clear = top2[0] - top2[1] > 2 * bound
    assert torch.equal(lab16[clear].long(), f32.argmax(0)[clear])


def _stored(arr, affine, perm, flip) -> Image:
    """The same world image (channels first) with its axes permuted by ``perm``, then flipped along ``flip``."""
    a, aff = arr.transpose([0, *(p + 1 for p in perm)]), affine[:, [*perm, 3]].copy()
    for ax in flip:
        a = np.flip(a, ax + 1)
        aff[:, 3] += aff[:, ax] * (a.shape[ax + 1] - 1)
        aff[:, ax] *= -1
    return Image(np.ascontiguousarray(a), aff, {}, True)


def _unstored(a, perm, flip):
    for ax in flip:
        a = np.flip(a, ax + 1)
    return a.transpose([0, *(int(p) + 1 for p in np.argsort(perm))])


@pytest.mark.parametrize("dims", [3, 2])
def test_any_storage_gives_the_same_probabilities_under_a_plan_orientation(dims, tiny_blocks):
    """With a plan orientation the probabilities (disk-backed, in the input's axis order) and the labels of a
    flipped / transposed storage are those of the canonical one, voxel for voxel."""
    plan = _plan(dims, in_ch=2, orientation="RAS", target_spacing=[0.8, 1.3, 2.5])
    net = _net(plan)
    arr = np.random.default_rng(3).normal(size=(2, 13, 17, 9)).astype(np.float32)
    aff = np.diag([1.1, 0.9, 2.0, 1.0])
    lab0, p0 = predict_image(net, plan, Image(arr, aff, {}, True), tta=True, device="cpu", probabilities=True)
    p0 = np.array(p0.array)
    for perm, flip in [((2, 0, 1), (0,)), ((1, 2, 0), (1, 2)), ((0, 1, 2), (0, 1, 2))]:
        lab, p = predict_image(net, plan, _stored(arr, aff, perm, flip), tta=True, device="cpu", probabilities=True)
        np.testing.assert_array_equal(_unstored(np.asarray(p.array), perm, flip), p0)
        np.testing.assert_array_equal(_unstored(lab.array[None], perm, flip)[0], lab0.array)


def _spill_fds(folder: Path) -> list[str]:
    """This process's open files in ``folder`` (an unlinked spill file shows as ``folder/#inode (deleted)``)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_spill_is_gone_after_success_and_after_an_interrupt(tmp_path):
    """The probability file has no name in the spill folder at any time, and its space is released once the
    prediction (or its interrupted attempt) is dropped."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs Linux /proc/self/fd")
    import gc

    plan = _plan(target_spacing=[1.0, 1.0, 1.0])
    net = _net(plan)
    arr = np.random.default_rng(4).normal(size=(1, 30, 20, 40)).astype(np.float32)
    calls = []

    def interrupted(b):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return net(b)

    with pytest.raises(KeyboardInterrupt):
        predict_labels(interrupted, plan, arr, [1, 1, 1], probabilities=True, spill_dir=tmp_path, device="cpu")
    assert list(tmp_path.iterdir()) == []
    gc.collect()
    assert _spill_fds(tmp_path) == []
    lab, prob = predict_labels(net, plan, arr, [1, 1, 1], probabilities=True, spill_dir=tmp_path, device="cpu")
    assert list(tmp_path.iterdir()) == [] and len(_spill_fds(tmp_path)) >= 1
    del prob
    gc.collect()
    assert _spill_fds(tmp_path) == []


def test_cli_probabilities_read_back_equal_to_the_prediction(tmp_path):
    """``medseg predict --probabilities`` (streamed into the file class by class) reads back with nibabel as the
    probabilities of ``predict_image``, on the input's grid, and leaves only its outputs in the folder."""
    from medseg.train.artifact import load_model, save_model

    plan = _plan(target_spacing=[1.3, 0.9, 1.1], orientation="RAS")
    model = save_model(tmp_path / "m.pt", plan, _net(plan).state_dict())
    arr = np.random.default_rng(5).normal(size=(14, 19, 11)).astype(np.float32)
    aff = np.array([[0, 0, -1.2, 20], [0.9, 0, 0, -3], [0, 1.1, 0, 7], [0, 0, 0, 1]])  # a transposed, flipped store
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "in" / "case.nii.gz")
    res = run_cli("predict", "-m", model, "-i", tmp_path / "in", "-o", tmp_path / "out", "--probabilities",
                  "--device", "cpu", "-q")
    assert res.code == 0, res.err
    art = load_model(model)
    lab, prob = predict_image(art.build(), art.plan, Image(arr, aff), device="cpu", probabilities=True)
    got = nib.load(tmp_path / "out" / "case_probs.nii.gz")
    assert got.shape == (*arr.shape, plan.num_classes) and np.allclose(got.affine, aff)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(got.dataobj), -1, 0), prob.array)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj), lab.array)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.nii.gz", "case_probs.nii.gz"]


def test_python_api_reads_devices_as_the_cli_does():
    """``predict_image`` / ``predict_labels`` take ``--device``'s spellings: ``auto`` (was torch's RuntimeError)
    predicts as the device it stands for, and an unknown name is an InputError naming the choices."""
    from medseg.errors import InputError

    plan = _plan(target_spacing=[1.0, 1.0, 1.0])
    net = _net(plan)
    img = Image(np.random.default_rng(6).normal(size=(9, 12, 10)).astype(np.float32), np.eye(4))
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lab, prob = predict_image(net, plan, img, device=auto, probabilities=True)
    lab_auto, prob_auto = predict_image(net, plan, img, device="auto", probabilities=True)
    np.testing.assert_array_equal(lab_auto.array, lab.array)
    np.testing.assert_array_equal(prob_auto.array, prob.array)
    lab_cpu, _ = predict_labels(net, plan, img.array[None], img.spacing, device=" CPU ")
    np.testing.assert_array_equal(lab_cpu, predict_labels(net, plan, img.array[None], img.spacing, device="cpu")[0])
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        predict_image(net, plan, img, device="gpu")


@pytest.mark.parametrize("classes,dtype", [(3, torch.uint8), (300, torch.int32)])
def test_labels_handed_to_a_sink_are_those_returned(classes, dtype, monkeypatch):
    """Labels streamed to a sink have the returned labels' dtype (uint8 up to 256 classes; they were int64, 8x
    the bytes) and values, which are MONAI's argmax except at near-ties, in blocks of every size."""
    monkeypatch.setattr(bl.Slab, "BLOCK", 3)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, classes, 3, padding=1)
    x = torch.randn(2, 12, 10, 21)
    kw = dict(overlap=0.6, device="cpu", precision="fp32", output="labels", batch_size=3)
    parts = []
    with torch.no_grad():
        whole = sw.sliding_window_predict(net, x, (8, 8, 8), **kw)
        assert sw.sliding_window_predict(net, x, (8, 8, 8), sink=lambda p, a: parts.append(p), **kw) is None
        ref = sliding_window_inference(x[None], (8, 8, 8), 3, net, overlap=0.6, mode="gaussian")[0]
    assert whole.dtype == dtype and {p.dtype for p in parts} == {dtype}
    assert torch.equal(torch.cat(parts, -1), whole)
    _assert_labels_equal_except_ties(whole.numpy(), torch.softmax(ref.double(), 0).numpy())


@pytest.mark.parametrize("offset", [0.0, 50.0, -200.0])
def test_float16_accumulation_ignores_a_common_logit_offset(offset):
    """Softmax logits are defined up to a per-voxel constant; float16 accumulation rounded them at their absolute
    size (an offset of 50: probabilities 0.046 off, labels changed where the two best were 0.02 apart). Against
    MONAI in float32, probabilities stay within 1e-3 and labels change only at near-ties, whatever the offset."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv3d(2, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(6, 4, 3, padding=1))

    def net(b):
        return 3 * conv(b) + offset

    x = torch.randn(2, 21, 18, 37)
    kw = dict(device="cpu", precision="fp32", memory_budget=1)  # too small for float32: float16 slab
    with torch.no_grad():
        ref = sliding_window_inference(x[None], (16, 16, 16), 2, net, 0.5, mode="gaussian")[0]
        ref = torch.softmax(ref.double(), 0)
        prob = sw.sliding_window_predict(net, x, (16, 16, 16), **kw)
        lab = sw.sliding_window_predict(net, x, (16, 16, 16), output="labels", **kw)
    assert float((prob - ref).abs().max()) < 1e-3
    _assert_labels_equal_except_ties(lab.numpy(), ref.numpy(), tol=2e-3)
    _assert_labels_equal_except_ties(prob.argmax(0).numpy(), ref.numpy(), tol=2e-3)
