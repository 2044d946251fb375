"""The plan: :class:`PatchPlan`, which patches to read (plain data, exact JSON), made by
:class:`~hvaeseg.data.sampler.PatchSampler` and read by :class:`~hvaeseg.data.loader.PatchLoader`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from hvaeseg.data.sampler._common import SPLITS, check_sizes

__all__ = ["PLAN_VERSION", "PatchPlan"]

PLAN_VERSION = 1


@dataclass(eq=False)
class PatchPlan:
    """Which patches to read: one row per patch, in reading order.

    :param sizes: patch size per dimension, ``{"y": H, "x": W}`` plus ``"time": T`` for stacks.
    :param cube_shape: ``{"time": T_total, "y": Y, "x": X}`` of the cube the plan was made for.
    :param y: ``(N,)`` int64 top row of each patch.
    :param x: ``(N,)`` int64 left column.
    :param t: ``(N, T)`` int64 date indices (``T = 1`` for single-date patches), increasing per row.
    :param split: ``(N,)`` int8 split code (index into :data:`SPLITS`).
    :param labelled: ``(N,)`` bool: whether the loader returns this patch's labels (else all void).
    :param group: ``(N,)`` int64: patches of one group are kept together when the loader shuffles.
    :param meta: JSON-able settings the plan was made with (sampler, split), for the record.
    """

    sizes: dict[str, int]
    cube_shape: dict[str, int]
    y: np.ndarray
    x: np.ndarray
    t: np.ndarray
    split: np.ndarray
    labelled: np.ndarray
    group: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        self.sizes = check_sizes(self.sizes, "PatchPlan.sizes", allowed=("time", "y", "x"))
        self.cube_shape = {k: int(self.cube_shape[k]) for k in ("time", "y", "x")}
        n = len(np.asarray(self.y))
        self.y = np.asarray(self.y, dtype=np.int64).reshape(n)
        self.x = np.asarray(self.x, dtype=np.int64).reshape(n)
        self.t = np.asarray(self.t, dtype=np.int64).reshape(n, self.n_dates)
        self.split = np.asarray(self.split, dtype=np.int8).reshape(n)
        self.labelled = np.asarray(self.labelled, dtype=bool).reshape(n)
        self.group = np.asarray(self.group, dtype=np.int64).reshape(n)

    # -- shape ------------------------------------------------------------------------------------
    @property
    def temporal(self) -> bool:
        """True for T-date stacks (``"time"`` in ``sizes``): the loader yields 5-D ``x``."""
        return "time" in self.sizes

    @property
    def n_dates(self) -> int:
        return self.sizes.get("time", 1)

    def __len__(self) -> int:
        return len(self.y)

    def check(self) -> None:
        """Raise ``ValueError`` if a patch leaves the cube or uses a date index out of range."""
        H, W, Y, X, T = (
            self.sizes["y"], self.sizes["x"], self.cube_shape["y"], self.cube_shape["x"], self.cube_shape["time"]
        )
        bad = (self.y < 0) | (self.x < 0) | (self.y + H > Y) | (self.x + W > X)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"patch {i} at (y={self.y[i]}, x={self.x[i]}) of size {H}x{W} leaves the {Y}x{X} cube; "
                "patches never cross the cube border"
            )
        if len(self) and (self.t.min() < 0 or self.t.max() >= T):
            raise ValueError(f"plan uses date indices outside [0, {T}) of the cube")
        if not set(np.unique(self.split)) <= set(range(len(SPLITS))):
            raise ValueError(f"plan has split codes outside 0..{len(SPLITS) - 1}")

    def select(self, split: str | None = None, labelled: bool | None = None) -> PatchPlan:
        """The sub-plan of one split and/or of the labelled (or unlabelled) patches, order kept."""
        keep = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"expected a split among {SPLITS}, got {split!r}")
            keep &= self.split == SPLITS.index(split)
        if labelled is not None:
            keep &= self.labelled == bool(labelled)
        return self.take(np.nonzero(keep)[0])

    def take(self, index: np.ndarray | Sequence[int]) -> PatchPlan:
        """The plan of the patches at ``index`` (in that order)."""
        i = np.asarray(index, dtype=np.int64)
        return PatchPlan(
            sizes=dict(self.sizes), cube_shape=dict(self.cube_shape), y=self.y[i], x=self.x[i], t=self.t[i],
            split=self.split[i], labelled=self.labelled[i], group=self.group[i], meta=json.loads(json.dumps(self.meta)),
        )

    def counts(self) -> dict[str, int]:
        """Number of patches per split."""
        return {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)}

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sizes": dict(self.sizes),
            "cube_shape": dict(self.cube_shape),
            "meta": self.meta,
            "patches": {
                "y": self.y.tolist(),
                "x": self.x.tolist(),
                "t": self.t.tolist(),
                "split": self.split.tolist(),
                "labelled": self.labelled.tolist(),
                "group": self.group.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatchPlan:
        version = d.get("version")
        if version != PLAN_VERSION:
            raise ValueError(f"expected a patch plan of version {PLAN_VERSION}, got version {version!r}")
        p = d["patches"]
        n_dates = int(d["sizes"].get("time", 1))
        return cls(
            sizes=dict(d["sizes"]), cube_shape=dict(d["cube_shape"]),
            y=np.array(p["y"], dtype=np.int64), x=np.array(p["x"], dtype=np.int64),
            t=np.array(p["t"], dtype=np.int64).reshape(-1, n_dates), split=np.array(p["split"], dtype=np.int8),
            labelled=np.array(p["labelled"], dtype=bool), group=np.array(p["group"], dtype=np.int64),
            meta=dict(d.get("meta", {})), version=version,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PatchPlan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | PathLike) -> None:
        """Write the plan as JSON (to a temporary name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | PathLike) -> PatchPlan:
        return cls.from_json(Path(path).read_text())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatchPlan):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"PatchPlan({len(self)} patches, sizes={self.sizes}, counts={self.counts()})"
