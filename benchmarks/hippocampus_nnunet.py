"""nnU-Net v2's own pipeline on MSD hippocampus, under the same budget, split and scoring as medseg's.

The issue quotes nnU-Net's trainer at 0.831 (0.848 with mirroring) on an independent held-out set after 25 minutes on
this CPU; this runs it on medseg's fold so that the numbers compare on the same cases. Stock nnU-Net v2 everywhere
except for the time budget: its fingerprint, its default planner (``ExperimentPlanner``, 3d_fullres), its
preprocessing, ``nnUNetTrainer`` (its network with deep supervision, Dice+CE, SGD with Nesterov momentum 0.99 from
1e-2, its augmentation and foreground oversampling, fp32 as it trains on a CPU) and its validation (sliding window
with Gaussian blending, mirroring TTA, export in native geometry). The learning rate: ``--schedule budget`` (the
default) runs its poly decay over the budget's wall time, as medseg's trainer does, instead of over 1,000 epochs of
250 iterations; ``--schedule stock`` keeps nnU-Net's own (a 30-minute CPU budget is a few hundred iterations, all
in its first epochs, so the rate stays near 1e-2 and never anneals). Planning, preprocessing and training count against
``--minutes``; the final validation runs after it (its time is reported), which favours nnU-Net slightly: medseg's
budget includes its validation. Scoring: per-case Dice per class of the exported label maps against the reference, on
the fold's validation cases, averaged over cases (medseg's ``confusion_dice``, as in ``benchmarks/hippocampus.py``);
``--no-mirroring`` also scores the network without its mirroring TTA.

Needs ``pip install nnunetv2 --no-deps`` and its runtime dependencies (acvl-utils, batchgenerators(v2),
dynamic-network-architectures, connected-components-3d, blosc2, ...); nothing of it is a medseg dependency.

    python benchmarks/hippocampus_nnunet.py --minutes 30 --data ../shared/data/msd_hippocampus \
        --splits RUN/splits.json --out /tmp/hippo_nnunet [--schedule stock] [--no-mirroring]
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASET = "Dataset004_Hippocampus"


def raw_dataset(data: Path, raw: Path, ids: list[str]) -> None:
    """nnU-Net's raw layout for ``ids`` of ``data``: symbolic links (``case_0000.nii.gz``) to the files in place."""
    folder = raw / DATASET
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for c in ids:
        (folder / "imagesTr" / f"{c}_0000.nii.gz").symlink_to((data / "imagesTr" / f"{c}.nii.gz").resolve())
        (folder / "labelsTr" / f"{c}.nii.gz").symlink_to((data / "labelsTr" / f"{c}.nii.gz").resolve())
    meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
            "numTraining": len(ids), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))


def score_folder(pred_dir: Path, data: Path, ids: list[str]) -> dict:
    """Mean per-case Dice per class of the label maps ``pred_dir/<id>.nii.gz`` against ``data/labelsTr``."""
    import nibabel as nib

    from benchmarks.hippocampus_peer import add_case_dice, dice_summary

    per = {1: [], 2: []}
    for c in ids:
        pred_img, ref_img = nib.load(str(pred_dir / f"{c}.nii.gz")), nib.load(str(data / "labelsTr" / f"{c}.nii.gz"))
        if pred_img.shape != ref_img.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-4):
            raise SystemExit(f"{pred_dir / c}.nii.gz: not in the reference's geometry")
        add_case_dice(per, np.asarray(pred_img.dataobj).astype(np.int64),
                      np.asarray(ref_img.dataobj).astype(np.int64), c)
    return dice_summary(per, len(ids))


def validate(trainer, mirror_axes, folder: Path, data: Path, ids: list[str]) -> dict:
    """nnU-Net's own final validation (with or without mirroring), then medseg's scoring of what it exported."""
    trainer.inference_allowed_mirroring_axes = mirror_axes
    t0 = time.monotonic()
    trainer.perform_actual_validation(save_probabilities=False)
    seconds = time.monotonic() - t0
    out = Path(trainer.output_folder) / "validation"
    shutil.rmtree(folder, ignore_errors=True)
    out.rename(folder)
    return {**score_folder(folder, data, ids), "mirror_axes": mirror_axes, "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    from benchmarks.hippocampus_peer import load_split, peer_arguments

    ap = peer_arguments(__doc__.splitlines()[0], "runs/hippocampus_nnunet")
    ap.add_argument("--schedule", choices=("budget", "stock"), default="budget",
                    help="poly decay over the wall-time budget, or nnU-Net's over 1,000 epochs of 250 iterations")
    ap.add_argument("--no-mirroring", action="store_true", help="also score without nnU-Net's mirroring TTA")
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    budget = args.minutes * 60
    if not (args.data / "imagesTr").is_dir():
        sys.exit(f"real data not available: {args.data}/imagesTr is missing")
    out = args.out.resolve()
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[var] = str(out / sub)
    # one augmentation worker beside two torch threads on the 2-core machine; no torch.compile on a CPU
    os.environ.setdefault("nnUNet_n_proc_DA", "1")
    os.environ.setdefault("nnUNet_def_n_proc", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    split = load_split(args.data, out, args.fold, args.splits)
    train_ids, val_ids = split["train"][: args.max_cases], split["val"][: args.max_cases]
    raw_dataset(args.data, out / "raw", sorted(train_ids + val_ids))

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    extract_fingerprints([4], num_processes=args.threads, verbose=False, show_progress_bar=False)
    plan_experiments([4])
    preprocess([4], configurations=("3d_fullres",), num_processes=(args.threads,), show_progress_bar=False)
    pre = out / "preprocessed" / DATASET
    # nnU-Net reads fold k as entry k of this list; only that entry is used, the ones before it are placeholders
    (pre / "splits_final.json").write_text(json.dumps([{"train": train_ids, "val": val_ids}] * (args.fold + 1)))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, "3d_fullres", args.fold, json.loads((pre / "dataset.json").read_text()),
                            device=torch.device("cpu"))
    trainer.on_train_start()
    t_prep = time.monotonic() - t_start
    t_train, its, losses = time.monotonic(), 0, []
    train_budget = budget - (t_train - t_start)
    while its != args.max_iterations:
        frac = (time.monotonic() - t_train) / train_budget
        if frac >= 1:
            break
        if args.schedule == "stock":  # what its on_train_epoch_start sets: per epoch of its iterations
            frac = (its // trainer.num_iterations_per_epoch) / trainer.num_epochs
        for g in trainer.optimizer.param_groups:  # nnU-Net's poly decay
            g["lr"] = trainer.initial_lr * (1 - frac) ** 0.9
        losses.append(float(trainer.train_step(next(trainer.dataloader_train))["loss"]))
        its += 1
    train_s = time.monotonic() - t_train
    trainer.on_train_end()
    res = {"recipe": "nnU-Net v2 nnUNetTrainer, default 3d_fullres plan", "schedule": args.schedule,
           "minutes_budget": args.minutes, "plan_preprocess_s": round(t_prep, 1),
           "budget_wall_min": round((time.monotonic() - t_start) / 60, 2), "iterations": its,
           "s_per_iteration": round(train_s / max(its, 1), 3), "batch_size": trainer.batch_size,
           "patch_size": list(trainer.configuration_manager.patch_size),
           "train_loss_last20": round(float(np.mean(losses[-20:])), 4) if losses else None,
           "fold": args.fold, "threads": args.threads, "seed": args.seed}
    mirror = trainer.inference_allowed_mirroring_axes
    res["val_dice_mirroring"] = validate(trainer, mirror, out / "validation_mirroring", args.data, val_ids)
    if args.no_mirroring:
        res["val_dice_no_mirroring"] = validate(trainer, None, out / "validation_plain", args.data, val_ids)
    res["load_avg_at_end"] = list(os.getloadavg())
    (out / "benchmark.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
