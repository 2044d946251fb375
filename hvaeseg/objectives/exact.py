r"""Terms of both objectives when the posterior of ``s`` is exact (:attr:`hvaeseg.HierarchySpec.exact_s`).

When the image depends on ``s`` pixel by pixel and on nothing latent besides, the pixels' classes can be
enumerated: with :math:`a_{ik} = \log \pi_k + \log p(x_i | s_i = k)` (:meth:`hvaeseg.HVAE.s_posterior_logits`),

.. math::

    \log p(x, s_{lab}) = \sum_{i \in lab} a_{i s_i} + \sum_{i \notin lab} \log \sum_k e^{a_{ik}},
    \qquad p(s_i = k | x) = \mathrm{softmax}_k(a_{ik}),

so the decoder can step along the exact gradient of the (semi-supervised) log-likelihood, which is EM's, and the
encoder can learn the exact posterior of real images rather than of the model's samples. The ELBO's expectation
over ``s`` is a sum over the K classes of each pixel: no estimator, no variance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["enumerated_elbo", "exact_log_joint", "marginal_log_prob", "posterior_cross_entropy"]


def exact_log_joint(model: Any, x: Tensor, valid: Tensor | None, doy: Tensor | None) -> Tensor:
    """``log pi_k + log p(x_i | s_i = k)``, ``(B, H, W, K)``, from the HVAE whose ``model`` is given.

    :raises ValueError: when ``model`` is not an HVAE's model, or its hierarchy's s posterior is not exact.
    """
    hvae = getattr(model, "__self__", None)
    if not callable(getattr(hvae, "s_posterior_logits", None)):
        raise ValueError(
            "exact_s enumerates the classes of each pixel, which needs the model of an hvaeseg.HVAE "
            f"(model=hvae.model), got {getattr(model, '__qualname__', type(model).__name__)}"
        )
    return hvae.s_posterior_logits(x, valid, doy=doy)  # type: ignore[union-attr]


def marginal_log_prob(log_joint: Tensor, s: Tensor | None = None) -> Tensor:
    """``log p(x, s_lab)`` per image, ``(B,)``: labelled pixels (``s >= 0``) score their class, the others are
    summed over the classes (log-sum-exp).

    :param log_joint: ``(B, H, W, K)`` from :func:`exact_log_joint`.
    :param s: ``(B, H, W)`` int64 labels, ``-1`` = void, or None (every pixel unlabelled).
    """
    out = torch.logsumexp(log_joint, -1)
    if s is not None:
        chosen = log_joint.gather(-1, s.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out = torch.where(s >= 0, chosen, out)
    return out.flatten(1).sum(-1)


def posterior_cross_entropy(log_joint: Tensor, q_logits: Tensor, s: Tensor | None = None) -> Tensor:
    r"""``sum_i sum_k p(s_i = k | x) log q(s_i = k | x)`` per image, ``(B,)``, over the pixels without a label
    (all of them when ``s`` is None), the posterior held fixed: the encoder's term that fits q(s|x) to the
    model's exact posterior on real images.

    :param log_joint: ``(B, H, W, K)`` (:func:`exact_log_joint`); no gradient flows through it.
    :param q_logits: ``(B, H, W, K)`` logits of the guide's q(s|x).
    """
    post = torch.softmax(log_joint.detach(), -1)
    per_pixel = (post * torch.log_softmax(q_logits, -1)).sum(-1)
    if s is not None:
        per_pixel = torch.where(s < 0, per_pixel, torch.zeros((), dtype=per_pixel.dtype, device=per_pixel.device))
    return per_pixel.flatten(1).sum(-1)


def enumerated_elbo(log_joint: Tensor, q_logits: Tensor, s: Tensor | None = None) -> Tensor:
    r"""The ``s`` part of the ELBO per image, ``(B,)``, with each pixel's classes enumerated:
    ``sum_i a_{i s_i}`` over labelled pixels plus ``sum_i sum_k q_ik (a_ik - log q_ik)`` over the others (which is
    ``log p(x, s_lab) - KL(q || p(s_void | x))``). Gradients reach both ``log_joint`` and ``q_logits``.

    :param log_joint: ``(B, H, W, K)`` (:func:`exact_log_joint`).
    :param q_logits: ``(B, H, W, K)`` logits of q(s|x).
    :param s: ``(B, H, W)`` labels (``-1`` = void), or None.
    """
    log_q = torch.log_softmax(q_logits, -1)
    per_pixel = (log_q.exp() * (log_joint - log_q)).sum(-1)
    if s is not None:
        chosen = log_joint.gather(-1, s.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        per_pixel = torch.where(s >= 0, chosen, per_pixel)
    return per_pixel.flatten(1).sum(-1)
