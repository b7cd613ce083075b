"""``evaluate_folder``: every case of a prediction folder against a reference folder, in parallel, into a report."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medseg.cpu import ignored_warnings
from medseg.errors import InputError
from medseg.evaluate.cases import CasePair, check_geometry, pair_cases, read_label_map, spacing_mm
from medseg.evaluate.instances import DEFAULT_THRESHOLDS
from medseg.evaluate.lesions import absent_lesion_classes, unnamed_lesion_classes
from medseg.evaluate.metrics import (DEFAULT_NSD_TOLERANCE, UnreferencedLabelsWarning, check_distance_settings,
                                     evaluate_case, values_text)
from medseg.evaluate.overlap import present_labels
from medseg.evaluate.summary import summarize
from medseg.io.labels import label_names, read_label_names


def _evaluate_pair(pair: CasePair, labels: dict[int, str] | None, spacing_from: str | None, kwargs: dict,
                   atol: float = 1e-3) -> dict:
    """Read, check and evaluate one case (runs in a worker process)."""
    ref = read_label_map(pair.ref)
    pred = read_label_map(pair.pred)
    pred = check_geometry(pred, ref, pair.pred, spacing_from=spacing_from, atol=atol)
    side = pred if spacing_from == "pred" else ref
    spacing = spacing_mm(side, pair.pred if spacing_from == "pred" else pair.ref)
    if labels is not None:
        known = set(labels) | {0}
        for img, path in ((ref, pair.ref), (pred, pair.pred)):
            unknown = sorted(set(present_labels(img.array).tolist()) - known)
            if unknown:
                raise InputError(f"label value(s) [{values_text(unknown, 5)}] not in the labels of dataset.json "
                                 f"({values_text(known, 5)})", path=path)  # 100+ organs: not all on one line
    try:
        with ignored_warnings(UnreferencedLabelsWarning):  # said once for the whole cohort, by evaluate_folder
            res = evaluate_case(pred.array, ref.array, labels=labels, spacing=spacing, **kwargs)
    except ValueError as exc:  # e.g. too many label values for a semantic label map
        raise InputError(str(exc), path=pair.pred) from exc
    return {"case": pair.case, **res, **({"spacing_unit_read": "um"} if side.meta.get("unit") == "um" else {})}


def _warn_micrometres(per_case: list[dict], nsd_tolerance) -> None:
    """One line when micrometre label maps meet the NSD tolerance, which stays in mm (2 mm is 2000 µm: NSD 1 for
    any cell-scale error)."""
    n = sum(c.pop("spacing_unit_read", None) == "um" for c in per_case)
    if n:
        tol = dict(nsd_tolerance) if isinstance(nsd_tolerance, Mapping) else nsd_tolerance
        warnings.warn(f"{n} case(s) are microscopy label maps in micrometres: distances and volumes are reported "
                      f"in mm and ml, and the NSD tolerance ({tol} mm) is in mm too (--nsd-tolerance 0.002 for "
                      "2 µm); `medseg cells evaluate` scores instances", stacklevel=3)


def _warn_unreferenced(per_case: list[dict]) -> None:
    """One warning line for the prediction values that no reference of the cohort holds (classes found, not named)."""
    def present(c: dict, side: str) -> set[int]:
        return {c["labels"][n] for n, m in c["classes"].items() if m["tp"] + m[side] > 0}

    in_refs = set().union(*(present(c, "fn") for c in per_case))
    extra = {c["case"]: present(c, "fp") - in_refs for c in per_case}
    values = set().union(*extra.values())
    if values:
        cases = [case for case, v in extra.items() if v]
        where = f"case {cases[0]}" + (f" and {len(cases) - 1} more" if len(cases) > 1 else "")
        warnings.warn(UnreferencedLabelsWarning(
            f"prediction value(s) {values_text(values)} appear in no reference ({where}): each is scored as a "
            f"class with dice 0; name the classes with --labels dataset.json"), stacklevel=3)


def _fill_missing(per_case: list[dict], names: dict[int, str], kwargs: dict) -> None:
    """Classes absent from a case (labels found per case) get the both-empty values, counted in its ``mean_iou``."""
    for c in per_case:
        missing = {v: n for v, n in names.items() if n not in c["classes"]}
        if missing:
            nd = len(c["spacing"])
            empty = evaluate_case(np.zeros((1,) * nd, np.uint8), np.zeros((1,) * nd, np.uint8),
                                  labels=missing, spacing=c["spacing"], **kwargs)
            c["classes"].update(empty["classes"])
            c["labels"].update(empty["labels"])
            c["classes"] = {n: c["classes"][n] for n in names.values()}
            c["labels"] = {n: c["labels"][n] for n in names.values()}
            # over the report's classes, as when --labels names them (a filled class is both empty: IoU 1)
            c["mean_iou"] = float(np.mean([m["iou"] for m in c["classes"].values()]))


def _progress(total: int, enabled: bool | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medseg.progress import bar_console, shown

    if enabled is None:
        enabled = shown(total > 1)
    return Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=bar_console(), transient=True, disable=not enabled)


def evaluate_folder(pred: str | os.PathLike, ref: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    labels: Mapping | Sequence | str | os.PathLike | None = None, spacing_from: str | None = None,
                    nsd_tolerance: float | Mapping = DEFAULT_NSD_TOLERANCE, lesion_classes: Sequence = (),
                    lesion_thresholds=DEFAULT_THRESHOLDS, connectivity: int | None = None,
                    distance_cap: float | str | None = None, surface: bool = True, workers: int = 1,
                    progress: bool | None = None, geometry_tolerance: float = 1e-3) -> dict:
    """Evaluate prediction files against reference files matched by case name; optionally write the report.

    Parameters
    ----------
    pred, ref : path
        Two label-map files, or two folders of them (matched by file name without extension).
    out_dir : path, optional
        Where to write ``metrics.json``, ``metrics.csv``, ``report.html`` and ``report.md``.
    labels : path to dataset.json, mapping or sequence, optional
        Class names and values (MSD/nnU-Net ``dataset.json``, see :mod:`medseg.io.labels`); a value found in a
        label map but not listed is an error. Default: every non-zero value found, named ``label_<k>``; then a
        prediction with far more values than its reference (an image given as the prediction) is an error, and
        prediction values that no reference holds are named in an ``UnreferencedLabelsWarning``.
    spacing_from : {None, "ref", "pred"}
        None: prediction and reference must share the grid (shape and affine). "ref"/"pred": only
        the shape must match and that side's spacing is used (predictions saved without geometry).
    workers : int
        Processes over cases.
    geometry_tolerance : float
        Largest difference (mm) allowed between the two affines' entries (float32 NIfTI headers
        written by different tools differ by ~1e-5 mm); finite.
    lesion_classes : sequence of str
        Classes (names or values) given lesion-wise metrics; without ``labels`` a value (``3`` or ``label_3``),
        and one found in no case is said in a warning.

    Other parameters are those of :func:`medseg.evaluate.metrics.evaluate_case`.

    Returns
    -------
    dict
        ``{"per_case", "mean", "std", "ci95", "foreground_mean", "overall", "settings"}``: ``per_case`` holds
        :func:`medseg.evaluate.metrics.evaluate_case`'s result of each case (with its ``case`` name), the others
        are :func:`medseg.evaluate.summary.summarize`'s.

    Examples
    --------
    One case: two 2x2 squares of a 4x4 slice sharing one column (Dice 2 * 2 / (4 + 4)):

    >>> import tempfile
    >>> from medseg.io.image import Image
    >>> from medseg.io.writers import write_image
    >>> tmp = tempfile.TemporaryDirectory(); d = Path(tmp.name)
    >>> ref = np.zeros((4, 4, 1), np.uint8); ref[:2, :2] = 1
    >>> pred = np.zeros((4, 4, 1), np.uint8); pred[:2, 1:3] = 1
    >>> for folder, arr in (("ref", ref), ("pred", pred)):
    ...     (d / folder).mkdir()
    ...     _ = write_image(Image(arr, np.eye(4)), d / folder / "case_1.nii.gz")
    >>> report = evaluate_folder(d / "pred", d / "ref", out_dir=d / "report", labels={"liver": 1})
    >>> report["per_case"][0]["case"], report["mean"]["liver"]["dice"], report["mean"]["liver"]["hd"]
    ('case_1', 0.5, 1.0)
    >>> sorted(p.name for p in (d / "report").iterdir())
    ['metrics.csv', 'metrics.json', 'report.html', 'report.md']
    >>> tmp.cleanup()
    """
    if spacing_from not in (None, "ref", "pred"):
        raise InputError(f"--spacing-from must be 'ref' or 'pred', not {spacing_from!r}")
    check_distance_settings(nsd_tolerance, distance_cap)
    if not 0 <= geometry_tolerance < float("inf"):  # inf took every grid for the reference's: nothing re-indexed
        raise InputError(f"--geometry-tolerance must be a finite number of mm >= 0, got {geometry_tolerance}")
    if isinstance(lesion_classes, str):  # "tumour,cyst" as on the command line, not its characters
        lesion_classes = [c.strip() for c in lesion_classes.split(",") if c.strip()]
    if isinstance(labels, (str, os.PathLike)):
        names: dict[int, str] | None = read_label_names(labels)
    else:
        names = label_names(labels) if labels is not None else None
    known_names = set(names.values()) | {str(v) for v in names} if names else None
    for lc in lesion_classes:
        if known_names is not None and str(lc) not in known_names:
            raise InputError(f"lesion class '{lc}' is not one of the labels ({', '.join(sorted(names.values()))})")
    unnamed = unnamed_lesion_classes(lesion_classes) if known_names is None else []
    if unnamed:  # without labels the classes are the values found, named label_<value>
        raise InputError(f"--lesion-classes {unnamed[0]!r} names no class: without --labels the classes are the label "
                         "values found (1, 2, ... or label_1, label_2, ...); name them with --labels dataset.json")
    if isinstance(nsd_tolerance, Mapping) and known_names is not None:
        unknown = sorted(str(k) for k in nsd_tolerance if str(k) != "default" and str(k) not in known_names)
        if unknown:  # a misspelt class would silently get the default tolerance
            raise InputError(f"--nsd-tolerance names {', '.join(unknown)}, not one of the labels "
                             f"({', '.join(sorted(names.values()))})")
    pairs = pair_cases(pred, ref)
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError("output exists and is not a folder", path=out_dir)  # before hours of work, not after
    kwargs = dict(nsd_tolerance=nsd_tolerance, lesion_classes=tuple(lesion_classes),
                  lesion_thresholds=tuple(lesion_thresholds), connectivity=connectivity,
                  distance_cap=distance_cap, surface=surface)
    per_case: list[dict] = []
    with _progress(len(pairs), progress) as bar:
        task = bar.add_task("cases", total=len(pairs))
        if workers > 1 and len(pairs) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(min(workers, len(pairs)), mp_context=mp.get_context("spawn")) as ex:
                futs = [ex.submit(_evaluate_pair, p, names, spacing_from, kwargs, geometry_tolerance) for p in pairs]
                try:
                    for f in futs:
                        per_case.append(f.result())
                        bar.advance(task)
                except BaseException:
                    ex.shutdown(wait=True, cancel_futures=True)  # a bad case stops the rest at once
                    raise
        else:
            for p in pairs:
                per_case.append(_evaluate_pair(p, names, spacing_from, kwargs, geometry_tolerance))
                bar.advance(task)
    _warn_micrometres(per_case, nsd_tolerance)
    if names is None:
        _warn_unreferenced(per_case)
        found = sorted({v for c in per_case for v in c["labels"].values()})
        names = label_names(found)
        absent = absent_lesion_classes(lesion_classes, {str(v): n for v, n in names.items()})
        if absent:  # a warning, not an error: a cohort without any lesion of that class is a valid cohort
            warnings.warn(f"--lesion-classes {', '.join(absent)}: no such label value in any prediction or "
                          "reference, so no lesion-wise metrics for it", stacklevel=2)
    _fill_missing(per_case, names, kwargs)
    import medseg

    settings = {
        "medseg_version": medseg.__version__, "pred": str(pred), "ref": str(ref), "n_cases": len(per_case),
        "labels": {str(v): n for v, n in names.items()},
        "nsd_tolerance_mm": dict(nsd_tolerance) if isinstance(nsd_tolerance, Mapping) else float(nsd_tolerance),
        "spacing_from": spacing_from or "checked (pred and ref share the grid)",
        "geometry_tolerance_mm": geometry_tolerance,
        "distance_cap": distance_cap, "lesion_classes": [str(x) for x in lesion_classes],
        "lesion_thresholds": list(lesion_thresholds), "lesion_connectivity": connectivity or "full",
        "hd95": "max of the two directed 95th percentiles (linear interpolation) of border-voxel distances",
        "assd": "mean of the pooled distances of both directions",
        "empty_policy": "both empty: dice 1, distances 0, nsd 1 (flag both_empty); one empty: dice 0, nsd 0, "
                        "distances NaN (null) left out of means unless distance_cap is set",
    }
    report = {"per_case": per_case, **summarize(per_case, list(names.values())), "settings": settings}
    if out_dir is not None:
        from medseg.evaluate.report import write_report

        write_report(report, out_dir, protect=[p.pred for p in pairs] + [p.ref for p in pairs])
    return report
