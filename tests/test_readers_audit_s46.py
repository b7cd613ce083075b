"""Reading NIfTI / NRRD / MHA headers written by other tools: the voxels and the world position of voxel centres equal
an independent reading (the raw bytes, a hand computation from the header text, nibabel, SimpleITK), or the file is
refused with one line that names it and the problem."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import assert_clean_error, run_cli
from medseg.io.readers import read_image

ARR = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 60  # [i, j, k], negative values too
CORNER = (3, 4, 5)


def _oblique_ras() -> np.ndarray:
    th = np.deg2rad(20)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5, 2.0, 3.0])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    return aff


def _world_lps(img, ijk) -> np.ndarray:
    return img.index_to_world([ijk])[0] * [-1, -1, 1]


def _sitk_array_ijk(simg) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(simg).T


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("out", [".nrrd", ".mha"])
def test_big_endian_nifti_reads_in_machine_order_and_converts(tmp_path, suffix, out):
    """nibabel keeps a big-endian file's byte order ('>i2'), which SimpleITK's writers refused: ``medseg convert`` of
    such a NIfTI to NRRD/MHA ended with exit 1 'internal error: TypeError: dtype: >i2 is not supported'."""
    import nibabel as nib
    import SimpleITK as sitk

    aff = _oblique_ras()
    src = tmp_path / f"be{suffix}"
    hdr = nib.Nifti1Header(endianness=">")
    hdr.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(ARR.astype(">i2"), aff, hdr), str(src))
    raw = src.read_bytes()
    raw = gzip.decompress(raw) if suffix == ".nii.gz" else raw
    assert raw[:4] == (348).to_bytes(4, "big")  # really a big-endian header
    offset = int(np.frombuffer(raw[108:112], ">f4")[0])
    expected = np.frombuffer(raw[offset:offset + ARR.size * 2], ">i2").reshape(ARR.shape, order="F")

    dst = tmp_path / f"o{out}"
    res = run_cli("convert", src, dst)
    assert res.code == 0, res.err
    written = sitk.ReadImage(str(dst))
    np.testing.assert_array_equal(_sitk_array_ijk(written), expected)
    for ijk in ((0, 0, 0), CORNER):
        ras = (aff @ [*ijk, 1.0])[:3]
        np.testing.assert_allclose(written.TransformIndexToPhysicalPoint(ijk), ras * [-1, -1, 1], atol=1e-4)

    img = read_image(src)  # in the machine's byte order, which torch also needs
    assert img.array.dtype.isnative and img.array.dtype.itemsize == 2
    np.testing.assert_array_equal(img.array, expected)


@pytest.mark.parametrize("code,mm", [(2 | 64, 1.0), (3 | 128, 1e-3), (5, 1.0), (1 | 8, 1e3), (3 | 16, 1e-3)])
def test_nifti_spatial_unit_is_the_low_three_bits(tmp_path, code, mm):
    """``xyzt_units`` holds the spatial unit in bits 0-2 and the temporal one in bits 3-5. A byte with another bit
    set, or a spatial code the standard does not name, was refused ('cannot read NIfTI (KeyError: 64)'); SimpleITK
    reads it, scaling by the spatial bits alone."""
    import nibabel as nib
    import SimpleITK as sitk

    aff = _oblique_ras()
    p = tmp_path / "u.nii"
    nimg = nib.Nifti1Image(ARR, aff)
    nimg.header["xyzt_units"] = code
    nib.save(nimg, str(p))
    assert nib.load(str(p)).header["xyzt_units"] == code
    img = read_image(p)
    ref = sitk.ReadImage(str(p))
    np.testing.assert_array_equal(img.array, ARR)
    for ijk in ((0, 0, 0), CORNER):
        ras_mm = (aff @ [*ijk, 1.0])[:3] * mm
        np.testing.assert_allclose(img.index_to_world([ijk])[0], ras_mm, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_world_lps(img, ijk), ref.TransformIndexToPhysicalPoint(ijk), rtol=1e-6, atol=1e-6)


def _write_nrrd(path, fields, payload: bytes):
    path.write_bytes(("NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields) + "\n").encode() + payload)
    return path


def _write_mha(path, fields, payload: bytes = b""):
    path.write_bytes("".join(f"{k} = {v}\n" for k, v in fields).encode() + payload)
    return path


@pytest.mark.parametrize("kind", ["mha", "nrrd"])
def test_singular_direction_is_refused_with_its_reason(tmp_path, kind):
    """ITK's message ends with the matrix it refused: only its last line, '0 0 1', reached the user."""
    raw = ARR.T.astype("<i2").tobytes()
    if kind == "mha":
        p = _write_mha(tmp_path / "flat.mha", [("ObjectType", "Image"), ("NDims", 3), ("BinaryData", "True"),
                                               ("BinaryDataByteOrderMSB", "False"), ("DimSize", "4 5 6"),
                                               ("TransformMatrix", "1 0 0 1 0 0 0 0 1"), ("ElementType", "MET_SHORT"),
                                               ("ElementDataFile", "LOCAL")], raw)
    else:
        p = _write_nrrd(tmp_path / "flat.nrrd", [("type", "short"), ("dimension", 3), ("sizes", "4 5 6"),
                                                 ("endian", "little"), ("encoding", "raw"), ("space", "LPS"),
                                                 ("space directions", "(1,0,0) (1,0,0) (0,0,1)")], raw)
    assert_clean_error(run_cli("info", p), p.name, "direction", "determinant is 0")


# --- headers that were read right: regression guards against a hand computation from the header text -------------

_D = np.array([[1.5, 0.2, 0.0], [0.0, 2.0, 0.1], [0.3, 0.0, 3.0]])  # NRRD space directions: one row per index axis
_O = np.array([10.0, -20.0, 30.0])
_LPS_FROM = {"left-posterior-superior": [1, 1, 1], "right-anterior-superior": [-1, -1, 1],
             "left-anterior-superior": [1, -1, 1]}


def _vectors(rows) -> str:
    return " ".join("(" + ",".join(repr(float(x)) for x in r) + ")" for r in rows)


@pytest.mark.parametrize("space", sorted(_LPS_FROM))
@pytest.mark.parametrize("layout", ["attached", "gzip-big-endian", "byte-skip-1", "detached-list"])
def test_nrrd_headers_place_voxels_where_the_header_says(tmp_path, space, layout):
    """World = origin + sum(index * direction) in the header's space, turned to LPS; every layout gives the same."""
    fields = [("type", "short"), ("dimension", 3), ("sizes", "4 5 6"), ("space", space),
              ("space directions", _vectors(_D)), ("space origin", "(" + ",".join(map(str, _O)) + ")")]
    little = ARR.T.astype("<i2").tobytes()
    if layout == "attached":
        p = _write_nrrd(tmp_path / "a.nrrd", fields + [("endian", "little"), ("encoding", "raw")], little)
    elif layout == "gzip-big-endian":
        p = _write_nrrd(tmp_path / "a.nrrd", fields + [("endian", "big"), ("encoding", "gzip")],
                        gzip.compress(ARR.T.astype(">i2").tobytes()))
    elif layout == "byte-skip-1":  # the data are the file's last bytes, whatever comes before
        p = _write_nrrd(tmp_path / "a.nrrd", fields + [("endian", "little"), ("encoding", "raw"), ("byte skip", -1)],
                        b"junk" + little)
    else:
        (tmp_path / "slices").mkdir()
        for k in range(ARR.shape[2]):
            (tmp_path / "slices" / f"s{k}.raw").write_bytes(ARR[:, :, k].T.astype("<i2").tobytes())
        names = "".join(f"slices/s{k}.raw\n" for k in range(ARR.shape[2]))
        p = tmp_path / "a.nhdr"
        p.write_text("NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields + [
            ("endian", "little"), ("encoding", "raw"), ("data file", "LIST")]) + names)
    img = read_image(p)
    np.testing.assert_array_equal(img.array, ARR)
    for ijk in ((0, 0, 0), CORNER):
        np.testing.assert_allclose(_world_lps(img, ijk), (_O + np.array(ijk) @ _D) * _LPS_FROM[space], atol=1e-9)


def test_nrrd_channel_axis_last_and_mha_channels_and_list(tmp_path):
    """A 'none' channel axis as the slowest NRRD axis (kinds domain domain domain list), MHA channels, MHA slices
    listed in files and big-endian MHA: the channels come first and the grid is the header's."""
    v = np.random.default_rng(0).random((3, *ARR.shape)).astype(np.float32)  # [c, i, j, k]
    p = _write_nrrd(tmp_path / "c.nrrd", [("type", "float"), ("dimension", 4), ("sizes", "4 5 6 3"),
                                          ("endian", "little"), ("encoding", "raw"), ("space", "LPS"),
                                          ("space directions", _vectors(_D) + " none"),
                                          ("space origin", "(10,-20,30)"), ("kinds", "domain domain domain list")],
                    np.transpose(v, (0, 3, 2, 1)).astype("<f4").tobytes())
    img = read_image(p)
    assert img.channels_first
    np.testing.assert_array_equal(img.array, v)
    np.testing.assert_allclose(_world_lps(img, CORNER), _O + np.array(CORNER) @ _D, atol=1e-9)

    spacing = np.array([1.5, 2.0, 3.0])
    rot = _oblique_ras()[:3, :3] / spacing  # ITK direction (orthonormal): columns are the index axes
    matrix = " ".join(repr(float(x)) for x in rot.T.ravel())  # MetaIO lists the columns one after the other
    base = [("ObjectType", "Image"), ("NDims", 3), ("TransformMatrix", matrix), ("Offset", "10 -20 30"),
            ("ElementSpacing", "1.5 2 3"), ("DimSize", "4 5 6"), ("BinaryData", "True")]
    want = _O + rot @ (spacing * CORNER)
    vec = _write_mha(tmp_path / "v.mha", base + [("BinaryDataByteOrderMSB", "False"), ("ElementType", "MET_FLOAT"),
                                                ("ElementNumberOfChannels", 3), ("ElementDataFile", "LOCAL")],
                     np.transpose(v, (3, 2, 1, 0)).astype("<f4").tobytes())
    for k in range(ARR.shape[2]):
        (tmp_path / f"m{k}.raw").write_bytes(ARR[:, :, k].T.astype(">i2").tobytes())
    listed = _write_mha(tmp_path / "l.mhd", base + [("ElementByteOrderMSB", "True"), ("ElementType", "MET_SHORT"),
                                                   ("ElementDataFile", "LIST")],
                        "".join(f"m{k}.raw\n" for k in range(ARR.shape[2])).encode())
    for path, expected in ((vec, v), (listed, ARR)):
        img = read_image(path)
        np.testing.assert_array_equal(img.array, expected)
        np.testing.assert_allclose(_world_lps(img, CORNER), want, atol=1e-9)


def test_info_says_which_header_field_gave_a_nifti_its_geometry_when_sform_and_qform_disagree(tmp_path):
    """nibabel (and MONAI's loader) take the sform whatever its code; ITK and medseg take the qform when the sform
    is not scanner-anatomical. `medseg info` says so where they disagree, and is silent where they agree."""
    import json

    import nibabel as nib

    q, s = np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([2.0, 2.0, 3.0, 1.0])
    nimg = nib.Nifti1Image(ARR, s)
    nimg.set_qform(q, code=1)
    nimg.set_sform(s, code=2)  # aligned: not what ITK takes when a qform is set
    nib.save(nimg, tmp_path / "both.nii.gz")
    nib.save(nib.Nifti1Image(ARR, s), tmp_path / "one.nii.gz")
    res = run_cli("info", tmp_path / "both.nii.gz")
    assert res.code == 0
    assert "geometry     from the qform (sform disagrees)" in res.out
    rec = json.loads(run_cli("info", "--json", tmp_path / "both.nii.gz").out)[0]
    assert rec["spacing"] == [1.0, 1.0, 1.0] and rec["affine_source"] == "qform (sform disagrees)"
    assert "geometry" not in run_cli("info", tmp_path / "one.nii.gz").out
