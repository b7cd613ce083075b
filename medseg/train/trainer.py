"""The training loop: k-fold split, cached preprocessed cases, Dice+CE, poly LR fitted to epochs *and* a time
budget, validation by sliding window with per-class Dice, atomic checkpoints, exact resume, DDP (torchrun).

A run folder holds ``plan.yaml``, ``splits.json``, ``log.csv``, ``checkpoint_latest.pt``, ``checkpoint_best.pt``
and the model artifact ``model.pt`` (final weights). ``checkpoint_latest.pt`` (:mod:`medseg.train.checkpoint`) is
written at the end of every epoch and when training is interrupted (Ctrl-C; SIGTERM too under the CLI, which is
what torchrun sends its workers): then it holds the state after the last completed iteration, and ``--resume``
finishes that epoch exactly as an uninterrupted run would have. Under DDP a signal is held until every rank has
finished the same iteration. Resuming a finished run changes nothing (a warning says so); resuming under another plan
or fold, or on other data, is refused (:func:`medseg.train.checkpoint.check_resume`).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg.cpu import cap_torch_threads, keeps_global_rngs, keeps_torch_threads
from medseg.errors import InputError
from medseg.infer.devices import parse_device
from medseg.infer.sliding_window import cpu_has_native_bf16
from medseg.io.atomic import deferred_interrupts, remove_stale_temporaries
from medseg.plan.plan import Plan
from medseg.train import ddp
from medseg.train.artifact import build_from_plan, check_window_fits, save_model, strip_ddp, MODEL_FILE
from medseg.train.dataset import open_dataset, load_case
from medseg.train.checkpoint import LastIteration, asked_plan, check_resume, data_stamp, load as load_checkpoint, \
    restore, rng_state, save as _save, set_rng_state, training_state, update_guard
from medseg.train.cache import AUTO_SHARE, DiskCache, LazyCases, available_memory, cache_cases, on_disk, sample_size
from medseg.train.ema import WeightEMA, averaged_weights
from medseg.train.losses import SegLoss, confusion_dice
from medseg.train.run_folder import check_run_folder, write_plan
from medseg.train.runlog import append_row, progress_bar, rewrite_log
from medseg.train.sampling import augment, context_margin, sample_batch
from medseg.train.schedule import PolyLR
from medseg.train.store import cache_folder
from medseg.train.splits import fold_split
from medseg.train.tblog import ScalarLog, require_tensorboard


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    iterations: int
    elapsed_s: float
    val_dice: dict[str, float]
    best_mean_dice: float
    model_path: Path


def _rank_device(requested: torch.device, world: int) -> torch.device:
    """This process's training device. Under torchrun an index-less ``cuda`` (also what ``auto`` becomes on a GPU
    machine) is the rank's own GPU (LOCAL_RANK, set by ``ddp.setup``), so that ranks do not share one; ``cpu`` and
    an explicit ``cuda:N`` are taken as asked."""
    if world > 1 and requested.type == "cuda" and requested.index is None:
        return ddp.device()
    return requested


def _validation_cases(plan: Plan, cases, lazy: bool):
    """The validation cases in RAM, or read one at a time when the training cases did not fit in it either."""
    if lazy:  # each read once now, checked as those in RAM are: a bad case fails here, not after an epoch
        out = LazyCases(cases, plan.orientation, plan.labels, plan.in_channels)
        for _ in out:
            pass
        return out
    out = []
    for case in cases:
        image, label = load_case(case, labels=plan.labels, channels=plan.in_channels, named_by="the plan's",
                                 orientation=plan.orientation)
        out.append((image.array, image.spacing, label.array))
    return out


def _cache_training_cases(plan: Plan, run_dir: Path, cases, show: bool, cache: dict | None, rank: int, world: int):
    """The plan's ``cache`` mode applied. DDP ranks start at different cases and read what the others wrote (no
    rank waits for another, so a long preprocessing cannot time out a collective)."""
    folder = cache_folder(plan, run_dir)
    if folder is None:  # cache: memory
        return cache_cases(plan, cases, show, cache)
    disk = DiskCache(folder)
    limit = AUTO_SHARE * available_memory() / world
    return cache_cases(plan, cases, show, cache, disk, plan.cache, limit, start=rank * len(cases) // world)


def validate(network, plan: Plan, val_cases, device, progress=False, cancel=None) -> dict[str, float] | None:
    """Mean per-case Dice per class (native geometry) of ``val_cases`` = [(array, spacing, label_array)]; None
    when ``cancel()`` turns true before a case (an interrupted DDP run)."""
    from medseg.infer.predict import predict_labels

    network.eval()
    per_class: dict[int, list[float]] = {k: [] for k in plan.labels if k}
    for arr, spacing, lab in val_cases:
        if cancel is not None and cancel():
            network.train()
            return None
        pred, _ = predict_labels(network, plan, arr, spacing, device=device, batch_size=plan.batch_size)
        for k, d in confusion_dice(pred, lab, plan.num_classes).items():
            if k in per_class and not math.isnan(d):
                per_class[k].append(d)
    network.train()
    res = {plan.labels[k]: float(np.mean(v)) if v else float("nan") for k, v in per_class.items()}
    res["mean"] = float(np.nanmean(list(res.values()))) if res else float("nan")
    return res


def _stop_rank(world: int) -> None:
    """Every DDP rank stops once rank 0 has saved (torchrun signals the other ranks as soon as one exits), with its
    process group closed while signals are still held, as if each had been interrupted: also a rank that was not
    signalled itself, and one whose own handler would not raise (the held signal is delivered to it after this)."""
    ddp.barrier(world)
    ddp.cleanup(world)
    raise KeyboardInterrupt


def validation_cost(network, plan: Plan, val_cases, device, margin: float = 1.25) -> float:
    """Seconds a validation of ``val_cases`` will take, to reserve inside a time budget: one case timed now,
    scaled by the count and a safety ``margin``."""
    t0 = time.monotonic()
    validate(network, plan, val_cases[:1], device)
    return margin * (time.monotonic() - t0) * len(val_cases)


@keeps_torch_threads  # a caller's threads and random streams are its own: set back on return
@keeps_global_rngs
def train(plan: Plan | str | os.PathLike | None, run_dir: str | os.PathLike, fold: int | None = None,
          max_epochs: int | None = None,
          max_minutes: float | None = None, resume: bool = False, device: str = "auto",
          progress: bool = True, num_threads: int | None = None, validation: bool = True,
          cache: dict | None = None, tensorboard: bool = False, cache_mode: str | None = None,
          cache_dir: str | os.PathLike | None = None, plan_file: str | os.PathLike | None = None) -> TrainResult:
    """Train ``plan`` into ``run_dir``; see the module docstring. Runs under torchrun (DDP) unchanged.

    ``validation=False`` skips validation (an ensemble validates its members together); ``cache``: see
    :func:`~medseg.train.cache.cache_cases`; ``tensorboard``: loss, learning rate and validation Dice also to
    ``run_dir/tensorboard``; ``cache_mode`` / ``cache_dir`` override the plan's ``cache`` / ``cache_dir`` (also when
    resuming, e.g. on a machine with less RAM). ``plan`` may be a dataset folder or a plan/config YAML, as for
    ``medseg train`` (:func:`medseg.plan.planner.load_plan`); when resuming also ``None`` (the run's own plan), and
    any other plan may differ from the run's only in :data:`medseg.train.checkpoint.RESUMABLE` settings.
    ``plan_file``: the YAML file a ``Plan`` given was read from (a file given as ``plan`` is one): when it is the
    run folder's ``plan.yaml`` it is left as it is, and a new run whose options would change it is refused.
    KeyboardInterrupt (Ctrl-C, or SIGTERM under the CLI) is re-raised after the run saved its mid-epoch checkpoint;
    each iteration's update holds interrupts back until it is complete (under DDP: until every rank has completed
    the same iteration; a second signal is delivered at once).

    Parameters
    ----------
    plan : Plan, path or None
        The plan, a dataset folder or a plan/config YAML (see above); None only with ``resume``.
    run_dir : path
        The run folder (made if missing); one holding another run's checkpoint is refused unless ``resume``.
    fold, max_epochs, max_minutes : optional
        Override the plan's ``fold``, ``max_epochs`` and ``max_minutes`` (the time budget).
    resume : bool
        Continue the run in ``run_dir`` from its ``checkpoint_latest.pt``.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    progress : bool
        Show progress bars.
    num_threads : int, optional
        CPU threads for torch (default: the plan's, else torch's, capped to the CPU quota).
    validation, cache, tensorboard, cache_mode, cache_dir, plan_file
        As above.

    Returns
    -------
    TrainResult
        The run folder, epochs and iterations done, seconds taken, the last validation Dice per class (and
        ``mean``), the best mean Dice and the path of ``model.pt``.

    Examples
    --------
    Two synthetic 16³ cases (a box on noise), one epoch of two iterations of a tiny network:

    >>> import json, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> from medseg.plan.plan import Plan
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
    ...             max_filters=8, num_folds=2, iterations_per_epoch=2, bf16=False, cache="memory")
    >>> result = train(plan, root / "run", max_epochs=1, device="cpu", progress=False)
    >>> result.epochs, result.iterations, sorted(result.val_dice), result.model_path.name
    (1, 2, ['box', 'mean'], 'model.pt')
    >>> sorted(p.name for p in (root / "run").iterdir())
    ['checkpoint_best.pt', 'checkpoint_latest.pt', 'log.csv', 'model.pt', 'plan.yaml', 'splits.json']
    """
    t_start = time.monotonic()
    if max_minutes is not None and not 0 < max_minutes < float("inf"):  # 0 meant no limit at all
        raise InputError(f"the time budget (minutes) must be a positive number, got {max_minutes}")
    if num_threads is not None and num_threads < 1:
        raise InputError(f"threads must be at least 1, got {num_threads}")
    if tensorboard:
        require_tensorboard()  # before anything is written
    run_dir = Path(run_dir)
    requested = parse_device(device)  # a bad --device fails before any process group is set up
    rank, world = ddp.setup(str(requested))
    dev = _rank_device(requested, world)
    latest = run_dir / "checkpoint_latest.pt"
    ck = None
    if not resume and not isinstance(plan, Plan):
        from medseg.plan.planner import load_plan

        plan_file = plan if Path(plan).is_file() else plan_file
        plan = load_plan(plan, str(requested), max_minutes, progress)
    if resume:
        if not latest.is_file():
            raise InputError("--resume: no checkpoint_latest.pt in the run folder (one is written at the end of each "
                             "epoch and when Ctrl-C or SIGTERM stops training; a run stopped while it read its data, "
                             "or killed outright (SIGKILL, out of memory) in its first epoch, has none: start it "
                             "again without --resume)", path=run_dir)
        ck = load_checkpoint(latest)
        saved = Plan.from_yaml(run_dir / "plan.yaml")
        given, dataset = asked_plan(plan, fold, saved)
        check_resume(saved, given, run_dir / "plan.yaml")  # another plan or fold would mix two runs
        saved.dataset = dataset or saved.dataset
        plan = saved
    elif latest.exists():
        raise InputError("run folder already holds a checkpoint: use --resume, or another folder", path=run_dir)
    if fold is not None:
        if not 0 <= fold < plan.num_folds:  # the option is wrong, not the plan
            raise InputError(f"--fold {fold} is not in 0..{plan.num_folds - 1} (the plan's num_folds is "
                             f"{plan.num_folds})")
        plan.fold = fold
    if max_epochs is not None:
        plan.max_epochs = max_epochs
    if max_minutes is not None:
        plan.max_minutes = max_minutes
    if cache_mode is not None:
        plan.cache = cache_mode
    if cache_dir is not None:
        plan.cache_dir = str(Path(cache_dir).resolve())
    plan.validate()
    if dev.type == "cpu":  # a GPU's memory is its own; CUDA refuses what it cannot hold
        check_window_fits(plan.base_filters, plan.patch_size, plan_file, batch=plan.batch_size)
    if num_threads or plan.num_threads:
        torch.set_num_threads(int(num_threads or plan.num_threads))
    else:  # torch counts the host's cores, not a container's CPU quota
        cap_torch_threads()
    if plan.dataset is None:
        raise InputError("the plan names no dataset folder (set 'dataset:' in the plan)")
    ds = open_dataset(plan.dataset)  # before anything is written
    if ck is not None:  # so is a dataset with the run's case ids but other files
        check_resume(plan, None, Path(plan.dataset), ck.get("data"),
                     data_stamp(c for c in ds.cases if c.id in (ck.get("data") or {})))
    check_run_folder(plan, run_dir, plan_file, resume)
    show = progress and rank == 0
    # what this run creates is removed again if the data turn out to be bad (a resumed run keeps its folder)
    created = [p for p in (run_dir, cache_folder(plan, run_dir)) if p and not p.exists()] if rank == 0 else []
    refused = None
    try:
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(run_dir)  # a checkpoint being written when the run was killed outright
            write_plan(plan, run_dir / "plan.yaml")
        split = fold_split(run_dir, ds, plan, write=rank == 0)
        by_id = {c.id: c for c in ds.cases}
        stamp = data_stamp(by_id[i] for i in split["train"] + split["val"])
        train_cases = _cache_training_cases(plan, run_dir, [by_id[i] for i in split["train"]], show, cache, rank,
                                            world)
        val_cases = _validation_cases(plan, [by_id[i] for i in split["val"]], on_disk(train_cases)) \
            if rank == 0 and validation else []
    except InputError as exc:  # every rank learns of it before any file goes: another may still be writing
        refused = exc
    refused = ddp.refusal(refused, world)
    if refused is not None:
        for p in created:
            shutil.rmtree(p, ignore_errors=True)
        raise refused

    torch.manual_seed(plan.seed + rank)
    random.seed(plan.seed + rank)
    np_rng = np.random.default_rng(plan.seed + rank)
    gen = torch.Generator().manual_seed(plan.seed + 1000 + rank)

    network = build_from_plan(plan).to(dev)
    opt = (torch.optim.AdamW(network.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)
           if plan.optimizer == "adamw" else
           torch.optim.SGD(network.parameters(), lr=plan.learning_rate, momentum=0.99, nesterov=True,
                           weight_decay=plan.weight_decay))
    sched = PolyLR(opt, plan.learning_rate)
    ema = WeightEMA(network, plan.ema) if plan.ema else None
    loss_fn = SegLoss(plan).to(dev)  # its class weights must sit where the logits are
    epoch, iteration, elapsed_before, best = 0, 0, 0.0, -1.0
    last_val: dict[str, float] = {}
    history: list[dict] = []
    resumed_losses: list[float] = []  # of an epoch interrupted part way: it continues at its next iteration
    budget_stop_s = None
    if ck is not None:
        restore(ck, latest, network, opt, sched, ema, updates=ck["iteration"])
        epoch, iteration, elapsed_before, best = ck["epoch"], ck["iteration"], ck["elapsed_s"], ck["best"]
        last_val = dict(ck.get("val") or {})  # what model.pt records, should no epoch be left to validate
        if rank < len(ck["rng"]):  # a rank the saved run did not have keeps its own seed, not rank 0's stream
            set_rng_state(ck["rng"][rank], np_rng, gen)
        if rank == 0 and len(ck["rng"]) != world:
            warnings.warn(f"resuming a run of {len(ck['rng'])} process(es) with {world}: it trains on, but does not "
                          "draw the patches the uninterrupted run would have")
        history = list(ck.get("history", []))
        per_rank = ck.get("rank_losses") or [ck.get("epoch_losses", [])]  # same length on every rank
        resumed_losses = [float(v) for v in (per_rank[rank] if rank < len(per_rank) else per_rank[0])]
        budget_stop_s = ck.get("budget_stop_s")  # the run (or its interrupted epoch) had met this time budget
        if rank == 0:  # the log is exactly the checkpoint's history: rows of a killed epoch are dropped
            rewrite_log(run_dir / "log.csv", history, plan)
    model = ddp.wrap(network, dev) if world > 1 else network
    scalars = ScalarLog(run_dir, tensorboard and rank == 0, purge_step=iteration if resume else None)
    budget = plan.max_minutes * 60 if plan.max_minutes else None
    total_iters = plan.max_epochs * plan.iterations_per_epoch
    use_amp = dev.type == "cuda" or (plan.bf16 and cpu_has_native_bf16())  # emulated bf16 is slower than fp32
    log_path = run_dir / "log.csv"
    val_cost = 0.0
    spacing_sample = plan.network_spacing
    # image around each patch for rotation and scaling to draw on (2D plans: none along the slice axis)
    margin = [0] * (3 - plan.spatial_dims) + context_margin(plan.patch_size, plan.augment, spacing_sample)

    def elapsed():
        return elapsed_before + time.monotonic() - t_start

    # DDP: a signal is held until every rank has finished the same iteration, then the state is saved and every
    # rank stops; held through the validation timing before and the artifact after the loop too
    with ddp.closed_on_interrupt(world), (deferred_interrupts(escape=True) if world > 1 else nullcontext([])) as held:
        if budget and rank == 0 and val_cases:
            val_cost = validation_cost(network, plan, val_cases, dev)
        val_cost = ddp.broadcast_float(val_cost, world)

        # an epoch interrupted after the budget had stopped it (in its validation, say) only finishes, unless the
        # resumed run was given more time
        stop = bool(budget_stop_s and budget and budget <= budget_stop_s)
        finished = not (epoch < plan.max_epochs and (not stop or resumed_losses))
        if finished and resume and rank == 0:
            more = "its time budget is spent: more --max-minutes" if stop else "a higher --max-epochs"
            warnings.warn(f"the run had finished (epoch {epoch}, iteration {iteration}): nothing to train; {more} "
                          "trains it on")
        while epoch < plan.max_epochs and (not stop or resumed_losses):
            model.train()
            losses, resumed_losses = resumed_losses, []
            lr = opt.param_groups[0]["lr"]  # an epoch interrupted after its last iteration has none left to set it
            done, best_before, committed = epoch + 1, best, False
            last = LastIteration(np_rng, gen, sched, elapsed()) if world == 1 else None
            bar = progress_bar(show, f"epoch {done}/{plan.max_epochs}", plan.iterations_per_epoch, len(losses))

            def save_interrupted(state: LastIteration, rng, rank_losses=None):
                _save(latest, training_state(network, opt, state.scheduler, ema, epoch=epoch, iteration=iteration,
                                             elapsed_s=state.elapsed_s, best=best_before, rng=list(rng),
                                             history=history, epoch_losses=losses, rank_losses=rank_losses,
                                             budget_stop_s=budget if stop else None, val=last_val, data=stamp))

            try:
                interrupted = False
                for _ in range(0 if stop else plan.iterations_per_epoch - len(losses)):
                    prog = iteration / total_iters
                    if budget:
                        prog = max(prog, elapsed() / max(budget - val_cost, 1e-6))
                    # rank 0's clock for all: ranks started at other instants, and another learning rate on one
                    # rank would make its weights drift from the others' (DDP averages gradients, not weights)
                    lr = sched.step(ddp.broadcast_float(prog, world) if budget else prog)
                    x, y = sample_batch(train_cases, sample_size(plan), plan.batch_size, np_rng,
                                        plan.foreground_oversample, squeeze_first=plan.spatial_dims == 2,
                                        margin=margin)
                    x, y = augment(x, y, gen, plan.augment, spacing_sample, size=plan.patch_size)
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    with update_guard(world):  # weights, optimiser, EMA, counter and losses change together
                        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                            out = model(x)
                        loss = loss_fn(out, y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                        opt.step()
                        if ema is not None:
                            ema.update(network)
                        losses.append(float(loss.detach()))
                        iteration += 1
                        if last is not None:
                            last.take(np_rng, gen, sched, elapsed())
                    if bar:
                        bar.update(1, loss=losses[-1])
                    local_stop = bool(budget and elapsed() + val_cost >= budget)
                    budget_hit, interrupted = ddp.any_true([local_stop, bool(held)], world)
                    stop = stop or budget_hit
                    if budget_hit or interrupted:
                        break
                if bar:
                    bar.close()
                rng_all = ddp.gather_objects((rng_state(np_rng, gen), losses), world)
                after = LastIteration(np_rng, gen, sched, elapsed()) if world > 1 else None  # not the validation
                if interrupted:  # DDP: every rank stops after the same iteration; rank 0 keeps all ranks' state
                    if rank == 0:
                        save_interrupted(after, *zip(*rng_all))
                    _stop_rank(world)
                    break
                train_loss = ddp.mean(float(np.mean(losses)), world)
                final = stop or done >= plan.max_epochs
                row = {"epoch": done, "iteration": iteration, "train_loss": round(train_loss, 5), "lr": f"{lr:.6g}"}
                if rank == 0:
                    if val_cases and (final or done % plan.val_every == 0):
                        t0 = time.monotonic()
                        with averaged_weights(network, ema):
                            last_val = validate(network, plan, val_cases, dev, cancel=lambda: bool(held)) or {}
                            if last_val and last_val["mean"] > best:
                                best = last_val["mean"]
                                _save(run_dir / "checkpoint_best.pt", {"model": strip_ddp(network.state_dict()),
                                                                       "epoch": done, "val": last_val})
                        val_cost = max(val_cost, time.monotonic() - t0)
                        row.update({f"val_{k}": round(v, 5) for k, v in last_val.items()})
                    row["elapsed_s"] = round(elapsed(), 1)
                if world > 1 and ddp.any_true([bool(held)], world)[0]:  # a signal during the validation
                    if rank == 0:  # the epoch's iterations are kept; its validation runs again on --resume
                        save_interrupted(after, *zip(*rng_all))
                    _stop_rank(world)
                    break
                if rank == 0:
                    scalars.add(iteration, **{"train/loss": train_loss, "train/lr": lr},
                                **{f"val/dice_{k}": v for k, v in last_val.items() if "val_mean" in row})
                with update_guard(world):  # the epoch is committed whole: checkpoint, history and log row
                    if rank == 0:
                        _save(latest, training_state(network, opt, sched.state_dict(), ema, epoch=done,
                                                     iteration=iteration, elapsed_s=elapsed(), best=best,
                                                     rng=[r for r, _ in rng_all], history=history + [row],
                                                     budget_stop_s=budget if stop else None, val=last_val, data=stamp))
                        history.append(row)
                        append_row(log_path, row, plan)
                    epoch, committed = done, True
            except KeyboardInterrupt:
                if last is not None and not committed:  # single process: keep the epoch's completed iterations
                    save_interrupted(last, [last.rng])
                raise
            val_cost = ddp.broadcast_float(val_cost, world)
            ddp.barrier(world)
        else:  # DDP, trained to the end: a signal held since the last poll stops every rank before the artifact
            if world > 1 and ddp.any_true([bool(held)], world)[0]:
                _stop_rank(world)
        scalars.close()
        model_path = run_dir / MODEL_FILE
        if rank == 0 and not (finished and model_path.is_file()):  # a finished run's model is kept as it is
            save_model(model_path, plan, (network if ema is None else ema).state_dict(), epochs=epoch,
                       iterations=iteration, elapsed_s=round(elapsed(), 1), fold=plan.fold, val_dice=last_val)
        ddp.barrier(world)
        ddp.cleanup(world)
    return TrainResult(run_dir, epoch, iteration, elapsed(), last_val, best, model_path)
