"""What the sampler's modules share: the split names, the spatial dimensions, the size check, the seed streams."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: the split names, in the order of their integer codes in a :class:`~hvaeseg.data.sampler.PatchPlan`
SPLITS: tuple[str, ...] = ("train", "val", "test")

SPATIAL: tuple[str, str] = ("y", "x")

#: a pixel box ``(y0, y1, x0, x1)``, half-open: a split block, an image of a mosaic, a super-tile
Box = tuple[int, int, int, int]

# independent random streams derived from one seed (numpy SeedSequence entropy lists)
STREAM_SPLIT, STREAM_RANDOM, STREAM_GRID, STREAM_LABELLED, STREAM_LABELLED_DATES = range(5)


def check_sizes(sizes: Mapping[str, int], what: str, allowed: Sequence[str] = SPATIAL) -> dict[str, int]:
    """``sizes`` as a plain dict of positive ints over ``allowed`` (``y`` and ``x`` required); clear errors else."""
    if not isinstance(sizes, Mapping):
        raise TypeError(
            f"{what}: expected a mapping of dimension name to size, e.g. {{'y': 64, 'x': 64}}, got {sizes!r}"
        )
    unknown = [k for k in sizes if k not in allowed]
    if unknown:
        raise ValueError(f"{what}: expected dimensions among {list(allowed)}, got unknown {unknown}")
    missing = [k for k in SPATIAL if k not in sizes]
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
