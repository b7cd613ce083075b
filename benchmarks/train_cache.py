"""RAM and speed of training from the in-RAM case cache vs the disk cache (memory maps), on real BraTS cases.

The dataset: the 4 BraTS sample patients (FLAIR + T1c, 240x240x155, their manual labels), converted once with
``medseg.train.brats.convert_brats`` into ``OUT/brats``, then linked under ``N`` case ids in ``OUT/ds_N``
(repeats of the 4 real cases: only 4 are here, and this measures memory and speed, not accuracy). The recipe is
``configs/brats.yaml`` (patch 64^3, batch 2, DynUNet 16..128) without validation. Each variant trains in a child
process for two epochs of ``--iters`` iterations (``medseg.train.trainer.train``); a thread in the child reads
``/proc/self/status`` every 20 ms and keeps the peaks of ``RssAnon`` (memory the process owns: the in-RAM cache,
the network, the batches) and ``RssFile`` (pages of files it maps: the disk cache, which the kernel shares
between processes and drops under memory pressure). Seconds per iteration are the second epoch's; the first
epoch's wall time includes preprocessing (or reading the cache back).

Variants, per N: ``memory`` (every case preprocessed into RAM), ``disk`` (preprocessed and written to
``OUT/cache_N``, then memory-mapped), ``disk-warm`` (the same command again: the cases are read back).

Example::

    python benchmarks/train_cache.py --cases 8 24 --iters 20 --out /tmp/tcache
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))


def make_dataset(out: Path, n: int) -> Path:
    """``OUT/ds_N``: ``n`` cases linking to the converted BraTS patients in turn."""
    from medseg.train.brats import convert_brats

    src = DATA / "brats2015_sample"
    if not src.is_dir():
        sys.exit(f"real data not available: {src} is missing (set MEDSEG_DATA)")
    conv = out / "brats"
    if not (conv / "dataset.json").is_file():
        convert_brats(src, conv)
    patients = sorted({p.name.rsplit("_", 1)[0] for p in (conv / "imagesTr").iterdir()})
    ds = out / f"ds_{n}"
    shutil.rmtree(ds, ignore_errors=True)
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for i in range(n):
        pid = patients[i % len(patients)]
        for ch in (0, 1):
            os.symlink(conv / "imagesTr" / f"{pid}_{ch:04d}.nii.gz", ds / "imagesTr" / f"case{i:03d}_{ch:04d}.nii.gz")
        os.symlink(conv / "labelsTr" / f"{pid}.nii.gz", ds / "labelsTr" / f"case{i:03d}.nii.gz")
    meta = json.loads((conv / "dataset.json").read_text())
    meta["numTraining"] = n
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds


class PeakMemory(threading.Thread):
    """Peaks of RssAnon and RssFile of this process (kB), sampled every ``every`` seconds."""

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peak, self.stopped = every, {"RssAnon": 0, "RssFile": 0}, False

    def run(self):
        while not self.stopped:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":")[0]
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(line.split()[1]))
            time.sleep(self.every)


def run_child(cmd: list[str], threads: int, what: str) -> dict:
    """Run a benchmark's child process (its own peak memory) with ``threads`` threads; returns the JSON object it
    prints last, or exits with its error."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{what} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def cache_gb(folder: Path) -> float:
    """GB of ``.npy`` files in a disk cache folder (0 when there is none)."""
    return round(sum(f.stat().st_size for f in folder.glob("*.npy")) / 2**30, 3) if folder.exists() else 0


def append_row(path: Path | None, row: dict) -> None:
    """Append ``row`` and the load average as one JSON line to ``path`` (if given)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**row, "load_avg": os.getloadavg()}) + "\n")


def add_common_options(ap: argparse.ArgumentParser, out: Path) -> None:
    """The options of a cache benchmark's parent (threads, output folder, JSON) and of its children (hidden)."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--json", type=Path, help="also append the rows, one JSON object per line, to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)


def child(args) -> None:
    import torch

    from medseg.plan.plan import Plan
    from medseg.train.trainer import train

    torch.set_num_threads(args.threads)
    plan = Plan.from_yaml(REPO / "configs" / "brats.yaml")
    plan.dataset, plan.max_minutes, plan.iterations_per_epoch = str(args.dataset), None, args.iters
    plan.cache, plan.cache_dir, plan.num_folds = args.mode, str(args.cache_dir), 4
    mon = PeakMemory()
    mon.start()
    t0 = time.monotonic()
    train(plan, args.run, max_epochs=2, progress=False, validation=False, num_threads=args.threads)
    wall = time.monotonic() - t0
    mon.stopped = True
    mon.join()
    with open(args.run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    e1, e2 = float(rows[0]["elapsed_s"]), float(rows[1]["elapsed_s"])
    print(json.dumps({"wall_s": round(wall, 1), "first_epoch_s": e1, "s_per_it": round((e2 - e1) / args.iters, 3),
                      "peak_anon_gb": round(mon.peak["RssAnon"] / 2**20, 3),
                      "peak_file_gb": round(mon.peak["RssFile"] / 2**20, 3)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[8, 24])
    ap.add_argument("--iters", type=int, default=20)
    add_common_options(ap, Path("/tmp/train_cache"))
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    print("| cases | preprocessed GB | variant | first epoch s (incl. caching) | s/it | peak RssAnon GB "
          "| peak RssFile GB |")
    print("|---|---|---|---|---|---|---|")
    for n in args.cases:
        ds = make_dataset(args.out, n)
        cache_dir = args.out / f"cache_{n}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        for variant in ("memory", "disk", "disk-warm"):
            run = args.out / f"run_{n}_{variant}"
            shutil.rmtree(run, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", "--mode", variant.split("-")[0], "--dataset", str(ds),
                   "--run", str(run), "--cache-dir", str(cache_dir), "--iters", str(args.iters),
                   "--threads", str(args.threads)]
            row = {"cases": n, "variant": variant, **run_child(cmd, args.threads, f"{variant} with {n} cases"),
                   "cache_gb": cache_gb(cache_dir)}
            print(f"| {n} | {row['cache_gb'] or '-'} | {variant} | {row['first_epoch_s']} | {row['s_per_it']} | "
                  f"{row['peak_anon_gb']} | {row['peak_file_gb']} |", flush=True)
            append_row(args.json, {**row, "iters": args.iters, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
