"""The sampler's date rules, one function each: which dates *qualify* for a patch (:func:`qualifying`), which are
a patch's *clearest* (:func:`clearest_dates`), and the seeded draw among the qualifying dates
(:func:`choose_dates`). Rules in :mod:`hvaeseg.data.sampler` (*Dates and invalid patches*)."""

from __future__ import annotations

import numpy as np

__all__ = ["choose_dates", "clearest_dates", "qualifying"]


def qualifying(frac: np.ndarray, min_valid: float) -> np.ndarray:
    """Whether each date qualifies, from its valid fraction ``frac`` (any shape): ``>= min_valid`` and ``> 0``,
    so that a qualifying date always has a valid pixel (also with ``min_valid = 0``)."""
    return (frac >= min_valid) & (frac > 0)


def clearest_dates(frac: np.ndarray, n_dates: int) -> np.ndarray:
    """``(n, n_dates)`` the dates of highest valid fraction per row of ``frac`` (n, T), earliest first on ties, in
    order of decreasing fraction (not sorted by date)."""
    return np.argsort(-frac, axis=1, kind="stable")[:, :n_dates]


def choose_dates(
    frac: np.ndarray, n_dates: int, min_valid: float, rng: np.random.Generator, fallback: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n_dates`` dates per row of ``frac`` (n, T): uniformly among the qualifying dates.

    Returns ``(dates (n, n_dates) sorted, ok (n,) bool)``; rows with too few qualifying dates get
    ``ok = False`` and, when ``fallback``, their clearest dates (:func:`clearest_dates`).
    """
    n, T = frac.shape
    if n_dates > T:
        raise ValueError(f"asked for stacks of {n_dates} dates from a cube with {T} dates")
    qualifies = qualifying(frac, min_valid)
    ok = qualifies.sum(axis=1) >= n_dates
    keys = rng.random((n, T))
    keys[~qualifies] = np.inf
    chosen = np.argsort(keys, axis=1, kind="stable")[:, :n_dates]
    if fallback and not ok.all():
        best = clearest_dates(frac, n_dates)
        chosen[~ok] = best[~ok]
    return np.sort(chosen, axis=1), ok
