"""Planner audit: the memory a planned training step takes, measured, against the budget it was planned for; tiny
images and budgets too small for any patch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from medseg.errors import InputError

CT = {"mean": 40.0, "std": 60.0, "p00_5": -100.0, "p99_5": 200.0, "min": -1000.0, "max": 900.0}

# one training step of a plan file, as the trainer takes it (network, Dice+CE, AdamW, gradient clipping; two
# steps so that AdamW's state exists), in a fresh process: the peak of its anonymous memory (RssAnon, sampled every
# millisecond) above what it held before the step: what a memory budget is about. Peak RSS, which also counts the
# library pages a process maps, measured the same plan at 0.14 GB alone and once at 0.56 GB inside the whole suite.
STEP = """
import os, sys, threading, time, torch
torch.set_num_threads(1)
from medseg.plan.plan import Plan
from medseg.train.artifact import build_from_plan
from medseg.train.losses import SegLoss

def anon():
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("RssAnon:"))

plan = Plan.from_yaml(sys.argv[1])
net, loss_fn = build_from_plan(plan), SegLoss(plan)
opt = torch.optim.AdamW(net.parameters(), lr=plan.learning_rate)
x = torch.randn(plan.batch_size, plan.in_channels, *plan.patch_size)
y = torch.randint(0, plan.num_classes, (plan.batch_size, *plan.patch_size))
before, peak, done = anon(), [0], threading.Event()

def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)

watcher = threading.Thread(target=watch)
watcher.start()
for _ in range(2):
    loss = loss_fn(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
    opt.step()
done.set()
watcher.join()
print(max(peak[0], anon()) - before)
"""


def _dataset(classes: int, channels=("CT",)):
    from medseg.train.dataset import Dataset

    labels = {"0": "background", **{str(i): f"organ{i}" for i in range(1, classes)}}
    return Dataset(Path("ds"), {"labels": labels, "channel_names": {str(i): c for i, c in enumerate(channels)}})


def _fingerprint(spacing, shape, classes: int):
    from medseg.plan.fingerprint import Fingerprint

    return Fingerprint([list(spacing)] * 2, [list(shape)] * 2, ["CT"], [CT], {k: 1000 for k in range(classes)})


def _measured_step_bytes(plan, tmp_path) -> int:
    import medseg

    path = tmp_path / "plan.yaml"
    plan.to_yaml(path)
    env = {**os.environ, "PYTHONPATH": str(Path(medseg.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", STEP, str(path)], capture_output=True, text=True, env=env,
                           check=True, timeout=300) for _ in range(2)]
    return min(int(out.stdout.split()[-1]) for out in runs)  # what the step needs: anything else only adds


@pytest.mark.skipif("RssAnon" not in (Path("/proc/self/status").read_text() if Path("/proc/self/status").exists()
                                      else ""), reason="needs Linux /proc/self/status (RssAnon)")
def test_a_many_class_anisotropic_ct_plan_fits_its_memory_budget(tmp_path):
    """A TotalSegmentator-like CT (118 classes, 1.9 x 1.9 x 4 mm: 3D, the coarse axis not down-sampled at first) was
    planned as if it had two classes and isotropic strides: its training step took 1.75x the 0.25 GB budget."""
    from medseg.plan.planner import make_plan

    budget_gb = 0.25
    plan = make_plan(_dataset(118), fingerprint=_fingerprint([1.9, 1.9, 4.0], [130, 115, 28], 118),
                     memory_gb=budget_gb)
    assert plan.spatial_dims == 3 and plan.num_classes == 118
    used = _measured_step_bytes(plan, tmp_path)
    assert used <= budget_gb * 1e9, (used, plan.patch_size, plan.batch_size, plan.base_filters)


@pytest.mark.parametrize("spacing,shape", [([1.0, 1.0, 1.0], [6, 6, 6]), ([1.0, 1.0, 4.0], [12, 12, 3])])
def test_images_smaller_than_any_patch_get_a_plan_the_network_trains_on(spacing, shape, one_torch_thread):
    """Cases smaller than 16 voxels (padded when sampled) were refused: 'invalid plan: patch_size [8, 8, 8] is too
    small', a plan the planner itself had made."""
    import torch

    from medseg.plan.planner import make_plan
    from medseg.train.artifact import build_from_plan

    plan = make_plan(_dataset(2), fingerprint=_fingerprint(spacing, shape, 2), memory_gb=1)
    assert plan.spatial_dims == (2 if spacing[2] > 3 else 3)
    plan.base_filters = 4  # the size of the network does not matter here, only that it runs on the patch
    net = build_from_plan(plan)
    x = torch.zeros(1, plan.in_channels, *plan.patch_size)
    assert net(x).shape == (1, plan.num_classes, *plan.patch_size)


def test_a_memory_budget_too_small_for_any_patch_is_one_clear_error(tmp_path):
    """It said 'invalid plan: patch_size [8, 8, 8] is too small', about a plan the user never wrote."""
    from medseg.plan.planner import make_plan
    from test_dataset import tiny_dataset

    with pytest.raises(InputError, match="memory budget of 0.01 GB is too small"):
        make_plan(_dataset(2), fingerprint=_fingerprint([1.0] * 3, [64, 64, 64], 2), memory_gb=0.01)
    ds = tiny_dataset(tmp_path / "ds", 2)
    res = run_cli("plan", ds, "-o", tmp_path / "p.yaml", "--memory-gb", "0.01")
    assert_clean_error(res, "memory budget", "too small")
    assert not (tmp_path / "p.yaml").exists()
