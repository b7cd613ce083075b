"""Bounded runs of the benchmark scripts' modes, so that a refactor cannot break them silently (the presets mode of
benchmarks/inference.py once did). They check that each mode runs and reports sane numbers, not the numbers
themselves (those are in benchmarks/RESULTS.md, from full runs)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile

from conftest import data_path, linked_cell_dataset
from test_train import tiny_plan


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.splitlines()
            if ln.startswith(f"| {first_cell}")]


def test_inference_speed_mode_tiny(capsys):
    """speed: MONAI, medseg and medseg fp32 workers on a crop of the real CT; all succeed and agree."""
    data_path("totalseg_example", "example_ct.nii.gz")
    from benchmarks.inference import main

    main(["speed", "--net", "tiny", "--crop", "48", "--patch", "32", "--repeats", "1", "--threads", "1",
          "--variants", "monai", "medseg-fp32", "medseg"])
    out = capsys.readouterr().out
    assert "failed" not in out
    rows = {r[0]: r for r in _table_rows(out, "m")}
    assert set(rows) == {"monai", "medseg-fp32", "medseg"}
    assert float(rows["monai"][3]) == 1.0  # the ratio column is relative to MONAI
    # fp32 blending of the same weights: the same labels as MONAI (up to ties)
    assert all(float(d) > 0.99 for d in rows["medseg-fp32"][5].split(", ") if d)


def test_inference_presets_mode_tiny(tmp_path, capsys):
    """presets: a 1-epoch model on 4 real hippocampus cases; every preset row is filled and MONAI agrees with itself."""
    from benchmarks.inference import main
    from medseg.plan.plan import Plan
    from medseg.train.trainer import train

    plan_path = tiny_plan(tmp_path, max_epochs=1)
    plan = Plan.from_yaml(plan_path)
    train(plan, tmp_path / "run", progress=False)
    main(["presets", "-m", str(tmp_path / "run"), "--data", str(tmp_path / "ds"), "--num-cases", "2",
          "--threads", "1"])
    out = capsys.readouterr().out
    rows = _table_rows(out, "m")
    assert len(rows) >= 6 and rows[0][0] == "monai"
    assert float(rows[0][-1]) == 1.0
    for r in rows:
        assert float(r[4]) > 0  # seconds per case
        assert all(0.0 <= float(v) <= 1.0 for v in r[5:])
    # the hippocampus benchmark's post-processing check on the same run: both variants score the validation fold
    import json

    from benchmarks.hippocampus import main as hippo

    assert hippo(["--out", str(tmp_path / "run"), "--data", str(tmp_path / "ds"), "--postprocess-check",
                  "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    val = json.loads((tmp_path / "run" / "splits.json").read_text())[0]["val"]
    for name in ("plain", "largest_component"):
        assert res[name]["cases"] == len(val) and 0.0 <= res[name]["mean"] <= 1.0
        worst = res[name]["worst_cases"]
        assert set(worst) <= set(val) and len(worst) == min(5, len(val))
        assert min(worst.values()) <= res[name]["median_case"] + 1e-4  # worst values are rounded to 4 places
    # where the Dice is lost, on the same run: every scale row and every wrong voxel accounted for
    from benchmarks.hippocampus_errors import main as errors

    assert errors(["--run", str(tmp_path / "run"), "--data", str(tmp_path / "ds"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    means = [float(m) for m in re.findall(r"s = \S+\s+\S+\s+\S+\s+(\S+)", out)]
    assert len(means) == 7 and all(0.0 <= m <= 1.0 for m in means)
    total = int(re.search(r"wrong voxels: (\d+)", out).group(1))
    assert sum(int(n) for n in re.findall(r"^  (?:swap|outline|far) +(\d+)", out, re.M)) == total
    # --join: a second network on the same split, each scored, then their ensemble
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "splits.json").write_text((tmp_path / "run" / "splits.json").read_text())
    plan.seed = 1
    train(plan, tmp_path / "run2", progress=False)
    assert hippo(["--out", str(tmp_path / "joined"), "--data", str(tmp_path / "ds"), "--join", str(tmp_path / "run"),
                  str(tmp_path / "run2"), "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert list(res) == [str(tmp_path / "run"), str(tmp_path / "run2"), "ensemble of the first 2"]
    assert all(r["cases"] == len(val) and 0.0 <= r["mean"] <= 1.0 for r in res.values())
    assert (tmp_path / "joined" / "ensemble_2" / "model.pt").is_file()


def test_cells_benchmark_bounded(tmp_path, capsys):
    """benchmarks/cells.py: train a few seconds, score, then re-score the run with given thresholds/markers."""
    from benchmarks.cells import main

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    common = ["--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads", "1",
              "--patch", "64", "--base-filters", "4", "--batch-size", "2"]
    assert main(["--minutes", "2", "--steps", "3", "--tune-fraction", "0", "--lr", "0.002", "--weight-decay", "0.01",
                 *common]) == 0
    first = capsys.readouterr().out
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["steps"] == 3  # --steps ends it, not minutes
    assert (meta["config"]["lr"], meta["config"]["weight_decay"]) == (0.002, 0.01)
    assert len(_table_rows(first, "learned")) == 1 and "markers: boundary" in first
    for markers in ("boundary", "distance"):
        assert main(["--skip-train", "--thresholds", f"0.5,0.5,{markers}", "--json", str(tmp_path / f"{markers}.json"),
                     *common]) == 0
        out = capsys.readouterr().out
        assert f"markers: {markers}" in out
        row = _table_rows(out, "learned")[0]
        assert 0.0 <= float(row[2]) <= 1.0 and re.fullmatch(r"[\d.]+%", row[8])
    # per-image rows (for benchmarks/paired.py): one per scored image, and their mean is the table's
    doc = json.loads((tmp_path / "distance.json").read_text())
    rows = doc["per_image"]["learned"]
    assert len(rows) == doc["results"]["learned"]["n_images"] == len({r["image"] for r in rows})
    assert np.isclose(np.mean([r["ap@0.5"] for r in rows]), doc["results"]["learned"]["ap@0.5"])
    from benchmarks.paired import main as paired

    assert paired([str(tmp_path / "boundary.json"), str(tmp_path / "distance.json")]) == 0
    out = capsys.readouterr().out
    assert out.count(f"{len(rows)} paired") == 2 and "abs_relative_count_error" in out


def test_cells_benchmark_magnify_and_rescale_options(tmp_path, capsys):
    """--magnify F scores images and labels resized by F; the run's size range (computed from its training images
    for runs that predate recording it) and the images it resized are recorded; --no-rescale turns it off."""
    from benchmarks.cells import main
    from medseg.cells.scale import diameter_range

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    run = tmp_path / "run"
    common = ["--data", str(ds), "--run", str(run), "--learned-only", "--threads", "1"]
    assert main(["--minutes", "2", "--steps", "1", "--tune-fraction", "0", "--patch", "64", "--base-filters", "4",
                 *common]) == 0
    meta = json.loads((run / "model.json").read_text())
    recorded = meta.pop("diameter_range")
    recorded_area = meta.pop("diameter_range_area")
    assert meta.pop("diameter_measure") == "both"
    (run / "model.json").write_text(json.dumps(meta))  # as a run from before session 27
    train_maps = [tifffile.imread(ds / "labels" / f"{c}.tif") for c in meta["split"]["train"]]
    assert diameter_range(train_maps) == pytest.approx(recorded, abs=0.01)
    assert diameter_range(train_maps, weighting="area") == pytest.approx(recorded_area, abs=0.01)
    assert main(["--skip-train", "--magnify", "2", "--json", str(tmp_path / "on.json"), *common]) == 0
    info = json.loads((tmp_path / "on.json").read_text())["info"]
    assert "magnified 2x" in info["eval_set"] and "diameter_range_computed" in info
    assert info["rescale"]["on"] and info["rescale"]["measure"] == "count"  # measured as such runs measured
    assert info["rescale"]["diameter_range"] == pytest.approx(recorded, abs=0.01)
    assert info["rescale"]["diameter_range_area"] is None
    assert main(["--skip-train", "--magnify", "2", "--diameter-measure", "both", "--json",
                 str(tmp_path / "both.json"), *common]) == 0
    info = json.loads((tmp_path / "both.json").read_text())["info"]
    assert info["rescale"]["measure"] == "both"
    assert info["rescale"]["diameter_range_area"] == pytest.approx(recorded_area, abs=0.01)
    assert isinstance(info["rescale"]["images_resized"], dict)
    assert main(["--skip-train", "--magnify", "0.5", "--no-rescale", "--json", str(tmp_path / "off.json"),
                 *common]) == 0
    doc = json.loads((tmp_path / "off.json").read_text())
    assert doc["info"]["rescale"] == {"on": False, "diameter_range": None, "diameter_range_area": None,
                                      "measure": "count", "images_resized": {}}
    # the reference was shrunk with the image: its nuclei counted there
    from medseg.cells.scale import resize_labels, scaled_shape

    rows = doc["per_image"]["learned"]
    assert rows
    for r in rows:
        lab = tifffile.imread(ds / "labels" / f"{r['image']}.tif")
        assert r["n_ref"] == len(np.unique(resize_labels(lab, scaled_shape(lab.shape, 0.5)))) - 1


def test_cells_size_filter_drops_only_relatively_small_objects():
    from benchmarks.cells_size_filter import drop_relatively_small, weighted_median_area

    lab = np.zeros((60, 60), int)
    lab[5:35, 5:35], lab[35:58, 35:58] = 1, 2  # two nuclei (900 and 529 px)
    for i in range(10):
        lab[1 + 3 * i, 40:42] = 3 + i  # ten 2-px fragments
    assert weighted_median_area(np.bincount(lab.ravel())[1:]) == 900
    kept = drop_relatively_small(lab, 0.05)
    assert set(np.unique(kept)) == {0, 1, 2} and np.array_equal(kept[lab <= 2], lab[lab <= 2])
    assert drop_relatively_small(lab, 0) is lab
    assert set(np.unique(drop_relatively_small(lab, 0.7))) == {0, 1}  # 529 < 0.7 x 900


def test_cells_size_filter_benchmark_runs_and_pools(tmp_path, capsys):
    from benchmarks.cells import main as bench
    from benchmarks.cells_size_filter import RATIOS, main

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    run = tmp_path / "run"
    assert bench(["--data", str(ds), "--run", str(run), "--learned-only", "--threads", "1", "--minutes", "2",
                  "--steps", "1", "--tune-fraction", "0", "--patch", "64", "--base-filters", "4"]) == 0
    out = tmp_path / "sf.json"
    assert main(["--run", str(run), "--data", str(ds), "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    val = json.loads((run / "model.json").read_text())["split"]["val"]
    assert sorted(r["image"] for r in rows) == sorted(val) and all(r["set"] == "val" for r in rows)
    # r = 0 is the model as it counts: never more objects after dropping some
    for r in rows:
        assert all(r["scores"][str(k)]["n_pred"] <= r["scores"]["0.0"]["n_pred"] for k in RATIOS)
    capsys.readouterr()
    assert main(["--pool", str(out), str(out)]) == 0
    assert "| 0.05 |" in capsys.readouterr().out

    # the merge grid on the same run: its "no merging" and default settings are the size filter's r = 0 without and
    # with the model's default merging
    from benchmarks.cells_merge import GRID, main as merge_main

    merged, unmerged = tmp_path / "mg.json", tmp_path / "sf0.json"
    assert merge_main(["--run", str(run), "--data", str(ds), "--threads", "1", "--json", str(merged)]) == 0
    assert main(["--run", str(run), "--data", str(ds), "--threads", "1", "--merge-boundary", "0",
                 "--json", str(unmerged)]) == 0
    grid = {r["image"]: r["scores"] for r in json.loads(merged.read_text())["rows"]}
    assert sorted(grid) == sorted(val) and all(len(g) == len(GRID) for g in grid.values())
    for r in json.loads(unmerged.read_text())["rows"]:
        assert grid[r["image"]]["0,0"] == r["scores"]["0.0"]
    for r in rows:
        assert grid[r["image"]]["0.35,0.25"] == r["scores"]["0.0"]
    assert merge_main(["--pool", str(merged)]) == 0
    assert "| 0.35,0.25 |" in capsys.readouterr().out


def test_cells_tune_rule_benchmark_and_retune_by_plateau(tmp_path, capsys):
    """benchmarks/cells_tune_rule.py scores every grid setting on the run's tuning images (and only those) and
    compares the selection rules by split halves; cells.py --tune-selection re-chooses the run's thresholds."""
    from benchmarks.cells import main as bench
    from benchmarks.cells_tune_rule import main
    from medseg.cells.tune import DISTANCE_SEED_GRID, SEED_GRID, THRESHOLD_GRID, VOTE_GRID

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 7)
    run = tmp_path / "run"
    assert bench(["--data", str(ds), "--run", str(run), "--learned-only", "--threads", "1", "--minutes", "2",
                  "--steps", "1", "--tune-fraction", "0.4", "--patch", "64", "--base-filters", "4"]) == 0
    tune = json.loads((run / "model.json").read_text())["split"]["tune"]
    assert len(tune) >= 2
    out = tmp_path / "rule.json"
    capsys.readouterr()
    assert main(["--run", str(run), "--data", str(ds), "--threads", "1", "--repeats", "10", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert sorted(doc["images"]) == sorted(tune)
    n_grid = len(THRESHOLD_GRID) * (len(SEED_GRID) + len(DISTANCE_SEED_GRID) + len(VOTE_GRID))
    assert len(doc["rows"]) == n_grid and all(len(r["ap"]) == len(tune) for r in doc["rows"])
    assert all(0 <= a <= 1 for r in doc["rows"] for a in r["ap"])
    capsys.readouterr()
    (tmp_path / "rule2.json").write_text(out.read_text())
    assert main(["--pool", str(out), str(tmp_path / "rule2.json"), "--repeats", "10"]) == 0
    text = capsys.readouterr().out
    assert len(_table_rows(text, "rule")) == 2 and "mean over 2 runs" in text
    assert bench(["--skip-train", "--data", str(ds), "--run", str(run), "--learned-only", "--threads", "1",
                  "--tune-selection", "plateau", "--json", str(tmp_path / "p.json")]) == 0
    info = json.loads((tmp_path / "p.json").read_text())["info"]
    assert info["retuned"]["selection"] == "plateau" and info["retuned"]["n_images"] == len(tune)
    assert info["thresholds_used"][:2] == [info["retuned"]["threshold"], info["retuned"]["seed_threshold"]]


def test_cells_benchmark_scores_the_fold_it_trained_on(tmp_path, capsys):
    """--fold K: the run's validation images are fold K's, and the benchmark scores exactly those."""
    from benchmarks.cells import main
    from medseg.cells.splits import fold_of

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 8)
    (ds / "split.json").unlink()
    k = fold_of(ids[0], 2)
    assert main(["--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads", "1", "--patch",
                 "64", "--base-filters", "4", "--steps", "2", "--tune-fraction", "0", "--fold", str(k), "--folds",
                 "2", "--json", str(tmp_path / "f.json")]) == 0
    capsys.readouterr()
    val = sorted(i for i in ids if fold_of(i, 2) == k)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["split"]["val"] == val
    doc = json.loads((tmp_path / "f.json").read_text())
    assert sorted(r["image"] for r in doc["per_image"]["learned"]) == val
    assert doc["info"]["eval_set"].startswith(f"fold {k} of a 2-fold hash split")
    # re-scoring the run without --fold scores its fold too (not the default split, which may hold its training
    # images); another fold is refused
    assert main(["--skip-train", "--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads",
                 "1", "--json", str(tmp_path / "g.json")]) == 0
    assert sorted(r["image"] for r in json.loads((tmp_path / "g.json").read_text())["per_image"]["learned"]) == val
    with pytest.raises(SystemExit):
        main(["--skip-train", "--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--fold",
              str(1 - k), "--folds", "2"])
    assert "was trained on fold" in capsys.readouterr().err
    # a fold run from before model.json recorded its fold: scored on the validation images its split recorded
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    del meta["config"]["fold"], meta["config"]["folds"]
    (tmp_path / "run" / "model.json").write_text(json.dumps(meta))
    assert main(["--skip-train", "--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads",
                 "1", "--json", str(tmp_path / "h.json")]) == 0
    doc = json.loads((tmp_path / "h.json").read_text())
    assert sorted(r["image"] for r in doc["per_image"]["learned"]) == val
    assert doc["info"]["eval_set"].startswith("the run's own validation images")


def test_cells_train_fraction_shares_are_nested_and_keep_validation(tmp_path, capsys):
    """--train-fraction: smaller shares are subsets of larger ones, the validation (and tuning) images stay, and the
    run trains on the share."""
    from benchmarks.cells import main, subset_dataset
    from medseg.cells.config import CellTrainConfig

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 9)  # the last is validation
    cfg = CellTrainConfig(tune_fraction=0)
    shares = {f: subset_dataset(ds, tmp_path / f"s{f}", f, cfg)[2] for f in (0.25, 0.5, 1.0)}
    assert [len(v) for v in shares.values()] == [2, 4, 8] and shares[1.0] == sorted(ids[:-1])
    assert set(shares[0.25]) <= set(shares[0.5]) <= set(shares[1.0])
    assert json.loads((tmp_path / "s0.5" / "split.json").read_text())["val"] == ids[-1:]
    assert main(["--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads", "1", "--patch",
                 "64", "--base-filters", "4", "--steps", "1", "--tune-fraction", "0", "--train-fraction", "0.5"]) == 0
    capsys.readouterr()
    split = json.loads((tmp_path / "run" / "model.json").read_text())["split"]
    assert split["train"] == shares[0.5] and split["val"] == ids[-1:]


def test_pooled_folds_by_hand(tmp_path):
    """benchmarks/cells.py --pool: means over the images of all runs, the count error pooled over nuclei
    ((10 + 18) / (10 + 20) - 1), and an image scored in two runs refused."""
    from benchmarks.cells import pooled

    def doc(rows):
        return json.dumps({"per_image": {"learned": [
            {"image": i, "n_ref": r, "n_pred": p, "ap@0.5": a, "ap@0.7": a / 2, "f1@0.5": a,
             "abs_relative_count_error": abs(p - r) / r} for i, r, p, a in rows]}})

    (tmp_path / "f0.json").write_text(doc([("a", 10, 10, 0.9)]))
    (tmp_path / "f1.json").write_text(doc([("b", 20, 18, 0.6), ("c", 10, 10, 0.6)]))
    p = pooled([tmp_path / "f0.json", tmp_path / "f1.json"])
    assert p["n_images"] == 3 and (p["n_ref"], p["n_pred"]) == (40, 38)
    assert np.isclose(p["mean"]["ap@0.5"], 0.7) and np.isclose(p["mean"]["abs_relative_count_error"], 0.1 / 3)
    assert np.isclose(p["total_count_error"], -0.05)
    lo, hi = p["ci95"]["ap@0.5"]
    assert 0.6 - 1e-9 <= lo <= 0.7 <= hi <= 0.9 + 1e-9
    with pytest.raises(SystemExit, match="two of the pooled runs"):
        pooled([tmp_path / "f1.json", tmp_path / "f1.json"])
    # a pooled summary keeps its rows, so two pooled cross-validations pair image by image
    from benchmarks.paired import per_item

    (tmp_path / "f1b.json").write_text(doc([("b", 20, 20, 0.9), ("c", 10, 10, 0.6)]))
    q = pooled([tmp_path / "f0.json", tmp_path / "f1b.json"])
    a, b = (per_item(json.loads(json.dumps(x)), "learned", None, "ap@0.5") for x in (p, q))
    assert a == {"a": 0.9, "b": 0.6, "c": 0.6} and b == {"a": 0.9, "b": 0.9, "c": 0.6}


def test_paired_difference_by_hand():
    """Differences b - a of 0.1, 0.1, 0.4: mean 0.2; every resample's mean lies in [0.1, 0.4]; runs that share
    no item are refused; NaN pairs are dropped."""
    from benchmarks.paired import paired_difference

    r = paired_difference({"x": 0.5, "y": 0.5, "z": 0.2, "w": 0.3}, {"x": 0.6, "y": 0.6, "z": 0.6, "w": np.nan})
    assert r["n"] == 3 and np.isclose(r["difference"], 0.2) and (r["b_higher"], r["b_lower"]) == (3, 0)
    lo, hi = r["ci95"]
    assert 0.1 - 1e-9 <= lo < 0.2 < hi <= 0.4 + 1e-9
    swapped = paired_difference({"x": 0.6, "y": 0.6, "z": 0.6}, {"x": 0.5, "y": 0.5, "z": 0.2})
    assert np.isclose(swapped["difference"], -0.2) and swapped["b_lower"] == 3
    with pytest.raises(ValueError, match="share no"):
        paired_difference({"x": 1.0}, {"y": 1.0})


def test_cells_analysis_runs_on_a_bounded_model(tmp_path, capsys):
    """benchmarks/cells_analysis.py: every section runs on a few-seconds model and prints sane numbers."""
    from benchmarks.cells import main as bench
    from benchmarks.cells_analysis import main

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    assert bench(["--minutes", "0.05", "--tune-fraction", "0", "--data", str(ds), "--run", str(tmp_path / "run"),
                  "--learned-only", "--threads", "1", "--patch", "64", "--base-filters", "4"]) == 0
    capsys.readouterr()
    assert main(["--run", str(tmp_path / "run"), "--data", str(ds), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"unmatched validation nuclei by seed: \{'seedless': \d+, 'shared': \d+, 'own': \d+\}", out)
    assert "no tuning images" in out  # markers need held-out tuning images
    assert re.search(r"oracle: lowest validation count error over the threshold grid [\d.]+%", out)
    assert "mean-probability filter, val" in out and "largest relative count errors" in out
    assert "rule: the run held out no tuning images" in out
    assert re.search(r"validation nuclei: matched \d+ \(median area [\d.]+ px, contrast -?[\d.]+\); uncovered \d+", out)
    assert re.search(r"flip TTA \(4 passes\): validation AP@0.5 [\d.]+, count err [\d.]+%", out)
    assert re.search(r"dihedral TTA \(8 passes\): validation AP@0.5 [\d.]+, count err [\d.]+%", out)
    assert len(re.findall(r"enlarge below (off|[\d.]+) px: tuning", out)) == 4 and "enlarge: chosen" in out
    assert "votes: the run has no offset head or no tuning images" in out
    assert "small: the run held out no tuning images" in out
    assert re.search(r"contrast: annotated nuclei \d+: SNR < 1 \d+, < 2 \d+, < 3 \d+", out)
    assert re.search(r"contrast: val predictions, SNR < 2 / < 3: matched \d+ / \d+ of \d+", out)
    assert len(re.findall(r"contrast: (384|512)-px windows: tuning AP@0.5", out)) == 2
    # the dihedral average is equivariant: a transposed image gets the transposed maps, offsets' components swapped
    from benchmarks.cells_analysis import dihedral_probabilities
    from medseg.cells.count import CellModel

    model = CellModel.load(tmp_path / "run")
    assert model.cfg.offset_head
    import tifffile

    img = np.ascontiguousarray(tifffile.imread(sorted((ds / "labels").iterdir())[0])[:64, :64].astype(np.float32))
    p, pt = dihedral_probabilities(model, img), dihedral_probabilities(model, np.ascontiguousarray(img.T))
    pt = np.concatenate([pt[:4], pt[[5, 4]]]).transpose(0, 2, 1)
    np.testing.assert_allclose(pt, p, atol=2e-3 * max(1.0, float(np.abs(p).max())))
    # the error-budget script on the same model
    from benchmarks.cells_error_budget import main as budget

    assert budget(["--run", str(tmp_path / "run"), "--data", str(ds), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"1 val images: \d+ nuclei, \d+ predicted; uncovered \d+, merged \d+, split \d+", out)
    assert re.search(r"mean abs count error [\d.]+%; with no uncovered nuclei [\d.]+%", out)
    # the declumping script on the same model: the run's labels and every variant scored
    from benchmarks.cells_declump import main as declump

    assert declump(["--run", str(tmp_path / "run"), "--data", str(ds), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"declump none \(the run's labels\): val AP@0.5 [\d.]+, count err [\d.]+%", out)
    from benchmarks.cells_declump import MODES, RATIOS, SOLIDITIES

    assert len(re.findall(r"declump ratio [\d.]+, solidity [\d.]+, (prob|shape): val AP@0.5", out)) == \
        len(RATIOS) * len(SOLIDITIES) * len(MODES)


def test_split_clumps_splits_a_peanut_not_a_disc():
    """Two overlapping discs labelled as one object are split (by probability seeds and by shape); a round
    object and small specks stay whole."""
    from benchmarks.cells_declump import split_clumps

    yy, xx = np.mgrid[:40, :80]
    disc = lambda y, x, r2: (yy - y) ** 2 + (xx - x) ** 2 < r2  # noqa: E731
    a, b, c = disc(20, 20, 100), disc(20, 36, 100), disc(20, 65, 100)
    labels = np.zeros((40, 80), np.int32)
    labels[a | b], labels[c] = 1, 2
    for i, (y, x) in enumerate([(5, 5), (5, 75), (35, 5)]):
        labels[y - 2:y + 2, x - 2:x + 2] = 3 + i
    interior = np.where(labels > 0, 0.92, 0.0)
    interior[disc(20, 20, 30) | disc(20, 36, 30)] = 0.99  # two cores above the seed threshold levels
    for mode in ("prob", "shape"):
        out = split_clumps(labels, interior, 1.3, 0.95, mode)
        assert out.max() == 6, mode
        assert len(np.unique(out[a & ~b])) == len(np.unique(out[b & ~a])) == 1
        assert out[20, 15] != out[20, 40] and len(np.unique(out[c])) == 1
        # a solidity gate below the peanut's keeps it whole
        assert split_clumps(labels, interior, 1.3, 0.5, mode).max() == 5


def test_error_budget_hand_checkable():
    """Reference nuclei 1-4; predicted: 1 split in two, 2 and 3 merged into one, 4 missed, and a background speck."""
    from benchmarks.cells_error_budget import border_strengths, error_budget

    ref = np.zeros((6, 20), int)
    ref[1:5, 0:4], ref[1:5, 4:8], ref[1:5, 8:12], ref[1:5, 14:18] = 1, 2, 3, 4
    pred = np.zeros_like(ref)
    pred[1:5, 0:2], pred[1:5, 2:4] = 1, 2  # nucleus 1 split in two
    pred[1:5, 4:12] = 3  # nuclei 2 and 3 merged
    pred[0, 18:20] = 4  # a speck on the background
    assert error_budget(ref, pred) == {"ref": 4, "pred": 4, "uncovered": 1, "merged": 1, "split": 1, "spurious": 1}
    edge = np.zeros(ref.shape)
    edge[:, 1], edge[:, 2] = 0.2, 0.4  # the border between pieces 1 and 2 lies between columns 1 and 2
    edge[:, 3], edge[:, 4] = 0.6, 1.0  # between pieces 2 and 3: columns 3 and 4
    pairs, mean = border_strengths(pred, edge)
    assert pairs.tolist() == [[1, 2], [2, 3]]
    np.testing.assert_allclose(mean, [0.3, 0.8])


def test_split_by_votes_hand_checkable():
    """An object over two touching squares is split where its pixels vote for two centres; an object with one
    vote group, or with a second group too small to be a nucleus, stays whole."""
    from benchmarks.cells_analysis import split_by_votes

    ref = np.zeros((12, 40), np.uint16)
    ref[1:11, 1:11], ref[1:11, 11:21], ref[2:10, 25:35] = 1, 2, 3
    objects = np.where(ref > 0, np.where(ref == 3, 2, 1), 0)  # the squares merged; the third alone
    votes = ref.astype(np.int64).copy()
    votes[5, 33] = 4  # one stray pixel voting elsewhere: 1 px < min_size
    out = split_by_votes(objects, votes, (ref > 0).astype(float))
    assert out.max() == 3
    assert len(np.unique(out[ref == 1])) == len(np.unique(out[ref == 2])) == len(np.unique(out[ref == 3])) == 1
    assert len({int(out[5, 5]), int(out[5, 15]), int(out[5, 30])}) == 3 and out[5, 33] == out[5, 30]
    assert np.array_equal(split_by_votes(objects, np.where(ref > 0, 1, 0), ref > 0) > 0, ref > 0)
    assert split_by_votes(objects, np.where(ref > 0, 1, 0), ref > 0).max() == 2


def test_cells_analysis_pieces_hand_checkable():
    """Seed causes and marker variants on two touching squares and a faint third object."""
    from benchmarks.cells_analysis import mean_probability_filter, seed_causes, segment

    ref = np.zeros((12, 30), np.uint16)
    ref[1:11, 1:11], ref[1:11, 11:21], ref[3:8, 24:29] = 1, 2, 3
    p = np.zeros((4,) + ref.shape, np.float32)
    p[1][ref > 0] = 0.95  # interior everywhere: no boundary between 1 and 2
    p[1][ref == 3] = 0.6  # faint: above the foreground threshold, below the seed threshold
    p[0] = 1 - p[1]
    merged = np.zeros_like(ref)
    merged[0:12, 0:22] = 1  # one prediction over both squares (IoU < 0.5 with each)
    merged[ref == 3] = 2
    assert seed_causes(ref, merged, p, 0.5, 0.9) == {"seedless": 0, "shared": 2, "own": 0}
    assert seed_causes(ref, np.zeros_like(ref), p, 0.5, 0.9) == {"seedless": 1, "shared": 2, "own": 0}
    p[2][:, 10:12] = 0.9  # now a boundary between them
    p[1][:, 10:12] = 0.05
    assert segment(p, "boundary", t=0.5, s=0.8).max() == 2  # the faint object has no seed: dropped
    assert segment(p, "boundary", t=0.5, s=0.5).max() == 3
    lab = segment(p, "boundary", t=0.5, s=0.5)
    assert mean_probability_filter(lab, p[1] + p[2], 0.7).max() == 2  # the faint one goes
    # the distance-map variants separate the squares too (each square's normalised distance dips at the contact)
    from medseg.cells.targets import distance_targets

    p[3] = distance_targets(ref)
    for mode, kw in (("and", dict(s=0.5, d=0.3)), ("hmax", dict(h=0.3)), ("split", dict(s=0.5, h=0.3))):
        out = segment(p, mode, t=0.5, **kw)
        assert out.max() == 3, mode
        assert len(np.unique(out[ref == 1])) == 1 and np.unique(out[ref == 1]) != np.unique(out[ref == 2])
    # per-nucleus table: the merged squares are covered but unmatched, the third matched
    from benchmarks.cells_analysis import nucleus_table

    img = (ref > 0).astype(np.float32) * 100 + 10
    tab = nucleus_table(ref, merged, img)
    assert tab[:, 0].tolist() == [100, 100, 25] and tab[:, 2].tolist() == [1.0, 1.0, 1.0]
    assert tab[0, 3] < 0.5 and tab[2, 3] == 1.0 and tab[2, 1] > 0.9
    # the faint object has no interior seed at 0.8: "or" seeds it from its distance core, "orphans" keeps it whole
    assert segment(p, "or", t=0.5, s=0.8, d=0.5).max() == 3
    assert segment(p, "or", t=0.5, s=0.8, d=1.01).max() == 2  # no core either
    assert segment(p, "orphans", t=0.5, s=0.8).max() == 3


def test_error_breakdown_hand_checkable():
    """Three reference nuclei in a row, the first two merged by one prediction, the third missed; plus a prediction
    on background and one cut out of a fourth nucleus."""
    from benchmarks.cells import error_breakdown

    ref = np.zeros((10, 40), int)
    ref[2:8, 1:7], ref[2:8, 7:13], ref[2:8, 20:26], ref[2:8, 30:38] = 1, 2, 3, 4
    pred = np.zeros_like(ref)
    pred[2:8, 1:14] = 1        # 1 + 2 merged (IoU 36/78 each: no match)
    pred[0:2, 15:18] = 2       # on background
    pred[3:5, 31:33] = 3       # a small piece inside nucleus 4
    e = error_breakdown(ref, pred)
    assert e == {"ref": 4, "pred": 3, "matched": 0, "merged": 2, "missed": 2, "misshapen": 0, "merger": 1,
                 "split": 1, "spurious": 1}
    assert error_breakdown(ref, ref)["matched"] == 4
    # the same matching as the metrics: a nucleus half covered (IoU exactly 0.5) counts as matched in both
    from medseg.evaluate.instances import instance_metrics

    half = np.zeros_like(ref)
    half[2:8, 30:34] = 1
    one = np.where(ref == 4, 1, 0)
    assert error_breakdown(one, half)["matched"] == 1 == instance_metrics(one, half, [0.5])["tp@0.5"]


def test_cells_benchmark_passes_norm_and_zoom_options(tmp_path, capsys):
    import json

    from benchmarks.cells import main

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    run = tmp_path / "run"
    yaml_file = tmp_path / "cells.yaml"  # settings from a file, the flags on top
    yaml_file.write_text("norm: batch\ncontact_boundary: 2\nbase_filters: 8\nseed: 3\n")
    assert main(["--data", str(ds), "--run", str(run), "--learned-only", "--threads", "1", "--patch", "64",
                 "--base-filters", "4", "--minutes", "0.05", "--tune-fraction", "0", "--config", str(yaml_file),
                 "--scale-range", "0.8,1.25", "--small-weight", "2", "--small-size", "50",
                 "--tune-objective", "ap-count"]) == 0
    assert len(_table_rows(capsys.readouterr().out, "learned")) == 1
    config = json.loads((run / "model.json").read_text())["config"]
    assert config["norm"] == "batch" and config["scale_range"] == [0.8, 1.25] and config["contact_boundary"] == 2
    assert config["small_weight"] == 2.0 and config["small_size_px"] == 50.0 and config["tune_objective"] == "ap-count"
    assert config["base_filters"] == 4 and config["seed"] == 3 and config["offset_head"] is True  # flag, file, default
    yaml_file.write_text("nrom: batch\n")
    with pytest.raises(SystemExit):  # an argparse error naming the file, not a traceback
        main(["--data", str(ds), "--run", str(tmp_path / "run2"), "--learned-only", "--config", str(yaml_file)])
    assert not (tmp_path / "run2").exists()


def test_cells_benchmark_ema_raw_weights_and_eval_folder(tmp_path, capsys):
    """--ema trains with weight averaging; --raw-weights scores the final training weights instead; --eval scores a
    separate folder (all of its images)."""
    import json

    from benchmarks.cells import main

    ds, ev = tmp_path / "ds", tmp_path / "ev"
    linked_cell_dataset(ds, 4)
    linked_cell_dataset(ev, 2)
    common = ["--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads", "1", "--patch", "64",
              "--base-filters", "4"]
    assert main(["--minutes", "0.05", "--tune-fraction", "0", "--ema", "0.9", *common]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "run" / "model.json").read_text())["config"]["ema"] == 0.9
    summary = tmp_path / "summary.json"
    assert main(["--skip-train", "--raw-weights", "--eval", str(ev), "--json", str(summary), *common]) == 0
    s = json.loads(summary.read_text())
    assert s["info"]["eval_set"] == f"all 2 images of {ev}" and s["info"]["weights"].startswith("raw")
    assert s["results"]["learned"]["n_images"] == 2
    with pytest.raises(SystemExit):  # nothing to re-tune on: an argparse error, not a traceback
        main(["--skip-train", "--retune", *common])


def test_hippocampus_benchmark_trains_and_scores_an_eval_folder(tmp_path, capsys):
    """The training mode with --eval: a few seconds on 4 real cases, then Dice on a separate folder's labelled cases
    (an unlabelled one is skipped and counted); with ``ema`` the post-processing check also scores the raw weights."""
    import json
    import shutil

    import yaml

    from benchmarks.hippocampus import main as hippo

    plan = tiny_plan(tmp_path, ema=0.9)
    ev = tmp_path / "ev"
    shutil.copytree(tmp_path / "ds", ev, symlinks=True)
    unlabelled = sorted((ev / "labelsTr").iterdir())[0]
    unlabelled.unlink()
    cfg = yaml.safe_load(plan.read_text())
    assert hippo(["--minutes", "0.1", "--data", cfg["dataset"], "--eval", str(ev), "--out", str(tmp_path / "run"),
                  "--config", str(plan), "--threads", "1"]) == 0
    capsys.readouterr()
    bench = json.loads((tmp_path / "run" / "benchmark.json").read_text())
    assert bench["eval_dice"]["cases"] == 3 and bench["eval_dice"]["unlabelled_skipped"] == 1
    assert 0.0 <= bench["eval_dice"]["mean"] <= 1.0 and bench["iterations"] >= 1
    assert hippo(["--out", str(tmp_path / "run"), "--data", cfg["dataset"], "--postprocess-check", "--threads",
                  "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"plain", "largest_component", "raw_final_weights"}
    assert res["raw_final_weights"]["cases"] == res["plain"]["cases"] == len(res["plain"]["per_case"])
    assert np.isclose(np.median(list(res["plain"]["per_case"].values())), res["plain"]["median_case"], atol=1e-4)


def test_train_speed_cells_mode(capsys):
    from benchmarks.train_speed import main

    assert main(["--cells", "--iters", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("cells_instance_contiguous_bf16", "cells_instance_channels_last_bf16", "cells_batch_contiguous_bf16"):
        assert re.search(rf"{name} {{'s_per_iter': [\d.]+", out), name


def test_train_cache_benchmark_bounded(tmp_path, capsys):
    """Two BraTS cases, one iteration per epoch: the three variants run and the disk ones write a cache."""
    if not data_path("brats2015_sample").is_dir():
        pytest.skip("real data not available: ../shared/data/brats2015_sample")
    from benchmarks.train_cache import main

    assert main(["--cases", "2", "--iters", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    rows = _table_rows(capsys.readouterr().out, "2")
    assert [r[2] for r in rows] == ["memory", "disk", "disk-warm"]
    assert rows[0][1] == "-" and float(rows[1][1]) == float(rows[2][1]) > 0
    assert all(float(r[5]) > 0 and float(r[4]) > 0 for r in rows)


def test_cells_cache_benchmark_bounded(tmp_path, capsys):
    """Four real DSB2018 images linked twice, two steps: the three variants run and the disk ones write a cache."""
    from benchmarks.cells_cache import main

    linked_cell_dataset(tmp_path / "ds", 4)
    (tmp_path / "ds" / "split.json").unlink()  # the benchmark validates on fold 0
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path / "ds"), "--copies", "2", "--steps", "2", "--threads", "1", "--out", str(out),
                 "--json", str(tmp_path / "rows.jsonl")]) == 0
    rows = _table_rows(capsys.readouterr().out, "8 (2)")
    assert [r[3] for r in rows] == ["memory", "disk", "disk-warm"]
    assert rows[0][2] == "-" and float(rows[1][2]) == float(rows[2][2]) > 0
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 3


def test_small_object_rules_hand_checkable():
    """A seeded 6 x 6 nucleus and a seedless 3 x 3 blob: the blob is an object only while seedless parts of its size
    are kept, and minimum sizes drop what is below them."""
    from benchmarks.cells_analysis import segment_small

    p = np.zeros((4, 20, 20))
    p[0] = 1.0
    p[1, 2:8, 2:8], p[0, 2:8, 2:8] = 1.0, 0.0  # interior: a seed
    p[2, 12:15, 12:15], p[0, 12:15, 12:15] = 1.0, 0.0  # boundary only: no seed
    kw = dict(t=0.5, s=0.5, min_seed=1)
    assert segment_small(p, min_size=0, orphan_max=0, **kw).max() == 1
    assert segment_small(p, min_size=0, orphan_max=9, **kw).max() == 2
    assert segment_small(p, min_size=0, orphan_max=8, **kw).max() == 1  # 9 px > 8
    assert segment_small(p, min_size=10, orphan_max=9, **kw).max() == 1  # the blob is below 10 px
    assert segment_small(p, min_size=0, orphan_max=0, t=0.5, s=0.5, min_seed=37).max() == 0  # 36-px seed dropped


def test_hippocampus_peer_recipe_runs_on_medseg_split(tmp_path, capsys):
    """The MONAI-tutorial peer trains a few iterations on real cases of medseg's fold and scores its validation
    cases; the split it uses is the one medseg's trainer writes for the same data."""
    import json

    import yaml

    from benchmarks.hippocampus_peer import main as peer
    from medseg.plan.plan import Plan
    from medseg.train.dataset import open_dataset
    from medseg.train.splits import fold_split

    cfg = yaml.safe_load(tiny_plan(tmp_path).read_text())
    assert peer(["--minutes", "5", "--max-iterations", "3", "--data", cfg["dataset"], "--out", str(tmp_path / "peer"),
                 "--threads", "1"]) == 0
    capsys.readouterr()
    bench = json.loads((tmp_path / "peer" / "benchmark.json").read_text())
    assert bench["iterations"] == 3 and bench["val_dice"]["cases"] >= 1
    assert 0.0 <= bench["val_dice"]["mean"] <= 1.0
    ours = fold_split(tmp_path / "fresh", open_dataset(cfg["dataset"]), Plan(num_folds=5, seed=0), write=False)
    assert json.loads((tmp_path / "peer" / "splits.json").read_text())[0] == ours
    # per-case rows name the validation cases, so that paired.py can pair them with medseg's
    per_case = bench["val_dice"]["per_case"]
    assert sorted(per_case) == sorted(ours["val"]) and len(per_case) == bench["val_dice"]["cases"]
    from benchmarks.paired import main as paired

    assert paired([str(tmp_path / "peer" / "benchmark.json")] * 2 + ["--section", "val_dice,val_dice"]) == 0
    assert f"{len(per_case)} paired" in capsys.readouterr().out


def test_hippocampus_nnunet_peer_runs_on_medseg_split(tmp_path, capsys):
    """nnU-Net's own pipeline (plan, preprocess, its trainer, its validation) runs a few iterations on real cases of
    medseg's fold, reads the data in place (links), and its exported predictions are scored in native geometry."""
    import json

    pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
                        reason="nnunetv2 is a benchmark-only extra (pip install nnunetv2 --no-deps, then its "
                               "runtime dependencies)")
    data = data_path("msd_hippocampus", "imagesTr").parent
    from benchmarks.hippocampus_nnunet import main

    assert main(["--minutes", "5", "--max-cases", "4", "--max-iterations", "2", "--schedule", "stock",
                 "--no-mirroring", "--data", str(data), "--out", str(tmp_path / "nn"), "--threads", "1"]) == 0
    capsys.readouterr()
    bench = json.loads((tmp_path / "nn" / "benchmark.json").read_text())
    assert bench["iterations"] == 2 and bench["schedule"] == "stock"
    for key in ("val_dice_mirroring", "val_dice_no_mirroring"):
        assert bench[key]["cases"] == 4 and 0.0 <= bench[key]["mean"] <= 1.0
    assert bench["val_dice_mirroring"]["mirror_axes"] and bench["val_dice_no_mirroring"]["mirror_axes"] is None
    raw = list((tmp_path / "nn" / "raw").rglob("*.nii.gz"))
    assert len(raw) == 16 and all(p.is_symlink() for p in raw)  # 8 cases, image + label, never copied


def test_hippocampus_error_kinds_by_hand():
    """Anterior/posterior swaps, errors on the reference outline and errors away from it, on a hand-made line."""
    from benchmarks.hippocampus_errors import error_kinds

    ref = np.zeros((1, 1, 20), np.uint8)
    ref[..., 5:10], ref[..., 10:15] = 1, 2  # label changes between 4|5, 9|10, 14|15: outline band 3-6, 8-11, 13-16
    pred = ref.copy()
    pred[..., 9] = 2  # a swap
    pred[..., 16] = 2  # on the outline band
    pred[..., 0] = pred[..., 18] = 1  # away from it
    kinds = error_kinds(pred, ref)
    assert [int(kinds[k].sum()) for k in ("swap", "outline", "far")] == [1, 1, 2]
    assert kinds["swap"][0, 0, 9] and kinds["outline"][0, 0, 16] and kinds["far"][0, 0, [0, 18]].all()


def test_hippocampus_train_fraction_nests_and_keeps_validation(tmp_path):
    """--train-fraction: a smaller share of the fold's training cases is a subset of a larger one, the validation
    cases and the other folds are the full split's, and an existing splits.json (a resumed run) is kept."""
    from benchmarks.hippocampus import subsample_split
    from medseg.plan.plan import Plan
    from medseg.train.dataset import open_dataset
    from medseg.train.splits import fold_split

    plan = Plan.from_yaml(tiny_plan(tmp_path, n_cases=12))
    full = json.loads(json.dumps(fold_split(tmp_path / "none", open_dataset(plan.dataset), plan, write=False)))
    quarter = subsample_split(plan, tmp_path / "q", 0, 0.25)
    half = subsample_split(plan, tmp_path / "h", 0, 0.5)
    assert len(quarter) == round(0.25 * len(full["train"])) and len(half) == round(0.5 * len(full["train"]))
    assert set(quarter) < set(half) < set(full["train"])
    for run in ("q", "h"):
        splits = json.loads((tmp_path / run / "splits.json").read_text())
        assert splits[0]["val"] == full["val"] and len(splits) == plan.num_folds
    assert subsample_split(plan, tmp_path / "q", 0, 1.0) == quarter  # kept, not redrawn


def test_cells3d_benchmark_halves_the_real_stack(tmp_path, capsys):
    """benchmarks/cells3d.py: a few steps of a 3D model on one half of the real stack, scored on the other half
    next to the classical mode; the written halves keep the z step and the nuclei of the reference."""
    from benchmarks.cells3d import halves, main
    from medseg.cells.data import read_labels
    from medseg.io.microscopy import read_microscopy

    stack = data_path("nuclei_stardist")
    assert main(["--data", str(stack), "--out", str(tmp_path), "--minutes", "1", "--steps", "2", "--folds", "0",
                 "--patch", "16", "16", "16", "--base-filters", "4", "--threads", "1",
                 "--json", str(tmp_path / "r.json"), "--other-z-steps"]) == 0
    out = capsys.readouterr().out
    ref = read_labels(stack / "mask3d.tif")
    test = halves(ref.shape[-1])[0]
    n_test = len(np.unique(ref[..., test])) - 1
    # the held-out half at z step 1 and 4, each resampled to the model's step and as stored (the "before" column)
    seen = re.findall(r"z step (\d) .*?, (resampled to the training z step|as stored): (\d+) nuclei", out)
    n_every_other = len(np.unique(ref[::2, :, test])) - 1
    assert sorted(seen) == sorted([("1", how, str(n_test)) for how in ("resampled to the training z step", "as stored")]
                                  + [("4", how, str(n_every_other)) for how in
                                     ("resampled to the training z step", "as stored")])
    for method in ("learned", "classical", "components"):
        row = _table_rows(out, f"{method} | 0")[0]
        assert int(row[3]) == n_test and 0.0 <= float(row[5]) <= 1.0
    written = read_microscopy(tmp_path / "fold0" / "data" / "labels" / "test.tif")
    assert written.spacing == (2.0, 1.0, 1.0) and np.array_equal(written.array, ref[..., test])
    assert json.loads((tmp_path / "r.json").read_text())["folds"][0]["steps"] == 2


def test_hippocampus_planar_cut_by_hand():
    """The cut that keeps most predicted labels: a ragged boundary becomes one plane, the structure's extent stays."""
    from benchmarks.hippocampus_errors import mixed_voxels, planar_cut

    pred = np.zeros((2, 10, 3), np.uint8)
    pred[:, 1:5], pred[:, 5:9] = 2, 1  # posterior below index 5 of axis 1, anterior from it on
    assert mixed_voxels(pred) == 0 and np.array_equal(planar_cut(pred), pred)
    ragged = pred.copy()
    ragged[0, 5, 0] = 2  # one posterior voxel beyond the cut, one anterior before it
    ragged[1, 3, 2] = 1
    assert mixed_voxels(ragged) == 2 and np.array_equal(planar_cut(ragged), pred)
    ragged[:, 9] = 0  # background stays background
    assert (planar_cut(ragged)[:, 9] == 0).all()


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """A one-step 2D cell model with held-out tuning images, on 7 real DSB2018 images: (dataset, run)."""
    from benchmarks.cells import main as bench

    tmp = tmp_path_factory.mktemp("tuned_run")
    ds, run = tmp / "ds", tmp / "run"
    linked_cell_dataset(ds, 7)
    assert bench(["--data", str(ds), "--run", str(run), "--learned-only", "--threads", "1", "--minutes", "2",
                  "--steps", "1", "--tune-fraction", "0.4", "--patch", "64", "--base-filters", "4"]) == 0
    return ds, run


def test_cells_scales_averages_resized_maps_and_chooses_on_tuning_images(tuned_run, tmp_path, capsys):
    """benchmarks/cells_scales.py: the scale-1 variant is the plain model's maps; a 2x variant's maps come back at
    the image's size with offsets in its pixels; every variant is tuned on the run's tuning images only."""
    from benchmarks.cells_analysis import run_sets
    from benchmarks.cells_scales import ScaleAveraged, main
    from medseg.cells.count import CellModel

    ds, run = tuned_run
    model = CellModel.load(run, rescale=False)
    sets = run_sets(model.meta, ds)
    assert [c.case for c in sets["tune"]] == sorted(json.loads((run / "model.json").read_text())["split"]["tune"])
    img = sets["val"][0].image[:96, :80]
    plain = model.probabilities(img)
    np.testing.assert_allclose(ScaleAveraged(model, [1.0]).probabilities(img), plain, atol=1e-6)
    double = ScaleAveraged(model, [2.0]).maps(img, 1.0, 2.0)
    assert double.shape == plain.shape
    # a constant offset field of v pixels at 2x is v / 2 pixels of the image
    class Const:
        cfg, meta = model.cfg, model.meta

        def _predict(self, x):
            p = np.zeros((6, *x.shape), np.float32)
            p[-2:] = 4.0
            return p

    assert np.allclose(ScaleAveraged(Const(), [2.0]).maps(img, 1.0, 2.0)[-2:], 2.0)
    capsys.readouterr()
    out = tmp_path / "scales.json"
    assert main(["--run", str(run), "--data", str(ds), "--threads", "1", "--variants", "1", "1,2",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["scales"] for r in rows] == [[1.0], [1.0, 2.0]]
    assert all(0 <= r["tune"]["ap@0.5"] <= 1 and r["val"]["n_images"] == len(sets["val"]) for r in rows)
    assert "best on the tuning images: scales" in capsys.readouterr().out


def test_cells_formats_compares_memory_formats_and_precisions(tuned_run, tmp_path):
    """benchmarks/cells_formats.py runs on a bounded model, and the map differences it reports are hand-checkable on
    two small maps."""
    from benchmarks.cells_formats import main, map_difference

    a = np.zeros((3, 2, 2))
    a[1] = 1.0  # interior everywhere
    b = a.copy()
    b[:, 0, 0] = [0.75, 0.25, 0.0]  # one of four pixels changes class (interior -> background)
    assert map_difference(a, b) == {"max": 0.75, "mean": 1.5 / 12, "class_changed": 0.25}
    ds, run = tuned_run
    out = tmp_path / "formats.json"
    assert main(["--run", str(run), "--data", str(ds), "--threads", "1", "--size", "96", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    # (not 0 here: a one-step model's segmentation, which decides out-of-range resizing, changes with the thresholds
    # training then chose; tests/test_cells.py checks that the loaded model's maps are the tuned network's)
    assert all(0 <= doc["tuning_table_vs_recorded"][k] <= 1 for k in ("contiguous", "channels_last"))
    assert all(0 <= doc["maps_bf16_vs_fp32"][k] for k in ("max", "mean", "class_changed"))
    assert all(doc["seconds_per_image"][k] > 0 for k in ("contiguous", "channels_last"))
    assert {doc[k]["thresholds"]["seeds"] for k in ("default", "fp32")} <= {"boundary", "distance", "votes"}


def test_label_resize_benchmark_agrees_with_its_peer(capsys):
    """label_resize: the bounding-box resampling and the whole-volume peer give equal labels on the real 42-organ map."""
    from benchmarks.label_resize import main

    path = data_path("totalseg_example", "example_seg.nii.gz")
    assert main(["--data", str(path), "--factor", "1.5", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "41 classes" in out and "equal labels" in out


def test_network_levels_benchmark_equals_nnunet_on_a_small_grid(capsys):
    """medseg's recorded levels against nnU-Net's get_pool_and_conv_props, on a grid small enough for the suite."""
    pytest.importorskip("nnunetv2.experiment_planning.experiment_planners.network_topology",
                        reason="nnunetv2 is a benchmark-only extra (pip install nnunetv2 --no-deps)")
    from benchmarks.network_levels import main

    res = main(["--sizes", "8", "12", "20", "40", "96", "--spacings", "0.5", "1.0", "1.6", "3.0"])
    capsys.readouterr()
    assert res["pairs"] == 5**2 * 4**2 + 5**3 * 4**3
    assert res["strides_equal"] == res["kernels_equal"] == res["pairs"], res["first_differences"]
