"""Cell counting speed: a 2048x2048 image and a 64x256x256 stack, learned and classical, and the watershed
step against a plain scikit-image recipe on the same foreground, in the same process.

    python benchmarks/cells_speed.py [--data ../shared/data] [--run RUN] [--repeats 3]

Inputs are real: the 2D image is a mosaic of 64 DSB2018 images (256x256 each), the stack tiles the
``nuclei_stardist`` sample to 64x256x256. ``--run`` times the trained 2D model (sliding window + watershed);
the 3D "learned" time uses an untrained 3D network of the same builder (timing only: no 3D model is trained).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(fn, repeats):
    ts, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def skimage_recipe(mask, min_distance):
    """The plain recipe: EDT, peak_local_max, label the peaks, watershed on -EDT."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask)
    coords = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(mask)[0])
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1)
    return watershed(-dist, markers, mask=mask)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    ap.add_argument("--run", default=None, help="trained 2D cell model run folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import tifffile
    import torch

    from medseg.cells.count import CellModel, ClassicalSegmenter
    from medseg.cells.data import load_image, percentile_normalize
    from medseg.cells.train import CellTrainConfig, build_cell_network
    from medseg.cpu import free_cores
    from medseg.postprocess.classical import threshold_mask
    from medseg.postprocess.watershed import watershed_instances

    threads = args.threads or free_cores()
    torch.set_num_threads(threads)
    data = Path(args.data)
    tiles = [load_image(p).array for p in sorted((data / "dsb2018_fluo/images").glob("*.png"))]
    tiles = [t for t in tiles if t.shape == (256, 256)][:64]
    img2 = np.block([[tiles[r * 8 + c] for c in range(8)] for r in range(8)]).astype(np.float32)
    s3 = tifffile.imread(data / "nuclei_stardist/img3d.tif").astype(np.float32)
    img3 = np.tile(s3, (3, 5, 5))[:64, :256, :256]
    rows = []
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), torch threads {threads}",
            "load_avg_start": os.getloadavg()[0]}

    classical = ClassicalSegmenter()
    for name, img in (("2D 2048x2048", img2), ("3D 64x256x256", img3)):
        t, lab = best_of(lambda: classical.segment(img), args.repeats)
        rows.append({"case": name, "step": "classical count (threshold + watershed)", "seconds": t,
                     "objects": int(lab.max())})
        # the watershed step alone, on the same foreground: medseg vs the plain scikit-image recipe
        mask = threshold_mask(percentile_normalize(img), "otsu")
        tm, a = best_of(lambda: watershed_instances(mask.astype(float), min_distance=5.0), args.repeats)
        ts, b = best_of(lambda: skimage_recipe(mask, 5), args.repeats)
        rows.append({"case": name, "step": "watershed: medseg watershed_instances", "seconds": tm,
                     "objects": int(a.max())})
        rows.append({"case": name, "step": "watershed: skimage EDT+peak_local_max+watershed", "seconds": ts,
                     "objects": int(b.max()), "ratio_vs_medseg": ts / tm})
    if args.run:
        model = CellModel.load(args.run)
        # each repeat predicts again: the model keeps the last image's maps for a second call on the same image
        t, lab = best_of(lambda: (model.forget(), model.segment(img2))[1], args.repeats)
        rows.append({"case": "2D 2048x2048", "step": "learned count (U-Net sliding window + watershed)",
                     "seconds": t, "objects": int(lab.max())})
    cfg3 = CellTrainConfig(spatial_dims=3, patch_size=(32, 128, 128), base_filters=16)
    net3 = build_cell_network(cfg3).eval()
    model3 = CellModel(net3, cfg3, {})
    t, lab = best_of(lambda: model3.segment(img3), 1)
    rows.append({"case": "3D 64x256x256", "step": "learned count, untrained 3D net (timing only)", "seconds": t,
                 "objects": int(lab.max())})

    print(f"\n{info['machine']}; load average at start {info['load_avg_start']:.1f}")
    print("| input | step | seconds (best of runs) | objects | skimage / medseg |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_vs_medseg']:.2f}" if "ratio_vs_medseg" in r else ""
        print(f"| {r['case']} | {r['step']} | {r['seconds']:.2f} | {r['objects']} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
