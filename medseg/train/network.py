"""Network construction shared by the semantic pipeline and the cell pipeline (one model code)."""

from __future__ import annotations

from typing import Sequence

import torch


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


def build_network(spatial_dims: int, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  spacing: Sequence[float] | None = None, base_filters: int = 32, max_filters: int = 320,
                  deep_supervision: bool = False, norm: str = "instance",
                  residual: bool = False) -> torch.nn.Module:
    """A MONAI DynUNet sized from the patch (and spacing), as used by both pipelines.

    Examples
    --------
    >>> net = build_network(2, 1, 3, [64, 64], base_filters=8)
    >>> net(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 3, 64, 64])
    """
    from monai.networks.nets import DynUNet

    kernels, strides = dynunet_strides(patch_size, spacing)
    filters = [min(base_filters * 2**i, max_filters) for i in range(len(strides))]
    return DynUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:], filters=filters,
        norm_name=norm, deep_supervision=deep_supervision, deep_supr_num=max(1, min(2, len(strides) - 2)),
        res_block=residual,
    )
