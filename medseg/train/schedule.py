"""The learning-rate schedule: poly decay on the progress of a run, by iterations or by its time budget."""

from __future__ import annotations


class PolyLR:
    """Poly decay on progress = max(iterations done / planned, time used / budget), so a time budget ends with
    a decayed LR. Its state (progress) is saved and restored.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Every parameter group's ``lr`` is set by :meth:`step`.
    base_lr : float
        The rate at progress 0.
    exponent : float
        ``lr = base_lr * (1 - progress) ** exponent``.

    Examples
    --------
    >>> import torch
    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    >>> sched = PolyLR(opt, 0.01)
    >>> [round(sched.step(p), 5) for p in (0.0, 0.5, 0.25, 1.0)]  # progress never goes back
    [0.01, 0.00536, 0.00536, 0.0]
    >>> opt.param_groups[0]["lr"], sched.state_dict()["progress"]
    (0.0, 1.0)
    """

    def __init__(self, optimizer, base_lr: float, exponent: float = 0.9):
        self.opt, self.base_lr, self.exponent, self.progress = optimizer, base_lr, exponent, 0.0

    def step(self, progress: float) -> float:
        """Set the optimizer's rate for ``progress`` (in [0, 1]; a lower value than before counts as before) and
        return it."""
        self.progress = min(max(progress, self.progress), 1.0)
        lr = self.base_lr * (1 - self.progress) ** self.exponent
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self):
        return {"progress": self.progress, "base_lr": self.base_lr, "exponent": self.exponent}

    def load_state_dict(self, d):
        self.progress, self.base_lr, self.exponent = d["progress"], d["base_lr"], d["exponent"]
