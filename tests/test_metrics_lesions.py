"""Lesion-wise metrics on real tumour labels (BraTS) and 3D nuclei (StarDist sample): components against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.evaluate.lesions import connected_components, lesion_metrics
from medseg.evaluate.metrics import evaluate_case
from conftest import data_path


def _brats(case="brats_2013_pat0001_1"):
    import nibabel as nib

    return np.asanyarray(nib.load(str(data_path("brats2015_sample", case, "OTMultiClass.nii.gz"))).dataobj).astype(
        np.uint8)


def _sitk_components(mask: np.ndarray) -> int:
    import SimpleITK as sitk

    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)  # fully connected
    return int(sitk.GetArrayViewFromImage(cc).max())


@pytest.mark.parametrize("cls", [1, 4])
def test_components_match_simpleitk_and_deleted_lesions_are_missed(cls):
    ref = _brats()
    mask = ref == cls
    lab = connected_components(mask)
    n = int(lab.max())
    assert n == _sitk_components(mask) and n >= 2
    # delete the two smallest components of the reference class: exactly 2 FN, nothing else changes
    sizes = np.bincount(lab.ravel())[1:]
    gone = np.argsort(sizes)[:2] + 1
    pred = ref.copy()
    pred[np.isin(lab, gone)] = 0
    d = lesion_metrics(mask, pred == cls, thresholds=[0.5, 0.9])
    assert (d["n_ref"], d["n_pred"], d["count_error"]) == (n, n - 2, -2)
    assert (d["tp@0.9"], d["fp@0.9"], d["fn@0.9"]) == (n - 2, 0, 2)
    assert d["ap@0.9"] == pytest.approx((n - 2) / n)
    assert d["panoptic_quality@0.5"] == pytest.approx((n - 2) / (n - 2 + 1))  # matched IoUs are 1
    r = evaluate_case(pred, ref, labels={cls: "t"}, lesion_classes=["t"], surface=False)
    assert r["classes"]["t"]["lesions"]["fn@0.5"] == 2


def test_given_instance_maps_stardist_nuclei():
    import tifffile

    inst = tifffile.imread(str(data_path("nuclei_stardist", "mask3d.tif")))
    ids = np.unique(inst)[1:]
    pred = inst.copy()
    pred[inst == ids[0]] = 0  # one nucleus missed
    d = lesion_metrics(inst, pred, thresholds=[0.5], instances=True)
    assert (d["n_ref"], d["n_pred"], d["tp@0.5"], d["fn@0.5"], d["fp@0.5"]) == (len(ids), len(ids) - 1,
                                                                               len(ids) - 1, 1, 0)
