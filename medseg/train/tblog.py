"""Optional TensorBoard scalars beside ``log.csv`` (the CSV stays the record; TensorBoard is for watching runs).

Needs the ``tensorboard`` package (``pip install "medseg[tensorboard]"``); without it asking for TensorBoard is a
clear one-line error before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import InputError


def require_tensorboard() -> None:
    """Raise ``InputError`` when the ``tensorboard`` package is missing.

    Raises
    ------
    InputError
        Saying how to install it.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise InputError("--tensorboard needs the tensorboard package (pip install 'medseg[tensorboard]')") from exc


class ScalarLog:
    """Scalars to ``RUN/tensorboard``; does nothing when ``enabled`` is False.

    ``purge_step``: on resume, the iteration the checkpoint holds; events a killed run wrote after it are dropped, so
    the curves continue without doubled points.

    Parameters
    ----------
    run_dir : path
        The run folder.
    enabled : bool
        Write events (needs ``tensorboard``: :func:`require_tensorboard`).
    purge_step : int, optional
        As above.

    Examples
    --------
    >>> log = ScalarLog("runs/a", enabled=False)  # writes nothing, needs nothing
    >>> log.add(100, **{"train/loss": 0.4})
    >>> log.close()
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, purge_step: int | None = None):
        self.writer = None
        if enabled:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def add(self, step: int, **scalars: float) -> None:
        """``add(100, **{"train/loss": 0.4})``: one point per scalar at ``step``."""
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file (if any)."""
        if self.writer is not None:
            self.writer.close()
