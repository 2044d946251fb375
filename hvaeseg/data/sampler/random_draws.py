"""Random mode: patches drawn uniformly over the positions of a split's blocks, whose dates all qualify; with a
``window``, ``per_window`` patches at a time inside one super-tile (chunk-friendly sampling). Rules in
:mod:`hvaeseg.data.sampler` (*Dates and invalid patches*, *Chunk-friendly random sampling*)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hvaeseg.data.sampler._common import Box
from hvaeseg.data.sampler.cube_view import CubeView, valid_fractions
from hvaeseg.data.sampler.dates import choose_dates, qualifying

__all__ = ["random_patches", "regions"]

#: windowed random mode: candidate positions drawn per wanted patch of a super-tile
WINDOW_CANDIDATES = 4


def regions(blocks: Sequence[Box], sizes: Mapping[str, int],
            window: Mapping[str, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate regions ``(r, 4)`` as ``(y0, y1, x0, x1)`` and their draw weights: the blocks that hold a patch,
    weighted by their number of positions; with ``window``, the super-tiles (from the cube origin) that lie inside
    one block, equally weighted."""
    H, W = sizes["y"], sizes["x"]
    if window is None:
        reg = np.array([b for b in blocks if b[1] - b[0] >= H and b[3] - b[2] >= W], dtype=np.int64).reshape(-1, 4)
        weights = (reg[:, 1] - reg[:, 0] - H + 1) * (reg[:, 3] - reg[:, 2] - W + 1)
        return reg, weights.astype(np.float64)
    wy, wx = window["y"], window["x"]
    found = []
    for y0, y1, x0, x1 in blocks:
        ty = np.arange(-(-y0 // wy) * wy, y1 - wy + 1, wy)
        tx = np.arange(-(-x0 // wx) * wx, x1 - wx + 1, wx)
        for a in ty:
            for b in tx:
                found.append((a, a + wy, b, b + wx))
    reg = np.array(found, dtype=np.int64).reshape(-1, 4)
    return reg, np.ones(len(reg))


def random_patches(view: CubeView, blocks: Sequence[Box], n: int, rng: np.random.Generator, split: str, *,
                   sizes: Mapping[str, int], n_dates: int, min_valid: float, window: Mapping[str, int] | None,
                   per_window: int, max_rounds: int) -> dict[str, np.ndarray]:
    """``n`` random patches of the split ``split`` (named in errors) over its ``blocks``; the group of a patch is its
    super-tile draw (every patch its own group without ``window``).

    :raises ValueError: no patch (super-tile) fits in a block, or ``max_rounds`` rounds of draws found fewer than
        ``n`` patches whose dates qualify.
    """
    H, W, T = sizes["y"], sizes["x"], n_dates
    empty = {"y": np.zeros(0, np.int64), "x": np.zeros(0, np.int64), "t": np.zeros((0, T), np.int64),
             "group": np.zeros(0, np.int64)}
    if n <= 0:
        return empty
    reg, weights = regions(blocks, sizes, window)
    if len(reg) == 0:
        what = f"super-tile {window}" if window is not None else f"{H}x{W} patch"
        raise ValueError(f"no {what} fits inside a single {split} block; use larger blocks or smaller patches")
    p = weights / weights.sum()
    k = per_window
    got: list[dict[str, np.ndarray]] = []
    have, group = 0, 0
    for _ in range(max_rounds):
        need = n - have
        m = max(8, 2 * (-(-need // k)))  # oversample: some draws are rejected
        r = reg[rng.choice(len(reg), size=m, p=p)]
        if window is None:
            wy0 = r[:, 0] + (rng.random(m) * (r[:, 1] - r[:, 0] - H + 1)).astype(np.int64)
            wx0 = r[:, 2] + (rng.random(m) * (r[:, 3] - r[:, 2] - W + 1)).astype(np.int64)
            (fw,) = valid_fractions(view, [(wy0, wx0, H, W)])
            t, ok = choose_dates(fw, T, min_valid, rng, fallback=False)
            y, x, tt, g = wy0[ok], wx0[ok], t[ok], np.arange(ok.sum()) + group
        else:
            wy, wx = window["y"], window["x"]
            kc = k * WINDOW_CANDIDATES  # candidate positions per super-tile; the first k that qualify stay
            py = r[:, :1] + (rng.random((m, kc)) * (wy - H + 1)).astype(np.int64)
            px = r[:, 2:3] + (rng.random((m, kc)) * (wx - W + 1)).astype(np.int64)
            fw, fp = valid_fractions(view, [(r[:, 0], r[:, 2], wy, wx), (py.ravel(), px.ravel(), H, W)])
            t, ok = choose_dates(fw, T, min_valid, rng, fallback=False)
            fp = fp.reshape(m, kc, -1)
            fsel = np.take_along_axis(fp, t[:, None, :].repeat(kc, axis=1), axis=2)  # (m, kc, T)
            pok = ok[:, None] & qualifying(fsel, min_valid).all(axis=2)
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
            f"random sampling found only {have} of {n} {split} patches in {max_rounds} rounds: too few "
            f"dates have a valid fraction >= min_valid={min_valid} (and > 0); lower min_valid or the "
            "number of dates per stack"
        )
    cat = {key: np.concatenate([d[key] for d in got])[:n] for key in got[0]}
    cat["t"] = cat["t"].reshape(-1, T)
    return cat
