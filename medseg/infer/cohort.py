"""Predicting a file, a folder of cases or DICOM series: skip finished outputs, shard a cohort, write atomically.

A folder of image files is a cohort of cases (``case_0000`` channel files grouped as :func:`list_cases` says). A
folder without image files is searched for DICOM series (recursively, :func:`medseg.io.dicom.discover_series`):
every volume series is a case, or only the one ``series`` picks (index or SeriesInstanceUID, as ``medseg info``
lists them).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, case_name
from medseg.io.image import Image
from medseg.io.readers import is_dicom_file, read_image
from medseg.io.series_names import pick_series, series_case_names  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")

if TYPE_CHECKING:
    from medseg.infer.provenance import CaseRecords
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
        The DICOM series (from :func:`medseg.io.dicom.discover_series` on ``paths[0]``), else ``None``; its
        headers are released (:meth:`~medseg.io.dicom.SeriesInfo.release_headers`) and read again on loading.
    """

    name: str
    paths: list[Path]
    series: "SeriesInfo | None" = None


def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (or ``(i, n)``) → ``(i, n)``, checked: 0 <= i < n.

    Examples
    --------
    >>> parse_shard("1/4"), parse_shard((0, 2))
    ((1, 4), (0, 2))
    """
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        text = "/".join(str(v) for v in text) if len(text) == 2 else str(text)
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
        The model's input channels. Files named ``<case>_0000``, ``<case>_0001``, ... form case ``<case>`` when
        their numbers are exactly the channels ``0000`` ... ``channels - 1`` (nnU-Net v2 names; with one channel,
        ``a_0000`` is case ``a``), stem by stem; otherwise each file is its own case named by its whole name (MSD
        ids such as ``patient_0001``; ``x_0000``, ``x_0001``, ``x_0002`` for a one-channel model). The rule is
        :func:`medseg.train.dataset.group_case_files`'s; a lone ``patient_0000`` with one channel is ambiguous,
        and is case ``patient`` (the nnU-Net convention wins).
    series : str or int, optional
        Only this DICOM series (index or SeriesInstanceUID, picked by :func:`medseg.io.dicom.select_series`).
        A folder that also holds image files is then searched for DICOM series, not listed as images.
    notes : list of str, optional
        Receives the notes on skipped DICOM series (see :func:`dicom_cases`) instead of stderr.

    Returns
    -------
    list of Case
        Image files in name order; DICOM series in discovery order, named by :func:`series_case_names`. A broken
        link, given or among the image files of the folder, is an ``InputError`` naming it.
    """
    from medseg.io.readers import image_files
    from medseg.train.dataset import group_case_files

    if path.is_symlink() and not path.exists():
        raise InputError(f"broken link: target {os.readlink(path)} does not exist", path=path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_file():
        if series is None:
            return [Case(case_name(path), [path])]
        if not is_dicom_file(path):
            raise InputError("--series picks a DICOM series, but this is not a DICOM file", path=path)
        return dicom_cases(path, series, notes)
    files = image_files(path, IMAGE_SUFFIXES)  # a broken link among them is an InputError naming it
    if not files or series is not None:
        return dicom_cases(path, series, notes)
    return [Case(name, paths) for name, paths in sorted(group_case_files(files, channels).items())]


def dicom_cases(path: Path, series: str | int | None = None, notes: list[str] | None = None) -> list[Case]:
    """One case per DICOM volume series under ``path``, or only the one ``series`` picks.

    Series are picked and named as ``medseg convert`` does (:func:`medseg.io.series_names.pick_series`). Images
    that can never be volumes (screenshots, colour, cine) are skipped with a note: appended to ``notes`` when
    given (a caller that still validates prints them once that passed), else printed on stderr. A picked series
    that is not a volume is an ``InputError``. ``path``, ``series`` and ``notes`` are as in :func:`list_cases`.

    Returns
    -------
    list of Case
        In discovery order, each with its ``series``.
    """
    picked = pick_series(path, series)
    for s in picked.series:
        if not s.is_volume:  # only a picked one: listing takes volumes only
            raise InputError(f"series {s.label()} cannot be predicted: {s.problem}", path=s.folder)
        s.release_headers()  # a cohort keeps every case's series until it ends: ~60 kB per slice less
    if notes is not None:
        notes.extend(picked.notes)
    else:  # said once, on stderr, without stopping the cohort
        for line in picked.notes:
            print(line, file=sys.stderr)
    return [Case(name, [path], s) for s, name in zip(picked.series, picked.names)]


def read_case(paths: list[Path]) -> Image:
    """One case as an ``Image`` (channels first when several files or a 4D file).

    Parameters
    ----------
    paths : list of Path
        The case's files, one per channel, all on one grid (else an ``InputError``).

    Returns
    -------
    Image
        A single file as :func:`medseg.io.readers.read_image` reads it; several stacked as float32.
    """
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
        if c.series is not None and c.series.tilt_degrees and not c.series.problem:
            # load_series's advice (--allow-tilt) is convert's: predict writes on the series' own grid
            raise InputError(f"series {c.series.label()} has a gantry tilt of {c.series.tilt_degrees:.2f} degrees, "
                             "and a label map cannot lie on its grid: resample it onto an orthogonal grid with "
                             "`medseg convert --allow-tilt` and predict that file", path=c.series.folder)
        if c.series is not None and c.series.problem:
            load_series(c.series)  # raises with the series and the reason, without reading pixels


def _check_references(cases: list[Case], export: str) -> None:
    """``InputError`` naming the first series that ``--export`` could not reference (missing UIDs, multi-frame),
    before anything is predicted; its headers are read here and again when it is exported."""
    from medseg.export.reference import load_reference

    for c in cases:
        try:
            load_reference(c.paths[0], c.series)
        except InputError as exc:
            raise InputError(f"--export {export}: series {c.series.label()}: {exc.problem}",
                             path=c.series.folder) from None


def resolve_tta(plan, tta: bool | None, warn=None) -> tuple[bool, str]:
    """Whether mirroring TTA applies, and the note every output records (NIfTI ``descrip``).

    :func:`medseg.infer.predict.resolve_tta`, which ``predict_image`` applies too, resolved here once per run: its
    warning (TTA asked for, ``--tta`` or the plan's ``tta``, on a plan without flip axes) is one line on stderr,
    and the cases then get the resolved value, so they do not warn again.

    Returns
    -------
    tta : bool
    note : str
    """
    from medseg.infer.predict import resolve_tta as resolve

    return resolve(plan, tta, asked_as="--tta",
                   warn=warn or (lambda line: print(f"medseg: warning: {line}", file=sys.stderr)))


def _check_options(input: Path, output: Path, overlap, min_size_mm3) -> None:
    """Refuse what would fail only after the model has loaded, or mistake inputs for finished outputs."""
    if overlap is not None and not 0 <= overlap < 1:
        raise InputError(f"--overlap must be in [0, 1), got {overlap}")
    if not min_size_mm3 >= 0 or min_size_mm3 == float("inf"):
        raise InputError(f"--min-size must be a finite number >= 0 (mm³), got {min_size_mm3}")
    if output.exists() and not output.is_dir():
        raise InputError("the output must be a folder, and this is a file", path=output)
    if output.exists() and input.is_dir() and output.resolve() == input.resolve():
        raise InputError("the output folder is the input folder (its images would count as finished predictions)",
                         path=output)


def _write_labels(lab: Image, dest: Path, protect, note: str, record: dict) -> None:
    """Write the label map atomically, with ``note`` (how it was predicted) in the NIfTI ``descrip`` and
    ``record`` (model digest and options, :mod:`medseg.infer.provenance`) in a header extension."""
    import nibabel as nib

    from medseg.infer.provenance import attach_record

    nimg = lab.to_nibabel()
    nimg.header["descrip"] = note.encode("ascii", "replace")[:79]
    attach_record(nimg, record)
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
    to do is checked to be loadable (and, with ``export``, referenceable) as far as its headers tell before anything
    is written, and no two cases may share an output file; each output is written atomically, the label map last, so
    its presence marks the case finished. A case predicted without foreground gets no ``export`` (a DICOM object
    without segments is not valid), with a note on stderr; its label map records that, so it counts as finished.

    A finished case is skipped only when its label map records this model file (SHA-256), the options that
    change its voxels (overlap, TTA, largest component, minimum size) and its input files (SHA-256), and the extra
    outputs asked for (``probabilities``, ``export``) were written with it; one made by another model, with other
    options or from another input is an ``InputError`` before anything is predicted (``overwrite`` predicts every
    case again).

    Returns
    -------
    written : list of Path
        The label maps this call wrote.
    skipped : int
        Cases skipped as finished.
    """
    from medseg.infer.provenance import CaseRecords
    from medseg.train.artifact import load_model
    from medseg.train.trainer import resolve_device

    input, output = Path(input), Path(output)
    if export not in (None, "dicom-seg", "rtstruct"):
        raise InputError(f"--export must be dicom-seg or rtstruct, got '{export}'")
    _check_options(input, output, overlap, min_size_mm3)
    shard = parse_shard(shard)
    art = load_model(model)
    dev = resolve_device(device)
    notes: list[str] = []  # skipped series: said once the input has passed every check, not before an error
    cases = list_cases(input, art.plan.in_channels, series, notes)
    _check_distinct_outputs(cases, output, probabilities, export)  # every shard: all cases
    if shard:
        cases = cases[shard[0]::shard[1]]
    if export and not all(c.series is not None for c in cases):
        raise InputError(f"--export {export} needs a DICOM series folder as input", path=input)
    _check_not_inputs(cases, output, probabilities, export)  # before an input is mistaken for a finished output
    held: list[str] = []  # the TTA warning, said once the input has passed every check
    tta, note = resolve_tta(art.plan, tta, warn=held.append)
    record = CaseRecords(_record(art, overlap, tta, largest_component, min_size_mm3, device=str(dev)))
    todo = cases if overwrite else [c for c in cases if not _finished(c, output, record, probabilities, export)]
    skipped = len(cases) - len(todo)
    _check_series(todo)
    if export:
        _check_references(todo, export)
    for line in notes + [f"medseg: warning: {w}" for w in held]:
        print(line, file=sys.stderr)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        written = _predict_cases(art, dev, todo, output=output, overlap=overlap, tta=tta,
                                 batch_size=batch_size, probabilities=probabilities,
                                 largest_component=largest_component, min_size_mm3=min_size_mm3, export=export,
                                 note=note, record=record, progress=progress)
    except BaseException:
        if created and not any(output.iterdir()):  # a bad first case leaves no empty folder behind
            output.rmdir()
        raise
    return written, skipped


def _record(art, overlap, tta: bool, largest_component: bool, min_size_mm3: float, **extra) -> dict:
    import medseg
    from medseg.data import file_digest
    from medseg.infer.provenance import prediction_record

    path = art.info["path"]
    return prediction_record(file_digest(path, "sha256"), art.plan.overlap if overlap is None else overlap, tta,
                             largest_component, min_size_mm3, model=Path(path).name, medseg_version=medseg.__version__,
                             **extra)


def _outputs(case: Case, output: Path, probabilities: bool, export: str | None) -> list[Path]:
    """The files predicting ``case`` writes: its label map, then the extra outputs asked for."""
    return [output / f"{case.name}.nii.gz"] + ([output / f"{case.name}_probs.nii.gz"] if probabilities else []) + \
        ([output / f"{case.name}_{export.replace('-', '')}.dcm"] if export else [])


def _check_not_inputs(cases: list[Case], output: Path, probabilities: bool, export: str | None) -> None:
    """``InputError`` when an output of a case would be one of the input files (``-i DIR/case.nii.gz -o DIR``)."""
    inputs = {os.path.realpath(p): p for c in cases for p in c.paths}
    for c in cases:
        for dest in _outputs(c, output, probabilities, export):
            if os.path.realpath(dest) in inputs:
                raise InputError(f"the output would replace the input {inputs[os.path.realpath(dest)]}; choose "
                                 "another output folder", path=dest)


def _check_distinct_outputs(cases: list[Case], output: Path, probabilities: bool, export: str | None) -> None:
    """``InputError`` when two cases would write one file (case ``x``'s ``x_probs.nii.gz`` is case ``x_probs``'s
    label map): the second would replace the first's, and a rerun take it for finished."""
    owner: dict[str, str] = {}
    for c in cases:
        for dest in _outputs(c, output, probabilities, export):
            other = owner.setdefault(dest.name, c.name)
            if other != c.name:
                raise InputError(f"cases '{other}' and '{c.name}' would both write {dest.name}; predict them into "
                                 "separate output folders (or rename one)", path=dest)


def _finished(case: Case, output: Path, record: "CaseRecords", probabilities: bool, export: str | None) -> bool:
    """Whether ``case`` has all the outputs this run asks for, made by this model and options (else the error)."""
    from medseg.infer.provenance import check_finished

    dest, *extras = _outputs(case, output, probabilities, export)
    if not dest.exists():
        return False
    old = check_finished(dest, record.of(case.name, _input_files(case)))
    if export and old.get("empty"):  # no foreground: no DICOM object was written, and none is due
        extras = extras[:-1]
    # an extra output counts only when it was written with this label map (an earlier run's may lie beside it)
    return all(p.exists() for p in extras) and set(_extras(probabilities, export)) <= set(old.get("extras", []))


def _extras(probabilities: bool, export: str | None) -> list[str]:
    return (["probabilities"] if probabilities else []) + ([export] if export else [])


def _input_files(case: Case) -> list[Path]:
    return case.series.files if case.series is not None else case.paths


def _predict_cases(art, dev, todo, output: Path, overlap, tta, batch_size, probabilities, largest_component,
                   min_size_mm3, export, note, record, progress) -> list[Path]:
    """Predict and write each case in turn (the loop of :func:`predict_path`); returns the label maps written."""
    import torch

    from medseg.infer.native import write_probabilities
    from medseg.infer.predict import predict_image

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
        empty = not np.any(lab.array)
        if export:
            _export(lab, case, export, output / f"{case.name}_{export.replace('-', '')}.dcm", art.plan.labels, empty)
        if prob is not None:
            write_probabilities(prob, output / f"{case.name}_probs.nii.gz", protect=case.paths)
        dest = output / f"{case.name}.nii.gz"
        _write_labels(lab, dest, case.paths, note,  # last: its presence marks the case finished
                      {**record.of(case.name, _input_files(case)), "extras": _extras(probabilities, export),
                       "empty": empty})
        written.append(dest)
    return written


def _export(label: Image, case: Case, fmt: str, out: Path, labels: dict, empty: bool) -> None:
    if empty:  # a DICOM object without segments is not valid (`medseg export` refuses it): the case goes on without
        out.unlink(missing_ok=True)  # an earlier run's object would pass for this label map's
        print(f"medseg: note: {case.name}: no foreground predicted, no {fmt} written", file=sys.stderr)
        return
    try:
        from medseg.export import export_segmentation
    except ImportError as exc:
        raise InputError(f"--export {fmt}: DICOM export is not available in this installation") from exc
    # the series as listing found it: referencing it does not scan the whole folder again for every case
    export_segmentation(label, case.paths[0], fmt, out, labels={k: v for k, v in labels.items() if k},
                        series=case.series)
