"""The main job's later steps: train -> predict -> evaluate, DICOM in -> DICOM-SEG out, cell counting.

Registered after the DICOM step of ``medseg.demo``; each step skips (saying why) when its part of the sample data
is absent. Every artefact is written under the demo's output folder and printed with its path.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from medseg.demo import STEPS, DemoContext, step


def _link_folder(folder: Path, files: list[Path]) -> Path:
    """A folder of symbolic links to ``files`` (the sample data is read in place, never copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = folder / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    return folder


def hippocampus(ctx: DemoContext) -> None:
    """Plan from the dataset fingerprint, train for a few minutes, predict validation cases, evaluate."""
    import json

    from medseg.evaluate.folder import evaluate_folder
    from medseg.infer.predict import predict_image
    from medseg.io import read_image, write_image
    from medseg.plan.planner import make_plan
    from medseg.train.artifact import load_model
    from medseg.train.trainer import train

    ds = ctx.data / "msd_hippocampus"
    if not (ds / "dataset.json").is_file():
        ctx.say(f"  skipped: {ds} is missing")
        return
    run = ctx.out / "hippocampus_run"
    if (run / "model.pt").is_file():
        ctx.say(f"  a trained model is already in {run}: reusing it (delete the folder to train again)")
    else:
        if run.exists():
            shutil.rmtree(run)
        plan = make_plan(ds, device="cpu", minutes=ctx.train_minutes)
        plan.val_every = 10**6  # validate once, at the end
        ctx.say(f"  plan: {plan.spatial_dims}D, patch {plan.patch_size}, batch {plan.batch_size}, "
                f"filters {plan.base_filters}..{plan.max_filters}, target spacing {plan.target_spacing}")
        ctx.say(f"  training for {ctx.train_minutes:g} min on the CPU (a demo budget: usable, not converged; "
                "benchmarks/hippocampus.py is the full run)")
        res = train(plan, run, max_minutes=ctx.train_minutes, progress=False)
        ctx.say(f"  {res.iterations} iterations in {res.elapsed_s:.0f} s; validation Dice {res.val_dice}")
    artifact = load_model(run)
    net = artifact.build()
    splits = json.loads((run / "splits.json").read_text())
    fold = splits[artifact.plan.fold] if isinstance(splits, list) else splits
    val_ids = fold["val"][:10]
    pred_dir = ctx.out / "hippocampus_pred"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for cid in val_ids:
        img = read_image(ds / "imagesTr" / f"{cid}.nii.gz")
        lab, _ = predict_image(net, artifact.plan, img)
        write_image(lab, pred_dir / f"{cid}.nii.gz")
    refs = _link_folder(ctx.out / "hippocampus_ref", [ds / "labelsTr" / f"{c}.nii.gz" for c in val_ids])
    report_dir = ctx.out / "hippocampus_report"
    report = evaluate_folder(pred_dir, refs, out_dir=report_dir, labels=ds / "dataset.json", progress=False)
    for name, m in report["mean"].items():
        ctx.say(f"  {name:10s} Dice {m['dice']:.3f}  HD95 {m['hd95']:.2f} mm  ({len(val_ids)} validation cases)")
    ctx.results["hippocampus_model"] = run
    ctx.say(f"  model:       {run / 'model.pt'}")
    ctx.say(f"  predictions: {pred_dir}")
    ctx.say(f"  report:      {report_dir / 'report.html'} (and metrics.json, metrics.csv, report.md)")


def _dciodvfy_errors(path: Path) -> int | None:
    if not shutil.which("dciodvfy"):
        return None
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return sum(line.startswith("Error") for line in (out.stdout + out.stderr).splitlines())


def dicom_seg(ctx: DemoContext) -> None:
    """Predict the hippocampus crop stored as DICOM, export DICOM-SEG and RTSTRUCT, validate, read back."""
    from medseg.export import export_segmentation
    from medseg.export.importers import import_segmentation
    from medseg.infer.predict import predict_image
    from medseg.io import read_image
    from medseg.train.artifact import load_model

    series = ctx.data / "dicom" / "mr_study" / "13_HCropVolume"
    run = ctx.results.get("hippocampus_model")
    if not series.is_dir() or run is None:
        ctx.say("  skipped: needs dicom/mr_study/13_HCropVolume and the model of the previous step")
        return
    artifact = load_model(run)
    img = read_image(series)
    lab, _ = predict_image(artifact.build(), artifact.plan, img)
    ctx.say(f"  prediction on the DICOM grid {img.shape} ({img.orientation}): "
            f"{int((lab.array > 0).sum())} hippocampus voxels")
    if not (lab.array > 0).any():
        ctx.say("  the short-trained model found no hippocampus here: nothing to export")
        return
    out = ctx.out / "dicom_out"
    out.mkdir(parents=True, exist_ok=True)
    for fmt, name in (("dicom-seg", "hippocampus_seg.dcm"), ("rtstruct", "hippocampus_rtstruct.dcm")):
        path = export_segmentation(lab, series, fmt, out / name, labels=artifact.labels,
                                   model_name="medseg demo hippocampus")
        errors = _dciodvfy_errors(path)
        back = import_segmentation(path, reference=series)
        a, b = back.array > 0, lab.array > 0
        dice = 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)
        check = "dciodvfy not installed" if errors is None else f"dciodvfy errors: {errors}"
        ctx.say(f"  {fmt:9s} {path}  ({check}; read back Dice {dice:.3f})")


def cells(ctx: DemoContext) -> None:
    """Count nuclei on real fluorescence images (classical watershed) and score against the manual masks."""
    from medseg.cells.count import count_cells
    from medseg.cells.evaluate import evaluate_cells

    root = ctx.data / "dsb2018_fluo"
    if not (root / "images").is_dir():
        ctx.say(f"  skipped: {root} is missing")
        return
    images = sorted((root / "images").glob("*.png"))[:12]
    inputs = _link_folder(ctx.out / "cells_input", images)
    out = ctx.out / "cells"
    t0 = time.perf_counter()
    counts = count_cells(inputs, out, classical=True, progress=False)
    ctx.say(f"  counted {sum(r['count'] for r in counts)} nuclei in {len(counts)} images "
            f"in {time.perf_counter() - t0:.1f} s (classical mode: threshold + distance-transform watershed)")
    refs = _link_folder(ctx.out / "cells_ref", [root / "labels" / f"{p.stem}.tif" for p in images])
    res = evaluate_cells(out, refs, out_dir=out / "evaluation")
    mean = res["mean"]
    ctx.say(f"  against the manual masks: AP@0.5 {mean['ap@0.5']:.3f} (mean over images), "
            f"mean absolute count error {100 * mean['abs_relative_count_error']:.1f} %")
    ctx.say(f"  counts:   {out / 'counts.csv'}")
    ctx.say(f"  per image: {out}/<id>_labels.tif, <id>_overlay.png, <id>_cells.csv")


def register_all() -> None:
    """Append the steps once (idempotent)."""
    if any(fn is hippocampus for _, fn in STEPS):
        return
    step("Hippocampus MR: plan, train a 3D U-Net briefly, predict validation cases, evaluate (HTML report)")(
        hippocampus)
    step("DICOM in -> DICOM-SEG and RTSTRUCT out: predict a DICOM series, export, validate, read back")(dicom_seg)
    step("Cell counting: nuclei in real fluorescence images -> counts.csv, overlays, AP vs manual masks")(cells)
