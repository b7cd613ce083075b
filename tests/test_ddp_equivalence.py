"""The same training job in one process and in two (torchrun, gloo on CPU) agrees as DDP promises: rank 0 draws the
single-process run's patches and rank 1 others, both ranks hold the same weights after every step (also when a time
budget drives the learning rate and stops the run), only rank 0 writes the run folder, and the logged numbers equal
independent computations from what the ranks did. Real hippocampus cases, tiny networks, a few iterations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medseg
from test_train import _free_port, read_log, tiny_plan

# the processes run the medseg this test imported
ENV = {**os.environ, "PYTHONPATH": str(Path(medseg.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
IPE = 5

# trainer.train with every rank's batches (hashed), learning rates, losses, final weights and the files it writes.
# The trainer's clock is fake: 1 s per batch drawn, and rank 1's runs 3 s ahead from its first batch on (it started
# training later, as a rank does): the budget ends the run after the same iteration however loaded the machine is (a
# real 15-s budget, spent under load importing MONAI and torch._dynamo in each rank, once ended it after 1 iteration),
# and a rank that followed its own clock would take other learning rates
PROBE = """
import hashlib, json, os, sys
from types import SimpleNamespace
import torch
from medseg.train import ddp, trainer

torch.set_num_threads(1)
rank, rec, net = int(os.environ.get("RANK", "0")), {"batches": [], "lrs": [], "losses": [], "writes": []}, {}
sample, step, build, loss = trainer.sample_batch, trainer.PolyLR.step, trainer.build_from_plan, trainer.SegLoss.forward
clock = [0.0]
trainer.time = SimpleNamespace(monotonic=lambda: clock[0])

def sample_batch(*a, **k):
    clock[0] += 1.0 + (3.0 * rank if not rec["batches"] else 0.0)
    x, y = sample(*a, **k)
    rec["batches"].append(hashlib.sha1(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
    return x, y

def poly_step(self, progress):
    rec["lrs"].append(step(self, progress))
    return rec["lrs"][-1]

def build_from_plan(plan):
    net["n"] = build(plan)
    return net["n"]

def loss_forward(self, *a, **k):
    out = loss(self, *a, **k)
    rec["losses"].append(float(out.detach()))
    return out

real_replace, real_save = os.replace, torch.save
def replace(src, dst, *a, **k):
    rec["writes"].append(str(dst))
    return real_replace(src, dst, *a, **k)

trainer.sample_batch, trainer.PolyLR.step, trainer.build_from_plan = sample_batch, poly_step, build_from_plan
trainer.SegLoss.forward, os.replace = loss_forward, replace
res = trainer.train(sys.argv[1], sys.argv[2], device="cpu", progress=False, **json.loads(sys.argv[4]))
rec["state"] = {k: v.detach().clone() for k, v in net["n"].state_dict().items()}
rec["iterations"] = res.iterations
real_save(rec, os.path.join(sys.argv[3], f"rank{rank}.pt"))
ddp.end_process(0)  # as README says a script under torchrun ends: a rank's teardown may abort (test_ddp_exit.py)
"""


def _probe(tmp_path, nproc: int, plan, run, **kw) -> list[dict]:
    """``trainer.train(plan, run, **kw)`` in ``nproc`` processes (torchrun when 2); each rank's record."""
    script, out = tmp_path / "probe.py", tmp_path / f"out_{run.name}"
    script.write_text(PROBE)
    out.mkdir()
    launch = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                    "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    p = subprocess.run([sys.executable, *launch, str(script), str(plan), str(run), str(out), json.dumps(kw)],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def _dice(pred: np.ndarray, ref: np.ndarray, k: int) -> float:
    a, b = pred == k, ref == k
    total = a.sum() + b.sum()
    return 2.0 * (a & b).sum() / total if total else float("nan")


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """One job in one process (a single epoch, no budget) and in two processes under a time budget that ends it."""
    tmp = tmp_path_factory.mktemp("ddp")
    plan = tiny_plan(tmp, max_epochs=1000, iterations_per_epoch=IPE, num_folds=2, val_every=1000)
    single = _probe(tmp, 1, plan, tmp / "single", max_epochs=1)[0]
    ranks = _probe(tmp, 2, plan, tmp / "run", max_minutes=0.25)
    return tmp, single, ranks


def test_ranks_draw_their_own_patches_rank_0_the_single_process_ones(budget_run):
    """Rank 0 draws exactly the batches of the one-process run and rank 1 others (not the same seed twice, which
    would double each batch with duplicates): each step averages the gradients of two different batches."""
    tmp, single, (r0, r1) = budget_run
    assert r0["iterations"] > IPE  # the budget ended the run after its first epoch
    assert r0["batches"][:IPE] == single["batches"]
    assert len(r0["batches"]) == len(r1["batches"]) == r0["iterations"] == r1["iterations"]
    assert not set(r0["batches"]) & set(r1["batches"])
    rows = read_log(tmp / "run")
    assert int(rows[-1]["iteration"]) == r0["iterations"] and len(rows) == -(-r0["iterations"] // IPE)
    for row in rows:  # the logged loss is the mean over both ranks' iterations of its epoch
        end = int(row["iteration"])
        start = end - IPE if end % IPE == 0 else end - end % IPE
        ref = (np.mean(r0["losses"][start:end]) + np.mean(r1["losses"][start:end])) / 2
        assert float(row["train_loss"]) == pytest.approx(ref, abs=1e-5)


def test_time_budget_keeps_the_ranks_weights_identical(budget_run):
    """A time budget drives the poly learning rate by elapsed time: every rank must take rank 0's, else the ranks'
    weights drift apart (DDP averages the gradients, not the weights). The budget stops both at the same
    iteration, and model.pt holds the weights rank 1 ended with."""
    from medseg.train.artifact import load_model

    tmp, _, (r0, r1) = budget_run
    assert 0 < r0["iterations"] == r1["iterations"] < 1000 * IPE
    assert r0["lrs"] == r1["lrs"]
    assert r0["lrs"][-1] < 0.5 * r0["lrs"][IPE]  # decayed by the budget, not by 1000 epochs
    for k, v in r1["state"].items():
        assert torch.equal(r0["state"][k], v), k
    model = load_model(tmp / "run").build()
    for k, v in model.state_dict().items():
        assert torch.equal(v, r1["state"][k]), k


def test_only_rank_0_writes_and_its_validation_is_every_case(budget_run, one_torch_thread):
    """Rank 1 writes nothing into the run folder; the logged validation Dice is the mean over all validation cases
    (not one rank's share) of a numpy Dice of model.pt's predictions against the labels, read by nibabel."""
    from medseg.infer.predict import predict_image
    from medseg.io.readers import read_image
    from medseg.train.artifact import load_model

    tmp, _, (r0, r1) = budget_run
    run, ds = tmp / "run", tmp / "ds"
    assert not [w for w in r1["writes"] if str(run) in w]
    assert {os.path.basename(w) for w in r0["writes"]} >= {"model.pt", "checkpoint_latest.pt", "splits.json"}
    val = json.loads((run / "splits.json").read_text())[0]["val"]
    assert len(val) == 2
    art = load_model(run)
    network = art.build()
    row = read_log(run)[-1]
    preds = {c: predict_image(network, art.plan, read_image(ds / "imagesTr" / f"{c}.nii.gz"))[0].array for c in val}
    for k, name in ((1, "anterior"), (2, "posterior")):
        per_case = [_dice(preds[c], np.asarray(nib.load(ds / "labelsTr" / f"{c}.nii.gz").dataobj), k) for c in val]
        assert float(row[f"val_{name}"]) == pytest.approx(np.nanmean(per_case), abs=1e-5)


def _bad_validation_label(tmp_path) -> None:
    """Fold 0's validation case gets a label value (5) the plan does not know."""
    case = tmp_path / "ds" / "labelsTr" / "hippocampus_006.nii.gz"
    img = nib.load(case)
    lab = np.asarray(img.dataobj).copy()
    lab[0, 0, 0] = 5
    case.unlink()  # a link into the shared data: replaced, never written through
    nib.save(nib.Nifti1Image(lab, img.affine, img.header), case)


def test_a_bad_validation_case_on_a_disk_cache_is_refused_under_torchrun(tmp_path):
    """Validation cases read lazily (disk cache) are checked as those in RAM are: a label value the plan does not
    know is one line and exit 2 on rank 0 before training (torchrun's root cause), not an internal error after an
    epoch, and the run folder is not left behind."""
    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=2)
    _bad_validation_label(tmp_path)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        f"--master_port={_free_port()}", "-m", "medseg", "train", str(plan), "-o",
                        str(tmp_path / "run"), "--device", "cpu", "--cache", "disk", "-q"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("medseg: error:")]
    assert len(errors) == 1 and "label values [5]" in errors[0] and "hippocampus_006" in errors[0], p.stderr[-3000:]
    assert re.search(r"Root Cause.*?rank\s*: 0.*?exitcode\s*: 2\b", p.stderr, re.S) and p.returncode != 0
    assert "ValueError" not in p.stderr
    assert not (tmp_path / "run" / "plan.yaml").exists()


# rank 1 writes each cache entry a second late, and rank 0 takes 5 s to exit after it failed: a run folder removed
# while rank 1 still writes into it would be written again, or fail rank 1 first
SLOW_RANKS = """
import atexit, os, time
if os.environ.get("RANK") == "0":
    atexit.register(time.sleep, 5)
elif os.environ.get("RANK") == "1":
    from medseg.train import cache

    put = cache.DiskCache.put

    def slow_put(self, *a, **k):
        time.sleep(1)
        return put(self, *a, **k)

    cache.DiskCache.put = slow_put
"""


def test_a_refused_run_is_removed_only_when_every_rank_has_stopped_writing(tmp_path):
    """Rank 0 refuses a bad validation case while rank 1 still fills the disk cache: the ranks agree on the
    refusal first, so the run folder is removed once, after the last write. Rank 1 stops with a line that names
    rank 0's refusal (not an error of its own), and torchrun names rank 0 as the root cause."""
    plan = tiny_plan(tmp_path, max_epochs=1, iterations_per_epoch=1)
    _bad_validation_label(tmp_path)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_RANKS)
    env = {**ENV, "PYTHONPATH": f"{hooks}{os.pathsep}{ENV['PYTHONPATH']}"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        f"--master_port={_free_port()}", "-m", "medseg", "train", str(plan), "-o",
                        str(tmp_path / "run"), "--device", "cpu", "--cache", "disk", "-q"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert not (tmp_path / "run").exists(), p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("medseg: error:")]
    assert len(errors) == 1 and "label values [5]" in errors[0] and "hippocampus_006" in errors[0], p.stderr[-3000:]
    stopped = [ln for ln in p.stderr.splitlines() if ln.startswith("medseg: stopped:")]
    assert len(stopped) == 1 and "rank 0 refused the input" in stopped[0] and "hippocampus_006" in stopped[0], \
        p.stderr[-3000:]
    assert re.search(r"Root Cause.*?rank\s*: 0.*?exitcode\s*: 2\b", p.stderr, re.S) and p.returncode != 0
    assert "internal error" not in p.stderr

