"""Memory format and precision of a trained 2D cell model's prediction, and what they do to its thresholds.

    python benchmarks/cells_formats.py --run RUN [--data ../shared/data/dsb2018_fluo] [--json OUT]

* the maps of the run's first tuning image contiguous vs channels-last (both at the default precision, bf16 where
  the CPU computes it natively) and bf16 vs fp32: largest and mean difference, share of pixels whose class changes;
* the threshold table re-scored on the run's tuning images in each memory format, against the table training
  recorded (largest difference of a setting's AP@0.5);
* seconds per ``--size``² image in each format (best of 3);
* fp32 prediction: thresholds re-chosen on the tuning images and scored on the validation images, beside the model
  at the default precision.
No training; a few minutes for a DSB2018 fold on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def map_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Largest and mean absolute difference of two models' class probabilities (the first 3 maps), and the share
    of pixels whose most probable class differs."""
    return {"max": float(np.abs(a[:3] - b[:3]).max()), "mean": float(np.abs(a[:3] - b[:3]).mean()),
            "class_changed": float((a[:3].argmax(0) != b[:3].argmax(0)).mean())}


def table_difference(table: list[dict], recorded: list[dict]) -> float:
    """Largest |AP| difference between two threshold tables, setting by setting."""
    ap = {(r["seeds"], r["threshold"], r["seed_threshold"]): r["ap"] for r in recorded}
    return max(abs(r["ap"] - ap[(r["seeds"], r["threshold"], r["seed_threshold"])]) for r in table)


def seconds_per_image(model, size: int) -> float:
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    model._predict(image)  # warm-up
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        model._predict(image)
        best = min(best, time.perf_counter() - t)
    return float(best)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained 2D cell model with held-out tuning images")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--size", type=int, default=1024, help="side of the timed image (default 1024)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    import torch

    from benchmarks.cells_analysis import run_sets
    from benchmarks.cells_scales import score
    from medseg.cells.count import CellModel
    from medseg.cells.tune import tune_thresholds

    torch.set_num_threads(args.threads)
    model, fp32 = CellModel.load(args.run), CellModel.load(args.run, precision="fp32")
    if model.cfg.spatial_dims != 2 or not model.meta.get("tuning"):
        ap.error(f"{args.run}: a 2D model whose training chose its thresholds on held-out images is needed")
    sets = run_sets(model.meta, args.data)
    recorded = model.meta["tuning"]["table"]
    image = np.asarray(sets["tune"][0].image, np.float32)
    out = {"run": str(args.run), "data": str(args.data), "image": sets["tune"][0].case}

    contiguous = model._predict(image)
    out["tuning_table_vs_recorded"] = {"contiguous": table_difference(tune_thresholds(model, sets["tune"])["table"],
                                                                      recorded)}
    out["seconds_per_image"] = {"contiguous": seconds_per_image(model, args.size)}
    model.net.to(memory_format=torch.channels_last)
    model._last = None  # the cached maps were contiguous ones
    out["maps_contiguous_vs_channels_last"] = map_difference(contiguous, model._predict(image))
    out["tuning_table_vs_recorded"]["channels_last"] = table_difference(
        tune_thresholds(model, sets["tune"])["table"], recorded)
    out["seconds_per_image"]["channels_last"] = seconds_per_image(model, args.size)
    model.net.to(memory_format=torch.contiguous_format)
    model._last = None
    out["maps_bf16_vs_fp32"] = map_difference(contiguous, fp32._predict(image))

    for name, m in (("default", model), ("fp32", fp32)):
        found = tune_thresholds(m, sets["tune"])
        m.cfg = dataclasses.replace(m.cfg, threshold=found["threshold"], seed_threshold=found["seed_threshold"],
                                    seeds=found["seeds"])
        val = score(m, sets["val"])
        out[name] = {"thresholds": {k: found[k] for k in ("seeds", "threshold", "seed_threshold")},
                     "tune_ap@0.5": found["ap"], "val_ap@0.5": val["ap@0.5"], "val_count_error": val["count_error"]}
    print(json.dumps(out, indent=1))
    if args.json:
        from medseg.io.atomic import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
