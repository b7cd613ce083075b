"""The BraTS sample's per-patient folders (one file per modality + ``OTMultiClass``) → MSD/nnU-Net layout.

Written into a hidden folder beside the destination and renamed into place, so that no failure leaves half a
dataset; read by :func:`medseg.train.dataset.open_dataset` afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import _UMASK, case_name, deferred_interrupts, full_suffix, looks_full
from medseg.io.readers import ITK, NIFTI, read_image
from medseg.train.dataset import Dataset, open_dataset

# nnU-Net v2 form (name -> value), as the rest of the written dataset (``_0000`` files, ``channel_names``,
# ``file_ending``): v2 reads every value with int(), so MSD's {"0": "background"} fails there; medseg reads both
BRATS_LABELS = {"background": 0, "necrosis": 1, "edema": 2, "non-enhancing": 3, "enhancing": 4}
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
    modalities : tuple of str, or text
        File name prefixes, in channel order (``"Flair,T1c"`` also works); each must match exactly one file
        (``<Modality>_*`` or ``<Modality>.*``) per patient, as must the label.
    label_file : str
        Label file name without suffix; a patient without one becomes an unlabelled case in ``imagesTs``
        (nnU-Net's place for them: ``imagesTr`` holds labelled cases only). At least one patient must have one.
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

    Examples
    --------
    Two patients, the second without a label:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> src = Path(tempfile.mkdtemp()) / "brats"
    >>> for patient, files in (("p1", ["Flair_p1", "T1c_p1", "OTMultiClass"]), ("p2", ["Flair_p2", "T1c_p2"])):
    ...     (src / patient).mkdir(parents=True)
    ...     for name in files:
    ...         _ = write_image(Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), src / patient / f"{name}.nii.gz")
    >>> ds = convert_brats(src, src.parent / "dataset")
    >>> sorted(p.relative_to(ds.root).as_posix() for p in ds.root.rglob("*.nii.gz"))  # doctest: +NORMALIZE_WHITESPACE
    ['imagesTr/p1_0000.nii.gz', 'imagesTr/p1_0001.nii.gz', 'imagesTs/p2_0000.nii.gz', 'imagesTs/p2_0001.nii.gz',
     'labelsTr/p1.nii.gz']
    >>> [(case.id, len(case.images)) for case in ds.cases], ds.labels[4]
    ([('p1', 2)], 'enhancing')
    """
    src, dst = Path(src), Path(dst)
    if isinstance(modalities, str):  # "Flair,T1c" as on the command line, not its characters
        modalities = tuple(m.strip() for m in modalities.split(",") if m.strip())
    if not modalities or len(set(modalities)) != len(modalities):
        raise InputError(f"--modalities must name one or more different modalities, got {','.join(modalities)!r}")
    if not src.is_dir():
        raise InputError("source folder does not exist", path=src)
    _check_destination(src, dst, overwrite)
    plan = _brats_plan(src, modalities, label_file)
    _check_grids(plan, modalities)
    with _staged_folder(src, dst, overwrite) as stage:
        training, test = _write_brats_cases(plan, modalities, stage)
        meta = {"name": "BraTS sample", "description": f"converted from {src.name} by medseg",
                "tensorImageSize": "4D", "channel_names": {str(i): m for i, m in enumerate(modalities)},
                "modality": {str(i): m for i, m in enumerate(modalities)}, "labels": BRATS_LABELS,
                "numTraining": len(training), "training": training, "numTest": len(test), "test": test,
                "file_ending": ".nii.gz", "normalization": "zscore"}
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
            files[mod] = _only(hits, mod, pat)
        lab = [q for q in images if case_name(q) == label_file]
        plan.append((pat.name, files, _only(lab, label_file, pat) if lab else None))
    if not plan:
        raise InputError("no patient folders found", path=src)
    if all(lab is None for _, _, lab in plan):  # a mistyped --label: the dataset would have no training case
        raise InputError(f"no patient folder holds a label file {label_file}.* (--label)", path=src)
    return plan


def _only(hits: list[Path], what: str, pat: Path) -> Path:
    """The one file of ``hits``; several (``Flair_a``, ``Flair_b``; ``x.nii``, ``x.mha``) are refused: taking the
    first by name would put an arbitrary one in the dataset without a word."""
    if len(hits) > 1:
        raise InputError(f"{len(hits)} files match {what}: {', '.join(q.name for q in hits)}; keep one", path=pat)
    return hits[0]


def _check_grids(plan: list, modalities: tuple[str, ...]) -> None:
    """Read every file once (so a corrupt one fails before anything is written), compare the grids, and check
    the label maps' values (integers among the BraTS labels)."""
    from medseg.evaluate.cases import read_label_map

    for pid, files, lab in plan:
        ref = read_image(files[modalities[0]])
        for p in list(files.values())[1:] + ([lab] if lab else []):
            img = read_label_map(p) if p == lab else read_image(p)
            if not ref.same_grid(img):
                raise InputError(f"patient {pid}: not on the grid of {files[modalities[0]].name}", path=p)
            if p == lab:
                extra = sorted(set(np.unique(img.array).tolist()) - set(BRATS_LABELS.values()))
                if extra:
                    raise InputError(f"patient {pid}: label values {extra} are not BraTS labels 0-4", path=p)


def _write_brats_cases(plan: list, modalities: tuple[str, ...], stage: Path) -> tuple[list[dict], list[str]]:
    """Write every case into ``stage`` (nnU-Net v2 names): labelled ones into ``imagesTr``/``labelsTr``, the
    others into ``imagesTs``; returns the ``training`` and ``test`` lists of ``dataset.json``."""
    (stage / "imagesTr").mkdir()
    (stage / "labelsTr").mkdir()
    training, test = [], []
    for pid, files, lab in plan:
        images = "imagesTr" if lab is not None else "imagesTs"
        (stage / images).mkdir(exist_ok=True)
        names = [f"./{images}/{pid}_{i:04d}.nii.gz" for i in range(len(modalities))]
        for name, mod in zip(names, modalities):
            _write_nifti_gz(files[mod], stage / name)
        # the files themselves, a list for several channels (MONAI's load_decathlon_datalist and LoadImaged stack
        # them); MSD's ./imagesTr/<case>.nii.gz names a 4D file this layout does not have
        image = names if len(names) > 1 else names[0]
        if lab is not None:
            _write_nifti_gz(lab, stage / "labelsTr" / f"{pid}.nii.gz")
            training.append({"image": image, "label": f"./labelsTr/{pid}.nii.gz"})
        else:
            test.append(image)
    return training, test


def _write_nifti_gz(source: Path, dest: Path) -> None:
    """``dest`` (``.nii.gz``) with the content of ``source``: its bytes if it is NIfTI, else converted."""
    import gzip
    import shutil

    from medseg.io.writers import write_unchecked

    suffix = full_suffix(source)
    if suffix == ".nii.gz":
        shutil.copyfile(source, dest)
    elif suffix == ".nii":  # mtime 0: gzip's header otherwise holds the time, and two conversions would differ
        with open(source, "rb") as fin, open(dest, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as fout:
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

    folder = Path(tempfile.mkdtemp(prefix=f".{dst.name[:64]}.", suffix=suffix, dir=dst.parent))
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
    with deferred_interrupts():  # between the two renames dst does not exist: a Ctrl-C there would keep it so
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
