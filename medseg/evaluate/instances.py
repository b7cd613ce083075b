"""Instance (object-wise) matching and metrics: cells, lesions, tumours.

Definitions follow StarDist's ``matching`` (Schmidt et al. 2018; Caicedo et al. 2019):
a predicted and a reference object match when IoU >= ``thresh`` under a one-to-one assignment.

* AP ("accuracy" in StarDist) = TP / (TP + FP + FN)
* precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN)
* panoptic quality = sum of matched IoUs / (TP + FP/2 + FN/2)

For ``thresh >= 0.5`` a match is unique by construction (two objects cannot both overlap one
object with IoU > 0.5), so pairs are taken directly; below 0.5 the assignment maximising the
number of matches (then the summed IoU of every assigned pair, those under the threshold too) is found with the
Hungarian algorithm, with StarDist's cost.
Empty images: with no objects on either side every ratio is 1 (nothing to find, nothing wrong);
a ratio whose denominator is 0 otherwise is 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Overlaps:
    """Sparse overlap table of two instance maps: ids, sizes and the IoU of every touching pair
    (what :func:`overlaps` returns).

    Attributes
    ----------
    ref_ids, pred_ids : ndarray
        Sorted object ids (> 0) of the reference and the prediction.
    ref_sizes, pred_sizes : ndarray of int
        Voxels per object, aligned with ``ref_ids`` / ``pred_ids``.
    pair_ref, pair_pred : ndarray of int
        For each overlapping pair, the index of its objects in ``ref_ids`` / ``pred_ids``.
    pair_inter, pair_iou : ndarray
        Shared voxels and IoU of each pair.

    Examples
    --------
    >>> o = overlaps(np.array([[1, 1, 0, 2, 2]]), np.array([[3, 3, 3, 0, 4]]))
    >>> o.pair_ref.tolist(), o.pair_pred.tolist(), o.pair_inter.tolist()
    ([0, 1], [0, 1], [2, 1])
    >>> o.ref_sizes.tolist(), o.pred_sizes.tolist()
    ([2, 2], [3, 1])
    """

    ref_ids: np.ndarray
    pred_ids: np.ndarray
    pair_ref: np.ndarray  # index into ref_ids
    pair_pred: np.ndarray  # index into pred_ids
    pair_iou: np.ndarray
    ref_sizes: np.ndarray  # voxels per object, aligned with ref_ids / pred_ids
    pred_sizes: np.ndarray
    pair_inter: np.ndarray  # shared voxels of each pair


@dataclass(frozen=True)
class MatchResult:
    """Object-level scores at one IoU threshold (see the module docstring for the definitions).

    Attributes
    ----------
    thresh : float
        IoU threshold of a match.
    n_ref, n_pred : int
        Objects in the reference and the prediction.
    tp, fp, fn : int
        Matched pairs, unmatched predicted objects, unmatched reference objects.
    precision, recall, f1, ap, panoptic_quality : float
        As defined in the module docstring (``ap`` is TP / (TP + FP + FN)).
    mean_matched_iou : float
        Mean IoU of the matched pairs (0 without any).

    Examples
    --------
    >>> m = match_instances(np.array([[1, 1, 0, 2, 2, 0]]), np.array([[1, 1, 0, 0, 3, 3]]))[0]
    >>> m.tp, m.fp, m.fn, m.precision, m.panoptic_quality, m.mean_matched_iou
    (1, 1, 1, 0.5, 0.5, 1.0)
    >>> round(m.as_dict()["ap"], 3)
    0.333
    """

    thresh: float
    n_ref: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    panoptic_quality: float
    mean_matched_iou: float

    def as_dict(self) -> dict:
        return asdict(self)


def _check_labels(name: str, arr: np.ndarray) -> np.ndarray:
    from medseg.io.labels import integer_labels  # InputError (a ValueError) for NaN, fractions, negatives

    return integer_labels(arr, what=name)


def overlaps(ref: np.ndarray, pred: np.ndarray) -> Overlaps:
    """IoU of every pair of overlapping objects, computed in one pass over the voxels.

    Parameters
    ----------
    ref, pred : ndarray of int
        Instance label maps (0 = background), same shape; non-integer or negative values are an ``InputError``.

    Returns
    -------
    Overlaps
        Ids and sizes of both sides' objects and the intersection and IoU of every pair that shares a voxel.

    Examples
    --------
    >>> ref = np.array([[1, 1, 0, 2, 2]])
    >>> pred = np.array([[3, 3, 3, 0, 4]])
    >>> o = overlaps(ref, pred)
    >>> o.ref_ids.tolist(), o.pred_ids.tolist(), np.round(o.pair_iou, 3).tolist()
    ([1, 2], [3, 4], [0.667, 0.5])
    """
    ref = _check_labels("reference", ref)
    pred = _check_labels("prediction", pred)
    if ref.shape != pred.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs prediction {pred.shape}")
    r = ref.ravel()
    p = pred.ravel()
    ref_ids, ref_sizes = np.unique(r[r > 0], return_counts=True)
    pred_ids, pred_sizes = np.unique(p[p > 0], return_counts=True)
    both = (r > 0) & (p > 0)
    rb = np.searchsorted(ref_ids, r[both])
    pb = np.searchsorted(pred_ids, p[both])
    key = rb.astype(np.int64) * max(len(pred_ids), 1) + pb
    keys, inter = np.unique(key, return_counts=True)
    pair_ref = keys // max(len(pred_ids), 1)
    pair_pred = keys % max(len(pred_ids), 1)
    union = ref_sizes[pair_ref] + pred_sizes[pair_pred] - inter
    return Overlaps(ref_ids, pred_ids, pair_ref, pair_pred, inter / union, ref_sizes, pred_sizes, inter)


def _matches(ov: Overlaps, thresh: float) -> np.ndarray:
    """IoUs of the matched pairs at ``thresh``."""
    ok = ov.pair_iou >= thresh
    if thresh >= 0.5 or not ok.any():
        if thresh > 0.5 or not ok.any():
            return ov.pair_iou[ok]
        # at exactly 0.5 two pairs may tie on one object: fall through to the assignment
        if len(np.unique(ov.pair_ref[ok])) == ok.sum() and len(np.unique(ov.pair_pred[ok])) == ok.sum():
            return ov.pair_iou[ok]
    # every overlapping pair, those under the threshold too: StarDist's cost breaks ties between assignments with
    # as many matches by the summed IoU of all assigned pairs (its panoptic quality differs otherwise)
    rows, r_idx = np.unique(ov.pair_ref, return_inverse=True)
    cols, c_idx = np.unique(ov.pair_pred, return_inverse=True)
    iou = np.zeros((len(rows), len(cols)))
    iou[r_idx, c_idx] = ov.pair_iou
    n = max(min(len(ov.ref_ids), len(ov.pred_ids)), 1)
    # maximise the number of matches first, then the summed IoU (StarDist's cost)
    cost = -(iou >= thresh).astype(float) - iou / (2 * n)
    ri, ci = linear_sum_assignment(cost)
    matched = iou[ri, ci]
    return matched[matched >= thresh]


def _ratio(a: float, b: float, empty: float) -> float:
    return float(a / b) if b > 0 else empty


def _check_thresholds(thresholds) -> list[float]:
    """The IoU thresholds as floats: one number or a non-empty sequence, each in [0, 1]."""
    ts = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=float)).ravel()]
    if not ts:  # no threshold left instance_metrics nothing to report (an IndexError)
        raise ValueError("thresholds is empty: give at least one IoU threshold in [0, 1]")
    bad = [t for t in ts if not 0 <= t <= 1]  # NaN too: an IoU above 1 matched nothing, silently
    if bad:
        raise ValueError(f"IoU thresholds must be in [0, 1], got {bad[0]:g}")
    return ts


def match_instances(ref: np.ndarray, pred: np.ndarray, thresholds=(0.5,)) -> list[MatchResult]:
    """Match objects of two instance label maps at each IoU threshold.

    Parameters
    ----------
    ref, pred : ndarray of int
        Instance label maps (0 = background, one id per object), 2D or 3D, same shape.
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    list of MatchResult
        One per threshold, in the order given.

    Examples
    --------
    >>> ref = np.array([[1, 1, 0, 2, 2, 0]])
    >>> pred = np.array([[1, 1, 0, 0, 3, 3]])
    >>> r = match_instances(ref, pred, [0.3, 0.5])
    >>> [(m.thresh, m.tp, m.fp, m.fn, round(m.ap, 3)) for m in r]
    [(0.3, 2, 0, 0, 1.0), (0.5, 1, 1, 1, 0.333)]
    """
    thresholds = _check_thresholds(thresholds)
    ov = overlaps(ref, pred)
    n_ref, n_pred = len(ov.ref_ids), len(ov.pred_ids)
    out = []
    for t in thresholds:
        m = _matches(ov, float(t))
        tp = int(len(m))
        fp, fn = n_pred - tp, n_ref - tp
        nothing = n_ref == 0 and n_pred == 0
        out.append(MatchResult(
            thresh=float(t), n_ref=n_ref, n_pred=n_pred, tp=tp, fp=fp, fn=fn,
            precision=_ratio(tp, tp + fp, 1.0 if nothing else 0.0),
            recall=_ratio(tp, tp + fn, 1.0 if nothing else 0.0),
            f1=_ratio(2 * tp, 2 * tp + fp + fn, 1.0 if nothing else 0.0),
            ap=_ratio(tp, tp + fp + fn, 1.0 if nothing else 0.0),
            panoptic_quality=_ratio(float(m.sum()), tp + fp / 2 + fn / 2, 1.0 if nothing else 0.0),
            mean_matched_iou=_ratio(float(m.sum()), tp, 0.0),
        ))
    return out


def instance_metrics(ref: np.ndarray, pred: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Instance metrics as a flat dict: counts, count error and per-threshold scores.

    The count error is signed (``count_error``, ``relative_count_error`` = (n_pred - n_ref) / n_ref: + over-,
    - under-counted) and absolute (``abs_relative_count_error``); both relative errors are 0 without reference
    objects.

    Parameters
    ----------
    ref, pred : ndarray of int
        Instance label maps (0 = background), same shape.
    thresholds : sequence of float
        IoU thresholds (default 0.1 ... 0.9).

    Returns
    -------
    dict
        ``n_ref``, ``n_pred``, ``count_error``, ``relative_count_error``, ``abs_relative_count_error``, and for
        each threshold ``t`` (formatted with ``:g``) ``ap@t``, ``precision@t``, ``recall@t``, ``f1@t``,
        ``panoptic_quality@t``, ``tp@t``, ``fp@t``, ``fn@t``.

    Examples
    --------
    >>> d = instance_metrics(np.array([[1, 0, 2]]), np.array([[1, 0, 0]]), thresholds=[0.5])
    >>> d["n_ref"], d["n_pred"], d["count_error"], d["relative_count_error"], d["abs_relative_count_error"]
    (2, 1, -1, -0.5, 0.5)
    >>> d["ap@0.5"]
    0.5
    """
    res = match_instances(ref, pred, thresholds)
    first = res[0]
    err = first.n_pred - first.n_ref
    d: dict = {"n_ref": first.n_ref, "n_pred": first.n_pred, "count_error": err,
               "relative_count_error": _ratio(err, first.n_ref, 0.0),
               "abs_relative_count_error": _ratio(abs(err), first.n_ref, 0.0)}
    for m in res:
        t = f"{m.thresh:g}"
        for k in ("ap", "precision", "recall", "f1", "panoptic_quality", "tp", "fp", "fn"):
            d[f"{k}@{t}"] = getattr(m, k)
    return d
