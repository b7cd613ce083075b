"""Robustness sweep (issue 7 item 5): every CLI command against bad inputs made from the real data.

Each bad input must give exit code 2, one line on stderr naming the file and the problem, no traceback,
no partial output, and leave the inputs unchanged. Paths with spaces and non-ASCII names must WORK.
The corpus is built once per module in a temporary folder from ``../shared/data`` (never committed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

import _badinputs as bad
from conftest import linked_cell_dataset, assert_clean_error, data_path, run_cli, run_cli_subprocess

HIPPO = ("msd_hippocampus",)
CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_006")


def _msd(root: Path, cases=CASES, image=None, label=None) -> Path:
    """A small MSD dataset of real hippocampus cases (symlinks), with optional replaced image/label of case 0."""
    src = data_path(*HIPPO)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]
    meta["numTraining"] = len(cases)
    (root / "dataset.json").write_text(json.dumps(meta))
    for i, c in enumerate(cases):
        for sub, repl in (("imagesTr", image), ("labelsTr", label)):
            dst = root / sub / f"{c}.nii.gz"
            if i == 0 and repl is not None:
                repl(src / sub / f"{c}.nii.gz", dst)
            else:
                dst.symlink_to(src / sub / f"{c}.nii.gz")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real files and their broken variants (see tests/_badinputs.py)."""
    d = tmp_path_factory.mktemp("corpus")
    img = data_path(*HIPPO, "imagesTr", "hippocampus_001.nii.gz")
    lab = data_path(*HIPPO, "labelsTr", "hippocampus_001.nii.gz")
    png = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0]
    c = {"img": shutil.copyfile(img, d / "img.nii.gz"), "lab": shutil.copyfile(lab, d / "lab.nii.gz"),
         "labels_json": data_path(*HIPPO, "dataset.json")}
    c["trunc"] = bad.truncated(img, d / "trunc.nii.gz")
    c["hdr"] = bad.header_overwritten(img, d / "hdr.nii.gz")
    c["png_nii"] = bad.renamed(png, d / "png.nii.gz")
    c["nan_lab"] = bad.label_with_nan(lab, d / "nan_lab.nii.gz")
    c["huge_lab"] = bad.label_with_huge_value(lab, d / "huge_lab.nii.gz")
    c["crop_lab"] = bad.cropped(lab, d / "crop_lab.nii.gz")
    c["shift_lab"] = bad.shifted(lab, d / "shift_lab.nii.gz")
    (d / "textdicom").mkdir()
    (d / "textdicom" / "slice1.dcm").write_text("this is a text file, not DICOM\n")
    c["textdicom"] = d / "textdicom"
    # a real 4-slice CT series with one slice cut short
    ct = data_path("dicom", "monai_ct_tiny")
    shutil.copytree(ct, d / "ct_trunc")
    bad.truncated(ct / sorted(os.listdir(ct))[1], d / "ct_trunc" / sorted(os.listdir(ct))[1], 0.6)
    c["ct_trunc"] = d / "ct_trunc"
    (d / "empty").mkdir()
    (d / "labdir").mkdir()
    c["labdir"] = d / "labdir"
    shutil.copyfile(lab, d / "labdir" / "hippocampus_001.nii.gz")
    c["empty"] = d / "empty"
    (d / "a_file").write_text("a regular file where a folder is expected\n")
    c["file_parent"] = d / "a_file"
    # microscopy
    c["png"] = shutil.copyfile(png, d / "cell.png")
    c["png_trunc"] = bad.truncated(png, d / "cell_trunc.png")
    c["text_tif"] = d / "text.tif"
    c["text_tif"].write_text("not a TIFF\n")
    ref = tifffile.imread(data_path("dsb2018_fluo", "labels", png.stem + ".tif"))
    tifffile.imwrite(d / "cell_ref.tif", ref)
    c["cell_ref"] = d / "cell_ref.tif"
    nanref = ref.astype(np.float32)
    nanref[ref == ref.max()] = np.nan
    tifffile.imwrite(d / "cell_nan.tif", nanref)
    c["cell_nan"] = d / "cell_nan.tif"
    tifffile.imwrite(d / "cell_crop.tif", ref[:-3, :-3])
    c["cell_crop"] = d / "cell_crop.tif"
    # datasets (MSD layout) with one bad case each
    c["ds_nan"] = _msd(d / "ds_nan", label=bad.label_with_nan)
    c["ds_huge"] = _msd(d / "ds_huge", label=bad.label_with_huge_value)
    c["ds_geom"] = _msd(d / "ds_geom", label=bad.cropped)
    c["ds_trunc"] = _msd(d / "ds_trunc", image=bad.truncated)
    c["ds_good"] = _msd(d / "ds_good")
    c["ds_nojson"] = _msd(d / "ds_nojson")
    (c["ds_nojson"] / "dataset.json").unlink()
    # cells datasets: a truncated image; float labels with NaN
    for name, image, label in (("cds_trunc", c["png_trunc"], c["cell_ref"]), ("cds_nan", c["png"], c["cell_nan"])):
        (d / name / "images").mkdir(parents=True)
        (d / name / "labels").mkdir()
        shutil.copyfile(image, d / name / "images" / "a.png")
        shutil.copyfile(label, d / name / "labels" / "a.tif")
        c[name] = d / name
    # per-patient (BraTS) layouts: a truncated modality; a patient without its label
    brats = sorted(p for p in data_path("brats2015_sample").iterdir() if p.is_dir())[0]
    for name in ("brats_trunc", "brats_noflair"):
        (d / name / brats.name).mkdir(parents=True)
        for f in brats.glob("*.nii.gz"):
            (d / name / brats.name / f.name).symlink_to(f)
        c[name] = d / name
    (d / "brats_trunc" / brats.name / "Flair_subtrMeanDivStd.nii.gz").unlink()
    bad.truncated(brats / "Flair_subtrMeanDivStd.nii.gz", d / "brats_trunc" / brats.name / "Flair_subtrMeanDivStd.nii.gz")
    (d / "brats_noflair" / brats.name / "Flair_subtrMeanDivStd.nii.gz").unlink()
    # models
    c["model_trunc"] = d / "model_trunc.pt"
    c["model_text"] = d / "model_text.pt"
    c["model_text"].write_text("not a model\n")
    c["root"] = d
    return c


@pytest.fixture(scope="module")
def model(corpus):
    """A model artifact with random weights (robustness does not need a trained network)."""
    from test_predict import make_model

    (corpus["root"] / "models").mkdir()
    m = make_model(corpus["root"] / "models" / "model.pt")
    bad.truncated(m, corpus["model_trunc"])
    return m


# (case id, argv builder taking (corpus, out), needles for the error line)
# ``out`` is a fresh path inside the test's tmp_path that must not exist afterwards.
BAD = [
    # info
    ("info-truncated-gzip", lambda c, o: ["info", c["trunc"]], ["trunc.nii.gz"]),
    ("info-header-overwritten", lambda c, o: ["info", c["hdr"]], ["hdr.nii.gz"]),
    ("info-png-renamed-nifti", lambda c, o: ["info", c["png_nii"]], ["png.nii.gz"]),
    ("info-text-as-dicom", lambda c, o: ["info", c["textdicom"]], ["textdicom"]),
    ("info-empty-folder", lambda c, o: ["info", c["empty"]], ["empty"]),
    ("info-missing", lambda c, o: ["info", c["root"] / "nope.nii.gz"], ["nope.nii.gz"]),
    ("info-dicom-slice-truncated", lambda c, o: ["info", c["ct_trunc"]], ["ct_trunc"]),
    # convert
    ("convert-truncated-gzip", lambda c, o: ["convert", c["trunc"], o.parent / "x.nii.gz"], ["trunc.nii.gz"]),
    ("convert-header-overwritten", lambda c, o: ["convert", c["hdr"], o.parent / "x.nii.gz"], ["hdr.nii.gz"]),
    ("convert-png-renamed-nifti", lambda c, o: ["convert", c["png_nii"], o.parent / "x.mha"], ["png.nii.gz"]),
    ("convert-text-as-dicom", lambda c, o: ["convert", c["textdicom"], o], ["textdicom"]),
    ("convert-empty-folder", lambda c, o: ["convert", c["empty"], o], ["empty"]),
    ("convert-dicom-slice-truncated", lambda c, o: ["convert", c["ct_trunc"], o.parent / "ct.nii.gz"], ["ct_trunc"]),
    ("convert-output-parent-is-file", lambda c, o: ["convert", c["img"], c["file_parent"] / "x.nii.gz"], ["a_file"]),
    ("convert-onto-its-input", lambda c, o: ["convert", c["img"], c["img"]], ["img.nii.gz", "overwrite"]),
    ("convert-series-not-there", lambda c, o: ["convert", c["ct_trunc"].parent / "empty", o, "--series", "7"],
     ["empty"]),
    ("convert-unknown-suffix", lambda c, o: ["convert", c["img"], o.parent / "x.xyz"], ["x.xyz"]),
    # evaluate
    ("evaluate-shape-mismatch", lambda c, o: ["evaluate", "-p", c["crop_lab"], "-r", c["lab"], "-o", o, "-q"],
     ["crop_lab.nii.gz", "shape"]),
    ("evaluate-affine-mismatch", lambda c, o: ["evaluate", "-p", c["shift_lab"], "-r", c["lab"], "-o", o, "-q"],
     ["shift_lab.nii.gz"]),
    ("evaluate-nan-labels", lambda c, o: ["evaluate", "-p", c["nan_lab"], "-r", c["lab"], "-o", o, "-q"],
     ["nan_lab.nii.gz"]),
    ("evaluate-huge-label-not-in-labels",
     lambda c, o: ["evaluate", "-p", c["huge_lab"], "-r", c["lab"], "--labels", c["labels_json"], "-o", o, "-q"],
     ["huge_lab.nii.gz", "70000"]),
    ("evaluate-labels-not-json",
     lambda c, o: ["evaluate", "-p", c["lab"], "-r", c["lab"], "--labels", c["text_tif"], "-o", o, "-q"],
     ["text.tif"]),
    ("evaluate-truncated", lambda c, o: ["evaluate", "-p", c["trunc"], "-r", c["lab"], "-o", o, "-q"],
     ["trunc.nii.gz"]),
    ("evaluate-empty-pred-folder", lambda c, o: ["evaluate", "-p", c["empty"], "-r", c["labdir"], "-o", o, "-q"],
     ["empty"]),
    ("evaluate-output-parent-is-file",
     lambda c, o: ["evaluate", "-p", c["lab"], "-r", c["lab"], "-o", c["file_parent"] / "ev", "-q"], ["a_file"]),
    # export
    ("export-truncated", lambda c, o: ["export", c["trunc"], "-f", "nifti", "-o", o.parent / "x.nii.gz"], ["trunc.nii.gz"]),
    ("export-nan-labels", lambda c, o: ["export", c["nan_lab"], "-f", "seg-nrrd", "-o", o.parent / "x.seg.nrrd"],
     ["nan_lab.nii.gz"]),
    ("export-onto-its-input", lambda c, o: ["export", c["lab"], "-f", "nifti", "-o", c["lab"]], ["lab.nii.gz"]),
    ("export-unknown-format", lambda c, o: ["export", c["lab"], "-f", "bogus", "-o", o.parent / "x.dcm"], ["bogus"]),
    ("export-dicom-seg-no-reference", lambda c, o: ["export", c["lab"], "-f", "dicom-seg", "-o", o.parent / "x.dcm"],
     ["reference"]),
    ("export-reference-text-as-dicom",
     lambda c, o: ["export", c["lab"], "-f", "dicom-seg", "-r", c["textdicom"], "-o", o.parent / "x.dcm"], ["textdicom"]),
    ("export-reference-empty",
     lambda c, o: ["export", c["lab"], "-f", "rtstruct", "-r", c["empty"], "-o", o.parent / "x.dcm"], ["empty"]),
    ("export-output-parent-is-file",
     lambda c, o: ["export", c["lab"], "-f", "nifti", "-o", c["file_parent"] / "x.nii.gz"], ["a_file"]),
    # plan
    ("plan-empty-folder", lambda c, o: ["plan", c["empty"], "-o", o.parent / "plan.yaml"], ["empty"]),
    ("plan-no-dataset-json", lambda c, o: ["plan", c["ds_nojson"], "-o", o.parent / "plan.yaml"], ["dataset.json"]),
    ("plan-truncated-image", lambda c, o: ["plan", c["ds_trunc"], "-o", o.parent / "plan.yaml"], ["hippocampus_001"]),
    ("plan-geometry-mismatch", lambda c, o: ["plan", c["ds_geom"], "-o", o.parent / "plan.yaml"], ["hippocampus_001"]),
    ("plan-output-parent-is-file", lambda c, o: ["plan", c["ds_good"], "-o", c["file_parent"] / "p.yaml"],
     ["a_file"]),
    # train
    ("train-empty-folder", lambda c, o: ["train", c["empty"], "-o", o, "--max-epochs", "1", "-q"], ["empty"]),
    ("train-no-dataset-json", lambda c, o: ["train", c["ds_nojson"], "-o", o, "--max-epochs", "1", "-q"],
     ["ds_nojson"]),
    ("train-truncated-image", lambda c, o: ["train", c["ds_trunc"], "-o", o, "--max-epochs", "1", "-q"],
     ["hippocampus_001"]),
    ("train-nan-labels", lambda c, o: ["train", c["ds_nan"], "-o", o, "--max-epochs", "1", "-q"],
     ["hippocampus_001"]),
    ("train-huge-labels", lambda c, o: ["train", c["ds_huge"], "-o", o, "--max-epochs", "1", "-q"],
     ["hippocampus_001", "70000"]),
    ("train-geometry-mismatch", lambda c, o: ["train", c["ds_geom"], "-o", o, "--max-epochs", "1", "-q"],
     ["hippocampus_001"]),
    ("train-text-as-config", lambda c, o: ["train", c["text_tif"], "-o", o, "-q"], ["text.tif"]),
    # predict (the model fixture provides model.pt)
    ("predict-truncated-model", lambda c, o: ["predict", "-m", c["model_trunc"], "-i", c["img"], "-o", o, "-q"],
     ["model_trunc.pt"]),
    ("predict-text-model", lambda c, o: ["predict", "-m", c["model_text"], "-i", c["img"], "-o", o, "-q"],
     ["model_text.pt"]),
    ("predict-empty-model-folder", lambda c, o: ["predict", "-m", c["empty"], "-i", c["img"], "-o", o, "-q"],
     ["empty"]),
    ("predict-truncated-input", lambda c, o: ["predict", "-m", c["model"], "-i", c["trunc"], "-o", o, "-q"],
     ["trunc.nii.gz"]),
    ("predict-png-renamed-nifti", lambda c, o: ["predict", "-m", c["model"], "-i", c["png_nii"], "-o", o, "-q"],
     ["png.nii.gz"]),
    ("predict-empty-input-folder", lambda c, o: ["predict", "-m", c["model"], "-i", c["empty"], "-o", o, "-q"],
     ["empty"]),
    ("predict-text-as-dicom", lambda c, o: ["predict", "-m", c["model"], "-i", c["textdicom"], "-o", o, "-q"],
     ["textdicom"]),
    ("predict-output-parent-is-file",
     lambda c, o: ["predict", "-m", c["model"], "-i", c["img"], "-o", c["file_parent"] / "p", "-q"], ["a_file"]),
    ("predict-bad-shard", lambda c, o: ["predict", "-m", c["model"], "-i", c["img"], "-o", o, "--shard", "3/2"],
     ["shard"]),
    # ensemble (joining models)
    ("ensemble-truncated-model", lambda c, o: ["ensemble", c["model"], c["model_trunc"], "-o", o],
     ["model_trunc.pt"]),
    ("ensemble-text-model", lambda c, o: ["ensemble", c["model_text"], c["model"], "-o", o], ["model_text.pt"]),
    ("ensemble-one-model", lambda c, o: ["ensemble", c["model"], "-o", o], ["at least two"]),
    # dataset convert / check
    ("dataset-convert-empty", lambda c, o: ["dataset", "convert", c["empty"], "-o", o], ["empty"]),
    ("dataset-convert-truncated", lambda c, o: ["dataset", "convert", c["brats_trunc"], "-o", o],
     ["Flair_subtrMeanDivStd"]),
    ("dataset-convert-no-flair", lambda c, o: ["dataset", "convert", c["brats_noflair"], "-o", o],
     ["Flair"]),
    ("dataset-check-nan", lambda c, o: ["dataset", "check", c["ds_nan"]], ["hippocampus_001"]),
    ("dataset-check-huge", lambda c, o: ["dataset", "check", c["ds_huge"]], ["70000"]),
    ("dataset-check-geometry", lambda c, o: ["dataset", "check", c["ds_geom"]], ["hippocampus_001"]),
    ("dataset-check-truncated", lambda c, o: ["dataset", "check", c["ds_trunc"]], ["hippocampus_001"]),
    ("dataset-check-empty", lambda c, o: ["dataset", "check", c["empty"]], ["empty"]),
    # cells
    ("cells-train-empty", lambda c, o: ["cells", "train", c["empty"], "-o", o, "--max-steps", "1"], ["empty"]),
    ("cells-train-truncated-image", lambda c, o: ["cells", "train", c["cds_trunc"], "-o", o, "--max-steps", "1"],
     ["a.png"]),
    ("cells-train-nan-labels", lambda c, o: ["cells", "train", c["cds_nan"], "-o", o, "--max-steps", "1"],
     ["a.tif"]),
    ("cells-count-truncated-png", lambda c, o: ["cells", "count", "-i", c["png_trunc"], "-o", o, "--classical"],
     ["cell_trunc.png"]),
    ("cells-count-text-as-tiff", lambda c, o: ["cells", "count", "-i", c["text_tif"], "-o", o, "--classical"],
     ["text.tif"]),
    ("cells-count-empty-folder", lambda c, o: ["cells", "count", "-i", c["empty"], "-o", o, "--classical"],
     ["empty"]),
    ("cells-count-text-model", lambda c, o: ["cells", "count", "-i", c["png"], "-o", o, "-m", c["textdicom"]],
     ["textdicom"]),
    ("cells-count-output-parent-is-file",
     lambda c, o: ["cells", "count", "-i", c["png"], "-o", c["file_parent"] / "o", "--classical"], ["a_file"]),
    ("cells-evaluate-nan", lambda c, o: ["cells", "evaluate", "--pred", c["cell_nan"], "--ref", c["cell_ref"],
                                         "-o", o], ["cell_nan.tif"]),
    ("cells-evaluate-shape", lambda c, o: ["cells", "evaluate", "--pred", c["cell_crop"], "--ref", c["cell_ref"],
                                           "-o", o], ["cell_crop.tif", "shape"]),
    ("cells-evaluate-text", lambda c, o: ["cells", "evaluate", "--pred", c["text_tif"], "--ref", c["cell_ref"],
                                          "-o", o], ["text.tif"]),
    ("cells-evaluate-empty", lambda c, o: ["cells", "evaluate", "--pred", c["empty"], "--ref", c["cell_ref"],
                                           "-o", o], ["empty"]),
    # data, demo
    ("data-fetch-unknown", lambda c, o: ["data", "fetch", "no-such-dataset", "-o", o], ["no-such-dataset"]),
    ("data-where-missing", lambda c, o: ["data", "where", "--data", c["root"] / "nowhere"], ["nowhere", "not found"]),
    ("demo-no-data", lambda c, o: ["demo", "--data", c["root"] / "nowhere", "-o", o], ["nowhere", "not found"]),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input(case, corpus, model, tmp_path):
    _, argv, needles = case
    c = {**corpus, "model": model}
    out = tmp_path / "out"
    before = bad.tree_hashes(c["root"])
    tmp_before = bad.listing(tmp_path)
    res = run_cli(*argv(c, out))
    bad.check_bad_input(res, *needles, inputs_before=before)
    assert bad.listing(tmp_path) == tmp_before, f"partial output: {bad.listing(tmp_path) - tmp_before}"


def test_every_command_is_swept():
    """The sweep covers every command ``medseg --help`` lists (a new command must get bad-input cases)."""
    from typer.main import get_command

    from medseg.cli import app

    def leaves(cmd, prefix=""):
        subs = getattr(cmd, "commands", None)
        if not subs:
            return [prefix.strip()]
        return [n for name, sub in subs.items() for n in leaves(sub, f"{prefix} {name}")]

    commands = set(leaves(get_command(app)))
    swept = {" ".join(b[0].split("-")[:2]) if b[0].split("-")[0] in ("dataset", "cells", "data") else
             b[0].split("-")[0] for b in BAD}
    swept |= {"data list"}  # takes no input: checked in test_data_list_works
    assert commands - swept == set(), f"commands without bad-input cases: {commands - swept}"


# ---------------------------------------------------------------------------------------------------------------
# What must WORK: paths with spaces and non-ASCII names, huge label values; and the environment cases.

@pytest.fixture(scope="module")
def cell_model(tmp_path_factory):
    """A cell model trained for one step on two real DSB2018 images (mechanics, not accuracy)."""
    from medseg.cells.train import CellTrainConfig, train_cells

    ds = tmp_path_factory.mktemp("cells") / "cell data ü"
    linked_cell_dataset(ds, 2)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=1, base_filters=4, max_steps=1, max_minutes=2, threads=1)
    return train_cells(ds, ds.parent / "run dïr", cfg, progress=False)


def test_spaces_and_non_ascii_paths_work(corpus, model, cell_model, tmp_path):
    """Every command on files whose paths hold spaces and non-ASCII letters: success, outputs named after them."""
    base = tmp_path / "my data" / "données é"
    base.mkdir(parents=True)
    img = shutil.copyfile(corpus["img"], base / "hippo 001 ü.nii.gz")
    lab = shutil.copyfile(corpus["lab"], base / "hippo 001 ü label.nii.gz")
    png = shutil.copyfile(corpus["png"], base / "noyau ç 1.png")
    ds = _msd(base / "data sét")
    before = bad.tree_hashes(img, lab, png)
    out = tmp_path / "sortie ñ"
    out.mkdir()

    res = run_cli("info", img, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)[0]["shape"] == list(nib.load(img).shape)
    res = run_cli("convert", img, out / "converted é.mha")
    assert res.code == 0, res.err
    import SimpleITK as sitk

    conv = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "converted é.mha")))
    assert np.array_equal(conv.transpose(2, 1, 0), np.asarray(nib.load(img).dataobj))
    res = run_cli("evaluate", "-p", lab, "-r", lab, "-o", out / "éval", "-q")
    assert res.code == 0, res.err
    m = json.loads((out / "éval" / "metrics.json").read_text())
    assert all(v["dice"] == 1.0 for v in m["per_case"][0]["classes"].values())
    res = run_cli("export", lab, "-f", "nifti", "-o", out / "export ü.nii.gz")
    assert res.code == 0, res.err
    assert np.array_equal(np.asarray(nib.load(out / "export ü.nii.gz").dataobj), np.asarray(nib.load(lab).dataobj))
    assert run_cli("dataset", "check", ds).code == 0
    res = run_cli("plan", ds, "-o", out / "plan é.yaml")
    assert res.code == 0 and (out / "plan é.yaml").stat().st_size > 0, res.err
    res = run_cli("predict", "-m", model, "-i", img, "-o", out / "prédictions", "-q")
    assert res.code == 0, res.err
    assert nib.load(out / "prédictions" / "hippo 001 ü.nii.gz").shape == nib.load(img).shape
    for mode in (["--classical"], ["-m", cell_model]):
        res = run_cli("cells", "count", "-i", png, "-o", out / f"cellules {mode[0]}", *mode)
        assert res.code == 0, res.err
        assert (out / f"cellules {mode[0]}" / "noyau ç 1_labels.tif").exists()
        assert (out / f"cellules {mode[0]}" / "counts.csv").read_text().count("noyau ç 1.png,noyau ç 1,") == 1
    res = run_cli("cells", "evaluate", "--pred", out / "cellules --classical" / "noyau ç 1_labels.tif",
                  "--ref", corpus["cell_ref"], "-o", out / "éval cellules")
    assert res.code == 0 and (out / "éval cellules" / "metrics.json").exists(), res.err
    assert bad.tree_hashes(img, lab, png) == before


def test_huge_label_values_work(corpus, tmp_path):
    """70000 in a uint32 map is a valid value: NIfTI export keeps it, and instance ids that large match."""
    res = run_cli("export", corpus["huge_lab"], "-f", "nifti", "-o", tmp_path / "huge.nii.gz")
    assert res.code == 0, res.err
    assert np.array_equal(np.asarray(nib.load(tmp_path / "huge.nii.gz").dataobj),
                          np.asarray(nib.load(corpus["huge_lab"]).dataobj))
    ref = tifffile.imread(corpus["cell_ref"])
    big = np.where(ref > 0, ref.astype(np.uint32) + 70000, 0).astype(np.uint32)  # same instances, huge ids
    tifffile.imwrite(tmp_path / "big.tif", big)
    res = run_cli("cells", "evaluate", "--pred", tmp_path / "big.tif", "--ref", corpus["cell_ref"],
                  "-o", tmp_path / "ev")
    assert res.code == 0, res.err
    row = json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_image"][0]
    n = len(np.unique(ref)) - 1  # counted independently: the same masks, only the ids differ
    assert row["n_ref"] == row["n_pred"] == row["tp@0.9"] == n and row["fp@0.5"] == row["fn@0.5"] == 0


def test_read_only_output_folder(corpus, tmp_path):
    """A folder without write permission: clean error, nothing written (root ignores chmod, hence the skip)."""
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root writing (the parent-is-a-file cases cover it)")
    ro = tmp_path / "read only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_clean_error(run_cli("convert", corpus["img"], ro / "x.nii.gz"), "read only")
        assert_clean_error(run_cli("evaluate", "-p", corpus["lab"], "-r", corpus["lab"], "-o", ro / "ev", "-q"),
                           "read only")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_data_list_works():
    res = run_cli("data", "list")
    assert res.code == 0 and "msd-hippocampus" in res.out and "dsb2018" in res.out


def test_demo_with_folder_lacking_sample_data(corpus, tmp_path):
    assert_clean_error(run_cli("demo", "--data", corpus["empty"], "-o", tmp_path / "demo"), "empty")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (disk full after a few writes); skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny fs"
    if not bad.mount_tiny_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root in a mount namespace that allows it)")
    try:  # fill it: small outputs (a compressed label map, a report) must hit the limit too
        with open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (60 << 10))
    except OSError:
        pass
    yield mnt
    import gc
    import subprocess

    gc.collect()  # a file object held by a failed write's traceback keeps the mount busy until collected
    if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@pytest.mark.parametrize("cmd", ["convert", "export", "evaluate", "predict", "cells-count"])
def test_disk_full(cmd, corpus, model, tiny_tmpfs):
    """Output on a full file system: a clean one-line error naming the output, no partial file left."""
    ct = data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz")  # ~MBs uncompressed
    big = corpus["root"] / "big_lab.nii.gz"
    if not big.exists():
        arr = (np.asarray(nib.load(ct).dataobj) > 100).astype(np.uint8)
        nib.save(nib.Nifti1Image(arr, nib.load(ct).affine), big)
    o = tiny_tmpfs / "out"
    argv = {"convert": ["convert", ct, tiny_tmpfs / "ct.nii"],
            "export": ["export", big, "-f", "seg-nrrd", "-o", tiny_tmpfs / "x.seg.nrrd"],
            "evaluate": ["evaluate", "-p", big, "-r", big, "-o", o, "-q", "--no-surface"],
            "predict": ["predict", "-m", model, "-i", ct, "-o", o, "-q", "--probabilities"],
            "cells-count": ["cells", "count", "-i", data_path("nuclei_stardist", "img3d.tif"), "-o", o,
                            "--classical"]}[cmd]
    before = bad.tree_hashes(corpus["root"])
    res = run_cli(*argv)
    assert_clean_error(res, "cannot write", "disk full")
    leftovers = [p for p in tiny_tmpfs.rglob("*") if p.is_file() and p.name != "filler"]
    assert leftovers == [], f"partial output on the full disk: {leftovers}"
    assert bad.tree_hashes(corpus["root"]) == before


def test_subprocess_no_traceback_and_debug_shows_one(corpus):
    res = run_cli_subprocess("info", corpus["trunc"], timeout=120)
    assert_clean_error(res, "trunc.nii.gz")
    res = run_cli_subprocess("--debug", "info", corpus["trunc"], timeout=120)
    assert res.code != 0 and "Traceback" in res.err


def test_predict_with_networking_disabled(corpus, model, tmp_path):
    """Prediction needs no network: run it in a new network namespace (no interfaces but loopback)."""
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("unshare -n is not available here (util-linux, and the right to make a network namespace)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "pred"
    p = subprocess.run(["unshare", "-n", sys.executable, "-m", "medseg", "predict", "-m", model, "-i", corpus["img"],
                        "-o", out, "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert nib.load(out / "img.nii.gz").shape == nib.load(corpus["img"]).shape
    # and fetching, the one command that needs the network, says so in one line and writes nothing
    p = subprocess.run(["unshare", "-n", sys.executable, "-m", "medseg", "data", "fetch", "dsb2018", "-o",
                        tmp_path / "fetched"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode in (1, 2) and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "fetched" / "dsb2018").exists()


def test_short_write_without_errno_reads_as_disk_full(tmp_path):
    """numpy's tofile (under tifffile) reports a full disk as a bare OSError with no errno."""
    from medseg.errors import InputError
    from medseg.io.atomic import atomic_path

    with pytest.raises(InputError, match="disk full") as info:
        with atomic_path(tmp_path / "x.tif"):
            raise OSError("107787 requested and 1864 written")
    assert "x.tif" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError) as info:  # an unrelated failure on a roomy disk is not called "disk full"
        with atomic_path(tmp_path / "y.tif"):
            raise OSError("bad tag")
    assert "disk full" not in str(info.value)
