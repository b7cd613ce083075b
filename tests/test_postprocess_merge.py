"""Merging watershed fragments back across borders the network does not call boundary (medseg.postprocess.merge)."""

import numpy as np
import pytest

from medseg.postprocess.merge import border_strengths, merge_weak_borders


def _nucleus_and_fragment():
    """A 6x6 nucleus (1) with a 6x1 sliver (2) cut off its right side, and a separate equal pair (3, 4) touching."""
    lab = np.zeros((8, 20), np.int32)
    lab[1:7, 1:7] = 1
    lab[1:7, 7] = 2
    lab[1:7, 10:14] = 3
    lab[1:7, 14:18] = 4
    return lab


def test_border_strengths_by_hand():
    lab = _nucleus_and_fragment()
    b = np.zeros(lab.shape)
    b[:, 7] = 0.6  # the sliver's pixels; the nucleus's column 6 stays 0
    pairs, lengths, strengths = border_strengths(lab, b)
    assert pairs.tolist() == [[1, 2], [3, 4]]
    assert lengths.tolist() == [6, 6]
    assert strengths == pytest.approx([0.3, 0.0])


def test_border_strengths_3d_counts_every_axis():
    lab = np.zeros((2, 2, 2), int)
    lab[0] = 1
    lab[1] = 2
    pairs, lengths, _ = border_strengths(lab, np.zeros(lab.shape))
    assert pairs.tolist() == [[1, 2]] and lengths.tolist() == [4]
    lab[1, 1, 1] = 1  # now also touching in y and x within the second slice
    _, lengths, _ = border_strengths(lab, np.zeros(lab.shape))
    assert lengths.tolist() == [3 + 2]


def test_fragment_joins_its_nucleus_across_a_weak_border_only():
    lab = _nucleus_and_fragment()
    weak = np.zeros(lab.shape)
    out = merge_weak_borders(lab, weak)
    assert len(np.unique(out[out > 0])) == 3
    assert (out[lab == 2] == out[1, 1]).all()  # the sliver took the nucleus's id
    assert out[1, 10] != out[1, 14]  # two equal nuclei stay apart even without any boundary between them
    strong = weak.copy()
    strong[:, 6:8] = 0.5  # the network draws a boundary along the cut
    assert len(np.unique(merge_weak_borders(lab, strong)[lab > 0])) == 4


def test_area_ratio_and_threshold_are_the_limits():
    lab = _nucleus_and_fragment()  # areas: 36 and 6 (ratio 1/6)
    b = np.full(lab.shape, 0.25)  # exact in binary: the border's mean is 0.25, not a rounding of it
    assert merge_weak_borders(lab, b, max_boundary=0.25).max() == 4  # the border must be below it
    assert merge_weak_borders(lab, b, max_boundary=0.26).max() == 3
    assert merge_weak_borders(lab, b, max_boundary=0.26, max_area_ratio=0.16).max() == 4  # 6 > 0.16 x 36
    assert merge_weak_borders(lab, b, max_boundary=0.26, max_area_ratio=1.0).max() == 2  # the equal pair too
    assert merge_weak_borders(lab, b, max_boundary=0).max() == 4
    assert merge_weak_borders(lab, b, max_area_ratio=0).max() == 4


def test_weakest_border_first_and_areas_grow_with_each_merge():
    # 1 (area 16) - 2 (4) - 3 (16) in a row: 2 joins the side with the weaker border; 1+2 (20) and 3 then differ
    # too little to merge at ratio 0.25
    lab = np.zeros((4, 10), int)
    lab[:, :4], lab[:, 4], lab[:, 5:9] = 1, 2, 3
    b = np.zeros(lab.shape)
    b[:, 5] = 0.2  # border 2|3 mean 0.1, border 1|2 mean 0
    out = merge_weak_borders(lab, b)
    assert (out[:, 4] == out[0, 0]).all() and out[0, 6] != out[0, 0]
    b[:, 3] = 0.4  # border 1|2 now mean 0.2: 2 joins 3 instead
    out = merge_weak_borders(lab, b)
    assert (out[:, 4] == out[0, 6]).all() and out[0, 0] != out[0, 6]


def test_ids_consecutive_dtype_kept_and_input_untouched():
    lab = _nucleus_and_fragment().astype(np.uint16) * 3  # ids 3, 6, 9, 12: gaps
    before = lab.copy()
    out = merge_weak_borders(lab, np.zeros(lab.shape))
    assert out.dtype == np.uint16
    assert np.unique(out).tolist() == [0, 1, 2, 3]
    assert out[1, 1] == 1 and out[1, 10] == 2 and out[1, 14] == 3  # order of the smallest original id
    assert np.array_equal(lab, before)


def test_3d_fragment_merged():
    lab = np.zeros((4, 6, 6), int)
    lab[:, :, :5] = 1
    lab[:, :, 5] = 2
    out = merge_weak_borders(lab, np.zeros(lab.shape))
    assert out.max() == 1 and (out[lab > 0] == 1).all()


def test_nothing_to_merge_and_bad_shapes():
    assert merge_weak_borders(np.zeros((5, 5), int), np.zeros((5, 5))).max() == 0
    one = np.zeros((5, 5), int)
    one[1:3, 1:3] = 1
    assert np.array_equal(merge_weak_borders(one, np.zeros((5, 5))), one)
    apart = one.copy()
    apart[4, 4] = 2  # not touching: stays
    assert merge_weak_borders(apart, np.zeros((5, 5))).max() == 2
    with pytest.raises(ValueError, match="shape"):
        border_strengths(apart, np.zeros((4, 5)))


def test_cell_model_merges_by_its_config():
    """CellModel.postprocess merges a sliver the watershed cut off a nucleus along a faint line (the run's
    merge_boundary; 0 turns it off)."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig

    fg = np.zeros((30, 40), np.float32)
    fg[5:25, 5:25] = 1
    boundary = np.zeros_like(fg)
    boundary[5:25, 22] = 0.5  # splits the markers (fg - boundary = 0.5 < 0.6) but is faint: mean 0.25 on the border
    prob = np.stack([1 - fg, fg - boundary, boundary])
    model = CellModel(None, CellTrainConfig(min_size_px=1, distance_head=False, seed_threshold=0.6, min_snr=0), {})
    assert model.cfg.merge_boundary > 0.25  # on by default
    merged = model.postprocess(prob)
    assert merged.max() == 1 and (merged[5:25, 5:25] == 1).all()
    model.cfg.merge_boundary = 0
    assert model.postprocess(prob).max() == 2  # the markers did split it
    model.cfg.merge_boundary = 0.25  # the border's mean is not below it
    assert model.postprocess(prob).max() == 2
    model.cfg.merge_boundary, model.cfg.merge_area_ratio = 0.35, 0.05  # the sliver is too large a part
    assert model.postprocess(prob).max() == 2
