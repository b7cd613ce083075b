"""Connected-component post-processing, checked against SimpleITK's connected components (an independent
implementation) on real label maps and on random ones."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg.postprocess.components import component_sizes, keep_largest_component, remove_small_components
from conftest import data_path


def _sitk_components(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """SimpleITK: full-connectivity components relabelled by decreasing size (1 = largest), small ones dropped."""
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    return sitk.GetArrayFromImage(sitk.RelabelComponent(cc, minimumObjectSize=min_size, sortByObjectSize=True))


def _ref_largest(labels: np.ndarray) -> tuple[np.ndarray, set[int]]:
    """Reference result, plus the classes whose two largest components tie (either may be kept)."""
    out, ties = np.zeros_like(labels), set()
    for c in np.unique(labels[labels > 0]):
        comp = _sitk_components(labels == c)
        sizes = np.bincount(comp.ravel())
        if len(sizes) > 2 and sizes[1] == sizes[2]:
            ties.add(int(c))
        out[comp == 1] = c
    return out, ties


def _ref_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    out = np.zeros_like(labels)
    for c in np.unique(labels[labels > 0]):
        out[_sitk_components(labels == c, min_voxels) > 0] = c
    return out


def _noisy(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A real label map with scattered false-positive voxels and blobs (what a network produces)."""
    rng = np.random.default_rng(seed)
    lab = labels.copy()
    k = int(labels.max())
    idx = rng.random(lab.shape) < 0.002
    lab[idx] = rng.integers(1, k + 1, idx.sum())
    return lab


@pytest.mark.realdata
@pytest.mark.parametrize("case", ["hippocampus_001", "hippocampus_017"])
def test_largest_component_matches_simpleitk_on_hippocampus(case):
    import nibabel as nib

    lab = np.asarray(nib.load(data_path("msd_hippocampus", "labelsTr", f"{case}.nii.gz")).dataobj).astype(np.uint8)
    noisy = _noisy(lab)
    ref, ties = _ref_largest(noisy)
    got = keep_largest_component(noisy)
    assert got.dtype == noisy.dtype and got.shape == noisy.shape
    for c in (1, 2):
        if c in ties:
            assert (got == c).sum() == (ref == c).sum()
        else:
            np.testing.assert_array_equal(got == c, ref == c)
    assert (got[noisy == 0] == 0).all()


@pytest.mark.realdata
def test_remove_small_matches_simpleitk_on_brats_with_anisotropic_spacing():
    import nibabel as nib

    lab = np.asarray(nib.load(data_path("brats2015_sample", "brats_2013_pat0001_1", "OTMultiClass.nii.gz")).dataobj)
    lab = _noisy(lab.astype(np.uint8)[60:180, 60:180, 40:120], seed=1)
    spacing = (0.8, 0.8, 2.5)  # 1.6 mm^3 per voxel
    for min_voxels in (2, 5, 40):
        got = remove_small_components(lab, (min_voxels - 0.5) * 1.6, spacing)  # keeps n >= min_voxels
        np.testing.assert_array_equal(got, _ref_small(lab, min_voxels))
    assert (got != lab).any()  # the noise really was removed


def test_classes_argument_leaves_other_classes_alone():
    lab = np.zeros((10, 10), np.uint16)
    lab[0, 0] = lab[5:8, 5:8] = 1
    lab[0, 9] = lab[9, 0:3] = 3
    got = keep_largest_component(lab, classes=[3])
    np.testing.assert_array_equal(got == 1, lab == 1)
    assert (got == 3).sum() == 3 and got.dtype == np.uint16
    got = remove_small_components(lab, 2, classes=[1])
    assert got[0, 0] == 0 and got[0, 9] == 3


def test_connectivity_option():
    lab = np.zeros((3, 3, 3), np.uint8)
    lab[0, 0, 0] = lab[1, 1, 1] = lab[2, 2, 2] = 1  # corner-connected chain
    assert (keep_largest_component(lab) == lab).all()  # 26-connected: one component
    assert keep_largest_component(lab, connectivity=1).sum() == 1  # 6-connected: three singletons
    assert component_sizes(lab == 1, connectivity=1)[1].tolist() == [24, 1, 1, 1]


def test_zero_min_size_and_empty_and_input_unchanged():
    lab = np.array([[0, 1], [2, 0]], np.uint8)
    before = lab.copy()
    assert (remove_small_components(lab, 0) == lab).all()
    assert (keep_largest_component(np.zeros((4, 4), np.uint8)) == 0).all()
    remove_small_components(lab, 5)
    keep_largest_component(lab)
    assert (lab == before).all()
    with pytest.raises(ValueError):
        remove_small_components(lab, 1, spacing=(1, 1, 1))
    with pytest.raises(ValueError):
        remove_small_components(lab, -1)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
              elements=st.integers(0, 3)), st.integers(1, 6))
def test_random_label_maps_match_simpleitk(lab, min_voxels):
    np.testing.assert_array_equal(remove_small_components(lab, min_voxels - 0.5), _ref_small(lab, min_voxels))
    ref, ties = _ref_largest(lab)
    got = keep_largest_component(lab)
    for c in range(1, 4):
        if c in ties:
            assert (got == c).sum() == (ref == c).sum()
        else:
            np.testing.assert_array_equal(got == c, ref == c)
