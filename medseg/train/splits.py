"""k-fold splits of a dataset's labelled cases, and the run's ``splits.json`` that fixes one for good."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.plan.plan import Plan


def make_splits(case_ids: list[str], k: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """Seeded k-fold split of case ids (each case is validated in exactly one fold).

    Examples
    --------
    >>> s = make_splits([f"c{i}" for i in range(10)], 5)
    >>> len(s), sorted(sum((f["val"] for f in s), [])) == sorted(f"c{i}" for i in range(10))
    (5, True)
    """
    ids = sorted(set(case_ids))  # an id given twice would land in two folds: validated on while trained on
    if k < 2 or len(ids) < 2:
        return [{"train": ids, "val": ids}]
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = np.array_split(order, min(k, len(ids)))
    return [{"train": sorted(ids[i] for j, f in enumerate(folds) if j != n for i in f),
             "val": sorted(ids[i] for i in fold)} for n, fold in enumerate(folds)]


def fold_split(run_dir: Path, ds, plan: Plan, write: bool = True) -> dict[str, list[str]]:
    """The plan's fold of the run's ``splits.json`` (written from :func:`make_splits` with the plan's seed when the
    run has none yet, so that a resumed run or an ensemble's members keep it); checks its case ids exist.

    Parameters
    ----------
    run_dir : Path
        The run folder (it must exist when the file is written).
    ds : Dataset
        The dataset; its labelled cases are split.
    plan : Plan
        ``num_folds``, ``seed`` and ``fold`` (beyond the folds in the file: the last one).
    write : bool
        Write ``splits.json`` when the run has none.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...]}``, case ids sorted.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.train.dataset import Case, Dataset
    >>> ds = Dataset(Path("d"), {}, [Case(f"c{i}", [], Path(f"c{i}.nii.gz")) for i in range(4)])
    >>> run = Path(tempfile.mkdtemp())
    >>> split = fold_split(run, ds, Plan(num_folds=2))
    >>> len(split["train"]), len(split["val"]), (run / "splits.json").is_file()
    (2, 2, True)
    >>> fold_split(run, ds, Plan(num_folds=2, fold=1))["val"] == split["train"]  # the other fold
    True
    """
    split_file = run_dir / "splits.json"
    if split_file.is_file():
        splits = json.loads(split_file.read_text())
    else:
        splits = make_splits([c.id for c in ds.cases if c.label is not None], plan.num_folds, plan.seed)
        if write:
            with atomic_path(split_file) as tmp:
                tmp.write_text(json.dumps(splits, indent=1))
    split = splits[min(plan.fold, len(splits) - 1)]
    known = {c.id for c in ds.cases}
    missing = [i for i in split["train"] + split["val"] if i not in known]
    if missing:
        raise InputError(f"splits.json names cases that are not in the dataset: {missing[:3]}", path=split_file)
    both = sorted(set(split["train"]) & set(split["val"]))
    # validated on its own training cases, the run would report a training Dice as a validation Dice; only what
    # make_splits writes when nothing can be held out (num_folds 1, or a single case) validates on all it trains on
    if both and not (set(split["train"]) == set(split["val"]) and (plan.num_folds < 2 or len(split["val"]) < 2)):
        raise InputError(f"splits.json fold {min(plan.fold, len(splits) - 1)} lists case '{both[0]}' under both "
                         f"train and val ({len(both)} such case(s))", path=split_file)
    return split
