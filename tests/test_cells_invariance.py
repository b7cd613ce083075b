"""Cell counting gives the same cells however the same data are stored (transposed, flipped, one slice as a
stack), and pixel sizes are read with their units: an ImageJ z step in pixels stays pixels, a stack calibrated
in-plane only is not given a 1 µm z step, partial OME sizes fall back per axis, and written TIFFs keep their axes
and z step. Synthetic data (mechanics), checked against skimage regionprops and numpy."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from medseg.cells.count import count_cells
from medseg.errors import InputError
from medseg.io.image import Image
from medseg.io.microscopy import read_microscopy, write_microscopy


def _discs(shape=(96, 128), spacing=(0.5, 1.0), seed=0):
    """Discs of physical radius 5.5-8 (a touching pair, one cut by the top border), noisy, uint16."""
    rng = np.random.default_rng(seed)
    Y, X = (np.indices(shape).astype(float).T * np.asarray(spacing)).T
    H, W = shape[0] * spacing[0], shape[1] * spacing[1]
    img = np.zeros(shape)
    for cy, cx, r in [(0.3 * H, 0.25 * W, 7), (0.3 * H, 0.25 * W + 12.5, 7), (0.72 * H, 0.6 * W, 8),
                      (3, 0.8 * W, 6), (0.75 * H, 0.1 * W, 5.5), (0.5 * H, 0.88 * W, 6.5)]:
        img = np.maximum(img, (np.hypot(Y - cy, X - cx) < r) * (0.7 + 0.3 * rng.random()))
    return (np.clip(img + 0.05 * rng.standard_normal(shape), 0, None) * 1000).astype(np.uint16)


def _balls(shape=(16, 64, 80), spacing=(2.0, 0.5, 0.5), seed=0):
    rng = np.random.default_rng(seed)
    Z, Y, X = (np.moveaxis(np.indices(shape).astype(float), 0, -1) * np.asarray(spacing)).transpose(3, 0, 1, 2)
    D, H, W = (s * n for s, n in zip(spacing, shape))
    img = np.zeros(shape)
    for c in [(0.5 * D, 0.3 * H, 0.25 * W, 5), (0.5 * D, 0.3 * H, 0.25 * W + 9, 5), (0.5 * D, 0.7 * H, 0.65 * W, 5.5),
              (2.0, 0.7 * H, 0.2 * W, 4.5), (0.5 * D, 0.2 * H, 0.8 * W, 4.5)]:
        img = np.maximum(img, (np.sqrt((Z - c[0])**2 + (Y - c[1])**2 + (X - c[2])**2) < c[3]) * (0.7 + 0.3 * rng.random()))
    return (np.clip(img + 0.05 * rng.standard_normal(shape), 0, None) * 1000).astype(np.uint16)


def _count(tmp, name, write, **kw):
    d = tmp / name
    (d / "in").mkdir(parents=True)
    write(d / "in" / "a.tif")
    row = count_cells(d / "in", d / "out", classical=True, progress=False, **kw)[0]
    cells = list(csv.DictReader(open(d / "out" / "a_cells.csv")))
    return row, cells, tifffile.imread(d / "out" / "a_labels.tif")


# ---------------------------------------------------------------- guards (pass on the audited code)

@pytest.mark.parametrize("how", ["tags", "option"])
def test_2d_transpose_and_flip_give_the_same_cells(tmp_path, how):
    from skimage.measure import regionprops

    sp = (0.5, 1.0)
    img = _discs(spacing=sp)

    def write(arr, s):
        if how == "tags":
            return lambda p: tifffile.imwrite(p, arr, resolution=(1e4 / s[1], 1e4 / s[0]), resolutionunit="CENTIMETER")
        return lambda p: tifffile.imwrite(p, arr)

    opt = lambda s: {"pixel_size": f"{s[0]},{s[1]}"} if how == "option" else {}  # noqa: E731
    r0, c0, l0 = _count(tmp_path, "o", write(img, sp), **opt(sp))
    rT, cT, _ = _count(tmp_path, "t", write(np.ascontiguousarray(img.T), sp[::-1]), **opt(sp[::-1]))
    rF, cF, _ = _count(tmp_path, "f", write(np.ascontiguousarray(img[::-1]), sp), **opt(sp))
    assert r0["count"] == rT["count"] == rF["count"] == 6
    assert r0["count_not_touching_border"] == rT["count_not_touching_border"] == rF["count_not_touching_border"] == 5
    cols = ("area_px", "area", "equivalent_diameter", "mean_intensity", "integrated_intensity", "touches_border")
    key = lambda cs, f: sorted((*f(float(c["centroid_y"]), float(c["centroid_x"])), *(c[k] for k in cols))  # noqa
                               for c in cs)
    H = img.shape[0]
    assert key(c0, lambda y, x: (round(y, 2), round(x, 2))) == key(cT, lambda y, x: (round(x, 2), round(y, 2)))
    assert key(c0, lambda y, x: (round(y, 2), round(x, 2))) == key(
        cF, lambda y, x: (round((H - 1) * sp[0] - y, 2), round(x, 2)))
    props = {p.label: p for p in regionprops(l0, intensity_image=img, spacing=sp)}
    for c in c0:  # independent: regionprops with the physical spacing
        p = props[int(c["id"])]
        assert float(c["centroid_y"]) == pytest.approx(p.centroid[0], abs=1e-3)
        assert float(c["centroid_x"]) == pytest.approx(p.centroid[1], abs=1e-3)
        assert float(c["area"]) == pytest.approx(p.area, abs=1e-3)
        assert float(c["equivalent_diameter"]) == pytest.approx(2 * np.sqrt(p.area / np.pi), abs=1e-3)


def test_3d_yx_swap_and_physical_volumes(tmp_path):
    from skimage.measure import regionprops

    sp = (2.0, 0.5, 0.8)
    img = _balls(shape=(16, 64, 50), spacing=sp)

    def ij(arr, s):
        return lambda p: tifffile.imwrite(p, arr, imagej=True, resolution=(1 / s[2], 1 / s[1]),
                                          metadata={"axes": "ZYX", "spacing": s[0], "unit": "micron"})

    r0, c0, l0 = _count(tmp_path, "o", ij(img, sp))
    rT, cT, _ = _count(tmp_path, "t", ij(np.ascontiguousarray(img.transpose(0, 2, 1)), (sp[0], sp[2], sp[1])))
    assert r0["count"] == rT["count"] == 5
    k = lambda cs: sorted((c["volume_px"], c["volume"], c["equivalent_diameter"], c["touches_border"]) for c in cs)  # noqa
    assert k(c0) == k(cT)
    props = {p.label: p for p in regionprops(l0, spacing=sp)}
    for c in c0:
        p = props[int(c["id"])]
        vol = p.num_pixels * np.prod(sp)
        assert float(c["volume"]) == pytest.approx(vol, abs=1e-3)
        assert float(c["equivalent_diameter"]) == pytest.approx((6 * vol / np.pi) ** (1 / 3), abs=1e-3)
        z_face = (p.coords[:, 0] == 0).any() or (p.coords[:, 0] == l0.shape[0] - 1).any()
        if z_face:
            assert c["touches_border"] == "True"


def test_roi_polygons_rasterise_to_their_labels_in_any_orientation(tmp_path):
    import roifile
    from scipy import ndimage as ndi
    from skimage.draw import polygon

    from medseg.cells.rois import write_roi_zip
    from medseg.cells.segmenters import ClassicalSegmenter

    lab = ClassicalSegmenter().segment(_discs(spacing=(1.0, 1.0)))
    for name, L in (("o", lab), ("t", np.ascontiguousarray(lab.T)), ("f", np.ascontiguousarray(lab[:, ::-1]))):
        write_roi_zip(L, tmp_path / f"{name}.zip")
        for roi in roifile.roiread(tmp_path / f"{name}.zip"):
            xy = roi.coordinates()  # Fiji: x = column, y = row, pixel corners
            rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=L.shape)
            m = np.zeros(L.shape, bool)
            m[rr, cc] = True
            assert np.array_equal(m, ndi.binary_fill_holes(L == int(roi.name.split("_")[1])))


# ---------------------------------------------------------------- defects (fail on the audited code)

def test_imagej_z_step_in_pixels_is_not_read_as_micrometres(tmp_path):
    p = tmp_path / "uncal.tif"  # ImageJ: voxel depth 2 with unit "pixel" (an uncalibrated, anisotropic stack)
    tifffile.imwrite(p, np.zeros((5, 8, 9), np.uint16), imagej=True,
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "pixel"})
    img = read_microscopy(p)
    assert img.meta["unit"] == "pixel"
    with pytest.raises(InputError, match="Z,Y,X"):  # 2 pixels of z must not be mixed with 0.5 µm in-plane
        read_microscopy(p, pixel_size=0.5)


def test_own_uncalibrated_label_stack_reads_back_in_pixels(tmp_path):
    write_microscopy(Image(np.ones((3, 4, 5), np.uint16), np.eye(4), {"unit": "pixel"}), tmp_path / "lab.tif")
    assert read_microscopy(tmp_path / "lab.tif").meta["unit"] == "pixel"


def test_stack_calibrated_in_plane_only_is_not_given_a_1um_z_step(tmp_path):
    img = _balls()
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", img, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 µm, no z step
    with pytest.raises(InputError, match="Z,Y,X"):  # as an in-plane --pixel-size already was (it counted µm³
        count_cells(d, tmp_path / "out", classical=True, progress=False)  # of 1 x 0.5 x 0.5 "µm" voxels)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written
    row = count_cells(d, tmp_path / "out2", classical=True, progress=False, pixel_size=(2.0, 0.5, 0.5))[0]
    assert row["unit"] == "um"


def test_imagej_stack_without_spacing_has_a_z_step_of_one_unit(tmp_path):
    # ImageJ leaves "spacing=" out when the voxel depth is 1 (in its unit): the step is known, 1 unit
    p = tmp_path / "nm.tif"
    tifffile.imwrite(p, np.zeros((5, 8, 9), np.uint16), imagej=True, resolution=(1 / 100, 1 / 100),
                     metadata={"axes": "ZYX", "unit": "nm"})
    assert read_microscopy(p).spacing == pytest.approx((1e-3, 0.1, 0.1))
    q = tmp_path / "um.tif"
    tifffile.imwrite(q, np.zeros((5, 8, 9), np.uint16), imagej=True, resolution=(2, 2),
                     metadata={"axes": "ZYX", "unit": "um"})
    assert read_microscopy(q, pixel_size=0.3).spacing == pytest.approx((1.0, 0.3, 0.3))


def test_partial_ome_sizes_fall_back_per_axis_symmetrically(tmp_path):
    out = {}
    for ax in "XY":
        p = tmp_path / f"{ax}.ome.tif"
        tifffile.imwrite(p, np.zeros((20, 30), np.uint16), ome=True, metadata={"axes": "YX", f"PhysicalSize{ax}": 0.5},
                         resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        out[ax] = read_microscopy(p).spacing
    assert out["X"] == out["Y"] == pytest.approx((0.5, 0.5))


def test_single_slice_stack_counts_like_the_2d_image(tmp_path):
    img = _discs(spacing=(1.0, 1.0))
    r2, _, _ = _count(tmp_path, "yx", lambda p: tifffile.imwrite(p, img))
    r3, _, _ = _count(tmp_path, "1yx", lambda p: tifffile.imwrite(p, img[None]))
    for k in ("count", "count_not_touching_border", "mean_area", "median_area"):
        assert r3[k] == r2[k], k
    rb, _, _ = _count(tmp_path, "1yx_eb", lambda p: tifffile.imwrite(p, img[None]), exclude_border=True)
    assert rb["count"] == r2["count_not_touching_border"]


@pytest.mark.parametrize("dtype", [np.uint32, np.float64, np.int16])
@pytest.mark.parametrize("n", [3, 5])
def test_write_microscopy_keeps_axes_and_z_step_of_any_dtype(tmp_path, dtype, n):
    arr = np.arange(n * 20, dtype=dtype).reshape(n, 4, 5)
    write_microscopy(Image(arr, np.diag([2.0, 0.5, 0.25, 1]), {"unit": "um"}), tmp_path / "s.tif")
    back = read_microscopy(tmp_path / "s.tif")
    assert not back.channels_first and back.array.shape == (n, 4, 5)
    assert back.spacing == pytest.approx((2.0, 0.5, 0.25))
    write_microscopy(Image(arr.astype(np.uint16), np.diag([0.5, 0.25, 1, 1]), {"unit": "um"}, channels_first=True),
                     tmp_path / "c.tif")
    back = read_microscopy(tmp_path / "c.tif")
    assert back.channels_first and back.array.shape == (n, 4, 5) and back.spacing == pytest.approx((0.5, 0.25))


@pytest.mark.parametrize("dtype", [np.int32, np.float64])
def test_an_uncalibrated_stack_of_any_dtype_reads_back_uncalibrated(tmp_path, dtype):
    write_microscopy(Image(np.zeros((3, 4, 5), dtype), np.eye(4), {"unit": "pixel"}), tmp_path / "s.tif")
    assert read_microscopy(tmp_path / "s.tif").meta["unit"] == "pixel"  # the OME path wrote a µm resolution
