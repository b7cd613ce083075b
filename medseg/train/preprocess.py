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
        dataset's mean and std), ``none``, ``rescale_to_0_1`` (this array's minimum to 0, maximum to 1) or
        ``rgb_to_0_1`` (divided by 255).
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
        src, clip = array[c], None
        if norm.scheme == "ct":
            clip, mean, std = norm.clip, norm.mean, norm.std
        elif norm.scheme == "zscore":
            mean, std = mean_std(src[mask] if mask is not None and mask.any() else src)
            std = std if std > 0 else 1.0  # a constant image becomes 0; any spread, however small, is kept
        elif norm.scheme == "rescale_to_0_1":  # as nnU-Net: a constant image becomes 0
            mean = float(src.min()) if src.size else 0.0
            std = float(src.max()) - mean if src.size else 1.0
            std = std if std > 0 else 1.0
        elif norm.scheme == "rgb_to_0_1":
            mean, std = 0.0, 255.0
        else:
            out[c] = src
            continue
        _affine_into(out[c], src, mean, std, clip)
    return out


def _affine_into(dst: np.ndarray, src: np.ndarray, mean: float, std: float, clip=None, chunk: int = 1 << 22) -> None:
    """``dst[...] = (clip(src) - mean) / std`` computed in float64 over slabs of ``chunk`` values, rounded once to
    ``dst``'s float32 at the end.

    In float32 an image shifted by 1e9 (or float64 values beyond 3.4e38, cast to inf) lost its detail before the
    mean was taken off. One float64 slab at a time keeps memory flat; it costs about 10 ns a voxel more than
    float32 in place (0.1 s on 13 M voxels, 1 CPU thread).
    """
    flat_src, flat_dst = src.reshape(-1), dst.reshape(-1)
    buf = np.empty(min(chunk, flat_src.size), np.float64)  # one buffer: no allocation per slab
    for s in range(0, flat_src.size, chunk):
        v = buf[:flat_src[s:s + chunk].size]
        v[...] = flat_src[s:s + chunk]
        if clip is not None:
            np.clip(v, *clip, out=v)
        v -= mean
        np.divide(v, std, out=flat_dst[s:s + chunk], casting="same_kind")


def mean_std(x: np.ndarray, chunk: int = 1 << 22) -> tuple[float, float]:
    """Mean and standard deviation of ``x``, accumulated in float64 over slabs of ``chunk`` values.

    float32 sums of squares overflow beyond about 1e19 (the whole image then normalised to zeros and the prediction
    was all background, silently), and a float64 copy of a large CT would double its memory. The values are
    divided by a power of two near their largest magnitude first (exact), so that float64 squares of values near
    1e300 do not overflow nor those near 1e-300 underflow.

    Examples
    --------
    >>> x = np.array([1e30, 3e30], np.float32)
    >>> float(x.std()), [f"{v:.3g}" for v in mean_std(x)]
    (inf, ['2e+30', '1e+30'])
    >>> [f"{v:.3g}" for v in mean_std(np.array([1e300, 3e300]))]
    ['2e+300', '1e+300']
    """
    n = max(x.size, 1)
    top = max(abs(float(x.max())), abs(float(x.min()))) if x.size else 0.0
    scale = 2.0 ** int(np.frexp(top)[1]) if not 1e-100 < top < 1e100 and 0 < top < np.inf else 1.0
    mean = sum(float(v.sum()) for v in _slabs(x, chunk, scale)) / n
    sq = sum(float(np.square(v - mean).sum()) for v in _slabs(x, chunk, scale))
    return mean * scale, float(np.sqrt(sq / n)) * scale


def _slabs(x: np.ndarray, chunk: int, scale: float = 1.0):
    """``x``'s values divided by ``scale``, as float64 arrays of at most ``chunk`` values."""
    flat = x.reshape(-1)
    for s in range(0, flat.size, chunk):
        v = flat[s:s + chunk].astype(np.float64)
        if scale != 1.0:
            v /= scale
        yield v


def check_grid_fits(shape, spacing, plan: Plan, source=None) -> None:
    """``InputError`` when an image of ``shape`` ``(C, *S)`` and voxel size ``spacing``, resampled to the plan's
    spacing, cannot fit in memory: its float32 channels alone on that grid exceed what this process can allocate (a
    1e4 mm voxel size, or a plan's ``target_spacing`` of 1e-9 mm, made torch try to allocate petabytes).

    Counted in floats: :func:`network_shape`'s integers overflow for voxel sizes near 1e300.

    Examples
    --------
    >>> check_grid_fits((1, 10, 20, 20), (2.0, 0.5, 0.5), Plan())  # 20 x 10 x 10 voxels at 1 mm: fine
    >>> check_grid_fits((1, 10, 20, 20), (1e4, 1e4, 1e4), Plan(), "a.nii.gz")
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: a.nii.gz: voxel size 1e+04 x 1e+04 x 1e+04 mm, resampled to the model's 1 x 1 x 1 mm, ...
    """
    from medseg.errors import InputError
    from medseg.system import allocatable_memory

    target = np.asarray(plan.target_spacing, float)
    grid = np.maximum(1.0, np.round(np.asarray(shape[1:], float) * np.asarray(spacing, float) / target))
    if plan.spatial_dims == 2:
        grid[plan.slice_axis] = shape[1 + plan.slice_axis]
    need = 4.0 * shape[0] * float(np.prod(grid))
    if not need <= allocatable_memory():
        sp = " x ".join(f"{v:.4g}" for v in spacing)
        raise InputError(f"voxel size {sp} mm, resampled to the model's {' x '.join(f'{v:.4g}' for v in target)} mm, "
                         f"would be {float(np.prod(grid)):.3g} voxels ({need / 2**30:.3g} GiB), more than the memory "
                         "available; check the voxel size in its header and the plan's target_spacing", path=source)


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


def resize(t: torch.Tensor, shape) -> torch.Tensor:
    """Resize a (C, *spatial) image to ``shape`` linearly (bi- or trilinear, ``align_corners=False``); no-op if it
    already has it. Label maps: :func:`resize_labels`.

    Parameters
    ----------
    t : torch.Tensor
        ``(C, *spatial)``, 2 or 3 spatial axes.
    shape : sequence of int
        The new spatial shape.

    Returns
    -------
    torch.Tensor
        Float ``(C, *shape)``; ``t`` itself when it already has that shape.

    Examples
    --------
    >>> resize(torch.rand(2, 4, 4, 4), (8, 4, 2)).shape
    torch.Size([2, 8, 4, 2])
    """
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(t.float()[None], size=tuple(int(s) for s in shape), mode=mode, align_corners=False)[0]


def resize_labels(label: torch.Tensor, shape) -> torch.Tensor:
    """Resize an integer label map ``(*S)`` to ``shape`` as nnU-Net does: each class's mask is interpolated linearly
    (as :func:`resize`) and the class is set where it reaches 0.5, classes in increasing order.

    Nearest neighbour would move the label against the image: at an even downsampling factor every new voxel centre
    lies between two old ones and its ties all go one way, half an old voxel (0.4 mm on a 0.8 mm CT made 1.6 mm).
    Each class is interpolated over its bounding box only: 8.5x faster than over the whole volume, with equal
    labels, on TotalSegmentator's 41-class map (``benchmarks/label_resize.py``).

    Parameters
    ----------
    label : torch.Tensor
        ``(*S)`` integer label map, 2 or 3 axes; 0 is background.
    shape : sequence of int
        The new shape.

    Returns
    -------
    torch.Tensor
        ``(*shape)``, the dtype of ``label``; ``label`` itself when it already has that shape.

    Examples
    --------
    >>> resize_labels(torch.tensor([[0, 0, 1, 1, 1, 1]]), (1, 3)).tolist()  # nearest: [[0, 1, 1]]
    [[0, 1, 1]]
    >>> resize_labels(torch.tensor([[0, 1, 1, 0]]), (1, 2)).tolist()  # a tie keeps the class, on both sides
    [[1, 1]]
    """
    shape = tuple(int(s) for s in shape)
    if tuple(label.shape) == shape:
        return label
    from scipy import ndimage as ndi

    out = torch.zeros(shape, dtype=label.dtype)
    arr = label.numpy()
    if arr.min() < 0:
        raise ValueError("label values must be >= 0")
    for c, box in enumerate(ndi.find_objects(arr), start=1):  # one pass for every class's bounding box
        if box is not None:
            block, values = _interpolate_box(arr, c, box, shape)
            out[block][values >= 0.5] = c
    return out


def _interpolate_box(arr: np.ndarray, c: int, box: tuple, shape: tuple) -> tuple[tuple, torch.Tensor]:
    """Linear interpolation (``align_corners=False``, edges repeated) of ``arr == c`` onto ``shape``, computed only
    on the output voxels that the class's bounding box ``box`` reaches: (the slices of those voxels, their values)."""
    block, crop, steps = [], [], []
    for ax, (n_in, n_out) in enumerate(zip(arr.shape, shape)):
        u = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)  # float64: ties stay exact
        i0 = np.minimum(np.floor(u).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        sel = np.flatnonzero((i1 >= box[ax].start) & (i0 < box[ax].stop))  # the output voxels it reaches: a run
        o0, o1 = int(sel[0]), int(sel[-1]) + 1
        c0, c1 = int(i0[o0]), int(i1[o1 - 1]) + 1
        block.append(slice(o0, o1))
        crop.append(slice(c0, c1))
        steps.append((i0[o0:o1] - c0, i1[o0:o1] - c0, u[o0:o1] - i0[o0:o1]))
    a = torch.from_numpy(arr[tuple(crop)] == c).float()
    for ax, (j0, j1, w) in enumerate(steps):  # separable, as bi- and trilinear are
        view = [1] * a.ndim
        view[ax] = -1
        wt = torch.from_numpy(w.astype(np.float32)).reshape(view)
        a = a.index_select(ax, torch.from_numpy(j0)) * (1 - wt) + a.index_select(ax, torch.from_numpy(j1)) * wt
    return tuple(block), a


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
        ``(*S)`` label map, resized class by class (:func:`resize_labels`).

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
        y = resize_labels(torch.from_numpy(np.asarray(label, np.int16)), shape)
    return x.contiguous(), y
