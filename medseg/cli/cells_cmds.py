"""CLI: `medseg cells train|count|evaluate` (issue 5)."""

from __future__ import annotations

from medseg.cli.app import app  # noqa: F401
