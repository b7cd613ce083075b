"""Export label maps to radiology viewers (DICOM-SEG, RTSTRUCT, Slicer seg.nrrd, NIfTI + colour
tables) and import DICOM-SEG / RTSTRUCT back to label maps.

>>> from medseg.export import FORMATS
>>> FORMATS
('dicom-seg', 'rtstruct', 'seg-nrrd', 'nifti')
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError

FORMATS = ("dicom-seg", "rtstruct", "seg-nrrd", "nifti")
DICOM_FORMATS = ("dicom-seg", "rtstruct")


def _integer_labels(label_image, source) -> np.ndarray:
    from medseg.io.labels import integer_labels

    arr = np.asarray(label_image.array)
    if label_image.channels_first or arr.ndim != 3:
        raise InputError(f"expected a 3D single-channel label map, got array shape {arr.shape}", path=source)
    return integer_labels(arr, path=source)


def _check_output_name(fmt: str, out_path: Path) -> None:
    """Refuse an output name that says another format (a DICOM file named .nii.gz misleads every tool)."""
    from medseg.io.atomic import full_suffix

    name = out_path.name.lower()
    if fmt == "seg-nrrd" and not name.endswith(".nrrd"):
        raise InputError("a Slicer segmentation file ends with .seg.nrrd", path=out_path)
    if fmt == "nifti" and not name.endswith((".nii", ".nii.gz")):
        raise InputError("a NIfTI file ends with .nii.gz or .nii", path=out_path)
    ext = out_path.suffix.lower()
    if fmt in DICOM_FORMATS and ext not in ("", ".dcm") and not ext[1:].isdigit():  # UID names: 1.2.840.1
        raise InputError(f"--format {fmt} writes a DICOM file: name it .dcm or without an extension, "
                         f"not {full_suffix(out_path)}", path=out_path)


def _check_options(fmt: str, reference, series, seg_type: str | None, rt_holes: str | None,
                   model_name: str | None) -> None:
    """Refuse an option value no format knows, or one this format would ignore (a user who asked for a labelmap
    SEG, keyhole-free contours or a series must not get a file made without them, unwarned)."""
    from medseg.export.contours import HOLES
    from medseg.export.dicom_seg import SEG_TYPES

    if seg_type is not None and str(seg_type).lower() not in SEG_TYPES:
        raise InputError(f"unknown --seg-type {seg_type!r} (use one of {', '.join(SEG_TYPES)})")
    if rt_holes is not None and rt_holes not in HOLES:
        raise InputError(f"unknown RTSTRUCT hole style {rt_holes!r} (use keyhole or separate)")
    for option, value, formats in (("--seg-type", seg_type, ("dicom-seg",)), ("--rt-holes", rt_holes, ("rtstruct",)),
                                   ("--model-name", model_name, DICOM_FORMATS)):
        if value is not None and fmt not in formats:
            raise InputError(f"{option} is an option of --format {' and '.join(formats)}; --format {fmt} has no "
                             "use for it")
    if reference is None and fmt in DICOM_FORMATS:
        raise InputError(f"--format {fmt} needs the DICOM series it refers to (--reference DIR)")
    if reference is None and series is not None:
        raise InputError("--series picks a series of the --reference folder, and no --reference was given")


def _check_all_named(arr: np.ndarray, names: dict[int, str], source, labels_file) -> None:
    """Given label names must cover the map: a value silently exported as 'label_N' hides a wrong labels file."""
    from medseg.evaluate.overlap import present_labels

    unnamed = [int(v) for v in present_labels(arr) if v != 0 and int(v) not in names]
    if not unnamed:
        return
    shown = ", ".join(map(str, unnamed[:10])) + (", ..." if len(unnamed) > 10 else "")
    named = ", ".join(f"{v}={n}" for v, n in sorted(names.items())[:10]) or "no foreground label"
    if labels_file is None:
        raise InputError(f"label value(s) {shown} of the label map have no name in the given labels ({named})",
                         path=source)
    of_map = f" of {source}" if source else ""
    raise InputError(f"label value(s) {shown}{of_map} have no name in this labels file (it names {named})",
                     path=labels_file)


def export_segmentation(label_image, reference: str | os.PathLike | None, fmt: str, out_path: str | os.PathLike,
                        labels: dict[int, str] | str | os.PathLike | None = None, series: str | int | None = None,
                        model_name: str | None = None, seg_type: str | None = None, rt_holes: str | None = None,
                        labels_file: str | os.PathLike | None = None) -> Path:
    """Export a label map for viewers and planning systems.

    Parameters
    ----------
    label_image : Image or path
        3D label map (0 = background; a file is read) on the series grid or on any grid covering it; it is resampled
        to the series grid by nearest neighbour through world coordinates.
    reference : path or None
        The DICOM series folder (required for ``dicom-seg`` and ``rtstruct``; optional for the others,
        where it puts the label map on the series grid).
    fmt : {'dicom-seg', 'rtstruct', 'seg-nrrd', 'nifti'}
    out_path : path
        The file to write (``nifti`` also writes ``<stem>.itksnap.txt`` and ``<stem>.ctbl``).
    labels : dict[int, str] or path, optional
        Label value -> name, or a ``dataset.json`` to read them from; names pick SNOMED CT codes and colours.
        When given, it must name every non-zero value of the label map (without it, value ``N`` is
        called ``label_N``).
    series : str, int or SeriesInfo, optional
        Series UID or index when ``reference`` holds several series (or the discovered series itself);
        without ``reference``, an ``InputError``.
    model_name : str, optional
        Recorded in the algorithm identification (DICOM formats only).
    seg_type : {'binary', 'labelmap'}, optional
        DICOM-SEG type (default binary); ``dicom-seg`` only.
    rt_holes : {'keyhole', 'separate'}, optional
        RTSTRUCT holes (``rtstruct`` only): joined to their outer contour by zero-width keyholes (the
        default; readers agree whether they union or XOR contours), or separate contours for the even-odd rule.
    labels_file : path, optional
        The file ``labels`` was read from, named in errors.

    Returns
    -------
    Path
        ``out_path``.

    Notes
    -----
    An empty label map (no foreground on the series grid) is refused for DICOM-SEG and RTSTRUCT (an
    object without segments is not valid); ``seg-nrrd`` and ``nifti`` write it with no segments.
    ``out_path`` must fit the format: ``.dcm`` or no extension for DICOM-SEG and RTSTRUCT (a
    UID-style name such as ``1.2.826.0.1`` counts as none), ``.seg.nrrd`` (any ``.nrrd``) for
    seg-nrrd, ``.nii.gz`` or ``.nii`` for nifti.

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.image import Image
    >>> lab = np.zeros((4, 4, 2), np.uint8); lab[1:3, 1:3] = 1
    >>> out = export_segmentation(Image(lab, np.eye(4)), None, "nifti", Path(tempfile.mkdtemp()) / "seg.nii.gz",
    ...                           labels={1: "liver"})
    >>> out.with_name("seg.ctbl").read_text().splitlines()[-1]  # value name R G B A
    '1 liver 221 130 101 255'
    """
    from medseg.export.colors import segment_info
    from medseg.io.image import Image
    from medseg.io.labels import label_names, read_label_names

    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r} (use one of {', '.join(FORMATS)})")
    _check_options(fmt, reference, series, seg_type, rt_holes, model_name)
    # the small inputs and the output's name are checked before the label map and the series (large) are read
    if isinstance(labels, (str, os.PathLike)):  # a dataset.json, as --labels takes it
        labels, labels_file = read_label_names(labels), labels
    if reference is not None and not Path(reference).exists():
        raise InputError("no such reference series folder", path=reference)
    out_path = Path(out_path)
    _check_output_name(fmt, out_path)
    if isinstance(label_image, (str, os.PathLike)):
        from medseg.io.readers import read_image

        label_image = read_image(label_image)
    elif isinstance(label_image, np.ndarray):  # the export places voxels in the patient: it needs the affine
        raise TypeError("export_segmentation needs a medseg.io.Image (the array with its affine), not a bare array"
                        ": wrap it as Image(array, affine), or pass the label map's file")
    source = label_image.meta.get("source")
    arr = _integer_labels(label_image, source)
    names = label_names(labels, labels_file) if labels is not None else {}  # {1: "liver"} or {"liver": 1}
    if labels is not None:  # on the map as given, before any series is read
        _check_all_named(arr, names, source, labels_file)
    label_image = Image(arr, label_image.affine, dict(label_image.meta))
    protect = [p for p in [source] if p]
    ref = None
    if reference is not None:
        from medseg.export.reference import load_reference
        from medseg.export.resample import resample_to_reference

        ref = load_reference(reference, series)
        protect += [str(f) for f in ref.files]
        if fmt not in DICOM_FORMATS and not ref.is_regular():
            raise InputError("the series has tilted or unevenly spaced slices; a regular-grid file cannot hold "
                             "it exactly (export without --reference, or as dicom-seg/rtstruct)", path=reference)
        arr = resample_to_reference(label_image, ref)
    values = [int(v) for v in np.unique(arr) if v != 0]
    infos = [segment_info(v, names.get(v)) for v in values]
    if fmt in DICOM_FORMATS:
        if not values:
            raise InputError("the label map is empty on the series grid (no foreground): nothing to export",
                             path=source)
        if fmt == "dicom-seg":
            from medseg.export.dicom_seg import write_dicom_seg

            return write_dicom_seg(arr, ref, infos, out_path, model_name=model_name, seg_type=seg_type or "binary",
                                   protect=protect)
        from medseg.export.rtstruct import write_rtstruct

        return write_rtstruct(arr, ref, infos, out_path, model_name=model_name, holes=rt_holes or "keyhole",
                              protect=protect)
    if ref is not None:  # (regular: checked above)
        label_image = Image(arr, ref.grid_affine(), {**label_image.meta, **ref.meta})
    from medseg.io.writers import label_dtype

    label_image = label_image.with_array(arr.astype(label_dtype(max(values, default=0))))
    if fmt == "seg-nrrd":
        from medseg.export.slicer import write_seg_nrrd

        return write_seg_nrrd(label_image, infos, out_path, protect=protect)
    from medseg.export.slicer import write_nifti_with_tables

    return write_nifti_with_tables(label_image, infos, out_path, protect=protect)


def __getattr__(name):  # light package import; the importer loads highdicom only when used
    if name == "import_segmentation":
        from medseg.export.importers import import_segmentation

        return import_segmentation
    raise AttributeError(name)


__all__ = ["FORMATS", "export_segmentation", "import_segmentation"]
