"""CLI: `medseg demo` (issue 2; later issues add steps in ``medseg.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medseg.cli.app import app


@app.command("demo")
def demo_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="Sample data folder (default: $MEDSEG_DATA, "
                                        "else ../shared/data next to the repository or the current folder)."),
    out: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Folder for the demo's outputs."),
    train_minutes: float = typer.Option(3.0, "--train-minutes", min=0.1, help="Training budget of the demo model."),
) -> None:
    """Run the main job on the real sample data: DICOM study -> NIfTI; a short hippocampus training run ->
    prediction -> report; DICOM in -> DICOM-SEG/RTSTRUCT out; cell counting. Prints where each artefact is.

    Example: medseg demo --data ../shared/data -o demo_output
    """
    from medseg.demo import find_data, run_demo

    run_demo(find_data(data), out, train_minutes=train_minutes)
