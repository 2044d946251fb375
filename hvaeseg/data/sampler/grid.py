"""Grid and cover modes: patches that tile boxes, with stride = patch size from each box's top-left pixel.

*Grid* mode tiles every block of a split and drops or shifts in the remainder of each block
(``grid_remainder``); *cover* mode tiles the whole cube (a mosaic: every cell of its grid) with the remainder
shifted in, so that every pixel is covered (:func:`hvaeseg.data.tiles.tile_starts`): the plan of whole-cube
prediction (:func:`hvaeseg.predict.predict_cube`). Rules in :mod:`hvaeseg.data.sampler` (*Edges*, *Dates*).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from hvaeseg.data.sampler._common import Box
from hvaeseg.data.sampler.cube_view import CubeView, valid_fractions
from hvaeseg.data.sampler.dates import choose_dates, clearest_dates
from hvaeseg.data.tiles import tile_starts

__all__ = ["cover_boxes", "cover_patches", "grid_patches", "grid_starts", "tiles"]

Remainder = Literal["drop", "shift"]


def grid_starts(a: int, b: int, size: int, remainder: Remainder) -> np.ndarray:
    """Starts of the tiles of ``size`` in ``[a, b)``: stride = size from ``a``; the remainder (``b - a`` not a multiple
    of ``size``) dropped, or covered by one last tile shifted back to end at ``b`` (``"shift"``). Empty when the
    tile does not fit."""
    if remainder == "shift":
        return a + np.asarray(tile_starts(b - a, size) if size <= b - a else [], dtype=np.int64)
    return np.arange(a, b - size + 1, size)


def tiles(boxes: Sequence[Box], sizes: Mapping[str, int], remainder: Remainder) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` int64 top-left pixels of the tiles of every box (:func:`grid_starts` along each dimension), box
    by box, row-major inside a box."""
    ys, xs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for y0, y1, x0, x1 in boxes:
        gy, gx = np.meshgrid(grid_starts(y0, y1, sizes["y"], remainder), grid_starts(x0, x1, sizes["x"], remainder),
                             indexing="ij")
        ys.append(gy.ravel())
        xs.append(gx.ravel())
    return np.concatenate(ys).astype(np.int64), np.concatenate(xs).astype(np.int64)


def grid_patches(view: CubeView, blocks: Sequence[Box], sizes: Mapping[str, int], n_dates: int, min_valid: float,
                 remainder: Remainder, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Grid mode over ``blocks``: one patch per tile, its dates drawn among the qualifying dates (the clearest
    when too few qualify: a tile is kept whatever its data); one group per patch."""
    y, x = tiles(blocks, sizes, remainder)
    (frac,) = valid_fractions(view, [(y, x, sizes["y"], sizes["x"])])
    t, _ = choose_dates(frac, n_dates, min_valid, rng, fallback=True)
    return {"y": y, "x": x, "t": t, "group": np.arange(len(y), dtype=np.int64)}


def cover_boxes(view: CubeView) -> list[Box]:
    """The boxes cover mode tiles: the whole cube, or every cell of a mosaic's grid (the empty cells of its last row
    included), cell by cell, so that no tile crosses from one image into another."""
    if view.mosaic is None:
        return [(0, view.shape["y"], 0, view.shape["x"])]
    return [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in view.mosaic.boxes(cells=True)]


def cover_patches(view: CubeView, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Cover mode: the tiles of :func:`cover_boxes`, the remainder shifted in. Single-date patches (no ``"time"`` in
    ``sizes``): one row per (tile, date), every date of the cube, tile by tile; T-date stacks: one row per tile, its
    T clearest dates (:func:`~hvaeseg.data.sampler.dates.clearest_dates`, sorted). One group per row.

    :raises ValueError: the patch is larger than a mosaic's images.
    """
    if view.mosaic is not None:
        h, w = view.mosaic.image_size
        if sizes["y"] > h or sizes["x"] > w:
            raise ValueError(f"patch size {sizes['y']}x{sizes['x']} is larger than the mosaic's {h}x{w} images: use "
                             "a smaller patch size")
    y, x = tiles(cover_boxes(view), sizes, "shift")
    T = view.shape["time"]
    if "time" not in sizes:
        t = np.tile(np.arange(T, dtype=np.int64), len(y))[:, None]
        y, x = np.repeat(y, T), np.repeat(x, T)
    else:
        (frac,) = valid_fractions(view, [(y, x, sizes["y"], sizes["x"])])
        t = np.sort(clearest_dates(frac, sizes["time"]), axis=1)
    return {"y": y, "x": x, "t": t, "group": np.arange(len(y), dtype=np.int64)}
