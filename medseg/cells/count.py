"""Counting: image(s) in, instance label maps + per-cell tables + overlays + ``counts.csv`` out, with either
segmenter of :mod:`medseg.cells.segmenters` (a trained :class:`CellModel` or the :class:`ClassicalSegmenter`).

Every input is read and validated before anything is written, and the outputs appear together, each atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.cpu import keeps_torch_threads
from medseg.errors import InputError
from medseg.io.atomic import case_name
from medseg.io.staging import refuse_folder, staged_outputs
from medseg.cells.data import list_images
# ClassicalSegmenter and CellModel are also imported from here (tests, benchmarks)
from medseg.cells.segmenters import CLASSICAL_MIN_SNR, CellModel, ClassicalSegmenter


# the columns of counts.csv, whatever mix of 2D and 3D images: sizes are areas for 2D images and volumes for 3D
# ones, each in its own columns (blank where it does not apply), so a column never mixes units
COUNT_COLUMNS = ["image", "id", "count", "count_not_touching_border", "mean_area", "median_area", "mean_volume",
                 "median_volume", "unit", "method"]
MAX_LABEL = 65535  # the label TIFF is uint16: what napari and Fiji open as a label image
# images decoded by the pre-check are kept for counting up to this many bytes in all (a folder of typical
# microscopy tiles: all of them); larger folders read the rest again rather than hold them all at once
KEEP_CHECKED_BYTES = 512 * 2**20


@keeps_torch_threads  # --threads is this call's, not the caller's for good
def count_cells(inputs, out_dir, model=None, classical: bool = False, channel: int | None = None,
                pixel_size=None, method: str | None = None, exclude_border: bool = False, roi_zip: bool = False,
                tta: bool = False, diameter: float | None = None, min_snr: float | None = None,
                threads: int | None = None, progress: bool = True, note=None, rescale: bool = True,
                merge_boundary: float | None = None) -> list[dict]:
    """Segment and count the cells of an image or a folder; write per-image outputs and ``counts.csv``.

    Writes ``<id>_labels.tif`` (uint16 ImageJ TIFF with the pixel size), ``<id>_overlay.png``,
    ``<id>_cells.csv`` (and ``<id>_rois.zip`` of 2D images with ``roi_zip``) per image and ``counts.csv``
    (:data:`COUNT_COLUMNS`) for all. Every image is read and checked (readable, one channel, the model's
    dimensionality, unique ids) before anything is written, and the outputs are moved into ``out_dir`` only once
    all of them exist: an ``InputError`` (such as an image with more than 65,535 cells) leaves nothing behind.
    An option that cannot apply to the mode, or a value no mode can use, is an ``InputError``.

    Parameters
    ----------
    inputs : path
        An image (``.tif``, ``.tiff``, ``.png``) or a folder of them (:func:`list_images`).
    out_dir : path
        Output folder (created if needed).
    model : path or CellModel, optional
        A trained run (folder, ``model.json`` or ``model.pt``) or a loaded model; exactly one of ``model`` and
        ``classical``.
    classical : bool
        Threshold + distance-transform watershed, no training (:class:`ClassicalSegmenter`).
    channel : int, optional
        Channel of multi-channel images (0-based); such images are refused without it.
    pixel_size : float, sequence or str, optional
        Pixel size in µm, overriding the files'; may be text as on the command line (:func:`parse_pixel_size`).
    method : {"otsu", "local"}, optional
        The classical mode's threshold (default ``otsu``).
    exclude_border : bool
        Drop the cells that touch the image border.
    roi_zip : bool
        Also write ImageJ ROIs of 2D images.
    tta : bool
        Model only: average the predictions of mirrored images.
    diameter : float, optional
        The nuclei's typical size in pixels when known, else 2D models measure it per image: a model trained
        with a canonical diameter resizes every image to it, a native-scale model only images whose nuclei lie
        outside the range of sizes it was trained on (into that range; ``rescale=False``: never); the classical
        mode sizes its markers by it.
    min_snr : float, optional
        The contrast test's threshold (:mod:`medseg.postprocess.contrast`; 0 turns it off): a model's own (2 unless
        trained otherwise) is overridden; the classical mode's default is
        :data:`~medseg.cells.segmenters.CLASSICAL_MIN_SNR`.
    threads : int, optional
        Model only: CPU threads for torch (default: ``OMP_NUM_THREADS`` if set, else the cores not already busy:
        :func:`medseg.cpu.requested_threads`); fix it where runs must give
        identical results, since a different thread count changes the order of floating-point sums.
    progress : bool
        Show a progress bar for several images.
    note : callable, optional
        Receives one-line remarks (3D images of a folder get no ROIs; default: ``warnings.warn``).
    rescale : bool
        Model only: ``False`` never resizes the images of a native-scale model.
    merge_boundary : float, optional
        Model only: overrides its merging of fragments across weak borders (:mod:`medseg.postprocess.merge`; 0
        turns it off).

    Returns
    -------
    list of dict
        The rows of ``counts.csv``, one per image (None where the table is blank).

    Examples
    --------
    Three discs of radius 8 px, two of them touching, counted without a model:

    >>> import tempfile
    >>> import imageio.v3 as iio
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name); (d / "in").mkdir()
    >>> yy, xx = np.mgrid[:48, :64]
    >>> discs = [np.hypot(yy - y, xx - x) < 8 for y, x in ((16, 16), (16, 31), (34, 46))]
    >>> iio.imwrite(d / "in" / "dapi.png", (200 * np.logical_or.reduce(discs)).astype(np.uint8))
    >>> rows = count_cells(d / "in", d / "out", classical=True, pixel_size=0.5)
    >>> [(r["id"], r["count"], r["unit"], r["method"]) for r in rows]
    [('dapi', 3, 'um', 'classical')]
    >>> sorted(p.name for p in (d / "out").iterdir())
    ['counts.csv', 'dapi_cells.csv', 'dapi_labels.tif', 'dapi_overlay.png']
    >>> tmp.cleanup()
    """
    _check_mode(model, classical, method, tta, threads, inputs, rescale,  # usage errors before reading
                merge_boundary)
    _check_values(method, diameter, min_snr, merge_boundary, threads)
    pixel_size = parse_pixel_size(pixel_size)
    files = list_images(inputs)
    seg = ClassicalSegmenter(method or "otsu", diameter, CLASSICAL_MIN_SNR if min_snr is None else min_snr) \
        if classical else (
        model if isinstance(model, CellModel) else CellModel.load(model, tta=tta, diameter=diameter))
    if not classical and not rescale:
        seg.rescale = False
    ndims, kept = _check_images(files, channel, pixel_size, None if classical else seg.cfg.spatial_dims)
    with_rois = _roi_images(files, ndims, roi_zip, inputs, note)
    out_dir = Path(out_dir)
    _check_outputs(files, out_dir, with_rois, inputs)
    if min_snr is not None and not classical:
        seg.cfg.min_snr = float(min_snr)
    if merge_boundary is not None and not classical:
        seg.cfg.merge_boundary = float(merge_boundary)
    if not classical:
        import torch

        from medseg.cpu import requested_threads

        torch.set_num_threads(requested_threads(threads))
    from medseg.cells.data import load_image
    from medseg.cells.tables import rows_to_csv

    def image(f):  # popped, so that each kept image is freed once counted
        return kept.pop(f) if f in kept else load_image(f, channel, pixel_size)

    with staged_outputs(out_dir, last=["counts.csv"]) as place:
        counts = [_count_one(image(f), f, seg, exclude_border, f in with_rois, place,
                             "classical" if classical else "model", note) for f in _track(files, progress)]
        with place("counts.csv") as tmp:
            tmp.write_text(rows_to_csv(counts, COUNT_COLUMNS))
    return counts


def _check_mode(model, classical: bool, method, tta: bool, threads, where, rescale: bool = True,
                merge_boundary=None) -> None:
    """Refuse options that the chosen mode would ignore."""
    if (model is None) == (not classical):
        raise InputError("choose exactly one of -m RUN or --classical", path=where)
    if classical:
        unused = [o for o, v in (("--tta", tta), ("--threads", threads is not None),
                                 ("--no-rescale", not rescale), ("--merge-boundary", merge_boundary is not None)) if v]
        if unused:
            raise InputError(f"{', '.join(unused)} appl{'y' if len(unused) > 1 else 'ies'} to a model (-m RUN), "
                             f"not to --classical")
    elif method is not None:
        raise InputError("--threshold applies to --classical only (a model uses the thresholds it was tuned with)")


def _check_values(method, diameter, min_snr, merge_boundary, threads) -> None:
    """Refuse values no mode can use (Python callers get the same answers as the command line)."""
    if method is not None and method not in ("otsu", "local"):
        raise InputError(f"--threshold must be otsu or local (got '{method}')")
    if diameter is not None and not 0 < diameter < float("inf"):
        raise InputError(f"--diameter must be a positive number of pixels (got {diameter})")
    if min_snr is not None and not 0 <= min_snr < float("inf"):
        raise InputError(f"--min-snr must be a number >= 0 (got {min_snr})")
    if merge_boundary is not None and not 0 <= merge_boundary <= 1:
        raise InputError(f"--merge-boundary must be in [0, 1] (got {merge_boundary})")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1 (got {threads})")


def parse_pixel_size(value):
    """A pixel size as ``read_microscopy`` takes it, from a number, a sequence, or text such as ``"0.65"``,
    ``"2,0.65,0.65"`` or ``"2x0.65x0.65"`` (µm); ``None`` stays ``None``.

    Parameters
    ----------
    value : float, sequence of float, str or None
        One size for every axis, or one per axis (``z, y, x``).

    Returns
    -------
    float, tuple of float or None
        A float for one value, a tuple for several.

    Raises
    ------
    InputError
        Text that is not numbers, or a value that is not positive and finite.

    Examples
    --------
    >>> parse_pixel_size("2,0.5,0.5"), parse_pixel_size(0.65), parse_pixel_size("2x0.65x0.65")
    ((2.0, 0.5, 0.5), 0.65, (2.0, 0.65, 0.65))
    >>> parse_pixel_size("0,0.5")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: --pixel-size must be positive (got '0,0.5')
    """
    if value is None:
        return None
    text = value if isinstance(value, str) else ",".join(str(v) for v in np.atleast_1d(value))
    try:
        vals = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--pixel-size must be numbers like 0.65 or 2,0.65,0.65 (got '{text}')") from None
    if not vals or not all(0 < v < float("inf") for v in vals):
        raise InputError(f"--pixel-size must be positive (got '{text}')")
    if not all(_TIFF_SIZES[0] <= v <= _TIFF_SIZES[1] for v in vals[-2:]):  # z is a float in ImageJ's metadata
        raise InputError(f"--pixel-size {text} µm: the label TIFF cannot record an in-plane size outside "
                         f"{_TIFF_SIZES[0]:.3g} to {_TIFF_SIZES[1]:.3g} µm (a 32-bit rational of pixels per µm); "
                         "give the size in µm")
    return vals[0] if len(vals) == 1 else tuple(vals)


#: in-plane pixel sizes (µm) an ImageJ TIFF's resolution tags can hold: 1 / (2**32 - 1) to 2**32 - 1 µm
_TIFF_SIZES = (1.0 / (2**32 - 1), float(2**32 - 1))


def _check_images(files, channel, pixel_size, model_dims: int | None) -> tuple[list[int], dict]:
    """Read every image (readable, one channel, not empty, of the model's dimensionality) and check that the ids
    are unique; returns each image's number of dimensions, and the images read, by file, that fit in
    :data:`KEEP_CHECKED_BYTES` (so that counting does not decode them twice)."""
    from medseg.cells.data import load_image

    names, ndims, kept, held = {}, [], {}, 0
    for f in files:
        img = load_image(f, channel, pixel_size)
        arr = img.array
        if model_dims is not None and arr.ndim != model_dims:
            # an (unmarked) channel axis reads as a z axis: say so where that is the likely cause
            hint = "; if its first axis holds channels, choose one with --channel" if (
                channel is None and arr.ndim == model_dims + 1) else ""
            raise InputError(f"image is {arr.ndim}D {tuple(arr.shape)} but the model is {model_dims}D{hint}",
                             path=f)
        cid = case_name(f)
        if cid in names:
            raise InputError(f"two images share the id '{cid}' ({names[cid].name}, {f.name})", path=f)
        names[cid] = f
        ndims.append(arr.ndim)
        if held + arr.nbytes <= KEEP_CHECKED_BYTES:
            kept[f] = img
            held += arr.nbytes
    return ndims, kept


def _roi_images(files, ndims, roi_zip: bool, where, note) -> set:
    """The images that get ``<id>_rois.zip``: the 2D ones (ImageJ ROIs are 2D). Only 3D images: an error; a mix:
    a note that the 3D ones get none."""
    if not roi_zip:
        return set()
    flat = {f for f, nd in zip(files, ndims) if nd == 2}
    stacks = [f.name for f, nd in zip(files, ndims) if nd != 2]
    if not flat:
        raise InputError("--roi-zip writes ImageJ ROIs of 2D images only, and the input is 3D (leave out --roi-zip)",
                         path=where)
    if stacks:
        shown = ", ".join(stacks[:3]) + (f" and {len(stacks) - 3} more" if len(stacks) > 3 else "")
        _note(note, f"--roi-zip: no ROIs for the {len(stacks)} 3D image(s) ({shown}); ImageJ ROIs are 2D")
    return flat


def _note(note, message: str) -> None:
    if note is not None:
        note(message)
    else:
        import warnings

        warnings.warn(message, stacklevel=3)


def _output_names(cid: str, rois: bool) -> list[str]:
    return [f"{cid}_labels.tif", f"{cid}_cells.csv", f"{cid}_overlay.png"] + ([f"{cid}_rois.zip"] if rois else [])


def _check_outputs(files, out_dir: Path, with_rois, sources=()) -> None:
    """Refuse, before any segmenting, an output folder that is a file or an input folder (the next run would count
    its overlays and label maps as images), or where an output would replace an input or a folder of that name
    (moving the outputs into place would stop half-way)."""
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():  # -o a file, or a folder below one
        raise InputError("the output folder (-o) is a file" if existing == out_dir else
                         "the output folder (-o) would be inside a file", path=existing)
    inputs = {f.resolve() for f in files}
    names = [n for f in files for n in _output_names(case_name(f), f in with_rois)] + ["counts.csv"]
    _check_folded(files, out_dir)
    for n in names:
        dest = out_dir / n
        if dest.exists() and dest.resolve() in inputs:
            raise InputError("refusing to overwrite an input file", path=dest)
        refuse_folder(dest)
    for src in map(Path, sources if isinstance(sources, (list, tuple)) else [sources]):
        if src.is_dir() and out_dir.exists() and out_dir.resolve() == src.resolve():
            raise InputError("the output folder (-o) is the input folder: the next run would count its overlays and "
                             "label maps as images; choose another folder", path=out_dir)


def _check_folded(files, out_dir: Path) -> None:
    """Refuse images whose outputs are one file where the output folder's file system does not tell case (or
    Unicode normal form) apart: ``Cell1.tif`` and ``cell1.tif`` (images of equal ids are refused on reading)."""
    from medseg.io.folding import name_key

    key, owner = name_key(out_dir), {}
    for f in files:
        cid = case_name(f)
        other = owner.setdefault(key(cid), f)
        if case_name(other) != cid:
            raise InputError(f"images {other.name} and {f.name} would both write {cid}_labels.tif (the output "
                             "folder's file system does not tell them apart); rename one", path=f)


def _count_one(img, f: Path, seg, exclude_border: bool, rois: bool, place, method: str, note=None) -> dict:
    """Segment one image (``img``, read from ``f``), write its outputs (through ``place``) and return its row of
    ``counts.csv``."""
    import imageio.v3 as iio

    from medseg.cells.tables import cell_table, overlay_rgb, rows_to_csv, table_columns
    from medseg.io.image import Image
    from medseg.io.microscopy import write_microscopy
    from medseg.postprocess.watershed import clear_border_instances, relabel_sequential

    arr, sp, cid = img.array, img.spacing, case_name(f)
    no_size = img.meta.get("unit") == "pixel" and all(float(s) == 1.0 for s in sp)
    if no_size and isinstance(seg, CellModel) and seg.z_scale(arr, sp) != 1.0:
        # a 3D model is shown each stack at its training z step: a stack without a voxel size counts as isotropic
        from medseg.cells.scale import anisotropy

        _note(note, f"{f.name}: no voxel size, taken as isotropic; the model's stacks had a z step of "
                    f"{anisotropy(seg.meta['spacing']):.3g}x their pixel (give --pixel-size Z,Y,X)")
    labels = seg.segment(arr, sp)
    if isinstance(seg, CellModel):
        seg.forget()  # its maps of this image are not needed while the outputs are written and the next predicted
    if exclude_border:
        labels = relabel_sequential(clear_border_instances(labels))
    labels = _as_uint16(labels, f)
    rows = cell_table(labels, arr, sp)
    with place(f"{cid}_labels.tif") as tmp:
        write_microscopy(Image(labels, img.affine, {"unit": img.meta.get("unit", "pixel")}), tmp)
    with place(f"{cid}_cells.csv") as tmp:
        tmp.write_text(rows_to_csv(rows, table_columns(arr.ndim)))
    with place(f"{cid}_overlay.png") as tmp:
        iio.imwrite(tmp, overlay_rgb(arr, labels), extension=".png")
    if rois:
        from medseg.cells.rois import write_roi_zip

        with place(f"{cid}_rois.zip") as tmp:
            write_roi_zip(labels, tmp)
    return _count_row(f, rows, arr.ndim, img.meta.get("unit", "pixel"), method)


def _as_uint16(labels: np.ndarray, path) -> np.ndarray:
    """The label map as uint16 (ids made consecutive if needed); more objects than uint16 holds: an InputError."""
    from medseg.postprocess.watershed import relabel_sequential

    if labels.size and labels.max() > MAX_LABEL:
        labels = relabel_sequential(labels)
        n = int(labels.max())
        if n > MAX_LABEL:
            raise InputError(f"{n} objects found, more than the {MAX_LABEL:,} a uint16 label TIFF (napari, Fiji) "
                             f"holds: split the image into tiles", path=path)
    return labels.astype(np.uint16)


def _count_row(f: Path, rows: list[dict], ndim: int, unit: str, method: str) -> dict:
    """One image's row of ``counts.csv``: the size columns of the other dimensionality stay empty (None)."""
    from medseg.cells.tables import round_measure

    size_key = "area" if ndim == 2 else "volume"
    sizes = [r[size_key] for r in rows]
    row = {"image": f.name, "id": case_name(f), "count": len(rows),
           "count_not_touching_border": sum(not r["touches_border"] for r in rows),
           "mean_area": None, "median_area": None, "mean_volume": None, "median_volume": None,
           "unit": unit, "method": method}
    row[f"mean_{size_key}"] = round_measure(np.mean(sizes)) if sizes else 0.0
    row[f"median_{size_key}"] = round_measure(np.median(sizes)) if sizes else 0.0
    return row


def _track(files, progress):
    from medseg.progress import track

    return track(files, "counting", progress and len(files) > 1)
