"""A folder of cached arrays read back as memory maps: what the disk caches of the semantic trainer
(:mod:`medseg.train.cache`) and the cell trainer (:mod:`medseg.cells.cache`) are built on.

An entry is named by an id and a key (a hash of everything its arrays depend on) and is a few files,
``<id>.<key>.<name>.npy`` per array, optionally ``<id>.<key>.small.npz`` (small arrays, read whole), and the marker
``<id>.<key>.json`` naming every array's shape and dtype. Each file is written atomically and the marker last, so a
half-written entry is never read; a missing, truncated or foreign file makes ``get`` return ``None`` (the caller
computes the entry again) rather than fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_path, remove_stale_temporaries

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def cache_folder(settings, run_dir: str | os.PathLike) -> Path | None:
    """The disk cache a run reads and writes: ``settings.cache_dir`` (shared by the runs and folds of one plan or
    recipe), else ``RUN/cache``; ``None`` when ``settings.cache`` is ``"memory"`` (the run uses no folder, even
    one it names). ``settings``: a :class:`medseg.plan.plan.Plan` or a ``CellTrainConfig``.

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> cache_folder(S(cache="auto", cache_dir=None), "runs/a").as_posix()
    'runs/a/cache'
    >>> cache_folder(S(cache="memory", cache_dir="shared"), "runs/a") is None
    True
    """
    if settings.cache == "memory":
        return None
    return Path(settings.cache_dir) if settings.cache_dir else Path(run_dir) / "cache"


def source_stats(paths) -> list:
    """What identifies the contents of source files in a cache key: resolved path, size, modification time (ns).

    Examples
    --------
    >>> source_stats([__file__])[0][1] > 0
    True
    """
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


class ArrayStore:
    """Entries of named arrays in a folder; ``get`` returns read-only memory maps (or ``None``), ``put`` writes.

    Examples
    --------
    >>> import tempfile
    >>> store = ArrayStore(tempfile.mkdtemp())
    >>> arrays, small = store.put("case 1", "k0", {"image": np.ones((2, 3), np.float32)})
    >>> arrays["image"].shape, type(arrays["image"]).__name__, store.get("case 1", "other") is None
    ((2, 3), 'memmap', True)
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._swept = False

    def _sweep(self) -> None:
        """Once per store: remove the temporary files of a write that was killed outright (SIGKILL, the OOM
        killer), as large as an entry's arrays; the run's own sweep covers only the run folder, not a cache in
        it or shared by several runs. Those of live writers (other runs, folds, ranks) are locked and stay."""
        if not self._swept:
            self._swept = True
            remove_stale_temporaries(self.root)

    def stem(self, entry_id: str, key: str) -> Path:
        safe = _UNSAFE.sub("_", entry_id)
        if safe != entry_id or len(safe) > 64:  # ids that differ only where they were replaced, or too long for a
            # file name once the suffixes are added, stay apart by a digest of the id itself
            safe = f"{safe[:64]}-{hashlib.sha1(entry_id.encode()).hexdigest()[:10]}"
        return self.root / f"{safe}.{key}"

    def get(self, entry_id: str, key: str) -> tuple[dict, dict] | None:
        """``(arrays, small)``: the memory-mapped arrays and the small ones, or None if the entry is not (wholly)
        there."""
        self._sweep()
        stem = self.stem(entry_id, key)
        try:
            meta = json.loads(Path(f"{stem}.json").read_text())
            if meta.get("id") != entry_id or meta.get("key") != key:
                return None
            arrays = {}
            for name, (shape, dtype) in meta["arrays"].items():
                a = np.load(f"{stem}.{name}.npy", mmap_mode="r")
                if list(a.shape) != shape or a.dtype.str != dtype:
                    return None
                arrays[name] = a
            small = {}
            if meta.get("small"):
                with np.load(f"{stem}.small.npz", allow_pickle=False) as z:
                    small = {k: z[k] for k in z.files}
                if sorted(small) != sorted(meta["small"]):
                    return None
        except (OSError, ValueError, KeyError, TypeError, EOFError):  # missing, truncated or foreign
            return None
        return arrays, small

    def put(self, entry_id: str, key: str, arrays: dict, small: dict | None = None) -> tuple[dict, dict]:
        """Write an entry and return it as ``get`` reads it (memory-mapped, so the caller can free its copies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep()
        stem = self.stem(entry_id, key)
        meta = {"id": entry_id, "key": key, "arrays": {}, "small": sorted(small or {})}
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            with atomic_path(Path(f"{stem}.{name}.npy")) as tmp, open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            meta["arrays"][name] = [list(arr.shape), arr.dtype.str]
        if small:
            with atomic_path(Path(f"{stem}.small.npz")) as tmp, open(tmp, "wb") as f:
                np.savez(f, **small)
        with atomic_path(Path(f"{stem}.json")) as tmp:  # last: the entry is complete once this exists
            tmp.write_text(json.dumps(meta))
        got = self.get(entry_id, key)
        if got is None:  # the files just written do not read back: a broken disk, not a user error
            raise OSError(f"cached entry {entry_id} does not read back from {self.root}")
        return got
