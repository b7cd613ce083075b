"""Cell counting accuracy: learned (U-Net + watershed) vs classical vs the scikit-image gallery recipe.

    python benchmarks/cells.py --minutes 20 --data ../shared/data/dsb2018_fluo [--eval DIR] [--run RUN] [--config FILE]
    python benchmarks/cells.py ... --fold K [--folds 5] --json fK.json   # then: --pool f0.json ... f4.json

Trains a 2D cell model on the training split of DATA for at most MINUTES (skipped with --skip-train when
RUN already holds a model), then scores on the validation split of DATA (or on every image of --eval DIR,
an independent held-out set in the same layout):

* learned: the trained model + marker-controlled watershed (``medseg cells count -m RUN``);
* classical: ``medseg cells count --classical`` (Otsu + distance watershed, nucleus size estimated per image);
* gallery: scikit-image's "watershed segmentation" gallery recipe (Otsu, distance transform,
  ``peak_local_max(min_distance=d)``, watershed), with the d that is best *on these images* (favours it);
* connected components of the Otsu mask.

Also the 3D sample (``nuclei_stardist``): classical counts + AP. Metrics: AP = TP/(TP+FP+FN) at IoU 0.5..0.9
averaged over images (and pooled), F1, panoptic quality, mean absolute relative count error.
Writes a JSON summary (``--json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.cells.data import list_cases, load_case, percentile_normalize  # noqa: E402
from medseg.cells.splits import dataset_split  # noqa: E402
from medseg.cells.evaluate import THRESHOLDS, evaluate_pair, summarize  # noqa: E402
from medseg.cells.scale import (MEASURES, median_diameter, resize_image, resize_labels,  # noqa: E402
                                scaled_shape, size_range_meta)
from medseg.cells.tune import OBJECTIVES, SELECTIONS  # noqa: E402


def gallery_recipe(image: np.ndarray, min_distance: int) -> np.ndarray:
    """scikit-image gallery: Otsu mask, EDT, peak_local_max markers, watershed on -EDT."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    mask = image > threshold_otsu(image)
    dist = ndi.distance_transform_edt(mask)
    coords = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(mask)[0])
    markers = np.zeros(dist.shape, np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1)
    return watershed(-dist, markers, mask=mask)


def connected_components(image: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return ndi.label(image > threshold_otsu(image))[0]


def error_breakdown(ref: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> dict:
    """Why reference nuclei go unmatched (IoU < ``iou``, StarDist's matching as in the metrics) and what the
    unmatched predictions are.

    * merged: the prediction covering most of the nucleus also covers (>20 % of) another nucleus or matches one;
    * missed: no prediction covers half of it; misshapen: otherwise;
    * unmatched predictions: merger (covers >20 % of two or more nuclei), split (lies mostly, >50 %, inside one
      nucleus), spurious (otherwise: mostly on background).
    """
    from medseg.evaluate.instances import overlaps

    ov = overlaps(ref, pred)
    nr, npd = len(ov.ref_ids), len(ov.pred_ids)
    inter = np.zeros((nr, npd))
    inter[ov.pair_ref, ov.pair_pred] = ov.pair_inter
    io = np.zeros((nr, npd))
    io[ov.pair_ref, ov.pair_pred] = ov.pair_iou
    big = inter > 0.2 * ov.ref_sizes[:, None]  # the prediction covers >20 % of the nucleus
    matched_p = io.max(0, initial=0) >= iou
    out = {"ref": nr, "pred": npd, "matched": int((io.max(1, initial=0) >= iou).sum()), "merged": 0, "missed": 0,
           "misshapen": 0, "merger": 0, "split": 0, "spurious": 0}
    for i in np.flatnonzero(io.max(1, initial=0) < iou):
        j = int(inter[i].argmax()) if npd else -1
        if j < 0 or inter[i, j] < 0.5 * ov.ref_sizes[i]:
            out["missed"] += 1
        elif matched_p[j] or big[:, j].sum() > 1:
            out["merged"] += 1
        else:
            out["misshapen"] += 1
    for j in np.flatnonzero(~matched_p):
        if big[:, j].sum() > 1:
            out["merger"] += 1
        else:
            out["split" if inter[:, j].max(initial=0) > 0.5 * ov.pred_sizes[j] else "spurious"] += 1
    return out


PER_IMAGE_KEYS = ("n_ref", "n_pred", "ap@0.5", "ap@0.7", "f1@0.5", "abs_relative_count_error")


def score(rows):
    s = summarize(rows, THRESHOLDS)
    m, p = s["mean"], s["pooled"]
    return {"n_images": s["n_images"], **{f"ap@{t:g}": m[f"ap@{t:g}"] for t in THRESHOLDS},
            "f1@0.5": m["f1@0.5"], "pq@0.5": m["panoptic_quality@0.5"], "pooled_ap@0.5": p["ap@0.5"],
            "abs_rel_count_error": m["abs_relative_count_error"], "total_count_error": p["relative_count_error"],
            "pooled_abs_count_error": p["abs_relative_count_error"],
            "n_ref": p["n_ref"], "n_pred": p["n_pred"],
            "ci95": {"ap@0.5": s["ci95"]["ap@0.5"], "abs_rel_count_error": s["ci95"]["abs_relative_count_error"]}}


def photon_limited(image: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` as if taken with ``photons`` expected photons at its 99.8th-percentile brightness: Poisson counts
    of the image scaled so (its own background level included as signal).

    Examples
    --------
    >>> img = np.full((50, 50), 100.0); out = photon_limited(img, 10, np.random.default_rng(0))
    >>> round(float(out.mean())), bool(out.std() > 2)
    (10, True)
    """
    x = np.clip(np.asarray(image, dtype=np.float64), 0, None)
    top = float(np.percentile(x, 99.8)) or 1.0
    return rng.poisson(x * (photons / top)).astype(np.float32)


def training_config(args):
    """The run's CellTrainConfig: ``--config`` (or the defaults) with the flags given on the command line applied."""
    from medseg.cells.config import CellTrainConfig

    given = {"max_minutes": args.minutes, "max_steps": args.steps, "batch_size": args.batch_size,
             "base_filters": args.base_filters, "lr": args.lr, "weight_decay": args.weight_decay,
             "threads": args.threads, "tune_fraction": args.tune_fraction, "diameter": args.diameter, "seed": args.seed,
             "offset_head": args.offset_head, "norm": args.norm, "ema": args.ema, "contact_weight": args.contact_weight,
             "contact_boundary": args.contact_boundary, "boundary_width": args.boundary_width,
             "fold": args.fold, "folds": args.folds, "low_light_prob": args.low_light,
             "tune_objective": args.tune_objective, "tune_selection": args.tune_selection,
             "small_weight": args.small_weight, "small_size_px": args.small_size,
             "patch_size": None if args.patch is None else (args.patch, args.patch),
             "distance_head": False if args.no_distance_head else None,
             "scale_range": tuple(float(v) for v in args.scale_range.split(",")) if args.scale_range else None}
    base = CellTrainConfig.from_yaml(args.config) if args.config else CellTrainConfig()
    return base.updated(**given)


def subset_dataset(data, dst: Path, fraction: float, cfg):
    """A dataset folder ``dst`` of links to ``data``'s validation and tuning images and the first ``fraction`` of its
    other training images in the order of a seed-0 permutation (so that smaller shares are subsets of larger ones),
    with a ``split.json`` naming the same validation images; returns (dst, the config to train it with, the kept
    training images' ids)."""
    import dataclasses

    from medseg.cells.splits import tuning_images

    if not 0 < fraction <= 1:
        raise SystemExit("error: --train-fraction must be in (0, 1]")
    cases = list_cases(data)
    split = dataset_split(data, cases, cfg.val_fraction, cfg.fold, cfg.folds)
    tune = {c.case for c in tuning_images(split["train"], cfg.tune_fraction)}
    rest = sorted(c.case for c in split["train"] if c.case not in tune)
    kept = sorted(np.random.default_rng(0).permutation(rest)[:max(1, round(fraction * len(rest)))].tolist())
    val = [c.case for c in split["val"]]
    wanted = set(kept) | tune | set(val)
    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        if c.case in wanted:
            for src, sub in ((c.image_path, "images"), (c.label_path, "labels")):
                link = dst / sub / Path(src).name
                if not link.is_symlink():
                    link.symlink_to(Path(src).resolve())
    (dst / "split.json").write_text(json.dumps({"train": sorted(set(kept) | tune), "val": val}))
    return dst, dataclasses.replace(cfg, fold=None), kept  # the split.json now names the fold's images


def backfill_diameter_range(model, cases, measure: str | None = None) -> bool:
    """Give a native-scale run trained before session 27 (which did not record it) its ``diameter_range``: the same
    percentiles of the same training images (among ``cases``). With ``measure`` (``--diameter-measure``), both
    ranges (per-object and area-weighted) are measured anew and the run measures images that way (``both``: as runs
    trained since session 30 do). True when a range was computed."""
    if model.cfg.diameter or ("diameter_range" in model.meta and measure is None):
        return False
    train_ids = set(model.meta["split"]["train"])
    model.meta.update(size_range_meta([load_case(c).labels for c in cases if c.case in train_ids], measure or "count"))
    return True


def recorded_validation(meta: dict, available, default):
    """The validation images a run recorded in its ``model.json`` split, where they differ from ``default``; else
    None. A run trained on a fold before ``model.json`` recorded the fold would otherwise be scored on the default
    split, which holds some of its training images. Runs whose recorded images are not all in ``available`` (trained
    on another folder) keep the default."""
    val = set((meta.get("split") or {}).get("val") or [])
    by_id = {c.case: c for c in available}
    if not val or not val <= set(by_id) or val == {c.case for c in default}:
        return None
    return [by_id[i] for i in sorted(val)]


def trained_on(meta: dict, cases) -> list[str]:
    """The ids of ``cases`` that the run of ``meta`` (its ``model.json``) trained on or chose its thresholds on,
    by the split it recorded (a held-out block ``<id>:tune`` counts as its image); empty for a run that recorded
    none. Scoring those would report training accuracy as validation accuracy."""
    from medseg.cells.splits import TUNE_BLOCK

    split = meta.get("split") or {}
    used = set(split.get("train") or []) | {i.removesuffix(TUNE_BLOCK) for i in split.get("tune") or []}
    return sorted(c.case for c in cases if c.case in used)


def pooled(paths, method: str = "learned") -> dict:
    """One summary over the per-image rows of several runs' JSON outputs (e.g. the folds of a cross-validation):
    means over images with their 95 % bootstrap intervals, and the count error pooled over all nuclei. The rows
    are kept (``per_image``), so that two pooled cross-validations compare pairwise with ``benchmarks/paired.py``."""
    from medseg.evaluate.summary import bootstrap_mean_ci

    rows, seen = [], set()
    for p in paths:
        for r in json.loads(Path(p).read_text())["per_image"][method]:
            if r["image"] in seen:
                raise SystemExit(f"error: {p}: image {r['image']} is in two of the pooled runs")
            seen.add(r["image"])
            rows.append(r)
    cols = ("ap@0.5", "ap@0.7", "f1@0.5", "abs_relative_count_error")
    table = np.array([[r[c] for c in cols] for r in rows], float)
    lo, hi = bootstrap_mean_ci(table)
    n_ref, n_pred = sum(r["n_ref"] for r in rows), sum(r["n_pred"] for r in rows)
    return {"n_runs": len(paths), "n_images": len(rows), "n_ref": n_ref, "n_pred": n_pred,
            "mean": dict(zip(cols, table.mean(0).tolist())),
            "ci95": {c: [float(a), float(b)] for c, a, b in zip(cols, lo, hi)},
            "total_count_error": (n_pred - n_ref) / max(n_ref, 1), "per_image": {method: rows}}


def print_pooled(p: dict) -> None:
    m, ci = p["mean"], p["ci95"]
    print(f"{p['n_images']} images from {p['n_runs']} runs, {p['n_ref']} nuclei, {p['n_pred']} predicted")
    for c, name in (("ap@0.5", "AP@0.5"), ("ap@0.7", "AP@0.7"), ("f1@0.5", "F1@0.5"),
                    ("abs_relative_count_error", "mean abs count error")):
        fmt = "{:.1%}" if c == "abs_relative_count_error" else "{:.3f}"
        print(f"{name}: {fmt.format(m[c])} (95 % interval {fmt.format(ci[c][0])}-{fmt.format(ci[c][1])})")
    print(f"total count error (all nuclei): {p['total_count_error']:+.1%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None, help="training budget (default: the config's, 20)")
    ap.add_argument("--steps", type=int, default=None,
                    help="also stop after this many training steps (with a generous --minutes, a step-matched run: "
                         "the 20-minute budget buys 2-2.5x fewer steps on a slow day than on a fast one)")
    ap.add_argument("--config", default=None,
                    help="YAML file of training settings (as `medseg cells train --config`, e.g. "
                         "configs/cells_dsb2018.yaml); the flags below override it")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--eval", default=None, help="independent evaluation set (images/ + labels/)")
    ap.add_argument("--run", default="runs/cells_dsb", help="run folder for the model")
    ap.add_argument("--skip-train", action="store_true", help="reuse the model in --run")
    ap.add_argument("--patch", type=int, default=None, help="crop size (default 256)")
    ap.add_argument("--batch-size", type=int, default=None, help="crops per step (default 2)")
    ap.add_argument("--base-filters", type=int, default=None, help="network width (default 16)")
    ap.add_argument("--lr", type=float, default=None, help="AdamW's learning rate before the poly decay (default 3e-3)")
    ap.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 1e-4)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the free cores)")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N evaluation images")
    ap.add_argument("--tune-fraction", type=float, default=None,
                    help="training images held out to choose the watershed thresholds (default 0.1; 0: the 0.5 "
                         "defaults)")
    ap.add_argument("--thresholds", default=None, metavar="FG,SEED[,MARKERS]",
                    help="score the learned model with these watershed thresholds instead of the run's (e.g. 0.5,0.5 "
                         "or 0.5,0.4,distance; markers: boundary, distance or votes)")
    ap.add_argument("--fold", type=int, default=None,
                    help="train and score on fold K of a k-fold split by the image ids' hash (cross-validation)")
    ap.add_argument("--folds", type=int, default=None, help="number of folds for --fold (default 5)")
    ap.add_argument("--train-fraction", type=float, default=None, metavar="F",
                    help="train on the first share F of the training images (tuning images excepted) in a fixed "
                         "random order, so that the shares are nested (a learning curve); validation and tuning "
                         "images unchanged")
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON",
                    help="no training: pool the per-image rows of these --json outputs (e.g. the k folds) into one "
                         "summary with bootstrap intervals")
    ap.add_argument("--seed", type=int, default=None,
                    help="training seed (patch sampling, augmentation, weights; default 0)")
    ap.add_argument("--diameter", type=float, default=None,
                    help="train with scale normalisation: images enlarged to this median nucleus diameter (px)")
    ap.add_argument("--contact-weight", type=float, default=None,
                    help="w0 of the U-Net weight map near touching nuclei (default: the training default, 10; 0: off)")
    ap.add_argument("--no-distance-head", action="store_true",
                    help="train the 3-class model only (markers from interior minus boundary)")
    ap.add_argument("--offset-head", action=argparse.BooleanOptionalAction, default=None,
                    help="also train offsets to the nuclei's centres (the default; centre-voting markers join the "
                         "threshold search)")
    ap.add_argument("--scale-range", default=None, metavar="LO,HI",
                    help="zoom augmentation: half the crops resized by a factor in [LO, HI] (default: off)")
    ap.add_argument("--norm", choices=("instance", "batch"), default=None,
                    help="normalisation layers (default instance)")
    ap.add_argument("--low-light", type=float, default=None, metavar="P",
                    help="probability of dim-acquisition shot noise on a training crop (default 0.25; 0: off)")
    ap.add_argument("--ema", type=float, default=None, help="EMA decay of the weights (e.g. 0.999; default 0: off)")
    ap.add_argument("--contact-boundary", type=int, default=None,
                    help="boundary-class width (px) where nuclei touch (default 1: the 1-px inner boundary)")
    ap.add_argument("--boundary-width", type=int, default=None, help="boundary-class width (px) everywhere (default 1)")
    ap.add_argument("--small-weight", type=float, default=None,
                    help="extra cross-entropy weight on nuclei smaller than --small-size px (default 0: off)")
    ap.add_argument("--small-size", type=float, default=None, help="pixels (default 100)")
    ap.add_argument("--tune-objective", choices=OBJECTIVES, default=None,
                    help="what the threshold search maximises (CellTrainConfig.tune_objective; default ap); with "
                         "--skip-train it re-chooses the thresholds (implies --retune)")
    ap.add_argument("--tune-selection", choices=SELECTIONS, default=None,
                    help="how the threshold search picks its setting (CellTrainConfig.tune_selection; default peak); "
                         "with --skip-train it re-chooses the thresholds (implies --retune)")
    ap.add_argument("--retune", action="store_true",
                    help="re-run the threshold search (current grid) on the run's held-out tuning images first")
    ap.add_argument("--raw-weights", action="store_true",
                    help="with --ema runs: score the final training weights (checkpoint.pt) instead of their moving "
                         "average, thresholds re-chosen on the tuning images (implies --retune)")
    ap.add_argument("--tta", action="store_true", help="flip test-time augmentation for the learned model")
    ap.add_argument("--min-snr", type=float, default=None,
                    help="contrast test of the learned model's objects (default: the model's, 2; 0: off, which "
                         "reproduces the numbers recorded before session 8)")
    ap.add_argument("--merge-boundary", type=float, default=None, metavar="T",
                    help="merging of fragments across borders of mean boundary probability < T (default: the "
                         "model's, 0.35; 0: off, which reproduces the numbers recorded before session 28)")
    ap.add_argument("--no-rescale", action="store_true",
                    help="predict every image at its own scale (CellModel rescale=False; the behaviour before "
                         "session 27): no resizing of images whose nuclei lie outside the training range")
    ap.add_argument("--diameter-measure", choices=MEASURES, default=None,
                    help="re-measure the run's size ranges from its training images and decide resizing by the "
                         "per-object median diameter (count; runs before session 30), the area-weighted one (area) "
                         "or both agreeing (both; runs since), instead of as the run recorded")
    ap.add_argument("--magnify", type=float, default=None, metavar="F",
                    help="stress test: resize every evaluation image (linear) and its labels (nearest) by F, as "
                         "if taken at F times the magnification")
    ap.add_argument("--photons", type=float, default=None, metavar="K",
                    help="stress test: every evaluation image as if taken with K photons at its brightest (99.8th "
                         "percentile): Poisson counts of the image scaled so (shot noise of a dim acquisition)")
    ap.add_argument("--no-learned", action="store_true", help="score only the classical methods")
    ap.add_argument("--learned-only", action="store_true", help="skip the classical baselines and 3D")
    ap.add_argument("--by-size", action="store_true",
                    help="also score the learned model per nucleus-size group (median annotated diameter per image)")
    ap.add_argument("--errors", action="store_true",
                    help="also count the learned model's errors by kind (merged, missed, split, spurious)")
    ap.add_argument("--json", default=None, help="write the summary here")
    args = ap.parse_args(argv)
    if args.pool:
        summary = pooled(args.pool)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(summary, indent=2))
        print_pooled(summary)
        return 0

    import torch

    from medseg.cells.count import CellModel, ClassicalSegmenter
    from medseg.cells.train import train_cells
    from medseg.cpu import free_cores
    from medseg.errors import InputError

    info = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
            "load_avg_start": os.getloadavg()[0], "minutes": args.minutes, "max_steps": args.steps,
            "config": args.config, "data": args.data,
            "eval": args.eval}
    run = Path(args.run)
    if not args.no_learned and not (args.skip_train and (run / "model.pt").exists()):
        try:
            cfg = training_config(args)
        except InputError as exc:
            ap.error(str(exc))
        info["minutes"] = cfg.max_minutes
        data = args.data
        if args.train_fraction is not None:  # a learning curve: same validation and tuning images, fewer others
            data, cfg, kept = subset_dataset(args.data, run / "train_subset", args.train_fraction, cfg)
            info["train_fraction"] = {"fraction": args.train_fraction, "training_images": len(kept)}
        t = time.perf_counter()
        train_cells(data, run, cfg, progress=sys.stderr.isatty())
        info["train_wall_s"] = round(time.perf_counter() - t, 1)
    if not args.no_learned:
        info["train"] = {k: v for k, v in json.loads((run / "model.json").read_text()).items() if k != "split"}
        trained = info["train"]["config"]
        if trained.get("fold") is not None:  # score the fold the run validated on, never its training images
            if args.fold is not None and (args.fold, args.folds or 5) != (trained["fold"], trained["folds"]):
                ap.error(f"--fold {args.fold}: {run} was trained on fold {trained['fold']} of {trained['folds']}")
            args.fold, args.folds = trained["fold"], trained["folds"]
    if args.eval:
        cases = list_cases(args.eval)
        info["eval_set"] = f"all {len(cases)} images of {args.eval}"
    elif args.fold is not None:
        folds = args.folds or 5
        cases = dataset_split(args.data, list_cases(args.data), fold=args.fold, folds=folds)["val"]
        info["eval_set"] = f"fold {args.fold} of a {folds}-fold hash split of {args.data} ({len(cases)} images)"
    else:
        cases = dataset_split(args.data, list_cases(args.data))["val"]
        how = "its split.json" if (Path(args.data) / "split.json").exists() else "hash split 15%"
        info["eval_set"] = f"validation split of {args.data} ({len(cases)} images, {how})"
        own = None if args.no_learned else recorded_validation(json.loads((run / "model.json").read_text()),
                                                                list_cases(args.data), cases)
        if own is not None:
            cases = own
            info["eval_set"] = (f"the run's own validation images of {args.data} ({len(cases)} images, model.json's "
                                "split: not the default split, e.g. a fold run from before folds were recorded)")
    if not args.eval and not args.no_learned:
        seen = trained_on(json.loads((run / "model.json").read_text()), cases)
        if seen:
            ap.error(f"{run} trained or tuned on {len(seen)} of the {len(cases)} images it would be scored on (e.g. "
                     f"{seen[0]}): score it on its own validation images (its --fold), or with --eval")
    if args.limit:
        cases = cases[: args.limit]
        info["eval_set"] += f", first {len(cases)} used"
    torch.set_num_threads(args.threads or free_cores())
    model = None if args.no_learned else CellModel.load(run, tta=args.tta, rescale=not args.no_rescale)
    if model is not None and model.rescale and backfill_diameter_range(model, list_cases(args.data),
                                                                       args.diameter_measure):
        info["diameter_range_computed"] = "from the run's training images (" + (
            f"--diameter-measure {args.diameter_measure})" if args.diameter_measure else
            "the run predates recording it)")
    if model is not None:
        info["rescale"] = {"on": model.rescale, "diameter_range": model.meta.get("diameter_range"),
                           "diameter_range_area": model.meta.get("diameter_range_area"),
                           "measure": model.meta.get("diameter_measure", "count")}
        if args.merge_boundary is not None:  # before a re-tuning, which then searches with it
            model.cfg.merge_boundary = args.merge_boundary
        info["merge"] = {"boundary": model.cfg.merge_boundary, "area_ratio": model.cfg.merge_area_ratio}
    if args.magnify:
        info["eval_set"] += f", magnified {args.magnify:g}x"
    if args.photons:
        info["eval_set"] += f", shot noise at {args.photons:g} photons"
    dim_rng = np.random.default_rng(0)  # the same noisy images for every model
    if model is not None and args.raw_weights:
        model.net.load_state_dict(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"])
        info["weights"] = "raw final weights from checkpoint.pt"
        args.retune = bool(model.meta["split"].get("tune"))  # else the run's own (default) thresholds
    if model is not None and args.skip_train and (args.tune_objective or args.tune_selection):
        args.retune = True
    if model is not None and args.retune:  # e.g. after the search grid changed, without retraining
        from medseg.cells.tune import tune_thresholds

        from medseg.cells.splits import recorded_tuning_cases

        tune_ids = model.meta["split"].get("tune", [])
        if not tune_ids:
            ap.error(f"--retune: {run} holds no tuning images (trained with --tune-fraction 0)")
        tune = recorded_tuning_cases(list_cases(args.data), tune_ids, model.cfg.channel)
        found = tune_thresholds(model, tune, objective=args.tune_objective or model.cfg.tune_objective,
                                selection=args.tune_selection or model.cfg.tune_selection)
        model.cfg.threshold, model.cfg.seed_threshold = found["threshold"], found["seed_threshold"]
        model.cfg.seeds = found["seeds"]
        info["retuned"] = {k: v for k, v in found.items() if k != "table"}
    if model is not None and args.thresholds:
        fg, seed, *src = args.thresholds.split(",")
        model.cfg.threshold, model.cfg.seed_threshold = float(fg), float(seed)
        model.cfg.seeds = src[0] if src else model.cfg.seeds
    if model is not None:
        if args.min_snr is not None:
            model.cfg.min_snr = args.min_snr
        info["thresholds_used"] = [model.cfg.threshold, model.cfg.seed_threshold, model.cfg.seeds]
        info["min_snr"] = model.cfg.min_snr
    classical = ClassicalSegmenter()
    distances = (2, 3, 5, 7, 10, 15)
    rows = {"learned": [], "classical": [], "connected_components": []}
    gallery = {d: [] for d in distances}
    times = {"learned": 0.0, "classical": 0.0}
    diameters, errors, rescaled = [], {}, {}
    for c in cases:
        load_case(c)
        if args.magnify:
            shape = scaled_shape(c.image.shape, args.magnify)
            c.image, c.labels = resize_image(c.image, shape), resize_labels(c.labels, shape)
        if args.photons:
            c.image = photon_limited(c.image, args.photons, dim_rng)
        img = c.image
        diameters.append(median_diameter(c.labels))
        if model is not None:
            t = time.perf_counter()
            scale = model.scale_for(img)  # what segment() does, with the factor kept for the record
            pred = model.postprocess(model.probabilities(img, scale), shape=img.shape, image=img)
            if scale != 1.0:
                rescaled[c.case] = round(scale, 3)
            rows["learned"].append(evaluate_pair(c.labels, pred))
            times["learned"] += time.perf_counter() - t
            if args.errors:
                for k, v in error_breakdown(c.labels, pred).items():
                    errors[k] = errors.get(k, 0) + int(v)
        if args.learned_only:
            continue
        t = time.perf_counter()
        rows["classical"].append(evaluate_pair(c.labels, classical.segment(img)))
        times["classical"] += time.perf_counter() - t
        norm = percentile_normalize(img)
        rows["connected_components"].append(evaluate_pair(c.labels, connected_components(norm)))
        for d in distances:
            gallery[d].append(evaluate_pair(c.labels, gallery_recipe(norm, d)))
    results = {(f"{k} (flip TTA)" if k == "learned" and args.tta else k): score(v) for k, v in rows.items() if v}
    if not args.learned_only:
        best_d = max(distances, key=lambda d: score(gallery[d])["ap@0.5"])
        results[f"gallery (best min_distance={best_d})"] = score(gallery[best_d])
    if args.by_size and rows["learned"]:
        groups = [(0, 12), (12, 20), (20, 30), (30, np.inf)]
        for lo, hi in groups:
            sel = [r for r, d in zip(rows["learned"], diameters) if lo <= d < hi]
            if sel:
                size = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">= {lo:g}"
                results[f"learned, images with nuclei {size} px across"] = score(sel)
    info["seconds_per_image"] = {k: round(v / max(len(cases), 1), 3) for k, v in times.items() if rows[k]}

    # 3D sample: classical (a 3D model is trained and scored on halves of the stack by benchmarks/cells3d.py)
    import tifffile

    d3 = Path(args.data).parent / "nuclei_stardist"
    if (d3 / "img3d.tif").exists() and not args.learned_only:
        img3 = tifffile.imread(d3 / "img3d.tif")
        ref3 = tifffile.imread(d3 / "mask3d.tif")
        lab3 = classical.segment(img3)  # the file has no pixel size: isotropic
        cc3 = ndi.label(lab3 > 0)[0]
        results["3D classical, file spacing (none: 1,1,1)"] = score([evaluate_pair(ref3, lab3)])
        results["3D connected components"] = score([evaluate_pair(ref3, cc3)])
        # the user-supplied z step (--pixel-size 2,1,1): the nuclei are about half as tall as wide in voxels
        lab3a = classical.segment(img3, (2.0, 1.0, 1.0))
        results["3D classical, --pixel-size 2,1,1"] = score([evaluate_pair(ref3, lab3a)])

    if errors:
        info["learned_errors_at_iou_0.5"] = errors
    if model is not None:
        info["rescale"]["images_resized"] = rescaled
    # per image, so that two runs on the same images can be compared pairwise (benchmarks/paired.py)
    per_image = {k: [{"image": c.case, **{m: r[m] for m in PER_IMAGE_KEYS}} for c, r in zip(cases, v)]
                 for k, v in rows.items() if k in ("learned", "classical") and v}
    summary = {"info": info, "results": results, "per_image": per_image}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"\n{info['eval_set']}; {info['machine']}")
    print("| method | images | AP@0.5 | AP@0.7 | AP@0.9 | F1@0.5 | PQ | pooled AP@0.5 | mean abs count err | "
          "pooled abs count err | total count err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, r in results.items():
        print(f"| {k} | {r['n_images']} | {r['ap@0.5']:.3f} | {r['ap@0.7']:.3f} | {r['ap@0.9']:.3f} | "
              f"{r['f1@0.5']:.3f} | {r['pq@0.5']:.3f} | {r['pooled_ap@0.5']:.3f} | {r['abs_rel_count_error']:.1%} | "
              f"{r['pooled_abs_count_error']:.1%} | {r['total_count_error']:+.1%} |")
    for k, r in results.items():
        if r["n_images"] > 1:
            (a_lo, a_hi), (c_lo, c_hi) = r["ci95"]["ap@0.5"], r["ci95"]["abs_rel_count_error"]
            print(f"{k}: 95 % bootstrap interval over images, AP@0.5 {a_lo:.3f}-{a_hi:.3f}, mean abs count error "
                  f"{c_lo:.1%}-{c_hi:.1%}")
    if "thresholds_used" in info:
        print(f"\nlearned model scored with watershed thresholds foreground {info['thresholds_used'][0]}, "
              f"seed {info['thresholds_used'][1]} (markers: {info['thresholds_used'][2]})")
    if errors:
        print("\nlearned model's errors at IoU 0.5 (nuclei / predictions): " + ", ".join(f"{k} {v}" for k, v in
                                                                                    errors.items()))
    if "train" in info:
        tr = info["train"]
        print(f"\ntraining: {tr.get('steps')} steps in {tr.get('train_seconds')} s")
        if tr.get("tuning"):
            t = tr["tuning"]
            print(f"thresholds chosen on {t['n_images']} held-out training images in {t['seconds']} s: foreground "
                  f"{t['threshold']}, seed {t['seed_threshold']}, markers {t.get('seeds', 'boundary')} "
                  f"(AP@0.5 there {t['ap']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
