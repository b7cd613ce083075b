"""Every number of an evaluation report is the same in metrics.json, metrics.csv, report.md and report.html, and
equals an independent computation (nibabel, scipy, numpy, markdown-it, the csv module), on real data where it
matters: perturbed hippocampus references (MSD) and DSB2018 nuclei."""

from __future__ import annotations

import csv
import html
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import data_path, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Cells(HTMLParser):
    """The text of every table cell of an HTML page, table by table (``<br>`` as a line break)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> list[list[list[str]]]:
    p = _Cells()
    p.feed(page)
    return p.tables


def _md_tables(text: str) -> list[list[list[str]]]:
    """report.md's tables as a CommonMark + tables renderer (markdown-it, rich's dependency) shows them."""
    from markdown_it import MarkdownIt

    return _tables(MarkdownIt("commonmark").enable("table").render(text))


def _fmt(v) -> str:
    """The documented rounding of the md/html tables: 4 decimals, trailing zeros dropped; n/a for null."""
    if v is None:
        return "n/a"
    return f"{v:.4g}" if abs(v) >= 1000 else (f"{v:.4f}".rstrip("0").rstrip(".") if v else "0")


def _write_nifti(path: Path, arr: np.ndarray, affine=None, header=None) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag([0.9, 1.1, 1.3, 1.0]) if affine is None else affine,
                             header), path)


def _perturbed_hippocampus(root: Path, n: int = 5) -> tuple[Path, Path, list[str]]:
    """References of the first ``n`` hippocampus cases and predictions made from them: identical, dilated, eroded,
    one class dropped, empty."""
    import nibabel as nib

    src = sorted(data_path("msd_hippocampus", "labelsTr").glob("*.nii.gz"))[:n]
    (root / "ref").mkdir()
    (root / "pred").mkdir()
    for i, p in enumerate(src):
        img = nib.load(p)
        ref = np.asarray(img.dataobj).astype(np.uint8)
        pred = [ref.copy(), np.where(ndi.grey_dilation(ref, size=3) > 0, ndi.grey_dilation(ref, size=3), 0),
                np.where(ndi.grey_erosion(ref, size=3) == ref, ref, 0), np.where(ref == 2, 0, ref),
                np.zeros_like(ref)][i % 5]
        pred[0, 0, 0] = 1 if i == 1 else pred[0, 0, 0]  # a stray one-voxel lesion
        _write_nifti(root / "ref" / p.name, ref, img.affine, img.header)
        _write_nifti(root / "pred" / p.name, pred, img.affine, img.header)
    return root / "pred", root / "ref", [p.name[: -len(".nii.gz")] for p in src]


def _bootstrap(values, seed=0, n_boot=10_000) -> np.ndarray:
    """The documented percentile bootstrap (seed 0, 10,000 resamples), written plainly."""
    a = np.asarray(values, float)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    return np.percentile(a[idx].mean(axis=1), [2.5, 97.5])


def test_report_files_agree_with_each_other_and_with_independent_numbers(tmp_path):
    """Real hippocampus cases: JSON = CSV = md = html; tp/fp/fn, volumes and lesion counts = nibabel + scipy;
    mean/std (ddof 0)/CI = numpy on the JSON's per-case values; the CLI = the API."""
    import nibabel as nib

    from medseg.evaluate import evaluate_folder
    from medseg.evaluate.report import to_json

    pred, ref, cases = _perturbed_hippocampus(tmp_path)
    labels = data_path("msd_hippocampus", "dataset.json")
    out = tmp_path / "out"
    res = run_cli("evaluate", "--pred", pred, "--ref", ref, "--labels", labels, "-o", out, "-q",
                  "--lesion-classes", "anterior,posterior")
    assert res.code == 0, res.err
    js = json.loads((out / "metrics.json").read_text())
    api = evaluate_folder(pred, ref, labels=labels, lesion_classes="anterior,posterior")
    assert json.loads(to_json(api)) == js
    names = {1: "anterior", 2: "posterior"}
    assert [c["case"] for c in js["per_case"]] == cases
    # CSV rows: the JSON's cases and classes in the same order, the same values (full precision)
    rows = list(csv.DictReader((out / "metrics.csv").open(newline="", encoding="utf-8")))
    pairs = [(c, n, m, c["labels"][n]) for c in js["per_case"] for n, m in c["classes"].items()]
    assert [(r["case"], r["class"], r["label"]) for r in rows] == [(c["case"], n, str(v)) for c, n, _, v in pairs]
    for r, (c, n, m, _) in zip(rows, pairs):
        for k, v in m.items():
            if k == "flags":
                assert r["flags"] == ";".join(v)
            elif k == "lesions":
                for lk, lv in v.items():
                    assert float(r[f"lesion_{lk}"]) == pytest.approx(lv, abs=0, rel=1e-12)
            else:
                assert r[k] == "" if v is None else float(r[k]) == pytest.approx(v, abs=0, rel=1e-12), (k, c["case"])
    # per case from the files: counts, volumes (voxels x voxel volume from the header), lesions (26-connectivity)
    full = ndi.generate_binary_structure(3, 3)
    for c in js["per_case"]:
        img = nib.load(ref / f"{c['case']}.nii.gz")
        r_arr = np.asarray(img.dataobj)
        p_arr = np.asarray(nib.load(pred / f"{c['case']}.nii.gz").dataobj)
        ml = float(np.prod(img.header.get_zooms()[:3])) / 1000
        for v, n in names.items():
            m, R, P = c["classes"][n], r_arr == v, p_arr == v
            assert (m["tp"], m["fp"], m["fn"]) == ((R & P).sum(), (P & ~R).sum(), (R & ~P).sum())
            assert m["volume_ref_ml"] == pytest.approx(R.sum() * ml)
            assert m["volume_pred_ml"] == pytest.approx(P.sum() * ml)
            assert (m["lesions"]["n_ref"], m["lesions"]["n_pred"]) == (ndi.label(R, full)[1], ndi.label(P, full)[1])
    # summary statistics from the JSON's per-case values
    for n in names.values():
        for k in ("dice", "iou", "hd95", "assd", "nsd", "volume_ref_ml", "rel_volume_diff", "tp"):
            vals = np.array([c["classes"][n][k] for c in js["per_case"] if c["classes"][n][k] is not None], float)
            assert js["mean"][n][k] == pytest.approx(vals.mean()) and js["std"][n][k] == pytest.approx(vals.std())
        assert js["mean"][n]["n_cases"] == len(cases)
        assert js["mean"][n]["n_surface_cases"] == sum(c["classes"][n]["hd95"] is not None for c in js["per_case"])
        for flag in ("both_empty", "pred_empty", "ref_empty"):
            assert js["mean"][n][f"n_{flag}"] == sum(flag in c["classes"][n]["flags"] for c in js["per_case"])
        for k in ("dice", "iou"):
            assert js["ci95"][n][k] == pytest.approx(_bootstrap([c["classes"][n][k] for c in js["per_case"]]).tolist())
        lesions = js["mean"][n]["lesions"]
        tp, fp, fn = (sum(c["classes"][n]["lesions"][f"{q}@0.5"] for c in js["per_case"]) for q in ("tp", "fp", "fn"))
        assert (lesions["tp@0.5"], lesions["fp@0.5"], lesions["fn@0.5"]) == (tp, fp, fn)
        assert lesions["ap@0.5"] == pytest.approx(tp / (tp + fp + fn))
    fg = js["foreground_mean"]
    assert fg["dice"] == pytest.approx(np.mean([js["mean"][n]["dice"] for n in names.values()]))
    assert js["overall"]["mean_iou"]["mean"] == pytest.approx(np.mean([c["mean_iou"] for c in js["per_case"]]))
    # md and html show the same summary table, lesion table and worst cases, rounded as documented
    md_tabs = _md_tables((out / "report.md").read_text(encoding="utf-8"))
    html_tabs = _tables((out / "report.html").read_text(encoding="utf-8"))
    assert [t[1:] for t in md_tabs] == [t[1:] for t in html_tabs]  # (the lesion headers are spelt differently)
    summary, lesion_tab, worst = html_tabs
    for row, n in zip(summary[1:], names.values()):
        m, s = js["mean"][n], js["std"][n]
        assert row == [n, str(len(cases)), *(f"{_fmt(m[k])} ± {_fmt(s[k])}" for k in ("dice", "iou", "hd95", "assd",
                                                                                       "nsd")),
                       _fmt(m["volume_ref_ml"]), _fmt(m["volume_pred_ml"])]
    assert summary[-1][2] == _fmt(fg["dice"])
    for row, n in zip(lesion_tab[1:], names.values()):
        d = js["mean"][n]["lesions"]
        assert row == [n, str(d["n_ref"]), str(d["n_pred"]), *(str(d[f"{k}@0.5"]) for k in ("tp", "fp", "fn")),
                       *(_fmt(d[f"{k}@0.5"]) for k in ("precision", "recall", "f1", "ap", "panoptic_quality"))]
    assert sorted(r[0] for r in worst[1:]) == sorted(cases)
    md = (out / "report.md").read_text(encoding="utf-8")
    for n in names.values():
        lo, hi = js["ci95"][n]["dice"]
        assert f"{n} {_fmt(lo)}-{_fmt(hi)}" in md


def test_reports_are_deterministic_and_the_same_with_workers(tmp_path):
    """Two runs, and one with two worker processes, write byte-identical files."""
    ref_a = np.zeros((6, 7, 5), np.uint8)
    ref_a[1:4, 2:6, 1:4] = 1
    ref_a[4:6, 0:3, 2:5] = 2
    for side in ("pred", "ref"):
        (tmp_path / side).mkdir()
    for i, case in enumerate(("b", "a", "c")):
        ref = np.roll(ref_a, i, axis=1)
        _write_nifti(tmp_path / "ref" / f"{case}.nii.gz", ref)
        _write_nifti(tmp_path / "pred" / f"{case}.nii.gz", np.roll(ref, i % 2, axis=0))
    outs = []
    for k, workers in enumerate(("1", "1", "2")):
        outs.append(tmp_path / f"out{k}")
        res = run_cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", outs[-1], "-q",
                      "-j", workers, "--lesion-classes", "1")
        assert res.code == 0, res.err
    for name in ("metrics.json", "metrics.csv", "report.md", "report.html"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes() == (outs[2] / name).read_bytes()


def test_found_classes_give_the_mean_iou_of_named_classes(tmp_path):
    """A class absent from a case is filled in as both empty (IoU 1): the case's mean_iou counted it when the
    classes were named (--labels) but not when they were found in the data, so one cohort had two mean IoUs."""
    from medseg.evaluate import evaluate_folder
    from medseg.evaluate.report import to_json

    ref = np.zeros((8, 8, 4), np.uint8)
    ref[1:5, 1:5, 1:3] = 1
    ref[5:8, 5:8, 1:3] = 2
    pred = np.roll(ref, 1, axis=0)
    for side in ("pred", "ref"):
        (tmp_path / side).mkdir()
    _write_nifti(tmp_path / "ref" / "a.nii.gz", ref)
    _write_nifti(tmp_path / "pred" / "a.nii.gz", pred)
    _write_nifti(tmp_path / "ref" / "b.nii.gz", np.where(ref == 2, 0, ref))  # class 2 on neither side
    _write_nifti(tmp_path / "pred" / "b.nii.gz", np.where(pred == 2, 0, pred))
    found = evaluate_folder(tmp_path / "pred", tmp_path / "ref")
    named = evaluate_folder(tmp_path / "pred", tmp_path / "ref", labels={1: "label_1", 2: "label_2"})
    as_json = json.loads(to_json(found["per_case"])), json.loads(to_json(named["per_case"]))  # NaN as null
    assert [c["classes"] for c in as_json[0]] == [c["classes"] for c in as_json[1]]
    for c in found["per_case"]:
        assert c["mean_iou"] == pytest.approx(np.mean([m["iou"] for m in c["classes"].values()]))
    assert found["overall"] == named["overall"]
    assert found["overall"]["mean_iou"]["mean"] == pytest.approx(found["foreground_mean"]["iou"])


ODD_NAMES = {1: 'ant, "erior" | é\nline2 <script>', 2: "**post**"}
ODD_CASE = 'case, "ü" |x<b>'


def _odd_report(tmp_path) -> tuple[dict, Path]:
    from medseg.evaluate import evaluate_folder

    ref = np.zeros((6, 6, 3), np.uint8)
    ref[1:4, 1:4, 1] = 1
    ref[4:6, 4:6, 1:3] = 2
    for side in ("pred", "ref"):
        (tmp_path / side).mkdir()
    for case, shift in ((ODD_CASE, 1), ("plain", 0)):
        _write_nifti(tmp_path / "ref" / f"{case}.nii.gz", ref)
        _write_nifti(tmp_path / "pred" / f"{case}.nii.gz", np.roll(ref, shift, axis=1))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", **ODD_NAMES}}), "utf-8")
    out = tmp_path / "out"
    report = evaluate_folder(tmp_path / "pred", tmp_path / "ref", out_dir=out, labels=tmp_path / "dataset.json",
                             lesion_classes=[1, 2])
    return report, out


def test_csv_keeps_any_class_and_case_name(tmp_path):
    """Commas, quotes, non-ASCII and line breaks in names: the csv module reads back the JSON's names and values."""
    report, out = _odd_report(tmp_path)
    rows = list(csv.DictReader((out / "metrics.csv").open(newline="", encoding="utf-8")))
    assert [(r["case"], r["class"], float(r["dice"])) for r in rows] == [
        (c["case"], n, m["dice"]) for c in report["per_case"] for n, m in c["classes"].items()]
    assert {r["class"] for r in rows} == set(ODD_NAMES.values()) and rows[0]["case"] == ODD_CASE


def test_markdown_and_html_show_names_verbatim(tmp_path):
    """A '|' or a line break in a name split report.md's tables, '**' or '<' turned into bold text or raw HTML;
    report.html dropped '**' from class names in its summary table (and kept it in the worst-case table)."""
    report, out = _odd_report(tmp_path)
    md_tabs = _md_tables((out / "report.md").read_text(encoding="utf-8"))
    page = (out / "report.html").read_text(encoding="utf-8")
    html_tabs = _tables(page)
    names = list(ODD_NAMES.values())
    for tabs in (md_tabs, html_tabs):
        summary, lesions, worst = tabs
        assert [r[0] for r in summary[1:]] == [*names, "foreground mean"]
        assert all(len(r) == len(summary[0]) for r in summary)
        assert [r[0] for r in lesions[1:]] == names
        assert {r[0] for r in worst[1:]} == {ODD_CASE, "plain"} and all(r[2] in names for r in worst[1:])
    assert [r[1:] for r in md_tabs[0]] == [r[1:] for r in html_tabs[0]]
    assert "<script>" not in page and html.escape(ODD_NAMES[1]) in page


def test_lesion_tables_show_a_threshold_that_was_computed(tmp_path):
    """Lesion thresholds without 0.5: the md/html lesion tables were blanks and n/a beside the JSON's numbers."""
    from medseg.evaluate import evaluate_folder
    from medseg.evaluate.report import to_html, to_markdown

    _odd_report(tmp_path)

    report = evaluate_folder(tmp_path / "pred", tmp_path / "ref", labels={1: "a", 2: "b"}, lesion_classes=["a"],
                             lesion_thresholds=(0.3, 0.7), surface=False)
    d = report["mean"]["a"]["lesions"]
    expect = [["a", str(d["n_ref"]), str(d["n_pred"]), *(str(d[f"{k}@0.3"]) for k in ("tp", "fp", "fn")),
               *(_fmt(d[f"{k}@0.3"]) for k in ("precision", "recall", "f1", "ap", "panoptic_quality"))]]
    md = to_markdown(report)
    assert _md_tables(md)[1][1:] == expect == _tables(to_html(report))[1][1:]
    assert _md_tables(md)[1][0] == _tables(to_html(report))[1][0]  # the same headings (html said f1, md F1)
    assert "IoU >= 0.3" in md


def _dsb(root: Path, n: int, empty: bool) -> tuple[Path, Path]:
    """The first ``n`` DSB2018 label maps as references; predictions: identical, eroded, ids merged in pairs, a
    third dropped (or all empty)."""
    import tifffile

    (root / "ref").mkdir()
    (root / "pred").mkdir()
    for i, p in enumerate(sorted(data_path("dsb2018_fluo", "labels").glob("*.tif"))[:n]):
        ref = tifffile.imread(p)
        pred = np.zeros_like(ref) if empty else [
            ref.copy(), np.where(ndi.grey_erosion(ref, size=3) == ref, ref, 0),
            ref + (ref % 2 == 1), np.where(ref % 3 == 0, 0, ref)][i % 4].astype(ref.dtype)
        tifffile.imwrite(root / "ref" / p.name, ref)
        tifffile.imwrite(root / "pred" / f"{p.stem}_labels.tif", pred)
    return root / "pred", root / "ref"


def _tp(ref: np.ndarray, pred: np.ndarray, t: float) -> int:
    """Matches at IoU > t (t >= 0.5: each object has at most one), from the masks directly."""
    tp = 0
    for r in np.unique(ref[ref > 0]):
        R = ref == r
        for p in np.unique(pred[R & (pred > 0)]):
            P = pred == p
            iou = (R & P).sum() / (R | P).sum()
            tp += bool(iou > t or (t == 0.5 and iou == t))
    return tp


def test_cells_evaluate_equals_a_recomputation_from_the_label_maps(tmp_path):
    import tifffile

    pred, ref = _dsb(tmp_path, 4, empty=False)
    res = run_cli("cells", "evaluate", "--pred", pred, "--ref", ref, "-o", tmp_path / "out")
    assert res.code == 0, res.err
    js = json.loads((tmp_path / "out" / "metrics.json").read_text())
    from medseg.cells.evaluate import evaluate_cells

    assert json.loads(json.dumps(evaluate_cells(pred, ref))) == js
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open(newline="")))
    per = js["per_image"]
    assert [{k: float(v) for k, v in r.items() if k != "case"} for r in rows] == [
        {k: float(v) for k, v in d.items() if k != "case"} for d in per]
    thresholds = ("0.5", "0.6", "0.7", "0.8", "0.9")
    for d in per:
        r_arr = tifffile.imread(ref / f"{d['case']}.tif")
        p_arr = tifffile.imread(pred / f"{d['case']}_labels.tif")
        n_ref, n_pred = len(np.unique(r_arr[r_arr > 0])), len(np.unique(p_arr[p_arr > 0]))
        assert (d["n_ref"], d["n_pred"]) == (n_ref, n_pred)
        for t in thresholds:
            tp = _tp(r_arr, p_arr, float(t))
            assert (d[f"tp@{t}"], d[f"fp@{t}"], d[f"fn@{t}"]) == (tp, n_pred - tp, n_ref - tp)
    pooled, mean = js["pooled"], js["mean"]
    for t in thresholds:
        tp, fp, fn = (sum(d[f"{q}@{t}"] for d in per) for q in ("tp", "fp", "fn"))
        assert pooled[f"ap@{t}"] == pytest.approx(tp / (tp + fp + fn))
        assert pooled[f"precision@{t}"] == pytest.approx(tp / (tp + fp))
        assert pooled[f"recall@{t}"] == pytest.approx(tp / (tp + fn))
        assert pooled[f"f1@{t}"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert mean[f"ap@{t}"] == pytest.approx(np.mean([d[f"ap@{t}"] for d in per]))
    n_ref, n_pred = sum(d["n_ref"] for d in per), sum(d["n_pred"] for d in per)
    assert pooled["relative_count_error"] == pytest.approx((n_pred - n_ref) / n_ref)
    assert pooled["abs_relative_count_error"] == pytest.approx(sum(abs(d["n_pred"] - d["n_ref"]) for d in per) / n_ref)
    assert mean["abs_count_error"] == pytest.approx(np.mean([abs(d["count_error"]) for d in per]))
    assert js["ci95"]["ap@0.5"] == pytest.approx(_bootstrap([d["ap@0.5"] for d in per]).tolist())


def test_cells_pooled_precision_without_any_predicted_cell(tmp_path):
    """No predicted cell in any image: precision is 0 per image (and in medseg evaluate's pooled lesions), and the
    pooled precision said 1.0; likewise the pooled recall without any reference cell."""
    from medseg.cells.evaluate import evaluate_cells, summarize

    pred, ref = _dsb(tmp_path, 2, empty=True)
    res = evaluate_cells(pred, ref)
    assert {d["precision@0.5"] for d in res["per_image"]} == {0.0}
    assert res["pooled"]["precision@0.5"] == 0.0 and res["pooled"]["recall@0.5"] == 0.0
    row = {"n_ref": 0, "n_pred": 3, "count_error": 3, "relative_count_error": 0.0, "abs_relative_count_error": 0.0,
           "ap@0.5": 0.0, "precision@0.5": 0.0, "recall@0.5": 0.0, "tp@0.5": 0, "fp@0.5": 3, "fn@0.5": 0}
    assert summarize([row], thresholds=[0.5])["pooled"]["recall@0.5"] == 0.0
    nothing = {**row, "n_pred": 0, "count_error": 0, "fp@0.5": 0, "ap@0.5": 1.0}
    assert summarize([nothing], thresholds=[0.5])["pooled"]["precision@0.5"] == 1.0


def test_capped_distances_are_counted_and_said(tmp_path):
    """A capped HD95 is a stand-in, not a measurement: metrics.json counts the capped cases per class and report.md
    says how many of the averaged distances are the cap (it said 'averaged over 5 of 5 cases' when 4 were)."""
    import nibabel as nib

    rng = np.random.default_rng(3)
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    empty_side = {1: 0, 2: 0}
    for i in range(5):
        ref = np.zeros((16, 16, 6), np.uint8)
        ref[2:7, 2:7, 1:4] = 1
        ref[9:14, 9:14, 2:5] = 2
        pred = np.roll(ref, int(rng.integers(0, 2)), axis=0)
        if i in (1, 3):
            pred[pred == 2] = 0  # class 2 missed: no distance exists
        if i == 4:
            ref[ref == 1] = 0  # class 1 absent from the reference
        for c in (1, 2):
            empty_side[c] += int(((pred == c).any()) != ((ref == c).any()))
        nib.save(nib.Nifti1Image(pred, np.eye(4)), str(pred_dir / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(ref, np.eye(4)), str(ref_dir / f"c{i}.nii.gz"))
    out = tmp_path / "out"
    assert run_cli("evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-o", str(out),
                   "--distance-cap", "40").code == 0
    mean = json.loads((out / "metrics.json").read_text())["mean"]
    assert [mean[f"label_{c}"].get("n_distance_capped") for c in (1, 2)] == [empty_side[1], empty_side[2]] == [1, 2]
    md = (out / "report.md").read_text()
    assert "label_2: 2 pred empty (distances averaged over 5 of 5 cases, 2 of them capped at 40 mm)." in md
    assert "label_1: 1 ref empty (distances averaged over 5 of 5 cases, 1 of them capped at 40 mm)." in md
