"""`medseg cells count|evaluate|train` end to end on real images, and its answers to bad input (issue 5)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from conftest import assert_clean_error, data_path, run_cli


def _dsb_ids(n):
    return [p.stem for p in sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[:n]]


@pytest.fixture
def two_images(tmp_path):
    src = data_path("dsb2018_fluo")
    d = tmp_path / "in"
    d.mkdir()
    for cid in _dsb_ids(2):
        (d / f"{cid}.png").symlink_to(src / "images" / f"{cid}.png")
    return d


def test_count_classical_folder_writes_consistent_outputs(tmp_path, two_images):
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", two_images, "-o", out, "--classical", "--pixel-size", "0.5", "--roi-zip")
    assert res.code == 0, res.err
    with open(out / "counts.csv") as f:
        counts = list(csv.DictReader(f))
    assert len(counts) == 2
    for row in counts:
        cid = row["id"]
        lab = tifffile.imread(out / f"{cid}_labels.tif")
        assert lab.dtype == np.uint16
        ids = np.unique(lab)
        ids = ids[ids > 0]
        assert int(row["count"]) == len(ids) > 0
        assert ids.tolist() == list(range(1, len(ids) + 1))
        with open(out / f"{cid}_cells.csv") as f:
            cells = list(csv.DictReader(f))
        assert [int(c["id"]) for c in cells] == ids.tolist()
        # pixel size from the command line reaches the table and the label TIFF
        c0 = cells[0]
        assert float(c0["area"]) == pytest.approx(int(c0["area_px"]) * 0.25, rel=1e-3)
        with tifffile.TiffFile(out / f"{cid}_labels.tif") as t:
            num, den = t.pages[0].tags["XResolution"].value
            assert den / num == pytest.approx(0.5) and t.imagej_metadata["unit"] == "um"
        import imageio.v3 as iio

        ov = iio.imread(out / f"{cid}_overlay.png")
        assert ov.shape == lab.shape + (3,)
        assert (out / f"{cid}_rois.zip").stat().st_size > 0
    assert not list(out.glob(".*tmp*"))  # no temporary leftovers


def test_count_3d_stack_and_evaluate(tmp_path):
    img = data_path("nuclei_stardist", "img3d.tif")
    out = tmp_path / "o3"
    res = run_cli("cells", "count", "-i", img, "-o", out, "--classical", "--pixel-size", "2,1,1")
    assert res.code == 0, res.err
    lab = tifffile.imread(out / "img3d_labels.tif")
    assert lab.shape == tifffile.imread(img).shape
    with open(out / "img3d_cells.csv") as f:
        header = next(csv.reader(f))
    assert {"centroid_z", "volume", "equivalent_diameter", "touches_border"} <= set(header)
    res = run_cli("cells", "evaluate", "--pred", out / "img3d_labels.tif", "--ref",
                  data_path("nuclei_stardist", "mask3d.tif"), "-o", tmp_path / "ev")
    assert res.code == 0, res.err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_images"] == 1 and 0 < m["mean"]["ap@0.5"] <= 1
    assert (tmp_path / "ev" / "metrics.csv").exists()


def test_count_stack_without_z_step_refuses_an_in_plane_pixel_size(tmp_path):
    """The real stack records no voxel size: one number would leave z at 1 pixel under a µm³ heading."""
    img = data_path("nuclei_stardist", "img3d.tif")
    out = tmp_path / "o"
    assert_clean_error(run_cli("cells", "count", "-i", img, "-o", out, "--classical", "--pixel-size", "0.5"),
                       "img3d.tif", "Z,Y,X")
    assert not out.exists()


def test_evaluate_reference_against_itself_and_folders(tmp_path):
    src = data_path("dsb2018_fluo", "labels")
    pred, ref = tmp_path / "pred", tmp_path / "ds" / "labels"  # --ref: a dataset folder with labels/
    pred.mkdir()
    ref.mkdir(parents=True)
    ids = _dsb_ids(3)
    for cid in ids:  # prediction files named like `count` names them
        (pred / f"{cid}_labels.tif").symlink_to(src / f"{cid}.tif")
        (ref / f"{cid}.tif").symlink_to(src / f"{cid}.tif")
    res = run_cli("cells", "evaluate", "--pred", pred, "--ref", ref.parent, "-o", tmp_path / "ev")
    assert res.code == 0, res.err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_images"] == 3
    assert m["mean"]["ap@0.9"] == 1.0 and m["pooled"]["relative_count_error"] == 0.0


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------------------

def test_rgb_without_channel(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    p = tmp_path / "rgb.png"
    iio.imwrite(p, rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert_clean_error(run_cli("cells", "count", "-i", p, "-o", out, "--classical"), "rgb.png", "--channel")
    assert not out.exists()
    assert run_cli("cells", "count", "-i", p, "-o", out, "--classical", "--channel", "1").code == 0


def test_empty_and_corrupt_images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", np.zeros((16, 16), np.uint8))
    (d / "b.tif").write_bytes(b"")
    out = tmp_path / "out"
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", out, "--classical"), "b.tif")
    assert not out.exists()  # validated before the first output
    e = tmp_path / "empty.tif"
    tifffile.imwrite(e, np.zeros((0, 5), np.uint16))
    assert_clean_error(run_cli("cells", "count", "-i", e, "-o", out, "--classical"), "empty.tif")
    assert not out.exists()


def test_bad_label_maps_in_evaluate(tmp_path):
    ref = tmp_path / "ref.tif"
    tifffile.imwrite(ref, np.array([[0, 1], [1, 2]], np.uint16))
    frac = tmp_path / "frac.tif"
    tifffile.imwrite(frac, np.array([[0, 1.5], [1, 2]], np.float32))
    out = tmp_path / "ev"
    assert_clean_error(run_cli("cells", "evaluate", "--pred", frac, "--ref", ref, "-o", out), "frac.tif",
                       "non-integer")
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((1, 2), np.uint16))
    assert_clean_error(run_cli("cells", "evaluate", "--pred", small, "--ref", ref, "-o", out), "small.tif",
                       "shape")
    assert not out.exists()


def test_train_size_mismatch_and_usage(tmp_path):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    tifffile.imwrite(ds / "images" / "a.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(ds / "labels" / "a.tif", np.zeros((32, 30), np.uint16))
    run = tmp_path / "run"
    assert_clean_error(run_cli("cells", "train", ds, "-o", run, "--max-minutes", "1"), "a.tif", "shape")
    assert not run.exists()
    assert_clean_error(run_cli("cells", "count", "-i", ds / "images", "-o", tmp_path / "o"), "--classical")
    assert_clean_error(run_cli("cells", "count", "-i", ds / "images", "-o", tmp_path / "o", "-m", tmp_path),
                       "model.json")


def test_count_with_known_diameter(tmp_path, two_images):
    """--diameter sizes the classical markers (a huge one merges nuclei); a non-positive one is refused."""
    counts = {}
    for d in ("8", "60"):
        out = tmp_path / f"out{d}"
        res = run_cli("cells", "count", "-i", two_images, "-o", out, "--classical", "--diameter", d)
        assert res.code == 0, res.err
        with open(out / "counts.csv") as f:
            counts[d] = sum(int(r["count"]) for r in csv.DictReader(f))
    assert counts["60"] < counts["8"]
    out = tmp_path / "bad"
    assert_clean_error(run_cli("cells", "count", "-i", two_images, "-o", out, "--classical", "--diameter", "0"),
                       "--diameter")
    assert not out.exists()


# ---- mixed dimensionality, options per mode, uint16 limit, staged outputs ------------------------------------

COUNT_HEADER = ["image", "id", "count", "count_not_touching_border", "mean_area", "median_area", "mean_volume",
                "median_volume", "unit", "method"]


def _mixed_folder(tmp_path):
    """One real 2D image (sorted first) and one real 3D stack."""
    d = tmp_path / "mixed"
    d.mkdir()
    cid = _dsb_ids(1)[0]
    (d / f"{cid}.png").symlink_to(data_path("dsb2018_fluo", "images", f"{cid}.png"))
    (d / "img3d.tif").symlink_to(data_path("nuclei_stardist", "img3d.tif"))
    return d, cid


def test_count_mixed_2d_3d_folder_one_table_and_rois_for_2d_only(tmp_path):
    """2D and 3D images in one folder: counts.csv has one header (areas and volumes in their own columns, blank
    where they do not apply); --roi-zip writes the 2D image's ROIs and says in one line that the stack got none."""
    d, cid = _mixed_folder(tmp_path)
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", d, "-o", out, "--classical", "--roi-zip")
    assert res.code == 0, res.err
    note = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(note) == 1 and "img3d.tif" in note[0] and "--roi-zip" in note[0]
    with open(out / "counts.csv") as f:
        reader = csv.DictReader(f)
        rows = {r["id"]: r for r in reader}
        assert reader.fieldnames == COUNT_HEADER
    flat, stack = rows[cid], rows["img3d"]
    assert int(flat["count"]) > 0 and int(stack["count"]) > 0
    assert float(flat["mean_area"]) > 0 and flat["mean_volume"] == flat["median_volume"] == ""
    assert float(stack["mean_volume"]) > 0 and stack["mean_area"] == stack["median_area"] == ""
    assert (out / f"{cid}_rois.zip").exists() and not (out / "img3d_rois.zip").exists()
    assert (out / "img3d_labels.tif").exists() and not list(out.glob(".*"))


def test_roi_zip_refused_when_every_image_is_3d(tmp_path):
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", data_path("nuclei_stardist", "img3d.tif"), "-o", out, "--classical",
                  "--roi-zip")
    assert_clean_error(res, "img3d.tif", "--roi-zip", "2D")
    assert not out.exists()


@pytest.mark.parametrize("opts", [["--tta"], ["--threads", "1"], ["--tta", "--threads", "2"],
                                  ["--no-rescale"], ["--merge-boundary", "0.3"]])
def test_classical_refuses_model_only_options(tmp_path, two_images, opts):
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", two_images, "-o", out, "--classical", *opts)
    assert_clean_error(res, *[o for o in opts if o.startswith("--")], "--classical")
    assert not out.exists()


def test_model_refuses_the_classical_threshold(tmp_path, two_images):
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", two_images, "-o", out, "-m", tmp_path, "--threshold", "local")
    assert_clean_error(res, "--threshold", "--classical")
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2D cell model trained for one step on three real images (the weights are irrelevant here)."""
    from conftest import linked_cell_dataset
    from medseg.cells.train import CellTrainConfig, train_cells

    root = tmp_path_factory.mktemp("tiny_cells")
    linked_cell_dataset(root / "ds", 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=1, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          tune_fraction=0)
    return train_cells(root / "ds", root / "run", cfg, progress=False)


def test_2d_model_refuses_a_3d_image_before_writing(tmp_path, tiny_run):
    """The 2D image sorts first: the stack must be refused up front, not after the 2D outputs were written."""
    d, _ = _mixed_folder(tmp_path)
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", d, "-o", out, "-m", tiny_run, "--threads", "1")
    assert_clean_error(res, "img3d.tif", "3D", "model is 2D")
    assert not out.exists()


@pytest.mark.parametrize("given", ["model.pt", "model.json", ""])
def test_count_accepts_the_run_folder_its_json_or_its_weights(tmp_path, tiny_run, given):
    cid = _dsb_ids(1)[0]
    img = data_path("dsb2018_fluo", "images", f"{cid}.png")
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", img, "-o", out, "-m", tiny_run / given if given else tiny_run,
                  "--threads", "1")
    assert res.code == 0, res.err
    assert (out / f"{cid}_labels.tif").exists() and (out / "counts.csv").exists()


@pytest.mark.parametrize("rescale", [True, False])
def test_count_resizes_images_outside_the_models_size_range_unless_told_not_to(tmp_path, tiny_run, monkeypatch,
                                                                              rescale):
    """A native-scale model enlarges an image whose nuclei are smaller than any it was trained on (here a recorded
    range far above them); --no-rescale predicts at the image's own size. The labels have the image's shape."""
    import shutil

    import tifffile

    from medseg.cells.segmenters import CellModel

    run = shutil.copytree(tiny_run, tmp_path / "run")
    meta = json.loads((run / "model.json").read_text())
    assert len(meta["diameter_range"]) == len(meta["diameter_range_area"]) == 2  # recorded at training
    assert meta["diameter_measure"] == "both"
    meta["diameter_range"] = meta["diameter_range_area"] = [150.0, 200.0]
    (run / "model.json").write_text(json.dumps(meta))
    seen, predict = [], CellModel._predict
    monkeypatch.setattr(CellModel, "_predict", lambda self, x: (seen.append(x.shape), predict(self, x))[1])
    cid = _dsb_ids(1)[0]
    img = data_path("dsb2018_fluo", "images", f"{cid}.png")
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", img, "-o", out, "-m", run, "--threads", "1",
                  *(() if rescale else ("--no-rescale",)))
    assert res.code == 0, res.err
    shape = tifffile.imread(out / f"{cid}_labels.tif").shape
    if rescale:
        assert max(s[0] for s in seen) > shape[0]
    else:
        assert set(seen) == {shape}


def test_more_labels_than_uint16_is_refused_and_nothing_written(tmp_path, monkeypatch):
    """An image with more than 65,535 objects (here faked: one per pixel) exits 2 naming it, after an earlier image
    was already segmented, and no output of either is left; large but few ids are renumbered into uint16."""
    from medseg.cells.count import ClassicalSegmenter

    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a_small.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    tifffile.imwrite(d / "b_huge.tif", rng.integers(0, 255, (300, 300), dtype=np.uint8))
    tifffile.imwrite(d / "c_big_ids.tif", rng.integers(0, 255, (40, 40), dtype=np.uint8))

    def fake(self, image, spacing=None):
        if image.shape == (300, 300):  # 90,000 objects
            return np.arange(1, image.size + 1, dtype=np.uint32).reshape(image.shape)
        lab = np.zeros(image.shape, np.uint32)
        lab[2:6, 2:6], lab[10:14, 10:14] = 70000, 70001
        return lab

    monkeypatch.setattr(ClassicalSegmenter, "segment", fake)
    out = tmp_path / "out"
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", out, "--classical"), "b_huge.tif", "90000",
                       "65,535")
    assert not out.exists()
    (d / "b_huge.tif").unlink()
    assert run_cli("cells", "count", "-i", d, "-o", out, "--classical").code == 0
    lab = tifffile.imread(out / "c_big_ids_labels.tif")
    assert lab.dtype == np.uint16 and sorted(np.unique(lab).tolist()) == [0, 1, 2]


def test_output_that_would_replace_an_input_is_refused(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(1)
    tifffile.imwrite(d / "a.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    tifffile.imwrite(d / "a_labels.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    before = (d / "a_labels.tif").read_bytes()
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", d, "--classical"), "a_labels.tif", "input")
    assert (d / "a_labels.tif").read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["a.tif",
                                                                                                 "a_labels.tif"]


def test_evaluate_needs_an_output_folder_and_names_count_errors_by_sign(tmp_path):
    """-o is required (as for medseg evaluate); relative_count_error is signed and abs_relative_count_error
    absolute, per image, in the means and pooled."""
    ref = np.zeros((8, 16), np.uint16)
    ref[1:3, 1:3], ref[1:3, 5:7], ref[5:7, 1:3], ref[5:7, 5:7] = 1, 2, 3, 4
    pred = np.where(ref <= 1, ref, 0).astype(np.uint16)  # one of four found
    tifffile.imwrite(tmp_path / "ref.tif", ref)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    assert_clean_error(run_cli("cells", "evaluate", "--pred", tmp_path / "pred.tif", "--ref", tmp_path / "ref.tif"),
                       "--out")
    out = tmp_path / "ev"
    res = run_cli("cells", "evaluate", "--pred", tmp_path / "pred.tif", "--ref", tmp_path / "ref.tif", "-o", out)
    assert res.code == 0, res.err
    m = json.loads((out / "metrics.json").read_text())
    for part in (m["per_image"][0], m["mean"], m["pooled"]):
        assert part["relative_count_error"] == pytest.approx(-0.75)
        assert part["abs_relative_count_error"] == pytest.approx(0.75)
    with open(out / "metrics.csv") as f:
        assert {"relative_count_error", "abs_relative_count_error"} <= set(next(csv.reader(f)))


def _two_random_images(d):
    d.mkdir()
    rng = np.random.default_rng(2)
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(d / name, rng.integers(0, 255, (32, 32), dtype=np.uint8))
    return d


def test_output_folder_that_is_a_file_or_holds_an_outputs_name_is_refused(tmp_path):
    """-o a file (or a folder below one), or a folder already named like an output: exit 2, one line, before
    any segmenting, and nothing written or moved."""
    d = _two_random_images(tmp_path / "in")
    taken = tmp_path / "file.txt"
    taken.write_text("x")
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", taken, "--classical"), "file.txt", "is a file")
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", taken / "sub", "--classical"), "file.txt",
                       "inside a file")
    assert taken.read_text() == "x"
    out = tmp_path / "out"
    (out / "b_cells.csv").mkdir(parents=True)
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", out, "--classical"), "b_cells.csv", "folder")
    assert [p.name for p in out.iterdir()] == ["b_cells.csv"] and not any((out / "b_cells.csv").iterdir())


def test_folder_made_under_an_outputs_name_while_counting_stops_the_move(tmp_path, monkeypatch):
    """A folder that appears under an output's name while the images are segmented: exit 2 before anything is
    moved; a rename that fails anyway is an InputError naming the output, not a traceback."""
    import errno
    import os
    from pathlib import Path

    from medseg.cells.count import ClassicalSegmenter

    d, out = _two_random_images(tmp_path / "in"), tmp_path / "out"
    real = ClassicalSegmenter.segment

    def segment_then_block(self, image, spacing=None):
        (out / "a_overlay.png").mkdir(exist_ok=True)
        return real(self, image, spacing)

    monkeypatch.setattr(ClassicalSegmenter, "segment", segment_then_block)
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", out, "--classical"), "a_overlay.png", "folder")
    assert [p.name for p in out.iterdir()] == ["a_overlay.png"]
    monkeypatch.setattr(ClassicalSegmenter, "segment", real)
    (out / "a_overlay.png").rmdir()
    real_replace = os.replace

    def refuse_counts(src, dst):
        if Path(dst) == out / "counts.csv":
            raise OSError(errno.EACCES, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_counts)
    assert_clean_error(run_cli("cells", "count", "-i", d, "-o", out, "--classical"), "counts.csv",
                       "cannot move", "Permission denied")
    assert not (out / "counts.csv").exists() and not list(out.glob(".*tmp*"))


@pytest.mark.parametrize("budget, reads", [(None, 3), (0, 6)])
def test_count_decodes_each_image_once_when_the_checked_images_fit(tmp_path, monkeypatch, budget, reads):
    """The pre-check's decoded images are reused for counting (3 reads for 3 images); with no room to keep them
    each is read again, and the outputs are the same either way."""
    import medseg.cells.count as count
    import medseg.cells.data as data

    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    d.mkdir()
    for name in ("a", "b", "c"):
        img = np.zeros((48, 48), np.uint8)
        for y, x in rng.integers(6, 42, (4, 2)):
            img[y - 4:y + 4, x - 4:x + 4] = 200
        tifffile.imwrite(d / f"{name}.tif", img)
    ref = count.count_cells(d, tmp_path / "ref", classical=True, progress=False)  # default budget, not watched
    calls = []
    real = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    if budget is not None:
        monkeypatch.setattr(count, "KEEP_CHECKED_BYTES", budget)
    rows = count.count_cells(d, tmp_path / "out", classical=True, progress=False)
    assert len(calls) == reads and sorted({c.name for c in calls}) == ["a.tif", "b.tif", "c.tif"]
    assert [r["count"] for r in rows] == [r["count"] for r in ref] and all(r["count"] > 0 for r in rows)
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f"{name}_labels.tif"),
                                      tifffile.imread(tmp_path / "ref" / f"{name}_labels.tif"))


def test_truncated_tiff_is_one_line_although_tifffile_logs(tmp_path, caplog):
    """A microscopy TIFF cut short (the real 3D stack, and one medseg wrote): tifffile logs what it makes of it
    before failing; the commands still answer with one line naming the file, exit 2, nothing written."""
    import logging

    from _badinputs import listing, truncated
    from medseg.errors import InputError
    from medseg.io.microscopy import read_microscopy

    stack = data_path("nuclei_stardist", "img3d.tif")
    ours = tmp_path / "ours.tif"
    tifffile.imwrite(ours, tifffile.imread(stack), imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    for src in (stack, ours):
        bad = truncated(src, tmp_path / f"cut_{src.stem}.tif", 0.4)
        with caplog.at_level(logging.WARNING, logger="tifffile"), pytest.raises(InputError):
            read_microscopy(bad)
        assert any(r.name == "tifffile" for r in caplog.records), "the file no longer makes tifffile log"
        caplog.clear()
        assert_clean_error(run_cli("info", str(bad)), bad.name)
        out = tmp_path / f"out_{src.stem}"
        assert_clean_error(run_cli("cells", "count", "-i", str(bad), "-o", str(out), "--classical"), bad.name)
        assert not listing(out)


# ---- evaluate: every reference needs exactly one prediction, every prediction a reference ---------------------

def _label_folder(d, names):
    """A folder of small synthetic label maps named ``names`` (one object each)."""
    d.mkdir(exist_ok=True)
    lab = np.zeros((16, 16), np.uint16)
    lab[4:10, 4:10] = 1
    for n in names:
        tifffile.imwrite(d / n, lab)
    return d


@pytest.mark.parametrize("refs, preds, needles", [
    (["a.tif", "b.tif", "c.tif"], ["c_labels.tif"], ["ref", "no prediction for 2 cases", "'a', 'b'"]),
    (["a.tif", "b.tif"], ["a_labels.tif"], ["b.tif", "no prediction for case 'b'"]),
    (["a.tif"], ["a_labels.tif", "zzz_labels.tif"], ["zzz_labels.tif", "no reference for case 'zzz'"]),
    (["a.tif", "b.tif"], ["a.tif", "a_labels.tif", "b.tif"],
     ["pred", "two predictions for case 'a'", "a.tif", "a_labels.tif"]),
])
def test_evaluate_refuses_folders_whose_cases_do_not_match(tmp_path, refs, preds, needles):
    """Scores over the intersection of the two folders would look complete while leaving images out (or score
    the wrong one of two files): exit 2, one line naming the case(s), nothing written."""
    ref, pred, out = _label_folder(tmp_path / "ref", refs), _label_folder(tmp_path / "pred", preds), tmp_path / "ev"
    assert_clean_error(run_cli("cells", "evaluate", "--pred", pred, "--ref", ref, "-o", out), *needles)
    assert not out.exists()


def test_evaluate_takes_a_count_output_folder_as_it_is(tmp_path, two_images):
    """count's overlays (<id>_overlay.png) beside its label maps are not predictions without a reference."""
    out = tmp_path / "out"
    assert run_cli("cells", "count", "-i", two_images, "-o", out, "--classical").code == 0
    ref = tmp_path / "ref"
    ref.mkdir()
    for p in two_images.iterdir():
        (ref / f"{p.stem}.tif").symlink_to(data_path("dsb2018_fluo", "labels", f"{p.stem}.tif"))
    res = run_cli("cells", "evaluate", "--pred", out, "--ref", ref, "-o", tmp_path / "ev")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n_images"] == 2


# ---- NaN or infinite pixels; bad validation images ----------------------------------------------------------

def _nan_image(path, n_nan=3):
    """A float32 TIFF of random intensities with ``n_nan`` NaN pixels and one infinite one."""
    img = np.random.default_rng(0).random((48, 48)).astype(np.float32)
    img.flat[:n_nan] = np.nan
    img[-1, -1] = np.inf
    tifffile.imwrite(path, img)
    return path


def test_count_refuses_nan_pixels_classical(tmp_path):
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", _nan_image(tmp_path / "nan.tif"), "-o", out, "--classical")
    assert_clean_error(res, "nan.tif", "image has 4 NaN or infinite pixels")
    assert not out.exists()


def test_count_refuses_nan_pixels_with_a_model(tmp_path, tiny_run):
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", _nan_image(tmp_path / "nan.tif"), "-o", out, "-m", tiny_run,
                  "--threads", "1")
    assert_clean_error(res, "nan.tif", "image has 4 NaN or infinite pixels")
    assert not out.exists()


def _train_args(ds, run):
    return ("cells", "train", ds, "-o", run, "--patch", "64", "--batch-size", "1", "--max-steps", "1",
            "--tune-fraction", "0", "--threads", "1")


def test_train_refuses_a_training_image_with_nan_pixels(tmp_path):
    from conftest import linked_cell_dataset

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    (ds / "images" / f"{ids[0]}.png").unlink()
    bad = _nan_image(ds / "images" / f"{ids[0]}.tif")
    (ds / "labels" / f"{ids[0]}.tif").unlink()
    tifffile.imwrite(ds / "labels" / f"{ids[0]}.tif", np.zeros((48, 48), np.uint16))
    run = tmp_path / "run"
    assert_clean_error(run_cli(*_train_args(ds, run)), bad.name, "NaN or infinite")
    assert not run.exists()


@pytest.mark.parametrize("damage", ["truncated", "stack"])
def test_train_checks_the_validation_images_before_training(tmp_path, damage):
    """Training never reads the validation split: a truncated PNG, or a 3D stack beside a 2D label map, must still
    be refused before training, with no run folder left."""
    from _badinputs import truncated
    from conftest import linked_cell_dataset

    ds = tmp_path / "ds"
    val = linked_cell_dataset(ds, 3)[-1]  # the last image is the validation split
    src = ds / "images" / f"{val}.png"
    real = src.resolve()
    src.unlink()
    if damage == "truncated":
        bad = truncated(real, src, 1 / 3)
    else:
        import imageio.v3 as iio

        bad = ds / "images" / f"{val}.tif"
        plane = iio.imread(real)[..., 0]
        tifffile.imwrite(bad, np.stack([plane, plane // 2, plane // 3]), imagej=True, metadata={"axes": "ZYX"})
    run = tmp_path / "run"
    assert_clean_error(run_cli(*_train_args(ds, run)), val, "shape" if damage == "stack" else "truncated")
    assert not run.exists()
