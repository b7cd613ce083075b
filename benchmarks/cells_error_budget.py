"""What each kind of error costs a trained cell model's count, and whether weak borders mark its over-splits.

    python benchmarks/cells_error_budget.py --run RUN [--data ../shared/data/dsb2018_fluo] [--set val|tune]

On the run's validation (or tuning) images, with the run's thresholds and contrast test (what ``cells count`` does):

* **budget**: every reference nucleus is *uncovered* (under half of it predicted foreground) or assigned to the
  prediction holding most of it; references sharing one prediction are *merged* (each beyond the first), predictions
  sharing one reference are *split* pieces, predictions mostly on background are *spurious*. Then the mean absolute
  relative count error as measured, and as it would be if each kind of error were removed (an upper bound on what
  fixing that kind alone could give: an oracle, not a method);
* **faint**: the uncovered nuclei's peak and mean foreground probability, and what a lower foreground threshold
  would add: its connected components (>= 8 px) that touch no prediction, as those holding mostly an uncovered
  nucleus against all others;
* **borders**: for every pair of touching predictions, the mean predicted boundary probability over the pixel pairs
  across their shared border, for pairs inside one reference nucleus (over-splits) and pairs of two reference nuclei
  (true contacts), and how many of each a merge of borders weaker than t would join.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def majority(a: np.ndarray, b: np.ndarray, min_cover: float = 0.5) -> dict[int, int]:
    """For each object of ``a``: the label of ``b`` covering most of it, if ``b`` covers at least ``min_cover`` of it.

    Examples
    --------
    >>> a = np.array([[1, 1, 2, 2]]); b = np.array([[5, 5, 0, 7]])
    >>> majority(a, b)
    {1: 5, 2: 7}
    """
    out = {}
    for i in np.unique(a[a > 0]):
        v = b[a == i]
        if (v > 0).mean() >= min_cover:
            out[int(i)] = int(np.bincount(v[v > 0]).argmax())
    return out


def error_budget(ref: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Counts of reference and predicted objects and of each kind of error (see the module docstring)."""
    r2p, p2r = majority(ref, pred), majority(pred, ref)
    n_ref, n_pred = len(np.unique(ref[ref > 0])), len(np.unique(pred[pred > 0]))
    return {"ref": n_ref, "pred": n_pred, "uncovered": n_ref - len(r2p),
            "merged": sum(c - 1 for c in Counter(r2p.values()).values()),
            "split": sum(c - 1 for c in Counter(p2r.values()).values()), "spurious": n_pred - len(p2r)}


def border_strengths(labels: np.ndarray, edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Touching object pairs (N, 2) and the mean of ``edge`` over the face-neighbour pixel pairs across each border.

    Examples
    --------
    >>> lab = np.array([[1, 1, 2, 2]]); e = np.array([[0.0, 0.2, 0.4, 0.0]])
    >>> border_strengths(lab, e)
    (array([[1, 2]]), array([0.3]))
    """
    n = int(labels.max()) + 1
    keys, vals = [], []
    for ax in range(labels.ndim):
        lo_sl = tuple(slice(0, -1) if i == ax else slice(None) for i in range(labels.ndim))
        hi_sl = tuple(slice(1, None) if i == ax else slice(None) for i in range(labels.ndim))
        a, b = labels[lo_sl], labels[hi_sl]
        m = (a != b) & (a > 0) & (b > 0)
        keys.append(np.minimum(a[m], b[m]).astype(np.int64) * n + np.maximum(a[m], b[m]))
        vals.append(0.5 * (edge[lo_sl][m] + edge[hi_sl][m]))
    k, v = np.concatenate(keys), np.concatenate(vals)
    u, inv = np.unique(k, return_inverse=True)
    mean = np.bincount(inv, weights=v, minlength=len(u)) / np.maximum(np.bincount(inv, minlength=len(u)), 1)
    return np.stack([u // n, u % n], 1), mean


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/dsb2018_fluo"))
    ap.add_argument("--set", choices=("val", "tune"), default="val")
    ap.add_argument("--limit", type=int, default=None, help="first N images (smoke tests)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from medseg.cells.count import CellModel
    from medseg.cells.data import list_cases, load_case
    from medseg.cells.splits import dataset_split

    torch.set_num_threads(args.threads)
    # maps on the labels' grid, as these analyses (and their recorded numbers) assume: no out-of-range resizing
    model = CellModel.load(args.run, rescale=False)
    tune_ids = set(model.meta["split"].get("tune", []))
    cases = ([c for c in list_cases(args.data) if c.case in tune_ids] if args.set == "tune"
             else dataset_split(args.data, list_cases(args.data))["val"])[: args.limit]
    rows, split_b, contact_b, peak, mean_fg = [], [], [], [], []
    low = {t: [0, 0] for t in (0.1, 0.3, 0.5)}
    for c in cases:
        load_case(c)
        p = model.probabilities(c.image)
        pred = model.postprocess(p, shape=c.labels.shape, image=c.image)
        rows.append(error_budget(c.labels, pred))
        if p.shape[1:] != c.labels.shape:
            continue  # a model with scale normalisation: its maps are on another grid than the labels
        fg = p[1] + p[2]
        covered = majority(c.labels, pred)
        uncovered = [int(r) for r in np.unique(c.labels[c.labels > 0]) if int(r) not in covered]
        for r in uncovered:
            peak.append(fg[c.labels == r].max())
            mean_fg.append(fg[c.labels == r].mean())
        for t, tally in low.items():
            comps, n = ndi.label(fg > t)
            sizes = np.bincount(comps.ravel(), minlength=n + 1)
            touching = np.zeros(n + 1, bool)
            touching[np.unique(comps[pred > 0])] = True
            own = majority(comps, c.labels)
            for k in range(1, n + 1):
                if not touching[k] and sizes[k] >= 8:
                    tally[0 if own.get(k) in uncovered else 1] += 1
        owner = majority(pred, c.labels)
        for (i, j), strength in zip(*border_strengths(pred, p[2])):
            if owner.get(int(i)) and owner.get(int(j)):
                (split_b if owner[int(i)] == owner[int(j)] else contact_b).append(strength)
    t = {k: np.array([r[k] for r in rows], float) for k in rows[0]}
    ref = np.maximum(t["ref"], 1)

    def err(pred):
        return float(np.mean(np.abs(pred - t["ref"]) / ref))

    print(f"{args.run}, {len(rows)} {args.set} images: {int(t['ref'].sum())} nuclei, {int(t['pred'].sum())} predicted;"
          f" uncovered {int(t['uncovered'].sum())}, merged {int(t['merged'].sum())}, split {int(t['split'].sum())}, "
          f"spurious {int(t['spurious'].sum())}")
    print(f"mean abs count error {err(t['pred']):.1%}; with no uncovered nuclei {err(t['pred'] + t['uncovered']):.1%}"
          f", no merges {err(t['pred'] + t['merged']):.1%}, no splits {err(t['pred'] - t['split']):.1%}, no "
          f"spurious {err(t['pred'] - t['spurious']):.1%}, no merges and no uncovered "
          f"{err(t['pred'] + t['merged'] + t['uncovered']):.1%}")
    q = (0.25, 0.5, 0.75)

    def quartiles(v):
        return ", ".join(f"{x:.2f}" for x in np.quantile(v, q))

    if peak:
        print(f"faint: uncovered nuclei's foreground probability quartiles: peak {quartiles(peak)}; mean "
              f"{quartiles(mean_fg)}")
        for th, (good, other) in low.items():
            print(f"  foreground > {th}: components touching no prediction hold {good} uncovered nuclei, {other} other")
    inside, between = np.array(split_b), np.array(contact_b)
    if len(inside) and len(between):
        print(f"borders: {len(inside)} inside one nucleus (boundary probability quartiles {quartiles(inside)}), "
              f"{len(between)} between two nuclei ({quartiles(between)})")
        for th in (0.2, 0.3, 0.4, 0.5):
            print(f"  merging borders weaker than {th}: joins {(inside < th).sum()} over-splits and "
                  f"{(between < th).sum()} true contacts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
