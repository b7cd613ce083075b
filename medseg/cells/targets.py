"""Training targets of the cell model, drawn from instance labels: 3-class boundary maps, distance and offset
maps, the polarity of the stain, and per-pixel loss weights (touching nuclei, small nuclei)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def boundary_targets(labels: np.ndarray, contact_width: int = 1, width: int = 1) -> np.ndarray:
    """3-class target: 0 background, 1 interior, 2 boundary (inner boundary of every object, so that
    touching objects are always separated by boundary pixels).

    ``width > 1`` thickens the boundary everywhere: every object pixel within that many pixels (chessboard
    distance) of anything else, background or another object, is boundary. ``contact_width > 1`` thickens it only
    where objects touch: every object pixel within that many pixels of another object is boundary, so the interiors
    of touching nuclei lie further apart while isolated nuclei keep their 1-pixel ring. An object the thickening
    would leave without interior (a small or thin nucleus) gets the widths, down to 1, that leave it one: the
    watershed seeds nuclei from the interior, and one taught as all boundary is lost.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, 2D or 3D.
    contact_width : int
        Boundary width where objects touch (pixels).
    width : int
        Boundary width everywhere (pixels).

    Returns
    -------
    ndarray of uint8, the shape of ``labels``
        ``BACKGROUND`` (0), ``INTERIOR`` (1) or ``BOUNDARY`` (2).

    Examples
    --------
    >>> lab = np.zeros((7, 12), int); lab[1:6, 1:6] = 1; lab[1:6, 6:11] = 2
    >>> boundary_targets(lab)[3].tolist()
    [0, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 0]
    >>> boundary_targets(lab, contact_width=2)[3].tolist()
    [0, 2, 1, 1, 2, 2, 2, 2, 1, 1, 2, 0]
    >>> lab = np.zeros((7, 7), int); lab[1:6, 1:6] = 1
    >>> boundary_targets(lab, contact_width=2)[3].tolist(), boundary_targets(lab, width=2)[3].tolist()
    ([0, 2, 1, 1, 1, 2, 0], [0, 2, 2, 1, 2, 2, 0])
    >>> lab = np.zeros((6, 6), int); lab[1:5, 1:5] = 1           # 4 x 4: a 2-pixel ring leaves nothing inside
    >>> boundary_targets(lab, width=2)[2].tolist()
    [0, 2, 1, 1, 2, 0]
    """
    t = _thickened(labels, contact_width, width)
    for k in range(max(int(contact_width), int(width)) - 1, 0, -1):
        lost = _without_interior(labels, t)
        if not lost.any():
            break
        t[lost] = _thickened(labels, min(int(contact_width), k), min(int(width), k))[lost]
    return t


def _without_interior(labels: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Mask of the pixels of the objects with no ``INTERIOR`` pixel in ``t``."""
    inside = np.unique(labels[t == INTERIOR])  # by value, not a table indexed by id: ids may be large
    return (labels > 0) & ~np.isin(labels, inside)


def _thickened(labels: np.ndarray, contact_width: int, width: int) -> np.ndarray:
    """:func:`boundary_targets` with the widths applied to every object."""
    from skimage.segmentation import find_boundaries

    t = (labels > 0).astype(np.uint8)
    t[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    for w, background_counts in ((width, True), (contact_width, False)):
        if w > 1:
            size = 2 * int(w) + 1  # a pixel and its neighbours up to w pixels away
            # (a larger neighbour shows in the maximum, a smaller one in the minimum; background is 0, or out of the
            # way of the minimum when only other objects count: the largest id is never below a pixel's own, and
            # stays in the map's type (the largest id + 1 wrapped to 0 in it, e.g. 255 in a uint8 map; int64 copies
            # took 8x the memory of a uint8 3D stack)
            low = labels if background_counts else np.where(labels > 0, labels, labels.max())
            other = (ndi.maximum_filter(labels, size=size) != labels) | (ndi.minimum_filter(low, size=size) != labels)
            t[(labels > 0) & other] = BOUNDARY
    return t

def distance_targets(labels: np.ndarray, spacing=None) -> np.ndarray:
    """Per-object distance to the object's edge, normalised to 1 at each object's centre (float32).

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, 2D or 3D.
    spacing : sequence of float, optional
        Pixel size per axis (default 1), for anisotropic stacks.

    Returns
    -------
    ndarray of float32, the shape of ``labels``
        Each object pixel's Euclidean distance to the nearest pixel outside its object (another object counts),
        divided by the object's largest; 0 on the background.

    Examples
    --------
    >>> lab = np.zeros((5, 7), int); lab[1:4, 1:6] = 1       # 3 x 5: distances 1 on the rim, 2 inside
    >>> distance_targets(lab)[2].tolist()
    [0.0, 0.5, 1.0, 1.0, 1.0, 0.5, 0.0]
    """
    out = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == i
        d = ndi.distance_transform_edt(m, sampling=spacing)
        out[sl][m] = (d / d.max())[m]
    return out

def offset_targets(labels: np.ndarray) -> np.ndarray:
    """Each object pixel's offset to its object's centroid, in pixels per axis: shape ``(ndim, *labels.shape)``,
    float32, 0 on the background. The target of the offset head, whose predictions are followed to the centres
    (:func:`medseg.postprocess.votes.vote_instances`): on the two sides of a contact the offsets point to
    different centres even where the interior probability runs across it.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, any dimension.

    Returns
    -------
    ndarray of float32, shape ``(labels.ndim, *labels.shape)``
        Component ``a`` is the centroid's coordinate minus the pixel's along axis ``a``.

    Examples
    --------
    >>> lab = np.zeros((3, 7), int); lab[:, :3] = 1; lab[:, 3:] = 2
    >>> offset_targets(lab)[1, 1].tolist()
    [1.0, 0.0, -1.0, 1.5, 0.5, -0.5, -1.5]
    """
    labels = np.asarray(labels)
    out = np.zeros((labels.ndim, *labels.shape), np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        coords = np.nonzero(m)
        for ax, c in enumerate(coords):
            out[(ax, *sl)][m] = c.mean() - c
    return out

def object_polarity(images, targets) -> int:
    """+1 when the annotated objects are brighter than the background (fluorescence), -1 when darker (e.g.
    bright-field): the sign of the median over images of (mean object intensity - median background intensity).

    Parameters
    ----------
    images : iterable of ndarray
        Intensity images.
    targets : iterable of ndarray
        Their labels or targets (> 0: object), same shapes.

    Returns
    -------
    int
        1 or -1; 1 when no image has both objects and background.

    Examples
    --------
    >>> img = np.zeros((4, 4)); img[1:3, 1:3] = 5
    >>> object_polarity([img, -img], [img > 0, img > 0]), object_polarity([-img], [img > 0])
    (1, -1)
    """
    diffs = [float(np.mean(im[t > 0]) - np.median(im[t == 0])) for im, t in zip(images, targets)
             if (t > 0).any() and (t == 0).any()]
    return -1 if diffs and np.median(diffs) < 0 else 1

def contact_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, spacing=None) -> np.ndarray:
    """Extra loss weight where objects nearly touch: ``w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))`` with d1, d2
    the distances to the nearest and second-nearest object (0 inside an object), as in the U-Net paper
    (Ronneberger et al. 2015, eq. 2) without its class-balance term. Large in the gaps and along the contacts
    between neighbouring objects, where a network that misses the separating boundary merges them; ~0 for
    isolated objects. float32, same shape as ``labels``; distances in ``spacing`` units (default pixels).

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, 2D or 3D.
    w0 : float
        Largest weight (where d1 + d2 = 0, e.g. along a contact).
    sigma : float
        Width of the decay, in ``spacing`` units.
    spacing : sequence of float, optional
        Pixel size per axis (default 1).

    Returns
    -------
    ndarray of float32, the shape of ``labels``
        0 where fewer than two objects have their bounding box, grown by ``3 sigma``, over the pixel (the
        weight there would be below 1.2 % of ``w0`` and is not computed).

    Examples
    --------
    >>> lab = np.zeros((5, 12), int); lab[1:4, 1:5] = 1; lab[1:4, 5:9] = 2   # two touching objects
    >>> w = contact_weights(lab)
    >>> bool(w[2, 4] > 9 and w[2, 5] > 9 and w[2, 11] < w[2, 9] < w[2, 5])
    True
    """
    labels = np.asarray(labels)
    sp = np.ones(labels.ndim) if spacing is None else np.asarray(spacing, float)
    reach = 3.0 * sigma  # beyond d1 + d2 > 3 sigma the weight is < 1.2 % of w0: not worth computing
    pad = np.ceil(reach / sp).astype(int)
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(sl, pad, labels.shape))
        d = ndi.distance_transform_edt(labels[box] != i, sampling=sp).astype(np.float32)
        a, b = d1[box], d2[box]
        b[...] = np.where(d < a, a, np.minimum(b, d))  # views: updates d1/d2 in place
        a[...] = np.minimum(a, d)
    return (w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))).astype(np.float32)

def small_object_weights(labels: np.ndarray, max_size: float, weight: float) -> np.ndarray:
    """Extra loss weight ``weight`` on every object smaller than ``max_size`` pixels (voxels in 3D) and on the
    1-pixel ring around it: tiny, faint nuclei are the ones a short training run leaves unseen, and in a
    pixel-averaged loss they count for almost nothing. float32, same shape as ``labels``.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, 2D or 3D.
    max_size : float
        Objects with fewer pixels than this are small.
    weight : float
        Weight on the small objects and their ring (diagonal neighbours included).

    Returns
    -------
    ndarray of float32, the shape of ``labels``
        ``weight`` there, 0 elsewhere.

    Examples
    --------
    >>> lab = np.zeros((6, 12), int); lab[2:4, 2:4] = 1; lab[1:5, 6:11] = 2   # 4 px and 20 px
    >>> w = small_object_weights(lab, max_size=10, weight=5.0)
    >>> float(w[2, 2]), float(w[1, 1]), float(w[2, 8]), float(w[0, 0])
    (5.0, 5.0, 0.0, 0.0)
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel().astype(np.int64))
    small = np.flatnonzero(sizes < max_size)
    mask = np.isin(labels, small[small > 0])
    mask = ndi.binary_dilation(mask, ndi.generate_binary_structure(labels.ndim, labels.ndim)) if mask.any() else mask
    return (weight * mask).astype(np.float32)
