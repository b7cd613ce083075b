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


def test_evaluate_reference_against_itself_and_folders(tmp_path):
    src = data_path("dsb2018_fluo", "labels")
    pred = tmp_path / "pred"
    pred.mkdir()
    ids = _dsb_ids(3)
    for cid in ids:  # prediction files named like `count` names them
        (pred / f"{cid}_labels.tif").symlink_to(src / f"{cid}.tif")
    res = run_cli("cells", "evaluate", "--pred", pred, "--ref", data_path("dsb2018_fluo"), "-o", tmp_path / "ev")
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
