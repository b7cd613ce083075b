"""Distance transforms and regional maxima for watershed markers, fast on large 2D images and 3D stacks.

Each function returns what the scikit-image / SciPy operation named in its docstring returns (tested on real
images); ``benchmarks/cells_speed.py`` measures the gain.

* :func:`distance_transform`: ``scipy.ndimage.distance_transform_edt`` by ITK's Maurer filter.
* :func:`h_transform`: ``skimage.morphology.reconstruction(image - h, image)`` by ITK's filter.
* :func:`maxima_within`: ``image == scipy.ndimage.maximum_filter(image, footprint=...)``, tested only at the
  pixels that are maxima of a 3x3 neighbourhood (a large round footprint makes the filter slow).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def distance_transform(mask: np.ndarray, spacing=None) -> np.ndarray:
    """Euclidean distance of every foreground pixel to the nearest background pixel (0 on the background).

    ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``, computed by ITK's Maurer filter (about 8x
    faster on a 64x256x256 stack). ITK returns squared distances as float32: exact integers, hence values equal
    to SciPy's, when the spacing is integer (e.g. pixels). Other spacings are measured in units of the finest
    axis, so that squared distances stay sums of integers when the axes' ratios are (a z step of 0.6 µm over
    0.3 µm pixels) and the plateaus of equal distance stay equal: in µm, float32 rounding broke their ties, and
    the watershed split that stack into 103 objects where the same stack in pixels (z step 2) gave 130. Otherwise
    within single-precision rounding (measured up to 6e-7 relative on a real stack with spacing 2, 0.65, 0.65).

    Parameters
    ----------
    mask : ndarray of bool
        Foreground, any dimension (ITK is used in 2D and 3D when there is both foreground and background).
    spacing : float or sequence of float, optional
        Pixel size per axis (default 1): distances are in its units.

    Returns
    -------
    ndarray of float64, the shape of ``mask``.

    Examples
    --------
    >>> distance_transform(np.array([[0, 1, 1, 1, 0]], bool)).tolist()
    [[0.0, 1.0, 2.0, 1.0, 0.0]]
    >>> distance_transform(np.array([[0, 1, 1, 1, 0]], bool), spacing=(1.0, 0.5)).tolist()
    [[0.0, 0.5, 1.0, 0.5, 0.0]]
    """
    mask = np.asarray(mask, bool)
    sp = np.ones(mask.ndim) if spacing is None else np.broadcast_to(np.asarray(spacing, float), (mask.ndim,))
    if mask.ndim not in (2, 3) or mask.all() or not mask.any():  # ITK needs a background pixel to measure from
        return ndi.distance_transform_edt(mask, sampling=sp)
    import SimpleITK as sitk

    unit = 1.0 if np.all(sp == np.round(sp)) else float(sp.min())  # see above: ties kept whatever the unit
    background = sitk.GetImageFromArray((~mask).view(np.uint8))
    background.SetSpacing([float(s) for s in (sp / unit)[::-1]])  # ITK orders axes x, y, z
    edt = sitk.SignedMaurerDistanceMapImageFilter()
    # distance outside the background's contour, i.e. from each foreground pixel to the nearest background one
    edt.SetInsideIsPositive(False)
    edt.SetSquaredDistance(True)
    edt.SetUseImageSpacing(True)
    squared = sitk.GetArrayFromImage(edt.Execute(background))  # negative inside the background
    return np.sqrt(np.maximum(squared, 0), dtype=np.float64) * unit


def h_transform(image: np.ndarray, h: float) -> np.ndarray:
    """Reconstruction by dilation of ``image - h`` under ``image``: every dome loses its top ``h``.

    Equal to ``skimage.morphology.reconstruction(image - h, image, method="dilation")`` with its default
    (full) connectivity, computed by ITK's reconstruction filter (SimpleITK) in 2D and 3D: scikit-image's sorts
    every pixel twice and took 15x longer on a 64x256x256 stack (``benchmarks/cells_speed.py``).

    Parameters
    ----------
    image : ndarray
        Float map (e.g. a distance transform).
    h : float
        Height removed from every dome (> 0).

    Returns
    -------
    ndarray of float64, the shape of ``image``.

    Examples
    --------
    >>> d = np.array([[0, 1, 3, 1, 0, 2, 0]], float)
    >>> h_transform(d, 1.0).tolist()
    [[0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 0.0]]
    """
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    image = np.asarray(image, dtype=float)
    if image.ndim not in (2, 3) or min(image.shape, default=0) == 0:
        from skimage.morphology import reconstruction

        return reconstruction(image - h, image, method="dilation") if image.size else image.copy()
    import SimpleITK as sitk

    rec = sitk.ReconstructionByDilationImageFilter()
    rec.SetFullyConnected(True)  # scikit-image's default footprint: all 8 / 26 neighbours
    return sitk.GetArrayFromImage(rec.Execute(sitk.GetImageFromArray(image - h), sitk.GetImageFromArray(image)))


def maxima_within(image: np.ndarray, footprint: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Pixels equal to the maximum of ``image`` over ``footprint`` centred on them (SciPy's ``reflect`` edges).

    Equal to ``(image == ndi.maximum_filter(image, footprint=footprint)) & candidates``, but the large
    footprint is only visited at the pixels that are also maxima of its 3x3 (3x3x3) centre.

    Parameters
    ----------
    image : ndarray
        2D or 3D map.
    footprint : ndarray of bool
        Odd-sized neighbourhood, centred (e.g. :func:`medseg.postprocess.watershed.ellipsoid_footprint`).
    candidates : ndarray of bool, optional
        Only these pixels can be maxima (e.g. the foreground).

    Returns
    -------
    ndarray of bool, the shape of ``image``.

    Examples
    --------
    >>> d = np.array([[0, 2, 1, 3, 0, 0, 1]], float)
    >>> maxima_within(d, np.ones((1, 5), bool)).astype(int).tolist()
    [[0, 0, 0, 1, 0, 0, 1]]
    """
    image = np.asarray(image)
    footprint = np.asarray(footprint, bool)
    if footprint.ndim != image.ndim or any(s % 2 == 0 for s in footprint.shape):
        raise ValueError(f"footprint of shape {footprint.shape} must be odd-sized with {image.ndim} axes")
    half = np.array(footprint.shape) // 2
    centre = footprint[tuple(slice(max(k - 1, 0), k + 2) for k in half)]
    if centre.shape != footprint.shape and centre.any():  # a cheap necessary condition first
        near = image == ndi.maximum_filter(image, footprint=centre)
        keep = near if candidates is None else near & np.asarray(candidates, bool)
    else:
        keep = np.ones(image.shape, bool) if candidates is None else np.asarray(candidates, bool).copy()
    points = np.nonzero(keep)
    if any(h >= n for h, n in zip(half, image.shape)) or len(points[0]) * 8 > image.size:
        return keep & (image == ndi.maximum_filter(image, footprint=footprint))
    values = image[points]
    size = np.array(image.shape)
    for offset in np.argwhere(footprint) - half:
        if not offset.any():
            continue
        idx = []
        for ax, off in enumerate(offset):
            j = points[ax] + off
            j = np.where(j < 0, -j - 1, j)  # SciPy's "reflect": d c b a | a b c d | d c b a
            idx.append(np.where(j >= size[ax], 2 * size[ax] - 1 - j, j))
        ok = image[tuple(idx)] <= values
        if not ok.all():  # drop the beaten pixels: later offsets visit fewer
            points, values = tuple(p[ok] for p in points), values[ok]
            if not len(values):
                break
    out = np.zeros(image.shape, bool)
    out[points] = True
    return out
