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

    Parameters
    ----------
    array : ndarray
        ``(C, *S)`` image, C the plan's channels.
    plan : Plan
        Its ``normalisation``, one per channel: ``zscore`` (this array's mean and std), ``ct`` (clip, then the
        dataset's mean and std) or ``none``.
    mask : ndarray of bool, optional
        ``zscore``: the voxels whose statistics are used (all of them when None or all False).

    Returns
    -------
    ndarray of float32
        Same shape as ``array``.

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
            mean, std = mean_std(x[mask] if mask is not None and mask.any() else x)
            std = max(std, 1e-8)
        else:
            continue
        x -= np.float32(mean)
        x /= np.float32(std)
    return out


def mean_std(x: np.ndarray, chunk: int = 1 << 22) -> tuple[float, float]:
    """Mean and standard deviation of ``x``, accumulated in float64 over slabs of ``chunk`` values.

    float32 sums of squares overflow beyond about 1e19 (the whole image then normalised to zeros and the prediction
    was all background, silently), and a float64 copy of a large CT would double its memory.

    Examples
    --------
    >>> x = np.array([1e30, 3e30], np.float32)
    >>> float(x.std()), [f"{v:.3g}" for v in mean_std(x)]
    (inf, ['2e+30', '1e+30'])
    """
    flat = x.reshape(-1)
    total = sum(float(flat[s:s + chunk].sum(dtype=np.float64)) for s in range(0, flat.size, chunk))
    mean = total / max(flat.size, 1)
    sq = sum(float(np.square(flat[s:s + chunk].astype(np.float64) - mean).sum()) for s in range(0, flat.size, chunk))
    return mean, float(np.sqrt(sq / max(flat.size, 1)))


def network_shape(shape, spacing, plan: Plan) -> tuple[int, ...]:
    """Shape of the volume on the plan's grid (the through-plane axis of 2D plans is kept).

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the volume.
    spacing : sequence of float
        Its voxel size (mm).
    plan : Plan
        ``target_spacing`` and ``spatial_dims``.

    Returns
    -------
    tuple of int
        ``round(shape * spacing / target_spacing)``, at least 1 per axis; 2D plans keep the slice axis
        (:func:`slice_axis`) as it is.

    Examples
    --------
    >>> network_shape((10, 20, 20), (2.0, 0.5, 0.5), Plan())  # to 1 mm
    (20, 10, 10)
    >>> network_shape((10, 20, 20), (5.0, 0.5, 0.5), Plan(spatial_dims=2, patch_size=[64, 64]))
    (10, 10, 10)
    """
    target = np.asarray(plan.target_spacing, float)
    new = np.maximum(1, np.round(np.asarray(shape) * np.asarray(spacing) / target)).astype(int)
    if plan.spatial_dims == 2:
        ax = plan.slice_axis
        new[ax] = shape[ax]
    return tuple(int(s) for s in new)


def resize(t: torch.Tensor, shape, mode: str = "trilinear") -> torch.Tensor:
    """Resize a (C, *spatial) tensor to ``shape``; no-op if it already has it. ``mode='nearest'`` for labels.

    Parameters
    ----------
    t : torch.Tensor
        ``(C, *spatial)``, 2 or 3 spatial axes.
    shape : sequence of int
        The new spatial shape.
    mode : str
        ``"nearest"`` (PyTorch's ``nearest-exact``, dtype kept), else linear (bi- or trilinear,
        ``align_corners=False``, float result).

    Returns
    -------
    torch.Tensor
        ``(C, *shape)``; ``t`` itself when it already has that shape.

    Examples
    --------
    >>> resize(torch.tensor([[[0, 1], [2, 3]]]), (4, 4), mode="nearest")[0].tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    >>> resize(torch.rand(2, 4, 4, 4), (8, 4, 2)).shape
    torch.Size([2, 8, 4, 2])
    """
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    m = "nearest-exact" if mode == "nearest" else ("bilinear" if len(shape) == 2 else "trilinear")
    kw = {} if m == "nearest-exact" else {"align_corners": False}
    src = t.float() if m != "nearest-exact" or not t.is_floating_point() else t
    out = F.interpolate(src[None], size=tuple(int(s) for s in shape), mode=m, **kw)[0]
    return out.to(t.dtype) if m == "nearest-exact" else out


def preprocess(array: np.ndarray, spacing, plan: Plan, label: np.ndarray | None = None):
    """Normalise and resample a channels-first image (and optionally its label) to the plan's grid.

    Parameters
    ----------
    array : ndarray
        ``(C, *S)`` image.
    spacing : sequence of float
        Its voxel size (mm).
    plan : Plan
        Normalisation and grid (:func:`normalise`, :func:`network_shape`).
    label : ndarray of int, optional
        ``(*S)`` label map, resized by nearest neighbour (a new voxel centre exactly between two old ones, as at
        2x downsampling, takes the higher-index one: the label moves half an old voxel, the image does not).

    Returns
    -------
    image : torch.Tensor
        float32 ``(C, *network_shape)``.
    label : torch.Tensor or None
        int16 ``(*network_shape)``.

    Examples
    --------
    >>> x, y = preprocess(np.random.rand(1, 4, 4, 4), (2.0, 1.0, 1.0), Plan(), np.ones((4, 4, 4), np.uint8))
    >>> x.shape, y.shape, y.dtype
    (torch.Size([1, 8, 4, 4]), torch.Size([8, 4, 4]), torch.int16)
    """
    x = torch.from_numpy(normalise(array, plan))
    shape = network_shape(array.shape[1:], spacing, plan)
    x = resize(x, shape)
    y = None
    if label is not None:
        y = resize(torch.from_numpy(np.asarray(label, np.int16))[None], shape, mode="nearest")[0]
    return x.contiguous(), y
