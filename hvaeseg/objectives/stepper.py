"""One step of symmetric equilibrium learning in the shape of :class:`pyro.infer.SVI`.

``SVI(model, guide, optim, loss).step(*args)`` computes a loss, steps the optimizer and returns the loss as a
number. Symmetric learning has two players, each with its own loss, parameters and optimizer
(:class:`~hvaeseg.objectives.SymmetricEquilibrium`), so :meth:`SymmetricStepper.step` updates both and returns the
two losses, as ``SVI.step`` returns the pair of :class:`pyro.infer.ReweightedWakeSleep`::

    stepper = SymmetricStepper(hvae.model, hvae.guide, SymmetricEquilibrium(),
                               decoder=(decoder_params, decoder_optimizer), encoder=(encoder_params, encoder_optimizer))
    for batch in batches:
        decoder_loss, encoder_loss = stepper.step(labelled=..., unlabelled=..., pool=...)

A training loop that checks the losses before any parameter moves (:class:`hvaeseg.train.Trainer`) calls the two
halves of :meth:`~SymmetricStepper.step` itself: :meth:`~SymmetricStepper.differentiable_loss`, then
:meth:`~SymmetricStepper.apply`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hvaeseg.objectives.symmetric import SymmetricEquilibrium

__all__ = ["Player", "SymmetricStepper", "grad_norm"]


class Player(NamedTuple):
    """One player of symmetric learning: the parameters it owns and the optimizer that steps them."""

    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer


def grad_norm(params: Sequence[nn.Parameter]) -> float:
    """The Euclidean norm of the gradients of ``params`` taken together (those without a gradient left out; 0
    when none has one)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


class SymmetricStepper:
    """Steps the decoder and the encoder of a model / guide pair by :class:`SymmetricEquilibrium`.

    Each player descends its own loss on its own parameters only: the decoder (theta, every parameter the model
    uses) the decoder loss ``-L_p``, the encoder (phi, the parameters only the guide uses) the encoder loss
    ``-L_q``. Both gradients are taken before either player steps, so neither sees the other's move within a step.

    :param model: ``model(x=None, s=None, valid=None)`` (``docs/conventions.md``).
    :param guide: ``guide(x, s=None, valid=None)``.
    :param objective: the objective; a schedule may replace :attr:`objective` between steps (the sleep warm-up
        of :class:`hvaeseg.methods.SymmetricMethod` does).
    :param decoder: ``(parameters, optimizer)`` of the decoder (a :class:`Player`); the parameters are those
        whose gradients are taken, in this order, and the optimizer must hold exactly them.
    :param encoder: likewise for the encoder; no parameter may belong to both players.
    :param clip_norm: clip each player's gradient norm to this (None: no clipping).
    :param reduce_gradients: called with each player's parameters once their gradients are set, before they are
        measured, clipped and stepped (data-parallel training averages them over processes there:
        :meth:`hvaeseg.methods.Method.average_gradients`); None: nothing.
    """

    def __init__(
        self,
        model: Any,
        guide: Any,
        objective: SymmetricEquilibrium,
        *,
        decoder: tuple[Sequence[nn.Parameter], torch.optim.Optimizer],
        encoder: tuple[Sequence[nn.Parameter], torch.optim.Optimizer],
        clip_norm: float | None = None,
        reduce_gradients: Callable[[list[nn.Parameter]], None] | None = None,
    ) -> None:
        if not isinstance(objective, SymmetricEquilibrium):
            raise TypeError(f"expected a SymmetricEquilibrium objective, got {type(objective).__name__}")
        if clip_norm is not None and not (isinstance(clip_norm, (int, float)) and clip_norm > 0):
            raise ValueError(f"clip_norm: expected a positive number or None, got {clip_norm!r}")
        self.model = model
        self.guide = guide
        self.objective = objective
        self.players = {"decoder": Player(list(decoder[0]), decoder[1]),
                        "encoder": Player(list(encoder[0]), encoder[1])}
        shared = {id(p) for p in self.players["decoder"].params} & {id(p) for p in self.players["encoder"].params}
        if shared:
            raise ValueError(f"expected the decoder and the encoder to own disjoint parameters, got {len(shared)} "
                             "shared: each player steps only its own (see HVAE.parameter_groups)")
        self.clip_norm = clip_norm
        self.reduce_gradients = reduce_gradients
        #: the gradient norm of each player at the last update, before clipping
        self.last_grad_norms: dict[str, float] = {}

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The two optimizers, ``{"decoder": ..., "encoder": ...}``."""
        return {name: player.optimizer for name, player in self.players.items()}

    def differentiable_loss(self, *, labelled: Any = None, unlabelled: Any = None,
                            pool: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(decoder_loss, encoder_loss)`` as tensors with their graphs (no parameter moves); the batches as in
        :meth:`SymmetricEquilibrium.differentiable_loss`."""
        return self.objective.differentiable_loss(self.model, self.guide, labelled=labelled, unlabelled=unlabelled,
                                                  pool=pool)

    def apply(self, decoder_loss: Tensor, encoder_loss: Tensor) -> None:
        """Step each player along the gradient of its own loss on its own parameters (clipped per player when
        :attr:`clip_norm` is set), then clear the gradients. A player whose loss has no graph (every one of its
        terms at weight 0 this step) rests: no gradient, no optimizer step."""
        steps = tuple((name, loss) for name, loss in (("decoder", decoder_loss), ("encoder", encoder_loss))
                      if loss.requires_grad)
        for i, (name, loss) in enumerate(steps):
            params = self.players[name].params
            grads = torch.autograd.grad(loss, params, retain_graph=i < len(steps) - 1, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
        for name, _ in steps:
            params, optimizer = self.players[name]
            if self.reduce_gradients is not None:
                self.reduce_gradients(params)
            self.last_grad_norms[name] = grad_norm(params)
            if self.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], self.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def step(self, *, labelled: Any = None, unlabelled: Any = None, pool: Tensor | None = None) -> tuple[float, float]:
        """Update both players on one batch; returns ``(decoder_loss, encoder_loss)`` as numbers, measured before
        the update (as :meth:`pyro.infer.SVI.step` returns its loss)."""
        decoder_loss, encoder_loss = self.differentiable_loss(labelled=labelled, unlabelled=unlabelled, pool=pool)
        self.apply(decoder_loss, encoder_loss)
        return float(decoder_loss.detach()), float(encoder_loss.detach())

    def evaluate_loss(self, *, labelled: Any = None, unlabelled: Any = None,
                      pool: Tensor | None = None) -> tuple[float, float]:
        """``(decoder_loss, encoder_loss)`` as numbers, without gradients and without a step (as
        :meth:`pyro.infer.SVI.evaluate_loss`)."""
        with torch.no_grad():
            decoder_loss, encoder_loss = self.differentiable_loss(labelled=labelled, unlabelled=unlabelled, pool=pool)
        return float(decoder_loss), float(encoder_loss)
