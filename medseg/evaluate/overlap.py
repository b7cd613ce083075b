"""Overlap metrics of label maps from one confusion matrix (one pass over the voxels, no one-hot).

MONAI's ``DiceMetric`` one-hot encodes every class (K passes, K float copies of the volume);
here one ``np.bincount`` over ``ref * n + pred`` gives the full confusion matrix, from which
Dice, IoU, precision, recall and volumes of every class follow at once.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 23  # voxels per bincount slab: bounds the int64 temporaries to ~64 MB


def _as_label_array(name: str, arr) -> np.ndarray:
    from medseg.io.labels import integer_labels  # InputError (a ValueError) for NaN, fractions, negatives

    return integer_labels(arr, what=name)


def _same_order_flat(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat views of both arrays in one common memory order (no copy when both are C or both F)."""
    if ref.flags.f_contiguous and pred.flags.f_contiguous and not (ref.flags.c_contiguous and pred.flags.c_contiguous):
        return ref.T.reshape(-1), pred.T.reshape(-1)
    return np.ascontiguousarray(ref).reshape(-1), np.ascontiguousarray(pred).reshape(-1)


def present_labels(arr: np.ndarray) -> np.ndarray:
    """Sorted label values present in an integer label map (bincount, not a sort, for small labels).

    Parameters
    ----------
    arr : ndarray of int
        Label map, any dimension; non-integer or negative values are an ``InputError``.

    Returns
    -------
    ndarray of int
        The distinct values, background 0 included when present.

    Examples
    --------
    >>> present_labels(np.array([[0, 3], [3, 7]], np.uint8)).tolist()
    [0, 3, 7]
    """
    arr = _as_label_array("label map", arr)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    top = int(arr.max())
    if top < (1 << 24):
        flat = arr.reshape(-1) if arr.flags.c_contiguous else arr.T.reshape(-1) if arr.flags.f_contiguous else arr.ravel()
        counts = np.zeros(top + 1, np.int64)
        for s in range(0, flat.size, _CHUNK):  # bincount casts to int64: in slabs, not 8 bytes per voxel at once
            counts += np.bincount(flat[s:s + _CHUNK], minlength=top + 1)
        return np.flatnonzero(counts)
    return np.unique(arr)


def confusion_matrix(ref, pred, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix ``cm[i, j]`` = number of voxels with reference ``labels[i]`` and prediction ``labels[j]``.

    Parameters
    ----------
    ref, pred : ndarray of int
        Label maps of the same shape (any dimension).
    labels : sequence of int, optional
        Label values to include even when absent from both maps; every value present in
        either map is always included (so row and column sums are the true volumes).

    Returns
    -------
    cm : ndarray of int64, shape (n, n)
    labels : ndarray of int64, shape (n,)

    Examples
    --------
    >>> cm, lab = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    >>> lab.tolist(), cm.tolist()
    ([0, 1, 2], [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    """
    ref = _as_label_array("reference", ref)
    pred = _as_label_array("prediction", pred)
    if ref.shape != pred.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs prediction {pred.shape}")
    extra = np.asarray([] if labels is None else labels, dtype=np.int64)
    r, p = _same_order_flat(ref, pred)
    top = int(max(r.max(initial=0), p.max(initial=0), extra.max(initial=0))) + 1
    if top * top <= (1 << 24):
        # small label values (semantic maps): key = ref * top + pred directly, in the narrowest dtype;
        # the labels present are read off the matrix's row and column sums (no extra pass)
        kdt = np.uint16 if top * top <= (1 << 16) else np.uint32
        full = np.zeros(top * top, np.int64)
        for s in range(0, r.size, _CHUNK):
            key = r[s:s + _CHUNK].astype(kdt)
            key *= kdt(top)
            np.add(key, p[s:s + _CHUNK], out=key, casting="unsafe")  # values < top: no overflow
            full += np.bincount(key, minlength=top * top)
        full = full.reshape(top, top)
        present = np.flatnonzero(full.sum(axis=0) + full.sum(axis=1))
        labels = np.union1d(present, extra).astype(np.int64)
        return full[np.ix_(labels, labels)], labels
    labels = np.union1d(np.union1d(present_labels(ref), present_labels(pred)), extra).astype(np.int64)
    n = len(labels)
    if n * n > (1 << 26):  # many labels (instance maps): sparse pairs instead of a dense matrix
        raise ValueError(f"{n} labels: too many for a dense confusion matrix (use medseg.evaluate.instances)")
    lut = np.zeros(top, dtype=np.int32)
    lut[labels] = np.arange(n)
    cm = np.zeros(n * n, np.int64)
    for s in range(0, r.size, _CHUNK):
        key = lut[r[s:s + _CHUNK]].astype(np.int64)
        key *= n
        key += lut[p[s:s + _CHUNK]]
        cm += np.bincount(key, minlength=n * n)
    return cm.reshape(n, n), labels


def _div(a: np.ndarray, b: np.ndarray, fill: np.ndarray | float) -> np.ndarray:
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    out = np.broadcast_to(np.asarray(fill, float), a.shape).copy()
    np.divide(a, b, out=out, where=b > 0)
    return out


def overlap_from_confusion(cm: np.ndarray, voxel_volume_ml: float = 1.0) -> dict[str, np.ndarray]:
    """Per-class overlap metrics (arrays indexed like ``cm``'s rows) from a confusion matrix.

    Empty-class policy: both empty -> Dice = IoU = precision = recall = 1; exactly one empty ->
    Dice = IoU = 0 and the undefined ratio (precision with an empty prediction, recall with an
    empty reference) is 0. Relative volume difference is NaN when the reference is empty.

    Parameters
    ----------
    cm : ndarray of int, shape (n, n)
        Confusion matrix, rows reference, columns prediction (:func:`confusion_matrix`).
    voxel_volume_ml : float
        Volume of one voxel in ml, for the volume entries.

    Returns
    -------
    dict of str to ndarray, each of shape (n,)
        ``tp``, ``fp``, ``fn``, ``n_ref``, ``n_pred`` (voxels), ``dice``, ``iou``, ``precision``, ``recall``,
        ``volume_pred_ml``, ``volume_ref_ml``, ``volume_diff_ml`` (prediction - reference), ``abs_volume_diff_ml``
        and ``rel_volume_diff`` (difference / reference volume).

    Examples
    --------
    >>> m = overlap_from_confusion(np.array([[5, 1], [2, 2]]))
    >>> round(float(m["dice"][1]), 4), round(float(m["iou"][1]), 4), int(m["fp"][1]), int(m["fn"][1])
    (0.5714, 0.4, 1, 2)

    Two 2x2 squares of a 4x4 label map that share one column (2 of their 4 pixels):

    >>> ref = np.zeros((4, 4), int); ref[:2, :2] = 1
    >>> pred = np.zeros((4, 4), int); pred[:2, 1:3] = 1
    >>> m = overlap_from_confusion(confusion_matrix(ref, pred)[0])
    >>> float(m["dice"][1]), round(float(m["iou"][1]), 4), float(m["volume_diff_ml"][1])
    (0.5, 0.3333, 0.0)
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.int64)
    n_ref = cm.sum(axis=1)
    n_pred = cm.sum(axis=0)
    fp = n_pred - tp
    fn = n_ref - tp
    both_empty = (n_ref == 0) & (n_pred == 0)
    one = both_empty.astype(float)
    vol_p = n_pred * float(voxel_volume_ml)
    vol_r = n_ref * float(voxel_volume_ml)
    return {
        "tp": tp, "fp": fp, "fn": fn, "n_ref": n_ref, "n_pred": n_pred,
        "dice": _div(2 * tp, 2 * tp + fp + fn, one),
        "iou": _div(tp, tp + fp + fn, one),
        "precision": _div(tp, n_pred, one),
        "recall": _div(tp, n_ref, one),
        "volume_pred_ml": vol_p,
        "volume_ref_ml": vol_r,
        "volume_diff_ml": vol_p - vol_r,
        "abs_volume_diff_ml": np.abs(vol_p - vol_r),
        "rel_volume_diff": _div(vol_p - vol_r, vol_r, np.nan),
    }


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of voxels whose label is right (background included).

    Misleading under class imbalance: a prediction of all background scores ~0.99 on most CT
    volumes. Report it next to the mean IoU, never alone.

    Parameters
    ----------
    cm : ndarray of int, shape (n, n)
        Confusion matrix (:func:`confusion_matrix`).

    Returns
    -------
    float
        ``trace(cm) / cm.sum()``; 1.0 for an empty matrix.

    Examples
    --------
    >>> pixel_accuracy(np.array([[98, 0], [2, 0]]))
    0.98
    """
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 1.0
