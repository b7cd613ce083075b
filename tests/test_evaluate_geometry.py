"""Evaluation is invariant to how the same data are stored: axis order, flips, orientation of the prediction file
(re-indexed onto the reference grid without resampling), 2D headers, micrometre spacings, singleton axes; the
"same grid" tolerance bounds world positions. Synthetic data (mechanics); surface distances checked against scipy's
EDT."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.errors import InputError
from medseg.evaluate.cases import check_geometry
from medseg.evaluate.folder import evaluate_folder
from medseg.evaluate.metrics import evaluate_case
from medseg.io.image import Image
from medseg.io.writers import write_image

SURF = ("hd95", "hd", "assd", "nsd")


def _blobs(shape, n, seed, labels=(1, 2)):
    rng = np.random.default_rng(seed)
    a = np.zeros(shape, np.uint8)
    for _ in range(n):
        c = [rng.integers(0, s) for s in shape]
        r = [rng.integers(1, max(2, s // 3)) for s in shape]
        a[tuple(slice(max(0, ci - ri), ci + ri) for ci, ri in zip(c, r))] = rng.choice(labels)
    return a


def _edt_surface(ref, pred, spacing, tol):
    """Independent HD95/HD/ASSD/NSD: scipy's EDT with ``sampling=`` on erosion borders."""
    br = ref & ~ndi.binary_erosion(ref)
    bp = pred & ~ndi.binary_erosion(pred)
    d_pr = ndi.distance_transform_edt(~br, sampling=spacing)[bp]
    d_rp = ndi.distance_transform_edt(~bp, sampling=spacing)[br]
    n = len(d_pr) + len(d_rp)
    return {"hd95": max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), "hd": max(d_pr.max(), d_rp.max()),
            "assd": (d_pr.sum() + d_rp.sum()) / n,
            "nsd": (np.sum(d_pr <= tol * (1 + 1e-9)) + np.sum(d_rp <= tol * (1 + 1e-9))) / n}


def _pair(tmp_path, pred_img, ref_img, pred_name="c.nii.gz", ref_name="c.nii.gz"):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    write_image(ref_img, tmp_path / "r" / ref_name)
    write_image(pred_img, tmp_path / "p" / pred_name)
    return tmp_path / "p", tmp_path / "r"


# --------------------------------------------------------------------------------------------- guards (pass now)
@pytest.mark.parametrize("seed", range(3))
def test_permutation_and_flip_invariance_anisotropic(seed):
    spacing = (0.7, 0.7, 5.0)
    ref, pred = _blobs((20, 17, 9), 5, seed), _blobs((20, 17, 9), 5, seed + 100)
    pred[pred == 2] = 0  # class 2: prediction empty
    kw = dict(labels={"a": 1, "b": 2, "c": 3}, nsd_tolerance=1.0, lesion_classes=["a"], distance_cap="diagonal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = evaluate_case(pred, ref, spacing=spacing, **kw)["classes"]
        ind = _edt_surface(ref == 1, pred == 1, spacing, 1.0)
        assert all(np.isclose(base["a"][k], ind[k]) for k in SURF)
        keys = SURF + ("dice", "iou", "volume_ref_ml", "volume_pred_ml")
        def same(got):
            for n in base:
                assert np.allclose([got[n][k] for k in keys], [base[n][k] for k in keys], equal_nan=True), n
                assert got[n]["flags"] == base[n]["flags"] and got[n].get("lesions") == base[n].get("lesions")
        for perm in itertools.permutations(range(3)):
            sp = tuple(spacing[i] for i in perm)
            for order in (np.ascontiguousarray, np.asfortranarray):
                same(evaluate_case(order(pred.transpose(perm)), np.asfortranarray(ref.transpose(perm)), spacing=sp,
                                   **kw)["classes"])
        for ax in range(3):
            same(evaluate_case(np.flip(pred, ax), np.flip(ref, ax), spacing=spacing, **kw)["classes"])


@pytest.mark.parametrize("fmt_pred", [".nii.gz", ".mha", ".nrrd"])
def test_one_voxel_shift_changes_hd_by_that_axis_spacing(tmp_path, fmt_pred):
    sp = (0.5, 1.0, 3.0)
    aff = np.diag([*sp, 1.0])
    ref = np.zeros((12, 10, 8), np.uint8)
    ref[3:8, 2:7, 2:5] = 1
    for ax in range(3):
        d = tmp_path / str(ax)
        d.mkdir()
        p, r = _pair(d, Image(np.roll(ref, 1, ax), aff), Image(ref, aff), pred_name=f"c{fmt_pred}")
        m = evaluate_folder(p, r, labels={"a": 1})["per_case"][0]["classes"]["a"]
        assert m["hd"] == pytest.approx(sp[ax]) and m["volume_ref_ml"] == pytest.approx(75 * 1.5 / 1000)


# --------------------------------------------------------------------------------------------- defects (fail now)
def test_flipped_prediction_is_aligned_or_refused_without_a_misleading_hint(tmp_path):
    """Same voxels, stored with axis 0 reversed (affine adjusted: world positions unchanged)."""
    shape = (20, 17, 9)
    ref = _blobs(shape, 5, 0, labels=(1,))
    aff = np.diag([0.7, 0.7, 5.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    flipped = aff.copy()
    flipped[:3, 3] += aff[:3, 0] * (shape[0] - 1)
    flipped[:3, 0] *= -1
    p, r = _pair(tmp_path, Image(np.flip(ref, 0).copy(), flipped), Image(ref, aff))
    m = evaluate_folder(p, r, labels={"a": 1})["per_case"][0]["classes"]["a"]  # re-indexed, not resampled
    assert m["dice"] == 1.0 and m["hd"] == 0.0  # was refused, and --spacing-from ref (its hint) gave Dice 0.596


def test_permuted_prediction_is_aligned_or_refused(tmp_path):
    """Same voxels, stored with axes 0 and 1 swapped (affine columns swapped)."""
    ref = _blobs((20, 17, 9), 5, 0, labels=(1,))
    aff = np.diag([0.7, 0.8, 5.0, 1.0])
    perm = aff.copy()
    perm[:3, :3] = aff[:3, [1, 0, 2]]
    p, r = _pair(tmp_path, Image(ref.transpose(1, 0, 2).copy(), perm), Image(ref, aff))
    m = evaluate_folder(p, r, labels={"a": 1})["per_case"][0]["classes"]["a"]
    assert m["dice"] == 1.0 and m["hd"] == 0.0


def test_2d_nifti_and_mha_of_one_grid_are_the_same_grid(tmp_path):
    """A 2D NIfTI keeps a slice thickness in its unused third column; a 2D MHA cannot: same 2D grid."""
    ref = _blobs((30, 40), 4, 1, labels=(1,))
    aff = np.diag([0.5, 0.5, 3.0, 1.0])
    p, r = _pair(tmp_path, Image(ref, aff), Image(ref, aff), pred_name="c.mha")
    m = evaluate_folder(p, r, labels={"a": 1})["per_case"][0]["classes"]["a"]
    assert m["dice"] == 1.0


def test_microscopy_spacing_in_micrometres_is_converted_to_mm(tmp_path):
    ref = np.zeros((4, 50, 50), np.uint8)
    ref[1:3, 10:30, 10:30] = 1  # 800 voxels of 2 x 0.5 x 0.5 um
    aff = np.diag([2.0, 0.5, 0.5, 1.0])
    p, r = _pair(tmp_path, Image(np.roll(ref, 1, 2), aff, {"unit": "um"}), Image(ref, aff, {"unit": "um"}),
                 pred_name="c.tif", ref_name="c.tif")
    m = evaluate_folder(p, r, labels={"a": 1})["per_case"][0]["classes"]["a"]
    assert m["hd"] == pytest.approx(0.5e-3)  # 0.5 um, reported in mm
    assert m["volume_ref_ml"] == pytest.approx(800 * 0.5e-12)  # 1 um^3 = 1e-12 ml


def _grid(shape, affine):
    img = Image(np.zeros((1,) * len(shape), np.uint8), affine)
    img.array = np.broadcast_to(np.uint8(0), shape)
    return img


def test_geometry_tolerance_bounds_the_world_offset_of_the_grid_not_each_affine_entry():
    shape = (512, 512, 200)
    a = np.diag([0.7, 0.7, 5.0, 1.0])
    b = a.copy()
    b[0, 0] = b[1, 1] = 0.7009  # every entry within 1e-3 mm, yet the far corner is 0.65 mm (0.66 voxel) off
    with pytest.raises(InputError):
        check_geometry(_grid(shape, b), _grid(shape, a), "pred.nii.gz", atol=1e-3)


def test_geometry_tolerance_zero_is_exact():
    a = np.diag([0.7, 0.7, 5.0, 1.0])
    a[:3, 3] = -1000.0
    b = a.copy()
    b[:3, 3] += 0.009  # np.allclose's default rtol=1e-5 lets 0.01 mm through at 1000 mm
    with pytest.raises(InputError):
        check_geometry(_grid((8, 8, 4), b), _grid((8, 8, 4), a), "pred.nii.gz", atol=0.0)


@pytest.mark.parametrize("spacing", [(-0.7, 0.7, 5.0), (0.0, 0.7, 5.0), (float("nan"), 0.7, 5.0)])
def test_spacing_must_be_positive_and_finite(spacing):
    ref = np.zeros((6, 6, 4), np.uint8)
    ref[1:4, 1:4, 1:3] = 1
    with pytest.raises(InputError):
        evaluate_case(np.roll(ref, 1, 0), ref, labels={"a": 1}, spacing=spacing)


def test_singleton_axis_does_not_turn_every_pixel_into_surface():
    """2D data stored as (X, Y, 1) (nnU-Net 2D NIfTI, medseg's own evaluate_folder example) must score as 2D."""
    yy, xx = np.mgrid[:64, :64]
    ref = ((yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2).astype(np.uint8)
    pred = ((yy - 34) ** 2 + (xx - 31) ** 2 < 17 ** 2).astype(np.uint8)
    two_d = evaluate_case(pred, ref, labels={"a": 1}, spacing=(0.8, 0.8))["classes"]["a"]
    for p3, r3, sp in ((pred[..., None], ref[..., None], (0.8, 0.8, 1.0)), (pred[None], ref[None], (1.0, 0.8, 0.8))):
        three_d = evaluate_case(p3, r3, labels={"a": 1}, spacing=sp)["classes"]["a"]
        assert [three_d[k] for k in SURF] == pytest.approx([two_d[k] for k in SURF])


def test_a_prediction_on_another_grid_is_refused_naming_the_orientation(tmp_path):
    """Not the same voxels in another order (the grid is shifted too): refused, one line, orientation named."""
    ref = _blobs((20, 17, 9), 5, 0, labels=(1,))
    aff = np.diag([0.7, 0.7, 5.0, 1.0])
    other = aff.copy()
    other[:3, 0] *= -1  # flipped in place: a mirror image, not a re-ordering of the same points
    p, r = _pair(tmp_path, Image(ref, other), Image(ref, aff))
    with pytest.raises(InputError, match="orientation") as exc:
        evaluate_folder(p, r, labels={"a": 1})
    assert "\n" not in str(exc.value)


def test_evaluate_case_on_images_agrees_with_evaluate_folder(tmp_path):
    """The Python call on two Images re-indexes and reads micrometres as the folder evaluation does (it refused
    the re-stored prediction and took µm for mm: volumes 10^6 times too large)."""
    from medseg.io.orientation import reorient

    ref = _blobs((20, 17, 9), 5, 0, labels=(1,))
    aff = np.diag([0.7, 0.8, 5.0, 1.0])
    r = Image(ref, aff)
    p = reorient(Image(ref, aff), "LPI")[0]
    assert evaluate_case(p, r, labels={"a": 1})["classes"]["a"]["dice"] == 1.0
    um = {"unit": "um"}
    a = evaluate_case(Image(ref, aff, um), Image(ref, aff, um), labels={"a": 1})["classes"]["a"]
    assert a["volume_ref_ml"] == pytest.approx(ref.sum() * 0.7 * 0.8 * 5.0 * 1e-12)  # 1 µm³ = 1e-12 ml


def test_micrometre_label_maps_say_that_the_nsd_tolerance_is_in_mm(tmp_path):
    ref = np.zeros((50, 50), np.uint8)
    ref[10:30, 10:30] = 1
    aff = np.diag([0.5, 0.5, 1.0, 1.0])
    p, r = _pair(tmp_path, Image(np.roll(ref, 4, 1), aff, {"unit": "um"}), Image(ref, aff, {"unit": "um"}),
                 pred_name="c.tif", ref_name="c.tif")
    with pytest.warns(UserWarning, match="NSD tolerance .* is in mm"):
        res = evaluate_folder(p, r, labels={"a": 1})
    assert "spacing_unit_read" not in res["per_case"][0]


def test_a_one_slice_prediction_stored_flipped_is_re_indexed_whatever_its_slice_thickness(tmp_path):
    """A one-slice axis' thickness is not part of the grid: the unflipped file was accepted, the flipped one refused."""
    ref = _blobs((10, 12, 1), 3, 0, labels=(1,))
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    thin = np.diag([-1.0, 1.0, 1.0, 1.0])
    thin[0, 3] = 9.0  # axis 0 reversed: index 9 at x = 0
    p, r = _pair(tmp_path, Image(ref[::-1].copy(), thin), Image(ref, aff))
    assert evaluate_folder(p, r, labels={"a": 1})["per_case"][0]["classes"]["a"]["dice"] == 1.0
