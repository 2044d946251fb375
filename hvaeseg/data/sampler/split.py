"""The spatial train / validation / test split: :class:`SpatialSplit` (rule: :mod:`hvaeseg.data.sampler`, *Splits*)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvaeseg._dataclass_io import from_dict
from hvaeseg.data.sampler._common import SPLITS, STREAM_SPLIT, Box, check_sizes

__all__ = ["SpatialSplit"]


@dataclass(frozen=True)
class SpatialSplit:
    """Train / validation / test split by spatial blocks.

    :param block: block size per spatial dimension, ``{"y": 256, "x": 256}``.
    :param fractions: share of the blocks per split; keys among ``train``, ``val``, ``test``, summing to 1.
        The block counts are rounded by largest remainder, and every split with a positive share gets at
        least one block when there are enough blocks.
    :param seed: seed of the block permutation.
    """

    block: Mapping[str, int]
    fractions: Mapping[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", check_sizes(self.block, "SpatialSplit.block"))
        fr = dict(self.fractions)
        unknown = [k for k in fr if k not in SPLITS]
        if unknown:
            raise ValueError(f"SpatialSplit.fractions: expected keys among {list(SPLITS)}, got {unknown}")
        if any((not np.isfinite(v)) or v < 0 for v in fr.values()):
            raise ValueError(f"SpatialSplit.fractions: expected non-negative shares, got {fr}")
        if not math.isclose(sum(fr.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"SpatialSplit.fractions: expected shares summing to 1, got {fr} (sum {sum(fr.values())})")
        object.__setattr__(self, "fractions", {k: float(fr[k]) for k in SPLITS if k in fr})
        object.__setattr__(self, "seed", int(self.seed))

    def grid(self, shape: Mapping[str, int]) -> tuple[int, int]:
        """Number of blocks along ``y`` and ``x`` for a cube of ``shape`` (``{"y": Y, "x": X}``)."""
        return (-(-int(shape["y"]) // self.block["y"]), -(-int(shape["x"]) // self.block["x"]))

    def assignment(self, shape: Mapping[str, int]) -> np.ndarray:
        """``(n_blocks_y, n_blocks_x)`` int8 array: the split code (index into :data:`SPLITS`) of each block."""
        nby, nbx = self.grid(shape)
        n = nby * nbx
        names = [k for k in SPLITS if self.fractions.get(k, 0.0) > 0]
        if n < len(names):
            raise ValueError(
                f"SpatialSplit: {n} block(s) of {self.block} in a {shape['y']}x{shape['x']} cube cannot hold "
                f"{len(names)} splits {names}; use smaller blocks"
            )
        shares = np.array([self.fractions[k] for k in names]) * n
        counts = np.floor(shares).astype(int)
        for i in np.argsort(-(shares - counts), kind="stable")[: n - counts.sum()]:
            counts[i] += 1
        for i in range(len(names)):  # every split with a positive share gets a block
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
        perm = np.random.default_rng([self.seed, STREAM_SPLIT]).permutation(n)
        codes = np.empty(n, dtype=np.int8)
        start = 0
        for name, c in zip(names, counts):
            codes[perm[start : start + c]] = SPLITS.index(name)
            start += c
        return codes.reshape(nby, nbx)

    def blocks(self, shape: Mapping[str, int], split: str) -> list[Box]:
        """Pixel boxes ``(y0, y1, x0, x1)`` (half-open) of the blocks of ``split``, in row-major order."""
        if split not in SPLITS:
            raise ValueError(f"expected a split among {SPLITS}, got {split!r}")
        code = SPLITS.index(split)
        a = self.assignment(shape)
        by, bx = self.block["y"], self.block["x"]
        Y, X = int(shape["y"]), int(shape["x"])
        return [
            (i * by, min((i + 1) * by, Y), j * bx, min((j + 1) * bx, X))
            for i, j in zip(*np.nonzero(a == code))
        ]

    def split_map(self, shape: Mapping[str, int]) -> np.ndarray:
        """``(Y, X)`` int8 array: the split code of every pixel."""
        a = self.assignment(shape)
        m = np.repeat(np.repeat(a, self.block["y"], axis=0), self.block["x"], axis=1)
        return m[: int(shape["y"]), : int(shape["x"])]

    def to_dict(self) -> dict[str, Any]:
        return {"block": dict(self.block), "fractions": dict(self.fractions), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpatialSplit:
        """Inverse of :meth:`to_dict`; unknown fields are errors."""
        return from_dict(cls, d, "SpatialSplit")
