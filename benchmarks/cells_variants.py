"""Post-processing variants of a trained cell model scored on its tuning and validation images (no training).

The machinery behind ``benchmarks/cells_size_filter.py`` and ``benchmarks/cells_merge.py``: each image is segmented
as ``cells count`` does (the run's thresholds, merging, contrast test and out-of-range resizing), a variant function
turns it into one label map per variant, and every map is scored against the annotation. The tuning images are where
a variant would be chosen, the validation images where the choice is checked; ``--pool`` summarises several runs'
JSON files (e.g. the folds of a cross-validation) per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCORES = ("ap@0.5", "abs_relative_count_error", "n_pred", "n_ref")


def pool(paths) -> dict:
    """Per set ("tune", "val") and variant: mean AP@0.5, the mean, median and pooled absolute count errors."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    out = {}
    for part in ("tune", "val"):
        sel = [r for r in rows if r["set"] == part]
        if not sel:  # runs without tuning images
            continue
        out[part] = {"n_images": len(sel)}
        for key in sel[0]["scores"]:
            s = [r["scores"][key] for r in sel]
            out[part][key] = {
                "ap@0.5": float(np.mean([x["ap@0.5"] for x in s])),
                "mean_abs_count_error": float(np.mean([x["abs_relative_count_error"] for x in s])),
                "median_abs_count_error": float(np.median([x["abs_relative_count_error"] for x in s])),
                "pooled_abs_count_error": sum(abs(x["n_pred"] - x["n_ref"]) for x in s) / max(1, sum(x["n_ref"]
                                                                                                       for x in s))}
    return out


def print_pool(summary: dict, column: str, label: Callable[[str], str] = str) -> None:
    for part, res in summary.items():
        print(f"\n{part} images: {res['n_images']}")
        print(f"| {column} | AP@0.5 | mean abs count err | median | pooled |\n|---|---|---|---|---|")
        for key, x in res.items():
            if key != "n_images":
                print(f"| {label(key)} | {x['ap@0.5']:.3f} | {x['mean_abs_count_error']:.1%} | "
                      f"{x['median_abs_count_error']:.1%} | {x['pooled_abs_count_error']:.1%} |")


def main(argv, variants: Callable, doc: str, column: str, label: Callable[[str], str] = str) -> int:
    """Command line shared by the variant benchmarks: ``variants(model, image) -> {name: labels}``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--fold", type=int, default=None,
                    help="validation images: this fold of 5 (default: the run's own, from model.json, else the "
                         "default split)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke tests)")
    ap.add_argument("--merge-boundary", type=float, default=None, metavar="T",
                    help="the model's merging of fragments (default: its own; 0: off, as before session 28)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON")
    args = ap.parse_args(argv)
    if args.pool:
        print_pool(pool(args.pool), column, label)
        return 0
    if not args.run:
        ap.error("--run (or --pool) is required")
    import torch

    from benchmarks.cells import backfill_diameter_range
    from medseg.cells.count import CellModel
    from medseg.cells.data import list_cases, load_case
    from medseg.cells.splits import dataset_split
    from medseg.cells.evaluate import evaluate_pair

    torch.set_num_threads(args.threads)
    model = CellModel.load(args.run)
    if args.merge_boundary is not None:
        model.cfg.merge_boundary = args.merge_boundary
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
            scores = {}
            for key, labels in variants(model, c.image).items():
                e = evaluate_pair(c.labels, labels)
                scores[key] = {k: e[k] for k in SCORES}
            rows.append({"image": c.case, "set": part, "scores": scores})
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(args.run), "fold": fold, "rows": rows}))
    print(f"{len(rows)} images scored")
    return 0
