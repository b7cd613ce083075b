"""Exponential moving average of a network's weights (Polyak averaging), shared by both trainers.

The averaged weights are what validation, threshold tuning and the saved model use; the optimiser keeps stepping the
raw weights.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from medseg.io.atomic import deferred_interrupts


class WeightEMA:
    """``average = decay * average + (1 - decay) * weights`` after every optimiser step (the first step copies the
    weights): PyTorch's ``AveragedModel`` with its EMA update, parameters and buffers alike, plus the state-dict
    round trip a resumable checkpoint needs.

    Parameters
    ----------
    network : torch.nn.Module
        The network being trained (a DDP wrapper's ``.module``, not the wrapper).
    decay : float
        In (0, 1); 0.999 averages over roughly the last 1,000 steps.

    Examples
    --------
    >>> net = torch.nn.Linear(2, 1)
    >>> ema = WeightEMA(net, 0.5)
    >>> ema.update(net)  # the first update copies
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(2.0)
    >>> ema.update(net)
    >>> bool(torch.allclose(ema.state_dict()["weight"], net.weight - 1.0))
    True
    """

    def __init__(self, network: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.averaged = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def update(self, network: torch.nn.Module) -> None:
        """Average ``network``'s current weights in (call after every optimiser step)."""
        self.averaged.update_parameters(network)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like ``network.state_dict()``."""
        return self.averaged.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 1) -> None:
        """Continue from saved averaged weights (a resumed run) that have had ``updates`` updates: the next update
        averages into them, or copies the weights when there were none (as the uninterrupted run's first update
        does: averaging the initial weights in instead would leave a trace of them in the model for good)."""
        missing = set(self.state_dict()) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the network: {sorted(missing)[:3]}")
        self.averaged.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(updates)


@contextmanager
def averaged_weights(network: torch.nn.Module, ema: WeightEMA | None):
    """Inside the block ``network`` holds the averaged weights (unchanged when ``ema`` is None); its own weights are
    restored on leaving, so training continues from them.

    Parameters
    ----------
    network : torch.nn.Module
        The network being trained.
    ema : WeightEMA or None
        Its average.

    Yields
    ------
    torch.nn.Module
        ``network`` itself.

    Examples
    --------
    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> ema = WeightEMA(net, 0.5)
    >>> for w in (0.0, 2.0):
    ...     _ = net.weight.data.fill_(w)
    ...     ema.update(net)
    >>> with averaged_weights(net, ema):
    ...     net.weight.item()  # 0.5 x 0 + 0.5 x 2
    1.0
    >>> net.weight.item()
    2.0
    """
    if ema is None:
        yield network
        return
    raw = {k: v.detach().clone() for k, v in network.state_dict().items()}
    # swaps held whole: an interrupted run saves ``network`` as its raw weights, never a mix of the two
    try:
        with deferred_interrupts():
            network.load_state_dict(ema.state_dict())
        yield network
    finally:
        with deferred_interrupts():
            network.load_state_dict(raw)
