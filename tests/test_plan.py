"""Fingerprint and plan (issue 4): statistics against independent computations, budgets, YAML validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from conftest import assert_clean_error, run_cli
from medseg.errors import InputError
from test_dataset import tiny_dataset


def test_fingerprint_matches_simpleitk_statistics(tmp_path):
    """Spacings, shapes, class counts and foreground percentiles equal those computed with SimpleITK/numpy."""
    from medseg.plan.fingerprint import compute_fingerprint
    from medseg.train.dataset import open_dataset

    ds = open_dataset(tiny_dataset(tmp_path / "ds", 4))
    fp = compute_fingerprint(ds, samples_per_case=10**9)  # keep every foreground voxel
    fg_vals, counts = [], {}
    for case, sp, sh in zip(ds.cases, fp.spacings, fp.shapes):
        img, lab = sitk.ReadImage(str(case.images[0])), sitk.ReadImage(str(case.label))
        assert np.allclose(sp, img.GetSpacing()) and list(sh) == list(img.GetSize())
        a, l = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
        fg_vals.append(a[l > 0].astype(np.float64))
        for v, n in zip(*np.unique(l, return_counts=True)):
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    v = np.concatenate(fg_vals)
    st = fp.intensity[0]
    assert st["p00_5"] == pytest.approx(np.percentile(v, 0.5)) and st["p99_5"] == pytest.approx(np.percentile(v, 99.5))
    assert st["mean"] == pytest.approx(v.mean()) and st["std"] == pytest.approx(v.std())
    assert fp.class_voxels == counts


def _fp(spacings, shapes, channels=("MRI",)):
    from medseg.plan.fingerprint import Fingerprint

    return Fingerprint([list(s) for s in spacings], [list(s) for s in shapes], list(channels),
                       [{"mean": 40.0, "std": 100.0, "p00_5": -900.0, "p99_5": 300.0, "min": -1000, "max": 2000}
                        for _ in channels], {0: 1000, 1: 5}, {0: 2, 1: 2}, len(spacings))


def test_target_spacing_median_and_anisotropy():
    from medseg.plan.planner import target_spacing

    assert target_spacing(_fp([[1, 1, 1], [1, 1, 1.2], [1, 1, 1.4]], [[10] * 3] * 3)) == [1.0, 1.0, 1.2]
    # thick slices: the coarse axis takes the 10th percentile, not the median
    sp = [[0.8, 0.8, 5.0]] * 8 + [[0.8, 0.8, 2.5]] * 2
    t = target_spacing(_fp(sp, [[100, 100, 30]] * 10))
    assert t[:2] == [0.8, 0.8] and t[2] == pytest.approx(np.percentile([s[2] for s in sp], 10))


def test_ct_normalisation_and_2d_choice(tmp_path):
    from medseg.plan.planner import make_plan, normalisations

    n = normalisations(_fp([[1, 1, 1]], [[10] * 3], channels=("CT",)))[0]
    assert n.scheme == "ct" and n.clip == (-900.0, 300.0) and n.std == 100.0
    assert normalisations(_fp([[1, 1, 1]], [[10] * 3]))[0].scheme == "zscore"
    ds = tiny_dataset(tmp_path / "ds", 2)
    plan = make_plan(ds, fingerprint=_fp([[0.7, 0.7, 6.0]] * 2, [[256, 256, 20]] * 2))
    assert plan.spatial_dims == 2 and len(plan.patch_size) == 2


@pytest.mark.parametrize("minutes", [None, 5.0])
def test_a_2d_plan_does_not_depend_on_where_the_slice_axis_is(tmp_path, minutes):
    """Thick slices along the last axis (the usual NIfTI layout) or the first: the same in-plane patch (the slice
    axis' spacing was taken for an in-plane one when it came last: [256, 48] instead of [128, 96])."""
    from medseg.plan.planner import make_plan

    ds = tiny_dataset(tmp_path / "ds", 2)
    last = make_plan(ds, fingerprint=_fp([[1.0, 1.0, 5.0]] * 2, [[300, 200, 30]] * 2), memory_gb=1, minutes=minutes)
    first = make_plan(ds, fingerprint=_fp([[5.0, 1.0, 1.0]] * 2, [[30, 300, 200]] * 2), memory_gb=1, minutes=minutes)
    assert last.spatial_dims == first.spatial_dims == 2
    assert last.patch_size == first.patch_size and last.base_filters == first.base_filters


def test_budgets_shrink_patch_and_network(tmp_path):
    """A tight memory budget gives a smaller patch; a short time budget a narrower/smaller network."""
    from medseg.plan.planner import estimate_cost, make_plan

    ds = tiny_dataset(tmp_path / "ds", 2)
    fp = _fp([[1, 1, 1]] * 2, [[160, 160, 160]] * 2)
    big = make_plan(ds, memory_gb=32, fingerprint=fp)
    small = make_plan(ds, memory_gb=1, fingerprint=fp)
    assert np.prod(small.patch_size) < np.prod(big.patch_size)
    assert estimate_cost(small.patch_size, small.base_filters)[0] * small.batch_size <= 0.5e9
    quick = make_plan(ds, memory_gb=32, minutes=5, fingerprint=fp)
    cost = lambda p: estimate_cost(p.patch_size, p.base_filters)[1] * p.batch_size  # noqa: E731
    assert cost(quick) < cost(big)


def test_time_budget_is_not_cut_short_by_the_epoch_count(tmp_path):
    """With a time budget the epoch cap leaves room for a machine several times faster than the planner assumes
    (this CPU runs 3x THROUGHPUT), so the budget ends training; validation stays within ~20 runs of the cap."""
    from medseg.plan.planner import estimate_cost, make_plan

    ds = tiny_dataset(tmp_path / "ds", 2)
    fp = _fp([[1, 1, 1]] * 2, [[36, 50, 35]] * 2)
    for minutes, tp in ((3, 6e10), (30, 6e10), (30, 2e11)):
        plan = make_plan(ds, memory_gb=8, minutes=minutes, fingerprint=fp, throughput=tp)
        predicted = minutes * 60 * tp / (estimate_cost(plan.patch_size, plan.base_filters)[1] * plan.batch_size)
        assert plan.max_epochs * plan.iterations_per_epoch >= 3 * predicted
        assert plan.max_minutes == minutes
        assert plan.max_epochs / plan.val_every <= 20


def test_plan_yaml_round_trip_and_cli(tmp_path):
    from medseg.plan.plan import Plan

    ds = tiny_dataset(tmp_path / "ds", 3)
    res = run_cli("plan", ds, "-o", tmp_path / "plan.yaml", "--max-minutes", "30")
    assert res.code == 0, res.err
    plan = Plan.from_yaml(tmp_path / "plan.yaml")
    assert plan.labels == {0: "background", 1: "anterior", 2: "posterior"} and plan.spatial_dims == 3
    assert plan.target_spacing == [1.0, 1.0, 1.0]
    # patch divisible by the recorded network's total stride on every axis, and said on the command line
    strides = plan.strides
    assert all(p % int(np.prod([s[i] for s in strides])) == 0 for i, p in enumerate(plan.patch_size))
    assert f"{len(strides) - 1} down-samplings" in res.out
    again = Plan.from_dict(yaml.safe_load(plan.to_yaml()))
    assert again == plan



def test_residual_plan_builds_and_reloads_residual_blocks(tmp_path):
    """``residual: true`` survives YAML and the model file, and the reloaded network computes the same output."""
    import torch
    from monai.networks.blocks.dynunet_block import UnetResBlock

    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan, load_model, save_model

    plan = Plan(patch_size=[16, 16, 16], base_filters=4, max_filters=8, residual=True).validate()
    assert Plan.from_dict(yaml.safe_load(plan.to_yaml())).residual is True
    torch.manual_seed(0)
    net = build_from_plan(plan).eval()
    assert isinstance(net.input_block, UnetResBlock) and all(isinstance(b, UnetResBlock) for b in net.downsamples)
    assert UnetResBlock not in {type(m) for m in build_from_plan(Plan(patch_size=[16, 16, 16])).modules()}
    art = load_model(save_model(tmp_path / "m.pt", plan, net.state_dict()))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(art.build()(x), net(x))

@pytest.mark.parametrize("edit, needle", [
    ({"patch_szie": [32, 32, 32]}, "did you mean 'patch_size'"),
    ({"patch_size": [32, 32]}, "3 entries"),
    ({"loss": "hinge"}, "dice_ce"),
    ({"labels": {1: "x"}}, "background"),
    ({"class_weights": [1.0]}, "class_weights"),
    ({"normalisation": [{"scheme": "ct"}]}, "clip"),
    # wrong types were internal errors (exit 1) or silently taken: "no" is a true string
    ({"patch_size": "abc"}, "patch_size"),
    ({"patch_size": 64}, "patch_size"),
    ({"batch_size": "two"}, "batch_size"),
    ({"bf16": "no"}, "bf16"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"seed": 1.5}, "seed"),
    ({"labels": ["a", "b"]}, "labels"),
    # a misspelt augmentation key switched the augmentation off
    ({"augment": {"rotate_degs": 30}}, "did you mean 'rotate_deg'"),
    # nonsense values were accepted
    ({"learning_rate": -0.01}, "learning_rate"),
    ({"max_minutes": -5}, "max_minutes"),
    ({"base_filters": 0}, "base_filters"),
    ({"seed": -1}, "seed"),
    ({"num_folds": 0}, "num_folds"),
    ({"augment": {"prob": 5}}, "prob"),
    ({"augment": {"scale": [1.2, 0.8]}}, "scale"),
    ({"augment": {"flip_axes": [7]}}, "flip_axes"),
])
def test_plan_validation_messages(tmp_path, edit, needle):
    from medseg.plan.plan import Plan

    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**Plan().to_dict(), **edit}))
    assert_clean_error(run_cli("train", path, "-o", tmp_path / "run"), "plan.yaml", needle)
    assert not (tmp_path / "run").exists()


def test_a_config_must_say_its_dataset_channels_and_labels(tmp_path):
    """Defaults for these (one 'image' channel, labels background/foreground) trained on the wrong classes."""
    from medseg.plan.plan import Plan

    d = Plan(dataset=str(tmp_path)).to_dict()
    for key in ("dataset", "channels", "labels"):
        path = tmp_path / f"no_{key}.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in d.items() if k != key}))
        assert_clean_error(run_cli("train", path, "-o", tmp_path / "run"), path.name, key)
    assert not (tmp_path / "run").exists()


def test_a_plan_written_elsewhere_still_finds_its_dataset(tmp_path, monkeypatch):
    """`medseg plan ../data -o elsewhere/plan.yaml` wrote the dataset relative to the working folder, and
    `medseg train elsewhere/plan.yaml` looked for it relative to the plan file (exit 2, with a plan.yaml left in
    the run folder)."""
    from medseg.plan.plan import Plan

    ds = tiny_dataset(tmp_path / "data" / "ds", 2)
    monkeypatch.chdir(tmp_path / "data")
    out = tmp_path / "plans" / "deep" / "plan.yaml"
    out.parent.mkdir(parents=True)
    res = run_cli("plan", "ds", "-o", out)
    assert res.code == 0, res.err
    assert Path(Plan.from_yaml(out).dataset) == ds.resolve()
    monkeypatch.chdir(tmp_path)
    assert Path(Plan.from_yaml(out).dataset) == ds.resolve()


def test_plan_file_suffixes_in_any_case_and_no_plan_without_one(tmp_path):
    """`medseg plan ds -o p.YAML && medseg train p.YAML` refused the plan it had just written; a plan written
    without a .yaml/.yml suffix could never be trained from."""
    from medseg.plan.plan import Plan
    from medseg.plan.planner import load_plan, make_plan

    ds = tiny_dataset(tmp_path / "ds", 2)
    for name in ("p.YAML", "p.Yml"):
        plan = make_plan(ds, output=tmp_path / name)
        assert load_plan(tmp_path / name) == Plan.from_yaml(tmp_path / name) == plan
    for name in ("p_noext", "p.json", "p.yaml.txt"):
        with pytest.raises(InputError, match="must end in .yaml or .yml"):
            make_plan(tmp_path / "no_such_dataset", output=tmp_path / name)  # refused before the dataset is read
        assert not (tmp_path / name).exists()
    assert_clean_error(run_cli("plan", ds, "-o", tmp_path / "p_noext"), "p_noext", ".yaml")
    assert not (tmp_path / "p_noext").exists()
    d = Plan(dataset=str(ds)).to_dict()
    (tmp_path / "c.YAML").write_text(yaml.safe_dump({k: v for k, v in d.items() if k != "labels"}))
    assert_clean_error(run_cli("train", tmp_path / "c.YAML", "-o", tmp_path / "run"), "c.YAML", "labels")
    assert not (tmp_path / "run").exists()


def test_a_partial_augment_mapping_changes_only_the_keys_it_names(tmp_path):
    """`augment: {flip_axes: [0, 1, 2]}` in a hand-written plan replaced the whole mapping: mirroring came on and
    the rotation, scaling, intensity, gamma and noise augmentation went silently off."""
    from medseg.plan.plan import Plan

    d = Plan(dataset=str(tmp_path)).to_dict()
    full = dict(d["augment"])
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**d, "augment": {"flip_axes": [0, 1, 2]}}))
    assert Plan.from_yaml(path).augment == {**full, "flip_axes": [0, 1, 2]}
    path.write_text(yaml.safe_dump({**d, "augment": {"rotate_deg": 0, "prob": 0.5}}))
    got = Plan.from_yaml(path).augment
    assert got == {**full, "rotate_deg": 0.0, "prob": 0.5} and got["scale"] == full["scale"]
    # a plan as medseg writes it (every key) reads back unchanged
    path.write_text(yaml.safe_dump({**d, "augment": {**full, "gamma": False, "scale": [0.7, 1.4]}}))
    assert Plan.from_yaml(path).augment == {**full, "gamma": False, "scale": [0.7, 1.4]}


def test_a_partial_augment_from_the_python_api_equals_the_saved_plan(tmp_path):
    """``Plan(augment={"flip_axes": [0]})`` kept the partial mapping until validated, while the run's plan.yaml holds
    the merged one: ``train(Plan(...), run, resume=True)`` with the same settings was refused ("cannot resume with
    other settings than the run's: augment {...} (given {'flip_axes': [0]})")."""
    from medseg.plan.plan import Plan
    from medseg.train.checkpoint import check_resume

    expected = {"rotate_deg": 15.0, "scale": [0.85, 1.15], "flip_axes": [0], "intensity": True, "gamma": True,
                "noise": 0.05, "prob": 0.3}
    settings = dict(dataset=str(tmp_path), channels=["CT"], labels={0: "background", 1: "liver"})
    Plan(**settings, augment={"flip_axes": [0]}).validate().to_yaml(tmp_path / "plan.yaml")  # as train saves it
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["augment"] == expected
    given = Plan(**settings, augment={"flip_axes": [0]})  # a new session's plan, not validated
    assert given.augment == expected
    check_resume(Plan.from_yaml(tmp_path / "plan.yaml"), given, tmp_path / "plan.yaml")
