"""The plain MONAI tutorial recipe on MSD hippocampus, under the same budget, split and scoring as medseg's.

The issue quotes this recipe at 0.884 on an independent held-out set (25 minutes on this CPU) and medseg's recipe is
measured on fold 0 of the seed-0 5-fold split, a different set; this runs the peer on medseg's fold so that the two
can be compared on the same cases. The recipe, as the issue describes it and as MONAI's 3D segmentation tutorials
write it: ``monai.networks.nets.UNet`` (channels 16, 32, 64, 128, 256, strides 2, two residual units, batch norm),
``DiceCELoss(to_onehot_y=True, softmax=True)``, Adam with learning rate 1e-3 (constant), z-score intensity, random
32³ crops centred on foreground or background with equal probability (``RandCropByPosNegLabeld``, 4 per image, 2
images per batch), fp32, data cached in memory, no other augmentation; prediction with MONAI's
``sliding_window_inference`` (32³ windows, overlap 0.25, 4 windows per batch). Scoring: per-case Dice per class on
the fold's validation cases in their own geometry, averaged over cases (medseg's ``confusion_dice``, as in
``benchmarks/hippocampus.py``). The whole wall time (caching the data and the final validation included) counts
against ``--minutes``.

    python benchmarks/hippocampus_peer.py --minutes 30 --data ../shared/data/msd_hippocampus --out /tmp/hippo_peer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_split(data: Path, out: Path, fold: int, split_file: Path | None) -> dict[str, list[str]]:
    """Fold ``fold`` of ``split_file``, or of medseg's seed-0 5-fold split of ``data`` (written to ``out``)."""
    from medseg.train.dataset import open_dataset
    from medseg.train.splits import make_splits

    if split_file is not None:
        splits = json.loads(split_file.read_text())
    else:
        splits = make_splits(sorted(c.id for c in open_dataset(data).cases if c.label is not None), 5, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    return splits[fold]


def build(seed: int = 0):
    import torch
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                num_res_units=2, norm=Norm.BATCH)


def transforms(train: bool):
    from monai import transforms as T

    keys = ["image", "label"]
    base = [T.LoadImaged(keys), T.EnsureChannelFirstd(keys), T.NormalizeIntensityd("image"),
            T.SpatialPadd(keys, (32, 32, 32))]
    if train:
        base.append(T.RandCropByPosNegLabeld(keys, "label", (32, 32, 32), pos=1, neg=1, num_samples=4))
    return T.Compose(base)


def score(net, cases, device="cpu") -> dict:
    """Mean per-case Dice per class of ``net`` on ``cases`` = [(image path, label path)], in native geometry."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.io.atomic import case_name

    net.eval()
    per = {1: [], 2: []}
    for img_path, lab_path in cases:
        img = np.asarray(nib.load(str(img_path)).dataobj, np.float32)
        lab = np.asarray(nib.load(str(lab_path)).dataobj).astype(np.int64)
        x = torch.from_numpy((img - img.mean()) / max(float(img.std()), 1e-8))[None, None]
        pad = [max(32 - s, 0) for s in img.shape]
        lo = [p // 2 for p in pad]
        if any(pad):  # the training transforms padded to 32³ too; predict padded, then crop back
            x = torch.nn.functional.pad(x, [v for p, l in zip(reversed(pad), reversed(lo)) for v in (l, p - l)])
        with torch.no_grad():
            logits = sliding_window_inference(x, (32, 32, 32), 4, net, overlap=0.25)[0]
        pred = logits.argmax(0).numpy()[tuple(slice(l, l + s) for l, s in zip(lo, img.shape))]
        add_case_dice(per, pred, lab, case_name(img_path))
    return dice_summary(per, len(cases))


def add_case_dice(per: dict, pred: np.ndarray, ref: np.ndarray, case: str) -> None:
    """Append one case's Dice of anterior (1) and posterior (2) to ``per`` (a class absent from both: skipped),
    and its mean over those classes to ``per["per_case"]`` (as ``benchmarks/hippocampus.py`` keeps it, for
    ``benchmarks/paired.py``)."""
    from medseg.train.losses import confusion_dice

    dice = {k: d for k, d in confusion_dice(pred, ref, 3).items() if k in (1, 2) and not np.isnan(d)}
    for k, d in dice.items():
        per[k].append(d)
    per.setdefault("per_case", {})[case] = round(float(np.mean(list(dice.values()))), 5) if dice else float("nan")


def dice_summary(per: dict, cases: int) -> dict:
    """Mean over cases per class, the mean of the two classes, and each case's mean."""
    res = {"anterior": float(np.mean(per[1])), "posterior": float(np.mean(per[2]))}
    res["mean"] = (res["anterior"] + res["posterior"]) / 2
    res["cases"] = cases
    res["per_case"] = per.get("per_case", {})
    return res


def peer_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The options every hippocampus peer benchmark takes (this one and ``hippocampus_nnunet.py``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/msd_hippocampus")
    ap.add_argument("--out", type=Path, default=Path(out))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--splits", type=Path, default=None, help="splits.json of a medseg run (default: medseg's seed-0 "
                                                              "5-fold split, which is what such runs write)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-cases", type=int, default=None, help="use only this many training/validation cases (smoke)")
    ap.add_argument("--max-iterations", type=int, default=None, help="stop after this many iterations (smoke)")
    return ap


def main(argv=None) -> int:
    args = peer_arguments(__doc__.splitlines()[0], "runs/hippocampus_peer").parse_args(argv)
    t_start = time.monotonic()
    budget = args.minutes * 60
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    torch.set_num_threads(args.threads)
    set_determinism(args.seed)
    if not (args.data / "imagesTr").is_dir():
        sys.exit(f"real data not available: {args.data}/imagesTr is missing")
    split = load_split(args.data, args.out, args.fold, args.splits)
    pair = lambda c: (args.data / "imagesTr" / f"{c}.nii.gz", args.data / "labelsTr" / f"{c}.nii.gz")  # noqa: E731
    train_ids, val_ids = split["train"][: args.max_cases], split["val"][: args.max_cases]
    files = [{"image": str(pair(c)[0]), "label": str(pair(c)[1])} for c in train_ids]
    ds = CacheDataset(files, transforms(True), cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=0)
    net = build(args.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    val_cases = [pair(c) for c in val_ids]
    # reserve time for the final validation: one case timed now, scaled (as medseg's trainer does)
    t0 = time.monotonic()
    score(build(0), val_cases[:1])
    reserve = (time.monotonic() - t0) * len(val_cases) * 1.25 + 5
    net.train()
    its, losses, t_train = 0, [], time.monotonic()
    done = False
    while not done:
        for batch in loader:
            if time.monotonic() - t_start > budget - reserve or its == args.max_iterations:
                done = True
                break
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            its += 1
            losses.append(loss.item())
    train_s = time.monotonic() - t_train
    res = score(net, val_cases)
    out = {"recipe": "MONAI tutorial (UNet 16..256, DiceCE, Adam 1e-3, 32^3 pos/neg crops, fp32)",
           "minutes_budget": args.minutes, "wall_min": round((time.monotonic() - t_start) / 60, 2),
           "iterations": its, "s_per_iteration": round(train_s / max(its, 1), 3),
           "train_loss_last100": round(float(np.mean(losses[-100:])), 4) if losses else None,
           "fold": args.fold, "val_dice": res, "threads": args.threads, "seed": args.seed,
           "load_avg_at_end": list(os.getloadavg())}
    (args.out / "benchmark.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
