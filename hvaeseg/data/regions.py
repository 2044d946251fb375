"""The region rule of parallel prediction and inpainting: which pixels each process writes, and which tiles it
needs for them. Plain Python and numpy, no torch.

**Regions.** The output store's ``y``/``x`` chunk grid cut into disjoint rectangles: region ``i`` is the
``i``-th output chunk in row-major order (``y`` chunks outer, ``x`` chunks inner), all of its bands, classes and
dates. Every region is chunk-aligned (a region write never touches another region's chunks), the regions are
disjoint and they cover the cube. The list depends only on the cube's size and the output chunking, never on
how many processes share the work: part ``p`` of ``n`` takes the regions ``i`` with ``i % n == p``
(:func:`part_regions`).

**Halo.** A pixel's value is made from the tiles that cover it (:func:`hvaeseg.data.tiles.tile_starts`, overlaps
averaged), so a region is computed from every tile that intersects it (:func:`tiles_touching`), in the order the
whole cube visits them, into a buffer over those tiles' bounding box, which is then cut to the region. Each
pixel thus sums the same contributions in the same order as a whole-cube prediction; and each tile is predicted
in the same batch as there (:func:`hvaeseg.predict.predict_region` reads the whole batches that hold its tiles: a
network's output can differ in the last bit with the other patches of its batch). The values are the same bit
for bit.

**Parts.** ``--part i/n`` (:func:`parse_part`), or ``RANK``/``WORLD_SIZE`` from the environment (torchrun,
:func:`part_from_env`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Region", "region_grid", "tiles_touching", "part_regions", "parse_part", "part_from_env"]


@dataclass(frozen=True)
class Region:
    """One region: output pixels ``y0 <= y < y1``, ``x0 <= x < x1`` (all dates, bands and classes)."""

    index: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def slices(self) -> dict[str, slice]:
        """``{"y": slice(y0, y1), "x": slice(x0, x1)}``."""
        return {"y": slice(self.y0, self.y1), "x": slice(self.x0, self.x1)}

    def __str__(self) -> str:
        return f"region {self.index} (y {self.y0}:{self.y1}, x {self.x0}:{self.x1})"


def region_grid(sizes: Mapping[str, int], chunks: Mapping[str, int]) -> list[Region]:
    """The regions of a ``sizes["y"] x sizes["x"]`` output chunked ``chunks["y"] x chunks["x"]`` (``-1``: one
    chunk along that dimension): one per chunk, row-major.

    :raises ValueError: a non-positive size or chunk.
    """
    edges = {}
    for dim in ("y", "x"):
        size, chunk = int(sizes[dim]), int(chunks.get(dim, -1))
        if size < 1:
            raise ValueError(f"expected a positive {dim} size, got {size}")
        if chunk == -1:
            chunk = size
        if chunk < 1:
            raise ValueError(f"expected a positive {dim} chunk (or -1 for the whole dimension), got {chunk}")
        edges[dim] = [(s, min(s + chunk, size)) for s in range(0, size, chunk)]
    return [Region(i * len(edges["x"]) + j, y0, y1, x0, x1)
            for i, (y0, y1) in enumerate(edges["y"]) for j, (x0, x1) in enumerate(edges["x"])]


def tiles_touching(region: Region, corners: Sequence[tuple[int, int]], size: int) -> list[int]:
    """Indices (in ``corners``' order) of the ``size x size`` tiles at ``corners`` (``(y, x)`` of their top-left
    pixel) that hold at least one pixel of ``region``."""
    return [k for k, (y, x) in enumerate(corners)
            if y < region.y1 and y + size > region.y0 and x < region.x1 and x + size > region.x0]


def part_regions(n_regions: int, part: int, parts: int) -> list[int]:
    """The regions part ``part`` of ``parts`` computes: ``i % parts == part``."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} of {parts}: expected 0 <= part < parts")
    return list(range(part, int(n_regions), parts))


def parse_part(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``.

    :raises ValueError: not of that form, e.g. ``3/2`` or ``1``.
    """
    try:
        i, n = (int(s) for s in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--part: expected I/N with 0 <= I < N (e.g. 0/4 for the first of 4 parts), got {text!r}") \
            from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--part: expected I/N with 0 <= I < N (parts are numbered from 0), got {text!r}")
    return i, n


def part_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` where the environment sets ``WORLD_SIZE`` (torchrun and most launchers), else None.

    :raises ValueError: ``WORLD_SIZE`` without a ``RANK`` in ``0..WORLD_SIZE - 1``.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", ""))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r} and RANK={env.get('RANK')!r}: expected integers "
                         "(as torchrun sets them), or unset both and pass --part I/N") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} of WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return rank, world
