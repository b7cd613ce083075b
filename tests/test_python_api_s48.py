"""The Python API called as a notebook calls it: harmless variants (numpy scalars and arrays for numbers and lists,
str for Path, views, read-only and Fortran-order arrays) work and leave the caller's arrays as they were; a wrong
argument is a ValueError/TypeError (or InputError) naming it, not a library's unrelated error or a silent result.
(tests/test_python_api.py covers the values the CLI also checks.)"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import data_path


def _two_discs():
    """Two overlapping bright discs (radius 10) on faint noise: two nuclei."""
    yy, xx = np.mgrid[:40, :60]
    img = ((np.hypot(yy - 20, xx - 20) < 10) | (np.hypot(yy - 20, xx - 37) < 10)) * 100.0
    return img + np.random.default_rng(0).normal(0, 1, img.shape)


def _instances():
    lab = np.zeros((20, 30), np.int32)
    lab[2:8, 2:8], lab[10:15, 10:20], lab[0:3, 25:30] = 1, 2, 3
    return lab


def _readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


# ---- harmless variants work, inputs untouched -------------------------------------------------------------------

def test_watershed_takes_views_readonly_and_numpy_scalars_without_touching_them():
    from medseg.postprocess.watershed import watershed_instances

    fg = np.zeros((20, 30))
    fg[2:10, 2:10] = fg[2:10, 10:20] = fg[12:18, 5:25] = 1
    bd = np.zeros_like(fg)
    bd[:, 10] = 1
    want = watershed_instances(fg, bd)
    assert want.max() >= 3  # the three squares (the boundary column may stay an object of its own)
    keep = fg.copy(), bd.copy()
    assert np.array_equal(watershed_instances(_readonly(fg), _readonly(bd), threshold=np.float32(0.5)), want)
    assert np.array_equal(watershed_instances(np.asfortranarray(fg), np.asfortranarray(bd)), want)
    flipped = watershed_instances(fg[::-1], bd[::-1])  # a negative-stride view: the flipped image's instances
    assert np.array_equal(flipped, watershed_instances(fg[::-1].copy(), bd[::-1].copy())) and flipped.max() == want.max()
    assert np.array_equal(watershed_instances(fg > 0, bd), want)  # a bool mask
    assert np.array_equal(fg, keep[0]) and np.array_equal(bd, keep[1])


def test_evaluate_case_takes_numpy_spacing_labels_and_float_or_bool_label_maps():
    from medseg.evaluate.metrics import evaluate_case

    ref = np.zeros((6, 8, 10), np.uint8)
    ref[1:4, 2:6, 2:8], ref[3:5, 4:7, 1:4] = 1, 2
    pred = ref.copy()
    pred[1, 2, 2] = 0
    keep = ref.copy(), pred.copy()
    base = evaluate_case(pred, ref, spacing=(1.0, 1.0, 2.0))
    dice = base["classes"]["label_1"]["dice"]
    assert dice == pytest.approx(2 * 67 / (68 + 67))  # 72 - 4 (under class 2) voxels of class 1, one missed
    for kw in ({"spacing": np.array([1, 1, 2])}, {"spacing": [np.float32(1), np.int64(1), np.float64(2)]}):
        assert evaluate_case(pred, ref, **kw)["classes"] == base["classes"]
    same = evaluate_case(pred.astype(float), np.asfortranarray(ref.astype(np.int64)), labels=np.array([1, 2]),
                         spacing=(1.0, 1.0, 2.0))
    assert same["classes"] == base["classes"]
    assert evaluate_case(pred[::-1], _readonly(ref)[::-1], spacing=(1, 1, 2))["classes"]["label_1"]["dice"] == dice
    assert np.array_equal(ref, keep[0]) and np.array_equal(pred, keep[1])


# ---- defects: wrong arguments got unrelated errors or silent results ---------------------------------------------

@pytest.mark.parametrize("kw, needle", [
    ({"boundary": "rows"}, "boundary map of shape"),
    ({"boundary": "transposed"}, "boundary map of shape"),
    ({"distance": "rows"}, "distance map of shape"),
    ({"min_distance": -3}, "min_distance"),
])
def test_watershed_names_a_map_of_the_wrong_shape_and_a_negative_min_distance(kw, needle):
    from medseg.postprocess.watershed import watershed_instances

    fg = np.zeros((20, 30))
    fg[2:10, 2:20] = 1
    other = {"rows": fg[:10], "transposed": fg.T}
    kw = {k: other.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    with pytest.raises(ValueError, match=needle):  # was: "operands could not be broadcast", "footprint of shape"
        watershed_instances(fg, **kw)


@pytest.mark.parametrize("kw, needle", [
    ({"method": "triangle"}, "unknown threshold method"),  # was thresholded as otsu
    ({"radius": -10}, "radius"),  # was: no objects
])
def test_classical_instances_refuses_what_it_ignored(kw, needle):
    from medseg.postprocess.classical import classical_instances

    img = _two_discs()
    assert classical_instances(img, radius=np.float32(10)).max() == 2  # a numpy scalar is a number
    with pytest.raises(ValueError, match=needle):
        classical_instances(img, **kw)


def test_classical_instances_names_nan_in_the_image():
    from medseg.postprocess.classical import classical_instances

    img = _two_discs()
    img[0, 0] = np.nan
    keep = img.copy()
    with pytest.raises(ValueError, match="NaN"):  # was numpy's "autodetected range of [nan, nan] is not finite"
        classical_instances(img)
    assert np.array_equal(img, keep, equal_nan=True)


def test_vote_instances_checks_the_offsets_shape():
    from medseg.postprocess.votes import vote_instances

    fg = np.zeros((20, 30))
    fg[5:15, 5:15] = 1
    off = np.zeros((2, 20, 30))
    assert vote_instances(fg, off).max() == 1
    for bad in (off[:1], np.moveaxis(off, 0, -1)):  # one map for 2 axes was broadcast silently; channels last
        with pytest.raises(ValueError, match="offsets of shape"):
            vote_instances(fg, bad)


def test_remove_faint_instances_checks_shape_and_polarity():
    from medseg.postprocess.contrast import remove_faint_instances

    lab, img = _instances(), _two_discs()[:20, :30]
    ro = _readonly(lab)
    assert remove_faint_instances(ro, img, min_snr=np.float32(2)).max() >= 1
    with pytest.raises(ValueError, match="differ in shape"):  # was an IndexError about a boolean index
        remove_faint_instances(lab, _two_discs())
    with pytest.raises(ValueError, match="polarity"):  # 0 removed every object
        remove_faint_instances(lab, img, polarity=0)


def test_remove_small_components_refuses_a_zero_spacing():
    from medseg.postprocess.components import remove_small_components

    lab = np.zeros((6, 8, 10), np.uint8)
    lab[1:4, 2:6, 2:8] = 1
    assert np.array_equal(remove_small_components(lab, np.float32(5), np.array([1, 1, 1])), lab)
    with pytest.raises(ValueError, match="spacing"):  # every component was 0 mm³: all removed
        remove_small_components(lab, 5, (0, 1, 1))


@pytest.mark.parametrize("thresholds, needle", [([], "empty"), ([1.5], r"\[0, 1\]"), ([-0.1], r"\[0, 1\]"),
                                                 ([float("nan")], r"\[0, 1\]")])
def test_instance_metrics_checks_the_thresholds(thresholds, needle):
    from medseg.evaluate.instances import instance_metrics, match_instances

    lab = _instances()
    with pytest.raises(ValueError, match=needle):  # [] was an IndexError, 1.5 a silent AP of 0
        instance_metrics(lab, lab, thresholds)
    with pytest.raises(ValueError, match=needle):
        match_instances(lab, lab, thresholds)


def test_instance_metrics_takes_numpy_thresholds_and_one_number():
    from medseg.evaluate.instances import instance_metrics

    lab = _instances()
    assert instance_metrics(lab, lab, np.array([0.5, 0.7]))["ap@0.7"] == 1.0
    assert instance_metrics(lab.astype(float), _readonly(lab), [np.float32(0.5)])["ap@0.5"] == 1.0
    assert instance_metrics(lab, lab, 0.5)["ap@0.5"] == 1.0  # was "'float' object is not iterable"


def test_evaluate_case_takes_one_lesion_class_and_names_a_scalar_spacing():
    from medseg.evaluate.metrics import evaluate_case

    ref = np.zeros((6, 8, 10), np.uint8)
    ref[1:3, 1:3, 1:3], ref[4:6, 5:7, 6:9] = 1, 1
    for lc in (1, np.int64(1), "label_1", [1]):  # 1 was "'int' object is not iterable", "label_1" its letters
        lesions = evaluate_case(ref, ref, lesion_classes=lc)["classes"]["label_1"]["lesions"]
        assert lesions["n_ref"] == 2 and lesions["ap@0.5"] == 1.0
    with pytest.raises(ValueError, match="spacing must be one value per axis"):
        evaluate_case(ref, ref, spacing=1.0)


def test_a_bare_array_where_an_image_is_needed_is_a_clear_type_error(tmp_path):
    import torch

    from medseg.export import export_segmentation
    from medseg.infer.predict import predict_image
    from medseg.io import write_image
    from medseg.plan.plan import Plan

    arr = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(TypeError, match="Image"):  # each was AttributeError: 'numpy.ndarray' has no 'meta'
        write_image(arr, tmp_path / "a.nii.gz")
    with pytest.raises(TypeError, match="Image"):
        predict_image(torch.nn.Conv3d(1, 2, 1), Plan(patch_size=[8, 8, 8]), arr.astype(np.float32))
    with pytest.raises(TypeError, match="Image"):
        export_segmentation(arr, None, "nifti", tmp_path / "b.nii.gz")
    assert not list(tmp_path.iterdir())


def test_train_cells_given_a_file_says_it_is_not_a_folder(tmp_path):
    from medseg.cells.config import CellTrainConfig
    from medseg.cells.train import train_cells
    from medseg.errors import InputError

    image = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0]
    with pytest.raises(InputError, match="not a folder"):  # was "dataset folder does not exist"
        train_cells(image, tmp_path / "run", CellTrainConfig(max_minutes=0.05), progress=False)
    assert not (tmp_path / "run").exists()
