"""Inpainting occluded pixels: posterior sampling with the HVAE, and temporal linear interpolation.

:func:`posterior_inpaint` samples ``(s, l, z) ~ q(. | x_visible)`` from the guide, then ``x ~ p(x | s, l, z)``
from the decoder, keeps the observed pixels and fills the occluded ones; the mean and per-pixel spread come
from several samples. :func:`temporal_linear_interpolation` is the standard gap-filling baseline for
stacks: each occluded pixel is interpolated linearly in time between the nearest clear dates.
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
import torch

__all__ = ["posterior_inpaint", "temporal_linear_interpolation"]


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
    samples = []
    for _ in range(num_samples):
        kw = {} if doy is None else {"doy": doy}
        guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid, **kw)
        model = poutine.replay(hvae.model, trace=guide_trace)
        trace = poutine.trace(model).get_trace(None, None, valid, shape=shape, **kw)
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


def temporal_linear_interpolation(
    x: torch.Tensor, valid: torch.Tensor, times: torch.Tensor | None = None
) -> torch.Tensor:
    """Gap-fill a stack by linear interpolation in time between the nearest clear dates of each pixel.

    :param x: ``(B, T, C, H, W)``.
    :param valid: ``(B, T, H, W)`` bool.
    :param times: optional acquisition times ``(T,)`` or ``(B, T)`` (e.g. days); default ``0 .. T-1``.
    :return: ``(B, T, C, H, W)``: observed pixels bit for bit; an occluded pixel with clear dates on
        both sides is interpolated, with clear dates on one side only it takes the nearest one, and with no
        clear date at all it takes the mean of the image's clear observations of that band (0 if none).
    """
    if x.dim() != 5:
        raise ValueError(f"expected x of shape (B, T, C, H, W), got {tuple(x.shape)}")
    B, T, C, H, W = x.shape
    if valid.shape != (B, T, H, W) or valid.dtype != torch.bool:
        raise ValueError(
            f"expected valid as bool (B, T, H, W) = {(B, T, H, W)}, got {valid.dtype} {tuple(valid.shape)}"
        )
    if times is None:
        t = torch.arange(T, dtype=x.dtype, device=x.device).expand(B, T)
    else:
        t = times.to(x.dtype).expand(B, T)
        if (t[:, 1:] <= t[:, :-1]).any():
            raise ValueError("expected strictly increasing times")
    idx = torch.arange(T, device=x.device).view(1, T, 1, 1).expand(B, T, H, W)
    prev = torch.where(valid, idx, torch.full_like(idx, -1)).cummax(1).values  # last clear date <= t
    nxt = torch.where(valid, idx, torch.full_like(idx, T)).flip(1).cummin(1).values.flip(1)  # first >= t
    has_prev, has_next = prev >= 0, nxt < T
    p, n = prev.clamp(0, T - 1), nxt.clamp(0, T - 1)

    def gather_t(v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:  # v (B, T, C, H, W), i (B, T, H, W)
        return v.gather(1, i.unsqueeze(2).expand(B, T, C, H, W))

    def time_at(i: torch.Tensor) -> torch.Tensor:
        return t.gather(1, i.flatten(1)).view(B, T, H, W)

    xp, xn = gather_t(x, p), gather_t(x, n)
    tp, tn, tt = time_at(p), time_at(n), t.view(B, T, 1, 1).expand(B, T, H, W)
    w = ((tt - tp) / (tn - tp).clamp(min=torch.finfo(x.dtype).tiny)).unsqueeze(2)
    both = (has_prev & has_next).unsqueeze(2)
    interp = torch.where(both, xp + w * (xn - xp), torch.where(has_prev.unsqueeze(2), xp, xn))
    vc = valid.unsqueeze(2)
    count = vc.to(x.dtype).sum((1, 3, 4), keepdim=True)
    band_mean = torch.where(vc, x, torch.zeros((), dtype=x.dtype)).sum((1, 3, 4), keepdim=True) / count.clamp(min=1)
    none = (~(has_prev | has_next)).unsqueeze(2)
    filled = torch.where(none, band_mean.expand_as(x), interp)
    return torch.where(valid.unsqueeze(2), x, filled)
