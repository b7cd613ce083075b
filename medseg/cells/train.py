"""Time-budgeted training of the cell model: DynUNet (shared builder) predicting background/interior/boundary
and (``distance_head``) each nucleus's distance to its edge, normalised to 1 at its centre.

The run folder holds ``model.json`` (everything inference needs, and the medseg/torch/MONAI versions that trained
it), ``model.pt`` (weights), ``checkpoint.pt`` (weights, optimiser, EMA, step, elapsed time and the sampling
RNG's state; written every ``checkpoint_every_s`` seconds, at the end, and when training is interrupted by Ctrl-C or
SIGTERM, then as it was after the last completed step; ``resume=True`` continues from it, drawing the batches the
uninterrupted run would have, within the same overall time budget, on the same data) and ``log.csv``. The learning
rate decays with the fraction of the time budget used, or of ``max_steps`` if that ends sooner (poly schedule), so a
short run still ends with a small learning rate. ``tune_fraction`` of the training images (with fewer than 3 such
images: the last fifth of each training image) is held out and used, after training, to choose the watershed
thresholds (``medseg.cells.tune``).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medseg.cells.config import CellTrainConfig, config_for_data
from medseg.cells.saved_config import resumed_config
from medseg.cells.batches import cell_loss, training_batch
from medseg.cells.budget import CellBudget
from medseg.cells.tune import tune_network, tuning_costs
from medseg.cpu import keeps_global_rngs, keeps_torch_threads, requested_threads
from medseg.errors import InputError
from medseg.io.atomic import atomic_path, deferred_interrupts, remove_stale_temporaries


def _save_json(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def _save_torch(obj, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def prepare_training_data(data_dir, cfg: CellTrainConfig, cache_dir=None, progress: bool = False):
    """Read the training split and make its training pairs (:mod:`medseg.cells.pairs`); returns (train pairs, val
    cases, split dict, tuning cases, size record). The record holds, for 2D native-scale models, the ranges of the
    training images' per-object and area-weighted median nucleus diameters (``{"count": ..., "area": ...}``,
    :func:`medseg.cells.scale.diameter_range`), for 3D models the training stacks' median voxel size
    (``{"spacing": [z, y, x]}``, :meth:`medseg.cells.segmenters.CellModel.z_scale`); else None.

    Each pair is ``(image, 3-class target, distance target or None, contact weight map or None, offsets or
    None, instance labels)``, the offsets as one map per axis; the labels are used by the zoom augmentation
    (``scale_range``). Without ``cache_dir`` the pairs are kept in RAM; with it, ``cfg.cache`` decides
    (:func:`medseg.cells.pairs.training_pairs`).

    ``tune_fraction`` of the training split (by a hash of the id, like the validation split) is kept out of
    training to choose the watershed thresholds; when that would be fewer than 3 images (a few 3D stacks), the
    last fifth of every training image along its longest axis is held out instead
    (:func:`medseg.cells.splits.tuning_blocks`).

    Every image and label map is checked before training: the training and tuning ones as they are read, the
    validation ones (which training does not otherwise read) first, by :func:`check_cases`; a bad one is an
    ``InputError``.
    """
    from medseg.cells.data import list_cases, load_case
    from medseg.cells.splits import dataset_split, tuning_images
    from medseg.cells.pairs import PairCache, check_dims, training_pairs
    from medseg.cells.scale import median_spacing, size_range_meta
    from medseg.system import available_memory
    from medseg.train.cache import AUTO_SHARE

    cases = list_cases(data_dir)
    split = dataset_split(data_dir, cases, cfg.val_fraction, cfg.fold, cfg.folds)
    check_cases(split["val"], cfg)  # first: cheapest to refuse before the training images are prepared
    tune = tuning_images(split["train"], cfg.tune_fraction)
    tune_ids = {c.case for c in tune}
    train = [c for c in split["train"] if c.case not in tune_ids]
    for c in tune:
        check_dims(load_case(c, cfg.channel), cfg)
    blocks = bool(cfg.tune_fraction and not tune)
    if not train:
        raise InputError("the training split is empty", path=data_dir)
    cache = PairCache(cache_dir) if cache_dir is not None else None
    pairs, blks = training_pairs(train, cfg, cache, AUTO_SHARE * available_memory(), blocks, progress)
    split["train"], split["tune"] = train, tune + blks
    native_2d = cfg.spatial_dims == 2 and not cfg.diameter
    sizes = size_range_meta([p[5] for p in pairs]) if native_2d else None
    if cfg.spatial_dims == 3:  # the z step the model learns: stacks are brought to it when counted
        sizes = {"spacing": median_spacing(train, cfg.channel)}
    return pairs, split["val"], {k: [c.case for c in v] for k, v in split.items()}, split["tune"], sizes


def check_cases(cases, cfg: CellTrainConfig) -> None:
    """Read and check each case as training images are checked, keeping none of the pixels.

    Training never reads the validation images, yet a bad one is a bad dataset: it would surface only when the
    model is evaluated, after the whole time budget was spent.

    Parameters
    ----------
    cases : list of CellCase
        Cases not loaded by training (the validation split); their arrays are left None.
    cfg : CellTrainConfig
        The run's settings (``channel``, ``spatial_dims``).

    Raises
    ------
    InputError
        Naming the first unreadable image or label map, non-integer labels, NaN or infinite pixels, an image
        and label map of different shapes, or an image of the wrong dimensionality.
    """
    from medseg.cells.data import load_case
    from medseg.cells.pairs import check_dims

    for c in cases:
        try:
            check_dims(load_case(c, cfg.channel), cfg)
        finally:
            c.image = c.labels = None


def out_channels(cfg: CellTrainConfig) -> int:
    """Network outputs: 3 class logits, then the distance map (``distance_head``), then one offset per axis."""
    return 3 + int(cfg.distance_head) + (cfg.spatial_dims if cfg.offset_head else 0)


def build_cell_network(cfg: CellTrainConfig):
    """The cell network of ``cfg``: a U-Net (DynUNet) with one input channel and :func:`out_channels` outputs.

    Parameters
    ----------
    cfg : CellTrainConfig
        ``spatial_dims``, ``patch_size`` (sets the depth), ``base_filters``, ``max_filters``, ``norm`` and the heads.

    Returns
    -------
    torch.nn.Module
        Freshly initialised (from torch's global random generator).

    Examples
    --------
    >>> import torch
    >>> from medseg.cells.config import CellTrainConfig
    >>> cfg = CellTrainConfig(patch_size=(32, 32), base_filters=4, max_filters=16)  # distance and offset heads
    >>> build_cell_network(cfg)(torch.zeros(1, 1, 32, 32)).shape  # 3 classes, distance, 2 offsets
    torch.Size([1, 6, 32, 32])
    >>> cfg = CellTrainConfig(spatial_dims=3, patch_size=(16, 32, 32), base_filters=4, max_filters=16,
    ...                       distance_head=False, offset_head=False)
    >>> build_cell_network(cfg)(torch.zeros(1, 1, 16, 32, 32)).shape
    torch.Size([1, 3, 16, 32, 32])
    """
    from medseg.train.network import build_network

    return build_network(cfg.spatial_dims, 1, out_channels(cfg), list(cfg.patch_size),
                         base_filters=cfg.base_filters,
                         max_filters=cfg.max_filters, norm=cfg.norm)


@keeps_torch_threads  # a caller's threads and random streams are its own: set back on return
@keeps_global_rngs
def train_cells(data_dir, run_dir, cfg: CellTrainConfig | None = None, resume: bool = False,
                progress: bool = True, tensorboard: bool = False) -> Path:
    """Train a cell model on a dataset folder within ``cfg.max_minutes``; returns the run folder
    (``tensorboard``: loss and learning rate also to ``run_dir/tensorboard``).

    Examples
    --------
    ``train_cells("../shared/data/dsb2018_fluo", "runs/dsb", CellTrainConfig(max_minutes=20))``
    """
    import torch
    from monai.losses import DiceLoss

    from medseg.cells.data import list_cases
    from medseg.cells.targets import object_polarity
    from medseg.infer.sliding_window import cpu_has_native_bf16
    from medseg.train.checkpoint import check_resume, data_stamp, load as load_checkpoint, restore
    from medseg.train.ema import WeightEMA
    from medseg.train.runlog import trim_log
    from medseg.train.artifact import versions
    from medseg.train.tblog import ScalarLog, require_tensorboard

    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and not ckpt_path.exists():
        raise InputError("nothing to resume: no checkpoint.pt", path=run_dir)
    if not Path(data_dir).is_dir():
        raise InputError("dataset is a file, not a folder (of images/ and labels/)" if Path(data_dir).exists()
                         else "dataset folder does not exist", path=data_dir)
    cfg = resumed_config(run_dir, cfg) if resume else (cfg or config_for_data(data_dir))
    cfg.validate()
    _refuse_run_in_data(data_dir, run_dir, cfg)
    stamp = data_stamp(list_cases(data_dir))
    state = None
    if resume:  # read and checked before the data are prepared
        state = load_checkpoint(ckpt_path, keys=("model", "optimizer", "step", "elapsed_s"))
        check_resume(cfg, None, Path(data_dir), state.get("data"), stamp)
        _check_resumed_split(data_dir, run_dir, cfg)
    if tensorboard:
        require_tensorboard()
    started = time.perf_counter()
    show = progress and not os.environ.get("PYTEST_CURRENT_TEST")
    pairs, _, split, tune, sizes = _prepare(data_dir, run_dir, cfg, show)
    prepared_s = time.perf_counter() - started
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)  # a checkpoint being written when the run was killed outright
    torch.set_num_threads(requested_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = build_cell_network(cfg)
    # 2D convolutions run ~7 % faster per step in channels-last on this CPU (bf16; benchmarks/train_speed.py --cells)
    memory_format = torch.channels_last if cfg.spatial_dims == 2 else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed, losses = 0, 0.0, []
    ema = WeightEMA(net, cfg.ema) if cfg.ema else None
    if state is not None:
        restore(state, ckpt_path, net, opt, ema=ema, updates=int(state["step"]))
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        losses = [float(v) for v in state.get("losses", [])]  # the running means of log.csv and model.json go on
        rng = np.random.default_rng(cfg.seed + step)  # an older checkpoint holds no RNG state: a new stream then
        if "rng" in state:
            rng.bit_generator.state = state["rng"]
    meta = {"kind": "medseg-cells", "version": 1, "versions": versions(), "config": _jsonable(asdict(cfg)),
            "split": split,
            "classes": ["background", "interior", "boundary"], "in_channels": 1,
            "out_channels": out_channels(cfg),
            # which way min_snr looks: nuclei brighter (fluorescence) or darker than the background
            "polarity": object_polarity([p[0] for p in pairs], [p[1] for p in pairs])}
    # nuclei outside the ranges are resized into them at prediction (CellModel.scale_for), where both measures agree
    meta.update(sizes or {})
    if tune:  # the settings that measure each image's nucleus size while tuning: counting measures with them too
        meta["size_thresholds"] = {"threshold": cfg.threshold, "seed_threshold": cfg.seed_threshold, "seeds": cfg.seeds}
    _save_json(meta, run_dir / "model.json")
    dice_fn = DiceLoss(to_onehot_y=True, softmax=True, include_background=True, smooth_nr=1e-5, smooth_dr=1e-5)
    # reading the data and the threshold search count against the time budget (medseg.cells.budget)
    if state is not None and "budget_s" in state:
        # the run's own budget, plus any minutes added; reading the data again counts against it, as the semantic
        # trainer counts it
        budget = CellBudget.resumed(state, cfg.max_minutes, len(tune))
        elapsed += prepared_s
    else:
        budget = CellBudget.start(cfg.max_minutes, prepared_s, len(tune))
    tune = tune[:budget.tune_images]

    def kept():  # what a checkpoint keeps besides the training state
        return {"data": stamp, **budget.saved()}

    use_bf16 = bool(cfg.bf16) and cpu_has_native_bf16()
    scalars = ScalarLog(run_dir, tensorboard, purge_step=step if resume else None)
    if resume:
        trim_log(run_dir / "log.csv", step)
    new_log = not (run_dir / "log.csv").is_file()
    log_f = open(run_dir / "log.csv", "a")
    if new_log:
        log_f.write("step,elapsed_s,lr,loss\n")
    t0, last_ckpt = time.perf_counter() - elapsed, time.perf_counter()
    net.train()
    bar = _progress(progress, budget.training_s, elapsed)
    last = (rng.bit_generator.state, elapsed)  # RNG state and elapsed time right after the last completed step
    try:
        while True:
            elapsed = time.perf_counter() - t0
            if budget.due(elapsed, step):
                costs = tuning_costs(net, cfg, meta, tune)
                tune = tune[:budget.settle(costs)]
                if bar is not None:
                    bar[0].update(bar[1], total=budget.training_s)
                if len(tune) < len(costs):
                    warnings.warn(f"the threshold search on all {len(costs)} tuning images would take about "
                                  f"{costs.sum():.0f} s of the {cfg.max_minutes:g}-minute budget: it uses {len(tune)} "
                                  "of them (more --max-minutes searches on more)")
                elapsed = time.perf_counter() - t0
            if elapsed >= budget.training_s or (cfg.max_steps is not None and step >= cfg.max_steps):
                break
            # the schedule follows whichever ends first, the time budget or max_steps (as the semantic trainer's);
            # the first step takes the full rate: the clock's few microseconds before it would otherwise make two
            # runs of one seed that max_steps ends differ in every weight
            done = max(elapsed / budget.training_s if step else 0.0, step / cfg.max_steps if cfg.max_steps else 0.0)
            lr = cfg.lr * (1 - min(done, 0.99)) ** 0.9
            for g in opt.param_groups:
                g["lr"] = lr
            x, y, d, w, o = training_batch(pairs, cfg, rng)
            # interrupts held back from the forward pass (batch-norm statistics) to the step count: the state an
            # interrupted run saves is always that of a whole number of steps
            with deferred_interrupts():
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    out = net(torch.from_numpy(x).contiguous(memory_format=memory_format))
                out = out.float()
                loss = cell_loss(out, torch.from_numpy(y), dice_fn, None if d is None else torch.from_numpy(d),
                                 None if w is None else torch.from_numpy(w), cfg.distance_weight,
                                 None if o is None else torch.from_numpy(o / cfg.offset_scale), cfg.offset_weight)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
                opt.step()
                if ema is not None:
                    ema.update(net)
                step += 1
                losses.append(loss.item())
                last = (rng.bit_generator.state, time.perf_counter() - t0)
                if step % 10 == 0:  # here too: the log has a row for every step a checkpoint can hold
                    log_f.write(f"{step},{elapsed:.1f},{lr:.2e},{np.mean(losses[-10:]):.4f}\n")
                    log_f.flush()
                    scalars.add(step, **{"train/loss": np.mean(losses[-10:]), "train/lr": lr})
            if bar is not None:
                bar[0].update(bar[1], completed=min(elapsed, budget.training_s),
                              description=f"loss {np.mean(losses[-20:]):.3f}")
            if time.perf_counter() - last_ckpt > cfg.checkpoint_every_s:
                _checkpoint(net, opt, step, time.perf_counter() - t0, ckpt_path, ema, last[0], losses, kept())
                last_ckpt = time.perf_counter()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM under the CLI: keep every completed step (the save is atomic)
        _checkpoint(net, opt, step, last[1], ckpt_path, ema, last[0], losses, kept())
        raise
    finally:
        log_f.close()
        scalars.close()
        if bar is not None:
            bar[0].stop()
    elapsed = time.perf_counter() - t0
    _checkpoint(net, opt, step, elapsed, ckpt_path, ema, rng.bit_generator.state, losses, kept())
    if ema is not None:
        net.load_state_dict(ema.state_dict())
    _save_torch(net.state_dict(), run_dir / "model.pt")
    meta.update({"steps": step, "train_seconds": round(elapsed, 1), "final_loss": float(np.mean(losses[-20:]))
                 if losses else None})
    if tune:
        meta["tuning"] = tune_network(net, cfg, meta, tune)
        meta["config"].update({k: meta["tuning"][k] for k in ("threshold", "seed_threshold", "seeds")})
    _save_json(meta, run_dir / "model.json")
    return run_dir


def _check_resumed_split(data_dir, run_dir: Path, cfg: CellTrainConfig) -> None:
    """Refuse to resume when the dataset's split is no longer the run's (``model.json``): the split is derived
    from the data folder again (``split.json``, else the id hash), and an edited or added ``split.json`` would
    otherwise validate the resumed run on images it has already trained on (or train on its validation images)."""
    from medseg.cells.data import list_cases
    from medseg.cells.saved_config import load_config
    from medseg.cells.splits import dataset_split, tuning_images

    saved = load_config(run_dir)[0].get("split")
    if not saved:  # a run from before model.json recorded its split: nothing to compare with
        return
    split = dataset_split(data_dir, list_cases(data_dir), cfg.val_fraction, cfg.fold, cfg.folds)
    tune = {c.case for c in tuning_images(split["train"], cfg.tune_fraction)}
    now = {"train": {c.case for c in split["train"]} - tune, "val": {c.case for c in split["val"]}}
    for part in ("train", "val"):
        moved = sorted(set(saved.get(part, [])) ^ now[part])
        if moved:
            was = "was" if moved[0] in saved.get(part, []) else "was not"
            raise InputError(f"the dataset's split is not the run's: image '{moved[0]}' {was} one of its {part} "
                             "images (split.json added or edited?); resume with the run's split, or train a new run",
                             path=data_dir)


def _refuse_run_in_data(data_dir, run_dir: Path, cfg: CellTrainConfig) -> None:
    """Before anything is written: the run and its disk cache stay out of the dataset folder and its ``images/`` and
    ``labels/`` (another folder inside the dataset is not read by :func:`medseg.cells.data.list_cases`)."""
    from medseg.io.paths import refuse_run_in_data
    from medseg.train.store import cache_folder

    refuse_run_in_data(run_dir, cache_folder(cfg, run_dir), data_dir, ("images", "labels"))


def _prepare(data_dir, run_dir: Path, cfg: CellTrainConfig, progress: bool):
    """:func:`prepare_training_data` with the run's cache; what it created is removed again if the data turn out
    to be bad, so that a refused dataset leaves nothing behind."""
    import shutil

    from medseg.train.store import cache_folder

    folder = cache_folder(cfg, run_dir)
    created = [p for p in (run_dir, folder) if p is not None and not p.exists()]
    try:
        return prepare_training_data(data_dir, cfg, folder, progress)
    except Exception:  # (an interrupted run keeps what it cached: the next run reads it)
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise


def _checkpoint(net, opt, step, elapsed, path, ema=None, rng_state=None, losses=(), kept=None):
    """``losses``: the latest 20 go in (the running means of the log and ``model.json``); ``kept``: the data stamp
    (:func:`medseg.train.checkpoint.data_stamp`), the training budget (s) and the ``max_minutes`` it came from."""
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "elapsed_s": elapsed,
             "losses": [float(v) for v in losses[-20:]], **(kept or {})}
    if rng_state is not None:  # the batches a resumed run draws are those the uninterrupted run would have
        state["rng"] = rng_state
    if ema is not None:
        state["ema"] = ema.state_dict()
    _save_torch(state, path)


def _progress(enabled: bool, budget: float, done: float):
    from medseg.progress import bar_console, shown

    if not shown(enabled):
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), transient=True,
                 console=bar_console())
    p.start()
    return p, p.add_task("training", total=budget, completed=done)


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
