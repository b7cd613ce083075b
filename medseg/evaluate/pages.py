"""The human-readable pages of a metrics report: ``report.md`` and a self-contained ``report.html``.

Both show the same tables, built once here (per-class summary, lesion-wise scores, worst cases) and only typeset
differently. The HTML embeds its plot as a base64 PNG (matplotlib Agg): no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re

from medseg.evaluate.summary import PIXEL_ACCURACY_NOTE, worst_cases

TABLE_KEYS = ("dice", "iou", "hd95", "assd", "nsd", "volume_ref_ml", "volume_pred_ml")
LESION_KEYS = ("precision", "recall", "f1", "ap", "panoptic_quality")
LESION_HEADS = ("class", "n_ref", "n_pred", "TP", "FP", "FN", "precision", "recall", "F1", "AP", "PQ")  # md and html


def _clean(obj):
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) >= 1000 else f"{v:.{digits}f}".rstrip("0").rstrip(".") if v else "0"


def _md(text) -> str:
    """``text`` as Markdown shows it verbatim in a table cell or list item: a ``|`` or a line break in a class or
    case name split the table; ``**``, ``__``, ``~~``, ``[..](..)``, ``<`` or ``&lt;`` in it turned into bold,
    struck-through or linked text, HTML or another character.

    Examples
    --------
    >>> _md("hippocampus_001"), _md("__x__"), _md("a|b")
    ('hippocampus_001', '\\\\_\\\\_x\\\\_\\\\_', 'a\\\\|b')
    """
    out = "".join("\\" + ch if ch in "\\|*`<>[]~&" else ch for ch in str(text))
    # '_' emphasises only at a word's edge (CommonMark): escaped there alone, so hippocampus_001 reads as typed
    out = re.sub(r"(?<![^\W_])_|_(?![^\W_])", r"\\_", out)
    return out.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


def _table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in TABLE_KEYS if any(k in m for m in report["mean"].values())]
    tol = report["settings"].get("nsd_tolerance_mm")
    heads = ["class", "n"] + [f"nsd@{tol}mm" if k == "nsd" and not isinstance(tol, dict) else k for k in keys]
    rows = []
    for name, m in report["mean"].items():
        s = report["std"][name]
        row = [name, str(m["n_cases"])]
        for k in keys:
            row.append(f"{_fmt(m.get(k))} ± {_fmt(s.get(k))}" if k in ("dice", "iou", "hd95", "assd", "nsd")
                       else _fmt(m.get(k)))
        rows.append(row)
    fg = report["foreground_mean"]
    rows.append(["foreground mean", ""] + [_fmt(fg.get(k)) for k in keys])  # the last row
    return heads, rows


def _lesion_threshold(lesions: dict) -> str:
    """The IoU threshold the lesion tables show: 0.5 when it was computed, else the lowest one computed (a table of
    blanks left out the numbers the JSON holds)."""
    found = {k.split("@", 1)[1] for d in lesions.values() for k in d if k.startswith("tp@")}
    return "0.5" if "0.5" in found or not found else min(found, key=float)


def _lesion_rows(report: dict) -> tuple[str, list[list[str]]]:
    """The lesion table's IoU threshold and rows (pooled over cases), one per lesion class; no rows without any."""
    lesions = {n: m["lesions"] for n, m in report["mean"].items() if "lesions" in m}
    if not lesions:
        return "", []
    t = _lesion_threshold(lesions)
    return t, [[n, str(d["n_ref"]), str(d["n_pred"]), *(str(d.get(f"{k}@{t}", "")) for k in ("tp", "fp", "fn")),
                *(_fmt(d.get(f"{k}@{t}")) for k in LESION_KEYS)] for n, d in lesions.items()]


WORST_HEADS = ("case", "mean dice", "worst class", "its dice")


def _worst_rows(report: dict) -> list[list[str]]:
    return [[w["case"], _fmt(w["mean_dice"]), w["worst_class"], _fmt(w["worst_dice"])]
            for w in worst_cases(report["per_case"])]


def _md_table(heads, rows, names=(0,)) -> list[str]:
    """Markdown table lines; the columns in ``names`` hold user text and are escaped."""
    return (["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
            + ["| " + " | ".join(_md(c) if j in names else c for j, c in enumerate(r)) + " |" for r in rows])


def _html_table(heads, rows) -> str:
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in heads) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def _notes(report: dict) -> list[str]:
    ov = report["overall"]
    notes = [f"pixel accuracy {_fmt(ov['pixel_accuracy']['mean'])}, mean IoU {_fmt(ov['mean_iou']['mean'])} "
             f"(mean over cases): {PIXEL_ACCURACY_NOTE}."]
    ci = {n: c["dice"] for n, c in report.get("ci95", {}).items() if c.get("dice")}
    if ci and max(m["n_cases"] for m in report["mean"].values()) > 1:
        notes.append("95 % bootstrap interval of the mean Dice over cases (differences inside it are not resolved "
                     "by this many cases): " + ", ".join(f"{n} {_fmt(lo)}-{_fmt(hi)}" for n, (lo, hi) in ci.items())
                     + ".")
    for name, m in report["mean"].items():
        parts = [f"{m[f'n_{f}']} {f.replace('_', ' ')}" for f in ("both_empty", "pred_empty", "ref_empty")
                 if m.get(f"n_{f}")]
        capped = m.get("n_distance_capped", 0)
        if parts or capped:
            cap = report["settings"].get("distance_cap")
            cap = "the image diagonal" if isinstance(cap, str) else f"{_fmt(cap)} mm"
            held = f", {capped} of them capped at {cap}" if capped else ""
            notes.append(f"{name}: {', '.join(parts) or 'no empty masks'} (distances averaged over "
                         f"{m.get('n_surface_cases', 0)} of {m['n_cases']} cases{held}).")
    return notes


def to_markdown(report: dict) -> str:
    """The report as Markdown (``report.md``): per-class mean ± std over cases, lesion-wise scores, notes, the
    worst cases and the settings.

    Parameters
    ----------
    report : dict
        What :func:`medseg.evaluate.folder.evaluate_folder` returns: ``per_case`` (rows of
        :func:`medseg.evaluate.metrics.evaluate_case` with a ``case`` name), the entries of
        :func:`medseg.evaluate.summary.summarize` and ``settings``.

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from medseg.evaluate.metrics import evaluate_case
    >>> from medseg.evaluate.summary import summarize
    >>> ref = np.zeros((4, 4), np.uint8); ref[:2, :2] = 1          # two 2x2 squares sharing one column
    >>> pred = np.zeros((4, 4), np.uint8); pred[:2, 1:3] = 1
    >>> per_case = [{"case": "a", **evaluate_case(pred, ref)}]
    >>> report = {"per_case": per_case, **summarize(per_case, ["label_1"]), "settings": {"nsd_tolerance_mm": 2.0}}
    >>> for line in to_markdown(report).splitlines()[2:5]:
    ...     print(line)
    | class | n | dice | iou | hd95 | assd | nsd@2.0mm | volume_ref_ml | volume_pred_ml |
    |---|---|---|---|---|---|---|---|---|
    | label_1 | 1 | 0.5 ± 0 | 0.3333 ± 0 | 1 ± 0 | 0.5 ± 0 | 1 ± 0 | 0.004 | 0.004 |
    """
    heads, rows = _table_rows(report)
    rows = [[_md(r[0]), *r[1:]] for r in rows[:-1]] + [[f"**{rows[-1][0]}**", *rows[-1][1:]]]
    lines = [f"# Segmentation metrics ({_cases(len(report['per_case']))})", "",
             *_md_table(heads, rows, names=())]
    t, lesion_rows = _lesion_rows(report)
    if lesion_rows:
        lines += ["", f"Lesion-wise (pooled over cases, IoU >= {t}):", "", *_md_table(LESION_HEADS, lesion_rows)]
    lines += ["", *(f"- {_md(n)}" for n in _notes(report)), "", "Worst cases (lowest mean Dice):", "",
              *_md_table(WORST_HEADS, _worst_rows(report), names=(0, 2))]
    lines += ["", "Settings: " + ", ".join(f"{_md(k)}={_md(v)}" for k, v in report["settings"].items()), ""]
    return "\n".join(lines)


def dice_plot_png(report: dict) -> bytes:
    """Box plot with the per-case points (strip) of Dice per class, as PNG bytes (matplotlib's Agg backend; the
    points' jitter has a fixed seed, so the same report gives the same picture).

    Parameters
    ----------
    report : dict
        What :func:`medseg.evaluate.folder.evaluate_folder` returns: ``per_case`` (rows of
        :func:`medseg.evaluate.metrics.evaluate_case` with a ``case`` name), the entries of
        :func:`medseg.evaluate.summary.summarize` and ``settings``.

    Returns
    -------
    bytes
        A PNG file's content.

    Examples
    --------
    >>> import numpy as np
    >>> from medseg.evaluate.metrics import evaluate_case
    >>> from medseg.evaluate.summary import summarize
    >>> ref = np.zeros((4, 4), np.uint8); ref[:2, :2] = 1          # two 2x2 squares sharing one column
    >>> pred = np.zeros((4, 4), np.uint8); pred[:2, 1:3] = 1
    >>> per_case = [{"case": "a", **evaluate_case(pred, ref)}]
    >>> report = {"per_case": per_case, **summarize(per_case, ["label_1"]), "settings": {"nsd_tolerance_mm": 2.0}}
    >>> dice_plot_png(report)[1:4]  # the PNG signature
    b'PNG'
    """
    # a Figure of its own, drawn by the PNG writer's canvas: no backend is chosen, so a caller's (a notebook's inline
    # one) stays as it was, and no display is needed
    from matplotlib.figure import Figure
    import numpy as np

    names = list(report["mean"])
    data = [[c["classes"][n]["dice"] for c in report["per_case"] if n in c["classes"]] for n in names]
    fig = Figure(figsize=(max(4.0, 0.35 * len(names) + 2), 3.6), dpi=100)
    ax = fig.add_subplot()
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=6, alpha=0.5, color="tab:blue")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=90 if len(names) > 6 else 0, fontsize=8)
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Dice per class (box: quartiles, dots: cases)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def to_html(report: dict) -> str:
    """The report as one self-contained HTML page (``report.html``): the tables of :func:`to_markdown` and the
    plot of :func:`dice_plot_png` embedded as base64, no external resources.

    Parameters
    ----------
    report : dict
        What :func:`medseg.evaluate.folder.evaluate_folder` returns: ``per_case`` (rows of
        :func:`medseg.evaluate.metrics.evaluate_case` with a ``case`` name), the entries of
        :func:`medseg.evaluate.summary.summarize` and ``settings``.

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> from medseg.evaluate.metrics import evaluate_case
    >>> from medseg.evaluate.summary import summarize
    >>> ref = np.zeros((4, 4), np.uint8); ref[:2, :2] = 1          # two 2x2 squares sharing one column
    >>> pred = np.zeros((4, 4), np.uint8); pred[:2, 1:3] = 1
    >>> per_case = [{"case": "a", **evaluate_case(pred, ref)}]
    >>> report = {"per_case": per_case, **summarize(per_case, ["label_1"]), "settings": {"nsd_tolerance_mm": 2.0}}
    >>> page = to_html(report)
    >>> page.startswith("<!DOCTYPE html>"), "<td>label_1</td><td>1</td><td>0.5 ± 0</td>" in page
    (True, True)
    """
    e = html.escape
    table = _html_table(*_table_rows(report))
    png = base64.b64encode(dice_plot_png(report)).decode("ascii")
    worst = _html_table(WORST_HEADS, _worst_rows(report))
    notes = "".join(f"<li>{e(n)}</li>" for n in _notes(report))
    t, lesion_rows = _lesion_rows(report)
    lesion_html = (f"<h2>Lesion-wise (pooled over cases, IoU &ge; {t})</h2>\n{_html_table(LESION_HEADS, lesion_rows)}\n"
                   if lesion_rows else "")
    settings = "".join(f"<li>{e(str(k))}: {e(json.dumps(_clean(v)))}</li>" for k, v in report["settings"].items())
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>medseg evaluation</title>"
            f"<style>{style}</style></head><body>\n<h1>Segmentation metrics ({_cases(len(report['per_case']))})</h1>\n"
            f"<h2>Summary (mean ± std over cases)</h2>\n{table}\n<ul>{notes}</ul>\n{lesion_html}"
            f"<h2>Dice per class</h2>\n<img alt=\"Dice per class\" src=\"data:image/png;base64,{png}\">\n"
            f"<h2>Worst cases</h2>\n{worst}\n<h2>Settings</h2>\n<ul>{settings}</ul>\n</body></html>\n")


def _cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"
