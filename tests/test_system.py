"""Memory as a container sees it (medseg.system): the cgroup's limit and usage on fake cgroup v2 / v1 files."""

from __future__ import annotations

import os

import pytest

from medseg import system

GiB = 1 << 30


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """``machine(available=..., v2=(max, current, inactive_file), v1=(...))``: fake /proc/meminfo and cgroup
    files (a None value leaves that file out) that medseg.system reads instead of the real ones."""
    v2, v1 = tmp_path / "cgroup", tmp_path / "cgroup" / "memory"
    monkeypatch.setattr(system, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(system, "CGROUPS", ((v2, "memory.max", "memory.current", "inactive_file"),
                                            (v1, "memory.limit_in_bytes", "memory.usage_in_bytes",
                                             "total_inactive_file")))

    def make(available: int, v2_files=None, v1_files=None):
        (tmp_path / "meminfo").write_text(f"MemTotal: {64 * GiB // 1024} kB\nMemAvailable: {available // 1024} kB\n")
        v1.mkdir(parents=True, exist_ok=True)
        for old in [*v2.glob("memory.*"), *v1.glob("memory.*")]:  # the previous call's machine
            old.unlink()
        for folder, names, stat_key, values in ((v2, ("memory.max", "memory.current"), "inactive_file", v2_files),
                                                (v1, ("memory.limit_in_bytes", "memory.usage_in_bytes"),
                                                 "total_inactive_file", v1_files)):
            if values is None:
                continue
            limit, usage, inactive = values
            (folder / names[0]).write_text(f"{limit}\n")
            if usage is not None:
                (folder / names[1]).write_text(f"{usage}\n")
            if inactive is not None:
                (folder / "memory.stat").write_text(f"anon 123\nactive_file 5\n{stat_key} {inactive}\n")

    return make


def physical() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_v2_limit_minus_working_set(machine):
    """Available: the limit minus the cgroup's usage without its inactive page cache, when below MemAvailable."""
    machine(100 * GiB, v2_files=(4 * GiB, 3 * GiB, GiB))
    assert system.available_memory() == 2 * GiB
    assert system.total_ram_bytes() == min(physical(), 4 * GiB)
    assert system.cgroup_memory() == (4 * GiB, 2 * GiB)


def test_v2_without_limit_is_the_machine(machine):
    machine(10 * GiB, v2_files=("max", 3 * GiB, 0), v1_files=(GiB, 0, 0))  # v2 decides: v1 is not read
    assert system.cgroup_memory() is None
    assert system.available_memory() == 10 * GiB and system.total_ram_bytes() == physical()


def test_v1_limit_and_its_huge_no_limit(machine):
    machine(10 * GiB, v1_files=(2 * GiB, 3 * GiB // 2, 0))
    assert system.available_memory() == GiB // 2
    machine(10 * GiB, v1_files=(9223372036854771712, 3 * GiB, 0))  # v1's "no limit"
    assert system.available_memory() == 10 * GiB and system.total_ram_bytes() == physical()


def test_meminfo_lower_usage_over_limit_and_unreadable_usage(machine):
    machine(GiB, v2_files=(8 * GiB, GiB, None))  # no memory.stat: the whole usage counts
    assert system.available_memory() == GiB  # the machine has less left than the container may still take
    machine(10 * GiB, v2_files=(2 * GiB, 3 * GiB, 0))
    assert system.available_memory() == 0
    machine(10 * GiB, v1_files=(2 * GiB, None, None))
    assert system.cgroup_memory() == (2 * GiB, None) and system.available_memory() == 2 * GiB


def test_no_cgroup_files(machine):
    machine(5 * GiB)
    assert system.cgroup_memory() is None and system.available_memory() == 5 * GiB


def test_training_cache_and_planner_use_it(machine, monkeypatch):
    """The training cache's room for cases in RAM and the planner's budget respect the container's limit."""
    from medseg.plan import planner
    from medseg.train import cache, trainer

    machine(100 * GiB, v2_files=(4 * GiB, 3 * GiB, GiB))
    assert cache.available_memory() == trainer.available_memory() == 2 * GiB
    if physical() > 4 * GiB:
        assert planner.default_memory_gb("cpu") == pytest.approx(max(0.5, planner.RAM_SHARE * 4 * GiB / 1e9))
