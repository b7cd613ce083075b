"""Lesion-wise (object-wise) metrics of a "thing" class: tumours, metastases, cells.

A class mask is split into connected components (or instance maps are given as they are), and
the objects are matched with :func:`medseg.evaluate.instances.match_instances` (StarDist's
definitions: a match is IoU >= t under a one-to-one assignment; AP = TP / (TP + FP + FN)).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medseg.evaluate.instances import DEFAULT_THRESHOLDS, instance_metrics


def connected_components(mask: np.ndarray, connectivity: int | None = None) -> np.ndarray:
    """Label the connected components of a binary mask.

    ``connectivity`` is the number of orthogonal steps a neighbour may be away (1: faces,
    ``ndim``: faces, edges and corners, the default, so that a lesion touching itself diagonally
    stays one lesion, as in the nnU-Net/BraTS lesion-wise evaluations).

    Parameters
    ----------
    mask : ndarray of bool
        Binary mask, any dimension.
    connectivity : int, optional
        1 .. ``mask.ndim`` (default ``mask.ndim``).

    Returns
    -------
    ndarray of int32
        Components 1..n in raster order of their first voxel, 0 = background.

    Examples
    --------
    >>> m = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], bool)
    >>> int(connected_components(m).max()), int(connected_components(m, 1).max())
    (1, 2)
    """
    mask = np.asarray(mask, bool)
    structure = ndi.generate_binary_structure(mask.ndim, connectivity or mask.ndim)
    lab, _ = ndi.label(mask, structure=structure)
    return lab


def _crop(*masks: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of the union of the masks (None when all are empty)."""
    union = masks[0] if len(masks) == 1 else np.logical_or.reduce(masks)
    objs = ndi.find_objects(union.astype(np.uint8))
    return objs[0] if objs else None


def lesion_metrics(ref: np.ndarray, pred: np.ndarray, thresholds=DEFAULT_THRESHOLDS,
                   connectivity: int | None = None, instances: bool = False) -> dict:
    """Object-wise scores of one class: counts, count error, TP/FP/FN, precision, recall, F1, AP and PQ per IoU threshold.

    Parameters
    ----------
    ref, pred : ndarray
        Binary masks of the class (split into connected components), or instance maps when
        ``instances=True``.
    thresholds : sequence of float
        IoU thresholds (default 0.1 ... 0.9).
    connectivity : int, optional
        See :func:`connected_components`.
    instances : bool
        ``ref`` and ``pred`` are instance label maps already: matched as they are.

    Returns
    -------
    dict
        :func:`medseg.evaluate.instances.instance_metrics` of the two sides' objects.

    Examples
    --------
    >>> ref = np.array([[1, 1, 0, 0, 1]], bool)
    >>> pred = np.array([[1, 1, 0, 0, 0]], bool)
    >>> d = lesion_metrics(ref, pred, thresholds=[0.5])
    >>> d["n_ref"], d["n_pred"], d["tp@0.5"], d["fn@0.5"], d["f1@0.5"]
    (2, 1, 1, 1, 0.6666666666666666)
    """
    if instances:
        return instance_metrics(np.asarray(ref), np.asarray(pred), thresholds)
    ref = np.asarray(ref, bool)
    pred = np.asarray(pred, bool)
    box = _crop(ref, pred)
    if box is None:
        return instance_metrics(np.zeros(1, np.uint8), np.zeros(1, np.uint8), thresholds)
    return instance_metrics(connected_components(ref[box], connectivity),
                            connected_components(pred[box], connectivity), thresholds)


def _as_value(name: str) -> int | None:
    """The label value a class name can stand for without a label table: ``"3"`` or ``"label_3"`` (as
    :func:`medseg.io.labels.label_names` names found values); else None."""
    text = name[len("label_"):] if name.startswith("label_") else name
    return int(text) if text.isdigit() and str(int(text)) == text and int(text) > 0 else None


def unnamed_lesion_classes(lesion_classes) -> list[str]:
    """The lesion classes that can name no class when the classes are the values found (no label table).

    Examples
    --------
    >>> unnamed_lesion_classes(["1", "label_2", "tumour", "0", "03"])
    ['tumour', '0', '03']
    """
    return [str(c) for c in lesion_classes if _as_value(str(c)) is None]


def absent_lesion_classes(lesion_classes, labels: dict) -> list[str]:
    """The lesion classes that are none of the evaluated classes (``labels``: ``{value: name}``, as the report's
    settings hold it): no lesion metrics were computed for them.

    Examples
    --------
    >>> absent_lesion_classes(["1", "label_2", "99"], {"1": "label_1", "2": "label_2"})
    ['99']
    """
    known = {str(k) for k in labels} | {str(v) for v in labels.values()}
    return [str(c) for c in lesion_classes if str(c) not in known]
