"""Calling the Python API from several threads of one process (a notebook's thread pool, a web server, a GUI).

Torch's global generator, the warning filters and the terminal are the process's, not a thread's (torch's thread
count is each thread's own in its OpenMP builds: medseg.cpu.keeps_torch_threads).
Each test forces the interleaving that broke with events (not sleeps and luck): one call starts, a second starts
and overlaps it, the first ends, then the second; afterwards the caller's state must be its own and each call's
result what it is when run alone.
"""

from __future__ import annotations

import random
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from conftest import data_path
from test_predict import make_model

WAIT = 60  # seconds: only a deadlock takes this long


def overlapping(first, second, first_started: threading.Event, first_returned: threading.Event):
    """Run ``first`` in one thread and, once it is under way (``first_started``), ``second`` in another, which is to
    wait for ``first_returned``: set here once ``first`` has returned, so that the first call ends first."""
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(first)
        assert first_started.wait(WAIT), "the first call did not start"
        b = pool.submit(second)
        ra = a.result(timeout=WAIT)
        first_returned.set()
        return ra, b.result(timeout=WAIT)


def test_overlapping_model_loads_leave_the_torch_generator_alone(tmp_path, monkeypatch):
    """Building the network inside ``fork_rng`` drew its initial weights and restored the state it saw: the second
    load saw the first one's draws and restored them last, so the caller's stream was moved (and a training run in
    another thread would have had its stream rewound)."""
    import medseg.train.artifact as artifact

    model = make_model(tmp_path / "model.pt")
    real = artifact.build_from_plan
    a_built, b_built, a_done = threading.Event(), threading.Event(), threading.Event()
    first_thread = []

    def build(plan, **kw):
        net = real(plan, **kw)  # draws its initial weights from the global generator, unless built without
        if not first_thread:
            first_thread.append(threading.current_thread())
        if threading.current_thread() is first_thread[0]:
            a_built.set()
            assert b_built.wait(WAIT)
        else:
            b_built.set()
            assert a_done.wait(WAIT)
        return net

    monkeypatch.setattr(artifact, "build_from_plan", build)
    art = artifact.load_model(model)
    torch.manual_seed(123)
    torch.rand(3)
    before = torch.get_rng_state()
    nets = overlapping(art.build, art.build, a_built, a_done)
    assert torch.equal(torch.get_rng_state(), before), "a model load moved the caller's random stream"
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        alone = real(art.plan, deep_supervision=False)
        alone.load_state_dict(art.state_dict)
        expected = alone.eval()(x)
        for net in nets:
            assert torch.allclose(net(x), expected, atol=1e-6)


def test_seeded_runs_in_two_threads_run_one_after_the_other():
    """Training seeds the global generator and draws from it; a second run in another thread seeded it again in the
    middle of the first, whose remaining draws (and so its weights) then differed from a run alone."""
    from medseg.cpu import keeps_global_rngs

    a_drew, b_drew, a_done = threading.Event(), threading.Event(), threading.Event()

    def run(seed: int, started: threading.Event | None, wait_for: threading.Event | None):
        torch.manual_seed(seed)
        random.seed(seed)
        draws = [torch.rand(2), random.random()]
        if started is not None:
            started.set()
        if wait_for is not None:
            wait_for.wait(2)  # the second run cannot start while this one holds the generators: don't wait long
        return draws + [torch.rand(2), random.random()]

    alone = [run(0, None, None), run(1, None, None)]
    torch.rand(3)
    before = torch.get_rng_state(), random.getstate()
    first = keeps_global_rngs(lambda: run(0, a_drew, b_drew))
    second = keeps_global_rngs(lambda: run(1, b_drew, a_done))
    together = overlapping(first, second, a_drew, a_done)
    for got, want in zip(together, alone):
        assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2]) and got[1::2] == want[1::2]
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_overlapping_dicom_loads_give_the_caller_its_warning_filters_back(monkeypatch):
    """Each DICOM read silenced pydicom's warnings with ``catch_warnings``, which restores the filter list it found:
    the second read found the first's "ignore" and restored it last, silencing every warning of the caller's program
    for good."""
    import medseg.io.dicom_pixels as pixels
    from medseg.io.dicom import load_series

    series = data_path("dicom", "dcmqi_segmentations", "ct-3slice")
    alone = load_series(series).array
    real = pixels._decode
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    first_thread = []

    def decode(*args):
        if not first_thread:
            first_thread.append(threading.current_thread())
        if threading.current_thread() is first_thread[0]:
            a_in.set()
            assert b_in.wait(WAIT)
        else:
            b_in.set()
            assert a_done.wait(WAIT)
        return real(*args)

    monkeypatch.setattr(pixels, "_decode", decode)
    with warnings.catch_warnings():  # the caller's own filters, restored for the tests after this one
        warnings.simplefilter("always", UserWarning)
        before = list(warnings.filters)
        a, b = overlapping(lambda: load_series(series), lambda: load_series(series), a_in, a_done)
        assert warnings.filters == before, "a DICOM read left the caller's warnings silenced"
    assert np.array_equal(a.array, alone) and np.array_equal(b.array, alone)


def test_progress_bars_are_drawn_by_the_main_thread_only(monkeypatch):
    """Two calls in worker threads each drew a live bar on the same terminal lines, over each other."""
    import sys

    from medseg.progress import shown

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert shown(True)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(shown, True).result(timeout=WAIT) is False
