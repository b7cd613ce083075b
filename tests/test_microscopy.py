"""Microscopy reading: pixel size from ImageJ / OME / resolution tags, channels, bad files (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from medseg.errors import InputError
from medseg.io import read_image
from medseg.io.image import Image
from medseg.io.microscopy import read_microscopy, single_channel, write_microscopy
from conftest import data_path


def test_imagej_hyperstack_spacing_and_channel(tmp_path):
    arr = np.arange(4 * 2 * 5 * 6, dtype=np.uint16).reshape(4, 2, 5, 6)  # Z C Y X
    p = tmp_path / "hyper.tif"
    tifffile.imwrite(p, arr, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"})
    img = read_microscopy(p)
    assert img.channels_first and img.array.shape == (2, 4, 5, 6)
    assert img.spacing == pytest.approx((2.0, 0.25, 0.25))
    assert img.meta["unit"] == "um" and img.meta["spacing_from_file"]
    one = read_microscopy(p, channel=1)
    assert not one.channels_first
    np.testing.assert_array_equal(one.array, arr[:, 1])
    with pytest.raises(InputError, match="channel"):
        single_channel(img)
    with pytest.raises(InputError, match="out of range"):
        read_microscopy(p, channel=5)


def test_ome_physical_size_units(tmp_path):
    p = tmp_path / "a.ome.tif"
    tifffile.imwrite(p, np.zeros((3, 7, 9), np.uint8), metadata={
        "axes": "ZYX", "PhysicalSizeX": 650.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 650.0,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm"})
    img = read_microscopy(p)
    assert img.array.shape == (3, 7, 9)
    assert img.spacing == pytest.approx((1.5, 0.65, 0.65))
    assert img.meta["spacing_source"] == "ome"


@pytest.mark.parametrize("unit,ppu,expected", [("CENTIMETER", 1e4 / 0.5, 0.5), ("INCH", 25400 / 0.4, 0.4)])
def test_resolution_tags(tmp_path, unit, ppu, expected):
    p = tmp_path / "r.tif"
    tifffile.imwrite(p, np.zeros((5, 6), np.uint16), resolution=(ppu, ppu), resolutionunit=unit)
    assert read_microscopy(p).spacing == pytest.approx((expected, expected))


@pytest.mark.parametrize("dpi", [72, 96, 300, 1000])
def test_print_resolutions_in_inches_are_not_a_calibration(tmp_path, dpi):
    """Image editors tag 72-300 dpi: honoured, a pixel would be 25-353 µm and every area absurd."""
    p = tmp_path / "edited.tif"
    tifffile.imwrite(p, np.zeros((5, 6), np.uint8), resolution=(dpi, dpi), resolutionunit="INCH")
    img = read_microscopy(p)
    assert img.spacing == (1.0, 1.0) and img.meta["unit"] == "pixel"


def test_stack_without_z_step_needs_all_three_sizes(tmp_path):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.zeros((7, 5, 6), np.uint16))
    for partial in (0.5, (0.5, 0.5)):
        with pytest.raises(InputError, match="Z,Y,X") as e:
            read_microscopy(p, pixel_size=partial)
        assert "stack.tif" in str(e.value)
    assert read_microscopy(p, pixel_size=(2, 0.5, 0.5)).spacing == pytest.approx((2, 0.5, 0.5))
    # a file that records its z step keeps it under an in-plane override
    q = tmp_path / "ij.tif"
    tifffile.imwrite(q, np.zeros((7, 5, 6), np.uint16), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    assert read_microscopy(q, pixel_size=0.5).spacing == pytest.approx((1.5, 0.5, 0.5))


def test_no_metadata_means_pixel_units_and_override(tmp_path):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, np.zeros((5, 6), np.uint16))
    img = read_microscopy(p)
    assert img.spacing == (1.0, 1.0) and img.meta["unit"] == "pixel"
    assert read_microscopy(p, pixel_size=0.3).spacing == pytest.approx((0.3, 0.3))
    with pytest.raises(InputError):
        read_microscopy(p, pixel_size=(1, 2, 3))


def test_roundtrip_is_fiji_compatible(tmp_path):
    p = tmp_path / "lab.tif"
    lab = np.zeros((4, 8, 9), np.uint16)
    lab[1:3, 2:5, 2:6] = 7
    write_microscopy(Image(lab, np.diag([3.0, 0.5, 0.5, 1.0]), {"unit": "um"}), p)
    with tifffile.TiffFile(p) as t:  # what Fiji reads: ImageJ metadata + resolution tags
        assert t.is_imagej and t.imagej_metadata["spacing"] == pytest.approx(3.0)
        assert t.imagej_metadata["unit"] == "um"
        num, den = t.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.5)
        np.testing.assert_array_equal(t.asarray(), lab)
    assert read_microscopy(p).spacing == pytest.approx((3.0, 0.5, 0.5))


def test_rgb_png_channels(tmp_path):
    import imageio.v3 as iio

    grey = np.random.default_rng(0).integers(0, 255, (6, 7), dtype=np.uint8)
    p = tmp_path / "grey_rgba.png"
    iio.imwrite(p, np.stack([grey, grey, grey, np.full_like(grey, 255)], -1))
    img = read_microscopy(p)  # equal colour channels + opaque alpha = a grey image
    assert not img.channels_first
    np.testing.assert_array_equal(img.array, grey)
    q = tmp_path / "colour.png"
    iio.imwrite(q, np.stack([grey, 255 - grey, grey // 2], -1))
    img = read_microscopy(q)
    assert img.channels_first and img.array.shape == (3, 6, 7)
    np.testing.assert_array_equal(read_microscopy(q, channel=1).array, 255 - grey)


@pytest.mark.parametrize("content", [b"", b"II*\x00garbage", b"\x89PNG\r\n\x1a\nxx"])
def test_corrupt_files(tmp_path, content):
    p = tmp_path / ("bad.png" if content.startswith(b"\x89") else "bad.tif")
    p.write_bytes(content)
    with pytest.raises(InputError) as e:
        read_microscopy(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_real_dsb_and_3d_read():
    png = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0]
    img = read_image(png)  # dispatch from the generic reader
    lab = tifffile.imread(data_path("dsb2018_fluo", "labels", png.stem + ".tif"))
    assert img.shape == lab.shape and not img.channels_first
    stack = read_image(data_path("nuclei_stardist", "img3d.tif"))
    np.testing.assert_array_equal(stack.array, tifffile.imread(data_path("nuclei_stardist", "img3d.tif")))
    assert stack.array.ndim == 3 and stack.meta["axes"] == "ZYX"


def _spatial(img: Image) -> tuple:
    return tuple(img.array.shape[1:] if img.channels_first else img.array.shape)


def test_spatial_shape_from_the_header_equals_the_read(tmp_path):
    """Header-only shapes (crop fitting over many stacks) agree with reading the pixels, across the layouts the
    reader handles; refusals are the reader's."""
    from medseg.io.microscopy import spatial_shape

    cases = {
        "zcyx.tif": (np.zeros((4, 2, 5, 6), np.uint16), {"imagej": True, "metadata": {"axes": "ZCYX"}}),
        "czyx_ome.tif": (np.zeros((2, 3, 7, 9), np.uint8), {"metadata": {"axes": "CZYX"}}),
        "tzyx.tif": (np.zeros((1, 3, 7, 9), np.uint8), {"metadata": {"axes": "TZYX"}}),
        "rgb.tif": (np.zeros((7, 9, 3), np.uint8), {"photometric": "rgb"}),
        "plain3d.tif": (np.zeros((3, 7, 9), np.float32), {}),
        "plain2d.tif": (np.zeros((7, 9), np.uint16), {}),
    }
    for name, (arr, kw) in cases.items():
        p = tmp_path / name
        tifffile.imwrite(p, arr, **kw)
        assert spatial_shape(p) == _spatial(read_microscopy(p)), name
    png = sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0]
    assert spatial_shape(png) == _spatial(read_microscopy(png))
    real = data_path("nuclei_stardist", "img3d.tif")
    assert spatial_shape(real) == _spatial(read_microscopy(real)) == tifffile.imread(real).shape
    movie = tmp_path / "movie.tif"
    tifffile.imwrite(movie, np.zeros((2, 3, 7, 9), np.uint8), metadata={"axes": "TZYX"})
    for bad, words in ((movie, "time series"), (tmp_path / "none.tif", "no such file")):
        with pytest.raises(InputError, match=words):
            spatial_shape(bad)
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="garbage.tif"):
        spatial_shape(garbage)


def test_tiff_with_several_images_is_refused_not_cut_to_the_first(tmp_path):
    p = tmp_path / "two.tif"
    with tifffile.TiffWriter(p) as t:
        t.write(np.zeros((20, 30), np.uint16))
        t.write(np.zeros((8, 8), np.uint16))
    with pytest.raises(InputError, match="holds 2 images") as e:
        read_microscopy(p)
    assert "two.tif" in str(e.value)


def test_png_with_a_damaged_chunk_is_refused(tmp_path):
    """Decoders check the pixels' zlib checksum but not the chunks' CRCs, which also guard the metadata chunks
    (a pixel size, say): a chunk whose CRC does not match was read before."""
    raw = bytearray(sorted(data_path("dsb2018_fluo", "images").glob("*.png"))[0].read_bytes())
    start = raw.index(b"IDAT") - 4
    length = int.from_bytes(raw[start:start + 4], "big")
    raw[start + 8 + length] ^= 0x01  # the first IDAT chunk's CRC
    p = tmp_path / "flipped.png"
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="checksum|broken|cannot read") as e:
        read_microscopy(p)
    assert "flipped.png" in str(e.value)
