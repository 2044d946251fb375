"""The sampler: :class:`PatchSampler`, its settings and :meth:`~PatchSampler.plan`, which puts together the patches of
each split from the modes (:mod:`.grid`, :mod:`.random_draws`) and the labelled subset (:mod:`.labelled`). Rules
in :mod:`hvaeseg.data.sampler`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hvaeseg._dataclass_io import from_dict
from hvaeseg.data.mosaic import assign_splits
from hvaeseg.data.sampler import labelled
from hvaeseg.data.sampler._common import (
    SPATIAL,
    SPLITS,
    STREAM_GRID,
    STREAM_LABELLED,
    STREAM_LABELLED_DATES,
    STREAM_RANDOM,
    Box,
    check_sizes,
)
from hvaeseg.data.sampler.cube_view import CubeView
from hvaeseg.data.sampler.grid import cover_patches, grid_patches
from hvaeseg.data.sampler.labelled import LabelledDates
from hvaeseg.data.sampler.plan import PatchPlan
from hvaeseg.data.sampler.random_draws import random_patches
from hvaeseg.data.sampler.split import SpatialSplit

__all__ = ["PatchSampler"]


@dataclass(frozen=True)
class PatchSampler:
    """Draws a :class:`PatchPlan` from a cube (rules in :mod:`hvaeseg.data.sampler`).

    :param sizes: patch size per dimension: ``{"y": 64, "x": 64}``, plus ``"time": T`` for T-date stacks.
    :param mode: ``"random"`` (``n_patches`` uniform draws per split), ``"grid"`` (tile every block) or
        ``"cover"`` (tile the whole cube: the plan of whole-cube prediction; needs ``split=None`` and
        ``n_labelled=0``).
    :param n_patches: random mode: patches per split, one number for every split or a mapping
        ``{"train": 1000, "val": 100}`` (missing splits get none).
    :param split: the spatial split; ``None`` puts the whole cube in one training block.
    :param n_labelled: number of labelled training locations (patch-size tiles, drawn by seed).
    :param labelled_dates: ``"draw"``: one patch per labelled location, its dates drawn as any patch's;
        ``"every"`` (single-date patches only): one patch per (labelled location, qualifying date).
    :param min_valid: a date qualifies for a patch when its valid fraction is ``>= min_valid`` (and > 0).
    :param window: random mode: super-tile size per dimension for chunk-friendly sampling (or ``None``).
    :param per_window: random mode with ``window``: patches drawn per super-tile.
    :param grid_remainder: grid mode: ``"drop"`` the remainder of a block or ``"shift"`` a last patch in (cover
        mode always shifts).
    :param splits: the splits to plan (default all three).
    :param seed: one seed for everything random in the plan.
    :param max_rounds: random mode gives up (``ValueError``) after this many rounds of rejected draws.
    """

    sizes: Mapping[str, int]
    mode: Literal["random", "grid", "cover"] = "random"
    n_patches: int | Mapping[str, int] = 256
    split: SpatialSplit | None = None
    n_labelled: int = 0
    labelled_dates: LabelledDates = "draw"
    min_valid: float = 0.0
    window: Mapping[str, int] | None = None
    per_window: int = 1
    grid_remainder: Literal["drop", "shift"] = "drop"
    splits: tuple[str, ...] = SPLITS
    seed: int = 0
    max_rounds: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", check_sizes(self.sizes, "PatchSampler.sizes", allowed=("time", "y", "x")))
        if self.mode not in ("random", "grid", "cover"):
            raise ValueError(f"PatchSampler.mode: expected 'random', 'grid' or 'cover', got {self.mode!r}")
        if self.grid_remainder not in ("drop", "shift"):
            raise ValueError(f"PatchSampler.grid_remainder: expected 'drop' or 'shift', got {self.grid_remainder!r}")
        if self.labelled_dates not in ("draw", "every"):
            raise ValueError(f"PatchSampler.labelled_dates: expected 'draw' or 'every', got {self.labelled_dates!r}")
        if self.labelled_dates == "every" and "time" in self.sizes:
            raise ValueError("PatchSampler.labelled_dates='every' makes single-date patches: drop 'time' from sizes "
                             f"{dict(self.sizes)}, or draw the dates of stacks (labelled_dates='draw')")
        if not 0.0 <= float(self.min_valid) <= 1.0:
            raise ValueError(f"PatchSampler.min_valid: expected a fraction in [0, 1], got {self.min_valid!r}")
        if self.split is not None and not isinstance(self.split, SpatialSplit):
            raise TypeError(f"PatchSampler.split: expected a SpatialSplit or None, got {type(self.split).__name__}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"PatchSampler.splits: expected names among {SPLITS}, got {bad}")
        if self.n_labelled < 0:
            raise ValueError(f"PatchSampler.n_labelled: expected >= 0, got {self.n_labelled}")
        if self.mode == "cover" and (self.split is not None or self.n_labelled):
            raise ValueError("PatchSampler mode 'cover' tiles the whole cube: it takes no split and no labelled "
                             f"locations (got split={self.split!r}, n_labelled={self.n_labelled})")
        if self.window is not None:
            w = check_sizes(self.window, "PatchSampler.window")
            small = [k for k in SPATIAL if w[k] < self.sizes[k]]
            if small:
                raise ValueError(f"PatchSampler.window {w} must be at least the patch size {self.sizes} along {small}")
            object.__setattr__(self, "window", w)
        if self.per_window < 1:
            raise ValueError(f"PatchSampler.per_window: expected >= 1, got {self.per_window}")
        if self.per_window > 1 and self.window is None:
            raise ValueError("PatchSampler.per_window > 1 needs a window (the super-tile the patches share)")
        if self.split is not None:
            small = [k for k in SPATIAL if self.split.block[k] < self.sizes[k]]
            if small:
                raise ValueError(
                    f"split blocks {dict(self.split.block)} are smaller than the patch {self.sizes} along {small}: "
                    "patches never cross a block border, so no patch would fit"
                )

    @property
    def n_dates(self) -> int:
        return self.sizes.get("time", 1)

    def _n_for(self, split: str) -> int:
        n = self.n_patches
        if isinstance(n, Mapping):
            return int(n.get(split, 0))
        return int(n)

    def _rng(self, stream: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), stream, *extra])

    def _blocks(self, view: CubeView, split: str) -> list[Box]:
        shape = view.shape
        if view.mosaic is not None:  # the images are the blocks
            mine = view.mosaic.boxes()[self._image_splits(view) == SPLITS.index(split)]
            return [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in mine]
        if self.split is None:
            return [(0, shape["y"], 0, shape["x"])] if split == "train" else []
        return self.split.blocks(shape, split)

    def _image_splits(self, view: CubeView) -> np.ndarray:
        """``(N,)`` split code of every image of a mosaic: all train without a split (one training block)."""
        assert view.mosaic is not None and view.reserved is not None  # called for mosaic cubes only
        if self.split is None:
            return np.zeros(view.mosaic.n_images, dtype=np.int8)
        return assign_splits(view.reserved, self.split.fractions, self.split.seed)

    # -- public ------------------------------------------------------------------------------------
    def labelled_candidates(self, cube: Any, *, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
        """``(M, 2)`` int64 top-left ``(y, x)`` of every non-overlapping patch-size tile of the training blocks
        that holds a labelled pixel: the locations the labelled subset is drawn from (M = "all labels"). For an
        image mosaic: the top-left pixel of every training image that holds a labelled pixel (and a patch)."""
        view = CubeView.of(cube, storage_options)
        return labelled.candidates(view, self._blocks(view, "train"), self.sizes)

    def labelled_locations(self, cube: Any, *, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
        """``(n_labelled, 2)`` int64 top-left ``(y, x)`` of the labelled training locations (sorted). For an image
        mosaic: every patch tile of the ``n_labelled`` drawn images (:func:`hvaeseg.data.mosaic.image_tiles`), image
        by image."""
        if self.n_labelled == 0:
            return np.zeros((0, 2), dtype=np.int64)
        view = CubeView.of(cube, storage_options)
        found = self.labelled_candidates(view)
        return labelled.locations(view, found, self.sizes, self.n_labelled, self._rng(STREAM_LABELLED))

    def plan(self, cube: Any, *, storage_options: Mapping[str, Any] | None = None) -> PatchPlan:
        """Draw the plan for ``cube`` (an ``xarray.Dataset`` or a store path/URL)."""
        view = CubeView(cube, storage_options)
        shape = view.shape
        for k in SPATIAL:
            if self.sizes[k] > shape[k]:
                raise ValueError(f"patch size {self.sizes} does not fit in the {shape['y']}x{shape['x']} cube")
        if self.n_dates > shape["time"]:
            raise ValueError(f"asked for stacks of {self.n_dates} dates from a cube with {shape['time']} dates")
        parts: list[dict[str, np.ndarray]] = []
        n_groups = 0
        for split in self.splits:
            blocks = self._blocks(view, split)
            if not blocks:
                continue
            code = SPLITS.index(split)
            if self.mode == "cover":  # the whole cube, as the one training block it is without a split
                part = cover_patches(view, self.sizes)
            elif self.mode == "grid":
                part = grid_patches(view, blocks, self.sizes, self.n_dates, self.min_valid, self.grid_remainder,
                                    self._rng(STREAM_GRID, code))
            else:
                part = random_patches(view, blocks, self._n_for(split), self._rng(STREAM_RANDOM, code), split,
                                      sizes=self.sizes, n_dates=self.n_dates, min_valid=self.min_valid,
                                      window=self.window, per_window=self.per_window, max_rounds=self.max_rounds)
            part["split"] = np.full(len(part["y"]), code, dtype=np.int8)
            part["labelled"] = np.full(len(part["y"]), split != "train")
            part["group"] = part["group"] + n_groups
            n_groups = int(part["group"].max()) + 1 if len(part["group"]) else n_groups
            parts.append(part)
            if split == "train" and self.n_labelled:
                locs = self.labelled_locations(view)
                lab = labelled.labelled_patches(view, locs, self.sizes, self.n_dates, self.min_valid,
                                                self.labelled_dates, self._rng(STREAM_LABELLED_DATES))
                n = len(lab["y"])
                lab.update(split=np.full(n, code, dtype=np.int8), labelled=np.ones(n, dtype=bool),
                           group=lab["group"] + n_groups)
                n_groups += len(locs)
                # one patch per location: after the split's other patches; every date: before them
                parts.insert(len(parts) - (self.labelled_dates == "every"), lab)
        if parts:
            cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        else:
            empty = np.zeros(0, dtype=np.int64)
            cat = {"y": empty, "x": empty, "t": np.zeros((0, self.n_dates), dtype=np.int64), "split": empty,
                   "labelled": empty, "group": empty}
        return PatchPlan(sizes=dict(self.sizes), cube_shape=shape, meta=self.to_dict(), y=cat["y"], x=cat["x"],
                         t=cat["t"], split=cat["split"], labelled=cat["labelled"], group=cat["group"])

    def to_dict(self) -> dict[str, Any]:
        """The sampler's settings as JSON-able data (recorded in every plan's ``meta``)."""
        return {
            "sizes": dict(self.sizes), "mode": self.mode,
            "n_patches": dict(self.n_patches) if isinstance(self.n_patches, Mapping) else int(self.n_patches),
            "split": None if self.split is None else self.split.to_dict(), "n_labelled": int(self.n_labelled),
            "labelled_dates": self.labelled_dates, "min_valid": float(self.min_valid),
            "window": None if self.window is None else dict(self.window), "per_window": int(self.per_window),
            "grid_remainder": self.grid_remainder, "splits": list(self.splits), "seed": int(self.seed),
            "max_rounds": int(self.max_rounds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatchSampler:
        """Inverse of :meth:`to_dict` (a plan's ``meta``); unknown fields are errors."""
        return from_dict(cls, d, "PatchSampler")
