"""Label maps as other tools save them: Fiji's float32 TIFFs, uint32/uint64/int32 ids, NIfTI float labels.

An integral float map (or any integer dtype) must give the post-processing helpers exactly the integer map's
result; NaN, fractions and negative values are a ValueError that names the argument; ids beyond what an integer
type holds are refused, never wrapped.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_clean_error, data_path

from medseg.postprocess.components import keep_largest_component, remove_small_components
from medseg.postprocess.contrast import object_snr, remove_faint_instances
from medseg.postprocess.merge import border_strengths, merge_weak_borders
from medseg.postprocess.watershed import (clear_border_instances, keep_instances, relabel_sequential,
                                          remove_small_instances)


def _fiji_float(arr: np.ndarray, tmp_path) -> np.ndarray:
    """``arr`` saved as Fiji saves label images (a 32-bit float ImageJ TIFF) and read back."""
    import tifffile

    path = tmp_path / "labels_float.tif"
    tifffile.imwrite(path, arr.astype(np.float32), imagej=True)
    out = tifffile.imread(path)
    assert out.dtype == np.float32
    return out


@pytest.fixture(scope="module")
def dsb():
    """A real DSB2018 instance map (uint16, ids 1..n), its image and a boundary map."""
    import tifffile
    from PIL import Image as PILImage

    folder = data_path("dsb2018_fluo")
    lab_path = sorted((folder / "labels").glob("*.tif"))[0]
    lab = tifffile.imread(lab_path)
    img = np.asarray(PILImage.open(folder / "images" / f"{lab_path.stem}.png"))[..., 0].astype(float)
    boundary = np.random.default_rng(0).random(lab.shape)
    return lab, img, boundary


@pytest.fixture(scope="module")
def hippocampus():
    import nibabel as nib

    path = sorted(data_path("msd_hippocampus", "labelsTr").glob("*.nii.gz"))[0]
    return np.asarray(nib.load(path).dataobj)


INSTANCE_HELPERS = {
    "remove_small_instances": lambda lab, img, b: remove_small_instances(lab, 30),
    "relabel_sequential": lambda lab, img, b: relabel_sequential(lab),
    "keep_instances": lambda lab, img, b: keep_instances(lab, np.arange(int(np.nanmax(lab))) % 2 == 0),
    "clear_border_instances": lambda lab, img, b: clear_border_instances(lab),
    "remove_faint_instances": lambda lab, img, b: remove_faint_instances(lab, img, 2.0),
    "object_snr": lambda lab, img, b: object_snr(img, lab),
    "merge_weak_borders": lambda lab, img, b: merge_weak_borders(lab, b, 0.6, 0.5),
}


@pytest.mark.parametrize("name", sorted(INSTANCE_HELPERS))
def test_fiji_float32_instance_map_gives_the_integer_result(name, dsb, tmp_path):
    lab, img, boundary = dsb
    fn = INSTANCE_HELPERS[name]
    expected = fn(lab, img, boundary)
    got = fn(_fiji_float(lab, tmp_path), img, boundary)
    assert np.array_equal(np.asarray(got), np.asarray(expected), equal_nan=True)


@pytest.mark.parametrize("dtype", [np.uint64, np.int32, np.uint32])
@pytest.mark.parametrize("name", sorted(INSTANCE_HELPERS))
def test_integer_dtypes_give_the_same_result(name, dtype, dsb):
    lab, img, boundary = dsb
    fn = INSTANCE_HELPERS[name]
    expected = np.asarray(fn(lab, img, boundary))
    got = np.asarray(fn(lab.astype(dtype), img, boundary))
    assert np.array_equal(got, expected, equal_nan=True)


def test_merge_weak_borders_uint64_map():
    """uint64 ids mixed with int64 roots made float ids: an IndexError on a uint64 map."""
    lab = np.zeros((5, 12), np.uint64)
    lab[:, :4], lab[:, 4], lab[:, 6:9], lab[:, 9:] = 1, 2, 3, 4
    out = merge_weak_borders(lab, np.zeros(lab.shape))
    assert out.dtype == np.uint64
    assert out[0].tolist() == [1, 1, 1, 1, 1, 0, 2, 2, 2, 3, 3, 3]


def test_float_instance_map_small_objects_removed_by_size(dsb, tmp_path):
    """Independent of the integer path: the objects left are exactly those of at least 30 pixels."""
    lab = dsb[0]
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    out = remove_small_instances(_fiji_float(lab, tmp_path), 30)
    assert out.dtype == np.float32
    assert sorted(int(v) for v in np.unique(out) if v) == sorted(int(i) for i in ids[counts >= 30])
    assert len(ids[counts < 30]) > 0  # the case really has small objects


@pytest.mark.parametrize("fn", [keep_largest_component, lambda lab: remove_small_components(lab, 20.0)],
                         ids=["keep_largest_component", "remove_small_components"])
def test_float_semantic_map_gives_the_integer_result(fn, hippocampus):
    expected = fn(hippocampus)
    got = fn(hippocampus.astype(np.float32))
    assert got.dtype == np.float32 and np.array_equal(got, expected)


def test_keep_largest_component_of_a_float_map_keeps_one_component_per_class(hippocampus):
    from scipy import ndimage as ndi

    lab = hippocampus.copy()
    lab[0, 0, 0] = 1  # a stray voxel of class 1, far from the structure
    out = keep_largest_component(lab.astype(np.float32))
    for c in (1, 2):
        assert ndi.label(out == c, structure=np.ones((3, 3, 3)))[1] == 1
    assert out[0, 0, 0] == 0


BAD = {"negative background": lambda lab: np.where(lab == 0, -1, lab.astype(np.int32)),
       "resampled 1.0000001": lambda lab: np.where(lab == 1, np.float32(1.0000001), lab.astype(np.float32)),
       "NaN": lambda lab: np.where(lab == 1, np.nan, lab.astype(np.float64))}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("name", sorted(INSTANCE_HELPERS))
def test_bad_instance_map_is_a_value_error_naming_the_argument(name, bad, dsb):
    lab, img, boundary = dsb
    with pytest.raises(ValueError, match="^labels is not a label map"):
        INSTANCE_HELPERS[name](BAD[bad](lab), img, boundary)


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("fn", [keep_largest_component, lambda lab: remove_small_components(lab, 20.0),
                                lambda lab: border_strengths(lab, np.zeros(lab.shape))],
                         ids=["keep_largest_component", "remove_small_components", "border_strengths"])
def test_bad_semantic_map_is_a_value_error_naming_the_argument(fn, bad, hippocampus):
    with pytest.raises(ValueError, match="^labels is not a label map"):
        fn(BAD[bad](hippocampus))


def test_integer_labels_refuses_float_ids_beyond_int64():
    """An integral float of 1e19 was cast to int64 as -2**63: a negative id, silently."""
    from medseg.errors import InputError
    from medseg.io.labels import integer_labels

    with pytest.raises(InputError, match="seg.nii.gz: .*beyond 64-bit"):
        integer_labels(np.array([0.0, 1.0, 1e19]), path="seg.nii.gz")
    assert integer_labels(np.array([0.0, 3e9])).tolist() == [0, 3_000_000_000]  # large, representable: kept


def test_export_refuses_float_ids_beyond_int64(tmp_path, cli):
    """A real hippocampus label saved as float64 with an id of 1e19: exit 2, one line, nothing written."""
    import nibabel as nib

    src = sorted(data_path("msd_hippocampus", "labelsTr").glob("*.nii.gz"))[0]
    im = nib.load(src)
    arr = np.asarray(im.dataobj).astype(np.float64)
    arr[arr == 2] = 1e19
    seg = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(arr, im.affine), seg)
    out = tmp_path / "out"
    out.mkdir()
    res = cli("export", seg, "--format", "nifti", "-o", out / "o.nii.gz")
    assert_clean_error(res, "huge.nii.gz", "beyond 64-bit")
    assert list(out.iterdir()) == []
