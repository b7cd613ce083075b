"""nnU-Net v2's normalisation schemes, chosen by channel name in dataset.json: a dataset prepared for nnU-Net with
``noNorm``, ``rescale_to_0_1`` or ``rgb_to_0_1`` channels is normalised as nnU-Net normalises it (they were all
z-scored), checked against the formulas of nnU-Net's documentation written out in numpy."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.plan.plan import Normalisation, Plan


def _dataset(root, names):
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for case in ("a", "b"):
        for c in range(len(names)):
            img = rng.integers(0, 256, (12, 12, 8)).astype(np.float32)
            nib.save(nib.Nifti1Image(img, np.eye(4)), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        lab = np.zeros((12, 12, 8), np.uint8)
        lab[3:8, 3:8, 2:6] = 1
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): n for i, n in enumerate(names)}, "labels": {"background": 0, "x": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return root


def test_the_planner_maps_nnunet_channel_names_to_their_schemes(tmp_path):
    from medseg.plan.planner import make_plan

    names = ["noNorm", "RESCALE_to_0_1", "rgb_to_0_1", "T2", "zscore"]  # nnU-Net casefolds the names
    plan = make_plan(_dataset(tmp_path / "ds", names), memory_gb=1)
    assert [n.scheme for n in plan.normalisation] == ["none", "rescale_to_0_1", "rgb_to_0_1", "zscore", "zscore"]
    again = Plan.from_dict(plan.to_dict())  # written and read back
    assert [n.scheme for n in again.normalisation] == [n.scheme for n in plan.normalisation]


def test_each_scheme_equals_nnunets_formula():
    from medseg.train.preprocess import normalise

    rng = np.random.default_rng(1)
    a = np.stack([rng.normal(300, 50, (6, 7, 5)), rng.uniform(-20, 80, (6, 7, 5)), rng.integers(0, 256, (6, 7, 5)),
                  np.full((6, 7, 5), 7.0)]).astype(np.float32)
    plan = Plan(channels=["a", "b", "c", "d"], normalisation=[Normalisation("none"), Normalisation("rescale_to_0_1"),
                                                              Normalisation("rgb_to_0_1"),
                                                              Normalisation("rescale_to_0_1")])
    x = normalise(a, plan)
    b = a.astype(np.float64)
    np.testing.assert_array_equal(x[0], a[0])
    np.testing.assert_allclose(x[1], (b[1] - b[1].min()) / (b[1].max() - b[1].min()), atol=1e-6)
    assert x[1].min() == 0 and abs(x[1].max() - 1) < 1e-6
    np.testing.assert_allclose(x[2], b[2] / 255, atol=1e-7)
    np.testing.assert_array_equal(x[3], 0)  # a constant image: nnU-Net divides by max(range, 1e-8)


def test_numbers_a_scheme_would_ignore_are_refused(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text("dataset: .\nchannels: [x]\nlabels: {0: background, 1: x}\n"
                 "normalisation: [{scheme: rescale_to_0_1, clip: [0, 1]}]\n")
    with pytest.raises(InputError, match="apply to scheme 'ct' only"):
        Plan.from_yaml(p)
