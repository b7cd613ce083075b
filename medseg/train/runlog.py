"""The run folder's ``log.csv`` (one row per completed epoch, appended whole) and the training progress bar; also
:func:`trim_log` for the cell trainer's log (one row per 10 steps)."""

from __future__ import annotations

import csv
from pathlib import Path

from medseg.io.atomic import atomic_path
from medseg.plan.plan import Plan


def columns(plan: Plan) -> list[str]:
    return ["epoch", "iteration", "train_loss", "lr", "elapsed_s", "val_mean"] + \
           [f"val_{n}" for k, n in sorted(plan.labels.items()) if k]


def rewrite_log(path: Path, rows: list[dict], plan: Plan):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns(plan), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def append_row(path: Path, row: dict, plan: Plan):
    cols = columns(plan)
    new = not path.exists()
    with open(path, "a", newline="") as f:  # append-only log: each row is written whole, then flushed
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()


def trim_log(path: Path, last: int) -> None:
    """Drop the rows of a CSV log whose first column (an epoch or step count) is above ``last``, the resumed
    checkpoint's: a run killed after it logged them logs them again. A half-written last row is dropped too."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.endswith("\n") and ln.split(",")[0].isdigit()
                        and int(ln.split(",")[0]) <= last]
    if keep != lines:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(keep))


class _Bar:
    def __init__(self, desc, total, initial=0):
        from tqdm import tqdm

        self.t = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n, loss):
        self.t.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.t.update(n)

    def close(self):
        self.t.close()


def progress_bar(show, desc, total, initial=0):
    return _Bar(desc, total, initial) if show else None
