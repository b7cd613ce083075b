"""A bounded run of ``benchmarks/metrics.py`` (the full one is in benchmarks/RESULTS.md): it runs and agrees."""

from __future__ import annotations

from conftest import data_path


def test_benchmark_bounded_run_numbers_agree():
    data_path("totalseg_example", "example_seg.nii.gz")
    from benchmarks.metrics import main

    res = main(["--shape", "72", "64", "32", "--labels", "8", "--monai-labels", "2"])
    assert res["n_labels"] == 8
    assert res["max_abs_diff"]["dice_vs_monai"] <= 1e-6 and res["max_abs_diff"]["iou_vs_monai"] <= 1e-6
    for k in ("hd95", "hd", "assd"):
        assert res["max_abs_diff"][f"{k}_vs_surface_distance_mm"] <= res["voxel_diagonal_mm"]
    assert res["nsd_within_tau_plus_minus_voxel_diagonal"]
