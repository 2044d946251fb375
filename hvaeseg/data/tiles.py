"""The tiling rule shared by the sampler's grid and cover modes (so prediction), inpainting and image mosaics: tiles
of a fixed size with stride = size from the start of an extent, the last one shifted back to end at its border
(overlapping its neighbour, never padded). Plain Python, no torch."""

from __future__ import annotations

__all__ = ["tile_starts"]


def tile_starts(extent: int, size: int) -> list[int]:
    """Tile starts that cover ``extent`` with tiles of ``size``; the last one shifted back to end at the border."""
    if size > extent:
        raise ValueError(f"patch size {size} is larger than the cube ({extent} pixels): use a smaller patch size")
    starts = list(range(0, extent - size + 1, size))
    if starts[-1] + size < extent:
        starts.append(extent - size)
    return starts
