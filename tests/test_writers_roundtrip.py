"""What medseg writes, independent readers (nibabel, SimpleITK, pynrrd, tifffile) read back: the same voxels (the
same dtype where the format has it), the same world geometry (world points of voxel indices, RAS/LPS and mm/µm
handled), and medseg's own reader reads back what was written; what a format cannot hold is refused in one line.
Label maps keep their names and colours (Slicer's seg.nrrd fields, ITK-SNAP and Slicer colour tables), and a failed
write leaves nothing behind."""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np
import pytest

from conftest import assert_clean_error, data_path, run_cli
from medseg.errors import InputError
from medseg.io.image import Image, affine_from_geometry
from medseg.io.readers import read_image
from medseg.io.writers import label_dtype, write_image

LPS = np.diag([-1.0, -1.0, 1.0])


def _oblique(spacing, origin):
    a, b = 0.3, 0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return affine_from_geometry(spacing, origin, rz @ rx)


def _corners(shape):
    return np.array(list(itertools.product(*[(0, s - 1) for s in shape])) + [[s // 2 for s in shape]], float)


def _independent(path):
    """(voxels indexed [i, j, k, ...], RAS world points of _corners) as a reader other than medseg's sees the file."""
    import SimpleITK as sitk

    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        n = nib.load(str(path))
        return np.asanyarray(n.dataobj), lambda ijk: ijk @ n.affine[:3, :ijk.shape[1]].T + n.affine[:3, 3]
    if name.endswith(".nrrd"):
        import nrrd

        arr, h = nrrd.read(str(path), index_order="F")
        sd = np.array([r for r in h["space directions"] if np.all(np.isfinite(np.asarray(r, float)))], float)
        return arr, lambda ijk: (ijk @ sd[:ijk.shape[1]] + h["space origin"]) * [-1, -1, 1][:sd.shape[1]]
    s = sitk.ReadImage(str(path))
    flip = [-1, -1, 1][:s.GetDimension()]  # LPS -> RAS
    return sitk.GetArrayFromImage(s).T, lambda ijk: np.array(
        [s.TransformContinuousIndexToPhysicalPoint([float(v) for v in i]) for i in ijk]) * flip


# --------------------------------------------------------------------------------------------- real inputs
_REAL = {"oblique_dicom": ("dicom", "mr_study", "12-T1post-05670"),
         "hippocampus": ("msd_hippocampus", "imagesTr", "hippocampus_001.nii.gz"),
         "spleen_label_sform2": ("ct_spleen_sample", "derivatives", "labels", "sub-spleen2", "ct",
                                 "sub-spleen2_ct_seg-manual.nii.gz"),
         "brats_label_qform2": ("brats2015_sample", "brats_2013_pat0001_1", "OTMultiClass.nii.gz")}


def _sitk_input(src):
    import SimpleITK as sitk

    if src.is_dir():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(r.GetGDCMSeriesFileNames(str(src)))
        return r.Execute()
    return sitk.ReadImage(str(src))


@pytest.mark.parametrize("case", sorted(_REAL))
def test_convert_real_inputs_equal_simpleitks_reading_through_every_format(tmp_path, case):
    import nibabel as nib
    import SimpleITK as sitk

    src = data_path(*_REAL[case])
    digest = hashlib.sha256(src.read_bytes()).hexdigest() if src.is_file() else None
    ref = _sitk_input(src)
    size = ref.GetSize()
    ijk = _corners(size)
    world = np.array([ref.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in ijk]) * [-1, -1, 1]
    voxels = sitk.GetArrayFromImage(ref).T
    for suffix in (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha"):
        out = tmp_path / f"{case}{suffix}"
        assert run_cli("convert", src, out).code == 0
        arr, to_world = _independent(out)
        assert arr.dtype == voxels.dtype and np.array_equal(arr, voxels), suffix
        np.testing.assert_allclose(to_world(ijk), world, atol=1e-3, err_msg=suffix)
        if suffix.startswith(".nii"):
            h = nib.load(str(out)).header
            assert int(h["sform_code"]) in (1, 2) and int(h["qform_code"]) > 0 and h.get_xyzt_units()[0] == "mm"
        back = tmp_path / f"{case}_back{suffix.replace('.', '_')}.nii.gz"  # B -> A
        assert run_cli("convert", out, back).code == 0
        again = read_image(back)
        assert np.array_equal(again.array, voxels)
        np.testing.assert_allclose(again.index_to_world(ijk), world, atol=1e-3)
    if digest:
        assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the input is never touched
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


# --------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_64bit_label_ids_beyond_int32_are_kept_by_every_writer(tmp_path, suffix, dtype):
    lab = np.zeros((4, 5, 3), dtype)
    lab[1, 1, 1], lab[2, 2, 2] = 2**31 + 5, 2**40 + 1
    out = write_image(Image(lab, _oblique([0.7, 0.8, 2.5], [10, -20, 30])), tmp_path / f"lab{suffix}")
    arr, _ = _independent(out)
    assert arr.dtype == lab.dtype and np.array_equal(arr, lab)
    back = read_image(out).array
    assert back.dtype == lab.dtype and np.array_equal(back, lab)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".tif"])
def test_float16_is_written_as_float32_with_every_value(tmp_path, suffix):
    half = (np.arange(24).reshape(2, 3, 4) / 7 - 1).astype(np.float16)
    half.flat[0], half.flat[1] = np.nan, np.finfo(np.float16).max
    meta = {"unit": "um"} if suffix == ".tif" else {}
    out = write_image(Image(half, np.diag([2.0, 0.5, 0.5, 1.0]), meta), tmp_path / f"h{suffix}")
    if suffix == ".tif":
        import tifffile

        arr = tifffile.imread(str(out))
    else:
        arr, _ = _independent(out)
    assert arr.dtype == np.float32 and np.array_equal(arr, half.astype(np.float32), equal_nan=True)
    assert np.array_equal(read_image(out).array, half.astype(np.float32), equal_nan=True)


def test_label_dtype_holds_ids_beyond_uint32_and_export_keeps_them(tmp_path):
    import nrrd

    from medseg.export import export_segmentation

    assert label_dtype(2**32 - 1) == np.uint32 and label_dtype(2**32) == np.uint64
    lab = np.zeros((4, 4, 2), np.int64)
    lab[0, 0, 0], lab[1, 1, 1] = 2**33 + 1, 2
    out = export_segmentation(Image(lab, np.eye(4)), None, "seg-nrrd", tmp_path / "a.seg.nrrd")
    arr, h = nrrd.read(str(out), index_order="F")
    assert np.array_equal(arr, lab)  # was cast to uint32: 2**33 + 1 became label 1
    assert {h["Segment0_LabelValue"], h["Segment1_LabelValue"]} == {"2", str(2**33 + 1)}


def test_png_refuses_what_it_cannot_hold_in_one_line(tmp_path):
    vol = tmp_path / "vol.nii.gz"
    write_image(Image(np.zeros((6, 5, 7), np.uint8), np.eye(4)), vol)
    assert_clean_error(run_cli("convert", vol, tmp_path / "vol.png"), "PNG holds 2D")  # was a 7-channel 2D PNG
    flat = Image(np.zeros((6, 5), np.int16), np.eye(4), {"unit": "pixel"})
    with pytest.raises(InputError, match="PNG holds 2D bool/uint8/uint16"):
        write_image(flat, tmp_path / "flat.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.nii.gz"]


# --------------------------------------------------------------------------------------------- 2D and channels
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_channels_stay_channels_in_2d_and_3d(tmp_path, suffix):
    for name, img in {
        "rgb2d": Image(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), affine_from_geometry([0.5, 0.7], [3, 4],
                                                                                               np.eye(2)), {}, True),
        "two3d": Image(np.arange(120, dtype=np.float32).reshape(2, 4, 5, 3), _oblique([0.5, 0.7, 3.0], [3, 4, 5]),
                       {}, True),
    }.items():
        back = read_image(write_image(img, tmp_path / f"{name}{suffix}"))
        assert back.num_channels == img.num_channels and back.channels_first  # not a spatial axis
        ijk = _corners(img.shape)
        np.testing.assert_allclose(back.index_to_world(ijk), img.index_to_world(ijk), atol=1e-4)
        np.testing.assert_array_equal(back.array.reshape(img.array.shape), img.array)


def test_2d_multichannel_nifti_puts_channels_on_the_4th_axis(tmp_path):
    import nibabel as nib

    rgb = Image(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), np.diag([0.5, 0.7, 1.0, 1.0]), {}, True)
    n = nib.load(str(write_image(rgb, tmp_path / "rgb.nii.gz")))
    assert n.shape == (4, 5, 1, 3)  # was (4, 5, 3): a 3-slice volume
    np.testing.assert_array_equal(np.asanyarray(n.dataobj)[:, :, 0, :], np.moveaxis(rgb.array, 0, -1))


# --------------------------------------------------------------------------------------------- units
def test_nifti_units_are_mm_also_in_2d(tmp_path):
    import nibabel as nib

    two = write_image(Image(np.zeros((4, 5), np.int16), np.diag([0.5, 0.7, 1.0, 1.0])), tmp_path / "two.nii.gz")
    assert nib.load(str(two)).header.get_xyzt_units()[0] == "mm"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_micrometre_images_are_written_in_mm_where_readers_assume_mm(tmp_path, suffix):
    import SimpleITK as sitk

    um = Image(np.zeros((3, 4, 5), np.uint16), np.diag([2.0, 0.5, 0.5, 1.0]), {"unit": "um"})
    out = write_image(um, tmp_path / f"um{suffix}")
    np.testing.assert_allclose(sitk.ReadImage(str(out)).GetSpacing(), [2e-3, 5e-4, 5e-4], rtol=1e-6)  # was 2, 0.5
    np.testing.assert_allclose(read_image(out).spacing, [2e-3, 5e-4, 5e-4], rtol=1e-6)


@pytest.mark.parametrize("unit, mm", [("micron", 1e-3), ("meter", 1e3), ("mm", 1.0), ("unknown", 1.0)])
def test_nifti_spatial_units_are_read_as_simpleitk_reads_them(tmp_path, unit, mm):
    import nibabel as nib
    import SimpleITK as sitk

    aff = _oblique([0.5, 0.6, 2.0], [10, 20, 30])
    n = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), aff)
    n.header.set_xyzt_units(unit)
    nib.save(n, str(tmp_path / "u.nii"))
    img, ref = read_image(tmp_path / "u.nii"), Image.from_sitk(sitk.ReadImage(str(tmp_path / "u.nii")))
    np.testing.assert_allclose(img.affine, ref.affine, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(img.spacing, np.array([0.5, 0.6, 2.0]) * mm, rtol=1e-5)


def test_tiff_gets_micrometres_and_refuses_a_patient_position(tmp_path):
    import tifffile

    mm = Image(np.zeros((3, 4, 5), np.uint16), np.diag([3.0, 0.8, 0.8, 1.0]))
    out = write_image(mm, tmp_path / "mm.tif")
    back = read_image(out)
    assert back.meta["unit"] == "um" and back.spacing == pytest.approx((3000.0, 800.0, 800.0))  # was 3, 0.8 "um"
    with tifffile.TiffFile(str(out)) as t:
        assert t.pages[0].tags["XResolution"].value[1] / t.pages[0].tags["XResolution"].value[0] == pytest.approx(800)
    ct = tmp_path / "ct.nii.gz"
    write_image(Image(np.zeros((3, 4, 5), np.int16), _oblique([0.8, 0.8, 3.0], [-100, 50, 20])), ct)
    assert_clean_error(run_cli("convert", ct, tmp_path / "ct.tif"), "origin and orientation would be lost")
    assert not (tmp_path / "ct.tif").exists()


# --------------------------------------------------------------------------------------------- label maps
def _itksnap(path):
    rows = {}
    for line in path.read_text().splitlines():
        m = re.match(r'\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d)\s+(\d)\s+"(.*)"\s*$', line)
        if line.startswith("#"):
            continue
        assert m, f"not an ITK-SNAP label line: {line!r}"
        rows[int(m[1])] = (m[8], tuple(int(c) for c in m.group(2, 3, 4)))
    return rows


def _ctbl(path):
    rows = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            v, name, r, g, b, a = line.split()
            rows[int(v)] = (name, (int(r), int(g), int(b)))
    return rows


def test_sparse_labels_keep_names_colours_and_extents_in_every_label_format(tmp_path):
    import nibabel as nib
    import nrrd

    from medseg.export import export_segmentation

    lab = np.full((6, 7, 5), 1, np.uint8)  # no background at all
    lab[0:2] = 5
    lab[3, 3, 3] = 200
    names = {1: "liver", 5: "left kidney", 200: "odd name"}
    img = Image(lab, _oblique([0.7, 0.8, 2.5], [10, -20, 30]))
    seg = export_segmentation(img, None, "seg-nrrd", tmp_path / "s.seg.nrrd", labels=names)
    arr, h = nrrd.read(str(seg), index_order="F")
    assert np.array_equal(arr, lab) and h["space"] == "left-posterior-superior" and h["kinds"] == ["domain"] * 3
    segs = {int(h[f"Segment{n}_LabelValue"]): n for n in range(3)}
    assert sorted(segs) == [1, 5, 200] and "Segment3_ID" not in h
    colours = {}
    for value, n in segs.items():
        p = f"Segment{n}_"
        assert h[p + "Name"] == names[value] and h[p + "Layer"] == "0" and h[p + "ID"]
        nz = np.nonzero(lab == value)
        assert [int(v) for v in h[p + "Extent"].split()] == [f(a) for a in nz for f in (np.min, np.max)]
        assert re.search(r"TerminologyEntry:[^~|]+(~[^~|]*){6}\|", h[p + "Tags"])
        colours[value] = tuple(round(float(c) * 255) for c in h[p + "Color"].split())
    ijk = _corners(lab.shape)
    sd, org = np.asarray(h["space directions"], float), np.asarray(h["space origin"], float)
    np.testing.assert_allclose((ijk @ sd + org) * [-1, -1, 1], img.index_to_world(ijk), atol=1e-6)
    nii = export_segmentation(img, None, "nifti", tmp_path / "s.nii.gz", labels=names)
    n = nib.load(str(nii))
    assert np.array_equal(np.asanyarray(n.dataobj), lab) and np.allclose(n.affine, img.affine, atol=1e-5)
    snap, ctbl = _itksnap(tmp_path / "s.itksnap.txt"), _ctbl(tmp_path / "s.ctbl")
    assert {v: c for v, (_, c) in snap.items() if v} == colours == {v: c for v, (_, c) in ctbl.items() if v}
    assert {v: s for v, (s, _) in snap.items() if v} == names
    assert {v: s for v, (s, _) in ctbl.items() if v} == {1: "liver", 5: "left_kidney", 200: "odd_name"}


@pytest.mark.parametrize("name", ["Leber ä", "a\nb"])
def test_seg_nrrd_refuses_a_name_its_header_cannot_hold(tmp_path, name):
    from medseg.export import export_segmentation

    lab = np.zeros((4, 4, 2), np.uint8)
    lab[0], lab[1] = 1, 2
    with pytest.raises(InputError, match="cannot be stored in a .seg.nrrd header"):  # was UnicodeEncodeError / a
        export_segmentation(Image(lab, np.eye(4)), None, "seg-nrrd", tmp_path / "n.seg.nrrd",  # corrupt header
                            labels={1: name, 2: "spleen"})
    assert not list(tmp_path.iterdir())
    export_segmentation(Image(lab, np.eye(4)), None, "nifti", tmp_path / "n.nii.gz", labels={1: name, 2: "spleen"})
    assert len(_itksnap(tmp_path / "n.itksnap.txt")) == 3  # one line per label, whatever the name holds


def test_nifti_and_its_colour_tables_appear_together_or_not_at_all(tmp_path, monkeypatch):
    from medseg.export import colors, export_segmentation

    lab = np.zeros((4, 4, 2), np.uint8)
    lab[0] = 1
    monkeypatch.setattr(colors, "slicer_color_table_text", lambda infos: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        export_segmentation(Image(lab, np.eye(4)), None, "nifti", tmp_path / "seg.nii.gz", labels={1: "liver"})
    assert not list(tmp_path.iterdir())  # was seg.nii.gz and seg.itksnap.txt without seg.ctbl


# --------------------------------------------------------------------------------------------- atomicity
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".tif"])
def test_a_write_failing_half_way_leaves_no_file_and_the_input_untouched(tmp_path, monkeypatch, suffix):
    import nibabel as nib
    import SimpleITK as sitk

    import medseg.io.microscopy as micro

    src = write_image(Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.eye(4)), tmp_path / "in.nii.gz")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()

    def half(path):
        open(path, "wb").write(b"half a file")
        raise OSError("device went away")

    monkeypatch.setattr(nib, "save", lambda img, path: half(path))
    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", lambda self, img: half(self.GetFileName()))
    monkeypatch.setattr(micro, "write_microscopy", lambda image, path: half(path))
    res = run_cli("convert", src, tmp_path / f"out{suffix}")
    assert res.code == 2 and "device went away" in res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
