"""Posterior inpainting with an HVAE: fill occluded pixels by sampling ``(s, l, z) ~ q(. | x_visible)`` from the
guide, then ``x ~ p(x | s, l, z)`` from the decoder; observed pixels are kept bit for bit.

It lives in the hierarchy layer because :meth:`hvaeseg.hierarchy.HVAE.inpaint` calls it; :mod:`hvaeseg.inpaint`
re-exports it beside the temporal-interpolation baseline.
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
import torch

__all__ = ["posterior_inpaint"]


def _valid_channels(valid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return valid.unsqueeze(-3).expand_as(x)


@torch.no_grad()
def posterior_inpaint(
    hvae: Any,
    x: torch.Tensor,
    valid: torch.Tensor,
    num_samples: int = 8,
    *,
    s: torch.Tensor | None = None,
    decoder_mean: bool = False,
    doy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fill the pixels of ``x`` where ``valid`` is False by sampling the HVAE's posterior.

    :param hvae: an :class:`~hvaeseg.hierarchy.HVAE` (any object with conventions-following
        ``model(x=None, s=None, valid=None, shape=...)`` and ``guide(x, s=None, valid=None)``).
    :param x: ``(B, C, H, W)`` (temporal ``(B, T, C, H, W)``); values at invalid pixels are ignored.
    :param valid: ``(B, H, W)`` bool (temporal ``(B, T, H, W)``): observed and clear.
    :param num_samples: posterior samples.
    :param s: optional labels ``(B, H, W)`` (``-1`` = void) to condition the guide on.
    :param decoder_mean: fill with the decoder's mean of each posterior sample instead of a sample of x.
    :param doy: ``(B,)`` (temporal ``(B, T)``) days of the year, for hierarchies conditioned on them.
    :return: ``(mean, std, samples)``: ``mean`` and ``std`` of the shape of ``x``, ``samples``
        ``(num_samples, *x.shape)``. Observed pixels are returned bit for bit (``std`` 0 there).
    """
    if num_samples < 1:
        raise ValueError(f"expected num_samples >= 1, got {num_samples}")
    if valid is None or valid.dtype != torch.bool or valid.shape != x.shape[:-3] + x.shape[-2:]:
        raise ValueError(
            f"expected valid as a bool tensor of shape {tuple(x.shape[:-3] + x.shape[-2:])}, got "
            f"{None if valid is None else (valid.dtype, tuple(valid.shape))}"
        )
    shape = tuple(x.shape[:-3]) + tuple(x.shape[-2:])
    keep = _valid_channels(valid, x)
    # a hierarchy that interpolates between dates (the interp covariate) fills from the visible pixels of the stack
    # (computed once for all samples when the HVAE can, as the covariate itself)
    context = {}
    if getattr(getattr(hvae, "spec", None), "interpolates", False):
        covariate = getattr(hvae, "interp_covariate", None)
        context["interp_from"] = covariate(x, valid, doy) if covariate is not None and doy is not None else (x, valid)
    samples = []
    for _ in range(num_samples):
        kw = {} if doy is None else {"doy": doy}
        guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid, **kw)
        model = poutine.replay(hvae.model, trace=guide_trace)
        trace = poutine.trace(model).get_trace(None, None, valid, shape=shape, **kw, **context)
        site = trace.nodes["x"]
        filled = _site_mean(site["fn"]) if decoder_mean else site["value"]
        samples.append(torch.where(keep, x, filled))
    stacked = torch.stack(samples)
    mean = torch.where(keep, x, stacked.mean(0))
    std = torch.where(keep, torch.zeros((), dtype=x.dtype, device=x.device), stacked.std(0, unbiased=False))
    return mean, std, stacked


def _site_mean(fn) -> torch.Tensor:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.mean
