"""Outputs that appear together (medseg.io.staging): all of them, or none."""

import pytest

from medseg.errors import InputError
from medseg.io.staging import staged_outputs


def _write(place, name, text="x"):
    with place(name) as tmp:
        tmp.write_text(text)


def test_success_places_every_output_and_leaves_no_stage(tmp_path):
    out = tmp_path / "new" / "out"
    with staged_outputs(out, last=["summary.csv"]) as place:
        for n in ("a.txt", "b.txt", "summary.csv"):
            _write(place, n, n)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "summary.csv"]
    assert (out / "b.txt").read_text() == "b.txt"


def test_failure_midway_leaves_nothing_and_removes_a_folder_it_made(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_outputs(out) as place:
            _write(place, "a.txt")
            raise RuntimeError("second image is bad")
    assert not out.exists()


def test_failure_keeps_an_existing_folder_and_its_files_untouched(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_outputs(tmp_path) as place:
            _write(place, "a.txt", "new")
            _write(place, "b.txt")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


def test_an_output_never_replaces_a_protected_input(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("input")
    with pytest.raises(InputError, match="input"):
        with staged_outputs(tmp_path, protect=[src]) as place:
            _write(place, "b.txt")
            _write(place, "a.txt", "output")
    assert src.read_text() == "input" and not (tmp_path / "b.txt").exists()


def test_a_folder_under_an_output_name_stops_the_move_before_anything_moves(tmp_path):
    with pytest.raises(InputError, match="taken by a folder"):
        with staged_outputs(tmp_path) as place:
            _write(place, "a.txt")
            _write(place, "b.txt")
            (tmp_path / "b.txt").mkdir()  # made meanwhile, by someone else
    assert not (tmp_path / "a.txt").exists()


def test_a_folder_another_run_removes_between_its_making_and_the_stage_is_made_again(tmp_path, monkeypatch):
    """Another run that made the shared output folder and failed removes it while empty; that can fall between
    this run's mkdir and its stage's mkdtemp (the stage then had no folder to go in: 'cannot write output')."""
    import tempfile

    out = tmp_path / "out"
    real = tempfile.mkdtemp
    calls = []

    def other_run_removes_it_first(*args, **kwargs):
        calls.append(kwargs["dir"])
        if len(calls) == 1:
            out.rmdir()  # the other run's cleanup of the empty folder
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", other_run_removes_it_first)
    with staged_outputs(out) as place:
        _write(place, "a.txt", "a")
    assert (out / "a.txt").read_text() == "a"
    assert len(calls) == 2
