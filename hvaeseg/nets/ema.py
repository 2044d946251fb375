"""Exponential moving average (EMA) of a network's weights, the copy used for prediction by the methods that
keep one (MixMatch, the HVAE methods).

Plain :mod:`torch`, no Pyro.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_copy", "ema_decay_at", "ema_update"]


def ema_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` (no gradients, eval mode) to hold the average."""
    return copy.deepcopy(net).requires_grad_(False).eval()


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used after ``step``: ``min(decay, (1 + step) / (10 + step))``, so that the average of a
    short run is not dominated by its initial weights."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * net`` for every parameter and floating buffer (other buffers are
    copied). ``ema`` must be a copy of ``net`` (same parameters in the same order)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in net.parameters()], 1 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        if e.is_floating_point():
            e.lerp_(b, 1 - decay)
        else:
            e.copy_(b)
