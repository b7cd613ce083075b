"""CLI: `medseg info`, `medseg convert` (issue 2; DICOM-SEG/RTSTRUCT import in convert: issue 6).

Thin wrappers over ``medseg.io.convert.describe`` / ``convert``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app


@app.command("info")
def info_cmd(
    path: Path = typer.Argument(..., metavar="PATH",
                                help="Image file (NIfTI, NRRD, MHA, TIFF, PNG, DICOM) or DICOM folder."),
    series: Optional[str] = typer.Option(None, "--series",
                                         help="Only this DICOM series (index or SeriesInstanceUID)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list with one record per series)."),
) -> None:
    """Print shape, spacing, origin, direction, orientation, dtype, intensity range, modality and series
    description/UID of every image (every series of a DICOM folder)."""
    from medseg.io.convert import describe, format_summary

    records = describe(path, series=series)
    if as_json:
        typer.echo(json.dumps(records, indent=2))
    else:
        typer.echo("\n".join(format_summary(r) for r in records))


@app.command("convert")
def convert_cmd(
    input: Path = typer.Argument(..., metavar="INPUT", help="Image file, DICOM folder, or DICOM-SEG/RTSTRUCT file."),
    output: str = typer.Argument(..., metavar="OUTPUT",  # a string: a trailing '/' (a folder) must reach convert
                                 help="Output file (.nii.gz, .nii, .nrrd, .mha) or folder (one file per series; "
                                      "a trailing '/' makes any name a folder)."),
    series: Optional[str] = typer.Option(None, "--series",
                                         help="DICOM series to convert (index or SeriesInstanceUID); for a "
                                              "DICOM-SEG/RTSTRUCT input, the series of --reference it lies on."),
    allow_tilt: bool = typer.Option(False, "--allow-tilt",
                                    help="Resample gantry-tilted series onto an orthogonal grid."),
    reference: Optional[Path] = typer.Option(None, "--reference",
                                             help="Image series a DICOM-SEG/RTSTRUCT input refers to (only for "
                                                  "those inputs)."),
    rt_fill: str = typer.Option("centre", "--rt-fill",
                                help="RTSTRUCT rasterisation: 'centre' (pixel centres inside, like plastimatch) or "
                                     "'edge' (also pixels the contour crosses, like rt-utils/OpenCV)."),
) -> None:
    """Convert between NIfTI/NRRD/MHA, or DICOM (folder or file) to any of them; prints the files written."""
    from medseg.io.convert import convert

    for p in convert(input, output, series=series, allow_tilt=allow_tilt, reference=reference,
                     rt_fill=rt_fill):
        typer.echo(str(p))
