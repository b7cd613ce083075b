"""Integrity check of an MSD/nnU-Net dataset (``medseg dataset check``): every case read as training reads it,
problems named by case."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.cpu import ignored_warnings
from medseg.errors import InputError
from medseg.io.atomic import case_name
from medseg.io.readers import image_files
from medseg.train.dataset import DATASET_SUFFIXES, Case, Dataset, _progress, load_case

_CHANNEL = re.compile(r"_\d{4}$")  # a channel file's suffix (<case>_0000)

__all__ = ["check_case", "check_dataset", "listing_problems"]


def check_case(case: Case, allowed: set[int], atol: float = 1e-3, channels: int | None = None) -> list[str]:
    """Problems of one case (empty list when fine): missing label, unreadable or non-finite image, another number
    of channels than ``channels``, geometry mismatch, unknown label values.

    Parameters
    ----------
    case : Case
        The case to read.
    allowed : set of int
        The dataset's label values.
    atol : float
        Largest distance (mm) between the world positions image and label give one voxel.
    channels : int, optional
        The dataset's number of channels.

    Returns
    -------
    list of str
        At most one problem (the first found), prefixed with the case id.

    Examples
    --------
    >>> check_case(Case("a", [Path("imagesTr/a.nii.gz")]), {0, 1})
    ['a: no label file in labelsTr']
    """
    if case.label is None:
        return [f"{case.id}: no label file in labelsTr"]
    try:  # load_case refuses shapes, label values and channel counts that do not fit, as training does
        with ignored_warnings():  # its warning about the label's grid is this check's problem line
            image, label = load_case(case, labels=allowed, channels=channels)
    except InputError as exc:
        return [f"{case.id}: {exc}"]
    offset = label.grid_offset_mm(image)  # world distance, so a far-off origin gets no more slack than a near one
    if offset > atol:
        return [f"{case.id}: image and label grids differ (voxels up to {offset:.3g} mm apart)"]
    return []


def check_dataset(ds: Dataset, progress: bool = False) -> list[str]:
    """Integrity check of every case; returns the problems, each naming its case.

    Every case is read (:func:`check_case`); cases with another number of channel files than the first are
    reported too, and so are what the folder listing alone does not show (:func:`listing_problems`): label files
    without an image, ``training`` entries without a case, cases with two label files.

    Parameters
    ----------
    ds : Dataset
        From :func:`open_dataset`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of str
        Empty when the dataset is fine.

    Examples
    --------
    >>> ds = Dataset(Path("d"), {"labels": {"0": "background"}}, [Case("a", [Path("imagesTr/a.nii.gz")])])
    >>> check_dataset(ds)
    ['a: no label file in labelsTr']
    """
    allowed = set(ds.labels)
    n_ch = None
    problems = listing_problems(ds)
    for case in _progress(ds.cases, progress, "checking"):
        problems.extend(check_case(case, allowed, channels=len(ds.channel_names)))
        if n_ch is None:
            n_ch = len(case.images)
        elif len(case.images) != n_ch:
            problems.append(f"{case.id}: {len(case.images)} channel files, other cases have {n_ch}")
    return problems


def listing_problems(ds: Dataset) -> list[str]:
    """Disagreements between imagesTr, labelsTr and dataset.json, which :func:`open_dataset` cannot see (it lists
    imagesTr only): a label without an image and a ``training`` entry whose case imagesTr does not hold (both
    cases silently dropped from training), a case with two label files (one of them silently ignored), and a
    ``numTraining`` other than the number of cases.

    Examples
    --------
    >>> ds = Dataset(Path("d"), {"training": [{"image": "./imagesTr/b.nii.gz"}]}, [Case("a", [Path("a.nii.gz")])])
    >>> listing_problems(ds)
    ["b: listed in dataset.json 'training', not in imagesTr"]
    """
    ids = {case.id for case in ds.cases}
    problems = []
    seen: dict[str, str] = {}
    if (ds.root / "labelsTr").is_dir():
        for q in image_files(ds.root / "labelsTr", DATASET_SUFFIXES):
            if case_name(q) not in ids:
                problems.append(f"{case_name(q)}: label file {q.name} has no image in imagesTr")
            elif case_name(q) in seen:  # open_dataset takes the first by name; the other is never read
                problems.append(f"{case_name(q)}: two label files, {seen[case_name(q)]} and {q.name}")
            seen.setdefault(case_name(q), q.name)
    training = ds.meta.get("training", [])
    for entry in training if isinstance(training, list) else []:
        image = entry.get("image") if isinstance(entry, dict) else None
        if isinstance(image, list) and image:  # one file per channel (MONAI's multi-channel form)
            image = image[0]
        # MSD and nnU-Net name the case (./imagesTr/<case>.nii.gz) even where its files are <case>_0000 ...; some
        # converters name the first channel file instead
        name = case_name(Path(image)) if isinstance(image, str) else None
        if name is not None and name not in ids and _CHANNEL.sub("", name) not in ids:
            problems.append(f"{name}: listed in dataset.json 'training', not in imagesTr")
    expected = ds.meta.get("numTraining")
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != len(ds.cases):
        # nnU-Net v2 refuses such a dataset: a case lost (or added) since dataset.json was written
        problems.append(f"dataset.json says numTraining {expected}, imagesTr holds {len(ds.cases)} cases")
    return problems
