"""Watershed thresholds chosen on held-out training images, like StarDist's ``optimize_thresholds``.

A short training run leaves the interior/boundary probabilities less confident than a long one, so the fixed
0.5 thresholds split or merge nuclei depending on the run. ``train_cells`` therefore keeps a few training images
out of training (``tune_fraction``), picks the foreground and seed thresholds that maximise AP@0.5 on them (or
AP@0.5 minus the count error: ``tune_objective``), and stores the choice in ``model.json``. With a distance head,
the marker source (cores of the distance map, or interior minus boundary) is part of the search, and so, with an
offset head, are centres found by following the predicted offsets. The validation images are never used.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

THRESHOLD_GRID = (0.4, 0.5, 0.6, 0.7)
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DISTANCE_SEED_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # per-nucleus normalised distance: 1 at the centre
VOTE_GRID = (8.0, 16.0, 32.0)  # vote density a centre needs (medseg.postprocess.votes.vote_instances)


OBJECTIVES = ("ap", "ap-count")


def best_thresholds(table: list[dict], objective: str = "ap") -> dict:
    """The best row: highest mean AP (``objective="ap"``), or highest mean AP minus mean absolute relative count
    error (``"ap-count"``, both counted as fractions: for users whose number is the count). Ties go to the smaller
    count error, then to the defaults' side (0.5).

    Examples
    --------
    >>> table = [{"threshold": 0.5, "seed_threshold": 0.5, "ap": 0.8, "count_error": 0.1},
    ...          {"threshold": 0.5, "seed_threshold": 0.7, "ap": 0.82, "count_error": 0.2}]
    >>> best_thresholds(table)["seed_threshold"], best_thresholds(table, "ap-count")["seed_threshold"]
    (0.7, 0.5)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    weight = 1.0 if objective == "ap-count" else 0.0
    return max(table, key=lambda r: (round(r["ap"] - weight * r["count_error"], 4), -round(r["count_error"], 4),
                                     -abs(r["threshold"] - 0.5) - abs(r["seed_threshold"] - 0.5)))


def tune_thresholds(model, cases, threshold_grid: Sequence[float] = THRESHOLD_GRID,
                    seed_grid: Sequence[float] = SEED_GRID, iou: float = 0.5,
                    distance_seed_grid: Sequence[float] = DISTANCE_SEED_GRID,
                    vote_grid: Sequence[float] = VOTE_GRID, objective: str = "ap") -> dict:
    """Grid-search the watershed's foreground and seed thresholds of ``model`` on labelled ``cases``.

    Parameters
    ----------
    model : medseg.cells.count.CellModel
        The trained model (its probabilities are computed once per image).
    cases : list of CellCase
        Loaded cases (``image`` and ``labels`` set) that the model was not trained on.

    seed_grid, distance_seed_grid, vote_grid : sequence of float
        Seed thresholds for boundary markers, (models with a distance head) for distance-core markers and (models
        with an offset head) the vote density of a centre.

    Returns
    -------
    dict
        ``threshold``, ``seed_threshold``, ``seeds`` (the best setting), ``ap`` and ``count_error`` there,
        ``n_images`` and the whole ``table`` (mean AP@``iou`` and mean absolute relative count error per setting).
    """
    from medseg.evaluate.instances import instance_metrics

    probs = [model.probabilities(c.image) for c in cases]
    grid = [("boundary", t, s) for t, s in itertools.product(threshold_grid, seed_grid)]
    if model.cfg.distance_head:
        grid += [("distance", t, s) for t, s in itertools.product(threshold_grid, distance_seed_grid)]
    if model.cfg.offset_head:
        grid += [("votes", t, s) for t, s in itertools.product(threshold_grid, vote_grid)]
    table = []
    for src, t, s in grid:
        aps, errs = [], []
        for c, p in zip(cases, probs):
            pred = model.postprocess(p, threshold=t, seed_threshold=s, seeds=src, shape=c.labels.shape,
                                     image=c.image)
            m = instance_metrics(c.labels, pred, [iou])
            aps.append(m[f"ap@{iou:g}"])
            errs.append(m["abs_relative_count_error"])
        table.append({"seeds": src, "threshold": t, "seed_threshold": s, "ap": float(np.mean(aps)),
                      "count_error": float(np.mean(errs))})
    best = best_thresholds(table, objective)
    return {**best, "n_images": len(cases), "iou": iou, "objective": objective, "table": table}
