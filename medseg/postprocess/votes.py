"""Instances from predicted offsets to object centres: every foreground pixel follows the offset field to its
object's centre, pixels that end at the same centre form one object (the grouping of Cellpose's flow dynamics and
of centre-voting methods such as Panoptic-DeepLab and EmbedSeg, with offsets as in :func:`medseg.cells.targets.
offset_targets`).

Where two nuclei touch, a marker from the interior probability can run across the contact; their offsets still
point to two different centres.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from medseg.postprocess.watershed import relabel_sequential, remove_small_instances


def follow_offsets(offsets: np.ndarray, mask: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Positions reached by the ``mask``'s pixels after ``iterations`` steps along the offset field.

    Each step adds the (linearly interpolated) offset at the current position; a position that leaves the mask
    stops there (the field is only trained on objects). The steps repeat because a regressed offset falls short
    of far centres, while near a centre the offsets are short and accurate.

    Parameters
    ----------
    offsets : (ndim, *shape) ndarray
        Offset from each pixel to its object's centre, in pixels per axis.
    mask : ndarray of bool
        The pixels to move (the foreground).
    iterations : int
        Number of steps.

    Returns
    -------
    (ndim, n) ndarray of float
        Final positions of the ``n`` mask pixels, in the order of ``np.nonzero(mask)``.

    Examples
    --------
    >>> off = np.zeros((1, 9)); off[0, :4] = [1.5, 0.5, -0.5, -1.5]     # a 1D object of 4 pixels, centre 1.5
    >>> follow_offsets(off, np.arange(9) < 4).round(2).tolist()
    [[1.5, 1.5, 1.5, 1.5]]
    """
    offsets = np.asarray(offsets, dtype=np.float32)
    mask = np.asarray(mask, bool)
    pts = np.array(np.nonzero(mask), dtype=np.float64)
    hi = np.array(mask.shape, float)[:, None] - 1
    inside = mask.astype(np.float32)
    for _ in range(iterations):
        if not pts.size:
            break
        keep = ndi.map_coordinates(inside, pts, order=0, mode="nearest") > 0
        step = np.stack([ndi.map_coordinates(o, pts, order=1, mode="nearest") for o in offsets])
        pts = np.clip(pts + step * keep, 0, hi)
    return pts


def vote_instances(foreground: np.ndarray, offsets: np.ndarray, *, threshold: float = 0.5,
                   min_votes: float = 1.0, sigma: float = 1.0, iterations: int = 10,
                   min_size: float = 0.0) -> np.ndarray:
    """Instance labels by following predicted offsets to object centres.

    Parameters
    ----------
    foreground : ndarray
        Foreground probability, 2D or 3D.
    offsets : (ndim, *shape) ndarray
        Predicted offset from each pixel to its object's centre, in pixels.
    threshold : float
        Foreground probability threshold: the pixels that vote.
    min_votes : float
        Centres are the connected parts of the vote density above this: final positions per pixel, smoothed by a
        Gaussian of ``sigma`` pixels scaled to peak 1 for a single vote (so 1 admits any stray voter; a small
        nucleus whose 25 voters end within a pixel or two of each other reaches ~10).
    iterations : int
        Steps along the offset field (:func:`follow_offsets`).
    min_size : float
        Smallest object kept, in pixels.

    Returns
    -------
    ndarray of uint16 (uint32 beyond 65535 objects)
        Labels 1..n, 0 = background. Foreground pixels whose votes reach no centre take the label of the
        object they are connected to; foreground parts without any centre are dropped (debris).

    Examples
    --------
    >>> from medseg.cells.targets import offset_targets
    >>> lab = np.zeros((7, 14), int); lab[1:6, 1:7] = 1; lab[1:6, 7:13] = 2   # two touching rectangles
    >>> out = vote_instances((lab > 0).astype(float), offset_targets(lab))
    >>> int(out.max()), bool((out[lab == 1] == out[3, 3]).all())
    (2, True)
    """
    from skimage.segmentation import watershed

    fg = np.asarray(foreground, dtype=np.float32)
    if np.shape(offsets) != (fg.ndim, *fg.shape):  # one offset map per axis, channels first (else: broadcast)
        raise ValueError(f"offsets of shape {np.shape(offsets)} do not fit a foreground of shape {fg.shape}: "
                         f"expected {(fg.ndim, *fg.shape)}")
    mask = fg > threshold
    if not mask.any():
        return relabel_sequential(np.zeros(fg.shape, np.int32))
    pts = follow_offsets(offsets, mask, iterations)
    idx = tuple(np.round(pts).astype(np.intp))
    density = np.bincount(np.ravel_multi_index(idx, fg.shape), minlength=fg.size).reshape(fg.shape)
    density = ndi.gaussian_filter(density.astype(np.float32), sigma) * float((2 * np.pi * sigma**2) ** (fg.ndim / 2))
    centres = ndi.label(density >= min_votes)[0]
    labels = np.zeros(fg.shape, np.int32)
    labels[mask] = centres[idx]
    # centres with fewer voters than an object has pixels are strays, not objects; a voter whose path ended off
    # any centre joins the object it touches (the flooding follows the foreground)
    labels = watershed(-fg, remove_small_instances(labels, min_size), mask=mask)
    return relabel_sequential(remove_small_instances(labels, min_size))
