"""Linear interpolation in time inside a stack: the building block of the interpolation baseline
(:func:`hvaeseg.inpaint.temporal_linear_interpolation`) and of the ``interp`` covariate of temporal hierarchies.

For each date ``t`` and pixel, the *neighbours* are the latest clear date before ``t`` and the earliest clear date
after it (with ``exclude_self=False``, ``t`` itself when it is clear). Between two neighbours the value is
interpolated linearly in time; with one neighbour it is that neighbour's value (constant extrapolation); with
none it is 0 and ``found`` is False.

The ``interp`` covariate (:func:`interpolation_input`) is the *leave-one-out* interpolation: date ``t`` from the
stack's other dates only, so that a model conditioned on it never sees the value it scores. Its times come from
the days of the year (:func:`stack_days`), which requires the stack's dates in time order with less than a year
between consecutive dates (the sampler's stacks and :func:`hvaeseg.inpaint_cube.window_dates` are sorted; a gap
of a year or more is read modulo the year).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["INTERP_EXTRA_CHANNELS", "Neighbours", "interpolation_input", "neighbour_interpolation", "stack_days"]

#: channels of the ``interp`` covariate besides the C interpolated bands: has a clear date before, has one after,
#: and the two day gaps (as ``log1p(days / GAP_SCALE_DAYS)``, 0 where there is no neighbour)
INTERP_EXTRA_CHANNELS = 4
#: day scale of the gap features
GAP_SCALE_DAYS = 10.0
_YEAR = 365.25


class Neighbours(NamedTuple):
    """What :func:`neighbour_interpolation` returns (shapes for a stack ``(B, T, C, H, W)``)."""

    #: ``(B, T, C, H, W)``: interpolated (two neighbours), nearest (one) or 0 (none)
    value: torch.Tensor
    #: ``(B, T, H, W)`` bool: a clear date before / after (for ``exclude_self=False``: at or before / at or after)
    has_prev: torch.Tensor
    has_next: torch.Tensor
    #: ``(B, T, H, W)``: days from the date to its neighbour before / after (0 where there is none)
    gap_prev: torch.Tensor
    gap_next: torch.Tensor

    @property
    def found(self) -> torch.Tensor:
        """``(B, T, H, W)`` bool: at least one neighbour."""
        return self.has_prev | self.has_next


def neighbour_interpolation(
    x: torch.Tensor, valid: torch.Tensor, times: torch.Tensor | None = None, *, exclude_self: bool = False
) -> Neighbours:
    """Each date's pixels from their clear neighbours in time (module doc).

    :param x: ``(B, T, C, H, W)``; values at invalid pixels are never read.
    :param valid: ``(B, T, H, W)`` bool.
    :param times: ``(T,)`` or ``(B, T)`` strictly increasing times in days; default ``0 .. T-1``.
    :param exclude_self: leave date ``t`` out of its own neighbours (leave-one-out).
    :raises ValueError: for shapes that do not match or times that do not increase.
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
        t = times.to(x.device, x.dtype).expand(B, T)
        if (t[:, 1:] <= t[:, :-1]).any():
            raise ValueError("expected strictly increasing times")
    idx = torch.arange(T, device=x.device).view(1, T, 1, 1).expand(B, T, H, W)
    prev = torch.where(valid, idx, torch.full_like(idx, -1)).cummax(1).values  # last clear date <= t
    nxt = torch.where(valid, idx, torch.full_like(idx, T)).flip(1).cummin(1).values.flip(1)  # first >= t
    if exclude_self:  # last clear date < t is the last one <= t - 1; first > t is the first >= t + 1
        prev = torch.cat([torch.full_like(prev[:, :1], -1), prev[:, :-1]], dim=1)
        nxt = torch.cat([nxt[:, 1:], torch.full_like(nxt[:, :1], T)], dim=1)
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
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    one_side = torch.where(has_prev.unsqueeze(2), xp, torch.where(has_next.unsqueeze(2), xn, zero))
    value = torch.where(both, xp + w * (xn - xp), one_side)
    return Neighbours(
        value, has_prev, has_next, torch.where(has_prev, tt - tp, zero), torch.where(has_next, tn - tt, zero)
    )


def stack_days(doy: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` days of the year of a stack in time order -> ``(B, T)`` days since its first date.

    Each step between consecutive dates is the day-of-year difference modulo the year, in ``(0, 365.25]``, so a
    stack may run over New Year; a step of a year or more cannot be told apart from its remainder.
    """
    if doy.dim() != 2:
        raise ValueError(f"expected doy of shape (B, T), got {tuple(doy.shape)}")
    d = doy.to(torch.float64)
    step = torch.remainder(d[:, 1:] - d[:, :-1], _YEAR)
    step = torch.where(step <= 0, torch.full_like(step, _YEAR), step)  # the same day of the year: a year on
    return torch.cat([torch.zeros_like(d[:, :1]), step.cumsum(1)], dim=1)


def interpolation_input(
    x: torch.Tensor, valid: torch.Tensor, doy: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The ``interp`` covariate: ``(B, T, C + INTERP_EXTRA_CHANNELS, H, W)``.

    Channels: the leave-one-out interpolation of each band (0 where no other date is clear), then ``has_prev``,
    ``has_next``, ``log1p(gap_prev / 10)`` and ``log1p(gap_next / 10)`` (days; 0 without that neighbour). The
    decoder takes it as a parent and adds the interpolated bands to its mean (a residual to interpolation).

    :param x: ``(B, T, C, H, W)``; :param valid: ``(B, T, H, W)`` bool; :param doy: ``(B, T)`` days of the year.
    """
    dtype = dtype or x.dtype
    with torch.no_grad():
        nb = neighbour_interpolation(x.to(dtype), valid, stack_days(doy).to(x.device), exclude_self=True)
        extra = torch.stack(
            [
                nb.has_prev.to(dtype),
                nb.has_next.to(dtype),
                torch.log1p(nb.gap_prev.to(dtype) / GAP_SCALE_DAYS),
                torch.log1p(nb.gap_next.to(dtype) / GAP_SCALE_DAYS),
            ],
            dim=2,
        )
        return torch.cat([nb.value, extra], dim=2)
