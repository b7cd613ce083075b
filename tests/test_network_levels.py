"""The network's levels (kernel sizes and strides): a plan made by ``make_plan`` records them by nnU-Net v2's rule
(``get_pool_and_conv_props``), a plan without them builds the network the older rule built (the one its saved
models hold), and an edited plan whose patch no longer fits its recorded strides is refused in one line.

Expected strides below are worked out by hand from nnU-Net's published rule, not taken from medseg's output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import assert_clean_error, data_path, run_cli
from medseg.plan.plan import Plan
from medseg.train.artifact import build_from_plan, load_model, save_model
from medseg.train.network import dynunet_strides


def _strides(net) -> list[list[int]]:
    return [[int(s) for s in (st if isinstance(st, (list, tuple)) else [st] * 3)] for st in net.strides]


def _thin_ct_dataset(tmp_path: Path) -> Path:
    """The real 4-slice CT series (converted by ``medseg convert``) with its mask: a volume thinner than the patch."""
    series = data_path("dicom", "ct_rtstruct")
    root = tmp_path / "thin"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"},
                                                   "labels": {"0": "background", "1": "body", "2": "cord"}}))
    assert run_cli("convert", series, root / "imagesTr" / "rt.nii.gz").code == 0
    (root / "labelsTr" / "rt.nii.gz").symlink_to(series / "Mask.nii.gz")
    return root


def _halvings(size: int, cap: int = 5) -> int:
    """nnU-Net halves an axis while it is >= 8 voxels (feature maps of at least 4); medseg stops at 5 levels."""
    n = 0
    while size >= 8 and n < cap:
        size, n = math.ceil(size / 2), n + 1
    return n


def test_a_thin_ct_plan_down_samples_in_plane_as_nnunet(tmp_path, one_torch_thread):
    """On a CT a few slices thick, the slice axis stops halving after one level; the in-plane axes must go on
    (nnU-Net compares spacings only among the axes that can still be halved). The older rule compared against the
    slice axis too and stopped the in-plane axes after 3 halvings of a ~320-voxel patch. The plan records the levels,
    its YAML reads back to the same network, and a model saved from it loads."""
    from medseg.plan.planner import make_plan

    plan = make_plan(_thin_ct_dataset(tmp_path), memory_gb=4)
    assert plan.spatial_dims == 3
    net = build_from_plan(plan)
    strides = _strides(net)
    slice_axis = min(range(3), key=lambda i: plan.patch_size[i])
    for axis, size in enumerate(plan.patch_size):
        halved = sum(st[axis] == 2 for st in strides)
        assert halved == _halvings(size), (axis, size, strides)
    in_plane = [a for a in range(3) if a != slice_axis]
    assert min(sum(st[a] == 2 for st in strides) for a in in_plane) >= 4, (plan.patch_size, strides)

    plan.to_yaml(tmp_path / "plan.yaml")
    again = Plan.from_yaml(tmp_path / "plan.yaml")
    assert again.strides == plan.strides and again.kernel_sizes == plan.kernel_sizes
    model = save_model(tmp_path / "model.pt", again, build_from_plan(again).state_dict())
    loaded = load_model(model).build()
    assert _strides(loaded) == strides
    x = torch.zeros(1, 1, *plan.patch_size)
    assert loaded(x).shape == (1, plan.num_classes, *plan.patch_size)


@pytest.mark.parametrize("patch, spacing, strides, kernels", [
    # 8 slices at 1 mm: the slice axis halves once (8 -> 4), the others on to 10 voxels (5 halvings, medseg's cap)
    ([320, 320, 8], [1.0, 1.0, 1.0],
     [[1, 1, 1], [2, 2, 2]] + [[2, 2, 1]] * 4, [[3, 3, 3]] * 6),
    # an axis exactly twice as coarse waits one level (nnU-Net pools axes *less* than twice the finest), and its
    # kernel is 1 until its spacing is within twice the finest
    ([64, 64, 32], [0.8, 0.8, 1.6],
     [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [[3, 3, 1]] + [[3, 3, 3]] * 4),
    # one axis left to halve goes on only while it is >= 12 (3 x the smallest feature map): 20 -> 10, not 10 -> 5
    ([8, 40], [1.0, 1.0], [[1, 1], [2, 2], [1, 2]], [[3, 3]] * 3),
])
def test_nnunet_rule_on_hand_worked_cases(patch, spacing, strides, kernels):
    assert dynunet_strides(patch, spacing, rule="nnunet") == (kernels, strides)


def test_a_plan_without_levels_builds_the_older_network(tmp_path):
    """Models saved before plans recorded their levels must load: their plans derive them by the older rule (the
    finest spacing of all axes), which stops [320, 320, 8] at 3 down-samplings."""
    plan = Plan(patch_size=[320, 320, 8], target_spacing=[1.0, 1.0, 1.0], base_filters=2, max_filters=4)
    assert plan.strides is None
    old = [[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 1]]
    assert _strides(build_from_plan(plan)) == old
    text = plan.to_yaml()
    assert "strides: null" in text  # said, not silently absent: the reader can see it is derived
    model = save_model(tmp_path / "model.pt", plan, build_from_plan(plan).state_dict())
    assert _strides(load_model(model).build()) == old


def _hippocampus_plan(tmp_path: Path, **edits) -> Path:
    plan = Plan(dataset=str(tmp_path / "data"), channels=["MR"], labels={0: "background", 1: "a"},
                patch_size=[40, 56, 40], target_spacing=[1.0, 1.0, 1.0],
                kernel_sizes=[[3, 3, 3]] * 4, strides=[[1, 1, 1]] + [[2, 2, 2]] * 3).to_dict()
    plan.update(edits)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


@pytest.mark.parametrize("edits, needle", [
    ({"patch_size": [36, 56, 40]}, "patch_size [36, 56, 40] does not fit the strides: each entry must be a multiple "
                                   "of [8, 8, 8]"),
    ({"strides": None}, "kernel_sizes and strides go together"),
    ({"strides": [[2, 2, 2]] * 4}, "the first level must be [1, 1, 1]"),
    ({"strides": [[1, 1, 1], [2, 2, 2], [2, 2], [2, 2, 2]]}, "every level needs 3 entries"),
    ({"kernel_sizes": [[3, 3, 3]] * 3}, "kernel_sizes has 3 levels and strides 4"),
    ({"kernel_sizes": [[3, 3, 2]] * 4}, "each must be odd"),
    ({"strides": [[1, 1, 1], [2, 2, 2], [1, 1, 1], [1, 1, 1]]}, "down-sample 1 times: the network needs two"),
    ({"strides": [[1, 1, 1], [2, "two", 2]]}, "strides must be a number"),
])
def test_an_edited_plan_that_breaks_its_levels_is_refused_in_one_line(tmp_path, edits, needle):
    path = _hippocampus_plan(tmp_path, **edits)
    res = run_cli("train", path, "-o", tmp_path / "run")
    assert_clean_error(res, "plan.yaml", needle)
    assert not (tmp_path / "run").exists()


def test_levels_from_the_python_api_as_arrays_build_that_network():
    """numpy arrays (a planner script's output) are taken as a plan file's lists; the network has those strides."""
    import numpy as np

    strides = np.array([[1, 1], [2, 2], [2, 1]])
    plan = Plan(spatial_dims=2, patch_size=np.array([32, 16]), target_spacing=np.array([1.0, 1.0, 3.0]),
                kernel_sizes=np.full((3, 2), 3), strides=strides, base_filters=2, max_filters=4).validate()
    assert plan.strides == [[1, 1], [2, 2], [2, 1]] and plan.patch_size == [32, 16]
    assert _strides(build_from_plan(plan)) == [[1, 1], [2, 2], [2, 1]]
    assert Plan.from_dict(plan.to_dict()) == plan
