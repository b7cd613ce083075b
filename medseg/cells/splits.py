"""Which images a cell model trains, tunes and validates on: a split that is a pure function of the case id (a
hash), so it is stable when cases are added or removed and needs no file; ``split.json`` (``{"train": [...], "val":
[...]}``) in the dataset folder overrides it. The same hash cut into ``folds`` equal ranges gives a k-fold split
(:func:`fold_of`), for cross-validated numbers. Tuning images (or blocks cut from the training images) are held out
of training to choose the watershed thresholds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medseg.cells.data import CellCase, load_case
from medseg.errors import InputError

def _unit_hash(case: str, seed: str) -> float:
    return int(hashlib.sha1(f"{seed}:{case}".encode()).hexdigest()[:8], 16) / 16**8

def split_of(case: str, val_fraction: float = 0.15, seed: str = "medseg-cells") -> str:
    """'train' or 'val' from a hash of the id: stable, no file needed.

    A case is ``val`` when the hash of ``seed`` and its id, a number in [0, 1), is below ``val_fraction``: the
    split does not depend on the other cases, and a larger fraction only moves cases from train to val.

    Parameters
    ----------
    case : str
        Case id.
    val_fraction : float
        Expected share of validation cases.
    seed : str
        Salt of the hash (another seed, another split).

    Returns
    -------
    str
        ``"train"`` or ``"val"``.

    Examples
    --------
    >>> split_of("img_001", 0.0), split_of("img_001", 1.0)
    ('train', 'val')
    >>> ids = [f"img_{i:03d}" for i in range(1000)]
    >>> all(split_of(c, 0.3) == "val" for c in ids if split_of(c, 0.15) == "val")
    True
    >>> abs(sum(split_of(c) == "val" for c in ids) / 1000 - 0.15) < 0.05
    True
    """
    return "val" if _unit_hash(case, seed) < val_fraction else "train"

def fold_of(case: str, folds: int = 5, seed: str = "medseg-cells") -> int:
    """The fold (0 .. ``folds`` - 1) of a case in a k-fold split by the same hash as :func:`split_of`.

    Fold 0 of 5 holds the hash range [0, 0.2), so it contains the default validation split ([0, 0.15)).

    Parameters
    ----------
    case : str
        Case id.
    folds : int
        Number of folds.
    seed : str
        Salt of the hash (as :func:`split_of`'s).

    Returns
    -------
    int

    Examples
    --------
    >>> [fold_of(c, 5) for c in ("a", "b", "c")] == [fold_of(c, 5) for c in ("a", "b", "c")]
    True
    >>> split_of("a", 0.2) == ("val" if fold_of("a", 5) == 0 else "train")
    True
    """
    return int(_unit_hash(case, seed) * folds)  # the hash is below 1, so the fold is below ``folds``

def dataset_split(root, cases: list[CellCase], val_fraction: float = 0.15, fold: int | None = None,
                  folds: int = 5) -> dict[str, list[CellCase]]:
    """Split cases into train/val: fold ``fold`` of a ``folds``-fold split (:func:`fold_of`) when a fold is given,
    else ``split.json`` in ``root`` if present, else :func:`split_of`.

    ``split.json`` names the validation ids (``{"val": [ids]}``: every other case trains) and optionally the
    training ids (``{"train": [ids], "val": [ids]}``: a case named in neither list is used by neither, e.g. a
    held-out test image; an id in both is an ``InputError``).

    Parameters
    ----------
    root : path
        Dataset folder (where ``split.json`` may be).
    cases : list of CellCase
        The dataset's cases.
    val_fraction : float
        Share of validation cases of the hash split.
    fold, folds : int
        Validate on fold ``fold`` of ``folds`` (a ``split.json`` then is an ``InputError``).

    Returns
    -------
    dict
        ``{"train": [...], "val": [...]}``, each in the order of ``cases``.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
    >>> cases = [CellCase(i, Path(f"{i}.png"), None) for i in ("a", "b", "c", "d")]
    >>> parts = [dataset_split(root, cases, fold=k, folds=2)["val"] for k in (0, 1)]
    >>> sorted(c.case for part in parts for c in part)       # every case validated in exactly one fold
    ['a', 'b', 'c', 'd']
    >>> _ = (root / "split.json").write_text('{"val": ["b"]}')
    >>> {k: [c.case for c in v] for k, v in dataset_split(root, cases).items()}
    {'train': ['a', 'c', 'd'], 'val': ['b']}
    >>> _ = (root / "split.json").write_text('{"train": ["a", "c"], "val": ["b"]}')   # "d" held out of both
    >>> {k: [c.case for c in v] for k, v in dataset_split(root, cases).items()}
    {'train': ['a', 'c'], 'val': ['b']}
    >>> tmp.cleanup()
    """
    f = Path(root) / "split.json"
    if fold is not None:
        if f.exists():  # two definitions of the validation images: refuse rather than pick one silently
            raise InputError("the dataset has its own split.json; a fold cannot be used with it", path=f)
        in_fold = [fold_of(c.case, folds) == fold for c in cases]
        return {"train": [c for c, v in zip(cases, in_fold) if not v], "val": [c for c, v in zip(cases, in_fold) if v]}
    if f.exists():
        try:
            spec = json.loads(f.read_text())
            val = set(spec["val"])
            train = set(spec["train"]) if "train" in spec else None
        except Exception as exc:
            raise InputError(f"cannot read split ({exc})", path=f) from exc
        both = sorted(val & train) if train is not None else []
        if both:
            raise InputError(f"split lists '{both[0]}' under both train and val", path=f)
        # a "train" list is the training images: a case in neither list (a held-out test image) is not trained on
        return {"train": [c for c in cases if c.case not in val and (train is None or c.case in train)],
                "val": [c for c in cases if c.case in val]}
    out: dict = {"train": [], "val": []}
    for c in cases:
        out[split_of(c.case, val_fraction)].append(c)
    return out

def tuning_images(train: list[CellCase], fraction: float) -> list[CellCase]:
    """The training cases held out whole for the threshold search: ``fraction`` of them by a hash of the id (like
    the validation split); none when that is fewer than 3 (then :func:`tuning_blocks`) or every case.

    Parameters
    ----------
    train : list of CellCase
        The training split.
    fraction : float
        Expected share held out (0: none).

    Returns
    -------
    list of CellCase
        In the order of ``train``.

    Examples
    --------
    >>> cases = [CellCase(f"img_{i:03d}", Path(f"img_{i:03d}.png"), None) for i in range(100)]
    >>> tuning_images(cases, 0.0), tuning_images(cases[:2], 0.5)    # off; at most 2 of 2 images: too few
    ([], [])
    >>> 3 <= len(tuning_images(cases, 0.1)) < 100
    True
    """
    tune = [c for c in train if fraction and split_of(c.case, fraction, "medseg-tune") == "val"]
    return [] if len(tune) < 3 or len(tune) == len(train) else tune

def tuning_block(shape, share: float = 0.2, min_block: int = 8, min_rest: int = 16) -> tuple[int, int] | None:
    """(axis, thickness) of the block :func:`tuning_blocks` holds out of an image of ``shape``: the last ``share``
    along its longest axis (the last of equals); None when the block would be thinner than ``min_block`` or the
    rest thinner than ``min_rest``.

    Parameters
    ----------
    shape : sequence of int
        The image's shape.
    share : float
        Share of the longest axis held out (rounded up).
    min_block, min_rest : int
        Smallest thickness of the block and of what is left.

    Returns
    -------
    (int, int) or None
        The axis and the block's thickness.

    Examples
    --------
    >>> tuning_block((31, 61, 28)), tuning_block((10, 30))
    ((1, 13), None)
    """
    axis = max(range(len(shape)), key=lambda a: (shape[a], a))
    k = int(np.ceil(share * shape[axis]))
    return None if k < min_block or shape[axis] - k < min_rest else (axis, k)

TUNE_BLOCK = ":tune"  # id suffix of a held-out block (model.json's split names it so)

def tuning_blocks(cases: list[CellCase], **block) -> tuple[list[CellCase], list[CellCase]]:
    """Hold out the block :func:`tuning_block` names of each loaded case as a tuning case (id ``<id>:tune``);
    returns (the cases without their blocks, the blocks). For datasets with too few images to hold out whole ones
    (a few 3D stacks): the watershed thresholds are then still chosen on pixels the network was not trained on.

    Parameters
    ----------
    cases : list of CellCase
        Loaded cases (``image`` and ``labels`` set).
    **block
        ``share``, ``min_block``, ``min_rest`` of :func:`tuning_block`.

    Returns
    -------
    rest : list of CellCase
        Every case, without its block where it has one (views of the arrays, not copies).
    blocks : list of CellCase
        The blocks, ids ``<id>:tune``.

    Examples
    --------
    >>> c = CellCase("a", Path("a.tif"), None, np.zeros((10, 40)), np.zeros((10, 40), int))
    >>> rest, blocks = tuning_blocks([c])
    >>> rest[0].image.shape, blocks[0].image.shape, blocks[0].case
    ((10, 32), (10, 8), 'a:tune')
    """
    rest, blocks = [], []
    for c in cases:
        cut = tuning_block(c.labels.shape, **block)
        if cut is None:
            rest.append(c)
            continue
        axis, k = cut
        n = c.labels.shape[axis]
        head = tuple(slice(0, n - k) if a == axis else slice(None) for a in range(c.labels.ndim))
        tail = tuple(slice(n - k, n) if a == axis else slice(None) for a in range(c.labels.ndim))
        rest.append(CellCase(c.case, c.image_path, c.label_path, c.image[head], c.labels[head], c.spacing))
        blocks.append(CellCase(f"{c.case}{TUNE_BLOCK}", c.image_path, c.label_path, c.image[tail], c.labels[tail],
                               c.spacing))
    return rest, blocks

def recorded_tuning_cases(cases: list[CellCase], tune_ids, channel: int | None = None) -> list[CellCase]:
    """The loaded tuning cases a run's ``model.json`` split names (``tune_ids``) out of the dataset's ``cases``:
    whole images by id, and held-out blocks (``<id>:tune``, :func:`tuning_blocks`) cut again from their image, so
    that thresholds can be re-chosen after training on exactly the pixels training chose them on.

    Parameters
    ----------
    cases : list of CellCase
        The dataset's cases (loaded here when needed).
    tune_ids : iterable of str
        Ids of the run's tuning cases.
    channel : int, optional
        Channel read from multi-channel images.

    Returns
    -------
    list of CellCase
        In the order of ``tune_ids``; an id not in ``cases`` is an ``InputError``.

    Examples
    --------
    >>> c = CellCase("a", Path("a.tif"), None, np.zeros((10, 40)), np.zeros((10, 40), int))
    >>> [(t.case, t.image.shape) for t in recorded_tuning_cases([c], ["a:tune"])]
    [('a:tune', (10, 8))]
    """
    by_id = {c.case: c for c in cases}
    out = []
    for tid in tune_ids:
        base = by_id.get(tid.removesuffix(TUNE_BLOCK))
        if base is None:
            raise InputError(f"the run's tuning image '{tid}' is not in this dataset")
        if base.image is None:
            load_case(base, channel)
        out += tuning_blocks([base])[1] if tid.endswith(TUNE_BLOCK) else [base]
    return out
