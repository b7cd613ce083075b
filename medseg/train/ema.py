"""Exponential moving average of a network's weights (Polyak averaging), shared by both trainers.

The averaged weights are what validation, threshold tuning and the saved model use; the optimiser keeps stepping the
raw weights. Float parameters and buffers are averaged; integer buffers (batch-norm step counters) are copied.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


class WeightEMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step.

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
    >>> with torch.no_grad():
    ...     _ = net.weight.add_(2.0)
    >>> ema.update(net)
    >>> bool(torch.allclose(ema.state_dict()["weight"], net.weight - 1.0))
    True
    """

    def __init__(self, network: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in network.state_dict().items()}

    @torch.no_grad()
    def update(self, network: torch.nn.Module) -> None:
        state = network.state_dict()
        floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in self.shadow.items():
            if not v.is_floating_point():
                v.copy_(state[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the network: {sorted(missing)[:3]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)


@contextmanager
def averaged_weights(network: torch.nn.Module, ema: WeightEMA | None):
    """Inside the block ``network`` holds the averaged weights (unchanged when ``ema`` is None); its own weights are
    restored on leaving, so training continues from them."""
    if ema is None:
        yield network
        return
    raw = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(ema.state_dict())
    try:
        yield network
    finally:
        network.load_state_dict(raw)
