"""Benchmark: medseg's evaluation against MONAI (Dice/IoU) and DeepMind's surface-distance, same process, same data.

The 42-value TotalSegmentator example segmentation (``../shared/data/totalseg_example/example_seg.nii.gz``,
122x101x30 at 3 mm) is perturbed at its native resolution (borders eroded, classes dilated, shifted,
the reference region of one class cleared) and both maps are upsampled by nearest neighbour to ~512x512x300 here, in memory
(nothing is written). Then, on the same arrays:

* overlap: ``medseg.evaluate.overlap`` (one bincount confusion matrix) vs MONAI ``DiceMetric`` +
  ``MeanIoU`` run label by label on binary masks (a one-hot tensor of 42 classes x 79 M voxels
  would need ~13 GB per input; label by label is MONAI's memory-bounded use);
* whole report: ``medseg.evaluate.metrics.evaluate_case`` (overlap, volumes, HD95, HD, ASSD, NSD of
  every class) vs MONAI Dice+IoU plus ``surface_distance`` (HD95, HD, ASSD, NSD) label by label.

Numbers are compared too: Dice/IoU must equal MONAI's to 1e-6; distances must be within one voxel
diagonal of surface-distance's (its surfel definition differs, see ``medseg.evaluate.surface``).

A second mode, ``--folder``, times a whole folder evaluation on the 217 MSD hippocampus label maps
(perturbed copies written to a temporary folder first, untimed): ``evaluate_folder`` (reading, all
metrics, the four report files) against reading the same files and running MONAI Dice+IoU plus
surface-distance on each case.

Usage: python -m benchmarks.metrics [--shape 512 512 300] [--labels N] [--json OUT]
       python -m benchmarks.metrics --folder [--cases N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def perturb(ref: np.ndarray) -> np.ndarray:
    """A plausible imperfect prediction at native resolution."""
    labels = [int(v) for v in np.unique(ref) if v]
    pred = ref.copy()
    for c in labels[0::3]:  # eroded by one voxel
        m = ref == c
        pred[m & ~ndi.binary_erosion(m)] = 0
    for c in labels[1::3]:  # grown by one voxel into background
        pred[ndi.binary_dilation(ref == c) & (pred == 0)] = c
    for c in labels[2::3]:  # shifted by one voxel (no wrap-around)
        m = np.zeros_like(pred, bool)
        m[1:] = (ref == c)[:-1]
        pred[(pred == c) & ~m] = 0
        pred[m & (pred == 0)] = c
    pred[ref == labels[-1]] = 0  # the last organ missed where the reference has it (a shifted sliver may remain)
    return pred


def upsample(arr: np.ndarray, shape) -> np.ndarray:
    idx = [np.minimum((np.arange(n) * s / n).astype(int), s - 1) for n, s in zip(shape, arr.shape)]
    return np.ascontiguousarray(arr[np.ix_(*idx)])


def _timed(fn):
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _timed.cpu = time.process_time() - cpu  # CPU seconds of all threads: less sensitive to a shared machine
    return out, time.perf_counter() - t


def pooled_assd(s) -> float:
    """surface-distance's distances pooled over both directions, area-weighted: the ASSD medseg and MONAI report."""
    a_gt, a_pr = s["surfel_areas_gt"], s["surfel_areas_pred"]
    return float((np.sum(s["distances_gt_to_pred"] * a_gt) + np.sum(s["distances_pred_to_gt"] * a_pr))
                 / (np.sum(a_gt) + np.sum(a_pr)))


def monai_overlap(pred, ref, labels):
    """MONAI Dice and IoU of each label (binary one-channel tensors: the memory-bounded way)."""
    import torch
    from monai.metrics import DiceMetric, MeanIoU

    dice_m = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    iou_m = MeanIoU(include_background=True, reduction="none", ignore_empty=False)
    out = {}
    for c in labels:
        p = torch.from_numpy(pred == c)[None, None].float()
        r = torch.from_numpy(ref == c)[None, None].float()
        out[c] = (float(dice_m(p, r)[0, 0]), float(iou_m(p, r)[0, 0]))
    return out


def surface_distance_metrics(pred, ref, labels, spacing, tol):
    import surface_distance as sd

    out = {}
    for c in labels:
        p, r = pred == c, ref == c
        if not (p.any() and r.any()):
            continue
        s = sd.compute_surface_distances(r, p, spacing)
        out[c] = {"hd95": sd.compute_robust_hausdorff(s, 95), "hd": sd.compute_robust_hausdorff(s, 100),
                  "assd": pooled_assd(s),
                  "nsd": sd.compute_surface_dice_at_tolerance(s, tol)}
    return out


def folder_benchmark(n_cases: int, tol: float) -> dict:
    """Whole-folder evaluation on real hippocampus labels vs MONAI + surface-distance case by case."""
    import tempfile

    import nibabel as nib
    import torch
    from monai.metrics import DiceMetric, MeanIoU

    from medseg.evaluate.folder import evaluate_folder

    labels_dir = DATA / "msd_hippocampus" / "labelsTr"
    files = sorted(labels_dir.glob("*.nii.gz"))[: n_cases or None]
    if not files:
        sys.exit(f"real data not available: {labels_dir} is missing")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d in ("pred", "ref", "out"):
            (tmp / d).mkdir()
        for i, f in enumerate(files):
            img = nib.load(str(f))
            a = np.asanyarray(img.dataobj).astype(np.uint8)
            b = a.copy()
            if i % 2 == 0:  # anterior eroded
                b[(a == 1) & ~ndi.binary_erosion(a == 1)] = 0
            else:  # shifted by one voxel along one axis
                b = np.roll(a, 1, axis=i % 3)
            nib.save(nib.Nifti1Image(a, img.affine, img.header), str(tmp / "ref" / f.name))
            nib.save(nib.Nifti1Image(b, img.affine, img.header), str(tmp / "pred" / f.name))
        rep, t_ours = _timed(lambda: evaluate_folder(tmp / "pred", tmp / "ref", tmp / "out", labels=[1, 2],
                                                     nsd_tolerance=tol, progress=False))
        cpu_ours = _timed.cpu

        def peers():
            dice_m = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
            iou_m = MeanIoU(include_background=True, reduction="none", ignore_empty=False)
            out = {}
            for f in files:
                ri, pi = nib.load(str(tmp / "ref" / f.name)), nib.load(str(tmp / "pred" / f.name))
                r, p = np.asanyarray(ri.dataobj), np.asanyarray(pi.dataobj)
                sp = tuple(float(z) for z in ri.header.get_zooms()[:3])
                oh = [torch.from_numpy(np.stack([x == 1, x == 2])[None].astype(np.float32)) for x in (p, r)]
                dice, iou = dice_m(*oh)[0].numpy(), iou_m(*oh)[0].numpy()
                out[f.name] = {"dice": dice, "iou": iou,
                               "surface": surface_distance_metrics(p, r, [1, 2], sp, tol)}
            return out

        peer, t_peer = _timed(peers)
        cpu_peer = _timed.cpu
    d_dice = max(abs(c["classes"][n]["dice"] - peer[c["case"] + ".nii.gz"]["dice"][i])
                 for c in rep["per_case"] for i, n in enumerate(("label_1", "label_2")))
    d_hd95 = max(abs(c["classes"][f"label_{k}"]["hd95"] - peer[c["case"] + ".nii.gz"]["surface"][k]["hd95"])
                 for c in rep["per_case"] for k in (1, 2) if k in peer[c["case"] + ".nii.gz"]["surface"])
    res = {"cases": len(files), "seconds": {"medseg_evaluate_folder": t_ours, "monai_plus_surface_distance": t_peer},
           "cpu_seconds": {"medseg_evaluate_folder": cpu_ours, "monai_plus_surface_distance": cpu_peer},
           "speedup": t_peer / t_ours, "cpu_speedup": cpu_peer / cpu_ours,
           "max_abs_diff": {"dice_vs_monai": float(d_dice), "hd95_vs_surface_distance_mm": float(d_hd95)}}
    print(json.dumps(res, indent=1))
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    ap.add_argument("--labels", type=int, default=0, help="evaluate only the first N labels (0: all)")
    ap.add_argument("--tolerance", type=float, default=2.0)
    ap.add_argument("--monai-labels", type=int, default=8,
                    help="run MONAI on this many labels spread over all (its cost per label does not depend on "
                         "the organ: full-volume passes) and scale its time to all labels; 0: all labels")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--folder", action="store_true", help="time a folder evaluation of the hippocampus labels")
    ap.add_argument("--cases", type=int, default=0, help="--folder: only the first N cases (0: all 217)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.folder:
        import monai.metrics  # noqa: F401
        import surface_distance  # noqa: F401

        res = folder_benchmark(args.cases, args.tolerance)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        return res
    import nibabel as nib
    import monai.metrics  # noqa: F401  (imports outside the timed regions)
    import surface_distance  # noqa: F401

    from medseg.evaluate.metrics import evaluate_case
    from medseg.evaluate.overlap import confusion_matrix, overlap_from_confusion

    src = DATA / "totalseg_example" / "example_seg.nii.gz"
    if not src.exists():
        sys.exit(f"real data not available: {src} is missing")
    img = nib.load(str(src))
    ref0 = np.asanyarray(img.dataobj).astype(np.uint8)
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    ref = upsample(ref0, args.shape)
    pred = upsample(perturb(ref0), args.shape)
    spacing = tuple(float(z) for z in zooms * np.asarray(ref0.shape) / np.asarray(args.shape))
    labels = [int(v) for v in np.unique(ref0) if v]
    if args.labels:
        labels = labels[: args.labels]
    print(f"volume {ref.shape} ({ref.size / 1e6:.1f} M voxels), spacing {tuple(round(s, 3) for s in spacing)} mm, "
          f"{len(labels)} labels", flush=True)

    def ours_overlap():
        cm, vals = confusion_matrix(ref, pred, labels=labels)
        return cm, vals, overlap_from_confusion(cm)

    cpu = {}
    (cm, vals, ov), t_ov = _timed(ours_overlap)
    cpu["medseg_overlap"] = _timed.cpu
    print(f"medseg overlap (confusion matrix): {t_ov:.2f} s", flush=True)
    m_labels = labels if not args.monai_labels or args.monai_labels >= len(labels) else \
        [labels[i] for i in np.linspace(0, len(labels) - 1, args.monai_labels).round().astype(int)]
    mon, t_mon_meas = _timed(lambda: monai_overlap(pred, ref, m_labels))
    scale = len(labels) / len(m_labels)
    t_mon = t_mon_meas * scale
    cpu["monai_dice_iou"] = _timed.cpu * scale
    print(f"MONAI DiceMetric+MeanIoU, label by label: {t_mon_meas:.2f} s for {len(m_labels)} labels "
          f"-> {t_mon:.2f} s for {len(labels)}", flush=True)
    row = {int(v): i for i, v in enumerate(vals)}
    d_dice = max(abs(ov["dice"][row[c]] - mon[c][0]) for c in m_labels)
    d_iou = max(abs(ov["iou"][row[c]] - mon[c][1]) for c in m_labels)

    full, t_full = _timed(lambda: evaluate_case(pred, ref, labels=labels, spacing=spacing,
                                                nsd_tolerance=args.tolerance))
    cpu["medseg_report"] = _timed.cpu
    print(f"medseg whole report (overlap, volumes, HD95, HD, ASSD, NSD): {t_full:.2f} s", flush=True)
    diag = float(np.linalg.norm(spacing))
    sdm, t_sd = _timed(lambda: surface_distance_metrics(pred, ref, labels, spacing, args.tolerance))
    cpu["surface_distance"] = _timed.cpu
    print(f"surface-distance HD95/HD/ASSD/NSD, label by label: {t_sd:.2f} s", flush=True)
    dist_diff = {k: max(abs(full["classes"][f"label_{c}"][k] - m[k]) for c, m in sdm.items())
                 for k in ("hd95", "hd", "assd")}
    nsd_diff = max(abs(full["classes"][f"label_{c}"]["nsd"] - m["nsd"]) for c, m in sdm.items())
    # NSD: surfels vs voxels; surface-distance's value at tau must lie between medseg's at tau -/+ one voxel diagonal
    from medseg.evaluate.surface import surface_metrics

    lo = surface_metrics(ref, pred, list(sdm), spacing, max(args.tolerance - diag, 0.0))
    hi = surface_metrics(ref, pred, list(sdm), spacing, args.tolerance + diag)
    nsd_bracketed = all(lo[c]["nsd"] - 1e-9 <= m["nsd"] <= hi[c]["nsd"] + 1e-9 for c, m in sdm.items())
    res = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs (shared), Python {platform.python_version()}",
        "shape": list(ref.shape), "n_labels": len(labels), "spacing_mm": spacing,
        "seconds": {"medseg_overlap": t_ov, "monai_dice_iou": t_mon, "medseg_report": t_full,
                    "surface_distance": t_sd},
        "cpu_seconds": cpu, "monai_labels_measured": len(m_labels), "monai_seconds_measured": t_mon_meas,
        "speedup_overlap_vs_monai": t_mon / t_ov,
        "speedup_report_vs_monai_plus_surface_distance": (t_mon + t_sd) / t_full,
        "cpu_speedup_overlap_vs_monai": cpu["monai_dice_iou"] / cpu["medseg_overlap"],
        "cpu_speedup_report": (cpu["monai_dice_iou"] + cpu["surface_distance"]) / cpu["medseg_report"],
        "max_abs_diff": {"dice_vs_monai": d_dice, "iou_vs_monai": d_iou,
                         **{f"{k}_vs_surface_distance_mm": v for k, v in dist_diff.items()},
                         "nsd_vs_surface_distance": nsd_diff},
        "nsd_within_tau_plus_minus_voxel_diagonal": nsd_bracketed,
        "voxel_diagonal_mm": diag,
    }
    print(json.dumps(res, indent=1))
    ok = d_dice <= 1e-6 and d_iou <= 1e-6 and all(v <= diag for v in dist_diff.values()) and nsd_bracketed
    print("numbers equal (Dice/IoU to 1e-6, distances within one voxel diagonal, NSD bracketed):",
          "yes" if ok else "NO")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
