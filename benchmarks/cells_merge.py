"""Merging watershed fragments across weak borders (``medseg.postprocess.merge``), per setting, scored on a run's
tuning and validation images (no training).

    python benchmarks/cells_merge.py --run RUN [--fold K] [--data ../shared/data/dsb2018_fluo] --json OUT
    python benchmarks/cells_merge.py --pool OUT0 OUT1 ...

Each image is segmented as ``cells count`` does (``benchmarks/cells_variants.py``) with each
(``merge_boundary``, ``merge_area_ratio``) of :data:`GRID`; ``0,0`` is no merging. ``--pool`` prints the mean
AP@0.5 and the mean, median and pooled absolute count errors per setting over the runs' tuning images (where the
setting is chosen) and their validation images (where the choice is checked).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GRID = ((0.0, 0.0),) + tuple((t, r) for r in (0.25, 0.5, 1.0) for t in (0.15, 0.25, 0.35, 0.5))


def merge_variants(model, image) -> dict:
    cfg = model.cfg
    kept = cfg.merge_boundary, cfg.merge_area_ratio
    out = {}
    try:
        for t, r in GRID:
            cfg.merge_boundary, cfg.merge_area_ratio = t, r
            out[f"{t:g},{r:g}"] = model.segment(image)
    finally:
        cfg.merge_boundary, cfg.merge_area_ratio = kept
    return out


def main(argv=None) -> int:
    from benchmarks.cells_variants import main as variants_main

    return variants_main(argv, merge_variants, __doc__, "boundary, area ratio")


if __name__ == "__main__":
    sys.exit(main())
