"""Scale normalisation (opt-in, ``CellTrainConfig.diameter``): images are enlarged so that the median nucleus is
``diameter`` pixels across.

Small nuclei are the weak spot of a model trained at native scale (DSB2018 validation images with nuclei under
12 px across: AP@0.5 0.81, vs 0.87 for 12-20 px; ``benchmarks/cells.py --by-size``). Like Cellpose (which resizes
to a 17 px nucleus diameter), the trainer then resizes every training image from its annotations, and counting
measures each image's nuclei -- with the model at native scale, the Otsu mask's estimate as a floor, then again at
the first guess's scale -- and enlarges the image only when even the area-weighted median nucleus is smaller than
``diameter`` (:meth:`medseg.cells.segmenters.CellModel.scale_for`). Label maps are resized back with
nearest-neighbour interpolation, so outputs always have the input's shape. Measured on DSB2018 in a 20-minute
budget it scored the same as native scale (``benchmarks/RESULTS.md``), so it is off by default; it is meant for
images whose magnification differs from the training data's.

A model trained at native scale records the range of its training images' median nucleus diameters
(:func:`diameter_range`) and resizes only the images whose nuclei lie outside it (:func:`into_range`): nuclei
larger than any it was trained on are otherwise cut into pieces. Runs trained since session 30 record the range by
the per-object and by the area-weighted median (``diameter_range``, ``diameter_range_area``) and resize only when
both measures agree (:func:`agreed_scale`): on DSB2018 fragments had the per-object median enlarge one dim image
1.66x, which shattered it into 664 objects (13 nuclei); the area-weighted median alone shrank another image 4x
(its Otsu estimate, 220 px, proposed the shrink, and at a quarter of the size merged nuclei confirmed it).
"""

from __future__ import annotations

import numpy as np

# only ever enlarge: a trial that also shrank (lower limit 0.25) lost the texture that separates 45 px nuclei
# (validation AP@0.5 0.843 vs 0.856, benchmarks/RESULTS.md), and the U-Net's receptive field spans large nuclei anyway
SCALE_LIMITS = (1.0, 4.0)


WEIGHTINGS = ("count", "area")


def median_diameter(labels: np.ndarray, weighting: str = "count") -> float:
    """Median equivalent diameter (pixels) of the objects of a 2D label map (0 when there are none).

    ``weighting="count"``: the median object. ``"area"``: the diameter of the object in which the median object
    *pixel* lies, so that a swarm of small fragments (a nucleus split on noise) does not make the nuclei look
    small; the model's segmentation is measured so (:meth:`medseg.cells.segmenters.CellModel.scale_for`).

    Parameters
    ----------
    labels : ndarray of int
        2D instance labels, 0 = background.
    weighting : {"count", "area"}
        Median over objects, or over object pixels.

    Returns
    -------
    float
        Diameter of the disc of the median area, in pixels.

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[2:6, 2:6] = 1; lab[10:16, 10:16] = 2; lab[1:3, 15:17] = 3
    >>> round(median_diameter(lab), 2)  # the 4x4 square: 2 * sqrt(16 / pi)
    4.51
    >>> round(median_diameter(lab, "area"), 2)  # the 6x6 square holds 36 of the 56 object pixels
    6.77
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting '{weighting}' is not one of {', '.join(WEIGHTINGS)}")
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = np.sort(areas[areas > 0])
    if not areas.size:
        return 0.0
    if weighting == "area":
        cum = np.cumsum(areas)
        return float(2.0 * np.sqrt(areas[np.searchsorted(cum, cum[-1] / 2)] / np.pi))
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def scaled_shape(shape, scale: float) -> tuple:
    """The shape of an image resized by ``scale``: each extent times ``scale``, rounded, at least 1.

    Parameters
    ----------
    shape : sequence of int
        The image's shape.
    scale : float
        Resize factor (> 1 enlarges).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> scaled_shape((100, 60), 1.5), scaled_shape((100, 3), 0.1)
    ((150, 90), (10, 1))
    """
    return tuple(max(1, int(round(n * scale))) for n in shape)


def resize_image(image: np.ndarray, shape) -> np.ndarray:
    """Linear resize of an intensity image (anti-aliased when shrinking), float32.

    Parameters
    ----------
    image : ndarray
        Intensity image.
    shape : sequence of int
        Output shape (e.g. :func:`scaled_shape`); the image's own shape returns it unchanged, as float32.

    Returns
    -------
    ndarray of float32
        Values in the image's own range (not rescaled to 0..1).

    Examples
    --------
    >>> out = resize_image(np.full((4, 4), 3, np.uint8), (2, 6))
    >>> out.dtype.name, out.shape, out.tolist()[0]
    ('float32', (2, 6), [3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    """
    from skimage.transform import resize

    if tuple(shape) == image.shape:
        return np.asarray(image, np.float32)
    shrink = any(t < s for t, s in zip(shape, image.shape))
    return resize(np.asarray(image, np.float32), shape, order=1, preserve_range=True,
                  anti_aliasing=shrink).astype(np.float32)


def resize_labels(labels: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a label map (ids are kept, never blended).

    Parameters
    ----------
    labels : ndarray of int
        Label map.
    shape : sequence of int
        Output shape.

    Returns
    -------
    ndarray
        Labels of ``shape`` in the input's dtype (the input itself when the shape is already ``shape``).

    Examples
    --------
    >>> resize_labels(np.array([[1, 2], [3, 0]]), (4, 4))[::2, ::2].tolist()
    [[1, 2], [3, 0]]
    """
    from skimage.transform import resize

    labels = np.asarray(labels)
    if tuple(shape) == labels.shape:
        return labels
    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)


def scale_to(diameter: float, measured: float) -> float:
    """Resize factor that brings objects ``measured`` px across to ``diameter`` px (1 when nothing was measured),
    within :data:`SCALE_LIMITS`.

    Parameters
    ----------
    diameter : float
        Wanted nucleus diameter (pixels).
    measured : float
        The image's nucleus diameter (pixels); 0 or less: nothing measured.

    Returns
    -------
    float
        ``diameter / measured`` clipped to [1, 4]: images are only ever enlarged.

    Examples
    --------
    >>> scale_to(17, 8.5), scale_to(17, 34), scale_to(17, 2), scale_to(17, 0)
    (2.0, 1.0, 4.0, 1.0)
    """
    if not measured or measured <= 0:
        return 1.0
    return float(np.clip(diameter / measured, *SCALE_LIMITS))


def diameter_range(label_maps, percentiles=(1.0, 99.0), weighting: str = "count") -> tuple[float, float] | None:
    """The ``percentiles`` of the median nucleus diameters (pixels, :func:`median_diameter` with ``weighting``) of
    2D label maps: the nucleus sizes a model trained on them has seen (percentiles, so one outlier image does not
    stretch the range). None without objects.

    Parameters
    ----------
    label_maps : iterable of ndarray
        Label maps; those that are not 2D, and those without objects, are left out.
    percentiles : (float, float)
        Lower and upper percentile over the maps.
    weighting : {"count", "area"}
        As in :func:`median_diameter`.

    Returns
    -------
    (float, float) or None
        The range in pixels.

    Examples
    --------
    >>> maps = [np.kron(np.diag([1, 2, 3]), np.ones((n, n), int)) for n in (4, 6, 8)]  # three n x n squares each
    >>> [round(d, 2) for d in diameter_range(maps, (0, 100))]  # 2 * sqrt(n^2 / pi) for n = 4 and 8
    [4.51, 9.03]
    """
    d = [median_diameter(m, weighting) for m in label_maps if np.ndim(m) == 2]
    d = [x for x in d if x > 0]
    if not d:
        return None
    lo, hi = np.percentile(d, percentiles)
    return float(lo), float(hi)


def into_range(measured: float, low: float, high: float) -> float:
    """Resize factor that brings nuclei ``measured`` px across into ``[low, high]``: 1 inside it (or when nothing
    was measured), else to the nearer end, within ``(1 / 4, 4)``.

    Parameters
    ----------
    measured : float
        The image's nucleus diameter (pixels); 0 or less: nothing measured.
    low, high : float
        The range of diameters (pixels), e.g. :func:`diameter_range`'s.

    Returns
    -------
    float
        ``low / measured`` below the range, ``high / measured`` above it, clipped to [0.25, 4]; else 1.

    Examples
    --------
    >>> into_range(30, 8, 50), into_range(100, 8, 50), into_range(4, 8, 50)
    (1.0, 0.5, 2.0)
    """
    if not measured or measured <= 0 or low <= measured <= high:
        return 1.0
    return float(np.clip((high if measured > high else low) / measured, 0.25, 4.0))


MEASURES = ("count", "area", "both")


def image_sizes(labels: np.ndarray, scale: float = 1.0, floor: float = 0.0) -> dict:
    """An image's nucleus size both ways (:func:`median_diameter`: ``count`` and ``area``), from ``labels`` of the
    image resized by ``scale``, in the image's own pixels, at least ``floor`` (e.g. the Otsu estimate).

    Parameters
    ----------
    labels : ndarray of int
        2D instance labels of the image resized by ``scale``.
    scale : float
        Resize factor the labels were made at.
    floor : float
        Smallest size returned (pixels).

    Returns
    -------
    dict
        ``{"count": d, "area": d}`` in pixels of the original image.

    Examples
    --------
    >>> lab = np.zeros((10, 10), int); lab[1:5, 1:5] = 1; lab[6:8, 6:8] = 2   # 4x4 and 2x2 squares at scale 2
    >>> {k: round(v, 2) for k, v in image_sizes(lab, scale=2.0, floor=2.0).items()}
    {'count': 2.0, 'area': 2.26}
    """
    return {w: max(median_diameter(labels, w) / scale, floor) for w in WEIGHTINGS}


def agreed_scale(sizes: dict, ranges: dict, measure: str = "both") -> float:
    """Resize factor that brings an image's nuclei into the training range (:func:`into_range`), by one measure
    (``count`` or ``area``: ``sizes[m]`` against ``ranges[m]``) or by ``both``: enlarge only when even the
    area-weighted size is below its range (fragments drag the per-object median down), shrink only when even the
    per-object size is above its range (large merged objects drag the area-weighted median up). The per-object
    size is never above the area-weighted one, so the two rules cannot both fire.

    Parameters
    ----------
    sizes : dict
        ``{"count": d, "area": d}`` (:func:`image_sizes`).
    ranges : dict
        ``{"count": (lo, hi), "area": (lo, hi)}``; only the one used is needed.
    measure : {"both", "count", "area"}
        Which size decides.

    Returns
    -------
    float
        Resize factor (1: none).

    Examples
    --------
    >>> ranges = {"count": (8.0, 50.0), "area": (10.0, 60.0)}
    >>> agreed_scale({"count": 5.0, "area": 20.0}, ranges)  # fragments among in-range nuclei: left alone
    1.0
    >>> agreed_scale({"count": 30.0, "area": 200.0}, ranges)  # a giant object among in-range nuclei: left alone
    1.0
    >>> agreed_scale({"count": 4.0, "area": 5.0}, ranges), agreed_scale({"count": 100.0, "area": 120.0}, ranges)
    (2.0, 0.5)
    >>> agreed_scale({"count": 5.0, "area": 20.0}, ranges, "count")
    1.6
    """
    if measure not in MEASURES:
        raise ValueError(f"measure '{measure}' is not one of {', '.join(MEASURES)}")
    if measure != "both":
        return into_range(sizes[measure], *ranges[measure])
    up = into_range(sizes["area"], *ranges["area"])
    if up > 1.0:
        return up
    down = into_range(sizes["count"], *ranges["count"])
    return down if down < 1.0 else 1.0


def size_range_meta(label_maps, measure: str = "both") -> dict:
    """What a native-scale run records in ``model.json`` about its training images' nucleus sizes:
    ``diameter_range`` (per object, :func:`diameter_range`), how images are measured against it
    (``diameter_measure``, :func:`agreed_scale`) and, unless that is ``count``, the area-weighted
    ``diameter_range_area``; rounded to 0.01 px. Empty without objects.

    Parameters
    ----------
    label_maps : iterable of ndarray
        The training images' 2D label maps (a sequence: it is read twice).
    measure : {"both", "count", "area"}
        How images will be measured against the ranges (:func:`agreed_scale`).

    Returns
    -------
    dict

    Examples
    --------
    >>> maps = [np.kron(np.eye(3, dtype=int) * [1, 2, 3], np.ones((n, n), int)) for n in (4, 8)]
    >>> size_range_meta(maps, "count")  # percentiles 1 and 99 of the two maps' 4.51 and 9.03
    {'diameter_range': [4.56, 8.98], 'diameter_measure': 'count'}
    >>> sorted(size_range_meta(maps))
    ['diameter_measure', 'diameter_range', 'diameter_range_area']
    """
    if measure not in MEASURES:
        raise ValueError(f"measure '{measure}' is not one of {', '.join(MEASURES)}")
    count = diameter_range(label_maps)
    if count is None:
        return {}
    meta = {"diameter_range": [round(d, 2) for d in count], "diameter_measure": measure}
    if measure != "count":
        meta["diameter_range_area"] = [round(d, 2) for d in diameter_range(label_maps, weighting="area")]
    return meta


def initial_diameter(image: np.ndarray) -> float:
    """Training-free diameter estimate: twice the median inscribed radius of the Otsu mask's components
    (clumps of touching nuclei barely change it; it under-estimates elongated nuclei, and on textured images it can
    be a fraction of the true size, so it serves only as a floor to the model's measurement).

    Parameters
    ----------
    image : ndarray
        2D intensity image, bright nuclei on a dark background.

    Returns
    -------
    float
        Diameter in pixels (0 without foreground).

    Examples
    --------
    Discs of radius 10 and 8 px (the median of their inscribed radii is 9):

    >>> yy, xx = np.mgrid[:40, :70]
    >>> img = ((np.hypot(yy - 20, xx - 15) < 10) | (np.hypot(yy - 20, xx - 50) < 8)).astype(float)
    >>> initial_diameter(img)
    18.0
    """
    from scipy import ndimage as ndi

    from medseg.cells.data import percentile_normalize
    from medseg.postprocess.classical import estimate_radius, threshold_mask

    mask = ndi.binary_fill_holes(threshold_mask(percentile_normalize(image), "otsu", smooth=1.0))
    return 2.0 * estimate_radius(mask)


def anisotropy(spacing) -> float:
    """A 3D voxel's z step over its mean in-plane size.

    Examples
    --------
    >>> anisotropy((2.0, 0.5, 0.5)), anisotropy((1, 1, 1))
    (4.0, 1.0)
    """
    z, y, x = (float(v) for v in spacing)
    return z / ((y + x) / 2)


def median_spacing(cases, channel=None) -> list[float]:
    """Median voxel size per axis of 3D cell cases (:class:`medseg.cells.data.CellCase`); a case whose spacing is
    not known yet (its training pair came from a cache entry written before spacings were kept) is read for it.

    Parameters
    ----------
    cases : list of CellCase
        3D cases; those without a 3-axis ``spacing`` are read (their image file's header).
    channel : int, optional
        The channel read from a multi-channel image (as training reads it).

    Returns
    -------
    list of float
        The median spacing per axis (slices first), in the images' units (µm).

    Examples
    --------
    >>> from pathlib import Path
    >>> from medseg.cells.data import CellCase
    >>> spacings = [(2.0, 0.5, 0.5), (1.0, 0.4, 0.4), (3.0, 0.5, 0.6)]
    >>> median_spacing([CellCase(f"c{i}", Path(f"c{i}.tif"), None, spacing=s) for i, s in enumerate(spacings)])
    [2.0, 0.5, 0.5]
    """
    from medseg.cells.data import load_image

    sp = [c.spacing if len(c.spacing) == 3 else load_image(c.image_path, channel).spacing for c in cases]
    return [float(v) for v in np.median(np.asarray(sp, float), axis=0)]
