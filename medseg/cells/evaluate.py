"""Cell-level evaluation: instance metrics per image and overall, through ``medseg.evaluate.instances``.

Per image: AP = TP/(TP+FP+FN), precision, recall, F1, panoptic quality at IoU 0.5..0.9, count and count
error: ``relative_count_error`` is signed ((n_pred - n_ref) / n_ref: + over-, - under-counted),
``abs_relative_count_error`` its absolute value. Overall: the mean over images of every per-image score (so both
of those), the pooled scores (TP/FP/FN and the matched IoUs summed over images, as the DSB2018 leaderboard did
not but StarDist's ``matching_dataset`` does with ``by_image=False``), and the pooled count errors under the same
names (signed: (sum n_pred - sum n_ref) / sum n_ref; absolute: sum |n_pred - n_ref| / sum n_ref), and a 95 %
bootstrap interval of each mean over images (``ci95``: how finely a set of this many images resolves a
difference).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.evaluate.instances import instance_metrics
from medseg.evaluate.summary import bootstrap_mean_ci
from medseg.io.atomic import atomic_path, case_name

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def evaluate_pair(ref: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """:func:`medseg.evaluate.instances.instance_metrics` of one image, by default at the IoU thresholds of the
    cells (0.5..0.9, what :func:`summarize` pools) rather than its 0.1..0.9: hence a function, not an alias.

    Parameters
    ----------
    ref, pred : ndarray of int
        Reference and predicted instance labels (0 = background), same shape.
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    dict
        Counts, count errors and the scores at each threshold (see ``instance_metrics``).

    Examples
    --------
    Object 1 is found exactly, object 2 half (IoU 1/2):

    >>> d = evaluate_pair(np.array([[1, 1, 0, 2, 2]]), np.array([[1, 1, 0, 2, 0]]))
    >>> d["ap@0.5"], round(d["ap@0.6"], 4), d["count_error"]
    (1.0, 0.3333, 0)
    """
    return instance_metrics(ref, pred, thresholds)


def summarize(per_image: list[dict], thresholds=THRESHOLDS) -> dict:
    """Mean and pooled scores over images (rows of :func:`evaluate_pair`).

    Parameters
    ----------
    per_image : list of dict
        Rows of :func:`evaluate_pair` (a ``case`` entry is ignored).
    thresholds : sequence of float
        Thresholds the rows hold, pooled.

    Returns
    -------
    dict
        ``n_images``; ``mean`` (every numeric entry averaged over images, plus ``abs_count_error``), ``ci95``
        (its 95 % bootstrap interval, ``[lo, hi]`` per entry) and ``pooled`` (``ap``, ``precision``, ``recall``,
        ``f1`` per threshold from TP/FP/FN summed over images, ``panoptic_quality`` where the rows hold it (the
        matched IoUs summed over images over the summed TP + FP/2 + FN/2), ``n_ref``, ``n_pred`` and the pooled
        relative count errors); only ``{"n_images": 0}`` without images.

    Examples
    --------
    >>> s = summarize([{"n_ref": 2, "n_pred": 2, "count_error": 0, "relative_count_error": 0.0,
    ...                 "abs_relative_count_error": 0.0, "ap@0.5": 1.0, "tp@0.5": 2, "fp@0.5": 0, "fn@0.5": 0}],
    ...               thresholds=[0.5])
    >>> s["mean"]["ap@0.5"], s["pooled"]["ap@0.5"]
    (1.0, 1.0)
    """
    if not per_image:
        return {"n_images": 0}
    keys = [k for k in per_image[0] if k != "case" and isinstance(per_image[0][k], (int, float))]
    mean = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
    # (relative_count_error and abs_relative_count_error are averaged above, signed and absolute)
    mean["abs_count_error"] = float(np.mean([abs(r["count_error"]) for r in per_image]))
    pooled = {}
    for t in thresholds:
        t = f"{float(t):g}"
        tp, fp, fn = (sum(r[f"{k}@{t}"] for r in per_image) for k in ("tp", "fp", "fn"))
        # a ratio without a denominator is 1 only with nothing on either side, as per image (instance_metrics)
        none = float(tp + fp + fn == 0)
        pooled[f"ap@{t}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        pooled[f"precision@{t}"] = tp / (tp + fp) if tp + fp else none
        pooled[f"recall@{t}"] = tp / (tp + fn) if tp + fn else none
        pooled[f"f1@{t}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        if f"panoptic_quality@{t}" in per_image[0]:  # StarDist's matching_dataset(by_image=False)
            pooled[f"panoptic_quality@{t}"] = _pooled_pq(per_image, t)
    n_ref = sum(r["n_ref"] for r in per_image)
    n_pred = sum(r["n_pred"] for r in per_image)
    abs_err = sum(abs(r["n_pred"] - r["n_ref"]) for r in per_image)
    # the absolute error over all nuclei: a 7-nucleus image weighs what its 7 nuclei weigh, not 1/len(images)
    pooled.update({"n_ref": n_ref, "n_pred": n_pred,
                   "relative_count_error": (n_pred - n_ref) / n_ref if n_ref else 0.0,
                   "abs_relative_count_error": abs_err / n_ref if n_ref else 0.0})  # as per image
    # how far each mean could move with other images like these (see bootstrap_mean_ci)
    bounds = bootstrap_mean_ci([[r[k] for k in keys] for r in per_image])
    ci95 = {k: [float(bounds[0, j]), float(bounds[1, j])] for j, k in enumerate(keys)}
    return {"n_images": len(per_image), "mean": mean, "ci95": ci95, "pooled": pooled}


def _pooled_pq(per_image: list[dict], t: str) -> float:
    """Panoptic quality over all images: the matched IoUs summed over images over TP + FP/2 + FN/2 summed; each
    image's sum of matched IoUs is its PQ times its TP + FP/2 + FN/2 (1 with nothing on either side)."""
    den = [r[f"tp@{t}"] + r[f"fp@{t}"] / 2 + r[f"fn@{t}"] / 2 for r in per_image]
    iou_sum = sum(r[f"panoptic_quality@{t}"] * d for r, d in zip(per_image, den))
    return iou_sum / sum(den) if sum(den) else 1.0


def _by_case(files, what: str, folder: Path, strip: str = "") -> dict[str, Path]:
    """``{case id: file}`` of a folder's files, the id without the suffix ``strip``; two files of one case are an
    ``InputError`` (picking one silently could score the wrong file)."""
    out: dict[str, Path] = {}
    for p in files:
        cid = case_name(p)
        cid = cid[: -len(strip)] if strip and cid.endswith(strip) else cid
        if cid in out:
            raise InputError(f"two {what}s for case '{cid}' ({out[cid].name}, {p.name})", path=folder)
        out[cid] = p
    return out


def _unmatched(what: str, missing: dict[str, Path], expected_in: Path, folder: Path) -> None:
    """Refuse cases found on one side only, naming them (as ``medseg evaluate`` does): scores over the
    intersection would look complete while leaving images out."""
    if not missing:
        return
    names = sorted(missing)
    if len(names) == 1:
        raise InputError(f"no {what} for case '{names[0]}' (expected in {expected_in})", path=missing[names[0]])
    shown = ", ".join(f"'{n}'" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise InputError(f"no {what} for {len(names)} cases: {shown} (expected in {expected_in})", path=folder)


def _pair_files(pred, ref) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, reference) of two files, or of two folders matched by id: every reference needs
    exactly one prediction (``<id>_labels.tif`` as ``count`` writes it, or ``<id>.tif``) and every prediction a
    reference."""
    from medseg.cells.data import list_images

    pred, ref = Path(pred), Path(ref)
    for what, path in (("prediction", pred), ("reference", ref)):  # not the other, existing path blamed below
        if not path.exists():
            raise InputError(f"{what} not found", path=path)
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if pred.is_dir() != ref.is_dir():
        raise InputError("--pred and --ref must both be files or both be folders", path=pred)
    ref_dir = ref / "labels" if (ref / "labels").is_dir() else ref
    refs = _by_case(list_images(ref_dir), "reference", ref_dir)
    # count's <id>_overlay.png beside its label maps is a picture, not a prediction
    preds = _by_case([p for p in list_images(pred) if not case_name(p).endswith("_overlay")], "prediction", pred,
                     strip="_labels")
    _unmatched("prediction", {c: r for c, r in refs.items() if c not in preds}, pred, ref_dir)
    _unmatched("reference", {c: p for c, p in preds.items() if c not in refs}, ref_dir, pred)
    return [(cid, preds[cid], refs[cid]) for cid in sorted(refs)]


def evaluate_cells(pred, ref, out_dir=None, thresholds=THRESHOLDS) -> dict:
    """Evaluate predicted instance maps against references (files or folders matched by id).

    Writes ``metrics.json`` and ``metrics.csv`` (one row per image) into ``out_dir`` when given.

    Parameters
    ----------
    pred : path
        A label map, or a folder of them: ``<id>_labels.tif`` as ``medseg cells count`` writes them, or
        ``<id>.tif``/``.png`` (``<id>_overlay.png`` files are skipped).
    ref : path
        A label map, or a folder of them (or a dataset folder with ``labels/``); every reference needs exactly
        one prediction and every prediction a reference.
    out_dir : path, optional
        Where to write ``metrics.json`` and ``metrics.csv``.
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    dict
        ``per_image`` (``case`` and :func:`evaluate_pair`'s scores), the entries of :func:`summarize` and
        ``settings``.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.image import Image
    >>> from medseg.io.microscopy import write_microscopy
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> (d / "ref" / "labels").mkdir(parents=True); (d / "pred").mkdir()
    >>> write_microscopy(Image(np.array([[1, 1, 0, 2, 2]], np.uint16), np.eye(4)), d / "ref" / "labels" / "a.tif")
    >>> write_microscopy(Image(np.array([[1, 1, 0, 0, 0]], np.uint16), np.eye(4)), d / "pred" / "a_labels.tif")
    >>> r = evaluate_cells(d / "pred", d / "ref", out_dir=d / "scores")
    >>> r["per_image"][0]["case"], r["pooled"]["ap@0.5"], r["pooled"]["relative_count_error"]
    ('a', 0.5, -0.5)
    >>> sorted(p.name for p in (d / "scores").iterdir())
    ['metrics.csv', 'metrics.json']
    >>> tmp.cleanup()
    """
    from medseg.cells.data import read_labels
    from medseg.cells.tables import rows_to_csv

    pairs = _pair_files(pred, ref)
    loaded = []
    for cid, p, r in pairs:  # validate everything before writing
        a, b = read_labels(p), read_labels(r)
        if a.shape != b.shape:
            raise InputError(f"prediction shape {a.shape} does not match reference shape {b.shape}", path=p)
        loaded.append((cid, a, b))
    per_image = [{"case": cid, **evaluate_pair(b, a, thresholds)} for cid, a, b in loaded]
    result = {"per_image": per_image, **summarize(per_image, thresholds),
              "settings": {"thresholds": list(thresholds), "ap": "TP/(TP+FP+FN)"}}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "metrics.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        with atomic_path(out_dir / "metrics.csv") as tmp:
            tmp.write_text(rows_to_csv(per_image))
    return result
