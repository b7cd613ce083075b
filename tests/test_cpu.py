"""CPU cores as a process sees them (medseg.cpu): affinity, a container's quota (cgroup v2 / v1) and the use of the
allowed cores over a short window, on fake /proc/stat and cgroup files."""

from __future__ import annotations

import pytest

from medseg import cpu


def _stat(*per_cpu: tuple[int, int, int]) -> str:
    """A /proc/stat text: the aggregate line, then one line per CPU from (user, idle, iowait) ticks."""
    lines = [f"cpu  {sum(u for u, _, _ in per_cpu)} 0 0 {sum(i for _, i, _ in per_cpu)} "
             f"{sum(w for _, _, w in per_cpu)} 0 0 0 0 0"]
    lines += [f"cpu{k} {u} 0 0 {i} {w} 0 0 0 0 0" for k, (u, i, w) in enumerate(per_cpu)]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 5"]) + "\n"


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A 4-CPU host whose /proc/stat advances by ``after - before`` during each window; cgroup files absent
    unless written (``tmp_path / "cpu.max"``, ``tmp_path / "quota"``, ``tmp_path / "period"``)."""
    import time

    stat = tmp_path / "stat"
    monkeypatch.setattr(cpu, "PROC_STAT", stat)
    monkeypatch.setattr(cpu, "CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(cpu, "CFS", (tmp_path / "quota", tmp_path / "period"))
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (7.0, 7.0, 7.0))

    def make(before, after, allowed=(0, 1, 2, 3)):
        now = [list(t) for t in before]

        def sleep(s):  # every window sees the ticks go from before to after
            for t, b, a in zip(now, before, after):
                t[:] = [v + (y - x) for v, x, y in zip(t, b, a)]
            stat.write_text(_stat(*now))

        stat.write_text(_stat(*now))
        monkeypatch.setattr(time, "sleep", sleep)
        monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: set(allowed))

    return make


def test_busy_cores_counts_the_allowed_cpus_over_the_window(host):
    """CPU 0 fully busy, CPU 1 half idle and half iowait (not busy), CPUs 2 and 3 idle; the load average (which
    lags a minute behind) is not used."""
    before = [(0, 0, 0)] * 4
    after = [(100, 0, 0), (0, 50, 50), (0, 100, 0), (0, 100, 0)]
    host(before, after)
    assert cpu.busy_cores() == pytest.approx(1.0)
    assert cpu.free_cores() == 3
    host(before, after, allowed=(0, 1))  # a cpuset of two: one busy, one free
    assert cpu.busy_cores() == pytest.approx(1.0) and cpu.usable_cores() == 2 and cpu.free_cores() == 1
    host(before, [(100, 0, 0), (100, 0, 0), (0, 100, 0), (0, 100, 0)], allowed=(0, 1))
    assert cpu.free_cores() == 1  # at least one


def test_unreadable_stat_falls_back_to_the_load_average(host, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "PROC_STAT", tmp_path / "missing")
    monkeypatch.setattr(cpu.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert cpu.busy_cores(0.0) == 1.5 and cpu.free_cores(0.0) == 2  # round(4 - 1.5)


@pytest.mark.parametrize("files, quota", [
    ({}, None),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"quota": "-1\n", "period": "100000\n"}, None),  # cgroup v1 without a quota
    ({"quota": "50000\n", "period": "100000\n"}, 0.5),
])
def test_container_quota(host, tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert cpu.cpu_quota() == quota
    # docker --cpus 1.5 on a 4-CPU host: 2 threads; 0.5: 1; none: the 4 CPUs
    assert cpu.usable_cores() == {None: 4, 2.0: 2, 1.5: 2, 0.5: 1}[quota]
    host([(0, 0, 0)] * 4, [(0, 100, 0)] * 4)  # an idle host: the quota alone limits the threads
    assert cpu.free_cores() == cpu.usable_cores()


def test_torch_threads_capped_by_the_quota_unless_set(host, tmp_path, monkeypatch):
    import torch

    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one core's worth
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cpu.cap_torch_threads() == 3  # the user's setting stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert cpu.cap_torch_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cell_training_without_threads_takes_the_free_cores(tmp_path, monkeypatch):
    import torch

    from conftest import linked_cell_dataset
    from medseg.cells import train

    linked_cell_dataset(tmp_path / "ds", 3)
    seen, before = [], torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "free_cores", lambda: seen.append(1) or 1)
    used, real = [], train.cell_loss  # the threads the step ran with, read inside it: the caller's come back after
    monkeypatch.setattr(train, "cell_loss", lambda *a, **k: used.append(torch.get_num_threads()) or real(*a, **k))
    try:
        cfg = train.CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=1, max_minutes=5,
                                    tune_fraction=0.0)
        torch.set_num_threads(3)
        train.train_cells(tmp_path / "ds", tmp_path / "run", cfg, progress=False)
        assert seen == [1] and used == [1] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_cell_counting_keeps_omp_num_threads(tmp_path, monkeypatch):
    """A scheduler's OMP_NUM_THREADS (docker -e, Slurm) is kept by the cell commands, as by training and
    prediction: counting on an idle 2-core machine with OMP_NUM_THREADS=1 ran with 2 threads."""
    import torch

    from conftest import data_path, linked_cell_dataset
    from medseg.cells.count import count_cells
    from medseg.cells.train import CellTrainConfig, train_cells

    linked_cell_dataset(tmp_path / "ds", 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=1, base_filters=4, max_steps=1, max_minutes=5, threads=1,
                          tune_fraction=0)
    run = train_cells(tmp_path / "ds", tmp_path / "run", cfg, progress=False)
    image = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0]
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu, "free_cores", lambda: 2)  # an idle 2-core machine
    from medseg.cells import count as count_module

    seen = []  # the threads the counting ran with, read inside it: the caller's are set back on return
    real = count_module._count_one
    monkeypatch.setattr(count_module, "_count_one",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    try:
        for env, want in (("1", 1), ("", 2), ("bad", 2)):
            monkeypatch.setenv("OMP_NUM_THREADS", env)
            torch.set_num_threads(3)
            count_cells(image, tmp_path / f"out{want}{env}", model=run, progress=False)
            assert seen.pop() == want and not seen, env
            assert torch.get_num_threads() == 3, env
    finally:
        torch.set_num_threads(before)


def test_requested_threads_order(monkeypatch):
    monkeypatch.setattr(cpu, "free_cores", lambda: 5)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu.requested_threads(3) == 3 and cpu.requested_threads() == 2
    for env in ("0", "-1", "x", " "):
        monkeypatch.setenv("OMP_NUM_THREADS", env)
        assert cpu.requested_threads() == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu.requested_threads(None) == 5
