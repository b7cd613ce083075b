"""Patch sampling with foreground oversampling, and batch augmentation on tensors.

All randomness comes from one ``numpy.random.Generator`` (sampling) and one ``torch.Generator`` (augmentation)
whose states go into the checkpoint, so a resumed run draws exactly the patches it would have drawn.
Augmentation works on whole batches with ``affine_grid``/``grid_sample`` (one call per batch, cheap on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class CachedCase:
    """A preprocessed case on the network grid (2D plans: slice axis moved first); its arrays are tensors in RAM
    or read-only numpy memory maps of a disk cache (:mod:`medseg.train.cache`).

    Attributes
    ----------
    id : str
        Case id.
    image : torch.Tensor or ndarray
        ``(C, *spatial)`` float32, normalised.
    label : torch.Tensor or ndarray
        ``(*spatial)`` int16.
    fg : dict of int to ndarray
        Class → ``(N, ndim)`` int32 voxel indices (:func:`foreground_index`).
    """

    id: str
    image: torch.Tensor | np.ndarray   # (C, *spatial) float32
    label: torch.Tensor | np.ndarray   # (*spatial) int16
    fg: dict[int, np.ndarray]      # class -> (N, ndim) voxel indices (subsampled)


def foreground_index(label: torch.Tensor, max_points: int = 10000, seed: int = 0) -> dict[int, np.ndarray]:
    """Voxel indices of every foreground class (at most ``max_points`` per class, a seeded random subset).

    Parameters
    ----------
    label : torch.Tensor
        Label map (CPU), 0 is background.
    max_points : int
        Largest number of indices kept per class (a random subset of them above it).
    seed : int
        Seed of that subsampling.

    Returns
    -------
    dict of int to ndarray
        Class → ``(N, label.ndim)`` int32 indices; absent classes have no entry.

    Examples
    --------
    >>> fg = foreground_index(torch.tensor([[0, 1], [2, 2]]))
    >>> {k: v.tolist() for k, v in fg.items()}
    {1: [[0, 1]], 2: [[1, 0], [1, 1]]}
    """
    lab = label.numpy()
    out = {}
    for k in np.unique(lab):
        if k == 0:
            continue
        idx = np.argwhere(lab == k).astype(np.int32)
        if len(idx) > max_points:
            idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
        out[int(k)] = idx
    return out


def pad_to(case: CachedCase, size) -> CachedCase:
    """Pad image (0) and label (0) symmetrically so every axis is at least ``size``.

    Parameters
    ----------
    case : CachedCase
        In RAM (tensors).
    size : sequence of int
        Smallest spatial shape wanted (the patch size).

    Returns
    -------
    CachedCase
        ``case`` itself when no axis is short; else a new one, its foreground indices shifted to match (the
        odd voxel of padding goes after).

    Examples
    --------
    >>> case = CachedCase("a", torch.ones(1, 2, 3), torch.ones(2, 3, dtype=torch.int16), {1: np.array([[0, 1]])})
    >>> padded = pad_to(case, (4, 4))
    >>> padded.image.shape, padded.fg[1].tolist()
    (torch.Size([1, 4, 4]), [[1, 1]])
    """
    shape = case.image.shape[1:]
    before = [max(0, s - d) // 2 for s, d in zip(size, shape)]
    after = [max(0, s - d) - b for s, d, b in zip(size, shape, before)]
    if not any(before) and not any(after):
        return case
    pad = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
    img = F.pad(case.image, pad)
    lab = F.pad(case.label[None].to(torch.int32), pad)[0].to(case.label.dtype)
    fg = {k: v + np.asarray(before, np.int32) for k, v in case.fg.items()}
    return CachedCase(case.id, img, lab, fg)


def sample_patch(case: CachedCase, size, rng: np.random.Generator, foreground: bool, margin=None):
    """Crop ``size`` from a (padded) case: centred on a random voxel of a random present class if ``foreground``.

    "Centred" loosely: the crop is placed at random among those that hold the chosen voxel and stay in the case.
    ``margin`` voxels more are cropped on each side of it (zeros beyond the case), for :func:`augment` to rotate
    and scale the patch from the image around it; the draws do not depend on it.

    Parameters
    ----------
    case : CachedCase
        At least ``size`` on every axis (:func:`pad_to`).
    size : sequence of int
        Patch shape.
    rng : numpy.random.Generator
        Draws the class, the voxel and the placement.
    foreground : bool
        Hold a foreground voxel (when the case has any); else anywhere, uniformly.
    margin : sequence of int, optional
        Context cropped beyond each side, per axis (:func:`context_margin`).

    Returns
    -------
    image : torch.Tensor
        ``(C, *size + 2 * margin)``, a view of an in-RAM case or a copy out of a memory map (a copy with margin).
    label : torch.Tensor
        ``(*size + 2 * margin)``.

    Examples
    --------
    >>> lab = torch.zeros(6, 6, dtype=torch.int16)
    >>> lab[4, 1] = 1
    >>> case = CachedCase("a", torch.rand(1, 6, 6), lab, foreground_index(lab))
    >>> x, y = sample_patch(case, (3, 3), np.random.default_rng(0), foreground=True)
    >>> x.shape, int(y.sum())  # the one foreground voxel is always in the patch
    (torch.Size([1, 3, 3]), 1)
    """
    return _crop(case, _draw_start(case, size, rng, foreground), size, margin)


def _draw_start(case: CachedCase, size, rng: np.random.Generator, foreground: bool) -> list[int]:
    """The first voxel of :func:`sample_patch`'s crop (every draw it makes)."""
    shape = case.image.shape[1:]
    if foreground and case.fg:
        k = list(case.fg)[rng.integers(len(case.fg))]  # classes uniformly: rare classes get their share
        centre = case.fg[k][rng.integers(len(case.fg[k]))]
        return [int(rng.integers(max(0, c - p + 1), min(c, s - p) + 1)) for c, p, s in zip(centre, size, shape)]
    return [int(rng.integers(0, s - p + 1)) for p, s in zip(size, shape)]


def _context(case: CachedCase, start, size) -> list[int]:
    """Voxels of the case beyond the crop, per axis, on its side with more of them."""
    return [max(a, s - a - p) for a, p, s in zip(start, size, case.image.shape[1:])]


def _crop(case: CachedCase, start, size, margin=None):
    """The crop of ``size`` at ``start`` with ``margin`` voxels around it (zeros beyond the case)."""
    shape = case.image.shape[1:]
    m = [0] * len(size) if margin is None else [int(v) for v in margin]
    lo = [max(a - v, 0) for a, v in zip(start, m)]
    hi = [min(a + p + v, s) for a, p, v, s in zip(start, size, m, shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    x, y = case.image[(slice(None), *sl)], case.label[sl]
    if isinstance(x, np.ndarray):  # memory-mapped: copy out just the patch
        x, y = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))
    if any(m):  # the margin beyond the case: zeros, as rotation without context would give
        pad = [v for a, b, p, st, mv in reversed(list(zip(lo, hi, size, start, m)))
               for v in (a - (st - mv), (st + p + mv) - b)]
        if any(pad):
            x = F.pad(x, pad)
            y = F.pad(y[None].to(torch.int32), pad)[0].to(y.dtype)
    return x, y


def sample_batch(cases: list[CachedCase], size, batch_size: int, rng: np.random.Generator,
                 oversample: float, squeeze_first: bool = False, margin=None):
    """A batch of patches; at least ``round(oversample * batch)`` of them (>= 1 if oversample > 0) are
    foreground-centred, like nnU-Net. ``squeeze_first`` drops the (size-1) slice axis of 2D plans.

    Parameters
    ----------
    cases : list of CachedCase
        Drawn uniformly, with replacement.
    size : sequence of int
        Patch shape (2D plans: ``[1, h, w]``, with ``squeeze_first``).
    batch_size : int
        Patches per batch; the last ones are the foreground-centred ones.
    rng : numpy.random.Generator
        All draws.
    oversample : float
        Share of foreground-centred patches, in [0, 1].
    squeeze_first : bool
        Drop the first spatial axis of every patch.
    margin : sequence of int, optional
        Context around every patch (:func:`sample_patch`; 0 along a squeezed axis), cut to the most that any patch
        of the batch has around it in its case.

    Returns
    -------
    images : torch.Tensor
        ``(batch_size, C, *size)`` float32.
    labels : torch.Tensor
        ``(batch_size, *size)`` int64.

    Examples
    --------
    >>> case = CachedCase("a", torch.rand(1, 8, 8), torch.zeros(8, 8, dtype=torch.int16), {})
    >>> x, y = sample_batch([case], (4, 4), 3, np.random.default_rng(0), oversample=0.33)
    >>> x.shape, y.shape, y.dtype
    (torch.Size([3, 1, 4, 4]), torch.Size([3, 4, 4]), torch.int64)
    """
    n_fg = int(round(oversample * batch_size))
    if oversample > 0:
        n_fg = max(1, n_fg)
    picks = []
    for b in range(batch_size):
        case = cases[rng.integers(len(cases))]
        picks.append((case, _draw_start(case, size, rng, foreground=b >= batch_size - n_fg)))
    if margin is not None:  # no more than any patch of the batch has around it: beyond that it would be zeros only
        margin = [min(m, max(c)) for m, c in zip(margin, zip(*(_context(case, st, size) for case, st in picks)))]
    xs, ys = [], []
    for case, start in picks:
        x, y = _crop(case, start, size, margin)
        if squeeze_first:
            x, y = x[:, 0], y[0]
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys).long()


def context_margin(size, cfg: dict, spacing=None) -> list[int]:
    """Voxels of context :func:`augment` needs beyond each side of a patch of ``size``: enough for its largest
    rotation and zoom-out to draw on the image around the patch, not on zeros (nnU-Net crops a larger patch too).

    Parameters
    ----------
    size : sequence of int
        The patch (the axes ``augment`` transforms).
    cfg : dict
        The plan's ``augment`` (``rotate_deg``, ``scale``).
    spacing : sequence of float, optional
        Voxel size (mm) of those axes; cubes by default.

    Returns
    -------
    list of int
        Per axis; zeros when ``cfg`` neither rotates nor scales.

    Examples
    --------
    >>> context_margin([40, 40], {"rotate_deg": 0, "scale": [1, 1]})
    [0, 0]
    >>> context_margin([40, 40], {"rotate_deg": 15, "scale": [1.0, 1.0]})  # its corners turn out 4.5 voxels
    [7, 7]
    """
    rot = math.radians(float(cfg.get("rotate_deg", 0) or 0))
    s_lo = float((cfg.get("scale") or [1.0, 1.0])[0])
    if not rot and s_lo >= 1:
        return [0] * len(size)
    dims = len(size)
    sp = np.ones(dims) if spacing is None else np.asarray(list(spacing)[-dims:], float)
    half = np.asarray(size, float) * sp / 2  # the patch's half extent, mm
    # the corners turned by the angles on a grid over [-rot, rot] per axis (as augment draws them), with 5 % to spare
    # for angles between the grid's
    steps = np.linspace(-rot, rot, 7)
    angles = np.stack(np.meshgrid(*[steps] * (1 if dims == 2 else 3), indexing="ij"), -1).reshape(-1, 1 if dims == 2 else 3)
    corners = np.stack(np.meshgrid(*[[-1.0, 1.0]] * dims, indexing="ij"), -1).reshape(-1, dims) * half
    reach = np.zeros(dims)
    for a in angles:
        r = _rotation(torch.tensor(a, dtype=torch.float64), dims).numpy()[::-1, ::-1]  # (x, y, z) -> axis order
        reach = np.maximum(reach, np.abs(corners @ r.T).max(0))
    reach = np.minimum(reach * 1.05, np.linalg.norm(half)) / min(s_lo, 1.0)  # zooming out reaches further
    return [max(int(math.ceil(r / d - n / 2)) + 1, 0) for r, d, n in zip(reach, sp, size)]


def _rotation(angles: torch.Tensor, dims: int) -> torch.Tensor:
    if dims == 2:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    rs = []
    for ax, a in enumerate(angles):
        c, s = torch.cos(a), torch.sin(a)
        i, j = [d for d in range(3) if d != ax]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rs.append(r)
    return rs[0] @ rs[1] @ rs[2]


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, cfg: dict, spacing=None, size=None):
    """Random rotation/scaling (in mm, so anisotropic grids stay right), flips, intensity scale/shift, gamma
    and Gaussian noise, each applied to a sample with probability ``cfg['prob']``. x: (B, C, *S), y: (B, *S).

    Rotation and scaling act about the centre; given a ``size`` smaller than ``S`` (patches cropped with
    :func:`context_margin` around them), the patch of ``size`` is drawn from that context, else from the patch
    alone, with image 0 and label 0 where they reach beyond it. Gamma keeps each sample's minimum and maximum
    (not its mean and standard deviation, as nnU-Net's does).

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, *S)`` float images.
    y : torch.Tensor
        ``(B, *S)`` integer labels: rotated and scaled by nearest neighbour, flipped with their image.
    gen : torch.Generator
        All draws.
    cfg : dict
        The plan's ``augment``: ``rotate_deg`` (at most, per axis), ``scale`` ([low, high]), ``flip_axes``
        (spatial axes, each flipped with probability 0.5 whatever ``prob``), ``intensity``, ``gamma`` (bool),
        ``noise`` (largest sigma), ``prob``.
    spacing : sequence of float, optional
        Voxel size (its last ``len(S)`` entries are used); the default treats voxels as cubes.
    size : sequence of int, optional
        The patch wanted, centred in ``S`` (``S`` minus an even margin per axis); default ``S``.

    Returns
    -------
    x, y : torch.Tensor
        The augmented batch, ``(B, C, *size)`` and ``(B, *size)``. Flips and intensity changes may be made in
        place, in ``x`` and ``y`` themselves.

    Examples
    --------
    >>> y = torch.randint(0, 3, (2, 6, 5))
    >>> xa, ya = augment(y[:, None].float(), y.clone(), torch.Generator().manual_seed(0),
    ...                  {"flip_axes": [0, 1], "prob": 0.0})  # flips only
    >>> xa.shape, bool(torch.equal(xa[:, 0], ya.float()))  # image and label flipped alike
    (torch.Size([2, 1, 6, 5]), True)
    """
    B, dims = x.shape[0], x.ndim - 2
    p = float(cfg.get("prob", 0.3))

    def u(lo, hi, n=1):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    def coin():
        return bool(torch.rand(1, generator=gen) < p)

    big = list(x.shape[2:])
    size = big if size is None else [int(v) for v in size]
    src_x, src_y = x, y
    if size != big:  # the patches inside their context; rotated or scaled ones are drawn from the context below
        inner = tuple(slice((b - n) // 2, (b - n) // 2 + n) for b, n in zip(big, size))
        x, y = x[(slice(None), slice(None), *inner)].clone(), y[(slice(None), *inner)].clone()
    rot = math.radians(float(cfg.get("rotate_deg", 0)))
    s_lo, s_hi = cfg.get("scale", [1.0, 1.0])
    if rot or s_lo != 1 or s_hi != 1:
        sp = torch.ones(dims) if spacing is None else torch.tensor(list(spacing)[-dims:], dtype=torch.float32)
        # affine_grid works in (x, y, z) = reversed axis order, from the output's extent to the input's (mm)
        D_out = torch.diag((torch.tensor(size, dtype=torch.float32) * sp).flip(0))
        D_in = torch.diag((torch.tensor(big, dtype=torch.float32) * sp).flip(0))
        thetas, todo = [], []
        for b in range(B):
            do_rot, do_scale = coin(), coin()
            R = _rotation(u(-rot, rot, 1 if dims == 2 else 3), dims) if do_rot else torch.eye(dims)
            S = torch.eye(dims) / (u(s_lo, s_hi) if do_scale else 1.0)
            if do_rot or do_scale:
                todo.append(b)
                thetas.append(torch.cat([torch.linalg.solve(D_in, R @ S @ D_out), torch.zeros(dims, 1)], 1))
        if todo:
            theta = torch.stack(thetas)
            grid = F.affine_grid(theta, [len(todo), 1, *size], align_corners=False)
            x = x.clone() if x is src_x else x
            y = y.clone() if y is src_y else y
            x[todo] = F.grid_sample(src_x[todo], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            y[todo] = F.grid_sample(src_y[todo][:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                    align_corners=False)[:, 0].long()
    for ax in cfg.get("flip_axes", []) or []:
        for b in range(B):
            if bool(torch.rand(1, generator=gen) < 0.5):
                x[b] = x[b].flip(ax + 1)
                y[b] = y[b].flip(ax)
    for b in range(B):
        if cfg.get("intensity", True) and coin():
            x[b] = x[b] * u(0.75, 1.25) + u(-0.1, 0.1)
        if cfg.get("gamma", True) and coin():
            lo, hi = x[b].min(), x[b].max()
            rng_ = (hi - lo).clamp_min(1e-6)
            x[b] = ((x[b] - lo) / rng_) ** u(0.7, 1.5) * rng_ + lo
        sigma = float(cfg.get("noise", 0) or 0)
        if sigma and coin():
            x[b] = x[b] + torch.randn(x[b].shape, generator=gen) * u(0, sigma)
    return x, y
