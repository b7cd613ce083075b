"""How counting scales with the image (whole-slide tiles, stitched mosaics, large stacks): the per-cell table, the
classical segmenter, the watershed and a model's maps keep few whole-image copies alive at once (numpy's
allocations measured with tracemalloc, the maps' with the peak RSS of a fresh process), with the results of the
reference computations (SciPy, scikit-image, numpy). Times and peak memory of ``count_cells`` from 1024² to 8192²
are in the scaling audit's report (session 43), not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi


def _discs(shape, pitch: int, radius: float, seed: int = 0):
    """Labels (uint16) of a grid of discs, and a float32 image of them (bright on a noisy background)."""
    yy, xx = np.mgrid[:pitch, :pitch]
    mask = np.tile(np.hypot(yy - pitch / 2, xx - pitch / 2) < radius, (shape[0] // pitch, shape[1] // pitch))
    image = mask * 100 + np.random.default_rng(seed).normal(10, 3, mask.shape)
    return ndi.label(mask)[0].astype(np.uint16), image.astype(np.float32)


def _numpy_peak(fn, *args, **kwargs):
    """``fn``'s result and the peak of the memory numpy (and Python) allocated during the call, in bytes."""
    tracemalloc.start()
    try:
        out = fn(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak


def test_cell_table_matches_regionprops_without_whole_image_float_maps():
    from skimage.measure import regionprops

    from medseg.cells.tables import cell_table, round_measure

    labels, image = _discs((2048, 2048), 24, 9)
    rows, peak = _numpy_peak(cell_table, labels, image, (0.5, 0.25))
    # before: a float64 map of ones, one of indices per axis and the image as float64 (32 bytes per pixel)
    assert peak < 8 * labels.size, peak / labels.size
    props = regionprops(labels, intensity_image=image.astype(np.float64))
    assert [r["id"] for r in rows] == [p.label for p in props]
    sums = ndi.sum_labels(image.astype(np.float64), labels, [p.label for p in props])
    for r, p, s in zip(rows, props, sums):
        assert r["area_px"] == p.area and r["area"] == round_measure(p.area * 0.125)
        assert abs(r["centroid_y_px"] - p.centroid[0]) <= 5e-4 and abs(r["centroid_x_px"] - p.centroid[1]) <= 5e-4
        assert r["integrated_intensity"] == round_measure(s)  # the same float64 sum as SciPy's, bit for bit
        assert r["mean_intensity"] == pytest.approx(p.intensity_mean, rel=1e-6)


def test_label_sums_of_large_or_sparse_ids_and_3d_blocks():
    from medseg.cells.tables import label_sums

    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([0, 7, 70000, 2**31 - 1], np.int64), size=(5, 6, 7))  # ids beyond the size
    image = rng.normal(size=labels.shape)
    ids = np.unique(labels)[1:]
    counts, coords, sums = label_sums(labels, ids, image, chunk=40)  # blocks of one z slice
    assert counts.tolist() == [int((labels == i).sum()) for i in ids]
    for ax in range(3):
        assert coords[ax].tolist() == [float(np.nonzero(labels == i)[ax].sum()) for i in ids]
    assert sums.tolist() == ndi.sum_labels(image, labels, ids).tolist()


def test_classical_instances_keeps_few_float_maps_alive():
    from medseg.cells.data import percentile_normalize
    from medseg.postprocess.classical import classical_instances

    truth, image = _discs((1024, 1024), 24, 9)
    classical_instances(percentile_normalize(image[:128, :128]))  # a first call's one-time allocations, not the image's
    labels, peak = _numpy_peak(classical_instances, percentile_normalize(image))
    # before: the float64 image, its smoothed copy, the distance transform and the mask as float64 stayed alive
    # through the watershed (67 bytes per pixel of numpy memory on this image; 43 after)
    assert peak < 55 * image.size, peak / image.size
    assert int(labels.max()) == int(truth.max())  # every disc, once


def test_watershed_of_float32_maps_without_float64_copies_gives_the_float64_result():
    from medseg.postprocess.watershed import watershed_instances

    truth, _ = _discs((1024, 1024), 24, 9)
    fg = ndi.gaussian_filter((truth > 0).astype(np.float32), 2)
    fg[::7, ::5] = np.float32(0.3)  # above 0.3 in float64 but not in float32: must stay foreground
    bd = ndi.gaussian_filter(((ndi.grey_dilation(truth, 3) != truth)).astype(np.float32), 1)
    watershed_instances(fg[:128, :128], boundary=bd[:128, :128], threshold=0.3, seed_threshold=0.3)  # one-time costs
    out, peak = _numpy_peak(watershed_instances, fg, boundary=bd, threshold=0.3, seed_threshold=0.3)
    # before: float64 copies of both maps and of their difference lived through the watershed (53 bytes per pixel;
    # 37 after)
    assert peak < 46 * fg.size, peak / fg.size
    ref = watershed_instances(fg.astype(np.float64), boundary=bd.astype(np.float64), threshold=0.3,
                              seed_threshold=0.3)
    assert np.array_equal(out, ref)
    mask = truth > 0
    assert np.array_equal(watershed_instances(mask), watershed_instances(mask.astype(np.float64)))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak RSS through Linux /proc")
def test_model_maps_are_made_once_not_in_parts_then_concatenated(tmp_path):
    """The class probabilities, distance and offsets of a 2048² image: the peak RSS of a fresh process grows by
    the maps themselves (24 bytes per pixel), not twice that."""
    script = tmp_path / "maps.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np, torch
        torch.set_num_threads(1)
        from medseg.cells.config import CellTrainConfig
        from medseg.cells.segmenters import CellModel

        def status(key):
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

        model = CellModel(None, CellTrainConfig(), {})
        model.activate(torch.randn(6, 32, 32))
        logits = torch.randn(6, 2048, 2048)
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # the peak so far is forgotten
            f.write("5")
        maps = model.activate(logits)
        grown = (status("VmHWM") - base) / logits.numel() / logits.element_size()
        x = logits.double().numpy()
        e = np.exp(x[:3] - x[:3].max(0))
        ok = (np.allclose(maps[:3], e / e.sum(0), atol=1e-6) and np.allclose(maps[3], 1 / (1 + np.exp(-x[3])),
              atol=1e-6) and np.allclose(maps[4:], CellTrainConfig().offset_scale * x[4:], atol=1e-4))
        print(grown, ok)
    """))
    import medseg

    # the medseg this test imported (a copy on PYTHONPATH included)
    env = {**os.environ, "PYTHONPATH": str(Path(medseg.__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    grown, ok = res.stdout.split()
    assert ok == "True"
    assert float(grown) < 1.5, grown  # before: 2.0 (the parts, then their concatenation)
