"""How medseg finds its inputs and outputs on disk: symbolic links in DICOM trees (followed, once, named as the user
named them), CD/DVD exports (viewer files beside the images), upper-case suffixes, an output inside the input DICOM
folder, an output folder typed with a trailing separator, and what ``info`` and the no-series hint name.

Real DICOM series are linked or copied into ``tmp_path`` (skipped without ../shared/data); links and junk files are
made here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import assert_clean_error, data_path, run_cli, run_cli_subprocess
from medseg.errors import InputError
from medseg.io.dicom import discover_series, no_series_message
from medseg.io.series_names import pick_series

STUDY = ("dicom", "mr_study")
T1 = ("dicom", "mr_study", "12-T1post-05670")
CT = ("totalseg_example", "ct_dicom")


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_size for p in sorted(folder.rglob("*"))}


# ---- 1: symlinked folders are followed, with loop protection -------------------------------------------------


def test_study_of_symlinked_series_folders(tmp_path):
    study = data_path(*STUDY)
    link = tmp_path / "linkstudy"
    link.mkdir()
    for s in sorted(study.iterdir()):
        (link / s.name).symlink_to(s)
    real = discover_series(study)
    found = discover_series(link)
    assert [(s.series_uid, len(s.files)) for s in found] == [(s.series_uid, len(s.files)) for s in real]
    picked = pick_series(link)
    assert sorted(picked.names) == sorted(s.name for s in study.iterdir())  # the link names, as for the real folder
    res = run_cli("info", link)
    assert res.code == 0, res.err
    assert res.out.count("source       ") == len(real)


def test_mixed_linked_and_real_series_folders(tmp_path):
    t1 = data_path(*T1)
    ct = data_path(*CT)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_linked").symlink_to(t1)
    shutil.copytree(ct, mixed / "b_real")
    found = discover_series(mixed)
    assert sorted(len(s.files) for s in found) == sorted([len(list(t1.iterdir())), len(list(ct.iterdir()))])
    assert sorted(pick_series(mixed).names) == ["a_linked", "b_real"]


def test_symlink_loops_and_duplicate_links_read_each_file_once(tmp_path):
    src = data_path(*T1)
    tree = tmp_path / "tree"
    shutil.copytree(src, tree / "s")
    n = len(list((tree / "s").iterdir()))
    (tree / "s" / "loop").symlink_to("..")  # the tree itself, from inside
    (tree / "s" / "self").symlink_to(".")
    (tree / "sub").mkdir()
    (tree / "sub" / "again").symlink_to(Path("..") / ".." / "tree")
    (tree / "sub" / "twice").symlink_to(Path("..") / "s")  # the series folder, a second time
    first = sorted((tree / "s").iterdir())[0]
    (tree / "sub" / "one_file").symlink_to(Path("..") / "s" / first.name)  # one file, a second time
    found = discover_series(tree)
    assert len(found) == 1 and found[0].problem is None
    assert len(found[0].files) == n
    assert {f.parent for f in found[0].files} == {tree / "s"}  # real paths are preferred over links
    res = run_cli("convert", tree, tmp_path / "out")
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tree.nii.gz"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_named_pipe_in_a_series_folder_is_not_read(tmp_path):
    shutil.copytree(data_path(*CT), tmp_path / "s")
    os.mkfifo(tmp_path / "s" / "pipe")  # reading it would block for ever
    res = run_cli_subprocess("info", tmp_path / "s", timeout=120)
    assert res.code == 0, res.err


# ---- 7: a symlinked series is named after the link --------------------------------------------------------------


def test_symlinked_series_is_named_after_the_link(tmp_path):
    ct = data_path(*CT)
    (tmp_path / "patient42").symlink_to(ct)
    res = run_cli("convert", tmp_path / "patient42", tmp_path / "out42")
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "out42").iterdir()] == ["patient42.nii.gz"]
    assert pick_series(tmp_path / "patient42").names == ["patient42"]  # what predict names the case


def test_dot_inside_a_series_folder_gives_the_folder_name(tmp_path, monkeypatch):
    shutil.copytree(data_path(*CT), tmp_path / "case7")
    monkeypatch.chdir(tmp_path / "case7")
    assert pick_series(".").names == ["case7"]
    monkeypatch.chdir(tmp_path / "case7")
    (tmp_path / "case7" / "deeper").mkdir()  # a non-DICOM subfolder: 'convert .. out' from there
    monkeypatch.chdir(tmp_path / "case7" / "deeper")
    assert pick_series("..").names == ["case7"]


# ---- 9: CD/DVD exports ---------------------------------------------------------------------------------------------

VIEWER_FILES = ["AUTORUN.INF", "viewer.ICO", "dcmview.dll", "style.css", "app.js", "setup.exe", "INDEX.HTM",
                "readme.TXT", "manual.pdf", "index.xml", "LOGO.JPG", "viewer.cab", "plugin.xyz"]


def test_cd_export_with_viewer_files(tmp_path):
    ct = data_path(*CT)
    cd = tmp_path / "cd"
    shutil.copytree(ct, cd / "DICOM")
    (cd / "AUTORUN.INF").write_text("[autorun]\nopen=viewer.exe\n")
    for name in VIEWER_FILES[1:]:
        (cd / ("VIEWER" if name.endswith((".dll", ".js", ".css")) else "") / name).parent.mkdir(exist_ok=True)
        (cd / ("VIEWER" if name.endswith((".dll", ".js", ".css")) else "") / name).write_bytes(b"MZ\x90\x00" * 64)
    before = _listing(cd)
    res = run_cli("info", cd)
    assert res.code == 0, res.err
    assert "CT Body" in res.out
    res = run_cli("convert", cd, tmp_path / "out")
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cd.nii.gz"]
    assert _listing(cd) == before


@pytest.mark.parametrize("name", ["IM000099", "IM000099.dcm", "CT.1.2.840.99", "IM000099.IMA"])
def test_damaged_file_with_a_dicom_name_is_still_an_error(tmp_path, name):
    cd = tmp_path / "cd"
    shutil.copytree(data_path(*CT), cd / "DICOM")
    (cd / "AUTORUN.INF").write_text("[autorun]\n")
    (cd / "DICOM" / name).write_bytes(b"\x00" * 300)  # no DICM preamble: not junk, a damaged image
    res = run_cli("info", cd)
    assert_clean_error(res, name, "not a DICOM file")


@pytest.mark.parametrize("suffix", [".img", ".db", ".dat"])
def test_unknown_suffix_with_the_preamble_is_read(tmp_path, suffix):
    ct = data_path(*CT)
    (tmp_path / "s").mkdir()
    files = sorted(ct.iterdir())
    for k, f in enumerate(files):
        shutil.copyfile(f, tmp_path / "s" / f"slice{k:03d}{suffix}")  # an odd suffix, but DICOM: still a slice
    found = discover_series(tmp_path / "s")
    assert len(found) == 1 and len(found[0].files) == len(files)


def test_dicomdir_stands_for_its_folder(tmp_path):
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in sorted(data_path(*T1).iterdir()):
        ds = dcmread(f)
        for key, value in dict(PatientID="P1", StudyID="1", StudyDate="20200101", StudyTime="000000").items():
            if not ds.get(key):
                setattr(ds, key, value)
        fs.add(ds)
    fs.write(tmp_path / "disc")
    res = run_cli("convert", tmp_path / "disc" / "DICOMDIR", str(tmp_path / "out.v2") + "/")
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / "out.v2").iterdir()] == ["disc.nii.gz"]


# ---- 11: upper-case ITK suffixes -----------------------------------------------------------------------------------


def test_upper_case_itk_suffixes_read_back(tmp_path):
    import SimpleITK as sitk

    from medseg.io.readers import read_image

    src = data_path("totalseg_example", "example_ct_sm.nii.gz")
    ref = read_image(src)
    for name in ("H.MHA", "H.NRRD", "H.Seg.Nrrd", "H.NII", "H.NII.GZ"):
        res = run_cli("convert", src, tmp_path / name)
        assert res.code == 0, res.err
        res = run_cli("info", tmp_path / name)
        assert res.code == 0, (name, res.err)
        assert (read_image(tmp_path / name).array == ref.array).all()
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "H.MHA"), imageIO="MetaImageIO"), str(tmp_path / "low.mhd"))
    (tmp_path / "low.mhd").rename(tmp_path / "UP.MHD")  # its data file keeps its name (low.raw)
    assert (read_image(tmp_path / "UP.MHD").array == ref.array).all()


# ---- 17: the output must not be in the input DICOM folder ---------------------------------------------------------


@pytest.mark.parametrize("out", ["in", "in/sub", "in/x.nii.gz", "in/."])
def test_convert_refuses_an_output_in_the_input_folder(tmp_path, out):
    shutil.copytree(data_path(*CT), tmp_path / "in")
    before = _listing(tmp_path / "in")
    res = run_cli("convert", tmp_path / "in", tmp_path / out)
    assert_clean_error(res, "input DICOM folder")
    assert _listing(tmp_path / "in") == before


def test_convert_refuses_an_output_in_a_linked_series_folder(tmp_path):
    shutil.copytree(data_path(*CT), tmp_path / "store" / "ct")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "ct").symlink_to(tmp_path / "store" / "ct")
    before = _listing(tmp_path / "store")
    res = run_cli("convert", tmp_path / "study", tmp_path / "store" / "ct" / "out")
    assert_clean_error(res, "input DICOM folder")
    assert _listing(tmp_path / "store") == before


def test_convert_of_one_dicom_file_may_write_beside_it(tmp_path):
    shutil.copytree(data_path(*CT), tmp_path / "in")
    one = sorted((tmp_path / "in").iterdir())[0]
    res = run_cli("convert", one, tmp_path / "in" / "one.nii.gz")
    assert res.code == 0, res.err


# ---- 19: a trailing separator means a folder ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.v2", "out.nii.gz", "plain"])
def test_trailing_separator_makes_a_folder(tmp_path, name):
    res = run_cli("convert", data_path(*CT), str(tmp_path / name) + os.sep)
    assert res.code == 0, res.err
    assert [p.name for p in (tmp_path / name).iterdir()] == ["ct_dicom.nii.gz"]


def test_unknown_suffix_without_separator_is_still_refused(tmp_path):
    res = run_cli("convert", data_path(*CT), tmp_path / "out.v2")
    assert_clean_error(res, "cannot write format '.v2'")
    assert not (tmp_path / "out.v2").exists()


# ---- 20: what info and the hint name ------------------------------------------------------------------------------


def test_info_of_one_dicom_file_names_the_file(tmp_path):
    one = sorted(data_path(*CT).iterdir())[0]
    res = run_cli("info", one, "--json")
    assert res.code == 0, res.err
    import json

    assert json.loads(res.out)[0]["source"] == str(one)


def test_no_series_hint_counts_what_discovery_looked_at(tmp_path):
    src = data_path("totalseg_example", "example_ct_sm.nii.gz")
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    shutil.copyfile(src, folder / "a.nii.gz")
    shutil.copyfile(src, folder / "sub" / "b.nii.gz")
    (folder / "._a.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    (folder / "sub" / "._b.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    shutil.copyfile(src, folder / ".hidden" / "c.nii.gz")
    msg = no_series_message(folder)
    assert "it holds 2 NIfTI" in msg and "e.g. a.nii.gz" in msg
    with pytest.raises(InputError, match="it holds 2 NIfTI"):
        pick_series(folder)


def test_a_backup_copy_of_a_slice_does_not_break_its_series(tmp_path):
    """`000005.dcm.bak` beside `000005.dcm`: read, it duplicated a slice and the series was refused."""
    src = data_path("dicom", "mr_study", "12-T1post-05670")
    shutil.copytree(src, tmp_path / "s")
    first = sorted((tmp_path / "s").iterdir())[0]
    shutil.copyfile(first, first.with_name(first.name + ".bak"))
    (tmp_path / "s" / "incoming.tmp").write_bytes(first.read_bytes()[:3000])  # a copy still being written
    found = discover_series(tmp_path / "s")
    assert len(found) == 1 and len(found[0].files) == len(list(src.iterdir()))
