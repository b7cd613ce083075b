"""Training pairs of the cell trainer -- a normalised image with its targets -- computed once per training image
and kept in RAM or, for datasets larger than RAM, in a disk cache read back as memory maps.

A pair is ``(image, 3-class target, distance target or None, contact weight map or None, offsets or None,
instance labels)``, the offsets as one map per axis. ``CellTrainConfig.cache`` chooses where pairs live:
``memory``; ``disk`` (each pair written to the cache folder as it is made, then read back memory-mapped, so RAM
holds one image's arrays at a time and the operating system pages crops in); ``auto`` (the default: in RAM until
they would hold :data:`medseg.train.cache.AUTO_SHARE` of the available RAM, then all on disk). Entries are keyed by
a hash of the source files' sizes and modification times and of every setting the arrays depend on
(:func:`pair_key`), so a resumed run, another fold or another seed of the same recipe reads them instead of
computing them again, and a changed file or setting misses. Crops copied out of memory maps equal crops of the
in-RAM arrays, so a run trains the same either way.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path  # noqa: F401 (the examples use it)

import numpy as np

from medseg.errors import InputError
from medseg.train.store import ArrayStore, source_stats

FORMAT = 3  # bump when what make_pair computes changes: older entries then miss (3: wide boundaries keep an interior)
# the CellTrainConfig settings a pair's arrays depend on
PAIR_SETTINGS = ("spatial_dims", "channel", "norm_percentiles", "diameter", "distance_head", "contact_weight",
                 "contact_sigma", "small_weight", "small_size_px", "boundary_width", "contact_boundary", "offset_head")


def pair_key(cfg, case, block: bool = False) -> str:
    """Hash of everything the pair of ``case`` depends on; ``block``: the pair is of the image without its held-out
    tuning block (:func:`medseg.cells.splits.tuning_blocks`).

    Examples
    --------
    >>> from medseg.cells.config import CellTrainConfig
    >>> from medseg.cells.data import CellCase
    >>> c = CellCase("a", Path(__file__), None)
    >>> pair_key(CellTrainConfig(), c) == pair_key(CellTrainConfig(seed=5, lr=1e-3), c)  # training settings
    True
    >>> pair_key(CellTrainConfig(), c) == pair_key(CellTrainConfig(contact_weight=5.0), c)  # target settings
    False
    """
    from medseg import __version__

    what = {"format": FORMAT, "medseg": __version__, "block": bool(block),
            "settings": {k: getattr(cfg, k) for k in PAIR_SETTINGS},
            "sources": source_stats([case.image_path, *([case.label_path] if case.label_path else [])])}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=list).encode()).hexdigest()[:16]


def check_dims(case, cfg) -> None:
    """Refuse a loaded case whose image is not of the run's dimensionality (``cfg.spatial_dims``)."""
    if case.image.ndim != cfg.spatial_dims:
        hint = " (set spatial_dims: 3 and a three-entry patch_size, as configs/cells_3d.yaml does, or train " \
            "without a config to have them fitted to the stacks)" if case.image.ndim == 3 else ""
        raise InputError(f"image is {case.image.ndim}D but the run trains a {cfg.spatial_dims}D model{hint}",
                         path=case.image_path)


def make_pair(case, cfg) -> tuple:
    """The training pair of a loaded case (:func:`medseg.cells.data.load_case`)."""
    from medseg.cells.data import percentile_normalize
    from medseg.cells.targets import boundary_targets, distance_targets, offset_targets
    from medseg.cells.scale import median_diameter, resize_image, resize_labels, scale_to, scaled_shape

    check_dims(case, cfg)
    image, labels = percentile_normalize(case.image, *cfg.norm_percentiles), case.labels
    if cfg.diameter and cfg.spatial_dims == 2:  # to the canonical nucleus size, measured on the annotation
        shape = scaled_shape(labels.shape, scale_to(cfg.diameter, median_diameter(labels)))
        image, labels = resize_image(image, shape), resize_labels(labels, shape)
    spacing = case.spacing if cfg.spatial_dims == 3 else None
    return (image, boundary_targets(labels, cfg.contact_boundary, cfg.boundary_width),
            distance_targets(labels, spacing) if cfg.distance_head else None, weight_map(labels, cfg, spacing),
            tuple(offset_targets(labels)) if cfg.offset_head else None, labels)


def weight_map(labels, cfg, spacing):
    """The extra cross-entropy weight of each pixel: near contacts (``contact_weight``) plus on small nuclei
    (``small_weight``); None when both are off."""
    from medseg.cells.targets import contact_weights, small_object_weights

    maps = ([contact_weights(labels, cfg.contact_weight, cfg.contact_sigma, spacing)] if cfg.contact_weight else []) + \
        ([small_object_weights(labels, cfg.small_size_px, cfg.small_weight)] if cfg.small_weight else [])
    return sum(maps) if maps else None


def pair_bytes(pair) -> int:
    """RAM a pair holds (memory-mapped arrays hold none)."""
    image, target, dist, weight, offsets, labels = pair
    arrays = [a for a in (image, target, dist, weight, *(offsets or ()), labels) if a is not None]
    return sum(a.nbytes for a in arrays if not isinstance(a, np.memmap))


def _arrays(pair) -> dict:
    image, target, dist, weight, offsets, labels = pair
    named = {"image": image, "target": target, "distance": dist, "weight": weight, "labels": labels,
             **{f"offset{i}": o for i, o in enumerate(offsets or ())}}
    return {k: v for k, v in named.items() if v is not None}


def _pair(arrays: dict) -> tuple:
    offsets = tuple(arrays[k] for k in sorted(k for k in arrays if k.startswith("offset")))
    return (arrays["image"], arrays["target"], arrays.get("distance"), arrays.get("weight"), offsets or None,
            arrays["labels"])


class PairCache:
    """Training pairs in a folder (:class:`medseg.train.store.ArrayStore` entries named by the case id)."""

    def __init__(self, root: str | os.PathLike):
        self.store = ArrayStore(root)

    def get(self, case_id: str, key: str) -> tuple[tuple, tuple | None] | None:
        """``(pair, spacing)`` of a stored case (spacing None in entries written before it was kept), or None."""
        got = self.store.get(case_id, key)
        if got is None or not {"image", "target", "labels"} <= set(got[0]):
            return None
        sp = got[1].get("spacing")
        return _pair(got[0]), None if sp is None else tuple(float(v) for v in sp)

    def put(self, case_id: str, key: str, pair, spacing) -> tuple:
        """Store a case's pair with its voxel size (what a 3D run records without reading the case again)."""
        return _pair(self.store.put(case_id, key, _arrays(pair), {"spacing": np.asarray(spacing, float)})[0])


def training_pairs(cases, cfg, cache: PairCache | None = None, limit: float | None = None, blocks: bool = False,
                   progress: bool = False) -> tuple[list, list]:
    """The training pairs of ``cases`` (loaded here as needed, and freed once their pair is made), and the held-out
    tuning blocks when ``blocks`` (:func:`medseg.cells.splits.tuning_blocks`, cut from each image first).

    Without a ``cache`` the pairs stay in RAM. With one, ``cfg.cache`` decides: ``memory``; ``disk``: pairs found
    in it are read (the case's files are not), the others written to it; ``auto``: as ``disk`` for reading, and
    pairs kept in RAM until they hold more than ``limit`` bytes, then all of them moved to the cache.
    """
    from medseg.cells.data import load_case
    from medseg.cells.splits import tuning_blocks
    from medseg.train.dataset import _progress

    mode = cfg.cache if cache is not None else "memory"
    pairs, ids, keys, spacings, tune, held = [], [], [], [], [], 0
    for c in _progress(list(cases), progress, "preparing training images"):
        if blocks:
            whole = load_case(c, cfg.channel)
            (c,), blk = tuning_blocks([whole])
            # copies: a view would keep the whole image in RAM
            tune += [replace(b, image=b.image.copy(), labels=b.labels.copy()) for b in blk]
            if c is not whole:  # (an image too small for a block is kept whole)
                whole.image = whole.labels = None
        key = pair_key(cfg, c, blocks) if mode != "memory" else None
        got = cache.get(c.case, key) if key else None
        if got is not None:
            pair, sp = got
            c.spacing = sp or c.spacing
        else:
            if c.image is None:
                load_case(c, cfg.channel)
            pair = make_pair(c, cfg)
            if mode == "disk":
                pair = cache.put(c.case, key, pair, c.spacing)
        c.image = c.labels = None  # the pair holds what training needs
        pairs.append(pair)
        ids.append(c.case)
        keys.append(key)
        spacings.append(c.spacing)
        held += pair_bytes(pair)
        if mode == "auto" and limit is not None and held > limit:  # spill: every pair in RAM goes to disk
            pairs = [cache.put(i, k, p, sp) if pair_bytes(p) else p
                     for i, k, p, sp in zip(ids, keys, pairs, spacings)]
            mode, held = "disk", 0
    return pairs, tune
