"""Predicting a file, a folder of cases or DICOM series: skip finished outputs, shard a cohort, write atomically.

A folder of image files is a cohort of cases (``case_0000`` channel files grouped). A folder without image files
is searched for DICOM series (recursively, :func:`medseg.io.dicom.discover_series`): every volume series is a
case, or only the one ``series`` picks (index or SeriesInstanceUID, as ``medseg info`` lists them).
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, case_name, full_suffix
from medseg.io.image import Image
from medseg.io.readers import is_dicom_file, read_image

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_CH = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")

if TYPE_CHECKING:
    from medseg.io.dicom import SeriesInfo


@dataclass
class Case:
    """One case to predict.

    Attributes
    ----------
    name : str
        The case id: the output is ``<name>.nii.gz``.
    paths : list of Path
        Its image files (one per channel); for a DICOM series, the file or folder it was discovered in.
    series : SeriesInfo or None
        The DICOM series (from :func:`medseg.io.dicom.discover_series` on ``paths[0]``), else ``None``.
    """

    name: str
    paths: list[Path]
    series: "SeriesInfo | None" = None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` → ``(i, n)`` with 0 <= i < n.

    Examples
    --------
    >>> parse_shard("1/4")
    (1, 4)
    """
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(f"--shard must be i/n with 0 <= i < n, got '{text}'")
    return int(m.group(1)), int(m.group(2))


def list_cases(path: Path, channels: int = 1, series: str | int | None = None,
               notes: list[str] | None = None) -> list[Case]:
    """The cases under ``path``: a file, a folder of image files, or DICOM series.

    Parameters
    ----------
    path : Path
        An image file, a folder of image files, a DICOM file, or a folder holding DICOM series (one folder
        with the files of several series, or subfolders each holding series).
    channels : int
        The model's input channels: with more than one, ``case_0000``, ``case_0001``, ... files form one case.
    series : str or int, optional
        Only this DICOM series (index or SeriesInstanceUID, picked by :func:`medseg.io.dicom.select_series`).
        A folder that also holds image files is then searched for DICOM series, not listed as images.
    notes : list of str, optional
        Receives the notes on skipped DICOM series (see :func:`dicom_cases`) instead of stderr.

    Returns
    -------
    list of Case
        Image files in name order; DICOM series in discovery order, named by :func:`series_case_names`.
    """
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_file():
        if series is None:
            return [Case(case_name(path), [path])]
        if not is_dicom_file(path):
            raise InputError("--series picks a DICOM series, but this is not a DICOM file", path=path)
        return dicom_cases(path, series, notes)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and full_suffix(p) in IMAGE_SUFFIXES)
    if not files or series is not None:
        return dicom_cases(path, series, notes)
    groups: dict[str, list[Path]] = {}
    for p in files:
        m = _CH.match(case_name(p))
        grouped = m and (channels > 1 or m.group("ch") == "0000")  # nnU-Net names: case_0000 is case
        key = m.group("case") if grouped else case_name(p)
        groups.setdefault(key, []).append(p)
    return [Case(name, paths) for name, paths in sorted(groups.items())]


def dicom_cases(path: Path, series: str | int | None = None, notes: list[str] | None = None) -> list[Case]:
    """One case per DICOM volume series under ``path``, or only the one ``series`` picks.

    Images that can never be volumes (screenshots, colour, cine) are skipped with a note, as ``medseg convert``
    does: appended to ``notes`` when given (a caller that still validates prints them once that passed), else
    printed on stderr. A picked series that is not a volume is an ``InputError``.
    """
    from medseg.io.dicom import discover_series, no_series_message, select_series

    found = discover_series(path)
    volumes = [s for s in found if s.is_volume]
    names = series_case_names(volumes, path)  # over all volumes: a series keeps its name when picked alone
    if series is not None:
        s = select_series(found, series, path)
        if not s.is_volume:
            raise InputError(f"series {s.label()} cannot be predicted: {s.problem}", path=s.folder)
        return [Case(names[s.index], [path], s)]
    if not volumes:
        if not found:
            raise InputError(no_series_message(path), path=path)
        raise InputError(f"no DICOM volume series found ({len(found)} non-volume image series: "
                         f"{found[0].problem})", path=path)
    skipped = [f"medseg: note: {s.folder}: skipped series {s.label()}: {s.problem}" for s in found if not s.is_volume]
    if notes is not None:
        notes.extend(skipped)
    else:  # said once, on stderr, without stopping the cohort
        for line in skipped:
            print(line, file=sys.stderr)
    return [Case(names[s.index], [path], s) for s in volumes]


def series_case_names(series: "list[SeriesInfo]", root: Path) -> dict[int, str]:
    """Output names of the DICOM series discovered under ``root`` (``SeriesInfo.index`` → name).

    A lone series is named after ``root`` (the folder, or the file without suffix), like an image file.
    Otherwise a series alone in its own folder below ``root`` is named after that folder's path relative to
    ``root`` (parts joined by ``_``), and series sharing a folder after ``<SeriesNumber>_<description>``
    (characters other than letters and digits replaced by ``_``). Names that still collide get the last six
    digits of their SeriesInstanceUID (then their index) appended. Names do not depend on which series are
    picked, so finished outputs are recognised whether the folder or one series was predicted.
    """
    if len(series) == 1:
        return {series[0].index: case_name(root) if root.is_file() else (root.resolve().name or "series")}
    base = root.resolve()
    per_folder = Counter(s.folder.resolve() for s in series)
    names = {}
    for s in series:
        folder = s.folder.resolve()
        if per_folder[folder] == 1 and folder != base and folder.is_relative_to(base):
            names[s.index] = "_".join(folder.relative_to(base).parts)
        else:
            names[s.index] = _header_name(s)
    for extra in (lambda s: re.sub(r"\D", "", s.series_uid)[-6:], lambda s: str(s.index)):
        # T1 and t1 are one file on Windows and macOS: compare names as those systems do, keep their spelling
        counts = Counter(n.casefold() for n in names.values())
        for s in series:
            if counts[names[s.index].casefold()] > 1 and extra(s):
                names[s.index] += f"_{extra(s)}"
    return names


def _header_name(s: "SeriesInfo") -> str:
    """``<SeriesNumber>_<description>`` of a series, safe as a file name on every system."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", s.description or s.modality or "series").strip("_")[:60] or "series"
    num = s.meta.get("series_number")
    return f"{num}_{slug}" if isinstance(num, int) else slug


def read_case(paths: list[Path]) -> Image:
    """One case as an ``Image`` (channels first when several files or a 4D file)."""
    images = [read_image(p) for p in paths]
    if len(images) == 1:
        return images[0]
    ref = images[0]
    for p, im in zip(paths[1:], images[1:]):
        if not ref.same_grid(im):
            raise InputError(f"channel file is not on the grid of {paths[0].name}", path=p)
    arr = np.stack([np.asarray(im.array, np.float32) for im in images])
    return Image(arr, ref.affine, {**ref.meta, "source": str(paths[0])}, True)


def _load(case: Case) -> Image:
    if case.series is None:
        return read_case(case.paths)
    from medseg.io.dicom import load_series

    return load_series(case.series)


def _check_series(cases: list[Case]) -> None:
    """``InputError`` naming the first series that cannot load as a volume, before anything is written."""
    from medseg.io.dicom import load_series

    for c in cases:
        if c.series is not None and (c.series.problem or c.series.tilt_degrees):
            load_series(c.series)  # raises with the series and the reason, without reading pixels


def resolve_tta(plan, tta: bool | None) -> tuple[bool, str]:
    """Whether mirroring TTA applies, and the note every output records (NIfTI ``descrip``).

    TTA mirrors only the plan's ``augment.flip_axes``: mirroring an axis the model never saw mirrored is out of
    distribution and swaps classes defined along it (anterior/posterior hippocampus, RESULTS.md: Dice 0.86 →
    0.52). When TTA is asked for (``--tta`` or the plan's ``tta``) but the plan has no flip axes, it is not
    applied, and a one-line warning on stderr says so.
    """
    wanted = plan.tta if tta is None else bool(tta)
    axes = [int(a) for a in (plan.augment.get("flip_axes") or [])]
    if wanted and not axes:
        who = "--tta" if tta else "plan tta: true"
        print(f"medseg: warning: {who}: the model was trained without mirroring (plan augment.flip_axes is empty); "
              "predicting without TTA", file=sys.stderr)
        return False, "medseg predict: no TTA (asked for, but the model was trained without mirroring)"
    return wanted, (f"medseg predict: mirroring TTA over axes {axes}" if wanted else "medseg predict: no TTA")


def _write_labels(lab: Image, dest: Path, protect, note: str) -> None:
    """Write the label map atomically, with ``note`` (how it was predicted) in the NIfTI ``descrip``."""
    import nibabel as nib

    nimg = lab.to_nibabel()
    nimg.header["descrip"] = note.encode("ascii", "replace")[:79]
    with atomic_path(dest, protect=protect) as tmp:
        nib.save(nimg, str(tmp))


def predict_path(model, input: str | os.PathLike, output: str | os.PathLike, overlap=None, tta=None,
                 device="auto", shard=None, probabilities=False, largest_component=False, min_size_mm3=0.0,
                 export: str | None = None, overwrite=False, progress=False, batch_size: int = 2,
                 series: str | int | None = None):
    """Predict every case under ``input`` into ``output``; returns (written paths, number skipped).

    ``overlap`` and ``tta`` default to the plan's; TTA mirrors over the plan's flip axes only (see
    :func:`resolve_tta`). ``series`` picks one DICOM series (index or SeriesInstanceUID); without it every
    volume series of a DICOM folder is a case (named by :func:`series_case_names`). Every case this shard has
    to do is checked to be loadable as far as its headers tell before anything is written; each output is
    written atomically, the label map last, so its presence marks the case finished.
    """
    import torch

    from medseg.infer.native import write_probabilities
    from medseg.infer.predict import predict_image
    from medseg.train.artifact import load_model
    from medseg.train.trainer import resolve_device

    input, output = Path(input), Path(output)
    if export not in (None, "dicom-seg", "rtstruct"):
        raise InputError(f"--export must be dicom-seg or rtstruct, got '{export}'")
    art = load_model(model)
    dev = resolve_device(device)
    notes: list[str] = []  # skipped series: said once the input has passed every check, not before an error
    cases = list_cases(input, art.plan.in_channels, series, notes)
    if shard:
        cases = cases[shard[0]::shard[1]]
    if export and not all(c.series is not None for c in cases):
        raise InputError(f"--export {export} needs a DICOM series folder as input", path=input)
    todo = [c for c in cases if overwrite or not (output / f"{c.name}.nii.gz").exists()]
    skipped = len(cases) - len(todo)
    _check_series(todo)
    for line in notes:
        print(line, file=sys.stderr)
    tta, note = resolve_tta(art.plan, tta)
    output.mkdir(parents=True, exist_ok=True)
    net = art.build().to(dev)
    written = []
    it = todo
    if progress and len(todo) > 1:
        from tqdm import tqdm

        it = tqdm(todo, desc="predicting", leave=False)
    for case in it:
        image = _load(case)  # raises InputError naming the file before anything of this case is written
        with torch.no_grad():
            lab, prob = predict_image(net, art.plan, image, overlap=overlap, tta=tta, device=dev,
                                      batch_size=batch_size, probabilities=probabilities,
                                      largest_component=largest_component, min_size_mm3=min_size_mm3,
                                      spill_dir=output)  # disk-backed probabilities beside their output
        if export:
            _export(lab, case, export, output / f"{case.name}_{export.replace('-', '')}.dcm", art.plan.labels)
        if prob is not None:
            write_probabilities(prob, output / f"{case.name}_probs.nii.gz", protect=case.paths)
        dest = output / f"{case.name}.nii.gz"
        _write_labels(lab, dest, case.paths, note)  # last: its presence marks the case finished
        written.append(dest)
    return written, skipped


def _export(label: Image, case: Case, fmt: str, out: Path, labels: dict) -> None:
    try:
        from medseg.export import export_segmentation
    except ImportError as exc:
        raise InputError(f"--export {fmt}: DICOM export is not available in this installation") from exc
    # the series as listing found it: referencing it does not scan the whole folder again for every case
    export_segmentation(label, case.paths[0], fmt, out, labels={k: v for k, v in labels.items() if k},
                        series=case.series)
