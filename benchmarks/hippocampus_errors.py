"""Where a trained hippocampus model's Dice is lost: calibration and the kind of each wrong voxel.

    python benchmarks/hippocampus_errors.py --run RUN --data ../shared/data/msd_hippocampus [--set val|train]

Scores the cases of fold ``--fold`` of the run's ``splits.json`` (its validation cases by default) and prints

- the per-case mean Dice when the background probability is scaled by 0.5 ... 2 before the arg-max (a model
  whose outlines are biased too tight or too loose gains from a factor away from 1), and the ratio of predicted to
  reference volume per class;
- every wrong voxel by kind: anterior and posterior swapped (the boundary between the two structures), or
  structure against background, split into voxels on the reference outline (the voxels on either side of a
  change of label, and their 6-neighbours) and those further inside or outside; and the Dice each class would
  have if one kind of error were removed (an oracle bound, not a method);
- how far the reference's anterior/posterior boundary is from a plane across ``--cut-axis`` (voxels of the smaller
  class in slices that hold both), and the Dice when the prediction's boundary is made such a plane: every voxel
  of the predicted hippocampus relabelled by the one cut that agrees best with the predicted labels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCALES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)
KINDS = ("swap", "outline", "far")


def outline(ref: np.ndarray) -> np.ndarray:
    """The voxels on either side of each change of label in ``ref`` (6-neighbours), and their 6-neighbours."""
    from scipy import ndimage

    edge = np.zeros(ref.shape, bool)
    for ax in range(ref.ndim):
        d = np.diff(ref, axis=ax) != 0
        lo = [slice(None)] * ref.ndim
        hi = [slice(None)] * ref.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return ndimage.binary_dilation(edge)


def error_kinds(pred: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of the wrong voxels by kind (see the module docstring); labels 1 and 2 are the two structures."""
    wrong = pred != ref
    swap = wrong & (pred > 0) & (ref > 0)
    near = outline(ref)
    return {"swap": swap, "outline": wrong & ~swap & near, "far": wrong & ~swap & ~near}


def cut_index(labels: np.ndarray, axis: int = 1) -> int:
    """The index k across ``axis`` where posterior (2) below k and anterior (1) from k on keeps the most voxels."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    vote = ((labels == 2).astype(np.int64) - (labels == 1)).sum(axis=other)  # > 0: the slice is mostly posterior
    return int(np.argmax(np.concatenate([[0], np.cumsum(vote)])))


def planar_cut(pred: np.ndarray, axis: int = 1, k: int | None = None) -> np.ndarray:
    """Relabel the predicted structure (labels 1 and 2) by one cut across ``axis`` at ``k`` (default
    :func:`cut_index`): 2 below it, 1 from it on. (In this dataset posterior, 2, lies at the lower indices of
    axis 1 in every training label; a wrong orientation would show as a lower Dice, not as an error.)"""
    index = np.arange(pred.shape[axis]).reshape([-1 if a == axis else 1 for a in range(pred.ndim)])
    k = cut_index(pred, axis) if k is None else k
    return np.where(pred > 0, np.where(index < k, 2, 1), 0).astype(pred.dtype)


def cut_fraction(ref: np.ndarray, axis: int = 1) -> tuple[float, int]:
    """Where the reference's cut lies along the structure's extent across ``axis`` (0: its first slice, 1: past its
    last), and that extent in slices."""
    other = tuple(a for a in range(ref.ndim) if a != axis)
    present = np.nonzero((ref > 0).any(axis=other))[0]
    length = int(present[-1] - present[0] + 1)
    return (cut_index(ref, axis) - present[0]) / length, length


def mixed_voxels(ref: np.ndarray, axis: int = 1) -> int:
    """Voxels of the smaller structure in the slices across ``axis`` that hold both: 0 when a plane separates them."""
    other = tuple(a for a in range(ref.ndim) if a != axis)
    return int(np.minimum((ref == 1).sum(axis=other), (ref == 2).sum(axis=other)).sum())


def structure_dice(pred: np.ndarray, ref: np.ndarray) -> list[float]:
    """Dice of anterior and posterior (NaN where both are empty), as the training validation scores them."""
    from medseg.train.losses import confusion_dice

    d = confusion_dice(pred, ref, 3)
    return [d[1], d[2]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="Training run folder (model.pt, splits.json).")
    ap.add_argument("--data", type=Path, required=True, help="The MSD hippocampus folder.")
    ap.add_argument("--set", choices=("val", "train"), default="val")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cut-axis", type=int, default=1,
                    help="Axis of the planar-boundary check (1: anterior-posterior here).")
    args = ap.parse_args(argv)

    import torch

    from medseg.infer.predict import predict_image
    from medseg.train.artifact import load_model
    from medseg.train.dataset import load_case, open_dataset

    torch.set_num_threads(args.threads)
    art = load_model(args.run)
    net = art.build()
    ids = set(json.loads((args.run / "splits.json").read_text())[args.fold][args.set])
    cases = [c for c in open_dataset(args.data).cases if c.id in ids and c.label is not None]
    scaled = {s: [] for s in SCALES}
    ratios, counts, oracle = [], {k: 0 for k in KINDS}, {k: [] for k in KINDS}
    cut, mixed, offset, where = [], [], [], []
    for case in cases:
        image, label = load_case(case)
        ref = np.asarray(label.array)
        with torch.no_grad():
            _, prob = predict_image(net, art.plan, image, probabilities=True)
        p = np.array(prob.array, dtype=np.float32)
        for s in SCALES:
            q = p.copy()
            q[0] *= s
            scaled[s].append(structure_dice(q.argmax(0), ref))
        pred = p.argmax(0)
        k = cut_index(pred, args.cut_axis)
        cut.append(structure_dice(planar_cut(pred, args.cut_axis, k), ref))
        mixed.append(mixed_voxels(ref, args.cut_axis))
        offset.append(k - cut_index(ref, args.cut_axis))
        where.append(cut_fraction(ref, args.cut_axis))
        ratios.append([(pred == k).sum() / max(1, (ref == k).sum()) for k in (1, 2)])
        for kind, mask in error_kinds(pred, ref).items():
            counts[kind] += int(mask.sum())
            fixed = np.where(mask, ref, pred)
            oracle[kind].append(structure_dice(fixed, ref))
    print(f"{args.run}: {len(cases)} {args.set} cases of fold {args.fold}")
    print("background probability x s before the arg-max: mean Dice (anterior, posterior, mean)")
    for s in SCALES:
        a = np.nanmean(np.array(scaled[s], float), 0)
        print(f"  s = {s:<4}  {a[0]:.4f}  {a[1]:.4f}  {a.mean():.4f}")
    r = np.array(ratios, float)
    print(f"predicted / reference volume (anterior, posterior): median {np.median(r, 0).round(3).tolist()}, "
          f"mean {r.mean(0).round(3).tolist()}")
    total = sum(counts.values())
    print(f"wrong voxels: {total}")
    for kind in KINDS:
        a = np.nanmean(np.array(oracle[kind], float), 0)
        print(f"  {kind:8s} {counts[kind]:7d} ({counts[kind] / max(total, 1):.1%}); Dice without them "
              f"{a[0]:.4f} / {a[1]:.4f} / {a.mean():.4f}")
    a = np.nanmean(np.array(cut, float), 0)
    print(f"reference boundary across axis {args.cut_axis}: {sum(mixed)} voxels of the smaller structure in slices "
          f"holding both ({np.mean(mixed):.1f} per case); prediction's boundary made one plane: Dice "
          f"{a[0]:.4f} / {a[1]:.4f} / {a.mean():.4f}")
    off, n = np.abs(offset), len(offset)
    spread = ", ".join(f"{int((off == d).sum())} cases at {d}" for d in range(3))
    print(f"  predicted cut minus the reference's, in slices: mean |offset| {off.mean():.2f} "
          f"(signed mean {np.mean(offset):+.2f}); {spread}, {int((off > 2).sum())} further (of {n})")
    frac, length = np.array(where).T
    print(f"  the reference's cut at {frac.mean():.3f} of the structure's extent (s.d. {frac.std():.3f}, "
          f"i.e. {np.mean(frac.std() * length):.2f} slices)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
