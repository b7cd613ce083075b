"""Running out of memory is the machine's limit, not a bug in medseg: one line that says so, exit 1 (an unexpected
failure, not bad input), no traceback unless --debug."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli


@pytest.fixture
def image_file(tmp_path):
    from medseg.io import Image, write_image

    path = tmp_path / "a.nii.gz"
    write_image(Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), path)
    return path


def _exhausted(*args, **kwargs):
    raise MemoryError("Unable to allocate 40.0 GiB for an array with shape (100000, 100000) and data type float32")


def test_out_of_memory_is_named_not_called_a_bug(image_file, monkeypatch):
    convert = importlib.import_module("medseg.io.convert")

    monkeypatch.setattr(convert, "describe", _exhausted)
    res = run_cli("info", image_file)
    assert_clean_error(res, "out of memory", "40.0 GiB", code=1)
    assert "internal error" not in res.err


def test_out_of_memory_with_debug_shows_the_traceback(image_file, monkeypatch):
    convert = importlib.import_module("medseg.io.convert")

    monkeypatch.setattr(convert, "describe", _exhausted)
    res = run_cli("--debug", "info", image_file)
    assert res.code == 1
    assert "Traceback" in res.err and "out of memory" in res.err
