"""Losses (MONAI Dice+CE, Dice+focal, plain CE) and the small confusion-matrix Dice used for validation."""

from __future__ import annotations

import numpy as np
import torch

from medseg.plan.plan import Plan


class SegLoss(torch.nn.Module):
    """The plan's loss on logits (B, K, *S) and integer labels (B, *S); deep-supervision outputs
    (B, H, K, *S) are weighted 1, 1/2, 1/4, ... (normalised).

    The plan's ``class_weights`` (one per class, background included) weight every term of every loss: the
    per-class Dice terms (MONAI ``weight``), cross-entropy and focal. Move the module to the training device
    (``.to(device)``): the cross-entropy weights are a buffer on the CPU until then.

    Parameters
    ----------
    plan : Plan
        ``loss`` (``dice_ce``, ``dice_focal``, ``ce`` or ``dice``; Dice terms over the whole batch) and
        ``class_weights``.

    Examples
    --------
    Uniform logits over two classes cost ln 2 in cross-entropy, with or without deep-supervision heads:

    >>> loss = SegLoss(Plan(loss="ce"))
    >>> y = torch.tensor([[0, 1, 1, 0]])
    >>> round(float(loss(torch.zeros(1, 2, 4), y)), 4), round(float(loss(torch.zeros(1, 3, 2, 4), y)), 4)
    (0.6931, 0.6931)
    """

    def __init__(self, plan: Plan):
        super().__init__()
        from monai.losses import DiceCELoss, DiceLoss, FocalLoss

        w = torch.tensor(plan.class_weights, dtype=torch.float32) if plan.class_weights else None
        self.kind = plan.loss
        if plan.loss == "dice_ce":
            self.fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=w)
        elif plan.loss == "dice_focal":
            # not MONAI's DiceFocalLoss: it builds its FocalLoss without use_softmax, i.e. a sigmoid (one vs rest)
            # focal term beside a softmax Dice; mutually exclusive classes want the softmax focal loss
            self.fn = DiceLoss(to_onehot_y=True, softmax=True, batch=True, weight=w)
            self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, weight=w)
        elif plan.loss == "dice":
            # weighted like the Dice term of dice_ce / dice_focal (MONAI passes their weight on to DiceLoss);
            # without weight= the plan's class_weights were silently ignored
            self.fn = DiceLoss(to_onehot_y=True, softmax=True, batch=True, weight=w)
        else:
            self.fn = torch.nn.CrossEntropyLoss(weight=w)

    def _one(self, logits, y):
        logits = logits.float()
        if self.kind == "ce":
            return self.fn(logits, y)
        if self.kind == "dice_focal":
            return self.fn(logits, y[:, None]) + self.focal(logits, y[:, None])
        return self.fn(logits, y[:, None])

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of logits ``out`` (B, K, *S) or (B, H, K, *S) against labels ``y`` (B, *S): a scalar."""
        if out.ndim == y.ndim + 2:  # deep supervision: (B, heads, K, *S)
            ws = [0.5 ** i for i in range(out.shape[1])]
            return sum(w * self._one(out[:, i], y) for i, w in enumerate(ws)) / sum(ws)
        return self._one(out, y)


def confusion_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[int, float]:
    """Per-class Dice 2TP/(2TP+FP+FN) from one confusion matrix; NaN where the class is absent from both.

    Examples
    --------
    >>> confusion_dice(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    {1: 0.6666666666666666, 2: 0.6666666666666666}
    """
    cm = np.bincount(ref.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel(),
                     minlength=num_classes ** 2).reshape(num_classes, num_classes)
    out = {}
    for k in range(1, num_classes):
        tp = cm[k, k]
        fp = cm[:, k].sum() - tp
        fn = cm[k, :].sum() - tp
        out[k] = float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else float("nan")
    return out
