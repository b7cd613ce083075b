"""Cell pipeline pieces: targets, split, normalisation, per-cell tables, overlays, ROIs, training (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from medseg.cells.data import check_labels, list_cases, percentile_normalize
from medseg.cells.splits import dataset_split, fold_of, split_of
from medseg.cells.targets import boundary_targets
from medseg.cells.tables import cell_table, overlay_rgb
from medseg.errors import InputError
from conftest import linked_cell_dataset, data_path


def _real_labels(n=3):
    labs = sorted(data_path("dsb2018_fluo", "labels").glob("*.tif"))
    return [tifffile.imread(p) for p in labs[:: max(1, len(labs) // n)][:n]]


def test_boundary_targets_separate_every_real_object():
    for lab in _real_labels():
        t = boundary_targets(lab)
        assert set(np.unique(t)) <= {0, 1, 2}
        np.testing.assert_array_equal(t > 0, lab > 0)
        # no interior pixel of one object touches an interior pixel of another (4-connectivity)
        interior = np.where(t == 1, lab, 0)
        for ax in (0, 1):
            a, b = np.moveaxis(interior, ax, 0)[1:], np.moveaxis(interior, ax, 0)[:-1]
            assert not np.any((a > 0) & (b > 0) & (a != b))
        # so the interior's connected components never merge two objects
        cc = ndi.label(t == 1)[0]
        for i in np.unique(cc[cc > 0]):
            assert len(np.unique(lab[cc == i])) == 1


def test_wider_boundaries_match_brute_force_on_real_labels():
    """contact_width=2: the 1-px boundary plus every nucleus pixel within 2 px (chessboard) of another nucleus;
    width=2: plus every nucleus pixel within 2 px of anything else (the crop's edge is not 'else')."""
    for lab in _real_labels():
        lab = lab[:96, :96].astype(np.int64)
        contact, wide, thin = (boundary_targets(lab, contact_width=2), boundary_targets(lab, width=2),
                               boundary_targets(lab))
        near_other, near_any = np.zeros(lab.shape, bool), np.zeros(lab.shape, bool)
        for y, x in zip(*np.nonzero(lab)):
            win = lab[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3]
            near_other[y, x] = np.any((win > 0) & (win != lab[y, x]))
            near_any[y, x] = np.any(win != lab[y, x])
        np.testing.assert_array_equal(contact == 2, (thin == 2) | near_other)
        np.testing.assert_array_equal(wide == 2, (thin == 2) | near_any)
        for t in (contact, wide):
            np.testing.assert_array_equal(t > 0, lab > 0)


def test_percentile_normalize_against_numpy():
    x = np.random.default_rng(0).gamma(2.0, 10.0, (50, 60))
    lo, hi = np.percentile(x, [1, 99.8])
    np.testing.assert_allclose(percentile_normalize(x), (x - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(percentile_normalize(np.zeros((4, 4)))))


def test_split_is_deterministic_and_disjoint():
    cases = list_cases(data_path("dsb2018_fluo"))
    s1 = dataset_split(data_path("dsb2018_fluo"), cases)
    ids_val = {c.case for c in s1["val"]}
    assert ids_val and not ids_val & {c.case for c in s1["train"]}
    assert len(s1["val"]) + len(s1["train"]) == len(cases)
    assert 0.08 < len(ids_val) / len(cases) < 0.25
    assert all(split_of(c) == "val" for c in ids_val)


def test_folds_partition_the_images_and_fold_0_holds_the_default_validation_split(tmp_path):
    """Every image is validation in exactly one of k folds, the folds are about equal, and fold 0 of 5 (hash range
    [0, 0.2)) contains the default validation split (hash range [0, 0.15))."""
    cases = list_cases(data_path("dsb2018_fluo"))
    default_val = {c.case for c in dataset_split(data_path("dsb2018_fluo"), cases)["val"]}
    seen = []
    for k in range(5):
        s = dataset_split(data_path("dsb2018_fluo"), cases, fold=k, folds=5)
        val = {c.case for c in s["val"]}
        assert not val & {c.case for c in s["train"]} and len(val) + len(s["train"]) == len(cases)
        assert all(fold_of(c, 5) == k for c in val)
        assert 0.1 < len(val) / len(cases) < 0.3
        seen += sorted(val)
    assert sorted(seen) == sorted(c.case for c in cases)  # each image once
    assert default_val <= {c.case for c in dataset_split(data_path("dsb2018_fluo"), cases, fold=0)["val"]}
    (tmp_path / "images").mkdir()
    (tmp_path / "split.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(InputError, match="split.json"):
        dataset_split(tmp_path, cases, fold=0)


def test_split_file_overrides(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for cid in "abc":
        tifffile.imwrite(tmp_path / "images" / f"{cid}.tif", np.zeros((8, 8), np.uint8))
        tifffile.imwrite(tmp_path / "labels" / f"{cid}.tif", np.zeros((8, 8), np.uint16))
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    s = dataset_split(tmp_path, list_cases(tmp_path))
    assert [c.case for c in s["val"]] == ["c"] and [c.case for c in s["train"]] == ["a", "b"]


def test_check_labels_rejects_non_integer():
    with pytest.raises(InputError, match="non-integer"):
        check_labels(np.array([[0.5, 1.0]]))
    assert check_labels(np.array([[0.0, 2.0]])).dtype.kind == "i"


def test_cell_table_matches_skimage_regionprops():
    from skimage.measure import regionprops

    png = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[5]
    lab = tifffile.imread(data_path("dsb2018_fluo", "labels", png.stem + ".tif"))
    from medseg.cells.data import load_image

    img = load_image(png).array.astype(float)
    sp = (0.4, 0.4)
    rows = {r["id"]: r for r in cell_table(lab, img, spacing=sp)}
    props = regionprops(lab, intensity_image=img)
    assert len(rows) == len(props)
    for p in props:
        r = rows[p.label]
        assert r["area_px"] == p.area
        assert r["area"] == pytest.approx(p.area * 0.16, rel=1e-6)
        assert (r["centroid_y_px"], r["centroid_x_px"]) == pytest.approx(p.centroid, abs=1e-3)
        assert r["centroid_x"] == pytest.approx(p.centroid[1] * 0.4, abs=1e-3)
        assert r["equivalent_diameter"] == pytest.approx(p.equivalent_diameter_area * 0.4, rel=1e-4)
        assert r["mean_intensity"] == pytest.approx(p.intensity_mean, rel=1e-4)
        assert r["integrated_intensity"] == pytest.approx(p.intensity_mean * p.area, rel=1e-4)
        minr, minc, maxr, maxc = p.bbox
        assert r["touches_border"] == (minr == 0 or minc == 0 or maxr == lab.shape[0] or maxc == lab.shape[1])


def test_cell_table_3d_volume():
    lab = np.zeros((4, 10, 10), np.uint16)
    lab[1:3, 2:5, 2:6] = 3
    (r,) = cell_table(lab, None, spacing=(2.0, 0.5, 0.5))
    assert r["volume_px"] == 24 and r["volume"] == pytest.approx(24 * 0.5)
    assert r["equivalent_diameter"] == pytest.approx(2 * (3 * 12 / (4 * np.pi)) ** (1 / 3), rel=1e-4)
    assert (r["centroid_z"], r["centroid_y"], r["centroid_x"]) == pytest.approx((3.0, 1.5, 1.75))


def test_overlay_3d_projection():
    lab = np.zeros((3, 12, 12), np.uint16)
    lab[1, 3:8, 3:8] = 1
    rgb = overlay_rgb(np.random.default_rng(0).random((3, 12, 12)), lab)
    assert rgb.shape == (12, 12, 3) and tuple(rgb[3, 3]) == (255, 40, 40)


def test_roi_zip_polygons_are_the_objects_pixels_in_imagej_convention(tmp_path):
    """Read back by an independent reader, every ROI filled by ImageJ's rule (pixels whose centre lies inside;
    pixel (r, c) spans [c, c + 1) x [r, r + 1)) is its object exactly, holes filled, and its area is the
    object's pixel count."""
    roifile = pytest.importorskip("roifile")
    from skimage.draw import polygon2mask

    from medseg.cells.rois import write_roi_zip

    checked = 0
    for lab in _real_labels(2):
        write_roi_zip(lab, tmp_path / "r.zip")
        rois = roifile.roiread(tmp_path / "r.zip")
        assert len(rois) == len(np.unique(lab)) - 1
        for r in rois:
            obj = ndi.binary_fill_holes(lab == int(r.name.split("_")[1]))
            if ndi.label(obj, structure=np.ones((3, 3)))[1] != 1:
                continue  # an object in pieces keeps its largest outline only
            xy = r.coordinates().astype(float)
            # centres of pixel (r, c) at (c + 0.5, r + 0.5): shift the polygon instead of the grid
            np.testing.assert_array_equal(polygon2mask(lab.shape, xy[:, ::-1] - 0.5), obj)
            x, y = xy[:, 0], xy[:, 1]
            assert 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) == obj.sum()
            checked += 1
    assert checked > 50


def test_training_runs_and_resumes(tmp_path):
    """Bounded training (a few steps on three real images), checkpoint, resume, load for inference."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["steps"] == 2 and meta["split"]["val"] == ids[2:]
    cfg.max_steps = 4
    train_cells(ds, run, cfg, resume=True, progress=False)
    assert json.loads((run / "model.json").read_text())["steps"] == 4
    model = CellModel.load(run)
    img = tifffile.imread(ds / "labels" / f"{ids[2]}.tif").astype(np.float32)
    assert model.segment(img).shape == img.shape  # whatever the scale the nuclei were brought to
    p = model.probabilities(img, scale=1.0)
    assert p.shape == (6,) + img.shape  # 3 classes + the distance map + offsets along y and x (the defaults)
    np.testing.assert_allclose(p[:3].sum(0), 1.0, atol=1e-4)
    assert 0 <= p[3].min() and p[3].max() <= 1
    model.tta = True  # flip averaging: still probabilities, and the same prediction for a flipped image
    pt = model.probabilities(img, scale=1.0)
    np.testing.assert_allclose(pt[:3].sum(0), 1.0, atol=1e-4)
    flipped = model.probabilities(img[:, ::-1].copy(), scale=1.0)[:, :, ::-1]
    flipped[-1] = -flipped[-1]  # the x offsets of a mirrored image point the other way
    np.testing.assert_allclose(flipped[:4], pt[:4], atol=2e-3)
    np.testing.assert_allclose(flipped[4:], pt[4:], atol=2e-3 * max(1.0, float(np.abs(pt[4:]).max())))
    with pytest.raises(InputError, match="nothing to resume"):
        train_cells(ds, tmp_path / "other", cfg, resume=True, progress=False)


class _FixedProbModel:
    """Stands in for CellModel: fixed probabilities, the real watershed post-processing."""

    def __init__(self, prob):
        from medseg.cells.count import CellModel
        from medseg.cells.train import CellTrainConfig

        self._prob = prob
        self._real = CellModel(None, CellTrainConfig(min_size_px=1, distance_head=prob.shape[0] > 3, offset_head=False),
                               {})
        self.cfg = self._real.cfg

    def probabilities(self, image):
        return self._prob

    def postprocess(self, prob, threshold=None, seed_threshold=None, seeds=None, shape=None, image=None):
        return self._real.postprocess(prob, threshold, seed_threshold, seeds, shape, image)


def test_tune_thresholds_splits_a_weak_bridge():
    """Two touching nuclei joined by a bridge of interior probability 0.55: a seed threshold of 0.5 merges them,
    the search must pick a higher one (mechanics on a synthetic map; the real effect is in benchmarks/cells.py)."""
    from types import SimpleNamespace

    from medseg.cells.tune import SEED_GRID, THRESHOLD_GRID, tune_thresholds

    lab = np.zeros((12, 21), np.uint16)
    lab[2:10, 2:10], lab[2:10, 10:18] = 1, 2
    p1 = np.where(lab > 0, 0.9, 0.0)
    p1[:, 9:11] = np.where(lab[:, 9:11] > 0, 0.55, 0.0)  # the contact between the two nuclei
    p2 = np.where(lab > 0, 0.05, 0.0)
    p2[:, 9:11] = np.where(lab[:, 9:11] > 0, 0.4, 0.0)
    prob = np.stack([1 - p1 - p2, p1, p2])
    case = SimpleNamespace(image=lab.astype(np.float32), labels=lab)
    res = tune_thresholds(_FixedProbModel(prob), [case])
    assert len(res["table"]) == len(THRESHOLD_GRID) * len(SEED_GRID)
    merged = [r for r in res["table"] if r["seed_threshold"] < 0.55]
    assert merged and all(r["count_error"] == 0.5 and r["ap"] < 1.0 for r in merged)  # one object for two
    assert res["seed_threshold"] > 0.55 and res["ap"] == 1.0 and res["count_error"] == 0.0


def test_tune_searches_distance_markers_when_the_model_has_a_distance_map():
    """A 4-channel map (classes + distance) whose boundary never separates two nuclei: only distance-core markers
    do, and the search must find them (mechanics; the real effect is measured in benchmarks/cells.py)."""
    from types import SimpleNamespace

    from medseg.cells.targets import distance_targets
    from medseg.cells.tune import DISTANCE_SEED_GRID, SEED_GRID, THRESHOLD_GRID, tune_thresholds

    lab = np.zeros((12, 21), np.uint16)
    lab[2:10, 2:10], lab[2:10, 10:18] = 1, 2
    p1 = np.where(lab > 0, 0.97, 0.0)  # no boundary signal at the contact at all
    p2 = np.where(lab > 0, 0.02, 0.0)
    prob = np.stack([1 - p1 - p2, p1, p2, distance_targets(lab)])
    case = SimpleNamespace(image=lab.astype(np.float32), labels=lab)
    res = tune_thresholds(_FixedProbModel(prob), [case])
    assert len(res["table"]) == len(THRESHOLD_GRID) * (len(SEED_GRID) + len(DISTANCE_SEED_GRID))
    assert all(r["count_error"] == 0.5 for r in res["table"] if r["seeds"] == "boundary")
    assert res["seeds"] == "distance" and res["ap"] == 1.0


def test_plateau_selection_avoids_a_peak_beside_a_cliff():
    """Distance-core markers peak one grid step before their AP collapses; flat boundary markers score a hair
    lower. "peak" takes the distance peak, "plateau" the flat region, and rows of different marker sources are
    never each other's neighbours (hand-made table)."""
    from medseg.cells.tune import best_thresholds, plateau_scores

    table = [{"seeds": "boundary", "threshold": t, "seed_threshold": s, "ap": 0.83, "count_error": 0.1}
             for t in (0.4, 0.5, 0.6) for s in (0.8, 0.9, 0.95)]
    cliff = {0.3: 0.80, 0.4: 0.82, 0.5: 0.835, 0.6: 0.74, 0.7: 0.30}
    table += [{"seeds": "distance", "threshold": t, "seed_threshold": s, "ap": a, "count_error": 0.1}
              for t in (0.4, 0.5, 0.6) for s, a in cliff.items()]
    peak = best_thresholds(table, selection="peak")
    assert (peak["seeds"], peak["seed_threshold"]) == ("distance", 0.5)
    plateau = best_thresholds(table, selection="plateau")
    assert plateau["seeds"] == "boundary" and plateau["threshold"] == 0.5  # the centre: its window is all 0.83
    scores = plateau_scores(table, [r["ap"] for r in table])
    assert all(abs(v - 0.83) < 1e-12 for r, v in zip(table, scores) if r["seeds"] == "boundary")
    at = {(r["seeds"], r["threshold"], r["seed_threshold"]): v for r, v in zip(table, scores)}
    assert abs(at["distance", 0.5, 0.5] - (0.82 + 0.835 + 0.74) / 3) < 1e-12
    assert abs(at["distance", 0.4, 0.3] - (0.80 + 0.82) / 2) < 1e-12  # a corner: a 2x2 window
    with pytest.raises(ValueError, match="selection 'best'"):
        best_thresholds(table, selection="best")


def test_augment_keeps_extra_maps_aligned():
    """The distance target goes through the same crop, flips and rotations as the class target."""
    from medseg.cells.augment import augment
    from medseg.cells.targets import distance_targets

    lab = _real_labels(1)[0]
    img = percentile_normalize(lab.astype(np.float32))
    tgt, dist = boundary_targets(lab), distance_targets(lab)
    rng = np.random.default_rng(3)
    for size in [(64, 64), (600, 80)]:  # the second pads one axis
        for _ in range(10):
            x, y, d = augment(img, tgt, size, rng, extra=(dist,))
            assert x.shape == y.shape == d.shape == size
            np.testing.assert_array_equal(d > 0, y > 0)  # the distance is positive exactly on the objects


def test_runs_without_distance_head_still_load(tmp_path):
    """model.json written before the distance head and scale normalisation existed loads as the 3-class model at
    native scale."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          distance_head=False, offset_head=False)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    meta = json.loads((run / "model.json").read_text())
    for key in ("distance_head", "seeds", "diameter", "contact_weight", "contact_sigma", "offset_head",
                "min_snr", "norm", "scale_range", "scale_prob"):  # keys added since
        del meta["config"][key]
    for key in ("versions", "diameter_range", "diameter_range_area", "diameter_measure"):  # recorded since
        del meta[key]
    (run / "model.json").write_text(json.dumps(meta))
    model = CellModel.load(run)
    assert "versions" not in model.meta
    assert model.cfg.contact_weight == 0.0  # trained without the weight map, whatever today's default
    img = tifffile.imread(ds / "labels" / f"{ids[0]}.tif").astype(np.float32)
    p = model.probabilities(img)
    assert p.shape == (3,) + img.shape
    assert model.segment(img).shape == img.shape
    with pytest.raises(InputError, match="distance head"):
        model.postprocess(p, seeds="distance")
    assert model.cfg.norm == "instance" and model.cfg.scale_range is None  # what those runs were trained with


def test_batch_norm_model_trains_saves_and_loads(tmp_path):
    """``norm="batch"`` builds BatchNorm layers, is stored in model.json and predicts in eval mode (running
    statistics); an unknown norm is a clear error."""
    import torch

    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1,
                          tune_fraction=0, norm="batch")
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    model = CellModel.load(run)
    assert model.cfg.norm == "batch" and not model.net.training
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.net.modules())
    img = tifffile.imread(ds / "labels" / f"{ids[0]}.tif").astype(np.float32)
    p = model.probabilities(img)
    assert p.shape == (6,) + img.shape and np.allclose(p[:3].sum(0), 1, atol=1e-4)
    meta = json.loads((run / "model.json").read_text())
    meta["config"]["norm"] = "group"
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="norm 'group'"):
        CellModel.load(run)


def test_scale_normalised_model_predicts_at_the_training_size(tmp_path):
    """A model trained with ``diameter`` resizes each image (by a given diameter here) and returns labels of the
    input's shape."""
    from medseg.cells.count import CellModel
    from medseg.cells.scale import median_diameter
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          diameter=17.0)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    lab = tifffile.imread(ds / "labels" / f"{ids[2]}.tif")
    img = lab.astype(np.float32)
    d = median_diameter(lab)
    assert "diameter_range" not in json.loads((run / "model.json").read_text())  # it has its own normalisation
    model = CellModel.load(run, diameter=d)
    s = model.scale_for(img)
    assert s == pytest.approx(max(1.0, 17.0 / d))
    assert model.probabilities(img).shape[1:] == tuple(round(n * s) for n in img.shape)
    assert model.segment(img).shape == img.shape


def test_training_holds_out_tuning_images(tmp_path):
    """train_cells keeps tune_fraction of the training images out of training and stores the chosen thresholds."""
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 12)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          tune_fraction=0.3)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    meta = json.loads((run / "model.json").read_text())
    split = meta["split"]
    assert len(split["tune"]) >= 3 and split["val"] == ids[-1:]
    assert not set(split["tune"]) & (set(split["train"]) | set(split["val"]))
    assert sorted(split["tune"] + split["train"] + split["val"]) == sorted(ids)
    t = meta["tuning"]
    assert t["n_images"] == len(split["tune"]) and 0.0 <= t["ap"] <= 1.0
    # the documented rule: AP compared at 4 decimals, ties go to the smaller count error
    best = max(round(r["ap"], 4) for r in t["table"])
    assert round(t["ap"], 4) == best
    tied = [r for r in t["table"] if round(r["ap"], 4) == best]
    assert round(t["count_error"], 4) == min(round(r["count_error"], 4) for r in tied)
    # the nucleus sizes it was trained on (percentiles 1 and 99 of the training images' median diameters, per
    # object and area-weighted: the diameter of the nucleus holding the median nucleus pixel)
    from skimage.measure import regionprops

    labels = [tifffile.imread(ds / "labels" / f"{i}.tif") for i in split["train"]]
    train_d, train_a = [], []
    for lab in labels:
        props = sorted(regionprops(lab), key=lambda r: r.area)
        cum = np.cumsum([r.area for r in props])
        train_d.append(np.median([r.equivalent_diameter_area for r in props]))
        train_a.append(props[int(np.searchsorted(cum, cum[-1] / 2))].equivalent_diameter_area)
    assert meta["diameter_range"] == pytest.approx(np.percentile(train_d, [1, 99]), abs=0.01)
    assert meta["diameter_range_area"] == pytest.approx(np.percentile(train_a, [1, 99]), abs=0.01)
    assert meta["diameter_measure"] == "both"

    # the settings that measured the tuning images' nucleus sizes (before tuning), for counting to measure alike
    assert meta["size_thresholds"] == {"threshold": cfg.threshold, "seed_threshold": cfg.seed_threshold,
                                       "seeds": cfg.seeds}
    model = CellModel.load(run)
    assert (model.cfg.threshold, model.cfg.seed_threshold) == (t["threshold"], t["seed_threshold"])
    assert model.cfg.seeds == t["seeds"] and {r["seeds"] for r in t["table"]} == {"boundary", "distance", "votes"}


def test_loaded_model_predicts_as_the_network_its_thresholds_were_tuned_with(tmp_path, monkeypatch):
    """The thresholds are chosen on the in-memory network at the end of training; the model loaded from the run
    folder must give the same maps (same weights and the same memory format: under bf16 channels-last and
    contiguous kernels round differently, enough to reorder near-tied settings of the threshold table)."""
    import medseg.cells.train as train
    from medseg.cells.count import CellModel

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 12)
    seen = {}

    def spy(net, cfg, meta, cases):
        seen.update(model=CellModel(net, cfg, meta, device="cpu"), cases=cases)
        return tune(net, cfg, meta, cases)

    tune = train.tune_network
    monkeypatch.setattr(train, "tune_network", spy)
    cfg = train.CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5,
                                threads=1, tune_fraction=0.3)
    run = train.train_cells(ds, tmp_path / "run", cfg, progress=False)
    loaded = CellModel.load(run)
    for case in seen["cases"][:2]:
        image = np.asarray(case.image, np.float32)
        np.testing.assert_array_equal(loaded._predict(image), seen["model"]._predict(image))


def test_too_few_images_hold_out_a_block_of_each(tmp_path):
    """With fewer than 3 images for tuning, the last fifth of each training image (longest axis) is held out: the
    network trains on the rest, and the thresholds are still chosen on pixels it did not see."""
    from medseg.cells.data import read_labels
    from medseg.cells.train import CellTrainConfig, prepare_training_data, train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=1, max_minutes=5, threads=1)
    pairs, _, split, tune, _ = prepare_training_data(ds, cfg)
    assert split["tune"] == [f"{i}:tune" for i in ids[:2]] and split["train"] == ids[:2]
    for (image, *_), block, cid in zip(pairs, tune, ids):
        full = read_labels(ds / "labels" / f"{cid}.tif")
        axis = full.ndim - 1 - int(np.argmax(full.shape[::-1]))  # the longest axis, the last on a tie
        k = int(np.ceil(0.2 * full.shape[axis]))
        assert image.shape[axis] + block.labels.shape[axis] == full.shape[axis] and block.labels.shape[axis] == k
        assert np.array_equal(block.labels, np.take(full, range(full.shape[axis] - k, full.shape[axis]), axis))
    meta = json.loads((train_cells(ds, tmp_path / "run", cfg, progress=False) / "model.json").read_text())
    assert meta["tuning"]["n_images"] == 2
    assert train_cells(ds, tmp_path / "off", cfg.updated(tune_fraction=0.0), progress=False) and \
        "tuning" not in json.loads((tmp_path / "off" / "model.json").read_text())


def test_learning_rate_schedule_follows_max_steps(tmp_path):
    """With max_steps ending the run long before the time budget, the poly schedule still decays to ~0 by then."""
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=30, max_minutes=60, threads=1,
                          tune_fraction=0)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    lrs = [float(line.split(",")[2]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert len(lrs) == 3 and lrs[0] > 0.6 * cfg.lr and lrs[-1] < 0.1 * cfg.lr and lrs == sorted(lrs, reverse=True)


def test_model_loads_from_its_folder_json_or_weights_and_records_versions(tmp_path):
    """``CellModel.load`` takes the run folder, its model.json or its model.pt (weights_only); model.json records
    the medseg/torch/MONAI versions; a checkpoint or an unrelated file is a clear InputError."""
    import monai
    import torch

    import medseg
    from medseg.cells.count import CellModel
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=1, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          tune_fraction=0)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    v = json.loads((run / "model.json").read_text())["versions"]
    assert (v["medseg"], v["torch"], v["monai"]) == (medseg.__version__, torch.__version__, monai.__version__)
    ref = CellModel.load(run).net.state_dict()
    for given in (run / "model.json", run / "model.pt"):
        model = CellModel.load(given)
        assert model.meta["versions"] == v
        assert all(torch.equal(ref[k], t) for k, t in model.net.state_dict().items())
    with pytest.raises(InputError, match="checkpoint"):
        CellModel.load(run / "checkpoint.pt")
    with pytest.raises(InputError, match="not a cell model"):
        CellModel.load(run / "log.csv")
    with pytest.raises(InputError, match="no such"):
        CellModel.load(run / "missing.pt")
