"""Execute every notebook in notebooks/ (each must finish in a few minutes on CPU); a failing cell fails CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import DATA, REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"real data not available at {DATA}: the notebooks run on it")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    # Run in a scratch folder so outputs never land in the repository; the notebooks find the data via
    # MEDSEG_DATA and the package via PYTHONPATH.
    os.environ["MEDSEG_DATA"] = str(DATA)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    os.environ["MPLBACKEND"] = "Agg"
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
