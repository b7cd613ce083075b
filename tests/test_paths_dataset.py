"""Case ids from file names (audit items 2, 6, 14): nnU-Net channel files ``case_0000`` ... and MSD ids that end in
four digits (``patient_0001``) both work for datasets and for predict; broken links and glob characters in ids."""

from __future__ import annotations

import doctest
import json
import os
from pathlib import Path

import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from test_predict import make_model

HIPPO = ("msd_hippocampus",)


def renamed_dataset(dst: Path, images: list[str], labels: list[str] | None = None, channels: int = 1) -> Path:
    """A dataset whose imagesTr/labelsTr hold the given names, linked to real hippocampus cases (image i and label
    i come from the same case, in order; several image names may link to one case)."""
    src = data_path(*HIPPO)
    real = sorted(p.name for p in (src / "imagesTr").iterdir())
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    for i, name in enumerate(images):
        os.symlink(src / "imagesTr" / real[i], dst / "imagesTr" / name)
    for i, name in enumerate(labels or []):
        os.symlink(src / "labelsTr" / real[i], dst / "labelsTr" / name)
    (dst / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"MRI{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "anterior", "2": "posterior"}}))
    return dst


def ids(files: list[str], channels: int, labelled=None) -> list[str]:
    from medseg.train.dataset import group_case_files

    return sorted(group_case_files([Path(f) for f in files], channels, labelled))


def test_the_grouping_rule():
    import medseg.train.dataset as mod

    assert doctest.testmod(mod).failed == 0
    # nnU-Net v2: channel files grouped, single-channel ones too
    assert ids(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"], 2) == ["a", "b"]
    assert ids(["a_0000.nii.gz", "b_0000.nii.gz", "c.nii.gz"], 1) == ["a", "b", "c"]
    assert ids(["a_0000.nii.gz"], 1) == ["a"]  # as nnU-Net
    # MSD ids ending in four digits: not channels of one case
    assert ids([f"patient_{i:04d}.nii.gz" for i in range(4)], 1) == [f"patient_{i:04d}" for i in range(4)]
    assert ids([f"patient_{i:04d}.nii.gz" for i in range(1, 5)], 1) == [f"patient_{i:04d}" for i in range(1, 5)]
    assert ids(["x_0000.nii.gz", "x_0001.nii.gz", "x_0002.nii.gz"], 1) == ["x_0000", "x_0001", "x_0002"]
    assert ids(["x_0000.nii.gz", "x_0001.nii.gz", "x_0002.nii.gz"], 2) == ["x_0000", "x_0001", "x_0002"]
    # stem by stem: a's numbers are ids, b's lone _0000 is nnU-Net's channel suffix, and a stray file renames
    # nothing else
    assert ids(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"], 1) == ["a_0000", "a_0001", "b"]
    assert ids(["a_0000.nii.gz", "b_0000.nii.gz", "c_0001.nii.gz"], 1) == ["a", "b", "c_0001"]
    # several channels: a case missing one is still that case (reading it then names it)
    assert ids(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"], 2) == ["a", "b"]
    # a group whose id is also a file's whole name is not grouped
    assert ids(["a.nii.gz", "a_0000.nii.gz"], 1) == ["a", "a_0000"]
    # 4D MSD files beside nnU-Net channel files
    assert ids(["a_0000.nii.gz", "a_0001.nii.gz", "b.nii.gz"], 2) == ["a", "b"]
    # a lone patient_0000 is ambiguous: nnU-Net wins, unless the labels say otherwise
    assert ids(["patient_0000.nii.gz"], 1) == ["patient"]
    assert ids(["patient_0000.nii.gz"], 1, {"patient_0000"}) == ["patient_0000"]
    assert ids(["patient_0000.nii.gz"], 1, {"patient"}) == ["patient"]
    # the labels name the cases of a dataset with a missing channel file: the check then says which
    assert ids(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"], 2, {"a", "b"}) == ["a", "b"]


@pytest.mark.parametrize("first", [0, 1])
def test_msd_ids_ending_in_digits_check(tmp_path, first):
    from medseg.train.dataset import open_dataset
    from medseg.train.dataset_check import check_dataset

    names = [f"patient_{i:04d}.nii.gz" for i in range(first, first + 4)]
    root = renamed_dataset(tmp_path / "ds", names, names)
    ds = open_dataset(root)
    assert [c.id for c in ds.cases] == [n[:-7] for n in names]
    assert all(len(c.images) == 1 and c.label is not None for c in ds.cases)
    assert check_dataset(ds) == []
    res = run_cli("dataset", "check", root)
    assert res.code == 0 and "4 cases OK" in res.out, res.err


def test_nnunet_single_channel_names_still_form_their_case(tmp_path):
    from medseg.train.dataset import open_dataset
    from medseg.train.dataset_check import check_dataset

    root = renamed_dataset(tmp_path / "ds", ["case_0000.nii.gz", "other_0000.nii.gz"], ["case.nii.gz", "other.nii.gz"])
    ds = open_dataset(root)
    assert [c.id for c in ds.cases] == ["case", "other"] and check_dataset(ds) == []
    # the ambiguous lone name: its label file says it is an MSD id
    root = renamed_dataset(tmp_path / "ds2", ["patient_0000.nii.gz"], ["patient_0000.nii.gz"])
    assert [c.id for c in open_dataset(root).cases] == ["patient_0000"]


def test_a_missing_channel_file_is_reported_by_its_case(tmp_path):
    """Two channels expected, case b has only b_0000: labelsTr names a and b, so the check speaks of case b."""
    from medseg.train.dataset import open_dataset
    from medseg.train.dataset_check import check_dataset

    root = renamed_dataset(tmp_path / "ds", [], channels=2)
    src = data_path(*HIPPO)
    one, two = sorted(p.name for p in (src / "imagesTr").iterdir())[:2]
    for name, case in (("a_0000", one), ("a_0001", one), ("b_0000", two)):
        os.symlink(src / "imagesTr" / case, root / "imagesTr" / f"{name}.nii.gz")
    for name, case in (("a", one), ("b", two)):
        os.symlink(src / "labelsTr" / case, root / "labelsTr" / f"{name}.nii.gz")
    ds = open_dataset(root)
    assert [(c.id, len(c.images)) for c in ds.cases] == [("a", 2), ("b", 1)]
    problems = check_dataset(ds)
    assert problems and all(p.startswith("b:") for p in problems) and "1 channel" in problems[0], problems


@pytest.mark.parametrize("where", ["imagesTr", "labelsTr"])
def test_a_broken_link_in_a_dataset_is_named(tmp_path, where):
    names = ["hip_a.nii.gz", "hip_b.nii.gz"]
    root = renamed_dataset(tmp_path / "ds", names, names)
    os.symlink(tmp_path / "gone.nii.gz", root / where / "hip_c.nii.gz")
    res = run_cli("dataset", "check", root)
    assert_clean_error(res, "hip_c.nii.gz", "broken link", "gone.nii.gz")
    assert_clean_error(run_cli("plan", root, "-o", tmp_path / "p.yaml"), "hip_c.nii.gz", "broken link")
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("channels", ['["a", "b"]', '{"x": "a"}', "{}", '{"0": "a", "2": "b"}'])
def test_a_channel_table_that_cannot_be_read_is_refused(tmp_path, channels):
    root = renamed_dataset(tmp_path / "ds", ["hip.nii.gz"], ["hip.nii.gz"])
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "channel_names": json.loads(channels)}))
    assert_clean_error(run_cli("dataset", "check", root), "dataset.json", "channel_names")


def test_case_ids_with_glob_characters(tmp_path):
    """``pat[1]`` (a glob character class) finds its label: converted, checked, planned."""
    from medseg.train.dataset import open_dataset

    src = data_path("brats2015_sample")
    brsq = tmp_path / "brsq"
    brsq.mkdir()
    os.symlink(src / "brats_2013_pat0001_1", brsq / "pat[1]")
    os.symlink(src / "brats_2013_pat0002_1", brsq / "pat*")
    out = tmp_path / "brsq_out"
    assert run_cli("dataset", "convert", brsq, "-o", out).code == 0
    ds = open_dataset(out)
    assert [(c.id, c.label.name) for c in ds.cases] == [("pat*", "pat*.nii.gz"), ("pat[1]", "pat[1].nii.gz")]
    res = run_cli("dataset", "check", out)
    assert res.code == 0 and "2 cases OK" in res.out, res.err


def test_predict_lists_msd_ids_and_nnunet_names(tmp_path):
    from medseg.infer.cohort import list_cases

    def listed(names, channels):
        folder = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for n in names:
            (folder / n).write_bytes(b"")
        return [(c.name, [p.name for p in c.paths]) for c in list_cases(folder, channels)]

    msd = [f"patient_{i:04d}.nii.gz" for i in range(3)]
    assert listed(msd, 1) == [(n[:-7], [n]) for n in msd]
    assert listed(["a_0000.nii.gz"], 1) == [("a", ["a_0000.nii.gz"])]
    assert listed(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"], 2) == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]), ("b", ["b_0000.nii.gz", "b_0001.nii.gz"])]
    assert [n for n, _ in listed(["x_0000.nii.gz", "x_0001.nii.gz", "x_0002.nii.gz"], 1)] == [
        "x_0000", "x_0001", "x_0002"]


def test_predict_writes_one_output_per_msd_id(tmp_path):
    names = [f"patient_{i:04d}.nii.gz" for i in range(3)]
    root = renamed_dataset(tmp_path / "ds", names, names)
    model = make_model(tmp_path / "m.pt")
    res = run_cli("predict", "-m", model, "-i", root / "imagesTr", "-o", tmp_path / "out", "-q")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names


def test_predict_refuses_a_broken_link_before_predicting(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(data_path(*HIPPO, "imagesTr", "hippocampus_001.nii.gz"), folder / "a.nii.gz")
    os.symlink(tmp_path / "gone.nii.gz", folder / "b.nii.gz")
    model = make_model(tmp_path / "m.pt")
    res = run_cli("predict", "-m", model, "-i", folder, "-o", tmp_path / "out", "-q")
    assert_clean_error(res, "b.nii.gz", "broken link", "gone.nii.gz")
    assert not (tmp_path / "out").exists()
    res = run_cli("predict", "-m", model, "-i", folder / "b.nii.gz", "-o", tmp_path / "out", "-q")
    assert_clean_error(res, "b.nii.gz", "broken link")
    with pytest.raises(InputError, match="broken link"):
        from medseg.infer.cohort import list_cases

        list_cases(folder)


@pytest.mark.parametrize("names, channels", [(["a.nii.gz", "a.mha", "b.nii.gz"], 2),
                                             (["a_0000.nii.gz", "a_0000.mha", "b_0000.nii.gz"], 1)])
def test_one_case_name_in_two_formats_is_refused_in_a_dataset(tmp_path, names, channels):
    """a.nii.gz beside a.mha were grouped as one case's two channels (trained on silently with a two-channel
    dataset); a.nii.gz and a.mha are two images with one case name, so the listing refuses them by name."""
    from medseg.train.dataset import open_dataset

    root = renamed_dataset(tmp_path / "ds", names, ["a.nii.gz", "b.nii.gz"], channels=channels)
    with pytest.raises(InputError, match=r"a(_0000)?\.mha and a(_0000)?\.nii\.gz are both case|a(_0000)?\.nii\.gz and "
                                         r"a(_0000)?\.mha are both case"):
        open_dataset(root)
