"""Valid inputs at numerical extremes: intensities scaled by 1e-30 or 1e300 or shifted by 1e7 and 1e9, voxel sizes
of 1e-6 mm and 1e4 mm, a volume of 2**16 + 1 slices, pixel sizes at the limits of a TIFF's resolution tags. Each
gives the result of the same data at a normal scale (checked against NumPy in float64 and against the unscaled
case's own output), or a one-line refusal naming the file and the value where no result can be computed."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from conftest import assert_clean_error, data_path, run_cli
from medseg.plan.plan import Normalisation, Plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HIPPO = ("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz")
HIPPO_LABEL = ("msd_hippocampus", "labelsTr", "hippocampus_001.nii.gz")
DSB = ("dsb2018_fluo", "images", "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552.png")

# the same image in other units: (name, transform of the float64 voxels, dtype stored)
# (x1e30 in float32: test_preprocess's float64 statistics)
UNITS = [("x1e-30", lambda a: a * 1e-30, np.float32), ("x1e300", lambda a: a * 1e300, np.float64),
         ("plus1e7", lambda a: a + 1e7, np.float32), ("plus1e9", lambda a: a + 1e9, np.float64)]


def _hippocampus() -> tuple[np.ndarray, np.ndarray]:
    n = nib.load(data_path(*HIPPO))
    return np.asarray(n.dataobj).astype(np.float64), n.affine


def _model(path, **kw):
    """A model artifact with random weights (the normalisation, not the accuracy, is under test)."""
    from medseg.train.artifact import build_from_plan, save_model

    torch.manual_seed(0)
    base = dict(channels=["MRI"], labels={0: "background", 1: "a", 2: "b"}, patch_size=[16, 16, 16],
                base_filters=4, max_filters=16, target_spacing=[1.0, 1.0, 1.0], orientation="RAS")
    plan = Plan(**{**base, **kw}).validate()
    return save_model(path, plan, build_from_plan(plan).state_dict())


def _labels(folder):
    (f,) = sorted(folder.glob("*.nii.gz"))
    img = nib.load(f)
    return np.asarray(img.dataobj), img.affine


# --- intensities -----------------------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.parametrize("name,fn,dtype", UNITS, ids=[u[0] for u in UNITS])
def test_zscore_equals_float64_numpy_in_any_unit(name, fn, dtype):
    """z-score of the hippocampus case in other units equals NumPy's float64 (x - mean) / std of those very values
    (before: x1e-30 hit the absolute std floor of 1e-8 and became ~0, x1e300 overflowed float32 to NaN, and the
    shifts lost up to 0.03 (+1e7) and 3 (+1e9) standard deviations to float32 rounding)."""
    from medseg.train.preprocess import normalise

    a, _ = _hippocampus()
    x = fn(a).astype(dtype)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean()) / x64.std() if name != "x1e300" else (a - a.mean()) / a.std()
    got = normalise(x[None], Plan())[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.realdata
def test_predict_labels_are_unit_free(tmp_path):
    """``medseg predict`` on the case x1e300 (float64), x1e-30 and +1e9: the unscaled case's labels, voxel for voxel
    (before: all background, and 12738 and 11416 voxels different)."""
    a, affine = _hippocampus()
    model = _model(tmp_path / "m.pt")
    src = tmp_path / "in"
    src.mkdir()
    nib.save(nib.Nifti1Image(a.astype(np.float32), affine), src / "base.nii.gz")
    for name, fn, dtype in (UNITS[0], UNITS[1], UNITS[3]):
        nib.save(nib.Nifti1Image(fn(a).astype(dtype), affine), src / f"{name}.nii.gz")
    outs = {}
    for f in sorted(src.iterdir()):
        res = run_cli("predict", "-m", model, "-i", f, "-o", tmp_path / f.name[:-7], "--device", "cpu")
        assert res.code == 0, res.err
        outs[f.name[:-7]] = _labels(tmp_path / f.name[:-7])[0]
    base = outs.pop("base")
    assert len(np.unique(base)) > 1
    for name, lab in outs.items():
        assert np.array_equal(lab, base), name


@pytest.mark.realdata
@pytest.mark.parametrize("scale", [1e-30, 1e300])
def test_percentile_normalize_is_unit_free(scale):
    """Percentile normalisation of a DSB image x1e-30 (float32) and x1e300 (float64) equals NumPy's float64 of the
    unscaled image (before: x1e300 became inf and NaN)."""
    import imageio.v3 as iio

    from medseg.cells.data import percentile_normalize

    a = iio.imread(data_path(*DSB))[..., 0].astype(np.float64)
    lo, hi = np.percentile(a, [1.0, 99.8])
    expected = (a - lo) / (hi - lo)
    x = (a * scale).astype(np.float32 if scale < 1 else np.float64)
    got = percentile_normalize(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.realdata
def test_cells_count_classical_is_the_same_in_any_unit(tmp_path):
    """``cells count --classical`` on a DSB image as uint8, uint16 x257, float [0, 1], float32 x1e6 and float64
    x1e300: the same label image (before: float64 x1e300 was an internal error, exit 1)."""
    import imageio.v3 as iio

    a = iio.imread(data_path(*DSB))[..., 0].astype(np.float64)
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "u8.png", a.astype(np.uint8))
    tifffile.imwrite(src / "u16.tif", (a * 257).astype(np.uint16))
    tifffile.imwrite(src / "f01.tif", (a / 255).astype(np.float32))
    tifffile.imwrite(src / "f1e6.tif", (a * 1e6).astype(np.float32))
    tifffile.imwrite(src / "f1e300.tif", a * 1e300)
    res = run_cli("cells", "count", "--classical", "-i", src, "-o", tmp_path / "out")
    assert res.code == 0, res.err
    base = tifffile.imread(tmp_path / "out" / "u8_labels.tif")
    assert base.max() > 5
    for name in ("u16", "f01", "f1e6", "f1e300"):
        assert np.array_equal(tifffile.imread(tmp_path / "out" / f"{name}_labels.tif"), base), name


def test_object_snr_is_unit_free():
    """Objects' contrast to the background is a ratio: the same for an image x1e300 (before: its float64 squares
    overflowed, the background sd was inf and every object's contrast 0)."""
    from medseg.postprocess.contrast import object_snr

    img = np.full((40, 40), 10.0)
    img[::7, ::3] += 1.0  # a quantised, mostly flat background: MAD 0, so its plain standard deviation is used
    lab = np.zeros((40, 40), int)
    lab[5:10, 5:10] = 1
    img[lab == 1] += 8
    np.testing.assert_allclose(object_snr(img * 1e300, lab), object_snr(img, lab), rtol=1e-12)


@pytest.mark.realdata
def test_float64_channels_beyond_float32_are_normalised_for_training_and_prediction(tmp_path):
    """A two-channel case x1e300 (float64 files) read for training (``load_case`` then ``preprocess_case``) and
    for prediction (``read_case``): finite, and normalised as the unscaled case (before: cast to float32, inf)."""
    from medseg.infer.cases import read_case
    from medseg.train.cache import preprocess_case
    from medseg.train.dataset import Case

    a, affine = _hippocampus()
    files = []
    for i, arr in enumerate((a, a.max() - a)):
        nib.save(nib.Nifti1Image(arr * 1e300, affine), tmp_path / f"c_{i:04d}.nii.gz")
        nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), tmp_path / f"u_{i:04d}.nii.gz")
        files.append(tmp_path / f"c_{i:04d}.nii.gz")
    label = data_path(*HIPPO_LABEL)
    plan = Plan(channels=["a", "b"], labels={0: "background", 1: "a", 2: "b"}, patch_size=[16, 16, 16],
                target_spacing=[1.0, 1.0, 1.0], normalisation=[Normalisation(), Normalisation()]).validate()
    scaled = preprocess_case(plan, Case("c", files, label))
    plain = preprocess_case(plan, Case("u", [tmp_path / "u_0000.nii.gz", tmp_path / "u_0001.nii.gz"], label))
    np.testing.assert_allclose(scaled.image.numpy(), plain.image.numpy(), rtol=1e-5, atol=1e-5)
    stacked = read_case(files)
    assert np.isfinite(stacked.array).all()
    assert stacked.array.max() == pytest.approx(a.max() * 1e300, rel=1e-12)


# --- spacings and affines --------------------------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.parametrize("spacing", [1e-4, 1e-6])
def test_micron_voxels_in_mm_are_read_and_predicted_on_their_grid(tmp_path, spacing):
    """A NIfTI with 1e-4 or 1e-6 mm voxels (microscopy in mm: |det| 1e-12 or 1e-18) is a valid grid, not a singular
    one (before: refused as 'affine is singular'); the prediction has exactly its shape and affine. Parallel
    axes are still refused."""
    a, _ = _hippocampus()
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [3.0, -2.0, 1.0]
    f = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(a.astype(np.float32), affine), f)
    res = run_cli("predict", "-m", _model(tmp_path / "m.pt"), "-i", f, "-o", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    lab, out_affine = _labels(tmp_path / "out")
    assert lab.shape == a.shape
    assert np.array_equal(out_affine, nib.load(f).affine)
    affine[:3, 2] = affine[:3, 1]  # parallel axes at that voxel size: still singular, still refused
    nib.save(nib.Nifti1Image(a.astype(np.float32), affine), tmp_path / "flat.nii.gz")
    assert_clean_error(run_cli("info", tmp_path / "flat.nii.gz"), "flat.nii.gz", "singular")


@pytest.mark.realdata
def test_huge_voxels_are_refused_before_resampling(tmp_path):
    """1e4 mm voxels resampled to a 1 mm model would be 6e16 voxels: refused in one line naming the file and the
    voxel size (before: torch tried to allocate 250 PB, an internal error, exit 1)."""
    a, _ = _hippocampus()
    f = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(a.astype(np.float32), np.diag([1e4, 1e4, 1e4, 1.0])), f)
    res = run_cli("predict", "-m", _model(tmp_path / "m.pt"), "-i", f, "-o", tmp_path / "out", "--device", "cpu")
    assert_clean_error(res, "huge.nii.gz", "1e+04", "voxel size")
    assert not list((tmp_path / "out").glob("*.nii.gz")) if (tmp_path / "out").exists() else True


@pytest.mark.realdata
def test_evaluate_scales_distances_and_volumes_with_the_voxel_size(tmp_path):
    """HD95 and volumes of the same label maps at 1e-6 and 1e4 mm voxels are s and s³ times those at 1 mm
    (distances from scipy's exact EDT between the 1 mm maps' borders, volumes from the voxel counts) (before:
    1e-6 mm voxels refused)."""
    from scipy import ndimage as ndi

    ref = np.asarray(nib.load(data_path(*HIPPO_LABEL)).dataobj).astype(np.uint8)
    pred = np.roll(ref, 2, axis=0)
    expected = {}
    for c, name in ((1, "label_1"), (2, "label_2")):
        r, p = ref == c, pred == c
        border = [m & ~ndi.binary_erosion(m) for m in (r, p)]  # face neighbours; outside the image counts
        d_rp = ndi.distance_transform_edt(~border[1])[border[0]]
        d_pr = ndi.distance_transform_edt(~border[0])[border[1]]
        expected[name] = (max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), r.sum(), p.sum())
    for spacing in (1e-6, 1e4):
        s = float(np.float32(spacing))  # what the NIfTI header holds
        d = tmp_path / f"{spacing:g}"
        d.mkdir()
        for name, arr in (("ref", ref), ("pred", pred)):
            nib.save(nib.Nifti1Image(arr, np.diag([spacing] * 3 + [1.0])), d / f"{name}.nii.gz")
        res = run_cli("evaluate", "-p", d / "pred.nii.gz", "-r", d / "ref.nii.gz", "-o", d / "ev", "-q",
                      "--nsd-tolerance", repr(2 * s))
        assert res.code == 0, res.err
        got = json.loads((d / "ev" / "metrics.json").read_text())["per_case"][0]["classes"]
        for name, (hd95, n_ref, n_pred) in expected.items():
            assert got[name]["hd95"] == pytest.approx(hd95 * s, rel=1e-6), (spacing, name)
            assert got[name]["volume_ref_ml"] == pytest.approx(n_ref * s**3 / 1000, rel=1e-6), (spacing, name)
            assert got[name]["volume_pred_ml"] == pytest.approx(n_pred * s**3 / 1000, rel=1e-6), (spacing, name)


@pytest.mark.realdata
def test_predict_keeps_a_nifti2_float64_origin_far_from_zero(tmp_path):
    """A NIfTI-2 input (float64 affine) with its origin 1e9 mm away: the label map has exactly its affine (before:
    written as NIfTI-1, whose float32 affine moved the origin by 0.3 and 0.7 mm)."""
    a, affine = _hippocampus()
    affine = affine.copy()
    affine[:3, 3] = [1e9 + 0.3, -1e9 + 0.7, 12.345678901]
    f = tmp_path / "far.nii.gz"
    nib.save(nib.Nifti2Image(a.astype(np.float32), affine), f)
    res = run_cli("predict", "-m", _model(tmp_path / "m.pt"), "-i", f, "-o", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    lab, out_affine = _labels(tmp_path / "out")
    assert lab.shape == a.shape
    assert np.array_equal(out_affine, nib.load(f).affine)
    assert np.array_equal(out_affine, affine)


# --- sizes ---------------------------------------------------------------------------------------------------------

def test_a_label_map_of_2_16_plus_1_slices_is_written_and_read_back(tmp_path):
    """NIfTI-1 dims are int16: a 2 x 2 x 65537 map (read from NIfTI-2, NRRD or TIFF) is written as NIfTI-2, with
    its affine (before: nibabel's HeaderDataError after the whole prediction, exit 1)."""
    from medseg.io.image import Image
    from medseg.io.readers import read_image
    from medseg.io.writers import write_image

    lab = (np.arange(2 * 2 * (2**16 + 1)) % 3).astype(np.uint8).reshape(2, 2, -1)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [1e3, -7.0, 3.25]
    write_image(Image(lab, affine), tmp_path / "tall.nii.gz")
    back = read_image(tmp_path / "tall.nii.gz")
    assert np.array_equal(back.array, lab)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-9)


# --- cells pixel sizes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1e-12", "1e30", "2,1e-12,1"])
def test_pixel_sizes_a_tiff_cannot_record_are_refused(value):
    """An in-plane size outside 1/(2**32 - 1) .. 2**32 - 1 µm cannot be written in the label TIFF's resolution
    tags (before: accepted, then an internal error from tifffile or scipy, exit 1)."""
    from medseg.cells.count import parse_pixel_size
    from medseg.errors import InputError

    with pytest.raises(InputError, match="pixel-size"):
        parse_pixel_size(value)
    assert parse_pixel_size(f"2,{1 / (2**32 - 1)!r},{2**32 - 1}") == (2.0, 1 / (2**32 - 1), 2**32 - 1)
