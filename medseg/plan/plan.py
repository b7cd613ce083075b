"""The editable plan: every choice training and prediction make, as a readable, validated YAML file."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.plan.validate import NORMALISATION_KEYS, check_augment, check_normalisation
from medseg.settings import (coerce_fields, coerce_setting, file_relative, plain, read_yaml_mapping,
                             reject_unknown)

NORMALISATIONS = ("zscore", "ct", "none", "rescale_to_0_1", "rgb_to_0_1")  # the last two as nnU-Net names them
LOSSES = ("dice_ce", "dice_focal", "ce", "dice")
OPTIMIZERS = ("adamw", "sgd")
CACHE_MODES = ("auto", "memory", "disk")
AUGMENT_KEYS = ("rotate_deg", "scale", "flip_axes", "intensity", "gamma", "noise", "prob")
DEFAULT_AUGMENT = {"rotate_deg": 15.0, "scale": [0.85, 1.15], "flip_axes": [], "intensity": True, "gamma": True,
                   "noise": 0.05, "prob": 0.3}



def full_augment(augment: dict) -> dict:
    """``augment`` over a copy of ``DEFAULT_AUGMENT``: the keys a plan names change, the others keep their defaults.

    Examples
    --------
    >>> full_augment({"flip_axes": [0]})["flip_axes"], full_augment({})["rotate_deg"]
    ([0], 15.0)
    """
    return {**copy.deepcopy(DEFAULT_AUGMENT), **augment}


@dataclass
class Normalisation:
    """How one channel is normalised: ``zscore`` (per case), ``ct`` (clip to dataset foreground percentiles, then
    z-score with dataset statistics), ``none``, ``rescale_to_0_1`` (per case, its minimum to 0 and maximum to 1) or
    ``rgb_to_0_1`` (divided by 255), as nnU-Net v2's schemes of those names.

    Attributes
    ----------
    scheme : str
        One of ``NORMALISATIONS``.
    clip : (float, float) or None
        ``ct``: the intensity range kept (the dataset's foreground 0.5 and 99.5 percentiles).
    mean, std : float or None
        ``ct``: the dataset statistics subtracted and divided by.

    Examples
    --------
    >>> Normalisation()
    Normalisation(scheme='zscore', clip=None, mean=None, std=None)
    >>> Normalisation("ct", (-100.0, 200.0), 40.0, 60.0).clip
    (-100.0, 200.0)
    """

    scheme: str = "zscore"
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None


@dataclass
class Plan:
    """Everything a training run and a prediction need; ``to_yaml``/``from_yaml`` round-trip it.

    The fields are the settings of a plan file (``medseg plan`` writes one; ``configs/hippocampus.yaml`` is one
    written by hand); :meth:`validate` checks them. Label values are the keys of ``labels``, so ``num_classes`` is the
    largest plus one.

    Examples
    --------
    >>> plan = Plan(channels=["CT"], labels={0: "background", 1: "liver", 2: "tumour"})
    >>> plan.num_classes, plan.in_channels
    (3, 1)
    >>> Plan.from_dict(plan.to_dict()) == plan
    True
    """

    name: str = "dataset"
    dataset: str | None = None
    channels: list[str] = field(default_factory=lambda: ["image"])
    labels: dict[int, str] = field(default_factory=lambda: {0: "background", 1: "foreground"})
    normalisation: list[Normalisation] = field(default_factory=lambda: [Normalisation()])
    target_spacing: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    spatial_dims: int = 3
    # axis order every case is brought to first (transposes and flips only; medseg.io.orientation); None: as
    # stored (plans and models from before this field). make_plan writes RAS.
    orientation: str | None = None
    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    batch_size: int = 2
    # network
    base_filters: int = 32
    max_filters: int = 320
    deep_supervision: bool = False
    residual: bool = False  # residual convolution blocks (MONAI UnetResBlock) instead of plain conv-norm-act pairs
    # the network's levels: a kernel size and a stride per axis each (the first level's strides all 1), as nnU-Net's
    # plans record them; make_plan writes them. Absent: derived from patch_size and spacing by the rule of plans
    # made before they were recorded (medseg.train.network.dynunet_strides), which their saved models were built by
    kernel_sizes: list[list[int]] | None = None
    strides: list[list[int]] | None = None
    # training
    loss: str = "dice_ce"
    class_weights: list[float] | None = None
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    # exponential moving average of the weights (e.g. 0.999): validation and the saved model use the average; 0: off
    # (hippocampus, 30 min: 0.8862 vs 0.8854 for the same run's raw weights; benchmarks/RESULTS.md, session 11)
    ema: float = 0.0
    max_epochs: int = 100
    iterations_per_epoch: int = 100
    max_minutes: float | None = None
    foreground_oversample: float = 0.5
    # a mapping that names some of the keys changes those and keeps the defaults of the others
    augment: dict[str, Any] = field(default_factory=dict)  # the keys given, over DEFAULT_AUGMENT
    val_every: int = 5
    num_folds: int = 5
    fold: int = 0
    seed: int = 0
    # networks trained one after another (seeds seed, seed+1, ...) on the same split, each with an equal share of
    # the time budget, their probabilities averaged at prediction (medseg.train.ensemble)
    ensemble: int = 1
    bf16: bool = True  # bf16 autocast on CPUs that compute it natively (AVX512-BF16/AMX); CUDA always uses AMP
    num_threads: int | None = None
    # preprocessed training cases: in RAM ('memory'), memory-mapped from disk ('disk'), or in RAM while they fit
    # in 40 % of the available RAM, else on disk ('auto'); the disk cache lives in cache_dir, else RUN/cache
    cache: str = "auto"
    cache_dir: str | None = None
    # inference
    overlap: float = 0.5
    tta: bool = False

    def __post_init__(self):
        # a partial `augment` from the Python API means what it means in a plan file: the run's saved (validated)
        # plan is then equal to it, where --resume with the same Plan(...) was refused ("augment {...} (given ...)")
        if isinstance(self.augment, dict):
            self.augment = full_augment(self.augment)

    @property
    def num_classes(self) -> int:
        """Output channels of the network: the largest label value plus one."""
        return max(self.labels) + 1

    @property
    def in_channels(self) -> int:
        """Input channels of the network."""
        return len(self.channels)

    @property
    def slice_axis(self) -> int:
        """The axis a 2D plan cuts every case into slices along: the coarsest of ``target_spacing`` (the first of
        equally coarse ones), whatever each case's own spacing (a thin-slice case in a thick-slice dataset too).

        Examples
        --------
        >>> Plan(spatial_dims=2, target_spacing=[0.8, 0.8, 5.0]).slice_axis
        2
        """
        return max(range(3), key=lambda i: self.target_spacing[i])

    @property
    def in_plane_spacing(self) -> list[float]:
        """``target_spacing`` without the slice axis: the spacing of a 2D network's grid.

        Examples
        --------
        >>> Plan(spatial_dims=2, target_spacing=[0.8, 0.7, 5.0]).in_plane_spacing
        [0.8, 0.7]
        """
        return [s for i, s in enumerate(self.target_spacing) if i != self.slice_axis]

    @property
    def network_spacing(self) -> list[float]:
        """The spacing of the network's grid: ``target_spacing``, or the in-plane entries for a 2D plan."""
        return self.target_spacing if self.spatial_dims == 3 else self.in_plane_spacing

    # --- validation ------------------------------------------------------------------------
    def validate(self, where: str | os.PathLike | None = None) -> "Plan":
        """Raise ``InputError`` with a helpful message on the first inconsistent value; values the Python API gave
        as other types (numpy scalars, tuples, numbers as text) are made the plain types a plan file holds."""
        def bad(msg):
            raise InputError(f"invalid plan: {msg}", path=where)

        try:
            coerce_fields(self)
        except ValueError as exc:
            bad(exc)
        if self.spatial_dims not in (2, 3):
            bad(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.patch_size) != self.spatial_dims:
            bad(f"patch_size {self.patch_size} must have {self.spatial_dims} entries (spatial_dims)")
        if any(int(p) < 8 for p in self.patch_size):
            bad(f"patch_size {self.patch_size}: every entry must be >= 8")
        if len(self.target_spacing) != 3 or any(not 0 < s < math.inf for s in self.target_spacing):
            bad(f"target_spacing {self.target_spacing} must be 3 positive numbers (mm)")
        from medseg.train.network import check_patch, check_strides

        if (self.strides is None) != (self.kernel_sizes is None):
            bad("kernel_sizes and strides go together: give both (one list per level) or neither (derived from "
                "patch_size)")
        try:  # here, not at the first training iteration (a tensor-size crash there, exit 1)
            if self.strides is None:
                check_patch(self.patch_size, self.network_spacing)
            else:
                check_strides(self.patch_size, self.kernel_sizes, self.strides)
        except InputError as exc:
            bad(exc.problem)
        if self.orientation is not None:
            from medseg.io.orientation import valid_codes

            self.orientation = str(self.orientation).upper()
            if not valid_codes(self.orientation):
                bad(f"orientation {self.orientation!r} must name one direction of each axis, e.g. RAS or LPS "
                    "(or be left out: the cases as stored)")
        if not self.channels:
            bad("channels must name the input channels, e.g. [CT]")
        if len(self.normalisation) != len(self.channels):
            bad(f"{len(self.channels)} channels but {len(self.normalisation)} normalisation entries")
        for i, n in enumerate(self.normalisation):
            try:
                check_normalisation(n, f"normalisation entry {i + 1} ({self.channels[i]})")
            except ValueError as exc:
                bad(exc)
            if n.scheme not in NORMALISATIONS:
                bad(f"normalisation scheme '{n.scheme}' is not one of {', '.join(NORMALISATIONS)}")
            if n.scheme == "ct" and (n.clip is None or n.mean is None or not n.std):
                bad("normalisation 'ct' needs clip, mean and std (run 'medseg plan' to compute them)")
        self._check_labels(bad)
        if 0 not in self.labels:
            bad("labels must include 0 (background)")
        if self.loss not in LOSSES:
            bad(f"loss '{self.loss}' is not one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer '{self.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            bad(f"class_weights needs {self.num_classes} entries (one per class incl. background)")
        if self.batch_size < 1 or self.max_epochs < 1 or self.iterations_per_epoch < 1:
            bad("batch_size, max_epochs and iterations_per_epoch must be >= 1")
        if not 0 <= self.foreground_oversample <= 1:
            bad(f"foreground_oversample must be in [0, 1], got {self.foreground_oversample}")
        if not 0 <= self.ema < 1:
            bad(f"ema must be in [0, 1) (0: off; e.g. 0.999), got {self.ema}")
        if not 0 <= self.overlap < 1:
            bad(f"overlap must be in [0, 1), got {self.overlap}")
        if not isinstance(self.ensemble, int) or isinstance(self.ensemble, bool) or self.ensemble < 1:
            bad(f"ensemble must be a whole number of networks (>= 1), got {self.ensemble!r}")
        if self.cache not in CACHE_MODES:
            bad(f"cache '{self.cache}' is not one of {', '.join(CACHE_MODES)}")
        if self.num_folds < 1:
            bad(f"num_folds must be >= 1 (1: every case trains and validates), got {self.num_folds}")
        if not 0 <= self.fold < self.num_folds:
            bad(f"fold {self.fold} is not in 0..{self.num_folds - 1}")
        if not 0 < self.learning_rate < math.inf or not 0 <= self.weight_decay < math.inf:
            bad(f"learning_rate must be > 0 and weight_decay >= 0, got {self.learning_rate} and {self.weight_decay}")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:  # as --max-minutes and cells
            bad(f"max_minutes must be a positive number (or absent: no time limit), got {self.max_minutes}")
        if self.base_filters < 1 or self.max_filters < self.base_filters:
            bad(f"base_filters must be >= 1 and max_filters >= base_filters, got {self.base_filters}, "
                f"{self.max_filters}")
        if self.seed < 0 or self.val_every < 1 or (self.num_threads is not None and self.num_threads < 1):
            bad("seed must be >= 0, val_every >= 1 and num_threads >= 1 (or absent)")
        if self.class_weights is not None and any(not 0 <= w < math.inf for w in self.class_weights):
            bad(f"class_weights must be numbers >= 0, got {self.class_weights}")
        if not isinstance(self.augment, dict):
            bad(f"augment must be a mapping of {', '.join(AUGMENT_KEYS)} (got {self.augment!r})")
        reject_unknown(self.augment, AUGMENT_KEYS, "plan's augment", where)
        try:
            # merged: `augment: {flip_axes: [0]}` meant mirroring added, but it replaced the whole mapping, and the
            # rotation, scaling and intensity changes were silently off
            self.augment = check_augment(full_augment(self.augment), self.spatial_dims)
        except ValueError as exc:
            bad(exc)
        return self

    def _check_labels(self, bad) -> None:
        """``labels`` as ``{value: name}``, checked as ``dataset.json``'s are (:func:`medseg.io.labels.class_table`:
        whole values >= 0, one name each, no name twice), so that ``1.5: liver`` or ``true: liver`` is not label 1
        and ``1:`` (no name) not a class called 'None'."""
        from medseg.io.labels import class_table

        if not isinstance(self.labels, dict):
            bad(f"labels must map values to names, e.g. {{0: background, 1: liver}} (got {self.labels!r})")
        try:
            self.labels = class_table(self.labels)
        except InputError as exc:
            bad(f"labels: {exc.problem}")

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The plan as plain types (lists, dicts, numbers, strings), as the YAML file holds it."""
        d = plain(dataclasses.asdict(self))  # numpy scalars and tuples of the Python API too
        d["labels"] = {int(k): str(v) for k, v in d["labels"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str | os.PathLike | None = None) -> "Plan":
        """A validated plan from a mapping of settings (missing ones take their defaults); an unknown setting or
        a bad value is an ``InputError`` naming ``where``."""
        if not isinstance(d, dict):
            raise InputError("invalid plan: expected a mapping of settings", path=where)
        kinds = {f.name: str(f.type) for f in fields(cls)}
        reject_unknown(d, kinds, "plan", where)
        try:  # numbers as text too (YAML 1.1 reads 3e-3 as text); validate() takes no text for a number
            d = {k: coerce_setting(k, v, kinds[k]) for k, v in d.items()}
        except ValueError as exc:
            raise InputError(f"invalid plan: {exc}", path=where) from None
        if "normalisation" in d:
            d["normalisation"] = _normalisations(d["normalisation"], where)
        return cls(**d).validate(where)

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The plan as YAML (written to ``path`` if given). A relative ``dataset`` / ``cache_dir`` (relative to the
        working folder) is written relative to the plan file, which is how :meth:`from_yaml` reads it."""
        d = self.to_dict()
        if path is not None:
            # the folder the file lands in: a link named by ``path`` is replaced, not written through, so its
            # target's folder is not the one from_yaml reads relative paths against
            base = Path(path).parent.resolve()
            for key in ("dataset", "cache_dir"):
                if d.get(key) and not os.path.isabs(d[key]):
                    d[key] = os.path.relpath(Path(d[key]).resolve(), base)
        text = "# medseg plan: edit freely; 'medseg train' validates it.\n" + yaml.safe_dump(
            d, sort_keys=False, default_flow_style=None, width=110)
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Plan":
        """Read and validate a plan file; it must set ``dataset``, ``channels`` and ``labels``, and a relative
        ``dataset`` or ``cache_dir`` is relative to the file."""
        path = Path(path)
        d = read_yaml_mapping(path, "plan")
        missing = [k for k in ("dataset", "channels", "labels") if k not in d]
        if missing:  # defaults for these would train on the wrong classes or channels
            raise InputError(f"invalid plan: {', '.join(missing)} must be set (see configs/hippocampus.yaml)",
                             path=path)
        plan = cls.from_dict(d, where=path)
        plan.dataset, plan.cache_dir = file_relative(plan.dataset, path), file_relative(plan.cache_dir, path)
        return plan


def _normalisations(entries, where) -> list:
    """A plan file's ``normalisation``, a list of mappings, as ``Normalisation`` entries (their values are checked by
    :meth:`Plan.validate`); a misspelt key is refused, with the closest one as a hint."""
    if not isinstance(entries, list):
        raise InputError(f"invalid plan: normalisation must be a list with one entry per channel, e.g. "
                         f"[{{scheme: zscore}}] (got {entries!r})", path=where)
    for i, n in enumerate(entries):
        if not isinstance(n, dict):
            raise InputError(f"invalid plan: normalisation entry {i + 1} must be a mapping such as {{scheme: zscore}} "
                             f"(got {n!r})", path=where)
        reject_unknown(n, NORMALISATION_KEYS, f"plan's normalisation entry {i + 1}", where)
    return [Normalisation(**n) for n in entries]
