"""The supervised baseline: the HVAE guide's U-Net trained by cross-entropy on the labelled patches only.

Which pixels count: every labelled (non-void) pixel, including pixels that are invalid (cloudy, no data)
on every date. Labels are time-invariant and the map must cover every pixel, so predicting a hidden pixel
from its visible context is part of the task; the network never sees the hidden reflectance, because it
is given ``x * valid`` and ``valid`` (:class:`hvaeseg.nets.SegmentationUNet` masks its input itself).
Void pixels (label -1), including those shifted in by a translation, contribute nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvaeseg.methods.augment import Augmentation
from hvaeseg.methods.base import SeededMethod, StepBatch

if TYPE_CHECKING:  # pragma: no cover
    from hvaeseg.data.loader import PatchBatch

__all__ = [
    "SupervisedConfig",
    "SupervisedMethod",
    "AugmentingMethod",
    "call_net",
    "cross_entropy",
    "decay_param_groups",
    "eval_mode",
    "make_optimizer",
]


@dataclass(frozen=True)
class SupervisedConfig:
    """Hyper-parameters of the supervised baseline (MixMatch extends them).

    :param lr: AdamW learning rate.
    :param weight_decay: decoupled weight decay (AdamW's, multiplied by ``lr`` at each step) on weight
        tensors only, never on biases or normalisation parameters. 0.02 is MixMatch's setting
        (Berthelot et al. 2019 decay kernels by ``0.02 * lr`` per step).
    :param dihedral: augment with random elements of the dihedral group.
    :param max_shift: random translations up to this many pixels (0 = none); see :class:`Augmentation`.
    :param jitter: spectral jitter strength (std of the log per-band gain; 0 = none).
    :param widths: channel widths of the U-Net levels (None = the network's default).
    :param day_of_year: the network takes each date's day of the year as an input (the acquisition date is
        known; phenology depends on it).
    :param date_dropout: temporal stacks: probability that each date of a stack the network trains on (MixMatch:
        labelled and unlabelled) is hidden from it (at least one kept; :class:`Augmentation`), so it learns not to
        lean on one date; 0 = none. Prediction always sees every date.
    """

    lr: float = 1e-3
    weight_decay: float = 0.02
    dihedral: bool = True
    max_shift: int = 0
    jitter: float = 0.0
    widths: tuple[int, ...] | None = None
    day_of_year: bool = True
    date_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"expected lr > 0, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"expected weight_decay >= 0, got {self.weight_decay!r}")
        if self.widths is not None:
            widths = tuple(self.widths)
            if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
                raise ValueError(f"expected widths to be positive ints, got {self.widths!r}")
            object.__setattr__(self, "widths", widths)
        _ = self.augmentation  # builds, and so validates, the augmentation settings

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(dihedral=self.dihedral, max_shift=self.max_shift, jitter=self.jitter,
                            date_dropout=self.date_dropout)


def decay_param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: weight tensors (2 or more dims: conv and linear kernels) with
    ``weight_decay``, and everything else (biases, normalisation scales and shifts) without."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, config: SupervisedConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on weights only."""
    return torch.optim.AdamW(decay_param_groups(module, config.weight_decay), lr=config.lr)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``module`` without gradients in eval mode, restoring its mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def build_unet(in_channels: int, num_classes: int, config: SupervisedConfig, temporal: bool) -> nn.Module:
    """The guide's U-Net (:class:`hvaeseg.nets.SegmentationUNet`) sized by ``config``."""
    from hvaeseg.nets import SegmentationUNet

    kwargs = {} if config.widths is None else {"widths": config.widths}
    return SegmentationUNet(in_channels, num_classes, temporal=temporal, day_of_year=config.day_of_year, **kwargs)


class AugmentingMethod(SeededMethod):
    """What the discriminative baselines share: one network, AdamW with weight decay on weights only, and
    a seeded generator for augmentation draws whose state is checkpointed (so a resumed run draws what an
    uninterrupted one would).

    :param net: a segmentation network, ``net(x, valid) -> logits (B, K, H, W)``.
    :param config: hyper-parameters (the subclass's :attr:`config_class`; its defaults when None).
    :param seed: seeds every random draw of the method.

    Use :meth:`build` to get the guide's U-Net.
    """

    config_class: ClassVar[type[SupervisedConfig]] = SupervisedConfig
    needs_labels: ClassVar[bool] = True

    def __init__(self, net: nn.Module, config: SupervisedConfig | None = None, seed: int = 0) -> None:
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"expected a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.net = net
        self.augmentation = config.augmentation
        super().__init__(seed)
        self.optimizer = make_optimizer(net, config)

    @classmethod
    def build(
        cls,
        in_channels: int,
        num_classes: int,
        *,
        temporal: bool = False,
        config: SupervisedConfig | None = None,
        seed: int = 0,
        patch_size: int | None = None,
        device: torch.device | str = "cpu",
        band_names: Sequence[str] | None = None,
        band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> AugmentingMethod:
        """The method with a fresh :class:`hvaeseg.nets.SegmentationUNet` on ``device`` (arguments as in
        :meth:`hvaeseg.methods.base.SegmentationMethod.build`; the patch size and the bands' names and statistics
        do not matter to it)."""
        config = config if config is not None else cls.config_class()
        net = build_unet(in_channels, num_classes, config, temporal).to(device)
        return cls(net, config, seed=seed)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.optimizer}

    def labelled_batch(self, batch: StepBatch) -> PatchBatch:
        if batch.labelled is None:
            raise ValueError(f"the {self.name} method needs a labelled batch, got StepBatch.labelled = None")
        return batch.labelled


class SupervisedMethod(AugmentingMethod):
    """Cross-entropy on augmented labelled patches (``--method supervised``); see the module docstring
    for which pixels count. Constructor and :meth:`build` as in :class:`AugmentingMethod`."""

    name: ClassVar[str] = "supervised"
    streams: ClassVar[tuple[str, ...]] = ("labelled",)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        labelled = self.labelled_batch(batch)
        x, valid, labels = self.augmentation(labelled.x, labelled.valid, labelled.labels, self.generator)
        logits = call_net(self.net, x, valid, labelled.doy)
        if self.distributed is not None:
            self._labelled_pixels = (labels != -1).sum()
        return {"ce": cross_entropy(logits, labels)}

    def gradient_weight(self) -> Tensor | None:
        """The labelled pixels of the last batch: the cross-entropy is a mean over them, so the weighted average
        over the processes is the gradient of the mean over every process's labelled pixels."""
        return getattr(self, "_labelled_pixels", None) if self.distributed is not None else None

    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        with eval_mode(self.net):
            return torch.softmax(call_net(self.net, x, valid, doy), dim=1)


def call_net(net: nn.Module, x: Tensor, valid: Tensor, doy: Tensor | None) -> Tensor:
    """``net(x, valid, doy)``, or ``net(x, valid)`` when the day of the year is unknown (so networks that
    take no covariate work unchanged)."""
    return net(x, valid) if doy is None else net(x, valid, doy)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the non-void pixels of ``labels`` ``(B, H, W)`` (-1 = void); 0 (with a graph)
    when every pixel is void, never NaN."""
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    return total / (labels != -1).sum().clamp_min(1)
