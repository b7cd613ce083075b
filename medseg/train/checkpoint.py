"""``checkpoint_latest.pt`` of the semantic trainer: what it holds, atomic saves, and the training state right after
the last completed iteration that an interrupted epoch is saved with.

A checkpoint holds the network, optimiser, scheduler and EMA states, ``epoch`` (epochs completed), ``iteration``
(optimiser steps taken), ``elapsed_s``, ``best`` (best mean validation Dice so far), ``history`` (the rows of
``log.csv``) and ``rng`` (per rank: the torch, numpy, python and augmentation generators, so that a resumed run
draws the patches the uninterrupted one would have). One written at the end of an epoch has ``epoch_losses`` empty;
one written when a run is interrupted (Ctrl-C, or SIGTERM, which the CLI turns into KeyboardInterrupt) inside
epoch ``epoch + 1`` holds the losses of that epoch's iterations done so far (under DDP also ``rank_losses``, each
rank's), and ``--resume`` runs only the rest of that epoch. Under DDP the signal is held until every rank has
finished the same iteration (or rank 0 its validation case), so that they stop together. ``val`` is the last
validation's Dice (what ``model.pt`` records), ``data`` the :func:`data_stamp` of the cases the run trains and
validates on, and ``budget_stop_s`` the time budget that had already stopped training, if one had.

A resumed run continues with the run's own plan: only the settings in :data:`RESUMABLE` may change, and only on the
dataset it trained on (:func:`check_resume`).
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from pathlib import Path

import torch

from medseg.cpu import ignored_warnings
from medseg.errors import InputError
from medseg.io.atomic import atomic_path, deferred_interrupts
from medseg.train.artifact import strip_ddp

# plan settings a resumed run may change: where the data are, how long it trains, how it is computed (threads, cache,
# bf16) and what only prediction uses; any other change would continue the checkpoint under another plan
RESUMABLE = ("name", "dataset", "max_epochs", "max_minutes", "num_threads", "cache", "cache_dir", "bf16", "overlap",
             "tta", "ensemble")


def rng_state(np_rng, gen) -> dict:
    """Every generator training draws from: torch's global one, ``np_rng`` (patch sampling), python's ``random``
    and ``gen`` (augmentation). Sampling and augmentation use only ``np_rng`` and ``gen`` today; the global ones are
    kept too (a few microseconds) so that a layer or library drawing from them cannot break an exact resume."""
    return {"torch": torch.get_rng_state(), "numpy": np_rng.bit_generator.state, "python": random.getstate(),
            "augment": gen.get_state()}


def set_rng_state(d: dict, np_rng, gen) -> None:
    torch.set_rng_state(d["torch"])
    np_rng.bit_generator.state = d["numpy"]
    st = d["python"]
    random.setstate((st[0], tuple(st[1]), st[2]))
    gen.set_state(d["augment"])


def save(path: Path, payload: dict) -> None:
    """``torch.save`` to a temporary file, then rename: an interrupt (even a second Ctrl-C) or a full disk during
    the write leaves the previous checkpoint as it was."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


KEYS = ("model", "optimizer", "scheduler", "epoch", "iteration", "elapsed_s", "best", "rng")


def load(path: Path, keys=KEYS) -> dict:
    """A checkpoint read safely (``weights_only=True``); one that does not load (truncated, empty, not a torch file)
    or lacks one of ``keys`` is an ``InputError`` naming it, not a traceback."""
    try:
        with ignored_warnings():  # torch's advice to load with weights_only=False: never
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = " ".join(str(exc).split()).split(". ")[0][:100]  # torch's first sentence: the rest is advice
        raise InputError(f"cannot read the checkpoint, it is damaged or not medseg's ({type(exc).__name__}: {why}); "
                         "train again without --resume", path=path) from None
    missing = [k for k in keys if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise InputError(f"not a medseg training checkpoint (no {missing[0]!r})", path=path)
    return ck


def restore(ck: dict, path: Path, network, opt, scheduler=None, ema=None, updates: int = 1) -> None:
    """Load a checkpoint's network, optimiser, scheduler and EMA states (``updates``: the optimiser steps the average
    has had); one saved for another network or optimiser is an ``InputError`` naming ``path``."""
    try:
        network.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ck["scheduler"])
        if ema is not None:
            ema.load_state_dict(ck.get("ema") or ck["model"], updates=updates)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the checkpoint does not match the run's network ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]})", path=path) from None


def data_stamp(cases) -> dict[str, list[int]]:
    """Case id -> the sizes (bytes) of its image and label files: what tells the dataset a run trained on from
    another with the same case ids (a moved or copied dataset has the same stamp). ``cases``: dataset cases
    (``images``, ``label``) or cell cases (``image_path``, ``label_path``)."""
    def files(c):
        return [*c.images, c.label] if hasattr(c, "images") else [c.image_path, c.label_path]

    return {getattr(c, "id", None) or c.case: [os.path.getsize(p) for p in files(c) if p is not None] for c in cases}


def asked_plan(plan, fold: int | None, saved):
    """What a resumed run is asked for: the plan to compare with the run's plan ``saved`` (None: its own; ``fold``
    applied) and the dataset folder its data are in now (None: where the plan says). ``plan``: as
    :func:`medseg.train.trainer.train`'s (a dataset folder only says where the data are)."""
    from medseg.plan.plan import Plan

    if plan is None or isinstance(plan, Plan):
        given = plan
    elif Path(plan).is_dir():
        given, plan = None, Plan(dataset=str(Path(plan).resolve()))
    else:
        from medseg.plan.planner import load_plan

        given = plan = load_plan(plan)
    if fold is not None:
        given = Plan.from_dict({**(given or saved).to_dict(), "fold": fold})
    return given, plan.dataset if plan is not None else None


def check_resume(saved, given, where: Path, data: dict | None = None, now: dict | None = None) -> None:
    """Refuse to resume under other settings or on other data than the run's.

    Parameters
    ----------
    saved, given : Plan or CellTrainConfig
        The run's settings and those asked for (fields outside :data:`RESUMABLE` must agree; ``given`` None: none
        asked for).
    where : Path
        The run's settings file, named in the message.
    data, now : dict, optional
        The checkpoint's :func:`data_stamp` (absent in older checkpoints: not checked) and the data's now.

    Raises
    ------
    InputError
        One line naming what differs.

    Examples
    --------
    >>> from medseg.plan.plan import Plan
    >>> check_resume(Plan(), Plan(max_epochs=300, dataset="moved"), Path("run/plan.yaml"))  # allowed
    >>> check_resume(Plan(), Plan(seed=1), Path("run/plan.yaml"))
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: run/plan.yaml: cannot resume with other settings than the run's: seed 0 (given 1)
    """
    if given is not None:
        a, b = saved.to_dict(), given.to_dict()
        differ = [f"{k} {a.get(k)!r} (given {b.get(k)!r})" for k in sorted(set(a) | set(b))
                  if k not in RESUMABLE and a.get(k) != b.get(k)]
        if differ:
            raise InputError(f"cannot resume with other settings than the run's: {'; '.join(differ)}", path=where)
    if data:
        other = sorted(i for i in set(data) | set(now or {}) if data.get(i) != (now or {}).get(i))
        if other:
            more = f" and {len(other) - 1} more" if len(other) > 1 else ""
            raise InputError(f"not the data the run trained on: case {other[0]}{more} missing or other files; "
                             "--resume with the run's dataset, or train a new run", path=where)


def training_state(network, opt, scheduler: dict, ema, *, epoch: int, iteration: int, elapsed_s: float,
                   best: float, rng: list, history: list, epoch_losses: list | None = None,
                   rank_losses: list | None = None, budget_stop_s: float | None = None, val: dict | None = None,
                   data: dict | None = None) -> dict:
    """The checkpoint's contents (see the module docstring); ``scheduler`` is a ``PolyLR.state_dict()``
    (:mod:`medseg.train.schedule`); ``rank_losses``: under DDP, every rank's ``epoch_losses``; ``budget_stop_s``: the
    time budget (s) that had already stopped training, if one had; ``val``: the last validation; ``data``: the
    :func:`data_stamp`."""
    return {"model": strip_ddp(network.state_dict()), "optimizer": opt.state_dict(), "scheduler": scheduler,
            "epoch": epoch, "iteration": iteration, "elapsed_s": elapsed_s, "best": best, "rng": rng,
            "history": history, "epoch_losses": list(epoch_losses or []), "budget_stop_s": budget_stop_s,
            "val": dict(val or {}), "data": dict(data or {}),
            **({"rank_losses": [list(v) for v in rank_losses]} if rank_losses is not None else {}),
            **({"ema": strip_ddp(ema.state_dict())} if ema is not None else {})}


def update_guard(world: int):
    """Context for one iteration's forward pass through its step count: Ctrl-C and SIGTERM are held back until it
    ends, so an interrupt never leaves weights, optimiser and EMA (or batch-norm statistics, updated by the forward
    pass) one step ahead of the counter an interrupted run saves. Under DDP the trainer holds signals for the whole
    loop instead and polls them after each iteration, so that every rank stops after the same one."""
    return deferred_interrupts() if world == 1 else nullcontext()


class LastIteration:
    """What changes outside an iteration's guarded update, as it was right after the last completed iteration: the
    RNG states (the next batch is drawn before its update), the scheduler (stepped before it) and the elapsed time
    (the work of an iteration cut short is done again after resuming, so it is not counted)."""

    __slots__ = ("rng", "scheduler", "elapsed_s")

    def __init__(self, np_rng, gen, scheduler, elapsed_s: float):
        self.take(np_rng, gen, scheduler, elapsed_s)

    def take(self, np_rng, gen, scheduler, elapsed_s: float) -> None:
        self.rng, self.scheduler, self.elapsed_s = rng_state(np_rng, gen), scheduler.state_dict(), elapsed_s
