"""Prediction in native geometry: preprocessing identical to training, sliding windows, resampling back.

The output label map has exactly the input's shape and affine (the network grid is resized back by shape).
Probabilities are resized one class at a time with a running argmax, so full-resolution float32 logits for all
classes are never held at once (bounded RAM on large CTs).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from medseg.io.image import Image
from medseg.plan.plan import Plan
from medseg.train.preprocess import preprocess, resize, slice_axis


def sliding_window(network: torch.nn.Module, x: torch.Tensor, patch_size, overlap: float = 0.5,
                   batch_size: int = 2, device: str | torch.device = "cpu", bf16: bool = False) -> torch.Tensor:
    """Softmax probabilities (K, *S) of a (C, *S) volume by Gaussian-blended sliding windows
    (:func:`medseg.infer.sliding_window.sliding_window_predict`).

    ``patch_size`` may have a leading 1 for 2D networks applied slice by slice to a 3D volume.
    """
    from medseg.infer.sliding_window import cpu_has_native_bf16, sliding_window_predict

    device = torch.device(device)
    two_d = len(patch_size) == x.ndim - 1 and patch_size[0] == 1 and x.ndim == 4 and _is_2d(network)

    def slice_by_slice(batch):  # (B, C, 1, H, W) windows through a 2D network
        return network(batch[:, :, 0])[:, :, None]

    precision = "auto" if device.type == "cuda" else ("bf16" if bf16 and cpu_has_native_bf16() else "fp32")
    with torch.no_grad():  # not inference_mode: its tensors would poison a later training step
        logits = sliding_window_predict(slice_by_slice if two_d else network, x, patch_size, overlap=overlap,
                                        tta=False, batch_size=batch_size, device=device, output="logits",
                                        precision=precision)
    return torch.softmax(logits.float(), 0)


def _is_2d(network) -> bool:
    return getattr(network, "spatial_dims", 3) == 2


def predict_probabilities(network: torch.nn.Module, plan: Plan, array: np.ndarray, spacing, overlap=None,
                          tta: bool | None = None, device="cpu", batch_size: int = 2) -> torch.Tensor:
    """Probabilities on the plan's grid for a channels-first array (mirroring TTA over the plan's flip axes)."""
    x, _ = preprocess(array, spacing, plan)
    overlap = plan.overlap if overlap is None else overlap
    tta = plan.tta if tta is None else tta
    patch = list(plan.patch_size)
    if plan.spatial_dims == 2:
        ax = slice_axis(spacing)
        x = x.movedim(ax + 1, 1)
        patch = [1, *patch]
    flips = [a for a in (plan.augment.get("flip_axes") or [])] if tta else []
    if plan.spatial_dims == 2:  # flip axes of 2D plans are in-plane axes of the slice
        flips = [a + 1 for a in flips]
    probs = None
    n = 0
    for k in range(len(flips) + 1):
        for combo in itertools.combinations(flips, k):
            dims = [a + 1 for a in combo]
            xi = x.flip(dims) if dims else x
            p = sliding_window(network, xi, patch, overlap, batch_size, device, plan.bf16)
            p = p.flip(dims) if dims else p
            probs = p if probs is None else probs.add_(p)
            n += 1
    probs /= n
    if plan.spatial_dims == 2:
        probs = probs.movedim(1, slice_axis(spacing) + 1)
    return probs


def to_native(probs: torch.Tensor, shape, keep_probabilities: bool = False):
    """Resize (K, *S') probabilities to ``shape``; returns (labels int64 ndarray, probabilities or None).

    One class at a time with a running max, so memory is O(shape), not O(K * shape).
    """
    if tuple(probs.shape[1:]) == tuple(shape):
        lab = probs.argmax(0).numpy()
        return lab, (probs.numpy() if keep_probabilities else None)
    best = torch.full(tuple(shape), -1.0)
    lab = torch.zeros(tuple(shape), dtype=torch.int64)
    kept = [] if keep_probabilities else None
    for k in range(probs.shape[0]):
        pk = resize(probs[k:k + 1], shape)[0]
        better = pk > best
        lab[better] = k
        best = torch.maximum(best, pk)
        if kept is not None:
            kept.append(pk.numpy())
    return lab.numpy(), (np.stack(kept) if kept is not None else None)


def predict_image(network: torch.nn.Module, plan: Plan, image: Image, overlap=None, tta=None, device="cpu",
                  batch_size: int = 2, probabilities: bool = False, largest_component: bool = False,
                  min_size_mm3: float = 0.0):
    """Predict one ``Image`` (channels-first for multi-channel plans); returns (label Image, prob Image|None)
    on exactly the input's grid."""
    arr = image.array if image.channels_first else image.array[None]
    if arr.shape[0] != plan.in_channels:
        from medseg.errors import InputError

        raise InputError(f"image has {arr.shape[0]} channel(s), the model needs {plan.in_channels} "
                         f"({', '.join(plan.channels)})", path=image.meta.get("source"))
    probs = predict_probabilities(network, plan, arr, image.spacing, overlap, tta, device, batch_size)
    lab, prob = to_native(probs, image.shape, probabilities)
    if largest_component or min_size_mm3:
        lab = postprocess_labels(lab, image.spacing, largest_component, min_size_mm3)
    from medseg.io.readers import label_dtype

    out = Image(lab.astype(label_dtype(max(plan.labels))), image.affine.copy(),
                {"source": image.meta.get("source"), "labels": plan.labels})
    pimg = Image(prob.astype(np.float32), image.affine.copy(), {}, True) if prob is not None else None
    return out, pimg


def postprocess_labels(lab: np.ndarray, spacing, largest_component: bool, min_size_mm3: float) -> np.ndarray:
    """Keep the largest component per class and/or remove components smaller than ``min_size_mm3``
    (full connectivity; see :mod:`medseg.postprocess.components`)."""
    from medseg.postprocess import components as pc

    if largest_component:
        lab = pc.keep_largest_component(lab)
    if min_size_mm3:
        lab = pc.remove_small_components(lab, min_size_mm3, spacing=spacing)
    return lab
