"""Mechanics of the shared core: the Image type's geometry conversions, atomic writes, CLI plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, case_name
from medseg.io.image import Image, affine_from_geometry

from conftest import run_cli


def _oblique_affine():
    theta = np.deg2rad(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    return affine_from_geometry([0.7, 0.9, 2.5], [-12.5, 40.25, 7.0], rot)


def test_sitk_roundtrip_keeps_geometry_and_values():
    rng = np.random.default_rng(0)
    img = Image(rng.integers(-1000, 2000, (7, 6, 5)).astype(np.int16), _oblique_affine())
    back = Image.from_sitk(img.to_sitk())
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-9)
    np.testing.assert_array_equal(back.array, img.array)
    # SimpleITK sees LPS: x and y of the origin flip sign
    s = img.to_sitk()
    np.testing.assert_allclose(s.GetOrigin(), [12.5, -40.25, 7.0])
    assert s.GetSize() == (7, 6, 5)


def test_nibabel_roundtrip_keeps_geometry_and_values():
    img = Image(np.arange(7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5), _oblique_affine())
    back = Image.from_nibabel(img.to_nibabel())
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, img.array)


def test_world_index_inverse():
    img = Image(np.zeros((4, 4, 4)), _oblique_affine())
    ijk = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 3.5]])
    np.testing.assert_allclose(img.world_to_index(img.index_to_world(ijk)), ijk, atol=1e-9)
    assert img.spacing == pytest.approx((0.7, 0.9, 2.5))


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_refuses_to_overwrite_input(tmp_path):
    src = tmp_path / "in.nii.gz"
    src.write_bytes(b"x")
    with pytest.raises(InputError, match="overwrite an input"):
        with atomic_path(src, protect=[src]):
            pass
    assert src.read_bytes() == b"x"


def test_case_name():
    assert case_name("/a/b/hippocampus_001.nii.gz") == "hippocampus_001"
    assert case_name("img.tif") == "img"


def test_cli_version_and_usage_error():
    import medseg

    res = run_cli("--version")
    assert res.code == 0 and medseg.__version__ in res.out
    res = run_cli("no-such-command")
    assert res.code == 2


def test_atomic_outputs_are_ordinary_files(tmp_path):
    import os
    import stat

    with atomic_path(tmp_path / "o.txt") as tmp:
        tmp.write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "o.txt").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
