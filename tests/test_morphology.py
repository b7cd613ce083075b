"""Fast distance transform and maxima (medseg.postprocess.morphology) against the SciPy / scikit-image operations
they replace, on real nuclei and on maps full of ties; and watershed markers against the whole-image recipe."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.morphology import reconstruction

from medseg.postprocess.morphology import distance_transform, h_transform, maxima_within
from medseg.postprocess.classical import threshold_mask
from medseg.postprocess.watershed import ellipsoid_footprint, peak_markers
from conftest import data_path


def _real_masks():
    """Otsu masks of a few real DSB2018 images and a crop of the real 3D stack."""
    import tifffile

    from medseg.cells.data import load_image, percentile_normalize

    images = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[::60]
    masks = [threshold_mask(percentile_normalize(np.asarray(load_image(p).array, float)), "otsu") for p in images]
    stack = tifffile.imread(data_path("nuclei_stardist", "img3d.tif")).astype(np.float32)
    masks.append(threshold_mask(percentile_normalize(stack), "otsu"))
    return masks


def _reference_peaks(distance, mask, min_distance, spacing, h):
    """The whole-image recipe peak_markers used before: skimage reconstruction, SciPy maximum filter."""
    d = np.where(mask, distance, distance.min())
    if h > 0:
        d = reconstruction(d - h, d, method="dilation")
    peaks = (d == ndi.maximum_filter(d, footprint=ellipsoid_footprint(min_distance, spacing))) & mask & (d > 0)
    if h > 0:
        peaks &= d >= ndi.grey_dilation(d, footprint=ndi.generate_binary_structure(d.ndim, d.ndim)) - 1e-12
    return ndi.label(peaks, structure=ndi.generate_binary_structure(d.ndim, d.ndim))[0]


def test_distance_transform_equals_scipy_on_real_masks():
    masks = _real_masks()
    for m in masks:
        spacings = [None, (2, 1, 1)] if m.ndim == 3 else [None, (1, 3)]
        for sp in spacings:
            ref = ndi.distance_transform_edt(m, sampling=sp)
            assert np.array_equal(distance_transform(m, sp), ref)  # integer spacing: the same values
    m = masks[-1]
    sp = (2.5, 0.7, 0.7)
    np.testing.assert_allclose(distance_transform(m, sp), ndi.distance_transform_edt(m, sampling=sp), rtol=1e-5)


@pytest.mark.parametrize("mask", [np.zeros((5, 6), bool), np.ones((5, 6), bool), np.zeros((0, 4), bool),
                                  np.array([0, 1, 1, 0], bool)])
def test_distance_transform_edge_cases_follow_scipy(mask):
    assert np.array_equal(distance_transform(mask), ndi.distance_transform_edt(mask))


def test_h_transform_equals_skimage_reconstruction():
    rng = np.random.default_rng(0)
    maps = [ndi.gaussian_filter(ndi.distance_transform_edt(m), 1.0) * m for m in _real_masks()]
    maps += [rng.integers(0, 5, (40, 50)).astype(float),  # plateaus and ties everywhere
             rng.integers(0, 4, (9, 20, 21)).astype(float), rng.normal(size=(30, 31)),
             np.array([0, 1, 3, 1, 0, 2, 0], float)]  # 1D: scikit-image's path
    for d in maps:
        for h in (0.5, 1.0, 2.0):
            assert np.array_equal(h_transform(d, h), reconstruction(d - h, d, method="dilation"))
    with pytest.raises(ValueError, match="h must be > 0"):
        h_transform(maps[0], 0)


@pytest.mark.parametrize("radius,spacing", [(1.0, (1, 1)), (2.5, (1, 1)), (6.0, (1, 1)), (4.0, (3, 1)),
                                            (2.0, (1, 1, 1)), (5.0, (2, 1, 1)), (30.0, (1, 1))])
def test_maxima_within_equals_maximum_filter(radius, spacing):
    rng = np.random.default_rng(1)
    shape = (24, 25) if len(spacing) == 2 else (10, 16, 17)
    fp = ellipsoid_footprint(radius, spacing)
    for image in (rng.integers(0, 4, shape).astype(float), ndi.gaussian_filter(rng.normal(size=shape), 1.5)):
        ref = image == ndi.maximum_filter(image, footprint=fp)
        assert np.array_equal(maxima_within(image, fp), ref)
        cand = rng.random(shape) < 0.5
        assert np.array_equal(maxima_within(image, fp, cand), ref & cand)
    with pytest.raises(ValueError, match="odd-sized"):
        maxima_within(np.zeros((5, 5)), np.ones((2, 3), bool))


def test_peak_markers_equal_the_whole_image_recipe_on_real_nuclei():
    for m in _real_masks():
        sp = (2.0, 1.0, 1.0) if m.ndim == 3 else (1.0, 1.0)
        d = ndi.gaussian_filter(ndi.distance_transform_edt(m, sampling=sp), 1.0)
        for min_distance, h in ((4.0, 0.0), (4.0, 0.8), (1.5, 0.5)):  # 1.5: the footprint misses the corners
            ours = peak_markers(d, m, min_distance, sp, h=h)
            ref = _reference_peaks(d, m, min_distance, np.array(sp), h)
            assert np.array_equal(ours, ref), (m.shape, min_distance, h)
            assert ours.max() > 0


def test_maxima_within_follows_scipy_reflect_edges_with_any_footprint():
    # a ring: reflected neighbours beyond the edge are not already inside the footprint, as they are for a disc
    yy, xx = np.mgrid[-3:4, -3:4]
    ring = (yy**2 + xx**2 <= 9) & (yy**2 + xx**2 >= 4)
    ring[3, 3] = True
    rng = np.random.default_rng(2)
    for _ in range(20):
        image = ndi.gaussian_filter(rng.normal(size=(30, 30)), 1.0)
        few = rng.random(image.shape) < 0.1  # few candidates: the footprint is visited per pixel
        ref = (image == ndi.maximum_filter(image, footprint=ring)) & few
        assert np.array_equal(maxima_within(image, ring, few), ref)
