"""The interface every training method implements, so that one loop (:mod:`hvaeseg.train`) trains them all.

A method owns its networks and optimizers. The loop asks it for losses on a :class:`StepBatch`, checks that
they are finite (a NaN or Inf stops training with the last good checkpoint kept), then asks it to apply them.
Splitting ``losses`` from ``update`` is what lets the guard run before any parameter changes.

A method that is fitted in one call instead of trained step by step (the per-pixel gradient-boosting baseline)
implements :class:`FittedMethod`: :func:`hvaeseg.experiment.train_run` calls its :meth:`~FittedMethod.fit` on
every labelled training patch and the validation tiles, and writes the same run folder as the loop does, so that
evaluation and prediction treat both kinds alike.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from hvaeseg.data.loader import PatchBatch
    from hvaeseg.objectives.pool import LabelPool


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
    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        """Class probabilities ``(B, K, H, W)`` for ``x`` ``(B, C, H, W)`` or ``(B, T, C, H, W)``; ``doy`` the
        days of the year of the dates, ``(B,)`` or ``(B, T)`` (:class:`~hvaeseg.data.loader.PatchBatch`)."""

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

    def use_label_pool(self, pool: LabelPool) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Hook given the run's label pool (the labelled maps, with their dihedral transforms) once the streams are
        built, for methods whose model can draw from it; nothing by default."""

    def after_update(self, step: int) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Hook run after every update (e.g. an EMA of the weights); nothing by default."""

    def step_statistics(self) -> dict[str, float]:
        """Cheap numbers of the last update logged with the losses (e.g. gradient norms); none by default."""
        return {}

    def diagnostics(self, batch: StepBatch) -> dict[str, Any]:
        """Costlier training diagnostics on one training batch, recorded at each validation (JSON-ready);
        none by default. The HVAE methods report image scales, KL and active units per layer, each objective
        term and its gradient norm per player, and the train-batch accuracy."""
        return {}

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


class SeededMethod(Method):
    """A method whose random draws (augmentation, shuffles, sleep samples) come from one seeded
    :class:`torch.Generator`, checkpointed with it, so a resumed run draws what an uninterrupted one would.

    :param seed: seeds :attr:`generator`.
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self.generator.set_state(state["generator"])


class FittedMethod(abc.ABC):
    """A segmentation method fitted in one call (no losses, optimizers or training loop).

    It shares the prediction and checkpoint contract of :class:`Method` (:meth:`predict_proba`,
    :meth:`state_dict` / :meth:`load_state_dict` saved with ``torch.save`` and loaded with
    ``weights_only=True``, :meth:`train` switching modes), so evaluation and whole-cube prediction need not
    know which kind they hold. :func:`hvaeseg.experiment.train_run` calls :meth:`fit` instead of running
    :class:`hvaeseg.train.Trainer`.
    """

    #: the ``--method`` name on the command line
    name: ClassVar[str]
    #: a fitted method consumes no training streams
    streams: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def fit(self, labelled: Iterable[PatchBatch], validation: Iterable[PatchBatch] | None) -> dict[str, Any]:
        """Fit on the non-void pixels of the ``labelled`` batches, using the ``validation`` batches (or None)
        to choose the model size; returns fit statistics (JSON-able)."""

    @abc.abstractmethod
    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        """Class probabilities ``(B, K, H, W)`` for ``x`` ``(B, C, H, W)`` or ``(B, T, C, H, W)``, on ``x``'s
        device; ``doy`` the days of the year of the dates."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs, loadable with ``torch.load(weights_only=True)``."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state :meth:`state_dict` returned."""

    def train(self, mode: bool = True) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Nothing to switch by default."""
