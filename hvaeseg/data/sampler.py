"""Patch sampling and spatial splits: *what* to read, kept apart from the reading (:mod:`hvaeseg.data.loader`).

A :class:`PatchSampler` turns a cube into a :class:`PatchPlan`: for every patch its top-left pixel, its
date(s), its split and whether its labels may be used. The plan is plain data; it serialises to JSON
exactly (``PatchPlan.from_json(plan.to_json()) == plan``), so a run can be repeated patch for patch.

Sizes are given per named dimension, ``{"y": 64, "x": 64}``; adding ``"time": T`` asks for T-date stacks
(the loader then yields ``(B, T, C, H, W)``), leaving it out gives single-date patches ``(B, C, H, W)``.

Rules
-----
**Splits.** :class:`SpatialSplit` cuts the ``(y, x)`` plane into blocks (a regular grid from the cube's
top-left pixel; the last row / column of blocks may be smaller) and gives every block to exactly one of
``train`` / ``val`` / ``test`` by a seeded permutation, in the proportions asked for.

**Edges.** A patch never crosses the cube border nor a block border, so no pixel of a patch belongs to
another split and the loader never pads. A block smaller than the patch along a dimension holds no patch.
In grid mode each block is tiled from its top-left corner with stride = patch size; the remainder along
each dimension (block extent not a multiple of the patch size) is **dropped** by default
(``grid_remainder="drop"``), or covered by one extra patch shifted back to end at the block edge, so
overlapping its neighbour (``grid_remainder="shift"``). Nothing is ever padded.

**Dates and invalid patches.** The valid fraction of a date over a box is the share of ``valid`` pixels.
A date *qualifies* for a patch when its valid fraction is ``>= min_valid`` and ``> 0``. The patch's
dates are drawn uniformly (by seed, without replacement, sorted) from its qualifying dates.
In random mode a draw with fewer qualifying dates than it needs is rejected and drawn again, so a random
patch never contains a date without a valid pixel. Grid tiles and labelled locations are kept whatever
their data (coverage must not depend on the weather): when fewer dates qualify than needed they take
the dates with the highest valid fraction (earliest first on ties), which may have no valid pixel; the
loader returns such patches with ``valid`` all False, and every loss masks invalid pixels.

**Chunk-friendly random sampling.** With ``window={"y": 512, "x": 512}`` and ``per_window=k``, random
mode tiles the cube into super-tiles of that size from the cube origin (choose a multiple of the
store's chunk size, so each super-tile covers whole chunks); a super-tile is eligible for a split when
it lies entirely inside one block of that split. Each draw picks an eligible super-tile uniformly,
picks its dates from the dates that qualify over the whole super-tile, then draws ``k`` patch positions
uniformly inside it; a position whose dates do not all qualify over the patch itself is redrawn (up to
``4 k`` candidates per super-tile; the first ``k`` that qualify stay; a super-tile that cannot give ``k``
is dropped and another drawn, so every group has ``k`` patches, batches of a multiple of ``k`` patches
read whole super-tiles, and only the last group may be cut short by ``n_patches``). The ``k``
patches share a ``group`` id and the loader keeps a group together in a batch, so one decode of the
super-tile's chunks serves ``k`` patches. Without ``window`` every patch is drawn independently,
uniformly over all positions of its split.

**Labelled subset.** ``n_labelled`` training locations are drawn (by seed) among the non-overlapping
patch-size tiles of the training blocks that hold at least one labelled pixel. They depend only on the
cube's grid and labels, the split, the patch size, the seed and ``n_labelled`` -- not on the mode, the
dates or the number of random patches -- so every method trained with the same settings sees the same
labelled locations. Only patches flagged ``labelled`` carry labels through the loader; the random
(unlabelled) training patches get all-void labels even where they overlap a labelled location.
Validation and test patches are always flagged ``labelled`` (they are for evaluation).

**Image mosaics.** A cube of camera images laid out as a mosaic (:mod:`hvaeseg.data.mosaic`: dataset attributes
``mosaic_image_size`` and ``mosaic_columns``) is split image by image: the blocks are the images, each given to
one split by :func:`hvaeseg.data.mosaic.assign_splits` (the images the cube reserves for a split in
``image_split`` keep it, the others are shared by the split's ``fractions`` and ``seed``; the split's ``block`` is
not used). A labelled location is then a whole training image with a labelled pixel: ``n_labelled`` counts images,
:meth:`PatchSampler.labelled_candidates` returns one row per candidate image (its top-left pixel) and
:meth:`PatchSampler.labelled_locations` every patch tile covering the drawn images (the last row / column of
tiles shifted back to end at the image border). Everything else (grid and random modes, dates) is as above
with images for blocks, so no patch crosses an image border.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hvaeseg._dataclass_io import from_dict
from hvaeseg.data.mosaic import MosaicLayout, assign_splits, image_tiles, reserved_splits

__all__ = ["SPLITS", "SpatialSplit", "PatchSampler", "PatchPlan"]

#: the split names, in the order of their integer codes in a :class:`PatchPlan`
SPLITS: tuple[str, ...] = ("train", "val", "test")

PLAN_VERSION = 1

_SPATIAL = ("y", "x")

#: windowed random mode: candidate positions drawn per wanted patch of a super-tile
_WINDOW_CANDIDATES = 4

# independent random streams derived from one seed (numpy SeedSequence entropy lists)
_STREAM_SPLIT, _STREAM_RANDOM, _STREAM_GRID, _STREAM_LABELLED, _STREAM_LABELLED_DATES = range(5)


def _check_sizes(sizes: Mapping[str, int], what: str, allowed: Sequence[str] = _SPATIAL) -> dict[str, int]:
    if not isinstance(sizes, Mapping):
        raise TypeError(
            f"{what}: expected a mapping of dimension name to size, e.g. {{'y': 64, 'x': 64}}, got {sizes!r}"
        )
    unknown = [k for k in sizes if k not in allowed]
    if unknown:
        raise ValueError(f"{what}: expected dimensions among {list(allowed)}, got unknown {unknown}")
    missing = [k for k in _SPATIAL if k not in sizes]
    if missing:
        raise ValueError(f"{what}: expected sizes for both 'y' and 'x', missing {missing}")
    out = {}
    for k in allowed:
        if k in sizes:
            v = sizes[k]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{what}: expected a positive integer size for {k!r}, got {v!r}")
            out[k] = int(v)
    return out


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


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
        object.__setattr__(self, "block", _check_sizes(self.block, "SpatialSplit.block"))
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
        perm = np.random.default_rng([self.seed, _STREAM_SPLIT]).permutation(n)
        codes = np.empty(n, dtype=np.int8)
        start = 0
        for name, c in zip(names, counts):
            codes[perm[start : start + c]] = SPLITS.index(name)
            start += c
        return codes.reshape(nby, nbx)

    def blocks(self, shape: Mapping[str, int], split: str) -> list[tuple[int, int, int, int]]:
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


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------


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
        self.sizes = _check_sizes(self.sizes, "PatchPlan.sizes", allowed=("time", "y", "x"))
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


# --------------------------------------------------------------------------------------------------
# valid fractions
# --------------------------------------------------------------------------------------------------


class _CubeView:
    """What the sampler needs from a cube: its shape, per-date ``valid`` planes, the labelled pixels."""

    def __init__(self, cube: Any, storage_options: Mapping[str, Any] | None = None) -> None:
        import xarray as xr

        if isinstance(cube, (str, PathLike)):
            from hvaeseg.data.store import open_cube

            cube = open_cube(str(cube), storage_options=storage_options, validate=False)
        if not isinstance(cube, xr.Dataset):
            raise TypeError(f"expected a cube (xarray.Dataset) or a store path/URL, got {type(cube).__name__}")
        missing = [d for d in ("time", "y", "x") if d not in cube.sizes]
        if missing:
            raise ValueError(f"expected a cube with dimensions time, y, x; missing {missing}")
        self.ds = cube
        self.shape = {d: int(cube.sizes[d]) for d in ("time", "y", "x")}
        self._valid = cube["valid"].transpose("time", "y", "x") if "valid" in cube else None
        #: the image layout of a mosaic of camera images (None for other cubes), and the splits it reserves
        self.mosaic = MosaicLayout.from_cube(cube)
        self.reserved = reserved_splits(cube) if self.mosaic is not None else None

    def valid_plane(self, t: int) -> np.ndarray:
        if self._valid is None:
            return np.ones((self.shape["y"], self.shape["x"]), dtype=bool)
        return np.asarray(self._valid[t].values, dtype=bool)

    def labelled_pixels(self) -> np.ndarray | None:
        if "labels" not in self.ds:
            return None
        return np.asarray(self.ds["labels"].transpose("y", "x").values) >= 0


def _integral(plane: np.ndarray) -> np.ndarray:
    s = np.zeros((plane.shape[0] + 1, plane.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(plane, axis=0, dtype=np.int64), axis=1, out=s[1:, 1:])
    return s


def _box_sums(s: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int | np.ndarray, w: int | np.ndarray) -> np.ndarray:
    y1, x1 = y0 + h, x0 + w
    return s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]


def _valid_fractions(view: _CubeView, boxes: Sequence[tuple[np.ndarray, np.ndarray, int, int]]) -> list[np.ndarray]:
    """For each set of boxes ``(y0, x0, h, w)``, the ``(n, T)`` valid fraction of every date.

    One pass over the dates (one ``valid`` plane in memory at a time), integral images for the box sums.
    """
    T = view.shape["time"]
    out = [np.empty((len(y0), T), dtype=np.float64) for (y0, _, _, _) in boxes]
    if not any(len(b[0]) for b in boxes):
        return out
    for t in range(T):
        s = _integral(view.valid_plane(t))
        for o, (y0, x0, h, w) in zip(out, boxes):
            if len(y0):
                o[:, t] = _box_sums(s, y0, x0, h, w) / float(h * w)
    return out


def _choose_dates(
    frac: np.ndarray, n_dates: int, min_valid: float, rng: np.random.Generator, fallback: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n_dates`` dates per row of ``frac`` (n, T): uniformly among the qualifying dates.

    Returns ``(dates (n, n_dates) sorted, ok (n,) bool)``; rows with too few qualifying dates get
    ``ok = False`` and, when ``fallback``, the dates of highest valid fraction (earliest on ties).
    """
    n, T = frac.shape
    if n_dates > T:
        raise ValueError(f"asked for stacks of {n_dates} dates from a cube with {T} dates")
    qualifies = (frac >= min_valid) & (frac > 0)
    ok = qualifies.sum(axis=1) >= n_dates
    keys = rng.random((n, T))
    keys[~qualifies] = np.inf
    chosen = np.argsort(keys, axis=1, kind="stable")[:, :n_dates]
    if fallback and not ok.all():
        best = np.argsort(-frac, axis=1, kind="stable")[:, :n_dates]
        chosen[~ok] = best[~ok]
    return np.sort(chosen, axis=1), ok


# --------------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchSampler:
    """Draws a :class:`PatchPlan` from a cube (rules in the module docstring).

    :param sizes: patch size per dimension: ``{"y": 64, "x": 64}``, plus ``"time": T`` for T-date stacks.
    :param mode: ``"random"`` (``n_patches`` uniform draws per split) or ``"grid"`` (tile every block).
    :param n_patches: random mode: patches per split, one number for every split or a mapping
        ``{"train": 1000, "val": 100}`` (missing splits get none).
    :param split: the spatial split; ``None`` puts the whole cube in one training block.
    :param n_labelled: number of labelled training locations (patch-size tiles, drawn by seed).
    :param min_valid: a date qualifies for a patch when its valid fraction is ``>= min_valid`` (and > 0).
    :param window: random mode: super-tile size per dimension for chunk-friendly sampling (or ``None``).
    :param per_window: random mode with ``window``: patches drawn per super-tile.
    :param grid_remainder: grid mode: ``"drop"`` the remainder of a block or ``"shift"`` a last patch in.
    :param splits: the splits to plan (default all three).
    :param seed: one seed for everything random in the plan.
    :param max_rounds: random mode gives up (``ValueError``) after this many rounds of rejected draws.
    """

    sizes: Mapping[str, int]
    mode: Literal["random", "grid"] = "random"
    n_patches: int | Mapping[str, int] = 256
    split: SpatialSplit | None = None
    n_labelled: int = 0
    min_valid: float = 0.0
    window: Mapping[str, int] | None = None
    per_window: int = 1
    grid_remainder: Literal["drop", "shift"] = "drop"
    splits: tuple[str, ...] = SPLITS
    seed: int = 0
    max_rounds: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", _check_sizes(self.sizes, "PatchSampler.sizes", allowed=("time", "y", "x")))
        if self.mode not in ("random", "grid"):
            raise ValueError(f"PatchSampler.mode: expected 'random' or 'grid', got {self.mode!r}")
        if self.grid_remainder not in ("drop", "shift"):
            raise ValueError(f"PatchSampler.grid_remainder: expected 'drop' or 'shift', got {self.grid_remainder!r}")
        if not 0.0 <= float(self.min_valid) <= 1.0:
            raise ValueError(f"PatchSampler.min_valid: expected a fraction in [0, 1], got {self.min_valid!r}")
        if self.split is not None and not isinstance(self.split, SpatialSplit):
            raise TypeError(f"PatchSampler.split: expected a SpatialSplit or None, got {type(self.split).__name__}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"PatchSampler.splits: expected names among {SPLITS}, got {bad}")
        if self.n_labelled < 0:
            raise ValueError(f"PatchSampler.n_labelled: expected >= 0, got {self.n_labelled}")
        if self.window is not None:
            w = _check_sizes(self.window, "PatchSampler.window")
            small = [k for k in _SPATIAL if w[k] < self.sizes[k]]
            if small:
                raise ValueError(f"PatchSampler.window {w} must be at least the patch size {self.sizes} along {small}")
            object.__setattr__(self, "window", w)
        if self.per_window < 1:
            raise ValueError(f"PatchSampler.per_window: expected >= 1, got {self.per_window}")
        if self.per_window > 1 and self.window is None:
            raise ValueError("PatchSampler.per_window > 1 needs a window (the super-tile the patches share)")
        if self.split is not None:
            small = [k for k in _SPATIAL if self.split.block[k] < self.sizes[k]]
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

    def _blocks(self, view: _CubeView, split: str) -> list[tuple[int, int, int, int]]:
        shape = view.shape
        if view.mosaic is not None:  # the images are the blocks
            mine = view.mosaic.boxes()[self._image_splits(view) == SPLITS.index(split)]
            return [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in mine]
        if self.split is None:
            return [(0, shape["y"], 0, shape["x"])] if split == "train" else []
        return self.split.blocks(shape, split)

    def _image_splits(self, view: _CubeView) -> np.ndarray:
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
        view = cube if isinstance(cube, _CubeView) else _CubeView(cube, storage_options)
        H, W = self.sizes["y"], self.sizes["x"]
        if view.mosaic is not None:
            boxes = np.array(self._blocks(view, "train"), dtype=np.int64).reshape(-1, 4)
            h, w = view.mosaic.image_size
            if H > h or W > w:
                return np.zeros((0, 2), dtype=np.int64)
            lab = view.labelled_pixels()
            if lab is not None and len(boxes):
                boxes = boxes[_box_sums(_integral(lab), boxes[:, 0], boxes[:, 2], h, w) > 0]
            return boxes[:, [0, 2]].copy()
        found = []
        for y0, y1, x0, x1 in self._blocks(view, "train"):
            ys, xs = np.arange(y0, y1 - H + 1, H), np.arange(x0, x1 - W + 1, W)
            if len(ys) and len(xs):
                gy, gx = np.meshgrid(ys, xs, indexing="ij")
                found.append(np.stack([gy.ravel(), gx.ravel()], axis=1))
        tiles = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
        lab = view.labelled_pixels()
        if lab is not None and len(tiles):
            has = _box_sums(_integral(lab), tiles[:, 0], tiles[:, 1], H, W) > 0
            tiles = tiles[has]
        return tiles.astype(np.int64)

    def labelled_locations(self, cube: Any, *, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
        """``(n_labelled, 2)`` int64 top-left ``(y, x)`` of the labelled training locations (sorted). For an image
        mosaic: every patch tile of the ``n_labelled`` drawn images (:func:`hvaeseg.data.mosaic.image_tiles`), image
        by image."""
        if self.n_labelled == 0:
            return np.zeros((0, 2), dtype=np.int64)
        view = cube if isinstance(cube, _CubeView) else _CubeView(cube, storage_options)
        tiles = self.labelled_candidates(view)
        H, W = self.sizes["y"], self.sizes["x"]
        if self.n_labelled > len(tiles):
            what = (f"{len(tiles)} images with labelled pixels" if view.mosaic is not None else
                    f"{len(tiles)} non-overlapping {H}x{W} tiles with labelled pixels")
            raise ValueError(
                f"asked for {self.n_labelled} labelled training locations, but the training blocks hold only {what}"
            )
        pick = self._rng(_STREAM_LABELLED).choice(len(tiles), size=self.n_labelled, replace=False)
        chosen = tiles[np.sort(pick)].astype(np.int64)
        if view.mosaic is None:
            return chosen
        h, w = view.mosaic.image_size
        return np.concatenate([image_tiles((y, y + h, x, x + w), self.sizes) for y, x in chosen]).astype(np.int64)

    def plan(self, cube: Any, *, storage_options: Mapping[str, Any] | None = None) -> PatchPlan:
        """Draw the plan for ``cube`` (an ``xarray.Dataset`` or a store path/URL)."""
        view = _CubeView(cube, storage_options)
        shape = view.shape
        for k in _SPATIAL:
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
            if self.mode == "grid":
                part = self._grid(view, blocks, self._rng(_STREAM_GRID, code))
            else:
                n = self._n_for(split)
                part = self._random(view, blocks, n, self._rng(_STREAM_RANDOM, code), split)
            part["split"] = np.full(len(part["y"]), code, dtype=np.int8)
            part["labelled"] = np.full(len(part["y"]), split != "train")
            part["group"] = part["group"] + n_groups
            n_groups = int(part["group"].max()) + 1 if len(part["group"]) else n_groups
            parts.append(part)
            if split == "train" and self.n_labelled:
                locs = self.labelled_locations(view)
                (frac,) = _valid_fractions(view, [(locs[:, 0], locs[:, 1], self.sizes["y"], self.sizes["x"])])
                t, _ = _choose_dates(frac, self.n_dates, self.min_valid, self._rng(_STREAM_LABELLED_DATES), True)
                n = len(locs)
                parts.append({
                    "y": locs[:, 0], "x": locs[:, 1], "t": t, "split": np.full(n, code, dtype=np.int8),
                    "labelled": np.ones(n, dtype=bool), "group": np.arange(n, dtype=np.int64) + n_groups,
                })
                n_groups += n
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
            "min_valid": float(self.min_valid), "window": None if self.window is None else dict(self.window),
            "per_window": int(self.per_window), "grid_remainder": self.grid_remainder, "splits": list(self.splits),
            "seed": int(self.seed), "max_rounds": int(self.max_rounds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatchSampler:
        """Inverse of :meth:`to_dict` (a plan's ``meta``); unknown fields are errors."""
        return from_dict(cls, d, "PatchSampler")

    # -- modes -------------------------------------------------------------------------------------
    def _grid(self, view: _CubeView, blocks, rng: np.random.Generator) -> dict[str, np.ndarray]:
        H, W = self.sizes["y"], self.sizes["x"]

        def starts(a: int, b: int, size: int) -> np.ndarray:
            s = np.arange(a, b - size + 1, size)
            if self.grid_remainder == "shift" and len(s) and s[-1] + size < b:
                s = np.append(s, b - size)
            return s

        ys, xs = [], []
        for y0, y1, x0, x1 in blocks:
            gy, gx = np.meshgrid(starts(y0, y1, H), starts(x0, x1, W), indexing="ij")
            ys.append(gy.ravel())
            xs.append(gx.ravel())
        y = np.concatenate(ys).astype(np.int64)
        x = np.concatenate(xs).astype(np.int64)
        (frac,) = _valid_fractions(view, [(y, x, H, W)])
        t, _ = _choose_dates(frac, self.n_dates, self.min_valid, rng, fallback=True)
        return {"y": y, "x": x, "t": t, "group": np.arange(len(y), dtype=np.int64)}

    def _regions(self, shape, blocks) -> tuple[np.ndarray, np.ndarray]:
        """Random mode: candidate regions ``(r, 4)`` as (y0, y1, x0, x1) and their draw weights."""
        H, W = self.sizes["y"], self.sizes["x"]
        if self.window is None:
            reg = np.array([b for b in blocks if b[1] - b[0] >= H and b[3] - b[2] >= W], dtype=np.int64).reshape(-1, 4)
            weights = (reg[:, 1] - reg[:, 0] - H + 1) * (reg[:, 3] - reg[:, 2] - W + 1)
            return reg, weights.astype(np.float64)
        wy, wx = self.window["y"], self.window["x"]
        tiles = []
        for y0, y1, x0, x1 in blocks:
            ty = np.arange(-(-y0 // wy) * wy, y1 - wy + 1, wy)
            tx = np.arange(-(-x0 // wx) * wx, x1 - wx + 1, wx)
            for a in ty:
                for b in tx:
                    tiles.append((a, a + wy, b, b + wx))
        reg = np.array(tiles, dtype=np.int64).reshape(-1, 4)
        return reg, np.ones(len(reg))

    def _random(self, view: _CubeView, blocks, n: int, rng: np.random.Generator, split: str) -> dict[str, np.ndarray]:
        H, W, T = self.sizes["y"], self.sizes["x"], self.n_dates
        empty = {"y": np.zeros(0, np.int64), "x": np.zeros(0, np.int64), "t": np.zeros((0, T), np.int64),
                 "group": np.zeros(0, np.int64)}
        if n <= 0:
            return empty
        reg, weights = self._regions(view.shape, blocks)
        if len(reg) == 0:
            what = f"super-tile {self.window}" if self.window is not None else f"{H}x{W} patch"
            raise ValueError(f"no {what} fits inside a single {split} block; use larger blocks or smaller patches")
        p = weights / weights.sum()
        k = self.per_window
        got: list[dict[str, np.ndarray]] = []
        have, group = 0, 0
        for _ in range(self.max_rounds):
            need = n - have
            m = max(8, 2 * (-(-need // k)))  # oversample: some draws are rejected
            r = reg[rng.choice(len(reg), size=m, p=p)]
            if self.window is None:
                wy0 = r[:, 0] + (rng.random(m) * (r[:, 1] - r[:, 0] - H + 1)).astype(np.int64)
                wx0 = r[:, 2] + (rng.random(m) * (r[:, 3] - r[:, 2] - W + 1)).astype(np.int64)
                (fw,) = _valid_fractions(view, [(wy0, wx0, H, W)])
                t, ok = _choose_dates(fw, T, self.min_valid, rng, fallback=False)
                y, x, tt, g = wy0[ok], wx0[ok], t[ok], np.arange(ok.sum()) + group
            else:
                wy, wx = self.window["y"], self.window["x"]
                kc = k * _WINDOW_CANDIDATES  # candidate positions per super-tile; the first k that qualify stay
                py = r[:, :1] + (rng.random((m, kc)) * (wy - H + 1)).astype(np.int64)
                px = r[:, 2:3] + (rng.random((m, kc)) * (wx - W + 1)).astype(np.int64)
                fw, fp = _valid_fractions(view, [(r[:, 0], r[:, 2], wy, wx), (py.ravel(), px.ravel(), H, W)])
                t, ok = _choose_dates(fw, T, self.min_valid, rng, fallback=False)
                fp = fp.reshape(m, kc, -1)
                fsel = np.take_along_axis(fp, t[:, None, :].repeat(kc, axis=1), axis=2)  # (m, kc, T)
                pok = ok[:, None] & ((fsel >= self.min_valid) & (fsel > 0)).all(axis=2)
                pok &= np.cumsum(pok, axis=1) <= k
                ok &= pok.sum(axis=1) == k  # a super-tile that cannot give k patches is dropped
                pok &= ok[:, None]
                gid = np.cumsum(ok) - 1 + group
                y, x = py[pok], px[pok]
                tt = np.broadcast_to(t[:, None, :], (m, kc, T))[pok]
                g = np.broadcast_to(gid[:, None], (m, kc))[pok]
                # renumber the groups that kept a patch 0, 1, ... after `group`
                if len(g):
                    _, g = np.unique(g, return_inverse=True)
                    g = g + group
            got.append({"y": y, "x": x, "t": tt, "group": g})
            have += len(y)
            group = int(g.max()) + 1 if len(g) else group
            if have >= n:
                break
        else:
            raise ValueError(
                f"random sampling found only {have} of {n} {split} patches in {self.max_rounds} rounds: too few "
                f"dates have a valid fraction >= min_valid={self.min_valid} (and > 0); lower min_valid or the "
                "number of dates per stack"
            )
        cat = {key: np.concatenate([d[key] for d in got])[:n] for key in got[0]}
        cat["t"] = cat["t"].reshape(-1, T)
        return cat
