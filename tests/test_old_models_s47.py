"""Models saved by older medseg versions load and predict as they did.

A model file is the dict every version since the first has written (``format``, ``format_version`` 1, ``plan``,
``labels``, ``state_dict``, ``versions``, ``info``); its plan is the plan as that version recorded it, here without
the fields added since (``orientation``, ``kernel_sizes``/``strides``, ``residual``, ``ema``, ``ensemble``,
``cache``). The reference network is a MONAI DynUNet built here with the levels the older rule gave the patch,
worked out by hand; the reference prediction is numpy's z-score and MONAI's Gaussian sliding window.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet

from conftest import assert_clean_error, data_path, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the plan of a model trained before session 46, as its model.pt holds it (no fields added since), with three values
# those versions accepted and trained with, which today's plan checks refuse: max_minutes .inf (meant no limit),
# numbers on a zscore channel (ignored: z-scored unclipped) and an augment key no version read
OLD_PLAN = {
    "name": "Hippocampus", "dataset": "/gone/msd_hippocampus", "channels": ["MRI"],
    "labels": {0: "background", 1: "anterior", 2: "posterior"},
    "normalisation": [{"scheme": "zscore", "clip": [0.0, 50.0], "mean": None, "std": None}],
    "target_spacing": [1.0, 1.0, 1.0], "spatial_dims": 3, "patch_size": [48, 48, 8], "batch_size": 2,
    "base_filters": 4, "max_filters": 16, "deep_supervision": True, "loss": "dice_ce", "class_weights": None,
    "optimizer": "adamw", "learning_rate": 0.002, "weight_decay": 1e-05, "max_epochs": 1, "iterations_per_epoch": 3,
    "max_minutes": math.inf, "foreground_oversample": 0.33,
    "augment": {"rotate_deg": 10.0, "elastic": True}, "val_every": 1, "num_folds": 5, "fold": 0, "seed": 0,
    "bf16": False, "num_threads": 1, "overlap": 0.5, "tta": False,
}
# the older rule on a 48 x 48 x 8 patch at 1 mm (each axis halved while >= 4 after halving and not coarser than twice
# the finest axis, the 8-voxel one included once it stops): 48x48x8 -> 24x24x4 -> 12x12x4 -> 6x6x4
OLD_KERNELS = [[3, 3, 3]] * 4
OLD_STRIDES = [[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 1]]


def _dynunet(deep_supervision: bool, residual: bool = False) -> DynUNet:
    return DynUNet(3, 1, 3, kernel_size=OLD_KERNELS, strides=OLD_STRIDES, upsample_kernel_size=OLD_STRIDES[1:],
                   filters=[4, 8, 16, 16], norm_name="instance", deep_supervision=deep_supervision,
                   deep_supr_num=2, res_block=residual)


def _save_old(path, plan: dict, state_dict: dict) -> None:
    torch.save({"format": "medseg-model", "format_version": 1, "plan": plan,
                "labels": {int(k): v for k, v in plan["labels"].items()}, "state_dict": state_dict,
                "versions": {"medseg": "0.1.0"}, "info": {"epochs": 1, "iterations": 3}}, path)


def _reference(net, path, overlap: float) -> np.ndarray:
    """Class probabilities of ``net`` on the case at ``path`` (1 mm, stored as the plan takes it), without medseg."""
    x = np.asarray(nib.load(str(path)).dataobj, np.float64)
    x = (x - x.mean()) / max(x.std(), 1e-8)
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(x).float()[None, None], [48, 48, 8], 2, net,
                                          overlap=overlap, mode="gaussian", sigma_scale=0.125)[0]
    return logits.softmax(0).numpy()


@pytest.mark.realdata
def test_a_model_trained_under_looser_plan_checks_predicts_as_trained(tmp_path):
    case = data_path("msd_hippocampus", "imagesTr", "hippocampus_008.nii.gz")
    torch.manual_seed(0)
    trained = _dynunet(deep_supervision=True)  # the weights as training saved them: heads included
    run = tmp_path / "run"
    run.mkdir()
    _save_old(run / "model.pt", OLD_PLAN, trained.state_dict())
    assert torch.load(run / "model.pt", weights_only=True)["plan"]["max_minutes"] == math.inf
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / case.name).symlink_to(case)

    res = run_cli("predict", "-m", str(run), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                  "--probabilities", "-q")
    assert res.code == 0, res.err

    reference = _dynunet(deep_supervision=False)
    missing, unexpected = reference.load_state_dict(trained.state_dict(), strict=False)
    assert not missing and unexpected and all("deep_supervision_heads." in k or ".super_head." in k
                                              for k in unexpected)
    ref = _reference(reference.eval(), case, OLD_PLAN["overlap"])
    probs = nib.load(str(tmp_path / "out" / "hippocampus_008_probs.nii.gz")).get_fdata()
    labels = np.asarray(nib.load(str(tmp_path / "out" / "hippocampus_008.nii.gz")).dataobj)
    assert np.abs(np.moveaxis(probs, -1, 0) - ref).max() < 2e-5  # classes on the file's last axis
    top2 = np.sort(ref, 0)[-2:]
    differ = labels != ref.argmax(0)
    assert not differ.any() or (top2[1] - top2[0])[differ].max() < 1e-5  # ties only


def test_a_model_setting_prediction_reads_is_still_refused(tmp_path):
    _save_old(tmp_path / "model.pt", {**OLD_PLAN, "overlap": 1.0}, _dynunet(True).state_dict())
    res = run_cli("predict", "-m", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "out"))
    assert_clean_error(res, "model.pt: invalid plan: overlap must be in [0, 1)")


@pytest.mark.parametrize("weights", ["residual", "wider"])
def test_weights_another_network_has_are_refused_in_one_line(tmp_path, weights):
    # residual blocks' weights under a plan of plain ones: their 1x1 convolutions were dropped and the rest loaded
    # (exit 0, another network's output); twice the filters: a size-mismatch traceback, exit 1
    plan = {**OLD_PLAN, "max_minutes": None, "augment": {}, "normalisation": [{"scheme": "zscore"}]}
    other = (_dynunet(True, residual=True) if weights == "residual" else
             DynUNet(3, 1, 3, kernel_size=OLD_KERNELS, strides=OLD_STRIDES, upsample_kernel_size=OLD_STRIDES[1:],
                     filters=[8, 16, 32, 32], norm_name="instance"))
    _save_old(tmp_path / "model.pt", plan, other.state_dict())
    img = tmp_path / "in" / "case.nii.gz"
    img.parent.mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(24, 24, 8)).astype(np.float32), np.eye(4)),
             str(img))
    res = run_cli("predict", "-m", str(tmp_path), "-i", str(img.parent), "-o", str(tmp_path / "out"))
    assert_clean_error(res, "model.pt: model weights do not match the plan's network")
    assert not (tmp_path / "out" / "case.nii.gz").exists()
