"""Instance metrics against StarDist's published ``matching`` definitions (stardist/matching.py, BSD-3):
hand-checkable cases and real masks, using a brute-force re-statement of those definitions."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy.optimize import linear_sum_assignment

from medseg.cells.evaluate import evaluate_pair, summarize
from medseg.evaluate.instances import match_instances
from conftest import data_path


def stardist_matching(y_true, y_pred, thresh):
    """StarDist's `matching`: dense IoU matrix, then for thresh < 0.5 a linear assignment maximising the
    number of matches (cost = -(iou >= thresh) - iou / (2 n)), else the unique pairs with IoU >= thresh."""
    t_ids = [i for i in np.unique(y_true) if i]
    p_ids = [i for i in np.unique(y_pred) if i]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, i in enumerate(t_ids):
        ti = y_true == i
        for b, j in enumerate(p_ids):
            pj = y_pred == j
            inter = np.logical_and(ti, pj).sum()
            iou[a, b] = inter / np.logical_or(ti, pj).sum() if inter else 0.0
    n_true, n_pred = iou.shape
    n_matched = min(n_true, n_pred)
    if n_matched == 0:
        tp = 0
        matched = np.zeros(0)
    else:
        costs = -(iou >= thresh).astype(float) - iou / (2 * n_matched)
        r, c = linear_sum_assignment(costs)
        ok = iou[r, c] >= thresh
        tp = int(ok.sum())
        matched = iou[r, c][ok]
    fp, fn = n_pred - tp, n_true - tp
    acc = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    pq = matched.sum() / (tp + fp / 2 + fn / 2) if tp + fp + fn else 0.0
    return dict(tp=tp, fp=fp, fn=fn, accuracy=acc, panoptic_quality=pq,
                precision=tp / (tp + fp) if tp + fp else 0.0, recall=tp / (tp + fn) if tp + fn else 0.0,
                f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)


def _compare(ref, pred, thresholds):
    for m in match_instances(ref, pred, thresholds):
        s = stardist_matching(ref, pred, m.thresh)
        assert (m.tp, m.fp, m.fn) == (s["tp"], s["fp"], s["fn"]), m.thresh
        assert m.ap == pytest.approx(s["accuracy"])
        assert m.f1 == pytest.approx(s["f1"]) and m.panoptic_quality == pytest.approx(s["panoptic_quality"])
        assert m.precision == pytest.approx(s["precision"]) and m.recall == pytest.approx(s["recall"])


def test_hand_checkable():
    ref = np.zeros((6, 10), int)
    ref[0:2, 0:4] = 1  # 8 px
    ref[3:6, 0:3] = 2  # 9 px
    ref[0:3, 6:10] = 3  # 12 px
    pred = np.zeros_like(ref)
    pred[0:2, 0:3] = 5  # IoU 6/8 = 0.75 with 1
    pred[3:6, 0:1] = 6  # IoU 3/9 = 0.33 with 2
    pred[4:6, 6:8] = 7  # no overlap: a false positive
    # at 0.5: TP 1 (1-5), FP 2 (6, 7), FN 2 (2, 3) -> AP 1/5
    (m,) = match_instances(ref, pred, [0.5])
    assert (m.tp, m.fp, m.fn, m.ap) == (1, 2, 2, pytest.approx(0.2))
    assert m.panoptic_quality == pytest.approx(0.75 / (1 + 1 + 1))
    # at 0.3 object 2 is matched too
    (m,) = match_instances(ref, pred, [0.3])
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    _compare(ref, pred, [0.1, 0.3, 0.5, 0.7, 0.9])


def test_one_prediction_over_two_objects():
    ref = np.zeros((4, 8), int)
    ref[:, 0:4], ref[:, 4:8] = 1, 2
    pred = np.ones_like(ref)  # a merge: IoU 0.5 with each, only one can be matched
    (m,) = match_instances(ref, pred, [0.5])
    assert (m.tp, m.fp, m.fn) == (1, 0, 1)
    _compare(ref, pred, [0.2, 0.5, 0.6])


def test_real_masks_against_stardist_definitions():
    from scipy import ndimage as ndi

    labs = sorted(data_path("dsb2018_fluo", "labels").glob("*.tif"))[:2]
    for p in labs:
        ref = tifffile.imread(p)
        # realistic predictions: eroded objects, two merged by connected components, one removed
        pred = ndi.grey_erosion(ref, size=(2, 2))
        pred = np.where(pred == pred.max(), 0, pred)
        merged = ndi.label(ndi.binary_dilation(ref > 0, iterations=1))[0]
        for cand in (pred, merged):
            _compare(ref, cand, [0.3, 0.5, 0.7, 0.9])


def test_count_error_and_summary():
    ref = np.array([[1, 0, 2, 0, 3, 0, 4]])
    pred = np.array([[1, 0, 2, 0, 0, 0, 0]])
    d = evaluate_pair(ref, pred, thresholds=(0.5,))
    assert d["count_error"] == -2 and d["abs_relative_count_error"] == pytest.approx(0.5)
    s = summarize([d, evaluate_pair(ref, ref, thresholds=(0.5,))], thresholds=(0.5,))
    assert s["mean"]["ap@0.5"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["pooled"]["ap@0.5"] == pytest.approx(6 / 8)
    assert s["mean"]["abs_relative_count_error"] == pytest.approx(0.25)


def test_pooled_count_error_weighs_images_by_their_nuclei():
    # 10 nuclei, one missed (10 %); 2 nuclei, two spurious added (100 %)
    big = np.zeros((1, 40), int)
    big[0, ::4] = np.arange(1, 11)
    small_ref = np.array([[1, 0, 2, 0, 0, 0, 0]])
    small_pred = np.array([[1, 0, 2, 0, 3, 0, 4]])
    rows = [evaluate_pair(big, np.where(big == 10, 0, big), thresholds=(0.5,)),
            evaluate_pair(small_ref, small_pred, thresholds=(0.5,))]
    s = summarize(rows, thresholds=(0.5,))
    assert s["mean"]["abs_relative_count_error"] == pytest.approx((0.1 + 1.0) / 2)
    assert s["pooled"]["abs_relative_count_error"] == pytest.approx((1 + 2) / 12)
    assert s["pooled"]["relative_count_error"] == pytest.approx((13 - 12) / 12)
