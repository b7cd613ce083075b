"""Reading YAML settings files (plans, cell training configs) with one-line errors that name the file."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Iterable

import yaml

from medseg.errors import InputError


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """The mapping in a YAML file; ``InputError`` if the file is missing, is not YAML or holds something else.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.yaml"
    >>> _ = p.write_text("lr: 0.001\\n")
    >>> read_yaml_mapping(p, "config")
    {'lr': 0.001}
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file does not exist", path=path)
    try:
        d = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid YAML ({' '.join(str(exc).split())})", path=path) from exc
    if not isinstance(d, dict):
        raise InputError(f"invalid {what}: expected a mapping of settings", path=path)
    return d


def reject_unknown(d: dict, known: Iterable[str], what: str, where=None) -> None:
    """``InputError`` naming every key of ``d`` not in ``known``, with the closest known one as a hint.

    Examples
    --------
    >>> reject_unknown({"learning_rat": 1}, ["learning_rate", "seed"], "plan")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: invalid plan: unknown setting 'learning_rat' (did you mean 'learning_rate'?)
    """
    known = list(known)
    unknown = sorted(set(map(str, d)) - set(known))
    if unknown:
        hints = [f"'{u}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(u, known, 1)) else "")
                 for u in unknown]
        raise InputError(f"invalid {what}: unknown setting {', '.join(hints)}", path=where)


def coerce_setting(name: str, value, kind: str):
    """``value`` as a dataclass field of type ``kind`` (its annotation as text) wants it: numbers may come as text
    (YAML 1.1 reads ``3e-3``, without a dot, as text), ``tuple``/``list[int]``/``list[float]`` are lists of numbers.
    ``ValueError`` naming the setting otherwise (``true`` is not a number, ``"no"`` not a boolean).

    Examples
    --------
    >>> coerce_setting("patch_size", ["64", 32.0], "list[int]")
    [64, 32]
    >>> coerce_setting("bf16", "no", "bool")
    Traceback (most recent call last):
    ...
    ValueError: bf16 must be true or false (got 'no')
    """
    base = kind.removesuffix(" | None")
    if value is None:
        if kind.endswith("| None"):
            return None
        raise ValueError(f"{name} needs a value")
    if base in ("bool", "str", "dict"):
        if not isinstance(value, {"bool": bool, "str": str, "dict": dict}[base]):
            want = {"bool": "true or false", "str": "text", "dict": "a mapping"}[base]
            raise ValueError(f"{name} must be {want} (got {value!r})")
        return value
    if base in ("tuple", "list[int]", "list[float]"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of numbers (got {value!r})")
        whole = base == "list[int]" or name == "patch_size"
        items = [_number(name, v, whole) for v in value]
        return tuple(items) if base == "tuple" else items
    if base == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of names (got {value!r})")
        return value
    if base in ("int", "float"):
        return _number(name, value, whole=base == "int")
    return value  # structured settings (labels, normalisation) are checked where they are read


def _number(name: str, value, whole: bool):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number (got {value!r})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (got {value!r})") from None
    if whole:
        if not v.is_integer():
            raise ValueError(f"{name} must be a whole number (got {value!r})")
        return int(v)
    return v
