"""A learned 3D cell model on the one annotated stack, scored on the half of it that it did not see.

    python benchmarks/cells3d.py --minutes 8 --data ../shared/data/nuclei_stardist --out /tmp/cells3d

``nuclei_stardist`` holds a single annotated 3D stack (``img3d.tif`` / ``mask3d.tif``), so a 3D model can only be
trained and scored on it by cutting it: the stack is halved along its last axis, a model is trained on one half for
MINUTES (with the settings ``medseg cells train`` chooses for it, or those of ``--config``) and scored on the other,
then the halves swap (two folds). The classical mode and the connected components of its foreground are scored on
the same held-out halves. The file has no voxel size; the nuclei are about half as tall as wide in voxels, so both
halves are written with the z step ``--z-spacing`` (default 2) times the pixel size, which the model's targets and
the classical mode then use.

With one training image, the watershed thresholds are chosen on the last fifth of it, held out of training
(``medseg.cells.splits.tuning_blocks``). Nuclei cut by the halving appear as partial objects in both the reference
and the predictions. Prints a Markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg.cells.evaluate import evaluate_pair, summarize  # noqa: E402

METHODS = ("learned", "classical", "components")


def halves(n: int) -> list[slice]:
    """The two halves of an axis of length ``n``: the held-out part of fold 0, then of fold 1.

    Examples
    --------
    >>> halves(57)
    [slice(0, 28, None), slice(28, 57, None)]
    """
    return [slice(0, n // 2), slice(n // 2, n)]


def write_case(root: Path, case: str, image: np.ndarray, labels: np.ndarray, spacing) -> None:
    """``images/<case>.tif`` and ``labels/<case>.tif`` in the cells dataset layout, with the voxel size."""
    from medseg.io.image import Image
    from medseg.io.microscopy import write_microscopy

    for sub, arr in (("images", image), ("labels", labels)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        affine = np.diag([*spacing, 1.0])
        write_microscopy(Image(np.ascontiguousarray(arr), affine), root / sub / f"{case}.tif")


def components(classical_labels: np.ndarray) -> np.ndarray:
    """Connected components of the classical mode's foreground: what touching nuclei become without a watershed."""
    from scipy import ndimage as ndi

    return ndi.label(classical_labels > 0)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSEG_DATA", "../shared/data"))
                    / "nuclei_stardist", help="Folder with img3d.tif and mask3d.tif.")
    ap.add_argument("--out", type=Path, required=True, help="Work folder (datasets and runs of both folds).")
    ap.add_argument("--minutes", type=float, default=8.0, help="Training budget of each fold's model.")
    ap.add_argument("--steps", type=int, default=None, help="End each fold's training after this many steps.")
    ap.add_argument("--z-spacing", type=float, default=2.0, help="z step in units of the pixel size.")
    ap.add_argument("--config", default="auto",
                    help="'auto' (default): what `medseg cells train` chooses without a config (a crop fitted to "
                         "the training half); or a cells training YAML such as configs/cells_3d.yaml. The options "
                         "below override it.")
    ap.add_argument("--patch", type=int, nargs=3, default=None, help="Training crop (z y x).")
    ap.add_argument("--base-filters", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--other-z-steps", action="store_true",
                    help="Also score the learned model on the held-out half presented at z step 1 (every slice "
                         "twice) and 4 (every other slice), each with its voxel size.")
    args = ap.parse_args(argv)

    import torch

    from medseg.cells.config import CellTrainConfig, config_for_data
    from medseg.cells.data import read_labels
    from medseg.cells.segmenters import CellModel, ClassicalSegmenter
    from medseg.cells.train import train_cells
    from medseg.io.microscopy import read_microscopy, single_channel

    torch.set_num_threads(args.threads)
    auto = args.config == "auto"
    recipe = None if auto else CellTrainConfig.from_yaml(args.config)
    img_path, lab_path = args.data / "img3d.tif", args.data / "mask3d.tif"
    for p in (img_path, lab_path):
        if not p.is_file():
            print(f"error: {p} not found", file=sys.stderr)
            return 2
    image = single_channel(read_microscopy(img_path), img_path).astype(np.float32)
    labels = read_labels(lab_path)
    spacing = (args.z_spacing, 1.0, 1.0)
    parts = halves(image.shape[-1])
    rows = {m: [] for m in METHODS}
    folds = []
    for fold in args.folds:
        test, train = parts[fold], parts[1 - fold]
        root = args.out / f"fold{fold}"
        data = root / "data"
        write_case(data, "train", image[..., train], labels[..., train].astype(np.uint16), spacing)
        write_case(data, "test", image[..., test], labels[..., test].astype(np.uint16), spacing)
        (data / "split.json").write_text(json.dumps({"train": ["train"], "val": ["test"]}))
        base = config_for_data(data) if auto else recipe
        cfg = base.updated(max_minutes=args.minutes, max_steps=args.steps, seed=args.seed, threads=args.threads,
                           patch_size=tuple(args.patch) if args.patch else None, base_filters=args.base_filters)
        t0 = time.perf_counter()
        run = train_cells(data, root / "run", cfg, progress=False)
        train_s = time.perf_counter() - t0
        steps = json.loads((run / "model.json").read_text()).get("steps")
        x, ref = image[..., test], labels[..., test]
        classical = ClassicalSegmenter().segment(x, spacing=spacing)
        model = CellModel.load(run, device="cpu")
        preds = {"learned": model.segment(x, spacing), "classical": classical, "components": components(classical)}
        for m, pred in preds.items():
            rows[m].append(evaluate_pair(ref, pred))
        if args.other_z_steps:  # the same nuclei imaged at another z step: the model sees them at its own
            # "as stored": the same run without its spacing record, as runs before session 40 predicted
            stored = copy.copy(model)
            stored.meta = {k: v for k, v in model.meta.items() if k != "spacing"}
            for name, xz, rz, sp in (("z step 1 (slices twice)", np.repeat(x, 2, 0), np.repeat(ref, 2, 0),
                                      (args.z_spacing / 2, 1.0, 1.0)),
                                     ("z step 4 (every other slice)", x[::2], ref[::2], (args.z_spacing * 2, 1.0, 1.0))):
                for how, m in (("resampled to the training z step", model), ("as stored", stored)):
                    r = evaluate_pair(rz, m.segment(xz, sp))
                    print(f"learned, fold {fold}, {name}, {how}: {r['n_ref']} nuclei, {r['n_pred']} predicted, "
                          f"AP@0.5 {r['ap@0.5']:.3f}, AP@0.7 {r['ap@0.7']:.3f}")
        folds.append({"fold": fold, "train_x": [train.start, train.stop], "test_x": [test.start, test.stop],
                      "steps": steps, "train_s": round(train_s, 1),
                      **{m: {k: rows[m][-1][k] for k in ("n_ref", "n_pred", "ap@0.5", "ap@0.7", "f1@0.5")}
                         for m in METHODS}})
    summary = {m: summarize(rows[m]) for m in METHODS}
    print(f"{img_path} {tuple(image.shape)}, z spacing {args.z_spacing}; folds {args.folds}, "
          f"{args.minutes} min each, {Path(args.config).name}: patch {list(cfg.patch_size)}, batch {cfg.batch_size}")
    print("| method | fold | steps | reference nuclei | predicted | AP@0.5 | AP@0.7 | F1@0.5 |")
    print("|---|---|---|---|---|---|---|---|")
    for f in folds:
        for m in METHODS:
            r = f[m]
            steps = f["steps"] if m == "learned" else ""
            print(f"| {m} | {f['fold']} | {steps} | {r['n_ref']} | {r['n_pred']} | {r['ap@0.5']:.3f} | "
                  f"{r['ap@0.7']:.3f} | {r['f1@0.5']:.3f} |")
    for m in METHODS:
        p = summary[m]["pooled"]
        print(f"| {m} | pooled | | {sum(r['n_ref'] for r in rows[m])} | {sum(r['n_pred'] for r in rows[m])} | "
              f"{p['ap@0.5']:.3f} | {p['ap@0.7']:.3f} | {p['f1@0.5']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "machine": platform.processor()
                                         or platform.machine(), "load_avg": os.getloadavg(), "folds": folds,
                                         "pooled": {m: summary[m]["pooled"] for m in METHODS}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
