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
import time
from typing import Sequence

import numpy as np

THRESHOLD_GRID = (0.4, 0.5, 0.6, 0.7)
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DISTANCE_SEED_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # per-nucleus normalised distance: 1 at the centre
VOTE_GRID = (8.0, 16.0, 32.0)  # vote density a centre needs (medseg.postprocess.votes.vote_instances)


OBJECTIVES = ("ap", "ap-count")
SELECTIONS = ("plateau", "peak")


def best_thresholds(table: list[dict], objective: str = "ap", selection: str = "peak") -> dict:
    """The best row of a threshold search's ``table``.

    Parameters
    ----------
    table : list of dict
        One row per setting: ``threshold``, ``seed_threshold``, ``ap``, ``count_error`` and optionally ``seeds``
        (the marker source; rows of different sources are never neighbours).
    objective : {"ap", "ap-count"}
        Maximise mean AP, or mean AP minus mean absolute relative count error (both as fractions: for users whose
        number is the count).
    selection : {"peak", "plateau"}
        ``"peak"`` takes the row with the best objective. ``"plateau"`` takes the row whose grid neighbourhood (the
        row and the rows one grid step away in foreground and/or seed threshold, same marker source) has the best
        mean objective, then the best own objective: on a few dozen tuning images settings a few thousandths
        apart are a tie, and a peak beside a cliff (distance-map cores lose half their AP one step on) is a worse
        bet on new images than a setting inside a flat region.

    Ties go to the smaller count error, then to the defaults' side (0.5).

    Returns
    -------
    dict
        The chosen row of ``table`` itself.

    Examples
    --------
    >>> table = [{"threshold": 0.5, "seed_threshold": 0.5, "ap": 0.8, "count_error": 0.1},
    ...          {"threshold": 0.5, "seed_threshold": 0.7, "ap": 0.82, "count_error": 0.2}]
    >>> best_thresholds(table)["seed_threshold"], best_thresholds(table, "ap-count")["seed_threshold"]
    (0.7, 0.5)
    >>> cliff = [{"threshold": 0.5, "seed_threshold": s, "ap": a, "count_error": 0.1}
    ...          for s, a in [(0.3, 0.80), (0.4, 0.81), (0.5, 0.81), (0.6, 0.82), (0.7, 0.40)]]
    >>> best_thresholds(cliff)["seed_threshold"], best_thresholds(cliff, selection="plateau")["seed_threshold"]
    (0.6, 0.5)
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective '{objective}' is not one of {', '.join(OBJECTIVES)}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection '{selection}' is not one of {', '.join(SELECTIONS)}")
    weight = 1.0 if objective == "ap-count" else 0.0
    value = [r["ap"] - weight * r["count_error"] for r in table]
    score = plateau_scores(table, value) if selection == "plateau" else value
    best = max(range(len(table)), key=lambda i: (round(score[i], 4), round(value[i], 4),
                                                 -round(table[i]["count_error"], 4),
                                                 -abs(table[i]["threshold"] - 0.5)
                                                 - abs(table[i]["seed_threshold"] - 0.5)))
    return table[best]


def plateau_scores(table: list[dict], value: Sequence[float]) -> list[float]:
    """Mean of ``value`` over each row's grid neighbourhood: itself and the rows of the same marker source
    (``seeds``) at most one grid step away in ``threshold`` and in ``seed_threshold`` (a 3x3 window, cut at the
    grid's edges).

    Parameters
    ----------
    table : list of dict
        Rows with ``threshold``, ``seed_threshold`` and optionally ``seeds``; the grid steps are the distinct
        values of each marker source's rows.
    value : sequence of float
        One value per row.

    Returns
    -------
    list of float
        One mean per row.

    Examples
    --------
    >>> rows = [{"threshold": 0.5, "seed_threshold": s} for s in (0.3, 0.4, 0.5)]
    >>> [round(v, 3) for v in plateau_scores(rows, [0.9, 0.6, 0.3])]
    [0.75, 0.6, 0.45]
    """
    axes = {}
    for r in table:
        fg, sd = axes.setdefault(r.get("seeds"), (set(), set()))
        fg.add(r["threshold"])
        sd.add(r["seed_threshold"])
    index = {src: ({v: i for i, v in enumerate(sorted(fg))}, {v: i for i, v in enumerate(sorted(sd))})
             for src, (fg, sd) in axes.items()}

    def cell(r):
        fg, sd = index[r.get("seeds")]
        return r.get("seeds"), fg[r["threshold"]], sd[r["seed_threshold"]]

    cells = [cell(r) for r in table]
    out = []
    for src, i, j in cells:
        near = [v for (s2, i2, j2), v in zip(cells, value) if s2 == src and abs(i2 - i) <= 1 and abs(j2 - j) <= 1]
        out.append(float(np.mean(near)))
    return out


def tune_thresholds(model, cases, threshold_grid: Sequence[float] = THRESHOLD_GRID,
                    seed_grid: Sequence[float] = SEED_GRID, iou: float = 0.5,
                    distance_seed_grid: Sequence[float] = DISTANCE_SEED_GRID,
                    vote_grid: Sequence[float] = VOTE_GRID, objective: str = "ap",
                    selection: str = "peak") -> dict:
    """Grid-search the watershed's foreground and seed thresholds of ``model`` on labelled ``cases``.

    Parameters
    ----------
    model : medseg.cells.count.CellModel
        The trained model (its probabilities are computed once per image).
    cases : list of CellCase
        Loaded cases (``image`` and ``labels`` set) that the model was not trained on.
    threshold_grid : sequence of float
        Foreground probability thresholds.
    seed_grid, distance_seed_grid, vote_grid : sequence of float
        Seed thresholds for boundary markers, (models with a distance head) for distance-core markers and (models
        with an offset head) the vote density of a centre.
    iou : float
        IoU threshold of the AP.
    objective, selection : str
        What is maximised and how the best setting is picked (``best_thresholds``).

    Returns
    -------
    dict
        ``threshold``, ``seed_threshold``, ``seeds`` (the best setting), ``ap`` and ``count_error`` there,
        ``n_images`` and the whole ``table`` (mean AP@``iou`` and mean absolute relative count error per setting),
        and the ``iou``, ``objective`` and ``selection`` used.

    Examples
    --------
    Every setting of a perfect network's maps scores AP 1, and the tie goes to the defaults (0.5, 0.5):

    >>> from pathlib import Path
    >>> from medseg.cells.config import CellTrainConfig
    >>> from medseg.cells.data import CellCase
    >>> from medseg.cells.targets import boundary_targets
    >>> from medseg.cells.segmenters import CellModel
    >>> lab = np.zeros((8, 14), int); lab[1:7, 1:7] = 1; lab[1:7, 7:13] = 2        # two touching squares
    >>> model = CellModel(None, CellTrainConfig(distance_head=False, offset_head=False, min_snr=0), {})
    >>> model.probabilities = lambda image: np.eye(3)[boundary_targets(lab)].transpose(2, 0, 1)  # a perfect network
    >>> case = CellCase("a", Path("a.tif"), None, lab.astype(float), lab)
    >>> r = tune_thresholds(model, [case], threshold_grid=(0.4, 0.5), seed_grid=(0.5, 0.9))
    >>> r["seeds"], r["threshold"], r["seed_threshold"], r["ap"], r["count_error"], len(r["table"])
    ('boundary', 0.5, 0.5, 1.0, 0.0, 4)
    """
    table = mean_table(per_image_table(model, cases, threshold_grid, seed_grid, iou, distance_seed_grid, vote_grid))
    best = best_thresholds(table, objective, selection)
    return {**best, "n_images": len(cases), "iou": iou, "objective": objective, "selection": selection,
            "table": table}


def mean_table(rows: list[dict], images=None) -> list[dict]:
    """:func:`per_image_table` rows averaged over their images (or over the ``images`` indices only): the table
    :func:`best_thresholds` picks from.

    Parameters
    ----------
    rows : list of dict
        :func:`per_image_table`'s rows.
    images : sequence of int, optional
        Indices of the images to average over (default all), e.g. a resample.

    Returns
    -------
    list of dict
        ``seeds``, ``threshold``, ``seed_threshold`` and the mean ``ap`` and ``count_error`` of each row.

    Examples
    --------
    >>> rows = [{"seeds": "boundary", "threshold": 0.5, "seed_threshold": 0.5, "ap": np.array([1.0, 0.5, 0.0]),
    ...          "count_error": np.array([0.0, 0.2, 0.4])}]
    >>> mean_table(rows)[0]["ap"], mean_table(rows, [0, 1])[0]["count_error"]
    (0.5, 0.1)
    """
    pick = slice(None) if images is None else np.asarray(images)
    return [{"seeds": r["seeds"], "threshold": r["threshold"], "seed_threshold": r["seed_threshold"],
             "ap": float(np.mean(r["ap"][pick])), "count_error": float(np.mean(r["count_error"][pick]))}
            for r in rows]


def per_image_table(model, cases, threshold_grid: Sequence[float] = THRESHOLD_GRID,
                    seed_grid: Sequence[float] = SEED_GRID, iou: float = 0.5,
                    distance_seed_grid: Sequence[float] = DISTANCE_SEED_GRID,
                    vote_grid: Sequence[float] = VOTE_GRID) -> list[dict]:
    """The threshold search's grid scored per image: one row per setting (``seeds``, ``threshold``,
    ``seed_threshold``) with ``ap`` and ``count_error`` as arrays over ``cases`` (``tune_thresholds`` averages
    them; ``benchmarks/cells_tune_rule.py`` resamples them).

    Parameters
    ----------
    model, cases, threshold_grid, seed_grid, iou, distance_seed_grid, vote_grid
        As in :func:`tune_thresholds`; the distance-core rows only for a model with a distance head, the vote rows
        only for one with an offset head.

    Returns
    -------
    list of dict
        One row per setting: ``seeds``, ``threshold``, ``seed_threshold``, and ``ap`` (AP@``iou``) and
        ``count_error`` (absolute relative count error) as arrays with one entry per case.

    Examples
    --------
    >>> from pathlib import Path
    >>> from medseg.cells.config import CellTrainConfig
    >>> from medseg.cells.data import CellCase
    >>> from medseg.cells.targets import boundary_targets
    >>> from medseg.cells.segmenters import CellModel
    >>> lab = np.zeros((8, 14), int); lab[1:7, 1:7] = 1; lab[1:7, 7:13] = 2        # two touching squares
    >>> model = CellModel(None, CellTrainConfig(distance_head=False, offset_head=False, min_snr=0), {})
    >>> model.probabilities = lambda image: np.eye(3)[boundary_targets(lab)].transpose(2, 0, 1)  # a perfect network
    >>> case = CellCase("a", Path("a.tif"), None, lab.astype(float), lab)
    >>> rows = per_image_table(model, [case, case], threshold_grid=(0.5,), seed_grid=(0.5, 0.9))
    >>> [(r["seeds"], r["threshold"], r["seed_threshold"], r["ap"].tolist()) for r in rows]
    [('boundary', 0.5, 0.5, [1.0, 1.0]), ('boundary', 0.5, 0.9, [1.0, 1.0])]
    """
    from medseg.evaluate.instances import instance_metrics

    probs = [model.probabilities(c.image) for c in cases]
    grid = [("boundary", t, s) for t, s in itertools.product(threshold_grid, seed_grid)]
    if model.cfg.distance_head:
        grid += [("distance", t, s) for t, s in itertools.product(threshold_grid, distance_seed_grid)]
    if model.cfg.offset_head:
        grid += [("votes", t, s) for t, s in itertools.product(threshold_grid, vote_grid)]
    rows = []
    for src, t, s in grid:
        aps, errs = [], []
        for c, p in zip(cases, probs):
            pred = model.postprocess(p, threshold=t, seed_threshold=s, seeds=src, shape=c.labels.shape,
                                     image=c.image)
            m = instance_metrics(c.labels, pred, [iou])
            aps.append(m[f"ap@{iou:g}"])
            errs.append(m["abs_relative_count_error"])
        rows.append({"seeds": src, "threshold": t, "seed_threshold": s, "ap": np.asarray(aps),
                     "count_error": np.asarray(errs)})
    return rows


def tune_network(net, cfg, meta: dict, cases) -> dict:
    """:func:`tune_thresholds` of a training run's network (put in eval mode), with the ``seconds`` it took.

    Parameters
    ----------
    net : torch.nn.Module
        The network (:func:`medseg.cells.train.build_cell_network`), on the CPU.
    cfg : CellTrainConfig
        Its settings (heads, ``tune_objective``, ``tune_selection``).
    meta : dict
        The model's data settings (as saved in ``model.json``; ``{}`` for none).
    cases : list of CellCase
        Loaded validation cases (``image`` and ``labels`` set).

    Returns
    -------
    dict
        :func:`tune_thresholds`'s result and ``seconds``.

    Examples
    --------
    An untrained tiny network on one 32 x 32 image of two cells (its scores mean nothing):

    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.cells.config import CellTrainConfig
    >>> from medseg.cells.data import CellCase
    >>> from medseg.cells.train import build_cell_network
    >>> cfg = CellTrainConfig(patch_size=(32, 32), base_filters=4, max_filters=16)
    >>> lab = np.zeros((32, 32), int); lab[4:12, 4:12] = 1; lab[18:28, 16:26] = 2
    >>> case = CellCase("a", Path("a.tif"), None, (lab > 0).astype(np.float32), lab)  # image and labels
    >>> res = tune_network(build_cell_network(cfg), cfg, {}, [case])
    >>> res["n_images"], res["seeds"] in ("boundary", "distance", "votes"), len(res["table"])
    (1, True, 72)
    """
    from medseg.cells.count import CellModel

    t = time.perf_counter()
    net.eval()  # CellModel predicts in the memory format a loaded model does
    res = tune_thresholds(CellModel(net, cfg, meta, device="cpu"), cases, objective=cfg.tune_objective,
                          selection=cfg.tune_selection)
    res["seconds"] = round(time.perf_counter() - t, 1)
    return res


def tuning_costs(net, cfg, meta: dict, cases, margin: float = 1.25) -> np.ndarray:
    """Seconds :func:`tune_network` will take on each of ``cases`` with ``net`` as it is: the search timed on the
    case of median size, scaled by each case's pixels and a safety ``margin``. A copy of the network is timed, so
    that training's own (its mode, its memory format) is left as it is."""
    import copy

    from medseg.cells.count import CellModel

    sizes = np.array([c.image.size for c in cases], dtype=float)
    probe = cases[int(np.argsort(sizes, kind="stable")[len(sizes) // 2])]
    t = time.perf_counter()
    per_image_table(CellModel(copy.deepcopy(net).eval(), cfg, meta, device="cpu"), [probe])
    return margin * (time.perf_counter() - t) * sizes / probe.image.size


def affordable_cases(costs: Sequence[float], seconds: float, minimum: int = 3) -> int:
    """How many of the cases, in order, the search can take within ``seconds`` (at least ``minimum``, or all).

    Examples
    --------
    >>> affordable_cases([2.0, 2.0, 2.0, 2.0, 2.0], 7.0)
    3
    >>> affordable_cases([2.0, 2.0, 2.0, 2.0, 2.0], 100.0), affordable_cases([9.0, 9.0], 1.0)
    (5, 2)
    """
    fits = int(np.searchsorted(np.cumsum(costs), seconds, side="right"))
    return max(fits, min(minimum, len(costs)))
