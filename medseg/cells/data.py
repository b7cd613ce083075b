"""Cell datasets: ``images/<id>.<ext>`` + ``labels/<id>.tif``, a deterministic split, normalisation, targets.

The split is a pure function of the case id (a hash), so it is stable when cases are added or removed and
needs no file; ``split.json`` (``{"train": [...], "val": [...]}``) in the dataset folder overrides it. The same hash
cut into ``folds`` equal ranges gives a k-fold split (:func:`fold_of`), for cross-validated numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medseg.errors import InputError
from medseg.io.atomic import case_name
from medseg.io.image import Image
from medseg.io.microscopy import read_microscopy, single_channel
from medseg.io.readers import check_finite

IMAGE_EXTS = (".png", ".tif", ".tiff")
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6) -> np.ndarray:
    """Map the ``low``..``high`` intensity percentiles to 0..1 (float32, not clipped), as CSBDeep does.

    Parameters
    ----------
    image : ndarray
        Intensity image, any dimension.
    low, high : float
        Percentiles mapped to 0 and 1.
    eps : float
        Smallest denominator (a constant image maps to 0, not NaN).

    Returns
    -------
    ndarray of float32, the shape of ``image``.

    Examples
    --------
    >>> x = percentile_normalize(np.arange(101.0), 0, 100)
    >>> float(x[0]), float(x[-1])
    (0.0, 1.0)
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img, [low, high])
    return (img - lo) / max(hi - lo, eps)


def check_labels(labels: np.ndarray, path=None) -> np.ndarray:
    """Validate an instance label map: integer values >= 0 (float maps with integral values are accepted), not
    empty; the check every label map passes (:func:`medseg.io.labels.integer_labels`).

    Parameters
    ----------
    labels : ndarray
        Instance label map.
    path : path, optional
        File it came from, named in the error.

    Returns
    -------
    ndarray of int
        The labels (a float map as int64; booleans as uint8).

    Raises
    ------
    InputError
        Fractional, negative, NaN or infinite values, a non-numeric type, or an empty array.

    Examples
    --------
    >>> check_labels(np.array([[0.0, 3.0]])).dtype.name
    'int64'
    >>> check_labels(np.array([[0, -1]]))
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: this array is not a label map: negative values (down to -1; an intensity image?)
    """
    from medseg.io.labels import integer_labels

    arr = integer_labels(labels, path=path, what=None if path is not None else "this array")
    if np.asarray(labels).dtype.kind == "f":  # instance ids, not narrowed to 8 bits: they get offsets and sums
        arr = arr.astype(np.int64)
    if arr.size == 0:
        raise InputError("empty label map", path=path)
    return arr


def read_labels(path) -> np.ndarray:
    """Read an instance label map (TIFF/PNG), validated.

    Parameters
    ----------
    path : path
        ``.tif``, ``.tiff`` or ``.png`` file.

    Returns
    -------
    ndarray of int
        The labels (:func:`check_labels`); a multi-channel file is an ``InputError``.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.microscopy import write_microscopy
    >>> tmp = tempfile.TemporaryDirectory(); f = Path(tmp.name) / "a.tif"
    >>> write_microscopy(Image(np.array([[0, 1], [2, 2]], np.uint16), np.eye(4)), f)
    >>> read_labels(f).tolist()
    [[0, 1], [2, 2]]
    >>> tmp.cleanup()
    """
    img = read_microscopy(path)
    if img.channels_first:
        raise InputError(f"label map has {img.array.shape[0]} channels (expected one)", path=path)
    return check_labels(img.array, path)


def boundary_targets(labels: np.ndarray, contact_width: int = 1, width: int = 1) -> np.ndarray:
    """3-class target: 0 background, 1 interior, 2 boundary (inner boundary of every object, so that
    touching objects are always separated by boundary pixels).

    ``width > 1`` thickens the boundary everywhere: every object pixel within that many pixels (chessboard
    distance) of anything else, background or another object, is boundary. ``contact_width > 1`` thickens it only
    where objects touch: every object pixel within that many pixels of another object is boundary, so the interiors
    of touching nuclei lie further apart while isolated nuclei keep their 1-pixel ring.

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
    >>> lab = np.zeros((5, 8), int); lab[1:4, 1:4] = 1; lab[1:4, 4:7] = 2
    >>> boundary_targets(lab)[2].tolist()
    [0, 2, 1, 2, 2, 1, 2, 0]
    >>> boundary_targets(lab, contact_width=2)[2].tolist()
    [0, 2, 2, 2, 2, 2, 2, 0]
    >>> lab = np.zeros((7, 7), int); lab[1:6, 1:6] = 1
    >>> boundary_targets(lab, contact_width=2)[3].tolist(), boundary_targets(lab, width=2)[3].tolist()
    ([0, 2, 1, 1, 1, 2, 0], [0, 2, 2, 1, 2, 2, 0])
    """
    from skimage.segmentation import find_boundaries

    t = (labels > 0).astype(np.uint8)
    t[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    for w, background_counts in ((width, True), (contact_width, False)):
        if w > 1:
            size = 2 * int(w) + 1  # a pixel and its neighbours up to w pixels away
            # (a larger neighbour shows in the maximum, a smaller one in the minimum; background is 0, or out of the
            # way above every label when only other objects count)
            low = labels if background_counts else np.where(labels > 0, labels, labels.max() + 1)
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


@dataclass
class CellCase:
    """One image with its instance labels (:func:`list_cases` finds them, :func:`load_case` reads them).

    Attributes
    ----------
    case : str
        Case id (the image's file name without its suffix).
    image_path : Path
        The image file.
    label_path : Path or None
        Its label map (None for an unlabelled image).
    image, labels : ndarray or None
        The pixels and the instance labels, once loaded.
    spacing : tuple of float
        Pixel size per axis, once loaded.

    Examples
    --------
    >>> c = CellCase("a", Path("images/a.png"), Path("labels/a.tif"))
    >>> c.case, c.label_path.name, c.image is None, c.spacing
    ('a', 'a.tif', True, (1.0, 1.0))
    """

    case: str
    image_path: Path
    label_path: Path | None
    image: np.ndarray = field(repr=False, default=None)
    labels: np.ndarray = field(repr=False, default=None)
    spacing: tuple = (1.0, 1.0)


def _unit_hash(case: str, seed: str) -> float:
    return int(hashlib.sha1(f"{seed}:{case}".encode()).hexdigest()[:8], 16) / 16**8


def split_of(case: str, val_fraction: float = 0.15, seed: str = "medseg-cells") -> str:
    """'train' or 'val' from a hash of the id: stable, no file needed.

    A case is ``val`` when the hash of ``seed`` and its id, a number in [0, 1), is below ``val_fraction``: the
    split does not depend on the other cases, and a larger fraction only moves cases from train to val.

    Parameters
    ----------
    case : str
        Case id.
    val_fraction : float
        Expected share of validation cases.
    seed : str
        Salt of the hash (another seed, another split).

    Returns
    -------
    str
        ``"train"`` or ``"val"``.

    Examples
    --------
    >>> split_of("img_001", 0.0), split_of("img_001", 1.0)
    ('train', 'val')
    >>> ids = [f"img_{i:03d}" for i in range(1000)]
    >>> all(split_of(c, 0.3) == "val" for c in ids if split_of(c, 0.15) == "val")
    True
    >>> abs(sum(split_of(c) == "val" for c in ids) / 1000 - 0.15) < 0.05
    True
    """
    return "val" if _unit_hash(case, seed) < val_fraction else "train"


def fold_of(case: str, folds: int = 5, seed: str = "medseg-cells") -> int:
    """The fold (0 .. ``folds`` - 1) of a case in a k-fold split by the same hash as :func:`split_of`.

    Fold 0 of 5 holds the hash range [0, 0.2), so it contains the default validation split ([0, 0.15)).

    Parameters
    ----------
    case : str
        Case id.
    folds : int
        Number of folds.
    seed : str
        Salt of the hash (as :func:`split_of`'s).

    Returns
    -------
    int

    Examples
    --------
    >>> [fold_of(c, 5) for c in ("a", "b", "c")] == [fold_of(c, 5) for c in ("a", "b", "c")]
    True
    >>> split_of("a", 0.2) == ("val" if fold_of("a", 5) == 0 else "train")
    True
    """
    return int(_unit_hash(case, seed) * folds)  # the hash is below 1, so the fold is below ``folds``


def list_cases(root: str | os.PathLike, require_labels: bool = True) -> list[CellCase]:
    """Cases of a dataset folder ``images/<id>.<ext>`` (+ ``labels/<id>.tif``), sorted by id.

    Parameters
    ----------
    root : path
        Dataset folder with ``images/`` (``.png``, ``.tif``, ``.tiff``) and ``labels/`` (``<id>.tif``, ``.tiff`` or
        ``.png``).
    require_labels : bool
        An image without a label map is an ``InputError`` (else its ``label_path`` is None).

    Returns
    -------
    list of CellCase
        Not loaded (``image`` and ``labels`` None); the files are not read.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
    >>> (root / "images").mkdir(); (root / "labels").mkdir()
    >>> for name in ("images/b.png", "images/a.tif", "labels/a.tif"):
    ...     (root / name).touch()
    >>> [(c.case, c.label_path and c.label_path.name) for c in list_cases(root, require_labels=False)]
    [('a', 'a.tif'), ('b', None)]
    >>> list_cases(root)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: ...: image b.png has no label map labels/b.tif
    >>> tmp.cleanup()
    """
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise InputError("not a cell dataset (expected images/<id>.<ext> and labels/<id>.tif)", path=root)
    order = (".tif", ".tiff", ".png")  # a case's label map: the first of these, in any letter case
    found = sorted((q for q in (lab_dir.iterdir() if lab_dir.is_dir() else ())
                    if q.suffix.lower() in order and not q.name.startswith(".")),
                   key=lambda q: (order.index(q.suffix.lower()), q.name), reverse=True)
    label_of = {case_name(q): q for q in found}
    cases = []
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTS or p.name.startswith("."):
            continue
        cid = case_name(p)
        lab = label_of.get(cid)
        if lab is None and require_labels:
            raise InputError(f"image {p.name} has no label map labels/{cid}.tif", path=root)
        cases.append(CellCase(cid, p, lab))
    if not cases:
        raise InputError("no images found in images/", path=root)
    return cases


def dataset_split(root, cases: list[CellCase], val_fraction: float = 0.15, fold: int | None = None,
                  folds: int = 5) -> dict[str, list[CellCase]]:
    """Split cases into train/val: fold ``fold`` of a ``folds``-fold split (:func:`fold_of`) when a fold is given,
    else ``split.json`` in ``root`` if present, else :func:`split_of`.

    Parameters
    ----------
    root : path
        Dataset folder (where ``split.json``, ``{"val": [ids]}``, may be).
    cases : list of CellCase
        The dataset's cases.
    val_fraction : float
        Share of validation cases of the hash split.
    fold, folds : int
        Validate on fold ``fold`` of ``folds`` (a ``split.json`` then is an ``InputError``).

    Returns
    -------
    dict
        ``{"train": [...], "val": [...]}``, each in the order of ``cases``.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); root = Path(tmp.name)
    >>> cases = [CellCase(i, Path(f"{i}.png"), None) for i in ("a", "b", "c", "d")]
    >>> parts = [dataset_split(root, cases, fold=k, folds=2)["val"] for k in (0, 1)]
    >>> sorted(c.case for part in parts for c in part)       # every case validated in exactly one fold
    ['a', 'b', 'c', 'd']
    >>> _ = (root / "split.json").write_text('{"val": ["b"]}')
    >>> {k: [c.case for c in v] for k, v in dataset_split(root, cases).items()}
    {'train': ['a', 'c', 'd'], 'val': ['b']}
    >>> tmp.cleanup()
    """
    f = Path(root) / "split.json"
    if fold is not None:
        if f.exists():  # two definitions of the validation images: refuse rather than pick one silently
            raise InputError("the dataset has its own split.json; a fold cannot be used with it", path=f)
        in_fold = [fold_of(c.case, folds) == fold for c in cases]
        return {"train": [c for c, v in zip(cases, in_fold) if not v], "val": [c for c, v in zip(cases, in_fold) if v]}
    if f.exists():
        try:
            spec = json.loads(f.read_text())
            val = set(spec["val"])
        except Exception as exc:
            raise InputError(f"cannot read split ({exc})", path=f) from exc
        return {"train": [c for c in cases if c.case not in val], "val": [c for c in cases if c.case in val]}
    out: dict = {"train": [], "val": []}
    for c in cases:
        out[split_of(c.case, val_fraction)].append(c)
    return out


def tuning_images(train: list[CellCase], fraction: float) -> list[CellCase]:
    """The training cases held out whole for the threshold search: ``fraction`` of them by a hash of the id (like
    the validation split); none when that is fewer than 3 (then :func:`tuning_blocks`) or every case.

    Parameters
    ----------
    train : list of CellCase
        The training split.
    fraction : float
        Expected share held out (0: none).

    Returns
    -------
    list of CellCase
        In the order of ``train``.

    Examples
    --------
    >>> cases = [CellCase(f"img_{i:03d}", Path(f"img_{i:03d}.png"), None) for i in range(100)]
    >>> tuning_images(cases, 0.0), tuning_images(cases[:2], 0.5)    # off; at most 2 of 2 images: too few
    ([], [])
    >>> 3 <= len(tuning_images(cases, 0.1)) < 100
    True
    """
    tune = [c for c in train if fraction and split_of(c.case, fraction, "medseg-tune") == "val"]
    return [] if len(tune) < 3 or len(tune) == len(train) else tune


def tuning_block(shape, share: float = 0.2, min_block: int = 8, min_rest: int = 16) -> tuple[int, int] | None:
    """(axis, thickness) of the block :func:`tuning_blocks` holds out of an image of ``shape``: the last ``share``
    along its longest axis (the last of equals); None when the block would be thinner than ``min_block`` or the
    rest thinner than ``min_rest``.

    Parameters
    ----------
    shape : sequence of int
        The image's shape.
    share : float
        Share of the longest axis held out (rounded up).
    min_block, min_rest : int
        Smallest thickness of the block and of what is left.

    Returns
    -------
    (int, int) or None
        The axis and the block's thickness.

    Examples
    --------
    >>> tuning_block((31, 61, 28)), tuning_block((10, 30))
    ((1, 13), None)
    """
    axis = max(range(len(shape)), key=lambda a: (shape[a], a))
    k = int(np.ceil(share * shape[axis]))
    return None if k < min_block or shape[axis] - k < min_rest else (axis, k)


TUNE_BLOCK = ":tune"  # id suffix of a held-out block (model.json's split names it so)


def tuning_blocks(cases: list[CellCase], **block) -> tuple[list[CellCase], list[CellCase]]:
    """Hold out the block :func:`tuning_block` names of each loaded case as a tuning case (id ``<id>:tune``);
    returns (the cases without their blocks, the blocks). For datasets with too few images to hold out whole ones
    (a few 3D stacks): the watershed thresholds are then still chosen on pixels the network was not trained on.

    Parameters
    ----------
    cases : list of CellCase
        Loaded cases (``image`` and ``labels`` set).
    **block
        ``share``, ``min_block``, ``min_rest`` of :func:`tuning_block`.

    Returns
    -------
    rest : list of CellCase
        Every case, without its block where it has one (views of the arrays, not copies).
    blocks : list of CellCase
        The blocks, ids ``<id>:tune``.

    Examples
    --------
    >>> c = CellCase("a", Path("a.tif"), None, np.zeros((10, 40)), np.zeros((10, 40), int))
    >>> rest, blocks = tuning_blocks([c])
    >>> rest[0].image.shape, blocks[0].image.shape, blocks[0].case
    ((10, 32), (10, 8), 'a:tune')
    """
    rest, blocks = [], []
    for c in cases:
        cut = tuning_block(c.labels.shape, **block)
        if cut is None:
            rest.append(c)
            continue
        axis, k = cut
        n = c.labels.shape[axis]
        head = tuple(slice(0, n - k) if a == axis else slice(None) for a in range(c.labels.ndim))
        tail = tuple(slice(n - k, n) if a == axis else slice(None) for a in range(c.labels.ndim))
        rest.append(CellCase(c.case, c.image_path, c.label_path, c.image[head], c.labels[head], c.spacing))
        blocks.append(CellCase(f"{c.case}{TUNE_BLOCK}", c.image_path, c.label_path, c.image[tail], c.labels[tail],
                               c.spacing))
    return rest, blocks


def recorded_tuning_cases(cases: list[CellCase], tune_ids, channel: int | None = None) -> list[CellCase]:
    """The loaded tuning cases a run's ``model.json`` split names (``tune_ids``) out of the dataset's ``cases``:
    whole images by id, and held-out blocks (``<id>:tune``, :func:`tuning_blocks`) cut again from their image, so
    that thresholds can be re-chosen after training on exactly the pixels training chose them on.

    Parameters
    ----------
    cases : list of CellCase
        The dataset's cases (loaded here when needed).
    tune_ids : iterable of str
        Ids of the run's tuning cases.
    channel : int, optional
        Channel read from multi-channel images.

    Returns
    -------
    list of CellCase
        In the order of ``tune_ids``; an id not in ``cases`` is an ``InputError``.

    Examples
    --------
    >>> c = CellCase("a", Path("a.tif"), None, np.zeros((10, 40)), np.zeros((10, 40), int))
    >>> [(t.case, t.image.shape) for t in recorded_tuning_cases([c], ["a:tune"])]
    [('a:tune', (10, 8))]
    """
    by_id = {c.case: c for c in cases}
    out = []
    for tid in tune_ids:
        base = by_id.get(tid.removesuffix(TUNE_BLOCK))
        if base is None:
            raise InputError(f"the run's tuning image '{tid}' is not in this dataset")
        if base.image is None:
            load_case(base, channel)
        out += tuning_blocks([base])[1] if tid.endswith(TUNE_BLOCK) else [base]
    return out


def load_case(case: CellCase, channel: int | None = None) -> CellCase:
    """Read image (one channel, finite) and labels, checking that they match.

    Parameters
    ----------
    case : CellCase
        The case to read; updated in place (``image``, ``spacing``, and ``labels`` when it has a label map).
    channel : int, optional
        Channel of a multi-channel image (refused without it).

    Returns
    -------
    CellCase
        ``case`` itself.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.microscopy import write_microscopy
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> write_microscopy(Image(np.full((4, 6), 9, np.uint8), np.diag([0.5, 0.5, 1, 1])), d / "a.tif")
    >>> write_microscopy(Image(np.ones((4, 6), np.uint16), np.eye(4)), d / "a_labels.tif")
    >>> c = load_case(CellCase("a", d / "a.tif", d / "a_labels.tif"))
    >>> c.image.shape, c.spacing, int(c.labels.max())
    ((4, 6), (0.5, 0.5), 1)
    >>> write_microscopy(Image(np.ones((4, 5), np.uint16), np.eye(4)), d / "a_labels.tif")
    >>> load_case(CellCase("a", d / "a.tif", d / "a_labels.tif"))
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../a_labels.tif: label map shape (4, 5) does not match image shape (4, 6)
    >>> tmp.cleanup()
    """
    img = read_microscopy(case.image_path, channel=channel)
    case.image = check_finite(single_channel(img, case.image_path), case.image_path)
    case.spacing = img.spacing
    if case.label_path is not None:
        lab = read_labels(case.label_path)
        if lab.shape != case.image.shape:
            raise InputError(f"label map shape {lab.shape} does not match image shape {case.image.shape}",
                             path=case.label_path)
        case.labels = lab
    return case


def load_image(path, channel: int | None = None, pixel_size=None) -> Image:
    """Read one image for counting; refuses multi-channel without ``channel``, empty images and NaN or infinite
    pixels.

    Parameters
    ----------
    path : path
        ``.tif``, ``.tiff`` or ``.png`` file.
    channel : int, optional
        Channel of a multi-channel image (0-based).
    pixel_size : float or tuple, optional
        Pixel size (µm) overriding the file's (:func:`medseg.io.microscopy.read_microscopy`).

    Returns
    -------
    Image
        One channel; ``spacing`` is the pixel size, ``meta["unit"]`` ``"um"`` or ``"pixel"``.

    Examples
    --------
    >>> import tempfile
    >>> import imageio.v3 as iio
    >>> tmp = tempfile.TemporaryDirectory(); f = Path(tmp.name) / "rgb.png"
    >>> rgb = np.zeros((4, 6, 3), np.uint8); rgb[..., 1] = 200          # green nuclei, nothing in red and blue
    >>> iio.imwrite(f, rgb)
    >>> img = load_image(f, channel=1, pixel_size=0.65)
    >>> img.array.shape, int(img.array.max()), img.spacing
    ((4, 6), 200, (0.65, 0.65))
    >>> load_image(f)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../rgb.png: image has 3 different channels: choose one with --channel
    >>> tmp.cleanup()
    """
    img = read_microscopy(path, channel=channel, pixel_size=pixel_size)
    check_finite(single_channel(img, path), path)
    return img
