"""Training options an audit found unchecked: a dataset-folder train plans for its budget and device, device strings
are validated once (exit 2), the loss follows the device and the class weights, the planner's memory default comes
from the machine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_clean_error, run_cli
from test_dataset import tiny_dataset
from test_plan import _fp
from test_train import read_log, tiny_plan

W3 = [0.2, 1.0, 3.0]
LABELS3 = {0: "background", 1: "anterior", 2: "posterior"}


@pytest.fixture
def fixed_memory(monkeypatch):
    """The planner's machine-dependent memory default pinned, so that two plans of one test cannot differ by it."""
    monkeypatch.setattr("medseg.plan.planner.default_memory_gb", lambda device="cpu": 4.0)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# --- 1. `medseg train DATASET --max-minutes M` plans as `medseg plan DATASET --max-minutes M` ---------------------

def test_dataset_train_plans_for_its_time_budget(tmp_path, fixed_memory):
    from medseg.plan.plan import Plan

    ds = tiny_dataset(tmp_path / "ds", 3)
    minutes = "0.05"  # 3 s: the budget ends the run after a few iterations
    res = run_cli("plan", ds, "-o", tmp_path / "plan.yaml", "--max-minutes", minutes, "--device", "cpu")
    assert res.code == 0, res.err
    res = run_cli("train", ds, "-o", tmp_path / "run", "--max-minutes", minutes, "--device", "cpu",
                  "--threads", "1", "-q")
    assert res.code == 0, res.err
    planned, trained = Plan.from_yaml(tmp_path / "plan.yaml"), Plan.from_yaml(tmp_path / "run" / "plan.yaml")
    assert trained == planned
    # ...which is the budget-fitted plan, not the big default (32 filters, 1000 epochs) trained before the fix
    default = Plan.from_yaml(_plan_without_budget(ds, tmp_path / "default.yaml"))
    assert (trained.base_filters, trained.max_epochs) < (default.base_filters, default.max_epochs)
    assert 1 <= len(read_log(tmp_path / "run")) <= trained.max_epochs


def _plan_without_budget(ds, out):
    assert run_cli("plan", ds, "-o", out).code == 0
    return out


def test_plan_yaml_keeps_what_the_user_wrote(tmp_path):
    """An explicit plan is not re-planned for the budget: only max_minutes (and the other flags) override it."""
    from medseg.plan.plan import Plan

    plan = tiny_plan(tmp_path, max_epochs=1, iterations_per_epoch=1, val_every=1)
    res = run_cli("train", plan, "-o", tmp_path / "run", "--max-minutes", "5", "--device", "cpu", "-q")
    assert res.code == 0, res.err
    written = Plan.from_yaml(tmp_path / "run" / "plan.yaml")
    assert (written.base_filters, written.patch_size, written.max_minutes) == (4, [16, 16, 16], 5.0)


# --- 2. one device parser: exit 2 with one line, never a RuntimeError --------------------------------------------

@pytest.mark.parametrize("text, expected", [("auto", "cpu"), ("CPU", "cpu"), (" cuda ", "cuda"),
                                            ("cuda:1", "cuda:1"), (torch.device("cpu"), "cpu")])
def test_parse_device_spellings(no_cuda, text, expected):
    from medseg.infer.devices import parse_device

    assert str(parse_device(text, require_available=False)) == expected


@pytest.mark.parametrize("text", ["gpu", "tpu", "cpu:1", "cuda:", "cuda:x", "mps", ""])
def test_parse_device_rejects_unknown_names(text):
    from medseg.errors import InputError
    from medseg.infer.devices import parse_device

    with pytest.raises(InputError, match="use auto, cpu, cuda or cuda:N"):
        parse_device(text, require_available=False)


def test_parse_device_checks_cuda_is_there(monkeypatch, no_cuda):
    from medseg.errors import InputError
    from medseg.infer.devices import parse_device

    with pytest.raises(InputError, match="no CUDA device on this machine"):
        parse_device("cuda")
    with pytest.raises(InputError, match="unknown device 'gpu'"):
        parse_device("gpu")  # what train, ensembles and predict call
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InputError, match="has 2 CUDA device"):
        parse_device("cuda:2")


def test_cli_bad_device_is_a_usage_error(tmp_path, no_cuda):
    ds = tiny_dataset(tmp_path / "ds", 2)
    out = tmp_path / "out"
    assert_clean_error(run_cli("predict", "-m", tmp_path / "run", "-i", ds, "-o", out, "--device", "gpu"),
                       "unknown device 'gpu'", "cuda:N")
    assert_clean_error(run_cli("plan", ds, "-o", tmp_path / "p.yaml", "--device", "tpu"), "unknown device 'tpu'")
    assert_clean_error(run_cli("train", ds, "-o", out, "--device", "gpu", "-q"), "unknown device 'gpu'")
    assert_clean_error(run_cli("train", ds, "-o", out, "--device", "cuda", "-q"), "--device cuda",
                       "no CUDA device")
    assert_clean_error(run_cli("predict", "-m", tmp_path / "run", "-i", ds, "-o", out, "--device", "cuda:0"),
                       "no CUDA device")
    assert not out.exists() and not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("device, backend", [("CPU", "gloo"), (" cpu", "gloo"), (torch.device("cpu"), "gloo"),
                                             ("cuda", "nccl"), ("Auto", "nccl")])
def test_ddp_backend_follows_the_device_type(monkeypatch, device, backend):
    """Under torchrun on a GPU machine `--device CPU` must pick gloo: the old check `device != "cpu"` picked NCCL."""
    import torch.distributed as dist

    from medseg.train import ddp

    chosen, pinned = [], []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", chosen.append)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    assert ddp.setup(device) == (1, 2)
    assert chosen == [backend] and pinned == ([1] if backend == "nccl" else [])


def test_train_passes_the_canonical_device_on(tmp_path, monkeypatch):
    """`medseg train --device CPU` hands "cpu" to the trainer, not what the user typed."""
    from medseg.errors import InputError

    seen = []

    def fake_train(plan, run_dir, **kw):
        seen.append(kw["device"])
        raise InputError("stopped by the test")

    monkeypatch.setattr("medseg.train.trainer.train", fake_train)
    plan = tiny_plan(tmp_path, max_epochs=1)
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "run", "--device", " CPU", "-q"), "stopped by")
    assert seen == ["cpu"]


def test_plan_for_a_gpu_elsewhere(tmp_path, no_cuda):
    """`medseg plan --device cuda` on a machine without CUDA plans for a GPU (a plan can travel), with 8 GB."""
    from medseg.plan.plan import Plan
    from medseg.plan.planner import GPU_ELSEWHERE_GB, default_memory_gb

    assert default_memory_gb("cuda:1") == GPU_ELSEWHERE_GB
    ds = tiny_dataset(tmp_path / "ds", 2)
    res = run_cli("plan", ds, "-o", tmp_path / "p.yaml", "--device", "cuda:1", "--max-minutes", "30")
    assert res.code == 0, res.err
    plan = Plan.from_yaml(tmp_path / "p.yaml")
    assert plan.bf16 is False and plan.base_filters == 32  # the GPU's throughput: no shrinking for 30 min


# --- 3. the loss: on the training device, class weights honoured, dice_focal and deep supervision ----------------

def _logits_labels(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8, 8), generator=g)


def test_dice_ce_class_weights_weight_the_cross_entropy():
    from monai.losses import DiceLoss

    from medseg.plan.plan import Plan
    from medseg.train.losses import SegLoss

    logits, y = _logits_labels()
    plain = SegLoss(Plan(loss="dice_ce", labels=LABELS3))(logits, y)
    weighted = SegLoss(Plan(loss="dice_ce", labels=LABELS3, class_weights=W3))(logits, y)
    assert not torch.allclose(plain, weighted)
    dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True, weight=torch.tensor(W3))(logits, y[:, None])
    ce = F.cross_entropy(logits, y, weight=torch.tensor(W3))
    assert torch.allclose(weighted, dice + ce)


def test_dice_loss_honours_class_weights():
    """`loss: dice` used to drop class_weights silently; now each class's 1 - Dice is weighted (mean over classes)."""
    from medseg.plan.plan import Plan
    from medseg.train.losses import SegLoss

    logits, y = _logits_labels(1)
    p = torch.softmax(logits, 1)
    onehot = F.one_hot(y, 3).permute(0, 4, 1, 2, 3).float()
    axes = (0, 2, 3, 4)  # batch=True: one Dice per class over the whole batch
    dice = (2 * (p * onehot).sum(axes) + 1e-5) / (p.sum(axes) + onehot.sum(axes) + 1e-5)
    expected = (torch.tensor(W3) * (1 - dice)).mean()
    got = SegLoss(Plan(loss="dice", labels=LABELS3, class_weights=W3))(logits, y)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, SegLoss(Plan(loss="dice", labels=LABELS3))(logits, y))


def test_dice_focal_loss_worked_out_by_hand():
    """Two voxels, two classes, weights (0.5, 2), from the definitions in plain floats, not from MONAI.

    Dice: on softmax probabilities, one per class over the batch, (1 - Dice) weighted, mean over classes. Focal: the
    softmax focal loss -(1 - p_t)^2 log p_t of each voxel's true class p_t, weighted by that class, averaged over
    every channel and voxel (MONAI's FocalLoss mean; the other channels contribute 0). Not MONAI's DiceFocalLoss,
    whose focal term is a sigmoid (one vs rest) loss per channel.
    """
    from medseg.plan.plan import Plan
    from medseg.train.losses import SegLoss

    logits, labels, w = [[2.0, -1.0], [0.0, 1.0]], [0, 1], [0.5, 2.0]  # logits[class][voxel]
    hot = [[float(lab == k) for lab in labels] for k in range(2)]
    soft = [[math.exp(logits[k][v]) / sum(math.exp(logits[j][v]) for j in range(2)) for v in range(2)]
            for k in range(2)]
    focal = sum(-w[k] * (1 - soft[k][v]) ** 2 * math.log(soft[k][v]) for v, k in enumerate(labels)) / 4
    dice = [(2 * sum(p * t for p, t in zip(soft[k], hot[k])) + 1e-5) / (sum(soft[k]) + sum(hot[k]) + 1e-5)
            for k in range(2)]
    expected = sum(w[k] * (1 - dice[k]) for k in range(2)) / 2 + focal
    loss_fn = SegLoss(Plan(loss="dice_focal", labels={0: "background", 1: "foreground"}, class_weights=w))
    got = loss_fn(torch.tensor([logits]), torch.tensor([labels]))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_loss_weights_follow_the_module_to_the_device():
    """What trainer.py does with `SegLoss(plan).to(dev)`: the CE weight buffer moves (meta stands in for CUDA)."""
    from medseg.plan.plan import Plan
    from medseg.train.losses import SegLoss

    for kind in ("dice_ce", "ce"):
        loss_fn = SegLoss(Plan(loss=kind, labels=LABELS3, class_weights=W3)).to("meta")
        assert {b.device.type for b in loss_fn.buffers()} == {"meta"}


def test_deep_supervision_dice_focal_weighted_training_step(tmp_path):
    """One epoch of two iterations through train(): deep-supervision heads, dice_focal, class weights."""
    plan = tiny_plan(tmp_path, n_cases=3, deep_supervision=True, loss="dice_focal", class_weights=W3,
                     max_epochs=1)
    res = run_cli("train", plan, "-o", tmp_path / "run", "--device", "cpu", "-q")
    assert res.code == 0, res.err
    row = read_log(tmp_path / "run")[-1]
    assert row["iteration"] == "2" and np.isfinite(float(row["train_loss"]))


def test_deep_supervision_loss_weights_heads_by_halves():
    from medseg.plan.plan import Plan
    from medseg.train.losses import SegLoss

    loss_fn = SegLoss(Plan(loss="dice_ce", labels=LABELS3, deep_supervision=True))
    (a, y), (b, _) = _logits_labels(3), _logits_labels(4)
    heads = torch.stack([a, b], 1)  # (B, heads, K, *S), as DynUNet returns in training mode
    assert torch.allclose(loss_fn(heads, y), (loss_fn(a, y) + 0.5 * loss_fn(b, y)) / 1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_weighted_loss_trains_on_cuda(tmp_path):
    """The crash the audit predicted: CE class weights on the CPU with CUDA logits."""
    plan = tiny_plan(tmp_path, n_cases=3, class_weights=W3, max_epochs=1)
    res = run_cli("train", plan, "-o", tmp_path / "run", "--device", "cuda", "-q")
    assert res.code == 0, res.err


# --- 4. the planner's memory budget comes from the machine ------------------------------------------------------

def test_default_memory_from_ram(monkeypatch, no_cuda):
    from medseg.plan import planner

    for total, expected in [(8e9, 2.0), (25e9, 6.25), (512e9, planner.RAM_CAP_GB), (1e9, 0.5), (None, 4.0)]:
        monkeypatch.setattr(planner, "total_ram_bytes", lambda total=total: total)
        assert planner.default_memory_gb("cpu") == pytest.approx(expected)
        assert planner.default_memory_gb("auto") == pytest.approx(expected)


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine with ``set(count, total_bytes)`` CUDA devices, as far as torch.cuda tells; ``asked`` lists the
    indices whose properties were read. ``mem_get_info`` fails the test: it would open a CUDA context (on every
    torchrun rank, all on GPU 0, before ddp.setup assigns them theirs)."""
    from types import SimpleNamespace

    gpus = SimpleNamespace(asked=[], count=1, total=16e9)

    def properties(i):
        assert 0 <= i < gpus.count, f"asked for the properties of cuda:{i} on a {gpus.count}-GPU machine"
        gpus.asked.append(i)
        return SimpleNamespace(total_memory=int(gpus.total))

    def no_context(*a, **k):
        raise AssertionError("mem_get_info opens a CUDA context")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus.count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_context)
    return gpus


def test_default_memory_from_the_gpu(fake_gpus):
    from medseg.plan import planner

    fake_gpus.count = 2
    for total, expected in [(16e9, 13.6), (141e9, planner.GPU_CAP_GB)]:
        fake_gpus.total = total
        assert planner.default_memory_gb("cuda:1") == pytest.approx(expected)
    assert planner.default_memory_gb("cuda") == pytest.approx(planner.GPU_CAP_GB)
    assert fake_gpus.asked == [1, 1, 0]  # the named GPU's memory, the current one for plain cuda


def test_plan_for_a_gpu_index_this_machine_lacks(tmp_path, fake_gpus):
    """`medseg plan --device cuda:3` on a 1-GPU machine: a plan for another machine (8 GB), not a RuntimeError
    from torch after the fingerprint (exit 1)."""
    from medseg.plan.plan import Plan
    from medseg.plan.planner import GPU_ELSEWHERE_GB, default_memory_gb

    assert default_memory_gb("cuda:3") == GPU_ELSEWHERE_GB
    assert default_memory_gb("cuda:0") == pytest.approx(13.6)  # the GPU it has still counts its own memory
    ds = tiny_dataset(tmp_path / "ds", 2)
    res = run_cli("plan", ds, "-o", tmp_path / "p.yaml", "--device", "cuda:3")
    assert res.code == 0, res.err
    assert Plan.from_yaml(tmp_path / "p.yaml").bf16 is False  # planned for the GPU
    assert fake_gpus.asked == [0]


def test_make_plan_uses_the_default_and_an_explicit_budget_wins(tmp_path, monkeypatch):
    from medseg.errors import InputError
    from medseg.plan import planner

    ds = tiny_dataset(tmp_path / "ds", 2)
    fp = _fp([[1, 1, 1]] * 2, [[160, 160, 160]] * 2)
    monkeypatch.setattr(planner, "default_memory_gb", lambda device="cpu": 1.0)
    small = planner.make_plan(ds, fingerprint=fp)
    assert small.patch_size == planner.make_plan(ds, memory_gb=1, fingerprint=fp).patch_size
    big = planner.make_plan(ds, memory_gb=32, fingerprint=fp)
    assert np.prod(big.patch_size) > np.prod(small.patch_size)
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        planner.make_plan(ds, device="tpu", fingerprint=fp)

