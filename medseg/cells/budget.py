"""The cell trainer's time budget (:func:`medseg.cells.train.train_cells`).

``max_minutes`` covers reading the data, training and the threshold search on the tuning images
(:mod:`medseg.cells.tune`). The search's time is kept back from training: first a guess, then, ``MEASURE_AT`` into
training, what the search measures on one tuning image with the network as it then is, scaled to the others
(:func:`medseg.cells.tune.tuning_costs`). Its cost depends on the maps (25 s to 100 s on DSB2018's 40 tuning
images), so a short run searches on as many images as fit in ``SEARCH_SHARE`` of its budget (at least 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from medseg.cells.tune import affordable_cases

MEASURE_AT = 0.25  # the fraction of training after which the search is timed: late enough for maps like the final ones
SEARCH_SHARE = 0.25  # the most of max_minutes the search may take: beyond it, it takes fewer tuning images


@dataclass
class CellBudget:
    """Seconds for training and for the threshold search.

    Parameters
    ----------
    base_s : float
        Seconds for training and the search: ``max_minutes`` less the first reading of the data.
    reserve_s : float
        Seconds kept back for the search.
    measured : bool
        Whether ``reserve_s`` was measured (or is the first guess).
    max_minutes : float
        The run's budget in minutes.
    tune_images : int
        How many tuning images (the first ones) the search takes.

    Examples
    --------
    >>> b = CellBudget.start(max_minutes=10, prepared_s=20.0, n_tune=8)
    >>> b.training_s, b.due(elapsed=100.0, step=5), b.due(elapsed=200.0, step=5)
    (550.0, False, True)
    >>> b.settle(np.full(8, 30.0)), b.training_s  # 150 s, a quarter of 10 minutes, holds 5 images
    (5, 430.0)
    """

    base_s: float
    reserve_s: float
    measured: bool
    max_minutes: float
    tune_images: int
    measure_at_s: float = field(init=False)

    def __post_init__(self):
        self.measure_at_s = MEASURE_AT * self.training_s

    @classmethod
    def start(cls, max_minutes: float, prepared_s: float, n_tune: int) -> "CellBudget":
        """A new run's budget, with a first guess of the search's time (none without tuning images)."""
        reserve = min(60.0, 0.05 * max_minutes * 60.0) if n_tune else 0.0
        return cls(max_minutes * 60.0 - prepared_s, reserve, not n_tune, max_minutes, n_tune)

    @classmethod
    def resumed(cls, saved: dict, max_minutes: float, n_tune: int) -> "CellBudget":
        """The budget a checkpoint saved (:meth:`saved`), plus any minutes added: the run's first reading of the
        data stays counted, and a measured search is not measured again."""
        reserve = float(saved.get("reserve_s", 0.0))  # runs from before the measured reserve kept none
        base = saved["budget_s"] + reserve + (max_minutes - saved["max_minutes"]) * 60.0
        return cls(base, reserve, bool(saved.get("reserve_measured", True)), max_minutes,
                   min(n_tune, int(saved.get("tune_images", n_tune))))

    @property
    def training_s(self) -> float:
        """Seconds training may run, counted from the start of the run."""
        return max(0.0, self.base_s - self.reserve_s)

    def due(self, elapsed: float, step: int) -> bool:
        """Whether the search is to be timed now (once, after at least one step)."""
        return not self.measured and step > 0 and elapsed >= self.measure_at_s

    def settle(self, costs: Sequence[float]) -> int:
        """Keep back the measured search ``costs`` (seconds per tuning image) of the images that fit in
        ``SEARCH_SHARE`` of the budget; returns how many that is."""
        n = affordable_cases(costs, SEARCH_SHARE * self.max_minutes * 60.0)
        self.reserve_s, self.measured, self.tune_images = float(np.sum(costs[:n])), True, n
        return n

    def saved(self) -> dict:
        """What a checkpoint keeps (``budget_s`` unclipped, so that :meth:`resumed` recovers ``base_s``)."""
        return {"budget_s": self.base_s - self.reserve_s, "max_minutes": self.max_minutes,
                "reserve_s": self.reserve_s, "reserve_measured": self.measured, "tune_images": self.tune_images}
