"""Back to the input's grid plane by plane: class probabilities on the network's grid in, labels out.

Resizing every class's probabilities to full resolution at once (``F.interpolate`` on the whole ``(K, *S)``
tensor) needs K float32 volumes of the input's size, plus the source: over 5 GB for 3 classes on a 512x512x800
CT, about 90 GB for 105 classes. Linear interpolation is separable, so the same values are computed one output
plane (last axis) at a time from the two source planes around it, each resized in-plane once; only the argmax
is kept. The sliding window hands its output over in plane order (``sink``), so neither the network-grid nor
the full-resolution probabilities are ever held whole.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PlaneResampler"]

BLOCK = 16  # planes per argmax on an identical grid: bounds its int64 temporary for callers passing whole volumes


class PlaneResampler:
    """Receives class probabilities on a source grid in plane order and keeps their argmax on ``shape``.

    The values are those of ``F.interpolate(probs[None], shape, mode="trilinear", align_corners=False)``
    (bilinear for 2D), computed one output plane along the last axis at a time: each source plane is resized
    in-plane once and the two around an output plane are blended linearly. Ties go to the lower class.

    Parameters
    ----------
    source_shape : sequence of int
        Spatial shape of the probabilities handed to :meth:`add`.
    shape : sequence of int
        Spatial shape of the output (same number of axes).
    classes : int
        Number of classes (channels of the probabilities).
    keep_probabilities : bool
        Also keep the resized probabilities, ``(classes, *shape)`` float32 (as large as that sounds).

    Examples
    --------
    >>> p = torch.tensor([[[0.9, 0.2]], [[0.1, 0.8]]])  # 2 classes on a 1 x 2 grid
    >>> r = PlaneResampler((1, 2), (1, 4), classes=2)
    >>> r.add(p, 0)
    >>> r.labels.tolist(), r.finished
    ([[0, 0, 1, 1]], True)
    """

    def __init__(self, source_shape: Sequence[int], shape: Sequence[int], classes: int,
                 keep_probabilities: bool = False):
        self.source_shape = tuple(int(s) for s in source_shape)
        self.shape = tuple(int(s) for s in shape)
        if len(self.source_shape) != len(self.shape) or len(self.shape) not in (2, 3):
            raise ValueError(f"cannot resample {self.source_shape} to {self.shape}")
        n_src, n_out = self.source_shape[-1], self.shape[-1]
        # PyTorch's source coordinate for align_corners=False, clamped at 0 as it does
        pos = np.maximum((np.arange(n_out) + 0.5) * (n_src / n_out) - 0.5, 0.0)
        self._i0 = np.minimum(np.floor(pos).astype(np.int64), n_src - 1)
        self._i1 = np.minimum(self._i0 + 1, n_src - 1)
        self._w1 = (pos - self._i0).astype(np.float32)
        self.labels = np.zeros(self.shape, np.uint8 if classes <= 256 else np.int32)
        self.probabilities = np.zeros((classes, *self.shape), np.float32) if keep_probabilities else None
        self._next = 0  # next output plane
        self._cache: dict[int, torch.Tensor] = {}  # source plane -> resized in-plane
        self._tail: tuple[int, torch.Tensor] | None = None  # the previous chunk's last source plane

    @property
    def finished(self) -> bool:
        """Whether every output plane has been computed."""
        return self._next == self.shape[-1]

    def add(self, chunk: torch.Tensor, first: int) -> None:
        """Take the probabilities ``(classes, *source_shape[:-1], n)`` of source planes ``first .. first+n-1``
        (chunks must come in order) and compute every output plane they complete."""
        chunk = torch.as_tensor(chunk)
        end = first + chunk.shape[-1]
        if self.source_shape == self.shape:
            for a in range(first, end, BLOCK):  # the same grid: argmax in blocks
                b = min(a + BLOCK, end)
                part = chunk[..., a - first: b - first]
                self.labels[..., a:b] = part.argmax(0).numpy()
                if self.probabilities is not None:
                    self.probabilities[..., a:b] = part.float().numpy()
            self._next = end
            return
        while self._next < self.shape[-1] and self._i1[self._next] < end:
            j = self._next
            i0, i1, w = int(self._i0[j]), int(self._i1[j]), float(self._w1[j])
            for k in [k for k in self._cache if k < i0]:
                del self._cache[k]
            p = self._plane(i0, chunk, first)
            if i1 != i0 and w > 0:
                p = p * (1.0 - w) + self._plane(i1, chunk, first) * w
            self.labels[..., j] = p.argmax(0).numpy()
            if self.probabilities is not None:
                self.probabilities[..., j] = p.numpy()
            self._next += 1
        self._tail = (end - 1, chunk[..., -1].clone())

    def _plane(self, i: int, chunk: torch.Tensor, first: int) -> torch.Tensor:
        if i not in self._cache:
            if i >= first:
                raw = chunk[..., i - first]
            elif self._tail is not None and self._tail[0] == i:
                raw = self._tail[1]
            else:
                raise RuntimeError(f"source plane {i} was not kept (chunks out of order?)")
            raw = raw.float()
            if tuple(raw.shape[1:]) != self.shape[:-1]:
                mode = "linear" if raw.ndim == 2 else "bilinear"
                raw = F.interpolate(raw[None], size=self.shape[:-1], mode=mode, align_corners=False)[0]
            self._cache[i] = raw
        return self._cache[i]
