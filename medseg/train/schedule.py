"""The learning-rate schedule: poly decay on the progress of a run, by iterations or by its time budget."""

from __future__ import annotations


class PolyLR:
    """Poly decay on progress = max(iterations done / planned, time used / budget), so a time budget ends with
    a decayed LR. Its state (progress) is saved and restored."""

    def __init__(self, optimizer, base_lr: float, exponent: float = 0.9):
        self.opt, self.base_lr, self.exponent, self.progress = optimizer, base_lr, exponent, 0.0

    def step(self, progress: float) -> float:
        self.progress = min(max(progress, self.progress), 1.0)
        lr = self.base_lr * (1 - self.progress) ** self.exponent
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self):
        return {"progress": self.progress, "base_lr": self.base_lr, "exponent": self.exponent}

    def load_state_dict(self, d):
        self.progress, self.base_lr, self.exponent = d["progress"], d["base_lr"], d["exponent"]
