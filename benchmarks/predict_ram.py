"""Peak RAM and wall time of the ``medseg predict`` command on a CT-sized volume, end to end.

Everything the command does counts: reading the NIfTI, normalising, resampling to the plan's grid, the sliding
window, resampling back to the input's grid, post-processing and writing the label map. The input is the real
example CT (``totalseg_example/example_ct.nii.gz``) tiled to ``--shape`` (default 512x512x800), int16 HU, written
as NIfTI with ``--spacing``. The model is a randomly initialised DynUNet from a CT plan (``ct`` normalisation,
``--classes`` classes, ``--patch`` windows) whose target spacing is ``--target-spacing`` (default: the input's,
so no resampling; give a coarser one to include both resamplings). ``--net tiny`` (4..16 filters, default) keeps
the run to minutes on 2 CPU cores and measures the pipeline's RAM; ``--net full`` (32..320) adds one window's
activations (measured separately by ``benchmarks/inference.py``). The command runs in a child process and its
peak RSS is read with ``getrusage`` (the child is the only one this script waits for while it runs).

The peer for the 6 GB goal: MONAI's ``sliding_window_inference`` on the same volume holds float32 logits for all
classes plus a count map at full resolution (``python benchmarks/inference.py ram --variants medseg monai``).

Example::

    python benchmarks/predict_ram.py --classes 3 --out /tmp/pram
    python benchmarks/predict_ram.py --classes 3 --target-spacing 1.5 1.5 1.5 --out /tmp/pram
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))


def make_input(path: Path, shape, spacing) -> None:
    """The real example CT tiled to ``shape``, int16 HU, written as NIfTI with ``spacing``."""
    import nibabel as nib

    src = DATA / "totalseg_example" / "example_ct.nii.gz"
    if not src.exists():
        sys.exit(f"real data not available: {src} is missing (set MEDSEG_DATA)")
    ct = np.asarray(nib.load(str(src)).dataobj, dtype=np.int16)
    reps = [int(np.ceil(s / c)) for s, c in zip(shape, ct.shape)]
    vol = np.tile(ct, reps)[: shape[0], : shape[1], : shape[2]]
    img = nib.Nifti1Image(vol, np.diag([*spacing, 1.0]))
    img.set_data_dtype(np.int16)
    nib.save(img, str(path))


def make_model(path: Path, args) -> None:
    import torch

    from medseg.plan.plan import Normalisation, Plan
    from medseg.train.artifact import build_from_plan, save_model

    small = args.net == "tiny"
    plan = Plan(name="ram-benchmark", labels={k: ("background" if k == 0 else f"class{k}") for k in range(args.classes)},
                normalisation=[Normalisation("ct", (-1000.0, 1000.0), 0.0, 500.0)],
                target_spacing=list(args.target_spacing or args.spacing), patch_size=[args.patch] * 3,
                base_filters=4 if small else 32, max_filters=16 if small else 320, overlap=args.overlap)
    torch.manual_seed(0)
    save_model(path, plan, build_from_plan(plan).state_dict(), note="random weights: RAM benchmark")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 800])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.0])
    ap.add_argument("--target-spacing", type=float, nargs=3, default=None)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--net", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `medseg predict` options")
    ap.add_argument("--out", type=Path, default=None, help="append the result as a JSON line to OUT/results.jsonl")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_input(tmp / "ct.nii.gz", args.shape, args.spacing)
        make_model(tmp / "model.pt", args)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "medseg", "predict", "-m", str(tmp / "model.pt"), "-i", str(tmp / "ct.nii.gz"),
               "-o", str(tmp / "pred"), "--device", "cpu", "--quiet", *args.extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    row = {"shape": args.shape, "spacing": args.spacing, "target_spacing": args.target_spacing or args.spacing,
           "classes": args.classes, "patch": args.patch, "overlap": args.overlap, "net": args.net,
           "threads": args.threads, "extra": args.extra, "rc": proc.returncode, "wall_s": round(wall, 1),
           "peak_rss_gb": round(peak / 2**30, 2), "input_gb_float32": round(np.prod(args.shape) * 4 / 2**30, 2),
           "load_avg": round(os.getloadavg()[0], 1), "commit": _commit()}
    if proc.returncode:
        row["stderr"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
