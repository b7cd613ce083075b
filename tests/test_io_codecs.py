"""Compressed transfer syntaxes and enhanced multi-frame images, made from the real series by
independent encoders (pydicom's RLE, pyjpegls, OpenJPEG) and highdicom's legacy conversion: the
loaded volume must equal the uncompressed, single-frame original voxel for voxel."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from conftest import data_path
from medseg.io.dicom import load_series

SERIES = {"ct3": ("dicom", "dcmqi_segmentations", "ct-3slice"), "hippo": ("dicom", "mr_study", "13_HCropVolume")}


def _compressed_copy(rel, dest, syntax):
    dest.mkdir()
    for f in sorted(data_path(*rel).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        try:
            ds.compress(syntax)
        except (RuntimeError, NotImplementedError, ValueError) as exc:  # encoder plugin missing
            pytest.skip(f"cannot encode {syntax.name} here: {exc}")
        ds.save_as(dest / f.name)
    return dest


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
@pytest.mark.parametrize("which", sorted(SERIES))
def test_compressed_series_equal_uncompressed(tmp_path, syntax, which):
    rel = SERIES[which]
    folder = _compressed_copy(rel, tmp_path / "c", syntax)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == syntax
    ref = load_series(data_path(*rel))
    img = load_series(folder)
    assert img.array.dtype == ref.array.dtype
    np.testing.assert_array_equal(img.array, ref.array)
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-9)


def _legacy_enhanced(rel, out, kind):
    hd = pytest.importorskip("highdicom")
    if tuple(int(v) for v in hd.__version__.split(".")[:2]) < (0, 28):  # medseg itself needs 0.27, which has no legacy use
        pytest.skip(f"highdicom {hd.__version__}'s legacy conversion fails on these series (combine() argument 1 must "
                    "be datetime.date); fixed in 0.28")
    dss = [pydicom.dcmread(f) for f in sorted(data_path(*rel).glob("*.dcm"))]
    cls = hd.legacy.LegacyConvertedEnhancedCTImage if kind == "CT" else hd.legacy.LegacyConvertedEnhancedMRImage
    mf = cls(dss, series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1)
    mf.save_as(out)
    return out


@pytest.mark.parametrize("rel,kind", [(SERIES["ct3"], "CT"), (("dicom", "mr_study", "12-T1post-05670"), "MR")])
def test_enhanced_multiframe_from_highdicom_equals_single_frame_series(tmp_path, rel, kind):
    p = _legacy_enhanced(rel, tmp_path / "mf.dcm", kind)
    img = load_series(p)
    ref = load_series(data_path(*rel))
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(img.array, ref.array)
    assert img.meta["files"] == [str(p)] * img.shape[2]  # per slice, as documented
    from medseg.io.dicom import discover_series

    assert discover_series(p)[0].files == [p]  # per file
    # frames are stacked by position, so the frame order need not be the file order
    assert sorted(img.meta["frame_numbers"]) == list(range(1, img.shape[2] + 1))


def test_multiframe_and_its_source_in_one_folder_are_two_series(tmp_path):
    rel = SERIES["ct3"]
    shutil.copytree(data_path(*rel), tmp_path / "both")
    _legacy_enhanced(rel, tmp_path / "both" / "mf.dcm", "CT")
    from medseg.io.dicom import discover_series

    found = discover_series(tmp_path / "both")
    assert sorted(s.num_slices for s in found) == [3, 3] and len({s.series_uid for s in found}) == 2


@pytest.mark.parametrize("decoder", ["imagecodecs", "openjpeg"])
def test_jpeg2000_ct_decodes_through_a_direct_decoder(decoder, monkeypatch):
    """Both fast paths (imagecodecs in threads, pylibjpeg-openjpeg serially) are taken on the real
    JPEG 2000 CT, not pydicom's fallback, and give pydicom's own decoding."""
    from unittest import mock

    import medseg.io.dicom_pixels as pixels

    mod = pytest.importorskip(decoder)
    if decoder == "openjpeg":
        monkeypatch.setattr(pixels, "_j2k_decoder", lambda: (lambda b: mod.decode(b, j2k_format=0), False))
    else:
        assert pixels._j2k_decoder()[1], "imagecodecs is installed: it must be the (parallel) decoder"
    folder = data_path("totalseg_example", "ct_dicom")
    first = sorted(folder.iterdir())[0]
    reference = pydicom.dcmread(first).pixel_array  # pydicom's pipeline, independent of medseg
    with mock.patch.object(pydicom.dataset.Dataset, "pixel_array", new_callable=mock.PropertyMock,
                           side_effect=AssertionError("fell back to pydicom")):
        img = load_series(folder)
    k = img.meta["files"].index(str(first))
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    expected = reference * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.array[:, :, k], expected.T)


def test_jpeg_baseline_series_decodes_like_an_independent_jpeg_decoder(tmp_path):
    """8-bit JPEG baseline made with Pillow from the real MR slices; medseg (pydicom + pylibjpeg-libjpeg)
    must decode what Pillow (libjpeg-turbo) decodes, up to IDCT rounding."""
    import io

    from PIL import Image as PILImage
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    rel = SERIES["hippo"]
    (tmp_path / "j").mkdir()
    expected = {}
    for f in sorted(data_path(*rel).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array.astype(np.float64)
        arr8 = np.clip(arr / max(arr.max(), 1) * 255, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        PILImage.fromarray(arr8).save(buf, format="JPEG", quality=90)
        expected[float(ds.ImagePositionPatient[2])] = np.asarray(PILImage.open(io.BytesIO(buf.getvalue())))
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(tmp_path / "j" / f.name, enforce_file_format=True)
    img = load_series(tmp_path / "j")
    ref = load_series(data_path(*rel))
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-9)
    for k in range(img.shape[2]):
        z = float(img.index_to_world([0, 0, k])[0][2])
        got = img.array[:, :, k].T.astype(int)
        assert np.abs(got - expected[z].astype(int)).max() <= 2


def test_deflated_transfer_syntax(tmp_path):
    """Deflated Explicit VR: the whole dataset is zlib-compressed, so pixel data offsets are not file offsets."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    rel = SERIES["hippo"]
    (tmp_path / "d").mkdir()
    for f in sorted(data_path(*rel).glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(tmp_path / "d" / f.name, enforce_file_format=True)
    assert (tmp_path / "d" / "1.dcm").stat().st_size < (data_path(*rel) / "1.dcm").stat().st_size
    np.testing.assert_array_equal(load_series(tmp_path / "d").array, load_series(data_path(*rel)).array)
