"""The HVAE as a training method: symmetric equilibrium learning and the semi-supervised ELBO.

Both train the same :class:`~hvaeseg.hierarchy.HVAE`; they differ in the objective and in the players:

- :class:`SymmetricMethod`: two players. The decoder (theta: every parameter the model uses) is stepped with
  the gradient of ``-L_p``, the encoder (phi: the parameters only the guide uses) with the gradient of
  ``-L_q``, each by its own optimizer (:class:`~hvaeseg.objectives.SymmetricEquilibrium`).
- :class:`ELBOMethod`: one player, one optimizer on all parameters, the semi-supervised ELBO
  (:class:`~hvaeseg.objectives.SemiSupervisedELBO`), which needs a closed-form s prior.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hvaeseg.hierarchy import HierarchySpec, HVAE
from hvaeseg.method import Method, StepBatch
from hvaeseg.objectives import SemiSupervisedELBO, SymmetricEquilibrium, SymmetricWeights


@dataclass(frozen=True)
class HVAEConfig:
    """Hyper-parameters shared by the HVAE methods.

    :param lr: Adam learning rate (both players for symmetric learning).
    :param code_bits: D, bits of the global code l.
    :param channels: channels of each Bernoulli feature map of the default hierarchy.
    :param spec: a user hierarchy (overrides ``code_bits`` / ``channels``; its classes, bands and temporal flag
        must match the data).
    :param weights: symmetric-learning weight per term.
    :param alpha: ELBO weight of the classifier term ``log q(s|x)`` on labelled pixels.
    :param estimator: ELBO gradient estimator for discrete latents, ``"straight_through"`` or ``"score_function"``.
    :param temperature: straight-through relaxation temperature.
    :param s_prior: ``"categorical"`` (learned class logits; gives a density, so the IWAE bound can be
        reported, and is required by the ELBO) or ``"empirical"`` (symmetric learning only: s comes from the
        data and the label pool, no density).
    """

    lr: float = 1e-3
    code_bits: int = 8
    channels: int = 8
    spec: dict[str, Any] | None = None
    weights: SymmetricWeights = field(default_factory=SymmetricWeights)
    alpha: float = 10.0
    estimator: str = "straight_through"
    temperature: float = 0.5
    s_prior: str = "categorical"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {self.lr}")
        if self.s_prior not in ("categorical", "empirical"):
            raise ValueError(f"s_prior: expected 'categorical' or 'empirical', got {self.s_prior!r}")
        if isinstance(self.weights, dict):
            object.__setattr__(self, "weights", SymmetricWeights(**self.weights))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _HVAEMethod(Method):
    def __init__(self, hvae: HVAE, config: HVAEConfig) -> None:
        self.hvae = hvae
        self.config = config

    @classmethod
    def build(cls, in_channels: int, num_classes: int, temporal: bool, config: HVAEConfig | None = None, *,
              patch_size: int | None = None) -> _HVAEMethod:
        """The default hierarchy for ``in_channels`` bands and ``num_classes`` classes (or ``config.spec``)."""
        config = config or HVAEConfig()
        if config.spec is not None:
            spec = HierarchySpec.from_dict(config.spec)
            if (spec.num_classes, spec.image.bands, spec.temporal) != (num_classes, in_channels, temporal):
                raise ValueError(
                    f"the hierarchy declares {spec.num_classes} classes, {spec.image.bands} bands, temporal="
                    f"{spec.temporal}; the data has {num_classes} classes, {in_channels} bands, temporal={temporal}"
                )
        else:
            spec = HierarchySpec.default(
                num_classes, in_channels, config.code_bits, channels=config.channels,
                s_prior=config.s_prior, temporal=temporal, patch_size=patch_size,
            )
        return cls(HVAE(spec), config)

    def modules(self) -> dict[str, nn.Module]:
        return {"hvae": self.hvae}

    def predict_proba(self, x: Tensor, valid: Tensor) -> Tensor:
        return self.hvae.segment(x, valid)


class SymmetricMethod(_HVAEMethod):
    """Symmetric equilibrium learning of the HVAE (decoder and encoder as two players)."""

    name = "symmetric"
    streams = ("labelled", "unlabelled", "pool")

    def __init__(self, hvae: HVAE, config: HVAEConfig) -> None:
        super().__init__(hvae, config)
        self.objective = SymmetricEquilibrium(config.weights)
        self.decoder_params, self.encoder_params = hvae.parameter_groups()
        self._optimizers = {
            "decoder": torch.optim.Adam(self.decoder_params, lr=config.lr),
            "encoder": torch.optim.Adam(self.encoder_params, lr=config.lr),
        }

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        dec, enc = self.objective.loss(
            self.hvae.model, self.hvae.guide, labelled=batch.labelled, unlabelled=batch.unlabelled, pool=batch.pool
        )
        return {"decoder": dec, "encoder": enc}

    def update(self, losses: dict[str, Tensor]) -> None:
        """Each player descends its own loss on its own parameters only (both gradients are taken before
        either player steps, so neither sees the other's move within a step)."""
        players = (
            (losses["decoder"], self.decoder_params, self._optimizers["decoder"]),
            (losses["encoder"], self.encoder_params, self._optimizers["encoder"]),
        )
        for i, (loss, params, _) in enumerate(players):
            grads = torch.autograd.grad(loss, params, retain_graph=i == 0, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
        for _, params, opt in players:
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)


class ELBOMethod(_HVAEMethod):
    """The semi-supervised ELBO on the same HVAE (closed-form categorical s prior)."""

    name = "elbo"
    streams = ("labelled", "unlabelled")

    def __init__(self, hvae: HVAE, config: HVAEConfig) -> None:
        super().__init__(hvae, config)
        self.objective = SemiSupervisedELBO(config.alpha, config.estimator, config.temperature)
        self._optimizers = {"all": torch.optim.Adam(hvae.parameters(), lr=config.lr)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        loss = self.objective.loss(self.hvae.model, self.hvae.guide, labelled=batch.labelled,
                                   unlabelled=batch.unlabelled)
        return {"elbo": loss}
