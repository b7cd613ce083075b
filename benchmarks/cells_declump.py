"""Splitting merged nuclei after the watershed, by shape and probability (no training).

    python benchmarks/cells_declump.py --run RUN [--data ../shared/data/dsb2018_fluo]

The count errors of the learned models come about equally from merged neighbours and from tiny faint nuclei
(``benchmarks/cells_error_budget.py``). A merged pair is larger than the image's typical nucleus and less convex
than one nucleus (a peanut, not a disc): classic declumping (CellProfiler's, by shape) re-splits such objects.
Each object whose area is at least ``ratio`` times the image's median object area and whose solidity is at most
``solidity`` is split, when it can be, by one of two marker sources:

* ``prob``: the network's interior probability thresholded higher inside the object (the run's seed threshold,
  then 0.95, 0.98, 0.99, 0.995) until it falls into two or more seeds of at least 4 px;
* ``shape``: peaks of the object's own distance transform at least 0.7 x the typical radius apart.

Every variant is scored on the run's tuning images (held out of training) and on its validation images, with
the contrast test as ``count`` applies it; the variant best on the tuning images (AP@0.5, then count error) is
named, as is the one best by AP@0.5 minus count error.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# session 15 first ran r <= 2.0, s <= 0.95; its tuning images chose the corner (2.0, 0.95), hence the wider grid
RATIOS, SOLIDITIES, MODES = (1.3, 1.6, 2.0, 2.5, 3.0), (0.85, 0.9, 0.95, 0.97), ("prob", "shape")
LEVELS = (0.95, 0.98, 0.99, 0.995)


def split_clumps(labels: np.ndarray, interior: np.ndarray, ratio: float, solidity: float, mode: str,
                 seed_threshold: float = 0.9, min_seed: int = 4) -> np.ndarray:
    """``labels`` with each large, non-convex object split by ``mode``'s markers (see the module's docstring)."""
    from skimage.feature import peak_local_max
    from skimage.measure import regionprops
    from skimage.segmentation import watershed

    from medseg.postprocess.watershed import relabel_sequential, remove_small_instances

    props = regionprops(labels)
    if len(props) < 2:
        return labels
    median = float(np.median([p.area for p in props]))
    out, nxt = labels.astype(np.int64), int(labels.max()) + 1
    for p in props:
        if p.area < ratio * median or p.solidity > solidity:
            continue
        obj = labels[p.slice] == p.label
        if mode == "prob":
            for t in (seed_threshold, *[v for v in LEVELS if v > seed_threshold]):
                seeds = remove_small_instances(ndi.label(obj & (interior[p.slice] > t))[0], min_seed)
                if len(np.unique(seeds[seeds > 0])) >= 2:
                    break
            else:
                continue
            surface = -interior[p.slice]
        else:
            dist = ndi.distance_transform_edt(obj)
            peaks = peak_local_max(dist, min_distance=max(1, int(0.7 * np.sqrt(median / np.pi))), labels=obj,
                                   exclude_border=False)
            if len(peaks) < 2:
                continue
            seeds = np.zeros(obj.shape, np.int64)
            seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
            surface = -dist
        pieces = watershed(surface, seeds, mask=obj)
        view = out[p.slice]
        for k, v in enumerate(np.unique(pieces[pieces > 0])):
            if k:  # the first piece keeps the object's label
                view[pieces == v] = nxt
                nxt += 1
    return relabel_sequential(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained cell model (medseg cells train / benchmarks/cells.py)")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (smoke tests)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from benchmarks.cells_analysis import load_sets, scores
    from medseg.cells.count import CellModel
    from medseg.postprocess.contrast import remove_faint_instances

    torch.set_num_threads(args.threads)
    # maps on the labels' grid, as these analyses (and their recorded numbers) assume: no out-of-range resizing
    model = CellModel.load(args.run, rescale=False)
    cfg = model.cfg
    min_snr, polarity = cfg.min_snr, int(model.meta.get("polarity", 1))
    cfg.min_snr = 0.0  # applied once below, after splitting, as count applies it after the watershed
    data, images = load_sets(model, args.data, args.limit)
    base = {n: [model.postprocess(p) for p in data[n][2]] for n in data}

    def score(name, preds):
        return scores(data[name][1], [remove_faint_instances(q, im, min_snr, polarity)
                                      for q, im in zip(preds, images[name])])

    rows = {None: {n: score(n, base[n]) for n in data if data[n][1]}}
    for ratio, sol, mode in itertools.product(RATIOS, SOLIDITIES, MODES):
        rows[ratio, sol, mode] = {n: score(n, [split_clumps(b, p[1], ratio, sol, mode, cfg.seed_threshold)
                                               for b, p in zip(base[n], data[n][2])]) for n in data if data[n][1]}
    for key, res in rows.items():
        name = "none (the run's labels)" if key is None else f"ratio {key[0]}, solidity {key[1]}, {key[2]}"
        print(f"declump {name}: " + " | ".join(f"{n} AP@0.5 {a:.3f}, count err {e:.1%}" for n, (a, e) in res.items()))
    if data["tune"][1]:
        for objective, rank in (("AP@0.5", lambda r: (round(r["tune"][0], 4), -r["tune"][1])),
                                ("AP@0.5 - count error", lambda r: round(r["tune"][0] - r["tune"][1], 4))):
            key = max(rows, key=lambda k: rank(rows[k]))
            print(f"declump chosen on the tuning images by {objective}: {key} -> validation AP@0.5 "
                  f"{rows[key]['val'][0]:.3f}, count err {rows[key]['val'][1]:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
