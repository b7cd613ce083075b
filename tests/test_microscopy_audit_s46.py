"""Microscopy files written by other tools (Pillow, tifffile's ImageJ/OME writers, a raw PNG encoder): medseg reads
the values the file stores, the channel asked for, and refuses bad files in one line.

References are independent: the array that was written, Pillow's own pixels, ``tifffile.imread`` with an explicit
series and level.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from conftest import assert_clean_error, run_cli
from medseg.cells.data import read_labels
from medseg.errors import InputError
from medseg.io.microscopy import read_microscopy, spatial_shape


def _write_png(path, arr, colour_type):
    """A PNG from first principles (IHDR, one zlib IDAT of filter-0 rows, big-endian samples): no imaging library."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    depth = 16 if arr.dtype == np.uint16 else 8
    raw = arr.astype(">u2" if depth == 16 else "u1").reshape(h, -1).tobytes()
    n = len(raw) // h
    rows = b"".join(b"\x00" + raw[i * n:(i + 1) * n] for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_and_grey_alpha_png_keep_16_bits(tmp_path, colour_type, channels):
    # Pillow decodes these as 8 bits (each sample >> 8): a 16-bit camera's RGB export lost its low byte
    px = np.random.default_rng(colour_type).integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    p = tmp_path / "rgb16.png"
    _write_png(p, px, colour_type)
    for c in range(channels):
        img = read_microscopy(p, channel=c)
        assert img.array.dtype == np.uint16
        np.testing.assert_array_equal(img.array, px[..., c])
    whole = read_microscopy(p)
    assert whole.channels_first
    np.testing.assert_array_equal(whole.array, np.moveaxis(px, -1, 0))


def _palette_png(path, idx, palette, **save):
    png = PILImage.fromarray(idx, mode="P")
    png.putpalette(palette)
    png.save(path, **save)


def test_palette_png_label_map_ids_are_its_indices(tmp_path):
    idx = np.zeros((12, 14), np.uint8)
    idx[1:4, 1:5], idx[6:10, 2:6], idx[5:11, 8:13] = 1, 2, 7
    colours = np.random.default_rng(0).integers(30, 256, (256, 3)).astype(np.uint8)
    colours[0] = 0
    for name, save in (("lab.png", {}), ("lab_t.png", {"transparency": 0})):
        p = tmp_path / name
        _palette_png(p, idx, colours.ravel().tolist(), **save)
        with PILImage.open(p) as png:
            stored = np.asarray(png)  # Pillow's own pixels of a "P" image: the indices
        np.testing.assert_array_equal(stored, idx)
        np.testing.assert_array_equal(read_labels(p), stored)
        img = read_microscopy(p)
        assert not img.channels_first
        np.testing.assert_array_equal(img.array, stored)


def test_grey_palette_png_reads_its_grey_values(tmp_path):
    idx = np.arange(12 * 14).reshape(12, 14).astype(np.uint8) % 40
    grey = (255 - 3 * np.arange(256)).clip(0).astype(np.uint8)
    p = tmp_path / "grey.png"
    _palette_png(p, idx, np.repeat(grey, 3).tolist())
    np.testing.assert_array_equal(read_microscopy(p).array, grey[idx])  # what a viewer shows: the grey level


def test_one_bit_png_label_map_is_zero_one(tmp_path):
    mask = np.zeros((10, 16), bool)
    mask[2:7, 3:9] = True
    p = tmp_path / "mask.png"
    PILImage.fromarray(mask).save(p)
    with PILImage.open(p) as png:
        assert png.mode == "1"
    lab = read_labels(p)
    np.testing.assert_array_equal(lab, mask.astype(np.uint8))  # one object, id 1 (was 255: Pillow's byte)
    np.testing.assert_array_equal(read_microscopy(p).array, mask)


@pytest.mark.parametrize("layout", ["imagej_cyx", "ome_czyx"])
def test_constant_channel_is_selectable_by_its_index(tmp_path, layout):
    # an empty (constant) last channel of a fluorescence image is a channel, not an alpha: --channel -1 picked
    # channel 0 and --channel 3 was "out of range"
    rng = np.random.default_rng(1)
    p = tmp_path / f"{layout}.tif"
    if layout == "imagej_cyx":
        arr = rng.integers(1, 255, (2, 8, 9), dtype=np.uint8)
        arr[1] = 0
        tifffile.imwrite(p, arr, imagej=True, metadata={"axes": "CYX"})
    else:
        arr = rng.integers(1, 4000, (4, 3, 8, 9), dtype=np.uint16)
        arr[3] = 7
        tifffile.imwrite(p, arr, ome=True, metadata={"axes": "CZYX"})
    ref = tifffile.imread(p, series=0)
    np.testing.assert_array_equal(ref, arr)
    last = arr.shape[0] - 1
    for c in (0, last, -1):
        np.testing.assert_array_equal(read_microscopy(p, channel=c).array, ref[c])


def test_tiff_with_no_pages_is_refused_by_name(tmp_path):
    p = tmp_path / "none.tif"
    p.write_bytes(b"II*\x00\x00\x00\x00\x00")  # a little-endian header whose first IFD offset is 0
    out = tmp_path / "out"
    res = run_cli("cells", "count", "-i", p, "-o", out, "--classical")
    assert_clean_error(res, "none.tif", "no image")
    assert not out.exists()
    with pytest.raises(InputError, match="no image"):
        spatial_shape(p)


def _pyramid(p, base):
    with tifffile.TiffWriter(p, ome=True) as w:
        w.write(base, subifds=2, metadata={"axes": "YX"})
        w.write(base[::2, ::2], subfiletype=1)
        w.write(base[::4, ::4], subfiletype=1)


@pytest.mark.parametrize("variant", ["zlib_tiles", "lzw_bigtiff", "pyramid", "pages_no_metadata", "rgb_planar"])
def test_other_writers_tiffs_match_tifffile(tmp_path, variant):
    """Checked correct in this audit (no change needed): stored values, axis order and the base level."""
    rng = np.random.default_rng(2)
    p = tmp_path / f"{variant}.tif"
    stack = rng.integers(0, 65535, (3, 64, 48), dtype=np.uint16)
    if variant == "zlib_tiles":
        tifffile.imwrite(p, stack, tile=(32, 32), compression="zlib", photometric="minisblack")
    elif variant == "lzw_bigtiff":
        tifffile.imwrite(p, stack, bigtiff=True, compression="lzw", photometric="minisblack")
    elif variant == "pyramid":
        stack = stack[0]
        _pyramid(p, stack)
    elif variant == "pages_no_metadata":
        with tifffile.TiffWriter(p) as w:  # one page per slice, no ImageJ or OME description: the pages are z
            for s in stack:
                w.write(s, photometric="minisblack", metadata=None, contiguous=False)
    else:
        stack = stack[:, :8, :9]
        tifffile.imwrite(p, stack, photometric="rgb", planarconfig="separate")
    ref = tifffile.imread(p, series=0, level=0)
    img = read_microscopy(p)
    if variant == "rgb_planar":
        np.testing.assert_array_equal(ref, stack)  # samples first, as stored
        for c in range(3):
            np.testing.assert_array_equal(read_microscopy(p, channel=c).array, stack[c])
        assert spatial_shape(p) == stack.shape[1:]
    else:
        np.testing.assert_array_equal(img.array, ref)
        np.testing.assert_array_equal(img.array, stack)
        assert spatial_shape(p) == stack.shape
