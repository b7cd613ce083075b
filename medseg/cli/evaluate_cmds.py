"""CLI: `medseg evaluate` (issue 3)."""

from __future__ import annotations

from medseg.cli.app import app  # noqa: F401
