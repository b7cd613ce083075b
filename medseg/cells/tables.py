"""Per-cell measurements and overlays: what `medseg cells count` writes beside the label map."""

from __future__ import annotations

import csv
import io

import numpy as np

from medseg.postprocess.watershed import touching_border_ids


def cell_table(labels: np.ndarray, image: np.ndarray | None = None, spacing=None) -> list[dict]:
    """One row per object: id, centroid (pixels and physical units), size, equivalent diameter,
    mean/integrated intensity and whether it touches the border.

    Centroids are given per array axis (``y, x`` or ``z, y, x``); the physical size is area (2D) or
    volume (3D) in squared/cubed physical units; the equivalent diameter is that of the disc/ball of the
    same size. Intensities are the image's own values (not normalised). Sizes and intensities keep 4 decimals
    and at least 7 significant digits (:func:`round_measure`).

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, 2D or 3D.
    image : ndarray, optional
        Intensity image of the same shape, for the intensity columns (left out without it).
    spacing : sequence of float, optional
        Pixel size per axis (default 1).

    Returns
    -------
    list of dict
        One row per id, in increasing order, keyed by :func:`table_columns`; empty without objects.

    Examples
    --------
    >>> lab = np.zeros((4, 6), np.uint16); lab[1:3, 1:3] = 1; lab[0:2, 4:6] = 2
    >>> rows = cell_table(lab, np.ones((4, 6)), spacing=(0.5, 0.5))
    >>> [(r["id"], r["centroid_y_px"], r["area_px"], r["area"], r["touches_border"]) for r in rows]
    [(1, 1.5, 4, 1.0, False), (2, 0.5, 4, 1.0, True)]
    """
    labels = np.asarray(labels)
    nd = labels.ndim
    sp = np.ones(nd) if spacing is None else np.asarray(spacing, float)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return []
    counts, coord_sums, integ = label_sums(labels, ids, image)
    cents = [coord_sums[ax] / counts for ax in range(nd)]
    border = set(touching_border_ids(labels).tolist())
    voxel = float(np.prod(sp))
    axes = "zyx"[-nd:]
    size_key = "area" if nd == 2 else "volume"
    rows = []
    for i, cid in enumerate(ids):
        size = float(counts[i]) * voxel
        eqd = 2 * np.sqrt(size / np.pi) if nd == 2 else 2 * (3 * size / (4 * np.pi)) ** (1 / 3)
        row = {"id": int(cid)}
        for ax, a in enumerate(axes):
            row[f"centroid_{a}_px"] = round(float(cents[ax][i]), 3)
        for ax, a in enumerate(axes):
            row[f"centroid_{a}"] = round(float(cents[ax][i] * sp[ax]), 4)
        row[f"{size_key}_px"] = int(counts[i])
        row[size_key] = round_measure(size)
        row["equivalent_diameter"] = round_measure(float(eqd))
        if integ is not None:
            row["mean_intensity"] = round_measure(float(integ[i] / counts[i]))
            row["integrated_intensity"] = round_measure(float(integ[i]))
        row["touches_border"] = int(cid) in border
        rows.append(row)
    return rows


def label_sums(labels: np.ndarray, ids: np.ndarray, image: np.ndarray | None = None,
               chunk: int = 2**20) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pixel count, sum of the pixel indices along each axis and sum of the intensities of every id, visiting the
    image a block of about ``chunk`` pixels at a time.

    The sums are those of ``ndi.sum_labels`` (the same float64 additions in the same pixel order, hence the same
    values), without its whole-image float64 maps: a map of ones, one of indices per axis and the image as float64
    took 32 bytes per pixel (40 in 3D), 2 GB for a 8192² mosaic.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels (ids >= 0), any dimension.
    ids : ndarray of int
        Sorted ids present in ``labels`` (> 0) whose sums are wanted.
    image : ndarray, optional
        Intensities of the same shape.
    chunk : int
        Pixels per block (whole slices along the first axis; at least one).

    Returns
    -------
    counts : ndarray of int64, shape (len(ids),)
    coord_sums : ndarray of float64, shape (labels.ndim, len(ids))
        Per axis, the sum of the ids' pixel indices along it.
    intensity_sums : ndarray of float64, shape (len(ids),), or None without ``image``

    Examples
    --------
    >>> lab = np.array([[0, 3, 3], [5, 0, 3]])
    >>> counts, coords, sums = label_sums(lab, np.array([3, 5]), np.arange(6.0).reshape(2, 3))
    >>> counts.tolist(), coords.tolist(), sums.tolist()
    ([3, 1], [[1.0, 1.0], [5.0, 0.0]], [8.0, 3.0])
    """
    labels = np.asarray(labels)
    ids = np.asarray(ids)
    # a bin per id value where ids are small (as ndi.sum_labels), else per position in [0, *ids]
    direct = not len(ids) or int(ids[-1]) <= labels.size
    table = ids if direct else np.concatenate([[0], ids])
    nbins = int(ids[-1]) + 1 if direct and len(ids) else len(table)
    counts, sums = np.zeros(nbins, np.int64), np.zeros((labels.ndim, nbins))
    integ = None if image is None else np.zeros(nbins)
    step = max(1, chunk // max(1, int(np.prod(labels.shape[1:]))))
    for start in range(0, labels.shape[0], step):
        block = labels[start:start + step]
        lab = block.ravel().astype(np.intp) if direct else np.searchsorted(table, block.ravel())
        np.add.at(counts, lab, 1)
        for ax in range(labels.ndim):  # indices are whole numbers: their float64 sums are exact in any order
            idx = np.arange(block.shape[ax], dtype=np.float64) + (start if ax == 0 else 0)
            shape = [-1 if a == ax else 1 for a in range(labels.ndim)]
            np.add.at(sums[ax], lab, np.broadcast_to(idx.reshape(shape), block.shape).ravel())
        if integ is not None:  # unbuffered, in pixel order: bincount's float64 additions, block after block
            np.add.at(integ, lab, np.asarray(image[start:start + step], dtype=np.float64).ravel())
    pick = ids if direct else np.arange(1, len(table))
    return counts[pick], sums[:, pick], None if integ is None else integ[pick]


def round_measure(x: float, decimals: int = 4, digits: int = 7) -> float:
    """``x`` rounded to ``decimals`` places, or to more where that would keep fewer than ``digits`` significant
    digits: a float image in small units (say 1e-5) or a sub-micrometre voxel would otherwise read as 0.0004 or 0.

    Parameters
    ----------
    x : float
        A measurement.
    decimals : int
        Places kept at least.
    digits : int
        Significant digits kept at least (7: what a float32 image holds).

    Returns
    -------
    float

    Examples
    --------
    >>> round_measure(123.456789), round_measure(0.000446191234), round_measure(0.0)
    (123.4568, 0.0004461912, 0.0)
    """
    x = float(x)
    if x == 0 or not np.isfinite(x):
        return x
    return round(x, max(decimals, digits - 1 - int(np.floor(np.log10(abs(x))))))


def rows_to_csv(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV text of a list of dicts: the header is ``columns`` when given (a row's missing or None values are
    blank), else the first row's keys.

    Parameters
    ----------
    rows : list of dict
        The rows.
    columns : list of str, optional
        The header; a row with a key not in it is a ``ValueError`` (:class:`csv.DictWriter`).

    Returns
    -------
    str
        CSV text, one line per row after the header (without rows, the header alone).

    Examples
    --------
    >>> rows_to_csv([{"a": 1, "b": None}, {"a": 2}], ["a", "b"]).split()
    ['a,b', '1,', '2,']
    """
    buf = io.StringIO()
    cols = list(columns) if columns is not None else list(rows[0].keys()) if rows else []
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def table_columns(ndim: int, with_intensity: bool = True) -> list[str]:
    """Column names of :func:`cell_table` (for the header of an empty table).

    Parameters
    ----------
    ndim : int
        2 or 3: centroid axes ``y, x`` or ``z, y, x``, size ``area`` or ``volume``.
    with_intensity : bool
        Include ``mean_intensity`` and ``integrated_intensity``.

    Returns
    -------
    list of str

    Examples
    --------
    >>> lab = np.zeros((4, 6), np.uint16); lab[1:3, 1:3] = 1
    >>> table_columns(2) == list(cell_table(lab, np.ones((4, 6)))[0])
    True
    >>> table_columns(3, with_intensity=False)[-4:]
    ['volume_px', 'volume', 'equivalent_diameter', 'touches_border']
    """
    axes = "zyx"[-ndim:]
    size_key = "area" if ndim == 2 else "volume"
    cols = ["id"] + [f"centroid_{a}_px" for a in axes] + [f"centroid_{a}" for a in axes]
    cols += [f"{size_key}_px", size_key, "equivalent_diameter"]
    cols += ["mean_intensity", "integrated_intensity"] if with_intensity else []
    return cols + ["touches_border"]


def overlay_rgb(image: np.ndarray, labels: np.ndarray, colour=(255, 40, 40)) -> np.ndarray:
    """RGB uint8 picture of the image (percentile-stretched) with object outlines; 3D stacks are shown as a
    maximum-intensity projection with the outlines of the projected labels.

    Parameters
    ----------
    image : ndarray
        2D image or 3D stack.
    labels : ndarray of int
        Instance labels of the same shape.
    colour : (int, int, int)
        RGB of the outlines (each object's inner boundary pixels).

    Returns
    -------
    ndarray of uint8, shape (y, x, 3)
        Grey = the image stretched between its 0.5th and 99.8th percentiles.

    Examples
    --------
    >>> lab = np.zeros((8, 8), np.uint16); lab[2:6, 2:6] = 1
    >>> rgb = overlay_rgb(np.random.rand(8, 8), lab)
    >>> rgb.shape, rgb[2, 2].tolist()
    ((8, 8, 3), [255, 40, 40])
    """
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, dtype=np.float64)
    lab = np.asarray(labels)
    if img.ndim == 3:
        img = img.max(axis=0)
        # the label of the first object met along z, so that outlines of stacked cells stay visible
        first = np.argmax(lab > 0, axis=0)
        lab = np.take_along_axis(lab, first[None], axis=0)[0]
    lo, hi = np.percentile(img, [0.5, 99.8]) if img.size else (0, 1)
    grey = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    rgb[find_boundaries(lab, mode="inner") & (lab > 0)] = colour
    return rgb
