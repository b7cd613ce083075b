"""DICOM-SEG and RTSTRUCT → label map on the referenced series' grid (for evaluation, fine-tuning).

* DICOM-SEG: segments are placed through their own per-frame geometry (highdicom's volume and
  affine) and resampled by nearest neighbour to the reference grid, so a SEG on another grid of
  the same frame of reference imports correctly too; without a reference, the SEG's own grid is used.
* RTSTRUCT: contours are rasterised on the reference slices (pixel centres inside the polygon,
  even-odd rule for holes; see :mod:`medseg.export.rtstruct`). Without ``reference`` the series
  the RTSTRUCT references is looked for in the RTSTRUCT's own folder.

Label values: the segment number for DICOM-SEG; 1..N in Structure Set ROI order for RTSTRUCT.
``meta["labels"]`` maps each value to its segment label / ROI name. Overlapping segments (a BODY
contour holds the organs in it) cannot all live in one label map: by default the smaller structure is
drawn over the larger (``overlap="smallest"``); ``"error"`` refuses, ``"order"`` draws in order.
:func:`import_masks` returns every segment's full mask for exact comparisons.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.image import Image

SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # SEG, Label Map SEG
OVERLAP_POLICIES = ("smallest", "order", "error")


def _header(path: Path):
    import pydicom

    if not path.is_file():
        raise InputError("no such DICOM-SEG / RTSTRUCT file", path=path)
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path=path) from exc


def _referenced_series(ds) -> list[str]:
    uids = [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])]
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for st in fr.get("RTReferencedStudySequence", []):
            uids += [str(s.SeriesInstanceUID) for s in st.get("RTReferencedSeriesSequence", [])]
    return uids


def _load_ref(reference, series, referenced: list[str]):
    """The reference series: the one asked for, else the one the object references, else the only one."""
    from medseg.export.reference import load_reference

    if series is None and len(set(referenced)) == 1:
        try:
            return load_reference(reference, referenced[0])
        except InputError:
            pass
    return load_reference(reference, series)


def import_masks(path: str | os.PathLike, reference: str | os.PathLike | None = None,
                 series: str | int | None = None, rt_fill: str = "centre") -> tuple[Image, dict[int, str]]:
    """Every segment / ROI of a DICOM-SEG or RTSTRUCT as a binary mask on the reference grid.

    RTSTRUCT contours are rasterised with ``rt_fill``: ``"centre"`` (pixel centres inside, as
    plastimatch does) or ``"edge"`` (also the pixels the contour line crosses, as OpenCV-based tools
    such as rt-utils do); see :mod:`medseg.export.raster`.

    Parameters
    ----------
    path : path
        The DICOM-SEG or RTSTRUCT file.
    reference : path, optional
        The referenced series (folder); see :func:`import_segmentation`.
    series : str or int, optional
        Series UID / index in ``reference``; by default the series the object references.
    rt_fill : {'centre', 'edge'}
        RTSTRUCT rasterisation rule.

    Returns
    -------
    masks : Image
        ``channels_first`` uint8 stack ``[segment, i, j, k]`` on the reference series grid (or the
        SEG's own grid when no reference is given).
    names : dict[int, str]
        Label value (segment number, or 1..N for RTSTRUCT ROIs) -> name, in channel order.

    Examples
    --------
    A DICOM-SEG of two segments on three slices made from pydicom's example CT (128 x 128 pixels), 5 mm apart:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.dicom_seg import write_dicom_seg
    >>> from medseg.export.reference import load_reference
    >>> root, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> (root / "ct").mkdir()
    >>> for k in range(3):
    ...     ds = examples.ct
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] += 5 * k
    ...     ds.save_as(root / "ct" / f"{k}.dcm")
    >>> ref = load_reference(root / "ct")
    >>> labels = np.zeros(ref.shape, np.uint8)  # (columns, rows, slices)
    >>> labels[40:80, 50:90, 1:] = 1; labels[10:20, 10:20, 0] = 2
    >>> out = write_dicom_seg(labels, ref, [segment_info(1, "liver"), segment_info(2, "spleen")], root / "seg.dcm")
    >>> masks, names = import_masks(root / "seg.dcm", root / "ct")
    >>> masks.array.shape, names, masks.array.sum(axis=(1, 2, 3)).tolist()
    ((2, 128, 128, 3), {1: 'liver', 2: 'spleen'}, [3200, 100])
    >>> import_masks(root / "seg.dcm")[0].array.shape  # without a reference: on the SEG's own grid
    (2, 128, 128, 3)
    """
    from medseg.export.resample import resample_to_reference

    path = Path(path)
    ds = _header(path)
    sop_class = str(ds.get("SOPClassUID", ""))
    referenced = _referenced_series(ds)
    if ds.get("Modality") == "SEG" or sop_class in SEG_SOP_CLASSES:
        from medseg.export.dicom_seg import check_seg_fits, read_seg_masks

        check_seg_fits(ds, path)  # from the header, before highdicom parses every segment (1.5 ms each)
        if reference is None:
            masks, names, _ = read_seg_masks(path)
            return masks, names
        from medseg.export.dicom_seg import read_seg_on_reference

        ref = _load_ref(reference, series, referenced)
        check_masks_fit(len(ds.get("SegmentSequence") or []), ref.shape, "segments", path)
        seg_for = str(ds.get("FrameOfReferenceUID", ""))
        if seg_for != ref.frame_of_reference_uid:
            raise InputError(f"the DICOM-SEG's frame of reference ({seg_for}) is not "
                             f"the reference series' ({ref.frame_of_reference_uid})", path=path)
        # frames placed on the slices they reference (any slice geometry: tilt, uneven spacing); a SEG on
        # another grid of the same frame of reference goes through its volume and world coordinates
        on_ref = read_seg_on_reference(path, ref)
        if on_ref is not None:
            arr, names, meta = on_ref
        else:  # each frame a slab of its thickness: a sparse SEG's frames are not smeared over the omitted ones
            masks, names, _ = read_seg_masks(path, slabs=True)
            meta = masks.meta
            arr = np.stack([resample_to_reference(Image(masks.array[c], masks.affine, dict(masks.meta)), ref,
                                                  require_cover=False) for c in range(masks.num_channels)])
        out = Image(arr.astype(np.uint8), ref.grid_affine(), {**ref.meta, **meta, "regular": ref.is_regular()}, True)
        return out, names
    if ds.get("Modality") == "RTSTRUCT" or "StructureSetROISequence" in ds:
        from medseg.export.rtstruct import read_rtstruct_masks

        if reference is None:
            reference = path.parent
            try:
                ref = _load_ref(reference, None, referenced)
            except InputError as exc:
                raise InputError(f"an RTSTRUCT needs its referenced series: pass --reference DIR ({exc.problem})",
                                 path=path) from exc
        else:
            ref = _load_ref(reference, series, referenced)
        from medseg.export.raster import FILL_RULES

        if rt_fill not in FILL_RULES:
            raise InputError(f"unknown contour fill rule {rt_fill!r} (use one of {', '.join(FILL_RULES)})")
        check_masks_fit(len(ds.get("StructureSetROISequence") or []), ref.shape, "ROIs", path)
        masks, names, skipped = read_rtstruct_masks(path, ref, fill=rt_fill)
        labels = {i + 1: name for i, name in enumerate(names.values())}
        meta = {**ref.meta, "source": str(path), "format": "rtstruct", "skipped_contours": skipped,
                "regular": ref.is_regular()}
        return Image(masks.astype(np.uint8), ref.grid_affine(), meta, True), labels
    raise InputError(f"neither a DICOM-SEG nor an RTSTRUCT (Modality {ds.get('Modality', '?')!r})", path=path)


def check_masks_fit(count: int, shape, what: str, path) -> None:
    """``InputError`` when ``count`` one-byte masks of ``shape``, held twice while they are imported (the masks and
    their label map's copy), exceed what this process can allocate: a small file declaring 100,000 ROIs or
    segments otherwise made NumPy ask for tens of gigabytes (an OOM kill, or 'out of memory' after a long wait).

    Examples
    --------
    >>> check_masks_fit(3, (512, 512, 300), "ROIs", "rt.dcm")  # 225 MiB x 2
    >>> check_masks_fit(100000, (512, 512, 300), "ROIs", "rt.dcm")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: rt.dcm: 100000 ROIs on a 512 x 512 x 300 grid need 7.2 TiB of masks, more than ...
    """
    from medseg.io.limits import claimed_bytes, size_text
    from medseg.system import allocatable_memory

    need, room = claimed_bytes((count, *shape), 1), allocatable_memory()
    if 2 * need > room:
        raise InputError(f"{count} {what} on a {' x '.join(str(int(s)) for s in shape)} grid need {size_text(need)} "
                         f"of masks, more than the {size_text(room)} of memory available (twice that while they "
                         "are imported): a damaged or hostile file, or too many structures for this machine",
                         path=path)


def combine_masks(masks: np.ndarray, values: list[int], overlap: str = "smallest") -> np.ndarray:
    """One label map from binary masks (first axis); where masks overlap, follow ``overlap``.

    Examples
    --------
    >>> m = np.zeros((2, 4), bool); m[0] = True; m[1, 1] = True   # a big mask holding a small one
    >>> combine_masks(m, [1, 2]).tolist()
    [1, 2, 1, 1]
    """
    from medseg.io.writers import label_dtype

    if overlap not in OVERLAP_POLICIES:
        raise InputError(f"unknown overlap policy {overlap!r} (use one of {', '.join(OVERLAP_POLICIES)})")
    masks = np.asarray(masks).astype(bool)
    out = np.zeros(masks.shape[1:], label_dtype(max(values, default=0)))
    if overlap == "error" and masks.size and (masks.sum(axis=0) > 1).any():
        raise InputError("segments overlap; a label map cannot hold them (use overlap='smallest' or 'order')")
    order = range(len(values))
    if overlap == "smallest":
        order = sorted(order, key=lambda c: -int(masks[c].sum()))
    for c in order:
        out[masks[c]] = values[c]
    return out


def import_segmentation(path: str | os.PathLike, reference: str | os.PathLike | None = None,
                        series: str | int | None = None, overlap: str = "smallest", rt_fill: str = "centre") -> Image:
    """A DICOM-SEG or RTSTRUCT as a label map on its referenced series' grid.

    Parameters
    ----------
    path : path
        The DICOM-SEG or RTSTRUCT file.
    reference : path, optional
        The referenced series (folder). Optional for DICOM-SEG (its own grid is used) and for an
        RTSTRUCT stored beside its series.
    series : str or int, optional
        Series UID / index in ``reference``; by default the series the object references.
    overlap : {'smallest', 'order', 'error'}
        How overlapping segments share voxels (see the module docstring).
    rt_fill : {'centre', 'edge'}
        RTSTRUCT rasterisation rule (see :func:`import_masks`).

    Returns
    -------
    Image
        Label map with ``meta["labels"]`` = {value: name}.

    Examples
    --------
    A DICOM-SEG of two segments on three slices made from pydicom's example CT (128 x 128 pixels), 5 mm apart:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from pydicom import examples
    >>> from pydicom.uid import generate_uid
    >>> from medseg.export.colors import segment_info
    >>> from medseg.export.dicom_seg import write_dicom_seg
    >>> from medseg.export.reference import load_reference
    >>> root, series = Path(tempfile.mkdtemp()), generate_uid()
    >>> (root / "ct").mkdir()
    >>> for k in range(3):
    ...     ds = examples.ct
    ...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ...     ds.SeriesInstanceUID = series
    ...     ds.ImagePositionPatient[2] += 5 * k
    ...     ds.save_as(root / "ct" / f"{k}.dcm")
    >>> ref = load_reference(root / "ct")
    >>> labels = np.zeros(ref.shape, np.uint8)  # (columns, rows, slices)
    >>> labels[40:80, 50:90, 1:] = 1; labels[10:20, 10:20, 0] = 2
    >>> out = write_dicom_seg(labels, ref, [segment_info(1, "liver"), segment_info(2, "spleen")], root / "seg.dcm")
    >>> imported = import_segmentation(root / "seg.dcm", root / "ct")
    >>> imported.shape, imported.array.dtype.name, imported.meta["labels"], bool((imported.array == labels).all())
    ((128, 128, 3), 'uint8', {1: 'liver', 2: 'spleen'}, True)
    """
    masks, names = import_masks(path, reference, series, rt_fill)
    if not masks.meta.get("regular", True):  # the arrays are per slice; the affine would misplace them
        raise InputError("the referenced series has tilted or unevenly spaced slices; a label map on a regular "
                         "grid cannot hold them (import_masks gives the per-slice masks)", path=path)
    labels = combine_masks(masks.array, list(names), overlap)
    return Image(labels, masks.affine, {**masks.meta, "labels": dict(names)})
