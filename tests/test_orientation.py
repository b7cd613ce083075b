"""A plan's orientation: every case is brought to ``Plan.orientation`` (RAS) before training and prediction, by
transposes and flips only, so a model does not depend on how files store their axes. The same real hippocampus
cases stored RAS (as published) and LPS (as a DICOM export stores them) train the same network, and a prediction on
the LPS file is the RAS file's prediction on the LPS grid (exact shape and affine). Before, a model trained on RAS
files mirrored anterior and posterior on an LPS series."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_dataset import tiny_dataset
from test_train import TINY


def _restored(src: Path, dst: Path, codes: str) -> Path:
    """The dataset at ``src`` with every file stored in axis order ``codes`` (same voxels, same world points)."""
    import shutil

    from medseg.io.orientation import reorient
    from medseg.io.readers import read_image
    from medseg.io.writers import write_image

    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True)
        for f in sorted((src / sub).iterdir()):
            write_image(reorient(read_image(f), codes)[0], dst / sub / f.name)
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    return dst


def _plan(tmp_path: Path, ds: Path, name: str, **kw) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "dataset": str(ds), "max_epochs": 1, **kw}))
    return path


def test_reorient_keeps_every_voxel_at_its_world_point():
    from medseg.io.image import Image
    from medseg.io.orientation import reorient, restore

    aff = np.array([[0.0, -0.9, 0.1, 5.0], [-1.2, 0.0, 0.0, 7.0], [0.0, 0.1, 2.5, -3.0], [0, 0, 0, 1]])  # oblique
    img = Image(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), aff)
    ras, back = reorient(img, "RAS")
    assert ras.orientation == "RAS" and sorted(ras.shape) == sorted(img.shape)
    idx = np.argwhere(np.ones(img.shape, bool))
    world = img.index_to_world(idx)
    ras_idx = np.rint(ras.world_to_index(world)).astype(int)
    assert np.array_equal(ras.array[tuple(ras_idx.T)], img.array[tuple(idx.T)])  # each value at its world point
    assert np.array_equal(restore(ras.array, back), img.array)


def test_make_plan_writes_ras_and_a_bad_orientation_is_refused(tmp_path):
    from medseg.errors import InputError
    from medseg.plan.plan import Plan
    from medseg.plan.planner import make_plan

    plan = make_plan(tiny_dataset(tmp_path / "ds", 2), minutes=1)
    plan.to_yaml(tmp_path / "p.yaml")
    assert plan.orientation == "RAS" and Plan.from_yaml(tmp_path / "p.yaml").orientation == "RAS"
    assert Plan().orientation is None  # plans and models from before the field: cases as stored
    with pytest.raises(InputError, match="orientation"):
        Plan(orientation="RRS").validate()


def test_the_same_cases_stored_lps_train_and_predict_as_the_ras_ones(tmp_path):
    from medseg.infer.predict import predict_image
    from medseg.io.readers import read_image
    from medseg.train.artifact import load_model
    from medseg.train.trainer import train

    ras = tiny_dataset(tmp_path / "ras", 4)
    lps = _restored(ras, tmp_path / "lps", "LPS")
    case = sorted((ras / "imagesTr").iterdir())[0].name
    a, b = read_image(ras / "imagesTr" / case), read_image(lps / "imagesTr" / case)
    assert (a.orientation, b.orientation) == ("RAS", "LPS") and not np.array_equal(a.array, b.array)
    runs = {}
    for name, ds in (("ras", ras), ("lps", lps)):
        res = train(_plan(tmp_path, ds, name, orientation="RAS"), tmp_path / f"run_{name}", device="cpu",
                    progress=False)
        with open(res.run_dir / "log.csv") as f:
            runs[name] = (next(csv.DictReader(f)), load_model(res.model_path))
    row_a, row_b = runs["ras"][0], runs["lps"][0]
    assert {k: v for k, v in row_a.items() if k != "elapsed_s"} == {k: v for k, v in row_b.items() if k != "elapsed_s"}
    for k, v in runs["ras"][1].state_dict.items():
        assert torch.equal(v, runs["lps"][1].state_dict[k]), k
    art = runs["ras"][1]
    net = art.build()
    lab_a, _ = predict_image(net, art.plan, a)
    lab_b, prob_b = predict_image(net, art.plan, b, probabilities=True)
    assert lab_b.shape == b.shape and np.array_equal(lab_b.affine, b.affine)  # the input's own grid
    assert prob_b.array.shape == (art.plan.num_classes, *b.shape)
    assert np.array_equal(lab_b.array, lab_a.array[::-1, ::-1])  # the RAS prediction, stored as the input is


def test_an_image_already_in_order_is_not_copied_and_a_plan_follows_its_fingerprint():
    from medseg.io.image import Image
    from medseg.io.orientation import reorient
    from medseg.plan.planner import make_plan
    from medseg.train.dataset import Dataset
    from test_plan import _fp

    img = Image(np.zeros((3, 4, 5), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    assert reorient(img, "RAS")[0] is img  # predict made a full copy of every RAS input
    fp = _fp([[1.0, 1.0, 1.0]] * 2, [[20, 20, 20]] * 2)
    ds = Dataset(Path("d"), {"labels": {"0": "background", "1": "a"}})
    assert make_plan(ds, fingerprint=fp).orientation == "RAS"
    fp.orientation = None  # measured as stored: the plan must not say RAS
    assert make_plan(ds, fingerprint=fp).orientation is None


def test_probabilities_of_a_transposed_input_are_laid_out_in_its_own_axis_order(tmp_path):
    """A sagittal-like storage (axes permuted, not only flipped, to reach RAS): labels and probabilities are the
    RAS prediction on the input's grid, and the probability file holds the input's axis order (written out
    contiguously; it held RAS order and was written from a strided view: 2x the time, a class of extra RAM)."""
    from medseg.infer.native import write_probabilities
    from medseg.infer.predict import predict_image
    from medseg.io.orientation import reorient, restore
    from medseg.io.readers import read_image
    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan

    ras_img = read_image(sorted((tiny_dataset(tmp_path / "ds", 1) / "imagesTr").iterdir())[0])
    other, back = reorient(ras_img, "PLS")  # two axes swapped, both flipped
    assert sorted(other.shape) == sorted(ras_img.shape) and other.shape != ras_img.shape
    torch.manual_seed(0)
    plan = Plan(channels=["MRI"], labels={0: "background", 1: "a", 2: "b"}, patch_size=[16, 16, 16], base_filters=4,
                max_filters=8, bf16=False, orientation="RAS").validate()
    net = build_from_plan(plan).eval()
    lab_r, prob_r = predict_image(net, plan, ras_img, probabilities=True, spill_dir=tmp_path)
    lab_o, prob_o = predict_image(net, plan, other, probabilities=True, spill_dir=tmp_path)
    assert np.array_equal(lab_o.array, restore(lab_r.array, back))
    assert np.array_equal(np.asarray(prob_o.array), restore(np.asarray(prob_r.array), back, channels_first=True))
    strides = [abs(s) for s in prob_o.array.strides[1:]]
    assert strides == sorted(strides)  # the spill file in the input's (NIfTI, Fortran) order, flips aside
    out = write_probabilities(prob_o, tmp_path / "p.nii.gz")
    back_read = read_image(out)
    assert np.array_equal(np.moveaxis(np.asarray(back_read.array), -1, 0) if not back_read.channels_first
                          else np.asarray(back_read.array), np.asarray(prob_o.array))
