"""Inpainting occluded pixels: posterior sampling with the HVAE, and temporal linear interpolation.

:func:`posterior_inpaint` samples ``(s, l, z) ~ q(. | x_visible)`` from the guide, then ``x ~ p(x | s, l, z)``
from the decoder, keeps the observed pixels and fills the occluded ones; the mean and per-pixel spread come
from several samples (defined in :mod:`hvaeseg.hierarchy.posterior`, beside the HVAE that uses it).
:func:`temporal_linear_interpolation` is the standard gap-filling baseline for stacks: each occluded pixel is
interpolated linearly in time between the nearest clear dates.
"""

from __future__ import annotations

import torch

from hvaeseg.hierarchy.interpolation import neighbour_interpolation
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
    nb = neighbour_interpolation(x, valid, times)
    interp = nb.value
    vc = valid.unsqueeze(2)
    count = vc.to(x.dtype).sum((1, 3, 4), keepdim=True)
    band_mean = torch.where(vc, x, torch.zeros((), dtype=x.dtype)).sum((1, 3, 4), keepdim=True) / count.clamp(min=1)
    none = (~nb.found).unsqueeze(2)
    filled = torch.where(none, band_mean.expand_as(x), interp)
    return torch.where(valid.unsqueeze(2), x, filled)
