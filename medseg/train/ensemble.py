"""Ensembles: several networks of one plan, averaged at prediction.

On a small dataset one network stops improving long before a CPU time budget ends (MSD hippocampus, fold 0: mean
Dice 0.886-0.889 after 3,300, 6,100 or 10,100 iterations; benchmarks/RESULTS.md), so the budget buys more as K
networks trained one after another on the same split with different seeds, each with 1/K of it, whose softmax
probabilities are averaged. nnU-Net averages its five fold models for the same reason.

An ensemble run folder holds ``plan.yaml`` (with ``ensemble: K``), ``splits.json`` (shared by every member), one
ordinary run folder per member (``member_0``, ``member_1``, ...; ``--resume`` continues member by member), ``log.csv``
(one row per member, then the ensemble's validation) and ``model.pt``: one artifact with every member's weights
(:mod:`medseg.train.artifact`). :func:`combine_models` joins separately trained models (e.g. the folds of a
cross-validation, or members trained on several machines) into the same kind of artifact.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import torch

from medseg.cpu import keeps_global_rngs, keeps_torch_threads
from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.plan.plan import Plan

# plan settings that must agree for networks to be averaged (same input, same output, same network)
_SAME = ("channels", "labels", "normalisation", "target_spacing", "orientation", "spatial_dims", "patch_size",
         "base_filters", "max_filters")


class SoftmaxEnsemble(torch.nn.Module):
    """Averages the softmax probabilities of ``members`` (same input and classes) and returns their logarithm,
    so that a softmax of one window's output gives exactly the members' mean probabilities (overlapping windows
    are then blended like any network's logits).

    Examples
    --------
    >>> a, b = torch.nn.Conv3d(1, 3, 1), torch.nn.Conv3d(1, 3, 1)
    >>> x = torch.randn(1, 1, 4, 4, 4)
    >>> mean = (a(x).softmax(1) + b(x).softmax(1)) / 2
    >>> bool(torch.allclose(SoftmaxEnsemble([a, b])(x).softmax(1), mean, atol=1e-6))
    True
    """

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.spatial_dims = getattr(members[0], "spatial_dims", 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = None
        for m in self.members:
            q = torch.softmax(m(x).float(), 1)
            p = q if p is None else p.add_(q)
        return torch.log(p.div_(len(self.members)).clamp_min_(1e-12))


@keeps_torch_threads  # as train(): the caller's threads and random streams are its own
@keeps_global_rngs
def train_ensemble(plan: Plan, run_dir: str | os.PathLike, members: int | None = None, fold: int | None = None,
                   max_epochs: int | None = None, max_minutes: float | None = None, resume: bool = False,
                   device: str = "auto", progress: bool = True, num_threads: int | None = None,
                   tensorboard: bool = False, cache_mode: str | None = None,
                   cache_dir: str | os.PathLike | None = None, plan_file: str | os.PathLike | None = None):
    """Train ``members`` (default ``plan.ensemble``) networks one after another within one time budget and write
    the ensemble artifact; returns a :class:`medseg.train.trainer.TrainResult` (iterations summed over members,
    Dice of the ensemble on the validation fold).

    Each member gets an equal share of what is left of ``max_minutes`` when it starts (less a reserve for the
    ensemble's final validation); member i uses seed ``plan.seed + i`` and the split written for ``plan.seed``.
    ``tensorboard``: each member's curves in its folder's ``tensorboard/``. ``cache_mode`` / ``cache_dir`` override
    the plan's, also when resuming (as :func:`medseg.train.trainer.train`'s do); a resumed run keeps its number of
    members (another ``members`` is an ``InputError``).

    Parameters
    ----------
    plan : Plan
        The members' plan; it must name its ``dataset``.
    run_dir : path
        The ensemble's run folder (``member_0``, ... inside); one holding another run is refused unless ``resume``.
    members, fold, max_epochs, max_minutes : optional
        Override the plan's ``ensemble``, ``fold``, ``max_epochs`` and ``max_minutes`` (the whole budget).
    resume : bool
        Continue the run in ``run_dir`` (its ``plan.yaml``; finished members are loaded, not trained again).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    progress : bool
        Show progress bars.
    num_threads : int, optional
        CPU threads for torch (default: the plan's, else torch's).
    tensorboard, cache_mode, cache_dir
        As above.
    plan_file : path, optional
        The YAML file ``plan`` was read from: when it is the run folder's ``plan.yaml`` it is left as it is, and a
        new run whose options would change it is refused (:func:`medseg.train.run_folder.check_run_folder`).

    Returns
    -------
    TrainResult
        Its ``model_path`` is the ensemble's ``model.pt``.

    Examples
    --------
    Two members of a tiny network, one epoch of two iterations each, on two synthetic 16³ cases:

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> from medseg.plan.plan import Plan
    >>> from medseg.train.artifact import load_model
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub in ("imagesTr", "labelsTr"):
    ...     (root / sub).mkdir()
    >>> rng = np.random.default_rng(0)
    >>> for i in range(2):
    ...     lab = np.zeros((16, 16, 16), np.uint8); lab[4:12, 4:12, 4 + i:12] = 1
    ...     image = Image(lab + rng.normal(0, 0.3, lab.shape), np.eye(4))
    ...     _ = write_image(image, root / "imagesTr" / f"c{i}_0000.nii.gz")
    ...     _ = write_image(Image(lab, np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    >>> _ = (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "box"}}))
    >>> plan = Plan(dataset=str(root), labels={0: "background", 1: "box"}, patch_size=[16, 16, 16], base_filters=4,
    ...             max_filters=8, num_folds=2, iterations_per_epoch=2, max_epochs=1, bf16=False, cache="memory")
    >>> result = train_ensemble(plan, root / "run", members=2, device="cpu", progress=False)
    >>> result.iterations, sorted(p.name for p in (root / "run").iterdir())
    (4, ['log.csv', 'member_0', 'member_1', 'model.pt', 'plan.yaml', 'splits.json'])
    >>> len(load_model(result.model_path).members)
    2
    """
    from medseg.train.artifact import MODEL_FILE, build_from_plan, load_model, save_model
    from medseg.train.cache import LazyCases
    from medseg.train.checkpoint import asked_plan, check_resume
    from medseg.train.store import cache_folder
    from medseg.train.dataset import open_dataset
    from medseg.train.splits import fold_split
    from medseg.infer.devices import parse_device
    from medseg.train.run_folder import check_run_folder, write_plan
    from medseg.train.trainer import TrainResult, train, validate, validation_cost

    t0 = time.monotonic()
    run_dir = Path(run_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("an ensemble trains its members one after another in one process; under torchrun, train "
                         "each member as its own run (another seed) and join them with 'medseg ensemble'")
    if resume:
        if not (run_dir / "plan.yaml").is_file():
            raise InputError("--resume: the run folder has no plan.yaml", path=run_dir)
        saved = Plan.from_yaml(run_dir / "plan.yaml")
        given, dataset = asked_plan(plan, fold, saved)
        check_resume(saved, given, run_dir / "plan.yaml")  # another plan or fold would mix two runs
        saved.dataset = dataset or saved.dataset
        plan = saved
        if members is not None and members != plan.ensemble:
            raise InputError(f"--ensemble {members}: the run being resumed has ensemble {plan.ensemble}", path=run_dir)
    elif (run_dir / MODEL_FILE).exists() or (run_dir / "checkpoint_latest.pt").exists() or \
            any(run_dir.glob("member_*")):
        raise InputError("run folder already holds a run: use --resume, or another folder", path=run_dir)
    for name, value in (("fold", fold), ("max_epochs", max_epochs), ("max_minutes", max_minutes),
                        ("ensemble", members)):
        if value is not None and not (resume and name == "ensemble"):
            setattr(plan, name, value)
    if cache_mode is not None:  # after the resume's reload: a resumed run may move its cache (less RAM here)
        plan.cache = cache_mode
    if cache_dir is not None:
        plan.cache_dir = str(Path(cache_dir).resolve())
    plan.validate()
    if plan.dataset is None:
        raise InputError("the plan names no dataset folder (set 'dataset:' in the plan)")
    if num_threads or plan.num_threads:
        torch.set_num_threads(int(num_threads or plan.num_threads))
    k = plan.ensemble
    ds = open_dataset(plan.dataset)  # before anything is written
    check_run_folder(plan, run_dir, plan_file, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_plan(plan, run_dir / "plan.yaml")
    split_file = run_dir / "splits.json"
    val_ids = fold_split(run_dir, ds, plan)["val"]
    by_id = {c.id: c for c in ds.cases}
    # read once, at the end: no need to hold them meanwhile
    val_cases = LazyCases([by_id[i] for i in val_ids], plan.orientation, plan.labels, plan.in_channels)
    dev = parse_device(device)

    budget = plan.max_minutes * 60 if plan.max_minutes else None
    reserve = 0.0
    if budget and val_cases:  # the ensemble's final validation: k networks per case
        reserve = k * validation_cost(build_from_plan(plan, deep_supervision=False).to(dev), plan, val_cases, dev)
    cache: dict = {}
    done, in_calls, rows, arts = [], 0.0, [], []
    for i in range(k):
        mdir = run_dir / f"member_{i}"
        if not (mdir / MODEL_FILE).is_file():  # model.pt is written last, atomically: present = finished
            mdir.mkdir(parents=True, exist_ok=True)
            if not (mdir / "splits.json").is_file():
                (mdir / "splits.json").write_text(split_file.read_text())
            continuing = (mdir / "checkpoint_latest.pt").is_file()
            member = Plan.from_dict(plan.to_dict())
            member.dataset, member.seed, member.ensemble = plan.dataset, plan.seed + i, 1
            if folder := cache_folder(plan, run_dir):
                member.cache_dir = str(folder)  # one disk cache for all members
            minutes = None
            if budget and not continuing:  # a continuing member keeps the share it was given
                spent = sum(d["elapsed_s"] for d in done) + (time.monotonic() - t0 - in_calls)
                # a member whose share is spent still trains an iteration, as one network under a spent budget
                # does (train() refuses a budget of 0)
                minutes = max(budget - reserve - spent, 1e-3) / (k - i) / 60
            t = time.monotonic()
            train(member, mdir, fold=plan.fold, max_minutes=minutes, resume=continuing, device=device,
                  progress=progress, num_threads=num_threads, validation=False, cache=cache, tensorboard=tensorboard,
                  cache_mode=member.cache, cache_dir=member.cache_dir)
            in_calls += time.monotonic() - t
        arts.append(load_model(mdir))
        info = arts[-1].info
        done.append({"elapsed_s": float(info.get("elapsed_s", 0.0)), "epochs": int(info.get("epochs", 0)),
                     "iterations": int(info.get("iterations", 0))})
        rows.append({"member": i, "seed": plan.seed + i, **done[-1]})

    net = SoftmaxEnsemble([a.build() for a in arts]).to(dev) if k > 1 else arts[0].build().to(dev)
    val = validate(net, plan, val_cases, dev) if val_cases else {}
    elapsed = sum(d["elapsed_s"] for d in done) + (time.monotonic() - t0 - in_calls)
    iterations, epochs = sum(d["iterations"] for d in done), sum(d["epochs"] for d in done)
    rows.append({"member": "ensemble", "elapsed_s": round(elapsed, 1), "iterations": iterations,
                 **{f"val_{n}": round(v, 5) for n, v in val.items()}})
    _write_log(run_dir / "log.csv", rows)
    model_path = save_model(run_dir / MODEL_FILE, plan, [a.state_dict for a in arts], epochs=epochs,
                            iterations=iterations, elapsed_s=round(elapsed, 1), fold=plan.fold, val_dice=val,
                            members=k)
    return TrainResult(run_dir, epochs, iterations, elapsed, val, val.get("mean", float("nan")), model_path)


def _write_log(path: Path, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def combine_models(models, output: str | os.PathLike) -> Path:
    """Join trained models of one plan (same channels, labels, preprocessing and network) into one ensemble
    artifact at ``output``: a file when its name ends in ``.pt`` or ``.pth`` (any case) and it is not an existing
    folder, else a folder to hold ``model.pt``; members of an ensemble are unpacked.

    Parameters
    ----------
    models : iterable of path
        At least two model files or run folders, each given once.
    output : path
        The artifact to write (its folder is created); the input models are never replaced.

    Returns
    -------
    Path
        The artifact written; its plan has ``ensemble`` set to the number of networks.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.train.artifact import build_from_plan, load_model, save_model
    >>> plan = Plan(spatial_dims=2, patch_size=[16, 16], base_filters=4, max_filters=16)
    >>> runs = Path(tempfile.mkdtemp())
    >>> for fold in (0, 1):
    ...     _ = save_model(runs / f"fold{fold}.pt", plan, build_from_plan(plan).state_dict())
    >>> out = combine_models([runs / "fold0.pt", runs / "fold1.pt"], runs / "folds01")  # a folder
    >>> out.relative_to(runs).as_posix(), load_model(out).plan.ensemble
    ('folds01/model.pt', 2)
    """
    from medseg.train.artifact import MODEL_FILE, load_model, save_model

    paths = [Path(m) for m in models]
    if len(paths) < 2:
        raise InputError("an ensemble needs at least two models")
    files = [(p / MODEL_FILE if p.is_dir() else p).resolve() for p in paths]
    twice = sorted({str(f) for f in files if files.count(f) > 1})
    if twice:
        raise InputError(f"the same model is given twice: {twice[0]}")
    arts = [load_model(p) for p in paths]
    ref = arts[0].plan.to_dict()
    for p, a in zip(paths[1:], arts[1:]):
        d = a.plan.to_dict()
        diff = [key for key in _SAME if d[key] != ref[key]]
        if diff:
            raise InputError(f"cannot be averaged with {paths[0]}: its plan differs in {', '.join(diff)}", path=p)
    out = Path(output)
    if out.is_dir() or out.suffix.lower() not in (".pt", ".pth"):
        out = out / MODEL_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = [sd for a in arts for sd in (a.members or [a.state_dict])]
    plan = Plan.from_dict({**ref, "ensemble": len(weights)})
    return save_model(out, plan, weights, protect=files, members=len(weights),
                      sources=[str(p.resolve()) for p in paths])
