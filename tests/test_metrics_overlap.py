"""Overlap metrics (Dice, IoU, precision, recall, volumes) against MONAI, medpy and SimpleITK on real label maps."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.evaluate.metrics import evaluate_case
from medseg.evaluate.overlap import confusion_matrix, overlap_from_confusion, pixel_accuracy, present_labels
from _evaluate_cases import KINDS, hippocampus, one_hot, perturb, totalseg


def _monai_dice_iou(pred, ref, labels):
    from monai.metrics import DiceMetric, MeanIoU

    p, r = one_hot(pred, labels), one_hot(ref, labels)
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, r)[0].numpy()
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, r)[0].numpy()
    return dice, iou


@pytest.mark.parametrize("kind", KINDS)
def test_hippocampus_dice_iou_equal_monai(kind):
    for case, ref, img in hippocampus(4):
        pred = perturb(ref, kind)
        res = evaluate_case(pred, ref, labels={1: "anterior", 2: "posterior"}, spacing=img.header.get_zooms(),
                            surface=False)
        dice, iou = _monai_dice_iou(pred, ref, [1, 2])
        for i, name in enumerate(("anterior", "posterior")):
            m = res["classes"][name]
            if m["flags"]:  # MONAI's empty convention differs (tested in test_metrics_empty)
                continue
            assert m["dice"] == pytest.approx(float(dice[i]), abs=1e-6), (case, kind, name)
            assert m["iou"] == pytest.approx(float(iou[i]), abs=1e-6), (case, kind, name)


def test_totalseg_42_labels_dice_iou_precision_recall_volume():
    from medpy.metric import binary as mb
    import SimpleITK as sitk

    ref, spacing = totalseg()
    pred = perturb(ref, "mixed")
    res = evaluate_case(pred, ref, spacing=spacing, surface=False)
    labels = [int(v) for v in np.unique(ref) if v]
    assert len(labels) == 41
    assert [res["labels"][n] for n in res["classes"]] == sorted(set(labels) | set(np.unique(pred).tolist()) - {0})
    dice, iou = _monai_dice_iou(pred, ref, labels)
    # SimpleITK's label statistics: physical size of each label (independent volume)
    stats = sitk.LabelShapeStatisticsImageFilter()
    simg = sitk.GetImageFromArray(np.ascontiguousarray(ref.transpose(2, 1, 0)))
    simg.SetSpacing(spacing)
    stats.Execute(simg)
    for i, c in enumerate(labels):
        m = res["classes"][f"label_{c}"]
        assert m["dice"] == pytest.approx(float(dice[i]), abs=1e-6)
        assert m["iou"] == pytest.approx(float(iou[i]), abs=1e-6)
        if (pred == c).any():
            assert m["precision"] == pytest.approx(mb.precision(pred == c, ref == c), abs=1e-12)
        assert m["recall"] == pytest.approx(mb.recall(pred == c, ref == c), abs=1e-12)
        assert m["volume_ref_ml"] == pytest.approx(stats.GetPhysicalSize(c) / 1000.0, rel=1e-9)
        assert m["volume_pred_ml"] == pytest.approx(np.count_nonzero(pred == c) * np.prod(spacing) / 1000, rel=1e-9)


def test_confusion_matrix_equals_pairwise_counts_and_memory_orders():
    ref, _ = totalseg()
    pred = perturb(ref, "shift")
    cm, labels = confusion_matrix(np.asfortranarray(ref), np.asfortranarray(pred))
    cm_c, _ = confusion_matrix(np.ascontiguousarray(ref), np.asfortranarray(pred))
    np.testing.assert_array_equal(cm, cm_c)
    rng = np.random.default_rng(1)
    for i, j in rng.integers(0, len(labels), size=(30, 2)):
        assert cm[i, j] == np.count_nonzero((ref == labels[i]) & (pred == labels[j]))
    assert cm.sum() == ref.size
    assert pixel_accuracy(cm) == pytest.approx(np.mean(ref == pred))
    np.testing.assert_array_equal(present_labels(ref), np.unique(ref))


def test_requested_absent_label_and_float_labels():
    ref = np.array([[0, 1], [1, 1]], np.float32)
    pred = np.array([[0, 1], [0, 0]], np.uint8)
    cm, labels = confusion_matrix(ref, pred, labels=[5])
    assert labels.tolist() == [0, 1, 5]
    m = overlap_from_confusion(cm)
    assert m["dice"][2] == 1.0 and m["dice"][1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-integer"):
        confusion_matrix(ref + 0.5, pred)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(ref, pred[:1])


def test_random_confusion_matrix_equals_counting():
    from hypothesis import given, settings, strategies as st
    from hypothesis.extra.numpy import arrays

    @settings(max_examples=40, deadline=None)
    @given(st.integers(1, 300).flatmap(lambda n: st.tuples(
        arrays(np.uint16, n, elements=st.integers(0, 300)), arrays(np.uint16, n, elements=st.integers(0, 300)))))
    def check(maps):
        ref, pred = maps
        cm, labels = confusion_matrix(ref, pred)
        assert labels.tolist() == sorted(set(ref.tolist()) | set(pred.tolist()))
        for i, a in enumerate(labels):
            assert cm[i].sum() == np.count_nonzero(ref == a) and cm[:, i].sum() == np.count_nonzero(pred == a)
            assert cm[i, i] == np.count_nonzero((ref == a) & (pred == a))
        assert cm.sum() == ref.size

    check()
