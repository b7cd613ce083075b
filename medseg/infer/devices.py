"""The one place where a ``--device`` string becomes a :class:`torch.device` (plan, train, predict).

Users type ``gpu`` or ``cuda`` on a machine without CUDA; both must end in a one-line :class:`InputError`
(exit 2), not in a RuntimeError deep inside torch (exit 1, "internal error").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from medseg.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = ["parse_device", "DEVICE_HELP"]

# The CLI's --device help strings (read when the CLI starts, which does not import torch: hence torch is imported
# inside the functions below, not at the top of this module)
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def parse_device(text: str | torch.device, require_available: bool = True) -> torch.device:
    """The device named by ``text``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Parameters
    ----------
    text : str or torch.device
        What the user wrote (case and surrounding blanks do not matter), or a device already parsed.
    require_available : bool
        Also check that a CUDA device exists on this machine (and that ``N`` is one of them). ``False`` only
        checks the spelling: a plan may be written here for a GPU machine elsewhere.

    Returns
    -------
    torch.device

    Raises
    ------
    InputError
        For an unknown name (``gpu``, ``tpu``, ``cpu:1``) or, with ``require_available``, a CUDA device that this
        machine does not have.

    Examples
    --------
    >>> parse_device("CPU")
    device(type='cpu')
    >>> parse_device("cuda:1", require_available=False)
    device(type='cuda', index=1)
    >>> parse_device("gpu")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: unknown device 'gpu' (use auto, cpu, cuda or cuda:N)
    """
    import torch

    raw = str(text).strip()
    match = _PATTERN.match(raw.lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise InputError(f"unknown device '{raw}' (use {DEVICE_HELP})")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if require_available:
        _check_cuda(raw, None if index is None else int(index))
    # plain "cuda" keeps no index: under torchrun it means the rank's current device (set by ddp.setup)
    return torch.device("cuda") if index is None else torch.device("cuda", int(index))


def _check_cuda(raw: str, index: int | None) -> None:
    """InputError unless this machine has CUDA and, when ``index`` is given, that many devices."""
    import torch

    if not torch.cuda.is_available():
        raise InputError(f"--device {raw}: no CUDA device on this machine")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise InputError(f"--device {raw}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
