"""Several medseg processes on one folder: shards of a cohort, trainings sharing a ``--cache-dir``, killed writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import data_path
from test_predict import make_model
from test_train import tiny_plan

HIPPO = ("msd_hippocampus",)


def _package_root() -> str:
    """The folder holding the medseg under test, for child processes (the old copy when comparing)."""
    import medseg

    return str(Path(medseg.__file__).resolve().parents[1])


def test_healthy_shard_survives_a_shard_that_fails_on_its_first_case(tmp_path, monkeypatch, one_torch_thread):
    """Shard 0 makes the shared output folder, fails on its first case (truncated pixel data) and removes the
    folder while still empty; shard 1, predicting meanwhile (its spill file is unlinked: the folder looks empty),
    must still write its case, identical to a run of that case alone."""
    import medseg.infer.predict as predict_mod
    from medseg.errors import InputError
    from medseg.infer.cohort import predict_path

    src = data_path(*HIPPO, "imagesTr")
    model = make_model(tmp_path / "model.pt")
    cohort, alone = tmp_path / "in", tmp_path / "alone"
    cohort.mkdir(), alone.mkdir()
    raw = (src / "hippocampus_001.nii.gz").read_bytes()
    (cohort / "hippocampus_000.nii.gz").write_bytes(raw[:3000])  # header whole, voxels cut: shard 0's first case
    for name in ("hippocampus_001.nii.gz", "hippocampus_004.nii.gz"):
        os.symlink(src / name, cohort / name)
    os.symlink(src / "hippocampus_001.nii.gz", alone / "hippocampus_001.nii.gz")
    out = tmp_path / "preds"
    real = predict_mod.predict_image
    failed = []

    def with_other_shard(*args, **kw):  # shard 1 is predicting when shard 0 fails
        if not failed:
            out.rmdir()  # still empty: as if shard 0, started at the same instant, had made it (shard 1's exist_ok)
            with pytest.raises(InputError, match="hippocampus_000"):
                predict_path(model, cohort, out, device="cpu", shard="0/2")
            failed.append(out.exists())
        return real(*args, **kw)

    monkeypatch.setattr(predict_mod, "predict_image", with_other_shard)
    written, _ = predict_path(model, cohort, out, device="cpu", shard="1/2")
    monkeypatch.setattr(predict_mod, "predict_image", real)
    assert failed == [False]  # the failing shard did remove the shared folder
    assert [p.name for p in written] == ["hippocampus_001.nii.gz"]
    predict_path(model, alone, tmp_path / "ref", device="cpu")
    got, ref = nib.load(out / "hippocampus_001.nii.gz"), nib.load(tmp_path / "ref" / "hippocampus_001.nii.gz")
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj))
    assert np.allclose(got.affine, nib.load(src / "hippocampus_001.nii.gz").affine)


def test_killed_cache_write_is_swept_and_a_live_one_kept(tmp_path):
    """A training killed outright (SIGKILL) while writing a cache entry leaves a hidden temporary file as large as
    the array; the next run using that cache removes it, and never the file of a writer still alive."""
    from medseg.io.atomic import atomic_path
    from medseg.train.cache import DiskCache
    from medseg.train.sampling import CachedCase
    import torch

    cache = tmp_path / "cache"
    cache.mkdir()
    code = ("import os, signal, sys\nfrom pathlib import Path\nfrom medseg.io.atomic import atomic_path\n"
            "with atomic_path(Path(sys.argv[1]) / 'c.k.image.npy') as tmp:\n"
            "    tmp.write_bytes(b'x' * 4096)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code, str(cache)], env={**os.environ, "PYTHONPATH": _package_root()})
    assert p.returncode == -signal.SIGKILL
    (dead,) = [e.name for e in os.scandir(cache)]
    hour_ago = time.time() - 3600
    os.utime(cache / dead, (hour_ago, hour_ago))
    with atomic_path(cache / "live.npy") as live:  # another run's write in progress (locked), just as old
        live.write_bytes(b"y")
        os.utime(live, (hour_ago, hour_ago))
        case = CachedCase("a", torch.ones(1, 2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.int16), {})
        DiskCache(cache).put(case, "k1")
        hidden = sorted(e.name for e in os.scandir(cache) if e.name.startswith("."))
        assert hidden == [live.name]
    assert not any(e.name.startswith(".") for e in os.scandir(cache))


def test_two_trainings_share_one_cache(tmp_path):
    """Folds 0 and 1 started together with one ``--cache-dir``: both finish, every case is stored once and reads
    back, and its label is the case's own (the hippocampus is at 1 mm already: same voxels per class)."""
    from medseg.train.cache import DiskCache

    plan = tiny_plan(tmp_path, n_cases=6)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": _package_root(), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "medseg", "train", str(plan), "-o", str(tmp_path / f"run{f}"),
                              "--fold", str(f), "--max-epochs", "1", "--threads", "1", "--cache", "disk",
                              "--cache-dir", str(cache), "-q", "--device", "cpu"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for f in (0, 1)]
    errors = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert [code for code, _ in errors] == [0, 0], errors
    names = [e.name for e in os.scandir(cache)]
    assert not [n for n in names if n.startswith(".")]  # no temporary file left
    metas = [json.loads((cache / n).read_text()) for n in names if n.endswith(".json")]
    ids = sorted(m["id"] for m in metas)
    labels = tmp_path / "ds" / "labelsTr"
    assert ids == sorted(p.name[:-len(".nii.gz")] for p in labels.iterdir())  # every case once
    assert len(names) == 4 * len(ids)  # image, label, foreground index, marker
    disk = DiskCache(cache)
    for m in metas:
        case = disk.get(m["id"], m["key"])
        assert case is not None, m["id"]
        raw = np.asarray(nib.load(labels / f"{m['id']}.nii.gz").dataobj)
        assert np.array_equal(np.bincount(np.asarray(case.label).ravel(), minlength=3)[1:],
                              np.bincount(raw.ravel().astype(int), minlength=3)[1:])
        assert np.isfinite(case.image).all()
