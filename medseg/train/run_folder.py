"""A run folder and its inputs: it may not lie in the dataset it trains on, and a plan file put into it to train
from is the user's, not rewritten (the contract: inputs are never modified)."""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import InputError
from medseg.io.paths import refuse_run_in_data
from medseg.plan.plan import Plan
from medseg.train.store import cache_folder

DATA_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")  # what is read of a dataset folder: no run in them


def _rewritten(plan: Plan, path: Path) -> list[str]:
    """What writing ``plan`` over the plan file ``path`` would change (``key old -> new``); all when it is no plan."""
    try:
        saved = Plan.from_yaml(path).to_dict()
    except InputError:
        return ["all"]
    asked = plan.to_dict()  # as the file reads back: a relative folder is relative to it (the same folder)
    asked.update({k: str(Path(v).resolve()) for k in ("dataset", "cache_dir")
                  if (v := asked[k]) and not os.path.isabs(v)})
    return [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in asked.items() if saved.get(k) != v]


def check_run_folder(plan: Plan, run_dir: Path, plan_file: str | os.PathLike | None, resume: bool) -> None:
    """Refuse, before anything is written, what would change an input: a run or disk cache folder that is the
    dataset folder or lies in its data folders, and a new run from its own ``plan.yaml`` (``plan_file``) that the
    options given would rewrite (a resumed run's plan.yaml is the run's, updated as it goes on)."""
    refuse_run_in_data(run_dir, cache_folder(plan, run_dir), plan.dataset, DATA_FOLDERS)
    own = run_dir / "plan.yaml"
    if not resume and plan_file is not None and own.is_file() and os.path.samefile(plan_file, own) and \
            (changed := _rewritten(plan, own)):
        raise InputError(f"the plan file is the run folder's own plan.yaml, and the options given would rewrite it "
                         f"({'; '.join(changed)}): copy it out of the run folder first", path=own)


def write_plan(plan: Plan, path: Path) -> None:
    """Write a run's ``plan.yaml`` unless it holds ``plan`` already (a plan file put there to train from keeps its
    comments and relative paths)."""
    if not path.is_file() or _rewritten(plan, path):
        plan.to_yaml(path)
