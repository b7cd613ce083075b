"""Seconds per training iteration: medseg's hippocampus recipe vs nnU-Net's default 3D network, same process.

    python benchmarks/train_speed.py [--threads 2] [--iters 5]
    python benchmarks/train_speed.py --cells [--iters 20]     # the 2D cell network instead

nnU-Net side: ``dynamic_network_architectures.PlainConvUNet`` with nnU-Net v2's 3d_fullres plan for MSD
Hippocampus (patch 40x56x40, batch 9, 32..256 features, 4 stages, deep supervision) and its Dice+CE loss on every
deep-supervision output, SGD-Nesterov — i.e. the work of one ``nnUNetTrainer.train_step`` without data loading.
medseg side: ``configs/hippocampus.yaml`` (DynUNet 16..128, batch 2, same patch), fp32, bf16 autocast and
channels-last variants, and bf16 with residual blocks (``residual: true``). Both report s/iteration and training
voxels/s (batch x patch voxels per second).
``--cells``: the cell trainer's default 2D network (``medseg.cells.train.CellTrainConfig``: DynUNet 16..256, 256²
crops, batch 2, 6 outputs), bf16 autocast, contiguous vs channels-last, instance vs batch normalisation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def time_steps(net, loss_fn, batch, patch, classes, iters, bf16=False, channels_last=False, sgd=False):
    import torch

    x = torch.randn(batch, 1, *patch)
    y = torch.randint(0, classes, (batch, *patch))
    if channels_last:
        fmt = torch.channels_last_3d if len(patch) == 3 else torch.channels_last
        net = net.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    opt = (torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True) if sgd
           else torch.optim.AdamW(net.parameters(), 1e-3))
    times = []
    for i in range(iters + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    times.sort()
    s = times[len(times) // 2]
    return {"s_per_iter": round(s, 3), "voxels_per_s": round(batch * float(__import__("numpy").prod(patch)) / s)}


def nnunet_network(patch):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    import torch

    return PlainConvUNet(1, 4, [32, 64, 128, 256], torch.nn.Conv3d, [[3, 3, 3]] * 4,
                         [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [2, 2, 2, 2], 3, [2, 2, 2],
                         conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--skip-nnunet", action="store_true")
    ap.add_argument("--cells", action="store_true", help="time the 2D cell network's variants instead")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    if args.cells:
        return cells_speed(args)

    from medseg.plan.plan import Plan
    from medseg.train.artifact import build_from_plan
    from medseg.train.losses import SegLoss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plan = Plan.from_yaml(Path(__file__).resolve().parents[1] / "configs/hippocampus.yaml")
    patch = plan.patch_size
    res = {"threads": args.threads, "patch": patch}
    loss = SegLoss(plan)
    for name, kw in {"medseg_fp32": {}, "medseg_bf16": {"bf16": True},
                     "medseg_fp32_channels_last": {"channels_last": True}, "medseg_bf16_residual": {"bf16": True}}.items():
        net = build_from_plan(replace(plan, residual=name.endswith("residual")))
        res[name] = time_steps(net, loss, plan.batch_size, patch, 3, args.iters, **kw)
        res[name]["batch"] = plan.batch_size
        print(name, res[name], flush=True)
    if not args.skip_nnunet:
        try:
            from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
            from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
            from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
        except ImportError as exc:
            res["nnunet"] = f"not available: {exc}"
        else:
            dc = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
            ws = [1 / 2 ** i for i in range(3)]
            ds_loss = DeepSupervisionWrapper(dc, [w / sum(ws) for w in ws])

            def nn_loss(outs, y):
                ys = [y[:, None].float()]
                for o in outs[1:]:
                    ys.append(F.interpolate(ys[0], size=o.shape[2:], mode="nearest"))
                return ds_loss([o.float() for o in outs], ys)

            for name, kw in {"nnunet_default_fp32": {}, "nnunet_default_bf16": {"bf16": True}}.items():
                res[name] = time_steps(nnunet_network(patch), nn_loss, 9, patch, 3, args.iters, sgd=True, **kw)
                res[name]["batch"] = 9
                print(name, res[name], flush=True)
    res["load_avg"] = list(__import__("os").getloadavg())
    print(json.dumps(res, indent=1))
    return 0


def cells_speed(args) -> int:
    """s/step of the cell network: bf16, contiguous vs channels-last, instance vs batch norm (same process)."""
    import os

    import torch
    import torch.nn.functional as F

    from medseg.cells.train import CellTrainConfig, build_cell_network

    torch.set_num_threads(args.threads)
    res = {"threads": args.threads}

    def loss(out, y):  # the class part of the cell loss: what differs between the variants is the network
        return F.cross_entropy(out.float()[:, :3], y)

    for norm in ("instance", "batch"):
        for cl in (False, True):
            cfg = CellTrainConfig(norm=norm)
            torch.manual_seed(0)
            name = f"cells_{norm}_{'channels_last' if cl else 'contiguous'}_bf16"
            res[name] = time_steps(build_cell_network(cfg), loss, cfg.batch_size, list(cfg.patch_size), 3,
                                   args.iters, bf16=True, channels_last=cl)
            print(name, res[name], flush=True)
    res["load_avg"] = list(os.getloadavg())
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
