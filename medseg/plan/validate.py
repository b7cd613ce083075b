"""The checks of a plan's structured settings (``normalisation``, ``augment``) that
:meth:`medseg.plan.plan.Plan.validate` delegates; the generic reading and typing of settings files is in
:mod:`medseg.settings`."""

from __future__ import annotations

import math

from medseg.settings import coerce_setting, plain

NORMALISATION_KEYS = ("scheme", "clip", "mean", "std")


def _finite(name: str, value, low: float = -math.inf, high: float = math.inf, above: bool = False) -> float:
    """``value`` as a finite float in [low, high] ((low, high] if ``above``); ``ValueError`` naming ``name``."""
    v = coerce_setting(name, value, "float")
    if not (v > low if above else v >= low) or not v <= high or not math.isfinite(v):  # NaN fails every test
        want = (f"in [{low:g}, {high:g}]" if high < math.inf else f"{'>' if above else '>='} {low:g}"
                if low > -math.inf else "finite")
        raise ValueError(f"{name} must be a number {want}, got {value!r}")
    return v


def check_normalisation(norm, label: str) -> None:
    """Check one channel's :class:`~medseg.plan.plan.Normalisation` and make its numbers numbers (``clip`` a
    tuple); ``ValueError`` naming ``label`` otherwise. ``clip`` is two intensities LOW < HIGH, ``std`` positive,
    all finite."""
    if not isinstance(norm.scheme, str):
        raise ValueError(f"{label}: scheme must be text, e.g. zscore (got {norm.scheme!r})")
    given = [k for k in ("clip", "mean", "std") if getattr(norm, k) is not None]
    if norm.scheme != "ct" and given:  # it would train unclipped while the file says otherwise
        raise ValueError(f"{label}: {', '.join(given)} apply to scheme 'ct' only, and scheme {norm.scheme!r} would "
                         "ignore them: remove them, or use scheme ct (with clip, mean and std)")
    if norm.clip is not None:
        clip = coerce_setting(f"{label}: clip", plain(norm.clip), "list[float]")
        if len(clip) != 2 or not all(map(math.isfinite, clip)) or not clip[0] < clip[1]:
            raise ValueError(f"{label}: clip {clip} must be two intensities [LOW, HIGH] with LOW < HIGH")
        norm.clip = tuple(clip)
    if norm.mean is not None:
        norm.mean = _finite(f"{label}: mean", plain(norm.mean))
    if norm.std is not None:
        norm.std = _finite(f"{label}: std", plain(norm.std), 0.0, above=True)


def check_augment(augment: dict, spatial_dims: int) -> dict:
    """A plan's ``augment`` checked, with its numbers as numbers (``8e-1`` is text to YAML and reached the
    augmentation as text: a crash in the first training step) and ``flip_axes`` whole axes; keys it does not hold
    stay unset (:func:`medseg.train.sampling.augment`'s defaults). ``ValueError`` naming the key otherwise.

    Examples
    --------
    >>> check_augment({"scale": ["8e-1", 1.2], "flip_axes": [1.0], "noise": None}, 3)
    {'scale': [0.8, 1.2], 'flip_axes': [1], 'noise': 0.0}
    >>> check_augment({"rotate_deg": True}, 3)
    Traceback (most recent call last):
    ...
    ValueError: augment's rotate_deg must be a number (got True)
    """
    a = dict(augment)
    if "prob" in a:
        a["prob"] = _finite("augment's prob", a["prob"], 0.0, 1.0)
    for key in ("rotate_deg", "noise"):
        if key in a:
            a[key] = _finite(f"augment's {key}", 0.0 if key == "noise" and a[key] is None else a[key], 0.0)
    if "scale" in a:
        scale = coerce_setting("augment's scale", plain(a["scale"]), "list[float]")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] < math.inf:
            raise ValueError(f"augment's scale must be [low, high] with 0 < low <= high, got {a['scale']!r}")
        a["scale"] = scale
    if "flip_axes" in a:
        axes = coerce_setting("augment's flip_axes", plain(a["flip_axes"] or []), "list[int]")
        if any(not 0 <= x < spatial_dims for x in axes):
            raise ValueError(f"augment's flip_axes must be spatial axes 0..{spatial_dims - 1}, got {a['flip_axes']!r}")
        a["flip_axes"] = axes
    for key in ("intensity", "gamma"):
        if key in a:
            a[key] = coerce_setting(f"augment's {key}", a[key], "bool")
    return a
