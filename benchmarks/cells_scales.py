"""Test-time scale augmentation for a trained 2D cell model: maps averaged over resized copies of each image.

    python benchmarks/cells_scales.py --run RUN [--data ../shared/data/dsb2018_fluo] [--variants 1 1,1.25 ...]

A touching pair that the network joins at the image's own scale may be cut when the image is enlarged, and a
large textured nucleus that it splits may stay whole when the image is shrunk. Each variant is a set of scale
factors: the image (already brought into the model's size range, as ``medseg cells count`` does) is resized by
each factor, predicted, and the maps (probabilities, distance map, offsets rescaled) are resized back and
averaged before the watershed. Every variant's thresholds are chosen again on the run's tuning images
(``medseg.cells.tune.tune_thresholds``, what training does); the variant to adopt is the one best on the tuning
images. Validation scores are printed for every variant so that the choice can be checked, not made, on them.
No training; about a minute per scale factor for a DSB2018 fold on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_VARIANTS = ("1", "1,1.25", "1,0.8", "1,0.8,1.25", "1,1.5")


class ScaleAveraged:
    """A :class:`medseg.cells.count.CellModel` whose :meth:`probabilities` average the maps of resized copies
    of the image (``scales``, relative to the scale the model itself chooses); everything else is the model's.
    Maps of each (image, scale) are cached by the image object's id, so that variants sharing a scale predict it
    once: keep the images alive while the cache is in use."""

    def __init__(self, model, scales, cache: dict | None = None):
        self.model, self.scales = model, tuple(scales)
        self.cache = {} if cache is None else cache

    def __getattr__(self, name):
        return getattr(self.model, name)

    def maps(self, image: np.ndarray, base: float, s: float) -> np.ndarray:
        from skimage.transform import resize

        from medseg.cells.scale import resize_image, scaled_shape

        key = (id(image), base, s)
        if key in self.cache:
            return self.cache[key]
        target = scaled_shape(image.shape, base)
        shape = scaled_shape(image.shape, base * s)
        p = self.model._predict(resize_image(image, shape))
        if tuple(shape) != tuple(target):
            p = resize(p, (p.shape[0], *target), order=1, preserve_range=True, anti_aliasing=False)
            p = p.astype(np.float32)
            if self.model.cfg.offset_head:  # offsets are lengths in the resized image's pixels
                nd = self.model.cfg.spatial_dims
                for a in range(nd):
                    p[-nd + a] *= target[a] / shape[a]
        self.cache[key] = p  # a DSB2018 fold's maps at four scales: about 1.7 GB
        return p

    def probabilities(self, image: np.ndarray, scale: float | None = None) -> np.ndarray:
        if scale is None:
            key = ("base", id(image))
            scale = self.cache[key] if key in self.cache else self.cache.setdefault(key, self.model.scale_for(image))
        base = scale
        return np.mean([self.maps(image, base, s) for s in self.scales], axis=0)

    def segment(self, image: np.ndarray, spacing=None) -> np.ndarray:
        return self.model.postprocess(self.probabilities(image), shape=image.shape, image=image)


def score(model, cases) -> dict:
    from medseg.evaluate.instances import instance_metrics

    ms = [instance_metrics(c.labels, model.segment(c.image), [0.5]) for c in cases]
    err = np.array([m["abs_relative_count_error"] for m in ms])
    return {"ap@0.5": float(np.mean([m["ap@0.5"] for m in ms])), "count_error": float(err.mean()),
            "count_error_median": float(np.median(err)), "n_images": len(ms),
            "per_image": [{"image": c.case, "ap@0.5": m["ap@0.5"], "abs_relative_count_error": m[
                "abs_relative_count_error"], "n_ref": m["n_ref"], "n_pred": m["n_pred"]}
                          for c, m in zip(cases, ms)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained 2D cell model")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                    help="sets of scale factors, each comma-separated (1 = the plain model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    import dataclasses

    import torch

    from benchmarks.cells_analysis import run_sets
    from medseg.cells.count import CellModel
    from medseg.cells.tune import tune_thresholds

    torch.set_num_threads(args.threads)
    model = CellModel.load(args.run)
    if model.cfg.spatial_dims != 2:
        ap.error("scale averaging is for 2D models")
    sets = run_sets(model.meta, args.data)
    if not sets["tune"] or not sets["val"]:
        ap.error(f"{args.run} recorded no tuning or no validation images")
    print(f"{args.run}: {len(sets['tune'])} tuning, {len(sets['val'])} validation images; run thresholds "
          f"{model.cfg.seeds} fg {model.cfg.threshold}, seed {model.cfg.seed_threshold}")
    cache, results, cfg0 = {}, [], model.cfg
    for variant in args.variants:
        scales = [float(s) for s in variant.split(",")]
        started = time.perf_counter()
        model.cfg = cfg0
        wrapped = ScaleAveraged(model, scales, cache)
        tuned = tune_thresholds(wrapped, sets["tune"])
        model.cfg = dataclasses.replace(cfg0, threshold=tuned["threshold"], seed_threshold=tuned["seed_threshold"],
                                        seeds=tuned["seeds"])
        val = score(wrapped, sets["val"])
        row = {"scales": scales, "thresholds": {k: tuned[k] for k in ("seeds", "threshold", "seed_threshold")},
               "tune": {"ap@0.5": tuned["ap"], "count_error": tuned["count_error"]}, "val": val,
               "seconds": round(time.perf_counter() - started, 1)}
        results.append(row)
        print(f"scales {variant:12s} {tuned['seeds']} fg {tuned['threshold']}, seed {tuned['seed_threshold']}: "
              f"tuning AP@0.5 {tuned['ap']:.4f}, count err {tuned['count_error']:.1%} | validation "
              f"{val['ap@0.5']:.4f}, {val['count_error']:.1%} (median {val['count_error_median']:.1%}) "
              f"[{row['seconds']:.0f} s]", flush=True)
    model.cfg = cfg0
    best = max(results, key=lambda r: round(r["tune"]["ap@0.5"], 4))
    print(f"best on the tuning images: scales {best['scales']}")
    if args.json:
        from medseg.io.atomic import atomic_path

        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"run": str(args.run), "data": str(args.data), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
