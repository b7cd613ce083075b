"""``evaluate_case``: every per-class metric of one prediction against its reference.

Empty-class policy (explicit, flagged, never a silent NaN in a mean):

* both empty: Dice = IoU = precision = recall = NSD = 1, HD/HD95/ASSD = 0, flag ``both_empty``;
* prediction empty, reference not: Dice = IoU = precision = recall = NSD = 0, flag ``pred_empty``;
* reference empty, prediction not: Dice = IoU = precision = recall = NSD = 0, flag ``ref_empty``;
* with one side empty the distances are undefined: NaN (``null`` in JSON), left out of the means
  (whose ``n_surface_cases`` says how many cases they average), or set to ``distance_cap`` mm
  (flag ``distance_capped``) when a cap is given (``"diagonal"``: the image diagonal in mm);
* ``rel_volume_diff`` is NaN when the reference is empty (left out of the means alike).
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np

from medseg.evaluate.instances import DEFAULT_THRESHOLDS
from medseg.evaluate.lesions import lesion_metrics
from medseg.evaluate.overlap import confusion_matrix, overlap_from_confusion, pixel_accuracy
from medseg.evaluate.surface import SURFACE_KEYS, surface_metrics
from medseg.io.labels import label_names

OVERLAP_KEYS = ("dice", "iou", "precision", "recall")
VOLUME_KEYS = ("volume_pred_ml", "volume_ref_ml", "volume_diff_ml", "abs_volume_diff_ml", "rel_volume_diff")
COUNT_KEYS = ("tp", "fp", "fn")
METRIC_KEYS = OVERLAP_KEYS + SURFACE_KEYS + VOLUME_KEYS + COUNT_KEYS
DEFAULT_NSD_TOLERANCE = 2.0
#: classes taken from the data: a prediction holding more values that its reference lacks than this (and than twice
#: the reference's classes), and agreeing with the reference on under ``MIN_AGREEMENT`` of its foreground voxels, is
#: an image given as a label map, refused before any metric (see ``check_found_classes``)
MAX_UNREFERENCED = 32
MIN_AGREEMENT = 0.1


class UnreferencedLabelsWarning(UserWarning):
    """The classes were taken from the data and a prediction holds values that no reference holds.

    Each such value is scored as a class of its own (Dice 0); naming the classes (``labels=``) avoids it, and
    ``warnings.simplefilter("ignore", UnreferencedLabelsWarning)`` silences it.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     r = evaluate_case(np.array([[0, 1, 2]]), np.array([[0, 1, 1]]), surface=False)
    >>> [type(w.message).__name__ for w in caught], r["classes"]["label_2"]["dice"]
    (['UnreferencedLabelsWarning'], 0.0)
    """


def values_text(values, most: int = 8, count: bool = True) -> str:
    """``"3, 4, 5"`` or ``"3, 4, ..., 139 (123 values)"``: label values in one short phrase.

    Examples
    --------
    >>> values_text([5]), values_text(range(1, 40), most=3), values_text(range(1, 40), most=3, count=False)
    ('5', '1, 2, 3, ..., 39 (39 values)', '1, 2, 3, ..., 39')
    """
    values = sorted(int(v) for v in values)
    if len(values) <= most:
        return ", ".join(map(str, values))
    return f"{', '.join(map(str, values[:most]))}, ..., {values[-1]}" + (f" ({len(values)} values)" if count else "")


def check_found_classes(cm: np.ndarray, values: np.ndarray, path=None) -> list[int]:
    """The foreground values of a prediction that its reference lacks, when the classes are taken from the data.

    ``cm`` and ``values`` are :func:`medseg.evaluate.overlap.confusion_matrix`'s (rows: reference). A label map
    predicts the classes its reference was annotated with, now and then one more (a false positive of a class absent
    from this case), or many more when the reference is partial (a multi-organ model against one annotated organ).
    More than ``MAX_UNREFERENCED`` such values, more than twice the reference's classes, and agreement with the
    reference on under ``MIN_AGREEMENT`` of its foreground voxels is an intensity image (an MR or CT volume) given
    as the prediction by mistake: scoring each grey value as a class would hide the mistake in a long report, so
    it is an ``InputError`` (naming ``path``). Naming the classes (``--labels``) turns this check off.

    Examples
    --------
    >>> from medseg.evaluate.overlap import confusion_matrix
    >>> check_found_classes(*confusion_matrix(np.array([0, 1, 2, 2]), np.array([3, 1, 2, 0])))
    [3]
    """
    from medseg.errors import InputError

    cm, values = np.asarray(cm), np.asarray(values)
    fg = values != 0
    in_ref, in_pred = (cm.sum(axis=1) > 0) & fg, (cm.sum(axis=0) > 0) & fg
    extra = values[in_pred & ~in_ref].tolist()
    n_ref = int(in_ref.sum())
    if len(extra) > max(MAX_UNREFERENCED, 2 * n_ref):
        ref_voxels = int(cm[fg].sum())
        agreement = float(np.diag(cm)[fg].sum()) / ref_voxels if ref_voxels else 1.0
        if agreement < MIN_AGREEMENT:  # an empty reference cannot tell an image from a rich label map: warned only
            raise InputError(f"the prediction holds {len(extra)} values that its reference lacks "
                             f"({values_text(extra, 5, count=False)}; the reference holds {n_ref}) and matches "
                             f"{agreement:.0%} of the reference's labelled voxels: an image rather than a label map? "
                             f"If they are classes, name them with --labels dataset.json", path=path)
    return extra


def check_distance_settings(nsd_tolerance, distance_cap) -> None:
    """``InputError`` for an NSD tolerance that is not a finite number >= 0 (mm; NaN scored every surface 0) or a
    distance cap that is neither a positive number nor ``"diagonal"`` (any text used to count as diagonal).

    Examples
    --------
    >>> check_distance_settings({"liver": 1.0, "default": 2.0}, "diagonal")
    >>> check_distance_settings(2.0, -5)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: distance cap must be a positive number of mm or 'diagonal' (got -5)
    """
    from medseg.errors import InputError

    tols = nsd_tolerance.values() if isinstance(nsd_tolerance, Mapping) else [nsd_tolerance]
    for t in tols:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not 0 <= t < np.inf:
            raise InputError(f"NSD tolerance must be a finite number of mm >= 0 (got {t!r})")
    cap = distance_cap
    if cap is not None and cap != "diagonal" and (isinstance(cap, (str, bool)) or not 0 < float(cap) < np.inf):
        raise InputError(f"distance cap must be a positive number of mm or 'diagonal' (got {cap!r})")


def tolerance_for(tol, value: int, name: str) -> float:
    """NSD tolerance (mm) of one class from a float or a ``{name|value|"default": mm}`` mapping.

    Parameters
    ----------
    tol : float or mapping
        One tolerance for every class, or tolerances by class name, label value (int or text) and ``"default"``.
    value : int
        The class's label value.
    name : str
        The class's name.

    Returns
    -------
    float
        The class's entry, looked up by name, then value; else the mapping's ``default``, else
        ``DEFAULT_NSD_TOLERANCE`` (2 mm).

    Examples
    --------
    >>> tol = {"liver": 1.0, "3": 5.0, "default": 3.0}
    >>> tolerance_for(tol, 1, "liver"), tolerance_for(tol, 3, "tumour"), tolerance_for(tol, 2, "spleen")
    (1.0, 5.0, 3.0)
    >>> tolerance_for(1.5, 2, "spleen"), tolerance_for({}, 2, "spleen")
    (1.5, 2.0)
    """
    if isinstance(tol, Mapping):
        for key in (name, value, str(value)):
            if key in tol:
                return float(tol[key])
        return float(tol.get("default", DEFAULT_NSD_TOLERANCE))
    return float(tol)


def _array_and_spacing(x, spacing):
    if hasattr(x, "array") and hasattr(x, "spacing"):
        return np.asarray(x.array), (x.spacing if spacing is None else spacing)
    return np.asarray(x), spacing


def evaluate_case(pred, ref, labels=None, spacing=None, nsd_tolerance=DEFAULT_NSD_TOLERANCE,
                  lesion_classes: Sequence = (), lesion_thresholds=DEFAULT_THRESHOLDS,
                  connectivity: int | None = None, distance_cap: float | str | None = None,
                  surface: bool = True, workers: int = 1) -> dict:
    """All metrics of one case.

    Parameters
    ----------
    pred, ref : Image or ndarray of int
        Label maps on the same grid (two ``Image``: checked as :func:`medseg.evaluate.folder.evaluate_folder`
        does, a prediction stored in another orientation re-indexed, a mismatch an ``InputError``, micrometres
        read as such; arrays: only the shapes are checked).
    labels : mapping, sequence or path, optional
        Classes to evaluate (see :func:`medseg.io.labels.label_names`), or a ``dataset.json`` naming them;
        default: every non-zero value present (then an image given as the prediction is an ``InputError``, see
        :func:`check_found_classes`, and prediction values the reference lacks an ``UnreferencedLabelsWarning``).
    spacing : sequence of float, optional
        Voxel size (mm) per array axis; default: the reference ``Image``'s spacing, else 1.
    nsd_tolerance : float or mapping
        NSD tolerance in mm, one for all classes or per class name/value (key ``"default"``).
    lesion_classes : sequence of str or int
        "Thing" classes whose connected components are matched as objects (lesion-wise metrics).
    distance_cap : float, "diagonal" or None
        Value of HD/HD95/ASSD when exactly one side is empty (None: NaN, left out of means).
    surface : bool
        Compute the surface distances (the expensive part).

    Returns
    -------
    dict
        ``{"classes": {name: {metric: value, ..., "flags": [...]}}, "labels": {name: value},
        "pixel_accuracy": float, "mean_iou": float, "spacing": [...]}``

    Examples
    --------
    >>> ref = np.zeros((6, 6), np.uint8); ref[1:4, 1:4] = 1
    >>> pred = np.zeros((6, 6), np.uint8); pred[1:4, 2:5] = 1
    >>> r = evaluate_case(pred, ref, spacing=(1.0, 1.0))
    >>> round(r["classes"]["label_1"]["dice"], 4), r["classes"]["label_1"]["hd"]
    (0.6667, 1.0)
    """
    if hasattr(ref, "same_grid") and hasattr(pred, "same_grid"):  # as evaluate_folder: re-indexed or refused
        from medseg.evaluate.cases import check_geometry, spacing_mm

        pred = check_geometry(pred, ref, pred.meta.get("source"))
        spacing = spacing_mm(ref) if spacing is None else spacing
    ref_a, spacing = _array_and_spacing(ref, spacing)
    pred_a, _ = _array_and_spacing(pred, None)
    if ref_a.shape != pred_a.shape:
        raise ValueError(f"shape mismatch: reference {ref_a.shape} vs prediction {pred_a.shape}")
    if spacing is not None and np.ndim(spacing) != 1:  # a single number was "'float' object is not iterable"
        raise ValueError(f"spacing must be one value per axis of the {ref_a.ndim}D label map, got {spacing!r}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * ref_a.ndim))
    if len(spacing) != ref_a.ndim:
        raise ValueError(f"spacing {spacing} does not match the {ref_a.ndim}D label map")
    if not all(0 < s < math.inf for s in spacing):  # a signed affine diagonal made volumes negative
        from medseg.errors import InputError

        raise InputError(f"spacing must be positive finite mm per axis (got {spacing})")
    check_distance_settings(nsd_tolerance, distance_cap)
    if isinstance(labels, (str, os.PathLike)):  # a dataset.json, as evaluate_folder and --labels take it
        from medseg.io.labels import read_label_names

        labels = read_label_names(labels)
    requested = label_names(labels) if labels is not None else None
    cm, values = confusion_matrix(ref_a, pred_a, labels=list(requested) if requested else None)
    if requested is None:  # the classes found: refuse an image given as the prediction, warn of unknown values
        source = pred.meta.get("source") if hasattr(pred, "meta") else None
        extra = check_found_classes(cm, values, source)
        if extra:
            import warnings

            warnings.warn(UnreferencedLabelsWarning(
                f"{f'{source}: ' if source else ''}prediction value(s) {values_text(extra)} not in the reference, "
                f"each scored as a class (dice 0); labels= names the classes"),
                stacklevel=2)
        requested = label_names([v for v in values.tolist() if v != 0])
    ov = overlap_from_confusion(cm, float(np.prod(spacing)) / 1000.0)
    row = {int(v): i for i, v in enumerate(values.tolist())}
    classes = list(requested)
    if surface and classes:
        tol = {c: tolerance_for(nsd_tolerance, c, requested[c]) for c in classes}
        surf = surface_metrics(ref_a, pred_a, classes, spacing, tol, workers=workers)
    cap = distance_cap
    if isinstance(cap, str):
        cap = float(np.linalg.norm(np.asarray(ref_a.shape) * np.asarray(spacing)))
    if isinstance(lesion_classes, str):  # "tumour,cyst" as evaluate_folder takes it, not its characters
        lesion_classes = [c.strip() for c in lesion_classes.split(",") if c.strip()]
    elif np.ndim(lesion_classes) == 0:  # one class value, 1 or np.int64(1): was "'int' object is not iterable"
        lesion_classes = [lesion_classes]
    lesion_set = {str(x) for x in lesion_classes}
    out: dict = {}
    for c in classes:
        i = row[c]
        m: dict = {k: float(ov[k][i]) for k in OVERLAP_KEYS}
        flags = []
        n_ref, n_pred = int(ov["n_ref"][i]), int(ov["n_pred"][i])
        if n_ref == 0 and n_pred == 0:
            flags.append("both_empty")
        elif n_pred == 0:
            flags.append("pred_empty")
        elif n_ref == 0:
            flags.append("ref_empty")
        if surface:
            m.update(surf[c])
            if cap is not None and math.isnan(m["hd"]):
                m.update(hd95=float(cap), hd=float(cap), assd=float(cap))
                flags.append("distance_capped")
        m.update({k: float(ov[k][i]) for k in VOLUME_KEYS})
        m.update({k: int(ov[k][i]) for k in COUNT_KEYS})
        if requested[c] in lesion_set or str(c) in lesion_set:
            m["lesions"] = lesion_metrics(ref_a == c, pred_a == c, lesion_thresholds, connectivity)
        m["flags"] = flags
        out[requested[c]] = m
    ious = [out[requested[c]]["iou"] for c in classes]
    return {"classes": out, "labels": {requested[c]: c for c in classes},
            "pixel_accuracy": pixel_accuracy(cm), "mean_iou": float(np.mean(ious)) if ious else 1.0,
            "spacing": list(spacing)}
