"""Inpainting occluded pixels: posterior sampling with the HVAE, and temporal linear interpolation.

:func:`posterior_inpaint` samples ``(s, l, z) ~ q(. | x_visible)`` from the guide, then ``x ~ p(x | s, l, z)``
from the decoder, keeps the observed pixels and fills the occluded ones; the mean and per-pixel spread come
from several samples (defined in :mod:`hvaeseg.hierarchy.posterior`, beside the HVAE that uses it).
:func:`temporal_linear_interpolation` is the standard gap-filling baseline for stacks: each occluded pixel is
interpolated linearly in time between the nearest clear dates.
"""

from __future__ import annotations

import torch

from hvaeseg.hierarchy.posterior import posterior_inpaint

__all__ = ["posterior_inpaint", "temporal_linear_interpolation"]


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
