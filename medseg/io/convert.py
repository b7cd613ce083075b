"""What ``medseg info`` and ``medseg convert`` do, as functions.

``describe(path)`` lists every image (series) in a file or DICOM folder with its geometry;
``convert(input, output)`` writes NIfTI/NRRD/MHA, one file per series when ``output`` is a folder.
Inputs are validated before anything is written, and every output is written atomically.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, case_name, full_suffix
from medseg.io.dicom_files import dicom_modality
from medseg.io.image import Image
from medseg.io.paths import refuse_output_in_input
from medseg.io.readers import ITK, MICROSCOPY, NIFTI, WRITABLE, is_dicom_file, read_image
from medseg.io.writers import write_unchecked
from medseg.io.staging import staged_outputs


def image_summary(img: Image) -> dict[str, Any]:
    """Geometry and intensity summary of one image (JSON-ready; origin/direction in RAS).

    ``direction`` is the 3x3 matrix as a list of rows; its columns are the index axes' unit vectors.

    Parameters
    ----------
    img : Image

    Returns
    -------
    dict
        ``shape``, ``channels``, ``dtype``, ``spacing``, ``origin``, ``direction``, ``orientation``,
        ``intensity_range`` (finite values), ``frame``, ``unit``, ``modality``, ``series_description``, ``series_uid``;
        for NIfTI ``affine_source`` (:func:`medseg.io.readers.nifti_affine`).

    Examples
    --------
    >>> s = image_summary(Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0])))
    >>> s["shape"], s["spacing"], s["orientation"], s["intensity_range"]
    ([4, 5, 6], [2.0, 2.0, 3.0], 'RAS', [0.0, 0.0])
    """
    arr = img.array
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    rng = [float(finite.min()), float(finite.max())] if finite.size else [None, None]
    return {
        "shape": list(img.shape), "channels": img.num_channels, "dtype": str(arr.dtype),
        "spacing": [round(s, 6) for s in img.spacing], "origin": [round(o, 4) for o in img.origin],
        "direction": np.round(img.direction[: img.ndim, : img.ndim] if img.ndim == 2 else img.direction, 6).tolist(),
        "orientation": img.orientation if "unit" not in img.meta else "", "intensity_range": rng,
        "frame": "RAS" if "unit" not in img.meta else "",  # origin and direction's axes (DICOM/ITK use LPS)
        "unit": img.meta.get("unit", "mm"),  # microscopy: 'um' or 'pixel'; no patient frame, no orientation
        "modality": img.meta.get("modality", ""), "series_description": img.meta.get("series_description", ""),
        "series_uid": img.meta.get("series_uid", ""),
        # NIfTI: which header field gave the geometry; tools differ where sform and qform disagree
        **({"affine_source": img.meta["affine_source"]} if "affine_source" in img.meta else {}),
    }


def _is_dicom_input(path: Path) -> bool:
    return path.is_dir() or (path.is_file() and full_suffix(path) not in NIFTI + ITK + MICROSCOPY
                             and is_dicom_file(path))


def describe(path: str | os.PathLike, series: str | int | None = None) -> list[dict[str, Any]]:
    """One summary per image: per DICOM series for a folder, else one for the file.

    A DICOM series that is not a regular volume is listed with its ``problem`` instead of
    voxel statistics (listing a study never fails because of one bad series).

    Parameters
    ----------
    path : path
        An image file or a DICOM file or folder.
    series : str or int, optional
        Only this DICOM series (index or SeriesInstanceUID); for any other input, an ``InputError``.

    Returns
    -------
    list of dict
        :func:`image_summary` records with ``index`` and ``source`` (``num_slices`` for DICOM series).

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.writers import write_image
    >>> img = Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> p = write_image(img, Path(tempfile.mkdtemp()) / "ct.nii.gz")
    >>> [(r["index"], r["shape"], r["spacing"]) for r in describe(p)]
    [(0, [4, 5, 6], [2.0, 2.0, 3.0])]
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    segmentation = path.is_file() and dicom_modality(path) in ("SEG", "RTSTRUCT")
    if series is not None and (segmentation or not _is_dicom_input(path)):
        _refuse_series(path, "this is a DICOM-SEG/RTSTRUCT file" if segmentation else "this is not a DICOM file")
    if not _is_dicom_input(path) or segmentation:
        img = _import_segmentation(path, None) if segmentation else read_image(path)
        rec = {"index": 0, "source": str(path), **image_summary(img)}
        if segmentation:  # the object's own identity, not that of the image series it refers to
            rec.update(_own_series(path))
        if full_suffix(path) in (".nii", ".nii.gz"):  # a label map medseg predicted says what made it
            from medseg.infer.provenance import read_record

            made = read_record(path)
            if made:
                rec["predicted_by"] = made
        return [rec]
    from medseg.io.dicom import discover_series, load_series, no_series_message, select_series

    found = discover_series(path)
    if not found:
        raise InputError(no_series_message(path), path=path)
    if series is not None:
        found = [select_series(found, series, path)]
    out = []
    for s in found:
        source = path if path.is_file() and path.name.upper() != "DICOMDIR" else s.folder  # a file: that file
        rec: dict[str, Any] = {"index": s.index, "source": str(source), "num_slices": s.num_slices}
        if s.problem or s.tilt_degrees:
            why = s.problem or f"gantry tilt of {s.tilt_degrees:.2f} degrees (convert with --allow-tilt)"
            rec.update(modality=s.modality, series_description=s.description, series_uid=s.series_uid, problem=why)
        else:
            rec.update(image_summary(load_series(s)))
        if s.meta.get("split"):
            rec["note"] = s.meta["split"]
        out.append(rec)
    return out


def format_summary(rec: dict[str, Any]) -> str:
    """Human-readable lines for one ``describe`` record (what ``medseg info`` prints).

    Examples
    --------
    >>> img = Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> print(format_summary({"index": 0, "source": "ct.nii.gz", **image_summary(img)}))
    [0] ct.nii.gz
        source       ct.nii.gz
        shape        (4, 5, 6)
        spacing      (2, 2, 3) mm
        origin       (0, 0, 0) mm (RAS)
        direction    i (1, 0, 0)  j (0, 1, 0)  k (0, 0, 1)  (RAS unit vector of each index axis)
        orientation  RAS
        dtype        int16   range [0, 0]
    """
    head = f"[{rec['index']}] {rec.get('series_description') or Path(rec['source']).name}"
    if rec.get("modality"):
        head += f"  ({rec['modality']})"
    lines = [head, f"    source       {rec['source']}"]
    if rec.get("series_uid"):
        lines.append(f"    series uid   {rec['series_uid']}")
    if rec.get("problem"):
        lines.append(f"    NOT LOADABLE {rec['problem']}")
    else:
        fmt = lambda v: "(" + ", ".join(f"{x:.6g}" for x in v) + ")"  # noqa: E731
        lines += [
            f"    shape        {tuple(rec['shape'])}"
            + (f" x {rec['channels']} channels" if rec["channels"] > 1 else ""),
            f"    spacing      {fmt(rec['spacing'])} {rec.get('unit', 'mm')}",
            f"    origin       {fmt(rec['origin'])} {rec.get('unit', 'mm')}"
            + (" (RAS)" if rec.get("orientation") else ""),
            "    direction    " + "  ".join(f"{ax} {fmt(c)}" for ax, c in zip("ijk", np.array(rec["direction"]).T))
            + ("  (RAS unit vector of each index axis)" if rec.get("orientation") else ""),
            f"    orientation  {rec['orientation'] or '(none: microscopy, file axis order)'}",
            f"    dtype        {rec['dtype']}   range " + (
                f"[{rec['intensity_range'][0]:.6g}, {rec['intensity_range'][1]:.6g}]"
                if rec["intensity_range"][0] is not None else "none (no finite voxel)"),
        ]
        if rec.get("affine_source", "sform") not in ("sform", "qform"):  # nibabel/MONAI may read it elsewhere
            lines.append(f"    geometry     from the {rec['affine_source']}")
        if rec.get("predicted_by"):
            m = rec["predicted_by"]
            lines.append(f"    predicted by {m.get('model', '?')} (sha256 {str(m.get('model_sha256'))[:12]}), overlap "
                         f"{m.get('overlap')}, TTA {'on' if m.get('tta') else 'off'}, medseg "
                         f"{m.get('medseg_version', '?')}")
    if rec.get("note"):
        lines.append(f"    note         {rec['note']}")
    return "\n".join(lines)


def _own_series(path: Path) -> dict[str, str]:
    """Modality, series description and SeriesInstanceUID of one DICOM file, as its header says."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    keys = {"modality": "Modality", "series_description": "SeriesDescription", "series_uid": "SeriesInstanceUID"}
    return {field: str(ds.get(key, "") or "") for field, key in keys.items()}


def _refuse_series(path: Path, why: str = "this is not a DICOM file") -> None:
    """``InputError``: ``--series`` given for an input without series to pick from (ignoring it would hide a
    wrong input); worded as ``medseg predict`` words it."""
    raise InputError(f"--series picks a DICOM series, but {why}", path=path)


def _import_segmentation(path: Path, reference, rt_fill: str = "centre", series: str | int | None = None) -> Image:
    try:
        from medseg.export.importers import import_segmentation
    except ImportError:
        raise InputError("reading DICOM-SEG/RTSTRUCT needs medseg.export.importers, which this installation "
                         "lacks", path=path) from None
    return import_segmentation(path, reference=reference, series=series, rt_fill=rt_fill)


def convert(input: str | os.PathLike, output: str | os.PathLike, series: str | int | None = None,
            allow_tilt: bool = False, reference: str | os.PathLike | None = None,
            suffix: str = ".nii.gz", rt_fill: str = "centre") -> list[Path]:
    """Convert an image, a DICOM series or a whole DICOM folder; returns the files written.

    ``output`` is a file (its suffix picks NIfTI/NRRD/MHA) or a folder (an existing folder, a string
    ending in a path separator, as ``out.v2/``, or a path without an image suffix): then one ``suffix``
    file per DICOM volume series (images
    that cannot be volumes, such as screenshots, are skipped with a note on stderr; a damaged or
    irregular series stops everything), named as ``medseg predict`` names its cases
    (:func:`medseg.io.series_names.series_case_names`: ``<name><suffix>``). The files are renamed
    into place together at the end. A DICOM-SEG or RTSTRUCT becomes a label map on its series'
    grid (``rt_fill``: RTSTRUCT rasterisation rule, ``"centre"`` or ``"edge"``). An output in a DICOM
    input folder is refused (it would change the input).

    Parameters
    ----------
    input : path
        An image file, a DICOM file or folder, or a DICOM-SEG / RTSTRUCT file.
    output : path
        The file, or the folder, to write.
    series : str or int, optional
        Only this DICOM series (index or SeriesInstanceUID); for a DICOM-SEG / RTSTRUCT, the series of
        ``reference`` it lies on. An input without series to pick from is an ``InputError``.
    allow_tilt : bool
        Resample gantry-tilted series instead of refusing them.
    reference : path, optional
        The series a DICOM-SEG / RTSTRUCT refers to (for any other input, an ``InputError``).
    suffix : str
        Format of the files written into a folder.
    rt_fill : {'centre', 'edge'}
        RTSTRUCT rasterisation rule.

    Returns
    -------
    list of Path

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.writers import write_image
    >>> d = Path(tempfile.mkdtemp())
    >>> src = write_image(Image(np.zeros((4, 5, 6), np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), d / "ct.nii.gz")
    >>> [p.relative_to(d).as_posix() for p in convert(src, d / "out")]  # a folder: one file per image
    ['out/ct.nii.gz']
    >>> read_image(convert(src, d / "ct.mha")[0]).spacing
    (2.0, 2.0, 3.0)
    """
    src, dst = Path(input), Path(output)
    raw = os.fspath(output)  # as typed: Path drops a trailing separator, which says 'a folder'
    slash = raw.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))
    if not src.exists():
        raise InputError("no such file or folder", path=src)
    from medseg.export.raster import FILL_RULES  # numpy only

    if rt_fill not in FILL_RULES:  # checked before any work, whatever the input
        raise InputError(f"unknown contour fill rule {rt_fill!r} (use one of {', '.join(FILL_RULES)})")
    to_folder = slash or dst.is_dir() or full_suffix(dst) not in WRITABLE
    if to_folder and full_suffix(dst) not in ("",) and not dst.is_dir() and not slash:
        raise InputError(f"cannot write format '{full_suffix(dst)}' (use one of {', '.join(WRITABLE)}, "
                         "a name without suffix for a new folder, or an existing folder)", path=dst)
    if suffix not in WRITABLE:
        raise InputError(f"cannot write format '{suffix}'", path=dst)
    _refuse_output_in_input(src, dst)
    notes: list[str] = []  # skipped DICOM series: said once the input passed every check
    modality = dicom_modality(src)
    segmentation = modality in ("SEG", "RTSTRUCT")
    if series is not None and (reference is None if segmentation else not _is_dicom_input(src)):
        # a DICOM-SEG/RTSTRUCT's --series picks one series of its --reference folder
        _refuse_series(src, "no --reference folder was given to pick it from" if segmentation else
                       "this is not a DICOM file")
    if reference is not None and not segmentation:  # it would be ignored: the input has its own grid
        raise InputError("--reference is the image series a DICOM-SEG or RTSTRUCT refers to; this input is "
                         "neither (it has its own grid)", path=src)
    if segmentation:
        img = _import_segmentation(src, reference, rt_fill, series)
        images = [(dst / f"{src.stem}{suffix}" if to_folder else dst, img)]
        if img.meta.get("skipped_contours"):  # not an error (other ROIs may be whole), but the map lacks them
            n = img.meta["skipped_contours"]
            notes = [f"medseg: note: {src}: {n} contour{'s' if n > 1 else ''} left out: on no slice of the "
                     "series, or in another frame of reference"]
    elif _is_dicom_input(src):
        from medseg.io.dicom import load_series
        from medseg.io.dicom_files import dicom_root
        from medseg.io.series_names import pick_series

        # a whole folder: every volume (non-volume images skipped with a note); one file or --series: one series
        picked = pick_series(src, series, single=not to_folder, progress=True)
        for s in picked.series if dicom_root(src).is_dir() else ():  # a folder reached through a link: an input too
            _refuse_output_in_input(s.folder, dst)
        notes = picked.notes
        bad = [s for s in picked.series if s.problem or (s.tilt_degrees and not allow_tilt)]
        if bad:  # fail before writing: the message says which series and why
            load_series(bad[0], allow_tilt=allow_tilt)
        # named as `medseg predict` names its cases, so converted files and predictions pair up
        images = [(dst / f"{name}{suffix}" if to_folder else dst, s) for s, name in zip(picked.series, picked.names)]
    else:
        img = read_image(src, series, allow_tilt=allow_tilt)
        images = [(dst / f"{case_name(src)}{suffix}" if to_folder else dst, img)]
    if to_folder:
        if dst.exists() and not dst.is_dir():
            raise InputError("output exists and is not a folder", path=dst)
        if not dst.parent.is_dir():
            raise InputError("output's parent folder does not exist", path=dst.parent)
    for line in notes:  # said once, on stderr, without stopping the conversion
        print(line, file=sys.stderr)
    if not to_folder:
        out, item = images[0]
        with atomic_path(out, protect=[src]) as tmp:
            write_unchecked(_loaded(item, allow_tilt), tmp, full_suffix(out))
        return [out]
    with staged_outputs(dst, protect=[src]) as place:  # every series or none
        for out, item in images:
            img = _loaded(item, allow_tilt)  # outside place(): a bad input's error names the input
            with place(out.name) as tmp:
                write_unchecked(img, tmp, full_suffix(out))
    return [out for out, _ in images]


def _refuse_output_in_input(src: Path, dst: Path) -> None:
    """``InputError`` when the output is, or lies inside, the DICOM folder being read (a DICOMDIR: its folder)."""
    from medseg.io.dicom_files import dicom_root

    folder = dicom_root(src)
    if folder.is_dir():  # discovery walks the whole folder
        refuse_output_in_input(dst, folder, None, what="the output", input_name="the input DICOM folder")


def _loaded(item, allow_tilt: bool) -> Image:
    """The image to write: read already, or a discovered DICOM series read now (one in memory at a time)."""
    if isinstance(item, Image):
        return item
    from medseg.io.dicom import load_series

    return load_series(item, allow_tilt=allow_tilt, progress=True)
