"""BraTS sample: Dice+CE with foreground oversampling vs plain CE with uniform sampling, same budget.

    python benchmarks/brats.py --minutes 5 [--data ../shared/data/brats2015_sample] [--out runs/brats]

Converts the sample (3 train / 1 validation patient, FLAIR + T1c) with ``medseg dataset convert``, trains both
recipes from ``configs/brats.yaml`` for the same wall-time budget and reports per-class Dice on the validation
patient plus the BraTS regions: whole tumour (labels 1-4) and enhancing tumour (label 4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECIPES = {"dice_ce+oversampling": {"loss": "dice_ce", "foreground_oversample": 0.66},
           "plain_ce+uniform": {"loss": "ce", "foreground_oversample": 0.0}}


def region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """BraTS regions: whole tumour (any label > 0), tumour core (1, 3, 4), enhancing tumour (4)."""
    out = {}
    for name, labels in {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4), "enhancing": (4,)}.items():
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        den = p.sum() + r.sum()
        out[name] = float(2 * (p & r).sum() / den) if den else float("nan")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/brats2015_sample")
    ap.add_argument("--out", type=Path, default=Path("runs/brats"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlap", type=float, default=0.25)
    args = ap.parse_args(argv)

    import torch

    from medseg.infer.predict import predict_image
    from medseg.plan.plan import Plan
    from medseg.train.artifact import load_model
    from medseg.train.brats import convert_brats
    from medseg.train.dataset import load_case
    from medseg.train.losses import confusion_dice
    from medseg.train.trainer import train

    torch.set_num_threads(args.threads)
    ds_dir = args.out / "brats_msd"
    ds = convert_brats(args.data, ds_dir) if not (ds_dir / "dataset.json").exists() else None
    from medseg.train.dataset import open_dataset

    ds = ds or open_dataset(ds_dir)
    val_id = ds.cases[-1].id  # fixed split: last patient validates, the other three train
    splits = [{"train": [c.id for c in ds.cases[:-1]], "val": [val_id]}]
    results = {}
    for name, edits in RECIPES.items():
        plan = Plan.from_yaml(Path(__file__).resolve().parents[1] / "configs/brats.yaml")
        plan.dataset = str(ds_dir.resolve())
        plan.overlap = args.overlap
        for k, v in edits.items():
            setattr(plan, k, v)
        run = args.out / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "splits.json").write_text(json.dumps(splits))
        t0 = time.monotonic()
        res = train(plan, run, fold=0, max_minutes=args.minutes, progress=False, num_threads=args.threads)
        art = load_model(run)
        image, label = load_case([c for c in ds.cases if c.id == val_id][0])
        with torch.no_grad():
            pred, _ = predict_image(art.build(), art.plan, image, overlap=args.overlap)
        per_class = {art.plan.labels[k]: v for k, v in
                     confusion_dice(pred.array, label.array, art.plan.num_classes).items()}
        results[name] = {"iterations": res.iterations, "wall_min": round((time.monotonic() - t0) / 60, 2),
                         "per_class_dice": per_class, "regions": region_dice(pred.array, label.array),
                         "predicted_voxels": {art.plan.labels[k]: int((pred.array == k).sum()) for k in art.plan.labels},
                         "reference_voxels": {art.plan.labels[k]: int((label.array == k).sum()) for k in art.plan.labels}}
        print(name, json.dumps(results[name]), flush=True)
    out = {"minutes_each": args.minutes, "validation_case": val_id, "results": results,
           "load_avg_at_end": list(__import__("os").getloadavg())}
    (args.out / "benchmark.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
