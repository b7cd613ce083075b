"""Label maps and label tables: the one check that an array holds labels, the one reader of label-name files.

``integer_labels`` is what every reader of a label map (``medseg evaluate``, ``medseg export``, training) uses
to refuse an image or a probability map given as labels; ``label_argument`` is that check for a label map
passed to a Python function (``medseg.postprocess``). ``read_label_names`` reads the label names of
``--labels`` (``medseg evaluate`` and ``medseg export``) and ``label_names`` normalises a table given in Python.

Accepted label tables (JSON), background (0) dropped:

* MSD ``dataset.json``: ``{"labels": {"0": "background", "1": "liver"}}``;
* nnU-Net v2 ``dataset.json``: ``{"labels": {"background": 0, "liver": 1}}`` (also ``"liver": "1"``);
* a bare mapping of either form: ``{"1": "liver"}`` or ``{"liver": 1}``.

nnU-Net region entries (``"whole tumour": [1, 2]``) are unions of label values, not values: they are skipped
with a warning that names them (medseg scores and exports single label values); a value named only inside a
region then has no name, which ``medseg evaluate`` and ``medseg export`` refuse when a label map holds it.
Refused, as a one-line ``InputError`` naming the file: an unreadable or empty table, an entry that names no
integer value >= 0, two names for one value, one name for two values.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from medseg.errors import InputError

_INT = re.compile(r"\s*-?\d+\s*")


def _show(x) -> str:
    """A value for a message; a fractional one never shown as a whole number (0.9999999998, not 1)."""
    if not isinstance(x, (float, np.floating)):
        return str(x)
    short = f"{float(x):.6g}"
    return repr(float(x)) if float(short).is_integer() and not float(x).is_integer() else short


def integer_labels(arr, path: str | os.PathLike | None = None, what: str | None = None) -> np.ndarray:
    """``arr`` as an integer label map (values >= 0; booleans as 0/1, integral floats narrowed to uint8/uint16).

    NaN or infinite, fractional or negative values, and non-numeric types are an ``InputError`` that names the
    file (``path``) or the array (``what``) and gives an example value: an intensity image or a probability map
    given where labels belong is refused here, not scored.

    Examples
    --------
    >>> integer_labels(np.array([0.0, 2.0])).dtype
    dtype('uint8')
    >>> integer_labels(np.array([0, 0.25, 1]), path="pred.nii.gz")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: pred.nii.gz: not a label map: non-integer values such as 0.25 (1 voxel; an image...
    """
    arr = np.asarray(arr)
    head = f"{what} is not a label map" if what else "not a label map"
    if arr.dtype.kind == "b":
        return arr.view(np.uint8)
    if arr.dtype.kind == "f":
        if arr.size:
            finite = np.isfinite(arr)
            if not finite.all():
                raise InputError(f"{head}: NaN or infinite values such as {_show(arr[~finite].flat[0])}", path=path)
            frac = arr != np.round(arr)
            if frac.any():
                n = int(np.count_nonzero(frac))
                raise InputError(f"{head}: non-integer values such as {_show(arr[frac].flat[0])} ({n} voxel"
                                 f"{'s' if n > 1 else ''}; an image or probabilities?)", path=path)
    elif arr.dtype.kind not in "iu":
        raise InputError(f"{head}: {arr.dtype} values", path=path)
    if arr.dtype.kind in "if" and arr.size:
        low = arr.min()
        if low < 0:
            raise InputError(f"{head}: negative values (down to {_show(low)}; an intensity image?)", path=path)
    if arr.dtype.kind == "f":
        top = arr.max(initial=0)
        if top >= 2.0 ** 63:  # the int64 cast would wrap it to a negative id (-2**63), silently
            raise InputError(f"{head}: values up to {_show(top)}, beyond 64-bit integer ids", path=path)
        arr = arr.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int64)
    return arr


def label_argument(arr, name: str = "labels") -> np.ndarray:
    """A label map given to a Python function, checked as :func:`integer_labels` checks files, as integer ids.

    Integral floats become integers and uint64 becomes int64 (NumPy mixes uint64 ids with int64 indices into
    floats, which cannot index); NaN, fractions, negative values and ids beyond int64 are an ``InputError`` (a
    ``ValueError``) that names the argument ``name``.

    Examples
    --------
    >>> label_argument(np.array([0.0, 7.0])).tolist()
    [0, 7]
    >>> label_argument(np.array([0, -1]), "ref")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ref is not a label map: negative values (down to -1; an intensity image?)
    """
    arr = integer_labels(arr, what=name)
    if arr.dtype == np.uint64:
        top = int(arr.max(initial=0))
        if top > np.iinfo(np.int64).max:
            raise InputError(f"{name} is not a label map: ids up to {top}, beyond 64-bit signed integers")
        arr = arr.astype(np.int64)
    return arr


def _entry(k, v, path) -> tuple[int, str] | None:
    """One table entry as (value, name); None for an nnU-Net region (a list of values)."""
    key_is_int = (isinstance(k, (int, np.integer)) and not isinstance(k, bool)) or (
        isinstance(k, str) and _INT.fullmatch(k) is not None) or (
        isinstance(k, (float, np.floating)) and float(k).is_integer())
    if isinstance(v, (list, tuple)):
        return None
    if v is None and key_is_int:
        value, name = int(k), f"label_{int(k)}"
    elif isinstance(v, str) and key_is_int:
        value, name = int(k), v
    elif isinstance(v, str) and _INT.fullmatch(v):
        value, name = int(v), str(k)
    elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        value, name = int(v), str(k)
    elif isinstance(v, (float, np.floating)) and float(v).is_integer():
        value, name = int(v), str(k)
    else:
        raise InputError(f"label entry {k!r}: {v!r} names no integer label value", path=path)
    if value < 0:
        raise InputError(f"label entry {k!r}: {v!r}: label values are integers >= 0", path=path)
    return value, name


def _table(labels, path) -> tuple[dict[int, str], list[str]]:
    """``({value: name}`` with background, ``[region entries]``): the entries checked, the regions set aside."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Mapping) and not hasattr(labels, "__iter__"):
        raise InputError(f"expected a mapping of label values to names or a sequence of values, got {labels!r}",
                         path=path)
    items = labels.items() if isinstance(labels, Mapping) else ((v, None) for v in labels)
    out: dict[int, str] = {}
    regions: list[str] = []
    for k, v in items:
        entry = _entry(k, v, path)
        if entry is None:
            regions.append(f"{k!r} = {list(v)}")
            continue
        value, name = entry
        if out.get(value, name) != name:
            raise InputError(f"label {value} has two names ({out[value]!r}, {name!r})", path=path)
        out[value] = name
    _refuse_shared_names({k: v for k, v in out.items() if k != 0}, path)
    return dict(sorted(out.items())), regions


def _regions_text(regions: list[str]) -> str:
    return f"{'; '.join(regions[:4])}{f'; {len(regions) - 4} more' if len(regions) > 4 else ''}"


def label_names(labels, path: str | os.PathLike | None = None) -> dict[int, str]:
    """Normalise a label table to ``{value: name}``, sorted, background (0) dropped.

    Accepts ``{value: name}`` (MSD), ``{name: value}`` (nnU-Net v2) or a sequence of values (named
    ``label_<value>``); nnU-Net region entries (lists of values) are skipped with a warning. A bad entry, two
    names for one value or one name for two values is an ``InputError`` (naming ``path`` when given).

    Examples
    --------
    >>> label_names({"0": "background", "1": "anterior"}), label_names([2, 1])
    ({1: 'anterior'}, {1: 'label_1', 2: 'label_2'})
    >>> label_names({"background": 0, "liver": 1})
    {1: 'liver'}
    """
    out, regions = _table(labels, path)
    if regions:
        where = f"{os.fspath(path)}: " if path is not None else ""
        warnings.warn(f"{where}nnU-Net region entries skipped ({_regions_text(regions)}): medseg scores and exports "
                      f"single label values", stacklevel=3)
    out.pop(0, None)
    return out


def class_table(labels, path: str | os.PathLike | None = None) -> dict[int, str]:
    """A training label table (``dataset.json``'s ``labels``) as ``{value: name}``, background included.

    The forms of :func:`label_names`; nnU-Net region entries are refused rather than skipped: medseg trains one
    class per label value, and a region's values have no names of their own (training on them under the regions'
    names would mislabel every class but the last).

    Examples
    --------
    >>> class_table({"background": 0, "tumour": 1})
    {0: 'background', 1: 'tumour'}
    >>> class_table({"background": 0, "whole": [1, 2]})
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: nnU-Net region labels ('whole' = [1, 2]) are not supported: medseg trains one class...
    """
    out, regions = _table(labels, path)
    if regions:
        raise InputError(f"nnU-Net region labels ({_regions_text(regions)}) are not supported: medseg trains one "
                         "class per label value; name each value instead, e.g. {\"background\": 0, \"edema\": 1}",
                         path=path)
    return out


def _refuse_shared_names(names: dict[int, str], path) -> None:
    by_name: dict[str, list[int]] = {}
    for value, name in sorted(names.items()):
        by_name.setdefault(name, []).append(value)
    shared = {n: vs for n, vs in by_name.items() if len(vs) > 1}
    if shared:
        which = "; ".join(f"{n!r} names {', '.join(map(str, vs))}" for n, vs in shared.items())
        raise InputError(f"two labels share one name ({which}); give each label its own name", path=path)


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """``{value: name}`` from a label-names JSON file: an MSD or nnU-Net ``dataset.json`` or a bare mapping.

    What ``--labels`` of ``medseg evaluate`` and ``medseg export`` reads (the forms are in the module's
    docstring); every problem is a one-line ``InputError`` naming the file.

    Parameters
    ----------
    path : path
        The JSON file.

    Returns
    -------
    dict of int to str
        Label value -> name, sorted, background (0) dropped.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "dataset.json"
    >>> _ = p.write_text('{"labels": {"background": 0, "liver": 1, "tumour": 2}}')
    >>> read_label_names(p)
    {1: 'liver', 2: 'tumour'}
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("no such labels file", path=path) from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or not text at all
        raise InputError(f"cannot read labels JSON ({' '.join(str(exc).split())})", path=path) from exc
    bare = isinstance(data, dict) and "labels" not in data
    table = data if bare else data.get("labels") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise InputError("no 'labels' mapping in this JSON (expected a dataset.json or a {value: name} mapping)",
                         path=path)
    if not table:
        raise InputError("the labels mapping is empty", path=path)
    try:
        return label_names(table, path=path)
    except InputError as exc:
        if not bare:
            raise
        raise InputError(f"no 'labels' mapping, and not a bare {{value: name}} mapping either ({exc.problem})",
                         path=path) from None
