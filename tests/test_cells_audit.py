"""Audit of `medseg cells evaluate`'s summary line: every number it prints is named as the mean over images or the
score pooled over all cells, and equals that quantity computed here (StarDist's ``matching`` re-stated: IoU from a
contingency table, the assignment maximising the matches then their IoU)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from conftest import linked_cell_dataset, run_cli
from test_cells_metrics import stardist_matching


def test_evaluate_summary_names_mean_and_pooled_scores(tmp_path):
    """An image with one nucleus found and one with ten, five of them missed and one spurious object: the mean over
    images (AP@0.5 0.73) is far above the pooled AP (0.5); the line printed the mean as a bare "AP@0.5", read as
    the dataset's AP, and no pooled F1."""
    yy, xx = np.mgrid[:64, :64]
    refs, preds = {}, {}
    for case, n_ref, n_found in (("few", 1, 1), ("many", 10, 5)):
        ref = np.zeros((64, 64), np.uint16)
        for i in range(n_ref):
            ref[np.hypot(yy - 8 - 12 * (i // 5), xx - 6 - 12 * (i % 5)) < 4] = i + 1
        pred = np.where(ref <= n_found, ref, 0).astype(np.uint16)
        if case == "many":
            pred[np.hypot(yy - 50, xx - 50) < 4] = 99
        refs[case], preds[case] = ref, pred
    for side, maps in (("ref", refs), ("pred", preds)):
        (tmp_path / side).mkdir()
        for case, arr in maps.items():
            tifffile.imwrite(tmp_path / side / f"{case}.tif", arr)
    res = run_cli("cells", "evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", tmp_path / "ev")
    assert res.code == 0, res.err
    got = re.search(r"2 image\(s\), mean over images \(pooled over all cells\): AP@0\.5 ([\d.]+) \(([\d.]+)\), "
                    r"F1@0\.5 ([\d.]+) \(([\d.]+)\), \|count error\| ([\d.]+)% \(([\d.]+)%\)", res.out)
    assert got, res.out
    counts = {c: [stardist_matching(refs[c], preds[c], 0.5)[k] for k in ("tp", "fp", "fn")] for c in refs}
    n = {c: (len(np.unique(refs[c])) - 1, len(np.unique(preds[c])) - 1) for c in refs}
    tp, fp, fn = np.sum(list(counts.values()), axis=0)
    expected = [np.mean([t / (t + f + m) for t, f, m in counts.values()]), tp / (tp + fp + fn),
                np.mean([2 * t / (2 * t + f + m) for t, f, m in counts.values()]), 2 * tp / (2 * tp + fp + fn),
                100 * np.mean([abs(p - r) / r for r, p in n.values()]),
                100 * sum(abs(p - r) for r, p in n.values()) / sum(r for r, _ in n.values())]
    printed = [float(v) for v in got.groups()]
    assert printed[0] - printed[1] > 0.2  # the two aggregations differ here: which is which matters
    for value, want, places in zip(printed, expected, (3, 3, 3, 3, 1, 1)):
        assert value == pytest.approx(round(want, places), abs=10 ** -places / 2 + 1e-9)


@pytest.mark.parametrize("command", ["count", "train"])
def test_a_negative_channel_is_refused_by_both_commands(tmp_path, command):
    """``--channel -1`` picked the last channel in ``cells count`` (Python indexing) while ``cells train`` refused
    it: the same option means one thing in both, 0-based, so a negative one is a usage error before anything runs."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:16, 8:16, 2] = 200
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb")
    if command == "count":
        src = ["-i", tmp_path / "a.tif", "--classical"]
    else:  # a real dataset, so that nothing but the option can be refused
        linked_cell_dataset(tmp_path / "ds", 2)
        src = [tmp_path / "ds"]
    res = run_cli("cells", command, *src, "-o", tmp_path / "out", "--channel", "-1")
    assert res.code == 2 and "--channel" in res.err and len(res.err.strip().splitlines()) == 1, res.err
    assert not (tmp_path / "out").exists()
