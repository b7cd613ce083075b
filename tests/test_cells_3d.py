"""3D nuclei on anisotropic stacks: the watershed and the classical mode give the same instances however the same
stack is presented (its spacing in other units, one z slice as a stack, resampled in z), checked against
scikit-image / SciPy recipes written here, on the real StarDist stack."""

from __future__ import annotations

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
