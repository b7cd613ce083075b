"""Along which image axis two labels lie apart: mean centroid offset (label A minus label B) per axis over a dataset.

    python benchmarks/label_axes.py --data ../shared/data/msd_hippocampus [--labels 1 2]

Used to choose the axes a model may be mirrored along (``augment.flip_axes``): mirroring an axis along which
anterior and posterior lie apart would swap them. Reads ``labelsTr/*.nii.gz`` in place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/msd_hippocampus")
    ap.add_argument("--labels", type=int, nargs=2, default=[1, 2])
    args = ap.parse_args(argv)
    files = sorted((args.data / "labelsTr").glob("*.nii.gz"))
    if not files:
        raise SystemExit(f"no labelsTr/*.nii.gz under {args.data}")
    a, b = args.labels
    offsets = []
    for f in files:
        lab = np.asarray(nib.load(f).dataobj)
        if (lab == a).any() and (lab == b).any():
            offsets.append(np.argwhere(lab == a).mean(0) - np.argwhere(lab == b).mean(0))
    d = np.array(offsets)
    print(f"{len(d)} label maps with both labels {a} and {b}: centroid({a}) - centroid({b}) in voxels")
    for ax in range(d.shape[1]):
        print(f"axis {ax}: mean {d[:, ax].mean():+.2f}, std {d[:, ax].std():.2f}, positive in {(d[:, ax] > 0).mean():.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
