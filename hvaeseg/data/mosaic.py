"""Image mosaics: a set of camera images of one size laid out on a grid of one date, as a cube.

Why a mosaic
------------
Everything downstream of a cube works on ``(time, band, y, x)``: the spatial split in blocks, the labelled
locations, patch sampling, the loader, evaluation tiles and whole-cube prediction (``docs/conventions.md``). A
dataset of separate images (Cityscapes, or any folder of image/label PNG pairs) goes through all of it unchanged
when its N images, resized to one size ``H x W``, are laid out side by side on the ``(y, x)`` plane of a single
date: row ``i // C``, column ``i % C`` of a grid of ``C`` columns (the last row may have empty cells: no data,
``valid`` False, labels void). A new dimension (an ``image`` axis, or a stack of separate arrays) would have
had to be taught to every one of those modules; a mosaic needs them to know only one thing:

**the split unit is the image.** A cube that carries a mosaic layout (:class:`MosaicLayout`, from the dataset
attributes ``mosaic_image_size = [H, W]`` and ``mosaic_columns = C``) is split by
:class:`~hvaeseg.data.sampler.PatchSampler` image by image instead of in square blocks (the
:class:`~hvaeseg.data.sampler.SpatialSplit`'s ``block`` is not used; its ``fractions`` and ``seed`` are), so
that no image is shared by two splits whatever its aspect ratio (Cityscapes is 1:2, while the run's blocks
are square), and a labelled location is a whole image: the budget ``n_labelled`` counts images, each giving
every patch tile that covers it (:func:`image_tiles`). Patches, evaluation tiles and prediction tiles never
cross an image border.

Reserved splits
---------------
The variable ``image_split (image,) int8`` may reserve images for a split (0 train, 1 val, 2 test; -1 free):
Cityscapes' official val images are reserved for test when the cube holds the official train images too
(the protocol of the original table: checkpoints chosen on validation images drawn from the official train
split, the official val split reported as the test). :func:`assign_splits` gives every reserved image its
split and shares the free images, by a seeded permutation, among the splits with a positive fraction that
no image is reserved for (in proportion to their fractions; each gets at least one image when there are
enough); when every such split is reserved, among all splits with a positive fraction.

Variables of a mosaic cube (besides ``reflectance``, ``valid``, ``labels``): ``image_index (y, x) int32``, the
image of every pixel (-1 = empty cell), and on the ``image`` dimension ``image_split`` and coordinates naming
the images (``image_name``, ``image_source``; ``image_city`` and ``image_subset``, the official split, for
Cityscapes). This module is torch-free and reads nothing but attributes and small per-image arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvaeseg.data.tiles import tile_starts

__all__ = [
    "IMAGE_DIM",
    "SIZE_ATTR",
    "COLUMNS_ATTR",
    "MosaicLayout",
    "assign_splits",
    "image_tiles",
    "mosaic_problems",
    "reserved_splits",
]

#: the dimension of the per-image variables and coordinates
IMAGE_DIM = "image"
#: dataset attribute: ``[H, W]``, the size of every image of the mosaic
SIZE_ATTR = "mosaic_image_size"
#: dataset attribute: ``C``, the number of images per row of the mosaic
COLUMNS_ATTR = "mosaic_columns"

_SPLITS = ("train", "val", "test")  # as hvaeseg.data.sampler.SPLITS (the sampler imports this module)
#: the seed stream of the image permutation (that of SpatialSplit's block permutation)
_STREAM_SPLIT = 0


@dataclass(frozen=True)
class MosaicLayout:
    """Where each image of a mosaic lies: image ``i`` at row ``i // columns``, column ``i % columns``.

    :param image_size: ``(H, W)`` of every image, pixels.
    :param columns: images per row ``C``.
    :param n_images: N.
    """

    image_size: tuple[int, int]
    columns: int
    n_images: int

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"MosaicLayout.image_size: expected (H, W) with H, W >= 1, got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        if int(self.columns) < 1 or int(self.n_images) < 1:
            raise ValueError(f"MosaicLayout: expected columns >= 1 and n_images >= 1, got {self.columns}, "
                             f"{self.n_images}")
        object.__setattr__(self, "columns", int(self.columns))
        object.__setattr__(self, "n_images", int(self.n_images))

    @classmethod
    def for_images(cls, n_images: int, image_size: Sequence[int]) -> MosaicLayout:
        """The layout of ``n_images`` images of ``image_size`` on a grid as close to square (in pixels) as whole
        images allow: ``C = ceil(sqrt(N * H / W))`` columns."""
        h, w = (int(v) for v in image_size)
        columns = max(1, min(int(n_images), math.ceil(math.sqrt(n_images * h / w))))
        return cls((h, w), columns, n_images)

    @property
    def rows(self) -> int:
        return -(-self.n_images // self.columns)

    @property
    def shape(self) -> dict[str, int]:
        """``{"y": rows * H, "x": columns * W}``: the cube's spatial size."""
        return {"y": self.rows * self.image_size[0], "x": self.columns * self.image_size[1]}

    def boxes(self, cells: bool = False) -> np.ndarray:
        """``(N, 4)`` int64 pixel boxes ``(y0, y1, x0, x1)`` (half-open) of the images, in image order; with
        ``cells``, of every cell of the grid (``rows * columns``, the empty ones of the last row included)."""
        h, w = self.image_size
        i = np.arange(self.rows * self.columns if cells else self.n_images)
        y0, x0 = (i // self.columns) * h, (i % self.columns) * w
        return np.stack([y0, y0 + h, x0, x0 + w], axis=1).astype(np.int64)

    def image_index(self, y: np.ndarray | None = None, x: np.ndarray | None = None) -> np.ndarray:
        """``(Y, X)`` int32: the image of every pixel, -1 in the empty cells; of the rows ``y`` and columns ``x``
        (pixel indices) only, when given."""
        h, w = self.image_size
        shape = self.shape
        y = np.arange(shape["y"]) if y is None else np.asarray(y, dtype=np.int64)
        x = np.arange(shape["x"]) if x is None else np.asarray(x, dtype=np.int64)
        index = (y // h)[:, None] * self.columns + (x // w)[None, :]
        return np.where(index < self.n_images, index, -1).astype(np.int32)

    def attrs(self) -> dict[str, Any]:
        """The dataset attributes that declare this layout."""
        return {SIZE_ATTR: list(self.image_size), COLUMNS_ATTR: self.columns}

    @classmethod
    def from_cube(cls, ds: Any) -> MosaicLayout | None:
        """The layout a cube declares (its attributes and the size of its ``image`` dimension), None for a cube
        that is not a mosaic.

        :raises ValueError: the declaration is incomplete or does not fit the cube's size.
        """
        attrs: Mapping[str, Any] = ds.attrs
        declared = [a for a in (SIZE_ATTR, COLUMNS_ATTR) if a in attrs]
        if not declared and IMAGE_DIM not in ds.sizes:
            return None
        problems = mosaic_problems(ds)
        if problems:
            raise ValueError("; ".join(problems))
        h, w = (int(v) for v in np.ravel(attrs[SIZE_ATTR]))  # mosaic_problems() checked: two numbers
        return cls((h, w), int(attrs[COLUMNS_ATTR]), int(ds.sizes[IMAGE_DIM]))


def mosaic_problems(ds: Any) -> list[str]:
    """What is wrong with a cube's mosaic declaration, one line each with its fix (empty: nothing, or not a mosaic).
    Looks at attributes and sizes only."""
    attrs: Mapping[str, Any] = ds.attrs
    declared = [a for a in (SIZE_ATTR, COLUMNS_ATTR) if a in attrs]
    if not declared and IMAGE_DIM not in ds.sizes:
        return []
    fix = ("Fix: ds.attrs.update(MosaicLayout.for_images(N, (H, W)).attrs()) (hvaeseg.data.mosaic), with one "
           "entry per image along the `image` dimension")
    missing = [a for a in (SIZE_ATTR, COLUMNS_ATTR) if a not in attrs]
    if missing:
        return [f"the cube declares an image mosaic but lacks the attribute(s) {', '.join(missing)}. {fix}"]
    if IMAGE_DIM not in ds.sizes:
        return [f"the cube declares an image mosaic ({SIZE_ATTR}, {COLUMNS_ATTR}) but has no `{IMAGE_DIM}` "
                f"dimension (one entry per image: image_split, image_name). {fix}"]
    try:
        size = tuple(int(v) for v in np.ravel(attrs[SIZE_ATTR]))
        columns = int(attrs[COLUMNS_ATTR])
        if len(size) != 2:
            raise ValueError(f"expected [H, W], got {size}")
        layout = MosaicLayout((size[0], size[1]), columns, int(ds.sizes[IMAGE_DIM]))
    except (TypeError, ValueError):
        return [f"mosaic attributes {SIZE_ATTR}={attrs[SIZE_ATTR]!r}, {COLUMNS_ATTR}={attrs[COLUMNS_ATTR]!r} are "
                f"not [H, W] and a number of columns >= 1 (with >= 1 image). {fix}"]
    want = layout.shape
    have = {d: int(ds.sizes[d]) for d in ("y", "x") if d in ds.sizes}
    if have and have != want:
        return [f"the mosaic of {layout.n_images} images of {size[0]}x{size[1]} in {columns} columns is "
                f"{want['y']}x{want['x']} pixels, but the cube is {have.get('y')}x{have.get('x')}. {fix}"]
    return []


def reserved_splits(ds: Any) -> np.ndarray:
    """``(N,)`` int8: the split each image of a mosaic cube is reserved for (``image_split``; -1 = free, all free
    when the cube has no ``image_split``)."""
    if "image_split" in ds:
        return np.asarray(ds["image_split"].values, dtype=np.int8).reshape(-1)
    return np.full(int(ds.sizes[IMAGE_DIM]), -1, dtype=np.int8)


def split_counts(shares: Sequence[float], n: int) -> np.ndarray:
    """``n`` items shared in proportion to ``shares`` (rounded by largest remainder); every positive share gets at
    least one item when ``n`` allows (taken from the largest count)."""
    share = np.asarray(shares, dtype=np.float64)
    want = share / share.sum() * n if share.sum() > 0 else np.zeros_like(share)
    want = np.round(want, 9)  # exact ties (0.6 : 0.2 of 6 is 4.5 : 1.5) go to the first split, not to rounding error
    counts = np.floor(want).astype(int)
    for i in np.argsort(-(want - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= int((share > 0).sum()):
        for i in np.flatnonzero((share > 0) & (counts == 0)):
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    return counts


def assign_splits(reserved: np.ndarray, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """``(N,)`` int8 split code of every image (index into ``("train", "val", "test")``), by the rule of the
    module docstring: reserved images keep their split, free images are shared by a seeded permutation.

    :param reserved: ``(N,)`` codes, -1 = free.
    :param fractions: ``{"train": .., "val": .., "test": ..}`` (a :class:`~hvaeseg.data.sampler.SpatialSplit`'s).
    :param seed: the split's seed.
    """
    reserved = np.asarray(reserved, dtype=np.int8).reshape(-1)
    bad = sorted(set(np.unique(reserved).tolist()) - {-1, 0, 1, 2})
    if bad:
        raise ValueError(f"image_split holds codes {bad}; expected -1 (free), 0 train, 1 val or 2 test")
    codes = reserved.copy()
    free = np.flatnonzero(reserved < 0)
    if not len(free):
        return codes
    positive = [i for i, s in enumerate(_SPLITS) if float(fractions.get(s, 0.0)) > 0]
    targets = [i for i in positive if not (reserved == i).any()] or positive
    counts = split_counts([float(fractions[_SPLITS[i]]) for i in targets], len(free))
    perm = np.random.default_rng([int(seed), _STREAM_SPLIT]).permutation(len(free))
    start = 0
    for code, c in zip(targets, counts):
        codes[free[perm[start:start + c]]] = code
        start += c
    return codes


def image_tiles(box: Sequence[int], patch: Mapping[str, int]) -> np.ndarray:
    """``(n, 2)`` int64 top-left ``(y, x)`` of the patch tiles that cover the image ``box = (y0, y1, x0, x1)``:
    from its top-left corner with stride = patch size, the last row / column shifted back to end at the image
    border (overlapping its neighbour; never crossing the border). Empty when the patch does not fit."""
    y0, y1, x0, x1 = (int(v) for v in box)

    def starts(a: int, b: int, size: int) -> np.ndarray:
        return a + np.asarray(tile_starts(b - a, size) if size <= b - a else [], dtype=np.int64)

    gy, gx = np.meshgrid(starts(y0, y1, patch["y"]), starts(x0, x1, patch["x"]), indexing="ij")
    return np.stack([gy.ravel(), gx.ravel()], axis=1).astype(np.int64)
