"""Reading YAML settings files (plans, cell training configs) with one-line errors that name the file: a reader
that refuses a key set twice, plain Python types for every setting (numpy scalars, tuples, numbers written as
text), unknown keys with a hint, folders relative to the file."""

from __future__ import annotations

import difflib
import os
from dataclasses import fields
from pathlib import Path
from typing import Iterable

import numpy as np
import yaml

from medseg.errors import InputError


#: a settings file is a few KB: more is not a plan or config (PyYAML's pure-Python parser takes ~1 s per MB)
MAX_SETTINGS_BYTES = 8 << 20
#: values once aliases are expanded (``*a`` stands for the whole of ``&a``): a plan holds ~100, and nine levels of
#: nine aliases ("billion laughs") expand to 10**9, which checking or copying the settings would walk for hours
MAX_SETTINGS_VALUES = 1_000_000


class _TooLarge(yaml.YAMLError):
    """A settings file whose aliases expand to more values than any settings file holds."""


class _KeySetTwice(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping naming one key twice is an error (PyYAML keeps the last value:
    ``learning_rate: 0.01`` above a forgotten ``learning_rate: 0.001`` trained with the second, silently), also
    when spelt two ways that are one key to a dict (``1`` and ``1.0``, ``true`` or ``0x1``)."""

    def compose_mapping_node(self, anchor):
        # on the composed nodes, before '<<: *defaults' merges are flattened in (a merged key may be overridden)
        node = super().compose_mapping_node(anchor)
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self._key(key_node), key_node.start_mark.line + 1
            if key in seen:
                first, first_line = seen[key]
                where = f"line {line}" if first_line == line else f"lines {first_line} and {line}"
                also = "" if first == key_node.value else f", also as '{first}'"
                raise _KeySetTwice(f"'{key_node.value}' is set twice ({where}{also})")
            seen[key] = key_node.value, line
        return node

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            n = _expanded_size(node)
            if n > MAX_SETTINGS_VALUES:
                raise _TooLarge(f"its aliases (*name) expand to {n:.3g} values, more than the {MAX_SETTINGS_VALUES} a "
                                "settings file may hold (a 'billion laughs' file?)")
        return node

    def _key(self, node: yaml.ScalarNode):
        """The key as the mapping will hold it, ``(value,)``: ``labels: {1: liver, 1.0: tumour}`` became
        ``{1: 'tumour'}``; ``(tag, text)`` for one that cannot be constructed."""
        construct = self.yaml_constructors.get(node.tag)
        if construct is None:  # a tag the safe loader refuses: it says so once the mapping is constructed
            return node.tag, node.value
        try:
            value = construct(self, node)
            hash(value)
        except (yaml.YAMLError, TypeError, ValueError):
            return node.tag, node.value
        return (value,)


def _expanded_size(root: yaml.Node) -> int:
    """Values (nodes) under ``root`` with every alias counted as often as it is used, without expanding any: each
    shared node's size once, bottom up, iteratively (a deeply nested file must not overflow Python's stack here)."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes[id(k)] for k in kids), 1 << 62)
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """The mapping in a YAML settings file; ``InputError`` naming the file if it is missing, is not YAML (or not
    UTF-8/16), sets a key twice or holds something other than a mapping.

    Parameters
    ----------
    path : path
        The file.
    what : str
        What it holds, for the messages ("plan", "cell training config").

    Returns
    -------
    dict

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.yaml"
    >>> _ = p.write_text("lr: 0.01\\nseed: 1\\nlr: 0.001\\n")
    >>> read_yaml_mapping(p, "config")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../a.yaml: invalid config: 'lr' is set twice (lines 1 and 3)
    """
    path = Path(path)
    if path.is_dir():  # not "does not exist": it does
        raise InputError(f"expected a {what} file, got a folder", path=path)
    if not path.is_file():
        raise InputError(f"{what} file does not exist", path=path)
    size = path.stat().st_size
    if size > MAX_SETTINGS_BYTES:
        raise InputError(f"invalid {what}: the file is {size / 2**20:.1f} MiB, more than the {MAX_SETTINGS_BYTES >> 20} "
                         f"MiB a settings file may be (a {what} is a few KB of 'name: value' lines)", path=path)
    try:  # bytes: the encoding is YAML's (UTF-8, or UTF-16 with a BOM), not the locale's
        d = yaml.load(path.read_bytes(), Loader=_UniqueKeyLoader)
    except (_KeySetTwice, _TooLarge) as exc:
        raise InputError(f"invalid {what}: {exc}", path=path) from None
    except RecursionError:  # PyYAML composes nested values recursively
        raise InputError(f"invalid {what}: values nested too deeply to read", path=path) from None
    except yaml.reader.ReaderError as exc:
        if not isinstance(exc.character, int):  # a character YAML does not allow
            raise InputError(f"invalid YAML ({' '.join(str(exc).split())})", path=path) from None
        raise InputError(f"invalid {what}: not UTF-8 text (byte {exc.character:#04x} at position {exc.position}); "
                         "save it as UTF-8", path=path) from None
    except yaml.YAMLError as exc:
        text = " ".join(str(exc).replace('in "<byte string>", ', "at ").split())
        raise InputError(f"invalid YAML ({text})", path=path) from None
    if not isinstance(d, dict):
        got = "an empty file" if d is None else f"a {type(d).__name__}"
        raise InputError(f"invalid {what}: expected a mapping of settings ('name: value' lines), got {got}",
                         path=path)
    return d


def plain(value):
    """``value`` with numpy scalars as Python numbers and tuples as lists, inside lists and mappings too: what
    ``yaml.safe_dump`` and ``json.dumps`` write (a plan made with ``np.median`` spacings could not be saved).

    Examples
    --------
    >>> plain({"spacing": (np.float64(0.7), 1.0), "n": np.int64(3), "shape": np.array([2, 3])})
    {'spacing': [0.7, 1.0], 'n': 3, 'shape': [2, 3]}
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # an array of spacings or strides from the Python API
        return plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def coerce_fields(settings) -> None:
    """Every field of the dataclass ``settings`` in place as its annotation wants it (numpy scalars as Python
    numbers, tuples as lists and lists as tuples, whole floats as ints): the Python API's values then meet the checks
    a YAML file's meet. ``ValueError`` naming the field otherwise, also for a number given as text (reading a file
    turns such text into numbers first: :func:`coerce_setting`).

    Examples
    --------
    >>> from medseg.plan.plan import Plan
    >>> plan = Plan(patch_size=(np.int64(32), 32, 32), learning_rate=np.float32(0.5))
    >>> coerce_fields(plan); plan.patch_size, plan.learning_rate
    ([32, 32, 32], 0.5)
    >>> coerce_fields(Plan(ensemble="2"))
    Traceback (most recent call last):
    ...
    ValueError: ensemble must be a number (got '2')
    """
    for f in fields(settings):
        kind, value = str(f.type), plain(getattr(settings, f.name))
        numbers = kind.removesuffix(" | None") in ("int", "float", "tuple", "list[int]", "list[float]")
        flat = value if isinstance(value, list) else [value]
        if kind.startswith("list[list["):
            flat = [x for v in (value if isinstance(value, list) else []) for x in (v if isinstance(v, list) else [v])]
            numbers = True
        if numbers and any(isinstance(v, str) for v in flat):
            raise ValueError(f"{f.name} must be a number (got {value!r})")
        setattr(settings, f.name, coerce_setting(f.name, value, kind))


def file_relative(value: str | None, path: str | os.PathLike) -> str | None:
    """A folder named in the settings file ``path``: ``~`` expanded, a relative one relative to the file.

    Examples
    --------
    >>> file_relative("data", "/plans/p.yaml"), file_relative("/data", "/plans/p.yaml"), file_relative(None, "p")
    ('/plans/data', '/data', None)
    """
    if not value:
        return value
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else str((Path(path).parent / value).resolve())


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
    if base == "list[list[int]]":  # a network's levels: one list of whole numbers per level
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (list, tuple)) for v in value):
            raise ValueError(f"{name} must be a list of lists of numbers, one per level (got {value!r})")
        return [[_number(name, x, True) for x in v] for v in value]
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
