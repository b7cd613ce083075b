"""Reading a cell run's settings back (``model.json``), and the settings a resumed run may change."""

from __future__ import annotations

import json
from pathlib import Path

from medseg.cells.config import CellTrainConfig
from medseg.errors import InputError

# settings a resumed run may change: its budget, threads and cache, and what the threshold search re-chooses at the
# end
RESUMABLE = ("max_minutes", "max_steps", "threads", "checkpoint_every_s", "cache", "cache_dir", "tune_objective",
             "tune_selection", "threshold", "seed_threshold", "seeds", "min_size_px", "min_snr", "extra")

def load_config(run_dir) -> tuple[dict, CellTrainConfig]:
    """Read ``model.json`` of a run folder (or the file itself).

    Settings a run predates get the value that run trained with (no distance or offset head, no contact weights,
    no shot-noise augmentation, native scale), not today's defaults.

    Parameters
    ----------
    run_dir : path
        Run folder, or its ``model.json``.

    Returns
    -------
    meta : dict
        The whole ``model.json``.
    cfg : CellTrainConfig
        Its ``config``, validated.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); run = Path(tmp.name)
    >>> _ = (run / "model.json").write_text(json.dumps({"kind": "medseg-cells", "config": {"seed": 3}}))
    >>> meta, cfg = load_config(run)
    >>> cfg.seed, cfg.patch_size, cfg.distance_head
    (3, (256, 256), False)
    >>> load_config(run / "elsewhere")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../elsewhere: not a cell model run (no model.json)
    >>> tmp.cleanup()
    """
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
        # and runs from before the shot-noise augmentation was the default trained (and resume) without it
        conf = {"distance_head": False, "diameter": None, "contact_weight": 0.0, "offset_head": False,
                "norm": "instance", "low_light_prob": 0.0, **meta["config"]}
        cfg = CellTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in conf.items() if k in fields})
        cfg.validate(p)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read cell model ({exc})", path=p) from exc
    return meta, cfg


def resumed_config(run_dir, cfg: CellTrainConfig | None = None) -> CellTrainConfig:
    """The settings a resumed run continues with: the run's own (``model.json``), or ``cfg`` if it differs from
    them only in ``RESUMABLE`` settings (a longer budget, say); anything else is an ``InputError``, since the
    checkpoint's network and data were built from the saved settings.

    Parameters
    ----------
    run_dir : path
        Run folder (or its ``model.json``).
    cfg : CellTrainConfig, optional
        Settings asked for the resumed run.

    Returns
    -------
    CellTrainConfig
        ``cfg`` when given (and allowed), else the saved settings.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); run = Path(tmp.name)
    >>> _ = (run / "model.json").write_text(json.dumps({"kind": "medseg-cells", "config": {"max_minutes": 5}}))
    >>> saved = load_config(run)[1]
    >>> resumed_config(run, saved.updated(max_minutes=30)).max_minutes
    30.0
    >>> resumed_config(run, saved.updated(lr=1e-3))
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../model.json: cannot resume with other settings than the run's: lr 0.003 (given 0.001)
    >>> tmp.cleanup()
    """
    saved = load_config(run_dir)[1]
    if cfg is None:
        return saved
    differ = [f"{k} {getattr(saved, k)!r} (given {getattr(cfg, k)!r})" for k in CellTrainConfig.__dataclass_fields__
              if k not in RESUMABLE and _norm(getattr(cfg, k)) != _norm(getattr(saved, k))]
    if differ:
        raise InputError(f"cannot resume with other settings than the run's: {'; '.join(differ)}",
                         path=Path(run_dir) / "model.json")
    return cfg


def _norm(v):
    return tuple(v) if isinstance(v, list) else v
