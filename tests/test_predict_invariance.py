"""Prediction invariance: the same image stored or presented another way gives the same label map (formats,
DICOM, intensity scaling, flipped/transposed storage, folders and shards, mirroring TTA), and post-processing
equals an independent scipy computation, with the same voxels whatever the storage."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from conftest import data_path
from medseg.infer.cohort import predict_path
from medseg.infer.predict import predict_image
from medseg.io.image import Image
from medseg.plan.plan import Plan
from medseg.postprocess.components import keep_largest_component, remove_small_components


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(path: Path, **kw) -> Path:
    """A model artifact with random weights and an RAS plan (the mechanics, not the accuracy, are under test)."""
    from medseg.train.artifact import build_from_plan, save_model

    torch.manual_seed(0)
    base = dict(channels=["MRI"], labels={0: "background", 1: "a", 2: "b"}, patch_size=[32, 32, 32],
                base_filters=4, max_filters=16, target_spacing=[1.3, 1.3, 1.3], orientation="RAS")
    plan = Plan(**{**base, **kw}).validate()
    return save_model(path, plan, build_from_plan(plan).state_dict())


def _intensity_net(x: torch.Tensor) -> torch.Tensor:
    """Stand-in network: class 1 wherever the normalised intensity is above the mean (no receptive field)."""
    return torch.cat([torch.zeros_like(x), x], 1)


def _stored(arr: np.ndarray, affine: np.ndarray, perm=(0, 1, 2), flip=()) -> Image:
    """The same world image with its axes permuted by ``perm``, then flipped along ``flip`` (affine following)."""
    a, aff = arr.transpose(perm), affine[:, [*perm, 3]].copy()
    for ax in flip:
        a = np.flip(a, ax)
        aff[:, 3] += aff[:, ax] * (a.shape[ax] - 1)
        aff[:, ax] *= -1
    return Image(np.ascontiguousarray(a), aff)


def _unstored(lab: np.ndarray, perm=(0, 1, 2), flip=()) -> np.ndarray:
    for ax in flip:
        lab = np.flip(lab, ax)
    return lab.transpose(np.argsort(perm))


# --- post-processing ----------------------------------------------------------------------------------------------

def _scipy_remove(lab: np.ndarray, min_mm3: float, spacing) -> np.ndarray:
    """Independent reference: full-connectivity components, volume = count x exact voxel volume (decimal spacings
    given as the fraction ``num / 10**k``, so that the comparison is exact in integers)."""
    from fractions import Fraction

    voxel = np.prod([Fraction(str(s)) for s in spacing])
    out = lab.copy()
    for c in np.unique(lab[lab > 0]):
        comp, n = ndi.label(lab == c, structure=np.ones((3,) * lab.ndim))
        for i, size in enumerate(np.bincount(comp.ravel())[1:], start=1):
            if size * voxel < Fraction(str(min_mm3)):
                out[comp == i] = 0
    return out


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.1), (0.1, 0.3, 0.9), (1.1, 0.7, 0.7)])
def test_min_size_matches_exact_arithmetic_at_the_threshold(spacing):
    """Components of exactly the minimum volume are kept (strictly below goes): 10 voxels of 0.7 x 0.7 x 1.1 mm
    are 5.39 mm³, which the voxel product rounded to 5.389999999999999 and removed."""
    rng = np.random.default_rng(0)
    voxel = float(np.prod(spacing))
    for t in range(20):
        lab = ((rng.random((12, 11, 10)) < 0.13) * rng.integers(1, 3, (12, 11, 10))).astype(np.uint8)
        for n in (2, 3, 5):
            threshold = float(f"{n * voxel:.6g}")  # what a user types: the exact volume of n voxels
            assert np.array_equal(remove_small_components(lab, threshold, spacing),
                                  _scipy_remove(lab, threshold, spacing)), (t, n, threshold)
    line = np.zeros((5, 5, 12), np.uint8)
    line[2, 2, 1:11] = 1
    assert remove_small_components(line, 5.39, (0.7, 0.7, 1.1)).sum() == 10
    header = [float(np.float32(s)) for s in (0.7, 0.7, 1.1)]  # as a NIfTI header stores them: 5.38999993 mm³
    assert remove_small_components(line, 5.39, header).sum() == 10
    assert remove_small_components(line, 5.3901, header).sum() == 0


def test_min_size_is_the_same_for_transposed_storage():
    """One voxel of 0.1 x 0.1 x 0.7 mm is 0.007 mm³ in every axis order (the products rounded either side)."""
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1, 1, 1] = 1
    spacing = (0.1, 0.1, 0.7)
    for perm in itertools.permutations(range(3)):
        kept = remove_small_components(lab.transpose(perm), 0.007, [spacing[p] for p in perm])
        assert kept.sum() == 1, perm


def test_components_on_flipped_and_transposed_storage_are_the_same_voxels():
    """Connectivity is full (26-neighbourhood), which flips and transposes map onto itself."""
    rng = np.random.default_rng(3)
    lab = ((rng.random((14, 12, 10)) < 0.15) * rng.integers(1, 3, (14, 12, 10))).astype(np.uint8)
    lab[2:7, 3:8, 2:6] = 1  # a clear largest component of class 1
    spacing = (0.8, 1.3, 2.5)
    small = remove_small_components(lab, 7.0, spacing)
    assert np.array_equal(small, _scipy_remove(lab, 7.0, spacing))
    for perm, flip in [((2, 1, 0), (0,)), ((1, 2, 0), (1, 2)), ((0, 2, 1), (2,))]:
        view = lab.transpose(perm)
        for ax in flip:
            view = np.flip(view, ax)
        got = remove_small_components(view, 7.0, [spacing[p] for p in perm])
        assert np.array_equal(_unstored(got, perm, flip), small)
        big = keep_largest_component(view)
        assert np.array_equal(_unstored(big, perm, flip) == 1, keep_largest_component(lab) == 1)


def test_predict_postprocessing_is_the_same_for_any_storage():
    """``largest_component`` and ``min_size_mm3`` run in the plan's orientation: two equally large components
    (a tie) keep the same one, and a component of exactly the minimum size stays, whatever the storage."""
    plan = Plan(patch_size=[8, 8, 8], orientation="RAS", target_spacing=[1.0, 1.0, 1.0])
    arr = np.zeros((12, 8, 8), np.float32)
    arr[1:3, 2:4, 2:4] = arr[8:10, 2:4, 2:4] = 1
    ref = predict_image(_intensity_net, plan, _stored(arr, np.eye(4)), largest_component=True)[0].array
    assert ref.sum() == 8
    for perm, flip in [((0, 1, 2), (0,)), ((2, 0, 1), ()), ((1, 0, 2), (1, 2))]:
        lab = predict_image(_intensity_net, plan, _stored(arr, np.eye(4), perm, flip), largest_component=True)[0]
        assert np.array_equal(_unstored(lab.array, perm, flip), ref), (perm, flip)

    one = np.zeros((6, 6, 6), np.float32)
    one[2, 2, 2] = 1
    plan = Plan(patch_size=[8, 8, 8], orientation="RAS", target_spacing=[0.1, 0.1, 0.7])
    for perm in itertools.permutations(range(3)):
        lab = predict_image(_intensity_net, plan, _stored(one, np.diag([0.1, 0.1, 0.7, 1.0]), perm),
                            min_size_mm3=0.007)[0]
        assert lab.array.sum() == 1, perm


# --- formats, DICOM, intensity scaling -----------------------------------------------------------------------------

@pytest.mark.realdata
def test_formats_dicom_and_scaled_int16_give_the_same_labels(tmp_path):
    """One DICOM series as the series itself, NIfTI (as ITK writes it, and reoriented to RAS), MHA, NRRD, and its
    values x 0.5 + 3 as float32 and as int16 with scl_slope/scl_inter: the same label map (mapped through world
    coordinates by SimpleITK) on each input's own grid."""
    dcm = data_path("dicom", "mr_study", "13_HCropVolume")
    model = _model(tmp_path / "m.pt", augment={"flip_axes": [0]})
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dcm)))
    ref = reader.Execute()
    src = tmp_path / "in"
    src.mkdir()
    for ext in ("nii.gz", "mha", "nrrd"):
        sitk.WriteImage(ref, str(src / f"c_{ext.split('.')[0]}.{ext}"))
    n = nib.load(src / "c_nii.nii.gz")
    nib.save(nib.as_closest_canonical(n), src / "c_ras.nii.gz")
    raw = np.asarray(n.dataobj).astype(np.int16)
    scaled = nib.Nifti1Image(raw, n.affine)
    scaled.header.set_slope_inter(0.5, 3.0)
    nib.save(scaled, src / "s_int16.nii.gz")
    nib.save(nib.Nifti1Image(raw.astype(np.float32) * 0.5 + 3.0, n.affine), src / "s_f32.nii.gz")
    inputs = {p.name.split(".")[0]: p for p in src.iterdir()}
    outs = {}
    for name, p in inputs.items():
        outs[name] = predict_path(model, p, tmp_path / f"out_{name}", device="cpu", tta=True)[0][0]
    outs["dicom"] = predict_path(model, dcm, tmp_path / "out_dicom", device="cpu", tta=True)[0][0]
    base = None
    for name, path in outs.items():
        out = sitk.ReadImage(str(path))
        grid = ref if name == "dicom" else sitk.ReadImage(str(inputs[name]))
        assert out.GetSize() == grid.GetSize(), name
        assert np.allclose(out.GetOrigin(), grid.GetOrigin(), atol=1e-4), name
        assert np.allclose(out.GetDirection(), grid.GetDirection(), atol=1e-5), name
        assert np.allclose(out.GetSpacing(), grid.GetSpacing(), atol=1e-5), name
        on_ref = sitk.GetArrayFromImage(sitk.Resample(out, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 255))
        base = on_ref if base is None else base
        assert np.array_equal(on_ref, base), name
    assert len(np.unique(base)) > 1  # a label map with something in it


# --- folders and shards --------------------------------------------------------------------------------------------

@pytest.mark.realdata
def test_shards_partition_the_folder_and_match_single_files(tmp_path):
    src = data_path("msd_hippocampus", "imagesTr")
    model = _model(tmp_path / "m.pt", patch_size=[16, 16, 16], target_spacing=[2.0, 2.0, 2.0])
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted(src.glob("hippocampus_0*.nii.gz"))[:3]:
        (folder / p.name).symlink_to(p)
    full = {p.name: np.asarray(nib.load(p).dataobj) for p in predict_path(model, folder, tmp_path / "all",
                                                                           device="cpu")[0]}
    assert len(full) == 3
    for n in (2, 3, 5):  # 5: more shards than cases
        seen = []
        for i in range(n):
            for p in predict_path(model, folder, tmp_path / f"s{n}_{i}", device="cpu", shard=f"{i}/{n}")[0]:
                seen.append(p.name)
                assert np.array_equal(np.asarray(nib.load(p).dataobj), full[p.name])
        assert sorted(seen) == sorted(full), n
    for f in folder.iterdir():
        p = predict_path(model, f, tmp_path / "single", device="cpu")[0][0]
        assert np.array_equal(np.asarray(nib.load(p).dataobj), full[p.name])


# --- mirroring TTA -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(32, 32, 32), (48, 33, 40)])
def test_tta_is_equivariant_to_flips_when_the_windows_are_symmetric(tmp_path, shape):
    """Mirroring the input along a TTA axis mirrors the probabilities (to float rounding) and the labels, where
    the window placement is itself symmetric (one window, or starts ``[0, step]``); the probabilities sum to 1
    and their argmax is the label map."""
    from medseg.train.artifact import load_model

    art = load_model(_model(tmp_path / "m.pt", target_spacing=[1.0, 1.0, 1.0], augment={"flip_axes": [0, 1, 2]}))
    net = art.build().eval()
    rng = np.random.default_rng(0)
    arr = ndi.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)

    def run(a):
        lab, prob = predict_image(net, art.plan, Image(np.ascontiguousarray(a), np.eye(4)), tta=True,
                                  probabilities=True)
        return lab.array, np.asarray(prob.array)

    lab, prob = run(arr)
    assert np.abs(prob.sum(0) - 1).max() < 1e-5
    assert np.array_equal(prob.argmax(0), lab)
    for ax in range(3):
        lab_f, prob_f = run(np.flip(arr, ax))
        assert np.abs(np.flip(prob_f, ax + 1) - prob).max() < 1e-5, ax
        top2 = np.sort(prob, 0)[-2:]
        differ = np.flip(lab_f, ax) != lab
        assert (top2[1] - top2[0])[differ].max(initial=0) < 1e-5, ax  # only at exact ties


@pytest.mark.parametrize("spacing, min_mm3", [((1.0, 1.0, 1.0), 2_000_000), ((0.3, 0.3, 0.3), 50_000)])
def test_min_size_slack_never_keeps_a_component_a_voxel_short(spacing, min_mm3):
    """Exact arithmetic (fractions): a component whole voxels below the minimum goes, one at or above it stays."""
    from medseg.postprocess.components import remove_small_components

    voxel = np.prod([Fraction(str(s)) for s in spacing])
    need = int(np.ceil(Fraction(str(min_mm3)) / voxel))  # fewest voxels whose volume reaches the minimum
    lab = np.zeros((200, 100, 100), np.uint8)
    for n, kept in ((need - 1, False), (need, True)):
        assert (n * voxel >= Fraction(str(min_mm3))) == kept
        lab.reshape(-1)[:] = 0
        lab.reshape(-1)[:n] = 1  # a C-order prefix: one component
        assert (int(remove_small_components(lab, min_mm3, spacing).sum()) == n) == kept, n
