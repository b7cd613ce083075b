"""Marker-controlled watershed: touching objects (nuclei, lesions) from any probability or distance map.

Everything works in 2D and 3D, with distances in physical units (``spacing`` per axis, e.g. µm), so an
anisotropic stack (z-steps coarser than pixels) gets a correctly shaped neighbourhood.

* :func:`watershed_instances`: instances from a foreground map plus a boundary map (markers = foreground
  minus boundary) and/or a distance map (markers = its thresholded cores or its regional maxima).
* Small helpers: :func:`peak_markers`, :func:`remove_small_instances`, :func:`clear_border_instances`.

Without training, :func:`medseg.postprocess.classical.classical_instances` thresholds the image and runs this
watershed on its distance transform.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from medseg.postprocess.morphology import distance_transform, h_transform, maxima_within


def _spacing(spacing, ndim: int) -> np.ndarray:
    sp = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=float).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or np.any(sp <= 0):
        raise ValueError(f"spacing {spacing} does not fit a {ndim}D array")
    return sp


def ellipsoid_footprint(radius: float, spacing: Sequence[float]) -> np.ndarray:
    """Boolean ball of physical ``radius`` on a grid with ``spacing`` (at least the centre pixel).

    Parameters
    ----------
    radius : float
        Radius in the units of ``spacing``.
    spacing : sequence of float
        Pixel size per axis; one entry per dimension of the footprint.

    Returns
    -------
    ndarray of bool
        Odd-sized along every axis, centred: the pixels whose centre lies within ``radius`` of the middle one.

    Examples
    --------
    >>> ellipsoid_footprint(1.0, (1.0, 1.0)).astype(int).tolist()
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    >>> ellipsoid_footprint(2.0, (1.0, 1.0)).shape, ellipsoid_footprint(2.0, (4.0, 1.0, 1.0)).shape
    ((5, 5), (1, 5, 5))
    """
    sp = np.asarray(spacing, float)
    half = np.floor(radius / sp + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    return sum(g**2 for g in grids) <= radius**2 + 1e-9


def peak_markers(distance: np.ndarray, mask: np.ndarray | None = None, min_distance: float = 1.0,
                 spacing=None, h: float = 0.0, threshold: float = 0.0) -> np.ndarray:
    """Label the regional maxima of ``distance`` (one marker per plateau) as watershed markers.

    A pixel is a peak when it is the maximum within ``min_distance`` (physical units) and above
    ``threshold``; ``h > 0`` first flattens the top ``h`` of every dome (h-reconstruction), which merges
    maxima of one elongated object separated by a saddle less than ``h`` deep. Unlike scikit-image's
    ``h_maxima``, a dome lower than ``h`` still gives a marker: on a mask's distance transform such domes are
    small nuclei in clumps (dropping them lowered the classical mode's AP@0.5 on DSB2018 in a trial), but on a
    noisy predicted map they add one-pixel markers (hence ``benchmarks/cells_analysis.py`` uses ``h_maxima``).

    Parameters
    ----------
    distance : ndarray
        Map whose maxima are wanted (e.g. a distance transform), 2D or 3D.
    mask : ndarray of bool, optional
        Only these pixels can be peaks (default: all).
    min_distance : float
        Radius (physical units) of the neighbourhood a peak must be the maximum of.
    spacing : float or sequence of float, optional
        Pixel size per axis (default 1).
    h : float
        Dome height flattened first (0: none).
    threshold : float
        Peaks must be strictly above this value.

    Returns
    -------
    ndarray of int32
        Markers 1..n (touching peak pixels, diagonals included, form one marker), 0 elsewhere.

    Examples
    --------
    >>> d = np.array([[0, 1, 2, 1, 0, 1, 3, 1, 0]], float)
    >>> peak_markers(d, min_distance=1).tolist()
    [[0, 0, 1, 0, 0, 0, 2, 0, 0]]
    """
    distance = np.asarray(distance, dtype=float)
    sp = _spacing(spacing, distance.ndim)
    mask = np.ones(distance.shape, bool) if mask is None else np.asarray(mask, bool)
    d = np.where(mask, distance, distance.min() if distance.size else 0)
    if h > 0:  # h-maxima transform: keep only domes at least h high
        d = h_transform(d, h)
    footprint = ellipsoid_footprint(min_distance, sp)
    peaks = maxima_within(d, footprint, mask & (d > threshold))
    centre = tuple(slice(k // 2 - 1, k // 2 + 2) for k in footprint.shape)
    all_neighbours = min(footprint.shape) >= 3 and footprint[centre].all()
    # the h-transform leaves plateaus; keep those that are regional maxima (implied if the footprint covers
    # every neighbour: a pixel then equals the maximum of its neighbourhood already)
    if h > 0 and not all_neighbours:
        peaks &= d >= ndi.grey_dilation(d, footprint=ndi.generate_binary_structure(d.ndim, d.ndim)) - 1e-12
    return ndi.label(peaks, structure=ndi.generate_binary_structure(d.ndim, d.ndim))[0]


def remove_small_instances(labels: np.ndarray, min_size: float, spacing=None) -> np.ndarray:
    """Remove objects smaller than ``min_size`` (area/volume in physical units; pixels when no spacing).

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background.
    min_size : float
        Objects whose pixel count times the pixel volume is strictly below this become background.
    spacing : float or sequence of float, optional
        Pixel size per axis (default 1).

    Returns
    -------
    ndarray
        Same shape and dtype, ids not renumbered (``labels`` itself when ``min_size <= 0`` or there are no
        objects).

    Examples
    --------
    >>> remove_small_instances(np.array([[1, 1, 0, 2]]), 2).tolist()
    [[1, 1, 0, 0]]
    """
    from medseg.io.labels import label_argument  # ValueError naming `labels`: NaN, fractions, negatives

    labels = np.asarray(labels)
    ids = label_argument(labels)  # a float map (Fiji) counted and indexed by its integer ids
    if min_size <= 0 or ids.max(initial=0) == 0:
        return labels
    voxel = float(np.prod(_spacing(spacing, labels.ndim)))
    sizes = np.bincount(ids.ravel()) * voxel
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[ids]] = 0
    return out


def keep_instances(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the objects whose ``keep[id - 1]`` is true, renumbered 1..n.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels 0..len(keep), 0 = background.
    keep : ndarray of bool, shape (labels.max(),)
        Whether to keep object ``i`` (entry ``i - 1``).

    Returns
    -------
    ndarray of uint16 (uint32 beyond 65535 objects)
        The kept objects, renumbered 1..n in the order of their old ids.

    Examples
    --------
    >>> keep_instances(np.array([[1, 1, 0, 2, 3]]), np.array([True, False, True])).tolist()
    [[1, 1, 0, 0, 2]]
    """
    from medseg.io.labels import label_argument  # ValueError naming `labels`: NaN, fractions, negatives

    labels = label_argument(labels)
    keep = np.asarray(keep, bool)
    return relabel_sequential(np.concatenate([[0], np.where(keep, np.arange(1, len(keep) + 1), 0)])[labels])


def clear_border_instances(labels: np.ndarray) -> np.ndarray:
    """Remove objects that touch the image border (cut objects bias size statistics).

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, any dimension.

    Returns
    -------
    ndarray
        A copy with the objects of :func:`touching_border_ids` set to 0 (same dtype, ids not renumbered).

    Examples
    --------
    >>> clear_border_instances(np.array([[1, 0, 0], [0, 2, 0], [0, 0, 0]])).tolist()
    [[0, 0, 0], [0, 2, 0], [0, 0, 0]]
    """
    from medseg.io.labels import label_argument  # ValueError naming `labels`: NaN, fractions, negatives

    labels = np.asarray(labels)
    ids = label_argument(labels)  # else NaN, -1 or 0.5 on the border passed through as objects
    out = labels.copy()
    out[np.isin(ids, touching_border_ids(ids))] = 0
    return out


def touching_border_ids(labels: np.ndarray) -> np.ndarray:
    """Ids of the objects that touch the image border.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background, any dimension.

    Returns
    -------
    ndarray
        Sorted ids (> 0) with at least one pixel on the first or last index of some axis.

    Examples
    --------
    >>> touching_border_ids(np.array([[0, 0, 0, 0], [0, 2, 2, 0], [0, 0, 0, 3], [1, 0, 0, 0]])).tolist()
    [1, 3]
    """
    edges = [np.take(labels, i, axis=ax).ravel() for ax in range(labels.ndim) for i in (0, -1)]
    ids = np.unique(np.concatenate(edges))
    return ids[ids > 0]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in the order of the old ids (:func:`skimage.segmentation.relabel_sequential`), as uint16 when it
    fits (the napari/Fiji-friendly label type).

    Parameters
    ----------
    labels : ndarray of int
        Labels >= 0 with any ids, 0 = background.

    Returns
    -------
    ndarray of uint16 (uint32 beyond 65535 objects)
        Same shape; the smallest old id becomes 1, the next 2, and so on; 0 stays 0.

    Examples
    --------
    >>> out = relabel_sequential(np.array([[0, 5, 5], [9, 0, 2]]))
    >>> out.tolist(), out.dtype.name
    ([[0, 2, 2], [3, 0, 1]], 'uint16')
    """
    from skimage.segmentation import relabel_sequential as _rs

    from medseg.io.labels import label_argument  # ValueError naming `labels`: NaN, fractions, negatives

    out = _rs(label_argument(labels))[0]  # skimage refuses float maps, integral or not
    return out.astype(np.uint16) if out.max() < 65536 else out.astype(np.uint32)


def watershed_instances(foreground: np.ndarray, boundary: np.ndarray | None = None,
                        distance: np.ndarray | None = None, *, spacing=None, threshold: float = 0.5,
                        seed_threshold: float = 0.5, min_distance: float | None = None, h: float = 0.0,
                        min_size: float = 0.0, min_seed_size: float = 0.0,
                        exclude_border: bool = False, keep_unseeded: bool = True,
                        markers: str = "auto") -> np.ndarray:
    """Instances from probability maps by marker-controlled watershed, restricted to the foreground.

    Parameters
    ----------
    foreground : ndarray
        Foreground probability (or a binary mask), 2D or 3D.
    boundary : ndarray, optional
        Boundary probability: markers are the connected parts of ``foreground - boundary > seed_threshold``
        and the flooding follows the boundary map.
    distance : ndarray, optional
        Distance-to-background map (predicted or computed): used when ``boundary`` is None, markers are its
        regional maxima at least ``min_distance`` apart (physical units) and the flooding follows ``-distance``.
        Without either, the Euclidean distance transform of the foreground mask is used.
    spacing : sequence of float, optional
        Physical size of a pixel per axis (default 1).
    threshold : float
        Foreground probability threshold.
    min_distance, h : float
        Peak separation (physical units; default: 1 pixel) and h-maxima height for distance markers.
    min_size, min_seed_size : float
        Smallest object / marker kept (area or volume in physical units).
    exclude_border : bool
        Remove objects that touch the image border.
    keep_unseeded : bool
        Keep foreground components that contain no marker as objects of their own (with a boundary map,
        such components are usually low-confidence debris: pass False).
    markers : {"auto", "boundary", "distance", "peaks"}
        Where the markers come from: ``"boundary"``, connected parts of ``foreground - boundary >
        seed_threshold``; ``"distance"``, connected parts of ``distance > seed_threshold`` (a predicted distance
        map normalised to 1 at each object's centre falls to ~0 where two objects touch, so its cores stay
        apart even where the boundary prediction is faint); ``"peaks"``, regional maxima of the distance map.
        ``"auto"``: boundary when given, else peaks. With a distance map the flooding follows ``-distance``.

    Returns
    -------
    ndarray of uint16 (uint32 beyond 65535 objects)
        Instance labels 1..n, 0 = background.

    Examples
    --------
    >>> fg = np.zeros((7, 13)); fg[1:6, 1:6] = 1; fg[1:6, 6:12] = 1   # two touching squares
    >>> bd = np.zeros_like(fg); bd[:, 6] = 1
    >>> int(watershed_instances(fg, bd).max())
    2
    """
    from skimage.segmentation import watershed

    fg = np.asarray(foreground)
    # a mask or a float32 map is compared (to a float64 threshold) and subtracted (from the float64 boundary) in
    # float64, as its float64 copy would be (True as 1.0), without that copy's 8 bytes per pixel
    fg = fg if fg.dtype in (np.bool_, np.float32, np.float64) else fg.astype(float)
    sp = _spacing(spacing, fg.ndim)
    for name, other in (("boundary", boundary), ("distance", distance)):
        if other is not None and np.shape(other) != fg.shape:  # else a broadcasting error, or a broadcast result
            raise ValueError(f"{name} map of shape {np.shape(other)} differs from the foreground's {fg.shape}")
    if min_distance is not None and not min_distance >= 0:  # else a "footprint of shape (0, 0)" error
        raise ValueError(f"min_distance must be >= 0, got {min_distance}")
    mask = fg > np.float64(threshold)
    conn = ndi.generate_binary_structure(fg.ndim, 1)
    mode = ("boundary" if boundary is not None else "peaks") if markers == "auto" else markers
    if mode not in ("boundary", "distance", "peaks"):
        raise ValueError(f"unknown markers {markers!r} (auto, boundary, distance, peaks)")
    if mode == "boundary" and boundary is None:
        raise ValueError("markers='boundary' needs a boundary map")
    if mode == "distance" and distance is None:
        raise ValueError("markers='distance' needs a distance map")
    dist = b = None
    if distance is not None or mode == "peaks":
        dist = (distance_transform(mask, sp) if distance is None
                else np.asarray(distance, dtype=float))
    if mode == "boundary":
        b = np.asarray(boundary, dtype=float)
        seeds = ndi.label(((fg - b) > seed_threshold) & mask, structure=conn)[0]
    elif mode == "distance":
        seeds = ndi.label((dist > seed_threshold) & mask, structure=conn)[0]
    else:
        seeds = peak_markers(dist, mask, min_distance if min_distance else float(sp.min()), sp, h=h)
    seeds = remove_small_instances(seeds, min_seed_size, sp)
    # flood down the distance map when there is one, else from the interior across rising boundary probability
    surface = -dist if dist is not None else b - fg  # no distance map: markers='boundary', b is the float64 boundary
    del fg, dist, b  # the float64 copies made here are not needed past this point (the watershed makes its own)
    labels = watershed(surface, seeds, mask=mask)
    del surface, seeds
    # foreground parts that received no marker (tiny or seedless blobs) become objects of their own
    orphans = ndi.label(mask & (labels == 0), structure=conn)[0] if keep_unseeded else np.zeros(1, int)
    if orphans.max():
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels = remove_small_instances(labels, min_size, sp)
    if exclude_border:
        labels = clear_border_instances(labels)
    return relabel_sequential(labels)
