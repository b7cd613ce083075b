"""A relative-size filter against small fragments, scored on a run's tuning and validation images (no training).

    python benchmarks/cells_size_filter.py --run RUN [--fold K] [--data ../shared/data/dsb2018_fluo] --json OUT
    python benchmarks/cells_size_filter.py --pool OUT0 OUT1 ...

Each image is segmented as ``cells count`` does (the run's thresholds, contrast test and out-of-range resizing);
then objects smaller than r times the image's area-weighted median object area are dropped, for each r of
:data:`RATIOS` (r = 0: the labels as predicted). Weighting by area lets the real nuclei, not a swarm of small
fragments, set the image's scale. ``--pool`` prints the mean AP@0.5, the mean, median and pooled absolute count
errors per r over the runs' tuning images (where r would be chosen) and their validation images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIOS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def weighted_median_area(areas: np.ndarray) -> float:
    """The object area at which half of all object pixels lie in smaller objects.

    Examples
    --------
    >>> float(weighted_median_area(np.array([10] * 20 + [1000, 1200])))  # 20 fragments, two nuclei
    1000.0
    """
    a = np.sort(np.asarray(areas))
    c = np.cumsum(a)
    return float(a[np.searchsorted(c, c[-1] / 2)])


def drop_relatively_small(labels: np.ndarray, ratio: float) -> np.ndarray:
    """``labels`` without the objects smaller than ``ratio`` x :func:`weighted_median_area` of its objects."""
    areas = np.bincount(labels.ravel())
    ids = np.nonzero(areas[1:])[0] + 1
    if not ratio or not ids.size:
        return labels
    small = ids[areas[ids] < ratio * weighted_median_area(areas[ids])]
    return np.where(np.isin(labels, small), 0, labels)


def pool(paths) -> dict:
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    out = {}
    for part in ("tune", "val"):
        sel = [r for r in rows if r["set"] == part]
        if not sel:  # a run without tuning images
            continue
        out[part] = {"n_images": len(sel)}
        for ratio in RATIOS:
            s = [r["scores"][str(ratio)] for r in sel]
            out[part][str(ratio)] = {
                "ap@0.5": float(np.mean([x["ap@0.5"] for x in s])),
                "mean_abs_count_error": float(np.mean([x["abs_relative_count_error"] for x in s])),
                "median_abs_count_error": float(np.median([x["abs_relative_count_error"] for x in s])),
                "pooled_abs_count_error": sum(abs(x["n_pred"] - x["n_ref"]) for x in s) / max(1, sum(x["n_ref"]
                                                                                                       for x in s))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--fold", type=int, default=None,
                    help="validation images: this fold of 5 (default: the run's own, from model.json, else the "
                         "default split)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke tests)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON")
    args = ap.parse_args(argv)
    if args.pool:
        summary = pool(args.pool)
        for part, res in summary.items():
            print(f"\n{part} images: {res['n_images']}")
            print("| r | AP@0.5 | mean abs count err | median | pooled |\n|---|---|---|---|---|")
            for ratio in RATIOS:
                x = res[str(ratio)]
                print(f"| {ratio:g} | {x['ap@0.5']:.3f} | {x['mean_abs_count_error']:.1%} | "
                      f"{x['median_abs_count_error']:.1%} | {x['pooled_abs_count_error']:.1%} |")
        return 0
    if not args.run:
        ap.error("--run (or --pool) is required")
    import torch

    from medseg.cells.count import CellModel
    from medseg.cells.data import dataset_split, list_cases, load_case
    from medseg.cells.evaluate import evaluate_pair
    from benchmarks.cells import backfill_diameter_range

    torch.set_num_threads(args.threads)
    model = CellModel.load(args.run)
    cases = list_cases(args.data)
    backfill_diameter_range(model, cases)  # runs from before session 27
    fold = args.fold if args.fold is not None else model.cfg.fold
    val = {c.case for c in dataset_split(args.data, cases, fold=fold, folds=model.cfg.folds or 5)["val"]} \
        if fold is not None else set(model.meta["split"]["val"])
    tune = set(model.meta["split"].get("tune", []))
    sets = {"val": [c for c in cases if c.case in val], "tune": [c for c in cases if c.case in tune]}
    rows = []
    for part, chosen in sets.items():
        for c in chosen[: args.limit]:
            load_case(c)
            labels = model.segment(c.image)
            scores = {}
            for ratio in RATIOS:
                e = evaluate_pair(c.labels, drop_relatively_small(labels, ratio))
                scores[str(ratio)] = {k: e[k] for k in ("ap@0.5", "abs_relative_count_error", "n_pred", "n_ref")}
            rows.append({"image": c.case, "set": part, "scores": scores})
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(args.run), "fold": fold, "rows": rows}))
    print(f"{len(rows)} images scored")
    return 0


if __name__ == "__main__":
    sys.exit(main())
