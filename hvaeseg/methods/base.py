"""The interface every segmentation method implements, so that one loop (:mod:`hvaeseg.train`) trains them all and
one run folder layout (:mod:`hvaeseg.experiment`) holds them all.

Every method class declares what it needs as class attributes (:class:`SegmentationMethod`: its ``--method``
name, its hyper-parameter dataclass, the training streams it consumes, whether it needs labelled locations or the
cube's band statistics, whether it is fitted in one call) and is built by one classmethod with one signature,
:meth:`SegmentationMethod.build`. The registry (:mod:`hvaeseg.methods.registry`) reads nothing else, so a new
method is one class plus one :func:`~hvaeseg.methods.registry.register` call.

A method trained step by step implements :class:`Method`: it owns its networks and optimizers, the loop asks it for
losses on a :class:`StepBatch`, checks that they are finite (a NaN or Inf stops training with the last good
checkpoint kept), then asks it to apply them. Splitting ``losses`` from ``update`` is what lets the guard run
before any parameter changes.

A method fitted in one call (the per-pixel gradient-boosting baseline) implements :class:`FittedMethod`:
:func:`hvaeseg.experiment.train_run` calls its :meth:`~FittedMethod.fit` on every labelled training patch and the
validation tiles, and writes the same run folder as the loop does, so that evaluation and prediction treat both
kinds alike.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from hvaeseg.distributed import DistributedContext, average_gradients

if TYPE_CHECKING:  # pragma: no cover
    from typing import Self

    from hvaeseg.data.loader import PatchBatch
    from hvaeseg.objectives.pool import LabelPool

__all__ = ["STREAMS", "FittedMethod", "Method", "SeededMethod", "SegmentationMethod", "StepBatch"]

#: the training streams a method may ask the loop for (:attr:`SegmentationMethod.streams`)
STREAMS = ("labelled", "unlabelled", "pool")


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


class SegmentationMethod(abc.ABC):
    """What every method declares and shares, whether trained by the loop (:class:`Method`) or fitted in one
    call (:class:`FittedMethod`).

    The class attributes are the method's declaration; the registry, :func:`hvaeseg.experiment.train_run` and
    ``hvaeseg train`` read them instead of testing method names. :meth:`build` makes a fresh method from what a
    run knows about its data; :meth:`predict_proba`, :meth:`state_dict` / :meth:`load_state_dict` (saved with
    ``torch.save``, loaded with ``weights_only=True``) and :meth:`train` are what evaluation and prediction use.
    """

    #: the ``--method`` name on the command line (the registry's key)
    name: ClassVar[str]
    #: the hyper-parameter dataclass; a run's ``--options`` are checked against its fields and annotations
    config_class: ClassVar[type]
    #: which streams the training loop must provide: any of :data:`STREAMS`
    streams: ClassVar[tuple[str, ...]] = ()
    #: whether a run needs labelled locations (``--labels`` >= 1)
    needs_labels: ClassVar[bool] = False
    #: whether :meth:`build` needs ``band_stats``, the cube's per-band statistics (reading them may compute them)
    needs_band_stats: ClassVar[bool] = False
    #: fitted in one call by :meth:`FittedMethod.fit` rather than trained step by step by the loop
    fitted: ClassVar[bool] = False
    #: what a run's step counts, in messages ("steps", "boosting rounds")
    step_unit: ClassVar[str] = "steps"

    @classmethod
    def build(
        cls,
        in_channels: int,
        num_classes: int,
        *,
        temporal: bool = False,
        config: Any = None,
        seed: int = 0,
        patch_size: int | None = None,
        device: str | torch.device = "cpu",
        band_names: Sequence[str] | None = None,
        band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> Self:
        """A fresh method for ``in_channels`` bands and ``num_classes`` classes, on ``device``: the one signature
        of every method (each uses what it needs and ignores the rest).

        :param temporal: the inputs are ``(B, T, C, H, W)`` stacks of dates (else ``(B, C, H, W)``).
        :param config: an instance of :attr:`config_class` (its defaults when None).
        :param seed: seeds the method's own random draws.
        :param patch_size: the side of the training patches (sizes the HVAE's global latent).
        :param band_names: the cube's band names (``in_channels`` of them), or None.
        :param band_stats: ``(band_mean, band_std)`` the loader normalises with; given only to methods that
            set :attr:`needs_band_stats` (it may have to be computed from the cube).
        """
        raise NotImplementedError(f"{cls.__name__} does not implement build(); a registered method must")

    @abc.abstractmethod
    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        """Class probabilities ``(B, K, H, W)`` for ``x`` ``(B, C, H, W)`` or ``(B, T, C, H, W)``, on ``x``'s
        device; ``doy`` the days of the year of the dates, ``(B,)`` or ``(B, T)``
        (:class:`~hvaeseg.data.loader.PatchBatch`)."""

    def prediction_keys(self) -> tuple[float, ...]:
        """The keys of the method's candidate prediction rules, which validation chooses among
        (:meth:`predict_candidates`, :meth:`use_prediction`); empty by default: one rule, :meth:`predict_proba`."""
        return ()

    def predict_candidates(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> dict[float, Tensor]:
        """Class probabilities ``{key: (B, K, H, W)}`` under each rule of :meth:`prediction_keys`, in that order;
        arguments as in :meth:`predict_proba`."""
        raise ValueError(f"{type(self).__name__} has a single prediction rule: call predict_proba")

    def use_prediction(self, key: float) -> None:
        """Make the candidate rule ``key`` of :meth:`predict_candidates` the one :meth:`predict_proba` applies
        (kept in :meth:`state_dict`, so a checkpoint predicts as it was validated)."""
        raise ValueError(f"{type(self).__name__} has a single prediction rule; it has no candidate {key!r}")

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs, loadable with ``torch.load(weights_only=True)``."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state :meth:`state_dict` returned."""

    def train(self, mode: bool = True) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Switch between training and evaluation modes; nothing by default."""

    def evaluation_metrics(self, batches: Iterable[PatchBatch], *, iwae_samples: int = 8) -> dict[str, Any]:
        """Metrics of this kind of method beyond segmentation, on the evaluated split's ``batches``, added to
        ``metrics.json`` (JSON-ready); none by default. The HVAE methods report the IWAE bound (with
        ``iwae_samples`` importance samples per image), consistency and reconstruction error."""
        return {}


class Method(SegmentationMethod):
    """A segmentation method trained step by step by :class:`hvaeseg.train.Trainer`.

    Subclasses set :attr:`name`, :attr:`config_class` and :attr:`streams` (which parts of a :class:`StepBatch`
    they consume), implement :meth:`build`, :meth:`losses`, :meth:`predict_proba`, :meth:`modules` and
    :meth:`optimizers`. The default :meth:`update` back-propagates the sum of the losses through every module and
    steps every optimizer; methods with several players (symmetric learning: decoder and encoder) override it.

    Data-parallel training (:mod:`hvaeseg.distributed`): the loop calls :meth:`distribute` once; from then on an
    update averages every player's gradients over the processes (:meth:`average_gradients`) after its backward
    pass and before clipping and its optimizer step, so every process takes the same step.
    """

    #: gradient-norm clipping applied by the default :meth:`update` (None = off)
    clip_norm: float | None = 100.0
    #: the processes of a data-parallel run whose gradients an update averages (:meth:`distribute`); None: one
    distributed: DistributedContext | None = None

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks whose state is checkpointed, by name."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers whose state is checkpointed, by name."""

    @abc.abstractmethod
    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        """Differentiable scalar losses for one step (names are logged)."""

    def update(self, losses: dict[str, Tensor]) -> None:
        """Back-propagate the summed losses (averaging the gradients over the processes of a data-parallel run)
        and step every optimizer."""
        optimizers = list(self.optimizers().values())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total = sum(losses.values())
        if not isinstance(total, Tensor):  # sum's start, 0: no losses at all
            raise ValueError(f"{type(self).__name__}.update: no losses to back-propagate")
        total.backward()
        if self.distributed is not None:
            self.average_gradients([p for opt in optimizers for g in opt.param_groups for p in g["params"]])
        if self.clip_norm is not None:
            params = [p for m in self.modules().values() for p in m.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        for opt in optimizers:
            opt.step()

    def distribute(self, context: DistributedContext) -> None:
        """Average the gradients of every later update over the processes of ``context`` (called once by the loop
        of a data-parallel run; a single-process ``context`` changes nothing)."""
        self.distributed = context if context.is_distributed else None

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of ``params`` (one player's) over the processes (:meth:`distribute`), weighted by
        :meth:`gradient_weight`; nothing in a single process."""
        if self.distributed is not None:
            average_gradients(params, self.distributed, self.gradient_weight())

    def gradient_weight(self) -> float | Tensor | None:
        """This process's weight in the average of the gradients of the last :meth:`losses` (None: every process
        alike). Equal weights give the gradient of the global batch when each process's loss is a mean over the
        same number of items (images); a loss that is a mean over a number that varies (labelled pixels) returns
        that number, and the weighted average is then the gradient of the mean over every process's items."""
        return None

    def seed_step(self, seed: int) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Re-seed the method's own random draws for a step (a data-parallel run does this before every step,
        with a seed of ``(seed, step, rank)``, so that the processes draw differently and resume exactly);
        nothing by default."""

    def to(self, device: str | torch.device | None) -> Self:
        """Move every module to ``device`` (in place, so optimizers keep their parameters); returns the method."""
        for module in self.modules().values():
            module.to(device)
        return self

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

    def seed_step(self, seed: int) -> None:
        """Re-seed :attr:`generator` (a data-parallel run does this before every step)."""
        self.generator.manual_seed(seed)


class FittedMethod(SegmentationMethod):
    """A segmentation method fitted in one call (no losses, optimizers or training loop).

    It shares the prediction and checkpoint contract of :class:`Method` (:class:`SegmentationMethod`), so
    evaluation and whole-cube prediction need not know which kind they hold. :func:`hvaeseg.experiment.train_run`
    calls :meth:`fit` instead of running :class:`hvaeseg.train.Trainer`.
    """

    #: a fitted method consumes no training streams
    streams: ClassVar[tuple[str, ...]] = ()
    fitted: ClassVar[bool] = True

    @abc.abstractmethod
    def fit(self, labelled: Iterable[PatchBatch], validation: Iterable[PatchBatch] | None) -> dict[str, Any]:
        """Fit on the non-void pixels of the ``labelled`` batches, using the ``validation`` batches (or None)
        to choose the model size; returns fit statistics (JSON-able)."""
