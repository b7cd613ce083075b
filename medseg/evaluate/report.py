"""Writing a metrics report: ``metrics.json``, ``metrics.csv``, ``report.md`` and a self-contained ``report.html``.

Everything is rendered in memory first, then each file is written atomically, so a failure
leaves no partial report. The two pages (Markdown and HTML) are typeset in :mod:`medseg.evaluate.pages`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path

from medseg.errors import InputError
from medseg.evaluate.metrics import METRIC_KEYS
from medseg.evaluate.pages import (LESION_HEADS, LESION_KEYS, TABLE_KEYS, _clean, dice_plot_png,  # noqa: F401
                                   to_html, to_markdown)
from medseg.io.atomic import atomic_path, deferred_interrupts

REPORT_FILES = ("metrics.json", "metrics.csv", "report.html", "report.md")


def to_json(report: dict) -> str:
    """The report as JSON text (``metrics.json``): NaN and infinities as ``null``, NumPy scalars as numbers.

    Parameters
    ----------
    report : dict
        Any mapping of JSON-able values (NumPy scalars and non-finite floats included).

    Returns
    -------
    str
        Indented JSON ending with a newline; non-finite values never appear as ``NaN`` (invalid JSON).

    Examples
    --------
    >>> import numpy as np
    >>> print(to_json({"dice": np.float64(0.5), "hd95": float("nan")}), end="")
    {
     "dice": 0.5,
     "hd95": null
    }
    """
    return json.dumps(_clean(report), indent=1, allow_nan=False) + "\n"


def to_csv(report: dict) -> str:
    """One row per case x class; lesion metrics as ``lesion_<key>`` columns (``metrics.csv``).

    Parameters
    ----------
    report : dict
        What :func:`medseg.evaluate.folder.evaluate_folder` returns: ``per_case`` (rows of
        :func:`medseg.evaluate.metrics.evaluate_case` with a ``case`` name), the entries of
        :func:`medseg.evaluate.summary.summarize` and ``settings``.

    Returns
    -------
    str
        CSV text: columns ``case``, ``class``, ``label``, every metric of
        :data:`medseg.evaluate.metrics.METRIC_KEYS`, the lesion columns and ``flags`` (``;``-separated); undefined
        values (NaN, None) are blank.

    Examples
    --------
    >>> import numpy as np
    >>> from medseg.evaluate.metrics import evaluate_case
    >>> from medseg.evaluate.summary import summarize
    >>> ref = np.zeros((4, 4), np.uint8); ref[:2, :2] = 1          # two 2x2 squares sharing one column
    >>> pred = np.zeros((4, 4), np.uint8); pred[:2, 1:3] = 1
    >>> per_case = [{"case": "a", **evaluate_case(pred, ref)}]
    >>> report = {"per_case": per_case, **summarize(per_case, ["label_1"]), "settings": {"nsd_tolerance_mm": 2.0}}
    >>> row = next(csv.DictReader(io.StringIO(to_csv(report))))
    >>> row["case"], row["class"], row["dice"], row["hd"], row["tp"], row["fp"], row["fn"]
    ('a', 'label_1', '0.5', '1.0', '2', '2', '2')
    """
    lesion_keys: list[str] = []
    for c in report["per_case"]:
        for m in c["classes"].values():
            for k in m.get("lesions", {}):
                if k not in lesion_keys:
                    lesion_keys.append(k)
    header = ["case", "class", "label", *METRIC_KEYS, *(f"lesion_{k}" for k in lesion_keys), "flags"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for c in report["per_case"]:
        for name, m in c["classes"].items():
            row = [c["case"], name, c["labels"][name]]
            row += [_fmt_csv(m.get(k)) for k in METRIC_KEYS]
            row += [_fmt_csv(m.get("lesions", {}).get(k)) for k in lesion_keys]
            row.append(";".join(m["flags"]))
            w.writerow(row)
    return buf.getvalue()


def _fmt_csv(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return repr(float(v)) if isinstance(v, float) else v


def write_report(report: dict, out_dir: str | os.PathLike, protect=()) -> dict[str, Path]:
    """Render the four files in memory, then write each atomically into ``out_dir`` (created if needed).

    Parameters
    ----------
    report : dict
        What :func:`medseg.evaluate.folder.evaluate_folder` returns: ``per_case`` (rows of
        :func:`medseg.evaluate.metrics.evaluate_case` with a ``case`` name), the entries of
        :func:`medseg.evaluate.summary.summarize` and ``settings``.
    out_dir : path
        Output folder; a folder created here is removed again if writing fails.
    protect : sequence of path
        Files that must not be overwritten (the inputs).

    Returns
    -------
    dict of str to Path
        ``metrics.json``, ``metrics.csv``, ``report.html`` and ``report.md``, each with its path.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from medseg.evaluate.metrics import evaluate_case
    >>> from medseg.evaluate.summary import summarize
    >>> ref = np.zeros((4, 4), np.uint8); ref[:2, :2] = 1          # two 2x2 squares sharing one column
    >>> pred = np.zeros((4, 4), np.uint8); pred[:2, 1:3] = 1
    >>> per_case = [{"case": "a", **evaluate_case(pred, ref)}]
    >>> report = {"per_case": per_case, **summarize(per_case, ["label_1"]), "settings": {"nsd_tolerance_mm": 2.0}}
    >>> tmp = tempfile.TemporaryDirectory()
    >>> files = write_report(report, Path(tmp.name) / "report")
    >>> sorted(files), files["report.md"].read_text().splitlines()[0]
    (['metrics.csv', 'metrics.json', 'report.html', 'report.md'], '# Segmentation metrics (1 case)')
    >>> tmp.cleanup()
    """
    out_dir = Path(out_dir)
    texts = {"metrics.json": to_json(report), "metrics.csv": to_csv(report),
             "report.html": to_html(report), "report.md": to_markdown(report)}
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", path=out_dir) from exc
    try:
        # all four or none: every temp file is written before any is renamed into place, and no Ctrl-C between
        with deferred_interrupts(), contextlib.ExitStack() as stack:
            for name in REPORT_FILES:
                tmp = stack.enter_context(atomic_path(out_dir / name, protect=protect))
                tmp.write_text(texts[name], encoding="utf-8")
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return {name: out_dir / name for name in REPORT_FILES}
