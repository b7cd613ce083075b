"""Preprocessed training cases on disk, read back as memory maps: datasets larger than RAM train, and a resumed
run, the folds of one plan and the ranks of a DDP run reuse one preprocessing (like nnU-Net's preprocessed folder).

Each case is three files and a marker, ``<case>.<key>.{image.npy,label.npy,fg.npz,json}``; ``key`` hashes what
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
import re
from pathlib import Path

import numpy as np
import torch

from medseg.io.atomic import atomic_path
from medseg.plan.plan import Plan
from medseg.system import available_memory  # the container's limit counts (cgroups)
from medseg.train.dataset import _progress, load_case
from medseg.train.preprocess import preprocess, slice_axis
from medseg.train.sampling import CachedCase, foreground_index, pad_to

FORMAT = 1  # bump when what preprocess_case computes changes: older caches then miss
# 'auto' keeps cases in RAM until they would hold this share of the RAM available when caching starts (divided
# among DDP ranks), then moves them all to disk: the network, the optimiser and the batches need the rest
AUTO_SHARE = 0.4
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


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
    def stat(p):
        st = os.stat(p)
        return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns]

    d = plan.to_dict()
    from medseg import __version__

    what = {"format": FORMAT, "medseg": __version__, "normalisation": d["normalisation"],
            "target_spacing": d["target_spacing"], "spatial_dims": d["spatial_dims"], "size": [int(s) for s in size],
            "sources": [stat(p) for p in case.images] + ([stat(case.label)] if case.label else [])}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(plan: Plan, run_dir: str | os.PathLike) -> Path:
    """Where the plan's disk cache lives: ``cache_dir`` (shared by runs and folds of one plan), else ``RUN/cache``."""
    return Path(plan.cache_dir) if plan.cache_dir else Path(run_dir) / "cache"


def nbytes(case: CachedCase) -> int:
    """RAM a case holds (its image and label; memory-mapped cases hold none)."""
    return sum(int(a.numel() * a.element_size()) for a in (case.image, case.label) if isinstance(a, torch.Tensor))


class DiskCache:
    """A folder of preprocessed cases; ``get`` returns a memory-mapped case or ``None``, ``put`` writes one."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _stem(self, case_id: str, key: str) -> Path:
        return self.root / f"{_UNSAFE.sub('_', case_id)}.{key}"

    def get(self, case_id: str, key: str) -> CachedCase | None:
        stem = self._stem(case_id, key)
        try:
            meta = json.loads(Path(f"{stem}.json").read_text())
            if meta.get("id") != case_id or meta.get("key") != key:
                return None
            image = np.load(f"{stem}.image.npy", mmap_mode="r")
            label = np.load(f"{stem}.label.npy", mmap_mode="r")
            with np.load(f"{stem}.fg.npz", allow_pickle=False) as z:
                fg = {int(k[1:]): z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError):  # missing, truncated or foreign: preprocess again
            return None
        if list(image.shape) != meta.get("image_shape") or list(label.shape) != meta.get("label_shape"):
            return None
        return CachedCase(case_id, image, label, fg)

    def put(self, case: CachedCase, key: str) -> CachedCase:
        """Write ``case`` (in RAM) and return it memory-mapped from disk, so its RAM can be freed."""
        self.root.mkdir(parents=True, exist_ok=True)
        stem = self._stem(case.id, key)
        image, label = case.image.numpy(), case.label.numpy()
        for suffix, arr in (("image.npy", image), ("label.npy", label)):
            with atomic_path(Path(f"{stem}.{suffix}")) as tmp, open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        with atomic_path(Path(f"{stem}.fg.npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{f"c{k}": v for k, v in case.fg.items()})
        meta = {"id": case.id, "key": key, "image_shape": list(image.shape), "label_shape": list(label.shape)}
        with atomic_path(Path(f"{stem}.json")) as tmp:  # last: the case is complete once this exists
            tmp.write_text(json.dumps(meta))
        got = self.get(case.id, key)
        if got is None:  # the files just written do not read back: a broken disk, not a user error
            raise OSError(f"preprocessed case {case.id} does not read back from {self.root}")
        return got


def sample_size(plan: Plan) -> list[int]:
    """The crop size of training patches (2D plans: a leading 1 for the slice axis)."""
    return [1, *plan.patch_size] if plan.spatial_dims == 2 else list(plan.patch_size)


def preprocess_case(plan: Plan, case) -> CachedCase:
    """Read, normalise, resample and pad one training case (2D plans: slice axis first)."""
    image, label = load_case(case)
    x, y = preprocess(image.array, image.spacing, plan, label.array)
    if plan.spatial_dims == 2:
        ax = slice_axis(image.spacing)
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
    """Whether any case is memory-mapped from disk (then validation cases are read when needed, too)."""
    return any(not isinstance(c.image, torch.Tensor) for c in cases)


class LazyCases:
    """Validation cases read from their files when iterated, as ``(array, spacing, label_array)``: held in RAM one
    at a time instead of all through training."""

    def __init__(self, cases):
        self.cases = list(cases)

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyCases(self.cases[i])
        image, label = load_case(self.cases[i])
        return image.array, image.spacing, label.array

    def __iter__(self):
        return (self[i] for i in range(len(self)))
