"""CLI: `medseg demo`, `medseg data` (issues 2 and 7)."""

from __future__ import annotations

from medseg.cli.app import app  # noqa: F401
