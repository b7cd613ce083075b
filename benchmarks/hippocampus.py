"""MSD hippocampus under a time budget: train fold 0 (5-fold split) for --minutes, report validation Dice.

    python benchmarks/hippocampus.py --minutes 30 --data ../shared/data/msd_hippocampus [--eval DIR] [--out RUN]

``--eval DIR`` (a folder in the same layout, never used for training) adds Dice on an independent set;
``--postprocess-check`` scores an existing run's validation fold with and without largest-component cleanup (and, for
a run with weight averaging, its final training weights);
``--ensemble K`` trains K networks in the budget and averages them (``medseg.train.ensemble``); ``--join RUN ...``
scores separately trained runs and their ensembles; ``--train-fraction F`` trains on a share of the fold's training
cases (the same validation cases; nested: a smaller share is a subset of a larger one), for a learning curve. The
recipe is ``configs/hippocampus.yaml``; the whole wall time (caching the data included) counts against the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def evaluate_folder(model_dir: Path, folder: Path, tta: bool | None = False, cases=None,
                    largest_component: bool = False) -> dict:
    """Mean per-case Dice per class of the model on every labelled case of ``folder`` (or those in ``cases``),
    optionally keeping only the largest connected component per class. ``tta=None``: the plan's setting."""
    import torch

    from medseg.infer.predict import predict_image
    from medseg.train.artifact import load_model
    from medseg.train.dataset import load_case, open_dataset
    from medseg.evaluate.summary import bootstrap_mean_ci
    from medseg.train.losses import confusion_dice

    art = load_model(model_dir)
    net = art.build()
    ds = open_dataset(folder)
    per = {k: [] for k in art.plan.labels if k}
    case_means = {}
    t0 = time.monotonic()
    chosen = [c for c in ds.cases if (cases is None or c.id in set(cases)) and c.label is not None]
    if not chosen:
        raise SystemExit(f"{folder}: no labelled case to score (labelsTr/ missing or empty)")
    for case in chosen:
        image, label = load_case(case)
        with torch.no_grad():
            lab, _ = predict_image(net, art.plan, image, tta=tta, largest_component=largest_component)
        dice = {k: d for k, d in confusion_dice(lab.array, label.array, art.plan.num_classes).items()
                if not np.isnan(d)}
        for k, d in dice.items():
            per[k].append(d)
        case_means[case.id] = float(np.mean(list(dice.values()))) if dice else float("nan")
    res = {art.plan.labels[k]: float(np.mean(v)) for k, v in per.items()}
    res["mean"] = float(np.mean(list(res.values())))
    # is the mean pulled down by a few failed cases, or is every case a little off?
    res["median_case"] = float(np.nanmedian(list(case_means.values())))
    scored = [(c, m) for c, m in case_means.items() if not np.isnan(m)]  # NaN (nothing to score) would unsort
    res["worst_cases"] = {c: round(m, 4) for c, m in sorted(scored, key=lambda x: x[1])[:5]}
    # how far the mean could move with other cases like these: differences below this are not resolved by the set
    res["mean_ci95"] = [round(float(b), 4) for b in bootstrap_mean_ci(list(case_means.values()))]
    res["cases"] = len(chosen)
    res["per_case"] = {c: round(m, 5) for c, m in case_means.items()}  # for paired comparisons (paired.py)
    res["unlabelled_skipped"] = sum(c.label is None for c in ds.cases if cases is None or c.id in set(cases))
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def raw_weights_model(run: Path) -> Path | None:
    """For a run trained with ``ema``: its final training weights (checkpoint_latest.pt) as a model file in
    ``run/raw_weights``; None for a run without weight averaging."""
    import torch

    from medseg.train.artifact import load_model, save_model

    latest = run / "checkpoint_latest.pt"  # an ensemble's are in its members' folders
    ck = torch.load(latest, map_location="cpu", weights_only=True) if latest.is_file() else {}
    if "ema" not in ck:
        return None
    art = load_model(run)
    (run / "raw_weights").mkdir(exist_ok=True)
    path = save_model(run / "raw_weights" / "model.pt", art.plan, ck["model"], source=str(run), weights="raw final")
    return path.parent


def subsample_split(plan, out: Path, fold: int, fraction: float, split_seed: int | None = None) -> list[str]:
    """Write ``out/splits.json`` (the split of seed ``split_seed``, default the plan's, as training would) with fold
    ``fold`` training on the first ``fraction`` of its training cases in a fixed random order; an existing
    ``splits.json`` (a resumed run) is kept. Returns the fold's training cases."""
    import random

    from medseg.train.dataset import open_dataset
    from medseg.train.splits import make_splits

    path = out / "splits.json"
    if not path.exists():
        ds = open_dataset(plan.dataset)
        seed = plan.seed if split_seed is None else split_seed
        splits = make_splits([c.id for c in ds.cases if c.label is not None], plan.num_folds, seed)
        train = sorted(splits[fold]["train"])
        random.Random(0).shuffle(train)  # one order for every fraction: the shares are nested
        splits[fold]["train"] = sorted(train[:max(1, round(fraction * len(train)))])
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(splits, indent=1))
    return json.loads(path.read_text())[fold]["train"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/msd_hippocampus")
    ap.add_argument("--eval", type=Path, default=None, help="independent evaluation folder (MSD layout)")
    ap.add_argument("--out", type=Path, default=Path("runs/hippocampus"))
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/hippocampus.yaml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--ensemble", type=int, default=None,
                    help="train this many networks in the budget and average them (default: the config's)")
    ap.add_argument("--postprocess-check", action="store_true",
                    help="no training: score the model in --out on its validation fold with and without keeping the "
                         "largest component per class")
    ap.add_argument("--join", type=Path, nargs="+", default=None, metavar="RUN",
                    help="no training: score each of these runs (same split) on the validation fold, then the "
                         "ensembles of the first 2, 3, ... of them (written to --out/ensemble_K)")
    ap.add_argument("--train-fraction", type=float, default=None, metavar="F",
                    help="train on this share (0-1] of the fold's training cases, drawn in one fixed order so that "
                         "smaller shares are subsets of larger ones; the validation cases stay the fold's")
    ap.add_argument("--split-seed", type=int, default=None,
                    help="with --train-fraction: the seed of the 5-fold split (default: the config's seed)")
    args = ap.parse_args(argv)
    if args.train_fraction is not None and not 0 < args.train_fraction <= 1:
        ap.error("--train-fraction must be in (0, 1]")
    if args.join:
        from medseg.train.ensemble import combine_models

        val = json.loads((args.join[0] / "splits.json").read_text())[args.fold]["val"]
        for r in args.join[1:]:
            if json.loads((r / "splits.json").read_text())[args.fold]["val"] != val:
                ap.error(f"{r} was validated on another split than {args.join[0]}")
        out = {str(r): evaluate_folder(r, args.data, None, val) for r in args.join}
        for k in range(2, len(args.join) + 1):
            out[f"ensemble of the first {k}"] = evaluate_folder(
                combine_models(args.join[:k], args.out / f"ensemble_{k}"), args.data, None, val)
        print(json.dumps(out, indent=1))
        return 0
    if args.postprocess_check:
        val = json.loads((args.out / "splits.json").read_text())[args.fold]["val"]
        tta = None  # the plan's setting
        out = {name: evaluate_folder(args.out, args.data, tta, val, lcc)
               for name, lcc in (("plain", False), ("largest_component", True))}
        raw = raw_weights_model(args.out)
        if raw is not None:  # a run with weight averaging: its final training weights too, for comparison
            out["raw_final_weights"] = evaluate_folder(raw, args.data, tta, val)
        print(json.dumps(out, indent=1))
        return 0

    import torch

    from medseg.plan.plan import Plan
    from medseg.train.ensemble import train_ensemble
    from medseg.train.trainer import train

    torch.set_num_threads(args.threads)
    plan = Plan.from_yaml(args.config)
    plan.dataset = str(args.data.resolve())
    if args.train_fraction is not None:
        subsample_split(plan, args.out, args.fold, args.train_fraction, args.split_seed)
    t0 = time.monotonic()
    kw = dict(fold=args.fold, max_minutes=args.minutes, resume=args.resume, progress=False, num_threads=args.threads)
    if (args.ensemble or plan.ensemble) > 1:
        res = train_ensemble(plan, args.out, members=args.ensemble, **kw)
    else:
        res = train(plan, args.out, **kw)
    wall = time.monotonic() - t0
    n_train = len(json.loads((args.out / "splits.json").read_text())[args.fold]["train"])
    out = {"minutes_budget": args.minutes, "train_wall_min": round(wall / 60, 2), "epochs": res.epochs,
           "iterations": res.iterations, "s_per_iteration": round(res.elapsed_s / max(res.iterations, 1), 3),
           "fold": args.fold, "train_cases": n_train,
           "val_dice": res.val_dice, "threads": args.threads,
           "ensemble": args.ensemble or plan.ensemble,
           "config": str(args.config), "load_avg_at_end": list(__import__("os").getloadavg())}
    if args.eval:
        out["eval_dice"] = evaluate_folder(args.out, args.eval)
    (args.out / "benchmark.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
