"""Optional TensorBoard scalars beside ``log.csv`` (the CSV stays the record; TensorBoard is for watching runs).

Needs the ``tensorboard`` package (``pip install "medseg[tensorboard]"``); without it asking for TensorBoard is a
clear one-line error before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import InputError


def require_tensorboard() -> None:
    """Raise ``InputError`` when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise InputError("--tensorboard needs the tensorboard package (pip install 'medseg[tensorboard]')") from exc


class ScalarLog:
    """Scalars to ``RUN/tensorboard``; does nothing when ``enabled`` is False.

    ``purge_step``: on resume, the iteration the checkpoint holds; events a killed run wrote after it are dropped, so
    the curves continue without doubled points.
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
        if self.writer is not None:
            self.writer.close()
