"""Datasets in MSD/nnU-Net layout (issue 4): discovery, loading, integrity check naming the bad case, BraTS convert."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError

HIPPO = ("msd_hippocampus",)


def tiny_dataset(dst: Path, n: int = 4) -> Path:
    """A dataset folder with the first ``n`` real hippocampus cases, linked (not copied) from the shared data."""
    src = data_path(*HIPPO)
    (dst / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dst / "labelsTr").mkdir(exist_ok=True)
    meta = json.loads((src / "dataset.json").read_text())
    ids = sorted(p.name for p in (src / "imagesTr").iterdir())[:n]
    for i in ids:
        for d in ("imagesTr", "labelsTr"):
            os.symlink(src / d / i, dst / d / i)
    meta["training"] = [t for t in meta["training"] if Path(t["image"]).name in ids]
    meta["numTraining"] = len(ids)
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def test_open_real_hippocampus_matches_dataset_json():
    from medseg.train.dataset import open_dataset

    root = data_path(*HIPPO)
    ds = open_dataset(root)
    meta = json.loads((root / "dataset.json").read_text())
    assert len(ds.cases) == meta["numTraining"] == 217
    assert {c.id + ".nii.gz" for c in ds.cases} == {Path(t["image"]).name for t in meta["training"]}
    assert ds.labels == {0: "background", 1: "anterior", 2: "posterior"}
    assert all(c.label is not None and len(c.images) == 1 for c in ds.cases)


def test_load_case_geometry_equals_simpleitk():
    """The loaded case's affine equals SimpleITK's geometry (LPS→RAS), independent of nibabel."""
    from medseg.train.dataset import load_case, open_dataset

    ds = open_dataset(data_path(*HIPPO))
    image, label = load_case(ds.cases[3])
    s = sitk.ReadImage(str(ds.cases[3].images[0]))
    assert image.array.shape == (1, *s.GetSize())
    assert np.allclose(image.spacing, s.GetSpacing())
    assert np.allclose(image.origin_lps, s.GetOrigin(), atol=1e-4)
    ref = sitk.GetArrayFromImage(s).transpose(2, 1, 0)
    assert np.array_equal(image.array[0], ref.astype(np.float32))
    assert label.shape == image.shape


def test_check_passes_on_real_subset(tmp_path):
    from medseg.train.dataset import open_dataset
    from medseg.train.dataset_check import check_dataset

    assert check_dataset(open_dataset(tiny_dataset(tmp_path / "ds", 5))) == []


def test_check_names_bad_cases(tmp_path):
    """A label with an unknown value and a label on another grid are both reported with their case ids."""
    ds_dir = tiny_dataset(tmp_path / "ds", 3)
    labs = sorted((ds_dir / "labelsTr").iterdir())
    # case 0: label value 7 (not in dataset.json)
    nimg = nib.load(labs[0])
    arr = np.asarray(nimg.dataobj).copy()
    arr[0, 0, 0] = 7
    labs[0].unlink()
    nib.save(nib.Nifti1Image(arr, nimg.affine), labs[0])
    # case 1: label shifted by 5 mm
    nimg = nib.load(labs[1])
    aff = nimg.affine.copy()
    aff[0, 3] += 5
    data = np.asarray(nimg.dataobj)
    labs[1].unlink()
    nib.save(nib.Nifti1Image(data, aff), labs[1])
    res = run_cli("dataset", "check", ds_dir)
    assert res.code == 2
    bad0, bad1 = labs[0].name.split(".")[0], labs[1].name.split(".")[0]
    text = res.out + res.err
    assert bad0 in text and "[7]" in text
    assert bad1 in text and "grids differ" in text and "5 mm" in text
    assert len([ln for ln in res.err.splitlines() if ln.strip()]) == 1


def test_label_on_another_grid_warns_in_training_and_check_uses_world_distance(tmp_path):
    """Training reads a label whose header puts it elsewhere voxel for voxel, but says so (nnU-Net warns too); the
    check measures world distance, so a label 0.01 mm off at an origin 1000 mm away is no better than one near 0."""
    from medseg.train.dataset import load_case, open_dataset
    from medseg.train.dataset_check import check_case

    ds_dir = tiny_dataset(tmp_path / "ds", 1)
    lab = next((ds_dir / "labelsTr").iterdir())
    img = nib.load(ds_dir / "imagesTr" / lab.name)
    data = np.asarray(nib.load(lab).dataobj)

    def relabel(shift, origin=0.0):
        for p, arr in ((ds_dir / "imagesTr" / lab.name, np.asarray(img.dataobj)), (lab, data)):
            aff = img.affine.copy()
            aff[:3, 3] = origin
            if p == lab:
                aff[1, 3] += shift
            p.unlink()
            nib.save(nib.Nifti1Image(arr, aff), p)
        return open_dataset(ds_dir).cases[0]

    case = relabel(3.0)
    with pytest.warns(UserWarning, match=rf"{case.id}: the label's grid is up to 3 mm from the image's"):
        image, label = load_case(case)
    assert np.array_equal(label.array, data)  # used voxel for voxel, as before
    assert check_case(case, {0, 1, 2}) == [f"{case.id}: image and label grids differ (voxels up to 3 mm apart)"]
    # 0.01 mm at -1000 mm: np.allclose's relative term (1e-5 x 1000) would have let it through
    assert check_case(relabel(0.01, -1000.0), {0, 1, 2})[0].endswith("(voxels up to 0.01 mm apart)")
    assert check_case(relabel(0.0005, -1000.0), {0, 1, 2}) == []


def test_multichannel_nnunet_layout(tmp_path):
    """case_0000/case_0001 files become one channels-first case (channel order kept)."""
    from medseg.train.dataset import load_case, open_dataset

    src = data_path("brats2015_sample", "brats_2013_pat0001_1")
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    os.symlink(src / "Flair_subtrMeanDivStd.nii.gz", root / "imagesTr" / "p1_0000.nii.gz")
    os.symlink(src / "T1c_subtrMeanDivStd.nii.gz", root / "imagesTr" / "p1_0001.nii.gz")
    os.symlink(src / "OTMultiClass.nii.gz", root / "labelsTr" / "p1.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "Flair", "1": "T1c"},
                                                   "labels": {"background": 0, "a": 1, "b": 2, "c": 3, "d": 4}}))
    ds = open_dataset(root)
    assert [c.id for c in ds.cases] == ["p1"] and ds.channel_names == ["Flair", "T1c"]
    image, label = load_case(ds.cases[0])
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "Flair_subtrMeanDivStd.nii.gz"))).transpose(2, 1, 0)
    assert image.array.shape[0] == 2 and np.allclose(image.array[0], flair)
    assert set(np.unique(label.array)) <= {0, 1, 2, 3, 4}


def test_msd_4d_file(tmp_path):
    """An MSD 4D image (channels last) yields all its channels."""
    from medseg.train.dataset import load_case, open_dataset

    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    img = nib.load(data_path(*HIPPO, "imagesTr", "hippocampus_001.nii.gz"))
    a = np.asarray(img.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image(np.stack([a, 2 * a], -1), img.affine), root / "imagesTr" / "c.nii.gz")
    os.symlink(data_path(*HIPPO, "labelsTr", "hippocampus_001.nii.gz"), root / "labelsTr" / "c.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "A", "1": "B"},
                                                   "labels": {"0": "bg", "1": "x", "2": "y"}}))
    image, _ = load_case(open_dataset(root).cases[0])
    assert image.array.shape == (2, *a.shape) and np.allclose(image.array[1], 2 * a)


def test_convert_brats_sample(tmp_path):
    src = data_path("brats2015_sample")
    before = {p: p.stat().st_mtime for p in src.rglob("*.nii.gz")}
    res = run_cli("dataset", "convert", src, "-o", tmp_path / "brats")
    assert res.code == 0, res.err
    out = tmp_path / "brats"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["channel_names"] == {"0": "Flair", "1": "T1c"}
    pat = sorted(p.name for p in src.iterdir() if p.is_dir())[0]
    a = nib.load(out / "imagesTr" / f"{pat}_0001.nii.gz")
    b = nib.load(src / pat / "T1c_subtrMeanDivStd.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    assert run_cli("dataset", "check", out).code == 0
    assert before == {p: p.stat().st_mtime for p in src.rglob("*.nii.gz")}  # inputs untouched
    assert not list(out.rglob(".*tmp*"))


def test_convert_errors_are_clean(tmp_path):
    bad = tmp_path / "src" / "pat1"
    bad.mkdir(parents=True)
    (bad / "OTMultiClass.nii.gz").write_bytes(b"")
    assert_clean_error(run_cli("dataset", "convert", tmp_path / "src", "-o", tmp_path / "out"), "Flair")
    assert not (tmp_path / "out").exists()
    assert_clean_error(run_cli("dataset", "check", tmp_path / "nothing"), "does not exist")


def _small_brats(root: Path, n: int = 2) -> Path:
    """``n`` patient folders cut from the real BraTS sample (40x36x24 voxels around the tumour), FLAIR and label
    as ``.mha`` and T1c as ``.nrrd``, on an oblique, anisotropic grid (a 12 degree tilt, 0.9x0.9x3 mm)."""
    src = data_path("brats2015_sample")
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    direction = (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)
    for pat in sorted(p for p in src.iterdir() if p.is_dir())[:n]:
        out = root / pat.name
        out.mkdir(parents=True)
        for name, fname in (("Flair_subtrMeanDivStd", "Flair.mha"), ("T1c_subtrMeanDivStd", "T1c.nrrd"),
                            ("OTMultiClass", "OTMultiClass.mha")):
            img = sitk.ReadImage(str(pat / f"{name}.nii.gz"))[100:140, 100:136, 60:84]
            img.SetSpacing((0.9, 0.9, 3.0))
            img.SetDirection(direction)
            img.SetOrigin((-12.5, 30.25, -71.0))
            sitk.WriteImage(img, str(out / fname), useCompression=True)
        (out / "License.txt").write_text("not an image: ignored")
    return root


def test_convert_non_nifti_sources_become_real_nifti_with_their_geometry(tmp_path):
    """.mha/.nrrd sources are read and written as NIfTI (not copied under a .nii.gz name); SimpleITK reads the
    same grid and voxels from the output as from the source."""
    src = _small_brats(tmp_path / "src")
    res = run_cli("dataset", "convert", src, "-o", tmp_path / "ds")
    assert res.code == 0, res.err
    for pat in sorted(p for p in src.iterdir()):
        pairs = [(pat / "Flair.mha", f"imagesTr/{pat.name}_0000.nii.gz"),
                 (pat / "T1c.nrrd", f"imagesTr/{pat.name}_0001.nii.gz"),
                 (pat / "OTMultiClass.mha", f"labelsTr/{pat.name}.nii.gz")]
        for source, rel in pairs:
            out = tmp_path / "ds" / rel
            assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as the name says
            a, b = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
            assert a.GetSize() == b.GetSize()
            np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-5)
            np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-5)
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert run_cli("dataset", "check", tmp_path / "ds").code == 0


def test_convert_refuses_a_non_empty_destination(tmp_path):
    src = _small_brats(tmp_path / "src", 1)
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    assert_clean_error(run_cli("dataset", "convert", src, "-o", dst), "not empty", "--overwrite")
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]  # no staging folder left
    (dst / "notes.txt").unlink()
    assert run_cli("dataset", "convert", src, "-o", dst).code == 0  # an empty folder is fine


def test_convert_overwrite_replaces_a_dataset_but_nothing_else(tmp_path):
    from medseg.train.brats import convert_brats

    src = _small_brats(tmp_path / "src", 2)
    dst = tmp_path / "ds"
    convert_brats(src, dst)
    (dst / "imagesTr" / "stale_0000.nii.gz").write_bytes(b"old")
    ds = convert_brats(src, dst, overwrite=True)
    assert len(ds.cases) == 2 and not (dst / "imagesTr" / "stale_0000.nii.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]
    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="no dataset.json"):
        convert_brats(src, other, overwrite=True)
    for bad_dst in (src, src / "out", tmp_path):  # would delete or re-read its own inputs
        with pytest.raises(InputError, match="outside the source"):
            convert_brats(src, bad_dst, overwrite=True)
    assert (other / "thesis.tex").exists() and len(list(src.iterdir())) == 2


def test_convert_overwrite_flag_on_the_cli(tmp_path):
    src = _small_brats(tmp_path / "src", 1)
    assert run_cli("dataset", "convert", src, "-o", tmp_path / "ds").code == 0
    assert_clean_error(run_cli("dataset", "convert", src, "-o", tmp_path / "ds"), "--overwrite")
    assert run_cli("dataset", "convert", src, "-o", tmp_path / "ds", "--overwrite").code == 0


@pytest.mark.parametrize("previous", [False, True])
def test_convert_failing_mid_way_leaves_no_half_dataset(tmp_path, monkeypatch, previous):
    """Disk full on the third file: a clean error naming the output, no dataset (or the previous one intact)."""
    import errno

    import medseg.train.brats as dsmod

    src = _small_brats(tmp_path / "src", 2)
    dst = tmp_path / "ds"
    if previous:
        dsmod.convert_brats(src, dst)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real, calls = dsmod._write_nifti_gz, []

    def failing(source, dest):
        calls.append(dest)
        if len(calls) == 3:
            dest.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, dest)

    monkeypatch.setattr(dsmod, "_write_nifti_gz", failing)
    res = run_cli("dataset", "convert", src, "-o", dst, *(["--overwrite"] if previous else []))
    assert_clean_error(res, "cannot write", "disk full", str(dst))
    assert len(calls) == 3
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # sources untouched, no staging folder, previous dataset (if any) byte-identical


def test_converted_folder_has_the_mode_of_a_plain_mkdir(tmp_path):
    from medseg.train.brats import convert_brats

    src = _small_brats(tmp_path / "src", 1)
    os.mkdir(tmp_path / "plain")
    convert_brats(src, tmp_path / "ds")
    assert (tmp_path / "ds").stat().st_mode == (tmp_path / "plain").stat().st_mode


def _failing_replace(monkeypatch, fail):
    """Make ``os.replace(a, b)`` raise EACCES when ``fail(Path(a), Path(b))`` is true."""
    import errno

    real = os.replace

    def replace(a, b, **kw):
        if fail(Path(a), Path(b)):
            raise OSError(errno.EACCES, "Permission denied")
        return real(a, b, **kw)

    monkeypatch.setattr(os, "replace", replace)


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("step", ["aside", "in"])
def test_overwrite_failing_rename_keeps_the_previous_dataset(tmp_path, monkeypatch, step):
    """Moving the old dataset aside, or the new one in, fails: clean error, nothing left, old dataset intact."""
    from medseg.train.brats import convert_brats

    src = _small_brats(tmp_path / "src", 1)
    dst = tmp_path / "ds"
    convert_brats(src, dst)
    before = _snapshot(tmp_path)
    moved = []  # "in" fails only once, so the previous dataset can be put back

    def fail(a, b):
        if step == "aside":
            return a == dst
        moved.append(b)
        return b == dst and moved.count(dst) == 1
    _failing_replace(monkeypatch, fail)
    with pytest.raises(InputError, match="cannot write output"):
        convert_brats(src, dst, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_overwrite_failing_restore_says_where_the_previous_dataset_is(tmp_path, monkeypatch):
    from medseg.train.brats import convert_brats

    src = _small_brats(tmp_path / "src", 1)
    dst = tmp_path / "ds"
    convert_brats(src, dst)
    before = _snapshot(dst)
    _failing_replace(monkeypatch, lambda a, b: b == dst)
    with pytest.raises(InputError, match="previous dataset could not be put back") as err:
        convert_brats(src, dst, overwrite=True)
    aside = Path(str(err.value).rsplit(" is in ", 1)[1])
    assert _snapshot(aside) == before and not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [aside.parent.name, "src"]  # no staging folder left


@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_checks_the_destination_again_before_the_swap(tmp_path, monkeypatch, overwrite):
    """Another process fills ``dst`` while the cases are written: it is refused then, not wiped."""
    import medseg.train.brats as dsmod

    src = _small_brats(tmp_path / "src", 1)
    dst = tmp_path / "ds"
    real = dsmod._write_brats_cases

    def racing(*args):
        dst.mkdir()
        (dst / "notes.txt").write_text("theirs")
        return real(*args)

    monkeypatch.setattr(dsmod, "_write_brats_cases", racing)
    with pytest.raises(InputError, match="not empty"):
        dsmod.convert_brats(src, dst, overwrite=overwrite)
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_convert_output_under_a_file_is_a_clean_error(tmp_path):
    src = _small_brats(tmp_path / "src", 1)
    (tmp_path / "a_file").write_text("x")
    assert_clean_error(run_cli("dataset", "convert", src, "-o", tmp_path / "a_file" / "ds"), "a_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "src"]


def _replace_image(path: Path, edit) -> None:
    """Rewrite a (linked) NIfTI with ``edit(array)`` applied, same affine."""
    nimg = nib.load(path)
    arr = edit(np.asarray(nimg.dataobj).astype(np.float32))
    path.unlink()
    nib.save(nib.Nifti1Image(arr, nimg.affine), path)


def _nan_voxel(a):
    a[0, 0, 0] = np.nan
    return a


@pytest.mark.parametrize("bad", ["nan", "label_not_in_json", "4d_image", "two_modalities"])
def test_plan_and_train_refuse_what_dataset_check_reports(tmp_path, bad):
    """A NaN voxel (a NaN model, exit 0, before), a label value dataset.json does not name (an internal error
    after plan.yaml was written), one 2-channel image or a dataset.json naming 2 modalities over 1-channel images:
    one line naming the case, exit 2, nothing written; `dataset check` names the same case."""
    ds = tiny_dataset(tmp_path / "ds", 3)
    victim = sorted((ds / "imagesTr").iterdir())[1]
    meta = json.loads((ds / "dataset.json").read_text())
    if bad == "nan":
        _replace_image(victim, _nan_voxel)
    elif bad == "label_not_in_json":
        meta["labels"] = {"0": "background", "1": "anterior"}
        victim = sorted((ds / "labelsTr").iterdir())[0]
    elif bad == "4d_image":
        _replace_image(victim, lambda a: np.stack([a, a], -1))
    else:
        meta["modality"] = {"0": "MRI", "1": "T2"}
        victim = sorted((ds / "imagesTr").iterdir())[0]
    (ds / "dataset.json").write_text(json.dumps(meta))
    case = victim.name.split(".")[0]
    assert_clean_error(run_cli("plan", ds, "-o", tmp_path / "plan.yaml"), case)
    assert_clean_error(run_cli("train", ds, "-o", tmp_path / "run", "--max-epochs", "1", "-q"), case)
    assert not (tmp_path / "plan.yaml").exists() and not (tmp_path / "run").exists()
    res = run_cli("dataset", "check", ds)
    assert res.code == 2 and case in res.err


@pytest.mark.parametrize("labels,needle", [({"zero": "background", "one": "x"}, "'zero'"),
                                           (None, "integer values"), ({"1": "a", "2": "b"}, "no 0"),
                                           ({"background": 0, "whole": [1, 2], "core": [2]}, "region labels"),
                                           ({"0": "background", "1": "a", "2": "a"}, "share one name"),
                                           ({"0": "background", "1": "a", "-1": "b"}, ">= 0")])
def test_dataset_json_label_tables_that_cannot_be_read(tmp_path, labels, needle):
    ds = tiny_dataset(tmp_path / "ds", 2)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = labels
    (ds / "dataset.json").write_text(json.dumps(meta))
    for cmd in (("dataset", "check", ds), ("plan", ds, "-o", tmp_path / "p.yaml")):
        assert_clean_error(run_cli(*cmd), "dataset.json", needle)
    assert not (tmp_path / "p.yaml").exists()


def test_convert_refuses_a_label_map_with_fractions_or_unknown_values(tmp_path):
    """Both were copied into labelsTr (exit 0), for `dataset check` to reject afterwards."""
    for name, edit in (("fractions", lambda a: a * 0.5), ("value_9", lambda a: np.where(a == 4, 9, a))):
        src = _small_brats(tmp_path / name / "src", 1)
        pat = next(src.iterdir())
        img = sitk.ReadImage(str(pat / "OTMultiClass.mha"))
        out = sitk.GetImageFromArray(edit(sitk.GetArrayFromImage(img).astype(np.float32)))
        out.CopyInformation(img)
        sitk.WriteImage(out, str(pat / "OTMultiClass.mha"))
        res = run_cli("dataset", "convert", src, "-o", tmp_path / name / "ds")
        assert_clean_error(res, "OTMultiClass.mha")
        assert not (tmp_path / name / "ds").exists()


def test_convert_puts_a_patient_without_labels_in_imagests(tmp_path):
    """nnU-Net keeps imagesTr for labelled cases: the unlabelled patient's images went there, and `dataset check`
    then failed on the dataset convert had just written."""
    src = _small_brats(tmp_path / "src", 2)
    unlabelled = sorted(src.iterdir())[1]
    (unlabelled / "OTMultiClass.mha").unlink()
    res = run_cli("dataset", "convert", src, "-o", tmp_path / "ds")
    assert res.code == 0, res.err
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["numTraining"] == 1
    assert meta["test"] == [[f"./imagesTs/{unlabelled.name}_0000.nii.gz", f"./imagesTs/{unlabelled.name}_0001.nii.gz"]]
    assert sorted(p.name for p in (tmp_path / "ds" / "imagesTs").iterdir()) == [
        f"{unlabelled.name}_0000.nii.gz", f"{unlabelled.name}_0001.nii.gz"]
    assert not list((tmp_path / "ds" / "imagesTr").glob(f"{unlabelled.name}_*"))
    assert run_cli("dataset", "check", tmp_path / "ds").code == 0


def test_train_from_a_plan_leaves_no_run_folder_when_a_case_is_refused(tmp_path):
    """The plan's labels leave out a value the data have: refused while the cases are read, after plan.yaml and
    splits.json were written into the run folder, which is removed again (it was left behind)."""
    from medseg.plan.plan import Plan

    ds = tiny_dataset(tmp_path / "ds", 3)
    plan = Plan(dataset=str(ds), channels=["MRI"], labels={0: "background", 1: "anterior"},
                patch_size=[16, 16, 16], base_filters=4, max_filters=8, max_epochs=1, iterations_per_epoch=1)
    plan.to_yaml(tmp_path / "plan.yaml")
    res = run_cli("train", tmp_path / "plan.yaml", "-o", tmp_path / "run", "-q")
    assert_clean_error(res, "label values [2]", "the plan's")
    assert not (tmp_path / "run").exists()


def test_label_grid_warning_is_said_once_per_case(tmp_path):
    """Planning, caching and validation each load a case: the same grid warning was printed once per caller."""
    import warnings

    from medseg.train.dataset import load_case, open_dataset

    ds_dir = tiny_dataset(tmp_path / "ds", 1)
    lab = next((ds_dir / "labelsTr").iterdir())
    nimg = nib.load(lab)
    aff = nimg.affine.copy()
    aff[1, 3] += 3.0
    data = np.asarray(nimg.dataobj)
    lab.unlink()
    nib.save(nib.Nifti1Image(data, aff), lab)
    case = open_dataset(ds_dir).cases[0]

    def fingerprint_side():
        return load_case(case)

    def cache_side():
        return load_case(case)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # what a user's session has
        fingerprint_side(), cache_side(), fingerprint_side()
    grid = [w for w in seen if "the label's grid" in str(w.message)]
    assert len(grid) == 1, [str(w.message) for w in grid]
