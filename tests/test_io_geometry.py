"""Mechanics of the slice-geometry functions (synthetic stacks), the tilt resampling checked against
SimpleITK's resampler, and the docstring examples of medseg.io."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

from medseg.io import dicom_geometry as geo
from medseg.io.dicom_pixels import apply_rescale, fix_stored_bits, rescaled_dtype


def _oblique_stack(n=12, dz=2.5, decimals=None, drift_per_slice=(0.0, 0.0)):
    iop = np.array([0.999679, 0.02533, 0, -0.0244148, 0.963561, -0.26637])
    row, col, normal = geo.slice_axes(iop)
    p0 = np.array([-106.986, -151.754, 82.5067])
    pos = np.array([p0 + k * dz * normal + k * (drift_per_slice[0] * row + drift_per_slice[1] * col)
                    for k in range(n)])
    if decimals is not None:
        pos = np.round(pos, decimals)
    return iop, row, col, normal, pos


def test_sort_is_along_the_normal_whatever_the_file_order():
    _, _, _, normal, pos = _oblique_stack()
    perm = np.random.default_rng(1).permutation(len(pos))
    order = geo.sort_positions(pos[perm], normal)
    np.testing.assert_array_equal(perm[order], np.arange(len(pos)))


def test_regular_stack_with_rounded_positions_is_neither_irregular_nor_tilted():
    _, _, _, normal, pos = _oblique_stack(decimals=3)  # IPP written with 3 decimals, as scanners do
    spacing, drift = geo.stack_geometry(pos, normal)
    assert spacing == pytest.approx(2.5, abs=1e-3)
    assert not geo.is_tilted(drift, spacing)


@pytest.mark.parametrize("k,delta,msg", [(5, 2.5, "missing slices"), (5, 0.4, "inconsistent slice spacing"),
                                         (5, -2.5, "share a position")])
def test_irregular_stacks_are_named(k, delta, msg):
    _, _, _, normal, pos = _oblique_stack()
    pos = pos.copy()
    pos[k:] += delta * normal  # every slice from k on moves: one gap changes (-2.5: slice k lands on k-1)
    with pytest.raises(ValueError, match=msg):
        geo.stack_geometry(pos, normal)


def test_tilt_detected_and_angle():
    _, _, col, normal, pos = _oblique_stack(drift_per_slice=(0, 0.2))
    spacing, drift = geo.stack_geometry(pos, normal)
    assert geo.is_tilted(drift, spacing)
    assert geo.tilt_degrees(drift, spacing) == pytest.approx(np.degrees(np.arctan(0.2 / 2.5)), abs=1e-6)


def test_untilt_matches_simpleitk_resampling_of_the_sheared_stack():
    """The tilted stack is exactly an image with a sheared direction matrix; SimpleITK resamples that
    onto the orthogonal grid independently of medseg's per-slice shift."""
    import SimpleITK as sitk

    ps = (0.8, 0.6)  # (between rows, between columns)
    iop, row, col, normal, pos = _oblique_stack(n=9, dz=2.0, drift_per_slice=(0.23, 0.37))
    spacing, drift = geo.stack_geometry(pos, normal)
    rng = np.random.default_rng(3)
    from scipy import ndimage

    vol = ndimage.gaussian_filter(rng.normal(size=(40, 30, 9)), (3, 3, 0)).astype(np.float32) * 100  # [i, j, k]
    ours = geo.untilt(vol, drift, row, col, ps)

    step = pos[1] - pos[0]
    src = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))
    src.SetSpacing([ps[1], ps[0], float(np.linalg.norm(step))])
    src.SetOrigin(pos[0].tolist())
    src.SetDirection(np.stack([row, col, step / np.linalg.norm(step)], axis=1).ravel().tolist())
    ref_grid = sitk.Image(src.GetSize(), sitk.sitkFloat32)
    ref_grid.SetSpacing([ps[1], ps[0], spacing])
    ref_grid.SetOrigin(pos[0].tolist())
    ref_grid.SetDirection(np.stack([row, col, normal], axis=1).ravel().tolist())
    ref = sitk.GetArrayFromImage(sitk.Resample(src, ref_grid, sitk.Transform(), sitk.sitkLinear,
                                               float(vol.min()))).transpose(2, 1, 0)
    inner = (slice(5, -5), slice(5, -5), slice(None))  # borders: the two fill differently outside
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-3)


def test_stored_bits_and_rescale_dtypes():
    assert rescaled_dtype(16, False, [1], [0], np.dtype("uint16")) == np.uint16
    assert rescaled_dtype(12, True, [1], [-1024], np.dtype("int16")) == np.int16
    assert rescaled_dtype(16, False, [1], [-1024], np.dtype("uint16")) == np.int32
    assert rescaled_dtype(16, False, [0.5], [0], np.dtype("uint16")) == np.float32
    frames = np.array([[[10]], [[10]]], np.uint16)
    out = apply_rescale(frames, [1, 2], [-5, -5], np.dtype(np.int32))
    assert out.ravel().tolist() == [5, 15]
    assert fix_stored_bits(np.array([0xF800 | 0x07FF], np.uint16).view(np.int16), 12, True)[0] == -1


@pytest.mark.parametrize("module", ["medseg.io.image", "medseg.io.atomic", "medseg.io.readers", "medseg.io.dicom",
                                    "medseg.io.dicom_geometry", "medseg.io.dicom_headers", "medseg.io.dicom_files",
                                    "medseg.io.dicom_pixels",
                                    "medseg.io.convert"])
def test_docstring_examples_run(module):
    res = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert res.failed == 0
