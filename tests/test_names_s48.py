"""Names and paths (audit s48): what users' file names do to medseg's outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import data_path, run_cli

HIPPO_LAB = ("msd_hippocampus", "labelsTr")


def _cases(metrics: Path) -> list[str]:
    return sorted(c["case"] for c in json.loads(metrics.read_text())["per_case"])


def test_evaluate_keeps_a_label_map_named_like_a_probabilities_file(tmp_path):
    """A reference case ``x_probs`` beside case ``x`` is a case (a 3D label map), not what ``predict
    --probabilities`` writes: it was dropped from both folders and the report covered one case of two, exit 0."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for d in (pred, ref):
        d.mkdir()
        shutil.copy(data_path(*HIPPO_LAB, "hippocampus_001.nii.gz"), d / "x.nii.gz")
        shutil.copy(data_path(*HIPPO_LAB, "hippocampus_004.nii.gz"), d / "x_probs.nii.gz")
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "rep", "-q")
    assert res.code == 0, res.err
    assert _cases(tmp_path / "rep" / "metrics.json") == ["x", "x_probs"]


def test_evaluate_still_skips_probabilities_on_both_sides(tmp_path):
    """Two ``predict --probabilities`` folders compared with each other: the 4D ``<case>_probs`` maps are still
    not cases (the fix above reads their header, it does not take every ``_probs`` name as a case)."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    lab_path = data_path(*HIPPO_LAB, "hippocampus_001.nii.gz")
    lab = nib.load(lab_path)
    probs = np.stack([np.asarray(lab.dataobj) == k for k in range(3)], -1).astype(np.float32)
    for d in (pred, ref):
        d.mkdir()
        shutil.copy(lab_path, d / "x.nii.gz")
        nib.save(nib.Nifti1Image(probs, lab.affine), d / "x_probs.nii.gz")
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "rep", "-q")
    assert res.code == 0, res.err
    assert _cases(tmp_path / "rep" / "metrics.json") == ["x"]


def _md_cells(text: str) -> list[list[str]]:
    """The cells of report.md's tables as a CommonMark renderer with tables and strikethrough (GitHub's) shows them:
    the text of each cell, and its markup (``<strong>``, ``<a>``, ``<s>``) kept as tags."""
    import html
    import re

    from markdown_it import MarkdownIt

    page = MarkdownIt("commonmark").enable("table").enable("strikethrough").render(text)
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)]


def test_markdown_report_shows_case_names_verbatim(tmp_path):
    """``__x__``, ``_y_``, ``~~z~~``, ``[l](u)`` and ``&lt;`` in case names came out as bold, italic, struck-through
    or linked text, or as '<', in report.md's worst-case table; names with an inner '_' are left as typed."""
    names = ["__x__", "_y_", "a~~z~~", "[l](u)", "q&lt;", "hippocampus_001"]
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for d in (pred, ref):
        d.mkdir()
        for n in names:
            shutil.copy(data_path(*HIPPO_LAB, "hippocampus_001.nii.gz"), d / f"{n}.nii.gz")
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "rep", "-q")
    assert res.code == 0, res.err
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    worst = md.split("Worst cases")[1]
    assert sorted(r[0] for r in _md_cells(worst) if r) == sorted(names)  # each case once, as typed
    assert "| hippocampus_001 |" in md  # an inner '_' needs no backslash in the file either
