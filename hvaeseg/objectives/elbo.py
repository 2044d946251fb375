r"""The semi-supervised ELBO on the same model and guide as symmetric learning.

Discrete latents are handled either by straight-through relaxed samples (biased, low variance) or by the
score-function (REINFORCE) estimator (unbiased, higher variance); Gaussian latents are reparameterised in
both cases. The objective needs a closed-form prior density of ``s``: the empirical prior has none.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor

from hvaeseg.distributions import bernoulli_kl
from hvaeseg.objectives._common import (
    NO_CLOSED_FORM_S_PRIOR,
    as_labelled,
    as_unlabelled,
    check_weight,
    covariates,
    is_empirical,
    repeat,
    s_logits,
    s_value,
)
from hvaeseg.objectives.exact import enumerated_elbo, exact_log_joint
from hvaeseg.objectives.relax import StraightThrough
from hvaeseg.traces import labelled_log_prob, per_image_log_prob, replay, unwrap

__all__ = ["ESTIMATORS", "SemiSupervisedELBO"]

#: the estimators of the gradient through discrete latents
ESTIMATORS = ("straight_through", "score_function")


class SemiSupervisedELBO:
    r"""Semi-supervised ELBO (Kingma et al., 2014) for a model / guide following ``docs/conventions.md``.

    For a labelled batch :math:`(x, s)` (void pixels ``-1`` are latent) and an unlabelled batch :math:`x'`,
    the loss is :math:`-(J_{lab} + J_{unl})` with

    .. math::

        J_{lab} = E_{(x,s)} \Big[ E_{q(l,z,s_{void}|x,s)}
                   \big[\log p(x,s,l,z) - \log q(l,z,s_{void}|x,s)\big] + \alpha \log q(s_{lab}|x) \Big],

        J_{unl} = E_{x'} E_{q(s,l,z|x')} \big[\log p(x',s,l,z) - \log q(s,l,z|x')\big],

    where the outer expectations average over the images of each batch and :math:`\log q(s_{lab}|x)` sums
    the guide's per-pixel ``"s"`` log-probabilities over labelled pixels (the classifier term).

    Estimators of the gradient through discrete samples:

    - ``"straight_through"``: the model and the guide run inside
      :class:`~hvaeseg.objectives.relax.StraightThrough`: discrete samples are hard, their gradient is the
      Gumbel-softmax / binary-concrete one at ``temperature``, and every log-probability is the discrete one.
      Biased (the bias shrinks with the temperature while the variance grows), low variance.
    - ``"score_function"``: a surrogate loss whose gradient is unbiased: for every guide site that cannot be
      reparameterised, the REINFORCE term :math:`(\mathrm{ELBO}_i - b_i)\nabla \log q_{site,i}` per image
      :math:`i` is added (each image's own ELBO is the learning signal of its own sites, images being
      independent under the batch plate). The baseline :math:`b_i` is the mean ELBO of the *other*
      particles of the same image (leave-one-out, which keeps the estimator unbiased) when
      ``num_particles >= 2``, and 0 otherwise. The value of the loss is unchanged by these terms (they
      are multiplied by :math:`\log q - \mathrm{stop\_grad}(\log q)`).

    In both cases Gaussian (reparameterisable) latents use ``rsample``.

    How the model and the guide are called: ``guide(x, s=s, valid=valid)`` (labelled; the guide keeps
    labelled pixels and samples void ones) or ``guide(x', s=None, valid=valid')``, then ``model(x=x, s=None,
    valid=valid)`` replayed on the guide's samples (the model's ``"s"`` site is latent and scores the
    completed map; under straight-through it receives one-hot floats ``(B, H, W, K)``).

    :param alpha: weight of the classifier term :math:`\log q(s_{lab}|x)` (>= 0).
    :param labelled_weight: weight :math:`w` of the labelled images' ELBO (>= 0): the loss is
        :math:`-(w J^{elbo}_{lab} + \alpha \log q(s_{lab}|x) + J_{unl})`, :math:`J^{elbo}_{lab}` the first part of
        :math:`J_{lab}` above. Above 1 the labelled images anchor the classes of the decoder more (as symmetric
        learning's ``labelled_p`` weight); 1 is the ELBO of the data.
    :param estimator: ``"straight_through"`` or ``"score_function"``.
    :param temperature: relaxation temperature for ``"straight_through"`` (> 0).
    :param num_particles: samples per image (>= 1), drawn by repeating the batch.
    :param exact_s: the model is an :class:`hvaeseg.HVAE` whose posterior of ``s`` is exact
        (:attr:`hvaeseg.HierarchySpec.exact_s`): the expectation over ``s`` is then a sum over each pixel's K
        classes (:func:`hvaeseg.objectives.exact.enumerated_elbo`), exact and without an estimator, and ``l``,
        which is no parent of the image, adds its closed-form :math:`-KL(q(l|x) \| p(l))`. ``estimator``,
        ``temperature`` and ``num_particles`` do not apply.
    :param unlabelled_q_share: with ``exact_s``, the share in [0, 1] of the unlabelled term's gradient that reaches
        the guide's q(s|x) (its value and the decoder's gradient are unchanged): 0 lets the encoder learn from the
        labels alone, as ``HVAEConfig.posterior_warmup`` does early in a run.
    :raises ValueError: from :meth:`differentiable_loss` when the model's ``"s"`` prior is the empirical prior
        ("ELBO needs a closed-form s prior: set s_prior='categorical' in the HierarchySpec").

    References:

    - D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling. Semi-supervised learning with deep generative
      models. NeurIPS 2014.
    - E. Jang, S. Gu, B. Poole. Categorical reparameterization with Gumbel-softmax. ICLR 2017.
    - R. J. Williams. Simple statistical gradient-following algorithms for connectionist reinforcement
      learning. Machine Learning, 1992.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        estimator: str = "straight_through",
        temperature: float = 0.5,
        *,
        num_particles: int = 1,
        exact_s: bool = False,
        unlabelled_q_share: float = 1.0,
        labelled_weight: float = 1.0,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"expected estimator in {ESTIMATORS}, got {estimator!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"expected temperature > 0, got {temperature!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"expected num_particles as an int >= 1, got {num_particles!r}")
        self.alpha = check_weight(alpha, "alpha")
        self.labelled_weight = check_weight(labelled_weight, "labelled_weight")
        self.estimator = estimator
        self.temperature = float(temperature)
        self.num_particles = num_particles
        if not isinstance(exact_s, bool):
            raise ValueError(f"expected exact_s as true or false, got {exact_s!r}")
        self.exact_s = exact_s
        share = unlabelled_q_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ValueError(f"expected unlabelled_q_share in [0, 1], got {share!r}")
        if share != 1 and not exact_s:
            raise ValueError("unlabelled_q_share scales the gradient of the enumerated q(s|x): it needs exact_s=True")
        self.unlabelled_q_share = float(share)

    def differentiable_loss(self, model: Any, guide: Any, *, labelled: Any = None, unlabelled: Any = None) -> Tensor:
        """The loss ``-(J_lab + J_unl)`` as a tensor to back-propagate (for ``"score_function"`` a surrogate
        with the same value), as Pyro's ``ELBO.differentiable_loss``.

        :param labelled: ``(x, s, valid)`` or a ``PatchBatch``.
        :param unlabelled: ``(x', valid')`` or a ``PatchBatch`` (its labels are ignored).
        """
        return self.terms(model, guide, labelled=labelled, unlabelled=unlabelled)["loss"]

    def loss(self, model: Any, guide: Any, *, labelled: Any = None, unlabelled: Any = None) -> float:
        """The loss as a number, without gradients (as Pyro's ``ELBO.loss``); arguments as in
        :meth:`differentiable_loss`."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, labelled=labelled, unlabelled=unlabelled))

    def terms(
        self, model: Any, guide: Any, *, labelled: Any = None, unlabelled: Any = None, differentiable: bool = False
    ) -> dict[str, Tensor]:
        """``loss`` and the terms by name (``labelled_elbo``, ``supervised_q``, ``unlabelled_elbo``), each a
        mean per image; arguments as in :meth:`differentiable_loss`. With ``differentiable`` the terms keep their graphs
        (the ELBO terms are then their surrogates, whose gradients are the estimator's), e.g. to measure the
        gradient norm of each term; otherwise they are detached, for logging."""
        keep = (lambda t: t) if differentiable else (lambda t: t.detach())
        lab = as_labelled(labelled)
        unl = as_unlabelled(unlabelled)
        if lab is None and unl is None:
            raise ValueError("expected a labelled and/or an unlabelled batch, got neither")
        out: dict[str, Tensor] = {}
        total: Tensor | None = None
        if lab is not None:
            elbo, surrogate, sup = self._elbo(model, guide, lab.x, lab.s, lab.valid, lab.doy)
            assert sup is not None  # _elbo returns it when given s
            out["labelled_elbo"] = keep(surrogate.mean() if differentiable else elbo.mean())
            out["supervised_q"] = keep(sup.mean())
            total = self.labelled_weight * surrogate.mean() + self.alpha * sup.mean()
        if unl is not None:
            elbo, surrogate, _ = self._elbo(model, guide, unl.x, None, unl.valid, unl.doy)
            out["unlabelled_elbo"] = keep(surrogate.mean() if differentiable else elbo.mean())
            total = surrogate.mean() if total is None else total + surrogate.mean()
        assert total is not None  # a labelled or an unlabelled batch (checked above)
        out["loss"] = -total
        return out

    # ------------------------------------------------------------------------------------------------
    def _elbo(
        self, model: Any, guide: Any, x: Tensor, s: Tensor | None, valid: Tensor | None, doy: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Per-row (image x particle) ELBO, its surrogate, and (labelled) log q(s_lab|x) per row."""
        if self.exact_s:
            return self._enumerated(model, guide, x, s, valid, doy, q_share=1.0 if s is not None else
                                    self.unlabelled_q_share)
        p = self.num_particles
        xr, sr, vr = repeat(x, p), repeat(s, p), repeat(valid, p)
        kw = covariates(repeat(doy, p))
        n = xr.shape[0]
        relax = StraightThrough(self.temperature) if self.estimator == "straight_through" else contextlib.nullcontext()
        with relax:
            guide_trace = poutine.trace(guide).get_trace(xr, s=sr, valid=vr, **kw)
            model_trace = poutine.trace(replay(model, trace=guide_trace)).get_trace(x=xr, s=None, valid=vr, **kw)
        s_value(model_trace, "model")
        if is_empirical(model_trace.nodes["s"]["fn"]):
            raise ValueError("ELBO " + NO_CLOSED_FORM_S_PRIOR)
        log_p = per_image_log_prob(model_trace, n)
        log_q = per_image_log_prob(guide_trace, n)
        elbo = log_p - log_q
        surrogate = elbo
        if self.estimator == "score_function":
            log_q_nr = per_image_log_prob(
                guide_trace, n, include_observed=False, site_filter=lambda name, site: not site["fn"].has_rsample
            )
            signal = elbo.detach()
            if p >= 2:
                per_image = signal.reshape(p, -1)
                baseline = ((per_image.sum(0, keepdim=True) - per_image) / (p - 1)).reshape(-1)
            else:
                baseline = torch.zeros_like(signal)
            surrogate = elbo + (signal - baseline) * (log_q_nr - log_q_nr.detach())
        sup = None
        if sr is not None:  # s is given
            s_value(guide_trace, "guide")
            sup = labelled_log_prob(s_logits(guide_trace.nodes["s"]["fn"], sr.shape), sr)
        return elbo, surrogate, sup

    def _enumerated(
        self, model: Any, guide: Any, x: Tensor, s: Tensor | None, valid: Tensor | None, doy: Tensor | None,
        q_share: float = 1.0,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`_elbo` with ``exact_s``: one row per image, the ELBO exact (its own surrogate); ``q_share`` of
        the gradient reaches q(s|x)."""
        kw = covariates(doy)
        guide_trace = poutine.trace(guide).get_trace(x, s=None, valid=valid, **kw)
        shape = (x.shape[0], *x.shape[-2:])
        q_logits = s_logits(guide_trace.nodes["s"]["fn"], shape)
        if q_share != 1:  # the same values; the gradient into the guide scaled by q_share
            q_logits = q_share * q_logits + (1 - q_share) * q_logits.detach()
        elbo = enumerated_elbo(exact_log_joint(model, x, valid, doy), q_logits, s)
        if "l" in guide_trace.nodes:  # -KL(q(l|x) || Bernoulli(1/2)) in closed form
            q_l = unwrap(guide_trace.nodes["l"]["fn"]).logits  # type: ignore[attr-defined]
            elbo = elbo - bernoulli_kl(q_l, torch.zeros_like(q_l)).flatten(1).sum(-1)
        sup = None if s is None else labelled_log_prob(q_logits, s)
        return elbo, elbo, sup
