"""Microscopy augmentations on (image, target) pairs: random crops, zoom, flips, 90° rotations, intensity, blur,
noise.

NumPy only and cheap (the CPU budget goes to the network); image and target get the same geometry.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def random_crop(image: np.ndarray, target: np.ndarray, size, rng: np.random.Generator,
                fg_bias: float = 0.5, extra: tuple = ()):
    """Crop ``size`` (padding with zeros/background where the image is smaller); with probability ``fg_bias``
    the crop is centred near a random foreground pixel so that sparse images still teach nuclei. ``extra``
    maps (e.g. a distance target) get the same crop and are returned after ``target``.

    Parameters
    ----------
    image : ndarray
        2D or 3D image.
    target : ndarray
        Map of the same shape whose non-zero pixels are foreground (labels or class targets).
    size : sequence of int
        Crop size per axis.
    rng : numpy.random.Generator
        Source of every random choice.
    fg_bias : float
        Probability of centring the crop near a foreground pixel (within a quarter of the crop).
    extra : tuple of ndarray
        More maps of the image's shape, cropped alike.

    Returns
    -------
    tuple of ndarray
        ``(image, target, *extra)``, each of shape ``size`` (views where no padding was needed). An axis shorter
        than ``size`` is padded at its end with zeros (background in the target and ``extra``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.arange(36.0).reshape(6, 6); lab = (img > 30).astype(int)
    >>> a, b, e = random_crop(img, lab, (4, 4), rng, extra=(2 * img,))
    >>> a.shape, bool((b == (a > 30)).all()), bool((e == 2 * a).all())
    ((4, 4), True, True)
    >>> a, b = random_crop(np.ones((2, 3)), np.ones((2, 3), int), (4, 4), rng)   # smaller than the crop: padded
    >>> a.tolist(), int(b.sum())
    ([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], 6)
    """
    size = tuple(int(s) for s in size)
    pad = [(0, max(0, s - d)) for s, d in zip(size, image.shape)]
    if any(p[1] for p in pad):
        # zeros, as the sliding window pads at inference: a reflected image would show mirrored nuclei where the
        # zero-padded targets say background
        image = np.pad(image, pad, mode="constant")
        target = np.pad(target, pad, mode="constant")
        extra = tuple(np.pad(e, pad, mode="constant") for e in extra)
    starts = []
    fg = np.flatnonzero(target) if rng.random() < fg_bias else np.empty(0)
    centre = np.unravel_index(fg[rng.integers(len(fg))], target.shape) if len(fg) else None
    for ax, (s, d) in enumerate(zip(size, image.shape)):
        if centre is not None:
            lo = int(np.clip(centre[ax] - s // 2 + rng.integers(-s // 4, s // 4 + 1), 0, d - s))
        else:
            lo = int(rng.integers(0, d - s + 1))
        starts.append(lo)
    sl = tuple(slice(a, a + s) for a, s in zip(starts, size))
    return (image[sl], target[sl], *(e[sl] for e in extra))


def zoom_crop(image: np.ndarray, labels: np.ndarray, size, rng: np.random.Generator, scale_range=(0.75, 1.33),
              axes=(-2, -1), extra: tuple = (), vectors: tuple = ()):
    """A random crop of ``size / z`` resized to ``size`` along ``axes``, z drawn log-uniformly from ``scale_range``
    (z > 1 enlarges): the nuclei seen at another magnification.

    The image and ``extra`` maps (e.g. a distance target) are interpolated linearly, ``labels`` by nearest
    neighbour (ids kept, so class targets can be recomputed from them), and ``vectors`` (one map per axis, in
    pixels, e.g. offsets to the nuclei's centres) by nearest neighbour, each component multiplied by its axis's
    factor. Returns ``(image, labels, *extra, *vectors)``.

    Parameters
    ----------
    image : ndarray
        2D or 3D image.
    labels : ndarray of int
        Instance labels of the same shape.
    size : sequence of int
        Output size per axis.
    rng : numpy.random.Generator
        Source of the zoom factor and of the crop (:func:`random_crop`).
    scale_range : (float, float)
        Smallest and largest zoom factor.
    axes : sequence of int
        Axes that are zoomed (the others are cropped to ``size`` unscaled).
    extra : tuple of ndarray
        Intensity-like maps, interpolated linearly.
    vectors : tuple of ndarray
        Components of a vector field in pixels, one map per axis of the image.

    Returns
    -------
    tuple of ndarray
        ``(image, labels, *extra, *vectors)``, each of shape ``size``; the image, ``extra`` and ``vectors`` as
        float32, the labels in their own dtype.

    Examples
    --------
    >>> rng = np.random.default_rng(0); lab = np.zeros((40, 40), int); lab[10:20, 10:20] = 1
    >>> img, out = zoom_crop(lab.astype(float), lab, (32, 32), rng)
    >>> img.shape, out.shape, sorted(np.unique(out).tolist())
    ((32, 32), (32, 32), [0, 1])
    """
    nd = image.ndim
    zoomed = {ax % nd for ax in axes}
    z = float(np.exp(rng.uniform(*np.log(scale_range))))
    crop = tuple(max(1, int(round(s / z))) if ax in zoomed else int(s) for ax, s in enumerate(size))
    image, labels, *maps = random_crop(image, labels, crop, rng, extra=(*extra, *vectors))
    factors = [s / c for s, c in zip(size, crop)]

    def resize(m, order):  # grid_mode: the output is exactly round(crop * factor) = size
        return ndi.zoom(m, factors, order=order, mode="grid-constant" if order == 0 else "nearest", grid_mode=True)

    out = [resize(image.astype(np.float32), 1), resize(labels, 0)]
    out += [resize(m.astype(np.float32), 1) for m in maps[:len(extra)]]
    out += [resize(v.astype(np.float32), 0) * f for v, f in zip(maps[len(extra):], factors)]
    return tuple(out)


def flip_rotate(image: np.ndarray, target: np.ndarray, rng: np.random.Generator, rotate_axes=(-2, -1),
                extra: tuple = (), vectors: tuple = ()):
    """Random flips along every axis and a random multiple of 90° in the (y, x) plane (``extra`` maps alike).

    ``vectors`` holds the components of a vector field, one map per axis (e.g. offsets to object centres): they
    are moved like the other maps and their directions turned with the image (a flip along an axis negates that
    axis's component), returned after ``extra``.

    Parameters
    ----------
    image, target : ndarray
        Image and target of the same shape, 2D or 3D.
    rng : numpy.random.Generator
        Source of the flips (each axis with probability 1/2) and of the number of quarter turns.
    rotate_axes : (int, int)
        Plane of the rotation; it is skipped when the two axes differ in length.
    extra : tuple of ndarray
        More maps, moved alike.
    vectors : tuple of ndarray
        One map per image axis: the components of a vector field.

    Returns
    -------
    tuple of ndarray
        ``(image, target, *extra, *vectors)``, C-contiguous.

    Examples
    --------
    Offsets to the objects' centres stay the offsets to the centres of the moved objects, whatever is drawn:

    >>> from medseg.cells.targets import offset_targets
    >>> lab = np.zeros((6, 6), int); lab[1:3, 1:5] = 1; lab[3:6, 0:2] = 2
    >>> def moved_offsets_match(seed):
    ...     img, lab2, *vec = flip_rotate(lab.astype(float), lab, np.random.default_rng(seed),
    ...                                   vectors=tuple(offset_targets(lab)))
    ...     return bool((img == lab2).all() and np.allclose(np.stack(vec), offset_targets(lab2)))
    >>> all(moved_offsets_match(seed) for seed in range(8))
    True
    """
    nd = image.ndim
    maps = [image, target, *extra]
    vec = list(vectors)
    for ax in range(nd):
        if rng.random() < 0.5:
            maps = [np.flip(m, ax) for m in maps]
            vec = [-np.flip(v, ax) if i == ax else np.flip(v, ax) for i, v in enumerate(vec)]
    k = int(rng.integers(4))
    if k and image.shape[rotate_axes[0]] == image.shape[rotate_axes[1]]:
        maps = [np.rot90(m, k, rotate_axes) for m in maps]
        vec = [np.rot90(v, k, rotate_axes) for v in vec]
        if vec:  # each quarter turn from axis a towards axis b maps a vector (v_a, v_b) to (-v_b, v_a)
            a, b = (ax % nd for ax in rotate_axes)
            for _ in range(k):
                vec[a], vec[b] = -vec[b], vec[a]
    return tuple(np.ascontiguousarray(m) for m in (*maps, *vec))


def intensity(image: np.ndarray, rng: np.random.Generator, p_blur: float = 0.2, p_noise: float = 0.2,
              p_gamma: float = 0.3) -> np.ndarray:
    """Contrast/brightness, gamma, Gaussian blur and Gaussian noise on a [0, 1]-normalised image.

    Parameters
    ----------
    image : ndarray
        Normalised image (about 0..1).
    rng : numpy.random.Generator
        Source of every random choice.
    p_blur, p_noise, p_gamma : float
        Probabilities of a Gaussian blur (sigma 0.5-1.5 px), of additive Gaussian noise (sd 0.01-0.08) and of a
        gamma change (0.7-1.5); contrast (x 0.7-1.3) and brightness (+- 0.1) change always.

    Returns
    -------
    ndarray of float32, the shape of ``image``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> out = intensity(np.full((4, 4), 0.5), rng, p_blur=0, p_noise=0, p_gamma=0)   # 0.5 * c + b only
    >>> out.dtype.name, bool(0.25 <= out.min() == out.max() <= 0.75)
    ('float32', True)
    """
    img = image.astype(np.float32, copy=True)
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    if rng.random() < p_gamma:
        lo = img.min()
        img = (np.clip(img - lo, 0, None) ** rng.uniform(0.7, 1.5)) + lo
    if rng.random() < p_blur:
        img = ndi.gaussian_filter(img, rng.uniform(0.5, 1.5))
    if rng.random() < p_noise:
        img = img + rng.normal(0, rng.uniform(0.01, 0.08), img.shape).astype(np.float32)
    return img


def low_light(image: np.ndarray, rng: np.random.Generator, photons=(5.0, 80.0), background=(0.0, 0.05)) -> np.ndarray:
    """Shot noise of a dim acquisition on a [0, 1]-normalised image.

    The image plus a background level b (uniform in ``background``) is the expected photon count at k photons for
    full brightness (k log-uniform in ``photons``); the Poisson-sampled counts have about the background's mean
    subtracted (a camera's offset) and are clipped at 0, then divided by k. The result has the dark backgrounds of
    mostly zeros with sparse bright pixels of DSB2018's dimmest 8-bit images, where Gaussian noise alone taught the
    network nothing about such speckle (it drew dozens of fragments into it).

    Parameters
    ----------
    image : ndarray
        Normalised image (about 0..1; negative values count as 0).
    rng : numpy.random.Generator
        Source of the photon level, the background and the counts.
    photons : (float, float)
        Range of k, the expected photons of a pixel of brightness 1.
    background : (float, float)
        Range of the background level b added before sampling.

    Returns
    -------
    ndarray of float32, the shape of ``image``, >= 0.

    Examples
    --------
    >>> rng = np.random.default_rng(0); img = np.zeros((64, 64), np.float32); img[20:40, 20:40] = 0.5
    >>> out = low_light(img, rng)
    >>> out.dtype.name, bool(out.min() >= 0), bool(out[20:40, 20:40].mean() > 4 * out[:10].mean())
    ('float32', True, True)
    """
    k = float(np.exp(rng.uniform(*np.log(photons))))
    b = float(rng.uniform(*background))
    counts = rng.poisson(k * (np.clip(image, 0, None) + b)).astype(np.float32)
    return (np.clip(counts - k * b * rng.uniform(0.5, 1.5), 0, None) / k).astype(np.float32)


def augment(image: np.ndarray, target: np.ndarray, size, rng: np.random.Generator, extra: tuple = (),
            vectors: tuple = (), p_low_light: float = 0.0):
    """Crop + flips/rotations + intensity (+ :func:`low_light` with probability ``p_low_light``): one training
    sample ``(image, target, *extra, *vectors)``.

    Parameters
    ----------
    image, target : ndarray
        Normalised image and its target (labels or class targets), same shape.
    size : sequence of int
        Crop size (:func:`random_crop`).
    rng : numpy.random.Generator
        Source of every random choice.
    extra, vectors : tuple of ndarray
        As in :func:`flip_rotate`.
    p_low_light : float
        Probability of :func:`low_light` (0: never, and no random number is drawn for it).

    Returns
    -------
    tuple of ndarray
        ``(image, target, *extra, *vectors)`` of shape ``size``; the image float32.

    Examples
    --------
    >>> img = np.random.default_rng(1).random((20, 20)); lab = np.zeros((20, 20), int); lab[5:10, 5:10] = 1
    >>> x, y = augment(img, lab, (8, 8), np.random.default_rng(0))
    >>> x.shape, x.dtype.name, y.shape, set(np.unique(y).tolist()) <= {0, 1}
    ((8, 8), 'float32', (8, 8), True)
    """
    image, target, *maps = random_crop(image, target, size, rng, extra=(*extra, *vectors))
    image, target, *maps = flip_rotate(image, target, rng, extra=tuple(maps[:len(extra)]),
                                       vectors=tuple(maps[len(extra):]))
    image = intensity(image, rng)
    # no draw when off: runs without it keep their random stream
    if p_low_light and rng.random() < p_low_light:
        image = low_light(image, rng)
    return (image, target, *maps)
