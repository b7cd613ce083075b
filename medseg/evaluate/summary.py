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
    """``{"mean", "std", "foreground_mean", "overall"}`` of per-case results.

    Means skip NaN values (undefined distances, relative volume with an empty reference);
    ``n_surface_cases`` says how many cases the distance means average.
    """
    mean: dict = {}
    std: dict = {}
    for name in class_names:
        rows = [c["classes"][name] for c in per_case if name in c["classes"]]
        mean[name], std[name] = {}, {}
        for k in METRIC_KEYS:
            if rows and k in rows[0]:
                mean[name][k], std[name][k] = _mean_std(r[k] for r in rows)
        flags = [f for r in rows for f in r["flags"]]
        mean[name]["n_cases"] = len(rows)
        if rows and "hd95" in rows[0]:
            mean[name]["n_surface_cases"] = int(_finite(r["hd95"] for r in rows).size)
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
    return {"mean": mean, "std": std, "foreground_mean": fg, "overall": overall}


def worst_cases(per_case: list[dict], n: int = 10, metric: str = "dice") -> list[dict]:
    """The ``n`` cases with the lowest mean ``metric`` over classes, with their worst class."""
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
