"""The planner's cost model: memory and FLOPs of a training step of the planned DynUNet; the patch fitted to them."""

from __future__ import annotations

import numpy as np

from medseg.train.network import divisible_patch, dynunet_strides

# float32 maps per class and patch voxel that the output and the Dice+CE loss hold in a training step (logits and
# their gradient, softmax, one-hot, log-softmax, products); measured on CPU: about 7 in 3D, 5 in 2D. Ignoring them
# planned a 118-class CT 1.4-1.75 times over its memory budget.
CLASS_MAPS = 8
MIN_LEVELS = 2  # down-samplings DynUNet needs (medseg.train.network.check_patch)
MIN_AXIS = 16  # voxels along every axis that guarantee them (images smaller than the patch are padded when sampled)


def network_levels(patch, spacing=None) -> tuple[list, list]:
    """Kernel sizes and strides of the network a plan for ``patch`` records:
    :func:`medseg.train.network.dynunet_strides` by nnU-Net v2's rule.

    Examples
    --------
    >>> network_levels([320, 320, 8], [1.0, 1.0, 1.0])[1]  # the 8 slices halve once; the other axes go on
    [[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 1], [2, 2, 1], [2, 2, 1]]
    """
    return dynunet_strides(patch, spacing, rule="nnunet")


def estimate_cost(patch: list[int], base_filters: int, max_filters: int = 320, in_channels: int = 1,
                  num_classes: int = 2, spacing=None) -> tuple[float, float]:
    """(activation bytes per sample, training FLOPs per sample) of a DynUNet on ``patch``.

    Coarse but monotone: two 3^d convolutions per level in encoder and decoder; backward ≈ 2× forward;
    about 12 float32 activation maps of each level's size are kept for the backward pass, and ``CLASS_MAPS`` per
    class plus two per input channel at the patch's size. Level ``l`` has the size the strides of
    :func:`network_levels` leave (with ``spacing``: those of the network the plan builds, which does not down-sample
    a coarse axis at first) and ``min(base_filters * 2**l, max_filters)`` channels.

    Parameters
    ----------
    patch : list of int
        Patch size (2 or 3 axes).
    base_filters, max_filters : int
        Channels of the first level, and at most.
    in_channels, num_classes : int
        Input channels and output classes.
    spacing : sequence of float, optional
        Spacing of the patch's axes (mm), as the network is built with.

    Returns
    -------
    memory : float
        Activation bytes per sample.
    flops : float
        Training FLOPs (forward and backward) per sample.

    Examples
    --------
    Levels 8 x 8 (8 channels) and 4 x 4 (16): (64 x 8 + 16 x 16) x 12 x 4 bytes, and 64 x (2 x 8 + 2) x 4 for the
    output, the loss and the input:

    >>> estimate_cost([8, 8], 8)[0]
    41472.0
    >>> estimate_cost([32, 32, 16], 8, spacing=[1.0, 1.0, 3.0])[0] > estimate_cost([32, 32, 16], 8)[0]
    True
    """
    _, strides = network_levels(patch, spacing)
    d = len(patch)
    size = np.asarray(patch, float)
    mem = float(np.prod(size)) * (CLASS_MAPS * num_classes + 2 * in_channels) * 4
    flops = 0.0
    prev = in_channels
    for lvl, st in enumerate(strides):
        size = size / np.asarray(st)
        f = min(base_filters * 2 ** lvl, max_filters)
        vox = float(np.prod(size))
        conv = 2 * vox * (3 ** d) * (prev * f + f * f)
        flops += conv * (2 if lvl < len(strides) - 1 else 1)  # decoder mirrors all but the bottleneck
        mem += vox * f * 12 * 4
        prev = f
    return mem, 3 * flops


def down_samplings(patch, spacing) -> int:
    """How many times the network built for ``patch`` down-samples (:func:`network_levels`)."""
    return len(network_levels(patch, spacing)[1]) - 1


def fit_patch(median_shape, spacing, spatial_dims: int, memory_bytes: float, base_filters: int,
              batch_size: int, max_voxels: float | None = None, in_channels: int = 1,
              num_classes: int = 2) -> list[int]:
    """Patch = the median case shape, rounded up to the network's divisibility, shrunk (largest axis first,
    in mm) until activations of ``batch_size`` samples fit in ``memory_bytes`` and (optionally) ``max_voxels``.

    Parameters
    ----------
    median_shape : sequence of int
        Median case shape on the target grid.
    spacing : sequence of float
        Target spacing (mm); for 2D both are the in-plane entries only.
    spatial_dims : int
        2 or 3.
    memory_bytes, base_filters, batch_size
        Activation bytes a batch may take (:func:`estimate_cost`), first-level channels, samples per batch.
    max_voxels : float, optional
        Largest patch volume in voxels.
    in_channels, num_classes : int
        As :func:`estimate_cost`.

    Returns
    -------
    list of int
        Every axis at least 8; each shrink step is one divisibility unit of its axis, and axes tied for the
        largest extent (mm) shrink together (so the patch does not depend on the order of the axes). Always a patch
        the network runs on (two down-samplings): median shapes too small for one are grown to ``MIN_AXIS``, and
        shrinking stops before it; that last patch is returned when nothing smaller that runs fits.

    Examples
    --------
    30 voxels halve twice before they drop below 4, so the patch rounds up to a multiple of 4:

    >>> fit_patch([30, 30, 30], [1.0, 1.0, 1.0], 3, 1e12, 32, 2)
    [32, 32, 32]
    >>> fit_patch([30, 30, 30], [1.0, 1.0, 1.0], 3, 1e12, 32, 2, max_voxels=16 ** 3)
    [16, 16, 16]
    >>> fit_patch([6, 6, 6], [1.0, 1.0, 1.0], 3, 1e12, 32, 2)  # 8 voxels would down-sample once only
    [16, 16, 16]
    """
    shape, sp = [int(s) for s in median_shape], [float(s) for s in spacing]
    if len(shape) != spatial_dims or len(sp) != spatial_dims:  # a 2D caller must say which axes are in-plane
        raise ValueError(f"fit_patch: {spatial_dims}D needs {spatial_dims} sizes and spacings, got {shape}, {sp}")

    patch = divisible_patch([max(s, 8) for s in shape], sp, rule="nnunet")
    if down_samplings(patch, sp) < MIN_LEVELS:  # a tiny image: a patch the network runs on, padded when sampled
        patch = divisible_patch([max(s, MIN_AXIS) for s in patch], sp, rule="nnunet")
    last = patch
    for _ in range(100):
        # what is returned and checked is a patch the network runs on: a shrunk one may have lost its divisibility
        # (200x200x15 at 1x1x3 mm shrank to [144, 144, 16], whose strides need multiples of 32)
        fit = divisible_patch(patch, sp, rule="nnunet")
        if down_samplings(fit, sp) < MIN_LEVELS:
            break  # smaller than the network runs on: the last one that runs
        last = fit
        mem, _ = estimate_cost(fit, base_filters, in_channels=in_channels, num_classes=num_classes, spacing=sp)
        if mem * batch_size <= memory_bytes and (max_voxels is None or np.prod(fit) <= max_voxels):
            return fit
        mm = [p * s if p > 8 else 0 for p, s in zip(patch, sp)]
        if max(mm) == 0:
            break
        _, strides = network_levels(patch, sp)
        for i in [i for i, m in enumerate(mm) if np.isclose(m, max(mm))]:  # tied axes together: order-free
            step = int(np.prod([st[i] for st in strides]))
            patch[i] = max(8, patch[i] - max(step, 1))  # one divisibility unit at a time: always shrinks
    return last
