"""Prediction audit: outputs on the input's grid for a sheared sform-only NIfTI, and mirroring TTA flipped back
correctly on anisotropic 3D and 2D plans (checked against a network whose output is a known function of position)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.infer.cohort import predict_path
from medseg.infer.predict import predict_image
from medseg.io.image import Image
from medseg.plan.plan import Normalisation, Plan
from test_predict import make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(path: Path) -> Path:
    """A model artifact with random weights (geometry is under test, not accuracy)."""
    return make_model(path, patch_size=[16, 16, 16], max_filters=8)


def test_sheared_sform_only_input_keeps_its_grid(tmp_path):
    """A NIfTI whose only affine is a sheared sform (qform_code 0) is read with that sform; the label map and the
    probabilities must carry it too. A qform set beside it can only be nibabel's shear-free fit, which ITK and medseg
    read in preference to a sheared sform: the outputs then lay up to 8.4 mm off the input."""
    shear = np.eye(4)
    shear[0, 1], shear[:3, 3] = 0.3, [4.0, -2.0, 7.0]
    src = nib.Nifti1Image(np.random.default_rng(0).normal(size=(12, 20, 10)).astype(np.float32), None)
    src.set_sform(shear, code=1)  # qform_code stays 0
    inp = tmp_path / "c.nii.gz"
    nib.save(src, inp)
    predict_path(_model(tmp_path / "m.pt"), inp, tmp_path / "out", device="cpu", probabilities=True)
    for name in ("c.nii.gz", "c_probs.nii.gz"):
        hdr = nib.load(tmp_path / "out" / name).header
        assert int(hdr["sform_code"]) == 1 and np.allclose(hdr.get_sform(), shear, atol=1e-6), name
        # no second affine a reader could pick instead: the qform is unset or says the same
        if int(hdr["qform_code"]) > 0:
            assert np.allclose(hdr.get_qform(), shear, atol=1e-4), (name, hdr.get_qform())
    assert nib.load(tmp_path / "out" / "c_probs.nii.gz").shape == (12, 20, 10, 3)


W = (1.0, -2.0, 3.0)  # weight of the shifted input per spatial axis of the stand-in network


class _ShiftNet(torch.nn.Module):
    """Class-1 logit: sum over spatial axes a of ``W[a] * x[i - 1 along a]`` (zero at the window's first plane),
    class 0: 0. Not mirror-symmetric: under a flip the shift goes the other way."""

    def __init__(self, dims: int):
        super().__init__()
        self.spatial_dims = dims

    def forward(self, x):
        v = torch.zeros_like(x)
        for a in range(x.ndim - 2):
            s = torch.roll(x, 1, a + 2)
            s.narrow(a + 2, 0, 1).zero_()
            v = v + W[a] * s
        return torch.cat([torch.zeros_like(x), v], 1)


def _shifted(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """``x[i - k]`` along ``axis`` (k = +-1), zero where that falls outside."""
    out = np.zeros_like(x)
    src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    src[axis], dst[axis] = (slice(0, -1), slice(1, None)) if k > 0 else (slice(1, None), slice(0, -1))
    out[tuple(dst)] = x[tuple(src)]
    return out


@pytest.mark.parametrize("dims, shape", [(3, (16, 16, 8)), (2, (16, 16, 5))])
def test_tta_flips_each_pass_back_on_an_anisotropic_plan(dims, shape):
    """0.5 x 0.5 x 7 mm volume, plan on that grid (one window, no resampling), flips on every (in-plane) axis: each
    mirrored pass flipped back turns the shift around, so the TTA logit is the mean of both shifts per axis; without
    TTA it is the forward shift. Probabilities and labels equal that to float rounding."""
    spacing = (0.5, 0.5, 7.0)
    plan = Plan(patch_size=list(shape[:dims]), target_spacing=list(spacing), spatial_dims=dims, bf16=False,
                normalisation=[Normalisation("none")], augment={"flip_axes": list(range(dims))}).validate()
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    image = Image(x, np.diag([*spacing, 1.0]))
    for tta in (True, False):
        lab, prob = predict_image(_ShiftNet(dims), plan, image, tta=tta, probabilities=True)
        v = sum(W[a] * ((_shifted(x, 1, a) + _shifted(x, -1, a)) / 2 if tta else _shifted(x, 1, a))
                for a in range(dims))  # 2D plan: the slice axis (2, the 7 mm one) is not shifted
        np.testing.assert_allclose(np.asarray(prob.array)[1], 1 / (1 + np.exp(-v)), atol=1e-6)
        clear = np.abs(v) > 1e-5
        assert np.array_equal(lab.array[clear], (v > 0)[clear]), tta


@pytest.mark.parametrize("scale", [1e-6, 1e20, 1e30])
def test_zscore_normalisation_does_not_depend_on_the_intensity_scale(scale):
    """z-score normalisation is scale-free: float32 sums of squares overflowed beyond ~1e19, the whole image became
    zeros and its prediction all background, silently."""
    from medseg.plan.plan import Plan
    from medseg.train.preprocess import normalise

    x = np.random.default_rng(3).gamma(2.0, 50.0, (1, 12, 13, 14)).astype(np.float32)
    ref = (x - x.mean(dtype=np.float64)) / x.std(dtype=np.float64)
    got = normalise((x * np.float32(scale)).astype(np.float32), Plan())
    np.testing.assert_allclose(got, ref, atol=1e-5)
    mask = x[0] > np.median(x)
    sel = x[0][mask].astype(np.float64)
    np.testing.assert_allclose(normalise(x * np.float32(scale), Plan(), mask), (x - sel.mean()) / sel.std(), atol=1e-5)
