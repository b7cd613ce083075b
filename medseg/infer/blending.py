"""Gaussian blending of overlapping windows: the window weights and the slab that accumulates them.

The weights are MONAI's / nnU-Net's (:func:`gaussian_importance_map`). :class:`Slab` holds the weighted logits
and the weight sum of the planes one window deep along the last axis, the only ones that windows still to come
can touch, so that :func:`medseg.infer.sliding_window.sliding_window_predict` never holds the whole volume.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["Slab", "gaussian_importance_map", "make_slab"]


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 0.125, min_weight: float = 1e-3,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Separable Gaussian window weights, the convention of MONAI (``mode="gaussian"``) and nnU-Net.

    sigma = ``sigma_scale`` x patch size per axis (1/8 of the patch, as in nnU-Net and MONAI's default), centred
    on the patch centre, peak 1, clamped below at ``min_weight`` so that border voxels still get some weight.

    Examples
    --------
    >>> w = gaussian_importance_map([5, 5])
    >>> w.shape, float(w[2, 2]), bool(w[0, 0] < w[1, 1])
    (torch.Size([5, 5]), 1.0, True)
    """
    w = None
    for size in patch_size:
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        g = torch.exp(x**2 / (-2 * (size * sigma_scale) ** 2))
        w = g if w is None else w.unsqueeze(-1) * g
    return torch.clamp(w, min=max(float(w.min()), min_weight))


class Slab:
    """Accumulator for the planes [base, base + depth) of the last axis: weighted logits and weight sum.

    A ring buffer over the last axis (plane z lives at z % depth), so that moving on copies nothing: every
    window starts at ``base`` when it is added (windows come in order of their start along the last axis and
    the planes before it have been popped), and popped planes are read in blocks of a few planes.

    Examples
    --------
    >>> slab = Slab(1, (2, 4), 2, torch.float32, torch.device("cpu"))  # 1 class, a 2 x 4 image, windows 2 deep
    >>> slab.add(torch.full((1, 2, 2), 3.0), torch.ones(2, 2), (0, 0))
    >>> [block[0, 0].tolist() for block in slab.pop(2)], slab.base
    ([[3.0, 3.0]], 2)
    """

    BLOCK = 16  # planes per popped block at most: bounds the float32 temporaries of a pop (and of softmax after it)
    BLOCK_BYTES = 128 * 2**20  # ... and fewer planes when a block of all classes would exceed this (and the
    # classes of a window are added this many float32 bytes at a time)

    def __init__(self, classes: int, size: Sequence[int], depth: int, dtype: torch.dtype, device: torch.device):
        self.acc = torch.zeros((classes, *size[:-1], depth), dtype=dtype, device=device)
        self.wsum = torch.zeros((*size[:-1], depth), dtype=torch.float32, device=device)
        self.base = 0

    def add(self, logits: torch.Tensor, weight: torch.Tensor, starts: Sequence[int],
            shift: torch.Tensor | None = None) -> None:
        """Add one window's ``logits`` (classes, *window) times ``weight`` (*window) at ``starts``; the window
        must start at :attr:`base` along the last axis. ``shift`` (*window), if given, is subtracted from every
        class's logits first (in float32, before the product is rounded to the slab's dtype)."""
        depth = self.acc.shape[-1]
        assert starts[-1] == self.base and logits.shape[-1] == depth
        idx = tuple(slice(s, s + n) for s, n in zip(starts[:-1], logits.shape[1:-1]))
        r = self.base % depth
        # a few classes at a time: where logits (bf16) or the slab (float16) are not float32, the multiply-add
        # makes float32 copies of its operands, ~1 GB each for a hundred classes' 128³ window
        step = max(1, self.BLOCK_BYTES // (4 * logits[0].numel()))
        for ring, win in ((slice(r, depth), slice(0, depth - r)), (slice(0, r), slice(depth - r, depth))):
            if ring.stop > ring.start:
                w = weight[..., win]
                for c in range(0, logits.shape[0], step):
                    part = logits[c: c + step, ..., win]
                    if shift is not None:
                        part = part.float() - shift[..., win]
                    self.acc[(slice(c, c + step),) + idx + (ring,)].addcmul_(part, w)
                self.wsum[idx + (ring,)] += w

    def pop(self, n: int):
        """Blended logits (float32) of the next ``n`` planes, as blocks of at most ``BLOCK`` planes in order;
        the slab then moves ``n`` planes on."""
        depth = self.acc.shape[-1]
        end = self.base + n
        block = max(1, min(self.BLOCK, self.BLOCK_BYTES // (4 * self.acc[..., 0].numel())))
        while self.base < end:
            r = self.base % depth
            k = min(end - self.base, depth - r, block)
            ring = slice(r, r + k)
            out = self.acc[..., ring].float() / self.wsum[..., ring]
            self.acc[..., ring] = 0
            self.wsum[..., ring] = 0
            self.base += k
            yield out


def make_slab(classes: int, size: Sequence[int], depth: int, dtype: torch.dtype | None, budget: float,
              dev: torch.device, stitch_device) -> Slab:
    """The slab for a ``size`` volume of ``classes`` and windows ``depth`` deep: float32 unless that exceeds
    ``budget`` bytes (then float16), on ``dev`` when ``stitch_device`` is ``"auto"`` and it fits in a quarter of
    that GPU's free memory, else on the CPU.

    Parameters
    ----------
    classes : int
        Output channels of the network.
    size : sequence of int
        Spatial shape of the (padded) volume; the slab holds ``size[:-1]`` x ``depth`` voxels per class.
    depth : int
        Window size along the last axis.
    dtype : torch.dtype or None
        Accumulator dtype; None chooses float32 or float16 by ``budget``.
    budget : float
        Bytes a float32 slab may take.
    dev : torch.device
        The network's device.
    stitch_device : "auto", "cpu", "cuda" or torch.device
        Where the slab lives (``"auto"``: as above).

    Returns
    -------
    Slab

    Examples
    --------
    >>> cpu = torch.device("cpu")
    >>> make_slab(2, (4, 6), 3, None, 2**20, cpu, "auto").acc.shape  # 2 classes x 4 x 3 planes
    torch.Size([2, 4, 3])
    >>> make_slab(2, (4, 6), 3, None, 90, cpu, "auto").acc.dtype  # 24 voxels x 4 bytes > 90
    torch.float16
    """
    voxels = classes * math.prod(size[:-1]) * depth
    if dtype is None:
        dtype = torch.float32 if voxels * 4 <= budget else torch.float16
    sdev = stitch_device
    if str(sdev) == "auto":
        sdev = "cpu"
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            if voxels * torch.finfo(dtype).bits // 8 < free / 4:
                sdev = dev
    return Slab(classes, size, depth, dtype, torch.device(sdev))
