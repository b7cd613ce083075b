"""CLI: `medseg export` (issue 6): a thin layer over :func:`medseg.export.export_segmentation`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app

_FORMATS = "dicom-seg|rtstruct|seg-nrrd|nifti"


@app.command("export")
def export_cmd(
    seg: Path = typer.Argument(..., help="Label map (NIfTI, NRRD, MHA, ...) on the series grid or any grid covering it."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"Output format: {_FORMATS}."),
    output: Path = typer.Option(..., "--output", "-o",
                                help="File to write: .dcm or no extension (dicom-seg, rtstruct), .seg.nrrd, .nii.gz "
                                     "(nifti also writes .itksnap.txt and .ctbl)."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r",
                                             help="DICOM series folder (required for dicom-seg and rtstruct)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="dataset.json (MSD or nnU-Net) or a {value: "
                                          "name} JSON naming the labels."),
    series: Optional[str] = typer.Option(None, "--series", help="Series UID or index when the --reference folder "
                                         "holds several."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Model name recorded in the DICOM objects "
                                             "(dicom-seg, rtstruct)."),
    seg_type: Optional[str] = typer.Option(None, "--seg-type", help="DICOM-SEG type: binary (default) or labelmap "
                                           "(dicom-seg only)."),
    rt_holes: Optional[str] = typer.Option(None, "--rt-holes", help="RTSTRUCT holes: keyhole (default; any reader) "
                                           "or separate (even-odd rule) (rtstruct only)."),
) -> None:
    """Export a label map to DICOM-SEG, RTSTRUCT, 3D Slicer .seg.nrrd or NIfTI with colour tables."""
    from medseg.export import export_segmentation

    out = export_segmentation(seg, reference, fmt, output, labels=labels, series=series, model_name=model_name,
                              seg_type=seg_type, rt_holes=rt_holes)
    typer.echo(str(out))
