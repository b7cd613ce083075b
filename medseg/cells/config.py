"""Settings of a cell-model training run (``CellTrainConfig``, saved in ``model.json``) and reading them back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError


@dataclass
class CellTrainConfig:
    """Settings of a cell-model training run (saved in ``model.json``)."""

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
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # exponential moving average of the weights (medseg.train.ema), used for tuning and saved as the model; 0: off.
    # On DSB2018 in 20 minutes 0.999 scored as the same run's raw final weights (AP@0.5 0.871 vs 0.872, count error
    # 6.3 vs 6.2 %; benchmarks/RESULTS.md, session 11): the poly schedule already ends near a learning rate of 0
    ema: float = 0.0
    max_minutes: float = 20.0
    max_steps: int | None = None
    val_fraction: float = 0.15
    tune_fraction: float = 0.1  # of the training split, held out to choose the watershed thresholds (0: off)
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
    # touching nuclei, where a missed boundary merges two of them (medseg.cells.data.contact_weights). On DSB2018
    # in 20 minutes: count error 5.7-7.7 % over three seeds (7.1-7.5 % without), AP unchanged (benchmarks/
    # RESULTS.md); 0 turns it off
    contact_weight: float = 10.0
    contact_sigma: float = 5.0  # pixels (3D: the units of the stack's spacing)
    # boundary-class width (medseg.cells.data.boundary_targets): 1 = the 1-pixel inner boundary of every nucleus;
    # boundary_width 2 = every nucleus pixel within 2 px of anything else; contact_boundary 2 = within 2 px of another
    # nucleus only (interiors of touching nuclei further apart, isolated nuclei unchanged)
    boundary_width: int = 1
    contact_boundary: int = 1
    # ndim more output channels regressing each pixel's offset to its nucleus's centroid (medseg.cells.data.
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
    # post-processing used by `count` (stored with the model)
    threshold: float = 0.5
    seed_threshold: float = 0.5
    min_size_px: float = 8.0
    # objects whose mean intensity is less than this many background noise sigmas above the background median are
    # dropped (medseg.postprocess.contrast: the speckle an instance-normalised network can draw into windows with no
    # nucleus; the direction follows the training nuclei, stored as "polarity"); 0 keeps everything. 2: 0.4 % of
    # DSB2018's 18,223 annotated nuclei are fainter than that against their own background (1.2 % below 3)
    min_snr: float = 2.0
    # watershed markers: "boundary" (interior minus boundary), "distance" (its cores) or "votes" (offset head;
    # then seed_threshold is the vote density a centre needs)
    seeds: str = "boundary"
    # 2D: enlarge every image whose median nucleus is smaller than this many pixels across (Cellpose's nuclei
    # convention is 17; medseg.cells.scale); counting then estimates each image's size. None (default): native scale,
    # which scored the same on DSB2018 in 20 minutes (benchmarks/RESULTS.md)
    diameter: float | None = None
    extra: dict = field(default_factory=dict)


def load_config(run_dir) -> tuple[dict, CellTrainConfig]:
    """Read ``model.json`` of a run folder (or the file itself)."""
    p = Path(run_dir)
    p = p / "model.json" if p.is_dir() else p
    if not p.exists():
        raise InputError("not a cell model run (no model.json)", path=p.parent if p.name == "model.json" else p)
    try:
        meta = json.loads(p.read_text())
        if meta.get("kind") != "medseg-cells":
            raise ValueError("model.json is not a medseg cell model")
        fields = CellTrainConfig.__dataclass_fields__
        # runs from before the distance head / scale normalisation / contact weights have none of them
        conf = {"distance_head": False, "diameter": None, "contact_weight": 0.0, "offset_head": False,
                "norm": "instance", **meta["config"]}
        cfg = CellTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in conf.items() if k in fields})
        if cfg.seeds not in ("boundary", "distance", "votes") or (cfg.seeds == "distance" and not cfg.distance_head) \
                or (cfg.seeds == "votes" and not cfg.offset_head):
            raise ValueError(f"seeds '{cfg.seeds}' (expected boundary, distance with a distance head, or votes with "
                             "an offset head)")
        if cfg.norm not in ("instance", "batch"):
            raise ValueError(f"norm '{cfg.norm}' (expected instance or batch)")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read cell model ({exc})", path=p) from exc
    return meta, cfg
