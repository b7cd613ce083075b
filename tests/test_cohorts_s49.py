"""Cohort scaling (s49): per-case work that must not grow with the cohort, checked by counting calls, not timing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch


def tiny_model(path: Path) -> Path:
    """A model artifact with random weights and the smallest patch the network accepts."""
    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan, save_model

    torch.manual_seed(0)
    plan = Plan(channels=["MRI"], labels={0: "background", 1: "a"}, patch_size=[16, 16, 16], base_filters=4,
                max_filters=8, target_spacing=[1.0, 1.0, 1.0]).validate()
    return save_model(path, plan, build_from_plan(plan).state_dict())


def tiny_cohort(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        nib.save(nib.Nifti1Image(rng.normal(size=(8, 8, 8)).astype(np.float32), np.eye(4)), folder / f"c{i:03d}.nii.gz")
    return folder


@pytest.fixture
def counted(monkeypatch):
    """Calls of the network build and of the finished-output header read, counted."""
    from medseg.infer import provenance
    from medseg.train.artifact import ModelArtifact

    calls = {"build": 0, "read_record": 0}
    build, read_record = ModelArtifact.build, provenance.read_record

    def counted_build(self):
        calls["build"] += 1
        return build(self)

    def counted_read(path):
        calls["read_record"] += 1
        return read_record(path)

    monkeypatch.setattr(ModelArtifact, "build", counted_build)
    monkeypatch.setattr(provenance, "read_record", counted_read)
    return calls


@pytest.mark.parametrize("n", [2, 6])
def test_rerun_of_finished_cohort_builds_no_network(tmp_path, counted, n):
    """A rerun on a finished folder skips every case without building the network (building it imports MONAI:
    seconds for nothing); the first run builds it once per folder, not per case, and the rerun reads each
    finished output's record once."""
    from medseg.infer.cohort import predict_path

    model, images, out = tiny_model(tmp_path / "m.pt"), tiny_cohort(tmp_path / "img", n), tmp_path / "out"
    written, skipped = predict_path(model, images, out, device="cpu")
    assert (len(written), skipped, counted["build"]) == (n, 0, 1)
    counted.update(build=0, read_record=0)
    written, skipped = predict_path(model, images, out, device="cpu")
    assert (len(written), skipped) == (0, n)
    assert counted["build"] == 0
    assert counted["read_record"] == n
