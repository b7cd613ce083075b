"""Settings of a cell-model training run (``CellTrainConfig``, saved in ``model.json``; a YAML file of them is what
``medseg cells train --config`` reads); :mod:`medseg.cells.saved_config` reads them back."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from medseg.cells.tune import OBJECTIVES, SELECTIONS
from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.plan.plan import CACHE_MODES
from medseg.settings import coerce_fields, coerce_setting, file_relative, plain, read_yaml_mapping, reject_unknown

NORMS = ("instance", "batch")
SEED_SOURCES = ("boundary", "distance", "votes")


@dataclass
class CellTrainConfig:
    """Settings of a cell-model training run (saved in ``model.json``).

    Parameters
    ----------
    **settings
        Any field below, by name; the comment above each field says what it does and, where it was measured,
        why it has its default. :meth:`validate` checks them, :meth:`from_dict` / :meth:`from_yaml` read them
        from a mapping or a YAML file, :meth:`to_yaml` writes them.

    Examples
    --------
    >>> cfg = CellTrainConfig(max_minutes=5)
    >>> cfg.spatial_dims, cfg.patch_size, cfg.validate() is cfg
    (2, (256, 256), True)
    >>> import yaml
    >>> CellTrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    True
    >>> CellTrainConfig(threshold=1.5).validate()
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: invalid cell training config: threshold must be in (0, 1), got 1.5
    """

    spatial_dims: int = 2
    # 2D: 256² crops, 2 per step (the same pixels per step as 8 x 128²): the larger context scored AP@0.5 0.864-0.871
    # (3 seeds) vs 0.856-0.857 for 128² on DSB2018's validation split in 20 minutes (benchmarks/RESULTS.md)
    patch_size: tuple = (256, 256)
    batch_size: int = 2
    base_filters: int = 16
    max_filters: int = 256
    # the network's normalisation layers, "instance" or "batch" (DynUNet's norm_name). On DSB2018 in 20 minutes batch
    # norm ran 26 % more steps but scored no better (two seeds: AP@0.5 0.876 / 0.861, count error 6.1 / 7.0 %;
    # benchmarks/RESULTS.md, session 9)
    norm: str = "instance"
    # AdamW's starting rate (poly decay). On DSB2018's five folds (428 images) 1.5e-3 scored as 3e-3 (AP@0.5 +0.002,
    # -0.004 to +0.007) and 6e-3 worse on fold 4 (benchmarks/RESULTS.md, sessions 33-34)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # exponential moving average of the weights (medseg.train.ema), used for tuning and saved as the model; 0: off.
    # On DSB2018 in 20 minutes 0.999 scored as the same run's raw final weights (AP@0.5 0.871 vs 0.872, count error
    # 6.3 vs 6.2 %; benchmarks/RESULTS.md, session 11): the poly schedule already ends near a learning rate of 0
    ema: float = 0.0
    max_minutes: float = 20.0
    max_steps: int | None = None
    val_fraction: float = 0.15
    # k-fold cross-validation: validate on fold `fold` of a `folds`-fold split by the id hash (medseg.cells.splits.
    # fold_of) instead of the val_fraction split; None: off
    fold: int | None = None
    folds: int = 5
    # of the training split, held out to choose the watershed thresholds (0: off); where that is fewer than 3 images,
    # the last fifth of every training image along its longest axis is held out instead (medseg.cells.splits.
    # tuning_blocks: a few 3D stacks)
    tune_fraction: float = 0.1
    # what the threshold search maximises on those images: "ap" (AP@0.5, as StarDist's) or "ap-count" (AP@0.5 minus
    # the mean absolute relative count error; medseg.cells.tune.best_thresholds). On DSB2018 "ap-count" lowered the
    # validation count error in no seed (session 7: 6.5 / 6.2 / 7.7 % vs 5.7 / 6.0 / 7.7 %; benchmarks/RESULTS.md)
    tune_objective: str = "ap"
    # how the best setting is picked: "peak" (the best mean) or "plateau" (the best mean over the setting's grid
    # neighbours, medseg.cells.tune.best_thresholds)
    tune_selection: str = "peak"
    channel: int | None = None
    norm_percentiles: tuple = (1.0, 99.8)
    seed: int = 0
    threads: int | None = None
    checkpoint_every_s: float = 60.0
    bf16: bool = True  # autocast where the CPU computes bf16 natively (about 2x per step here), AMP on CUDA
    # a 4th output channel regressing the per-nucleus normalised distance map, whose cores are an alternative source
    # of watershed markers (the threshold search picks one per run). Measured on DSB2018: AP unchanged, count error
    # 7.2 vs 8.0 % (benchmarks/RESULTS.md); it costs no measurable time per step
    distance_head: bool = True
    distance_weight: float = 1.0  # weight of its MSE next to Dice+CE
    # U-Net-paper weight map (its w0 = 10, sigma = 5 px): cross-entropy weighted by 1 + w0 exp(-(d1+d2)²/2σ²) near
    # touching nuclei, where a missed boundary merges two of them (medseg.cells.targets.contact_weights). On DSB2018
    # in 20 minutes: count error 5.7-7.7 % over three seeds (7.1-7.5 % without), AP unchanged (benchmarks/
    # RESULTS.md); 0 turns it off
    contact_weight: float = 10.0
    contact_sigma: float = 5.0  # pixels (3D: the units of the stack's spacing)
    # extra cross-entropy weight on nuclei smaller than small_size_px pixels and their 1-pixel ring
    # (medseg.cells.targets.small_object_weights): the uncovered nuclei behind most of the count error are tiny (median ~22 px); 0: off
    small_weight: float = 0.0
    small_size_px: float = 100.0
    # boundary-class width (medseg.cells.targets.boundary_targets): 1 = the 1-pixel inner boundary of every nucleus;
    # boundary_width 2 = every nucleus pixel within 2 px of anything else; contact_boundary 2 = within 2 px of another
    # nucleus only (interiors of touching nuclei further apart, isolated nuclei unchanged)
    boundary_width: int = 1
    contact_boundary: int = 1
    # ndim more output channels regressing each pixel's offset to its nucleus's centroid (medseg.cells.targets.
    # offset_targets; L1 on nucleus pixels, in units of offset_scale pixels): markers="votes" then groups the
    # pixels whose offsets lead to the same centre (medseg.postprocess.votes), the threshold search deciding.
    # On DSB2018 in 20 minutes, over three seeds, the extra task raised AP@0.5 on the tuning images from
    # 0.829-0.832 to 0.836-0.845 and on the validation images from 0.869-0.875 to 0.882-0.884, at the same count
    # error and steps; the search still picked interior - boundary markers (benchmarks/RESULTS.md)
    offset_head: bool = True
    offset_weight: float = 1.0
    offset_scale: float = 10.0
    # zoom augmentation (2D and the in-plane axes of 3D): with probability scale_prob a crop of patch / z resized to the
    # patch, z log-uniform in scale_range (nuclei seen at other magnifications, as Cellpose trains); class targets
    # are recomputed from the resized labels. None: off (on DSB2018, one magnification mix in training and
    # validation, [0.75, 1.33] scored worse: benchmarks/RESULTS.md, session 9)
    scale_range: tuple | None = None
    scale_prob: float = 0.5
    # with this probability a training crop gets the shot noise of a dim acquisition (medseg.cells.augment.low_light:
    # Poisson counts at 5-80 photons for full brightness, offset-subtracted backgrounds of mostly zeros). On 5
    # DSB2018 folds (one seed): tuning AP@0.5 up in every fold, validation AP@0.5 0.847 -> 0.856 over 428 images
    # (paired +0.009, +0.003 to +0.017), and far fewer split nuclei on photon-limited images (benchmarks/
    # RESULTS.md, sessions 28-29); 0: off
    low_light_prob: float = 0.25
    # post-processing used by `count` (stored with the model)
    threshold: float = 0.5
    seed_threshold: float = 0.5
    min_size_px: float = 8.0
    # objects whose mean intensity is less than this many background noise sigmas above the background median are
    # dropped (medseg.postprocess.contrast: the speckle an instance-normalised network can draw into windows with no
    # nucleus; the direction follows the training nuclei, stored as "polarity"); 0 keeps everything. 2: 0.4 % of
    # DSB2018's 18,223 annotated nuclei are fainter than that against their own background (1.2 % below 3)
    min_snr: float = 2.0
    # after the watershed, a small object (at most merge_area_ratio of its neighbour's area) joins the neighbour
    # across a border whose mean predicted boundary probability is below merge_boundary (medseg.postprocess.merge:
    # fragments the watershed cut off a dim, noisy nucleus). Chosen on the tuning images of 5 DSB2018 folds; on
    # their 428 validation images AP@0.5 0.842 -> 0.847, mean count error 11.9 -> 10.4 % (benchmarks/RESULTS.md,
    # session 28). 0: off
    merge_boundary: float = 0.35
    merge_area_ratio: float = 0.25
    # watershed markers: "boundary" (interior minus boundary), "distance" (its cores) or "votes" (offset head;
    # then seed_threshold is the vote density a centre needs)
    seeds: str = "boundary"
    # 2D: enlarge every image whose median nucleus is smaller than this many pixels across (Cellpose's nuclei
    # convention is 17; medseg.cells.scale); counting then estimates each image's size. None (default): native scale,
    # which scored the same on DSB2018 in 20 minutes (benchmarks/RESULTS.md)
    diameter: float | None = None
    # where the training pairs (normalised images and their targets) live: "memory", "disk" (memory-mapped from
    # cache_dir, default RUN/cache: datasets larger than RAM) or "auto" (RAM until they would fill 40 % of the
    # available RAM, then disk); medseg.cells.pairs. Runs and folds that name the same cache_dir share the pairs
    cache: str = "auto"
    cache_dir: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self, where: str | os.PathLike | None = None) -> "CellTrainConfig":
        """Raise ``InputError`` with a helpful message on the first impossible value; returns ``self``, its values
        made the plain types a YAML file gives (the Python API's numpy scalars, lists, numbers as text)."""
        def bad(msg):
            raise InputError(f"invalid cell training config: {msg}", path=where)

        def need(ok, msg):
            if not ok:  # written so that NaN fails too
                bad(msg)

        try:
            coerce_fields(self)
        except ValueError as exc:
            bad(exc)
        need(self.spatial_dims in (2, 3), f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        need(len(self.patch_size) == self.spatial_dims and all(p >= 16 for p in self.patch_size),
             f"patch_size {list(self.patch_size)} needs {self.spatial_dims} entries (spatial_dims), each >= 16")
        for name in ("batch_size", "base_filters", "boundary_width", "contact_boundary"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.max_filters >= self.base_filters, f"max_filters ({self.max_filters}) must be >= base_filters "
             f"({self.base_filters})")
        need(self.norm in NORMS, f"norm '{self.norm}' is not one of {', '.join(NORMS)}")
        for name in ("lr", "max_minutes", "checkpoint_every_s", "contact_sigma", "offset_scale", "small_size_px"):
            need(0 < getattr(self, name) < math.inf, f"{name} must be a positive number, got {getattr(self, name)}")
        for name in ("weight_decay", "distance_weight", "contact_weight", "small_weight", "offset_weight",
                     "min_size_px", "min_snr"):
            need(0 <= getattr(self, name) < math.inf, f"{name} must be a number >= 0, got {getattr(self, name)}")
        need(0 <= self.ema < 1, f"ema must be in [0, 1) (0: off; e.g. 0.999), got {self.ema}")
        for name in ("val_fraction", "tune_fraction"):
            need(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("max_steps", "threads"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, f"{name} must be >= 1 or empty (none), "
                 f"got {getattr(self, name)}")
        need(self.folds >= 2, f"folds must be >= 2, got {self.folds}")
        need(self.fold is None or 0 <= self.fold < self.folds,
             f"fold must be in 0..{self.folds - 1} (folds: {self.folds}) or empty (off), got {self.fold}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")  # numpy's generators refuse negative seeds
        need(self.channel is None or self.channel >= 0, f"channel must be >= 0 (0-based) or empty, got {self.channel}")
        pct = tuple(self.norm_percentiles)
        need(len(pct) == 2 and 0 <= pct[0] < pct[1] <= 100,
             f"norm_percentiles {list(self.norm_percentiles)} must be two percentiles LO < HI in [0, 100]")
        need(self.scale_range is None or (len(self.scale_range) == 2 and 0 < self.scale_range[0] <= self.scale_range[1]
                                          < math.inf),
             f"scale_range {self.scale_range} must be two factors 0 < LO <= HI, e.g. [0.75, 1.33], or empty (off)")
        need(self.tune_objective in OBJECTIVES,
             f"tune_objective '{self.tune_objective}' is not one of {', '.join(OBJECTIVES)}")
        need(self.tune_selection in SELECTIONS,
             f"tune_selection '{self.tune_selection}' is not one of {', '.join(SELECTIONS)}")
        need(0 <= self.scale_prob <= 1, f"scale_prob must be in [0, 1], got {self.scale_prob}")
        need(0 <= self.low_light_prob <= 1, f"low_light_prob must be in [0, 1], got {self.low_light_prob}")
        for name in ("merge_boundary", "merge_area_ratio"):
            need(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1] (0: no merging), got {getattr(self, name)}")
        need(0 < self.threshold < 1, f"threshold must be in (0, 1), got {self.threshold}")
        need(0 < self.seed_threshold < math.inf, f"seed_threshold must be a positive number, got {self.seed_threshold}")
        need(self.seeds in SEED_SOURCES, f"seeds '{self.seeds}' is not one of {', '.join(SEED_SOURCES)}")
        need(self.seeds != "distance" or self.distance_head, "seeds 'distance' needs distance_head: true")
        need(self.seeds != "votes" or self.offset_head, "seeds 'votes' needs offset_head: true")
        need(self.cache in CACHE_MODES, f"cache '{self.cache}' is not one of {', '.join(CACHE_MODES)}")
        need(self.diameter is None or 0 < self.diameter < math.inf,
             f"diameter must be a positive number of pixels or empty (native scale), got {self.diameter}")
        return self

    def updated(self, **changes) -> "CellTrainConfig":
        """A validated copy with the given settings changed; ``None`` leaves a setting as it is (an option not given).

        Examples
        --------
        >>> CellTrainConfig().updated(seed=3, patch_size=None).seed
        3
        """
        import dataclasses

        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).validate()

    @classmethod
    def from_dict(cls, d: dict, where: str | os.PathLike | None = None) -> "CellTrainConfig":
        """Settings from a mapping (e.g. a YAML file's); unset ones keep their defaults, unknown ones are refused.

        Examples
        --------
        >>> CellTrainConfig.from_dict({"max_minutes": 5, "patch_size": [128, 128]}).patch_size
        (128, 128)
        """
        if not isinstance(d, dict):
            raise InputError("invalid cell training config: expected a mapping of settings", path=where)
        kinds = {f.name: str(f.type) for f in fields(cls)}
        if "learning_rate" in d:  # a plan's name for it, too unlike 'lr' for the hint below
            raise InputError("invalid cell training config: unknown setting 'learning_rate' (did you mean 'lr'?)",
                             path=where)
        reject_unknown(d, kinds, "cell training config", where)
        try:
            values = {k: coerce_setting(k, v, kinds[k]) for k, v in d.items()}
        except ValueError as exc:
            raise InputError(f"invalid cell training config: {exc}", path=where) from None
        return cls(**values).validate(where)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "CellTrainConfig":
        """Read a YAML file of settings (as ``to_yaml`` writes, or any subset of them)."""
        cfg = cls.from_dict(read_yaml_mapping(path, "cell training config"), where=path)
        cfg.cache_dir = file_relative(cfg.cache_dir, path)  # relative to the file, as a plan's
        return cfg

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The settings as YAML (written atomically to ``path`` if given)."""
        import yaml

        d = plain(asdict(self))
        text = "# medseg cell training config: edit freely; 'medseg cells train --config' validates it.\n" + \
            yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=110)
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        return text


PATCH_3D_MAX = 96  # voxels per axis
PATCH_3D_VOXELS = 64 ** 3  # per crop: 4x the 2D default's 256² pixels, ~0.5 s per step of two on 2 CPU cores


def fit_patch(shapes) -> tuple:
    """A 3D training crop for stacks of these shapes: per axis the smallest stack's extent rounded down to a multiple
    of 8, between 16 and 96 voxels, then the largest axis (the last of equals) cut by 8 until the crop holds at most
    64³ voxels, then down to a size the network's down-samplings divide
    (:func:`medseg.train.network.divisible_patch`). (Stacks smaller than 16 along an axis are padded when cropped.)

    Parameters
    ----------
    shapes : iterable of (int, int, int)
        Spatial shapes of the training stacks.

    Returns
    -------
    tuple of int
        The crop's size per axis.

    Examples
    --------
    >>> fit_patch([(31, 61, 28), (40, 80, 80)])
    (24, 56, 24)
    >>> fit_patch([(300, 1024, 1024)])
    (64, 64, 64)
    >>> fit_patch([(12, 512, 512)])
    (16, 96, 96)
    >>> fit_patch([(20, 40, 90)])  # 88 would halve to an odd 11
    (16, 40, 80)
    """
    from medseg.train.network import divisible_patch

    low = [min(s[a] for s in shapes) for a in range(3)]
    patch = [min(max(16, n // 8 * 8), PATCH_3D_MAX) for n in low]
    while math.prod(patch) > PATCH_3D_VOXELS:
        a = max(range(3), key=lambda i: (patch[i], i))
        if patch[a] <= 16:
            break
        patch[a] -= 8
    # a multiple of 8 is not enough where an axis halves four times (88 -> 11 -> odd): down to what the network's
    # strides divide
    return tuple(divisible_patch(patch, down=True))


def config_for_data(data_dir, tune_fraction: float | None = None) -> CellTrainConfig:
    """The default settings for a dataset folder: the 2D recipe, or for 3D stacks ``spatial_dims`` 3 with a crop
    fitted to the training stacks (:func:`fit_patch`; to what is left of them after their tuning blocks, when
    those are held out with ``tune_fraction``, default the recipe's); what ``medseg cells train`` uses without
    ``--config``.

    Parameters
    ----------
    data_dir : path
        Dataset folder (``images/<id>.<ext>`` and ``labels/<id>.tif``, :func:`medseg.cells.data.list_cases`); the
        images' shapes are read from their headers.
    tune_fraction : float, optional
        Share of the training images held out for the threshold search (default: the recipe's).

    Returns
    -------
    CellTrainConfig
        The defaults for 2D images; for 3D stacks ``spatial_dims=3`` and a fitted ``patch_size``.

    Examples
    --------
    Two stacks of 20 x 40 x 48 voxels: too few to hold out whole ones, so the last fifth of each along its longest
    axis (10 of 48 voxels) is held out for tuning and the crop fits the remaining 20 x 40 x 38:

    >>> import tempfile
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.microscopy import write_microscopy
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> (d / "images").mkdir(); (d / "labels").mkdir()
    >>> for case in ("s1", "s2"):
    ...     write_microscopy(Image(np.zeros((20, 40, 48), np.uint16), np.eye(4)), d / "images" / f"{case}.tif")
    ...     write_microscopy(Image(np.ones((20, 40, 48), np.uint16), np.eye(4)), d / "labels" / f"{case}.tif")
    >>> cfg = config_for_data(d)
    >>> cfg.spatial_dims, cfg.patch_size
    (3, (16, 40, 32))
    >>> config_for_data(d, tune_fraction=0).patch_size
    (16, 40, 48)
    >>> tmp.cleanup()
    """
    from medseg.cells.data import list_cases
    from medseg.cells.splits import dataset_split, tuning_block, tuning_images
    from medseg.io.microscopy import spatial_shape

    if not Path(data_dir).is_dir():
        raise InputError("dataset folder does not exist", path=data_dir)
    defaults = CellTrainConfig()
    fraction = defaults.tune_fraction if tune_fraction is None else tune_fraction
    cases = list_cases(data_dir)
    train = dataset_split(data_dir, cases, defaults.val_fraction)["train"] or cases

    # shapes from the headers: training reads the pixels once, later
    first = spatial_shape(train[0].image_path)
    if len(first) != 3:
        return defaults
    held = {c.case for c in tuning_images(train, fraction)}
    shapes = [first if i == 0 else spatial_shape(c.image_path) for i, c in enumerate(train) if c.case not in held]
    if any(len(s) != 3 for s in shapes):
        raise InputError("the training images mix 2D images and 3D stacks", path=data_dir)
    if fraction and not held:
        shapes = [_without_block(s, tuning_block(s)) for s in shapes]
    return replace(defaults, spatial_dims=3, patch_size=fit_patch(shapes))


def _without_block(shape, block) -> tuple:
    if block is None:
        return tuple(shape)
    axis, k = block
    return tuple(n - k if a == axis else n for a, n in enumerate(shape))
