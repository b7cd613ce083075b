"""Predicting a file, a folder of cases or DICOM series: skip finished outputs, shard a cohort, write atomically.

A folder of image files is a cohort of cases (``case_0000`` channel files grouped as
:func:`medseg.infer.cases.list_cases` says). A folder without image files is searched for DICOM series
(recursively, :func:`medseg.io.dicom.discover_series`): every volume series is a case, or only the one ``series``
picks (index or SeriesInstanceUID, as ``medseg info`` lists them).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.cpu import keeps_torch_threads
from medseg.errors import InputError
from medseg.infer.cases import Case, case_image, check_references, check_series, list_cases  # noqa: F401
from medseg.io.atomic import atomic_path, remove_stale_temporaries
from medseg.io.image import Image
from medseg.io.series_names import series_case_names  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from medseg.infer.provenance import CaseRecords


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


def resolve_tta(plan, tta: bool | None, warn=None) -> tuple[bool, str]:
    """Whether mirroring TTA applies, and the note every output records (NIfTI ``descrip``).

    :func:`medseg.infer.predict.resolve_tta`, which ``predict_image`` applies too, resolved here once per run: its
    warning (TTA asked for, ``--tta`` or the plan's ``tta``, on a plan without flip axes) is one line on stderr,
    and the cases then get the resolved value, so they do not warn again.

    Parameters
    ----------
    plan : Plan
        The model's plan (its ``tta`` and ``augment["flip_axes"]``).
    tta : bool or None
        Asked for (``--tta`` / ``--no-tta``); None takes the plan's ``tta``.
    warn : callable, optional
        Receives the warning line (default: printed on stderr after ``medseg: warning:``).

    Returns
    -------
    tta : bool
        Whether the cases are predicted with mirroring TTA.
    note : str
        How they are predicted, recorded in each output's NIfTI ``descrip``.

    Examples
    --------
    >>> from medseg.plan.plan import Plan
    >>> resolve_tta(Plan(channels=["CT"], augment={"flip_axes": [0, 1, 2]}), True)
    (True, 'medseg predict: mirroring TTA over axes [0, 1, 2]')
    >>> resolve_tta(Plan(channels=["CT"]), True, warn=print)  # trained without flips: nothing to mirror over
    --tta: the model was trained without mirroring (plan augment.flip_axes is empty); predicting without TTA
    (False, 'medseg predict: no TTA (asked for, but the model was trained without mirroring)')
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

    from medseg.infer.provenance import attach_record, record_lock

    nimg = lab.to_nibabel()
    nimg.header["descrip"] = note.encode("ascii", "replace")[:79]
    attach_record(nimg, record)
    with record_lock(dest.parent), atomic_path(dest, protect=protect) as tmp:  # not inside another run's rewrite
        nib.save(nimg, str(tmp))


@keeps_torch_threads  # cap_torch_threads lowers the count for this call only
def predict_path(model, input: str | os.PathLike, output: str | os.PathLike, overlap=None, tta=None,
                 device="auto", shard=None, probabilities=False, largest_component=False, min_size_mm3=0.0,
                 export: str | None = None, overwrite=False, progress=False, batch_size: int = 2,
                 series: str | int | None = None, keep_going: bool = False):
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
    case again). A finished case that lacks only the ``export`` object is exported from its label map, without
    predicting it again, and counts as written.

    A case whose pixel data turn out to be bad (found only when it is read) is an ``InputError`` that stops the
    cohort there; with ``keep_going`` its line goes to stderr, the other cases are predicted, and one
    ``InputError`` at the end counts the failed cases (each left without output, so a rerun retries only them).

    Parameters
    ----------
    model : path
        A ``model.pt`` or a run folder holding one (:func:`medseg.train.artifact.load_model`).
    input : path
        An image file, a folder of image files (cases as :func:`list_cases` groups them) or of DICOM series.
    output : path
        The output folder (made if missing): ``<case>.nii.gz`` per case, ``<case>_probs.nii.gz`` with
        ``probabilities``, ``<case>_dicomseg.dcm`` / ``<case>_rtstruct.dcm`` with ``export``.
    overlap : float, optional
        Sliding-window overlap in [0, 1) (default: the plan's).
    tta : bool, optional
        Mirroring TTA (default: the plan's).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    shard : str or (int, int), optional
        ``"i/n"``: only every n-th case from the i-th (:func:`parse_shard`), for n jobs sharing a cohort.
    probabilities : bool
        Also write the class probabilities (float32, classes on the 4th axis).
    largest_component : bool
        Keep only the largest connected component of each class.
    min_size_mm3 : float
        Remove components smaller than this (mm³; 0 keeps all).
    export : {None, 'dicom-seg', 'rtstruct'}
        Also write a DICOM object referencing each case's series (DICOM input only).
    overwrite : bool
        Predict finished cases again.
    progress : bool
        Progress bar over the cases.
    batch_size : int
        Sliding-window patches per forward pass.
    series : str or int, optional
        Only this DICOM series (index or SeriesInstanceUID).
    keep_going : bool
        Go on past a case whose pixel data are bad (see above).

    Returns
    -------
    written : list of Path
        The label maps this call wrote.
    skipped : int
        Cases skipped as finished.

    Examples
    --------
    A random-weight model on two 20 x 16 x 16 images; the second call finds both cases finished:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> from medseg.plan.plan import Plan
    >>> from medseg.train.artifact import build_from_plan, save_model
    >>> root = Path(tempfile.mkdtemp()); (root / "images").mkdir()
    >>> plan = Plan(channels=["CT"], labels={0: "background", 1: "liver"}, patch_size=[16, 16, 16], base_filters=4,
    ...             max_filters=8)
    >>> model = save_model(root / "model.pt", plan, build_from_plan(plan).state_dict())
    >>> for name in ("a", "b"):
    ...     image = Image(np.random.rand(20, 16, 16).astype(np.float32), np.eye(4))
    ...     _ = write_image(image, root / "images" / f"{name}.nii.gz")
    >>> written, skipped = predict_path(model, root / "images", root / "pred", device="cpu", probabilities=True)
    >>> [p.name for p in written], skipped
    (['a.nii.gz', 'b.nii.gz'], 0)
    >>> sorted(p.name for p in (root / "pred").iterdir())
    ['a.nii.gz', 'a_probs.nii.gz', 'b.nii.gz', 'b_probs.nii.gz']
    >>> predict_path(model, root / "images", root / "pred", device="cpu", probabilities=True)
    ([], 2)
    """
    from medseg.cpu import cap_torch_threads
    from medseg.infer.provenance import CaseRecords
    from medseg.train.artifact import load_model
    from medseg.infer.devices import parse_device

    input, output = Path(input), Path(output)
    if export not in (None, "dicom-seg", "rtstruct"):
        raise InputError(f"--export must be dicom-seg or rtstruct, got '{export}'")
    _check_options(input, output, overlap, min_size_mm3)
    shard = parse_shard(shard)
    art = load_model(model)
    dev = parse_device(device)
    cap_torch_threads()  # torch counts the host's cores, not a container's CPU quota
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
    status = ["predict" if overwrite else _status(c, output, record, probabilities, export) for c in cases]
    todo = [c for c, s in zip(cases, status) if s == "predict"]
    # finished but for the DICOM object (an earlier run without --export): exported from the label map, not predicted
    late = [c for c, s in zip(cases, status) if s == "export"]
    skipped = status.count("done")
    check_series(todo)
    if export:
        check_references(todo + late, export)
    for line in notes + [f"medseg: warning: {w}" for w in held]:
        print(line, file=sys.stderr)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)  # of a run killed outright (a rerun after the OOM killer)
    try:
        failed: list[str] = []  # with keep_going: the cases skipped, late exports and predictions alike
        written = _export_late(late, output, export, art.plan.labels, keep_going, failed)
        if written:
            print(f"medseg: note: {len(written)} finished case(s) exported from their label maps, without "
                  "predicting again", file=sys.stderr)
        written += _predict_cases(art, dev, todo, output=output, overlap=overlap, tta=tta,
                                 batch_size=batch_size, probabilities=probabilities,
                                 largest_component=largest_component, min_size_mm3=min_size_mm3, export=export,
                                 note=note, record=record, progress=progress, keep_going=keep_going,
                                 failed=failed, total=len(todo) + len(late), done=len(written))
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
    label map, and ``Case1``'s is ``case1``'s where the output folder's file system does not tell case apart):
    the second would replace the first's, and a rerun take it for finished."""
    from medseg.io.folding import name_key

    key = name_key(output)
    owner: dict[str, tuple[str, str]] = {}
    for c in cases:
        for dest in _outputs(c, output, probabilities, export):
            other, name = owner.setdefault(key(dest.name), (c.name, dest.name))
            if other != c.name:
                why = "" if name == dest.name else (f" (as {name}: the output folder's file system does not tell "
                                                    "them apart)")
                raise InputError(f"cases '{other}' and '{c.name}' would both write {dest.name}{why}; predict them into "
                                 "separate output folders (or rename one)", path=dest)


def _status(case: Case, output: Path, record: "CaseRecords", probabilities: bool, export: str | None) -> str:
    """What ``case`` needs: ``"done"`` (every output this run asks for, made by this model and options),
    ``"export"`` (all but the DICOM object, which is made from the label map) or ``"predict"``; a label map of
    another model, other options or another input is the ``InputError`` of ``check_finished``."""
    from medseg.infer.provenance import check_finished

    dest, *extras = _outputs(case, output, probabilities, export)
    if not dest.exists():
        return "predict"
    old = check_finished(dest, record.of(case.name, _input_files(case)))
    # an extra output counts only when it was written with this label map (an earlier run's may lie beside it)
    written = set(old.get("extras", []))
    if probabilities and not ("probabilities" in written and extras[0].exists()):
        return "predict"
    # no foreground: no DICOM object was written, and none is due
    if export and not (export in written and (old.get("empty") or extras[-1].exists())):
        return "export"
    return "done"


def _export_finished(case: Case, output: Path, export: str, labels: dict) -> Path:
    """Export a finished case's label map, then record the export in it (rewritten atomically: a run stopped
    between the two exports again; under the folder's lock, :func:`medseg.infer.provenance.add_extra`: another
    run's export recorded meanwhile stays); returns the label map's path."""
    from medseg.infer.provenance import add_extra, read_record
    from medseg.io.readers import read_image

    dest = output / f"{case.name}.nii.gz"
    _keep_folder(output)
    made_from = read_record(dest)  # the prediction the voxels below belong to
    try:
        lab = read_image(dest)
    except InputError as exc:  # the header was whole (its record read), the voxels are not
        raise InputError(f"{exc.problem}; --overwrite predicts this case again", path=dest) from None
    # no foreground: a note, and no object; told by the voxels, as predicting tells it (a record written before
    # medseg recorded "empty" lacks the key, and the empty map was refused as an object, stopping the cohort)
    _export(lab, case, export, output / f"{case.name}_{export.replace('-', '')}.dcm", labels,
            not np.any(lab.array))
    # not recorded when another run predicted the case again meanwhile: the object is of the voxels it replaced
    if not add_extra(dest, export, lab.array, made_from, protect=case.paths):
        print(f"medseg: note: {case.name}: predicted again by another run while it was exported; its {export} is "
              "not recorded (a rerun exports it again)", file=sys.stderr)
    return dest


def _export_late(late: list[Case], output: Path, export: str, labels: dict, keep_going: bool,
                 failed: list[str]) -> list[Path]:
    """:func:`_export_finished` for each case of ``late``; with ``keep_going`` a case whose label map cannot be
    read or exported is named on stderr and added to ``failed`` (the others go on), as a case predicted is."""
    written = []
    for case in late:
        try:
            written.append(_export_finished(case, output, export, labels))
        except InputError as exc:
            if not keep_going:
                raise
            failed.append(case.name)  # its object, if any was written, is not recorded: a rerun exports it again
            print(f"medseg: error: {exc} (case skipped: --keep-going)", file=sys.stderr)
    return written


def _extras(probabilities: bool, export: str | None) -> list[str]:
    return (["probabilities"] if probabilities else []) + ([export] if export else [])


def _input_files(case: Case) -> list[Path]:
    return case.series.files if case.series is not None else case.paths


def _predict_cases(art, dev, todo, output: Path, overlap, tta, batch_size, probabilities, largest_component,
                   min_size_mm3, export, note, record, progress, keep_going: bool = False,
                   failed: list[str] | None = None, total: int | None = None, done: int = 0) -> list[Path]:
    """Predict and write each case in turn (the loop of :func:`predict_path`); returns the label maps written.
    ``failed``, ``total`` and ``done``: the cases already skipped with ``keep_going``, of ``total`` in all, and how
    many others are written, which the closing ``InputError`` counts too."""
    # a rerun on a finished folder predicts nothing: building the network imports MONAI, seconds for nothing
    net = art.build().to(dev) if todo else None
    written, failed = [], list(failed or [])
    it = todo
    if progress and len(todo) > 1:
        from tqdm import tqdm

        it = tqdm(todo, desc="predicting", leave=False)
    for case in it:
        try:
            written.append(_predict_case(net, art, dev, case, output, overlap, tta, batch_size, probabilities,
                                         largest_component, min_size_mm3, export, note, record))
        except InputError as exc:
            if not keep_going:
                raise
            failed.append(case.name)  # its outputs are written label map last: it has none that count
            print(f"medseg: error: {exc} (case skipped: --keep-going)", file=sys.stderr)
    if failed:
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise InputError(f"{len(failed)} of {total or len(todo)} case(s) failed ({shown}); the "
                         f"{len(written) + done} others are written, and a rerun retries only the failed ones",
                         path=output)
    return written


def _predict_case(net, art, dev, case: Case, output: Path, overlap, tta, batch_size, probabilities,
                  largest_component, min_size_mm3, export, note, record) -> Path:
    """Predict one case and write its outputs, the label map last; returns the label map's path."""
    import torch

    from medseg.infer.native import write_probabilities
    from medseg.infer.predict import predict_image

    image = case_image(case)  # raises InputError naming the file before anything of this case is written
    _keep_folder(output)  # the spill file goes there
    with torch.no_grad():
        lab, prob = predict_image(net, art.plan, image, overlap=overlap, tta=tta, device=dev,
                                  batch_size=batch_size, probabilities=probabilities,
                                  largest_component=largest_component, min_size_mm3=min_size_mm3,
                                  spill_dir=output)  # disk-backed probabilities beside their output
    empty = not np.any(lab.array)
    _keep_folder(output)
    if export:
        _export(lab, case, export, output / f"{case.name}_{export.replace('-', '')}.dcm", art.plan.labels, empty)
    if prob is not None:
        write_probabilities(prob, output / f"{case.name}_probs.nii.gz", protect=case.paths)
    dest = output / f"{case.name}.nii.gz"
    _write_labels(lab, dest, case.paths, note,  # last: its presence marks the case finished
                  {**record.of(case.name, _input_files(case)), "extras": _extras(probabilities, export),
                   "empty": empty})
    return dest


def _keep_folder(output: Path) -> None:
    """Make ``output`` again if it went: another shard (or the same job submitted twice) that made the folder and
    failed at its first case removes it while still empty, and this process's spill file is unlinked (it does not
    keep the folder from being empty), so that a healthy shard would fail with 'output folder does not exist'."""
    output.mkdir(parents=True, exist_ok=True)


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
