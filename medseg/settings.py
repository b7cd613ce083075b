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
