"""Network construction shared by the semantic pipeline and the cell pipeline (one model code)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from medseg.errors import InputError


def dynunet_strides(patch_size: Sequence[int], spacing: Sequence[float] | None = None,
                    min_size: int = 4, max_levels: int = 6) -> tuple[list, list]:
    """Kernel sizes and strides for a DynUNet, nnU-Net style: halve each axis while it stays >= ``min_size``
    and (if ``spacing`` is given) while it is not much coarser than the finest axis.

    Examples
    --------
    >>> k, s = dynunet_strides([32, 48, 32])
    >>> s[0], len(s)
    ([1, 1, 1], 4)
    """
    size = list(patch_size)
    sp = list(spacing) if spacing is not None else [1.0] * len(size)
    kernels, strides = [[3] * len(size)], [[1] * len(size)]
    for _ in range(max_levels - 1):
        fine = min(sp)
        stride = [2 if (s // 2 >= min_size and sp_i <= 2 * fine) else 1 for s, sp_i in zip(size, sp)]
        if all(st == 1 for st in stride):
            break
        kernels.append([3 if (sp_i <= 2 * fine) else 1 for sp_i in sp])
        strides.append(stride)
        size = [s // st for s, st in zip(size, stride)]
        sp = [s * st for s, st in zip(sp, stride)]
    return kernels, strides


def _divisors(size: list[int], spacing) -> tuple[int, list[int]]:
    """The number of down-samplings :func:`dynunet_strides` gives a patch, and what each axis must be a multiple of."""
    _, strides = dynunet_strides(size, spacing)
    return len(strides) - 1, [math.prod(st[i] for st in strides) for i in range(len(size))]


def check_patch(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> None:
    """``InputError`` unless a DynUNet sized by :func:`dynunet_strides` runs on ``patch_size``.

    DynUNet needs at least two down-samplings, and each must halve an even size (its up-sampling doubles
    ``ceil(s / 2)``, so an odd size fails at the skip connection): a one-line error for a patch that breaks either,
    instead of MONAI's ValueError or a tensor-size crash in the first training iteration.

    Examples
    --------
    >>> check_patch([40, 56, 40])
    >>> check_patch([36, 36, 36])
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: patch_size [36, 36, 36] does not fit the network's 3 down-samplings: each entry must be a multiple of [8, 8, 8] (e.g. [40, 40, 40])
    """
    size = [int(p) for p in patch_size]
    levels, div = _divisors(size, spacing)
    if levels < 2:
        raise InputError(f"patch_size {size} is too small: the network needs two down-samplings and this patch "
                         f"allows {levels} (use 16 or more voxels along the finest axes)")
    if any(p % d for p, d in zip(size, div)):
        raise InputError(f"patch_size {size} does not fit the network's {levels} down-samplings: each entry "
                         f"must be a multiple of {div} (e.g. {divisible_patch(size, spacing)})")


def divisible_patch(patch_size: Sequence[int], spacing: Sequence[float] | None = None,
                    down: bool = False) -> list[int]:
    """``patch_size`` rounded up (or ``down``) until the strides :func:`dynunet_strides` gives it divide it (a patch
    the network runs on; rounding once is not enough: a larger patch can get another down-sampling level).

    Examples
    --------
    >>> divisible_patch([200, 200, 30])  # once: [208, 208, 32], whose strides (32, 32, 8) no longer divide it
    [224, 224, 32]
    >>> divisible_patch([16, 40, 88], down=True)  # 88 halves to an odd 11 on its fourth level
    [16, 40, 80]
    """
    size = [int(p) for p in patch_size]
    while True:  # ends: up, the levels (so the divisors) are bounded by max_levels; down, sizes only shrink
        div = _divisors(size, spacing)[1]
        new = [max(p // d, 1) * d if down else math.ceil(p / d) * d for p, d in zip(size, div)]
        if new == size:
            return size
        size = new


def build_network(spatial_dims: int, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  spacing: Sequence[float] | None = None, base_filters: int = 32, max_filters: int = 320,
                  deep_supervision: bool = False, norm: str = "instance",
                  residual: bool = False) -> torch.nn.Module:
    """A MONAI DynUNet sized from the patch (and spacing), as used by both pipelines; ``InputError`` for a patch
    it cannot run on (:func:`check_patch`).

    Examples
    --------
    >>> net = build_network(2, 1, 3, [64, 64], base_filters=8)
    >>> net(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """
    from monai.networks.nets import DynUNet

    check_patch(patch_size, spacing)
    kernels, strides = dynunet_strides(patch_size, spacing)
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return DynUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:], filters=filters,
        norm_name=norm, deep_supervision=deep_supervision, deep_supr_num=max(1, min(2, len(strides) - 2)),
        res_block=residual,
    )
