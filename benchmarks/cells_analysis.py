"""Where a trained cell model's count errors come from, on its tuning and validation images (no training).

    python benchmarks/cells_analysis.py --run RUN [--data ../shared/data/dsb2018_fluo] [--only causes,markers,...]

Each image's probability maps are computed once; then:

* ``causes``: every validation nucleus left unmatched at IoU 0.5, by its watershed seed (interior - boundary above
  the run's seed threshold): none inside it ("seedless"), one shared with another nucleus ("shared"), or its own;
* ``markers``: marker variants, each with its thresholds chosen on the tuning images and then scored on the
  validation images: interior - boundary (the default), seeds that must also lie in the distance map's core
  ("and"), h-maxima of the distance map ("hmax"), interior seeds split by distance h-maxima ("split");
  Also interior seeds plus distance-map cores where a nucleus has none ("or"), and foreground parts without any
  seed kept as objects of their own ("orphans");
* ``oracle``: the run's own threshold grid scored on the validation images (the best count error any threshold
  pair could give, for scale only: choosing it would be tuning to the validation set);
* ``rule``: thresholds chosen on the tuning images by AP@0.5 minus count error instead of AP@0.5 alone;
* ``filters``: dropping objects whose mean foreground probability is below m, on both sets;
* ``images``: the validation images with the largest relative count errors;
* ``unmatched``: validation nuclei without a match, split into those no prediction covers (at least half of their
  pixels background) and the rest (merged or misshapen), with their areas and contrasts next to the matched ones';
* ``tta``: flip TTA (4 passes, what ``count --tta`` does) and all eight 90-degree rotations and flips (the
  training augmentations), with the run's thresholds;
* ``enlarge``: test-time enlargement of images whose nuclei are smaller than D px across (the ``--diameter``
  machinery applied to a model trained at native scale), D chosen on the tuning images;
* ``votes`` (models with an offset head): interior - boundary markers, centre voting
  (``medseg.postprocess.votes``), and interior - boundary objects split where their pixels vote for two or more
  centres ("split by votes"), each with its thresholds chosen on the tuning images;
* ``small`` (runs with interior - boundary markers): small-object rules (minimum object size, minimum seed size,
  seedless foreground parts up to A px kept as objects) at the run's thresholds, chosen on the tuning images and
  scored on both sets (``CellModel.postprocess``'s own: 8 px, 4 px, none);
* ``contrast``: the contrast test's basis: the signal-to-noise ratio (``medseg.postprocess.contrast.object_snr``)
  of every annotated nucleus of the dataset against its own background, of the run's matched and unmatched
  objects (without the test), and the run scored with larger sliding windows (whole-image context) instead.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MARKER_GRIDS = {
    "boundary": [dict(t=t, s=s) for t in (0.4, 0.5, 0.6) for s in (0.8, 0.85, 0.9, 0.95)],
    "and": [dict(t=t, s=s, d=d) for t in (0.5, 0.6) for s in (0.5, 0.8, 0.9) for d in (0.2, 0.3, 0.4, 0.5)],
    "hmax": [dict(t=t, h=h) for t in (0.5, 0.6) for h in (0.05, 0.1, 0.2, 0.3, 0.4)],
    "split": [dict(t=t, s=s, h=h) for t in (0.5, 0.6) for s in (0.8, 0.9) for h in (0.1, 0.2, 0.3, 0.4)],
    "or": [dict(t=t, s=s, d=d) for t in (0.5, 0.6, 0.7) for s in (0.85, 0.9) for d in (0.3, 0.4, 0.5, 0.6)],
    "orphans": [dict(t=t, s=s) for t in (0.4, 0.5, 0.6, 0.7) for s in (0.8, 0.85, 0.9, 0.95)],
}


def segment(p: np.ndarray, mode: str, t: float, s: float | None = None, d: float | None = None,
            h: float | None = None) -> np.ndarray:
    """Instances from maps ``p`` (background, interior, boundary, distance) with one marker variant; "boundary"
    is ``medseg.postprocess.watershed_instances`` as ``CellModel.postprocess`` calls it. "hmax" uses scikit-image's
    ``h_maxima``: its ``markers="peaks"`` mode (``peak_markers``, made for the distance transform of a mask, with
    a minimum distance) also keeps domes lower than h, which on a noisy predicted map adds many one-pixel
    markers."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    from medseg.postprocess.watershed import relabel_sequential, remove_small_instances, watershed_instances

    fg, dist = p[1] + p[2], p[3]
    if mode in ("boundary", "orphans"):  # "boundary" is what CellModel.postprocess does
        return watershed_instances(fg, boundary=p[2], seed_threshold=s, min_seed_size=4, markers="boundary",
                                   threshold=t, min_size=8, keep_unseeded=mode == "orphans")
    mask, inner = fg > t, fg - p[2]
    if mode == "hmax":
        seeds = ndi.label(h_maxima(np.where(mask, dist, 0).astype(np.float64), h) & mask)[0]
        surface = -dist
    elif mode == "and":  # interior seeds that also lie in the distance map's core
        seeds = remove_small_instances(ndi.label((inner > s) & (dist > d) & mask)[0], 4)
        surface = -dist
    elif mode == "split":  # interior seeds, each split by the distance map's h-maxima inside it
        core = (inner > s) & mask
        peaks = ndi.label(h_maxima(np.where(core, dist, 0).astype(np.float64), h) & core)[0]
        seeds = watershed(-dist, peaks, mask=core)
        rest = ndi.label(core & (seeds == 0))[0]  # seed parts without a peak stay whole
        seeds = np.where(rest > 0, rest + seeds.max(), seeds)
        surface = p[2] - fg
    elif mode == "or":  # interior seeds, plus distance cores that hold none of them
        seeds = remove_small_instances(ndi.label((inner > s) & mask)[0], 4)
        cores = ndi.label((dist > d) & mask)[0]
        extra = remove_small_instances(ndi.label((cores > 0) & ~np.isin(cores, np.unique(cores[seeds > 0])))[0], 4)
        seeds = np.where(extra > 0, extra + seeds.max(), seeds)
        surface = p[2] - fg
    else:
        raise ValueError(mode)
    return relabel_sequential(remove_small_instances(watershed(surface, seeds, mask=mask), 8))


SMALL_GRID = [dict(min_size=m, min_seed=s, orphan_max=a) for m in (0, 2, 4, 8) for s in (1, 2, 4) for a in (0, 40, 80)]


def segment_small(p: np.ndarray, t: float, s: float, min_size: float, min_seed: float,
                  orphan_max: float) -> np.ndarray:
    """Interior - boundary watershed (as ``CellModel.postprocess``) with its small-object rules varied: objects below
    ``min_size`` px and seeds below ``min_seed`` px dropped, foreground parts without a seed kept as objects when they
    hold at most ``orphan_max`` px (0: none kept)."""
    from medseg.postprocess.watershed import relabel_sequential, remove_small_instances, watershed_instances

    fg = p[1] + p[2]
    labels = watershed_instances(fg, boundary=p[2], threshold=t, seed_threshold=s, min_size=0,
                                 min_seed_size=min_seed, keep_unseeded=False, markers="boundary")
    if orphan_max:
        orphans = ndi.label((fg > t) & (labels == 0))[0]
        keep = np.bincount(orphans.ravel()) <= orphan_max
        keep[0] = False
        labels = np.where(keep[orphans], orphans + labels.max(), labels)
    return relabel_sequential(remove_small_instances(labels, min_size))


def split_by_votes(objects: np.ndarray, votes: np.ndarray, fg: np.ndarray, min_size: float = 8.0,
                   share: float = 0.2) -> np.ndarray:
    """Split each object of ``objects`` whose pixels fall into two or more vote groups of ``votes`` (each holding
    at least ``min_size`` pixels and ``share`` of the object); other objects are kept whole."""
    from skimage.segmentation import watershed

    from medseg.postprocess.watershed import relabel_sequential

    objects, votes = np.asarray(objects, np.int64), np.asarray(votes, np.int64)
    nv = int(votes.max()) + 1
    pair = np.bincount((objects * nv + votes).ravel(), minlength=(int(objects.max()) + 1) * nv).reshape(-1, nv)
    area = pair.sum(1)
    big = (pair >= np.maximum(min_size, share * area[:, None])) & (np.arange(nv) > 0)[None]
    split = big.sum(1) >= 2
    split[0] = False
    markers = np.where(split[objects], 0, objects)
    nxt = int(objects.max()) + 1
    for o in np.flatnonzero(split):
        for v in np.flatnonzero(big[o]):
            markers[(objects == o) & (votes == v)] = nxt
            nxt += 1
    return relabel_sequential(watershed(-np.asarray(fg, float), markers, mask=objects > 0))


def mean_probability_filter(labels: np.ndarray, fg: np.ndarray, minimum: float) -> np.ndarray:
    """Drop objects whose mean foreground probability is below ``minimum``."""
    from medseg.postprocess.watershed import keep_instances

    n = int(labels.max())
    if not n or not minimum:
        return labels
    return keep_instances(labels, np.asarray(ndi.mean(fg, labels, np.arange(1, n + 1))) >= minimum)


def scores(refs, preds) -> tuple[float, float]:
    """Mean AP@0.5 and mean absolute relative count error over images."""
    from medseg.evaluate.instances import instance_metrics

    ms = [instance_metrics(r, p, [0.5]) for r, p in zip(refs, preds)]
    return float(np.mean([m["ap@0.5"] for m in ms])), float(np.mean([m["abs_relative_count_error"] for m in ms]))


def nucleus_table(ref: np.ndarray, pred: np.ndarray, image: np.ndarray) -> np.ndarray:
    """One row per reference nucleus: area (px), contrast (mean normalised intensity minus the median of the pixels
    that are background in both maps), share of its pixels inside any prediction, best IoU with a prediction."""
    from medseg.cells.data import percentile_normalize
    from medseg.evaluate.instances import overlaps

    img = percentile_normalize(image)
    both_bg = (ref == 0) & (pred == 0)
    bg = float(np.median(img[both_bg])) if both_bg.any() else 0.0
    ov = overlaps(ref, pred)
    best = np.zeros(len(ov.ref_ids))
    np.maximum.at(best, ov.pair_ref, ov.pair_iou)
    idx = ov.ref_ids
    contrast = np.asarray(ndi.mean(img, ref, idx)) - bg
    covered = np.asarray(ndi.mean(pred > 0, ref, idx))
    return np.stack([ov.ref_sizes, contrast, covered, best], 1) if len(idx) else np.zeros((0, 4))


def seed_causes(ref: np.ndarray, pred: np.ndarray, p: np.ndarray, threshold: float, seed_threshold: float) -> dict:
    """Unmatched reference nuclei (IoU < 0.5) by their seeds: seedless, shared with another nucleus, own."""
    from medseg.evaluate.instances import overlaps

    seeds = ndi.label((p[1] > seed_threshold) & (p[1] + p[2] > threshold))[0]  # (interior + boundary) - boundary
    ov = overlaps(ref, pred)
    best = np.zeros(len(ov.ref_ids))
    np.maximum.at(best, ov.pair_ref, ov.pair_iou)
    out = {"seedless": 0, "shared": 0, "own": 0}
    for i in np.flatnonzero(best < 0.5):
        ids = np.unique(seeds[ref == ov.ref_ids[i]])
        ids = ids[ids > 0]
        if not len(ids):
            out["seedless"] += 1
        elif any(len(np.unique(ref[seeds == s][ref[seeds == s] > 0])) == 1 for s in ids):
            out["own"] += 1
        else:
            out["shared"] += 1
    return out


def dihedral_probabilities(model, image: np.ndarray) -> np.ndarray:
    """Maps of ``model`` averaged (as logits) over all eight 90-degree rotations and flips of a 2D image; an
    offset head's vectors are turned back with the maps."""
    import torch

    from medseg.cells.data import percentile_normalize
    from medseg.cells.train import out_channels
    from medseg.infer.sliding_window import sliding_window_predict

    cfg = model.cfg
    x = percentile_normalize(image, *cfg.norm_percentiles)
    logits = 0
    for k, flips in itertools.product((0, 1), ((), (0,), (1,), (0, 1))):  # the whole dihedral group
        xt = np.rot90(x, k)
        xt = np.flip(xt, flips) if flips else xt
        lg = sliding_window_predict(model.net, np.ascontiguousarray(xt, dtype=np.float32)[None],
                                    list(cfg.patch_size), overlap=model.overlap, batch_size=4, device=model.device,
                                    num_classes=out_channels(cfg), activation=None)
        lg = torch.flip(lg, [a + 1 for a in flips]) if flips else lg
        if cfg.offset_head:
            for a in flips:  # a mirrored axis's offsets point the other way
                lg[-2 + a] = -lg[-2 + a]
        lg = torch.rot90(lg, -k, (1, 2))
        if cfg.offset_head and k:  # offsets (w_y, w_x) of the turned image are (v_x, -v_y) of the original
            lg[-2:] = torch.stack([lg[-1], -lg[-2]])
        logits = logits + lg / 8
    return model.activate(logits)


def run_sets(meta: dict, data_dir, limit: int | None = None) -> dict:
    """The run's tuning and validation cases, loaded: the tuning images (or held-out blocks) its ``model.json``
    names, and its recorded validation images (a fold run's fold, not the default split, which holds some of its
    training images), else the default split's; the first ``limit`` of each set only, if given."""
    from benchmarks.cells import recorded_validation
    from medseg.cells.data import list_cases, load_case
    from medseg.cells.splits import dataset_split, recorded_tuning_cases

    cases = list_cases(data_dir)
    tune_ids = sorted((meta.get("split") or {}).get("tune", []))
    default = dataset_split(data_dir, cases)["val"]
    val = (recorded_validation(meta, cases, default) or default)[:limit]
    return {"tune": recorded_tuning_cases(cases, tune_ids[:limit]), "val": [load_case(c) for c in val]}


def load_sets(model, data_dir, limit: int | None = None) -> tuple[dict, dict]:
    """The run's tuning and validation images (:func:`run_sets`): ``data[set] = (ids, reference labels,
    probability maps)`` and ``images[set]``."""
    data, images = {}, {}
    for name, cases in run_sets(model.meta, data_dir, limit).items():
        images[name] = [c.image for c in cases]
        data[name] = ([c.case for c in cases], [c.labels for c in cases],
                      [model.probabilities(im) for im in images[name]])
    return data, images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained cell model (medseg cells train / benchmarks/cells.py)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--only",
                    default="causes,markers,oracle,rule,filters,images,unmatched,tta,enlarge,votes,small,contrast")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke tests)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-snr", type=float, default=None,
                    help="contrast test applied to every variant (default: the model's, 2; 0: off, as before session 8)")
    args = ap.parse_args(argv)
    import torch

    from medseg.cells.count import CellModel
    from medseg.cells.tune import DISTANCE_SEED_GRID, SEED_GRID, THRESHOLD_GRID, VOTE_GRID

    torch.set_num_threads(args.threads)
    # maps on the labels' grid, as these analyses (and their recorded numbers) assume: no out-of-range resizing
    model = CellModel.load(args.run, rescale=False)
    cfg, parts = model.cfg, set(args.only.split(","))
    # the contrast test is applied once, in score(), to every variant alike (model.segment would apply it too)
    min_snr = cfg.min_snr if args.min_snr is None else args.min_snr
    cfg.min_snr, polarity = 0.0, int(model.meta.get("polarity", 1))
    data, images = load_sets(model, args.data, args.limit)
    print(f"{args.run}: {len(data['tune'][0])} tuning, {len(data['val'][0])} validation images; run thresholds "
          f"fg {cfg.threshold}, seed {cfg.seed_threshold}, markers {cfg.seeds}")
    def contrast(preds, name="val"):  # what count does after the watershed
        from medseg.postprocess.contrast import remove_faint_instances

        return [remove_faint_instances(p, im, min_snr, polarity) for p, im in zip(preds, images[name])]

    def score(name, preds):
        return scores(data[name][1], contrast(preds, name))

    ids, refs, probs = data["val"]
    preds = contrast([model.postprocess(p) for p in probs])
    if "causes" in parts and cfg.seeds != "boundary":
        print(f"causes: the run's markers are '{cfg.seeds}'; the seed analysis models interior - boundary seeds only")
    elif "causes" in parts:
        tot = {}
        for r, q, p in zip(refs, preds, probs):
            for k, v in seed_causes(r, q, p, cfg.threshold, cfg.seed_threshold).items():
                tot[k] = tot.get(k, 0) + v
        print("unmatched validation nuclei by seed:", tot)
    if "markers" in parts and not data["tune"][0]:
        print("markers: the run held out no tuning images (--tune-fraction 0), nothing to choose thresholds on")
    elif "markers" in parts and cfg.distance_head:
        for mode, grid in MARKER_GRIDS.items():
            tuned = [(score("tune", [segment(p, mode, **g) for p in data["tune"][2]]), g) for g in grid]
            (ta, te), g = max(tuned, key=lambda r: (round(r[0][0], 4), -r[0][1]))
            va, ve = score("val", [segment(p, mode, **g) for p in probs])
            print(f"markers {mode:8s} {g}: tuning AP@0.5 {ta:.3f}, count err {te:.1%} | validation {va:.3f}, {ve:.1%}")
    if "oracle" in parts:
        grid = [("boundary", t, s) for t, s in itertools.product(THRESHOLD_GRID, SEED_GRID)]
        if cfg.distance_head:
            grid += [("distance", t, s) for t, s in itertools.product(THRESHOLD_GRID, DISTANCE_SEED_GRID)]
        if cfg.offset_head:
            grid += [("votes", t, s) for t, s in itertools.product(THRESHOLD_GRID, VOTE_GRID)]
        rows = [(score("val", [model.postprocess(p, t, s, src) for p in probs]), (src, t, s)) for src, t, s in grid]
        (va, ve), g = min(rows, key=lambda r: r[0][1])
        print(f"oracle: lowest validation count error over the threshold grid {ve:.1%} (AP@0.5 {va:.3f}) at {g}")
    if "rule" in parts and not model.meta.get("tuning"):
        print("rule: the run held out no tuning images (--tune-fraction 0)")
    elif "rule" in parts:
        from medseg.cells.tune import best_thresholds

        best = best_thresholds(model.meta["tuning"]["table"], "ap-count")  # what `cells train --tune-objective` does
        va, ve = score("val", [model.postprocess(p, best["threshold"], best["seed_threshold"], best["seeds"])
                               for p in probs])
        print(f"rule AP - count error on the tuning images: {best['seeds']} fg {best['threshold']}, seed "
              f"{best['seed_threshold']} (tuning {best['ap']:.3f}, {best['count_error']:.1%}) | validation {va:.3f}, "
              f"{ve:.1%}")
    if "filters" in parts:
        for name, (_, rs, ps) in data.items():
            if not rs:
                continue
            base = contrast([model.postprocess(p) for p in ps], name)
            cells = []
            for m in (0.0, 0.6, 0.7, 0.8, 0.85):
                a, e = score(name, [mean_probability_filter(b, p[1] + p[2], m) for b, p in zip(base, ps)])
                cells.append(f"{m:g}: {a:.3f} / {e:.1%}")
            print(f"mean-probability filter, {name} (AP@0.5 / count err): " + "; ".join(cells))
    if "images" in parts:
        from medseg.evaluate.instances import instance_metrics

        ms = [instance_metrics(r, q, [0.5]) for r, q in zip(refs, preds)]
        rows = sorted(((m["abs_relative_count_error"], i, m["n_ref"], m["n_pred"]) for i, m in zip(ids, ms)), reverse=True)
        total = sum(r[0] for r in rows)
        print("largest relative count errors (validation): " + "; ".join(
            f"{i[:12]} {n} -> {m} ({e:.0%})" for e, i, n, m in rows[:6]) +
            f"; the top 6 make {sum(r[0] for r in rows[:6]) / max(total, 1e-9):.0%} of the mean")
    if "unmatched" in parts:
        rows = np.concatenate([nucleus_table(r, q, im) for r, q, im in zip(refs, preds, images["val"])])
        groups = {"matched": rows[:, 3] >= 0.5, "uncovered": (rows[:, 3] < 0.5) & (rows[:, 2] < 0.5),
                  "covered but unmatched": (rows[:, 3] < 0.5) & (rows[:, 2] >= 0.5)}
        print("validation nuclei: " + "; ".join(
            f"{name} {int(sel.sum())} (median area {np.median(rows[sel, 0]) if sel.any() else 0:.0f} px, contrast "
            f"{np.median(rows[sel, 1]) if sel.any() else 0:.2f})" for name, sel in groups.items()))
    if "tta" in parts:
        model.tta = True
        flips = [model.probabilities(im) for im in images["val"]]
        model.tta = False
        for name, maps in (("flip TTA (4 passes)", flips),
                           ("dihedral TTA (8 passes)", [dihedral_probabilities(model, im) for im in images["val"]])):
            va, ve = score("val", [model.postprocess(p) for p in maps])
            print(f"{name}: validation AP@0.5 {va:.3f}, count err {ve:.1%}")
    if "enlarge" in parts and cfg.diameter:
        print(f"enlarge: the run was trained with --diameter {cfg.diameter} already")
    elif "enlarge" in parts:
        rows = []
        for d in (None, 10.0, 12.0, 14.0):
            model.cfg.diameter, model._last = d, None
            rows.append((d, *(score(n, [model.segment(im) for im in images[n]]) for n in ("tune", "val"))))
        model.cfg.diameter = None
        for d, (ta, te), (va, ve) in rows:
            print(f"enlarge below {d or 'off'} px: tuning AP@0.5 {ta:.3f}, count err {te:.1%} | validation {va:.3f}, "
                  f"{ve:.1%}")
        d, _, (va, ve) = max(rows, key=lambda r: (round(r[1][0], 4), -r[1][1]))
        print(f"enlarge: chosen on the tuning images: {d or 'off'} -> validation {va:.3f}, {ve:.1%}")
    if "votes" in parts and not (cfg.offset_head and data["tune"][0]):
        print("votes: the run has no offset head or no tuning images")
    elif "votes" in parts:
        fgs, seeds = (0.4, 0.5, 0.6, 0.7), (0.85, 0.9, 0.95)
        table = {}  # set -> {(variant, fg, seed, votes): (AP, count error)}; each map segmented once per setting
        for name in ("tune", "val"):
            probs_ = data[name][2]
            bnd = {(t, s): [model.postprocess(p, t, s, "boundary") for p in probs_] for t in fgs for s in seeds}
            vot = {(t, v): [model.postprocess(p, t, v, "votes") for p in probs_] for t in fgs for v in VOTE_GRID}
            out = {("boundary", t, s, None): score(name, segs) for (t, s), segs in bnd.items()}
            out.update({("votes", t, None, v): score(name, segs) for (t, v), segs in vot.items()})
            for t, s, v in itertools.product(fgs, seeds, VOTE_GRID):
                out[("split by votes", t, s, v)] = score(name, [split_by_votes(b, w, p[1] + p[2]) for b, w, p in
                                                                zip(bnd[t, s], vot[t, v], probs_)])
            table[name] = out
        for k in ("boundary", "votes", "split by votes"):
            keys = [key for key in table["tune"] if key[0] == k]
            best = max(keys, key=lambda key: (round(table["tune"][key][0], 4), -table["tune"][key][1]))
            (ta, te), (va, ve) = table["tune"][best], table["val"][best]
            print(f"votes: {k:15s} fg {best[1]}, seed {best[2]}, votes {best[3]}: tuning AP@0.5 {ta:.3f}, count err "
                  f"{te:.1%} | validation {va:.3f}, {ve:.1%}")
    if "small" in parts and not data["tune"][0]:
        print("small: the run held out no tuning images (--tune-fraction 0)")
    elif "small" in parts and cfg.seeds != "boundary":
        print(f"small: the run's markers are '{cfg.seeds}'; the rules vary interior - boundary seeds only")
    elif "small" in parts:
        rows = []
        for g in SMALL_GRID:
            res = {n: score(n, [segment_small(p, cfg.threshold, cfg.seed_threshold, **g) for p in data[n][2]])
                   for n in ("tune", "val")}
            rows.append((g, res))
            print(f"small {g}: tuning AP@0.5 {res['tune'][0]:.3f}, count err {res['tune'][1]:.1%} | validation "
                  f"{res['val'][0]:.3f}, {res['val'][1]:.1%}")
        g, res = max(rows, key=lambda r: (round(r[1]["tune"][0], 4), -r[1]["tune"][1]))
        print(f"small: chosen on the tuning images: {g} -> validation {res['val'][0]:.3f}, {res['val'][1]:.1%}")
    if "contrast" in parts:
        contrast_section(model, data, images, args, min_snr, polarity)
    return 0


def contrast_section(model, data, images, args, min_snr: float, polarity: int) -> None:
    """Print the SNR of annotated nuclei (whole dataset), of the run's matched / unmatched objects, and the run's
    scores with larger sliding windows."""
    from medseg.cells.data import list_cases, load_case
    from medseg.evaluate.instances import overlaps
    from medseg.postprocess.contrast import object_snr, remove_faint_instances

    ann = []
    for c in list_cases(args.data)[: args.limit]:
        c = load_case(c)
        ids = np.unique(c.labels[c.labels > 0])
        ann.append(object_snr(c.image, c.labels, polarity)[ids - 1] if len(ids) else np.zeros(0))
        c.image = c.labels = None
    ann = np.concatenate(ann)
    print(f"contrast: annotated nuclei {len(ann)}: SNR < 1 {int((ann < 1).sum())}, < 2 {int((ann < 2).sum())}, "
          f"< 3 {int((ann < 3).sum())}")
    for name in ("tune", "val"):
        matched, unmatched = [], []
        for ref, p, im in zip(data[name][1], data[name][2], images[name]):
            pred = model.postprocess(p)
            snr = object_snr(im, pred, polarity)
            ov = overlaps(ref, pred)
            best = np.zeros(len(ov.pred_ids))
            np.maximum.at(best, ov.pair_pred, ov.pair_iou)
            matched.append(snr[best >= 0.5])
            unmatched.append(snr[best < 0.5])
        if not matched:
            continue
        m, u = np.concatenate(matched), np.concatenate(unmatched)
        print(f"contrast: {name} predictions, SNR < 2 / < 3: matched {int((m < 2).sum())} / {int((m < 3).sum())} of "
              f"{len(m)}, unmatched {int((u < 2).sum())} / {int((u < 3).sum())} of {len(u)}")
    patch = model.cfg.patch_size
    for size in (384, 512):
        model.cfg.patch_size = (size,) * len(patch)
        res = [scores(data[n][1], [remove_faint_instances(model.postprocess(model.probabilities(im)), im, min_snr,
                                                          polarity) for im in images[n]])
               if images[n] else (float("nan"), float("nan")) for n in ("tune", "val")]
        print(f"contrast: {size}-px windows: tuning AP@0.5 {res[0][0]:.3f}, count err {res[0][1]:.1%} | validation "
              f"{res[1][0]:.3f}, {res[1][1]:.1%}")
    model.cfg.patch_size = patch


if __name__ == "__main__":
    raise SystemExit(main())
