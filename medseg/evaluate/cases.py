"""Finding prediction/reference pairs, reading them, checking their geometry."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import case_name, full_suffix
from medseg.io.image import Image
from medseg.io.orientation import reorient_onto

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd", ".tif", ".tiff", ".png")


@dataclass(frozen=True)
class CasePair:
    """One case: its name and the prediction and reference files (what :func:`pair_cases` returns).

    Attributes
    ----------
    case : str
        Case name (file name without its format suffix).
    pred, ref : Path
        Prediction and reference label-map files.

    Examples
    --------
    >>> CasePair("liver_3", Path("pred/liver_3.nii.gz"), Path("ref/liver_3.nii.gz")).pred.name
    'liver_3.nii.gz'
    """

    case: str
    pred: Path
    ref: Path


def _label_files(folder: Path) -> dict[str, Path]:
    """Case name → label file; ``<case>_probs`` beside ``<case>`` holding channels (what ``medseg predict
    --probabilities`` writes) is not a case, and a broken link is an error rather than a case quietly missing."""
    from medseg.io.readers import image_files

    out: dict[str, Path] = {}
    for p in image_files(folder, LABEL_SUFFIXES):
        name = case_name(p)
        if name in out:
            raise InputError(f"two files for case '{name}' ({out[name].name}, {p.name})", path=folder)
        out[name] = p
    return {k: v for k, v in out.items()
            if not (k.endswith("_probs") and k[:-len("_probs")] in out and _has_channels(v))}


def _has_channels(path: Path) -> bool:
    """Whether ``path`` is a NIfTI with a 4th axis, as the probabilities ``medseg predict`` writes are; its header
    decides, not its name: a label map named ``<case>_probs`` beside ``<case>`` is a case (left out, it vanished
    from both sides of the report without a word)."""
    if full_suffix(path) not in (".nii.gz", ".nii"):
        return False  # predict writes its probabilities as NIfTI only
    try:
        import nibabel as nib

        return len(nib.load(path).shape) > 3  # the header only: the voxels are not read
    except Exception:  # unreadable: kept as a case, and reading it names the file and the problem
        return False


def pair_cases(pred: str | os.PathLike, ref: str | os.PathLike) -> list[CasePair]:
    """Match prediction and reference files by case name (file name without extension).

    Both may be files (one case, named after the reference) or folders (every label file in them;
    a case present on one side only is an error).

    Parameters
    ----------
    pred, ref : path
        Prediction and reference: two label-map files, or two folders of them (``.nii.gz``, ``.nii``, ``.nrrd``,
        ``.seg.nrrd``, ``.mha``, ``.mhd``, ``.tif``, ``.tiff``, ``.png``; hidden files are ignored).

    Returns
    -------
    list of CasePair
        Sorted by case name. The files are not read.

    Raises
    ------
    InputError
        A side is missing, a file and a folder are mixed, the reference folder holds no label file, two files of a
        folder share a case name, or a case has no counterpart.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> for side in ("pred", "ref"):
    ...     (d / side).mkdir()
    ...     for case in ("b", "a"):
    ...         (d / side / f"{case}.nii.gz").touch()
    >>> [(c.case, c.pred.name, c.ref.parent.name) for c in pair_cases(d / "pred", d / "ref")]
    [('a', 'a.nii.gz', 'ref'), ('b', 'b.nii.gz', 'ref')]
    >>> (d / "pred" / "b.nii.gz").unlink()
    >>> pair_cases(d / "pred", d / "ref")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../ref/b.nii.gz: no prediction for case 'b' (expected in .../pred)
    >>> tmp.cleanup()
    """
    pred, ref = Path(pred), Path(ref)
    for p, what in ((pred, "prediction"), (ref, "reference")):
        if not p.exists():
            raise InputError(f"{what} not found", path=p)
    if pred.is_file() and ref.is_file():
        return [CasePair(case_name(ref), pred, ref)]
    if pred.is_dir() != ref.is_dir():
        raise InputError("--pred and --ref must both be files or both be folders", path=pred if pred.is_file() else ref)
    pf, rf = _label_files(pred), _label_files(ref)
    if not rf:
        raise InputError("no label files in the reference folder", path=ref)
    for name, path in rf.items():
        if name not in pf:
            raise InputError(f"no prediction for case '{name}' (expected in {pred})", path=path)
    for name, path in pf.items():
        if name not in rf:
            raise InputError(f"no reference for case '{name}' (expected in {ref})", path=path)
    return [CasePair(n, pf[n], rf[n]) for n in sorted(rf)]


def read_label_map(path: str | os.PathLike) -> Image:
    """Read a label map; non-integer, negative or multi-channel values are an ``InputError`` (with an example value:
    an image given as a prediction or a reference is refused here).

    Parameters
    ----------
    path : path
        A label-map file in any format :func:`medseg.io.readers.read_image` reads.

    Returns
    -------
    Image
        One channel, integer values >= 0 (integral float values narrowed by
        :func:`medseg.io.labels.integer_labels`), with the file's affine and metadata.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.writers import write_image
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> seg = np.zeros((2, 3, 4), np.float32); seg[0, 1, 2] = 2
    >>> lab = read_label_map(write_image(Image(seg, np.diag([2.0, 2.0, 3.0, 1.0])), d / "seg.nii.gz"))
    >>> lab.array.dtype.name, int(lab.array[0, 1, 2]), lab.spacing
    ('uint8', 2, (2.0, 2.0, 3.0))
    >>> seg[0, 0, 0] = 0.5
    >>> read_label_map(write_image(Image(seg, np.eye(4)), d / "image.nii.gz"))
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: .../image.nii.gz: not a label map: non-integer values such as 0.5 (1 voxel; ...
    >>> tmp.cleanup()
    """
    from medseg.io.labels import integer_labels
    from medseg.io.readers import read_image

    img = read_image(path)
    if img.channels_first and img.num_channels > 1:
        raise InputError(f"label map has {img.num_channels} channels (expected one)", path=path)
    if img.channels_first:
        img = Image(img.array[0], img.affine, img.meta)
    arr = integer_labels(img.array, path=path)
    return Image(arr, img.affine, img.meta)


#: largest cosine between two index axes of a grid still taken as orthogonal (float32 headers: ~1e-7)
MAX_AXIS_COSINE = 1e-3


def spacing_mm(image: Image, path=None) -> tuple[float, ...]:
    """An image's voxel size in mm: microscopy files (TIFF/PNG) give micrometres, the reports are in mm and ml.

    A sheared grid (index axes not at right angles, e.g. a gantry-tilted CT kept as a sheared NIfTI sform) is an
    ``InputError`` naming ``path`` (default: the image's source): its voxel volume is not the product of the
    spacings (+10 % at a 25 degree tilt) nor its distances the spacing-scaled index steps, and SimpleITK refuses
    such a file too.

    Examples
    --------
    >>> spacing_mm(Image(np.zeros((2, 2)), np.diag([0.5, 0.5, 1.0, 1.0]), {"unit": "um"}))
    (0.0005, 0.0005)
    >>> sheared = np.eye(4); sheared[1, 2] = 1.0
    >>> spacing_mm(Image(np.zeros((2, 2, 2)), sheared), path="seg.nii.gz")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: seg.nii.gz: sheared grid (index axes 45 degrees off a right angle; a gantry-tilted ...
    """
    m = np.asarray(image.affine, float)[:3, :image.ndim]
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero column: refused later as a zero spacing
        unit = m / np.linalg.norm(m, axis=0)
    cos = np.nan_to_num(np.abs(unit.T @ unit - np.eye(image.ndim))).max(initial=0.0)
    if cos > MAX_AXIS_COSINE:
        raise InputError(f"sheared grid (index axes {90 - np.degrees(np.arccos(min(cos, 1.0))):.3g} degrees off a "
                         "right angle; a gantry-tilted CT?): volumes and distances need an orthogonal grid; resample "
                         "it first", path=path or image.meta.get("source"))
    sp = tuple(float(s) for s in image.spacing)
    return tuple(s / 1000.0 for s in sp) if image.meta.get("unit") == "um" else sp


def check_geometry(pred: Image, ref: Image, pred_path, spacing_from: str | None = None, atol: float = 1e-3) -> Image:
    """The prediction on the reference's grid; ``InputError`` (naming the prediction) unless both share the grid.

    The grids agree when every voxel's world position differs by at most ``atol`` mm. A prediction holding the same
    voxels in another axis order or direction (an LPS file against a RAS one) is re-indexed, losslessly.
    ``spacing_from='ref'`` or ``'pred'`` checks the shape only (for predictions saved without
    geometry, e.g. PNG/TIFF): the metrics then use that side's spacing.

    Parameters
    ----------
    pred, ref : Image
        The prediction and the reference label maps.
    pred_path : path or str
        Named in the error.
    spacing_from : {None, 'ref', 'pred'}
        Check only the shapes (see above).
    atol : float
        Largest distance (mm) between a voxel's world positions on the two grids.

    Returns
    -------
    Image
        ``pred`` itself, or its voxels re-indexed onto ``ref``'s axis order and directions.

    Examples
    --------
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> ref = Image(np.zeros((4, 5, 6), np.uint8), np.diag([2.0, 1.0, 1.0, 1.0]))  # RAS
    >>> check_geometry(Image(np.ones((4, 5, 6), np.uint8), ref.affine), ref, "pred.nii.gz").shape
    (4, 5, 6)
    >>> lps = np.diag([-2.0, -1.0, 1.0, 1.0]); lps[:2, 3] = [6.0, 4.0]  # the same grid, its first two axes reversed
    >>> pred = np.zeros((4, 5, 6), np.uint8); pred[3, 4, 0] = 1  # at world (0, 0, 0)
    >>> moved = check_geometry(Image(pred, lps), ref, "pred.nii.gz")
    >>> moved.orientation, np.argwhere(moved.array).tolist()
    ('RAS', [[0, 0, 0]])
    >>> check_geometry(Image(pred, np.eye(4)), ref, "pred.nii.gz")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: pred.nii.gz: geometry differs from the reference's (voxels up to 3 mm apart; ...
    >>> check_geometry(Image(pred, np.eye(4)), ref, "pred.png", spacing_from="ref").shape  # shapes only
    (4, 5, 6)
    """
    if spacing_from is None:
        if pred.same_grid(ref, atol):
            return pred
        moved = reorient_onto(pred, ref, atol)
        if moved is not None:
            return moved
    if pred.shape != ref.shape:
        raise InputError(f"shape {pred.shape} differs from the reference's {ref.shape} (no resampling is done)",
                         path=pred_path)
    if spacing_from is None:
        off = ref.grid_offset_mm(pred)
        sp = ", ".join(f"{s:.4g}" for s in pred.spacing)
        rsp = ", ".join(f"{s:.4g}" for s in ref.spacing)
        orient = f"orientation {pred.orientation} vs {ref.orientation}; " if pred.orientation != ref.orientation else ""
        raise InputError(f"geometry differs from the reference's ({orient}voxels up to {off:.4g} mm apart; spacing "
                         f"({sp}) vs ({rsp}); no resampling is done; --spacing-from ref skips this check)",
                         path=pred_path)
    return pred
