"""RAM and speed of cell training from in-RAM training pairs vs the disk cache (memory maps), on real DSB2018 images.

The dataset: ``--data`` (DSB2018's 428 fluorescence images with their manual masks) linked under ``N`` ids
(``--copies`` repeats of every image: this measures memory and speed, not accuracy). The recipe is the default 2D
one (``CellTrainConfig``), fold 0 of 5, no tuning images. Each variant trains in a child process for ``--steps``
steps (``medseg.cells.train.train_cells``); a thread in the child samples the peaks of ``RssAnon`` (memory the
process owns) and ``RssFile`` (pages of mapped files, among them the disk cache, which the kernel shares and drops
under memory pressure) from ``/proc/self/status`` (:class:`benchmarks.train_cache.PeakMemory`). "prepare s" is the
wall time before the first step (reading the images and computing the targets, or reading the pairs back).

Variants, per N: ``memory`` (every pair in RAM: the peer, the trainer as it was), ``disk`` (pairs computed and
written to ``OUT/cache_N``, then memory-mapped), ``disk-warm`` (the same command again: the pairs are read back).

Example::

    python benchmarks/cells_cache.py --copies 1 3 --steps 100 --out /tmp/ccache
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))

from benchmarks.train_cache import PeakMemory, add_common_options, append_row, cache_gb, run_child  # noqa: E402


def make_dataset(src: Path, out: Path, copies: int) -> Path:
    """``OUT/ds_xC``: every image of ``src`` linked ``copies`` times under new ids."""
    ds = out / f"ds_x{copies}"
    shutil.rmtree(ds, ignore_errors=True)
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    for img in sorted((src / "images").iterdir()):
        for k in range(copies):
            os.symlink(img, ds / "images" / f"{img.stem}_{k}{img.suffix}")
            os.symlink(src / "labels" / f"{img.stem}.tif", ds / "labels" / f"{img.stem}_{k}.tif")
    return ds


def child(args) -> None:
    from medseg.cells.config import CellTrainConfig
    from medseg.cells.train import train_cells

    cfg = CellTrainConfig(fold=0, tune_fraction=0, max_steps=args.steps, max_minutes=60, threads=args.threads,
                          cache=args.mode, cache_dir=str(args.cache_dir))
    mon = PeakMemory()
    mon.start()
    t0 = time.monotonic()
    train_cells(args.dataset, args.run, cfg, progress=False)
    wall = time.monotonic() - t0
    mon.stopped = True
    mon.join()
    meta = json.loads((args.run / "model.json").read_text())
    print(json.dumps({"wall_s": round(wall, 1), "prepare_s": round(wall - meta["train_seconds"], 1),
                      "s_per_step": round(meta["train_seconds"] / meta["steps"], 3),
                      "training_images": len(meta["split"]["train"]),
                      "peak_anon_gb": round(mon.peak["RssAnon"] / 2**20, 3),
                      "peak_file_gb": round(mon.peak["RssFile"] / 2**20, 3)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA / "dsb2018_fluo")
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--steps", type=int, default=100)
    add_common_options(ap, Path("/tmp/cells_cache"))
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if not (args.data / "images").is_dir():
        sys.exit(f"real data not available: {args.data} is missing (set MEDSEG_DATA or --data)")
    args.out.mkdir(parents=True, exist_ok=True)
    print("| images (copies) | training images | on disk GB | cache | prepare s | s/step | peak RssAnon GB "
          "| peak RssFile GB |")
    print("|---|---|---|---|---|---|---|---|")
    for copies in args.copies:
        ds = make_dataset(args.data, args.out, copies)
        cache_dir = args.out / f"cache_x{copies}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        for variant in ("memory", "disk", "disk-warm"):
            run = args.out / f"run_x{copies}_{variant}"
            shutil.rmtree(run, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", "--mode", variant.split("-")[0], "--dataset", str(ds),
                   "--run", str(run), "--cache-dir", str(cache_dir), "--steps", str(args.steps),
                   "--threads", str(args.threads)]
            row = {"copies": copies, "variant": variant,
                   **run_child(cmd, args.threads, f"{variant} with {copies} copies"), "cache_gb": cache_gb(cache_dir)}
            n = len(list((ds / "images").iterdir()))
            print(f"| {n} ({copies}) | {row['training_images']} | {row['cache_gb'] or '-'} | {variant} | "
                  f"{row['prepare_s']} | {row['s_per_step']} | {row['peak_anon_gb']} | {row['peak_file_gb']} |",
                  flush=True)
            append_row(args.json, {**row, "steps": args.steps, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
