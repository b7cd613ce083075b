"""The CPU cores this process may use, and how many of them are free now.

A container sees every core of its host: ``os.cpu_count()``, torch's default thread count and the load average all
count them, while its CPU quota (``docker run --cpus 2``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) gives it
two cores' worth of time, and a cpuset (``--cpuset-cpus``) some of the cores only. More threads than that make every
step slower (threads spin waiting for each other). The paths are module constants so that tests can point them at
fake files. The helpers at the end give a caller (a notebook, a script) its torch threads, random streams and warning
filters back after an API call that sets them for its own work, also where calls overlap in several threads.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import warnings
from pathlib import Path

__all__ = ["allowed_cpus", "built_without_drawing", "busy_cores", "cap_torch_threads", "cpu_quota", "free_cores",
           "ignored_warnings", "keeps_global_rngs", "keeps_torch_threads", "usable_cores"]

PROC_STAT = Path("/proc/stat")
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # v2: "<quota> <period>" in µs, or "max <period>"
CFS = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))  # v1: -1 = none


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; all of them where the platform has none)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cpu_quota() -> float | None:
    """The container's CPU quota in cores' worth of time (2.0 for ``docker run --cpus 2``), or None where unlimited.

    Examples
    --------
    >>> q = cpu_quota()
    >>> q is None or q > 0
    True
    """
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota, period = (int(p.read_text().strip()) for p in CFS)
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may use: its allowed CPUs, no more than its container's quota (rounded; at least 1).

    Examples
    --------
    >>> 1 <= usable_cores() <= len(allowed_cpus())
    True
    """
    n = len(allowed_cpus())
    quota = cpu_quota()
    return max(1, min(n, int(quota + 0.5)) if quota else n)


def _cpu_times(cpus: set[int]) -> tuple[int, int]:
    """The time since boot of the CPUs ``cpus`` and their idle time (idle + iowait), in clock ticks
    (``/proc/stat``'s per-CPU lines; fields user .. steal, guest time being counted in user)."""
    total = idle = 0
    with open(PROC_STAT) as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            fields = [int(v) for v in values[:8]]
            total += sum(fields)
            idle += fields[3] + fields[4]
    return total, idle


def busy_cores(window_s: float = 0.25, cpus: set[int] | None = None) -> float:
    """How many of ``cpus`` (default: the allowed ones) other processes keep busy: their use over the next
    ``window_s`` seconds (this process waits meanwhile), or, where ``/proc/stat`` cannot be read, the 1-minute load
    average.

    The load average lags: for a minute after a heavy process ends it still counts it, so a run started right after
    another took it for a busy core and trained on one thread of two for its whole length.

    Examples
    --------
    >>> 0.0 <= busy_cores(0.05) <= len(allowed_cpus())
    True
    """
    cpus = allowed_cpus() if cpus is None else cpus
    try:
        total0, idle0 = _cpu_times(cpus)
        time.sleep(window_s)
        total1, idle1 = _cpu_times(cpus)
    except (OSError, ValueError, IndexError):
        total1 = total0 = 0
    if total1 > total0:
        return min(float(len(cpus)), max(0.0, len(cpus) * (1.0 - (idle1 - idle0) / (total1 - total0))))
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def free_cores(window_s: float = 0.25) -> int:
    """Threads to use now: the allowed CPUs that are not busy, no more than :func:`usable_cores` (at least 1).

    Examples
    --------
    >>> 1 <= free_cores(0.05) <= usable_cores()
    True
    """
    cpus = allowed_cpus()
    return max(1, min(usable_cores(), int(round(len(cpus) - busy_cores(window_s, cpus)))))


def requested_threads(threads: int | None = None) -> int:
    """The torch threads a cell command runs with: ``threads`` (``--threads``), else ``OMP_NUM_THREADS`` where it is
    a positive whole number (what a scheduler's job or ``docker -e`` sets, and training and prediction keep:
    :func:`cap_torch_threads`), else :func:`free_cores`.

    Examples
    --------
    >>> requested_threads(3)
    3
    """
    if threads:
        return int(threads)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return free_cores()


def cap_torch_threads() -> int:
    """Lower torch's thread count to :func:`usable_cores` where a container's quota or cpuset makes them fewer than
    torch counts (it counts the host's cores), unless ``OMP_NUM_THREADS`` sets it; returns the count."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), usable_cores()))
    return torch.get_num_threads()


def keeps_torch_threads(fn):
    """Decorator: ``fn`` may set torch's thread count for its own work (``--threads``, a plan's ``num_threads``,
    :func:`cap_torch_threads`), and the caller's count is set back when it returns or raises: a notebook or script
    that calls medseg keeps its own setting. Where torch was not imported before the call there is no setting to
    keep.

    Calls from several threads at once are safe: in torch's OpenMP builds (the wheels for Linux, macOS and Windows)
    the count is each thread's own once that thread has used it (this decorator reads it first), so each call sets
    and restores the count of its own thread only. A thread started later takes the count last set by any thread.

    Examples
    --------
    >>> import torch
    >>> n = torch.get_num_threads()
    >>> keeps_torch_threads(lambda: torch.set_num_threads(n + 1))()
    >>> torch.get_num_threads() == n
    True
    """
    @functools.wraps(fn)
    def call(*args, **kwargs):
        torch = sys.modules.get("torch")  # not imported here: cell counting without a model does not need it
        n = torch.get_num_threads() if torch is not None else None
        try:
            return fn(*args, **kwargs)
        finally:
            if n is not None and torch.get_num_threads() != n:
                torch.set_num_threads(n)
    return call


# held for a whole seeded run: two runs at once would interleave their draws on the one global generator, and each
# run's restore rewind the other's stream
_RNG_LOCK = threading.RLock()


def keeps_global_rngs(fn):
    """Decorator: ``fn`` seeds torch's global generator and python's ``random`` for a reproducible run (the network's
    initial weights are drawn from torch's), and the caller's states of both are set back when it returns or raises:
    a script's own random stream goes on as if training had not drawn from it, and the run itself draws exactly what
    it did before. CUDA generators, which ``torch.manual_seed`` seeds too, are not set back.

    Not thread-safe by nature, so serialised: calls from several threads run one after another (a process-wide
    lock), each reproducible and each giving back the state it found. The caller's own threads must not draw from
    these generators meanwhile (they would shift the run's draws, and be rewound when it ends).

    Examples
    --------
    >>> import torch
    >>> s = torch.get_rng_state()
    >>> _ = keeps_global_rngs(lambda: torch.manual_seed(0))()
    >>> torch.equal(torch.get_rng_state(), s)
    True
    """
    import random

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with _RNG_LOCK:
            torch = sys.modules.get("torch")  # imported by the call if not before: its generator is then the call's
            saved = torch.get_rng_state() if torch is not None else None, random.getstate()
            try:
                return fn(*args, **kwargs)
            finally:
                if saved[0] is not None:
                    torch.set_rng_state(saved[0])
                random.setstate(saved[1])
    return call


def built_without_drawing(build):
    """The module ``build()`` makes, built on the meta device and given uninitialised CPU storage: its initial
    weights are not drawn, for a network whose weights are loaded at once (every parameter and buffer: load
    strictly). Unlike a build inside ``torch.random.fork_rng``, the global generator is not touched, so a call from
    one thread does not rewind another thread's random stream.

    Examples
    --------
    >>> import torch
    >>> s = torch.get_rng_state()
    >>> built_without_drawing(lambda: torch.nn.Linear(2, 3)).weight.shape, torch.equal(torch.get_rng_state(), s)
    (torch.Size([3, 2]), True)
    """
    import torch

    with torch.device("meta"):
        net = build()
    return net.to_empty(device="cpu")


# the warning filters are the process's: overlapping catch_warnings blocks of several threads restored them out of
# order and left "ignore" installed for good; the blocks share one saved list, the caller's, instead
_WARN_LOCK = threading.Lock()
_ignoring: list[type[Warning]] = []
_caller_filters: list | None = None


@contextlib.contextmanager
def ignored_warnings(category: type[Warning] = Warning):
    """``warnings.catch_warnings()`` with ``simplefilter("ignore", category)``, safe where medseg calls overlap in
    several threads: the first block to open saves the caller's filters and the last to close sets them back (with
    ``catch_warnings``, documented as not thread-safe, each block restored the list it found, so the caller kept
    "ignore" when blocks ended out of order). The filters are process-wide: while a block is open, the caller's other
    threads' warnings of ``category`` are silenced too, and a filter they add meanwhile is dropped when the last block
    closes.

    Examples
    --------
    >>> import warnings
    >>> before = list(warnings.filters)
    >>> with ignored_warnings(UserWarning):
    ...     warnings.warn("not shown")
    >>> warnings.filters == before
    True
    """
    global _caller_filters
    with _WARN_LOCK:
        if not _ignoring:
            _caller_filters = warnings.filters
        _ignoring.append(category)
        _install_filters()
    try:
        yield
    finally:
        with _WARN_LOCK:
            _ignoring.remove(category)
            if _ignoring:
                _install_filters()
            else:
                warnings.filters = _caller_filters
                getattr(warnings, "_filters_mutated", lambda: None)()  # as catch_warnings does: per-module caches
                _caller_filters = None


def _install_filters() -> None:
    """The caller's filters, with "ignore" first for each open block's category (a new list: the caller's is kept)."""
    warnings.filters = list(_caller_filters)
    for category in dict.fromkeys(_ignoring):
        warnings.simplefilter("ignore", category)
