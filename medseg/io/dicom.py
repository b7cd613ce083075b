"""DICOM series discovery and loading (issue 2 fills this in).

Public API (others build on these names):

* ``discover_series(folder) -> list[SeriesInfo]``: every series under ``folder`` (recursive), split
  by SeriesInstanceUID and, within one UID, by orientation/size; sorted by geometry.
* ``load_series(path, series=None) -> Image``: one series as an ``Image`` (RAS affine), rescale applied.
  ``meta`` holds ``modality``, ``series_uid``, ``study_uid``, ``frame_of_reference_uid``,
  ``series_description``, ``sop_instance_uids`` and ``files`` in volume (slice) order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import InputError
from medseg.io.image import Image


@dataclass
class SeriesInfo:
    """One discovered series: its files in slice order and the identifiers a user picks it by."""

    index: int
    series_uid: str
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def discover_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    raise NotImplementedError("issue 2")


def load_series(path: str | os.PathLike, series: str | int | None = None) -> Image:
    raise InputError("DICOM reading is not implemented yet", path=path)
