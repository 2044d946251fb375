"""Straight-through relaxation of discrete sample sites, as a Pyro effect handler.

Inside :class:`StraightThrough`, every *latent* (not observed) sample site whose distribution is discrete
is given its straight-through version: the sampled value is hard (Bernoulli: float {0, 1}; categorical:
one-hot float ``(..., K)``) but carries the Gumbel-softmax / binary-concrete gradient, and the site's
``log_prob`` is the *discrete* log-probability of that value, differentiable in the value. Wrappers
(``Independent`` from ``.to_event``, ``MaskedDistribution`` from ``.mask``, expansions from plates) are
stripped, the innermost distribution is relaxed, and the wrappers are put back.

The relaxed version is ``fn.straight_through(temperature)`` when the innermost distribution has that method
(every discrete distribution of :mod:`hvaeseg.distributions` does); plain
:class:`~pyro.distributions.Bernoulli`, :class:`~pyro.distributions.Categorical` and
:class:`~pyro.distributions.OneHotCategorical` fall back to
:class:`~hvaeseg.distributions.StraightThroughBernoulli` / :class:`~hvaeseg.distributions.StraightThroughCategorical`
built from their logits. A plain categorical site therefore yields a one-hot float value under relaxation
(``docs/conventions.md``: the ``"s"`` value is ``(B, H, W, K)`` one-hot under straight-through).
Any other discrete distribution raises :class:`TypeError` (use the score-function estimator instead).

Apply it around both the guide and the model: the guide's relaxed samples feed the model, whose replayed
latent sites must accept the relaxed values.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch.distributions as tdist
from pyro.poutine.messenger import Messenger

from hvaeseg.distributions import EmpiricalPrior, StraightThroughBernoulli, StraightThroughCategorical
from hvaeseg.traces import peel, rewrap

__all__ = ["StraightThrough", "relax_distribution"]


def relax_distribution(fn: tdist.Distribution, temperature: float, *, name: str = "?") -> tdist.Distribution:
    """The straight-through version of ``fn`` (wrappers kept), or ``fn`` itself when it is not discrete.

    :param fn: a site distribution, possibly wrapped by ``Independent`` / masking / expansion.
    :param temperature: relaxation temperature (> 0) of the gradient; values are always hard.
    :param name: the site name, for error messages.
    :raises TypeError: for a discrete distribution with no straight-through version.
    """
    base, wrappers = peel(fn)
    support = getattr(base, "support", None)
    if isinstance(base, EmpiricalPrior):
        return fn  # no density, no sampler: nothing to relax (callers that need a density check first)
    if hasattr(base, "straight_through"):
        relaxed = base.straight_through(temperature)
    elif isinstance(base, tdist.Bernoulli):
        relaxed = StraightThroughBernoulli(base.logits, temperature)
    elif isinstance(base, (tdist.Categorical, tdist.OneHotCategorical)):
        relaxed = StraightThroughCategorical(base.logits, temperature)
    elif support is not None and support.is_discrete:
        raise TypeError(
            f"site {name!r}: expected a discrete distribution with .straight_through(temperature) "
            f"(or a Bernoulli / Categorical / OneHotCategorical), got {type(base).__name__}; "
            "use the score-function estimator for this model"
        )
    else:
        return fn
    if relaxed is base:
        return fn
    return rewrap(relaxed, wrappers)


class StraightThrough(Messenger):
    """Effect handler: relax every latent discrete sample site to its straight-through version.

    Usage::

        with StraightThrough(temperature=0.5):
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)

    :param temperature: Gumbel-softmax temperature (> 0) of the gradient.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        if not temperature > 0:
            raise ValueError(f"expected temperature > 0, got {temperature!r}")
        super().__init__()
        self.temperature = float(temperature)

    def _pyro_sample(self, msg) -> None:
        # replayed sites are relaxed too (their value is already set, but their log_prob must accept it)
        if msg["is_observed"] or isinstance(msg["fn"], dist.Delta):
            return
        relaxed = relax_distribution(msg["fn"], self.temperature, name=msg["name"])
        if relaxed is not msg["fn"]:
            msg["fn"] = relaxed
