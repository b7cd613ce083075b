"""The Typer application that every command module registers on."""

from __future__ import annotations

import typer

import medseg

app = typer.Typer(
    name="medseg",
    help="medseg: medical volumetric segmentation. Run 'medseg COMMAND --help' for a command's options.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
dataset_app = typer.Typer(help="Dataset layouts: convert to MSD/nnU-Net, check integrity.", no_args_is_help=True)
cells_app = typer.Typer(help="Cell counting in microscopy: train, count, evaluate.", no_args_is_help=True)
data_app = typer.Typer(help="Sample data: where it is, and fetching it when asked.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
app.add_typer(cells_app, name="cells")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {medseg.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks (also accepted after the command)."),
) -> None:
    """medseg: medical volumetric segmentation with exact geometry."""
