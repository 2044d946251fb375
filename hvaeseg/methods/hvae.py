"""The HVAE as a training method: symmetric equilibrium learning and the semi-supervised ELBO.

Both train the same :class:`~hvaeseg.hierarchy.HVAE` with the same training aids (so that the comparison of
the two objectives stays fair); they differ in the objective and in the players:

- :class:`SymmetricMethod`: two players. The decoder (theta: every parameter the model uses) is stepped with
  the gradient of ``-L_p``, the encoder (phi: the parameters only the guide uses) with the gradient of
  ``-L_q``, each by its own optimizer (:class:`~hvaeseg.objectives.SymmetricEquilibrium`, stepped by a
  :class:`~hvaeseg.objectives.SymmetricStepper`).
- :class:`ELBOMethod`: one player, one optimizer on all parameters, the semi-supervised ELBO
  (:class:`~hvaeseg.objectives.SemiSupervisedELBO`), which needs a closed-form s prior.

Training aids shared by both (each a field of :class:`HVAEConfig`, so each can be switched off for an
ablation): dihedral augmentation of the labelled and unlabelled batches, decoupled weight decay on weight
tensors, an exponential moving average (EMA) of the encoder's U-Net for prediction, per-player gradient
clipping, a separate learning rate for the few global parameters (the image scale, the class logits of the
s prior), and, for symmetric learning, real cloud masks on the generated images the encoder learns from.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.hierarchy.spec import IMAGE_SCALES
from hvaeseg.methods.augment import Augmentation
from hvaeseg.methods.base import SeededMethod, StepBatch
from hvaeseg.methods.supervised import call_net, eval_mode
from hvaeseg.nets.ema import ema_copy, ema_decay_at, ema_update
from hvaeseg.objectives import SemiSupervisedELBO, SymmetricEquilibrium, SymmetricWeights
from hvaeseg.objectives._common import check_probability
from hvaeseg.objectives.elbo import ESTIMATORS
from hvaeseg.objectives.estimators import consistency, iwae_bound, reconstruction_error
from hvaeseg.objectives.stepper import SymmetricStepper, grad_norm

if TYPE_CHECKING:  # pragma: no cover
    from hvaeseg.data.loader import PatchBatch
    from hvaeseg.distributed import DistributedContext

__all__ = ["ELBOMethod", "GenerativeMethod", "HVAEConfig", "SymmetricMethod"]

#: the built-in hierarchies of :class:`HVAEConfig` (``hierarchy``)
HIERARCHIES = ("default", "pixel_mixture")


@dataclass(frozen=True)
class HVAEConfig:
    """Hyper-parameters shared by the HVAE methods.

    :param lr: AdamW learning rate (both players for symmetric learning).
    :param code_bits: D, bits of the global code l.
    :param channels: channels of each Bernoulli feature map of the default hierarchy.
    :param spec: a user hierarchy (overrides ``code_bits`` / ``channels`` / ``init_scale``; its classes,
        bands and temporal flag must match the data).
    :param weights: symmetric-learning weight per term.
    :param alpha: ELBO weight of the classifier term ``log q(s|x)`` on labelled pixels.
    :param labelled_elbo_weight: ELBO weight of the labelled images' ELBO (1: the data's ELBO; above 1 the labels
        anchor the decoder's classes more), the ELBO's counterpart of ``weights.labelled_p``.
    :param estimator: ELBO gradient estimator for discrete latents, ``"straight_through"`` or ``"score_function"``.
    :param temperature: straight-through relaxation temperature.
    :param num_particles: samples per image of every expectation (the score-function ELBO needs >= 2 for
        its leave-one-out baseline).
    :param s_prior: ``"categorical"`` (learned class logits; gives a density, so the IWAE bound can be
        reported, and is required by the ELBO) or ``"empirical"`` (symmetric learning only: s comes from the
        data and the label pool, no density).
    :param init_scale: initial scale of the image likelihood (normalised units) of the default hierarchy.
    :param global_lr: learning rate of the global parameters (image scale per band, s prior logits); they
        are few, and at ``lr`` they move too slowly to follow the networks.
    :param decoder_lr: learning rate of the decoder's networks (theta, but for the global parameters); None: ``lr``.
        A small decoder (e.g. a pixel mixture's, ``exact_s``) can follow the data at a higher rate than the encoder.
    :param weight_decay: decoupled weight decay on weight tensors (conv and linear kernels) of both players.
    :param augment: random dihedral transforms of the labelled and unlabelled batches.
    :param sleep_masks: symmetric learning: generated images reach the encoder under real cloud masks.
    :param sleep_relabel: symmetric learning: probability that a sleep map's classes are sent through a
        random map of the classes before generation, so that classes no labelled location holds appear in
        the sleep term (:class:`~hvaeseg.objectives.SymmetricEquilibrium`; 0: off). Without it the encoder
        never predicts a class that no labelled location holds; with 0.25, synthetic:small at N = 10 (no
        water among the labels, 1100 steps, 3 seeds) went from 0.707 / 0.484 to 0.720 / 0.592 test accuracy /
        mean IoU, water found on 2 seeds of 3 (``bench/results/sleep_relabel/``).
    :param clip_norm: clip each player's gradient norm (None: no clipping). The losses are sums over
        pixels, so their gradient norms are in the thousands; a low threshold fires on every step.
    :param ema_decay: decay of the moving average of the encoder's U-Net used for prediction (0: predict
        with the current weights).
    :param day_of_year: the default hierarchy conditions its layers and image on the day of the year
        (``doy`` parents: phenology), and its guide's U-Net takes the date too.
    :param shared_channels: temporal default hierarchy: channels of ``u``, the per-pixel Gaussian latent
        shared by the dates of a stack (parent of ``x``), so filling an occluded pixel uses the same pixel's
        clear dates (0: no shared layer).
    :param interpolation: temporal default hierarchy: the image takes the ``interp`` covariate, so the mean of a
        date is its linear interpolation from the stack's other clear dates plus the decoder's correction
        (:mod:`hvaeseg.hierarchy.interpolation`; ignored for single-date data).
    :param wake_holdout: symmetric learning: probability that an unlabelled image (date of a stack) hides from
        the guide the pixels under another image's cloud mask while the decoder still scores them
        (:class:`~hvaeseg.objectives.SymmetricEquilibrium`): the decoder learns to predict unseen pixels, as
        inpainting asks (0: off).
    :param sleep_warmup: symmetric learning: the sleep term's weight rises linearly from 0 to
        ``weights.sleep_q`` over this many steps (0: full weight from the start), so that the encoder does not
        learn from generated images before the decoder has learned anything; the term is not computed while
        its weight is 0.
    :param posterior_warmup: symmetric learning with ``exact_s``: ``posterior_q``'s weight rises linearly from 0 to
        ``weights.posterior_q`` over this many steps (0: full weight from the start), as ``sleep_warmup`` ramps the
        sleep term: the encoder learns from the labels alone while the decoder's posterior is still a poor teacher
        (the consistency ramp-up of semi-supervised learning; the term is not computed while its weight is 0).
        The ELBO with ``exact_s``: the share of the unlabelled term's gradient that reaches q(s|x) rises likewise
        (``SemiSupervisedELBO.unlabelled_q_share``), so both objectives get the same schedule.
    :param supervised_steps: symmetric learning: after each full step (both players, every term), this many
        steps of the encoder's supervised term alone (the labelled batch's log q(s|x); the decoder
        and the sleep term rest), each about as costly as a step of the supervised U-Net, so that a
        wall-clock budget buys the encoder more updates on the labels (0: every step is a full step).
    :param image_scale: the default hierarchy's image scale, ``"band"`` (one learned scale per band) or
        ``"pixel"`` (predicted per pixel and band by the decoder: heteroscedastic, e.g. water tighter than
        urban).
    :param image_cov_rank: the default hierarchy's image ``cov_rank``: the rank of each pixel's covariance
        between bands beyond the diagonal (0: independent bands given the latents; see
        :class:`~hvaeseg.hierarchy.spec.ImageLayerSpec`).
    :param decoder_interactions: the default hierarchy's decoder nets also project the products of their
        spatial and global parents (``NetworkSpec.decoder_interactions``): class spectra that follow the day of
        the year.
    :param exact_s: both objectives use the exact posterior of ``s``, which needs a hierarchy (``spec``) where the
        image depends on ``s`` pixel by pixel (:attr:`~hvaeseg.hierarchy.spec.HierarchySpec.exact_s`, e.g.
        ``examples/specs/pixel_mixture.yaml``): the ELBO enumerates each pixel's classes instead of estimating,
        and symmetric learning's decoder steps along the exact log-likelihood (EM) while its encoder also
        learns the exact posterior of the unlabelled images (:mod:`hvaeseg.objectives.exact`).
    :param hierarchy: the built-in hierarchy when ``spec`` is not given: ``"default"``
        (:meth:`~hvaeseg.hierarchy.spec.HierarchySpec.default`, Bernoulli feature maps between s and x) or
        ``"pixel_mixture"`` (:meth:`~hvaeseg.hierarchy.spec.HierarchySpec.pixel_mixture`: s, doy -> x pixel by
        pixel, whose s posterior is exact; it takes ``image_cov_rank``, ``image_scale``, ``init_scale``,
        ``decoder_interactions``, ``day_of_year`` and ``interpolation`` from this config).
    :param teacher_decay: symmetric learning with ``exact_s``: the target of ``posterior_q`` is the exact posterior
        of a Polyak (exponential moving) average of the decoder with this decay (warmed up as ``ema_decay``),
        instead of the live decoder's. 0 (default): the live decoder. The ELBO has no such term.
    :param decoder_betas: with ``exact_s``, the candidate weights ``beta`` of the decoder's exact class likelihood
        in the segmentation ``argmax_k log q(s=k|x) + beta log p(x|s=k)`` (the encoder's posterior and the
        decoder's per-pixel evidence together: 0 is the encoder alone, 1 their product with the class prior counted
        once, inside q). Each validation scores every candidate and keeps the best by mean IoU, so the
        checkpoint and its ``beta`` are chosen together on the validation tiles (the first on a tie: list 0 first
        to prefer the encoder). Default ``(0.0,)``: the encoder alone.
    """

    lr: float = 1e-3
    code_bits: int = 8
    channels: int = 8
    spec: dict[str, Any] | None = None
    weights: SymmetricWeights = field(default_factory=SymmetricWeights)
    alpha: float = 10.0
    labelled_elbo_weight: float = 1.0
    estimator: str = "straight_through"
    temperature: float = 0.5
    num_particles: int = 1
    s_prior: str = "categorical"
    init_scale: float = 0.25
    global_lr: float = 1e-2
    decoder_lr: float | None = None
    weight_decay: float = 0.02
    augment: bool = True
    sleep_masks: bool = True
    sleep_relabel: float = 0.25
    clip_norm: float | None = None
    ema_decay: float = 0.999
    day_of_year: bool = True
    image_scale: str = "band"
    sleep_warmup: int = 0
    posterior_warmup: int = 0
    shared_channels: int = 4
    interpolation: bool = False
    wake_holdout: float = 0.0
    supervised_steps: int = 0
    image_cov_rank: int = 0
    decoder_interactions: bool = False
    exact_s: bool = False
    hierarchy: str = "default"
    teacher_decay: float = 0.0
    decoder_betas: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        for name in ("lr", "global_lr", "temperature", "init_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if self.s_prior not in ("categorical", "empirical"):
            raise ValueError(f"s_prior: expected 'categorical' or 'empirical', got {self.s_prior!r}")
        check_probability(self.wake_holdout, "wake_holdout")
        lr = self.decoder_lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ValueError(f"decoder_lr: expected a positive number or None (the encoder's lr), got {lr!r}")
        for name in ("sleep_warmup", "posterior_warmup", "supervised_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0 (steps), got {value!r}")
        if (isinstance(self.shared_channels, bool) or not isinstance(self.shared_channels, int)
                or self.shared_channels < 0):
            raise ValueError(f"shared_channels: expected an int >= 0, got {self.shared_channels!r}")
        rank = self.image_cov_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"image_cov_rank: expected an int >= 0 (0: independent bands), got {rank!r}")
        if not isinstance(self.decoder_interactions, bool):
            raise ValueError(f"decoder_interactions: expected true or false, got {self.decoder_interactions!r}")
        if self.hierarchy not in HIERARCHIES:
            raise ValueError(f"hierarchy: expected one of {HIERARCHIES}, got {self.hierarchy!r}")
        if self.image_scale not in IMAGE_SCALES:
            raise ValueError(f"image_scale: expected one of {IMAGE_SCALES}, got {self.image_scale!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {self.estimator!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha: expected a finite number >= 0, got {self.alpha!r}")
        w = self.labelled_elbo_weight
        if isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"labelled_elbo_weight: expected a finite number >= 0, got {w!r}")
        if isinstance(self.num_particles, bool) or not isinstance(self.num_particles, int) or self.num_particles < 1:
            raise ValueError(f"num_particles: expected an int >= 1, got {self.num_particles!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if self.clip_norm is not None and not (isinstance(self.clip_norm, (int, float)) and self.clip_norm > 0):
            raise ValueError(f"clip_norm: expected a positive number or None, got {self.clip_norm!r}")
        check_probability(self.sleep_relabel, "sleep_relabel")
        td = self.teacher_decay
        if isinstance(td, bool) or not isinstance(td, (int, float)) or not 0 <= td < 1:
            raise ValueError(f"teacher_decay: expected a number in [0, 1) (0: the live decoder), got {td!r}")
        if self.posterior_warmup and not self.exact_s:
            raise ValueError("posterior_warmup ramps what the encoder learns from the exact posterior of s: set "
                             "exact_s: true, or posterior_warmup: 0")
        if td > 0 and not self.exact_s:
            raise ValueError("teacher_decay averages the decoder that teaches posterior_q, a term of exact_s: set "
                             "exact_s: true, or teacher_decay: 0")
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")
        betas = self.decoder_betas
        if (not isinstance(betas, (list, tuple)) or not betas
                or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0
                       for b in betas) or len(set(betas)) != len(betas)):
            raise ValueError(f"decoder_betas: expected a non-empty list of distinct finite numbers >= 0, e.g. "
                             f"[0, 0.25, 0.5, 1], got {betas!r}")
        object.__setattr__(self, "decoder_betas", tuple(float(b) for b in betas))
        if any(self.decoder_betas) and not self.exact_s:
            raise ValueError("decoder_betas weighs the decoder's exact class likelihood into the segmentation: set "
                             "exact_s: true (a hierarchy whose posterior of s is exact), or decoder_betas: [0]")
        for name in ("augment", "sleep_masks", "day_of_year", "exact_s"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if isinstance(self.weights, dict):
            object.__setattr__(self, "weights", SymmetricWeights(**self.weights))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class GenerativeMethod(Protocol):
    """A trained method with a generative model, the HVAE, to sample (posterior inpainting): ``symmetric`` and
    ``elbo``, or any registered method that exposes one as ``hvae``."""

    @property
    def hvae(self) -> HVAE: ...


def _param_groups(
    params: list[nn.Parameter], global_params: set[int], decoder_params: set[int], config: HVAEConfig
) -> list[dict]:
    """AdamW groups: weight tensors with decay, other tensors without, global parameters at ``global_lr``; with
    ``decoder_lr``, two more groups (weights, others) for the decoder's other parameters at that rate."""
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "plain": [], "global": []}
    if config.decoder_lr:
        groups.update({"decoder_decay": [], "decoder_plain": []})
    for p in params:
        key = "decay" if p.dim() > 1 else "plain"
        if id(p) in global_params:
            key = "global"
        elif id(p) in decoder_params:
            key = f"decoder_{key}"
        groups[key].append(p)
    return [
        {"params": group, "weight_decay": config.weight_decay if key.endswith("decay") else 0.0,
         "lr": config.global_lr if key == "global" else config.decoder_lr if key.startswith("decoder") else config.lr}
        for key, group in groups.items()
    ]


class _HVAEMethod(SeededMethod):
    """What the two HVAE methods share: the model, augmentation, EMA, optimizers per player, diagnostics, the
    generative metrics of an evaluation."""

    config_class: ClassVar[type] = HVAEConfig
    clip_norm = None

    def __init__(self, hvae: HVAE, config: HVAEConfig, seed: int = 0) -> None:
        self.hvae = hvae
        self.config = config
        super().__init__(seed)
        self.augmentation = Augmentation(dihedral=True) if config.augment else None
        self.ema = ema_copy(hvae.encoder.unet) if config.ema_decay > 0 else None
        self.clip_norm = config.clip_norm
        self.last_grad_norms: dict[str, float] = {}
        decoder = hvae.decoder
        self._global = {id(p) for p in (decoder.x_scale, decoder.s_logits) if p is not None}
        #: the two players' parameters (:meth:`HVAE.parameter_groups`): the decoder's (theta) and the encoder's (phi)
        self.decoder_params, self.encoder_params = hvae.parameter_groups()
        self._decoder = {id(p) for p in self.decoder_params} if config.decoder_lr else set()
        #: the decoder likelihood's weight in :meth:`predict_proba` (one of ``config.decoder_betas``)
        self.decoder_beta = config.decoder_betas[0]

    @classmethod
    def build(
        cls,
        in_channels: int,
        num_classes: int,
        *,
        temporal: bool = False,
        config: HVAEConfig | None = None,
        seed: int = 0,
        patch_size: int | None = None,
        device: str | torch.device = "cpu",
        band_names: Sequence[str] | None = None,
        band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> _HVAEMethod:
        """The default hierarchy for ``in_channels`` bands and ``num_classes`` classes (or ``config.spec``), on
        ``device``; arguments as in :meth:`hvaeseg.methods.base.SegmentationMethod.build` (``patch_size`` sizes
        the global latent; the bands' names and statistics do not matter to it)."""
        config = config or HVAEConfig()
        if config.spec is not None:
            spec = HierarchySpec.from_dict(config.spec)
            if (spec.num_classes, spec.image.bands, spec.temporal) != (num_classes, in_channels, temporal):
                raise ValueError(
                    f"the hierarchy declares {spec.num_classes} classes, {spec.image.bands} bands, temporal="
                    f"{spec.temporal}; the data has {num_classes} classes, {in_channels} bands, temporal={temporal}"
                )
        elif config.hierarchy == "pixel_mixture":
            spec = HierarchySpec.pixel_mixture(
                num_classes, in_channels, config.code_bits, cov_rank=config.image_cov_rank,
                image_scale=config.image_scale, init_scale=config.init_scale, temporal=temporal, patch_size=patch_size,
                day_of_year=config.day_of_year, interpolation=config.interpolation and temporal,
                decoder_interactions=config.decoder_interactions,
            )
        else:
            spec = HierarchySpec.default(
                num_classes, in_channels, config.code_bits, channels=config.channels,
                s_prior=config.s_prior, temporal=temporal, patch_size=patch_size,
                day_of_year=config.day_of_year, init_scale=config.init_scale, image_scale=config.image_scale,
                image_cov_rank=config.image_cov_rank, decoder_interactions=config.decoder_interactions,
                shared_channels=config.shared_channels, interpolation=config.interpolation and temporal,
            )
        if config.exact_s and not spec.exact_s:
            raise ValueError(f"exact_s: the posterior of s is not exact in this hierarchy: {spec.exact_s_problem} "
                             "(e.g. examples/specs/pixel_mixture.yaml), or set exact_s: false")
        return cls(HVAE(spec), config, seed=seed).to(device)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(_param_groups(params, self._global, self._decoder, self.config), lr=self.config.lr)

    def modules(self) -> dict[str, nn.Module]:
        return {"hvae": self.hvae} if self.ema is None else {"hvae": self.hvae, "ema": self.ema}

    def train(self, mode: bool = True) -> None:
        self.hvae.train(mode)
        if self.ema is not None:
            self.ema.eval()

    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        """``q(s|x)`` of the encoder (its EMA when kept), times ``p(x|s)`` raised to :attr:`decoder_beta` and
        renormalised when that is not 0: ``(B, K, H, W)``."""
        return self._predict(x, valid, doy, (self.decoder_beta,))[self.decoder_beta]

    def prediction_keys(self) -> tuple[float, ...]:
        """``config.decoder_betas`` when there are several to choose among, else none."""
        betas = self.config.decoder_betas
        return betas if len(betas) > 1 else ()

    def predict_candidates(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> dict[float, Tensor]:
        """:meth:`predict_proba` at every ``beta`` of ``config.decoder_betas``, from one encoder and one decoder
        pass."""
        return self._predict(x, valid, doy, self.config.decoder_betas)

    def use_prediction(self, key: float) -> None:
        if key not in self.config.decoder_betas:
            raise ValueError(f"decoder beta {key!r} is not among decoder_betas {list(self.config.decoder_betas)}")
        self.decoder_beta = float(key)

    def _predict(self, x: Tensor, valid: Tensor, doy: Tensor | None, betas: Sequence[float]) -> dict[float, Tensor]:
        if not self.hvae.spec.day_of_year:
            doy = None
        if self.ema is None:
            q = self.hvae.segment(x, valid, doy)
        else:
            with eval_mode(self.ema):
                q = torch.softmax(call_net(self.ema, x, valid, doy), dim=1)
        if not any(betas):
            return {b: q for b in betas}
        log_lik = self.hvae.class_log_likelihood(x, valid, doy=doy).movedim(-1, 1).to(q.dtype)  # (B, K, H, W)
        log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()
        return {b: torch.softmax(log_q + b * log_lik, dim=1) if b else q for b in betas}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decoder_beta": self.decoder_beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.decoder_beta = float(state.get("decoder_beta", self.config.decoder_betas[0]))

    def after_update(self, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.hvae.encoder.unet, ema_decay_at(step, self.config.ema_decay))

    def augment(self, batch: StepBatch) -> StepBatch:
        """The batch with a random dihedral element applied to each labelled and unlabelled patch."""
        if self.augmentation is None:
            return batch
        out = {}
        for name in ("labelled", "unlabelled"):
            b = getattr(batch, name)
            if b is not None:
                x, valid, labels = self.augmentation(b.x, b.valid, b.labels, self.generator)
                b = b._replace(x=x, valid=valid, labels=labels)
            out[name] = b
        return StepBatch(pool=batch.pool, **out)

    def use_label_pool(self, pool: Any) -> None:
        """Attach the run's label pool to the model, so that its empirical s prior can be sampled
        (:meth:`~hvaeseg.hierarchy.HVAE.attach_label_pool`: ``sample_prior``, ``Predictive``)."""
        self.hvae.attach_label_pool(pool)

    def _doy(self, batch: Any) -> Tensor | None:
        """The batch's days of the year when the hierarchy uses them (else None)."""
        return batch.doy if self.hvae.spec.needs_doy else None

    def _clip_and_measure(self, name: str, params: list[nn.Parameter]) -> None:
        self.last_grad_norms[name] = grad_norm(params)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.clip_norm)

    def step_statistics(self) -> dict[str, float]:
        return {f"grad_norm_{k}": v for k, v in self.last_grad_norms.items()}

    def evaluation_metrics(self, batches: Iterable[PatchBatch], *, iwae_samples: int = 8) -> dict[str, Any]:
        """The IWAE bound (nats per observed value: per-image bounds summed, over valid pixels x bands; it needs
        a closed-form s prior, else None) with ``iwae_samples`` importance samples, consistency on the split's
        label maps, and reconstruction error, on ``batches``."""
        hvae, k = self.hvae, iwae_samples
        has_density = hvae.spec.s_prior != "empirical"
        iwae_sum, observed, agree, labelled, mae, rmse = 0.0, 0, 0.0, 0, [], []
        with torch.no_grad():
            for batch in batches:
                if has_density:
                    iwae_sum += float(iwae_bound(hvae.model, hvae.guide, batch.x, batch.valid, num_samples=k,
                                                 doy=batch.doy).sum())
                    observed += int(batch.valid.sum()) * int(batch.x.shape[-3])
                keep = (batch.labels >= 0).flatten(1).any(1)  # all-void maps say nothing
                if bool(keep.any()):
                    maps, shape = batch.labels[keep], torch.ones_like(batch.valid[keep])  # shape: dates of stacks
                    n = int((maps >= 0).sum())
                    doy = None if batch.doy is None else batch.doy[keep]
                    # weighted by labelled pixels
                    agree += consistency(hvae.model, hvae.guide, maps, valid=shape, doy=doy) * n
                    labelled += n
                if bool(batch.valid.any()):
                    rec = reconstruction_error(hvae.model, hvae.guide, batch.x, batch.valid, batch.doy)
                    mae.append(rec["mae"])
                    rmse.append(rec["rmse"])
        return {
            "iwae_nats_per_value": iwae_sum / observed if observed else None,
            "iwae_samples": k,
            "consistency": agree / labelled if labelled else None,
            "recon_mae": float(np.mean(mae)) if mae else None,
            "recon_rmse": float(np.mean(rmse)) if rmse else None,
        }

    # ------------------------------------------------------------------------------------ diagnostics
    def _players(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each player, by name (the ELBO steps both together, with one optimizer)."""
        return {"decoder": self.decoder_params, "encoder": self.encoder_params}

    @abc.abstractmethod
    def _terms(self, batch: StepBatch) -> dict[str, tuple[Tensor, float]]:
        """Each objective term (a mean per image, to be maximised) with its weight in the loss."""

    def diagnostics(self, batch: StepBatch) -> dict[str, Any]:
        """What a user needs to see a collapsed layer or an overfitting encoder (recorded at validation):

        ``sigma`` (image scale per band, ``"band"`` scale only), ``layers`` (KL in nats per image and share of
        active units per latent layer, on the unlabelled batch), ``terms`` (each objective term, mean per image),
        ``grad_norms`` (``term -> player -> norm`` of the weighted term's gradient on that player's parameters)
        and ``train_accuracy`` (q(s|x) on the labelled batch, void excluded).
        """
        hvae = self.hvae
        out: dict[str, Any] = {}
        scale = hvae.decoder.band_scales()
        if scale is not None:
            out["sigma"] = [float(v) for v in scale.detach().flatten()]
        probe = batch.unlabelled if batch.unlabelled is not None else batch.labelled
        if probe is not None:
            out["layers"] = hvae.layer_statistics(probe.x, probe.valid, doy=self._doy(probe))
        players = self._players()
        terms = self._terms(batch)
        out["terms"] = {k: float(v.detach()) for k, (v, _) in terms.items()}
        norms: dict[str, dict[str, float]] = {}
        for name, (value, weight) in terms.items():
            if not value.requires_grad or weight == 0:
                continue
            norms[name] = {}
            for player, params in players.items():
                grads = torch.autograd.grad(weight * value, params, retain_graph=True, allow_unused=True)
                flat = [g.norm() for g in grads if g is not None]
                norms[name][player] = float(torch.stack(flat).norm()) if flat else 0.0
        out["grad_norms"] = norms
        lab = batch.labelled
        if lab is not None:
            pred = hvae.segment(lab.x, lab.valid, self._doy(lab)).argmax(1)
            mask = lab.labels >= 0
            out["train_accuracy"] = float((pred[mask] == lab.labels[mask]).float().mean()) if bool(mask.any()) else None
        return out


def _ramp(step: int, steps: int) -> float:
    """A linear warm-up's factor at ``step``: ``step / steps`` until ``steps``, then 1 (``steps`` 0: always 1)."""
    return 1.0 if step >= steps else step / steps


class SymmetricMethod(_HVAEMethod):
    """Symmetric equilibrium learning of the HVAE (decoder and encoder as two players), stepped by a
    :class:`~hvaeseg.objectives.SymmetricStepper` (:attr:`stepper`) that holds the objective and the two
    optimizers."""

    name = "symmetric"
    streams = ("labelled", "unlabelled", "pool")

    def __init__(self, hvae: HVAE, config: HVAEConfig, seed: int = 0) -> None:
        super().__init__(hvae, config, seed)
        #: the objective at full weight (the sleep warm-up ramps a copy of it, :meth:`objective_at`)
        self.objective = SymmetricEquilibrium(config.weights, num_particles=config.num_particles,
                                              sleep_masks=config.sleep_masks, sleep_relabel=config.sleep_relabel,
                                              num_classes=hvae.spec.num_classes, wake_holdout=config.wake_holdout,
                                              exact_s=config.exact_s)
        self.stepper = SymmetricStepper(
            hvae.model, hvae.guide, self.objective,
            decoder=(self.decoder_params, self._optimizer(self.decoder_params)),
            encoder=(self.encoder_params, self._optimizer(self.encoder_params)),
            clip_norm=self.clip_norm,
        )
        self.last_grad_norms = self.stepper.last_grad_norms  # the stepper measures them
        #: ``teacher_decay``: an HVAE whose decoder is the moving average of :attr:`hvae`'s, the target of posterior_q
        self.teacher: HVAE | None = None
        if config.teacher_decay > 0:
            self.teacher = copy.deepcopy(hvae).requires_grad_(False)
            self.objective.teacher = self._teacher_logits

    def _teacher_logits(self, x: Tensor, valid: Tensor | None, doy: Tensor | None) -> Tensor:
        assert self.teacher is not None
        return self.teacher.s_posterior_logits(x, valid, doy=doy)

    def modules(self) -> dict[str, nn.Module]:
        out = super().modules()
        return out if self.teacher is None else {**out, "teacher": self.teacher}

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()

    def after_update(self, step: int) -> None:
        super().after_update(step)
        if self.teacher is not None:  # the decoder only: the teacher's guide is never used
            ema_update(self.teacher.decoder, self.hvae.decoder, ema_decay_at(step, self.config.teacher_decay))

    def distribute(self, context: DistributedContext) -> None:
        """Average each player's gradients over the processes of ``context``, before its clipping and step (the
        losses are means per image, so equal weights give the gradient of the global batch)."""
        super().distribute(context)
        self.stepper.reduce_gradients = self.average_gradients if self.distributed is not None else None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.stepper.optimizers

    def objective_at(self, step: int) -> SymmetricEquilibrium:
        """The objective of ``step``: the supervised term alone on the ``supervised_steps`` steps that follow
        each full step, else every term with the sleep weight ramped over ``sleep_warmup`` steps and the
        posterior_q weight over ``posterior_warmup`` steps."""
        o, w, config = self.objective, self.objective.weights, self.config
        k = config.supervised_steps
        if k and step % (k + 1):
            weights = SymmetricWeights(labelled_p=0.0, unlabelled_p=0.0, supervised_q=w.supervised_q, sleep_q=0.0,
                                       posterior_q=0.0)
        else:
            sleep, posterior = _ramp(step, config.sleep_warmup), _ramp(step, config.posterior_warmup)
            if sleep == posterior == 1.0:
                return o
            weights = replace(w, sleep_q=w.sleep_q * sleep, posterior_q=w.posterior_q * posterior)
        ramped = copy.copy(o)  # the same settings and teacher, other weights
        ramped.weights = weights
        return ramped

    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        batch = self.augment(batch)
        self.stepper.objective = self.objective_at(step)
        dec, enc = self.stepper.differentiable_loss(labelled=batch.labelled, unlabelled=batch.unlabelled,
                                                    pool=batch.pool)
        # a supervised-only step (``supervised_steps``): the decoder rests, and its loss is not logged
        return {"decoder": dec, "encoder": enc} if dec.requires_grad else {"encoder": enc}

    def _terms(self, batch: StepBatch) -> dict[str, tuple[Tensor, float]]:
        terms = self.objective.terms(self.hvae.model, self.hvae.guide, labelled=batch.labelled,
                                     unlabelled=batch.unlabelled, pool=batch.pool)
        weights = self.objective.weights.to_dict()
        return {k: (v, weights[k]) for k, v in terms.items() if k in weights}

    def update(self, losses: dict[str, Tensor]) -> None:
        """Each player descends its own loss on its own parameters only (both gradients are taken before
        either player steps, so neither sees the other's move within a step): :meth:`SymmetricStepper.apply`."""
        enc = losses["encoder"]
        self.stepper.apply(losses.get("decoder", torch.zeros((), device=enc.device)), enc)


class ELBOMethod(_HVAEMethod):
    """The semi-supervised ELBO on the same HVAE (closed-form categorical s prior)."""

    name = "elbo"
    streams = ("labelled", "unlabelled")

    def __init__(self, hvae: HVAE, config: HVAEConfig, seed: int = 0) -> None:
        super().__init__(hvae, config, seed)
        self.objective = SemiSupervisedELBO(config.alpha, config.estimator, config.temperature,
                                            num_particles=config.num_particles, exact_s=config.exact_s,
                                            labelled_weight=config.labelled_elbo_weight)
        self.params = list(hvae.parameters())
        self._optimizers = {"all": self._optimizer(self.params)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def objective_at(self, step: int) -> SemiSupervisedELBO:
        """The objective of ``step``: the share of the unlabelled term's gradient that reaches q(s|x) ramped over
        ``posterior_warmup`` steps."""
        share = _ramp(step, self.config.posterior_warmup)
        if share == 1.0:
            return self.objective
        ramped = copy.copy(self.objective)
        ramped.unlabelled_q_share = share
        return ramped

    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        batch = self.augment(batch)
        loss = self.objective_at(step).differentiable_loss(self.hvae.model, self.hvae.guide,
                                                           labelled=batch.labelled, unlabelled=batch.unlabelled)
        return {"elbo": loss}

    def _terms(self, batch: StepBatch) -> dict[str, tuple[Tensor, float]]:
        terms = self.objective.terms(self.hvae.model, self.hvae.guide, labelled=batch.labelled,
                                     unlabelled=batch.unlabelled, differentiable=True)
        o = self.objective
        weights = {"labelled_elbo": o.labelled_weight, "supervised_q": o.alpha, "unlabelled_elbo": 1.0}
        return {k: (v, weights[k]) for k, v in terms.items() if k in weights}

    def update(self, losses: dict[str, Tensor]) -> None:
        opt = self._optimizers["all"]
        opt.zero_grad(set_to_none=True)
        losses["elbo"].backward()
        self.average_gradients(self.params)  # over the processes of a data-parallel run (means per image)
        self._clip_and_measure("all", self.params)
        opt.step()
