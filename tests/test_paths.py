"""Paths users have: probability maps beside label maps, broken links, read-only mounts, long and non-ASCII names,
``--opt=~/x``, upper-case suffixes, an output folder that is the input folder, a mistyped MEDSEG_DATA."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_clean_error, data_path, run_cli

HIPPO_LAB = ("msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz")


def _label_folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for d in (pred, ref):
        shutil.copy(data_path(*HIPPO_LAB), d / "hippocampus_001.nii.gz")
    return pred, ref


def test_evaluate_skips_the_probabilities_predict_writes_beside_a_label_map(tmp_path):
    """`medseg predict --probabilities` then `medseg evaluate` on its folder: the _probs file is not a case."""
    pred, ref = _label_folders(tmp_path)
    lab = nib.load(pred / "hippocampus_001.nii.gz")
    probs = np.stack([np.asarray(lab.dataobj) == k for k in range(3)], -1).astype(np.float32) * 0.9
    nib.save(nib.Nifti1Image(probs, lab.affine), pred / "hippocampus_001_probs.nii.gz")
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "rep", "-q")
    assert res.code == 0, res.err
    assert (tmp_path / "rep" / "metrics.json").is_file()
    # without its label map, a _probs file is a case of its own: the reference's case has no prediction
    (pred / "hippocampus_001.nii.gz").unlink()
    assert_clean_error(run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "rep2"),
                       "no prediction for case 'hippocampus_001'")


def test_evaluate_names_a_broken_link_instead_of_dropping_its_case(tmp_path):
    pred, ref = _label_folders(tmp_path)
    (pred / "hippocampus_004.nii.gz").symlink_to(tmp_path / "moved" / "away.nii.gz")
    (ref / "hippocampus_004.nii.gz").symlink_to(data_path(*HIPPO_LAB))
    assert_clean_error(run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "rep"),
                       "hippocampus_004.nii.gz", "broken link")
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENAMETOOLONG, errno.ENOSPC])
def test_file_system_refusals_are_one_line_exit_2(tmp_path, monkeypatch, code):
    """A read-only mount (Docker, Kubernetes), a name too long or a full disk is the user's environment, not a
    medseg bug: exit 2 and the file, not 'internal error' and exit 1."""
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "out":
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    pred, ref = _label_folders(tmp_path)
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "out")
    assert_clean_error(res, str(tmp_path / "out"), os.strerror(code))
    assert "internal error" not in res.err


def test_an_unexpected_os_error_is_still_internal():
    """Only what the file system says about the user's paths is exit 2; anything else stays a bug report."""
    from medseg.cli import _user_side

    assert _user_side(OSError(errno.EROFS, "x")) and _user_side(FileNotFoundError("x"))
    assert not _user_side(OSError(errno.EBADF, "x")) and not _user_side(OSError("no errno"))


def test_long_file_names_that_fit_are_written(tmp_path):
    """The temporary name beside an output added ~22 bytes, so a 240-byte output name failed (exit 1)."""
    stem = "a" * 233
    src = tmp_path / f"{stem}.nii.gz"
    shutil.copy(data_path(*HIPPO_LAB), src)
    res = run_cli("convert", src, tmp_path / f"{stem}.nrrd")
    assert res.code == 0, res.err
    assert (tmp_path / f"{stem}.nrrd").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    too_long = tmp_path / f"{'b' * 300}.nrrd"
    assert_clean_error(run_cli("convert", src, too_long), "too long")


def test_cache_names_stay_apart_and_short():
    from medseg.train.store import ArrayStore

    store = ArrayStore("/tmp/unused")
    a, b = store.stem("é_1", "k"), store.stem("ü_1", "k")
    assert a != b
    long = store.stem("x" * 300, "k0")
    assert len(os.fsencode(long.name + ".label.npy")) < 255
    assert store.stem("case_01", "k").name == "case_01.k"  # plain ids keep their readable names


def test_option_value_with_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    pred, ref = _label_folders(tmp_path)
    res = run_cli("evaluate", f"--pred={pred}", f"--ref={ref}", "--out=~/report", "-q")
    assert res.code == 0, res.err
    assert (tmp_path / "home" / "report" / "metrics.json").is_file() and not (tmp_path / "~").exists()


def test_cells_count_refuses_its_input_folder_as_output(tmp_path):
    src = data_path("dsb2018_fluo", "images")
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(sorted(src.iterdir())[0], folder)
    before = sorted(p.name for p in folder.iterdir())
    assert_clean_error(run_cli("cells", "count", "-i", folder, "-o", folder, "--classical"), "input folder")
    assert sorted(p.name for p in folder.iterdir()) == before
    # one image with its outputs beside it stays allowed
    one = next(folder.iterdir())
    assert run_cli("cells", "count", "-i", one, "-o", folder, "--classical").code == 0


def test_cell_dataset_label_maps_with_upper_case_suffixes(tmp_path):
    from medseg.cells.data import list_cases

    src = data_path("dsb2018_fluo")
    ids = sorted(p.stem for p in (src / "images").iterdir())[:2]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in ids:
        shutil.copy(src / "images" / f"{i}.png", tmp_path / "images" / f"{i}.png")
        shutil.copy(src / "labels" / f"{i}.tif", tmp_path / "labels" / f"{i}.TIF")
    cases = list_cases(tmp_path)
    assert [c.label_path.name for c in cases] == [f"{i}.TIF" for i in ids]


def test_mistyped_medseg_data_is_said_not_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_DATA", str(tmp_path / "typo"))
    from medseg.data import find_sample_data

    with pytest.warns(UserWarning, match="MEDSEG_DATA=.*typo is not a folder"):
        find_sample_data()
    assert_clean_error(run_cli("data", "where", "--data", tmp_path / "nowhere"), "nowhere", "not found")
