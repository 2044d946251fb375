"""The spread factor of a model on a whole cube (``hvaeseg inpaint --recalibrate``): :mod:`hvaeseg.calibration` fed
with the cube's own clear pixels, hidden under its own clouds.

Items are ``(target, donor, tile)``: a mostly clear date (:func:`~hvaeseg.calibration.calibration_pairs`) with a
partly cloudy date's mask pasted on one tile, drawn by ``seed`` among the pairs and tiles until ``max_tiles`` items
hide at least one clear pixel. Each item is filled as :func:`hvaeseg.inpaint_cube.inpaint_cube` fills a tile
(the same tile side, the same stack of dates by :func:`~hvaeseg.inpaint_cube.window_dates`, the target's pasted
mask in the stack), with ``num_samples`` samples of ``x``; the hidden clear pixels' observations are the truth. The
factor is fitted on the normalised values: a per-band positive affine map changes no needed factor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from hvaeseg import _progress
from hvaeseg.calibration import calibration_pairs, fit_spread_factor, needed_factors
from hvaeseg.data.loader import day_of_year, normalise_dn, normaliser
from hvaeseg.data.stats import dn_scaling
from hvaeseg.data.tiles import tile_starts
from hvaeseg.inpaint import posterior_inpaint
from hvaeseg.inpaint_cube import _band_stats, _checked, window_dates

__all__ = ["SpreadCalibration", "cube_spread_factor"]

#: draws of (pair, tile) per item wanted before giving up on finding more items that hide a clear pixel
_ATTEMPTS_PER_ITEM = 20


@dataclass(frozen=True)
class SpreadCalibration:
    """A fitted spread factor and what it was fitted on.

    :ivar factor: multiply the posterior spread (and the samples' deviations from their mean) by it.
    :ivar level: the interval level it was fitted to cover.
    :ivar values: calibration values (pixels x bands).
    :ivar tiles: (target, donor, tile) items filled.
    :ivar coverage_before: the share of the values inside their unscaled ``level`` intervals.
    """

    factor: float
    level: float
    values: int
    tiles: int
    coverage_before: float

    def __str__(self) -> str:
        return (f"spread factor {self.factor:.3f} (fitted on {self.values} values of {self.tiles} tiles with pasted "
                f"clouds: {self.level:.0%} intervals held {self.coverage_before:.1%} of them before)")


@torch.no_grad()
def cube_spread_factor(
    cube: xr.Dataset | str | os.PathLike,
    *,
    hvae: Any,
    patch_size: int,
    dates: int = 1,
    window: str = "nearest",
    num_samples: int = 32,
    max_tiles: int = 64,
    batch_size: int = 8,
    level: float = 0.9,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
    min_target: float = 0.9,
    donor_range: tuple[float, float] = (0.05, 0.95),
    hide: np.ndarray | None = None,
    progress: bool = True,
) -> SpreadCalibration:
    """Fit the spread factor of ``hvae`` on ``cube`` (see the module doc).

    :param cube: a cube (``xarray.Dataset``) or a store path/URL, integer DN reflectance; only read.
    :param hvae: the HVAE :func:`~hvaeseg.inpaint_cube.inpaint_cube` will fill with, on ``device``.
    :param patch_size, dates, window, batch_size: as :func:`~hvaeseg.inpaint_cube.inpaint_cube`'s.
    :param num_samples: samples of ``x`` per item (>= 2; the ``level`` interval needs ``2 / (1 - level) - 1``).
    :param max_tiles: items to fill (fewer when the cube holds fewer).
    :param stats: the cube's ``(band_mean, band_std)`` (default: read, or computed).
    :param min_target, donor_range: the dates that take a mask and those that give one
        (:func:`~hvaeseg.calibration.calibration_pairs`).
    :param hide: ``(T, H, W)`` bool, pixels that must play no part on a target date: hidden from the model there
        and never a calibration value (a benchmark's scored pixels). Other dates of a stack show them as observed.
    :param progress: show a progress bar over the batches (on a terminal; ``HVAESEG_NO_PROGRESS=1`` silences it).
    :raises ValueError: bad arguments, or a cube without a calibration pair (no date ``min_target`` clear, or no
        date in ``donor_range``).
    """
    if int(num_samples) < 2 or int(max_tiles) < 1:
        raise ValueError(f"expected num_samples >= 2 and max_tiles >= 1, got {num_samples} and {max_tiles}")
    ds = _checked(cube, method="posterior", hvae=hvae, patch_size=patch_size, dates=dates, window=window,
                  num_samples=num_samples, batch_size=batch_size)
    device = torch.device(device)
    P, dates = int(patch_size), int(dates)
    valid = np.asarray(ds["valid"].transpose("time", "y", "x").values, dtype=bool)
    if hide is not None and np.shape(hide) != valid.shape:
        raise ValueError(f"hide: expected a (T, H, W) = {valid.shape} bool mask, got shape {np.shape(hide)}")
    pairs = calibration_pairs(valid, min_target=min_target, donor_range=donor_range)
    if not pairs:
        raise ValueError(f"no calibration pair in the cube: recalibration pastes the mask of a date "
                         f"{donor_range[0]:.0%}-{donor_range[1]:.0%} valid on a date at least {min_target:.0%} clear, "
                         "and the cube has no such two dates")
    hide = np.zeros_like(valid) if hide is None else np.asarray(hide, dtype=bool)
    tiles = [(y, x) for y in tile_starts(ds.sizes["y"], P) for x in tile_starts(ds.sizes["x"], P)]
    items = _draw_items(valid, hide, pairs, tiles, P, int(max_tiles), np.random.default_rng(seed))
    if not items:
        raise ValueError("the calibration masks hide no clear pixel of the cube")
    refl = ds["reflectance"].transpose("time", "band", "y", "x")
    times = ds["time"].values
    doy_all = day_of_year(times) if hvae.spec.needs_doy else None
    stats = stats if stats is not None else _band_stats(ds)
    scale, offset = dn_scaling(refl.attrs, refl.dtype)
    a, b = normaliser(scale, offset, stats[0], stats[1], ds.sizes["band"])
    was_training = bool(getattr(hvae, "training", False))
    hvae.train(False)
    needed = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(seed))
            starts = range(0, len(items), int(batch_size))
            for b0 in _progress.progress(starts, desc="calibrating the spread", total=len(starts),
                                         enabled=None if progress else False):
                needed.append(_batch_needed(items[b0:b0 + int(batch_size)], refl, valid, hide, times, doy_all, a, b,
                                            hvae=hvae, P=P, dates=dates, window=window, num_samples=int(num_samples),
                                            level=level, device=device))
    finally:
        hvae.train(was_training)
    values = torch.cat(needed)
    return SpreadCalibration(fit_spread_factor(values, level), float(level), int(values.numel()), len(items),
                             float((values <= 1).double().mean()))


def _draw_items(valid: np.ndarray, hide: np.ndarray, pairs: list[tuple[int, int]], tiles: list[tuple[int, int]],
                P: int, wanted: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Up to ``wanted`` distinct ``(target, donor, y, x)`` whose pasted mask hides a clear pixel of the tile (one
    not in ``hide``)."""
    items: list[tuple[int, int, int, int]] = []
    seen: set[int] = set()
    total = len(pairs) * len(tiles)
    for _ in range(wanted * _ATTEMPTS_PER_ITEM):
        if len(items) == wanted or len(seen) == total:
            break
        k = int(rng.integers(total))
        if k in seen:
            continue
        seen.add(k)
        (t, d), (y, x) = pairs[k // len(tiles)], tiles[k % len(tiles)]
        tile = (slice(y, y + P), slice(x, x + P))
        if (valid[t][tile] & ~hide[t][tile] & ~valid[d][tile]).any():
            items.append((t, d, y, x))
    return items


def _batch_needed(batch: list[tuple[int, int, int, int]], refl: xr.DataArray, valid: np.ndarray, hide: np.ndarray,
                  times: np.ndarray, doy_all: np.ndarray | None, a: torch.Tensor, b: torch.Tensor, *, hvae: Any,
                  P: int, dates: int, window: str, num_samples: int, level: float,
                  device: torch.device) -> torch.Tensor:
    """The needed factors of one batch of items (see the module doc)."""
    xs, vs, truths, hidden, doys, pos = [], [], [], [], [], []
    for t, d, y, x in batch:
        v = valid[:, y:y + P, x:x + P].copy()
        v[t] &= ~hide[t, y:y + P, x:x + P]
        scored = v[t] & ~v[d]
        v[t] &= v[d]
        stack = [t] if dates == 1 else window_dates(t, v.mean(axis=(1, 2)), times, dates, window)
        dn = torch.from_numpy(np.asarray(refl.isel(time=stack, y=slice(y, y + P), x=slice(x, x + P)).values))
        xn = normalise_dn(dn, a, b)  # (T', C, P, P)
        vt = torch.from_numpy(v[stack])
        pos.append(stack.index(t))
        truths.append(xn[pos[-1]])
        xs.append(xn * vt.unsqueeze(1))  # the model never sees a hidden value
        vs.append(vt)
        hidden.append(torch.from_numpy(scored))
        if doy_all is not None:
            doys.append(torch.from_numpy(doy_all[stack]))
    xb, vb = torch.stack(xs).to(device), torch.stack(vs).to(device)
    doy = torch.stack(doys).to(device) if doys else None
    if dates == 1:
        xb, vb, doy, date = xb[:, 0], vb[:, 0], None if doy is None else doy[:, 0], None
    else:
        date = torch.tensor(pos, device=device)
    _, _, draws = posterior_inpaint(hvae, xb, vb, num_samples, doy=doy, date=date)
    return needed_factors(draws.cpu(), torch.stack(truths), torch.stack(hidden), level)
