"""CLI: `medseg dataset convert`, `medseg plan`, `medseg train`, `medseg predict` (issue 4)."""

from __future__ import annotations

from medseg.cli.app import app  # noqa: F401
