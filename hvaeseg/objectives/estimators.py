r"""Estimators for comparing objectives on the same model and guide (all run without gradient).

- :func:`iwae_bound`: the importance-weighted lower bound on :math:`\log p(x)` with ``k`` samples;
- :func:`consistency`: encoder-decoder consistency, :math:`s \to \tilde x \sim p(x|s) \to \arg\max q(s|\tilde x)`;
- :func:`reconstruction_error`: error of the decoder mean at a posterior sample, on valid pixels.

All three only rely on ``docs/conventions.md`` (sites ``"s"`` and ``"x"`` under the batch plate).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor

from hvaeseg.objectives._common import (
    NO_CLOSED_FORM_S_PRIOR,
    check_labels,
    covariates,
    is_empirical,
    repeat,
    s_logits,
    s_value,
)
from hvaeseg.objectives.pool import fill_void_nearest
from hvaeseg.traces import per_image_log_prob, replay, site_distribution, unwrap

__all__ = ["consistency", "iwae_bound", "reconstruction_error"]


@torch.no_grad()
def iwae_bound(
    model: Any,
    guide: Any,
    x: Tensor,
    valid: Tensor | None = None,
    *,
    num_samples: int = 16,
    chunk_size: int | None = None,
    doy: Tensor | None = None,
) -> Tensor:
    r"""Importance-weighted lower bound on :math:`\log p(x)` per image (Burda et al., 2016):

    .. math::

        \mathcal{L}_k(x) = \log \frac{1}{k} \sum_{i=1}^{k}
            \frac{p(x, s_i, l_i, z_i)}{q(s_i, l_i, z_i | x)}, \qquad (s_i, l_i, z_i) \sim q(\cdot | x),

    with :math:`E[\mathcal{L}_k] \le E[\mathcal{L}_{k+1}] \le \log p(x)` and :math:`\mathcal{L}_k \to
    \log p(x)` as :math:`k \to \infty`. Only pixels where ``valid`` holds count in :math:`p(x|\cdot)`.

    :param x: ``(B, C, H, W)`` (or temporal ``(B, T, C, H, W)``) images.
    :param valid: matching validity mask or None.
    :param num_samples: ``k`` >= 1.
    :param chunk_size: samples drawn per pass (default: all ``k`` at once, as ``k`` copies of the batch);
        lower it to bound memory.
    :param doy: days of the year of the images (for models conditioned on them).
    :returns: ``(B,)`` float tensor (nats per image).
    :raises ValueError: when the model's ``s`` prior is the empirical prior (no density, so no bound).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"expected num_samples as an int >= 1, got {num_samples!r}")
    chunk = num_samples if chunk_size is None else max(1, min(int(chunk_size), num_samples))
    B = x.shape[0]
    log_w = []
    done = 0
    while done < num_samples:
        c = min(chunk, num_samples - done)
        xr, vr, kw = repeat(x, c), repeat(valid, c), covariates(repeat(doy, c))
        guide_trace = poutine.trace(guide).get_trace(xr, s=None, valid=vr, **kw)
        model_trace = poutine.trace(replay(model, trace=guide_trace)).get_trace(x=xr, s=None, valid=vr, **kw)
        s_value(model_trace, "model")
        if is_empirical(model_trace.nodes["s"]["fn"]):
            raise ValueError("the IWAE bound " + NO_CLOSED_FORM_S_PRIOR)
        n = xr.shape[0]
        lw = per_image_log_prob(model_trace, n) - per_image_log_prob(guide_trace, n)
        log_w.append(lw.reshape(c, B))
        done += c
    log_w_all = torch.cat(log_w)
    return torch.logsumexp(log_w_all, dim=0) - math.log(num_samples)


@torch.no_grad()
def consistency(
    model: Any,
    guide: Any,
    s: Tensor,
    num_samples: int = 1,
    *,
    valid: Tensor | None = None,
    doy: Tensor | None = None,
) -> float:
    r"""Encoder-decoder consistency: the fraction of labelled pixels where
    :math:`\arg\max_k q(s = k | \tilde x)` equals :math:`s`, for :math:`\tilde x \sim p(x | s)`.

    ``model(x=None, s=s_filled, valid=valid)`` generates :math:`\tilde x` (void pixels of ``s`` are filled by
    :func:`~hvaeseg.objectives.pool.fill_void_nearest` for generation and not counted), then the guide is
    run on :math:`\tilde x` up to its ``"s"`` site. A perfectly consistent pair scores 1; an encoder that
    ignores its input scores about the frequency of its favourite class.

    :param s: ``(B, H, W)`` int64 label maps, ``-1`` = void (e.g. test-set labels or label-pool maps).
    :param num_samples: images generated per map (>= 1).
    :param valid: optional all-True mask fixing the generated images' shape, ``(B, H, W)`` or temporal
        ``(B, T, H, W)`` (passed to the model and the guide); None lets the model decide.
    :param doy: days of the year the images are generated for (models conditioned on them), ``(B,)`` /
        ``(B, T)``.
    :returns: agreement in [0, 1], averaged over labelled pixels and samples.
    """
    check_labels(s, None, "consistency")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"expected num_samples as an int >= 1, got {num_samples!r}")
    s = s.long()
    labelled = s >= 0
    total = int(labelled.sum())
    if total == 0:
        raise ValueError("expected label maps with at least one labelled pixel, got only void")
    s_gen = fill_void_nearest(s) if not bool(labelled.all()) else s
    sr, vr, kw = repeat(s_gen, num_samples), repeat(valid, num_samples), covariates(repeat(doy, num_samples))
    model_trace = poutine.trace(model).get_trace(x=None, s=sr, valid=vr, **kw)
    if "x" not in model_trace.nodes:
        raise ValueError("expected a sample site named 'x' in the model (docs/conventions.md), got none")
    x_gen = model_trace.nodes["x"]["value"]
    logits = s_logits(site_distribution(guide, "s", x_gen, s=None, valid=vr, **kw), tuple(sr.shape))
    agree = (logits.argmax(-1) == sr) & repeat(labelled, num_samples)
    return float(agree.sum()) / (total * num_samples)


@torch.no_grad()
def reconstruction_error(
    model: Any, guide: Any, x: Tensor, valid: Tensor | None = None, doy: Tensor | None = None
) -> dict[str, float]:
    """Mean absolute and root-mean-square error of the decoder mean on valid pixels.

    One posterior sample ``(s, l, z) ~ q(. | x)`` is drawn, the model is replayed on it with ``x`` observed,
    and the mean of its ``"x"`` distribution (unwrapped, ``(B, C, H, W)``) is compared with ``x`` on the
    pixels where ``valid`` holds (all bands of a valid pixel count; ``valid`` may also have ``x``'s shape).

    :returns: ``{"mae": ..., "rmse": ...}`` in the units of ``x``.
    """
    kw = covariates(doy)
    guide_trace = poutine.trace(guide).get_trace(x, s=None, valid=valid, **kw)
    model_trace = poutine.trace(replay(model, trace=guide_trace)).get_trace(x=x, s=None, valid=valid, **kw)
    if "x" not in model_trace.nodes:
        raise ValueError("expected a sample site named 'x' in the model (docs/conventions.md), got none")
    base = unwrap(model_trace.nodes["x"]["fn"])
    mean = base.mean
    if mean.shape != x.shape:
        mean = mean.expand(x.shape)
    err = mean - x
    if valid is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    elif valid.shape == x.shape:
        mask = valid.bool()
    elif valid.dim() == x.dim() - 1:
        mask = valid.bool().unsqueeze(-3).expand(x.shape)
    else:
        raise ValueError(
            f"expected valid of shape x.shape without the band dim, got {tuple(valid.shape)} for x {tuple(x.shape)}"
        )
    n = int(mask.sum())
    if n == 0:
        raise ValueError("expected at least one valid pixel, got none")
    err = err[mask]
    return {"mae": float(err.abs().mean()), "rmse": float(err.pow(2).mean().sqrt())}
