"""Dropping objects no brighter than the background's noise (medseg.postprocess.contrast) and the polarity that
decides which way that test looks (issue 5)."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage as ndi

from medseg.cells.data import percentile_normalize
from medseg.cells.targets import object_polarity
from medseg.postprocess.contrast import background_stats, object_snr, remove_faint_instances
from conftest import data_path


def _real_pairs(n=3):
    from medseg.cells.data import list_cases, load_case

    cases = list_cases(data_path("dsb2018_fluo"))[::97][:n]
    return [(c.image.astype(np.float64), c.labels) for c in map(load_case, cases)]


def test_object_snr_against_numpy_on_real_images():
    for img, lab in _real_pairs():
        bg = ~ndi.binary_dilation(lab > 0, iterations=3)
        med = np.median(img[bg])
        mad = 1.4826 * np.median(np.abs(img[bg] - med))
        sd = mad if mad > 0 else img[bg].std()
        for i in np.unique(lab[lab > 0])[::5]:
            expect = (img[lab == i].mean() - med) / sd
            assert np.isclose(object_snr(img, lab)[i - 1], expect)
        assert background_stats(img, lab)[0] == med


def test_annotated_nuclei_pass_and_background_patches_fail_on_real_images():
    """The annotated nuclei of real fluorescence images stand out from their background; patches of pure
    background cut into the same images as fake objects do not, and are the ones removed."""
    kept = total = 0
    for img, lab in _real_pairs():
        fake = lab.astype(np.int64).copy()
        bg = ~ndi.binary_dilation(lab > 0, iterations=15)
        ys, xs = np.nonzero(bg)
        n0, placed = int(lab.max()), 0
        for k in range(0, len(ys), max(1, len(ys) // 4)):  # up to four 5x5 patches of background
            y, x = ys[k], xs[k]
            if bg[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3].all():
                placed += 1
                fake[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = n0 + placed
        out = remove_faint_instances(fake, img)
        assert placed and not (out[fake > n0] > 0).any()
        kept += len(np.unique(out[lab > 0])) - (0 in out[lab > 0])
        total += len(np.unique(lab[lab > 0]))
    assert kept >= 0.97 * total


def test_polarity_follows_the_annotated_objects():
    pairs = _real_pairs()
    imgs = [percentile_normalize(i) for i, _ in pairs]
    assert object_polarity(imgs, [lab for _, lab in pairs]) == 1
    assert object_polarity([1 - i for i in imgs], [lab for _, lab in pairs]) == -1
    img, lab = pairs[0]
    inverted = img.max() - img
    assert remove_faint_instances(lab, inverted).max() == 0  # bright-object test on dark nuclei: nothing left
    assert remove_faint_instances(lab, inverted, polarity=-1).max() >= 0.97 * len(np.unique(lab[lab > 0]))


def test_model_postprocess_applies_the_filter_with_the_image():
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig

    img, lab = _real_pairs(1)[0]
    speck = np.zeros_like(lab, dtype=bool)
    bg = ~ndi.binary_dilation(lab > 0, iterations=15)
    y, x = np.argwhere(bg)[len(np.argwhere(bg)) // 2]
    speck[y - 3:y + 4, x - 3:x + 4] = True
    assert bg[speck].all()
    fg = ((lab > 0) | speck).astype(np.float32)
    prob = np.stack([1 - fg, fg, np.zeros_like(fg)])
    model = CellModel(None, CellTrainConfig(min_size_px=1, distance_head=False, seed_threshold=0.5), {})
    without = model.postprocess(prob)
    with_image = model.postprocess(prob, image=img)
    assert without.max() == with_image.max() + 1 and not with_image[speck].any()
    model.cfg.min_snr = 0
    assert model.postprocess(prob, image=img).max() == without.max()


def test_cli_count_min_snr_and_train_without_offset_head(tmp_path):
    """`cells train --no-offset-head` then `cells count --min-snr`: a huge value leaves nothing, 0 keeps at least as
    many objects as the model's default, and so does `--merge-boundary 0`; a negative --min-snr or a
    --merge-boundary above 1 is refused before anything is written."""
    import csv

    from conftest import assert_clean_error, linked_cell_dataset, run_cli

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    run = tmp_path / "run"
    res = run_cli("cells", "train", ds, "-o", run, "--max-steps", "2", "--patch", "64", "--threads", "1",
                  "--tune-fraction", "0", "--no-offset-head")
    assert res.code == 0, res.err
    assert json.loads((run / "model.json").read_text())["config"]["offset_head"] is False  # on by default
    counts = {}
    for snr in ("1e9", "0", None, "merge-off"):
        out = tmp_path / f"out{snr}"
        opts = ("--merge-boundary", "0") if snr == "merge-off" else ("--min-snr", snr) if snr else ()
        # one thread in every run: the thread count changes float sums, and a 2-step model sits near its thresholds
        res = run_cli("cells", "count", "-i", ds / "images" / f"{ids[2]}.png", "-o", out, "-m", run, "--threads", "1",
                      *opts)
        assert res.code == 0, res.err
        with open(out / "counts.csv") as f:
            counts[snr] = sum(int(r["count"]) for r in csv.DictReader(f))
    # merging fragments only joins objects (the foreground is the same, so is the contrast test's background)
    assert counts["merge-off"] >= counts[None]
    # a huge threshold leaves nothing, unless the (2-step) model left no background to measure the noise on, or
    # only a noiseless one (all-black pixels), when object_snr's rule keeps every object (+inf)
    import tifffile

    from medseg.cells.data import load_image
    from medseg.postprocess.contrast import background_stats

    labels = tifffile.imread(tmp_path / "out0" / f"{ids[2]}_labels.tif")
    stats = background_stats(load_image(ds / "images" / f"{ids[2]}.png").array, labels)
    noise_measurable = stats is not None and stats[1] > 0
    assert counts["1e9"] == (0 if noise_measurable else counts["0"])
    assert counts["0"] >= counts[None]
    bad = tmp_path / "bad"
    assert_clean_error(run_cli("cells", "count", "-i", ds / "images", "-o", bad, "-m", run, "--min-snr", "-1"),
                       "--min-snr")
    assert_clean_error(run_cli("cells", "count", "-i", ds / "images", "-o", bad, "-m", run, "--threads", "0"),
                       "--threads")
    assert_clean_error(run_cli("cells", "count", "-i", ds / "images", "-o", bad, "-m", run, "--merge-boundary",
                               "1.5"), "--merge-boundary")
    assert not bad.exists()


def test_object_snr_with_label_gaps_warns_nothing():
    """Labels with gaps (2 missing of 1..3): the missing one scores NaN without a RuntimeWarning; the others as
    without the gap."""
    import warnings

    rng = np.random.default_rng(0)
    img = rng.normal(10, 1, (40, 40))
    lab = np.zeros((40, 40), np.int32)
    lab[5:10, 5:10], lab[20:25, 20:25] = 1, 3
    img[lab == 1] += 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        snr = object_snr(img, lab)
        kept = remove_faint_instances(lab, img)
    assert np.isnan(snr[1]) and snr[0] > 3 > snr[2]
    assert np.allclose(snr[[0, 2]], object_snr(img, np.where(lab == 3, 2, lab)))
    assert int(kept.max()) == 1 and (kept > 0).sum() == 25
