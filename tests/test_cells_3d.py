"""3D nuclei on anisotropic stacks: the watershed and the classical mode give the same instances however the same
stack is presented (its spacing in other units, one z slice as a stack, resampled in z), checked against
scikit-image / SciPy recipes written here, on the real StarDist stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.postprocess.classical import classical_instances
from medseg.postprocess.watershed import watershed_instances
from conftest import data_path


def _stack():
    import tifffile

    from medseg.cells.data import percentile_normalize

    img = tifffile.imread(data_path("nuclei_stardist", "img3d.tif"))
    ref = tifffile.imread(data_path("nuclei_stardist", "mask3d.tif"))
    return percentile_normalize(img), ref


def _same_partition(a, b) -> bool:
    """The same objects up to their ids (and the same background)."""
    pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def _ball(radius, spacing):
    """Pixels whose centre lies within ``radius`` of the middle one (physical units)."""
    sp = np.asarray(spacing, float)
    half = np.floor(radius / sp).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    return sum(g**2 for g in grids) <= radius**2


def _skimage_watershed(mask, spacing, min_distance):
    """peak_local_max markers on SciPy's distance transform, flooded by skimage's watershed."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    edt = ndi.distance_transform_edt(mask, sampling=spacing)
    coords = peak_local_max(edt, footprint=_ball(min_distance, spacing), labels=mask.astype(int),
                            exclude_border=False)
    peaks = np.zeros(mask.shape, bool)
    peaks[tuple(coords.T)] = True
    markers = ndi.label(peaks, structure=np.ones((3,) * mask.ndim))[0]
    return watershed(-edt, markers, mask=mask)


def test_watershed_does_not_depend_on_the_unit_of_the_spacing():
    """A z step of 2 pixels, in pixels or in µm of 0.3 / 0.65 / 0.1 per pixel, is one geometry: the same peaks and
    instances as skimage's recipe in pixels (before: the float32 distance map in µm broke its plateaus' ties,
    e.g. 54 objects instead of 65)."""
    _, ref = _stack()
    mask = ref[:, :32, :32] > 0
    expected = _skimage_watershed(mask, (2.0, 1.0, 1.0), 2.0)
    assert expected.max() > 30
    for s in (1.0, 0.3, 0.65, 0.1):
        out = watershed_instances(mask.astype(float), spacing=(2 * s, s, s), min_distance=2 * s)
        assert _same_partition(out, expected), s


def test_classical_mode_does_not_depend_on_the_unit_of_the_spacing():
    img, _ = _stack()
    img = img[:, :40, :40]
    base, info = classical_instances(img, (2.0, 1.0, 1.0), return_info=True)
    assert base.max() > 10
    for s in (0.65, 0.3):
        out, other = classical_instances(img, (2 * s, s, s), return_info=True)
        assert other["radius"] == pytest.approx(info["radius"] * s)
        assert np.array_equal(out, base), s


def test_one_slice_stack_is_segmented_as_the_2d_image():
    """Smallest objects by area (not by a ball's volume against area x z step) and no z faces to touch."""
    img, _ = _stack()
    for z in (9, 15):
        flat = img[z]
        for dz in (1.0, 2.0):
            for kw in ({}, {"exclude_border": True}, {"radius": 4.0}):
                ref = classical_instances(flat, (1.0, 1.0), **kw)
                out = classical_instances(flat[None], (dz, 1.0, 1.0), **kw)
                assert out.shape == (1, *flat.shape)
                assert np.array_equal(out[0], ref), (z, dz, kw)
        # an explicit minimum volume is an area times the z step
        ref = classical_instances(flat, (1.0, 1.0), min_size=40.0)
        assert np.array_equal(classical_instances(flat[None], (2.0, 1.0, 1.0), min_size=80.0)[0], ref)
    eb = classical_instances(img[15][None], (1.0, 1.0, 1.0), exclude_border=True)
    assert eb.max() > 0  # before: every object of a one-slice stack touched a z face and was dropped


def test_local_threshold_neighbourhood_is_physical_along_z():
    """The same stack with a z step of 2, and resampled to 1 by repeating every slice: the local threshold must
    span the same 8 radii in µm along z. Resampling alone changes the Otsu mode's foreground by some voxels; the
    local mode's may change by no more than 1.5x as many (before: its block reached twice as far along the
    coarse z, and the foreground differed by 2.4x as many voxels as Otsu's)."""
    img, _ = _stack()
    iso = np.repeat(img, 2, axis=0)
    diff, size = {}, {}
    for method in ("otsu", "local"):
        a = classical_instances(img, (2.0, 1.0, 1.0), method, radius=4.5)
        b = classical_instances(iso, (1.0, 1.0, 1.0), method, radius=4.5)
        diff[method], size[method] = int(((a > 0) != (b[::2] > 0)).sum()), int((a > 0).sum())
    assert 0 < diff["otsu"] < 0.05 * size["otsu"]
    assert diff["local"] <= 1.5 * diff["otsu"], diff


def test_3d_instance_scores_equal_an_independent_matching():
    """AP / F1 / counts of a 3D segmentation (what benchmarks/cells3d.py reports) against a Hungarian matching of
    the IoU matrix written here."""
    from scipy.optimize import linear_sum_assignment

    from medseg.cells.evaluate import evaluate_pair

    img, ref = _stack()
    pred = classical_instances(img, (2.0, 1.0, 1.0))
    got = evaluate_pair(ref, pred)
    r_ids, r_inv = np.unique(ref, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    table = np.zeros((len(r_ids), len(p_ids)))
    np.add.at(table, (r_inv.ravel(), p_inv.ravel()), 1)
    inter = table[1:, 1:]
    iou = inter / (table[1:].sum(1)[:, None] + table[:, 1:].sum(0)[None] - inter)
    assert got["n_ref"] == len(r_ids) - 1 and got["n_pred"] == len(p_ids) - 1
    for t in (0.5, 0.7, 0.9):
        rows, cols = linear_sum_assignment(-np.where(iou >= t, iou, 0))
        tp = int((iou[rows, cols] >= t).sum())
        fp, fn = got["n_pred"] - tp, got["n_ref"] - tp
        assert got[f"tp@{t:g}"] == tp
        assert got[f"ap@{t:g}"] == pytest.approx(tp / (tp + fp + fn))
        assert got[f"f1@{t:g}"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


@pytest.mark.parametrize("given, seen", [((1.0, 1.0, 1.0), 10), ((2.0, 1.0, 1.0), 20), ((4.0, 0.5, 0.5), 80),
                                         ((2.05, 1.0, 1.0), 20), (None, 20)])
def test_a_3d_model_sees_every_stack_at_its_training_z_step(monkeypatch, given, seen):
    """A 3D model learns its training stacks' anisotropy; it ignored the stack's spacing, so the real StarDist stack
    given with every slice repeated (z step 1 instead of 2) or every other slice (4) scored AP@0.5 0.58 / 0.15
    instead of 0.72. The network now sees the stack resampled to the z step, relative to its pixel, that model.json
    records (within 5 % left as is), and the labels come back at the stack's own shape."""
    from medseg.cells.config import CellTrainConfig
    from medseg.cells.segmenters import CellModel

    cfg = CellTrainConfig(spatial_dims=3, patch_size=(8, 16, 16), min_snr=0.0, merge_boundary=0.0)
    shapes = []

    def fake_predict(self, image):  # one bright ball per stack as the network's "interior" call
        shapes.append(image.shape)
        z, y, x = np.indices(image.shape)
        inside = ((z - image.shape[0] / 2) / (image.shape[0] / 4)) ** 2 + ((y - 8) / 5) ** 2 + ((x - 8) / 5) ** 2 < 1
        prob = np.zeros((6, *image.shape), np.float32)
        prob[0], prob[1] = ~inside, inside
        return prob

    monkeypatch.setattr(CellModel, "_predict", fake_predict)
    model = CellModel(None, cfg, {"spacing": [2.0, 1.0, 1.0]}, device="cpu")
    stack = np.random.default_rng(0).random((20, 16, 16)).astype(np.float32)
    labels = model.segment(stack, given)
    assert shapes == [(seen, 16, 16)]
    assert labels.shape == stack.shape and labels.max() == 1
    # runs that recorded no spacing, and 2D images, are predicted as given
    shapes.clear()
    CellModel(None, cfg, {}, device="cpu").segment(stack, (1.0, 1.0, 1.0))
    assert shapes == [(20, 16, 16)]


def test_a_3d_run_records_its_stacks_median_voxel_size(tmp_path, monkeypatch):
    """What z_scale compares a stack with: the training stacks' median voxel size, read from their files, the same
    whether their training pairs were made now or served from the disk cache."""
    import json

    import tifffile

    from medseg.cells.config import CellTrainConfig
    from medseg.cells.train import prepare_training_data
    from medseg.io.image import Image
    from medseg.io.microscopy import write_microscopy

    img, ref = _stack()
    ds = tmp_path / "ds"
    for sub in ("images", "labels"):
        (ds / sub).mkdir(parents=True)
    steps = {"a": 2.0, "b": 3.0, "c": 5.0, "v": 1.0}
    for cid, z in steps.items():
        affine = np.diag([z, 0.5, 0.5, 1.0])
        write_microscopy(Image(img.astype(np.float32), affine, {"unit": "um"}), ds / "images" / f"{cid}.tif")
        write_microscopy(Image(ref.astype(np.uint16), affine, {"unit": "um"}), ds / "labels" / f"{cid}.tif")
    (ds / "split.json").write_text(json.dumps({"train": ["a", "b", "c"], "val": ["v"]}))
    with tifffile.TiffFile(ds / "images" / "b.tif") as tif:  # the file says what it holds (ImageJ z step)
        assert tif.imagej_metadata["spacing"] == 3.0
    cfg = CellTrainConfig(spatial_dims=3, patch_size=(16, 32, 32), tune_fraction=0.0, cache="disk")
    fresh = prepare_training_data(ds, cfg, tmp_path / "cache")[4]
    import medseg.cells.data as data_mod

    real, read = data_mod.load_image, []
    monkeypatch.setattr(data_mod, "load_image", lambda path, *a, **k: read.append(Path(path).stem) or real(path, *a, **k))
    cached = prepare_training_data(ds, cfg, tmp_path / "cache")[4]
    assert fresh == cached == {"spacing": [3.0, 0.5, 0.5]}
    assert not set(read) & {"a", "b", "c"}  # the cache entries hold the spacing: no training stack is read again


def test_counting_a_stack_without_voxel_size_with_a_3d_model_says_so(tmp_path, monkeypatch):
    """A stack whose file has no voxel size is taken as isotropic and resampled to the model's z step: a note names
    --pixel-size; a stack with a z step in pixels (ImageJ unit 'pixel', here 3) is resampled by it, without one."""
    import tifffile

    from medseg.cells.config import CellTrainConfig
    from medseg.cells.count import count_cells
    from medseg.cells.segmenters import CellModel
    from medseg.io.image import Image
    from medseg.io.microscopy import write_microscopy

    cfg = CellTrainConfig(spatial_dims=3, patch_size=(8, 16, 16), min_snr=0.0, merge_boundary=0.0)
    model = CellModel(None, cfg, {"spacing": [2.0, 1.0, 1.0]}, device="cpu")
    monkeypatch.setattr(CellModel, "_predict", lambda self, image: np.stack(
        [np.ones(image.shape, np.float32), *np.zeros((5, *image.shape), np.float32)]))
    monkeypatch.setattr(CellModel, "load", classmethod(lambda cls, *a, **k: model))
    stack = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)
    tifffile.imwrite(tmp_path / "plain.tif", stack)  # no resolution, no ImageJ spacing
    write_microscopy(Image(stack, np.diag([3.0, 1.0, 1.0, 1.0]), {"unit": "pixel"}), tmp_path / "stepped.tif")
    notes = []
    for name in ("plain", "stepped"):
        count_cells(tmp_path / f"{name}.tif", tmp_path / f"out_{name}", model=tmp_path, note=notes.append,
                    progress=False, threads=1)
    assert [n.split(":")[0] for n in notes] == ["plain.tif"] and "--pixel-size Z,Y,X" in notes[0]
