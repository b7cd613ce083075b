"""ImageJ/Fiji ROI export (one polygon per 2D object), through the ``roifile`` package."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medseg.errors import InputError
from medseg.io.atomic import atomic_path


def label_polygons(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Outline of every object as an (n, 2) array of (x, y) pixel-corner coordinates (largest contour).

    Examples
    --------
    >>> lab = np.zeros((5, 5), np.uint16); lab[1:3, 1:4] = 7
    >>> poly = label_polygons(lab)[7]
    >>> float(poly[:, 0].min()), float(poly[:, 0].max()), float(poly[:, 1].min()), float(poly[:, 1].max())
    (0.5, 3.5, 0.5, 2.5)
    """
    from skimage.measure import find_contours

    out = {}
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = np.pad(labels[sl] == i, 1)
        contours = find_contours(m.astype(np.uint8), 0.5)
        if not contours:
            continue
        c = max(contours, key=len)  # (row, col) in the padded crop
        out[i] = np.stack([c[:, 1] - 1 + sl[1].start, c[:, 0] - 1 + sl[0].start], axis=1)
    return out


def write_roi_zip(labels: np.ndarray, path) -> None:
    """Write ``<id>_rois.zip`` readable by Fiji's ROI Manager and QuPath (polygons named by object id)."""
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
