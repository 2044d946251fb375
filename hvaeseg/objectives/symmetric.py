r"""Symmetric equilibrium learning of a (hierarchical) VAE with a segmentation latent.

Two players share one model and one guide. The decoder (theta: every parameter the model uses) maximises
:math:`L_p`; the encoder (phi: the parameters only the guide uses) maximises :math:`L_q`. Every sample is
drawn without gradient, so discrete latents are used exactly and nothing is reparameterised: the gradient
of each player is the average of :math:`\nabla \log p` (or :math:`\nabla \log q`) at the drawn samples.

Written against the site conventions of ``docs/conventions.md`` (``"s"``, ``"x"`` and any other latent
sites under ``pyro.plate("batch", B)``), so it trains any Pyro model / guide pair that follows them, not
only :class:`hvaeseg.HVAE`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import is_validation_enabled, site_is_subsample
from torch import Tensor

from hvaeseg.objectives._common import (
    all_valid_like,
    as_labelled,
    as_unlabelled,
    check_labels,
    check_probability,
    covariates,
    is_empirical,
    repeat,
    s_logits,
    s_value,
    squeeze_time,
    valid_from_x,
)
from hvaeseg.objectives.exact import exact_log_joint, marginal_log_prob, posterior_cross_entropy
from hvaeseg.objectives.pool import fill_void_nearest
from hvaeseg.traces import labelled_log_prob, replay, site_distribution

__all__ = ["SymmetricEquilibrium", "SymmetricWeights", "relabel_maps"]


def relabel_maps(maps: Tensor, rho: float, num_classes: int | None) -> Tensor:
    """Each ``(B, H, W)`` label map, with probability ``rho``, with its class ids sent through a random map
    of the ``num_classes`` classes to themselves (uniform, with replacement); void (``-1``) stays void.

    Draws from the global torch generator (nothing when ``rho == 0``).
    """
    if rho <= 0:
        return maps
    if num_classes is None:
        raise ValueError("relabel_maps: expected num_classes (the number of classes K >= 1) when rho > 0, got None")
    B = maps.shape[0]
    chosen = torch.rand(B, device=maps.device) < rho
    perm = torch.randint(num_classes, (B, num_classes), device=maps.device)
    identity = torch.arange(num_classes, device=maps.device).expand(B, num_classes)
    perm = torch.where(chosen[:, None], perm, identity)
    flat = maps.flatten(1)
    out = torch.gather(perm, 1, flat.clamp(min=0))
    return torch.where(flat >= 0, out, flat).view_as(maps)


@dataclass(frozen=True)
class SymmetricWeights:
    r"""Weights of the four terms of symmetric learning (each finite and >= 0; a zero weight skips the term).

    :param labelled_p: decoder, labelled batch: :math:`E_{(x,s)} E_{q(l,z,s_{void}|x,s)} \log p(x,s,l,z)`.
    :param unlabelled_p: decoder, unlabelled batch: :math:`E_{x'} E_{q(s,l,z|x')} \log p(x',s,l,z)`.
    :param supervised_q: encoder, labelled batch: :math:`E_{(x,s)} \log q(s|x)` over labelled pixels.
    :param sleep_q: encoder, label pool: :math:`E_{s''} E_{p(l)p(z,\tilde x|s'',l)} \log q(s'',l,z|\tilde x)`.
    :param posterior_q: encoder, unlabelled batch, with ``exact_s`` only:
        :math:`E_{x'} \sum_i \sum_k p(s_i = k|x') \log q(s_i = k|x')`, the exact posterior held fixed.
    """

    labelled_p: float = 1.0
    unlabelled_p: float = 1.0
    supervised_q: float = 1.0
    sleep_q: float = 1.0
    posterior_q: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"expected SymmetricWeights.{f.name} as a number, got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"expected SymmetricWeights.{f.name} finite and >= 0, got {value!r}")
            object.__setattr__(self, f.name, float(value))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


class SymmetricEquilibrium:
    r"""Symmetric equilibrium learning (Flach, Schlesinger and Shekhovtsov, 2024) for semi-supervised
    segmentation: returns a (decoder loss, encoder loss) pair, like Pyro's ``ReweightedWakeSleep``.

    With a labelled batch :math:`(x, s)` (void pixels ``-1`` allowed), an unlabelled batch :math:`x'` and a
    batch of label maps :math:`s''` from the label pool (:class:`~hvaeseg.objectives.LabelPool`), the
    decoder maximises

    .. math::

        L_p(\theta) = w_1\, E_{(x,s)} E_{q_\phi(l,z,s_{void}|x,s)} \log p_\theta(x, s, l, z)
                    + w_2\, E_{x'} E_{q_\phi(s,l,z|x')} \log p_\theta(x', s, l, z)

    and the encoder maximises

    .. math::

        L_q(\phi) = w_3\, E_{(x,s)} \log q_\phi(s_{lab}|x)
                  + w_4\, E_{s''} E_{p_\theta(l)} E_{p_\theta(z,\tilde x|s'',l)}
                    \log q_\phi(s''_{lab}, l, z | \tilde x),

    where :math:`E_{(x,s)}`, :math:`E_{x'}`, :math:`E_{s''}` average over the images of each batch (so
    batch sizes do not change the balance of the terms) and the inner expectations are estimated with
    ``num_particles`` samples per image. The gradients are taken with the samples held fixed: the decoder
    steps along :math:`E_q[\nabla_\theta \log p]`, the encoder along :math:`E_p[\nabla_\phi \log q]`.

    Void pixels:

    - in :math:`L_p` they are latent: the guide, given ``s`` with ``-1``, samples them from q(s|x) together
      with ``l`` and ``z`` (``docs/conventions.md``) and the model scores the completed map;
    - in the supervised term :math:`\log q(s_{lab}|x)` they are ignored: it is the sum of the per-pixel
      log-probabilities from the guide's ``"s"`` logits over the labelled pixels only;
    - in the sleep term, void pixels of a pool map are filled with the class of the nearest labelled pixel
      (:func:`~hvaeseg.objectives.pool.fill_void_nearest`) to generate :math:`\tilde x`, and left out of
      :math:`\log q(s''|\tilde x)`.

    Unsupervised mode (no labelled batch and no pool): the sleep term draws :math:`s` from the model's own
    prior, ``model(x=None, s=None, valid=all-True)``, which needs a model whose ``s`` prior can be sampled
    (not the empirical prior). With a labelled batch but no pool, the sleep term needs a pool and a
    :class:`ValueError` says so (set ``weights.sleep_q = 0`` to train without it).

    Parameter groups: step the decoder parameters (theta, every parameter the model uses; see
    :func:`hvaeseg.traces.split_parameters`) with the decoder loss and the encoder parameters (phi, only
    used by the guide) with the encoder loss. The encoder loss also depends on theta when the guide reuses
    the decoder's prior logits (the ladder guide of the HVAE does), and the decoder loss does not depend on
    phi; only phi must be stepped with the encoder loss.

    How the model and the guide are called (keywords as in ``docs/conventions.md``):

    - labelled: ``guide(x, s=s, valid=valid)`` sampled under ``torch.no_grad()``; then ``model(x=x,
      s=s_completed, valid=valid)`` replayed on the guide's samples and scored with gradient; the supervised
      term runs the guide only up to its ``"s"`` site (:func:`~hvaeseg.traces.site_distribution`);
    - unlabelled: ``guide(x', s=None, valid=valid')`` sampled without gradient, ``model(x=x', s=s_sampled,
      valid=valid')`` replayed and scored;
    - sleep: ``model(x=None, s=s''_filled, valid=all-True)`` sampled without gradient (``valid`` shaped like
      the other batches' masks, ``(B'', H, W)`` or ``(B'', T, H, W)``; ``None`` when there is no other
      batch), then ``guide(x~, s=None, valid=all-True)`` replayed on the model's values and scored.

    Particles are drawn by repeating each batch ``num_particles`` times along the batch dimension, which is
    exact because every site is under the batch plate.

    Sleep masks (``sleep_masks=True``): the generated images are shown to the guide under the cloud masks
    of the real batch (each generated image gets the ``valid`` mask of a real image of the unlabelled, else
    the labelled, batch, drawn with the global generator), so the encoder learns the task it faces, where
    real inputs are partly occluded. The generated image itself is complete; only the guide's view is
    masked. With ``False`` the guide sees every generated pixel.

    Relabelled sleep maps (``sleep_relabel = rho > 0``): a label pool holds only the classes somebody
    labelled, so the sleep term never shows the encoder a class that no labelled location holds, and the
    encoder can never predict it. With probability ``rho`` each pool map is relabelled before generation:
    every class id ``c`` of the map becomes ``perm[c]`` for an independent uniform random map ``perm`` of
    the ``K`` classes to the ``K`` classes (drawn with replacement, so regions may merge), which keeps the
    pool's spatial layouts and lets every class appear. The number of classes is the guide's ``"s"`` site
    size. ``rho = 0`` (default) draws nothing and changes nothing.

    :param weights: :class:`SymmetricWeights` (default: all 1).
    :param num_particles: samples per image for every expectation (>= 1).
    :param sleep_masks: show generated images to the guide under real cloud masks.
    :param sleep_relabel: probability that a sleep map is relabelled (see above), in ``[0, 1]``.
    :param exact_s: the model is an :class:`hvaeseg.HVAE` whose posterior of ``s`` is exact
        (:attr:`hvaeseg.HierarchySpec.exact_s`; :mod:`hvaeseg.objectives.exact`): the decoder's two terms are then
        the exact log-likelihoods :math:`\log p(x, s_{lab})` and :math:`\log p(x')` (the classes of every
        unlabelled pixel summed over, which is EM's gradient), and the encoder also learns the exact posterior of
        the unlabelled images (weight ``posterior_q``). ``num_particles`` and ``wake_holdout`` do not apply.
    :param wake_holdout: probability, in ``[0, 1]``, that an image (temporal: a date of a stack) of the unlabelled
        wake batch hides from the guide the pixels under the cloud mask of another image of the batch (drawn
        with the global generator); the model still scores them, so the decoder learns to predict pixels the
        posterior did not see, which is what inpainting asks of it. A model whose image takes the ``interp``
        covariate computes it from the pixels the guide saw (``interp_from``). 0 (default): the guide sees every
        valid pixel, as above.

    References:

    - B. Flach, D. Schlesinger, A. Shekhovtsov. Symmetric Equilibrium Learning of VAEs. AISTATS 2024.
    """

    def __init__(
        self,
        weights: SymmetricWeights | None = None,
        *,
        num_particles: int = 1,
        sleep_masks: bool = False,
        sleep_relabel: float = 0.0,
        num_classes: int | None = None,
        wake_holdout: float = 0.0,
        exact_s: bool = False,
    ) -> None:
        if weights is None:
            weights = SymmetricWeights()
        if not isinstance(weights, SymmetricWeights):
            raise TypeError(f"expected weights as SymmetricWeights, got {type(weights).__name__}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"expected num_particles as an int >= 1, got {num_particles!r}")
        check_probability(sleep_relabel, "sleep_relabel")
        if sleep_relabel > 0 and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                  or num_classes < 1):
            raise ValueError(f"sleep_relabel needs num_classes (the number of classes K >= 1), got {num_classes!r}")
        self.wake_holdout = check_probability(wake_holdout, "wake_holdout")
        if not isinstance(exact_s, bool):
            raise ValueError(f"expected exact_s as true or false, got {exact_s!r}")
        if exact_s and self.wake_holdout > 0:
            raise ValueError("wake_holdout hides pixels from the guide, which the exact posterior never uses: set "
                             "wake_holdout=0 with exact_s")
        self.exact_s = exact_s
        self.weights = weights
        self.num_particles = num_particles
        self.sleep_masks = bool(sleep_masks)
        self.sleep_relabel = float(sleep_relabel)
        self.num_classes = num_classes
        #: ``exact_s``: where ``posterior_q`` takes its target, ``(x, valid, doy) -> (B, H, W, K)`` logits of the
        #: exact posterior (e.g. of a Polyak average of the decoder, ``HVAEConfig.teacher_decay``); None: the model's
        self.teacher: Any = None

    # ------------------------------------------------------------------------------------------- public
    def differentiable_loss(
        self,
        model: Any,
        guide: Any,
        *,
        labelled: Any = None,
        unlabelled: Any = None,
        pool: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``(decoder_loss, encoder_loss) = (-L_p, -L_q)`` for one step, as tensors to back-propagate (Pyro's
        ``ELBO.differentiable_loss``; a pair, as for ``ReweightedWakeSleep``).

        :param model: ``model(x=None, s=None, valid=None)``.
        :param guide: ``guide(x, s=None, valid=None)``.
        :param labelled: ``(x, s, valid)`` or a ``PatchBatch``: x ``(B, C, H, W)`` float, s ``(B, H, W)``
            int64 with -1 = void, valid ``(B, H, W)`` bool or None (temporal: ``(B, T, ...)``).
        :param unlabelled: ``(x', valid')`` or a ``PatchBatch`` (its labels are ignored).
        :param pool: ``(B'', H, W)`` int64 label maps from the label pool (-1 = void).
        :returns: two scalar tensors; backpropagate each into its own parameter group.
        """
        terms = self.terms(model, guide, labelled=labelled, unlabelled=unlabelled, pool=pool)
        return terms["decoder_loss"], terms["encoder_loss"]

    def loss(
        self,
        model: Any,
        guide: Any,
        *,
        labelled: Any = None,
        unlabelled: Any = None,
        pool: Tensor | None = None,
    ) -> tuple[float, float]:
        """``(decoder_loss, encoder_loss)`` as numbers, without gradients (Pyro's ``ELBO.loss``); arguments as
        in :meth:`differentiable_loss`."""
        with torch.no_grad():
            dec, enc = self.differentiable_loss(model, guide, labelled=labelled, unlabelled=unlabelled, pool=pool)
        return float(dec), float(enc)

    def terms(
        self,
        model: Any,
        guide: Any,
        *,
        labelled: Any = None,
        unlabelled: Any = None,
        pool: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The two losses and every unweighted term (mean per image) by name, for logging.

        Keys: ``decoder_loss``, ``encoder_loss`` and those of the computed terms among ``labelled_p``,
        ``unlabelled_p``, ``supervised_q``, ``sleep_q``, ``posterior_q`` (``exact_s``). Arguments as in
        :meth:`differentiable_loss`.
        """
        lab = as_labelled(labelled)
        unl = as_unlabelled(unlabelled)
        if lab is None and unl is None:
            raise ValueError("expected a labelled and/or an unlabelled batch, got neither")
        if pool is not None:
            check_labels(pool, None, "pool")
        w = self.weights
        out: dict[str, Tensor] = {}
        fn = None
        if self.exact_s:
            self._exact(model, guide, lab, unl, out)
        elif lab is not None and w.labelled_p > 0:
            # one guide pass serves both labelled terms: its samples (no gradient) for L_p, its q(s|x) for L_q
            out["labelled_p"], fn = self._wake(model, guide, lab.x, lab.s, lab.valid, lab.doy,
                                               s_site=w.supervised_q > 0)
        if unl is not None and w.unlabelled_p > 0 and not self.exact_s:
            out["unlabelled_p"], _ = self._wake(model, guide, unl.x, None, unl.valid, unl.doy,
                                                hide=self._holdout(unl.valid))
        if lab is not None and w.supervised_q > 0:
            if fn is None:
                fn = site_distribution(guide, "s", lab.x, s=lab.s, valid=lab.valid, **lab.kwargs)
            out["supervised_q"] = labelled_log_prob(s_logits(fn, lab.s.shape), lab.s).mean()
        if w.sleep_q > 0:
            # the real batch whose cloud masks and dates the generated images borrow
            real = next(b for b in (unl, lab) if b is not None)
            template = next((b.valid for b in (unl, lab) if b is not None and b.valid is not None), None)
            masks = template if self.sleep_masks else None
            if template is None:
                template = next((valid_from_x(b.x) for b in (lab, unl) if b is not None), None)
            context = (masks, real.doy)
            if pool is not None:
                out["sleep_q"] = self._sleep(model, guide, pool, template, None, context)
            elif lab is None:
                out["sleep_q"] = self._sleep(model, guide, None, template, real.x.shape[0], context)  # real is unl
            else:
                raise ValueError(
                    "expected a label pool batch (pool=LabelPool.sample(n)) with a labelled batch: the sleep "
                    "term generates images from pool maps; pass pool=... or set weights.sleep_q=0"
                )
        ref = next(b for b in (lab, unl) if b is not None).x
        zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
        out["decoder_loss"] = -(
            w.labelled_p * out.get("labelled_p", zero) + w.unlabelled_p * out.get("unlabelled_p", zero)
        )
        out["encoder_loss"] = -(
            w.supervised_q * out.get("supervised_q", zero) + w.sleep_q * out.get("sleep_q", zero)
            + w.posterior_q * out.get("posterior_q", zero)
        )
        return out

    def _exact(self, model: Any, guide: Any, lab: Any, unl: Any, out: dict[str, Tensor]) -> None:
        """The ``exact_s`` terms into ``out``: ``labelled_p``, ``unlabelled_p`` (exact log-likelihoods, mean per
        image) and ``posterior_q`` (the guide's cross-entropy against the exact posterior on the unlabelled
        batch)."""
        w = self.weights
        if lab is not None and w.labelled_p > 0:
            out["labelled_p"] = marginal_log_prob(exact_log_joint(model, lab.x, lab.valid, lab.doy), lab.s).mean()
        if unl is None or (w.unlabelled_p == 0 and w.posterior_q == 0):
            return
        log_joint = exact_log_joint(model, unl.x, unl.valid, unl.doy)
        if w.unlabelled_p > 0:
            out["unlabelled_p"] = marginal_log_prob(log_joint).mean()
        if w.posterior_q > 0:
            fn = site_distribution(guide, "s", unl.x, s=None, valid=unl.valid, **unl.kwargs)
            shape = (unl.x.shape[0], *unl.x.shape[-2:])
            target = log_joint
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(unl.x, unl.valid, unl.doy)
            out["posterior_q"] = posterior_cross_entropy(target, s_logits(fn, shape)).mean()

    # ------------------------------------------------------------------------------------------ terms
    def _wake(
        self,
        model: Any,
        guide: Any,
        x: Tensor,
        s: Tensor | None,
        valid: Tensor | None,
        doy: Tensor | None = None,
        *,
        s_site: bool = False,
        hide: Tensor | None = None,
    ) -> tuple[Tensor, Any]:
        """Mean per image of log p(x, s, l, z) at samples of the guide (s completed at void pixels), and, with
        ``s_site``, the guide's ``"s"`` distribution of the first particle with its graph (for the
        supervised term; the samples themselves carry no gradient either way), else None. ``hide`` (``valid``'s
        shape): valid pixels the guide does not see and the model scores (``wake_holdout``)."""
        p = self.num_particles
        xr, sr, vr = repeat(x, p), repeat(s, p), repeat(valid, p)
        kw = covariates(repeat(doy, p))
        model_kw: dict[str, Any] = dict(kw)
        seen: Tensor | None = vr
        if hide is not None and vr is not None:
            seen = vr & ~repeat(hide, p)
            if _interpolates(model):
                model_kw["interp_from"] = (xr, seen)
        s_fn = None
        if s_site and p == 1:
            guide_trace = poutine.trace(guide).get_trace(xr, s=sr, valid=seen, **kw)
            s_fn = guide_trace.nodes["s"]["fn"] if "s" in guide_trace.nodes else None
        else:
            with torch.no_grad():
                guide_trace = poutine.trace(guide).get_trace(xr, s=sr, valid=seen, **kw)
        s_full = s_value(guide_trace, "guide")
        if s_full.is_floating_point():
            raise ValueError(f"expected the guide's 's' value as int64 class ids, got {s_full.dtype}")
        if sr is not None and is_validation_enabled():  # a cheap contract check, but a device sync
            lab = sr >= 0
            flat = squeeze_time(s_full, tuple(sr.shape))
            if flat.shape != sr.shape or not torch.equal(flat[lab], sr[lab]):
                raise ValueError(
                    "expected the guide given s to keep labelled pixels and sample void ones "
                    "(docs/conventions.md), got an 's' value that differs at labelled pixels"
                )
        model_trace = poutine.trace(replay(model, trace=guide_trace)).get_trace(x=xr, s=s_full, valid=vr, **model_kw)
        return torch.as_tensor(model_trace.log_prob_sum(), device=xr.device) / xr.shape[0], s_fn

    def _holdout(self, valid: Tensor | None) -> Tensor | None:
        """The pixels the guide does not see in a wake batch (``wake_holdout``), ``valid``'s shape, or None: each
        image (date of a stack) with probability ``wake_holdout`` takes the cloud mask of a random image of the
        batch; its valid pixels under it are hidden."""
        if self.wake_holdout == 0 or valid is None:
            return None
        flat = valid.reshape(-1, *valid.shape[-2:])  # (B[*T], H, W)
        donor = flat[torch.randint(flat.shape[0], (flat.shape[0],), device=valid.device)]
        pick = torch.rand(flat.shape[0], device=valid.device) < self.wake_holdout
        return (flat & ~donor & pick[:, None, None]).reshape(valid.shape)

    def _sleep(
        self,
        model: Any,
        guide: Any,
        pool: Tensor | None,
        template: Tensor | None,
        prior_batch: int | None,
        context: tuple[Tensor | None, Tensor | None] = (None, None),
    ) -> Tensor:
        """Mean per map of log q(s''_lab, l, z | x~) with (l, z, x~) drawn from the model given s''.

        ``context = (masks, doy)`` of a real batch: each generated image borrows the date (``doy``, when known)
        and, when ``masks`` is given, the cloud mask under which the guide sees it, of a real image drawn
        at random."""
        p = self.num_particles
        masks, doy = context
        with torch.no_grad():
            batch = pool.shape[0] if pool is not None else prior_batch
            if batch is None:
                raise ValueError("expected pool maps or prior_batch (the number of prior maps), got neither")
            rows = batch * p
            ref = masks if masks is not None else doy
            pick = None if ref is None else torch.randint(ref.shape[0], (rows,), device=ref.device)
            kw = covariates(None if doy is None else doy[pick])
            if pool is not None:
                pool = relabel_maps(pool.long(), self.sleep_relabel, self.num_classes)
                mask = pool >= 0
                has_void = not bool(mask.all())
                s_gen = repeat(fill_void_nearest(pool) if has_void else pool, p)
                rows = s_gen.shape[0]
                valid = all_valid_like(template, rows)
                if valid is not None and valid.shape[-2:] != s_gen.shape[-2:]:
                    raise ValueError(
                        f"expected pool maps of the batches' size {tuple(valid.shape[-2:])}, got "
                        f"{tuple(s_gen.shape[-2:])}"
                    )
                model_trace = poutine.trace(model).get_trace(x=None, s=s_gen, valid=valid, **kw)
            else:
                valid = all_valid_like(template, rows)
                prior_s = site_distribution(model, "s", x=None, s=None, valid=valid, **kw)
                if is_empirical(prior_s):
                    raise ValueError(
                        "unsupervised symmetric learning (no labelled batch, no pool) samples s from the model's "
                        "prior, which the empirical prior cannot: pass pool=LabelPool(...).sample(n) or set "
                        "s_prior='categorical' in the HierarchySpec"
                    )
                has_void, mask = False, None
                model_trace = poutine.trace(model).get_trace(x=None, s=None, valid=valid, **kw)
            if "x" not in model_trace.nodes:
                raise ValueError("expected a sample site named 'x' in the model (docs/conventions.md), got none")
            x_gen = model_trace.nodes["x"]["value"]
            if masks is not None and valid is not None and masks.shape[1:] == valid.shape[1:]:
                valid = masks[pick]
        guide_trace = poutine.trace(replay(guide, trace=model_trace)).get_trace(x_gen, s=None, valid=valid, **kw)
        total = torch.zeros((), dtype=x_gen.dtype, device=x_gen.device)
        guide_trace.compute_log_prob(site_filter=lambda name, site: not (has_void and name == "s"))
        s_seen = False
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if name == "s":
                s_seen = True
                if has_void:
                    logits = s_logits(site["fn"], s_gen.shape)
                    total = total + labelled_log_prob(logits, s_gen, repeat(mask, p)).sum()
                    continue
            total = total + site["log_prob_sum"]
        if not s_seen:
            raise ValueError("expected a sample site named 's' in the guide (docs/conventions.md), got none")
        return total / rows


def _interpolates(model: Any) -> bool:
    """Whether ``model`` is the model of an HVAE whose image takes the ``interp`` covariate (it then accepts
    ``interp_from=``)."""
    spec = getattr(getattr(model, "__self__", None), "spec", None)
    return bool(getattr(spec, "interpolates", False))
