"""Surface metrics (HD95, HD, ASSD, NSD) against MONAI, DeepMind's surface-distance and medpy on real label maps.

MONAI uses the same voxel-border definition: equal to float32 rounding. surface-distance uses
area-weighted surfels on the voxel corners: equal to within one voxel diagonal (documented).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from medseg.evaluate.surface import label_borders, surface_metrics
from _evaluate_cases import KINDS, hippocampus, one_hot, perturb, totalseg

SPACING = (1.0, 1.2, 0.8)  # anisotropic on purpose: catches a spacing applied to the wrong axis


def _monai(pred, ref, labels, spacing, tol):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    p, r = one_hot(pred, labels), one_hot(ref, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing)[0].numpy(),
                compute_hausdorff_distance(p, r, include_background=True, spacing=spacing)[0].numpy(),
                compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing)[0].numpy(),
                compute_surface_dice(p, r, [tol] * len(labels), include_background=True, spacing=spacing)[0].numpy())


def _check_monai(pred, ref, labels, spacing, tol=2.0, subset=None):
    ours = surface_metrics(ref, pred, labels, spacing, tol)  # all labels in one pass
    labels = labels if subset is None else subset
    hd95, hd, assd, nsd = _monai(pred, ref, labels, spacing, tol)
    checked = 0
    for i, c in enumerate(labels):
        if not ((pred == c).any() and (ref == c).any()):
            continue
        checked += 1
        assert ours[c]["hd95"] == pytest.approx(float(hd95[i]), rel=1e-5, abs=1e-5), c
        assert ours[c]["hd"] == pytest.approx(float(hd[i]), rel=1e-6, abs=1e-6), c
        assert ours[c]["assd"] == pytest.approx(float(assd[i]), rel=1e-5, abs=1e-5), c
        assert ours[c]["nsd"] == pytest.approx(float(nsd[i]), abs=1e-6), c
    return checked


@pytest.mark.parametrize("kind", KINDS)
def test_hippocampus_equal_monai(kind):
    checked = sum(_check_monai(perturb(ref, kind), ref, [1, 2], SPACING) for _, ref, _ in hippocampus(2))
    assert checked >= 2


def test_totalseg_42_labels_equal_monai_fortran_order():
    ref, spacing = totalseg()
    pred = perturb(ref, "mixed")
    labels = [int(v) for v in np.unique(ref) if v]
    # NIfTI arrays come F-ordered: the border pass must not mix memory orders
    # MONAI is slow (one-hot, class by class): compare a spread of 11 of the 41 organs
    assert _check_monai(np.asfortranarray(pred), np.asfortranarray(ref), labels, spacing, tol=3.0,
                        subset=labels[::4]) >= 8


def test_hippocampus_close_to_surface_distance_and_medpy():
    import surface_distance as sd
    from medpy.metric import binary as mb

    diag = float(np.linalg.norm(SPACING))
    n = 0
    for _, ref, _ in hippocampus(4):
        for kind in ("erode", "shift", "dilate"):
            pred = perturb(ref, kind)
            ours = surface_metrics(ref, pred, [1, 2], SPACING, 2.0)
            for c in (1, 2):
                s = sd.compute_surface_distances(ref == c, pred == c, SPACING)
                assert abs(ours[c]["hd95"] - sd.compute_robust_hausdorff(s, 95)) <= diag
                assert abs(ours[c]["hd"] - sd.compute_robust_hausdorff(s, 100)) <= diag
                assert abs(ours[c]["assd"] - np.mean(sd.compute_average_surface_distance(s))) <= diag
                # NSD: the surfel definition at tau is bracketed by ours at tau -/+ one voxel diagonal
                lo = surface_metrics(ref, pred, [c], SPACING, max(2.0 - diag, 0))[c]["nsd"]
                hi = surface_metrics(ref, pred, [c], SPACING, 2.0 + diag)[c]["nsd"]
                assert lo - 1e-9 <= sd.compute_surface_dice_at_tolerance(s, 2.0) <= hi + 1e-9
                # medpy's hd is the same voxel-border definition: equal
                assert ours[c]["hd"] == pytest.approx(mb.hd(pred == c, ref == c, SPACING), abs=1e-9)
                n += 1
    assert n == 24


def test_label_borders_equal_per_class_erosion():
    ref, _ = totalseg()
    b = label_borders(ref)
    for c in np.unique(ref)[1:8]:
        m = ref == c
        np.testing.assert_array_equal(b & m, m & ~ndi.binary_erosion(m))


def test_2d_and_hand_checked_values():
    ref = np.zeros((10, 10), np.uint8)
    ref[2:6, 2:6] = 1
    pred = np.zeros_like(ref)
    pred[2:6, 5:9] = 1  # shifted by 3 columns
    m = surface_metrics(ref, pred, [1], (1.0, 1.0), tolerance=1.0)[1]
    assert m["hd"] == 3.0
    # 12 border pixels each side; distances 0 on the shared column, 1 on top/bottom rows, up to 3
    assert 0 < m["nsd"] < 1 and m["assd"] > 0
    same = surface_metrics(ref, ref, [1], (0.5, 2.0))[1]
    assert same == {"hd95": 0.0, "hd": 0.0, "assd": 0.0, "nsd": 1.0}
    _check_monai(pred, ref, [1], (0.7, 1.3), tol=1.0)


def _brute_force(ref, pred, c, spacing, tol):
    """Independent reference: per-class scipy erosion, all-pairs distances (scipy.spatial.distance.cdist)."""
    from scipy.spatial.distance import cdist

    def border(m):
        return np.argwhere(m & ~ndi.binary_erosion(m)) * np.asarray(spacing)

    r, p = border(ref == c), border(pred == c)
    if len(r) == 0 or len(p) == 0:
        return None
    d = cdist(p, r)
    d_pr, d_rp = d.min(axis=1), d.min(axis=0)
    pooled = np.concatenate([d_pr, d_rp])
    return {"hd95": max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), "hd": pooled.max(),
            "assd": pooled.mean(), "nsd": np.mean(pooled <= tol + 1e-9)}


def test_random_label_maps_equal_brute_force():
    from hypothesis import given, settings, strategies as st
    from hypothesis.extra.numpy import arrays

    shapes = st.one_of(st.tuples(st.integers(2, 9), st.integers(2, 9)),
                       st.tuples(st.integers(2, 7), st.integers(2, 7), st.integers(2, 6)))

    @settings(max_examples=40, deadline=None)
    @given(shapes.flatmap(lambda s: st.tuples(arrays(np.uint8, s, elements=st.integers(0, 3)),
                                              arrays(np.uint8, s, elements=st.integers(0, 3)),
                                              st.lists(st.floats(0.3, 3.0), min_size=len(s), max_size=len(s)))),
           st.floats(0.0, 4.0), st.booleans())
    def check(maps, tol, fortran):
        ref, pred, spacing = maps
        if fortran:
            ref, pred = np.asfortranarray(ref), np.asfortranarray(pred)
        ours = surface_metrics(ref, pred, [1, 2, 3], spacing, tol)
        for c in (1, 2, 3):
            bf = _brute_force(ref, pred, c, spacing, tol)
            if bf is None:
                continue
            for k in ("hd95", "hd", "assd", "nsd"):
                assert ours[c][k] == pytest.approx(bf[k], rel=1e-9, abs=1e-9), (c, k)
        swapped = surface_metrics(pred, ref, [1, 2, 3], spacing, tol)  # symmetric metrics
        for c in (1, 2, 3):
            for k in ("hd95", "hd", "assd", "nsd"):
                assert swapped[c][k] == pytest.approx(ours[c][k], rel=1e-12, abs=1e-12, nan_ok=True)

    check()
