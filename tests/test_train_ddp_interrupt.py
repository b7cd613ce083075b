"""DDP training (torchrun, 2 CPU processes on gloo) stopped by SIGTERM inside an epoch: every rank stops after the
same iteration, rank 0 saves all ranks' state, and --resume under torchrun finishes the epoch exactly as the
uninterrupted run would have (Slurm and Kubernetes send SIGTERM to torchrun, which sends it to its workers)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from conftest import REPO
from test_train import _free_port, tiny_plan
from test_train_interrupt import _assert_same_log, _assert_same_weights, terminate_after_progress

IPE = 150


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", "-m", "medseg", "train", *map(str, args), "--device", "cpu"]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _run(*args):
    p = subprocess.run(_torchrun(*args, "-q"), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def _aborted(err: str | bytes) -> bool:
    text = err.decode(errors="replace") if isinstance(err, bytes) else err
    return any(m in text for m in ("terminate called", "SIGABRT", "exitcode  : -6"))


def stopped(stop, tmp_path):
    """``stop(run_dir)`` runs a torchrun stop and returns what ``stop`` returns, stderr last; no rank may abort
    (one exiting with its process group open did, and so did, now and then, one whose gloo threads outlived the
    group: see tests/test_ddp_exit.py). Returns (run_dir, result)."""
    run = tmp_path / "run"
    result = stop(run)
    assert not _aborted(result[-1]), result[-1][-3000:]
    return run, result


def test_sigterm_to_torchrun_mid_epoch_then_resume_exactly(tmp_path):
    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=IPE, ema=0.9)
    _run(plan, "-o", tmp_path / "ref")
    # SIGTERM to torchrun (not its workers) once rank 0's progress bar shows 10 iterations of the first epoch
    # the process group is closed before the workers exit: no abort ("terminate called")
    run, (_, err) = stopped(
        lambda d: terminate_after_progress(_torchrun(plan, "-o", d), ENV,
                                           rb"epoch 1/\d+:[^\r\n]*?\b(\d+)/" + b"%d" % IPE, 10), tmp_path)
    assert err.count(b"medseg: terminated") == 2, err[-2000:]  # both workers stopped cleanly, no traceback of theirs
    ck = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert ck["epoch"] == 0 and 10 <= ck["iteration"] < IPE
    assert len(ck["rng"]) == 2 and len(ck["rank_losses"]) == 2
    assert all(len(v) == ck["iteration"] for v in ck["rank_losses"])  # both ranks stopped after the same one
    assert ck["rank_losses"][0] == ck["epoch_losses"] and ck["rank_losses"][0] != ck["rank_losses"][1]
    assert not (run / "model.pt").exists() and not (run / "log.csv").exists()
    _run(plan, "-o", run, "--resume")
    _assert_same_log(tmp_path / "ref", run)
    a, b = (torch.load(r / "checkpoint_latest.pt", weights_only=True) for r in (tmp_path / "ref", run))
    for key in ("model", "ema"):
        _assert_same_weights(a[key], b[key])
    assert str(a["optimizer"]) == str(b["optimizer"]) and a["scheduler"] == b["scheduler"]
    assert [r["numpy"] for r in a["rng"]] == [r["numpy"] for r in b["rng"]]


HOOK = """
import os, signal, sys
from medseg.train import trainer
real = trainer.validate
def hooked(*a, **k):  # only rank 0 validates; only it gets the signal, at the start of epoch 1's validation
    os.kill(os.getpid(), signal.SIGINT)
    return real(*a, **k)
trainer.validate = hooked
from medseg.train import ddp
try:
    trainer.train(sys.argv[1], sys.argv[2], device="cpu", progress=False)
except KeyboardInterrupt:
    ddp.end_process(130)  # as README says a script under torchrun ends
"""


def test_a_signal_to_rank_0_during_validation_stops_both_ranks(tmp_path):
    """Rank 0 alone is signalled while it validates and the other rank waits: both stop, the epoch's iterations
    are kept, and --resume validates that epoch again and ends as the uninterrupted run."""
    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=4)
    _run(plan, "-o", tmp_path / "ref")
    # no rank aborted (an exit with the process group open did); rank 0 may meet the SIGTERM torchrun sends the
    # others once rank 1 has exited, after its checkpoint is saved
    run, (p, _) = stopped(lambda d: _torchrun_script(tmp_path, HOOK, plan, d), tmp_path)
    assert p.returncode != 0 and "exitcode  : 130" in p.stderr, p.stderr[-3000:]
    ck = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"]) == (0, 4) and [len(v) for v in ck["rank_losses"]] == [4, 4]
    assert not (run / "log.csv").exists()
    _run(plan, "-o", run, "--resume")
    _assert_same_log(tmp_path / "ref", run)
    a, b = (torch.load(r / "checkpoint_latest.pt", weights_only=True) for r in (tmp_path / "ref", run))
    _assert_same_weights(a["model"], b["model"])
    assert str(a["optimizer"]) == str(b["optimizer"])


FLAG_HANDLER = """
import os, signal, sys
from medseg.train import trainer
signal.signal(signal.SIGTERM, lambda s, f: None)  # a calling program's own SIGTERM handler, which does not raise
real, n = trainer.sample_batch, [0]
def hooked(*a, **k):
    n[0] += 1
    if n[0] == 2 and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
trainer.sample_batch = hooked
from medseg.train import ddp
try:
    trainer.train(sys.argv[1], sys.argv[2], device="cpu", progress=False)
    print("RETURNED", os.environ["RANK"], flush=True)
except KeyboardInterrupt:
    ddp.end_process(130)  # as README says a script under torchrun ends
"""

DISK_FULL = """
import os, signal, sys
from medseg.errors import InputError
from medseg.train import trainer
real_save = trainer._save
def save(path, payload):
    if payload.get("epoch_losses"):  # the mid-epoch checkpoint meets a full disk
        raise InputError("cannot write output (disk full: No space left on device)", path=path)
    return real_save(path, payload)
trainer._save = save
real, n = trainer.sample_batch, [0]
def hooked(*a, **k):
    n[0] += 1
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # as torchrun passes it to every worker
    return real(*a, **k)
trainer.sample_batch = hooked
from medseg.cli import console
console(["train", sys.argv[1], "-o", sys.argv[2], "--device", "cpu", "-q"])
"""


def _torchrun_script(tmp_path, text: str, plan, run=None):
    script = tmp_path / "hook.py"
    script.write_text(text)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), str(plan), str(run or tmp_path / "run")]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    return p, p.stderr


def test_a_rank_whose_handler_does_not_raise_still_stops(tmp_path):
    """A program whose SIGTERM handler only sets a flag: the signalled rank does not run on to write model.pt from
    mid-epoch weights while the other stops; both stop after saving."""
    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=4)
    # neither rank returned; the first to exit does so with 130, the other too unless torchrun's SIGTERM (sent
    # when one rank has exited) meets it in interpreter shutdown, after everything is saved: -15 then, never -6
    run, (p, _) = stopped(lambda d: _torchrun_script(tmp_path, FLAG_HANDLER, plan, d), tmp_path)
    assert "RETURNED" not in p.stdout and "exitcode  : 130" in p.stderr, p.stderr[-3000:]
    ck = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert (ck["epoch"], ck["iteration"]) == (0, 2)
    assert not (run / "model.pt").exists()


def test_an_error_while_saving_is_not_reported_as_terminated(tmp_path):
    """The mid-epoch save fails (full disk): rank 0 says so, exit 2, instead of 'terminated' hiding it."""
    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=4)
    p, _ = _torchrun_script(tmp_path, DISK_FULL, plan)
    assert "checkpoint_latest.pt: cannot write output (disk full" in p.stderr, p.stderr[-3000:]
    assert "exitcode  : 2" in p.stderr


def test_resuming_with_more_processes_keeps_the_ranks_apart(tmp_path):
    """A single-process run resumed under torchrun with 2 processes: the new rank draws its own patches (it took
    rank 0's saved stream, so both ranks trained on the same batches), and the user is told the resume is not exact."""
    from conftest import run_cli

    plan = tiny_plan(tmp_path, max_epochs=2, iterations_per_epoch=3)
    res = run_cli("train", plan, "-o", tmp_path / "run", "--max-epochs", "1", "-q")
    assert res.code == 0, res.err
    p = subprocess.run(_torchrun(plan, "-o", tmp_path / "run", "--resume", "--max-epochs", "2", "-q"), cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming a run of 1 process(es) with 2" in p.stderr
    ck = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["rng"][0]["numpy"] != ck["rng"][1]["numpy"]
