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
import torch.nn.functional as F

from hvaeseg.hierarchy.spec import TransferSpec

__all__ = [
    "INTERP_EXTRA_CHANNELS",
    "Neighbours",
    "clear_fraction",
    "interp_channels",
    "interpolation_input",
    "neighbour_interpolation",
    "residual_transfer",
    "stack_days",
    "without_visibility",
]

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


def residual_transfer(
    x: torch.Tensor, valid: torch.Tensor, base: torch.Tensor, transfer: TransferSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Borrow, for each date and pixel, the residual ``x - base`` of similar clear pixels of the same date.

    For date ``t`` and pixel ``p``, every offset ``o`` of the window (``transfer``'s radius and stride; ``o = 0``
    excluded) gives the pixel ``q = p + o`` the weight ``w = exp(-d / h^2)`` when ``q`` is clear on ``t``, with
    ``d`` the mean over bands and over the *other* dates on which both ``p`` and ``q`` are clear of their squared
    difference (no such date: ``w = 0``). The estimate is ``sum w (x_t(q) - base_t(q)) / sum w`` (0 where the
    weights sum to 0). Neither ``x_t(p)`` nor anything of ``p`` on date ``t`` enters ``p``'s estimate on ``t``,
    so with a leave-one-out ``base`` the result is leave-one-out too: a model may be scored on ``x_t(p)`` given it.
    Pixels outside the image are never clear.

    It is the "similar pixel" idea of gap filling: pixels of one field move together from date to date, so a
    cloud's neighbours in the same field, told apart from the next field by their history, say how far the field
    departs from its interpolation on the cloudy date.

    :param x: ``(B, T, C, H, W)``; values at invalid pixels are never read. :param valid: ``(B, T, H, W)`` bool.
    :param base: ``(B, T, C, H, W)``: what the residual is taken from (e.g. the leave-one-out interpolation).
    :returns: ``estimate (B, T, C, H, W)`` and the summed weight ``(B, T, H, W)``.
    """
    if x.dim() != 5 or base.shape != x.shape:
        raise ValueError(f"expected x and base of one shape (B, T, C, H, W), got {tuple(x.shape)} and "
                         f"{tuple(base.shape)}")
    B, T, C, H, W = x.shape
    if valid.shape != (B, T, H, W):
        raise ValueError(f"expected valid of shape {(B, T, H, W)}, got {tuple(valid.shape)}")
    r, k = transfer.radius, transfer.stride
    v = valid.to(x.dtype)
    clear = valid.unsqueeze(2)
    xm = torch.where(clear, x, 0.0)  # a where, not a product: NaN under a cloud must not leak either
    res = torch.where(clear, x - base, 0.0)

    def pad(a: torch.Tensor) -> torch.Tensor:  # zero padding: outside the image nothing is clear
        return F.pad(a.reshape(-1, *a.shape[-2:]), (r, r, r, r)).view(*a.shape[:-2], H + 2 * r, W + 2 * r)

    xp, vp, rp = pad(xm), pad(v), pad(res)
    num = torch.zeros_like(x)
    den = torch.zeros_like(v)
    scale = 1.0 / (C * transfer.bandwidth**2)
    others = 1.0 - torch.eye(T, dtype=x.dtype, device=x.device)  # sums over the other dates (not a difference of
    # sums, so that date t's own terms cannot even round into its result)
    for dy in range(-r, r + 1, k):
        for dx in range(-r, r + 1, k):
            if dy == 0 and dx == 0:
                continue
            win = (..., slice(r + dy, r + dy + H), slice(r + dx, r + dx + W))
            vq = vp[win]
            both = v * vq  # (B, T, H, W): p and q clear on that date
            sq = (xp[win] - xm).square().sum(2) * both  # summed over bands
            other_sq = torch.einsum("st,bshw->bthw", others, sq)
            other_n = torch.einsum("st,bshw->bthw", others, both)
            w = torch.exp(-other_sq * scale / other_n.clamp(min=1)) * (other_n > 0) * vq
            num.addcmul_(w.unsqueeze(2), rp[win])
            den.add_(w)
    est = torch.where(den.unsqueeze(2) > 0, num / den.clamp(min=torch.finfo(x.dtype).tiny).unsqueeze(2), 0.0)
    return est, den


def interp_channels(bands: int, transfer: TransferSpec | None = None) -> int:
    """Channels of the ``interp`` covariate (:func:`interpolation_input`) for ``bands`` bands."""
    return bands + INTERP_EXTRA_CHANNELS + (transfer.channels if transfer is not None else 0)


def without_visibility(covariate: torch.Tensor) -> torch.Tensor:
    """The ``interp`` covariate of a ``transfer.seen`` hierarchy with its visibility channel (the last,
    :func:`interpolation_input`) at 0, as if every pixel were filled blind: ``(..., channels, H, W)``."""
    return torch.cat([covariate[..., :-1, :, :], torch.zeros_like(covariate[..., -1:, :, :])], dim=-3)


def clear_fraction(valid: torch.Tensor, radius: int) -> torch.Tensor:
    """``(..., H, W)`` bool -> ``(..., H, W)``: the fraction of clear pixels in each pixel's ``(2 radius + 1)^2``
    window, the pixel itself left out; pixels outside the image count as not clear."""
    if radius < 1:
        raise ValueError(f"expected radius >= 1, got {radius}")
    H, W = valid.shape[-2:]
    v = valid.reshape(-1, 1, H, W).to(torch.float64)
    side = 2 * radius + 1
    total = F.avg_pool2d(v, side, stride=1, padding=radius, count_include_pad=True) * side**2
    return ((total - v) / (side**2 - 1)).view(valid.shape)


def interpolation_input(
    x: torch.Tensor,
    valid: torch.Tensor,
    doy: torch.Tensor,
    dtype: torch.dtype | None = None,
    transfer: TransferSpec | None = None,
) -> torch.Tensor:
    """The ``interp`` covariate: ``(B, T, interp_channels(C, transfer), H, W)``.

    Channels: the leave-one-out interpolation of each band (0 where no other date is clear), then ``has_prev``,
    ``has_next``, ``log1p(gap_prev / 10)`` and ``log1p(gap_next / 10)`` (days; 0 without that neighbour). The
    decoder takes it as a parent and adds the interpolated bands to its mean (a residual to interpolation).
    With ``transfer``, the bands hold the interpolation plus :func:`residual_transfer`'s estimate of its residual
    (still leave-one-out), and a channel ``log1p`` of the transfer's summed weight (0: nothing borrowed); with
    ``transfer.clear_radius`` a channel, :func:`clear_fraction` of the date's valid mask; with ``transfer.seen`` a
    last channel, ``valid`` itself (whether the pixel is observed on the date).

    :param x: ``(B, T, C, H, W)``; :param valid: ``(B, T, H, W)`` bool; :param doy: ``(B, T)`` days of the year.
    """
    dtype = dtype or x.dtype
    with torch.no_grad():
        x = x.to(dtype)
        nb = neighbour_interpolation(x, valid, stack_days(doy).to(x.device), exclude_self=True)
        extra = [
            nb.has_prev.to(dtype),
            nb.has_next.to(dtype),
            torch.log1p(nb.gap_prev.to(dtype) / GAP_SCALE_DAYS),
            torch.log1p(nb.gap_next.to(dtype) / GAP_SCALE_DAYS),
        ]
        value = nb.value
        if transfer is not None:
            est, weight = residual_transfer(x, valid, nb.value, transfer)
            value = value + est
            extra.append(torch.log1p(weight))
            if transfer.clear_radius > 0:
                extra.append(clear_fraction(valid, transfer.clear_radius).to(dtype))
            if transfer.seen:  # whether the pixel itself is observed on the date (not its value)
                extra.append(valid.to(dtype))
        return torch.cat([value, torch.stack(extra, dim=2)], dim=2)
