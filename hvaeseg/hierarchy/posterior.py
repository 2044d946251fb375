"""Posterior inpainting with an HVAE: fill occluded pixels by sampling ``(s, l, z) ~ q(. | x_visible)`` from the
guide, then ``x ~ p(x | s, l, z)`` from the decoder; observed pixels are kept bit for bit.

It lives in the hierarchy layer because :meth:`hvaeseg.hierarchy.HVAE.inpaint` calls it; :mod:`hvaeseg.inpaint`
re-exports it beside the temporal-interpolation baseline.
"""

from __future__ import annotations

from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

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
    date: torch.Tensor | None = None,
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
    :param date: temporal :class:`~hvaeseg.hierarchy.HVAE` only: ``(B,)`` int64, the one date of each stack to
        fill. The posterior of the latents is still the whole stack's; only the decoder's pass is narrowed to
        that date (``1/T`` of its cost), and the results are that date's, ``(B, C, H, W)``.
    :return: ``(mean, std, samples)``: ``mean`` and ``std`` of the shape of ``x`` (with ``date``: of one date),
        ``samples`` ``(num_samples, *mean.shape)``. Observed pixels are returned bit for bit (``std`` 0 there).
    """
    if num_samples < 1:
        raise ValueError(f"expected num_samples >= 1, got {num_samples}")
    if valid is None or valid.dtype != torch.bool or valid.shape != x.shape[:-3] + x.shape[-2:]:
        raise ValueError(
            f"expected valid as a bool tensor of shape {tuple(x.shape[:-3] + x.shape[-2:])}, got "
            f"{None if valid is None else (valid.dtype, tuple(valid.shape))}"
        )
    kw = {} if doy is None else {"doy": doy}
    # a hierarchy that interpolates between dates (the interp covariate) fills from the visible pixels of the stack
    # (computed once for all samples when the HVAE can, as the covariate itself)
    context: dict[str, Any] = {}
    if getattr(getattr(hvae, "spec", None), "interpolates", False):
        covariate = getattr(hvae, "interp_covariate", None)
        context["interp_from"] = covariate(x, valid, doy) if covariate is not None and doy is not None else (x, valid)
    # the guide's networks see the same inputs for every sample: run them once when the HVAE can
    encode = getattr(hvae, "encode", None)
    guide_kw = dict(kw, encoded=encode(x, valid, doy)) if encode is not None else kw
    # what the decoder fills: the stack, or one date of each stack
    pick = _DatePicker(hvae, x, date) if date is not None else None
    x_out, valid_out = (pick(x), pick(valid)) if pick is not None else (x, valid)
    model_kw = {k: pick(v) for k, v in {**kw, **context}.items()} if pick is not None else {**kw, **context}
    shape = tuple(valid_out.shape)
    keep = _valid_channels(valid_out, x_out)
    samples = []
    for _ in range(num_samples):
        guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid, **guide_kw)
        model = (poutine.condition(hvae.model, data=pick.latents(guide_trace)) if pick is not None
                 else poutine.replay(hvae.model, trace=guide_trace))
        site = poutine.trace(model).get_trace(None, None, valid_out, shape=shape, **model_kw).nodes["x"]
        filled = _site_mean(site["fn"]) if decoder_mean else site["value"]
        assert filled is not None  # the x site was sampled
        samples.append(torch.where(keep, x_out, filled))
    stacked = torch.stack(samples)
    mean = torch.where(keep, x_out, stacked.mean(0))
    std = torch.where(keep, torch.zeros((), dtype=x.dtype, device=x.device), stacked.std(0, unbiased=False))
    if pick is not None:
        return mean.squeeze(1), std.squeeze(1), stacked.squeeze(2)
    return mean, std, stacked


class _DatePicker:
    """One date of each stack of a temporal HVAE's batch: :meth:`__call__` narrows a ``(B, T, ...)`` input to
    ``(B, 1, ...)``, :meth:`latents` a guide trace's latent values (the per-date ones: ``l`` and the hierarchy's
    per-date layers; ``s`` and the shared layers are whole)."""

    def __init__(self, hvae: Any, x: torch.Tensor, date: torch.Tensor) -> None:
        spec = getattr(hvae, "spec", None)
        if spec is None or not spec.temporal or x.dim() != 5:
            raise ValueError("date= narrows the filling to one date of each stack: it needs a temporal HVAE and "
                             f"x of shape (B, T, C, H, W), got {tuple(x.shape)}")
        B, T = x.shape[:2]
        date = torch.as_tensor(date, device=x.device)
        if date.shape != (B,) or date.is_floating_point() or date.dtype == torch.bool or bool(
                ((date < 0) | (date >= T)).any()):
            raise ValueError(f"expected date as ({B},) integer indices in [0, {T}), got {date.dtype} "
                             f"{tuple(date.shape)}")
        self.rows, self.date = torch.arange(B, device=x.device), date.long()
        self.per_date = {"l", *spec.per_date_order}

    def __call__(self, value: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):  # the interp source (x, valid), when no covariate could be made
            raise ValueError("date= with a hierarchy that interpolates between dates needs doy (the stack's days of "
                             "the year) to compute its interp covariate from the whole stack")
        return value[self.rows, self.date].unsqueeze(1)

    def latents(self, trace) -> dict[str, torch.Tensor]:
        return {name: self(node["value"]) if name in self.per_date else node["value"]
                for name, node in trace.nodes.items()
                if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)}


def _site_mean(fn) -> torch.Tensor:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.mean
