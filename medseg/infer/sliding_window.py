"""Sliding-window prediction with Gaussian blending, streamed slab by slab along the last spatial axis.

Why not call MONAI's ``sliding_window_inference`` directly: it holds the blended output for every class at full
resolution (float32) plus a count map, which for a 512x512x800 CT with 105 classes is ~88 GB; it runs fp32 on
CPU by default. Here the windows, their placement and the Gaussian weights are MONAI's (so results agree with it,
tested), but windows are visited in order of their start along the last axis and every plane that no later
window can touch is finalised at once (divided by the weight sum, then softmax / argmax) and written to the
output. Only a slab one window deep is ever accumulated, so RAM is bounded by ``C x X x Y x patch_z`` whatever
the number of slices. On CPUs with native bf16 (AVX512-BF16 / AMX) the network runs under bf16 autocast, which
is several times faster than fp32 on such CPUs (see ``benchmarks/inference.py``); on CUDA it runs under fp16 AMP.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from medseg.infer.blending import Slab as _Slab  # noqa: F401  (the accumulator under its former name)
from medseg.infer.blending import gaussian_importance_map, make_slab

__all__ = ["sliding_window_predict", "gaussian_importance_map", "window_starts", "resolve_device",
           "cpu_has_native_bf16", "flip_sets"]

Output = Literal["probabilities", "labels", "logits"]


def window_starts(image_size: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[list[int]]:
    """Start index of the windows along each axis (MONAI's placement: step ``int(patch * (1 - overlap))``, the
    last window flush with the end). ``image_size`` must be >= ``patch_size`` (pad first).

    Examples
    --------
    >>> window_starts([100, 64], [64, 64], 0.5)
    [[0, 32, 36], [0]]
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    starts = []
    for n, p in zip(image_size, patch_size):
        if n < p:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}")
        step = p if n == p else max(int(p * (1 - overlap)), 1)
        count = next(i for i in range(n) if i * step + p >= n) + 1
        starts.append([i * step - max(i * step + p - n, 0) for i in range(count)])
    return starts


def flip_sets(tta: bool | Sequence[int] | Sequence[Sequence[int]], spatial_dims: int) -> list[tuple[int, ...]]:
    """The mirrorings used for test-time augmentation, as tuples of spatial axes (0-based), identity first.

    ``tta=True`` mirrors over every subset of the spatial axes (nnU-Net's mirroring: 8 passes in 3D);
    a list of axes mirrors over every subset of those axes; a list of tuples is taken as given.

    Examples
    --------
    >>> flip_sets([0, 2], 3)
    [(), (0,), (2,), (0, 2)]
    """
    if tta is False or tta is None:
        return [()]
    if tta is True:
        axes = list(range(spatial_dims))
    elif all(isinstance(a, (tuple, list)) for a in tta):
        sets = [tuple(a) for a in tta]
        return sets if () in sets else [()] + sets
    else:
        axes = sorted(int(a) for a in tta)
    if any(not 0 <= a < spatial_dims for a in axes):
        raise ValueError(f"TTA axes {axes} out of range for {spatial_dims} spatial dims")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``cpu``, ``cuda`` or ``cuda:N`` present here.

    Delegates to :func:`medseg.infer.devices.parse_device` so that every entry point spells devices alike and a
    bad one (``gpu``) is an InputError, not torch's RuntimeError.

    Parameters
    ----------
    device : str or torch.device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    from medseg.infer.devices import parse_device

    return parse_device(device)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off.

    Returns
    -------
    bool
        From the ``flags`` of ``/proc/cpuinfo``; False where there is none (macOS, Windows). Cached.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None


def _finish(logits: torch.Tensor, output: str, activation: str | None) -> torch.Tensor:
    if output == "logits" or activation is None and output != "labels":
        return logits
    if activation == "sigmoid":
        return (logits > 0).to(torch.uint8) if output == "labels" else torch.sigmoid(logits)
    if output == "labels":
        return torch.argmax(logits, dim=0)
    return torch.softmax(logits, dim=0)


def sliding_window_predict(
    network: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    tta: bool | Sequence[int] = False,
    batch_size: int = 1,
    device: str | torch.device = "auto",
    num_classes: int | None = None,
    output: Output = "probabilities",
    activation: Literal["softmax", "sigmoid"] | None = "softmax",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    channels_last: bool | None = None,
    accumulate_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype = torch.float32,
    memory_budget: float = 2 * 2**30,
    stitch_device: str | torch.device = "auto",
    progress: bool = False,
    sink: Callable[[torch.Tensor, int], None] | None = None,
) -> torch.Tensor | None:
    """Predict a whole image with overlapping windows blended by a Gaussian (2D or 3D).

    Parameters
    ----------
    network : torch.nn.Module or callable
        Maps a batch ``(B, C_in, *patch_size)`` to logits ``(B, C_out, *patch_size)``. A module is put in eval
        mode and moved to ``device`` for the call (its train flag and memory format are restored afterwards).
    image : (C_in, *spatial) tensor or array
        Already normalised input; stays on the CPU (windows are copied to ``device`` one batch at a time).
    patch_size : sequence of int
        Window size; the image is zero-padded (centred, as MONAI does) where it is smaller.
    overlap : float
        Fraction of a window shared with its neighbour (MONAI's definition; 0.5 is nnU-Net's default).
    tta : bool or sequence of int
        Mirroring test-time augmentation: ``True`` for all spatial axes, or the axes to mirror (every subset).
        Logits of the mirrored passes are averaged, as nnU-Net does.
    batch_size : int
        Windows per forward pass (fewer when their float32 logits would exceed 512 MiB, e.g. a hundred classes).
    device : "auto", "cpu", "cuda" or torch.device
        Where the network runs; ``"auto"`` picks CUDA when available.
    num_classes : int, optional
        Output channels, if known (otherwise read from the first forward pass, which then uses ``batch_size``
        windows whatever their size).
    output : "probabilities", "labels" or "logits"
        ``"labels"`` returns the argmax (uint8 up to 256 classes, else int32; with ``activation="sigmoid"`` one
        binary uint8 mask per channel).
    activation : "softmax", "sigmoid" or None
        Applied to the blended logits for ``output="probabilities"`` (None: return blended logits).
    precision : "auto", "fp32", "bf16", "fp16"
        Autocast dtype for the network. ``"auto"``: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32.
    channels_last : bool, optional
        Run the network in channels-last memory format (off by default: no consistent gain measured on CPU,
        see ``benchmarks/RESULTS.md``).
    accumulate_dtype : torch.dtype, optional
        dtype of the blending buffer; default float32, or float16 when a float32 slab would exceed
        ``memory_budget`` (e.g. a hundred classes on a 512x512 CT). float16 rounds once per window added, so the
        blended logits are within ``n * 2**-11`` of the largest |logit| (``n`` windows overlapping a voxel; 1.5e-3
        of it measured at overlap 0.5). For softmax probabilities and labels each window's logits are added less
        their maximum over the classes, so that this holds for their differences to the best class, whatever
        offset they share (softmax ignores it), and labels change only where the two best are that close.
    out_dtype : torch.dtype
        dtype of returned probabilities / logits (float16 halves the result's RAM).
    memory_budget : float
        Bytes the blending slab may use before it falls back to float16 (2 GiB: 14 classes on a 512x512 grid
        with 128-deep windows stay float32; 105 classes on TotalSegmentator's 1.5 mm grid, 3.7 GiB, do not).
    stitch_device : "auto", "cpu", "cuda"
        Where the slab is accumulated; ``"auto"``: the network's device if the slab fits in a quarter of its
        free memory, else the CPU (window on the GPU, stitching on the CPU).
    progress : bool
        Show a progress bar over the windows.
    sink : callable, optional
        Called as ``sink(part, first)`` with each finished run of planes along the last axis (the output for
        planes ``first .. first + n - 1``, in order, in the dtype it would be returned in) instead of assembling
        the whole result, so that a caller can resample or write them without ever holding the whole output (see
        ``medseg.infer.predict``).

    Returns
    -------
    torch.Tensor or None
        ``(C_out, *spatial)`` probabilities / logits, or ``(*spatial)`` labels, on the CPU, in the input's grid;
        None when a ``sink`` took the output.

    Examples
    --------
    >>> net = torch.nn.Conv2d(1, 3, 3, padding=1)
    >>> probs = sliding_window_predict(net, torch.rand(1, 50, 40), [32, 32], device="cpu")
    >>> probs.shape, bool(torch.allclose(probs.sum(0), torch.ones(50, 40)))
    (torch.Size([3, 50, 40]), True)
    """
    if output not in ("probabilities", "labels", "logits"):
        raise ValueError(f"output must be probabilities, labels or logits, got {output!r}")
    image = torch.as_tensor(image).float()
    patch = [int(p) for p in patch_size]
    nd = len(patch)
    if image.ndim != nd + 1:
        raise ValueError(f"image must be (C, *spatial) with {nd} spatial dims for patch {patch}, got {tuple(image.shape)}")
    dev = resolve_device(device)
    cast = _autocast_dtype(precision, dev)
    channels_last = bool(channels_last) and nd in (2, 3)
    flips = flip_sets(tta, nd)

    # centred zero padding up to the patch, as MONAI does
    orig = list(image.shape[1:])
    pad_lo = [max(p - n, 0) // 2 for n, p in zip(orig, patch)]
    if any(n < p for n, p in zip(orig, patch)):
        pads = []
        for n, p, lo in reversed(list(zip(orig, patch, pad_lo))):
            pads += [lo, max(p - n, 0) - lo]
        image = torch.nn.functional.pad(image, pads)
    size = list(image.shape[1:])
    starts = window_starts(size, patch, overlap)
    # z-major order: a plane is final once every window starting at or before it has been added
    windows = sorted(itertools.product(*starts), key=lambda s: (s[-1], s))
    z_starts = starts[-1]

    is_module = isinstance(network, torch.nn.Module)
    mf = torch.channels_last_3d if nd == 3 else torch.channels_last
    if is_module:
        was_training = network.training
        network.eval().to(dev)
        if channels_last:
            network.to(memory_format=mf)
    weight = gaussian_importance_map(patch, device=dev)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(dev, non_blocking=True)
        if channels_last:
            batch = batch.contiguous(memory_format=mf)
        total = None
        for axes in flips:
            dims = [a + 2 for a in axes]
            x = torch.flip(batch, dims) if dims else batch
            with torch.autocast(dev.type, dtype=cast or torch.float32, enabled=cast is not None):
                y = network(x)
            y = y[0] if isinstance(y, (list, tuple)) else y  # deep supervision: full-resolution head
            y = torch.flip(y, dims) if dims else y
            if len(flips) == 1:  # as it is (bf16 under autocast): the slab's multiply-add reads it as float32
                return y
            total = y.float() if total is None else total + y
        return total / len(flips)

    slab, result, done = None, None, 0  # done: planes (padded coords) already emitted
    out_lo = pad_lo[-1]

    def emit(n: int) -> None:
        for blended in slab.pop(n):
            store(blended)

    def store(blended: torch.Tensor) -> None:
        nonlocal done, result
        first, done = done, done + blended.shape[-1]
        crop = tuple(slice(lo, lo + o) for lo, o in zip(pad_lo[:-1], orig[:-1]))
        z0, z1 = max(first, out_lo), min(done, out_lo + orig[-1])
        if z1 <= z0:  # padding planes only
            return
        part = _finish(blended[(slice(None),) + crop + (slice(z0 - first, z1 - first),)], output, activation)
        # the returned dtypes, for a sink too: argmax labels (int64) as uint8 / int32, the rest as out_dtype
        if output != "labels":
            part = part.to(out_dtype)
        elif part.ndim == nd:
            part = part.to(torch.uint8 if blended.shape[0] <= 256 else torch.int32)
        part = part.cpu()
        if sink is not None:
            sink(part, z0 - out_lo)
            return
        if result is None:
            result = torch.empty((*part.shape[:-1], orig[-1]), dtype=part.dtype)
        result[..., z0 - out_lo: z1 - out_lo] = part

    bar = _progress(len(windows) * len(flips), progress)
    try:
        with torch.inference_mode():
            b0, step = 0, _batch_cap(batch_size, num_classes, patch)
            while b0 < len(windows):
                group = windows[b0: b0 + step]
                b0 += len(group)
                batch = torch.stack([image[(slice(None),) + tuple(slice(s, s + p) for s, p in zip(w, patch))]
                                     for w in group])
                logits = forward(batch)
                if slab is None:
                    classes = num_classes or logits.shape[1]
                    step = _batch_cap(batch_size, classes, patch)
                    slab = make_slab(classes, size, patch[-1], accumulate_dtype, memory_budget, dev,
                                     stitch_device)
                    weight = weight.to(slab.acc.device)
                    # float16 errors scale with the logits' size, softmax and argmax see only their differences:
                    # each window's logits go in less their maximum over the classes (a per-voxel constant, the
                    # same for every class after blending), so that the best classes are added near 0
                    shift = slab.acc.dtype != torch.float32 and activation == "softmax" and output != "logits"
                logits = logits.to(slab.acc.device)
                for w, y in zip(group, logits):
                    if w[-1] > slab.base:  # all windows before this z-start are in: planes below it are final
                        emit(w[-1] - slab.base)
                    slab.add(y, weight, w, y.amax(0).float() if shift else None)
                del logits, y  # not alive during the next forward pass (0.9 GB for 105 classes at 128³)
                if bar is not None:
                    bar[0].advance(bar[1], len(group) * len(flips))
            emit(size[-1] - done)
    finally:
        if bar is not None:
            bar[0].stop()
        if is_module:
            if channels_last:
                network.to(memory_format=torch.contiguous_format)
            network.train(was_training)
    assert z_starts[-1] + patch[-1] == size[-1]
    return result


BATCH_OUTPUT_BYTES = 512 * 2**20  # float32 logits of one batch of windows, beyond which the batch shrinks


def _batch_cap(batch_size: int, classes: int | None, patch: Sequence[int]) -> int:
    """Windows per forward pass: ``batch_size``, fewer when their float32 logits would exceed
    ``BATCH_OUTPUT_BYTES`` (a 105-class 128³ window alone is 0.9 GB), never below one."""
    if not classes:
        return max(1, batch_size)
    return max(1, min(batch_size, BATCH_OUTPUT_BYTES // (4 * classes * math.prod(patch))))


def _progress(total: int, show: bool):
    from medseg.progress import bar_console, shown

    if not shown(show):
        return None
    from rich.progress import Progress

    bar = Progress(transient=True, console=bar_console())
    bar.start()
    return bar, bar.add_task("sliding window", total=total)

