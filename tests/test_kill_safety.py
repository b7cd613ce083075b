"""What a killed run leaves behind (SIGKILL: the OOM killer, a pre-empted job, a power cut; SIGHUP: a closed
terminal) and what a full disk makes of a write: no stage of a dead run kept for good, no commit cut in two, one
line naming the output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, data_path

ENV = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO)}
CWD = Path(__file__).parent  # not the repository root, which ``python -c`` would put before PYTHONPATH


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=CWD)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_stage_of_a_killed_run_is_removed_by_the_next_one_and_a_live_one_is_kept(tmp_path):
    out = tmp_path / "out"
    killed = _python(f"""
        import os, signal
        from medseg.io.staging import staged_outputs
        with staged_outputs({str(out)!r}) as place:
            with place("a.nii.gz") as tmp:
                tmp.write_bytes(b"whole")
            with place("b.nii.gz") as tmp:
                tmp.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name.startswith(".medseg-stage.") for p in out.iterdir()] == [True]  # what SIGKILL leaves
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from medseg.io.staging import staged_outputs
        with staged_outputs({str(out)!r}) as place:
            with place("c.txt") as tmp:
                tmp.write_text("c")
            print("staged", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, cwd=CWD)
    try:
        assert live.stdout.readline().strip() == "staged"
        from medseg.io.staging import staged_outputs

        with staged_outputs(out) as place:
            for name in ("a.nii.gz", "b.nii.gz"):
                with place(name) as tmp:
                    tmp.write_text(name)
        stages = [p for p in out.iterdir() if p.name.startswith(".")]
        assert len(stages) == 1 and (stages[0] / "c.txt").read_text() == "c"  # the live run's stage, untouched
        live.communicate("\n", timeout=60)
    finally:
        live.kill()
    assert live.returncode == 0
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.nii.gz": "a.nii.gz", "b.nii.gz": "b.nii.gz",
                                                             "c.txt": "c"}


def test_a_count_killed_midway_then_rerun_equals_an_uninterrupted_count(tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    srcs = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[:4]
    for p in srcs:
        (images / p.name).symlink_to(p)
    cmd = [sys.executable, "-m", "medseg", "cells", "count", "-i", str(images), "--classical", "-o"]
    out, ref = tmp_path / "out", tmp_path / "ref"
    proc = subprocess.Popen(cmd + [str(out)], env=ENV, cwd=CWD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # killed once its stage holds an output
        if any(p.is_file() and not p.name.startswith(".") for p in out.glob(".medseg-stage*/*")):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the count finished before it could be killed"
    proc.kill()
    proc.communicate(timeout=60)
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]  # nothing under a final name
    for folder in (out, ref):
        done = subprocess.run(cmd + [str(folder)], env=ENV, cwd=CWD, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert _tree(out) == _tree(ref)  # the same files, byte for byte, and no stage of the killed run left
    assert len(_tree(ref)) == 3 * len(srcs) + 1


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_hangup_during_a_commit_waits_for_its_end_and_nohup_still_ignores_it():
    code = """
        import os, signal, sys, time
        from medseg.io.atomic import deferred_interrupts
        # as a terminal's job (the suite itself may run under nohup, whose ignored SIGHUP children inherit)
        signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[1:] == ["nohup"] else signal.SIG_DFL)
        with deferred_interrupts() as held:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            print("commit done", len(held), flush=True)
        print("after", flush=True)
        """
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                         env=ENV, cwd=CWD)
    assert run.returncode == -signal.SIGHUP and run.stdout == "commit done 1\n"  # delivered after the block
    nohup = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "nohup"], capture_output=True, text=True,
                           timeout=60, env=ENV, cwd=CWD)
    assert nohup.returncode == 0 and nohup.stdout == "commit done 0\nafter\n"  # ignored, and not held either


def test_a_write_error_wrapped_by_pydicom_is_one_line_with_the_system_words(tmp_path):
    """pydicom re-raises a failed write as an OSError holding the whole traceback in its text; the message of
    ``atomic_path`` says what the system said (here the file size limit of ``ulimit -f``)."""
    res = _python(f"""
        import resource
        import numpy as np
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian
        from medseg.errors import InputError
        from medseg.io.atomic import atomic_path
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.BitsAllocated = 8
        ds.PixelData = np.zeros(20000, np.uint8).tobytes()
        try:
            with atomic_path({str(tmp_path / "seg.dcm")!r}) as tmp:
                ds.save_as(tmp)
        except InputError as exc:
            print(exc)
        """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("\n") == 1 and "Traceback" not in res.stdout, res.stdout
    assert res.stdout.strip() == f"{tmp_path / 'seg.dcm'}: cannot write output ({os.strerror(27)})"
    assert os.listdir(tmp_path) == []


def test_a_writer_failing_on_a_full_disk_with_its_own_error_is_an_input_error(tmp_path, monkeypatch):
    """torch.save reports a short write as RuntimeError ("unexpected pos"), which used to reach the user as an
    internal error (exit 1) when a checkpoint filled the disk; with space left the error is left as it is."""
    from medseg.errors import InputError
    from medseg.io import atomic

    def fail(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 100864 vs 100756")

    real = os.statvfs
    free = {"blocks": 0}

    def statvfs(path):  # a file system with ``free`` blocks of 4 KiB available
        st = real(path)
        return os.statvfs_result((4096, 4096, st.f_blocks, free["blocks"], free["blocks"], *st[5:]))

    monkeypatch.setattr(atomic.os, "statvfs", statvfs)
    with pytest.raises(InputError, match="disk full") as info, atomic.atomic_path(tmp_path / "ckpt.pt") as tmp:
        fail(tmp)
    assert Path(info.value.path) == tmp_path / "ckpt.pt" and os.listdir(tmp_path) == []
    free["blocks"] = 1 << 20  # 4 GiB free: not a full disk, the writer's own error
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic.atomic_path(tmp_path / "ckpt.pt") as tmp:
        fail(tmp)
    assert os.listdir(tmp_path) == []


def test_a_killed_writes_temporary_file_is_removed_and_a_live_ones_is_kept(tmp_path):
    """atomic_path's temporary file outlives a SIGKILL (a checkpoint, a probability map, hidden and as large as the
    output); remove_stale_temporaries, which predict and both trainers call on their output folder, removes it,
    but not one a live process is writing, nor a user's files that merely look alike."""
    from medseg.io.atomic import remove_stale_temporaries

    killed = _python(f"""
        import os, signal
        from medseg.io.atomic import atomic_path
        with atomic_path({str(tmp_path / "checkpoint_latest.pt")!r}) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert killed.returncode == -signal.SIGKILL
    [left] = tmp_path.iterdir()
    assert left.name.startswith(".checkpoint_latest.pt.") and left.read_bytes() == b"half a checkpoint"
    (tmp_path / ".notes.tmp").write_text("mine")  # a user's, not atomic_path's naming
    (tmp_path / "a.12345678.tmp").write_text("mine")  # not hidden
    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from medseg.io.atomic import atomic_path
        with atomic_path({str(tmp_path / "case.nii.gz")!r}) as tmp:
            tmp.write_text("being written")
            print("writing", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, cwd=CWD)
    try:
        assert live.stdout.readline().strip() == "writing"
        assert remove_stale_temporaries(tmp_path, min_age_s=3600) == 0  # too young to be sure of
        assert remove_stale_temporaries(tmp_path, min_age_s=0) == 1
        names = sorted(p.name for p in tmp_path.iterdir())
        assert not left.exists() and len(names) == 3 and names[0].startswith(".case.nii.gz."), names  # the live one
        assert names[1:] == [".notes.tmp", "a.12345678.tmp"]
        live.communicate("\n", timeout=60)
    finally:
        live.kill()
    assert live.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "a.12345678.tmp", "case.nii.gz"]
