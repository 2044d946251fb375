"""Augmentations for segmentation patches: the dihedral group D4, translations with validity masks,
spectral jitter, and (temporal stacks) date dropout.

The dihedral group acts on the last two dimensions of any tensor (bands ``(B, C, H, W)``, temporal stacks
``(B, T, C, H, W)``, masks ``(B, [T,] H, W)``, label maps ``(B, H, W)``, class probabilities ``(B, K, H, W)``),
so one element transforms an image, its validity mask and its label map consistently, and its inverse maps
a prediction back exactly (no interpolation, no lost pixels). Translations lose the pixels shifted out;
the pixels shifted in are marked invalid (``valid`` False, label -1, reflectance 0), never filled with
made-up values. Spectral jitter multiplies each band by a random gain; it leaves labels and masks alone.
Date dropout hides whole dates of a stack (``valid`` False, reflectance 0), as a cloud over the whole patch
would, so a temporal network learns not to lean on any one date; labels are time-invariant and stay.

The group itself lives in :mod:`hvaeseg.dihedral`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import torch
from torch import Tensor

from hvaeseg.dihedral import ELEMENTS, IDENTITY, SHAPE_PRESERVING, DihedralElement

__all__ = [
    "DihedralElement",
    "ELEMENTS",
    "IDENTITY",
    "Augmentation",
    "AugmentationDraw",
    "random_elements",
    "apply",
    "invert",
    "translate",
    "spectral_jitter",
    "drop_dates",
]

Elements = DihedralElement | Sequence[DihedralElement]


def random_elements(
    n: int, generator: torch.Generator | None = None, shape_preserving: bool = False
) -> list[DihedralElement]:
    """``n`` elements drawn uniformly from D4 (or from its shape-preserving subgroup {identity, rot180,
    flip_lr, flip_ud} when ``shape_preserving``, for non-square patches)."""
    pool = SHAPE_PRESERVING if shape_preserving else ELEMENTS
    idx = torch.randint(len(pool), (n,), generator=generator)
    return [pool[i] for i in idx.tolist()]


def apply(t: Tensor, element: Elements) -> Tensor:
    """Apply one element to the last two dims of ``t``, or one element per sample along dim 0.

    :param t: ``(..., H, W)``; with a sequence of elements, ``(B, ..., H, W)`` with ``B = len(element)``.
    :param element: a :class:`DihedralElement`, or ``B`` of them (per sample). Mixed per-sample elements
        that rotate by an odd number of quarter turns need square patches (``H == W``).
    """
    if isinstance(element, DihedralElement):
        return element(t)
    elements = list(element)
    if t.dim() < 3 or t.shape[0] != len(elements):
        raise ValueError(
            f"expected a batch (B, ..., H, W) with B = {len(elements)} elements, got shape {tuple(t.shape)}"
        )
    distinct = set(elements)
    if len(distinct) == 1:
        return elements[0](t)
    if t.shape[-1] != t.shape[-2] and any(not e.preserves_shape for e in distinct):
        raise ValueError(
            f"per-sample quarter turns need square patches, got H x W = {t.shape[-2]} x {t.shape[-1]}; "
            "draw elements with shape_preserving=True"
        )
    out = torch.empty_like(t)
    for e in distinct:
        idx = torch.tensor([i for i, ei in enumerate(elements) if ei == e], device=t.device)
        out[idx] = e(t[idx])
    return out


def invert(t: Tensor, element: Elements) -> Tensor:
    """Undo :func:`apply` with the same element(s): ``invert(apply(t, g), g) == t`` exactly."""
    if isinstance(element, DihedralElement):
        return element.inverse()(t)
    return apply(t, [e.inverse() for e in element])


def translate(t: Tensor, shifts: Tensor, fill: float | int | bool = 0) -> Tensor:
    """Shift each sample by whole pixels; pixels shifted in take ``fill``, pixels shifted out are lost.

    :param t: ``(B, ..., H, W)``.
    :param shifts: ``(B, 2)`` integer ``(dy, dx)``: the content moves down by ``dy`` and right by ``dx``.
    :param fill: value of the pixels shifted in (0 for reflectance, False for ``valid``, -1 for labels).
    """
    if shifts.shape != (t.shape[0], 2):
        raise ValueError(f"expected shifts of shape ({t.shape[0]}, 2), got {tuple(shifts.shape)}")
    B, H, W = t.shape[0], t.shape[-2], t.shape[-1]
    shifts = shifts.to(device=t.device, dtype=torch.long)
    rows = torch.arange(H, device=t.device)[None, :] - shifts[:, :1]  # (B, H) source row of each output row
    cols = torch.arange(W, device=t.device)[None, :] - shifts[:, 1:]  # (B, W)
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]  # (B, H, W)
    src = rows.clamp(0, H - 1)[:, :, None] * W + cols.clamp(0, W - 1)[:, None, :]  # (B, H, W)
    flat = t.reshape(B, -1, H * W)
    out = flat.gather(2, src.reshape(B, 1, H * W).expand(-1, flat.shape[1], -1)).reshape(t.shape)
    inside = inside.reshape((B,) + (1,) * (t.dim() - 3) + (H, W))
    return torch.where(inside, out, torch.as_tensor(fill, dtype=t.dtype, device=t.device))


def spectral_jitter(x: Tensor, gains: Tensor) -> Tensor:
    """Multiply each band by its gain: ``x`` ``(B, C, H, W)`` or ``(B, T, C, H, W)``, ``gains`` ``(B, C)``
    (the same gain on every date of a stack). Undo with ``1 / gains``."""
    if gains.shape != (x.shape[0], x.shape[-3]):
        raise ValueError(f"expected gains of shape ({x.shape[0]}, {x.shape[-3]}), got {tuple(gains.shape)}")
    shape = (x.shape[0],) + (1,) * (x.dim() - 4) + (x.shape[-3], 1, 1)
    return x * gains.to(x).reshape(shape)


def drop_dates(x: Tensor, valid: Tensor, dropped: Tensor) -> tuple[Tensor, Tensor]:
    """Hide whole dates of stacks: ``x`` ``(B, T, C, H, W)`` set to 0 and ``valid`` ``(B, T, H, W)`` to False where
    ``dropped`` ``(B, T)`` is True."""
    if x.dim() != 5 or dropped.shape != x.shape[:2]:
        raise ValueError(f"expected stacks (B, T, C, H, W) and dropped of shape (B, T), got {tuple(x.shape)} and "
                         f"{tuple(dropped.shape)}")
    keep = ~dropped.to(device=x.device, dtype=torch.bool)
    return x * keep[:, :, None, None, None].to(x.dtype), valid & keep[:, :, None, None]


@dataclass(frozen=True)
class AugmentationDraw:
    """The random parameters of one augmentation of a batch (so it can be replayed or inverted).

    :param elements: one dihedral element per sample.
    :param shifts: ``(B, 2)`` int64 translations, or None.
    :param gains: ``(B, C)`` per-band gains, or None.
    :param dropped: ``(B, T)`` bool, the dates of each stack hidden (:func:`drop_dates`), or None.
    """

    elements: tuple[DihedralElement, ...]
    shifts: Tensor | None = None
    gains: Tensor | None = None
    dropped: Tensor | None = None


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations a baseline uses, and how strong.

    :param dihedral: random elements of D4 (for non-square patches, of its shape-preserving subgroup).
    :param max_shift: largest translation in pixels along each axis (0 = none); shifted-in pixels are
        invalid and void.
    :param jitter: standard deviation of the log of the per-band gain (0 = none); a gain ``exp(jitter * N(0, 1))``
        multiplies each normalised band, the same on every date of a stack.
    :param date_dropout: temporal stacks: probability that each date of each stack is hidden (:func:`drop_dates`;
        at least one date of a stack is always kept; 0 = none). Ignored for single dates.
    """

    dihedral: bool = True
    max_shift: int = 0
    jitter: float = 0.0
    date_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"expected max_shift to be an int >= 0, got {self.max_shift!r}")
        if not self.jitter >= 0:
            raise ValueError(f"expected jitter >= 0, got {self.jitter!r}")
        p = self.date_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"date_dropout: expected a probability in [0, 1), got {p!r}")

    def draw(self, x: Tensor, generator: torch.Generator | None = None) -> AugmentationDraw:
        """Draw parameters for the batch ``x`` ``(B, C, H, W)`` or ``(B, T, C, H, W)`` (drawn on the CPU)."""
        B, C, H, W = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
        if self.dihedral:
            elements = tuple(random_elements(B, generator, shape_preserving=H != W))
        else:
            elements = (IDENTITY,) * B
        shifts = None
        if self.max_shift:
            shifts = torch.randint(-self.max_shift, self.max_shift + 1, (B, 2), generator=generator)
        gains = None
        if self.jitter:
            gains = torch.exp(self.jitter * torch.randn(B, C, generator=generator))
        dropped = None
        if self.date_dropout and x.dim() == 5:
            u = torch.rand(B, x.shape[1], generator=generator)
            # at least one date stays: the one with the largest draw is never dropped
            dropped = (u < self.date_dropout) & (u < u.max(dim=1, keepdim=True).values)
        return AugmentationDraw(elements, shifts, gains, dropped)

    @overload
    @staticmethod
    def apply_draw(
        draw: AugmentationDraw, x: Tensor, valid: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    @overload
    @staticmethod
    def apply_draw(
        draw: AugmentationDraw, x: Tensor, valid: Tensor, labels: None = None
    ) -> tuple[Tensor, Tensor, None]: ...

    @staticmethod
    def apply_draw(
        draw: AugmentationDraw, x: Tensor, valid: Tensor, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Jitter and date dropout, then the dihedral element, then the translation, applied consistently to
        ``x``, ``valid`` and ``labels`` (label maps ``(B, H, W)`` int64, or soft targets ``(B, K, H, W)``
        float, whose shifted-in pixels become zero vectors, i.e. no target)."""
        if draw.gains is not None:
            x = spectral_jitter(x, draw.gains)
        if draw.dropped is not None:
            x, valid = drop_dates(x, valid, draw.dropped)
        x, valid = apply(x, draw.elements), apply(valid, draw.elements)
        if labels is not None:
            labels = apply(labels, draw.elements)
        if draw.shifts is not None:
            x = translate(x, draw.shifts, 0.0)
            valid = translate(valid, draw.shifts, False)
            if labels is not None:
                labels = translate(labels, draw.shifts, 0.0 if labels.is_floating_point() else -1)
        return x, valid, labels

    @overload
    def __call__(
        self, x: Tensor, valid: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    @overload
    def __call__(
        self, x: Tensor, valid: Tensor, labels: None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, None]: ...

    def __call__(
        self, x: Tensor, valid: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Draw and apply: returns the augmented ``(x, valid, labels)``."""
        return self.apply_draw(self.draw(x, generator), x, valid, labels)
