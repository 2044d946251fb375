"""bench/compare.py's row helpers (the script itself trains and is run by the studies' own tests)."""

from __future__ import annotations

import numpy as np

from hvaeseg.data.sampler import PatchPlan


def _plan(corners, dates, shape=(20, 20), size=4) -> PatchPlan:
    n = len(corners)
    return PatchPlan(sizes={"y": size, "x": size}, cube_shape={"time": 3, "y": shape[0], "x": shape[1]},
                     y=[c[0] for c in corners], x=[c[1] for c in corners], t=[[d] for d in dates],
                     split=np.zeros(n), labelled=np.ones(n, dtype=bool), group=np.arange(n))


def test_labelled_pixels_counts_each_covered_pixel_once(compare):
    # two dates of one location count once; two tiles overlapping by 4 x 2 pixels (a mosaic image's last tile)
    plan = _plan([(0, 0), (0, 0), (8, 8), (8, 10)], dates=[0, 1, 0, 0])
    brute = np.zeros((20, 20), dtype=bool)
    for y, x in [(0, 0), (8, 8), (8, 10)]:
        brute[y:y + 4, x:x + 4] = True
    assert compare.labelled_pixels(plan) == int(brute.sum()) == 16 + 16 + 8
    assert compare.labelled_pixels(plan.select(labelled=False)) == 0
