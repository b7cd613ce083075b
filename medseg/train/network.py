"""Network construction shared by the semantic pipeline and the cell pipeline (one model code)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from medseg.errors import InputError


RULES = ("finest", "nnunet")


def dynunet_strides(patch_size: Sequence[int], spacing: Sequence[float] | None = None,
                    min_size: int = 4, max_levels: int = 6, rule: str = "finest") -> tuple[list, list]:
    """Kernel sizes and strides for a DynUNet, one list per level: each axis halved while it stays >= ``min_size``
    and (if ``spacing`` is given) while it is not much coarser than the finest axis, at most ``max_levels - 1``
    times.

    ``rule="nnunet"``: nnU-Net v2's (``get_pool_and_conv_props``): the finest of the axes that can still be
    halved, axes less than twice as coarse, one axis alone only while it is >= 3 ``min_size``, and a 3-kernel
    along an axis from the level its spacing comes within twice the finest on. It is what
    :func:`medseg.plan.planner.make_plan` records in a plan. ``rule="finest"``: the finest of all axes, the rule of
    plans that record no strides and of the cell networks, whose saved models are built by it; there a thin axis
    that stops early holds the others back.

    Examples
    --------
    >>> k, s = dynunet_strides([32, 48, 32])
    >>> s[0], len(s)
    ([1, 1, 1], 4)
    >>> len(dynunet_strides([328, 328, 8], [1.0] * 3)[1]) - 1  # down-samplings: the 8 slices hold the rest back
    3
    >>> len(dynunet_strides([320, 320, 8], [1.0] * 3, rule="nnunet")[1]) - 1
    5
    """
    if rule not in RULES:
        raise ValueError(f"dynunet_strides: rule must be one of {RULES}, got {rule!r}")
    sp = [float(x) for x in spacing] if spacing is not None else [1.0] * len(patch_size)
    levels = _nnunet_levels if rule == "nnunet" else _finest_levels
    return levels([int(p) for p in patch_size], sp, min_size, max_levels)


def _finest_levels(size: list[int], sp: list[float], min_size: int, max_levels: int) -> tuple[list, list]:
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


def _nnunet_levels(size: list[int], sp: list[float], min_size: int, max_levels: int) -> tuple[list, list]:
    d = len(size)
    kernel, kernels, strides = [1] * d, [], [[1] * d]
    while len(strides) < max_levels:
        halvable = [i for i in range(d) if size[i] >= 2 * min_size]
        if not halvable:
            break
        fine = min(sp[i] for i in halvable)
        axes = [i for i in halvable if sp[i] / fine < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * min_size:  # one axis alone: not down to a sliver
            break
        # a 3-kernel from the level an axis's spacing is within twice the finest on, kept from then on
        kernel = [3 if k == 3 or sp[i] / min(sp) < 2 else 1 for i, k in enumerate(kernel)]
        kernels.append(kernel)
        strides.append([2 if i in axes else 1 for i in range(d)])
        size = [-(-s // 2) if i in axes else s for i, s in enumerate(size)]
        sp = [x * 2 if i in axes else x for i, x in enumerate(sp)]
    return kernels + [[3] * d], strides


def _divisors(size: list[int], spacing, rule: str = "finest") -> tuple[int, list[int]]:
    """The number of down-samplings :func:`dynunet_strides` gives a patch, and what each axis must be a multiple of."""
    _, strides = dynunet_strides(size, spacing, rule=rule)
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


def check_strides(patch_size: Sequence[int], kernel_sizes: Sequence[Sequence[int]],
                  strides: Sequence[Sequence[int]]) -> None:
    """``InputError`` unless a DynUNet with these kernel sizes and strides (one list per level, one entry per axis,
    as a plan records them) runs on ``patch_size``: the first level keeps full resolution, at least two levels
    down-sample, kernels are odd, and each axis is a multiple of the product of its strides.

    Examples
    --------
    >>> check_strides([40, 56, 40], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
    >>> check_strides([36, 36, 36], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
    Traceback (most recent call last):
    ...
    medseg.errors.InputError: patch_size [36, 36, 36] does not fit the strides: each entry must be a multiple of [8, 8, 8] (e.g. [40, 40, 40])
    """
    size, d = [int(p) for p in patch_size], len(patch_size)
    if len(kernel_sizes) != len(strides):
        raise InputError(f"kernel_sizes has {len(kernel_sizes)} levels and strides {len(strides)}: one of each per "
                         "level")
    for name, levels in (("kernel_sizes", kernel_sizes), ("strides", strides)):
        if any(len(level) != d for level in levels):
            raise InputError(f"{name} {[list(v) for v in levels]}: every level needs {d} entries, one per axis of "
                             f"patch_size {size}")
    if any(k < 1 or k % 2 == 0 for level in kernel_sizes for k in level):
        raise InputError(f"kernel_sizes {[list(v) for v in kernel_sizes]}: each must be odd (1, 3, 5, ...)")
    if list(strides[0]) != [1] * d or any(s < 1 for level in strides for s in level):
        raise InputError(f"strides {[list(v) for v in strides]}: the first level must be {[1] * d} (full "
                         "resolution) and every stride >= 1")
    levels = sum(any(s > 1 for s in level) for level in strides)
    if levels < 2:
        raise InputError(f"strides {[list(v) for v in strides]} down-sample {levels} times: the network needs two")
    div = [math.prod(level[i] for level in strides) for i in range(d)]
    if any(p % q for p, q in zip(size, div)):
        example = [max(p // q, 1) * q if p % q < q / 2 else (p // q + 1) * q for p, q in zip(size, div)]
        raise InputError(f"patch_size {size} does not fit the strides: each entry must be a multiple of {div} "
                         f"(e.g. {example})")


def divisible_patch(patch_size: Sequence[int], spacing: Sequence[float] | None = None,
                    down: bool = False, rule: str = "finest") -> list[int]:
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
        div = _divisors(size, spacing, rule)[1]
        new = [max(p // d, 1) * d if down else math.ceil(p / d) * d for p, d in zip(size, div)]
        if new == size:
            return size
        size = new


def build_network(spatial_dims: int, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  spacing: Sequence[float] | None = None, base_filters: int = 32, max_filters: int = 320,
                  deep_supervision: bool = False, norm: str = "instance", residual: bool = False,
                  kernel_sizes: Sequence[Sequence[int]] | None = None,
                  strides: Sequence[Sequence[int]] | None = None) -> torch.nn.Module:
    """A MONAI DynUNet with the given ``kernel_sizes`` and ``strides`` (one list per level), else those
    :func:`dynunet_strides` sizes from the patch (and spacing), as used by both pipelines; ``InputError`` for a
    patch it cannot run on (:func:`check_patch`, :func:`check_strides`).

    Examples
    --------
    >>> net = build_network(2, 1, 3, [64, 64], base_filters=8)
    >>> net(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    >>> net = build_network(2, 1, 3, [64, 16], base_filters=8, kernel_sizes=[[3, 3]] * 3,
    ...                     strides=[[1, 1], [2, 2], [2, 1]])
    >>> net(torch.zeros(1, 1, 64, 16)).shape
    torch.Size([1, 3, 64, 16])
    """
    from monai.networks.nets import DynUNet

    if (kernel_sizes is None) != (strides is None):
        raise ValueError("build_network: give both kernel_sizes and strides, or neither")
    if strides is None:
        check_patch(patch_size, spacing)
        kernel_sizes, strides = dynunet_strides(patch_size, spacing)
    else:
        check_strides(patch_size, kernel_sizes, strides)
    kernels, strides = [list(k) for k in kernel_sizes], [list(s) for s in strides]
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return DynUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:], filters=filters,
        norm_name=norm, deep_supervision=deep_supervision, deep_supr_num=max(1, min(2, len(strides) - 2)),
        res_block=residual,
    )
