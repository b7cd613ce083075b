"""A trained cell model separates real touching nuclei (issue 5): learned + watershed finds more nuclei, and more
of the touching ones, than the connected components of its own foreground, on held-out DSB2018 images chosen by
their annotation.

Measured once on this CPU (same images): after 1,500 steps of the default recipe (~9 min) 145 vs 128 nuclei found,
16 vs 8 of the 41 touching ones; after 150 steps of 128² crops (~35 s) 124 vs 112 and 7 vs 3, after 400 steps 129
vs 126 and 8 vs 7. So CI runs the bounded version, which may only tie, and MEDSEG_SLOW=1 the 1,500-step one.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from conftest import data_path, linked_cell_dataset

TRAIN_IMAGES = 24  # the first images by id; the test images come after them


def _touching(lab: np.ndarray) -> np.ndarray:
    """Reference nuclei that touch another nucleus (8-connectivity)."""
    grown = ndi.grey_dilation(lab, size=(3, 3))
    return np.unique(lab[(grown != lab) & (lab > 0) & (grown > 0)])


def _held_out_touching(n: int = 4) -> list:
    """The first ``n`` images after the training ones with at least 6 touching nuclei (chosen by annotation only)."""
    root = data_path("dsb2018_fluo")
    chosen = []
    for p in sorted((root / "labels").glob("*.tif"))[TRAIN_IMAGES:]:
        lab = tifffile.imread(p)
        if len(_touching(lab)) >= 6 and lab.size <= 360 * 360:
            chosen.append((root / "images" / f"{p.stem}.png", lab))
        if len(chosen) == n:
            break
    return chosen


@pytest.mark.parametrize("steps, strict", [
    pytest.param(150, False, id="bounded"),
    pytest.param(1500, True, id="full", marks=pytest.mark.slow),
])
def test_trained_model_separates_touching_nuclei(tmp_path, steps, strict):
    from medseg.cells.count import CellModel
    from medseg.cells.data import load_image
    from medseg.cells.train import CellTrainConfig, train_cells
    from medseg.evaluate.instances import match_instances

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, TRAIN_IMAGES)
    if strict:  # the default recipe (256² crops, thresholds tuned on held-out training images)
        cfg = CellTrainConfig(max_steps=steps, max_minutes=30, threads=2, checkpoint_every_s=1e9)
    else:
        cfg = CellTrainConfig(max_steps=steps, max_minutes=15, threads=None, checkpoint_every_s=1e9,
                              patch_size=(128, 128), batch_size=4, tune_fraction=0.0)
    model = CellModel.load(train_cells(ds, tmp_path / "run", cfg, progress=False), device="cpu")
    chosen = _held_out_touching()
    assert len(chosen) == 4
    tp_learned = tp_cc = touching_learned = touching_cc = 0
    for path, ref in chosen:
        labels = model.segment(load_image(path).array)
        cc = ndi.label(labels > 0)[0]  # the same foreground, without the watershed's splits
        tp_learned += match_instances(ref, labels, [0.5])[0].tp
        tp_cc += match_instances(ref, cc, [0.5])[0].tp
        touching_learned += _matched(ref, labels, _touching(ref))
        touching_cc += _matched(ref, cc, _touching(ref))
    if strict:
        assert tp_learned > tp_cc and touching_learned > touching_cc, (tp_learned, tp_cc, touching_learned, touching_cc)
    else:  # a barely trained model: its watershed must at least not lose nuclei to merges its foreground has not
        assert tp_learned >= tp_cc and touching_learned >= touching_cc, (tp_learned, tp_cc, touching_learned,
                                                                         touching_cc)


def _matched(ref: np.ndarray, pred: np.ndarray, ids) -> int:
    """How many of the reference objects ``ids`` one predicted object matches at IoU >= 0.5 (then it is the
    predicted object covering most of it, and the match is one-to-one)."""
    found = 0
    for r in ids:
        obj = ref == r
        labels, counts = np.unique(pred[obj], return_counts=True)
        best, inter = labels[np.argmax(counts)], counts.max()
        found += bool(best > 0 and inter / (obj.sum() + (pred == best).sum() - inter) >= 0.5)
    return found
