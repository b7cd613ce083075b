"""The empty-class policy: explicit values and flags, never a silent NaN in a mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.evaluate.metrics import evaluate_case, label_names, tolerance_for
from medseg.evaluate.summary import summarize


def _maps():
    ref = np.zeros((8, 8, 4), np.uint8)
    ref[1:4, 1:4, 1:3] = 1  # class 1 in ref only  -> pred_empty
    pred = np.zeros_like(ref)
    pred[5:7, 5:7, 1:3] = 2  # class 2 in pred only -> ref_empty; class 3 nowhere -> both_empty
    return pred, ref


def test_policy_values_and_flags():
    pred, ref = _maps()
    r = evaluate_case(pred, ref, labels={1: "a", 2: "b", 3: "c"}, spacing=(1, 1, 2))["classes"]
    assert r["a"]["flags"] == ["pred_empty"] and r["b"]["flags"] == ["ref_empty"] and r["c"]["flags"] == ["both_empty"]
    for k in ("dice", "iou", "precision", "recall", "nsd"):
        assert r["a"][k] == 0 and r["b"][k] == 0 and r["c"][k] == 1
    for k in ("hd95", "hd", "assd"):
        assert math.isnan(r["a"][k]) and math.isnan(r["b"][k]) and r["c"][k] == 0
    assert math.isnan(r["b"]["rel_volume_diff"]) and r["a"]["rel_volume_diff"] == -1
    assert r["a"]["volume_ref_ml"] == pytest.approx(3 * 3 * 2 * 2 / 1000)


def test_distance_cap_and_means_skip_nan_with_counts():
    pred, ref = _maps()
    capped = evaluate_case(pred, ref, labels=[1], spacing=(1, 1, 2), distance_cap="diagonal")["classes"]["label_1"]
    assert capped["hd95"] == pytest.approx(math.sqrt(8 ** 2 + 8 ** 2 + 8 ** 2)) and "distance_capped" in capped["flags"]
    assert evaluate_case(pred, ref, labels=[1], distance_cap=50.0)["classes"]["label_1"]["hd"] == 50.0
    good = evaluate_case(ref, ref, labels=[1], spacing=(1, 1, 2))
    bad = evaluate_case(pred, ref, labels=[1], spacing=(1, 1, 2))
    cases = [{"case": "x", **good}, {"case": "y", **bad}]
    s = summarize(cases, ["label_1"])
    m = s["mean"]["label_1"]
    assert m["dice"] == 0.5 and m["hd95"] == 0.0 and m["n_surface_cases"] == 1 and m["n_cases"] == 2
    assert m["n_pred_empty"] == 1
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in s["foreground_mean"].values())


def test_monai_returns_nan_where_we_flag():
    """MONAI #7504: DiceMetric gives NaN for an empty reference (ignore_empty=True); we give 0 or 1 and a flag."""
    import torch
    from monai.metrics import DiceMetric

    z = torch.zeros(1, 1, 4, 4)
    assert torch.isnan(DiceMetric(include_background=True, reduction="none")(z, z)).all()
    r = evaluate_case(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), labels=[1])["classes"]["label_1"]
    assert r["dice"] == 1.0 and r["flags"] == ["both_empty"]


def test_label_specs_and_tolerances():
    assert label_names({"background": 0, "liver": 1, "spleen": 2}) == {1: "liver", 2: "spleen"}
    assert tolerance_for({"liver": 3, "default": 1}, 2, "spleen") == 1.0
    assert tolerance_for({"liver": 3}, 1, "liver") == 3.0 and tolerance_for(2.5, 1, "x") == 2.5
    ref = np.zeros((12, 12), np.uint8)
    ref[2:8, 2:8] = 1
    pred = np.roll(ref, 2, axis=0)
    loose = evaluate_case(pred, ref, labels={1: "liver"}, nsd_tolerance={"liver": 2.0})["classes"]["liver"]["nsd"]
    tight = evaluate_case(pred, ref, labels={1: "liver"}, nsd_tolerance={"default": 0.5})["classes"]["liver"]["nsd"]
    assert loose == 1.0 and tight < 1.0


def test_images_on_different_grids_are_refused():
    from medseg.errors import InputError
    from medseg.io.image import Image

    a = np.zeros((4, 4, 4), np.uint8)
    a[1:3, 1:3, 1:3] = 1
    ref = Image(a, np.diag([1.0, 1.0, 2.0, 1.0]))
    r = evaluate_case(ref.with_array(a.copy()), ref)
    assert r["spacing"] == [1.0, 1.0, 2.0] and r["classes"]["label_1"]["dice"] == 1.0
    assert r["classes"]["label_1"]["volume_ref_ml"] == pytest.approx(8 * 2 / 1000)
    with pytest.raises(InputError, match="geometry differs"):
        evaluate_case(Image(a, np.diag([1.0, 1.0, 3.0, 1.0])), ref)
