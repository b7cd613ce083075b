"""A relative-size filter against small fragments, scored on a run's tuning and validation images (no training).

    python benchmarks/cells_size_filter.py --run RUN [--fold K] [--data ../shared/data/dsb2018_fluo] --json OUT
    python benchmarks/cells_size_filter.py --pool OUT0 OUT1 ...

Each image is segmented as ``cells count`` does (``benchmarks/cells_variants.py``; ``--merge-boundary 0``: as
before session 28, when models did not merge fragments); then objects smaller than r times the image's
area-weighted median object area are dropped, for each r of :data:`RATIOS` (r = 0: the labels as predicted). Weighting by area lets the real nuclei, not a swarm of small
fragments, set the image's scale. ``--pool`` prints the mean AP@0.5, the mean, median and pooled absolute count
errors per r over the runs' tuning images (where r would be chosen) and their validation images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATIOS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def weighted_median_area(areas: np.ndarray) -> float:
    """The object area at which half of all object pixels lie in smaller objects.

    Examples
    --------
    >>> float(weighted_median_area(np.array([10] * 20 + [1000, 1200])))  # 20 fragments, two nuclei
    1000.0
    """
    a = np.sort(np.asarray(areas))
    c = np.cumsum(a)
    return float(a[np.searchsorted(c, c[-1] / 2)])


def drop_relatively_small(labels: np.ndarray, ratio: float) -> np.ndarray:
    """``labels`` without the objects smaller than ``ratio`` x :func:`weighted_median_area` of its objects."""
    areas = np.bincount(labels.ravel())
    ids = np.nonzero(areas[1:])[0] + 1
    if not ratio or not ids.size:
        return labels
    small = ids[areas[ids] < ratio * weighted_median_area(areas[ids])]
    return np.where(np.isin(labels, small), 0, labels)


def size_variants(model, image) -> dict:
    labels = model.segment(image)
    return {str(ratio): drop_relatively_small(labels, ratio) for ratio in RATIOS}


def main(argv=None) -> int:
    from benchmarks.cells_variants import main as variants_main

    return variants_main(argv, size_variants, __doc__, "r", lambda key: f"{float(key):g}")


if __name__ == "__main__":
    sys.exit(main())
