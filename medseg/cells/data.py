"""Cell datasets: ``images/<id>.<ext>`` + ``labels/<id>.tif``, reading and checking images and instance labels,
percentile normalisation. The split is in :mod:`medseg.cells.splits`, the training targets in
:mod:`medseg.cells.targets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import case_name
from medseg.io.image import Image
from medseg.io.microscopy import read_microscopy, single_channel
from medseg.io.readers import check_finite

IMAGE_EXTS = (".png", ".tif", ".tiff")


def list_images(path) -> list[Path]:
    """One image file, or the images of a folder (``.tif``, ``.tiff``, ``.png``), sorted.

    Parameters
    ----------
    path : path
        An image file (taken whatever its suffix) or a folder.

    Returns
    -------
    list of Path
        The file itself, or the folder's image files by name (hidden files and other suffixes left out).

    Raises
    ------
    InputError
        ``path`` does not exist, or the folder holds no image.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> for name in ("b.tif", "a.PNG", "notes.txt", ".a.tif"):
    ...     (d / name).touch()
    >>> [p.name for p in list_images(d)]
    ['a.PNG', 'b.tif']
    >>> tmp.cleanup()
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError("no such file or folder", path=path)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise InputError("no images (.tif, .tiff, .png) in folder", path=path)
    return files


def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6) -> np.ndarray:
    """Map the ``low``..``high`` intensity percentiles to 0..1 (float32, not clipped), as CSBDeep does.

    Parameters
    ----------
    image : ndarray
        Intensity image, any dimension.
    low, high : float
        Percentiles mapped to 0 and 1.
    eps : float
        Smallest range relative to the percentiles' magnitude (float32 rounding noise is not contrast); below it the
        image's maximum stands for the upper percentile, and a constant image maps to 0, not NaN.

    Returns
    -------
    ndarray of float32, the shape of ``image``.

    Notes
    -----
    Computed in float64 for images that float32 cannot hold (float64, 32- and 64-bit integers), so the result
    does not depend on the intensities' unit: x1e-30, x1e300 and +1e7 give the image's own values.

    Examples
    --------
    >>> x = percentile_normalize(np.arange(101.0), 0, 100)
    >>> float(x[0]), float(x[-1])
    (0.0, 1.0)
    >>> float(percentile_normalize(np.arange(101.0) * 1e300, 0, 100)[-1])
    1.0
    """
    img = np.asarray(image)
    lo, hi = (float(v) for v in np.percentile(img, [low, high]))
    span = hi - lo
    if not span > eps * max(abs(lo), abs(hi)):  # an absolute floor mapped a x1e-30 image to zeros
        span = float(img.max()) - lo
        span = span if span > eps * max(abs(lo), abs(hi)) else 1.0
    work = img.astype(np.result_type(img.dtype, np.float32), copy=False)
    return ((work - lo) / span).astype(np.float32, copy=False)


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
        ``case`` itself; a label map with ids larger than its number of pixels is renumbered 1..n.

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
        if lab.size and int(lab.max()) > lab.size:
            # ids as large as 2**31 (other tools' label maps): training's per-id tables (bincount, find_objects) are
            # sized by the largest id, so the same objects with ids 1..n
            from medseg.postprocess.watershed import relabel_sequential

            lab = relabel_sequential(lab)
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
    if img.meta["unit"] == "um" and not img.meta.get("z_step_known", True):
        # a z step of 1 would count its volumes in µm² x pixel
        raise InputError("the stack records its pixel size but no z step: give the pixel size as Z,Y,X "
                         "(--pixel-size)", path=path)
    return img
