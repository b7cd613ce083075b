"""Preprocessing shared by training and prediction: normalise each channel, resample to the plan's spacing.

Resampling goes by *shape* (like nnU-Net): the network grid has ``round(shape * spacing / target)`` voxels and
predictions are resized back to exactly the input's shape, so the output keeps the input's affine unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medseg.plan.plan import Plan


def normalise(array: np.ndarray, plan: Plan, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise a channels-first array channel by channel as the plan says.

    Examples
    --------
    >>> from medseg.plan.plan import Plan
    >>> x = normalise(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2), Plan())
    >>> round(float(x.mean()), 6), round(float(x.std()), 6)
    (0.0, 1.0)
    """
    out = np.empty(array.shape, np.float32)
    for c, norm in enumerate(plan.normalisation):
        x = out[c]
        x[...] = array[c]  # in place from here on: no full-size temporaries on large CTs
        if norm.scheme == "ct":
            np.clip(x, *norm.clip, out=x)
            mean, std = norm.mean, norm.std
        elif norm.scheme == "zscore":
            sel = x[mask] if mask is not None and mask.any() else x
            mean, std = sel.mean(), max(float(sel.std()), 1e-8)
        else:
            continue
        x -= np.float32(mean)
        x /= np.float32(std)
    return out


def network_shape(shape, spacing, plan: Plan) -> tuple[int, ...]:
    """Shape of the volume on the plan's grid (the through-plane axis of 2D plans is kept)."""
    target = np.asarray(plan.target_spacing, float)
    new = np.maximum(1, np.round(np.asarray(shape) * np.asarray(spacing) / target)).astype(int)
    if plan.spatial_dims == 2:
        ax = slice_axis(spacing)
        new[ax] = shape[ax]
    return tuple(int(s) for s in new)


def slice_axis(spacing) -> int:
    """The coarsest axis (the slices of a 2D plan)."""
    return int(np.argmax(np.asarray(spacing)))


def resize(t: torch.Tensor, shape, mode: str = "trilinear") -> torch.Tensor:
    """Resize a (C, *spatial) tensor to ``shape``; no-op if it already has it. ``mode='nearest'`` for labels."""
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    m = "nearest-exact" if mode == "nearest" else ("bilinear" if len(shape) == 2 else "trilinear")
    kw = {} if m == "nearest-exact" else {"align_corners": False}
    src = t.float() if m != "nearest-exact" or not t.is_floating_point() else t
    out = F.interpolate(src[None], size=tuple(int(s) for s in shape), mode=m, **kw)[0]
    return out.to(t.dtype) if m == "nearest-exact" else out


def preprocess(array: np.ndarray, spacing, plan: Plan, label: np.ndarray | None = None):
    """Normalise and resample a channels-first image (and optionally its label) to the plan's grid.

    Returns ``(image_tensor, label_tensor_or_None)`` with shapes (C, *network_shape) and (*network_shape).
    """
    x = torch.from_numpy(normalise(array, plan))
    shape = network_shape(array.shape[1:], spacing, plan)
    x = resize(x, shape)
    y = None
    if label is not None:
        y = resize(torch.from_numpy(np.asarray(label, np.int16))[None], shape, mode="nearest")[0]
    return x.contiguous(), y
