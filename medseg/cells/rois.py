"""ImageJ/Fiji ROI export (one polygon per 2D object), through the ``roifile`` package."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medseg.errors import InputError
from medseg.io.atomic import atomic_path


def label_polygons(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Outline of every object along its pixels' edges, as an (n, 2) array of (x, y) pixel-corner coordinates.

    Pixel ``(row, col)`` spans ``[col, col + 1) x [row, row + 1)``, ImageJ's convention, so the polygon filled
    by Fiji/QuPath (pixels whose centre lies inside) is the object itself, holes filled; its area equals the
    object's pixel count. An object in several pieces keeps its largest outline (diagonal contacts count as
    joined).

    Parameters
    ----------
    labels : ndarray of int
        2D instance labels, 0 = background.

    Returns
    -------
    dict of int to ndarray of int64
        Per object id, the polygon's vertices (only where it turns), shape (n, 2), columns x and y.

    Examples
    --------
    >>> lab = np.zeros((5, 5), np.uint16); lab[1:3, 1:4] = 7
    >>> label_polygons(lab)[7].tolist()
    [[1, 3], [1, 1], [4, 1], [4, 3]]
    """
    from skimage.measure import find_contours

    out = {}
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        # on a twice-finer grid the 0.5 iso-line runs along the pixel edges but for a quarter-pixel cut at each
        # corner; rounding to the nearest corner removes the cuts
        m = np.pad(labels[sl] == i, 1).repeat(2, axis=0).repeat(2, axis=1)
        contours = find_contours(m.astype(np.uint8), 0.5, fully_connected="high")
        if not contours:
            continue
        c = np.rint((max(contours, key=len) + 0.5) / 2).astype(np.int64) - 1  # (row, col) corners in the crop
        poly = _corners(c[:, ::-1] + (sl[1].start, sl[0].start))
        if len(poly) >= 3:
            out[i] = poly
    return out


def _corners(points: np.ndarray) -> np.ndarray:
    """A closed lattice path reduced to the vertices where it turns (no repeats, no straight-through points)."""
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    p = points[keep]
    d = np.sign(p - np.roll(p, 1, axis=0))
    turn = np.any(d != np.roll(d, -1, axis=0), axis=1)
    return p[turn]


def write_roi_zip(labels: np.ndarray, path) -> None:
    """Write ``<id>_rois.zip`` readable by Fiji's ROI Manager and QuPath (polygons named by object id).

    Parameters
    ----------
    labels : ndarray of int
        2D instance labels (3D is an ``InputError``).
    path : path
        The zip file, written atomically; an empty zip when there is no object.

    Examples
    --------
    >>> import tempfile, roifile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory(); f = Path(tmp.name) / "a_rois.zip"
    >>> lab = np.zeros((5, 5), np.uint16); lab[1:3, 1:4] = 7; lab[4, 0] = 9
    >>> write_roi_zip(lab, f)
    >>> for roi in roifile.roiread(f):   # x, y pixel corners: the 2 x 3 rectangle and the single pixel
    ...     print(roi.name, roi.coordinates().tolist())
    cell_00007 [[1.0, 3.0], [1.0, 1.0], [4.0, 1.0], [4.0, 3.0]]
    cell_00009 [[0.0, 5.0], [0.0, 4.0], [1.0, 4.0], [1.0, 5.0]]
    >>> tmp.cleanup()
    """
    try:
        import roifile
    except ImportError as exc:  # optional dependency
        raise InputError("ROI export needs the 'roifile' package (pip install roifile)", path=path) from exc
    if labels.ndim != 2:
        raise InputError("ImageJ ROI export is 2D only", path=path)
    rois = []
    for cid, poly in label_polygons(labels).items():
        roi = roifile.ImagejRoi.frompoints(poly.astype(np.float32))
        roi.roitype = roifile.ROI_TYPE.POLYGON
        roi.name = f"cell_{cid:05d}"
        rois.append(roi)
    with atomic_path(path) as tmp:
        tmp.unlink(missing_ok=True)
        if rois:
            roifile.roiwrite(tmp, rois)
        else:
            import zipfile

            zipfile.ZipFile(tmp, "w").close()
