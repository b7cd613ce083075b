"""A torchrun rank's exit status is the command's own, whatever the interpreter's teardown would do after it.

torch 2.13 keeps gloo's worker threads alive after ``destroy_process_group`` once DDP has imported torch._dynamo,
and in some CI runs a rank that had trained and saved aborted at exit ('terminate called without an active
exception', exit -6), so torchrun reported the run as failed. That abort was never reproduced here (over 50 runs),
so these tests stage one: a ``sitecustomize`` gives each rank an object whose finaliser aborts the process, as
gloo's thread teardown does, once the interpreter tears down its modules. The atexit handlers (logging, temporary
folders) must still run, and what the command printed must still reach the terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


import medseg
from test_train import _free_port, read_log, tiny_plan

PACKAGE_ROOT = Path(medseg.__file__).resolve().parents[1]  # the medseg under test, not only this checkout's

SITECUSTOMIZE = """
import atexit, os
if os.environ.get("WORLD_SIZE"):
    class _AbortsInTeardown:
        def __del__(self):
            os.abort()
    _teardown = _AbortsInTeardown()
    marks = os.environ["ATEXIT_MARKS"]
    atexit.register(lambda: open(os.path.join(marks, "rank" + os.environ["RANK"]), "w").close())
"""


def _torchrun(tmp_path, *args: str) -> subprocess.CompletedProcess:
    hooks, marks = tmp_path / "hooks", tmp_path / "marks"
    hooks.mkdir()
    marks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{PACKAGE_ROOT}", "OMP_NUM_THREADS": "1",
           "ATEXIT_MARKS": str(marks)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "medseg", "train", *args, "--device", "cpu"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _teardown_aborts(tmp_path) -> None:
    """The staged abort does fire in a plain (non-torchrun) process that tears down normally, or the tests below
    would pass without the exit they check."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hooks"), "WORLD_SIZE": "1", "RANK": "0",
           "ATEXIT_MARKS": str(tmp_path / "marks")}
    p = subprocess.run([sys.executable, "-c", "print('done')"], env=env, capture_output=True, text=True)
    assert p.returncode == -6 and p.stdout == "done\n", (p.returncode, p.stdout)


def test_a_trained_rank_exits_zero_whatever_its_teardown_does(tmp_path):
    plan = tiny_plan(tmp_path, max_epochs=1, iterations_per_epoch=2)
    p = _torchrun(tmp_path, str(plan), "-o", str(tmp_path / "run"))  # not quiet: the progress must be flushed
    _teardown_aborts(tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "exitcode" not in p.stderr, p.stderr[-3000:]  # torchrun names a failed rank's exit code
    assert [r["epoch"] for r in read_log(tmp_path / "run")] == ["1"]
    assert (tmp_path / "run" / "model.pt").is_file()
    assert sorted(os.listdir(tmp_path / "marks")) == ["rank0", "rank1"]  # atexit handlers ran on both ranks
    assert "epoch 1/1" in p.stderr + p.stdout  # rank 0's progress reached the terminal


def test_a_rank_that_fails_keeps_its_exit_code_and_message(tmp_path):
    """The first rank to fail exits with medseg's code for bad input and its one line; torchrun then stops the
    other rank (SIGTERM, exit 143) if that one has not failed the same way yet."""
    plan = tiny_plan(tmp_path, max_epochs=1)
    text = plan.read_text()
    plan.write_text(text.replace(str(tmp_path / "ds"), str(tmp_path / "missing")))
    assert plan.read_text() != text
    p = _torchrun(tmp_path, str(plan), "-o", str(tmp_path / "run"), "-q")
    _teardown_aborts(tmp_path)
    assert p.returncode != 0
    root = p.stderr.split("Root Cause (first observed failure)")[-1]
    found = re.search(r"rank\s*:\s*(\d)", root)
    assert found, p.stderr[-3000:]
    rank = found.group(1)
    assert re.search(r"exitcode\s*:\s*2\b", root), p.stderr[-3000:]
    assert not re.search(r"exitcode\s*:\s*-6", p.stderr), p.stderr[-3000:]
    assert "medseg: error:" in p.stderr and "missing: dataset folder does not exist" in p.stderr, p.stderr[-3000:]
    assert f"rank{rank}" in os.listdir(tmp_path / "marks")
    assert not (tmp_path / "run").exists()

