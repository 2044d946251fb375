"""The labelled subset: the candidate locations (patch-size tiles of the training blocks with a labelled pixel; a
mosaic's training images), the ``n_labelled`` drawn among them, and the dates of their patches. Rules in
:mod:`hvaeseg.data.sampler` (*Labelled subset*, *Image mosaics*)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from hvaeseg.data.mosaic import image_tiles
from hvaeseg.data.sampler._common import Box
from hvaeseg.data.sampler.cube_view import CubeView, box_sums, integral, valid_fractions
from hvaeseg.data.sampler.dates import choose_dates, clearest_dates, qualifying

__all__ = ["candidates", "labelled_patches", "locations"]

#: how a labelled location's dates are chosen: ``"draw"`` them as for any patch (one patch per location), or
#: ``"every"`` qualifying date, one single-date patch each
LabelledDates = Literal["draw", "every"]


def candidates(view: CubeView, train_blocks: Sequence[Box], sizes: Mapping[str, int]) -> np.ndarray:
    """``(M, 2)`` int64 top-left ``(y, x)`` of the non-overlapping patch-size tiles of ``train_blocks`` with a labelled
    pixel (all of them for a cube without labels); for a mosaic (``train_blocks`` its training images), of the
    training images with a labelled pixel (none when the patch does not fit in an image)."""
    H, W = sizes["y"], sizes["x"]
    if view.mosaic is not None:
        boxes = np.array(train_blocks, dtype=np.int64).reshape(-1, 4)
        h, w = view.mosaic.image_size
        if H > h or W > w:
            return np.zeros((0, 2), dtype=np.int64)
        lab = view.labelled_pixels()
        if lab is not None and len(boxes):
            boxes = boxes[box_sums(integral(lab), boxes[:, 0], boxes[:, 2], h, w) > 0]
        return boxes[:, [0, 2]].copy()
    found = []
    for y0, y1, x0, x1 in train_blocks:
        ys, xs = np.arange(y0, y1 - H + 1, H), np.arange(x0, x1 - W + 1, W)
        if len(ys) and len(xs):
            gy, gx = np.meshgrid(ys, xs, indexing="ij")
            found.append(np.stack([gy.ravel(), gx.ravel()], axis=1))
    tiles = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    lab = view.labelled_pixels()
    if lab is not None and len(tiles):
        has = box_sums(integral(lab), tiles[:, 0], tiles[:, 1], H, W) > 0
        tiles = tiles[has]
    return tiles.astype(np.int64)


def locations(view: CubeView, found: np.ndarray, sizes: Mapping[str, int], n_labelled: int,
              rng: np.random.Generator) -> np.ndarray:
    """``(n_labelled, 2)`` int64 top-left ``(y, x)`` of ``n_labelled`` locations drawn among the candidates
    ``found`` (:func:`candidates`), in candidate order; for a mosaic, every patch tile of the drawn images
    (:func:`hvaeseg.data.mosaic.image_tiles`), image by image.

    :raises ValueError: fewer candidates than ``n_labelled``.
    """
    H, W = sizes["y"], sizes["x"]
    if n_labelled > len(found):
        what = (f"{len(found)} images with labelled pixels" if view.mosaic is not None else
                f"{len(found)} non-overlapping {H}x{W} tiles with labelled pixels")
        raise ValueError(
            f"asked for {n_labelled} labelled training locations, but the training blocks hold only {what}"
        )
    pick = rng.choice(len(found), size=n_labelled, replace=False)
    chosen = found[np.sort(pick)].astype(np.int64)
    if view.mosaic is None:
        return chosen
    h, w = view.mosaic.image_size
    return np.concatenate([image_tiles((y, y + h, x, x + w), sizes) for y, x in chosen]).astype(np.int64)


def labelled_patches(view: CubeView, locs: np.ndarray, sizes: Mapping[str, int], n_dates: int, min_valid: float,
                     dates: LabelledDates, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The patches of the labelled locations ``locs`` (``(n, 2)`` top-left pixels); ``group`` is the location's index.

    ``"draw"``: one patch per location, its ``n_dates`` dates drawn among the qualifying dates (the clearest when
    too few qualify: a labelled location is kept whatever its data). ``"every"`` (single-date patches): one patch
    per (location, qualifying date), location by location, dates in order; a location on which no date qualifies
    gets one patch, on its clearest date.
    """
    (frac,) = valid_fractions(view, [(locs[:, 0], locs[:, 1], sizes["y"], sizes["x"])])
    if dates == "draw":
        t, _ = choose_dates(frac, n_dates, min_valid, rng, fallback=True)
        return {"y": locs[:, 0], "x": locs[:, 1], "t": t, "group": np.arange(len(locs), dtype=np.int64)}
    keep = qualifying(frac, min_valid)
    none = np.flatnonzero(~keep.any(axis=1))
    keep[none, clearest_dates(frac[none], 1)[:, 0]] = True
    i, t = np.nonzero(keep)  # row-major: location by location, dates increasing
    return {"y": locs[i, 0], "x": locs[i, 1], "t": t.astype(np.int64)[:, None], "group": i.astype(np.int64)}
