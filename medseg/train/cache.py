"""Preprocessed training cases on disk, read back as memory maps: datasets larger than RAM train, and a resumed
run, the folds of one plan and the ranks of a DDP run reuse one preprocessing (like nnU-Net's preprocessed folder).

Each case is an entry of :class:`medseg.train.store.ArrayStore`, ``<case>.<key>.{image.npy,label.npy,small.npz,json}``
(the foreground index in the ``.npz``); ``key`` hashes what
the arrays depend on (the plan's normalisation, spacing, dimensionality and patch padding, the source files' sizes
and modification times, medseg's version and this module's format), so a changed plan or a replaced file misses
instead of reusing stale arrays. The marker is written last, each file atomically: a half-written case is never
read. A patch sampled from a memory map is copied out of it, so batches are the same values as from the in-RAM
cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from medseg.plan.plan import Plan
from medseg.system import available_memory  # the container's limit counts (cgroups)
from medseg.train.dataset import _progress, load_case
from medseg.train.preprocess import check_grid_fits, preprocess
from medseg.train.sampling import CachedCase, foreground_index, pad_to
from medseg.train.store import ArrayStore, source_stats

FORMAT = 5  # bump when what preprocess_case computes changes: older caches then miss (5: labels resized class by class)
# 'auto' keeps cases in RAM until they would hold this share of the RAM available when caching starts (divided
# among DDP ranks), then moves them all to disk: the network, the optimiser and the batches need the rest
AUTO_SHARE = 0.4


def case_key(plan: Plan, case, size) -> str:
    """Hash of everything a preprocessed case depends on.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(id="a", images=[], label=None)
    >>> case_key(Plan(), c, [64, 64, 64]) == case_key(Plan(), c, [64, 64, 64])
    True
    >>> case_key(Plan(), c, [64, 64, 64]) == case_key(Plan(target_spacing=[2.0, 1.0, 1.0]), c, [64, 64, 64])
    False
    """
    d = plan.to_dict()
    from medseg import __version__

    what = {"format": FORMAT, "medseg": __version__, "normalisation": d["normalisation"],
            "target_spacing": d["target_spacing"], "spatial_dims": d["spatial_dims"], "size": [int(s) for s in size],
            **({"orientation": d["orientation"]} if d.get("orientation") else {}),  # older keys stay valid
            "sources": source_stats([*case.images, *([case.label] if case.label else [])])}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def nbytes(case: CachedCase) -> int:
    """RAM a case holds (its image and label; memory-mapped cases hold none).

    Examples
    --------
    >>> case = CachedCase("a", torch.zeros(1, 2, 2, 2), torch.zeros(2, 2, 2, dtype=torch.int16), {})
    >>> nbytes(case)  # 8 float32 + 8 int16
    48
    """
    return sum(int(a.numel() * a.element_size()) for a in (case.image, case.label) if isinstance(a, torch.Tensor))


class DiskCache:
    """A folder of preprocessed cases; ``get`` returns a memory-mapped case or ``None``, ``put`` writes one.

    Parameters
    ----------
    root : path
        The cache folder (:func:`medseg.train.store.cache_folder`); the first ``put`` creates it.

    Examples
    --------
    >>> import tempfile
    >>> disk = DiskCache(tempfile.mkdtemp())
    >>> case = CachedCase("a", torch.ones(1, 2, 2), torch.zeros(2, 2, dtype=torch.int16), {})
    >>> mapped = disk.put(case, "k1")
    >>> type(mapped.image).__name__, disk.get("a", "k1").image.shape, disk.get("a", "k2")
    ('memmap', (1, 2, 2), None)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.store = ArrayStore(root)

    def _stem(self, case_id: str, key: str) -> Path:
        return self.store.stem(case_id, key)

    def get(self, case_id: str, key: str) -> CachedCase | None:
        """The case stored under ``key``, memory-mapped; ``None`` when there is none (or only part of one)."""
        got = self.store.get(case_id, key)
        if got is None or sorted(got[0]) != ["image", "label"]:
            return None
        arrays, fg = got
        return CachedCase(case_id, arrays["image"], arrays["label"], {int(k[1:]): v for k, v in fg.items()})

    def put(self, case: CachedCase, key: str) -> CachedCase:
        """Write ``case`` (in RAM) and return it memory-mapped from disk, so its RAM can be freed."""
        arrays, fg = self.store.put(case.id, key, {"image": case.image.numpy(), "label": case.label.numpy()},
                                    {f"c{k}": v for k, v in case.fg.items()})
        return CachedCase(case.id, arrays["image"], arrays["label"], {int(k[1:]): v for k, v in fg.items()})


def sample_size(plan: Plan) -> list[int]:
    """The crop size of training patches (2D plans: a leading 1 for the slice axis).

    Examples
    --------
    >>> sample_size(Plan(spatial_dims=2, patch_size=[64, 48]))
    [1, 64, 48]
    """
    return [1, *plan.patch_size] if plan.spatial_dims == 2 else list(plan.patch_size)


def preprocess_case(plan: Plan, case) -> CachedCase:
    """Read, normalise, resample and pad one training case (2D plans: slice axis first).

    Parameters
    ----------
    plan : Plan
        Labels and channels checked on reading, then preprocessing (:func:`medseg.train.preprocess.preprocess`).
    case : medseg.train.dataset.Case
        A labelled case.

    Returns
    -------
    CachedCase
        In RAM, at least :func:`sample_size` on every axis, with its foreground index.
    """
    image, label = load_case(case, labels=plan.labels, channels=plan.in_channels, named_by="the plan's",
                             orientation=plan.orientation)
    check_grid_fits(image.array.shape, image.spacing, plan, case.images[0] if case.images else case.id)
    x, y = preprocess(image.array, image.spacing, plan, label.array)
    if plan.spatial_dims == 2:
        ax = plan.slice_axis
        x, y = x.movedim(ax + 1, 1), y.movedim(ax, 0)
    return pad_to(CachedCase(case.id, x, y, foreground_index(y)), sample_size(plan))


def cache_cases(plan: Plan, cases, progress: bool = False, cache: dict | None = None,
                disk: DiskCache | None = None, mode: str = "memory", limit: float | None = None,
                start: int = 0) -> list[CachedCase]:
    """Preprocess training cases once; returns them in the order of ``cases``.

    ``mode``: ``'memory'`` keeps them in RAM; ``'disk'`` writes them to ``disk`` and reads them back as memory
    maps; ``'auto'`` keeps them in RAM until they would hold more than ``limit`` bytes, then moves every case to
    ``disk``. With a ``disk``, cases already there (same key) are read, not preprocessed again. ``cache`` (case id
    -> CachedCase), when given, is reused and filled: an ensemble's members share it. ``start``: begin with that
    case and wrap around, so that DDP ranks preprocess different cases first and read the others' files.

    Parameters
    ----------
    plan : Plan
        Preprocessing and patch size.
    cases : iterable of medseg.train.dataset.Case
        Labelled cases.
    progress : bool
        Show a progress bar.
    cache, disk, mode, limit, start
        As above (``limit`` in bytes).

    Returns
    -------
    list of CachedCase
        In RAM (tensors) or memory-mapped (numpy arrays).
    """
    if mode not in ("auto", "memory", "disk"):
        raise ValueError(f"unknown cache mode {mode!r}")
    if mode != "memory" and disk is None:
        raise ValueError(f"cache mode {mode!r} needs a DiskCache")
    size = sample_size(plan)
    cases = list(cases)
    keys = {c.id: case_key(plan, c, size) for c in cases} if mode != "memory" else {}
    order = cases[start % len(cases):] + cases[:start % len(cases)] if cases else []
    done: dict[str, CachedCase] = {}
    held = 0
    for case in _progress(order, progress, "preprocessing"):
        c = cache.get(case.id) if cache is not None else None
        if c is None and mode != "memory":
            c = disk.get(case.id, keys[case.id])
            if c is not None and not set(c.fg) <= set(plan.labels):
                # the key holds no labels (a plan's edited label list keeps it): read the files again, whose check
                # refuses the value as in RAM, rather than train on a class the network does not have
                c = None
        if c is None:
            c = preprocess_case(plan, case)
            if mode == "disk":
                c = disk.put(c, keys[case.id])
        held += nbytes(c)
        done[case.id] = c
        if mode == "auto" and limit is not None and held > limit:  # spill: every case in RAM goes to disk
            done = {i: disk.put(o, keys[i]) if nbytes(o) else o for i, o in done.items()}
            mode, held = "disk", 0
    out = [done[c.id] for c in cases]
    if cache is not None:
        cache.update(done)
    return out


def on_disk(cases: list[CachedCase]) -> bool:
    """Whether any case is memory-mapped from disk (then validation cases are read when needed, too).

    Examples
    --------
    >>> on_disk([CachedCase("a", torch.zeros(1, 2, 2), torch.zeros(2, 2, dtype=torch.int16), {})])
    False
    """
    return any(not isinstance(c.image, torch.Tensor) for c in cases)


class LazyCases:
    """Validation cases read from their files when iterated, as ``(array, spacing, label_array)``: held in RAM one
    at a time instead of all through training.

    Parameters
    ----------
    cases : iterable of medseg.train.dataset.Case
        Labelled cases; ``len`` and slicing (another ``LazyCases``) read nothing, an index reads that case.
    orientation : str, optional
        ``Plan.orientation``, as for training.
    labels, channels : optional
        The plan's label values and channel count: a case with others is an ``InputError``, as in RAM.
    """

    def __init__(self, cases, orientation: str | None = None, labels=None, channels: int | None = None):
        self.cases, self.orientation, self.labels, self.channels = list(cases), orientation, labels, channels

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyCases(self.cases[i], self.orientation, self.labels, self.channels)
        image, label = load_case(self.cases[i], labels=self.labels, channels=self.channels, named_by="the plan's",
                                 orientation=self.orientation)
        return image.array, image.spacing, label.array

    def __iter__(self):
        return (self[i] for i in range(len(self)))
