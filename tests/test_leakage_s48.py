"""Validation and held-out images never reach training or the choices made from it (session 48 audit).

Semantic trainer: the fingerprint reads the labelled training-set cases only (never imagesTs/); the k folds of the
real hippocampus ids partition them; training preprocesses and samples only its fold's training cases, validation
reads only the fold's validation cases; ``model.pt`` is the final network, not the checkpoint the validation Dice
liked best; a resumed run keeps its ``splits.json`` (a case added since moves no case between train and val) and is
refused under another fold or seed; a ``splits.json`` whose fold validates on its own training cases is refused;
``benchmarks/hippocampus.py --eval DIR`` only scores DIR, after training.

Cell trainer: the five hash folds of the real DSB2018 ids partition them and their tuning images lie in their
training split; the training pairs, the threshold search and the nucleus-size record come from the training and
tuning images only; held-out tuning blocks are cut off the training pixels; a resumed run whose dataset split
changed is refused; ``benchmarks/cells.py`` never scores a run on the images it trained or tuned on, and ``--eval
DIR`` is never trained on; the classical mode keeps no state from one image to the next.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import data_path, linked_cell_dataset

HIPPO_PLAN = {"channels": ["MRI"], "labels": {0: "background", 1: "anterior", 2: "posterior"},
              "normalisation": [{"scheme": "zscore"}], "target_spacing": [1.0, 1.0, 1.0], "orientation": "RAS",
              "patch_size": [16, 16, 16], "batch_size": 2, "base_filters": 4, "max_filters": 16,
              "iterations_per_epoch": 1, "max_epochs": 2, "val_every": 1, "num_folds": 3, "fold": 0, "seed": 0,
              "bf16": False, "num_threads": 1, "deep_supervision": False, "augment": {"prob": 0.0}}


def linked_hippocampus(dst: Path, ids: list[str], test_ids: tuple[str, ...] = ()) -> Path:
    """An MSD folder of links to real hippocampus cases (``ids`` in imagesTr/labelsTr, ``test_ids`` in
    imagesTs/labelsTs, a held-out set in the same folder)."""
    src = data_path("msd_hippocampus")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for cid in ids:
        for sub in ("imagesTr", "labelsTr"):
            (dst / sub / f"{cid}.nii.gz").symlink_to(src / sub / f"{cid}.nii.gz")
    for cid in test_ids:
        for sub, tr in (("imagesTs", "imagesTr"), ("labelsTs", "labelsTr")):
            (dst / sub / f"{cid}.nii.gz").symlink_to(src / tr / f"{cid}.nii.gz")
    (dst / "dataset.json").write_text((src / "dataset.json").read_text())
    return dst


def hippocampus_ids(n: int) -> list[str]:
    src = data_path("msd_hippocampus")
    return sorted(p.name[:-len(".nii.gz")] for p in (src / "labelsTr").glob("*.nii.gz"))[:n]


# ---------------------------------------------------------------------------------------------- semantic trainer


def test_fingerprint_reads_only_labelled_training_cases(tmp_path, monkeypatch):
    """The plan's statistics come from imagesTr's labelled cases: not from imagesTs/labelsTs (a held-out set kept
    beside them) nor from an unlabelled imagesTr case."""
    from medseg.plan import fingerprint
    from medseg.train.dataset import open_dataset

    ids = hippocampus_ids(6)
    ds = linked_hippocampus(tmp_path / "ds", ids[:4], test_ids=tuple(ids[4:5]))
    (ds / "labelsTr" / f"{ids[3]}.nii.gz").unlink()  # now an unlabelled training image
    read, real = [], fingerprint.load_case
    monkeypatch.setattr(fingerprint, "load_case", lambda case, **kw: (read.append(case.id), real(case, **kw))[1])
    fp = fingerprint.compute_fingerprint(open_dataset(ds))
    assert sorted(read) == ids[:3] and fp.num_cases == 3


def test_real_hippocampus_folds_partition_the_labelled_cases(tmp_path):
    """The 5 folds of the real case ids: every case validated in exactly one fold, never trained on in it."""
    from medseg.plan.plan import Plan
    from medseg.train.dataset import open_dataset
    from medseg.train.splits import fold_split

    ds = open_dataset(data_path("msd_hippocampus"))
    labelled = {c.id for c in ds.cases if c.label is not None}
    assert len(labelled) > 100
    folds = [fold_split(tmp_path, ds, Plan(num_folds=5, fold=k)) for k in range(5)]
    assert json.loads((tmp_path / "splits.json").read_text()) == folds  # the run's file holds exactly these
    vals = [set(f["val"]) for f in folds]
    assert sum(len(v) for v in vals) == len(labelled) and set().union(*vals) == labelled
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and set(f["train"]) | set(f["val"]) == labelled


def test_a_splits_json_validating_on_its_training_cases_is_refused(tmp_path):
    """A hand-written or foreign ``splits.json`` whose fold lists a case under both train and val would make the
    run's validation Dice a training Dice: refused. What make_splits writes when nothing can be held out
    (num_folds 1: every case trains and validates) is still read."""
    from medseg.errors import InputError
    from medseg.plan.plan import Plan
    from medseg.train.dataset import Case, Dataset
    from medseg.train.splits import fold_split

    ds = Dataset(Path("d"), {}, [Case(f"c{i}", [], Path(f"c{i}.nii.gz")) for i in range(4)])
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["c0", "c1", "c2"], "val": ["c2", "c3"]}]))
    with pytest.raises(InputError, match="c2.*both"):
        fold_split(tmp_path, ds, Plan(num_folds=2))
    one = tmp_path / "one"
    one.mkdir()
    split = fold_split(one, ds, Plan(num_folds=1))  # written, then read back as a resumed run reads it
    assert split["train"] == split["val"] == fold_split(one, ds, Plan(num_folds=1))["val"]


def _instrument_trainer(monkeypatch) -> dict:
    """Record the case ids the semantic trainer preprocesses for training, samples batches from, and validates on."""
    from medseg.train import cache, trainer

    seen = {"preprocessed": [], "sampled": set(), "validated": []}
    real_pre, real_sample, real_val = cache.preprocess_case, trainer.sample_batch, trainer._validation_cases

    def pre(plan, case):
        seen["preprocessed"].append(case.id)
        return real_pre(plan, case)

    def sample(cases, *a, **kw):
        seen["sampled"].update(c.id for c in cases)
        return real_sample(cases, *a, **kw)

    def val(plan, cases, lazy):
        seen["validated"] += [c.id for c in cases]
        return real_val(plan, cases, lazy)

    monkeypatch.setattr(cache, "preprocess_case", pre)
    monkeypatch.setattr(trainer, "sample_batch", sample)
    monkeypatch.setattr(trainer, "_validation_cases", val)
    return seen


def test_semantic_training_touches_only_its_fold_and_resume_keeps_the_split(tmp_path, monkeypatch, one_torch_thread):
    """Training preprocesses and samples only the fold's training cases and validates on only its validation cases;
    model.pt holds the final weights (not checkpoint_best.pt, picked by the validation Dice) and the last
    validation. Resumed after a case was added to the dataset, the run keeps its splits.json (re-deriving the split
    would reshuffle the folds and validate on cases already trained on); another fold or seed is refused."""
    import torch

    from medseg.errors import InputError
    from medseg.plan.plan import Plan
    from medseg.train.artifact import load_model
    from medseg.train.trainer import train

    ids = hippocampus_ids(7)
    ds = linked_hippocampus(tmp_path / "ds", ids[:6])
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump({**HIPPO_PLAN, "dataset": str(ds)}))
    run = tmp_path / "run"
    seen = _instrument_trainer(monkeypatch)
    train(plan_path, run, progress=False, device="cpu")
    split = json.loads((run / "splits.json").read_text())[0]
    train_ids, val_ids = set(split["train"]), set(split["val"])
    assert train_ids and val_ids and not train_ids & val_ids and train_ids | val_ids == set(ids[:6])
    assert sorted(seen["preprocessed"]) == sorted(train_ids) and seen["sampled"] == train_ids
    assert set(seen["validated"]) == val_ids

    art = load_model(run)
    latest = torch.load(run / "checkpoint_latest.pt", map_location="cpu", weights_only=False)
    for k, v in latest["model"].items():
        assert torch.equal(art.state_dict[k.removeprefix("module.")], v), k  # the final network, whatever scored best
    assert art.info["val_dice"]["mean"] == pytest.approx(latest["history"][-1]["val_mean"], abs=1e-5)  # the last

    # a case added to the dataset: the saved split stays; the new case is neither trained on nor validated
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub / f"{ids[6]}.nii.gz").symlink_to(data_path("msd_hippocampus") / sub / f"{ids[6]}.nii.gz")
    seen["preprocessed"].clear(), seen["sampled"].clear(), seen["validated"].clear()
    train(None, run, resume=True, max_epochs=3, progress=False, device="cpu")
    assert set(seen["preprocessed"]) == train_ids and seen["sampled"] <= train_ids
    assert set(seen["validated"]) == val_ids
    with pytest.raises(InputError, match="fold"):
        train(None, run, fold=1, resume=True, max_epochs=4, progress=False, device="cpu")
    with pytest.raises(InputError, match="seed"):
        train(Plan.from_dict({**HIPPO_PLAN, "dataset": str(ds), "seed": 1}), run, resume=True, max_epochs=4,
              progress=False, device="cpu")


def test_hippocampus_benchmark_only_scores_the_eval_folder(tmp_path, monkeypatch, capsys):
    """benchmarks/hippocampus.py --eval DIR: training reads --data only; DIR is scored, after training, and
    nothing else is done with it."""
    import benchmarks.hippocampus as hippo
    from medseg.train import trainer

    calls = []

    def fake_train(plan, run_dir, **kw):
        calls.append(("train", str(plan.dataset)))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "splits.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))
        return trainer.TrainResult(Path(run_dir), 1, 1, 1.0, {"mean": 0.5}, 0.5, Path(run_dir) / "model.pt")

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(hippo, "evaluate_folder", lambda model, folder, *a, **kw: calls.append(("eval", str(folder)))
                        or {"mean": 0.0})
    data, held_out = tmp_path / "data", tmp_path / "held_out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**HIPPO_PLAN, "dataset": str(data)}))
    assert hippo.main(["--data", str(data), "--eval", str(held_out), "--out", str(tmp_path / "run"), "--config",
                       str(cfg), "--minutes", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    assert calls == [("train", str(data.resolve())), ("eval", str(held_out))]


# ------------------------------------------------------------------------------------------------- cell trainer


def test_real_dsb_folds_partition_and_tuning_lies_in_training():
    """The five hash folds of the real DSB2018 ids partition them; each fold's tuning images are among its training
    images, and the default validation split lies in fold 0 (as documented)."""
    from medseg.cells.config import CellTrainConfig
    from medseg.cells.data import list_cases
    from medseg.cells.splits import dataset_split, tuning_images

    root = data_path("dsb2018_fluo")
    if (root / "split.json").exists():
        pytest.skip("the real DSB2018 folder has its own split.json: no hash folds")
    cases = list_cases(root)
    ids = {c.case for c in cases}
    assert len(ids) == len(cases) > 400
    cfg = CellTrainConfig()
    vals = []
    for k in range(5):
        split = dataset_split(root, cases, fold=k, folds=5)
        train, val = {c.case for c in split["train"]}, {c.case for c in split["val"]}
        tune = {c.case for c in tuning_images(split["train"], cfg.tune_fraction)}
        assert val and not train & val and train | val == ids
        assert len(tune) >= 3 and tune < train
        vals.append(val)
    assert sum(len(v) for v in vals) == len(ids) and set().union(*vals) == ids
    assert {c.case for c in dataset_split(root, cases)["val"]} <= vals[0]


def _instrument_cells(monkeypatch) -> dict:
    """Record the images the cell trainer makes training pairs of (with their shapes) and tunes on."""
    from medseg.cells import pairs, train

    seen = {"pairs": {}, "tuned": [], "costed": []}
    real_pair, real_tune, real_costs = pairs.make_pair, train.tune_network, train.tuning_costs

    def pair(case, cfg):
        seen["pairs"][case.case] = case.image.shape
        return real_pair(case, cfg)

    def tune(net, cfg, meta, cases):
        seen["tuned"] += [c.case for c in cases]
        return real_tune(net, cfg, meta, cases)

    def costs(net, cfg, meta, cases, *a, **kw):
        seen["costed"] += [c.case for c in cases]
        return real_costs(net, cfg, meta, cases, *a, **kw)

    monkeypatch.setattr(pairs, "make_pair", pair)
    monkeypatch.setattr(train, "tune_network", tune)
    monkeypatch.setattr(train, "tuning_costs", costs)
    return seen


def _small_cells(**kw):
    from medseg.cells.config import CellTrainConfig

    return CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                           distance_head=False, offset_head=False, checkpoint_every_s=1e9, **kw)


def test_cell_fold_trains_and_tunes_on_no_validation_image(tmp_path, monkeypatch):
    """With --fold K (real DSB2018 images): the training pairs and the threshold search use the fold's training
    and tuning images only, disjoint from each other and from fold K's validation images, as model.json records."""
    from medseg.cells.splits import fold_of
    from medseg.cells.train import train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 14)
    (ds / "split.json").unlink()
    k = fold_of(ids[0], 3)
    val = {i for i in ids if fold_of(i, 3) == k}
    seen = _instrument_cells(monkeypatch)
    run = train_cells(ds, tmp_path / "run", _small_cells(fold=k, folds=3, tune_fraction=0.3), progress=False)
    split = json.loads((run / "model.json").read_text())["split"]
    assert set(split["val"]) == val
    assert len(split["tune"]) >= 3, "precondition: whole held-out tuning images"
    trained, tuned = set(seen["pairs"]), set(seen["tuned"])
    assert trained == set(split["train"]) and tuned == set(split["tune"]) and set(seen["costed"]) <= tuned
    assert not trained & tuned and not (trained | tuned) & val and trained | tuned | val == set(ids)


def test_cell_tuning_blocks_are_cut_off_the_training_pixels(tmp_path, monkeypatch):
    """Too few images to hold out whole ones: the tuning blocks are the last rows or columns of the training
    images, and the training pairs are made of the rest only; the validation image is in neither."""
    from medseg.cells.data import load_case, list_cases
    from medseg.cells.splits import TUNE_BLOCK, tuning_block
    from medseg.cells.train import train_cells

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)  # split.json: the last one is validation
    seen = _instrument_cells(monkeypatch)
    run = train_cells(ds, tmp_path / "run", _small_cells(tune_fraction=0.2), progress=False)
    split = json.loads((run / "model.json").read_text())["split"]
    assert split["val"] == ids[2:] and set(seen["pairs"]) == set(ids[:2])
    assert sorted(seen["tuned"]) == sorted(split["tune"]) == sorted(f"{i}{TUNE_BLOCK}" for i in ids[:2])
    for c in list_cases(ds):
        if c.case in seen["pairs"]:
            shape = load_case(c).labels.shape
            axis, k = tuning_block(shape)
            assert seen["pairs"][c.case][axis] == shape[axis] - k  # the block's pixels are not trained on


def test_cell_resume_refuses_a_changed_split(tmp_path):
    """A resumed cell run derives its split from the data folder again: with a split.json edited since, it would
    validate on images it has already trained on. Refused in one line; the unchanged split resumes."""
    from medseg.cells.train import train_cells
    from medseg.errors import InputError

    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 3)
    cfg = _small_cells(tune_fraction=0)
    run = train_cells(ds, tmp_path / "run", cfg, progress=False)
    split = json.loads((run / "model.json").read_text())["split"]
    assert split["val"] == ids[2:]
    (ds / "split.json").write_text(json.dumps({"train": ids[1:], "val": ids[:1]}))  # a trained image now validates
    cfg.max_steps = 2
    with pytest.raises(InputError, match="split"):
        train_cells(ds, run, cfg, resume=True, progress=False)
    assert json.loads((run / "model.json").read_text())["split"] == split
    (ds / "split.json").write_text(json.dumps({"train": ids[:2], "val": ids[2:]}))
    train_cells(ds, run, cfg, resume=True, progress=False)
    assert json.loads((run / "model.json").read_text())["steps"] == 2


def test_cells_benchmark_never_scores_training_images_and_never_trains_on_eval(tmp_path, monkeypatch, capsys):
    """benchmarks/cells.py: --eval DIR is scored (all of it) and never trained on; a run trained on the default
    split re-scored with --fold K (whose images include its training images) is refused, not scored."""
    from benchmarks.cells import main
    from medseg.cells.splits import fold_of

    ds, held_out = tmp_path / "ds", tmp_path / "held_out"
    ids = linked_cell_dataset(ds, 8)
    (ds / "split.json").unlink()
    src = data_path("dsb2018_fluo")
    eval_ids = [p.stem for p in sorted((src / "images").glob("*.png"))[20:22]]
    for sub, ext in (("images", "png"), ("labels", "tif")):
        (held_out / sub).mkdir(parents=True)
        for i in eval_ids:
            (held_out / sub / f"{i}.{ext}").symlink_to(src / sub / f"{i}.{ext}")
    seen = _instrument_cells(monkeypatch)
    common = ["--data", str(ds), "--run", str(tmp_path / "run"), "--learned-only", "--threads", "1"]
    assert main([*common, "--patch", "64", "--base-filters", "4", "--steps", "1", "--tune-fraction", "0",
                 "--eval", str(held_out), "--json", str(tmp_path / "e.json")]) == 0
    assert not set(seen["pairs"]) & set(eval_ids) and set(seen["pairs"]) <= set(ids)
    scored = [r["image"] for r in json.loads((tmp_path / "e.json").read_text())["per_image"]["learned"]]
    assert sorted(scored) == sorted(eval_ids)
    trained = set(json.loads((tmp_path / "run" / "model.json").read_text())["split"]["train"])
    k = next(f for f in range(2) if any(fold_of(i, 2) == f for i in trained))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["--skip-train", *common, "--fold", str(k), "--folds", "2", "--json", str(tmp_path / "f.json")])
    assert exc.value.code == 2 and "trained or tuned on" in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()


def test_classical_mode_keeps_nothing_from_other_images():
    """The classical mode estimates the nucleus size per image: an image segments the same alone and after
    others (no parameter carried over from the images it is scored on)."""
    from medseg.cells.count import ClassicalSegmenter
    from medseg.cells.data import list_cases, load_case

    cases = [load_case(c) for c in list_cases(data_path("dsb2018_fluo"))[:3]]
    alone = ClassicalSegmenter().segment(cases[2].image)
    seg = ClassicalSegmenter()
    for c in cases[:2]:
        seg.segment(c.image)
    np.testing.assert_array_equal(seg.segment(cases[2].image), alone)


def test_make_splits_puts_an_id_given_twice_in_one_fold():
    """A case id given twice is one case: validated in one fold only, never trained on in that fold."""
    from medseg.train.splits import make_splits

    ids = ["a", "a", "b", "c", "d"]
    folds = make_splits(ids, 2)
    assert sorted(i for f in folds for i in f["val"]) == ["a", "b", "c", "d"]
    assert all(not set(f["train"]) & set(f["val"]) for f in folds)
