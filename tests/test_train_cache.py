"""Disk cache of preprocessed training cases (issue 4: train on datasets larger than RAM): the same batches as the
in-RAM cache, reuse, invalidation, recovery from a damaged cache, the 'auto' spill, and training through the CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, run_cli
from test_dataset import tiny_dataset
from test_train import TINY, read_log, tiny_plan


def _plan(tmp_path: Path, n: int = 3, **kw):
    from medseg.plan.plan import Plan

    return Plan.from_dict({**TINY, "dataset": str(tiny_dataset(tmp_path / "ds", n)), **kw})


def _cases(plan):
    from medseg.train.dataset import open_dataset

    return open_dataset(plan.dataset).cases


def _batches(plan, cases, n=6, seed=3):
    from medseg.train.cache import sample_size
    from medseg.train.sampling import sample_batch

    rng = np.random.default_rng(seed)
    return [sample_batch(cases, sample_size(plan), 2, rng, 0.5, squeeze_first=plan.spatial_dims == 2)
            for _ in range(n)]


@pytest.mark.parametrize("dims", [3, 2])
def test_disk_cache_gives_the_same_batches_as_ram(tmp_path, dims):
    """Memory-mapped cases yield exactly the patches (values, labels) the in-RAM cases yield, in 3D and 2D plans."""
    from medseg.train.cache import DiskCache, cache_cases, nbytes, on_disk

    kw = {"spatial_dims": 2, "patch_size": [24, 24]} if dims == 2 else {}
    plan = _plan(tmp_path, **kw)
    ram = cache_cases(plan, _cases(plan))
    disk = cache_cases(plan, _cases(plan), disk=DiskCache(tmp_path / "cache"), mode="disk", start=2)  # as rank 1 of 2
    assert not on_disk(ram) and on_disk(disk) and sum(nbytes(c) for c in disk) == 0
    for a, b in zip(ram, disk):
        assert a.image.shape == b.image.shape and a.label.shape == b.label.shape
        assert a.fg.keys() == b.fg.keys() and all(np.array_equal(a.fg[k], b.fg[k]) for k in a.fg)
    for (xa, ya), (xb, yb) in zip(_batches(plan, ram), _batches(plan, disk)):
        assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3


def test_disk_cache_is_reused_and_misses_when_plan_or_file_changes(tmp_path, monkeypatch):
    from medseg.train import cache as cache_mod
    from medseg.train.cache import DiskCache, cache_cases

    plan = _plan(tmp_path)
    disk = DiskCache(tmp_path / "cache")
    first = cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    calls = []
    real = cache_mod.preprocess_case

    def counting(p, case):
        calls.append(case.id)
        return real(p, case)

    monkeypatch.setattr(cache_mod, "preprocess_case", counting)
    again = cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    assert calls == [] and [c.id for c in again] == [c.id for c in first]  # all read back, none preprocessed

    plan.target_spacing = [1.0, 1.0, 2.0]  # another grid: other arrays
    cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    assert len(calls) == 3
    plan.target_spacing = [1.0, 1.0, 1.0]

    # a case file replaced (here: the link by a copy, then touched): that case alone is preprocessed again
    img = sorted((Path(plan.dataset) / "imagesTr").iterdir())[0]
    target = img.resolve()
    img.unlink()
    shutil.copyfile(target, img)
    calls.clear()
    cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    assert calls == [img.name.split(".")[0]]
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls.clear()
    cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    assert len(calls) == 1


@pytest.mark.parametrize("damage", ["truncate", "marker", "foreign"])
def test_damaged_cache_is_rebuilt_not_read(tmp_path, damage):
    """A truncated array, a missing completion marker or a marker of another key: preprocessed again."""
    from medseg.train.cache import DiskCache, cache_cases

    plan = _plan(tmp_path, n=2)
    disk = DiskCache(tmp_path / "cache")
    ram = cache_cases(plan, _cases(plan))
    cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    stem = sorted((tmp_path / "cache").glob("*.json"))[0].with_suffix("")
    if damage == "truncate":
        f = Path(f"{stem}.image.npy")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "marker":
        Path(f"{stem}.json").unlink()
    else:
        Path(f"{stem}.json").write_text('{"id": "someone_else", "key": "0"}')
    assert disk.get(stem.name.rsplit(".", 1)[0], stem.name.rsplit(".", 1)[1]) is None
    rebuilt = cache_cases(plan, _cases(plan), disk=disk, mode="disk")
    for (xa, ya), (xb, yb) in zip(_batches(plan, ram), _batches(plan, rebuilt)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_auto_keeps_cases_in_ram_until_the_limit_then_moves_all_to_disk(tmp_path):
    from medseg.train.cache import DiskCache, cache_cases, nbytes, on_disk

    plan = _plan(tmp_path)
    disk = DiskCache(tmp_path / "cache")
    ram = cache_cases(plan, _cases(plan), disk=disk, mode="auto", limit=1e12)
    assert not on_disk(ram) and not (tmp_path / "cache").exists()  # nothing written while it fits
    one = nbytes(ram[0])
    spilled = cache_cases(plan, _cases(plan), disk=disk, mode="auto", limit=1.5 * one)
    assert all(nbytes(c) == 0 for c in spilled)  # the second case passed the limit: all three on disk
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    for (xa, ya), (xb, yb) in zip(_batches(plan, ram), _batches(plan, spilled)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_from_the_disk_cache_equals_training_from_ram(tmp_path):
    """Same plan and seed, ``--cache disk`` vs ``--cache memory``: the same losses and validation Dice; the disk
    run writes its cache in RUN/cache (or --cache-dir) and leaves the dataset folder as it was."""
    plan = tiny_plan(tmp_path, max_epochs=2)
    before = sorted(str(p) for p in (tmp_path / "ds").rglob("*"))
    a = run_cli("train", plan, "-o", tmp_path / "ram", "--cache", "memory", "-q")
    b = run_cli("train", plan, "-o", tmp_path / "disk", "--cache", "disk", "--cache-dir", tmp_path / "shared", "-q")
    assert a.code == 0 and b.code == 0, a.err + b.err
    assert "on disk" not in a.out and f"preprocessed cases on disk: {tmp_path / 'shared'}" in b.out
    ra, rb = read_log(tmp_path / "ram"), read_log(tmp_path / "disk")
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb] == ["2", "4"]
    for x, y in zip(ra, rb):
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-5)
        assert float(x["val_mean"]) == pytest.approx(float(y["val_mean"]), abs=1e-6)
    assert len(list((tmp_path / "shared").glob("*.json"))) == 3 and not (tmp_path / "ram" / "cache").exists()
    assert sorted(str(p) for p in (tmp_path / "ds").rglob("*")) == before
    assert "cache: disk" in (tmp_path / "disk" / "plan.yaml").read_text()


def test_bad_cache_option_is_a_clean_error(tmp_path):
    plan = tiny_plan(tmp_path)
    assert_clean_error(run_cli("train", plan, "-o", tmp_path / "r", "--cache", "ssd"), "--cache ssd")
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(plan.read_text() + "cache: tape\n")
    assert_clean_error(run_cli("train", bad, "-o", tmp_path / "r2"), "cache 'tape'")
