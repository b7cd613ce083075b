"""Library hygiene (session 48): calling medseg from Python leaves the caller's process as it was.

Researchers call the API from notebooks and their own scripts. A call may set torch's threads, seed generators or
silence warnings for its own work, but must give the caller its state back: torch's thread count and flags, the
global random streams (torch, numpy, python), os.environ, the working folder, sys.path, the umask, warning filters,
the root logger, numpy's print and error settings, signal handlers, sys.stdout/stderr and matplotlib's backend and
rcParams. Each test records that state, makes one or two public calls on small inputs and compares.

Loading a model builds its network from a forked generator (its initial weights are replaced at once), so those
calls are compared on everything too. Third-party modules change some state when first imported (MONAI sets
``CUBLAS_WORKSPACE_CONFIG`` and its own ``warnings.showwarning``, ``import rich`` draws from python's ``random``):
they are imported before the first snapshot, since importing them is not a medseg call.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, data_path, linked_cell_dataset
from test_dataset import tiny_dataset
from test_predict import HIPPO_IMG, make_model
from test_train import TINY


@pytest.fixture(autouse=True)
def imported_third_party():
    """What the calls import lazily, imported first (import-time effects are the libraries', not the call's)."""
    import matplotlib
    import matplotlib.figure  # noqa: F401
    import monai.networks.nets  # noqa: F401
    import torch._dynamo  # noqa: F401  (the optimiser's first step imports it: sympy's filters, inductor's env)
    import rich.progress  # noqa: F401
    import scipy.ndimage  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import highdicom  # noqa: F401
        try:
            import cv2  # noqa: F401  (sets QT_* and LD_LIBRARY_PATH on import)
        except ImportError:
            pass
    backend = matplotlib.rcParams._get_backend_or_none()
    yield
    if backend is not None:
        matplotlib.rcParams["backend"] = backend


def snapshot() -> dict:
    """The process state an API call must not change."""
    import matplotlib

    mask = os.umask(0o022)
    os.umask(mask)
    return {
        "torch threads": torch.get_num_threads(),
        "torch interop threads": torch.get_num_interop_threads(),
        "torch grad enabled": torch.is_grad_enabled(),
        "torch default dtype": torch.get_default_dtype(),
        "torch autocast (cpu)": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
        "torch cudnn flags": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                              torch.backends.cudnn.enabled),
        "torch deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "torch matmul precision": torch.get_float32_matmul_precision(),
        "torch rng": torch.get_rng_state(),
        "numpy rng": np.random.get_state(),
        "python rng": random.getstate(),
        "environ": {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"},
        "cwd": os.getcwd(),
        "sys.path": list(sys.path),
        "umask": mask,
        "warnings.filters": list(warnings.filters),
        "warnings.showwarning": warnings.showwarning,
        "root logger": (logging.root.level, list(logging.root.handlers), logging.root.manager.disable),
        "numpy printoptions": np.get_printoptions(),
        "numpy seterr": np.geterr(),
        "signal handlers": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
        "sys.stdout/stderr": (sys.stdout, sys.stderr),
        "matplotlib backend": matplotlib.rcParams._get_backend_or_none(),
        "matplotlib rcParams": {k: repr(v) for k, v in matplotlib.rcParams.items() if k != "backend"},
    }


def assert_unchanged(before: dict, after: dict, allowed=()) -> None:
    changed = []
    for key, value in before.items():
        if key in allowed:
            continue
        if isinstance(value, torch.Tensor):
            same = torch.equal(value, after[key])
        elif key == "numpy rng":
            same = value[0] == after[key][0] and np.array_equal(value[1], after[key][1]) and value[2:] == after[key][2:]
        else:
            same = value == after[key]
        if not same:
            was, now = value, after[key]
            if isinstance(value, dict):  # only what changed
                was = {k: v for k, v in value.items() if now.get(k) != v}
                now = {k: v for k, v in now.items() if value.get(k) != v}
            elif isinstance(value, list):
                was, now = [v for v in value if v not in now], [v for v in now if v not in value]
            detail = "" if key.endswith("rng") else f": {was!r:.300} -> {now!r:.300}"
            changed.append(f"{key}{detail}")
    assert not changed, "the call changed the caller's state: " + "; ".join(changed)


@pytest.fixture
def caller():
    """A caller with settings of its own, unlike any medseg default: more torch threads than this machine's usable
    cores (which medseg lowers), random streams advanced past any seed, matplotlib on another backend."""
    import matplotlib

    from medseg.cpu import usable_cores

    torch.set_num_threads(usable_cores() + 1)
    torch.rand(3), np.random.rand(3), random.random()
    matplotlib.use("svg")
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_reading_writing_and_converting_images(tmp_path, caller):
    from medseg.io import read_image, write_image
    from medseg.io.convert import convert, describe
    from medseg.io.image import Image

    img = Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), np.diag([1.0, 2.0, 3.0, 1.0]))
    before = snapshot()
    write_image(img, tmp_path / "a.nii.gz")
    assert np.array_equal(read_image(tmp_path / "a.nii.gz").array, img.array)
    describe(tmp_path / "a.nii.gz")
    convert(tmp_path / "a.nii.gz", tmp_path / "a.nrrd")
    assert_unchanged(before, snapshot())


def test_loading_a_jpeg2000_series_keeps_the_warning_filters(caller):
    """JPEG 2000 slices decode in a thread pool. Each worker silenced pydicom's warnings with its own
    ``catch_warnings``; the filter list is the process's, the workers restored it out of order, and ``ignore`` for
    every warning stayed installed after the call (within the first four loads on 2 cores)."""
    from medseg.io.dicom import load_series

    series = data_path("totalseg_example", "ct_dicom")
    before = snapshot()
    for _ in range(10):
        load_series(series)
        assert warnings.filters == before["warnings.filters"], "a load left warnings silenced"
    assert_unchanged(before, snapshot())


def test_planning(tmp_path, caller):
    from medseg.plan.planner import make_plan

    ds = tiny_dataset(tmp_path / "ds", 4)
    before = snapshot()
    make_plan(ds, minutes=1)
    assert_unchanged(before, snapshot())


def _tiny_plan(tmp_path: Path, **kw) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**TINY, "dataset": str(tiny_dataset(tmp_path / "ds", 4)), "max_epochs": 1,
                                    **kw}))
    return path


def test_training_gives_back_threads_and_random_streams(tmp_path, caller):
    """``train`` sets the plan's threads and seeds torch's and python's generators for a reproducible run; the caller
    gets its own back. The run's seeding is kept: two runs from different caller streams train the same weights."""
    from medseg.train.trainer import train

    plan = _tiny_plan(tmp_path)  # num_threads: 1
    before = snapshot()
    train(plan, tmp_path / "a", device="cpu", progress=False)
    assert_unchanged(before, snapshot())
    torch.rand(5), random.random()  # another caller stream
    train(plan, tmp_path / "b", device="cpu", progress=False)
    a, b = (torch.load(tmp_path / r / "model.pt", weights_only=True)["state_dict"] for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_an_ensemble_gives_back_threads(tmp_path, caller):
    from medseg.train.ensemble import train_ensemble
    from medseg.plan.plan import Plan

    plan = Plan.from_yaml(_tiny_plan(tmp_path, ensemble=2))
    before = snapshot()
    train_ensemble(plan, tmp_path / "run", device="cpu", progress=False)
    assert_unchanged(before, snapshot())


def test_predicting(tmp_path, caller, monkeypatch):
    """``predict_path`` lowers torch's threads to the usable cores (unless OMP_NUM_THREADS is set) for its own work
    only; building the network draws from a forked generator."""
    from medseg.infer.cohort import predict_path
    from medseg.infer.predict import predict_image
    from medseg.io import read_image
    from medseg.train.artifact import load_model

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # else medseg keeps the count as it is
    model = make_model(tmp_path / "model.pt")
    src = sorted(data_path(*HIPPO_IMG).glob("*.nii.gz"))[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / src.name).symlink_to(src)
    before = snapshot()
    art = load_model(model)
    predict_image(art.build(), art.plan, read_image(src))
    written, _ = predict_path(model, tmp_path / "in", tmp_path / "out", device="cpu")
    assert len(written) == 1
    assert_unchanged(before, snapshot())


def _cases(tmp_path: Path) -> None:
    from medseg.io import write_image
    from medseg.io.image import Image

    for d in ("pred", "ref"):
        (tmp_path / d).mkdir()
    for i in range(2):
        ref = np.zeros((12, 12, 12), np.uint8)
        ref[2:8, 2:8, 2:8] = 1
        write_image(Image(ref, np.eye(4)), tmp_path / "ref" / f"c{i}.nii.gz")
        write_image(Image(np.roll(ref, i + 1, 0), np.eye(4)), tmp_path / "pred" / f"c{i}.nii.gz")


def test_evaluating_a_folder_keeps_the_matplotlib_backend(tmp_path, caller):
    """The HTML report's plot switched matplotlib to Agg (``matplotlib.use``): a notebook's inline plots stopped
    showing after an evaluation."""
    import matplotlib

    from medseg.evaluate.folder import evaluate_folder

    _cases(tmp_path)
    before = snapshot()
    assert before["matplotlib backend"] == "svg"
    evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "report")
    assert (tmp_path / "report" / "report.html").read_text().count("data:image/png;base64,") == 1
    assert matplotlib.rcParams._get_backend_or_none() == "svg"
    assert_unchanged(before, snapshot())


def test_exporting(tmp_path, caller):
    from medseg.export import export_segmentation
    from medseg.io.dicom import load_series
    from medseg.io.image import Image

    ref = data_path("dicom", "dcmqi_segmentations", "ct-3slice")
    img = load_series(ref)
    lab = np.zeros(img.array.shape, np.uint8)
    lab[10:40, 10:40, :] = 1
    before = snapshot()
    for fmt, name in (("dicom-seg", "seg.dcm"), ("rtstruct", "rt.dcm"), ("nifti", "v.nii.gz")):
        export_segmentation(Image(lab, img.affine), ref if fmt != "nifti" else None, fmt, tmp_path / name)
    assert_unchanged(before, snapshot())


def test_counting_cells_classically(tmp_path, caller):
    from medseg.cells.count import count_cells

    (tmp_path / "in").mkdir()
    for p in sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[:2]:
        (tmp_path / "in" / p.name).symlink_to(p)
    before = snapshot()
    rows = count_cells(tmp_path / "in", tmp_path / "out", classical=True)
    assert all(r["count"] > 0 for r in rows)
    assert_unchanged(before, snapshot())


def test_cell_training_and_counting_give_back_threads_and_random_streams(tmp_path, caller):
    """``train_cells`` and ``count_cells(model=...)`` set ``threads`` (1 here) for their own work, and training seeds
    torch's generator; counting builds the network (from a forked generator)."""
    from medseg.cells.count import count_cells
    from medseg.cells.train import CellTrainConfig, train_cells

    ids = linked_cell_dataset(tmp_path / "ds", 3)
    cfg = CellTrainConfig(patch_size=(64, 64), batch_size=2, base_filters=4, max_steps=2, max_minutes=5, threads=1)
    before = snapshot()
    run = train_cells(tmp_path / "ds", tmp_path / "run", cfg, progress=False)
    assert json.loads((run / "model.json").read_text())["kind"] == "medseg-cells"
    assert_unchanged(before, snapshot())
    rows = count_cells(tmp_path / "ds" / "images" / f"{ids[0]}.png", tmp_path / "out", model=run, threads=1,
                       progress=False)
    assert len(rows) == 1
    assert_unchanged(before, snapshot())


def test_library_code_raises_and_never_exits():
    """Outside the CLI, medseg raises its errors (``medseg.errors``): no ``sys.exit``, ``SystemExit``,
    ``typer.Exit`` or ``os._exit``, except ``ddp.end_process``, which a torchrun script calls itself to end."""
    pattern = re.compile(r"\bsys\.exit\(|\bSystemExit\b|\bExit\(|\bos\._exit\(|\bexit\(|\bquit\(")
    found = []
    for path in sorted((REPO / "medseg").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("medseg/cli/"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not (rel == "medseg/train/ddp.py" and "os._exit(code)" in code):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, found
