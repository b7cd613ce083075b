"""Prediction in native geometry: preprocessing identical to training, sliding windows, resampling back.

The output label map has exactly the input's shape and affine (the network grid is resized back by shape).
The sliding window hands its probabilities over plane by plane to a :class:`~medseg.infer.native.PlaneResampler`,
which resizes them to the input's grid and keeps only the argmax, so neither the network-grid nor the
full-resolution probabilities of all classes are ever held at once (bounded RAM on large CTs).
"""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import numpy as np
import torch

from medseg.infer.native import PlaneResampler
from medseg.io.image import Image
from medseg.plan.plan import Plan
from medseg.train.preprocess import preprocess, slice_axis


def sliding_window(network: torch.nn.Module, x: torch.Tensor, patch_size, overlap: float = 0.5,
                   batch_size: int = 2, device: str | torch.device = "cpu", bf16: bool = False, tta=False,
                   sink=None, num_classes: int | None = None) -> torch.Tensor | None:
    """Softmax probabilities (K, *S) of a (C, *S) volume by Gaussian-blended sliding windows
    (:func:`medseg.infer.sliding_window.sliding_window_predict`); with ``sink``, handed over plane by plane.

    ``patch_size`` may have a leading 1 for 2D networks applied slice by slice to a 3D volume. ``tta``: the
    spatial axes to mirror (logits of the mirrored windows averaged, as nnU-Net does).
    """
    from medseg.infer.sliding_window import cpu_has_native_bf16, sliding_window_predict

    device = torch.device(device)
    two_d = len(patch_size) == x.ndim - 1 and patch_size[0] == 1 and x.ndim == 4 and _is_2d(network)

    def slice_by_slice(batch):  # (B, C, 1, H, W) windows through a 2D network
        return network(batch[:, :, 0])[:, :, None]

    precision = "auto" if device.type == "cuda" else ("bf16" if bf16 and cpu_has_native_bf16() else "fp32")
    with torch.no_grad():  # not inference_mode: its tensors would poison a later training step
        return sliding_window_predict(slice_by_slice if two_d else network, x, patch_size, overlap=overlap,
                                      tta=tta, batch_size=batch_size, device=device, output="probabilities",
                                      precision=precision, sink=sink, num_classes=num_classes)


def _is_2d(network) -> bool:
    return getattr(network, "spatial_dims", 3) == 2


def resolve_tta(plan: Plan, tta: bool | None = None, asked_as: str = "tta=True",
                warn: Callable[[str], None] | None = None) -> tuple[bool, str]:
    """Whether mirroring TTA applies, and a one-line note on how the prediction was made.

    TTA mirrors only the plan's ``augment.flip_axes``: mirroring an axis the model never saw mirrored is out of
    distribution and swaps classes defined along it (anterior/posterior hippocampus, RESULTS.md: Dice 0.86 →
    0.52). When TTA is asked for (``tta``, or the plan's ``tta`` when ``tta`` is None) but the plan has no flip
    axes, it is not applied and ``warn`` gets one line saying so (default: ``warnings.warn``).

    Parameters
    ----------
    plan : Plan
        The model's plan (``tta`` default, ``augment.flip_axes``).
    tta : bool or None
        The request; None takes the plan's ``tta``.
    asked_as : str
        How the caller spells an explicit request, named in the warning (the CLI: ``--tta``).
    warn : callable, optional
        Receives the warning line.

    Examples
    --------
    >>> from medseg.plan.plan import Plan
    >>> plan = Plan(channels=["CT"], labels={0: "background", 1: "a"}, augment={"flip_axes": [0, 1]})
    >>> resolve_tta(plan, True)
    (True, 'medseg predict: mirroring TTA over axes [0, 1]')
    """
    wanted = plan.tta if tta is None else bool(tta)
    axes = _flip_axes(plan)
    if wanted and not axes:
        who = asked_as if tta else "plan tta: true"
        (warn or _warn_caller)(f"{who}: the model was trained without mirroring (plan augment.flip_axes is empty); "
                               "predicting without TTA")
        return False, "medseg predict: no TTA (asked for, but the model was trained without mirroring)"
    return wanted, (f"medseg predict: mirroring TTA over axes {axes}" if wanted else "medseg predict: no TTA")


def _flip_axes(plan: Plan) -> list[int]:
    return [int(a) for a in (plan.augment.get("flip_axes") or [])]


def _warn_caller(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this module (the user's line, once per line)."""
    level, frame = 2, sys._getframe(1)  # level 2: the caller of _warn_caller
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, UserWarning, stacklevel=level)


def predict_labels(network: torch.nn.Module, plan: Plan, array: np.ndarray, spacing, overlap=None,
                   tta: bool | None = None, device="cpu", batch_size: int = 2, probabilities: bool = False,
                   spill_dir=None):
    """Labels on the grid of a channels-first ``array`` (and its class probabilities if asked).

    Returns ``(labels, probabilities or None)``: labels uint8 (int32 above 256 classes) of shape
    ``array.shape[1:]``, probabilities float32 ``(K, *array.shape[1:])``, read-only and mapped from a temporary
    file in ``spill_dir`` (see :class:`~medseg.infer.native.ProbabilitySpill`). Mirroring TTA covers the plan's
    flip axes (the only ones the model was trained to be invariant to); asked for on a plan without any, it is
    not applied and a warning says so (:func:`resolve_tta`).
    """
    tta, _ = resolve_tta(plan, tta)
    x, _ = preprocess(array, spacing, plan)
    overlap = plan.overlap if overlap is None else overlap
    patch = list(plan.patch_size)
    shape = tuple(array.shape[1:])
    flips = _flip_axes(plan) if tta else []
    if plan.spatial_dims == 2:  # slices first; flip axes of 2D plans are in-plane axes of the slice
        ax = slice_axis(spacing)
        x = x.movedim(ax + 1, 1)
        patch = [1, *patch]
        flips = [a + 1 for a in flips]
        shape = (shape[ax], *[s for i, s in enumerate(shape) if i != ax])
    # the probability file keeps the input's axis order: written in runs, read contiguously (2D: slices first)
    file_axes = [ax, *[i for i in range(3) if i != ax]] if plan.spatial_dims == 2 else None
    out = PlaneResampler(x.shape[1:], shape, plan.num_classes, keep_probabilities=probabilities, spill_dir=spill_dir,
                         file_axes=file_axes)
    sliding_window(network, x, patch, overlap, batch_size, device, plan.bf16, tta=flips or False, sink=out.add,
                   num_classes=plan.num_classes)
    lab = np.moveaxis(out.labels, 0, ax) if plan.spatial_dims == 2 else out.labels
    return lab, out.probabilities


def predict_image(network: torch.nn.Module, plan: Plan, image: Image, overlap=None, tta=None, device="cpu",
                  batch_size: int = 2, probabilities: bool = False, largest_component: bool = False,
                  min_size_mm3: float = 0.0, spill_dir=None):
    """Predict one ``Image`` (channels-first for multi-channel plans); returns (label Image, prob Image|None)
    on exactly the input's grid. ``tta`` as in :func:`predict_labels` (resolved by :func:`resolve_tta`)."""
    from medseg.errors import InputError
    from medseg.io.readers import check_finite

    source = image.meta.get("source")
    if image.ndim != 3:  # 2D plans, too, predict volumes slice by slice
        raise InputError(f"expected a 3D volume, got {image.ndim}D (shape {image.shape})", path=source)
    check_finite(image, source)
    arr = image.array if image.channels_first else image.array[None]
    if arr.shape[0] != plan.in_channels:
        raise InputError(f"image has {arr.shape[0]} channel(s), the model needs {plan.in_channels} "
                         f"({', '.join(plan.channels)})", path=image.meta.get("source"))
    lab, prob = predict_labels(network, plan, arr, image.spacing, overlap, tta, device, batch_size, probabilities,
                               spill_dir)
    if largest_component or min_size_mm3:
        lab = postprocess_labels(lab, image.spacing, largest_component, min_size_mm3)
    from medseg.io.readers import label_dtype

    codes = {"nifti_codes": image.meta["nifti_codes"]} if "nifti_codes" in image.meta else {}
    out = Image(lab.astype(label_dtype(max(plan.labels)), copy=False), image.affine.copy(),
                {"source": image.meta.get("source"), "labels": plan.labels, **codes})
    pimg = Image(prob, image.affine.copy(), dict(codes), True) if prob is not None else None
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
