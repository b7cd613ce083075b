"""Picking and naming DICOM series (medseg.io.series_names): one rule for ``medseg convert`` and ``medseg predict``.

The picking rule is tested on listed series (discovery replaced: no files read); converted file names equal
predicted case names on real series (skipped without ../shared/data); a cohort's released headers load the same
voxels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import data_path
from medseg.errors import InputError
from medseg.io.dicom import SeriesInfo, discover_series, load_series
from medseg.io.series_names import pick_series, series_case_names

CROP = ("dicom", "mr_study", "13_HCropVolume")
CT3 = ("dicom", "dcmqi_segmentations", "ct-3slice")


def listed(tmp_path: Path, *specs: tuple[str, str, bool]) -> list[SeriesInfo]:
    """Series as discovery lists them: (subfolder, description, is_volume) each, numbered in order."""
    out = []
    for i, (sub, desc, volume) in enumerate(specs):
        (tmp_path / sub).mkdir(exist_ok=True)
        out.append(SeriesInfo(i, f"1.2.3.{i}", desc, "MR", [tmp_path / sub / f"{i}.dcm"], {"series_number": i + 1},
                              None if volume else "not a volume: colour image", is_volume=volume))
    return out


@pytest.fixture
def study(tmp_path, monkeypatch):
    """A folder listing T1 and T2 in subfolders and a screenshot beside T1."""
    found = listed(tmp_path, ("t1", "T1", True), ("t1", "shot", False), ("t2", "T2", True))
    monkeypatch.setattr("medseg.io.dicom.discover_series", lambda path, progress=False: found)
    return tmp_path


def test_every_volume_is_picked_named_and_the_rest_noted(study):
    picked = pick_series(study)
    assert [s.index for s in picked.series] == [0, 2]
    assert picked.names == ["t1", "t2"]  # each volume alone in its folder (the screenshot is no volume)
    assert len(picked.notes) == 1
    assert picked.notes[0].startswith(f"medseg: note: {study / 't1'}: skipped series 1: shot")


def test_a_picked_series_keeps_its_name_and_brings_no_notes(study):
    assert pick_series(study, "2").names == ["t2"] and pick_series(study, "1.2.3.0").names == ["t1"]
    assert pick_series(study, 2).notes == []
    shot = pick_series(study, 1)  # a non-volume is the caller's to refuse (predict) or to load (convert)
    assert shot.series[0].is_volume is False and shot.names == ["2_shot"]


def test_single_picks_the_only_series_and_refuses_a_choice(tmp_path, monkeypatch):
    found = listed(tmp_path, ("a", "T1", True), ("b", "T2", True))
    monkeypatch.setattr("medseg.io.dicom.discover_series", lambda path, progress=False: found)
    with pytest.raises(InputError, match="holds 2 series, pick one with --series"):
        pick_series(tmp_path, single=True)
    assert pick_series(tmp_path, 1, single=True).names == ["b"]
    found.pop()
    assert pick_series(tmp_path, single=True).names == [tmp_path.name]  # a lone series: named after the folder


def test_no_series_and_no_volume_errors(tmp_path, monkeypatch):
    found: list[SeriesInfo] = []
    monkeypatch.setattr("medseg.io.dicom.discover_series", lambda path, progress=False: found)
    for single in (False, True):
        with pytest.raises(InputError, match="no DICOM image series found"):
            pick_series(tmp_path, single=single)
    found.extend(listed(tmp_path, ("a", "shot", False), ("a", "shot2", False)))
    with pytest.raises(InputError, match=r"no DICOM volume series found \(2 non-volume image series: not a volume"):
        pick_series(tmp_path)


def test_names_differing_only_in_case_are_told_apart(tmp_path):
    found = listed(tmp_path, ("T1", "", True), ("t1", "", True))
    if len({p.name for p in tmp_path.iterdir()}) < 2:
        pytest.skip("case-insensitive file system")
    assert series_case_names(found, tmp_path) == {0: "T1_1230", 1: "t1_1231"}


def two_layouts(tmp_path: Path) -> list[Path]:
    """The MR crop and a 3-slice CT in subfolders of one folder, and their files in one flat folder (linked),
    with a screenshot beside them in both."""
    nested, flat = tmp_path / "nested", tmp_path / "flat"
    for name, rel in (("crop", CROP), ("ct", CT3)):
        src = data_path(*rel)
        (nested / name).mkdir(parents=True)
        flat.mkdir(exist_ok=True)
        for f in sorted(src.iterdir()):
            (nested / name / f.name).symlink_to(f.resolve())
            (flat / f"{name}_{f.name}").symlink_to(f.resolve())
    shot = pydicom.dcmread(sorted(data_path(*CROP).iterdir())[0])
    del shot.ImagePositionPatient
    shot.SeriesInstanceUID, shot.SeriesDescription = pydicom.uid.generate_uid(), "screenshot"
    for folder in (nested / "crop", flat):
        shot.save_as(folder / "screenshot.dcm")
    return [nested, flat]


def test_converted_files_are_named_as_predicted_cases(tmp_path, capsys):
    """``medseg convert DIR OUT/`` and ``medseg predict -i DIR`` give every series the same name."""
    from medseg.infer.cohort import list_cases
    from medseg.io.convert import convert

    for folder in two_layouts(tmp_path):
        notes: list[str] = []
        cases = list_cases(folder, notes=notes)
        written = convert(folder, tmp_path / f"out_{folder.name}")
        assert [p.name for p in written] == [f"{c.name}.nii.gz" for c in cases]
        assert capsys.readouterr().err.splitlines() == notes and "screenshot" in notes[0]
    assert sorted(c.name for c in list_cases(tmp_path / "nested")) == ["crop", "ct"]
    assert sorted(c.name for c in list_cases(tmp_path / "flat")) == ["2_CT", "HippoCrop"]


@pytest.mark.parametrize("rel", [CROP, ("totalseg_example", "ct_dicom")])  # plain and JPEG 2000 (threaded)
def test_released_headers_load_the_same_volume(rel):
    kept = discover_series(data_path(*rel))[0]
    released = discover_series(data_path(*rel))[0].release_headers()
    assert all(f.dataset is None for f in released.frames)
    a, b = load_series(kept), load_series(released)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype and np.array_equal(a.affine, b.affine) and a.meta == b.meta


def test_a_file_changed_after_listing_is_named(tmp_path):
    shutil.copytree(data_path(*CROP), tmp_path / "crop")
    info = discover_series(tmp_path / "crop")[0].release_headers()
    victim = info.frames[1].path
    shutil.copyfile(sorted(data_path(*CT3).iterdir())[0], victim)
    with pytest.raises(InputError, match="changed since its folder was listed") as exc:
        load_series(info)
    assert victim.name in str(exc.value)


def test_cohort_cases_hold_no_headers():
    from medseg.infer.cohort import list_cases

    cases = list_cases(data_path(*CROP), series=0)
    assert cases[0].series is not None and all(f.dataset is None for f in cases[0].series.frames)
