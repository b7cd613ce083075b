"""The files clinicians' viewers open (Slicer ``.seg.nrrd``, ITK-SNAP label descriptions, Slicer colour tables) read
by the viewers' own rules, and ``medseg info`` against independent readers (SimpleITK, pydicom, nibabel)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path, run_cli

FLIP = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS
# ITK-SNAP's label description line: IDX R G B A(0..1) VIS MSH "LABEL"
SNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*$')


def _itksnap_rows(path: Path) -> dict[int, tuple]:
    """Parse as ITK-SNAP does: '#' lines are comments, the name is what lies between the quotes."""
    rows = {}
    for line in path.read_bytes().decode("utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = SNAP_LINE.match(line)
        assert m, f"not an ITK-SNAP label line: {line!r}"
        assert 0.0 <= float(m[5]) <= 1.0
        rows[int(m[1])] = (m[8], tuple(int(c) for c in m.group(2, 3, 4)))
    return rows


def _ctbl_rows(path: Path) -> dict[int, tuple]:
    """Parse as Slicer reads a colour table: 'index name R G B A', whitespace-separated, '#' comments."""
    rows = {}
    for line in path.read_bytes().decode("utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        v, name, r, g, b, a = line.split()
        rows[int(v)] = (name, (int(r), int(g), int(b)), int(a))
    return rows


# ------------------------------------------------------------------------------------------------ colour tables
def test_colour_tables_are_utf8_whatever_the_locale(tmp_path):
    """A non-ASCII label name under a C/ASCII locale: the tables were written in the locale's encoding (here a
    UnicodeEncodeError; on Windows cp1252 bytes that viewers read as mojibake). Viewers read UTF-8."""
    import medseg

    names = {1: "Leber ä", 2: "肝臓", 3: "plain"}  # given to the script as ASCII escapes: argv is ASCII there
    script = textwrap.dedent(f"""
        import locale, sys, numpy as np
        from medseg.export import export_segmentation
        from medseg.io.image import Image
        lab = np.zeros((4, 4, 3), np.uint8); lab[0], lab[1], lab[2] = 1, 2, 3
        export_segmentation(Image(lab, np.eye(4)), None, "nifti", sys.argv[1], labels={ascii(names)})
        print(locale.getpreferredencoding(False))
    """)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "PYTHONPATH": str(Path(medseg.__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "seg.nii.gz")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    snap, ctbl = _itksnap_rows(tmp_path / "seg.itksnap.txt"), _ctbl_rows(tmp_path / "seg.ctbl")
    assert {v: n for v, (n, _) in snap.items() if v} == names
    assert {v: n for v, (n, _, _) in ctbl.items() if v} == {1: "Leber_ä", 2: "肝臓", 3: "plain"}


def test_viewer_tables_follow_the_formats_and_agree_on_colours(tmp_path):
    """Background entries, sparse values beyond 255 and 65535, quotes and spaces: each file by its own rules, and one
    colour per label in all three files."""
    import nrrd

    from medseg.export import export_segmentation
    from medseg.io.image import Image

    lab = np.zeros((5, 6, 4), np.uint32)
    names = {3: 'say "liver"', 300: "left kidney", 70000: "x  y z"}
    for i, v in enumerate(names):
        lab[i, i:, 1:3] = v
    img = Image(lab, np.diag([0.8, 0.9, 2.0, 1.0]))
    export_segmentation(img, None, "nifti", tmp_path / "s.nii.gz", labels=names)
    seg = export_segmentation(img, None, "seg-nrrd", tmp_path / "s.seg.nrrd", labels=names)
    snap, ctbl = _itksnap_rows(tmp_path / "s.itksnap.txt"), _ctbl_rows(tmp_path / "s.ctbl")
    assert snap[0] == ("Clear Label", (0, 0, 0)) and ctbl[0][2] == 0  # ITK-SNAP's label 0; a transparent background
    assert sorted(snap) == sorted(ctbl) == [0, 3, 300, 70000]
    assert snap[3][0] == "say 'liver'" and snap[70000][0] == "x  y z"  # no quote ends the name early
    assert all(" " not in n for n, _, _ in ctbl.values()) and ctbl[70000][0] == "x_y_z"
    header = nrrd.read_header(str(seg))
    seg_colours = {int(header[f"Segment{n}_LabelValue"]): tuple(round(float(c) * 255) for c in
                                                                 header[f"Segment{n}_Color"].split()) for n in range(3)}
    assert seg_colours == {v: snap[v][1] for v in names} == {v: ctbl[v][1] for v in names}


def test_seg_nrrd_names_read_back_exactly_by_teem(tmp_path):
    """Slicer and ITK read NRRD key/value pairs with teem, which unescapes '\\n' and '\\\\': a backslash written raw
    turned 'C:\\new' into 'C:' + line break + 'ew'."""
    import SimpleITK as sitk

    from medseg.export import export_segmentation
    from medseg.io.image import Image

    names = {1: "C:\\new", 2: "L1\\L2", 3: "a\\\\b", 4: "  x := y  "}
    lab = np.zeros((4, 5, 3), np.uint8)
    for v in names:
        lab[v - 1] = v
    out = export_segmentation(Image(lab, np.eye(4)), None, "seg-nrrd", tmp_path / "n.seg.nrrd", labels=names)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    got = {int(reader.GetMetaData(f"Segment{n}_LabelValue")): reader.GetMetaData(f"Segment{n}_Name") for n in range(4)}
    assert got == names
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).transpose(2, 1, 0), lab)


# ------------------------------------------------------------------------------------------------ medseg info
@pytest.mark.parametrize("parts, series_dir", [
    (("dicom", "ct_rtstruct", "RS_Body_SpinalCord.dcm"), ("dicom", "ct_rtstruct")),
    (("dicom", "dcmqi_segmentations", "liver.dcm"), ("dicom", "dcmqi_segmentations", "ct-3slice")),
])
def test_info_of_a_seg_or_rtstruct_names_the_object_itself(parts, series_dir):
    """An RTSTRUCT was described with the modality, description and series UID of the CT it refers to (CT,
    'UCSD_Residency_Template_Patient'), a SEG with none: pydicom reads them from the file."""
    import pydicom
    import SimpleITK as sitk

    path, folder = data_path(*parts), data_path(*series_dir)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    res = run_cli("info", path, "--json")
    assert res.code == 0, res.err
    (rec,) = json.loads(res.out)
    assert (rec["modality"], rec["series_description"], rec["series_uid"]) == (
        ds.Modality, ds.get("SeriesDescription", ""), ds.SeriesInstanceUID)
    text = run_cli("info", path).out
    assert f"({ds.Modality})" in text.splitlines()[0] and ds.SeriesInstanceUID in text
    files = [f for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)) if "RS_" not in f]
    ct = sitk.ReadImage(files)  # the label map lies on its image series' grid
    assert rec["shape"] == list(ct.GetSize())
    np.testing.assert_allclose(rec["spacing"], ct.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(rec["origin"], FLIP @ np.array(ct.GetOrigin()), atol=1e-3)


def _independent(path: Path) -> dict:
    """Geometry and intensities of a file or a DICOM series folder by SimpleITK (LPS -> RAS) and nibabel."""
    import nibabel as nib
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)) if path.is_dir() else [str(path)]
    img = sitk.ReadImage(files if len(files) > 1 else files[0])
    arr = sitk.GetArrayViewFromImage(img)
    direction = FLIP @ np.array(img.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = direction * img.GetSpacing(), FLIP @ np.array(img.GetOrigin())
    return {"shape": list(img.GetSize()), "spacing": img.GetSpacing(), "origin": affine[:3, 3], "direction": direction,
            "orientation": "".join(nib.aff2axcodes(affine)), "dtype": str(arr.dtype),
            "intensity_range": [float(arr.min()), float(arr.max())]}


def test_info_numbers_equal_simpleitk_for_files_and_a_dicom_study(tmp_path):
    """Every number of `medseg info --json` (oblique NIfTI/NRRD/MHA written by SimpleITK; each series of a real
    MR study) equals SimpleITK's reading, the JSON is strict, and the text shows the same numbers."""
    import pydicom
    import SimpleITK as sitk
    from scipy.spatial.transform import Rotation

    study = data_path("dicom", "mr_study")
    rot = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
    arr = np.random.default_rng(0).normal(0, 300, (5, 6, 7)).astype(np.int16)
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing((0.7, 1.3, 2.9))
    src.SetOrigin((12.5, -40.25, 7.125))
    src.SetDirection(rot.ravel().tolist())
    paths = []
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        sitk.WriteImage(src, str(tmp_path / f"x{suffix}"))
        paths.append(tmp_path / f"x{suffix}")
    res = run_cli("info", study, "--json")
    assert res.code == 0, res.err
    recs = json.loads(res.out, parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))
    assert len(recs) == len([d for d in study.iterdir() if d.is_dir()])
    for path in paths:
        recs += json.loads(run_cli("info", path, "--json").out, parse_constant=lambda c: pytest.fail(c))
    text = run_cli("info", study).out
    for rec in recs:
        ref = _independent(Path(rec["source"]))
        assert rec["shape"] == ref["shape"] and rec["dtype"] == ref["dtype"] and rec["channels"] == 1
        assert rec["orientation"] == ref["orientation"] and rec["intensity_range"] == ref["intensity_range"]
        np.testing.assert_allclose(rec["spacing"], ref["spacing"], atol=1e-5)
        np.testing.assert_allclose(rec["origin"], ref["origin"], atol=1e-3)
        np.testing.assert_allclose(rec["direction"], ref["direction"], atol=1e-5)
        if "num_slices" in rec:  # a DICOM series: its files and their headers
            files = sorted(Path(rec["source"]).iterdir())
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            assert rec["num_slices"] == len(files) == rec["shape"][2]
            assert (rec["modality"], rec["series_description"], rec["series_uid"]) == (
                ds.Modality, ds.SeriesDescription, ds.SeriesInstanceUID)
            block = text.split(f"[{rec['index']}] ")[1]
            assert f"spacing      ({', '.join(f'{s:.6g}' for s in rec['spacing'])}) mm" in block
            assert f"orientation  {rec['orientation']}" in block and rec["series_uid"] in block


def test_seg_nrrd_extents_in_one_pass_equal_each_labels_bounding_box():
    """Extents come from one find_objects pass (117 classes made 117 passes over a CT); each equals the label's
    bounding box by numpy, for every integer type, absent labels and ids too large for one pass."""
    from medseg.export.slicer import _extents

    def box(lab, v):
        idx = np.nonzero(lab == v)
        return " ".join(f"{a.min()} {a.max()}" for a in idx) if idx[0].size else "0 -1 0 -1 0 -1"

    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.uint16, np.int32, np.int64, np.uint32, np.uint64):
        for _ in range(20):
            lab = np.zeros(tuple(int(n) for n in rng.integers(1, 12, 3)), dt)
            values = sorted({int(v) for v in rng.integers(1, 250, int(rng.integers(0, 6)))})
            for v in values:
                lab[rng.random(lab.shape) < 0.1] = v
            asked = sorted({*values, 7, 249})
            assert _extents(lab, asked) == {v: box(lab, v) for v in asked}
    huge = np.zeros((5, 5, 5), np.uint64)
    huge[1, 2, 3] = 2**40
    assert _extents(huge, [2**40, 3]) == {2**40: "1 1 2 2 3 3", 3: "0 -1 0 -1 0 -1"}
