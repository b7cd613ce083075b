"""Polygon → mask rasterisation for contour import (RTSTRUCT), vectorised.

Convention: a pixel belongs to the mask when its **centre** is inside under the **even-odd rule**
over all polygons given together (so hole contours cut holes, and nested islands reappear).
Ties are broken half-open: a centre exactly on a left edge is inside, on a right edge outside, and a
scan line through a vertex counts the edges spanning ``[y_min, y_max)``. This is the rule of
``skimage.draw.polygon`` for points off the boundary (checked in the tests), at a small fraction of
its cost on large contours (it tests every pixel of the bounding box against every edge).

``rule="edge"`` also includes every pixel the contour line itself passes through (a thin, 8-connected
line through the exact vertex coordinates: one pixel per column or row, whichever the edge runs along),
as OpenCV-based converters (rt-utils, cv2.fillPoly) do. It makes each ROI about half a pixel larger all
round; use it to compare with masks made by such tools. plastimatch and skimage follow the default.
"""

from __future__ import annotations

import numpy as np


FILL_RULES = ("centre", "edge")


def fill_polygons(polygons, shape: tuple[int, int], rule: str = "centre") -> np.ndarray:
    """Even-odd fill of closed polygons given as ``(n, 2)`` arrays of ``(x, y)`` = ``(axis 0, axis 1)``
    pixel coordinates; returns a bool mask of ``shape``. ``rule`` is ``"centre"`` (pixel centres
    inside) or ``"edge"`` (also the pixels the contour passes through; see the module docstring).

    Examples
    --------
    >>> outer = np.array([[-0.5, -0.5], [4.5, -0.5], [4.5, 4.5], [-0.5, 4.5]])
    >>> hole = np.array([[1.5, 1.5], [2.5, 1.5], [2.5, 2.5], [1.5, 2.5]])
    >>> m = fill_polygons([outer, hole], (5, 5))
    >>> int(m.sum()), bool(m[2, 2])
    (24, False)
    >>> tri = np.array([[0.2, 0.2], [3.8, 0.2], [0.2, 3.8]])
    >>> int(fill_polygons([tri], (5, 5)).sum()), int(fill_polygons([tri], (5, 5), rule="edge").sum())
    (3, 15)
    """
    if rule not in FILL_RULES:
        raise ValueError(f"unknown fill rule {rule!r} (use one of {', '.join(FILL_RULES)})")
    mask = _fill_centres(polygons, shape)
    if rule == "edge":
        mask |= edge_pixels(polygons, shape)
    return mask


def edge_pixels(polygons, shape: tuple[int, int]) -> np.ndarray:
    """Pixels on the closed polygons' outlines: along each edge, one pixel per integer step of its
    longer axis, the other coordinate rounded (a DDA line through the exact vertices).

    Examples
    --------
    >>> edge_pixels([np.array([[0.0, 0.0], [3.0, 1.0], [0.0, 2.0]])], (4, 3)).astype(int).T.tolist()
    [[1, 1, 0, 0], [1, 0, 1, 1], [1, 1, 0, 0]]
    """
    nx, ny = shape
    mask = np.zeros(shape, bool)
    for p in polygons:
        p = np.asarray(p, float)
        if len(p) < 2:
            continue
        q = np.roll(p, -1, axis=0)
        d = q - p
        major = (np.abs(d[:, 1]) > np.abs(d[:, 0])).astype(int)  # 0: walk along x, 1: along y
        rows = np.arange(len(p))
        a0, a1 = p[rows, major], q[rows, major]
        lo = np.ceil(np.minimum(a0, a1) - 0.5).astype(np.int64)  # pixels whose centre is within the span
        hi = np.floor(np.maximum(a0, a1) + 0.5).astype(np.int64)
        count = np.maximum(hi - lo + 1, 0)
        edge = np.repeat(rows, count)
        step = lo[edge] + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        da = np.where(d[rows, major] == 0, 1.0, d[rows, major])
        t = np.clip((step - a0[edge]) / da[edge], 0.0, 1.0)
        minor = 1 - major[edge]
        other = np.rint(p[edge, minor] + t * d[edge, minor]).astype(np.int64)
        x = np.where(major[edge] == 0, step, other)
        y = np.where(major[edge] == 0, other, step)
        ok = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
        mask[x[ok], y[ok]] = True
    return mask


def _fill_centres(polygons, shape: tuple[int, int]) -> np.ndarray:
    nx, ny = shape
    x0s, y0s, x1s, y1s = [], [], [], []
    for p in polygons:
        p = np.asarray(p, float)
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        x0s.append(p[:, 0]), y0s.append(p[:, 1]), x1s.append(q[:, 0]), y1s.append(q[:, 1])
    mask = np.zeros(shape, bool)
    if not x0s:
        return mask
    x0, y0, x1, y1 = (np.concatenate(a) for a in (x0s, y0s, x1s, y1s))
    # every edge upwards, so an edge walked both ways (a keyhole bridge) gives bit-identical crossings
    down = y0 > y1
    x0, x1 = np.where(down, x1, x0), np.where(down, x0, x1)
    y0, y1 = np.where(down, y1, y0), np.where(down, y0, y1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.maximum(np.ceil(lo), 0).astype(np.int64)  # scan lines y = j with lo <= j < hi
    last = np.minimum(np.ceil(hi) - 1, ny - 1).astype(np.int64)
    count = np.maximum(last - first + 1, 0)
    if count.sum() == 0:
        return mask
    edge = np.repeat(np.arange(len(x0)), count)
    j = first[edge] + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    t = (j - y0[edge]) / (y1[edge] - y0[edge])
    x = x0[edge] + t * (x1[edge] - x0[edge])
    col = np.clip(np.ceil(x), 0, nx).astype(np.int64)  # centres i >= x are right of this crossing
    toggles = np.zeros((nx + 1, ny), np.int64)
    np.add.at(toggles, (col, j), 1)
    return (np.cumsum(toggles, axis=0)[:nx] & 1).astype(bool)
