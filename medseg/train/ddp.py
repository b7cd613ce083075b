"""Distributed data parallel helpers: no-ops in a single process, torch.distributed under ``torchrun``."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import NoReturn

import torch
import torch.distributed as dist

from medseg.errors import InputError, PeerRefused
from medseg.infer.devices import parse_device

_started = False  # this process set up a process group (see medseg.cli.console)


def setup(device: str | torch.device = "auto") -> tuple[int, int]:
    """Initialise the process group when launched by torchrun (gloo on CPU, nccl on CUDA); (rank, world).

    The backend follows the parsed device's type, not its spelling: ``CPU`` or ``cpu`` must both pick gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        use_cuda = parse_device(device, require_available=False).type == "cuda" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        global _started
        _started = True  # before: a failed set-up may leave threads too
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def started() -> bool:
    """Whether this process has set up a process group (it may have closed it since)."""
    return _started


def device() -> torch.device:
    """This rank's device: its GPU under NCCL, else the CPU. The small collectives below put their tensors there,
    because an NCCL process group has no CPU transport."""
    if torch.cuda.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def any_true(flags: list[bool], world: int) -> list[bool]:
    """Each flag true on every rank if it is true on any (so all ranks stop at the same iteration); one collective
    for all of them."""
    if world <= 1:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def mean(value: float, world: int) -> float:
    if world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return float(t.item()) / world


def broadcast_float(value: float, world: int) -> float:
    if world <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.broadcast(t, 0)
    return float(t.item())


def gather_objects(obj, world: int) -> list:
    if world <= 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def refusal(error: InputError | None, world: int) -> InputError | None:
    """What this rank raises once every rank has prepared its data: its own ``error``, else a :class:`~medseg.errors.PeerRefused`
    for the first rank that refused, else ``None``. A collective: when it returns, no rank is reading or writing
    any more, so what the run created can be removed without pulling files from under a rank still writing them.

    Examples
    --------
    >>> refusal(None, 1) is None  # one process, nothing refused
    True
    >>> str(refusal(InputError("bad label", path="case.nii.gz"), 1))
    'case.nii.gz: bad label'
    """
    messages = gather_objects(None if error is None else str(error), world)
    if error is not None:
        return error
    return next((PeerRefused(r, m) for r, m in enumerate(messages) if m is not None), None)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


@contextmanager
def closed_on_interrupt(world: int):
    """Destroy the process group when Ctrl-C or SIGTERM ends training, so that the rank exits with its own code
    (an exit with the group still open aborts the process in gloo's threads)."""
    try:
        yield
    except KeyboardInterrupt:
        cleanup(world)
        raise


def cleanup(world: int) -> None:
    """Close the process group. In torch 2.13 the group object outlives this once DDP has imported torch._inductor
    (which keeps references to the group), and gloo's threads with it. Making it freed instead (importing
    torch._dynamo before the group exists) deadlocked now and then: the last reference, dropped with the GIL held,
    joins a gloo thread that waits for the GIL to free a finished collective's tensors. Left to the interpreter's
    teardown, those threads can abort the process instead, so the ``medseg`` program ends a rank without it
    (:func:`end_process`)."""
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> NoReturn:
    """End this process with ``code`` after its atexit handlers (logging, temporary folders) and a flush of stdout
    and stderr, without the interpreter's teardown, where gloo's leftover threads can abort it (:func:`cleanup`).

    The ``medseg`` program ends every torchrun rank so; a script that calls :func:`medseg.train.trainer.train` under
    torchrun can end with it too (``ddp.end_process(0)``, or 130 after a KeyboardInterrupt)."""
    import atexit
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code)
