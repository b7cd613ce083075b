"""What `medseg cells count` and `medseg cells evaluate` write, column by column, against independent computations:
scikit-image ``regionprops`` with the pixel size and the input image's own values for the per-cell tables, numpy
for ``counts.csv``, tifffile and roifile for the label TIFF and the ROI zip, and a re-statement of StarDist's
``matching``/``matching_dataset`` for the metrics."""

from __future__ import annotations

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from conftest import data_path, run_cli

THRESHOLDS = ("0.5", "0.6", "0.7", "0.8", "0.9")


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _discs_2d(shape=(60, 80), seed=0) -> np.ndarray:
    """Bright discs, one cut by each of the four edges and three inside, on a faint noisy background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for y, x in ((0, 40), (59, 20), (30, 0), (30, 79), (30, 40), (15, 60), (45, 60)):
        mask |= np.hypot(yy - y, xx - x) < 6
    return mask + 0.05 * np.random.default_rng(seed).random(shape)


def _balls_3d(shape=(12, 40, 50), spacing=(2.0, 0.5, 0.4)) -> np.ndarray:
    """Balls of radius 3.2 µm at anisotropic voxels: one cut by each of the six faces and one inside."""
    grid = np.indices(shape).astype(float)
    mask = np.zeros(shape, bool)
    for c in ((0, 20, 25), (11, 20, 10), (6, 0, 25), (6, 39, 25), (6, 20, 0), (6, 20, 49), (6, 20, 25)):
        mask |= np.sqrt(sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, spacing))) < 3.2
    return mask


def _check_table(rows: list[dict], lab: np.ndarray, raw: np.ndarray, spacing) -> None:
    """Every column of a cells.csv against regionprops (with ``spacing``) and the raw pixel values."""
    nd = lab.ndim
    props = regionprops(lab, spacing=spacing)
    assert [int(r["id"]) for r in rows] == [p.label for p in props] and len(rows) > 0
    size = "area" if nd == 2 else "volume"
    for r, p in zip(rows, props):
        vals = raw[tuple(p.coords.T)].astype(np.float64)
        px = p.coords.mean(axis=0)
        for ax, a in enumerate("zyx"[-nd:]):
            assert float(r[f"centroid_{a}_px"]) == pytest.approx(px[ax], abs=5e-4)
            assert float(r[f"centroid_{a}"]) == pytest.approx(p.centroid[ax], abs=5e-4 * max(spacing))
        assert int(r[f"{size}_px"]) == len(p.coords)
        assert float(r[size]) == pytest.approx(p.area, rel=1e-6)  # regionprops' area is physical with spacing
        ball = 2 * np.sqrt(p.area / np.pi) if nd == 2 else 2 * (3 * p.area / (4 * np.pi)) ** (1 / 3)
        assert float(r["equivalent_diameter"]) == pytest.approx(ball, rel=1e-6)
        assert float(r["mean_intensity"]) == pytest.approx(vals.mean(), rel=1e-6)
        assert float(r["integrated_intensity"]) == pytest.approx(vals.sum(), rel=1e-6)
        lo, hi = p.coords.min(axis=0), p.coords.max(axis=0)
        assert r["touches_border"] == str(bool((lo == 0).any() or (hi == np.array(lab.shape) - 1).any()))


def _tiff_spacing(path) -> tuple:
    """(z?, y, x) pixel size as tifffile reads the ImageJ TIFF: resolution tags and the ImageJ z spacing."""
    with tifffile.TiffFile(path) as t:
        (xn, xd), (yn, yd) = t.pages[0].tags["XResolution"].value, t.pages[0].tags["YResolution"].value
        ij = t.imagej_metadata
        z = (float(ij["spacing"]),) if t.series[0].ndim == 3 else ()
        return z + (yd / yn, xd / xn), ij["unit"]


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 200), (np.uint16, 40000), (np.float32, 2e-5)])
def test_2d_table_labels_rois_and_overlay_equal_independent_measurements(tmp_path, dtype, scale):
    """Anisotropic pixels (0.3 x 0.7 µm), objects on every edge; a float32 image in small units kept its
    intensities to 4 decimals only (all 0.0 at 2e-5)."""
    roifile = pytest.importorskip("roifile")
    from skimage.draw import polygon2mask

    raw = (_discs_2d() * scale).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", raw)
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", tmp_path / "a.tif", "-o", out, "--classical", "--pixel-size", "0.3,0.7",
                  "--roi-zip")
    assert res.code == 0, res.err
    lab = tifffile.imread(out / "a_labels.tif")
    assert lab.dtype == np.uint16
    rows = _read_csv(out / "a_cells.csv")
    _check_table(rows, lab, raw, (0.3, 0.7))
    assert {r["touches_border"] for r in rows} == {"True", "False"}
    sp, unit = _tiff_spacing(out / "a_labels.tif")
    assert sp == pytest.approx((0.3, 0.7), rel=1e-9) and unit == "um"
    rois = roifile.roiread(out / "a_rois.zip")
    assert [r.name for r in rois] == [f"cell_{int(r['id']):05d}" for r in rows]
    for roi, r in zip(rois, rows):  # ImageJ's fill: pixels whose centre lies inside
        obj = ndi.binary_fill_holes(lab == int(r["id"]))
        np.testing.assert_array_equal(polygon2mask(lab.shape, roi.coordinates()[:, ::-1] - 0.5), obj)
    red = (iio.imread(out / "a_overlay.png") == (255, 40, 40)).all(axis=-1)
    np.testing.assert_array_equal(red, find_boundaries(lab, mode="inner") & (lab > 0))


def test_3d_channel_table_is_in_the_chosen_channels_units_with_the_files_spacing(tmp_path):
    """A ZCYX ImageJ stack (z 2 µm, y 0.5, x 0.4) counted on channel 1: volumes, ball diameters, z-face contacts,
    and intensities of channel 1 as stored (uint16 counts, not the normalised image, not channel 0)."""
    sp = (2.0, 0.5, 0.4)
    mask = _balls_3d(spacing=sp)
    rng = np.random.default_rng(1)
    ch1 = (mask * 3000 + rng.random(mask.shape) * 150).astype(np.uint16)
    ch0 = (rng.random(mask.shape) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", np.stack([ch0, ch1], axis=1), imagej=True, resolution=(1 / sp[2], 1 / sp[1]),
                     metadata={"axes": "ZCYX", "spacing": sp[0], "unit": "um"})
    from medseg.cells.count import count_cells

    row = count_cells(tmp_path / "s.tif", tmp_path / "out", classical=True, channel=1, progress=False)[0]
    lab = tifffile.imread(tmp_path / "out" / "s_labels.tif")
    rows = _read_csv(tmp_path / "out" / "s_cells.csv")
    _check_table(rows, lab, ch1, sp)
    # every ball is cut by a face but the middle one
    assert [r["touches_border"] for r in rows].count("False") == 1 == row["count_not_touching_border"]
    assert row["count"] == len(rows) == 7
    assert _tiff_spacing(tmp_path / "out" / "s_labels.tif") == (pytest.approx(sp, rel=1e-9), "um")


def test_counts_csv_equals_the_label_maps(tmp_path):
    """counts.csv of a folder with a 2D image (0.065 µm pixels, as behind a 100x objective) and a 3D stack: one row
    per image, the tables' row counts, and mean/median sizes from the label maps (they were means of sizes
    rounded to 4 decimals, then rounded again)."""
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "flat.tif", (_discs_2d() * 200).astype(np.uint8), imagej=True,
                     resolution=(1 / 0.065, 1 / 0.065), metadata={"unit": "um"})
    sp3 = (2.0, 0.5, 0.4)
    tifffile.imwrite(tmp_path / "in" / "stack.tif", (_balls_3d(spacing=sp3) * 200).astype(np.uint8), imagej=True,
                     resolution=(1 / sp3[2], 1 / sp3[1]), metadata={"axes": "ZYX", "spacing": sp3[0], "unit": "um"})
    res = run_cli("cells", "count", "-i", tmp_path / "in", "-o", tmp_path / "out", "--classical")
    assert res.code == 0, res.err
    counts = {r["id"]: r for r in _read_csv(tmp_path / "out" / "counts.csv")}
    assert sorted(counts) == ["flat", "stack"]
    for cid, size, voxel in (("flat", "area", 0.065 ** 2), ("stack", "volume", float(np.prod(sp3)))):
        lab = tifffile.imread(tmp_path / "out" / f"{cid}_labels.tif")
        n = np.bincount(lab.ravel())[1:]
        n = n[n > 0]
        rows = _read_csv(tmp_path / "out" / f"{cid}_cells.csv")
        c = counts[cid]
        assert int(c["count"]) == len(rows) == len(n) > 0
        border = set(np.unique(np.concatenate([np.take(lab, i, axis=ax).ravel() for ax in range(lab.ndim)
                                               for i in (0, -1)])))
        assert int(c["count_not_touching_border"]) == len(set(np.unique(lab)) - border - {0})
        assert float(c[f"mean_{size}"]) == pytest.approx(n.mean() * voxel, rel=1e-6)
        assert float(c[f"median_{size}"]) == pytest.approx(np.median(n) * voxel, rel=1e-6)
        assert c["unit"] == "um" and c["method"] == "classical"


def _stardist_matching(y_true: np.ndarray, y_pred: np.ndarray, thresh: float) -> dict:
    """StarDist's ``matching`` re-stated: the dense IoU matrix from a contingency table, the assignment that
    maximises the matches and then their IoU; tp, fp, fn and the summed IoU of the matches."""
    t_ids, ti = np.unique(y_true, return_inverse=True)
    p_ids, pi = np.unique(y_pred, return_inverse=True)
    full = np.zeros((len(t_ids), len(p_ids)))
    np.add.at(full, (ti.ravel(), pi.ravel()), 1)
    sizes_t, sizes_p = full.sum(axis=1)[t_ids > 0], full.sum(axis=0)[p_ids > 0]
    table = full[t_ids > 0][:, p_ids > 0]
    iou = table / (sizes_t[:, None] + sizes_p[None, :] - table)
    tp, s = 0, 0.0
    if table.size and (iou >= thresh).any():
        r, c = linear_sum_assignment(-(iou >= thresh).astype(float) - iou / (2 * min(iou.shape)))
        ok = iou[r, c] >= thresh
        tp, s = int(ok.sum()), float(iou[r, c][ok].sum())
    return {"tp": tp, "fp": table.shape[1] - tp, "fn": table.shape[0] - tp, "iou_sum": s}


def _ratios(tp, fp, fn, iou_sum) -> dict:
    """medseg's convention: StarDist's ratios, but 1 with nothing on either side (no denominator at all)."""
    def div(a, b):
        return a / b if b else float(tp + fp + fn == 0)

    return {"ap": div(tp, tp + fp + fn), "precision": div(tp, tp + fp), "recall": div(tp, tp + fn),
            "f1": div(2 * tp, 2 * tp + fp + fn), "panoptic_quality": div(iou_sum, tp + fp / 2 + fn / 2)}


def _synthetic_pairs(d) -> None:
    """ref/ and pred/ label maps: shifted, merged, split, missed and spurious objects with scattered ids, an image
    without predictions and one empty on both sides."""
    rng = np.random.default_rng(7)
    (d / "ref").mkdir()
    (d / "pred").mkdir()
    yy, xx = np.mgrid[:64, :64]
    for k in range(4):
        ref = np.zeros((64, 64), np.uint16)
        for i, (y, x) in enumerate(rng.integers(6, 58, (9, 2)), start=1):
            ref[np.hypot(yy - y, xx - x) < rng.integers(3, 7)] = 3 * i + 5
        pred = np.roll(ref, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)).astype(np.int32) * 11
        pred[rng.integers(0, 60):, :rng.integers(4, 64)] = 0
        pred[np.hypot(yy - 20, xx - 50) < 4] = 999
        pred = ndi.grey_dilation(pred, size=3) if k == 1 else pred
        if k == 2:
            pred[:] = 0
        if k == 3:
            ref[:], pred[:] = 0, 0
        tifffile.imwrite(d / "ref" / f"c{k}.tif", ref)
        tifffile.imwrite(d / "pred" / f"c{k}.tif", pred.astype(np.uint16))


@pytest.mark.parametrize("source", ["synthetic", "dsb2018"])
def test_cells_evaluate_per_image_and_pooled_equal_stardist_matching_dataset(tmp_path, source):
    """Every number of metrics.json/csv against StarDist's ``matching`` per image and ``matching_dataset`` with
    ``by_image=False`` (TP, FP, FN and the matched IoUs summed over images) pooled; the pooled panoptic quality was
    missing (the mean had it)."""
    if source == "synthetic":
        _synthetic_pairs(tmp_path)
        pred, ref = tmp_path / "pred", tmp_path / "ref"
    else:
        src = data_path("dsb2018_fluo")
        (tmp_path / "img").mkdir()
        (tmp_path / "ref").mkdir()
        for p in sorted((src / "images").glob("*.png"))[10:13]:
            (tmp_path / "img" / p.name).symlink_to(p)
            (tmp_path / "ref" / f"{p.stem}.tif").symlink_to(src / "labels" / f"{p.stem}.tif")
        assert run_cli("cells", "count", "-i", tmp_path / "img", "-o", tmp_path / "pred", "--classical").code == 0
        pred, ref = tmp_path / "pred", tmp_path / "ref"
    res = run_cli("cells", "evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "ev")
    assert res.code == 0, res.err
    js = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    rows = _read_csv(tmp_path / "ev" / "metrics.csv")
    assert [r["case"] for r in rows] == [d["case"] for d in js["per_image"]]
    sums = {t: np.zeros(4) for t in THRESHOLDS}
    for d, row in zip(js["per_image"], rows):
        r_arr = tifffile.imread(ref / f"{d['case']}.tif")
        p_file = pred / f"{d['case']}_labels.tif"
        p_arr = tifffile.imread(p_file if p_file.exists() else pred / f"{d['case']}.tif")
        n_ref, n_pred = len(np.unique(r_arr[r_arr > 0])), len(np.unique(p_arr[p_arr > 0]))
        expected = {"n_ref": n_ref, "n_pred": n_pred, "count_error": n_pred - n_ref,
                    "relative_count_error": (n_pred - n_ref) / n_ref if n_ref else 0.0,
                    "abs_relative_count_error": abs(n_pred - n_ref) / n_ref if n_ref else 0.0}
        for t in THRESHOLDS:
            m = _stardist_matching(r_arr, p_arr, float(t))
            sums[t] += [m["tp"], m["fp"], m["fn"], m["iou_sum"]]
            expected.update({f"{k}@{t}": v for k, v in _ratios(m["tp"], m["fp"], m["fn"], m["iou_sum"]).items()})
            expected.update({f"{k}@{t}": m[k] for k in ("tp", "fp", "fn")})
        assert set(expected) == set(d) - {"case"}
        for k, v in expected.items():
            assert d[k] == pytest.approx(v, rel=1e-12, abs=1e-12) and float(row[k]) == pytest.approx(v, rel=1e-12), k
    per = js["per_image"]
    for t in THRESHOLDS:
        tp, fp, fn, iou_sum = sums[t]
        for k, v in _ratios(tp, fp, fn, iou_sum).items():
            assert js["pooled"][f"{k}@{t}"] == pytest.approx(v, rel=1e-12), (k, t)
            assert js["mean"][f"{k}@{t}"] == pytest.approx(np.mean([d[f"{k}@{t}"] for d in per]), rel=1e-12)
    n_ref, n_pred = sum(d["n_ref"] for d in per), sum(d["n_pred"] for d in per)
    assert (js["pooled"]["n_ref"], js["pooled"]["n_pred"]) == (n_ref, n_pred)
    assert js["pooled"]["relative_count_error"] == pytest.approx((n_pred - n_ref) / n_ref)
