"""CLI: ``medseg evaluate`` (issue 3), a thin layer over :func:`medseg.evaluate.folder.evaluate_folder`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app
from medseg.errors import InputError


def parse_tolerance(text: str) -> float | dict:
    """``"2"`` -> 2.0; ``"default=2,liver=3"`` -> ``{"default": 2.0, "liver": 3.0}``.

    Examples
    --------
    >>> parse_tolerance("1.5"), parse_tolerance("anterior=1,default=2")
    (1.5, {'anterior': 1.0, 'default': 2.0})
    """
    try:
        if "=" not in text:
            value = float(text)
            if not 0 <= value < float("inf"):  # NaN too: it would score every surface 0
                raise ValueError
            return value
        out = {}
        for item in text.split(","):
            name, _, mm = item.partition("=")
            out[name.strip()] = float(mm)
            if not 0 <= out[name.strip()] < float("inf"):
                raise ValueError
        return out
    except ValueError:
        raise InputError(f"--nsd-tolerance: expected MM or CLASS=MM[,CLASS=MM...], got {text!r}") from None


def _parse_cap(text: str | None):
    if text is None or text == "diagonal":
        return text
    try:
        cap = float(text)
        if not 0 < cap < float("inf"):
            raise ValueError
        return cap
    except ValueError:
        raise InputError(f"--distance-cap: expected a positive MM or 'diagonal', got {text!r}") from None


@app.command("evaluate")
def evaluate(
    pred: Path = typer.Option(..., "--pred", "-p", help="Predicted label map, or a folder of them."),
    ref: Path = typer.Option(..., "--ref", "-r", help="Reference label map, or a folder (matched by file name)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: metrics.json, metrics.csv, report.html, report.md."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="dataset.json (MSD/nnU-Net) or a {value: name} "
                                          "JSON naming the classes (default: the values found)."),
    spacing_from: Optional[str] = typer.Option(
        None, "--spacing-from", help="'ref' or 'pred': only the shapes must match, use that side's spacing "
        "(default: pred and ref must share shape and affine)."),
    geometry_tolerance: float = typer.Option(1e-3, "--geometry-tolerance", min=0.0, help="Largest distance (mm, "
                                             "finite) between the two grids' positions of a voxel still taken as "
                                             "one grid."),
    nsd_tolerance: str = typer.Option("2", "--nsd-tolerance", help="NSD tolerance in mm: MM or CLASS=MM,...,default=MM."),
    lesion_classes: str = typer.Option("", "--lesion-classes", help="Comma-separated 'thing' classes (names or "
                                       "values) for lesion-wise metrics (connected components matched at IoU)."),
    distance_cap: Optional[str] = typer.Option(None, "--distance-cap", help="HD/ASSD value (mm, or 'diagonal') when "
                                               "one side is empty; default: NaN, left out of the means."),
    no_surface: bool = typer.Option(False, "--no-surface", help="Skip surface distances (overlap and volumes only)."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Processes over cases."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary on stdout."),
) -> None:
    """Per-class Dice, IoU, HD95, ASSD, NSD, volumes (and lesion-wise metrics) of predictions against references."""
    from medseg.evaluate.folder import evaluate_folder

    report = evaluate_folder(
        pred, ref, out_dir=out, labels=labels, spacing_from=spacing_from,
        nsd_tolerance=parse_tolerance(nsd_tolerance),
        lesion_classes=[s.strip() for s in lesion_classes.split(",") if s.strip()],
        distance_cap=_parse_cap(distance_cap), surface=not no_surface, workers=workers,
        geometry_tolerance=geometry_tolerance,
        progress=False if quiet else None)
    if not quiet:
        fg = report["foreground_mean"]
        parts = [f"{k} {fg[k]:.4f}" for k in ("dice", "iou", "hd95", "nsd") if k in fg and fg[k] == fg[k]]
        typer.echo(f"{len(report['per_case'])} cases, {len(report['mean'])} classes; foreground mean: "
                   f"{', '.join(parts)}; report in {out}")
