"""Every command-line check is the Python API's too: a Python caller gets the same InputError for a value the CLI
refuses, and may pass what the CLI takes as text (a pixel size, a shard, a dataset.json)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_path
from medseg.errors import InputError
from test_dataset import tiny_dataset
from test_predict import HIPPO_IMG, make_model

DSB = ("dsb2018_fluo",)


def _one_image():
    return sorted(data_path(*DSB, "images").glob("*.png"))[0]


@pytest.mark.parametrize("kw, needle", [
    ({"method": "triangle"}, "otsu or local"),
    ({"diameter": -5}, "diameter"),
    ({"diameter": float("nan")}, "diameter"),
    ({"pixel_size": "0.5,abc"}, "pixel-size"),
])
def test_count_cells_checks_values_as_the_cli_does(tmp_path, kw, needle):
    from medseg.cells.count import count_cells

    with pytest.raises(InputError, match=needle):
        count_cells(_one_image(), tmp_path / "out", classical=True, progress=False, **kw)
    assert not (tmp_path / "out").exists()


def test_count_cells_takes_the_pixel_size_as_text(tmp_path):
    from medseg.cells.count import count_cells

    rows = count_cells(_one_image(), tmp_path / "out", classical=True, progress=False, pixel_size="0.5")
    assert rows and rows[0]["count"] > 0
    header, first = (tmp_path / "out" / f"{_one_image().stem}_cells.csv").read_text().splitlines()[:2]
    row = dict(zip(header.split(","), first.split(",")))
    assert float(row["centroid_x"]) == pytest.approx(0.5 * float(row["centroid_x_px"]), abs=1e-3)


@pytest.mark.parametrize("kw, needle", [
    ({"nsd_tolerance": float("nan")}, "NSD tolerance"),
    ({"nsd_tolerance": -1.0}, "NSD tolerance"),
    ({"distance_cap": -5.0}, "distance cap"),
    ({"distance_cap": "diag"}, "distance cap"),  # any text counted as 'diagonal'
])
def test_evaluate_checks_distance_settings(tmp_path, kw, needle):
    from medseg.evaluate.folder import evaluate_folder
    from medseg.evaluate.metrics import evaluate_case

    lab = data_path("msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    with pytest.raises(InputError, match=needle):
        evaluate_folder(lab, lab, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=needle):
        evaluate_case(np.ones((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.uint8), **kw)


def test_evaluate_takes_a_dataset_json_and_lesion_classes_as_text(tmp_path):
    from medseg.evaluate.folder import evaluate_folder
    from medseg.evaluate.metrics import evaluate_case
    from medseg.io import read_image

    lab = data_path("msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz")
    js = data_path("msd_hippocampus", "dataset.json")
    ref = read_image(lab)
    res = evaluate_case(ref, ref, js)
    assert set(res["classes"]) == {"anterior", "posterior"}  # the names, not label_1, label_2
    rep = evaluate_folder(lab, lab, None, labels=js, lesion_classes="1,2", surface=False)
    # both classes get lesion-wise metrics (the text's characters, ',' among them, were refused as classes)
    assert all("lesions" in c for c in rep["per_case"][0]["classes"].values())


def test_plan_and_train_check_their_budgets(tmp_path):
    from medseg.plan.planner import make_plan
    from medseg.plan.plan import Plan
    from medseg.train.trainer import train

    ds = tiny_dataset(tmp_path / "ds", 2)
    for kw in ({"memory_gb": -1}, {"minutes": 0}):
        with pytest.raises(InputError, match="positive"):
            make_plan(ds, **kw)
    with pytest.raises(InputError, match="time budget"):
        train(Plan(dataset=str(ds)), tmp_path / "run", max_minutes=0)
    with pytest.raises(InputError, match="threads"):
        train(Plan(dataset=str(ds)), tmp_path / "run", num_threads=-1)
    assert not (tmp_path / "run").exists()


def test_predict_path_takes_a_shard_as_text_and_checks_a_tuple(tmp_path):
    from medseg.infer.cohort import predict_path

    model = make_model(tmp_path / "m.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    names = sorted(p.name for p in data_path(*HIPPO_IMG).iterdir())[:2]
    for name in names:
        (folder / name).symlink_to(data_path(*HIPPO_IMG, name))
    for bad in ((0, 0), (5, 2)):
        with pytest.raises(InputError, match="shard"):
            predict_path(model, folder, tmp_path / "out", shard=bad, device="cpu")
    written, _ = predict_path(model, folder, tmp_path / "out", shard="1/2", device="cpu")
    assert [p.name for p in written] == [names[1]]


def test_export_takes_file_paths_and_any_case_format(tmp_path):
    import json

    from medseg.export import export_segmentation

    mask = data_path("dicom", "ct_rtstruct", "Mask.nii.gz")
    names = tmp_path / "labels.json"
    names.write_text(json.dumps({"labels": {"0": "background", "1": "BODY", "2": "SpinalCord"}}))
    out = export_segmentation(mask, None, "NIFTI", tmp_path / "m.nii.gz", labels=names)
    assert out.exists() and "SpinalCord" in (tmp_path / "m.itksnap.txt").read_text()


def test_convert_brats_takes_modalities_as_text(tmp_path):
    from medseg.train.brats import convert_brats

    src = tmp_path / "src"
    src.mkdir()
    pat = sorted(p for p in data_path("brats2015_sample").iterdir() if p.is_dir())[0]
    (src / pat.name).symlink_to(pat)
    ds = convert_brats(src, tmp_path / "ds", "Flair,T1c")
    assert ds.channel_names == ["Flair", "T1c"]


def test_train_takes_what_medseg_train_takes(tmp_path):
    """A dataset folder (planned as `medseg train DATASET` plans it), and no plan at all when resuming: both were
    AttributeErrors."""
    from medseg.train.trainer import train

    ds = tiny_dataset(tmp_path / "ds", 3)
    res = train(ds, tmp_path / "run", max_minutes=0.1, progress=False, device="cpu")
    assert res.iterations > 0 and (tmp_path / "run" / "model.pt").is_file()
    again = train(None, tmp_path / "run", resume=True, max_minutes=0.1, progress=False, device="cpu")
    assert again.iterations >= res.iterations
