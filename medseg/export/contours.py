"""Planar contours of a 2D mask, with holes either as separate contours or joined by keyholes.

Contours are iso-lines at 0.5 of the binary mask (scikit-image ``find_contours``, foreground
4-connected), so they run half-way between foreground and background pixel centres.

Holes, two documented ways:

* ``"separate"``: a hole is its own contour; readers must combine a slice's contours by the
  even-odd rule (XOR), as medseg's importer and ``plastimatch --xor-contours`` do.
* ``"keyhole"`` (medseg's default): each hole is joined to the contour around it by a zero-width
  bridge (out along a segment, around the hole the other way, back along the same segment), so one
  contour describes the region with its holes. Readers that take the union of contours (plastimatch's
  default) and readers that XOR them give the same mask; the bridge covers no area. Islands inside
  holes stay separate contours. A hole for which no bridge is found that crosses no other edge
  stays a separate contour.
"""

from __future__ import annotations

import numpy as np

HOLES = ("keyhole", "separate")


def _signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


CELL = 8.0  # pixels: the side of the grid cells that find the vertices and edges near a hole


def _cells(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid cells that boxes ``lo``..``hi`` (n x 2 each) cover: for every (box, cell) pair, the box's index and
    the cell's key."""
    a, b = np.floor(lo / CELL).astype(np.int64), np.floor(hi / CELL).astype(np.int64)
    ny = b[:, 1] - a[:, 1] + 1
    count = (b[:, 0] - a[:, 0] + 1) * ny
    box = np.repeat(np.arange(len(a)), count)
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    cx, cy = a[box, 0] + k // ny[box], a[box, 1] + k % ny[box]
    return box, (cx << 32) + cy


class _Grid:
    """Items (vertices, edges) by the grid cells their boxes cover; items can be added."""

    def __init__(self):
        self.cells: dict[int, list[int]] = {}

    def add(self, ids, lo: np.ndarray, hi: np.ndarray) -> None:
        box, keys = _cells(lo, hi)
        ids = np.asarray(ids)[box]
        for key, i in zip(keys.tolist(), ids.tolist()):
            self.cells.setdefault(key, []).append(i)

    def near(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        _, keys = _cells(lo[None], hi[None])
        found = [self.cells[k] for k in keys.tolist() if k in self.cells]
        return np.unique(np.concatenate(found)).astype(np.int64) if found else np.zeros(0, np.int64)


def _crosses(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    """Whether segment a-b meets any segment c[n]-d[n] other than at a or b themselves."""
    keep = ~(np.all(c == a, axis=1) | np.all(d == a, axis=1) | np.all(c == b, axis=1) | np.all(d == b, axis=1))
    c, d = c[keep], d[keep]

    def orient(p, q, r):
        return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])

    o1, o2 = orient(a, b, c), orient(a, b, d)
    o3, o4 = orient(c, d, a), orient(c, d, b)
    # segments whose boxes do not meet cannot meet (the orientation test alone counts collinear ones further along)
    apart = (np.maximum(c, d) < np.minimum(a, b)).any(axis=1) | (np.minimum(c, d) > np.maximum(a, b)).any(axis=1)
    return bool(np.any((o1 * o2 <= 0) & (o3 * o4 <= 0) & ~apart))


def _keyholes(outer: np.ndarray, holes: list[np.ndarray], tries: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """``outer`` (counter-clockwise) with each of ``holes`` (clockwise) joined by a zero-width bridge from one of
    its vertices to a near vertex of the outline built so far, crossing no contour of the component nor an earlier
    bridge; the holes for which none of the ``tries`` nearest pairs gives such a bridge are returned apart.

    The outline is a linked ring of vertices, and vertices and edges are found through a grid, so that each hole
    costs about the same however many there are (splicing arrays and testing every edge for every hole took
    minutes per slice for a component with a thousand holes: a noisy prediction, a lung with its vessels). Each
    bridge is walked both ways, so the region that even-odd and winding-number readers fill is the same wherever
    along the outline a hole is spliced in.
    """
    polys = [outer, *holes]
    first = np.cumsum([0] + [len(q) for q in polys])
    pos = np.concatenate(polys + [np.zeros((2 * len(holes), 2))])  # room for the two copies each bridge adds
    nxt = np.arange(1, len(pos) + 1)
    nxt[first[1:] - 1] = first[:-1]  # each contour a closed ring
    free = int(first[-1])
    ends = np.concatenate([np.roll(q, -1, axis=0) for q in polys])
    edges, vertices = _Grid(), _Grid()
    edges.add(np.arange(first[-1]), np.minimum(pos[: first[-1]], ends), np.maximum(pos[: first[-1]], ends))
    vertices.add(np.arange(len(outer)), outer, outer)
    bridged = np.zeros((2, len(holes), 2))  # the bridges' two ends
    n_bridges = 0

    def join(j: int) -> bool:
        nonlocal free, n_bridges
        hole, h0, h1 = holes[j], int(first[j + 1]), int(first[j + 2])
        lo, hi = hole.min(0), hole.max(0)
        reach = CELL
        while not len(cand := vertices.near(lo - reach, hi + reach)):
            reach *= 2  # the outline is somewhere: look further
        d = np.sqrt(((hole[:, None, :] - pos[cand][None]) ** 2).sum(-1))
        k = min(8, len(cand))
        near = np.argpartition(d, k - 1, axis=1)[:, :k]  # the nearest outline vertices of every hole vertex
        dist = np.take_along_axis(d, near, axis=1)
        for i, n in zip(*np.unravel_index(np.argsort(dist, axis=None, kind="stable")[:tries], dist.shape)):
            p, q = int(cand[near[i, n]]), h0 + int(i)
            a, b = pos[p].copy(), pos[q].copy()
            ids = edges.near(np.minimum(a, b), np.maximum(a, b))
            c = np.concatenate([pos[ids], bridged[0, :n_bridges]])
            if _crosses(a, b, c, np.concatenate([ends[ids], bridged[1, :n_bridges]])):
                continue
            # p -> q, around the hole back to q's copy, p's copy, on along the outline
            qc, pc = free, free + 1
            free += 2
            pos[qc], pos[pc] = b, a
            nxt[pc], nxt[p] = nxt[p], q
            nxt[q - 1 if q > h0 else h1 - 1], nxt[qc] = qc, pc
            bridged[:, n_bridges] = a, b
            n_bridges += 1
            vertices.add([*range(h0, h1), qc, pc], np.vstack([hole, b, a]), np.vstack([hole, b, a]))
            return True
        return False

    # nearest the outer boundary first, so that the holes between a hole and it are mostly joined before it; one
    # walled in by holes not joined yet is tried once more when they are (dense pinholes: 5 % of them, 0.2 % left)
    from scipy.spatial import cKDTree

    order = np.argsort(cKDTree(outer).query(np.array([q[0] for q in holes]))[0], kind="stable")
    pending = [j for j in order if not join(int(j))]
    failed = [holes[j] for j in pending if not join(int(j))]
    ring, i = [0], int(nxt[0])
    while i != 0:
        ring.append(i)
        i = int(nxt[i])
    return pos[ring], failed


def mask_contours(mask2d: np.ndarray, holes: str = "keyhole") -> list[np.ndarray]:
    """Closed contours of a 2D binary mask in pixel index coordinates (no repeated last point).

    Points in the middle of straight runs are dropped (only points where the direction changes stay).

    Examples
    --------
    >>> m = np.zeros((7, 7), bool); m[1:6, 1:6] = True; m[3, 3] = False   # a square with a hole
    >>> len(mask_contours(m, holes="separate")), len(mask_contours(m))
    (2, 1)
    """
    from skimage.measure import find_contours

    if holes not in HOLES:
        raise ValueError(f"holes must be one of {HOLES}, not {holes!r}")
    from skimage.measure import label

    padded = np.pad(np.asarray(mask2d, bool), 1).astype(np.uint8)
    comp = label(padded, connectivity=1)  # foreground 4-connected, as the contours separate it
    polys, owner = [], []
    for c in find_contours(padded, 0.5, fully_connected="low"):
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        d_in = c - np.roll(c, 1, axis=0)
        d_out = np.roll(c, -1, axis=0) - c
        turn = np.abs(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) > 1e-9
        c = c[turn]
        if len(c) < 3:
            continue
        # a vertex lies half-way between a foreground and a background pixel: the component it bounds
        x, y = c[0]
        pair = [(int(np.floor(x)), int(y)), (int(np.ceil(x)), int(y))] if x % 1 else \
            [(int(x), int(np.floor(y))), (int(x), int(np.ceil(y)))]
        owner.append(max(int(comp[q]) for q in pair))
        polys.append(c - 1.0)
    if holes == "separate" or len(polys) < 2:
        return polys
    # per component: the outer boundary is its largest contour, the others are its holes
    area = [_signed_area(p) for p in polys]
    groups: dict[int, list[int]] = {}
    for n, o in enumerate(owner):
        groups.setdefault(o, []).append(n)
    out, kept_holes = [], []
    for members in groups.values():
        members.sort(key=lambda n: -abs(area[n]))
        outer = polys[members[0]]
        merged = outer if area[members[0]] > 0 else outer[::-1]  # outer counter-clockwise, holes clockwise
        mine = [polys[h] if area[h] < 0 else polys[h][::-1] for h in members[1:]]
        if mine:
            merged, failed = _keyholes(merged, mine)
            kept_holes += failed
        out.append(merged)
    return out + kept_holes
