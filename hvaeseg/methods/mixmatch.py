"""MixMatch (Berthelot et al., 2019) for semantic segmentation.

One step, with a labelled batch ``X`` and an unlabelled batch ``U``:

1. augment ``X`` once (dihedral element, optional jitter and translation);
2. make ``K`` views of each unlabelled patch (dihedral element, optional jitter), predict each, map the
   predictions back by the inverse element (exact: no interpolation), average and sharpen with temperature
   ``T``: the guess ``q``; view ``k``'s target is ``q`` mapped forward again by its element (then both are
   translated, if translations are on: a translation loses pixels, so it is applied after guessing);
3. shuffle the union ``W`` of the labelled and unlabelled views and MixUp each labelled patch with one
   ``W`` entry and each unlabelled view with the rest, with ``lambda' = max(lambda, 1 - lambda)``,
   ``lambda ~ Beta(alpha, alpha)``, never drawing from an invalid pixel;
4. loss = soft cross-entropy on the mixed labelled part + ``w(step)`` x squared error on the mixed
   unlabelled part, with ``w`` ramped linearly from 0 to ``lambda_u``.

Targets are per-pixel class distributions ``(B, K, H, W)`` whose total mass is the pixel's weight: a void
pixel has the zero vector, so MixUp mixes the two *losses* linearly and a void pixel contributes nothing.
An exponential moving average of the weights is used for prediction.

.. math::

    \\mathcal{L} = \\frac{-\\sum_{i} \\sum_k t'_{ik} \\log p_{ik}}{\\sum_i \\sum_k t'_{ik}}
    + w(\\mathrm{step}) \\frac{\\sum_j m_j \\lVert p_j - t'_j / m_j \\rVert^2}{K \\sum_j m_j},
    \\qquad m_j = \\textstyle\\sum_k t'_{jk}

(``i`` over labelled pixels, ``j`` over unlabelled pixels; the squared error is averaged over classes as in
the paper, so ``lambda_u`` has the paper's scale).

References:
    D. Berthelot, N. Carlini, I. Goodfellow, N. Papernot, A. Oliver, C. Raffel. MixMatch: A Holistic
    Approach to Semi-Supervised Learning. NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvaeseg.methods.augment import Augmentation, AugmentationDraw, invert
from hvaeseg.methods.base import StepBatch
from hvaeseg.methods.supervised import AugmentingMethod, SupervisedConfig, call_net, eval_mode
from hvaeseg.nets.ema import ema_copy, ema_decay_at, ema_update

__all__ = [
    "MixMatchConfig",
    "MixMatchMethod",
    "sharpen",
    "guess_labels",
    "mixup",
    "one_hot_targets",
    "soft_cross_entropy",
    "masked_squared_error",
]


@dataclass(frozen=True)
class MixMatchConfig(SupervisedConfig):
    """Hyper-parameters of MixMatch (plus the optimizer and augmentation ones of :class:`SupervisedConfig`).

    :param K: augmented views per unlabelled patch.
    :param T: sharpening temperature (0 < T <= 1; smaller is sharper).
    :param alpha: Beta(alpha, alpha) parameter of MixUp; 0 turns MixUp off.
    :param lambda_u: final weight of the unlabelled squared error, which is averaged over classes and pixels
        as the paper averages it over classes and images (so the paper's 75 is one flag away). The default
        is 10, not 75, because with 75 the consistency term took over on the ``tiny`` synthetic preset
        (4 labelled 32 x 32 patches, single date, widths (16, 32), lr 3e-3, ramp over 150 of 300 steps,
        one seed): the labelled cross-entropy rose again once the weight grew, and the EMA net ended at
        0.51 accuracy / 0.30 mean IoU, against 0.67 / 0.57 with 10 and 0.66 / 0.53 for the supervised
        baseline. Confident wrong guesses are spatially coherent in segmentation (a whole parcel is guessed
        wrong at once), so a large weight locks them in; the evidence is one short run, not a sweep.
    :param rampup_steps: steps over which the unlabelled weight grows linearly from 0 to ``lambda_u``
        (0 = full weight from the start).
    :param ema_decay: decay of the moving average of the weights used for prediction; early on the decay
        is ``min(ema_decay, (1 + step) / (10 + step))`` so that short runs are not dominated by the
        initial weights.
    """

    K: int = 2
    T: float = 0.5
    alpha: float = 0.75
    lambda_u: float = 10.0
    rampup_steps: int = 1000
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"expected K (views per unlabelled patch) to be an int >= 1, got {self.K!r}")
        if not 0 < self.T <= 1:
            raise ValueError(f"expected the sharpening temperature T in (0, 1], got {self.T!r}")
        if not self.alpha >= 0:
            raise ValueError(f"expected alpha >= 0 (0 = no MixUp), got {self.alpha!r}")
        if not self.lambda_u >= 0:
            raise ValueError(f"expected lambda_u >= 0, got {self.lambda_u!r}")
        if not isinstance(self.rampup_steps, int) or self.rampup_steps < 0:
            raise ValueError(f"expected rampup_steps to be an int >= 0, got {self.rampup_steps!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"expected ema_decay in [0, 1), got {self.ema_decay!r}")


def sharpen(p: Tensor, T: float, dim: int = 1) -> Tensor:
    """``p^(1/T)`` renormalised along ``dim`` (computed in log space, so small ``T`` cannot underflow)."""
    return torch.softmax(torch.log(p.clamp_min(1e-30)) / T, dim=dim)


def one_hot_targets(labels: Tensor, num_classes: int) -> Tensor:
    """Label map ``(B, H, W)`` int64 (-1 = void) -> targets ``(B, K, H, W)`` float: one-hot, zero at void."""
    known = labels != -1
    onehot = F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float()
    return onehot * known.unsqueeze(1)


def _guess(
    model: nn.Module, x: Tensor, valid: Tensor, draws: Sequence[AugmentationDraw], T: float,
    doy: Tensor | None = None,
) -> Tensor:
    """Sharpened mean prediction over the views ``draws`` (without translations), each mapped back."""
    views = [Augmentation.apply_draw(d, x, valid) for d in draws]
    xs = torch.cat([v[0] for v in views])
    vs = torch.cat([v[1] for v in views])
    ds = None if doy is None else doy.repeat((len(draws),) + (1,) * (doy.dim() - 1))
    with torch.no_grad():
        probs = torch.softmax(call_net(model, xs, vs, ds), dim=1).chunk(len(draws))
        inverted = [invert(p, d.elements) for p, d in zip(probs, draws)]
        mean = sum(inverted[1:], inverted[0]) / len(draws)
    return sharpen(mean, T)


def guess_labels(
    model: nn.Module,
    x: Tensor,
    valid: Tensor,
    K: int,
    T: float,
    generator: torch.Generator | None = None,
    jitter: float = 0.0,
) -> Tensor:
    """MixMatch's label guess for unlabelled patches.

    :param model: ``model(x, valid) -> logits (B, K_classes, H, W)``; run without gradients in
        whatever mode it is in.
    :param x: ``(B, C, H, W)`` or ``(B, T, C, H, W)``; ``valid``: ``(B, H, W)`` or ``(B, T, H, W)``.
    :param K: number of views, each with random dihedral elements (per sample).
    :param T: sharpening temperature.
    :param jitter: optional spectral jitter of the views (see :class:`Augmentation`).
    :returns: ``(B, K_classes, H, W)`` probabilities in the patches' own orientation.
    """
    aug = Augmentation(dihedral=True, max_shift=0, jitter=jitter)
    return _guess(model, x, valid, [aug.draw(x, generator) for _ in range(K)], T)


def mixup(
    x1: Tensor, y1: Tensor, v1: Tensor, x2: Tensor, y2: Tensor, v2: Tensor, lam: float | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """MixUp that keeps the first argument dominant and never draws from invalid pixels.

    With ``lambda' = max(lambda, 1 - lambda) >= 0.5`` per sample, a pixel (per date) that is valid in both
    inputs becomes ``lambda' x1 + (1 - lambda') x2``; elsewhere it stays ``x1`` unmixed. The result is valid
    where the first input is (``v1``). The targets are mixed with the share of the second input the network
    can actually see at the pixel: ``1 - lambda'`` for a single date; for a stack, ``(1 - lambda')`` times the
    fraction of the first input's valid dates on which the second is valid too.

    :param x1, x2: ``(B, C, H, W)`` or ``(B, T, C, H, W)``.
    :param y1, y2: targets ``(B, K, H, W)`` (zero vectors where there is no target).
    :param v1, v2: bool ``(B, H, W)`` or ``(B, T, H, W)``.
    :param lam: a float or ``(B,)`` tensor in [0, 1].
    :returns: ``(x, y, valid)``.
    """
    if x1.shape != x2.shape or y1.shape != y2.shape or v1.shape != v2.shape:
        raise ValueError(
            f"expected both MixUp inputs to have the same shapes, got x {tuple(x1.shape)} / {tuple(x2.shape)}, "
            f"targets {tuple(y1.shape)} / {tuple(y2.shape)}, valid {tuple(v1.shape)} / {tuple(v2.shape)}"
        )
    B = x1.shape[0]
    lam = torch.as_tensor(lam, dtype=x1.dtype, device=x1.device).expand(B)
    lam = torch.maximum(lam, 1 - lam)
    both = v1 & v2  # (B, [T,] H, W)
    lam_x = lam.view((B,) + (1,) * (x1.dim() - 1))
    x = torch.where(both.unsqueeze(-3), lam_x * x1 + (1 - lam_x) * x2, x1)
    if x1.dim() == 5:  # temporal: share of the first input's valid dates where the second is mixed in
        seen = both.sum(1).to(y1.dtype) / v1.sum(1).clamp_min(1).to(y1.dtype)
    else:
        seen = both.to(y1.dtype)
    w2 = (1 - lam.view(B, 1, 1)) * seen  # (B, H, W): weight of the second input's target
    y = y1 + w2.unsqueeze(1) * (y2 - y1)
    return x, y, v1


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``-sum t log p / sum t`` over pixels and classes; targets ``(B, K, H, W)`` with mass 0 at void.
    Equals mean cross-entropy over non-void pixels for one-hot targets; 0 when there is no target."""
    total = -(targets * torch.log_softmax(logits, dim=1)).sum()
    return total / targets.sum().clamp_min(1e-8)


def masked_squared_error(probs: Tensor, targets: Tensor) -> Tensor:
    """Squared error between predicted and target distributions, averaged over classes and pixels, each
    pixel weighted by its target mass (the target renormalised first); 0 when there is no target."""
    mass = targets.sum(1)  # (B, H, W)
    normalised = targets / mass.clamp_min(1e-8).unsqueeze(1)
    sq = ((probs - normalised) ** 2).sum(1)
    return (mass * sq).sum() / (probs.shape[1] * mass.sum().clamp_min(1e-8))


class MixMatchMethod(AugmentingMethod):
    """MixMatch for segmentation (``--method mixmatch``); predictions come from the EMA copy of the weights.

    :param net: a segmentation network, ``net(x, valid) -> logits (B, K, H, W)``.
    :param config: a :class:`MixMatchConfig` (defaults when None).
    :param seed: seeds augmentations, the shuffle and MixUp (the generator is checkpointed with the method).
    """

    name: ClassVar[str] = "mixmatch"
    streams: ClassVar[tuple[str, ...]] = ("labelled", "unlabelled")
    config_class: ClassVar[type[SupervisedConfig]] = MixMatchConfig
    config: MixMatchConfig

    def __init__(self, net: nn.Module, config: MixMatchConfig | None = None, seed: int = 0) -> None:
        super().__init__(net, config, seed)
        self.ema = ema_copy(net)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "ema": self.ema}

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
        self.ema.eval()  # the average is only ever evaluated

    def unlabelled_weight(self, step: int) -> float:
        """``lambda_u`` ramped linearly over ``rampup_steps``."""
        cfg = self.config
        ramp = 1.0 if cfg.rampup_steps == 0 else min(1.0, max(step, 0) / cfg.rampup_steps)
        return cfg.lambda_u * ramp

    def losses(self, batch: StepBatch, step: int) -> dict[str, Tensor]:
        cfg, g = self.config, self.generator
        labelled = self.labelled_batch(batch)
        unlabelled = batch.unlabelled
        if unlabelled is None:
            raise ValueError("the mixmatch method needs an unlabelled batch, got StepBatch.unlabelled = None")
        if labelled.x.shape[1:] != unlabelled.x.shape[1:]:
            raise ValueError(
                f"expected labelled and unlabelled patches of the same shape, got {tuple(labelled.x.shape[1:])} "
                f"and {tuple(unlabelled.x.shape[1:])}"
            )
        # the labelled batch is augmented first, with the draws the supervised method would make
        xl, vl, labels = self.augmentation(labelled.x, labelled.valid, labelled.labels, g)

        draws = [self.augmentation.draw(unlabelled.x, g) for _ in range(cfg.K)]
        exact = [dataclasses.replace(d, shifts=None) for d in draws]  # guess on exactly invertible views
        q = _guess(self.net, unlabelled.x, unlabelled.valid, exact, cfg.T, unlabelled.doy)
        views = [Augmentation.apply_draw(d, unlabelled.x, unlabelled.valid, q) for d in draws]
        xu = torch.cat([v[0] for v in views])
        vu = torch.cat([v[1] for v in views])
        tu = torch.cat([v[2] for v in views])
        tl = one_hot_targets(labels, q.shape[1])
        # MixUp keeps its first input dominant, so a mixed patch keeps that input's date
        dl = labelled.doy
        du = None if unlabelled.doy is None else unlabelled.doy.repeat((cfg.K,) + (1,) * (unlabelled.doy.dim() - 1))

        if cfg.alpha > 0:
            Bl, N = xl.shape[0], xl.shape[0] + xu.shape[0]
            perm = torch.randperm(N, generator=g).to(xl.device)
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            lam = torch.from_numpy(np.random.default_rng(seed).beta(cfg.alpha, cfg.alpha, size=N)).to(xl)
            xw, vw, tw = (torch.cat(pair)[perm] for pair in ((xl, xu), (vl, vu), (tl, tu)))
            xl, tl, vl = mixup(xl, tl, vl, xw[:Bl], tw[:Bl], vw[:Bl], lam[:Bl])
            xu, tu, vu = mixup(xu, tu, vu, xw[Bl:], tw[Bl:], vw[Bl:], lam[Bl:])

        # two passes, so that normalisation statistics of the labelled part are its own
        ce = soft_cross_entropy(call_net(self.net, xl, vl, dl), tl)
        probs_u = torch.softmax(call_net(self.net, xu, vu, du), dim=1)
        l2 = masked_squared_error(probs_u, tu)
        return {"labelled": ce, "unlabelled": self.unlabelled_weight(step) * l2}

    def after_update(self, step: int) -> None:
        """Move the EMA copy towards the current weights (floating buffers too; others are copied)."""
        ema_update(self.ema, self.net, ema_decay_at(step, self.config.ema_decay))

    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        with eval_mode(self.ema):
            return torch.softmax(call_net(self.ema, x, valid, doy), dim=1)
