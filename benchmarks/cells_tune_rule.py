"""How the threshold search should pick its setting, judged on the tuning images alone (no training).

    python benchmarks/cells_tune_rule.py --run RUN [--data ../shared/data/dsb2018_fluo] --json OUT.json
    python benchmarks/cells_tune_rule.py --pool OUT0.json OUT1.json ... [--repeats 500]

A run's held-out tuning images (``model.json``'s split) are scored at every setting of the threshold search's grid,
as ``cells train`` scores them (``medseg.cells.tune.per_image_table``; merging and contrast test as the run has them),
and the per-image scores are written to ``--json``. The split-half test then repeats: pick a setting on a random
half of the tuning images with each selection rule (``peak``: the best mean AP@0.5; ``plateau``: the best mean over
the setting's grid neighbours; ``medseg.cells.tune.best_thresholds``) and score it on the other half. The rule
whose picks hold up on unseen images is the better one; the validation images are not touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ("peak", "plateau")


def split_half(rows: list[dict], repeats: int = 500, seed: int = 0) -> dict:
    """Pick on one random half of the images, score on the other, ``repeats`` times, for each rule of ``RULES``.

    ``rows``: ``per_image_table`` output (``ap`` and ``count_error`` per image). Returns per rule the mean held-out
    AP@0.5 and count error of its picks, and the paired plateau - peak difference with the share of repeats where
    plateau is better / worse.

    Examples
    --------
    A setting that is best on some images only, beside a cliff: the peak rule falls for it when the picking half
    holds those images, the plateau rule stays on the flat region.

    >>> grid = [(0.3, [0.8] * 4), (0.4, [0.8] * 4), (0.5, [0.8] * 4), (0.6, [1.0, 0.2, 1.0, 0.2]), (0.7, [0.0] * 4)]
    >>> rows = [{"seeds": "b", "threshold": 0.5, "seed_threshold": s, "ap": np.array(a), "count_error": np.zeros(4)}
    ...         for s, a in grid]
    >>> r = split_half(rows, repeats=60)
    >>> round(r["plateau"]["ap"], 3), r["peak"]["ap"] < 0.8
    (0.8, True)
    """
    from medseg.cells.tune import best_thresholds, mean_table

    ap = np.stack([r["ap"] for r in rows])  # (settings, images)
    err = np.stack([r["count_error"] for r in rows])
    n = ap.shape[1]
    rng = np.random.default_rng(seed)
    held = {rule: ([], []) for rule in RULES}
    for _ in range(repeats):
        order = rng.permutation(n)
        pick, score = order[: n // 2], order[n // 2:]
        table = [{**row, "i": i} for i, row in enumerate(mean_table(rows, pick))]
        for rule in RULES:
            i = best_thresholds(table, "ap", rule)["i"]
            held[rule][0].append(ap[i, score].mean())
            held[rule][1].append(err[i, score].mean())
    diff = np.asarray(held["plateau"][0]) - np.asarray(held["peak"][0])
    out = {rule: {"ap": float(np.mean(a)), "count_error": float(np.mean(e))} for rule, (a, e) in held.items()}
    out["plateau_minus_peak"] = {"ap": float(diff.mean()), "better": float(np.mean(diff > 1e-9)),
                                 "worse": float(np.mean(diff < -1e-9)), "repeats": repeats, "n_images": n}
    return out


def whole_set_picks(rows: list[dict]) -> dict:
    """The setting each rule picks on all the tuning images (what a run records)."""
    from medseg.cells.tune import best_thresholds, mean_table

    table = mean_table(rows)
    return {rule: best_thresholds(table, "ap", rule) for rule in RULES}


def _load(path) -> list[dict]:
    rows = json.loads(Path(path).read_text())["rows"]
    return [{**r, "ap": np.asarray(r["ap"]), "count_error": np.asarray(r["count_error"])} for r in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N tuning images (smoke tests)")
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--json", default=None)
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON",
                    help="no scoring: the split-half test on these --json outputs, each and together")
    args = ap.parse_args(argv)
    if args.pool:
        rows_by = {p: _load(p) for p in args.pool}
    else:
        if not args.run:
            ap.error("--run (or --pool) is required")
        import torch

        from medseg.cells.count import CellModel
        from medseg.cells.data import list_cases
        from medseg.cells.splits import recorded_tuning_cases
        from medseg.cells.tune import per_image_table

        torch.set_num_threads(args.threads)
        model = CellModel.load(args.run)
        tune_ids = model.meta["split"].get("tune", [])
        if not tune_ids:
            ap.error(f"{args.run} holds no tuning images (trained with --tune-fraction 0)")
        cases = recorded_tuning_cases(list_cases(args.data), tune_ids[: args.limit], model.cfg.channel)
        rows = per_image_table(model, cases)
        if args.json:
            Path(args.json).write_text(json.dumps({
                "run": str(args.run), "images": [c.case for c in cases],
                "rows": [{**r, "ap": r["ap"].tolist(), "count_error": r["count_error"].tolist()} for r in rows]}))
        rows_by = {args.run: rows}
    print("| run | images | peak pick | plateau pick | held-out AP@0.5 peak | plateau | plateau - peak | "
          "better / worse |\n|---|---|---|---|---|---|---|---|")
    diffs = []
    for name, rows in rows_by.items():
        res, picks = split_half(rows, args.repeats), whole_set_picks(rows)
        d = res["plateau_minus_peak"]
        diffs.append(d["ap"])
        fmt = lambda p: f"{p['seeds']} {p['threshold']:g}, {p['seed_threshold']:g}"  # noqa: E731
        print(f"| {Path(name).stem} | {d['n_images']} | {fmt(picks['peak'])} | {fmt(picks['plateau'])} | "
              f"{res['peak']['ap']:.4f} | {res['plateau']['ap']:.4f} | {d['ap']:+.4f} | "
              f"{d['better']:.0%} / {d['worse']:.0%} |")
    if len(diffs) > 1:
        print(f"\nmean over {len(diffs)} runs: plateau - peak {np.mean(diffs):+.4f} held-out AP@0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
