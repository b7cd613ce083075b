"""The bootstrap interval of a mean over cases (``medseg.evaluate.summary.bootstrap_mean_ci``) and where the
reports carry it. Synthetic numbers: these test the mechanics (coverage, width, NaN handling), not a claim."""

from __future__ import annotations

import numpy as np

from medseg.evaluate.summary import bootstrap_mean_ci


def test_width_matches_the_normal_approximation():
    x = np.random.default_rng(1).normal(0.88, 0.03, size=44)
    lo, hi = bootstrap_mean_ci(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert lo < x.mean() < hi
    assert abs((hi - lo) / 2 - half) < 0.15 * half


def test_coverage_of_the_true_mean():
    rng = np.random.default_rng(2)
    hits = 0
    for i in range(200):
        lo, hi = bootstrap_mean_ci(rng.exponential(0.06, size=61), n_boot=2000, seed=i)
        hits += lo <= 0.06 <= hi
    assert 0.85 <= hits / 200 <= 0.99  # percentile bootstrap on a skewed variable: slightly under 95 %


def test_a_large_cohort_is_resampled_in_chunks(monkeypatch):
    """20,000 cases: the resamples come in chunks (a single draw would hold 200 M indices, 1.6 GB) and the interval
    still matches the normal approximation; NaN rows are still left out per column."""
    import medseg.evaluate.summary as summary

    shapes = []
    make_rng = np.random.default_rng

    class Spy:  # numpy's Generator cannot be patched: wrap the one the function makes
        def __init__(self, seed):
            self.rng = make_rng(seed)

        def integers(self, *args, size=None, **kw):
            shapes.append(size)
            return self.rng.integers(*args, size=size, **kw)

    x = np.random.default_rng(5).normal(0.5, 0.2, size=(20_000, 2))
    x[::2, 1] = np.nan
    monkeypatch.setattr(summary.np.random, "default_rng", Spy)  # numpy's own module: after drawing x
    lo, hi = summary.bootstrap_mean_ci(x, n_boot=1000)
    assert len(shapes) > 1 and max(np.prod(s) for s in shapes) <= summary._BOOT_CHUNK
    assert sum(s[0] for s in shapes) == 1000
    for j, n in ((0, 20_000), (1, 10_000)):
        col = x[np.isfinite(x[:, j]), j]
        half = 1.96 * col.std(ddof=1) / np.sqrt(n)
        assert lo[j] < col.mean() < hi[j] and abs((hi[j] - lo[j]) / 2 - half) < 0.15 * half


def test_columns_nan_and_empty():
    rows = [[1.0, np.nan], [2.0, 5.0], [3.0, 5.0], [4.0, np.nan]]
    out = bootstrap_mean_ci(rows)
    assert out.shape == (2, 2)
    assert out[0, 0] < 2.5 < out[1, 0]
    assert out[:, 1].tolist() == [5.0, 5.0]  # NaN rows are not scores: the finite ones are all 5
    assert np.isnan(bootstrap_mean_ci([[np.nan], [np.nan]])).all()
    assert np.isnan(bootstrap_mean_ci([])).all()


def test_same_seed_same_interval_and_narrower_with_more_cases():
    rng = np.random.default_rng(3)
    few, many = rng.normal(0, 1, 20), rng.normal(0, 1, 500)
    assert bootstrap_mean_ci(few).tolist() == bootstrap_mean_ci(few).tolist()
    assert np.ptp(bootstrap_mean_ci(many)) < 0.5 * np.ptp(bootstrap_mean_ci(few))


def test_cell_summary_carries_intervals_around_its_means():
    from medseg.cells.evaluate import evaluate_pair, summarize

    rng = np.random.default_rng(4)
    rows = []
    for _ in range(12):
        ref = np.zeros((40, 40), np.uint16)
        n = int(rng.integers(2, 6))
        for k in range(n):
            ref[4 + 7 * k: 9 + 7 * k, 5:12] = k + 1
        pred = ref.copy()
        if rng.random() < 0.5:
            pred[pred == n] = 0  # one nucleus missed
        rows.append(evaluate_pair(ref, pred))
    s = summarize(rows)
    for k in ("ap@0.5", "abs_relative_count_error"):
        lo, hi = s["ci95"][k]
        assert lo <= s["mean"][k] <= hi
        assert hi > lo  # the images differ, so the interval has a width


def test_semantic_report_interval_and_note():
    from medseg.evaluate.report import to_markdown
    from medseg.evaluate.summary import summarize

    dice = [0.80, 0.85, 0.90, 0.88, 0.86]
    per_case = [{"case": f"c{i}", "classes": {"a": {"dice": d, "iou": d / (2 - d), "flags": []}},
                 "pixel_accuracy": 0.99, "mean_iou": 0.9} for i, d in enumerate(dice)]
    rep = summarize(per_case, ["a"])
    lo, hi = rep["ci95"]["a"]["dice"]
    assert lo <= np.mean(dice) <= hi
    rep["settings"] = {}
    rep["per_case"] = per_case
    assert "95 % bootstrap interval of the mean Dice" in to_markdown(rep)


def test_semantic_summary_resamples_once_for_all_classes(monkeypatch):
    """Every class and metric shares one resampling (one call), with the same bounds as one call per column."""
    import medseg.evaluate.summary as summary

    rng = np.random.default_rng(6)
    per_case = [{"case": f"c{i}", "classes": {n: {"dice": d, "iou": d / (2 - d), "flags": []}
                                              for n, d in zip("ab", rng.uniform(0.6, 0.95, 2))},
                 "pixel_accuracy": 0.99, "mean_iou": 0.9} for i in range(9)]
    calls = []
    real = summary.bootstrap_mean_ci
    monkeypatch.setattr(summary, "bootstrap_mean_ci", lambda v, *a, **k: calls.append(1) or real(v, *a, **k))
    out = summary.summarize(per_case, ["a", "b"])
    assert len(calls) == 1
    for n in "ab":
        for k in ("dice", "iou"):
            alone = real([c["classes"][n][k] for c in per_case])
            assert np.allclose(out["ci95"][n][k], alone)
