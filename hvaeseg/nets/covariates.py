"""Observed covariates of a patch, as network inputs: the day of the year of its date(s).

Phenology makes a field's spectrum a function of the date as much as of its class, and the acquisition date is
known. :func:`doy_features` turns the day of the year into a few smooth, periodic features (Fourier harmonics of
the annual cycle, so 31 December and 1 January are neighbours) that networks take as a per-image vector.

Plain :mod:`torch`, no Pyro.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DOY_FEATURES", "DOY_HARMONICS", "doy_features"]

#: harmonics of the annual cycle
DOY_HARMONICS = 2
#: features per date: a sine and a cosine per harmonic
DOY_FEATURES = 2 * DOY_HARMONICS

_YEAR = 365.25


def doy_features(doy: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(...,)`` days of the year -> ``(..., DOY_FEATURES)``: ``sin(2 pi k doy / 365.25)``,
    ``cos(2 pi k doy / 365.25)`` for ``k = 1 .. DOY_HARMONICS``."""
    if doy.is_floating_point() or doy.dtype in (torch.int16, torch.int32, torch.int64):
        angle = doy.to(dtype or (doy.dtype if doy.is_floating_point() else torch.float32)) * (2 * math.pi / _YEAR)
    else:
        raise TypeError(f"expected days of the year as a numeric tensor, got {doy.dtype}")
    k = torch.arange(1, DOY_HARMONICS + 1, dtype=angle.dtype, device=angle.device)
    phase = angle.unsqueeze(-1) * k
    return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)
