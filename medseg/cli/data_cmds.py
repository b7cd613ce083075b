"""CLI: ``medseg data where|list|fetch`` (the only command that may use the network, and only when asked)."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.cli.app import data_app


@data_app.command("where")
def where(data: Path = typer.Option(None, "--data", help="Sample data folder to check.")) -> None:
    """Print the sample data folder medseg would use (--data, $MEDSEG_DATA, or ../shared/data)."""
    from medseg.data import find_sample_data
    from medseg.errors import InputError

    found = find_sample_data(data)
    if found is None and data is not None:
        raise InputError("sample data folder not found", path=data)
    if found is None:
        raise InputError("no sample data found: pass --data DIR or set MEDSEG_DATA (or run 'medseg data fetch NAME')")
    typer.echo(str(found))


@data_app.command("list")
def list_sources() -> None:
    """List the public datasets 'medseg data fetch' can download."""
    from medseg.data import SOURCES

    for s in SOURCES.values():
        typer.echo(f"{s.name}\t{s.licence}\t{s.description}\n\t{s.url}")


@data_app.command("fetch")
def fetch_cmd(
    name: str = typer.Argument(..., help="Dataset name (see 'medseg data list')."),
    out: Path = typer.Option(Path("medseg_data"), "-o", "--out", help="Folder to put the dataset in."),
) -> None:
    """Download a public dataset from its official source, verify it, and unpack it (network needed).

    Example: medseg data fetch msd-hippocampus -o ~/data
    """
    from medseg.data import fetch

    typer.echo(f"fetched into {fetch(name, out)}")
