"""Sliding-window inference: medseg vs MONAI's ``sliding_window_inference`` vs nnU-Net's predictor.

Same network weights (a randomly initialised DynUNet 32..320 from ``medseg.train.network.build_network``, seed 0:
speed does not depend on training), same tile size, overlap and Gaussian blending (sigma = patch/8), same input
(a real CT, ``totalseg_example/example_ct.nii.gz``, clipped to [-1000, 1000] HU and scaled), run in the same
invocation. Every variant runs in a fresh subprocess (so its peak RSS, ``VmHWM``, is its own), after one
warm-up window; repeats are interleaved so that load from other users of the machine hits all variants alike.
Prediction equality: Dice of every foreground class between each variant's labels and MONAI's fp32 labels.

Commands (see ``benchmarks/RESULTS.md``)::

    python benchmarks/inference.py speed --repeats 2
    python benchmarks/inference.py ram                      # 512x512x800 CT-sized volume, peak RSS
    python benchmarks/inference.py presets -m RUN_DIR --data ../shared/data/msd_hippocampus

nnU-Net (``pip install nnunetv2 --no-deps`` plus acvl-utils, batchgenerators, dynamic-network-architectures,
threadpoolctl, blosc2, ...; its torchvision import is not needed by the predictor) is skipped if not importable.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))

SPEED_VARIANTS = ["monai", "monai-bf16", "nnunet", "medseg-fp32", "medseg"]


def _status(key: str) -> int:
    """Bytes of a /proc/self/status entry (VmHWM: peak RSS, VmRSS: current)."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def build_net(kind: str, classes: int, patch: list[int]):
    import torch

    from medseg.train.network import build_network

    torch.manual_seed(0)
    if kind == "full":  # nnU-Net-like DynUNet, filters 32, 64, 128, 256, 320
        return build_network(3, 1, classes, patch)
    return build_network(3, 1, classes, patch, base_filters=4, max_filters=16)  # tiny: for the RAM run


def run_variant(variant: str, net, x, patch, overlap: float, batch_size: int):
    """Labels (uint8 numpy) of ``x`` (C, *S) predicted by one engine."""
    import torch

    if variant.startswith("monai"):
        from monai.inferers import sliding_window_inference

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "monai-bf16"):
            logits = sliding_window_inference(x[None], patch, batch_size, net, overlap=overlap, mode="gaussian")
        return logits[0].argmax(0).to(torch.uint8).numpy()
    if variant == "onnxruntime":  # the same weights exported to ONNX, windows run by ONNX Runtime (fp32)
        from medseg.infer.sliding_window import sliding_window_predict

        sess = _ORT_SESSION[0]
        lab = sliding_window_predict(lambda xb: torch.from_numpy(sess.run(None, {"x": xb.float().numpy()})[0]), x,
                                     patch, overlap=overlap, batch_size=batch_size, device="cpu", output="labels",
                                     precision="fp32")
        return lab.numpy()
    if variant == "nnunet":
        from types import SimpleNamespace

        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        p = nnUNetPredictor(tile_step_size=1 - overlap, use_gaussian=True, use_mirroring=False,
                            perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        p.network = net
        p.configuration_manager = SimpleNamespace(patch_size=list(patch))
        p.label_manager = SimpleNamespace(num_segmentation_heads=net.out_channels)
        return p.predict_sliding_window_return_logits(x).argmax(0).to(torch.uint8).numpy()
    from medseg.infer.sliding_window import sliding_window_predict

    opts = dict(kv.split("=") for kv in variant.split(":")[1].split(",")) if ":" in variant else {}
    prec = "fp32" if variant.startswith("medseg-fp32") else opts.get("prec", "auto")
    cl = {"1": True, "0": False}.get(opts.get("cl", ""), None)
    lab = sliding_window_predict(net, x, patch, overlap=overlap, batch_size=int(opts.get("bs", batch_size)),
                                 device="cpu", output="labels", precision=prec, channels_last=cl)
    return lab.numpy()


_ORT_SESSION: list = []


def _onnx_session(net, args):
    """Export ``net`` to ONNX (dynamic batch) and open an ONNX Runtime CPU session with ``args.threads`` threads.
    Needs ``pip install onnx onnxscript onnxruntime`` (benchmark only)."""
    import onnxruntime as ort
    import torch

    path = os.path.join(tempfile.mkdtemp(), "net.onnx")
    torch.onnx.export(net, (torch.zeros(args.batch_size, 1, *[args.patch] * 3),), path, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"x": np.zeros((args.batch_size, 1, *[args.patch] * 3), np.float32)})
    return sess


def worker(args) -> None:
    """One variant in this (fresh) process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    x = torch.from_numpy(np.load(args.input))
    patch = [args.patch] * 3
    net = build_net(args.net, args.classes, patch).eval()
    if "compile" in args.variant:  # e.g. medseg:compile=1 -- torch.compile (inductor, C++ codegen on CPU)
        net = torch.compile(net, dynamic=False)
    t_warm = time.perf_counter()
    if args.variant == "onnxruntime":  # export + session creation count as warm-up, like compilation
        _ORT_SESSION.append(_onnx_session(net, args))
    with torch.inference_mode():  # warm-up window (oneDNN primitive creation; compilation), same precision
        bf16 = args.variant in ("monai-bf16",) or (args.variant.startswith("medseg") and "fp32" not in args.variant)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(torch.zeros(args.batch_size, 1, *patch))
    warm_s = time.perf_counter() - t_warm
    rss0 = _status("VmRSS")
    t = time.perf_counter()
    lab = run_variant(args.variant, net, x, patch, args.overlap, args.batch_size)
    dt = time.perf_counter() - t
    if args.save:
        np.save(args.save, lab)
    print(json.dumps({"variant": args.variant, "seconds": dt, "voxels_per_s": int(np.prod(x.shape[1:]) / dt),
                      "peak_rss_gb": _status("VmHWM") / 2**30, "rss_before_gb": rss0 / 2**30,
                      "warmup_s": round(warm_s, 1)}))


def spawn(variant: str, input_npy: str, args, save: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--variant", variant, "--input", input_npy,
           "--net", args.net, "--classes", str(args.classes), "--patch", str(args.patch), "--overlap",
           str(args.overlap), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if save:
        cmd += ["--save", save]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"variant": variant, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def dice(a: np.ndarray, b: np.ndarray, classes: int) -> dict[int, float]:
    out = {}
    for c in range(1, classes):
        s = (a == c).sum() + (b == c).sum()
        out[c] = float(2 * ((a == c) & (b == c)).sum() / s) if s else 1.0
    return out


def load_ct() -> np.ndarray:
    import nibabel as nib

    path = DATA / "totalseg_example" / "example_ct.nii.gz"
    if not path.exists():
        sys.exit(f"real data not available: {path} is missing (set MEDSEG_DATA)")
    ct = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    return (np.clip(ct, -1000, 1000) / 500.0)[None]


def speed(args) -> None:
    x = load_ct()
    if args.crop:  # centred crop: fewer windows, so that repeats fit in a shared machine's time
        c = [max((n - args.crop) // 2, 0) for n in x.shape[1:]]
        x = np.ascontiguousarray(x[:, c[0]: c[0] + args.crop, c[1]: c[1] + args.crop, c[2]: c[2] + args.crop])
    variants = args.variants or SPEED_VARIANTS
    print(f"input {x.shape[1:]} ({np.prod(x.shape[1:])/1e6:.2f} Mvoxels), patch {args.patch}^3, overlap "
          f"{args.overlap}, net {args.net}, {args.threads} threads, load avg {os.getloadavg()[0]:.1f}", flush=True)
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "x.npy")
        np.save(inp, x)
        for r in range(args.repeats):
            for v in variants:
                res = spawn(v, inp, args, save=os.path.join(tmp, f"{v}.npy") if r == 0 else None)
                res["load"] = os.getloadavg()[0]
                rows[v].append(res)
                print(json.dumps(res), flush=True)
        ref = np.load(os.path.join(tmp, "monai.npy")) if os.path.exists(os.path.join(tmp, "monai.npy")) else None
        summary = []
        base = min((r["seconds"] for r in rows.get("monai", []) if "seconds" in r), default=None)
        for v in variants:
            ok = [r for r in rows[v] if "seconds" in r]
            if not ok:
                summary.append({"variant": v, "error": rows[v][0].get("error")})
                continue
            best = min(r["seconds"] for r in ok)
            d = dice(np.load(os.path.join(tmp, f"{v}.npy")), ref, args.classes) if ref is not None else {}
            summary.append({"variant": v, "best_s": round(best, 2), "voxels_per_s": int(np.prod(x.shape[1:]) / best),
                            "vs_monai": round(base / best, 2) if base else None,
                            "peak_rss_gb": round(max(r["peak_rss_gb"] for r in ok), 2),
                            "dice_vs_monai": {k: round(val, 4) for k, val in d.items()}})
    print("\n| variant | best s | voxels/s | × MONAI | peak RSS GB | Dice vs MONAI (per class) |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        if "error" in s:
            print(f"| {s['variant']} | failed: {s['error']} | | | | |")
        else:
            print(f"| {s['variant']} | {s['best_s']} | {s['voxels_per_s']:,} | {s['vs_monai']} | {s['peak_rss_gb']} "
                  f"| {', '.join(f'{v:.4f}' for v in s['dice_vs_monai'].values())} |")


def ram(args) -> None:
    """Peak RSS predicting a CT-sized volume (512x512x800 real CT values: example CT tiled)."""
    ct = load_ct()[0]
    shape = tuple(args.shape)
    reps = [int(np.ceil(s / c)) for s, c in zip(shape, ct.shape)]
    x = np.tile(ct, reps)[: shape[0], : shape[1], : shape[2]][None].astype(np.float32)
    print(f"volume {shape} ({np.prod(shape)/1e6:.0f} Mvoxels, input {x.nbytes/2**30:.2f} GB float32), net "
          f"{args.net}, {args.classes} classes, patch {args.patch}^3, overlap {args.overlap}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "x.npy")
        np.save(inp, x)
        del x
        for v in args.variants or ["medseg"]:
            print(json.dumps(spawn(v, inp, args)), flush=True)


def presets(args) -> None:
    """Speed / Dice of overlap, TTA and precision presets with a trained model on hippocampus validation cases.

    Runs the project's ``predict_image`` (preprocessing, resampling back) with the engine swapped per preset:
    medseg's engine with the given overlap / mirroring TTA (all axes) / precision, or MONAI's
    ``sliding_window_inference`` in fp32 (the reference for the agreement column).
    """
    import torch

    import medseg.infer.predict as pred
    from medseg.io.readers import read_image
    from medseg.train.artifact import load_model

    torch.set_num_threads(args.threads)
    art = load_model(args.model)
    net = art.build()
    plan = art.plan
    plan.bf16 = False  # the MONAI fallback then runs in fp32; medseg's precision is set per preset below
    images = sorted((Path(args.data) / "imagesTr").glob("*.nii.gz"))
    split = Path(args.model) / "splits.json"
    if split.exists():
        val = set(json.loads(split.read_text())[args.fold]["val"])
        images = [p for p in images if p.name.split(".")[0] in val]
    images = images[: args.num_cases]
    cases = [(read_image(p), read_image(Path(args.data) / "labelsTr" / p.name).array) for p in images]
    presets = [("monai", 0.5, False, "fp32"), ("medseg", 0.5, False, "fp32"), ("medseg", 0.5, False, "auto"),
               ("medseg", 0.25, False, "auto"), ("medseg", 0.75, False, "auto"), ("medseg", 0.5, True, "auto")]
    trained_flips = list(plan.augment.get("flip_axes") or [])
    if trained_flips:  # mirroring only the axes the model was trained to be invariant to
        presets.append(("medseg", 0.5, trained_flips, "auto"))
    print(f"{len(cases)} validation cases of fold {args.fold}, {args.threads} thread(s), "
          f"load avg {os.getloadavg()[0]:.1f}")
    print("| engine | overlap | TTA | precision | s/case | Dice anterior | Dice posterior | Dice vs MONAI fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    ref_labels = None
    original = pred.sliding_window
    try:  # restore the engine whatever happens: the smoke test runs this in the test process
        for name, overlap, tta, prec in presets:
            pred.sliding_window = _preset_engine(name, tta, prec)  # predict_image's window engine, swapped
            t, dices, labels = 0.0, [], []
            for img, ref in cases:
                t0 = time.perf_counter()
                lab, _ = pred.predict_image(net, plan, img, overlap=overlap, tta=False, device="cpu")
                t += time.perf_counter() - t0
                labels.append(lab.array)
                dices.append(list(dice(lab.array, ref, 3).values()))
            if ref_labels is None:
                ref_labels = labels
            agree = np.mean([list(dice(a, b, 3).values()) for a, b in zip(labels, ref_labels)])
            m = np.mean(dices, axis=0)
            tta_name = "all axes" if tta is True else (f"axes {tta}" if tta else "off")
            print(f"| {name} | {overlap} | {tta_name} | {prec} | {t / len(cases):.3f} | {m[0]:.4f} "
                  f"| {m[1]:.4f} | {agree:.4f} |", flush=True)
    finally:
        pred.sliding_window = original


def _preset_engine(name: str, preset_tta, precision: str):
    """A stand-in for ``medseg.infer.predict.sliding_window``: MONAI's inferer (fp32) or medseg's engine with the
    preset's TTA and precision; softmax probabilities (K, *S), handed to ``sink`` when one is given."""
    import torch

    from medseg.infer.sliding_window import sliding_window_predict

    def engine(network, x, patch_size, overlap=0.5, batch_size=2, device="cpu", bf16=False, tta=False,
               sink=None, num_classes=None):  # the preset's TTA and precision replace the caller's
        with torch.no_grad():
            if name == "monai":
                from monai.inferers import sliding_window_inference

                logits = sliding_window_inference(x[None].float(), list(patch_size), batch_size, network,
                                                  overlap=overlap, mode="gaussian")[0]
                probs = torch.softmax(logits.float(), 0)
                return sink(probs, 0) if sink is not None else probs
            return sliding_window_predict(network, x, patch_size, overlap=overlap, tta=preset_tta,
                                          batch_size=batch_size, device="cpu", output="probabilities",
                                          precision=precision, sink=sink, num_classes=num_classes)

    return engine


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["speed", "ram", "presets", "worker"])
    ap.add_argument("--variants", nargs="*", help=f"default {SPEED_VARIANTS} (speed), medseg (ram)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    ap.add_argument("--net", choices=["full", "tiny"], default=None)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--crop", type=int, default=0, help="speed: centred crop of the CT to N^3 voxels")
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 800])
    ap.add_argument("-m", "--model", help="trained model (presets)")
    ap.add_argument("--data", default=str(DATA / "msd_hippocampus"))
    ap.add_argument("--num-cases", type=int, default=20)
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args(argv)
    if args.net is None:
        args.net = "tiny" if args.mode == "ram" else "full"
    {"speed": speed, "ram": ram, "presets": presets, "worker": worker}[args.mode](args)


if __name__ == "__main__":
    main()
