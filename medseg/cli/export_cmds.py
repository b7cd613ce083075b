"""CLI: `medseg export` (issue 6)."""

from __future__ import annotations

from medseg.cli.app import app  # noqa: F401
