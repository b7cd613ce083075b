"""medseg's sliding window against MONAI's ``sliding_window_inference(mode="gaussian")`` (the independent
reference): same network, same windows → near-equal probabilities, identical labels except near-ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet

import medseg.infer.sliding_window as sw
from conftest import data_path
from medseg.infer.sliding_window import flip_sets, gaussian_importance_map, sliding_window_predict, window_starts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(dims: int = 3, classes: int = 3, in_ch: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    k, s = [[3] * dims] * 3, [[1] * dims, [2] * dims, [2] * dims]
    return DynUNet(dims, in_ch, classes, k, s, s[1:], filters=[4, 8, 8]).eval()


def _monai_probs(net, x, patch, overlap=0.5, predictor=None):
    with torch.inference_mode():
        logits = sliding_window_inference(x[None], patch, 2, predictor or net, overlap=overlap, mode="gaussian")
    return torch.softmax(logits[0], 0)


def _hippocampus(case="hippocampus_001") -> torch.Tensor:
    import nibabel as nib

    a = np.asarray(nib.load(data_path("msd_hippocampus", "imagesTr", f"{case}.nii.gz")).dataobj, np.float32)
    return torch.from_numpy((a - a.mean()) / a.std())[None]


def _brats(crop=(slice(90, 138), slice(90, 134), slice(64, 96))) -> torch.Tensor:
    import nibabel as nib

    d = data_path("brats2015_sample", "brats_2013_pat0001_1")
    chans = [np.asarray(nib.load(str(d / f)).dataobj, np.float32)[crop]
             for f in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")]
    return torch.from_numpy(np.stack(chans))


def _assert_labels_equal_except_ties(lab, probs_ref, tol=1e-4):
    ref = probs_ref.argmax(0)
    diff = lab != ref
    if diff.any():  # only where the two best classes are within tol of each other
        top2 = probs_ref.topk(2, dim=0).values
        assert ((top2[0] - top2[1])[diff] < tol).all(), f"{int(diff.sum())} labels differ beyond ties"


@pytest.mark.realdata
@pytest.mark.parametrize("overlap,batch_size,cl", [(0.5, 1, False), (0.25, 3, True)])
def test_3d_matches_monai_on_real_mr(overlap, batch_size, cl):
    x = _brats()
    net = _net(in_ch=2, classes=4)
    patch = (32, 32, 24)  # anisotropic windows, several per axis
    ref = _monai_probs(net, x, patch, overlap)
    got = sliding_window_predict(net, x, patch, overlap=overlap, batch_size=batch_size, device="cpu",
                                 precision="fp32", channels_last=cl)
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    lab = sliding_window_predict(net, x, patch, overlap=overlap, batch_size=batch_size, device="cpu",
                                 precision="fp32", output="labels")
    assert lab.dtype == torch.uint8 and lab.shape == x.shape[1:]
    _assert_labels_equal_except_ties(lab, ref)


@pytest.mark.realdata
def test_image_smaller_than_patch_is_padded_like_monai():
    x = _hippocampus()  # 35 x 51 x 35 (varies per case): smaller than the patch on two axes
    net = _net()
    patch = (48, 32, 40)
    ref = _monai_probs(net, x, patch)
    got = sliding_window_predict(net, x, patch, device="cpu", precision="fp32")
    assert got.shape == (3, *x.shape[1:])
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.realdata
def test_2d_matches_monai():
    x = _brats((slice(60, 160), slice(50, 130), 80))
    net = _net(dims=2, in_ch=2, classes=5)
    ref = _monai_probs(net, x, (64, 48), 0.5)
    got = sliding_window_predict(net, x, (64, 48), device="cpu", precision="fp32", batch_size=5)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.realdata
def test_tta_equals_monai_with_mirrored_predictor():
    x = _brats()[:, :32, :40, :32]
    net = _net(in_ch=2, classes=4)

    def mirrored(batch):  # nnU-Net mirroring written independently: mean of logits over the 8 flips
        outs = []
        for axes in [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]:
            outs.append(torch.flip(net(torch.flip(batch, axes)), axes) if axes else net(batch))
        return torch.stack(outs).mean(0)

    ref = _monai_probs(net, x, (32, 32, 32), predictor=mirrored)
    got = sliding_window_predict(net, x, (32, 32, 32), tta=True, device="cpu", precision="fp32", batch_size=2)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    one_axis = sliding_window_predict(net, x, (32, 32, 32), tta=[1], device="cpu", precision="fp32")
    assert not torch.allclose(one_axis, got, atol=1e-4)


@pytest.mark.realdata
def test_float16_accumulation_and_bf16_autocast_stay_close():
    x = _brats()
    net = _net(in_ch=2, classes=4)
    patch = (32, 32, 24)
    ref = _monai_probs(net, x, patch)
    # a budget too small for a float32 slab forces float16 accumulation
    f16 = sliding_window_predict(net, x, patch, device="cpu", precision="fp32", memory_budget=1e5)
    assert (f16 - ref).abs().max() < 5e-3
    bf = sliding_window_predict(net, x, patch, device="cpu", precision="bf16", out_dtype=torch.float16)
    assert bf.dtype == torch.float16
    assert (bf.float() - ref).abs().mean() < 0.02


def test_slab_is_one_window_deep(monkeypatch):
    """RAM stays bounded: the accumulator holds patch-depth planes, not the whole volume."""
    shapes = []
    orig = sw._Slab.__init__

    def spy(self, classes, size, depth, dtype, device):
        shapes.append((classes, *size[:-1], depth))
        orig(self, classes, size, depth, dtype, device)

    monkeypatch.setattr(sw._Slab, "__init__", spy)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = torch.randn(1, 20, 24, 300)
    with torch.inference_mode():
        ref = torch.softmax(sliding_window_inference(x[None], (16, 16, 16), 4, net, 0.5, mode="gaussian")[0], 0)
    lab = sliding_window_predict(net, x, (16, 16, 16), device="cpu", precision="fp32", output="labels",
                                 batch_size=4)
    assert shapes == [(3, 20, 24, 16)]
    _assert_labels_equal_except_ties(lab, ref)


def test_many_classes_shrink_the_batch_and_the_popped_blocks(monkeypatch):
    """A hundred-class model: fewer windows per forward pass and fewer planes per popped block, same result."""
    net = torch.nn.Conv3d(1, 40, 3, padding=1)
    x = torch.randn(1, 20, 24, 60)
    seen, blocks = [], []

    def counting(batch):
        seen.append(batch.shape[0])
        return net(batch)

    def sink(part, first):
        blocks.append(part.shape[-1])
        parts.append(part)

    ref = sliding_window_predict(net, x, (16, 16, 16), device="cpu", precision="fp32", batch_size=4)
    # room for two windows' logits and for three planes of all classes
    monkeypatch.setattr(sw, "BATCH_OUTPUT_BYTES", 2 * 4 * 40 * 16**3 + 1)
    monkeypatch.setattr(sw._Slab, "BLOCK_BYTES", 3 * 4 * 40 * 20 * 24 + 1)
    parts = []
    got = sliding_window_predict(counting, x, (16, 16, 16), device="cpu", precision="fp32", batch_size=4)
    assert seen[0] == 4 and max(seen[1:]) == 2 and min(seen[1:-1]) == 2  # the classes known after one pass
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    seen.clear()
    assert sliding_window_predict(counting, x, (16, 16, 16), device="cpu", precision="fp32", num_classes=40,
                                  batch_size=4, sink=sink) is None
    assert max(seen) == 2 and max(blocks) == 3 and sum(blocks) == 60
    torch.testing.assert_close(torch.cat(parts, -1), ref, atol=1e-6, rtol=1e-5)
    assert sw._batch_cap(4, None, (16, 16, 16)) == 4 and sw._batch_cap(4, 10**6, (16, 16, 16)) == 1


def test_sigmoid_logits_and_module_state_restored():
    net = torch.nn.Conv2d(1, 2, 3, padding=1).train()
    x = torch.randn(1, 40, 30)
    logits = sliding_window_predict(net, x, (16, 16), device="cpu", output="logits", precision="fp32")
    probs = sliding_window_predict(net, x, (16, 16), device="cpu", activation="sigmoid", precision="fp32")
    masks = sliding_window_predict(net, x, (16, 16), device="cpu", activation="sigmoid", output="labels",
                                   precision="fp32")
    torch.testing.assert_close(probs, torch.sigmoid(logits))
    assert masks.shape == (2, 40, 30) and torch.equal(masks, (logits > 0).to(torch.uint8))
    assert net.training and net.weight.is_contiguous()


def test_helpers_and_errors():
    w = gaussian_importance_map([7, 9])
    assert w.shape == (7, 9) and float(w.max()) == pytest.approx(1.0, abs=0.02) and float(w.min()) >= 1e-3
    from monai.data.utils import compute_importance_map, dense_patch_slices

    torch.testing.assert_close(gaussian_importance_map([16, 24, 9]), compute_importance_map((16, 24, 9), "gaussian"))
    for size, patch, ov in [((100, 64, 33), (64, 64, 16), 0.5), ((97, 70, 50), (32, 30, 17), 0.3)]:
        starts = window_starts(size, patch, ov)
        interval = [p if n == p else max(int(p * (1 - ov)), 1) for n, p in zip(size, patch)]
        ref = sorted(tuple(s.start for s in sl) for sl in dense_patch_slices(size, patch, interval))
        mine = sorted(tuple(s) for s in np.array(np.meshgrid(*starts, indexing="ij")).reshape(3, -1).T.tolist())
        assert mine == ref
    assert flip_sets(True, 2) == [(), (0,), (1,), (0, 1)] and flip_sets(False, 3) == [()]
    net = torch.nn.Conv3d(1, 2, 1)
    with pytest.raises(ValueError):
        sliding_window_predict(net, torch.zeros(1, 8, 8), (4, 4, 4), device="cpu")
    with pytest.raises(ValueError):
        sliding_window_predict(net, torch.zeros(1, 8, 8, 8), (4, 4, 4), overlap=1.0, device="cpu")
    with pytest.raises(ValueError):
        sliding_window_predict(net, torch.zeros(1, 8, 8, 8), (4, 4, 4), output="nope", device="cpu")


def test_resolve_device_is_the_shared_parser(monkeypatch):
    """Spelled as everywhere else (medseg.infer.devices): `gpu` or an absent GPU is an InputError (exit 2), not
    torch's RuntimeError; "auto" is CUDA when present, else the CPU."""
    from medseg.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sw.resolve_device() == sw.resolve_device(" CPU") == torch.device("cpu")
    for bad in ("gpu", "cuda"):
        with pytest.raises(InputError):
            sw.resolve_device(bad)
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        sliding_window_predict(torch.nn.Conv2d(1, 2, 1), torch.zeros(1, 8, 8), (4, 4), device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert sw.resolve_device("auto") == torch.device("cuda")
