"""The dihedral group D4 of the square, acting on the last two dimensions of any tensor.

A leaf module: the augmentations (:mod:`hvaeseg.methods.augment`) and the label pool
(:mod:`hvaeseg.objectives.pool`) both use it.

An element ``g = (k, flip)`` acts as ``rot90^k ∘ flip``: first mirror left-right (last dim) if ``flip``,
then rotate by ``k`` quarter turns with ``torch.rot90(t, k, dims=(-2, -1))``. Since
``flip ∘ rot90^k = rot90^-k ∘ flip``, composition and inverse have closed forms:

.. math::

    (k_1, f_1) \\circ (k_2, f_2) = (k_1 + (-1)^{f_1} k_2 \\bmod 4,\\; f_1 \\oplus f_2), \\qquad
    (k, f)^{-1} = ((-1)^{1-f} k \\bmod 4,\\; f).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DihedralElement", "ELEMENTS", "IDENTITY", "SHAPE_PRESERVING"]

_NAMES = {
    (0, False): "identity",
    (1, False): "rot90",
    (2, False): "rot180",
    (3, False): "rot270",
    (0, True): "flip_lr",
    (1, True): "transpose",
    (2, True): "flip_ud",
    (3, True): "antitranspose",
}


@dataclass(frozen=True)
class DihedralElement:
    """An element of D4: mirror left-right if ``flip``, then rotate by ``k`` quarter turns.

    :param k: number of counter-clockwise quarter turns (``torch.rot90`` convention), 0..3.
    :param flip: mirror the last dimension first.
    """

    k: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 0 <= self.k <= 3:
            raise ValueError(f"expected k in 0..3, got {self.k!r}")
        if not isinstance(self.flip, bool):
            raise TypeError(f"expected flip to be a bool, got {type(self.flip).__name__}")

    @property
    def name(self) -> str:
        """``identity``, ``rot90``, ``rot180``, ``rot270``, ``flip_lr``, ``transpose``, ``flip_ud`` or
        ``antitranspose``."""
        return _NAMES[(self.k, self.flip)]

    @property
    def preserves_shape(self) -> bool:
        """True when ``(H, W)`` stays ``(H, W)`` (even number of quarter turns)."""
        return self.k % 2 == 0

    def compose(self, other: DihedralElement) -> DihedralElement:
        """The element ``self ∘ other``: apply ``other`` first, then ``self``."""
        k = (self.k - other.k if self.flip else self.k + other.k) % 4
        return DihedralElement(k, self.flip != other.flip)

    def __matmul__(self, other: DihedralElement) -> DihedralElement:
        return self.compose(other)

    def inverse(self) -> DihedralElement:
        """The element undoing this one (a reflection is its own inverse)."""
        return self if self.flip else DihedralElement((-self.k) % 4, False)

    def __call__(self, t: Tensor) -> Tensor:
        """Apply to the last two dims of ``t`` (a new tensor; ``t`` is not modified)."""
        if t.dim() < 2:
            raise ValueError(f"expected a tensor with at least 2 dims (..., H, W), got shape {tuple(t.shape)}")
        if self.flip:
            t = torch.flip(t, dims=(-1,))
        return torch.rot90(t, self.k, dims=(-2, -1)) if self.k else (t if self.flip else t.clone())


IDENTITY = DihedralElement()
#: the 8 elements of D4, identity first
ELEMENTS: tuple[DihedralElement, ...] = tuple(DihedralElement(k, f) for f in (False, True) for k in range(4))
#: the 4 elements that keep ``(H, W)`` (a subgroup), for non-square patches
SHAPE_PRESERVING: tuple[DihedralElement, ...] = tuple(e for e in ELEMENTS if e.preserves_shape)

