"""Aggregating per-case metrics: per-class mean/std, foreground mean, pooled lesion counts."""

from __future__ import annotations

import math

import numpy as np

from medseg.evaluate.metrics import METRIC_KEYS

PIXEL_ACCURACY_NOTE = ("pixel accuracy counts background voxels, which dominate medical volumes: it stays near 1 "
                       "even for poor segmentations; read it next to the mean IoU")


def _finite(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], float)
    return a[np.isfinite(a)]


def _mean_std(values) -> tuple[float, float]:
    a = _finite(values)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


_BOOT_CHUNK = 2**21


def bootstrap_mean_ci(values, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """Percentile-bootstrap confidence interval of the mean over cases (rows), per column.

    How far the mean of a validation set of this size could move with other cases like these: two methods whose
    means differ by less than the interval's half-width are not told apart by the set. Cases with a NaN in a
    column are left out of that column's resamples (they are not scores).

    Parameters
    ----------
    values : array_like, shape (n_cases,) or (n_cases, n_columns)
    confidence : float
        Coverage of the interval (0.95: the 2.5th and 97.5th percentiles of the resampled means).
    n_boot : int
        Resamples; the same case indices are used for every column.
    seed : int
        Resampling seed, so that a report is reproducible.

    Returns
    -------
    ndarray, shape (2,) or (2, n_columns)
        Lower and upper bound (NaN for a column without finite values).

    Examples
    --------
    >>> lo, hi = bootstrap_mean_ci([0.80, 0.85, 0.90, 0.95])
    >>> bool(0.80 <= lo < 0.875 < hi <= 0.95)
    True
    >>> bootstrap_mean_ci([0.9, 0.9, 0.9]).tolist()
    [0.9, 0.9]
    """
    a = np.asarray(values, float)
    flat = a.ndim == 1
    a = a[:, None] if flat else a
    out = np.full((2, a.shape[1]), np.nan)
    if a.shape[0] == 0:
        return out[:, 0] if flat else out
    rng = np.random.default_rng(seed)
    ok = np.isfinite(a)
    filled = np.where(ok, a, 0.0)
    sums, counts = [], []
    # resamples in chunks of about 2 M gathered values (case indices x columns), so that a cohort of 10,000 cases
    # needs ~50 MB, not 2 GB, and one of 300 cases x 123 classes (246 columns) not 4 GB
    chunk = max(1, _BOOT_CHUNK // (a.shape[0] * a.shape[1]))
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, a.shape[0], size=(min(chunk, n_boot - start), a.shape[0]))
        sums.append(filled[idx].sum(axis=1))
        counts.append(ok[idx].sum(axis=1))
    sums, counts = np.concatenate(sums), np.concatenate(counts)
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    for j in range(a.shape[1]):
        has = counts[:, j] > 0
        if has.any():
            out[:, j] = np.percentile(sums[has, j] / counts[has, j], q)
    return out[:, 0] if flat else out


def _pooled_lesions(items: list[dict]) -> dict:
    """StarDist's dataset-level matching: TP/FP/FN summed over cases before the ratios."""
    out: dict = {"n_ref": sum(d["n_ref"] for d in items), "n_pred": sum(d["n_pred"] for d in items)}
    out["count_error"] = out["n_pred"] - out["n_ref"]
    out["mean_abs_count_error"] = float(np.mean([abs(d["count_error"]) for d in items]))
    thresholds = sorted({k.split("@", 1)[1] for d in items for k in d if k.startswith("tp@")}, key=float)
    for t in thresholds:
        tp, fp, fn = (sum(d[f"{k}@{t}"] for d in items) for k in ("tp", "fp", "fn"))
        # summed matched IoU = PQ * (TP + FP/2 + FN/2) of each case
        iou_sum = sum(d[f"panoptic_quality@{t}"] * (d[f"tp@{t}"] + d[f"fp@{t}"] / 2 + d[f"fn@{t}"] / 2)
                      for d in items)
        none = tp + fp + fn == 0
        out[f"tp@{t}"], out[f"fp@{t}"], out[f"fn@{t}"] = tp, fp, fn
        out[f"precision@{t}"] = tp / (tp + fp) if tp + fp else float(none)
        out[f"recall@{t}"] = tp / (tp + fn) if tp + fn else float(none)
        out[f"f1@{t}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        out[f"ap@{t}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        out[f"panoptic_quality@{t}"] = iou_sum / (tp + fp / 2 + fn / 2) if tp + fp + fn else 1.0
    return out


def summarize(per_case: list[dict], class_names: list[str]) -> dict:
    """``{"mean", "std", "ci95", "foreground_mean", "overall"}`` of per-case results.

    ``ci95`` holds the 95 % bootstrap interval of each class's mean Dice and IoU over cases
    (:func:`bootstrap_mean_ci`). Means skip NaN values (undefined distances, relative volume with an empty reference);
    ``n_surface_cases`` says how many cases the distance means average.

    Parameters
    ----------
    per_case : list of dict
        Rows of :func:`medseg.evaluate.metrics.evaluate_case`: ``classes`` (``{name: {metric: value, "flags":
        [...]}}``), ``pixel_accuracy`` and ``mean_iou``.
    class_names : list of str
        Classes to summarise (a case without a class is left out of its statistics).

    Returns
    -------
    dict
        ``mean`` and ``std`` (``{class: {metric: value}}``; ``mean`` also holds ``n_cases``, ``n_surface_cases``,
        ``n_both_empty``, ``n_pred_empty``, ``n_ref_empty``, with distances ``n_distance_capped``, and pooled
        ``lesions``), ``ci95`` (``{class: {"dice":
        [lo, hi], "iou": [lo, hi]}}``), ``foreground_mean`` (the mean over classes of each class mean) and
        ``overall`` (mean and std over cases of ``pixel_accuracy`` and ``mean_iou``, and a ``note``).

    Examples
    --------
    >>> per_case = [{"classes": {"liver": {"dice": 0.5, "flags": []}}, "pixel_accuracy": 0.9, "mean_iou": 0.5},
    ...             {"classes": {"liver": {"dice": 1.0, "flags": ["both_empty"]}}, "pixel_accuracy": 1.0,
    ...              "mean_iou": 1.0}]
    >>> s = summarize(per_case, ["liver"])
    >>> s["mean"]["liver"]["dice"], s["std"]["liver"]["dice"], s["mean"]["liver"]["n_both_empty"]
    (0.75, 0.25, 1)
    >>> s["ci95"]["liver"]["dice"], s["overall"]["mean_iou"]["mean"]
    ([0.5, 1.0], 0.75)
    """
    mean: dict = {}
    std: dict = {}
    ci95: dict = {}
    for name in class_names:
        rows = [c["classes"][name] for c in per_case if name in c["classes"]]
        mean[name], std[name], ci95[name] = {}, {}, {}
        for k in METRIC_KEYS:
            if rows and k in rows[0]:
                mean[name][k], std[name][k] = _mean_std(r[k] for r in rows)
        flags = [f for r in rows for f in r["flags"]]
        mean[name]["n_cases"] = len(rows)
        if rows and "hd95" in rows[0]:
            mean[name]["n_surface_cases"] = int(_finite(r["hd95"] for r in rows).size)
            # a capped distance is a finite stand-in, not a measurement: say how many the means hold
            mean[name]["n_distance_capped"] = flags.count("distance_capped")
        for f in ("both_empty", "pred_empty", "ref_empty"):
            mean[name][f"n_{f}"] = flags.count(f)
        lesion_rows = [r["lesions"] for r in rows if "lesions" in r]
        if lesion_rows:
            mean[name]["lesions"] = _pooled_lesions(lesion_rows)
    fg: dict = {}
    for k in METRIC_KEYS:
        vals = [mean[n][k] for n in class_names if k in mean[n]]
        if vals:
            fg[k] = _mean_std(vals)[0]
    overall = {}
    for k in ("pixel_accuracy", "mean_iou"):
        m, s = _mean_std(c[k] for c in per_case)
        overall[k] = {"mean": m, "std": s}
    overall["note"] = PIXEL_ACCURACY_NOTE
    # one resampling of the cases for every class and metric (a column each; a case without the class is NaN there):
    # one call per class and metric redrew 10,000 x n_cases indices 82 times for 41 organs
    cols = [(n, k) for n in class_names for k in ("dice", "iou")
            if any(k in c["classes"].get(n, {}) for c in per_case)]
    if cols:
        table = [[_finite_or_nan(c["classes"].get(n, {}).get(k)) for n, k in cols] for c in per_case]
        bounds = bootstrap_mean_ci(table)
        for j, (n, k) in enumerate(cols):
            ci95[n][k] = [float(bounds[0, j]), float(bounds[1, j])]
    return {"mean": mean, "std": std, "ci95": ci95, "foreground_mean": fg, "overall": overall}


def _finite_or_nan(v) -> float:
    return np.nan if v is None else float(v)


def worst_cases(per_case: list[dict], n: int = 10, metric: str = "dice") -> list[dict]:
    """The ``n`` cases with the lowest mean ``metric`` over classes, with their worst class.

    Parameters
    ----------
    per_case : list of dict
        Rows of :func:`medseg.evaluate.metrics.evaluate_case` with a ``case`` name.
    n : int
        How many cases to return.
    metric : str
        Per-class metric to rank by (lower is worse); NaN and None values are left out, and so are cases without
        any value.

    Returns
    -------
    list of dict
        Worst first: ``case``, ``mean_<metric>``, ``worst_class`` and ``worst_<metric>``.

    Examples
    --------
    >>> per_case = [{"case": "a", "classes": {"liver": {"dice": 1.0}, "tumour": {"dice": 0.5}}},
    ...             {"case": "b", "classes": {"liver": {"dice": 0.9}, "tumour": {"dice": float("nan")}}}]
    >>> worst_cases(per_case, n=1)
    [{'case': 'a', 'mean_dice': 0.75, 'worst_class': 'tumour', 'worst_dice': 0.5}]
    >>> [w["case"] for w in worst_cases(per_case)]
    ['a', 'b']
    """
    rows = []
    for c in per_case:
        vals = {k: v[metric] for k, v in c["classes"].items() if v.get(metric) is not None
                and not math.isnan(v[metric])}
        if not vals:
            continue
        worst = min(vals, key=vals.get)
        rows.append({"case": c["case"], f"mean_{metric}": float(np.mean(list(vals.values()))),
                     "worst_class": worst, f"worst_{metric}": float(vals[worst])})
    rows.sort(key=lambda r: r[f"mean_{metric}"])
    return rows[:n]
