"""The classical cell mode's contrast test: an empty field of view gives (almost) no objects instead of hundreds cut
from its noise by the threshold, and no real nucleus the classical mode finds is lost to it."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import data_path, run_cli


@pytest.mark.parametrize("field", ["gaussian", "poisson"])
def test_an_empty_field_gives_no_cells_but_its_noise_with_the_test_off(tmp_path, field):
    import tifffile

    rng = np.random.default_rng(1)
    img = 100 + 10 * rng.standard_normal((200, 200)) if field == "gaussian" else rng.poisson(20.0, (200, 200))
    tifffile.imwrite(tmp_path / "empty.tif", np.asarray(img).astype(np.uint16))
    counts = {}
    for snr in (None, "0"):
        out = tmp_path / f"out{snr}"
        res = run_cli("cells", "count", "-i", tmp_path / "empty.tif", "-o", out, "--classical",
                      *(("--min-snr", snr) if snr else ()))
        assert res.code == 0, res.err
        with open(out / "counts.csv") as f:
            counts[snr] = int(next(csv.DictReader(f))["count"])
    assert counts[None] <= 2 < 100 < counts["0"], counts  # the option reaches the classical mode


def test_no_nucleus_the_classical_mode_finds_is_lost_to_the_test():
    """On real DSB2018 images the objects the test removes are none of those that match an annotated nucleus
    (IoU >= 0.5): the true positives are the same with the test on and off."""
    from medseg.cells.data import list_images, load_image, read_labels
    from medseg.cells.evaluate import evaluate_pair
    from medseg.cells.segmenters import ClassicalSegmenter

    root = data_path("dsb2018_fluo")
    for f in list_images(root / "images")[::40]:
        img, ref = load_image(f).array, read_labels(root / "labels" / f"{f.stem}.tif")
        off, on = ClassicalSegmenter(min_snr=0.0).segment(img), ClassicalSegmenter().segment(img)
        assert evaluate_pair(ref, on, (0.5,))["tp@0.5"] == evaluate_pair(ref, off, (0.5,))["tp@0.5"], f.name
        assert not np.any((on > 0) & (off == 0)), f.name  # the test only removes objects, never draws any
