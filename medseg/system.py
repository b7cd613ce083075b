"""The memory this process may use: physical RAM, and the container's limit (cgroup v2 or v1) where one is set.

A container sees the host's RAM in ``/proc/meminfo`` and ``sysconf``, but is killed when its cgroup goes over its
memory limit: the planner's budget and the training cache's room for cases in RAM both take that limit into
account. The paths are module constants so that tests can point them at fake files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["CgroupMemory", "allocatable_memory", "available_memory", "cgroup_memory", "total_ram_bytes"]

MEMINFO = Path("/proc/meminfo")
# (folder, limit file, usage file, memory.stat key of reclaimable inactive page cache), v2 first; the first
# folder with a readable limit file is the process's cgroup (containers see their own cgroup at that root)
CGROUPS = ((Path("/sys/fs/cgroup"), "memory.max", "memory.current", "inactive_file"),
           (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))


class CgroupMemory(NamedTuple):
    """The container's memory limit and what its cgroup uses now, in bytes (``usage`` None where unreadable)."""

    limit: int
    usage: int | None


def cgroup_memory() -> CgroupMemory | None:
    """The memory limit of this process's cgroup and its usage, or ``None`` where no limit is set.

    The usage leaves out the inactive page cache (``memory.stat``), which the kernel reclaims before it kills
    anything (the working set, as ``docker stats`` and Kubernetes count it): a disk cache read through once must
    not look like memory in use.

    Examples
    --------
    >>> m = cgroup_memory()
    >>> m is None or m.limit > 0
    True
    """
    for folder, limit_name, usage_name, inactive_key in CGROUPS:
        try:
            text = (folder / limit_name).read_text().strip()
        except OSError:
            continue
        if not text.isdigit():  # "max" (v2): no limit; v1 writes a huge number instead, left to min() with RAM
            return None
        return CgroupMemory(int(text), _usage(folder, usage_name, inactive_key))
    return None


def _usage(folder: Path, usage_name: str, inactive_key: str) -> int | None:
    try:
        usage = int((folder / usage_name).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key and value.strip().isdigit():
                return max(0, usage - int(value))
    except OSError:
        pass
    return usage


def total_ram_bytes() -> int | None:
    """Physical RAM of this machine, or the container's memory limit (cgroup v2 or v1) when that is lower.

    Examples
    --------
    >>> total = total_ram_bytes()
    >>> total is None or total > 0
    True
    """
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    cgroup = cgroup_memory()
    if cgroup is not None:
        total = cgroup.limit if total is None else min(total, cgroup.limit)
    return total


def available_memory() -> int:
    """Bytes of RAM available to new allocations: ``MemAvailable`` on Linux, and no more than the container's
    limit minus what its cgroup uses (without reclaimable page cache) where a limit is set.

    Examples
    --------
    >>> available_memory() >= 0
    True
    """
    available = _meminfo_available()
    cgroup = cgroup_memory()
    if cgroup is not None:  # usage unreadable: at least never more than the limit
        available = min(available, max(0, cgroup.limit - (cgroup.usage or 0)))
    return available


def allocatable_memory() -> int:
    """Bytes this process can still allocate: :func:`available_memory`, and no more than the room left under its
    own address-space or data limits (``ulimit -v``/``-d``, ``RLIMIT_AS``/``RLIMIT_DATA``, set by batch schedulers
    and by services that sandbox untrusted inputs), where one is set.

    What a reader checks a header's claimed size against before it allocates the voxels.

    Examples
    --------
    >>> 0 <= allocatable_memory() <= available_memory()
    True
    """
    room = available_memory()
    try:
        import resource
    except ImportError:  # not POSIX: no such limits
        return room
    used = _vm_sizes()
    for name, key in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        soft = resource.getrlimit(getattr(resource, name))[0] if hasattr(resource, name) else resource.RLIM_INFINITY
        if soft != resource.RLIM_INFINITY and soft >= 0:
            room = min(room, max(0, soft - used.get(key, 0)))
    return room


def _vm_sizes() -> dict[str, int]:
    """The process's virtual size (``VmSize``, what RLIMIT_AS counts) and data size (``VmData``, what RLIMIT_DATA
    counts) in bytes; empty where unknown (a limit is then taken as the whole room)."""
    sizes = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmSize", "VmData"):
                    sizes[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return sizes


def _meminfo_available() -> int:
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: never spill on this account
