"""What prediction sees, end to end, against computations written here from first principles.

The reference pipeline is nibabel (reorientation), numpy (CT clip and normalisation, z-score), ``F.interpolate``
(trilinear, ``align_corners=False``: voxel centres kept centred, to the network grid and back), MONAI's
``sliding_window_inference(mode="gaussian")`` (2D plans: slice by slice) and a softmax before resampling back,
as nnU-Net does. ``predict_image`` must equal it on a real anisotropic CT stored in any axis order, for 3D and 2D
plans; and the Dice the end of training reports must equal ``medseg predict`` scored by hand.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from conftest import data_path, run_cli
from medseg.infer.cases import read_case
from medseg.infer.predict import predict_image
from medseg.plan.plan import Normalisation, Plan
from medseg.train.artifact import build_from_plan, save_model

pytestmark = [pytest.mark.realdata, pytest.mark.usefixtures("one_torch_thread")]

CLIP, MEAN, STD = (-100.0, 240.0), 50.0, 60.0
# the transposed and flipped storage the CT is also written in (nibabel orientation: new axis, direction)
STORAGE = np.array([[2, -1], [0, 1], [1, -1]])


def _spleen_plan(dims: int, overlap: float) -> Plan:
    return Plan(channels=["CT"], labels={0: "background", 1: "a", 2: "b"},
                normalisation=[Normalisation("ct", CLIP, MEAN, STD)], target_spacing=[1.3, 1.1, 4.0],
                orientation="LPS", spatial_dims=dims, patch_size=[32, 32, 16] if dims == 3 else [32, 32],
                base_filters=4, max_filters=8, overlap=overlap,
                bf16=False)  # the reference computes in fp32: bf16 autocast (CPUs with native bf16) differs by ~0.05


def _reference_probabilities(net, plan: Plan, nimg) -> np.ndarray:
    """Class probabilities on ``nimg``'s own grid, computed without medseg."""
    arr = np.asarray(nimg.dataobj, np.float32)
    to_plan = nib.orientations.ornt_transform(nib.orientations.io_orientation(nimg.affine),
                                              nib.orientations.axcodes2ornt(tuple(plan.orientation)))
    x = nib.orientations.apply_orientation(arr, to_plan)
    zooms = np.asarray(nimg.header.get_zooms()[:3], float)
    spacing = np.empty(3)
    spacing[to_plan[:, 0].astype(int)] = zooms
    x = (np.clip(x, *CLIP) - MEAN) / STD
    shape = np.maximum(1, np.round(np.array(x.shape) * spacing / plan.target_spacing)).astype(int)
    if plan.spatial_dims == 2:  # the coarsest axis is cut into slices, kept as they are
        ax = int(np.argmax(plan.target_spacing))
        shape[ax] = x.shape[ax]
    xt = F.interpolate(torch.from_numpy(x)[None, None].float(), size=tuple(shape), mode="trilinear",
                       align_corners=False)[0]
    with torch.no_grad():
        if plan.spatial_dims == 3:
            logits = sliding_window_inference(xt[None], plan.patch_size, 2, net, overlap=plan.overlap,
                                              mode="gaussian", sigma_scale=0.125)[0]
        else:
            logits = torch.stack([sliding_window_inference(xt[None].select(ax + 2, k), plan.patch_size, 2, net,
                                                           overlap=plan.overlap, mode="gaussian",
                                                           sigma_scale=0.125)[0]
                                  for k in range(shape[ax])], ax + 1)
    back = F.interpolate(logits.softmax(0)[None], size=x.shape, mode="trilinear", align_corners=False)[0].numpy()
    to_file = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(tuple(plan.orientation)),
                                              nib.orientations.io_orientation(nimg.affine))
    return np.stack([nib.orientations.apply_orientation(p, to_file) for p in back])


@pytest.mark.parametrize("dims,overlap", [(3, 0.5), (2, 0.3)])
def test_predict_equals_an_independent_pipeline_on_a_reoriented_anisotropic_ct(tmp_path, dims, overlap):
    src = data_path("ct_spleen_sample", "sub-spleen2", "ct", "sub-spleen2_ct.nii.gz")  # 0.8 x 0.8 x 5 mm, RAS
    n = nib.load(str(src))
    arr = np.asarray(n.dataobj)
    moved = tmp_path / "moved.nii.gz"  # the same world points, stored transposed and flipped
    nib.save(nib.Nifti1Image(nib.orientations.apply_orientation(arr, STORAGE),
                             n.affine @ nib.orientations.inv_ornt_aff(STORAGE, arr.shape)), str(moved))
    torch.manual_seed(0)
    plan = _spleen_plan(dims, overlap)
    net = build_from_plan(plan).eval()
    for path in (src, moved):
        nimg = nib.load(str(path))
        lab, prob = predict_image(net, plan, read_case([path]), probabilities=True, spill_dir=tmp_path)
        ref = _reference_probabilities(net, plan, nimg)
        assert lab.shape == nimg.shape and np.array_equal(lab.affine, nimg.affine)
        assert np.abs(np.asarray(prob.array) - ref).max() < 2e-5
        top2 = np.sort(ref, 0)[-2:]
        differ = lab.array != ref.argmax(0)
        assert not differ.any() or (top2[1] - top2[0])[differ].max() < 1e-5  # ties only


def test_end_of_training_dice_equals_predict_scored_by_hand(tmp_path):
    from medseg.train.dataset import Case, load_case
    from medseg.train.trainer import validate

    cases = ["hippocampus_006", "hippocampus_008"]
    folder = tmp_path / "in"
    folder.mkdir()
    for c in cases:
        (folder / f"{c}.nii.gz").symlink_to(data_path("msd_hippocampus", "imagesTr", f"{c}.nii.gz"))
    plan = Plan(channels=["MRI"], labels={0: "background", 1: "anterior", 2: "posterior"}, orientation="LPS",
                target_spacing=[1.0, 1.3, 0.8], patch_size=[32, 32, 32], base_filters=4, max_filters=16, tta=True,
                augment={"flip_axes": [2]})
    torch.manual_seed(0)
    net = build_from_plan(plan, deep_supervision=False)
    # larger random weights: outputs far from uniform, so that both classes are predicted somewhere
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)
    save_model(tmp_path / "model.pt", plan, net.state_dict())
    val_cases = []
    for c in cases:
        image, label = load_case(Case(c, [folder / f"{c}.nii.gz"],
                                      data_path("msd_hippocampus", "labelsTr", f"{c}.nii.gz")),
                                 orientation=plan.orientation)
        val_cases.append((image.array, image.spacing, label.array))
    reported = validate(net, plan, val_cases, torch.device("cpu"))
    res = run_cli("predict", "-m", tmp_path / "model.pt", "-i", folder, "-o", tmp_path / "out", "--device", "cpu")
    assert res.code == 0, res.err
    dice = {1: [], 2: []}
    for c in cases:
        pred = np.asarray(nib.load(str(tmp_path / "out" / f"{c}.nii.gz")).dataobj)
        ref = np.asarray(nib.load(str(data_path("msd_hippocampus", "labelsTr", f"{c}.nii.gz"))).dataobj)
        for k in dice:
            dice[k].append(2 * np.sum((pred == k) & (ref == k)) / (np.sum(pred == k) + np.sum(ref == k)))
    assert all(0 < np.mean(v) < 1 for v in dice.values())  # a comparison of something, not of empty maps
    assert reported["anterior"] == pytest.approx(np.mean(dice[1]), abs=1e-12)
    assert reported["posterior"] == pytest.approx(np.mean(dice[2]), abs=1e-12)
