"""Datasets in the MSD / nnU-Net layout: discovery and loading (integrity check: :mod:`medseg.train.dataset_check`;
BraTS-sample conversion: :mod:`medseg.train.brats`).

Layout::

    DATASET/dataset.json
    DATASET/imagesTr/<case>.nii.gz            (MSD: 3D, or 4D with channels last)
    DATASET/imagesTr/<case>_0000.nii.gz ...   (nnU-Net v2: one file per channel)
    DATASET/labelsTr/<case>.nii.gz
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import case_name
from medseg.io.image import Image
from medseg.io.readers import NIFTI, check_finite, image_files, read_image

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
DATASET_SUFFIXES = NIFTI + (".nrrd", ".mha")  # what imagesTr/ and labelsTr/ are searched for


@dataclass
class Case:
    """One training case: its id, one or more channel files, and its label file (if any).

    Attributes
    ----------
    id : str
        Case id: ``<id>_0000.nii.gz`` ... or ``<id>.nii.gz`` in imagesTr, ``<id>.nii.gz`` in labelsTr.
    images : list of Path
        One file per channel (nnU-Net v2), or one 3D or 4D file (MSD).
    label : Path or None
        ``labelsTr/<id>.*``; None for an unlabelled case.
    """

    id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class Dataset:
    """A dataset folder: its ``dataset.json`` content and its cases, sorted by id.

    Attributes
    ----------
    root : Path
        The dataset folder.
    meta : dict
        The content of ``dataset.json``.
    cases : list of Case

    Examples
    --------
    >>> ds = Dataset(Path("liver"), {"labels": {"0": "background", "1": "liver"}, "channel_names": {"0": "CT"}})
    >>> ds.labels, ds.channel_names
    ({0: 'background', 1: 'liver'}, ['CT'])
    """

    root: Path
    meta: dict
    cases: list[Case] = field(default_factory=list)

    @property
    def labels(self) -> dict[int, str]:
        """Label value → name (both MSD ``{"1": "x"}`` and nnU-Net v2 ``{"x": 1}`` forms)."""
        return parse_labels(self.meta.get("labels", {}), self.root / "dataset.json")

    @property
    def channel_names(self) -> list[str]:
        """Channel names in channel order (``channel_names``, or MSD's ``modality``; ``["image"]`` when neither)."""
        ch = self.meta.get("channel_names", self.meta.get("modality", {"0": "image"}))
        return [str(ch[k]) for k in sorted(ch, key=int)]


def parse_labels(labels: dict, path=None) -> dict[int, str]:
    """Normalise a ``dataset.json`` label table to ``{value: name}`` (:func:`medseg.io.labels.class_table`).

    Examples
    --------
    >>> parse_labels({"0": "background", "1": "tumour"})
    {0: 'background', 1: 'tumour'}
    >>> parse_labels({"background": 0, "tumour": 1})
    {0: 'background', 1: 'tumour'}
    """
    from medseg.io.labels import class_table

    return class_table(labels, path)


def open_dataset(root: str | os.PathLike) -> Dataset:
    """Discover the cases of an MSD / nnU-Net dataset folder (nothing is read but file names and JSON).

    The files of imagesTr form cases as :func:`group_case_files` says, given the channel count of dataset.json
    (``channel_names`` or ``modality``, numbering the channels 0 ... n-1; one when it names none) and the case
    ids labelsTr holds a label for: a case's label is ``labelsTr/<case>.nii.gz`` (or ``.nii``, ``.nrrd``,
    ``.mha``). So nnU-Net v2 (``<case>_0000.nii.gz`` ...) and MSD (``<case>.nii.gz``, ids such as ``patient_0001``
    too) both work; a lone ``patient_0000.nii.gz`` with one channel is ambiguous, and is case ``patient`` (the
    nnU-Net convention) unless its label is ``patient_0000.nii.gz``. A broken link in imagesTr or labelsTr is an
    ``InputError`` naming it.

    Parameters
    ----------
    root : path
        The dataset folder: ``dataset.json`` (with a ``labels`` table holding 0), ``imagesTr/``, ``labelsTr/``.

    Returns
    -------
    Dataset
        Its cases sorted by id; unlabelled ones have ``label`` None.

    Examples
    --------
    >>> import json, tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["imagesTr/a_0000.nii.gz", "imagesTr/b_0000.nii.gz", "labelsTr/a.nii.gz"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     (root / name).touch()  # file names are all that is read
    >>> _ = (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))
    >>> [(case.id, case.label is not None) for case in open_dataset(root).cases]
    [('a', True), ('b', False)]
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset folder does not exist", path=root)
    js = root / "dataset.json"
    if not js.is_file():
        raise InputError("not an MSD/nnU-Net dataset: dataset.json is missing", path=root)
    try:
        meta = json.loads(js.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON ({exc})", path=js) from exc
    if "labels" not in meta:
        raise InputError("dataset.json has no 'labels' table", path=js)
    try:
        if not isinstance(meta["labels"], dict):
            raise TypeError(f"got {type(meta['labels']).__name__}")
        labels = parse_labels(meta["labels"], js)
    except InputError:  # already one line naming the file and the entry
        raise
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"'labels' must map integer values to names, e.g. {{\"0\": \"background\"}} ({exc})",
                         path=js) from None
    if 0 not in labels:
        raise InputError(f"'labels' has no 0 (background): {labels}", path=js)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir():
        raise InputError("imagesTr/ is missing", path=root)
    labels_by_case: dict[str, Path] = {}
    if lab_dir.is_dir():
        for q in image_files(lab_dir, DATASET_SUFFIXES):
            labels_by_case.setdefault(case_name(q), q)  # a direct lookup: ids may hold glob characters ([1])
    by_case = group_case_files(image_files(img_dir, DATASET_SUFFIXES), _channel_count(meta, js),
                               set(labels_by_case) if lab_dir.is_dir() else None)
    cases = [Case(cid, imgs, labels_by_case.get(cid)) for cid, imgs in sorted(by_case.items())]
    if not cases:
        raise InputError("imagesTr/ holds no images", path=img_dir)
    return Dataset(root, meta, cases)


def _channel_count(meta: dict, js: Path) -> int:
    """The number of channels dataset.json names (``channel_names``, or MSD's ``modality``; one when neither),
    checked to number them 0 ... n-1."""
    key = "channel_names" if "channel_names" in meta else "modality"
    ch = meta.get(key, {"0": "image"})
    keys = sorted(str(k) for k in ch) if isinstance(ch, dict) else None
    if not keys or keys != sorted(str(i) for i in range(len(keys))):
        raise InputError(f"'{key}' must map the channel numbers 0 ... n-1 to names, e.g. {{\"0\": \"CT\"}}, "
                         f"got {json.dumps(ch)[:80]}", path=js)
    return len(keys)


def group_case_files(files: list[Path], channels: int, labelled: set[str] | None = None) -> dict[str, list[Path]]:
    """Case id → its image files (in name order), for the image ``files`` of one folder and a ``channels`` count.

    nnU-Net v2 names one file per channel, ``<case>_0000``, ``<case>_0001``, ... (a single-channel dataset too:
    ``<case>_0000``); MSD names one file ``<case>`` (3D, or 4D holding the channels), and its ids may end in four
    digits themselves (``patient_0001``). The rule, stem by stem (the name before ``_NNNN``): a stem's files are one
    case when their channel numbers are exactly ``0000`` ... ``channels - 1``, or, with several channels, some of
    them in a folder where another stem has them all and none goes beyond (a case missing a channel file, which
    reading it then reports by name); otherwise each of its files is a
    case of its own, named by its whole name (``x_0000``, ``x_0001``, ``x_0002`` with one channel are three cases).
    A stem that is also a file's whole name is never grouped. Files without ``_NNNN`` are always their own case.

    ``labelled`` (a dataset's labelsTr case ids) decides where the names alone cannot: a stem is grouped when
    labelsTr holds the stem and none of its files' whole names, and kept whole in the opposite case. So a lone
    ``patient_0000.nii.gz`` in a single-channel folder is ambiguous and is case ``patient`` (the nnU-Net
    convention wins), unless labelsTr holds ``patient_0000.nii.gz`` and not ``patient.nii.gz``.

    Examples
    --------
    >>> names = lambda files, n, lab=None: sorted(group_case_files([Path(f) for f in files], n, lab))
    >>> names(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"], 2)
    ['a', 'b']
    >>> names(["a_0000.nii.gz", "b_0000.nii.gz"], 1)
    ['a', 'b']
    >>> names(["patient_0000.nii.gz", "patient_0001.nii.gz"], 1)
    ['patient_0000', 'patient_0001']
    >>> names(["patient_0000.nii.gz"], 1), names(["patient_0000.nii.gz"], 1, {"patient_0000"})
    (['patient'], ['patient_0000'])
    >>> names(["a_0000.nii.gz", "b_0000.nii.gz", "c_0001.nii.gz"], 1)  # one stray file renames nothing else
    ['a', 'b', 'c_0001']
    >>> names(["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"], 2)  # b misses a channel: still case b
    ['a', 'b']
    >>> names(["BRATS_0001.nii.gz", "BRATS_0002.nii.gz"], 4)  # MSD 4D ids, not channels
    ['BRATS_0001', 'BRATS_0002']
    """
    parsed = [(p, case_name(p), _CHANNEL.match(case_name(p))) for p in files]
    found: dict[str, set[int]] = {}
    for _, _, m in parsed:
        if m:
            found.setdefault(m.group("case"), set()).add(int(m.group("ch")))
    plain = {name for _, name, m in parsed if not m}
    wanted = set(range(channels))
    # a stem with some channels only is a case missing a file when the folder is plainly nnU-Net-named (one stem
    # complete, no number beyond the channels); else its files are cases of their own (MSD 4D ids such as BRATS_0001)
    nnunet_named = any(ch == wanted for ch in found.values()) and all(max(ch) < channels for ch in found.values())

    whole_labelled = {m.group("case") for _, name, m in parsed if m and labelled is not None and name in labelled}

    def grouped(stem: str) -> bool:
        if stem in plain:
            return False
        if labelled is not None and (stem in labelled) != (stem in whole_labelled):
            return stem in labelled
        chans = found[stem]
        return chans == wanted or (channels > 1 and chans < wanted and nnunet_named)

    group = {stem: grouped(stem) for stem in found}  # once per stem, not per file
    cases: dict[str, list[Path]] = {}
    for p, name, m in parsed:
        cases.setdefault(m.group("case") if m and group[m.group("case")] else name, []).append(p)
    for paths in cases.values():
        _one_file_per_name(paths)
    return {k: sorted(v) for k, v in cases.items()}


def _one_file_per_name(paths: list[Path]) -> None:
    """``InputError`` when two of a case's files are one name in two formats (``a.nii.gz``, ``a.mha``): they were
    taken for two channels (stacked silently when the model has two), but they are two images with one case name."""
    seen: dict[str, Path] = {}
    for p in sorted(paths):
        if case_name(p) in seen:
            raise InputError(f"{seen[case_name(p)].name} and {p.name} are both case '{case_name(p)}' (one output "
                             "name for two images); rename or move one", path=p.parent)
        seen[case_name(p)] = p


def load_case(case: Case, with_label: bool = True, labels=None, channels: int | None = None,
              named_by: str = "dataset.json", orientation: str | None = None) -> tuple[Image, Image | None]:
    """Read a case: a channels-first float32 image (all channels) and its label map (or ``None``).

    Channel files must share one grid; a 4D MSD file contributes all its channels. NaN or infinite voxels are
    refused (they would make the loss NaN). Given ``labels`` (the allowed values) and ``channels`` (the dataset's
    count), a label value outside them or another number of channels is refused too, naming the case (and
    ``named_by``, where those came from).

    Parameters
    ----------
    case : Case
        Its files.
    with_label : bool
        Read the label file too.
    labels, channels, named_by : optional
        The allowed label values, the expected number of channels, and where they came from (for messages).
    orientation : str, optional
        Axis codes (``Plan.orientation``) both are brought to (:func:`medseg.io.orientation.reorient`).

    Returns
    -------
    image : Image
        float32 (float64 when a file is), channels first, on the first file's grid.
    label : Image or None
        int16, on the image's grid (a label file holding its voxels in another axis order is re-indexed).

    Examples
    --------
    >>> import tempfile
    >>> from medseg.io.writers import write_image
    >>> folder, affine = Path(tempfile.mkdtemp()), np.diag([2.0, 1.0, 1.0, 1.0])
    >>> for name in ("a_0000.nii.gz", "a_0001.nii.gz", "a.nii.gz"):
    ...     _ = write_image(Image(np.zeros((4, 4, 4), np.uint8), affine), folder / name)
    >>> image, label = load_case(Case("a", [folder / "a_0000.nii.gz", folder / "a_0001.nii.gz"], folder / "a.nii.gz"))
    >>> image.array.shape, image.array.dtype, image.spacing, label.array.dtype
    ((2, 4, 4, 4), dtype('float32'), (2.0, 1.0, 1.0), dtype('int16'))
    """
    chans, ref = [], None
    for p in case.images:
        img = read_image(p)
        check_finite(img, p)
        if ref is not None and not ref.same_grid(img):  # say how, as dataset check says it of labels
            how = (f"shape {img.shape} against {ref.shape}" if img.shape != ref.shape
                   else f"voxels up to {img.grid_offset_mm(ref):.3g} mm apart")
            raise InputError(f"case {case.id}: channel files are on different grids ({how} in "
                             f"{case.images[0].name})", path=p)
        ref = ref or img
        # float64 files stay float64: values beyond float32's 3.4e38 (x1e300) are finite, normalised in float64
        arr = np.asarray(img.array, dtype=np.float64 if img.array.dtype == np.float64 else np.float32)
        chans.extend(list(arr) if img.channels_first else [arr])
    if channels is not None and len(chans) != channels:
        raise InputError(f"case {case.id}: {len(chans)} channel(s), {named_by} names {channels}",
                         path=case.images[0])
    image = Image(np.stack(chans), ref.affine, {"source": str(case.images[0]), "case": case.id}, True)
    label = None
    if with_label and case.label is not None:
        from medseg.evaluate.cases import read_label_map
        from medseg.io.orientation import reorient_onto

        lab = read_label_map(case.label)  # rejects NaN/inf, fractions, negatives, several channels
        # the image's voxels stored in another axis order (an LPS label of a RAS image): re-indexed, else it would
        # be used mirrored; within half a voxel the correspondence is unambiguous
        tol = 0.5 * min(image.spacing)
        if not lab.same_grid(image, tol):
            lab = reorient_onto(lab, image, tol) or lab
        top = int(np.asarray(lab.array).max(initial=0))
        if top > np.iinfo(np.int16).max:  # the int16 cast below would wrap it silently
            raise InputError(f"case {case.id}: label value {top} is out of range (max 32767)", path=case.label)
        if lab.shape != image.shape:  # else fingerprint/sampling fail later with an IndexError
            raise InputError(f"case {case.id}: label shape {lab.shape} != image shape {image.shape}", path=case.label)
        if not lab.same_grid(image, tol):  # sloppy headers are common (nnU-Net warns too): used voxel for voxel
            warnings.warn(f"case {case.id}: the label's grid is up to {lab.grid_offset_mm(image):.3g} mm from the "
                          "image's; its voxels are used as the image's (see medseg dataset check)")  # no stacklevel:
            # one place, so the default filter says it once per case, not once per caller (plan, cache, validation)
        label = Image(np.asarray(lab.array).astype(np.int16, copy=False), lab.affine, {"source": str(case.label)})
        if labels is not None:
            extra = sorted(set(np.unique(label.array).tolist()) - set(labels))
            if extra:
                raise InputError(f"case {case.id}: label values {extra} are not in {named_by} labels "
                                 f"{sorted(labels)}", path=case.label)
    if orientation is not None:  # the label by the image's transform: one grid, one re-indexing
        from medseg.io.orientation import reorient

        if label is not None:
            label = reorient(Image(label.array, image.affine, label.meta), orientation)[0]
        image = reorient(image, orientation)[0]
    return image, label


def _progress(items, enabled: bool, desc: str):
    from medseg.progress import track

    return track(items, desc, enabled)
