"""`medseg dataset convert` / `dataset check` against first-principles reads (nibabel, SimpleITK, gzip, the nnU-Net v2
dataset.json format): voxels, geometry and channel order kept, byte-identical reruns, nothing left by a refused
conversion, and the check finding what the folder listing alone hides."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import assert_clean_error, data_path, run_cli


def _v2_labels(meta: dict) -> dict[int, str]:
    """What nnU-Net v2 reads from ``labels`` (documentation/dataset_format.md: name -> int, every value int())."""
    return {int(v): k for k, v in meta["labels"].items()}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _synthetic(root: Path, patients=("p1", "p2"), ext: str = ".nii", extra: tuple[str, ...] = ()) -> Path:
    """Patient folders with random Flair/T1c images and a 0-4 label map (anisotropic, shifted grid)."""
    rng = np.random.default_rng(0)
    affine = np.array([[0.9, 0, 0, -10.0], [0, 0.9, 0, 20.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    for pat in patients:
        (root / pat).mkdir(parents=True)
        for name in ("Flair_x", "T1c_x", *extra):
            nib.save(nib.Nifti1Image(rng.normal(size=(6, 5, 4)).astype(np.float32), affine), root / pat / (name + ext))
        nib.save(nib.Nifti1Image(rng.integers(0, 5, (6, 5, 4)).astype(np.uint8), affine),
                 root / pat / ("OTMultiClass" + ext))
    return root


def test_real_sample_equals_its_sources_in_modality_order(tmp_path):
    """Every channel file is its source modality (nibabel voxels and affine, SimpleITK geometry), in the order of
    --modalities; labels are the sources' and dataset.json is what nnU-Net v2 and medseg both read."""
    from medseg.train.dataset import open_dataset

    src = data_path("brats2015_sample")
    res = run_cli("dataset", "convert", src, "-o", tmp_path / "ds", "--modalities", "T1c,Flair")
    assert res.code == 0, res.err
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    patients = sorted(p for p in src.iterdir() if p.is_dir())
    assert meta["channel_names"] == meta["modality"] == {"0": "T1c", "1": "Flair"}
    assert meta["numTraining"] == len(patients) and meta["file_ending"] == ".nii.gz"
    values = set()
    for pat in patients:
        pairs = [(pat / "T1c_subtrMeanDivStd.nii.gz", f"imagesTr/{pat.name}_0000.nii.gz"),
                 (pat / "Flair_subtrMeanDivStd.nii.gz", f"imagesTr/{pat.name}_0001.nii.gz"),
                 (pat / "OTMultiClass.nii.gz", f"labelsTr/{pat.name}.nii.gz")]
        for source, rel in pairs:
            a, b = nib.load(source), nib.load(tmp_path / "ds" / rel)
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            assert np.array_equal(a.affine, b.affine)
            s, t = sitk.ReadImage(str(source)), sitk.ReadImage(str(tmp_path / "ds" / rel))
            geometry = lambda im: (im.GetOrigin(), im.GetSpacing(), im.GetDirection())  # noqa: E731
            assert geometry(s) == geometry(t)
        values |= set(np.unique(np.asarray(nib.load(pat / "OTMultiClass.nii.gz").dataobj)).astype(int).tolist())
    v2 = _v2_labels(meta)  # the old MSD form {"0": "background"} made int("background") fail here
    assert v2[0] == "background" and values <= set(v2) and sorted(v2) == list(range(len(v2)))
    ds = open_dataset(tmp_path / "ds")
    assert ds.labels == v2
    # dataset.json's training list names each case's channel files, in --modalities order, and its label: MONAI's
    # decathlon datalist reads them as they are (it listed ./imagesTr/<case>.nii.gz, a file the layout lacks)
    from monai.data import load_decathlon_datalist

    listed = load_decathlon_datalist(tmp_path / "ds" / "dataset.json", data_list_key="training")
    assert [[Path(f).name for f in t["image"]] for t in listed] == [[f.name for f in c.images] for c in ds.cases]
    assert [Path(t["label"]).resolve() for t in listed] == [c.label.resolve() for c in ds.cases]
    assert all(Path(f).is_file() for t in listed for f in t["image"])
    assert run_cli("dataset", "check", tmp_path / "ds").code == 0


def test_nii_sources_convert_byte_identically_twice(tmp_path):
    """.nii sources are gzip-compressed: the gzip header held the time, so two conversions differed in every file."""
    src = _synthetic(tmp_path / "src")
    assert run_cli("dataset", "convert", src, "-o", tmp_path / "a").code == 0
    time.sleep(1.1)  # gzip's header time has a resolution of one second
    assert run_cli("dataset", "convert", src, "-o", tmp_path / "b").code == 0
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    for pat in ("p1", "p2"):
        assert gzip.decompress((tmp_path / "a" / "imagesTr" / f"{pat}_0001.nii.gz").read_bytes()) == \
            (src / pat / "T1c_x.nii").read_bytes()


def test_a_label_name_no_patient_has_writes_nothing(tmp_path):
    """A mistyped --label: every patient was unlabelled, the dataset was written into place, then refused (exit 2
    with the half-useful folder left behind)."""
    src = _synthetic(tmp_path / "src", ext=".nii.gz")
    before = _tree(src)
    res = run_cli("dataset", "convert", src, "-o", tmp_path / "ds", "--label", "OTMulticlass")
    assert_clean_error(res, str(src), "OTMulticlass")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"] and _tree(src) == before


@pytest.mark.parametrize("extra, needle", [(("Flair_raw",), "Flair"), ((), "OTMultiClass")])
def test_two_files_for_one_modality_or_label_are_refused(tmp_path, extra, needle):
    """Two Flair_* files (or one label in two formats) were resolved by taking the first name, silently."""
    src = _synthetic(tmp_path / "src", patients=("p1",), ext=".nii.gz", extra=extra)
    if not extra:
        sitk.WriteImage(sitk.ReadImage(str(src / "p1" / "OTMultiClass.nii.gz")), str(src / "p1" / "OTMultiClass.mha"))
    res = run_cli("dataset", "convert", src, "-o", tmp_path / "ds")
    assert_clean_error(res, "p1", needle, "2 files")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("modalities", [",", "Flair,Flair"])
def test_empty_or_repeated_modalities_are_bad_input(tmp_path, modalities):
    """`--modalities ,` was an IndexError (exit 1); a repeated one wrote the same image as two channels."""
    src = _synthetic(tmp_path / "src", patients=("p1",), ext=".nii.gz")
    assert_clean_error(run_cli("dataset", "convert", src, "-o", tmp_path / "ds", "--modalities", modalities),
                       "--modalities")
    assert not (tmp_path / "ds").exists()


def test_non_ascii_patient_names_round_trip(tmp_path):
    src = _synthetic(tmp_path / "src", patients=("Zoë_1", "p2"), ext=".nii.gz")
    assert run_cli("dataset", "convert", src, "-o", tmp_path / "ds").code == 0
    a = nib.load(tmp_path / "ds" / "imagesTr" / "Zoë_1_0000.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(nib.load(src / "Zoë_1" / "Flair_x.nii.gz").dataobj))
    assert run_cli("dataset", "check", tmp_path / "ds").code == 0


def _linked_hippocampus(dst: Path, n: int) -> tuple[Path, list[str]]:
    """The first ``n`` real hippocampus cases, linked, with a dataset.json whose training list names them."""
    src = data_path("msd_hippocampus")
    names = sorted(p.name for p in (src / "imagesTr").iterdir() if not p.name.startswith("."))[:n]
    for d in ("imagesTr", "labelsTr"):
        (dst / d).mkdir(parents=True)
        for name in names:
            os.symlink(src / d / name, dst / d / name)
    meta = json.loads((src / "dataset.json").read_text())
    meta.update(numTraining=n, training=[{"image": f"./imagesTr/{x}", "label": f"./labelsTr/{x}"} for x in names])
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst, [x[:-7] for x in names]


def test_check_finds_labels_without_images_and_listed_cases_missing(tmp_path):
    """open_dataset lists imagesTr only: a label whose image is gone, or a case dataset.json lists that imagesTr
    lacks, dropped the case from training without a word, and the check passed (exit 0)."""
    ds, ids = _linked_hippocampus(tmp_path / "ds", 3)
    assert run_cli("dataset", "check", ds).code == 0
    (ds / "imagesTr" / f"{ids[1]}.nii.gz").unlink()
    res = run_cli("dataset", "check", ds)
    assert_clean_error(res, ids[1], "no image in imagesTr")
    assert f"{ids[1]}: listed in dataset.json 'training'" in res.out
    (ds / "labelsTr" / f"{ids[1]}.nii.gz").unlink()
    assert_clean_error(run_cli("dataset", "check", ds), ids[1], "'training', not in imagesTr")


def test_check_finds_a_case_with_two_label_files(tmp_path):
    """labelsTr/<id>.nii.gz and labelsTr/<id>.mha: training read the first by name and never the other."""
    ds, ids = _linked_hippocampus(tmp_path / "ds", 2)
    lab = sitk.ReadImage(str(ds / "labelsTr" / f"{ids[0]}.nii.gz"))
    sitk.WriteImage(sitk.Image(lab.GetSize(), sitk.sitkUInt8), str(ds / "labelsTr" / f"{ids[0]}.mha"))
    assert_clean_error(run_cli("dataset", "check", ds), ids[0], "two label files", ".mha", ".nii.gz")


def test_check_passes_the_real_hippocampus_dataset():
    root = data_path("msd_hippocampus")
    n = len(json.loads((root / "dataset.json").read_text())["training"])
    res = run_cli("dataset", "check", root)
    assert res.code == 0 and f"{n} cases OK" in res.out, res.err


def test_check_compares_num_training_with_the_cases(tmp_path):
    """nnU-Net v2 refuses a dataset whose numTraining is not its number of cases; the check said nothing."""
    ds, ids = _linked_hippocampus(tmp_path / "ds", 3)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["numTraining"] = 4
    (ds / "dataset.json").write_text(json.dumps(meta))
    assert_clean_error(run_cli("dataset", "check", ds), "numTraining 4, imagesTr holds 3 cases")


@pytest.mark.parametrize("modalities", ["Flair", "Flair,T1c"])
def test_listed_files_exist_for_labelled_and_unlabelled_patients(tmp_path, modalities):
    """Every file dataset.json's training and test lists name is in the converted folder, as MONAI's datalist reads
    it: a string for one channel (as MSD writes it), a list of channel files for several."""
    from monai.data import load_decathlon_datalist

    src = _synthetic(tmp_path / "src", patients=("p1", "p2", "p3"))
    (src / "p3" / "OTMultiClass.nii").unlink()  # no label: an imagesTs case
    out = tmp_path / "ds"
    assert run_cli("dataset", "convert", src, "-o", out, "--modalities", modalities).code == 0
    n = len(modalities.split(","))
    for key, count in (("training", 2), ("test", 1)):
        listed = load_decathlon_datalist(out / "dataset.json", data_list_key=key)
        assert len(listed) == count
        for entry in listed:
            files = entry["image"] if n > 1 else [entry["image"]]
            assert isinstance(files, list) and len(files) == n and all(Path(f).is_file() for f in files), entry
            assert key == "test" or Path(entry["label"]).is_file()
    assert run_cli("dataset", "check", out).code == 0
