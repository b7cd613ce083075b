"""``checkpoint_latest.pt`` of the semantic trainer: what it holds, atomic saves, and the training state right after
the last completed iteration that an interrupted epoch is saved with.

A checkpoint holds the network, optimiser, scheduler and EMA states, ``epoch`` (epochs completed), ``iteration``
(optimiser steps taken), ``elapsed_s``, ``best`` (best mean validation Dice so far), ``history`` (the rows of
``log.csv``) and ``rng`` (per rank: the torch, numpy, python and augmentation generators, so that a resumed run
draws the patches the uninterrupted one would have). One written at the end of an epoch has ``epoch_losses`` empty;
one written when a run is interrupted (Ctrl-C, or SIGTERM, which the CLI turns into KeyboardInterrupt) inside
epoch ``epoch + 1`` holds the losses of that epoch's iterations done so far (under DDP also ``rank_losses``, each
rank's), and ``--resume`` runs only the rest of that epoch. Under DDP the signal is held until every rank has
finished the same iteration (or rank 0 its validation case), so that they stop together.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from pathlib import Path

import torch

from medseg.io.atomic import atomic_path, deferred_interrupts
from medseg.train.artifact import strip_ddp


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


def training_state(network, opt, scheduler: dict, ema, *, epoch: int, iteration: int, elapsed_s: float,
                   best: float, rng: list, history: list, epoch_losses: list | None = None,
                   rank_losses: list | None = None, budget_stop_s: float | None = None) -> dict:
    """The checkpoint's contents (see the module docstring); ``scheduler`` is a ``PolyLR.state_dict()``;
    ``rank_losses``: under DDP, every rank's ``epoch_losses``; ``budget_stop_s``: the time budget (s) that had
    already ended the interrupted epoch, if one had."""
    return {"model": strip_ddp(network.state_dict()), "optimizer": opt.state_dict(), "scheduler": scheduler,
            "epoch": epoch, "iteration": iteration, "elapsed_s": elapsed_s, "best": best, "rng": rng,
            "history": history, "epoch_losses": list(epoch_losses or []), "budget_stop_s": budget_stop_s,
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
