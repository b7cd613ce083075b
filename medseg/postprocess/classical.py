"""Instances without training: a threshold (Otsu or local) and a distance-transform watershed, with the nucleus
size estimated from the image itself (:func:`estimate_radius`), in 2D and 3D with physical spacing.

The baseline every cell benchmark reports beside the learned model (``medseg cells count --classical``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medseg.postprocess.morphology import distance_transform
from medseg.postprocess.watershed import _spacing, watershed_instances

def estimate_radius(mask: np.ndarray, spacing=None, distance: np.ndarray | None = None) -> float:
    """Typical object radius (physical units): the median over connected components of the largest
    inscribed-ball radius. Clumps of touching objects barely change it, unlike their area.

    ``distance``, the mask's Euclidean distance transform with this spacing, saves computing it again.

    Parameters
    ----------
    mask : ndarray of bool
        Foreground, 2D or 3D; components are face-connected.
    spacing : float or sequence of float, optional
        Pixel size per axis (default 1).
    distance : ndarray, optional
        The mask's distance transform, if already computed.

    Returns
    -------
    float
        Median of the components' largest distance-to-background; 0.0 for an empty mask.

    Examples
    --------
    >>> m = np.zeros((40, 40), bool); m[5:15, 5:15] = True; m[20:30, 20:36] = True
    >>> estimate_radius(m)
    5.0
    """
    sp = _spacing(spacing, np.ndim(mask))
    lab, n = ndi.label(mask)
    if n == 0:
        return 0.0
    edt = distance_transform(mask, sp) if distance is None else np.asarray(distance)
    inside = lab > 0
    peaks = np.zeros(n + 1)
    np.maximum.at(peaks, lab[inside], edt[inside])  # ndi.maximum's sort takes ~10x longer
    return float(np.median(peaks[1:]))


def threshold_mask(image: np.ndarray, method: str = "otsu", block_size: int | None = None,
                   smooth: float = 1.0) -> np.ndarray:
    """Foreground of a bright-objects-on-dark image: Gaussian smoothing then Otsu or local threshold.

    Parameters
    ----------
    image : ndarray
        One channel, 2D or 3D.
    method : {"otsu", "local"}
        Global Otsu threshold, or :func:`skimage.filters.threshold_local` over ``block_size`` pixels (made odd;
        default 51) where the pixel is also above half the Otsu level.
    block_size : int or sequence of int, optional
        Neighbourhood of the local threshold, in pixels (one entry per axis, or one for all).
    smooth : float
        Gaussian sigma in pixels applied first (0: none).

    Returns
    -------
    ndarray of bool
        The foreground (all False for a constant image).

    Examples
    --------
    A faint one-pixel speck (2) falls on the background's side of Otsu's split between 0 and 10:

    >>> img = np.zeros((5, 7)); img[1:4, 1:4] = 10; img[2, 5] = 2
    >>> threshold_mask(img, smooth=0).astype(int)[2].tolist()
    [0, 1, 1, 1, 0, 0, 0]
    """
    from skimage.filters import threshold_local, threshold_otsu

    img = ndi.gaussian_filter(np.asarray(image, dtype=float), smooth) if smooth > 0 else np.asarray(image, float)
    if img.max() == img.min():
        return np.zeros(img.shape, bool)
    if method == "otsu":
        return img > threshold_otsu(img)
    if method == "local":
        bs = np.asarray(51 if block_size is None else block_size, int)
        bs = bs + 1 - bs % 2
        bs = int(bs) if bs.ndim == 0 else tuple(int(b) for b in bs)
        # local contrast, but never in flat background far below the global level
        return (img > threshold_local(img, bs)) & (img > 0.5 * threshold_otsu(img))
    raise ValueError(f"unknown threshold method {method!r} (otsu, local)")


def classical_instances(image: np.ndarray, spacing=None, method: str = "otsu", radius: float | None = None,
                        min_size: float | None = None, exclude_border: bool = False,
                        return_info: bool = False):
    """Nuclei without a trained model: threshold + distance-transform watershed, sized from the image.

    The typical nucleus radius ``r`` is estimated from the thresholded mask (:func:`estimate_radius`) unless
    given; markers are maxima of the (smoothed) distance map at least ``0.8 r`` apart and ``0.15 r`` high
    (h-maxima), objects smaller than a disc/ball of radius ``r / 3`` are removed. No per-image tuning.

    Parameters
    ----------
    image : ndarray
        One channel, 2D or 3D, bright objects on a dark background (a stack of one z slice is segmented as that
        2D image).
    spacing : sequence of float, optional
        Pixel size per axis (physical units); distances and sizes scale with it.
    method : {"otsu", "local"}
        Global Otsu or local (adaptive) threshold; the local one over ``8 r`` (at least 15 of the finest pixels)
        along every axis, in physical units.
    radius : float, optional
        Known typical radius (physical units), skips the estimate.
    min_size : float, optional
        Smallest object kept (area or volume in physical units; default: a disc/ball of radius ``r / 3``).
    exclude_border : bool
        Remove objects that touch the image border.
    return_info : bool
        Also return ``{"radius": r}``.

    Returns
    -------
    labels : ndarray of uint16
        Instances 1..n; with ``return_info``, also a dict with the estimated radius.

    Examples
    --------
    Two overlapping discs of radius 10 (centres 17 px apart) are one Otsu component but two nuclei:

    >>> yy, xx = np.mgrid[:40, :60]
    >>> img = ((np.hypot(yy - 20, xx - 20) < 10) | (np.hypot(yy - 20, xx - 37) < 10)).astype(float)
    >>> labels, info = classical_instances(img, return_info=True)
    >>> int(labels.max()), round(info["radius"])
    (2, 10)
    """
    img = np.asarray(image, dtype=float)
    sp = _spacing(spacing, img.ndim)
    if method not in ("otsu", "local"):  # anything but "local" was thresholded as otsu, silently
        raise ValueError(f"unknown threshold method {method!r} (otsu, local)")
    if radius is not None and not 0 < radius < np.inf:  # a negative radius returned no objects, silently
        raise ValueError(f"radius must be a positive number (physical units), got {radius}")
    if not np.isfinite(img).all():  # NaN reached Otsu's histogram: "autodetected range of [nan, nan]"
        raise ValueError("image has NaN or infinite values")
    if img.ndim == 3 and img.shape[0] == 1:
        # one z slice is a 2D image (as medseg.io reads it): areas, not ball volumes, set the smallest object
        # (a volume given here is area x z step), and no object is cut by a z face
        out = classical_instances(img[0], sp[1:], method, radius, None if min_size is None else min_size / sp[0],
                                  exclude_border, return_info)
        return (out[0][None], out[1]) if return_info else out[None]
    # about one in-plane pixel (the coarser of y, x) along every axis: smoothing only to the finest pixel left an
    # image with a finer x than y so noisy that one-pixel specks set the size estimate
    smooth = sp[-2:].max() / sp
    # each float64 map is dropped once the next is made (a 4096² mosaic peaked at 97 bytes per pixel with all alive)
    shape, ndim = img.shape, img.ndim
    img_s = ndi.gaussian_filter(img, smooth)
    del img
    if method == "local":
        r0 = radius or estimate_radius(threshold_mask(img_s, "otsu", smooth=0), sp) or 5.0
        # 8 radii (at least 15 of the finest pixels) across along every axis: a block counted in the finest pixels
        # on all axes reached 2x further along a z step of 2, and its threshold hardly varied with depth
        block = np.maximum(np.round(max(8 * r0, 15 * sp.min()) / sp), 1).astype(int)
        mask = threshold_mask(img_s, "local", block_size=block, smooth=0)
    else:
        mask = threshold_mask(img_s, "otsu", smooth=0)
    del img_s
    mask = ndi.binary_fill_holes(mask) if ndim == 2 else np.stack([ndi.binary_fill_holes(m) for m in mask])
    edt = distance_transform(mask, sp)
    r = float(radius) if radius else estimate_radius(mask, sp, distance=edt)
    if r <= 0:
        labels = np.zeros(shape, np.uint16)
        return (labels, {"radius": 0.0}) if return_info else labels
    dist = ndi.gaussian_filter(edt, 0.15 * r / sp)
    del edt
    unit_ball = np.pi * (r / 3) ** 2 if ndim == 2 else 4 / 3 * np.pi * (r / 3) ** 3
    labels = watershed_instances(mask, distance=dist, spacing=sp, min_distance=0.8 * r, h=0.15 * r,
                                 min_size=unit_ball if min_size is None else min_size,
                                 exclude_border=exclude_border)
    return (labels, {"radius": r}) if return_info else labels
