"""Shared fixtures: where the real data is, and running the CLI in-process or as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data")).resolve()


def data_path(*parts: str) -> Path:
    """Path inside the real data folder; skips the test (with the reason) when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} is missing (set MEDSEG_DATA to the shared data folder)")
    return p


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_path()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """Run ``medseg ARGS`` in this process (fast); returns exit code, stdout, stderr."""
    from medseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def run_cli_subprocess(*args: str, timeout: float = 600, env: dict | None = None) -> CliResult:
    """Run ``python -m medseg ARGS`` as a real process (for tracebacks, exit codes, signals)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    p = subprocess.run([sys.executable, "-m", "medseg", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=full_env, cwd=REPO)
    return CliResult(p.returncode, p.stdout, p.stderr)


def assert_clean_error(res: CliResult, *needles: str, code: int = 2) -> None:
    """A bad-input answer: the exit code, one line on stderr naming the problem, no traceback."""
    assert res.code == code, f"exit {res.code}, stderr={res.err!r}"
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {res.err!r}"
    assert "Traceback" not in res.err
    for n in needles:
        assert n.lower() in lines[0].lower(), f"{n!r} not in {lines[0]!r}"


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """medseg must never need the network at run time (only ``medseg data fetch`` downloads, when asked): any
    connection from the test process to a non-loopback address fails the test that made it."""
    import socket

    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address):
        host = address[0] if isinstance(address, tuple) else None  # a path: a unix socket
        if host is not None and host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
            raise AssertionError(f"network access at run time: connect to {address!r}")

    socket.socket.connect = lambda self, address: (guard(address), connect(self, address))[1]
    socket.socket.connect_ex = lambda self, address: (guard(address), connect_ex(self, address))[1]
    yield
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored after: on a shared, oversubscribed CPU two OpenMP threads
    were measured 10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config):
    """Ctrl-C is Ctrl-C in the test process: pytest-xdist's workers (``bash .ci/test -n 2``) ignore SIGINT, and an
    ignored signal stays ignored in every process a test starts, so the interrupt tests would see no interrupt."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests (full-budget training) run only with MEDSEG_SLOW=1; CI runs bounded versions."""
    if os.environ.get("MEDSEG_SLOW", "0") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow (full-budget) test: set MEDSEG_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def linked_stack_dataset(dst: Path) -> Path:
    """A 3D cell dataset folder: the real nuclei stack (``nuclei_stardist``) linked twice, as training image ``a``
    and validation image ``b``; returns the source folder."""
    import json

    src = data_path("nuclei_stardist")
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    for cid in ("a", "b"):
        (dst / "images" / f"{cid}.tif").symlink_to(src / "img3d.tif")
        (dst / "labels" / f"{cid}.tif").symlink_to(src / "mask3d.tif")
    (dst / "split.json").write_text(json.dumps({"train": ["a"], "val": ["b"]}))
    return src


def linked_cell_dataset(dst: Path, n: int) -> list[str]:
    """A cell dataset folder of ``n`` real DSB2018 images + labels, linked (not copied); the last one is validation."""
    import json

    src = data_path("dsb2018_fluo")
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    ids = [p.stem for p in sorted((src / "images").glob("*.png"))[:n]]
    for cid in ids:
        (dst / "images" / f"{cid}.png").symlink_to(src / "images" / f"{cid}.png")
        (dst / "labels" / f"{cid}.tif").symlink_to(src / "labels" / f"{cid}.tif")
    (dst / "split.json").write_text(json.dumps({"train": ids[:-1], "val": ids[-1:]}))
    return ids


def fake_batch_clock(monkeypatch, seconds: float = 10.0) -> list[float]:
    """The semantic trainer's clock made to advance ``seconds`` per batch drawn (time budgets without waiting);
    returns the clock (a one-item list, to set it back)."""
    from types import SimpleNamespace

    from medseg.train import trainer

    clock = [0.0]
    monkeypatch.setattr(trainer, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    real = trainer.sample_batch

    def tick(*a, **kw):
        clock[0] += seconds
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "sample_batch", tick)
    return clock
