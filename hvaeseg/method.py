"""The interface every training method implements, so that one loop (:mod:`hvaeseg.train`) trains them all.

A method owns its networks and optimizers. The loop asks it for losses on a :class:`StepBatch`, checks that
they are finite (a NaN or Inf stops training with the last good checkpoint kept), then asks it to apply them.
Splitting ``losses`` from ``update`` is what lets the guard run before any parameter changes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from hvaeseg.data.loader import PatchBatch


@dataclass
class StepBatch:
    """What one training step sees.

    :param labelled: patches with label maps, ``labels`` (B, H, W) int64 with -1 = void, or None.
    :param unlabelled: patches whose labels are never used (``labels`` all -1), or None.
    :param pool: label maps ``(B'', H, W)`` int64 from the label pool (labelled maps and their dihedral
        transforms, plus user label-only maps), or None.
    """

    labelled: PatchBatch | None = None
    unlabelled: PatchBatch | None = None
    pool: Tensor | None = None


class Method(abc.ABC):
    """A trainable segmentation method.

    Subclasses set :attr:`name` and :attr:`streams` (which parts of a :class:`StepBatch` they consume) and
    implement :meth:`losses`, :meth:`predict_proba`, :meth:`modules` and :meth:`optimizers`. The default
    :meth:`update` back-propagates the sum of the losses through every module and steps every optimizer; methods
    with several players (symmetric learning: decoder and encoder) override it.
    """

    #: the ``--method`` name on the command line
    name: ClassVar[str]
    #: which streams the loop must provide: any of "labelled", "unlabelled", "pool"
    streams: ClassVar[tuple[str, ...]]
    #: gradient-norm clipping applied by the default :meth:`update` (None = off)
    clip_norm: float | None = 100.0

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks whose state is checkpointed, by name."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers whose state is checkpointed, by name."""

    @abc.abstractmethod
    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        """Differentiable scalar losses for one step (names are logged)."""

    @abc.abstractmethod
    def predict_proba(self, x: Tensor, valid: Tensor) -> Tensor:
        """Class probabilities ``(B, K, H, W)`` for ``x`` ``(B, C, H, W)`` or ``(B, T, C, H, W)``."""

    def update(self, losses: dict[str, Tensor]) -> None:
        """Back-propagate the summed losses and step every optimizer."""
        optimizers = list(self.optimizers().values())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if self.clip_norm is not None:
            params = [p for m in self.modules().values() for p in m.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        for opt in optimizers:
            opt.step()

    def after_update(self, step: int) -> None:
        """Hook run after every update (e.g. an EMA of the weights); nothing by default."""

    def train(self, mode: bool = True) -> None:
        for module in self.modules().values():
            module.train(mode)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
