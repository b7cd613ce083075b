"""CLI: `medseg info`, `medseg convert` (issue 2; DICOM-SEG/RTSTRUCT import in convert: issue 6)."""

from __future__ import annotations

from medseg.cli.app import app  # noqa: F401
