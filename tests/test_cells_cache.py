"""Disk cache of the cell trainer's training pairs (datasets larger than RAM): the same pairs and batches as in
RAM, reuse without reading the images again, invalidation, recovery from damage, the 'auto' spill, the held-out
blocks of 3D stacks, and the CLI (same training either way, nothing left behind on bad input)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import assert_clean_error, linked_cell_dataset, linked_stack_dataset, run_cli

SMALL = dict(patch_size=(64, 64), batch_size=2, base_filters=4, max_minutes=5, threads=1, tune_fraction=0)


def _cfg(**kw):
    from medseg.cells.config import CellTrainConfig

    return CellTrainConfig(**{**SMALL, **kw})


def _prepare(ds, cfg, cache=None):
    from medseg.cells.train import prepare_training_data

    return prepare_training_data(ds, cfg, cache)


def _assert_same_pairs(a, b):
    assert len(a) == len(b)
    for pa, pb in zip(a, b):
        for xa, xb in zip(pa, pb):
            if isinstance(xa, tuple) or isinstance(xb, tuple):
                assert len(xa) == len(xb) and all(np.array_equal(u, v) for u, v in zip(xa, xb))
            else:
                assert (xa is None) == (xb is None)
                assert xa is None or (xa.dtype == xb.dtype and np.array_equal(xa, xb))


def _batches(pairs, cfg, n=5):
    from medseg.cells.batches import training_batch

    rng = np.random.default_rng(7)
    return [training_batch(pairs, cfg, rng) for _ in range(n)]


def test_disk_pairs_equal_ram_pairs_and_give_the_same_batches(tmp_path):
    """Real DSB2018 images: the memory-mapped pairs hold no RAM, equal the in-RAM ones array for array, and the
    batches drawn from them (crops, flips, rotations, intensity) are identical; the size ranges agree."""
    from medseg.cells.pairs import pair_bytes

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    cfg = _cfg(scale_range=(0.8, 1.25))  # the zoom path reads the labels too
    ram = _prepare(ds, _cfg(scale_range=(0.8, 1.25), cache="memory"), tmp_path / "unused")
    disk = _prepare(ds, _cfg(scale_range=(0.8, 1.25), cache="disk"), tmp_path / "cache")
    assert not (tmp_path / "unused").exists()
    assert all(pair_bytes(p) > 0 for p in ram[0]) and all(pair_bytes(p) == 0 for p in disk[0])
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(ram[0]) == 3
    _assert_same_pairs(ram[0], disk[0])
    assert ram[2] == disk[2] and ram[4] == disk[4] and ram[4]  # split and size ranges
    for ba, bb in zip(_batches(ram[0], cfg), _batches(disk[0], cfg)):
        for xa, xb in zip(ba, bb):
            assert xa.dtype == xb.dtype and np.array_equal(xa, xb)


def test_cached_pairs_are_reused_without_reading_the_images_and_miss_when_a_file_or_setting_changes(
        tmp_path, monkeypatch):
    from medseg.cells import data as data_mod
    from medseg.cells import pairs as pairs_mod

    ds = tmp_path / "ds"
    val = linked_cell_dataset(ds, 4)[-1]
    cfg = _cfg(cache="disk")
    first = _prepare(ds, cfg, tmp_path / "cache")[0]
    made, read = [], []
    real_make, real_load = pairs_mod.make_pair, data_mod.load_case
    monkeypatch.setattr(pairs_mod, "make_pair", lambda c, k: made.append(c.case) or real_make(c, k))
    monkeypatch.setattr(data_mod, "load_case", lambda c, ch=None: read.append(c.case) or real_load(c, ch))
    again = _prepare(ds, cfg, tmp_path / "cache")[0]
    # all three read back from the cache, no training image opened (the validation image is checked, never cached)
    assert made == [] and read == [val]
    _assert_same_pairs(first, again)

    _prepare(ds, _cfg(cache="disk", contact_weight=5.0), tmp_path / "cache")  # other targets: other arrays
    assert len(made) == 3
    _prepare(ds, _cfg(cache="disk", seed=3, lr=1e-3), tmp_path / "cache")  # training settings: same arrays
    assert len(made) == 3

    # a label map replaced by a copy, then touched: that image alone is prepared again
    lab = sorted((ds / "labels").iterdir())[0]
    target = lab.resolve()
    lab.unlink()
    shutil.copyfile(target, lab)
    st = lab.stat()
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    made.clear()
    _prepare(ds, cfg, tmp_path / "cache")
    assert made == [lab.stem]


@pytest.mark.parametrize("damage", ["truncate", "marker", "foreign"])
def test_a_damaged_entry_is_made_again_not_read(tmp_path, damage):
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    cfg = _cfg(cache="disk")
    ram = _prepare(ds, _cfg(cache="memory"))[0]
    _prepare(ds, cfg, tmp_path / "cache")
    stem = sorted((tmp_path / "cache").glob("*.json"))[0].with_suffix("")
    if damage == "truncate":
        f = Path(f"{stem}.target.npy")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "marker":
        Path(f"{stem}.json").unlink()
    else:
        Path(f"{stem}.json").write_text('{"id": "someone_else", "key": "0", "arrays": {}}')
    _assert_same_pairs(ram, _prepare(ds, cfg, tmp_path / "cache")[0])


def test_auto_keeps_pairs_in_ram_until_the_limit_then_moves_all_to_disk(tmp_path):
    from medseg.cells.data import list_cases
    from medseg.cells.splits import dataset_split
    from medseg.cells.pairs import PairCache, pair_bytes, training_pairs

    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 4)
    cfg = _cfg(cache="auto")

    def train_cases():
        return dataset_split(ds, list_cases(ds))["train"]

    cache = PairCache(tmp_path / "cache")
    ram, _ = training_pairs(train_cases(), cfg, cache, limit=1e12)
    assert all(pair_bytes(p) for p in ram) and not (tmp_path / "cache").exists()  # nothing written while it fits
    spilled, _ = training_pairs(train_cases(), cfg, cache, limit=1.5 * pair_bytes(ram[0]))
    assert all(pair_bytes(p) == 0 for p in spilled)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3
    _assert_same_pairs(ram, spilled)


def test_held_out_blocks_of_3d_stacks_with_the_disk_cache(tmp_path):
    """With too few images to hold out whole ones, each stack's last fifth is the tuning block: the disk cache
    stores the rest under its own key (not the whole stack's), and pairs and blocks equal the in-RAM ones."""
    ds = tmp_path / "ds"
    src = linked_stack_dataset(ds)
    kw = dict(spatial_dims=3, patch_size=(16, 32, 32), tune_fraction=0.1)
    ram = _prepare(ds, _cfg(**kw, cache="memory"))
    disk = _prepare(ds, _cfg(**kw, cache="disk"), tmp_path / "cache")
    whole = tifffile.imread(src / "mask3d.tif").shape
    assert ram[0][0][0].shape == disk[0][0][0].shape != whole and ram[2]["tune"] == disk[2]["tune"] == ["a:tune"]
    _assert_same_pairs(ram[0], disk[0])
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) for a, b in zip(ram[3], disk[3]))
    no_blocks = _prepare(ds, _cfg(**{**kw, "tune_fraction": 0}, cache="disk"), tmp_path / "cache")
    assert no_blocks[0][0][0].shape == whole  # the whole stack: another entry, not the block-less one


def test_cli_trains_the_same_from_disk_as_from_ram(tmp_path):
    """Same settings and seed, --cache disk vs memory: the same training; the disk run writes its
    cache in RUN/cache (or --cache-dir), leaves the dataset folder as it was, and a resumed run may change it."""
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    before = sorted(str(p) for p in ds.rglob("*"))
    common = ["--patch", "64", "--max-steps", "20", "--threads", "1", "--tune-fraction", "0"]
    a = run_cli("cells", "train", ds, "-o", tmp_path / "ram", "--cache", "memory", *common)
    b = run_cli("cells", "train", ds, "-o", tmp_path / "disk", "--cache", "disk", *common)
    assert a.code == 0 and b.code == 0, a.err + b.err
    assert "on disk" not in a.out and f"prepared training images on disk: {tmp_path / 'disk' / 'cache'}" in b.out
    # what the run records from its data, and (one thread, same seed, steps capped) bitwise the same weights:
    # the schedule no longer reads the clock at step 0, which alone made two runs differ in the 3rd digit
    meta = [json.loads((tmp_path / r / "model.json").read_text()) for r in ("ram", "disk")]
    for k in ("split", "polarity", "diameter_range", "diameter_range_area", "steps"):
        assert meta[0][k] == meta[1][k]
    loss = [[float(ln.split(",")[3]) for ln in (tmp_path / r / "log.csv").read_text().splitlines()[1:]]
            for r in ("ram", "disk")]
    assert len(loss[0]) == len(loss[1]) == 2 and loss[0] == loss[1]
    import torch
    w = [torch.load(tmp_path / r / "model.pt", weights_only=True) for r in ("ram", "disk")]
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert not (tmp_path / "ram" / "cache").exists() and len(list((tmp_path / "disk" / "cache").glob("*.json"))) == 2
    assert sorted(str(p) for p in ds.rglob("*")) == before
    shared = tmp_path / "shared"
    c = run_cli("cells", "train", ds, "-o", tmp_path / "disk", "--resume", "--max-steps", "25", "--cache-dir", shared)
    assert c.code == 0, c.err
    assert json.loads((tmp_path / "disk" / "model.json").read_text())["steps"] == 25
    assert len(list(shared.glob("*.json"))) == 2
    # a memory run that names the shared folder neither reads nor writes it, and does not point the user at it
    d = run_cli("cells", "train", ds, "-o", tmp_path / "ram", "--resume", "--max-steps", "22", "--cache", "memory",
                "--cache-dir", shared)
    assert d.code == 0 and "on disk" not in d.out, d.err


def test_bad_input_with_the_disk_cache_leaves_nothing_behind(tmp_path):
    """A label map whose size does not match its image, found while the cache is being written: one-line error,
    exit 2, and neither the run folder nor the cache folder it created is left."""
    ds = tmp_path / "ds"
    ids = linked_cell_dataset(ds, 4)
    bad = ds / "labels" / f"{ids[2]}.tif"
    bad.unlink()
    tifffile.imwrite(bad, np.zeros((7, 9), np.uint16))
    res = run_cli("cells", "train", ds, "-o", tmp_path / "run", "--cache", "disk", "--cache-dir", tmp_path / "c",
                  "--patch", "64", "--max-steps", "2", "--tune-fraction", "0")
    assert_clean_error(res, ids[2], "does not match")
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_cache_setting_is_validated(tmp_path):
    from medseg.errors import InputError

    with pytest.raises(InputError, match="cache 'ssd' is not one of auto, memory, disk"):
        _cfg(cache="ssd").validate()
    ds = tmp_path / "ds"
    linked_cell_dataset(ds, 3)
    assert_clean_error(run_cli("cells", "train", ds, "-o", tmp_path / "run", "--cache", "ssd"), "--cache")
    assert not (tmp_path / "run").exists()
