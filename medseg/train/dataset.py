"""Datasets in the MSD / nnU-Net layout: discovery, loading, integrity check, BraTS-sample conversion.

Layout::

    DATASET/dataset.json
    DATASET/imagesTr/<case>.nii.gz            (MSD: 3D, or 4D with channels last)
    DATASET/imagesTr/<case>_0000.nii.gz ...   (nnU-Net v2: one file per channel)
    DATASET/labelsTr/<case>.nii.gz
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import _UMASK, case_name, full_suffix, looks_full
from medseg.io.image import Image
from medseg.io.readers import ITK, NIFTI, read_image

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class Case:
    """One training case: its id, one or more channel files, and its label file (if any)."""

    id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class Dataset:
    """A dataset folder: its ``dataset.json`` content and its cases, sorted by id."""

    root: Path
    meta: dict
    cases: list[Case] = field(default_factory=list)

    @property
    def labels(self) -> dict[int, str]:
        """Label value → name (both MSD ``{"1": "x"}`` and nnU-Net v2 ``{"x": 1}`` forms)."""
        return parse_labels(self.meta.get("labels", {}))

    @property
    def channel_names(self) -> list[str]:
        ch = self.meta.get("channel_names", self.meta.get("modality", {"0": "image"}))
        return [str(ch[k]) for k in sorted(ch, key=int)]


def parse_labels(labels: dict) -> dict[int, str]:
    """Normalise a ``dataset.json`` label table to ``{value: name}``.

    Examples
    --------
    >>> parse_labels({"0": "background", "1": "tumour"})
    {0: 'background', 1: 'tumour'}
    >>> parse_labels({"background": 0, "tumour": 1})
    {0: 'background', 1: 'tumour'}
    """
    out: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.isdigit() and not str(k).isdigit()):
            out[int(v)] = str(k)
        elif isinstance(v, (list, tuple)):  # nnU-Net region labels: not supported as regions, keep first value
            out[int(v[0])] = str(k)
        else:
            out[int(k)] = str(v)
    return dict(sorted(out.items()))


def open_dataset(root: str | os.PathLike) -> Dataset:
    """Discover the cases of an MSD / nnU-Net dataset folder (nothing is read but file names and JSON)."""
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
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir():
        raise InputError("imagesTr/ is missing", path=root)
    by_case: dict[str, list[Path]] = {}
    for p in sorted(img_dir.iterdir()):
        if p.name.startswith(".") or full_suffix(p) not in NIFTI + (".nrrd", ".mha"):
            continue
        name = case_name(p)
        m = _CHANNEL.match(name)
        by_case.setdefault(m.group("case") if m else name, []).append(p)
    cases = []
    for cid, imgs in sorted(by_case.items()):
        label = None
        if lab_dir.is_dir():
            found = [q for q in lab_dir.glob(f"{cid}.*") if case_name(q) == cid]
            label = found[0] if found else None
        cases.append(Case(cid, sorted(imgs), label))
    if not cases:
        raise InputError("imagesTr/ holds no images", path=img_dir)
    return Dataset(root, meta, cases)


def load_case(case: Case, with_label: bool = True) -> tuple[Image, Image | None]:
    """Read a case: a channels-first float32 image (all channels) and its label map (or ``None``).

    Channel files must share one grid; a 4D MSD file contributes all its channels.
    """
    chans, ref = [], None
    for p in case.images:
        img = read_image(p)
        if ref is not None and not ref.same_grid(img):
            raise InputError(f"case {case.id}: channel files are on different grids", path=p)
        ref = ref or img
        arr = np.asarray(img.array, dtype=np.float32)
        chans.extend(list(arr) if img.channels_first else [arr])
    image = Image(np.stack(chans), ref.affine, {"source": str(case.images[0]), "case": case.id}, True)
    label = None
    if with_label and case.label is not None:
        from medseg.evaluate.cases import read_label_map

        lab = read_label_map(case.label)  # rejects NaN/inf, fractions, negatives, several channels
        top = int(np.asarray(lab.array).max(initial=0))
        if top > np.iinfo(np.int16).max:  # the int16 cast below would wrap it silently
            raise InputError(f"case {case.id}: label value {top} is out of range (max 32767)", path=case.label)
        if lab.shape != image.shape:  # else fingerprint/sampling fail later with an IndexError
            raise InputError(f"case {case.id}: label shape {lab.shape} != image shape {image.shape}", path=case.label)
        label = Image(np.asarray(lab.array).astype(np.int16, copy=False), lab.affine, {"source": str(case.label)})
    return image, label


def check_case(case: Case, allowed: set[int], atol: float = 1e-3) -> list[str]:
    """Problems of one case (empty list when fine): missing label, geometry mismatch, unknown label values."""
    if case.label is None:
        return [f"{case.id}: no label file in labelsTr"]
    try:
        image, label = load_case(case)
    except InputError as exc:
        return [f"{case.id}: {exc}"]
    problems = []
    if image.shape != label.shape:
        problems.append(f"{case.id}: image shape {image.shape} != label shape {label.shape}")
    elif not np.allclose(image.affine, label.affine, atol=atol):
        worst = np.abs(image.affine - label.affine).max()
        problems.append(f"{case.id}: image and label affines differ (max {worst:.3g} mm)")
    values = set(np.unique(label.array).tolist())
    extra = sorted(values - allowed)
    if extra:
        problems.append(f"{case.id}: label values {extra} are not in dataset.json labels {sorted(allowed)}")
    if not np.isfinite(image.array).all():
        problems.append(f"{case.id}: image has NaN or infinite values")
    return problems


def check_dataset(ds: Dataset, progress: bool = False) -> list[str]:
    """Integrity check of every case; returns the problems, each naming its case."""
    allowed = set(ds.labels)
    n_ch = None
    problems = []
    for case in _progress(ds.cases, progress, "checking"):
        problems.extend(check_case(case, allowed))
        if n_ch is None:
            n_ch = len(case.images)
        elif len(case.images) != n_ch:
            problems.append(f"{case.id}: {len(case.images)} channel files, other cases have {n_ch}")
    return problems


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=desc, transient=True)


# --- BraTS sample → MSD/nnU-Net -----------------------------------------------------------------
BRATS_LABELS = {"0": "background", "1": "necrosis", "2": "edema", "3": "non-enhancing", "4": "enhancing"}
_IMAGE_SUFFIXES = NIFTI + ITK  # what a patient folder's image may be; anything else (licence texts) is ignored


def convert_brats(src: str | os.PathLike, dst: str | os.PathLike, modalities: tuple[str, ...] = ("Flair", "T1c"),
                  label_file: str = "OTMultiClass", overwrite: bool = False) -> Dataset:
    """Convert the BraTS per-patient folder layout into nnU-Net v2 layout (``case_0000`` = first modality).

    Parameters
    ----------
    src : path
        One sub-folder per patient, holding ``<Modality>_*`` images and ``<label_file>.*`` (NIfTI, NRRD or MHA).
    dst : path
        Dataset folder to write; it must not exist or be empty, unless ``overwrite``.
    modalities : tuple of str
        File name prefixes, in channel order.
    label_file : str
        Label file name without suffix; a patient without one becomes an unlabelled case.
    overwrite : bool
        Replace ``dst`` if it already holds a dataset (a folder with ``dataset.json``); any other non-empty
        folder is refused, so that a mistyped ``-o`` cannot wipe unrelated files.

    Returns
    -------
    Dataset
        The written dataset.

    Notes
    -----
    Every input is read and its grid checked before anything is written. NIfTI files keep their bytes (a
    ``.nii`` is only gzip-compressed), so their headers stay exactly as released; other formats are read and
    written as NIfTI by medseg's reader and writer (geometry as SimpleITK reads it). The whole dataset is
    written into a hidden folder beside ``dst`` and renamed onto ``dst`` at the end: a failure never leaves a
    half dataset under ``dst`` (and with ``overwrite`` the previous dataset stays until the new one is complete).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise InputError("source folder does not exist", path=src)
    _check_destination(src, dst, overwrite)
    plan = _brats_plan(src, modalities, label_file)
    _check_grids(plan, modalities)
    with _staged_folder(src, dst, overwrite) as stage:
        training = _write_brats_cases(plan, modalities, stage)
        meta = {"name": "BraTS sample", "description": f"converted from {src.name} by medseg",
                "tensorImageSize": "4D", "channel_names": {str(i): m for i, m in enumerate(modalities)},
                "modality": {str(i): m for i, m in enumerate(modalities)}, "labels": BRATS_LABELS,
                "numTraining": len(training), "training": training, "file_ending": ".nii.gz",
                "normalization": "zscore"}
        (stage / "dataset.json").write_text(json.dumps(meta, indent=1))
    return open_dataset(dst)


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, overlaps the source, or is a non-empty folder (see ``convert_brats``)."""
    s, d = src.resolve(), dst.resolve()
    if d == s or d in s.parents or s in d.parents:  # replacing it would delete inputs, or re-read outputs
        raise InputError(f"output folder must be outside the source folder {src}", path=dst)
    if not dst.exists():
        return
    if not dst.is_dir():
        raise InputError("output exists and is not a folder", path=dst)
    if not any(dst.iterdir()):
        return
    if not overwrite:
        raise InputError("output folder is not empty (pass --overwrite to replace the dataset in it)", path=dst)
    if not (dst / "dataset.json").is_file():
        raise InputError("output folder is not empty and holds no dataset.json: refusing to replace it", path=dst)


def _brats_plan(src: Path, modalities: tuple[str, ...], label_file: str) -> list[tuple[str, dict, Path | None]]:
    """``(patient id, {modality: file}, label file or None)`` per patient folder, sorted by id."""
    plan = []
    for pat in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(q for q in pat.iterdir() if q.is_file() and full_suffix(q) in _IMAGE_SUFFIXES)
        files = {}
        for mod in modalities:
            hits = [q for q in images if q.name.startswith(mod + "_") or case_name(q) == mod]
            if not hits:
                raise InputError(f"no {mod} image in patient folder", path=pat)
            files[mod] = hits[0]
        lab = [q for q in images if case_name(q) == label_file]
        plan.append((pat.name, files, lab[0] if lab else None))
    if not plan:
        raise InputError("no patient folders found", path=src)
    return plan


def _check_grids(plan: list, modalities: tuple[str, ...]) -> None:
    """Read every file once (so a corrupt one fails before anything is written) and compare the grids."""
    for pid, files, lab in plan:
        ref = read_image(files[modalities[0]])
        for p in list(files.values())[1:] + ([lab] if lab else []):
            if not ref.same_grid(read_image(p)):
                raise InputError(f"patient {pid}: not on the grid of {files[modalities[0]].name}", path=p)


def _write_brats_cases(plan: list, modalities: tuple[str, ...], stage: Path) -> list[dict]:
    """Write every case into ``stage`` (nnU-Net v2 names); returns the ``training`` list of ``dataset.json``."""
    (stage / "imagesTr").mkdir()
    (stage / "labelsTr").mkdir()
    training = []
    for pid, files, lab in plan:
        for i, mod in enumerate(modalities):
            _write_nifti_gz(files[mod], stage / "imagesTr" / f"{pid}_{i:04d}.nii.gz")
        if lab is not None:
            _write_nifti_gz(lab, stage / "labelsTr" / f"{pid}.nii.gz")
            training.append({"image": f"./imagesTr/{pid}.nii.gz", "label": f"./labelsTr/{pid}.nii.gz"})
    return training


def _write_nifti_gz(source: Path, dest: Path) -> None:
    """``dest`` (``.nii.gz``) with the content of ``source``: its bytes if it is NIfTI, else converted."""
    import gzip
    import shutil

    from medseg.io.readers import write_unchecked

    suffix = full_suffix(source)
    if suffix == ".nii.gz":
        shutil.copyfile(source, dest)
    elif suffix == ".nii":
        with open(source, "rb") as fin, gzip.open(dest, "wb", compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    else:  # NRRD/MHA/MHD: a copy would be a mis-named file, so go through medseg's reader and writer
        write_unchecked(read_image(source), dest, ".nii.gz")  # OSError left to _staged_folder, which names dst


@contextlib.contextmanager
def _staged_folder(src: Path, dst: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden empty folder beside ``dst``; on success it replaces ``dst``, on failure it is removed.

    An existing ``dst`` is checked again just before the swap (another convert may have written it meanwhile),
    then moved aside and deleted only once the new folder is in place, so at no time does ``dst`` hold a mix
    of old and new files.
    """
    import shutil

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        stage = _hidden_folder(dst, ".tmp")
    except OSError as exc:
        raise InputError(f"cannot write output ({exc.strerror or exc})", path=dst) from exc
    try:
        yield stage
        _check_destination(src, dst, overwrite)
        _replace_folder(stage, dst)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        full = looks_full(exc, dst.parent)
        raise InputError(f"cannot write output ({'disk full: ' if full else ''}{exc.strerror or exc})",
                         path=dst) from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _hidden_folder(dst: Path, suffix: str) -> Path:
    """A new empty hidden folder beside ``dst``, with the mode a plain ``mkdir`` would give it."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=suffix, dir=dst.parent))
    os.chmod(folder, 0o777 & ~_UMASK)  # mkdtemp makes 0700, and the staged folder becomes the dataset
    return folder


def _replace_folder(new: Path, dst: Path) -> None:
    """Rename ``new`` onto ``dst``: an empty ``dst`` is removed first, a non-empty one is renamed aside
    first and removed after (or put back if ``new`` cannot be renamed in)."""
    import shutil

    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()  # Windows cannot rename onto an existing folder, even an empty one
    if not dst.exists():
        os.replace(new, dst)
        return
    old = _hidden_folder(dst, ".old")
    try:
        os.replace(dst, old / dst.name)
    except OSError:
        old.rmdir()
        raise
    try:
        os.replace(new, dst)
    except OSError:
        _restore(old / dst.name, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _restore(aside: Path, dst: Path) -> None:
    """Put the previous dataset back after a failed swap; if even that fails, say where it is."""
    try:
        os.replace(aside, dst)
    except OSError as exc:
        raise InputError(f"cannot write output ({exc.strerror or exc}); the previous dataset could not be put "
                         f"back and is in {aside}", path=dst) from exc
    aside.parent.rmdir()
