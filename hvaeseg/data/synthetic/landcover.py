"""The static landscape: Voronoi field parcels grouped into road blocks, towns, forest, water, texture.

Construction (all vectorised, a block of rows at a time):

1. **Parcels**: a Voronoi tessellation of seeds jittered on a grid ``parcel_size_m`` apart (one seed per
   grid cell; a pixel's nearest and second-nearest seed are searched among the 3 x 3 neighbouring cells).
2. **Blocks and roads**: every parcel seed joins the block of its nearest seed on a coarser jittered grid
   (``block_size_m``); a pixel lies on a road where its two nearest parcels belong to different blocks and
   the pixel is within about half a road width of their common edge (the bisector), so roads run along
   parcel edges, bend where they do and meet at junctions. Inside towns every parcel edge is a street.
3. **Parcel classes**: parcels whose seed lies where a smooth "town" field is highest are built-up
   (``urban_fraction`` of them); the others get grassland / winter cereal / maize / bare soil in the
   shares of ``parcel_shares``, allocated exactly (largest remainder, then shuffled) so that a small
   image still shows every class.
4. **Forest and water**: smooth random fields thresholded at the quantile that gives ``forest_fraction``
   and ``water_fraction``: natural, curved outlines across parcel edges. Water wins over everything,
   roads over forest, forest over fields (not over towns).
5. **Spectral units**: every pixel belongs to a unit ``parcel * N_SURFACES + surface``; each unit gets
   its own spectrum per date (see :mod:`.spectra`), so parcels differ from their neighbours of the same
   class, and a forest stand or a lake keeps one character.
6. **Texture**: a static per-pixel field ``texture`` (smooth 60 m blobs plus pixel-scale grain, in
   [-3, 3]) that scales each unit's within-unit variation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hvaeseg.data.synthetic.config import PARCEL_CLASSES, SyntheticConfig
from hvaeseg.data.synthetic.fields import LowResField, coarse_spacing

__all__ = ["SURFACES", "N_SURFACES", "SURFACE_CLASS", "LandCover", "make_landcover"]

#: surface types: the spectral kinds of the generator; each maps to a land-cover class
SURFACES: tuple[str, ...] = ("water", "forest", "grassland", "winter_cereal", "maize", "bare_soil", "urban", "road")
N_SURFACES = len(SURFACES)
WATER, FOREST, GRASS, WINTER, MAIZE, BARE, URBAN, ROAD = range(N_SURFACES)
#: the class of each surface type (roads are built-up land)
SURFACE_CLASS: tuple[str, ...] = (*SURFACES[:7], "urban")

#: rows of pixels processed together (about 1 MB per float32 array: stays in cache)
_BLOCK_PIXELS = 1 << 18


@dataclass(frozen=True)
class LandCover:
    """The static landscape of a synthetic cube.

    :param unit: ``(H, W)`` int32 spectral unit of each pixel, ``parcel * N_SURFACES + surface``.
    :param labels: ``(H, W)`` int16 class ids (positions in ``config.classes``).
    :param texture: ``(H, W)`` float32 within-unit texture in [-3, 3].
    :param parcel_class: ``(P,)`` surface type of each parcel (grass, crops, bare soil or urban).
    :param parcel_block: ``(P,)`` road block of each parcel.
    :param n_blocks: number of road blocks.
    """

    unit: np.ndarray
    labels: np.ndarray
    texture: np.ndarray
    parcel_class: np.ndarray
    parcel_block: np.ndarray
    n_blocks: int

    @property
    def n_parcels(self) -> int:
        return int(self.parcel_class.size)

    @property
    def n_units(self) -> int:
        return self.n_parcels * N_SURFACES


def _jittered_seeds(rng: np.random.Generator, size: tuple[int, int], cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Seed coordinates (pixel units) on a grid of ``cell``-pixel cells with one cell of margin each side.

    :returns: ``sy, sx`` of shape ``(gy, gx)``; cell ``(i, j)`` spans pixels ``[(i-1) cell, i cell)``.
    """
    gy, gx = math.ceil(size[0] / cell) + 2, math.ceil(size[1] / cell) + 2
    jitter = rng.uniform(0.1, 0.9, size=(2, gy, gx))
    sy = (np.arange(gy)[:, None] - 1 + jitter[0]) * cell
    sx = (np.arange(gx)[None, :] - 1 + jitter[1]) * cell
    return sy, sx


def _nearest_points(py: np.ndarray, px: np.ndarray, sy: np.ndarray, sx: np.ndarray, cell: int) -> np.ndarray:
    """Index (flat, into ``sy``) of the seed nearest to each point, searching the 3 x 3 neighbour cells."""
    gy, gx = sy.shape
    cy = np.clip(np.floor(py / cell).astype(np.int64) + 1, 1, gy - 2)
    cx = np.clip(np.floor(px / cell).astype(np.int64) + 1, 1, gx - 2)
    best = np.full(py.shape, np.inf)
    arg = np.zeros(py.shape, dtype=np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            iy, ix = cy + dy, cx + dx
            d = (py - sy[iy, ix]) ** 2 + (px - sx[iy, ix]) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            arg = np.where(closer, iy * gx + ix, arg)
    return arg


def _two_nearest_block(
    c0: int, c1: int, width: int, sy: np.ndarray, sx: np.ndarray, cell: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest and second-nearest seed for the pixels of cell rows ``[c0, c1)``.

    :returns: ``i1, i2`` (flat seed indices, int32) and squared distances ``d1, d2`` (float32), each of
        shape ``((c1 - c0) * cell, ncx * cell)`` with ``ncx * cell >= width``.
    """
    gy, gx = sy.shape
    ncr, ncx = c1 - c0, math.ceil(width / cell)
    yy = (np.arange(c0 * cell, c1 * cell, dtype=np.float32) + 0.5).reshape(ncr, cell, 1, 1)
    xx = (np.arange(ncx * cell, dtype=np.float32) + 0.5).reshape(1, 1, ncx, cell)
    shape = (ncr, cell, ncx, cell)
    d1 = np.full(shape, np.inf, dtype=np.float32)
    d2 = np.full(shape, np.inf, dtype=np.float32)
    i1 = np.zeros(shape, dtype=np.int32)
    i2 = np.zeros(shape, dtype=np.int32)
    rows = np.arange(c0, c1) + 1
    cols = np.arange(ncx) + 1
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ry, rx = np.ix_(rows + dy, cols + dx)
            s_y = sy[ry, rx].astype(np.float32).reshape(ncr, 1, ncx, 1)
            s_x = sx[ry, rx].astype(np.float32).reshape(ncr, 1, ncx, 1)
            idx = (ry * gx + rx).astype(np.int32).reshape(ncr, 1, ncx, 1)
            d = np.square(xx - s_x)
            d = d + np.square(yy - s_y)
            closer = d < d1
            second = ~closer & (d < d2)
            np.copyto(d2, d1, where=closer)
            np.copyto(i2, i1, where=closer)
            np.copyto(d2, d, where=second)
            np.copyto(i2, idx, where=second)
            np.copyto(d1, d, where=closer)
            np.copyto(i1, idx, where=closer)
    flat = (ncr * cell, ncx * cell)
    return i1.reshape(flat), i2.reshape(flat), d1.reshape(flat), d2.reshape(flat)


def _allocate(rng: np.random.Generator, n: int, shares: np.ndarray) -> np.ndarray:
    """``n`` category ids in proportions ``shares`` (largest remainder), shuffled."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    p = shares / shares.sum()
    counts = np.floor(p * n).astype(np.int64)
    rest = n - counts.sum()
    order = np.argsort(-(p * n - counts), kind="stable")
    counts[order[:rest]] += 1
    return rng.permutation(np.repeat(np.arange(len(shares)), counts))


def make_landcover(config: SyntheticConfig, rng: np.random.Generator) -> LandCover:
    """Draw the landscape of ``config`` with ``rng`` (see the module docstring)."""
    h, w = config.size
    classes = set(config.classes)
    cell = max(2, round(config.parcel_size_m / 10.0))
    bcell = max(cell + 1, round(config.block_size_m / 10.0))

    # 1-2. parcels and their road blocks
    sy, sx = _jittered_seeds(rng, (h, w), cell)
    by, bx = _jittered_seeds(rng, (h, w), bcell)
    p_y, p_x = sy.ravel(), sx.ravel()
    n_parcels = p_y.size
    parcel_block = _nearest_points(p_y, p_x, by, bx, bcell).astype(np.int32)
    inside = (p_y >= 0) & (p_y < h) & (p_x >= 0) & (p_x < w)

    # 3. parcel classes: towns from a smooth field, then the agricultural classes in exact shares
    lc_spacing = coarse_spacing(max(h, w), 512)
    town = LowResField.covering(rng, (h, w), lc_spacing, margin=(2 * cell, 2 * cell), corr_px=60.0)
    forest = LowResField.covering(rng, (h, w), lc_spacing, corr_px=120.0, smallest_px=6.0, slope=2.2)
    lakes = LowResField.covering(rng, (h, w), lc_spacing, corr_px=20.0)
    parcel_class = np.full(n_parcels, GRASS, dtype=np.int8)
    is_urban = np.zeros(n_parcels, dtype=bool)
    if "urban" in classes and config.urban_fraction > 0:
        t = town.at(p_y, p_x)
        ref = t[inside] if inside.any() else t
        thr = np.quantile(ref, 1.0 - config.urban_fraction) if config.urban_fraction < 1 else -np.inf
        is_urban = t > thr if config.urban_fraction < 1 else np.ones(n_parcels, dtype=bool)
    present = [i for i, c in enumerate(PARCEL_CLASSES) if c in classes]
    if present:
        kinds = np.array([SURFACES.index(PARCEL_CLASSES[i]) for i in present], dtype=np.int8)
        shares = np.array([config.parcel_shares[i] for i in present], dtype=np.float64)
        if shares.sum() <= 0:
            shares = np.ones_like(shares)
        for group in (inside & ~is_urban, ~inside & ~is_urban):
            parcel_class[group] = kinds[_allocate(rng, int(group.sum()), shares)]
    else:  # no parcel class kept: parcels take the first of the other kept classes
        fallback = next(c for c in ("forest", "urban", "water") if c in classes)
        parcel_class[:] = SURFACES.index(fallback)
        if fallback == "urban":
            is_urban[:] = True
    parcel_class[is_urban] = URBAN

    # thresholds of the forest and water fields, from their nodes over the image
    want_forest = "forest" in classes and config.forest_fraction > 0
    want_water = "water" in classes and config.water_fraction > 0
    f_thr = forest.threshold_for_cover((h, w), config.forest_fraction) if want_forest else np.inf
    w_thr = lakes.threshold_for_cover((h, w), config.water_fraction) if want_water else np.inf
    roads = "urban" in classes

    # 6. texture: smooth part drawn coarse, grain per pixel
    t_spacing = coarse_spacing(max(h, w), 1536)
    smooth = LowResField.covering(rng, (h, w), t_spacing, corr_px=6.0)
    grain = rng.standard_normal((h, w), dtype=np.float32)

    # label of every surface type (-1 never happens: absent classes are never generated)
    class_id = {c: i for i, c in enumerate(config.classes)}
    surface_label = np.array([class_id.get(c, -1) for c in SURFACE_CLASS], dtype=np.int16)

    unit = np.empty((h, w), dtype=np.int32)
    labels = np.empty((h, w), dtype=np.int16)
    texture = np.empty((h, w), dtype=np.float32)
    rows_per_cellrow = cell
    n_cellrows = math.ceil(h / cell)
    step = max(1, _BLOCK_PIXELS // (rows_per_cellrow * max(w, 1)))
    half_main, half_street = 0.8, 0.6  # road half-widths in pixels
    pcls = parcel_class.astype(np.int32)
    for c0 in range(0, n_cellrows, step):
        c1 = min(n_cellrows, c0 + step)
        r0, r1 = c0 * cell, min(h, c1 * cell)
        i1, i2, d1, d2 = _two_nearest_block(c0, c1, w, sy, sx, cell)
        i1, i2, d1, d2 = (a[: r1 - r0, :w] for a in (i1, i2, d1, d2))
        surf = pcls[i1]
        if roads:
            gap = np.hypot(p_y[i1] - p_y[i2], p_x[i1] - p_x[i2]).astype(np.float32)
            edge = (d2 - d1) / (2.0 * gap)  # distance to the common edge, pixels
            main = (parcel_block[i1] != parcel_block[i2]) & (edge < half_main)
            street = is_urban[i1] & is_urban[i2] & (edge < half_street)
            road = main | street
        if want_forest:
            surf[(forest.rows(r0, r1, w) > f_thr) & (surf != URBAN)] = FOREST
        if roads:
            surf[road] = ROAD
        if want_water:
            surf[lakes.rows(r0, r1, w) > w_thr] = WATER
        unit[r0:r1] = i1 * N_SURFACES + surf
        labels[r0:r1] = surface_label[surf]
        tex = smooth.rows(r0, r1, w)
        tex *= 0.8
        tex += 0.6 * grain[r0:r1]
        np.clip(tex, -3.0, 3.0, out=texture[r0:r1])
    return LandCover(unit, labels, texture, parcel_class, parcel_block, int(by.size))

