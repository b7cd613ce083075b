"""The classical cell mode's contrast test (``ClassicalSegmenter.min_snr``): what it removes on real nuclei and on
empty fields.

A global threshold splits any image in two, so an empty field of view (a well without cells, a tile outside the
sample) became hundreds of "nuclei" cut from its noise. This script measures, with the test off (``min_snr=0``) and
at the default (:data:`medseg.cells.segmenters.CLASSICAL_MIN_SNR`):

* every DSB2018 image: objects found, the objects the test removes, how many of those matched an annotated nucleus
  at IoU >= 0.5 (true positives lost), pooled AP@0.5 and the mean absolute count error, and the lowest SNR of a
  classical object;
* synthetic empty fields (Gaussian noise, Poisson counts, a vignetted background with noise): objects found;
* the 3D sample (``nuclei_stardist``): counts and AP@0.5.

    python benchmarks/cells_classical_snr.py --data ../shared/data [--every 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.cells.data import list_images, load_image, read_labels  # noqa: E402
from medseg.cells.segmenters import CLASSICAL_MIN_SNR, ClassicalSegmenter  # noqa: E402
from medseg.cells.evaluate import evaluate_pair  # noqa: E402
from medseg.postprocess.contrast import object_snr  # noqa: E402


def empty_fields(seed: int = 0, size: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    vignette = 100.0 * (1.0 - 0.6 * (xx ** 2 + yy ** 2))
    return {"gaussian noise": 100.0 + 10.0 * rng.standard_normal((size, size)),
            "poisson counts (mean 20)": rng.poisson(20.0, (size, size)).astype(np.float64),
            "vignetted background + noise": vignette + 5.0 * rng.standard_normal((size, size))}


def score(images, snr: float) -> dict:
    seg = ClassicalSegmenter(min_snr=snr)
    tp = pred = ref_n = 0
    errors = []
    for img, ref in images:
        lab = seg.segment(img)
        n_ref, n_pred = len(np.unique(ref[ref > 0])), int(lab.max())
        tp, pred, ref_n = tp + evaluate_pair(ref, lab, thresholds=(0.5,))["tp@0.5"], pred + n_pred, ref_n + n_ref
        errors.append(abs(n_pred - n_ref) / max(n_ref, 1))
    return {"objects": pred, "true_positives": tp, "references": ref_n,
            "pooled_ap@0.5": tp / (pred + ref_n - tp), "mean_abs_count_error": float(np.mean(errors))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--every", type=int, default=1, help="score every k-th DSB2018 image")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    data = Path(args.data)
    t0 = time.perf_counter()
    files = list_images(data / "dsb2018_fluo" / "images")[::args.every]
    images = [(load_image(f).array.astype(np.float64), read_labels(data / "dsb2018_fluo" / "labels" / f"{f.stem}.tif"))
              for f in files]
    off, on = score(images, 0.0), score(images, CLASSICAL_MIN_SNR)
    lowest = min(float(object_snr(img, lab).min()) for img, _ in images
                 if (lab := ClassicalSegmenter(min_snr=0.0).segment(img)).max())
    fields = {name: {"objects_test_off": int(ClassicalSegmenter(min_snr=0.0).segment(img).max()),
                     "objects_default": int(ClassicalSegmenter().segment(img).max())}
              for name, img in empty_fields().items()}
    img3d = load_image(data / "nuclei_stardist" / "img3d.tif").array.astype(np.float64)
    ref3d = read_labels(data / "nuclei_stardist" / "mask3d.tif")
    three_d = {str(s): score([(img3d, ref3d)], s) for s in (0.0, CLASSICAL_MIN_SNR)}
    out = {"min_snr": CLASSICAL_MIN_SNR, "dsb2018_images": len(images), "dsb2018_test_off": off,
           "dsb2018_default": on, "true_positives_lost": off["true_positives"] - on["true_positives"],
           "lowest_snr_of_a_classical_object_on_dsb2018": lowest, "empty_fields": fields, "nuclei_stardist_3d": three_d,
           "seconds": time.perf_counter() - t0}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
