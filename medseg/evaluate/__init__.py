"""Evaluation: overlap, surface and instance metrics; reports.

Python API (what ``medseg evaluate`` calls):

* :func:`evaluate_case` (``medseg.evaluate.metrics``): every per-class metric of one prediction;
* :func:`evaluate_folder` (``medseg.evaluate.folder``): cases matched by name, in parallel, into
  ``metrics.json``/``metrics.csv``/``report.html``/``report.md``;
* building blocks: ``overlap.confusion_matrix``, ``surface.surface_metrics``,
  ``lesions.lesion_metrics``, ``instances.match_instances``/``instance_metrics``.

Imports are lazy so that ``medseg.evaluate.instances`` stays cheap for the cells pipeline.
"""

from __future__ import annotations

_API = {"evaluate_case": "medseg.evaluate.metrics", "evaluate_folder": "medseg.evaluate.folder",
        "write_report": "medseg.evaluate.report", "lesion_metrics": "medseg.evaluate.lesions",
        "surface_metrics": "medseg.evaluate.surface", "confusion_matrix": "medseg.evaluate.overlap",
        "match_instances": "medseg.evaluate.instances", "instance_metrics": "medseg.evaluate.instances"}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medseg.evaluate' has no attribute {name!r}")
