r"""Recalibrating the spread of posterior samples on pixels hidden on purpose.

A model's samples are calibrated at level :math:`a` when the central :math:`a` interval of each value's samples
holds its true value with probability :math:`a` (:func:`hvaeseg.metrics.interval_coverage`). A model whose spread
is learned on training patches can be over- or under-confident on the tiles it fills (deeper clouds, other
dates). Spread scaling (Levi et al., 2019; Laves et al., 2020) fixes that with one factor :math:`c` fitted on
values whose truth is known: each value's samples are moved away from their mean by :math:`c`,

.. math::

    x_k' = \bar x + c\,(x_k - \bar x),

which leaves the mean unchanged, multiplies the spread by :math:`c`, and moves every sample quantile
:math:`q` to :math:`\bar x + c (q - \bar x)`. For a value with truth :math:`y` the smallest factor whose
interval holds it is :math:`(y - \bar x) / (q_{hi} - \bar x)` above the mean and
:math:`(\bar x - y) / (\bar x - q_{lo})` below (:func:`needed_factors`); the factor that covers a share
:math:`a` of the calibration values is their :math:`a`-quantile (:func:`fit_spread_factor`).

The calibration values come from the cube itself (:func:`calibration_pairs`): a mostly clear date gets the cloud
mask of a partly cloudy date pasted on it, and its pixels that were clear and are now hidden have a known truth, their
observation. No label and no clean reflectance are needed, so it works on real cubes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hvaeseg.metrics import quantile_weibull

__all__ = ["calibration_pairs", "fit_spread_factor", "needed_factors", "rescale"]

#: the relative margin :func:`fit_spread_factor` adds to the boundary value's factor
NUDGE = 1e-9


def needed_factors(samples: Tensor, truth: Tensor, mask: Tensor, level: float = 0.9) -> Tensor:
    """The smallest spread factor that puts each masked value inside its central ``level`` sample interval.

    :param samples: ``(K, *truth.shape)`` samples of the values (e.g. posterior inpainting), units of ``truth``.
    :param truth: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` (C = bands).
    :param mask: bool ``(B, H, W)`` or ``(B, T, H, W)``: the pixels to use, all bands.
    :param level: interval level in ``(0, 1)``; the interval is that of :func:`hvaeseg.metrics.interval_coverage`.
    :return: ``(N,)`` float64, one factor per masked value (``inf`` when no factor reaches it: the truth lies on a
        side of the mean where the interval does not extend; ``0`` when the truth is the mean).
    """
    if samples.dim() != truth.dim() + 1 or samples.shape[1:] != truth.shape or samples.shape[0] < 2:
        raise ValueError(f"expected samples of shape (K >= 2, *truth.shape) = (K, "
                         f"{', '.join(map(str, truth.shape))}), got {tuple(samples.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"expected a level in (0, 1), got {level}")
    if mask.shape != truth.shape[:-3] + truth.shape[-2:]:
        raise ValueError(f"expected mask of shape {tuple(truth.shape[:-3] + truth.shape[-2:])}, got "
                         f"{tuple(mask.shape)}")
    band_mask = mask.to(device=truth.device, dtype=torch.bool).unsqueeze(-3).expand_as(truth)
    s = samples[:, band_mask].double()  # (K, N)
    t = truth[band_mask].double()
    centre = s.mean(0)
    s = s.sort(dim=0).values
    lo, hi = quantile_weibull(s, (1 - level) / 2), quantile_weibull(s, (1 + level) / 2)
    above = t >= centre
    reach = torch.where(above, hi - centre, centre - lo)  # how far the interval extends on the truth's side
    dev = (t - centre).abs()
    out = torch.where(reach > 0, dev / reach.clamp(min=torch.finfo(torch.float64).tiny), torch.full_like(dev, math.inf))
    return torch.where(dev == 0, torch.zeros_like(dev), out)


def fit_spread_factor(needed: Tensor, level: float = 0.9) -> float:
    """The factor that covers a share ``level`` of the calibration values: the ``ceil(level N)``-th smallest of
    the :func:`needed_factors` ``needed``, so that at least ``level`` of them are covered (nudged up by a relative
    :data:`NUDGE`, so that the value on the boundary stays inside the rescaled interval after rounding).

    :raises ValueError: for no value, a level outside ``(0, 1)``, or a factor that is not finite (more than
        ``1 - level`` of the values out of reach of any scaling).
    """
    if not 0 < level < 1:
        raise ValueError(f"expected a level in (0, 1), got {level}")
    n = int(needed.numel())
    if n == 0:
        raise ValueError("no calibration value: the calibration masks hid no clear pixel")
    rank = min(n, max(1, math.ceil(level * n)))
    factor = float(needed.flatten().double().kthvalue(rank).values)
    if not math.isfinite(factor):
        raise ValueError(f"no spread factor covers {level:.0%} of the calibration values: more than "
                         f"{1 - level:.0%} lie where the sample interval does not extend (a degenerate spread)")
    return factor * (1 + NUDGE)


def rescale(samples: Tensor, factor: float) -> Tensor:
    """``mean + factor * (samples - mean)`` along the first (sample) dimension: the same mean, ``factor`` times
    the spread. Values whose samples all agree (observed pixels) are unchanged."""
    if not factor > 0 or not math.isfinite(factor):
        raise ValueError(f"expected a finite spread factor > 0, got {factor}")
    centre = samples.mean(0, keepdim=True)
    return centre + factor * (samples - centre)


def calibration_pairs(
    valid: Tensor | np.ndarray,
    *,
    exclude: Sequence[int] = (),
    min_target: float = 0.9,
    donor_range: tuple[float, float] = (0.05, 0.95),
) -> list[tuple[int, int]]:
    """Every ``(target, donor)`` date pair of a cube for calibration: each date with at least ``min_target`` valid
    pixels (and not in ``exclude``) with the mask of each partly cloudy date (valid share in ``donor_range``, ends
    included; never itself). The calibration values of a pair are the target's pixels that are valid there
    and invalid on the donor, ``valid[target] & ~valid[donor]``; every donor gives every target its clouds, so the
    values follow the cube's own cloud masks, not one draw of them (a caller that cannot fill them all subsamples).

    :param valid: ``(T, H, W)`` bool.
    :param exclude: dates that may not be targets (e.g. those a benchmark scores, so that no scored value is used).
    :return: pairs sorted by target, then donor; empty when the cube has no such target or no donor.
    """
    v = torch.as_tensor(valid)
    if v.dim() != 3 or v.dtype != torch.bool:
        raise ValueError(f"expected valid as a (T, H, W) bool array, got {v.dtype} of shape {tuple(v.shape)}")
    share = v.double().mean((1, 2)).numpy()
    banned = {int(t) for t in exclude}
    targets = [int(t) for t in np.flatnonzero(share >= min_target) if int(t) not in banned]
    donors = [int(d) for d in np.flatnonzero((share >= donor_range[0]) & (share <= donor_range[1]))]
    return [(t, d) for t in targets for d in donors if d != t]
