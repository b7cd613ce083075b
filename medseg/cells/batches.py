"""Training batches and the loss of the cell model (:func:`medseg.cells.train.train_cells`): random crops of the
training pairs (:mod:`medseg.cells.pairs`), augmented and optionally zoomed, with their 3-class, distance, contact
weight and offset targets; Dice + cross-entropy on the classes plus the distance and offset heads' losses.
"""

from __future__ import annotations

import numpy as np

from medseg.cells.config import CellTrainConfig


def cell_loss(out, target, dice_fn, distance=None, contact=None, distance_weight: float = 1.0, offsets=None,
              offset_weight: float = 1.0):
    """Dice + cross-entropy on the 3 classes (MONAI's DiceCELoss when ``contact`` is None; otherwise each pixel's
    cross-entropy is weighted by ``1 + contact``), plus the distance head's MSE and the offset head's L1 on
    nucleus pixels (``offsets`` already in the head's units; the last channels of ``out``)."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(out[:, :3], target[:, 0], reduction="none")
    ce = ce.mean() if contact is None else (ce * (1.0 + contact[:, 0])).mean()
    loss = dice_fn(out[:, :3], target) + ce
    if distance is not None:
        loss = loss + distance_weight * F.mse_loss(F.sigmoid(out[:, 3:4]), distance)
    if offsets is not None:
        fg = (target > 0).to(out.dtype)  # (B, 1, ...): offsets are defined on nuclei only
        err = (out[:, -offsets.shape[1]:] - offsets).abs().sum(1, keepdim=True)
        loss = loss + offset_weight * (err * fg).sum() / torch.clamp(fg.sum(), min=1.0)
    return loss


def training_batch(pairs, cfg: CellTrainConfig, rng):
    """One training batch: images, 3-class targets, and the distance, contact-weight and offset targets (each
    None when the run has none)."""
    from medseg.cells.augment import augment, zoom_crop
    from medseg.cells.targets import boundary_targets

    xs, ys, ds, ws, os_ = [], [], [], [], []
    for _ in range(cfg.batch_size):
        img, tgt, dist, weight, offsets, labels = pairs[int(rng.integers(len(pairs)))]
        maps = tuple(m for m in (dist, weight) if m is not None)
        if cfg.scale_range and rng.random() < cfg.scale_prob:
            # the distance, weight and offset maps were computed on the whole image (nuclei cut by the crop keep
            # their true centres) and are resized; the 1-pixel boundary class is redrawn at the new scale
            img, labels, *rest = zoom_crop(img, labels, cfg.patch_size, rng, tuple(cfg.scale_range), extra=maps,
                                           vectors=offsets or ())
            if dist is not None:  # the linear resize blurs it one pixel past the nuclei
                rest[0] = rest[0] * (labels > 0)
            n = len(maps)
            tgt = boundary_targets(labels, cfg.contact_boundary, cfg.boundary_width)
            maps, offsets = tuple(rest[:n]), tuple(rest[n:]) or None
        x, y, *e = augment(img, tgt, cfg.patch_size, rng, extra=maps, vectors=offsets or (),
                           p_low_light=cfg.low_light_prob)
        xs.append(x[None])
        ys.append(y[None])
        if dist is not None:
            ds.append(e.pop(0)[None])
        if weight is not None:
            ws.append(e.pop(0)[None])  # crops padded with 0: weight 1 there
        if offsets is not None:
            os_.append(np.stack(e))
    d = np.stack(ds).astype(np.float32) if ds else None
    w = np.stack(ws).astype(np.float32) if ws else None
    o = np.stack(os_).astype(np.float32) if os_ else None
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64), d, w, o
