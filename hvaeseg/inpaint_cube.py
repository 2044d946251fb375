"""Gap filling of whole cubes: every invalid pixel of every date, by the HVAE's posterior or by interpolation.

:func:`inpaint_cube` returns the cube with its ``reflectance`` filled where ``valid`` is False, in the input's
own encoding, and :func:`write_filled` writes it atomically (``hvaeseg inpaint RUN --data CUBE --out OUT``).

**Tiles.** The cube is covered like :func:`hvaeseg.predict.predict_cube` covers it: tiles of ``patch_size``,
the last row/column of tiles shifted back to end at the border (never padded); where tiles overlap, the filled
values are averaged, and the spread too, in variance space (``std = sqrt(mean of the variances)``). Every date
is filled. A (tile, date) without any invalid pixel is not read at all: its observed pixels are copied from the
input anyway.

**Single-date models** (``dates == 1``): each (tile, date) is filled by
:func:`hvaeseg.inpaint.posterior_inpaint` with ``num_samples`` posterior samples (``doy``, the day of the year
of the date, is passed when the hierarchy is conditioned on it). The value is the mean of the samples, the
``std`` their spread.

**Temporal models** (``dates == T > 1``): for each target date ``t`` and tile, the stack is ``t`` plus ``T - 1``
other dates chosen by :func:`window_dates` under one of two rules (``window``):

- ``"nearest"`` (default): the ``T - 1`` dates nearest in time to ``t`` among those at least half clear *in
  that tile* (ties: the clearer, then the earlier); too few such dates: the clearest of the others. The stack
  sees the same pixels close to the date being filled, as interpolation does;
- ``"season"``: the cube's time range is split into ``T - 1`` contiguous groups of equal time span, and from
  each group the date clearest in that tile is taken (ties: the one closest in time to ``t``, then the earlier
  one); a group without any date gives its place to the clearest remaining date. The stack spans the seasons.

The stack is filled by ``posterior_inpaint(..., date=t's place in the stack)``: the latents' posterior is the
whole stack's, and the decoder runs on date ``t`` alone.

**Interpolation** (``method="interpolation"``, no model): :func:`hvaeseg.inpaint.temporal_linear_interpolation`
over the whole time axis of each tile, with the real day gaps (``time`` in days), on the DN values.

**Encoding.** The posterior works on the loader's normalised values
(:class:`~hvaeseg.data.loader.PatchLoader`: ``x = DN * a + b`` per band, ``a = scale_factor / band_std``,
``b = (add_offset - band_mean) / band_std``, :func:`hvaeseg.data.loader.normaliser`, with the cube's stored
band statistics, computed in memory if it has none: the input is never written to). Filled values go back by
the exact inverse ``DN = (x - b) / a``, rounded, and clipped to the DN range that the dtype holds and that
decodes inside the schema's physical range (:attr:`~hvaeseg.data.schema.CubeSchema.reflectance_range`), never
below 1: a filled pixel is never DN 0 (no data). Observed pixels are copied bit for bit. ``std`` is in
reflectance units (normalised spread times ``band_std``), times ``spread_factor`` (1 unless the spread was
recalibrated: :mod:`hvaeseg.calibrate_cube`, ``hvaeseg inpaint --recalibrate``).

**Output.** The input Dataset (coordinates, attributes, ``valid``, ``labels`` and every other variable as they
are) with ``reflectance`` filled (same dtype and attributes), ``std`` ``(time, band, y, x)`` float32 (0 where
observed; all 0 for interpolation), ``filled`` ``(time, y, x)`` bool (``~valid``: True where a pixel was
filled), and provenance attributes ``inpaint_method``, ``inpaint_run``, ``inpaint_samples``, ``inpaint_dates``,
``inpaint_window`` (the stack rule of a temporal model, else empty), ``inpaint_seed``, ``inpaint_patch_size``,
``inpaint_batch_size``, ``inpaint_spread_factor``, ``inpaint_created``. It is a valid cube
(:func:`~hvaeseg.data.schema.validate_cube` allows variables beyond the schema's).

**Seeds.** The sampling is seeded by ``seed`` (in a forked torch RNG: the caller's random state is left as it
was): the same cube, model, seed, batch size and device give the same output.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from hvaeseg import _progress
from hvaeseg.data.loader import PatchLoader, normalise_dn, normaliser
from hvaeseg.data.regions import Region
from hvaeseg.data.sampler import PatchPlan
from hvaeseg.data.schema import CubeSchema
from hvaeseg.data.stats import compute_band_stats, dn_scaling, read_band_stats
from hvaeseg.data.tiles import tile_starts
from hvaeseg.hierarchy.spec import TransferSpec
from hvaeseg.inpaint import posterior_inpaint, temporal_linear_interpolation

__all__ = ["METHODS", "WINDOWS", "inpaint_cube", "write_filled", "window_dates", "dn_range", "inpaint_template",
           "inpaint_region", "region_seed", "posterior_tile"]

#: the ways to fill a cube
METHODS: tuple[str, ...] = ("posterior", "interpolation")

#: the rules choosing the other dates of a temporal model's stack (:func:`window_dates`)
WINDOWS: tuple[str, ...] = ("nearest", "season")

#: ``window="nearest"``: a date is a candidate when at least this share of the tile is clear
NEAREST_MIN_CLEAR = 0.5


# --------------------------------------------------------------------------------------------------
# which dates a temporal model sees
# --------------------------------------------------------------------------------------------------


def _days(times: np.ndarray) -> np.ndarray:
    """Times as float64 days from the first one (numbers are taken as days already)."""
    t = np.asarray(times)
    if np.issubdtype(t.dtype, np.datetime64):
        t = t.astype("datetime64[ns]")
        return (t - t[0]) / np.timedelta64(1, "D") if t.size else np.zeros(0)
    return t.astype(np.float64)


def posterior_tile(patch_size: int, transfer: TransferSpec | None, height: int, width: int) -> int:
    """The tile side posterior filling uses unless told otherwise: the run's ``patch_size``, and for a hierarchy
    whose ``interp`` covariate borrows space (``transfer``, its ``image.transfer``, or None) at least
    ``4 * transfer.radius``, within the cube's ``height`` and ``width``. A tile's edge cuts the borrowing window of
    the pixels near it; at 32 px a radius of 16 reaches an edge from every pixel, at 64 px the middle half of the
    tile sees whole windows (``bench/results/inpaint/transfer/``: +0.77 dB on the real site, 3 seeds). The model
    is convolutional, so a tile larger than its training patch is filled by the same networks."""
    if transfer is None:
        return int(patch_size)
    return max(int(patch_size), min(4 * transfer.radius, int(height), int(width)))


def window_dates(target: int, clear: np.ndarray, times: np.ndarray, T: int, rule: str = "nearest") -> list[int]:
    """The ``T`` dates of the stack a temporal model fills date ``target`` with: sorted, ``target`` among them.

    ``rule="nearest"``: the other dates are the ``T - 1`` nearest in time to ``target`` among those with
    ``clear >= NEAREST_MIN_CLEAR`` (ties: the clearer, then the earlier); when fewer dates qualify, the
    clearest of the rest complete the stack (ties: the nearer, then the earlier).

    ``rule="season"`` (season-spanning): the other dates are split into ``T - 1`` contiguous groups of equal time span
    over the cube's time range (``[times.min(), times.max()]`` cut into ``T - 1`` equal intervals; a date on
    an inner boundary belongs to the later group, the last date to the last group). From each non-empty group
    the clearest date is taken (largest ``clear``; ties: the one closest in time to ``target``, then the
    earlier one). Each empty group gives its place to the clearest date not yet taken (same ties). So when
    every group holds a date, the stack has exactly one date per group.

    :param target: index of the date to fill.
    :param clear: ``(n_dates,)`` clear share of each date (e.g. of one tile).
    :param times: ``(n_dates,)`` increasing ``datetime64`` times (or numbers, read as days).
    :param T: dates per stack.
    :param rule: ``"nearest"`` or ``"season"`` (:data:`WINDOWS`).
    :raises ValueError: ``T`` larger than the number of dates, an unknown rule, or arguments of the wrong shape.
    """
    if rule not in WINDOWS:
        raise ValueError(f"window rule: expected one of {', '.join(WINDOWS)}, got {rule!r}")
    clear = np.asarray(clear, dtype=np.float64)
    n = clear.shape[0] if clear.ndim == 1 else -1
    if clear.ndim != 1 or np.shape(times) != (n,):
        raise ValueError(f"expected clear and times of shape (n_dates,), got {clear.shape} and {np.shape(times)}")
    target, T = int(target), int(T)
    if not 0 <= target < n:
        raise ValueError(f"target date {target} is outside the cube's dates 0..{n - 1}")
    if T < 1:
        raise ValueError(f"expected T >= 1 dates per stack, got {T}")
    if T > n:
        raise ValueError(f"the model fills stacks of {T} dates and the cube has only {n}: use a cube with >= {T} dates")
    if T == 1:
        return [target]
    t = _days(times)
    clear = np.where(np.isnan(clear), -np.inf, clear)
    others = [i for i in range(n) if i != target]
    gap = {i: abs(float(t[i] - t[target])) for i in others}
    if rule == "nearest":
        near = sorted((i for i in others if clear[i] >= NEAREST_MIN_CLEAR), key=lambda i: (gap[i], -clear[i], i))
        rest = sorted((i for i in others if clear[i] < NEAREST_MIN_CLEAR), key=lambda i: (-clear[i], gap[i], i))
        return sorted([target, *(near + rest)[: T - 1]])
    groups = T - 1
    span = float(t.max() - t.min())
    if span > 0:
        group = np.clip(np.floor((t - t.min()) / span * groups).astype(np.int64), 0, groups - 1)
    else:
        group = np.zeros(n, dtype=np.int64)

    def key(i: int) -> tuple[float, float, int]:
        return (-clear[i], gap[i], i)

    chosen = []
    for g in range(groups):
        members = [i for i in others if group[i] == g]
        if members:
            chosen.append(min(members, key=key))
    rest = sorted((i for i in others if i not in chosen), key=key)
    chosen += rest[: groups - len(chosen)]
    return sorted([target, *chosen])


# --------------------------------------------------------------------------------------------------
# the encoding
# --------------------------------------------------------------------------------------------------


def dn_range(dtype: np.dtype, scale: float, offset: float) -> tuple[int, int]:
    """``(lo, hi)`` DN a filled pixel may take: inside the dtype, decoding inside the schema's physical range
    (:attr:`CubeSchema.reflectance_range`), and never 0 (no data)."""
    info = np.iinfo(np.dtype(dtype))
    lo, hi = max(1, int(info.min)), int(info.max)
    rmin, rmax = CubeSchema.reflectance_range
    if scale > 0:
        lo_r = int(np.ceil((rmin - 1e-7 - offset) / scale))
        hi_r = int(np.floor((rmax + 1e-7 - offset) / scale))
        if max(lo, lo_r) <= min(hi, hi_r):
            lo, hi = max(lo, lo_r), min(hi, hi_r)
    return lo, hi


class _Accumulator:
    """Overlap averages of the filled values (and variances) of each date, turned into DN when complete."""

    def __init__(self, ds: xr.Dataset, valid: np.ndarray, expected: np.ndarray, a: np.ndarray, b: np.ndarray,
                 band_std: np.ndarray | None, with_std: bool, box: tuple[int, int, int, int] | None = None) -> None:
        refl = ds["reflectance"].transpose("time", "band", "y", "x")
        if box is not None:  # pixels y0 <= y < y1, x0 <= x < x1 only (valid: of the box; add() takes box offsets)
            refl = refl.isel(y=slice(box[0], box[1]), x=slice(box[2], box[3]))
        self.refl = refl
        T, C, Y, X = refl.shape
        self.valid = valid
        self.expected = expected.astype(np.int64).copy()
        self.a, self.b = a.reshape(C, 1, 1), b.reshape(C, 1, 1)
        self.band_std = None if band_std is None else band_std.reshape(C, 1, 1)
        self.with_std = with_std
        scale, offset = dn_scaling(refl.attrs, refl.dtype)
        self.lo, self.hi = dn_range(refl.dtype, scale, offset)
        self.out = np.empty((T, C, Y, X), dtype=refl.dtype)
        self.std = np.zeros((T, C, Y, X), dtype=np.float32)
        self.nonfinite = 0
        self._sum: dict[int, np.ndarray] = {}
        self._var: dict[int, np.ndarray] = {}
        self._count: dict[int, np.ndarray] = {}
        self.shape = (C, Y, X)
        for t in np.flatnonzero(self.expected == 0):
            self._finish(int(t))

    def add(self, t: int, y: int, x: int, mean: np.ndarray, var: np.ndarray | None) -> None:
        """One tile's filled values of date ``t`` (``mean``, ``var``: ``(C, P, P)``) at ``(y, x)``."""
        if t not in self._sum:
            C, Y, X = self.shape
            self._sum[t] = np.zeros((C, Y, X), dtype=np.float64)
            self._count[t] = np.zeros((Y, X), dtype=np.float64)
            if self.with_std:
                self._var[t] = np.zeros((C, Y, X), dtype=np.float64)
        P, Q = mean.shape[-2:]
        sl = (slice(y, y + P), slice(x, x + Q))
        self._sum[t][(slice(None), *sl)] += mean
        self._count[t][sl] += 1
        if self.with_std and var is not None:
            self._var[t][(slice(None), *sl)] += var
        self.expected[t] -= 1
        if self.expected[t] == 0:
            self._finish(t)

    def _finish(self, t: int) -> None:
        dn_in = np.asarray(self.refl[t].values)
        holes = ~self.valid[t]
        total = self._sum.pop(t, None)
        count = self._count.pop(t, None)
        var = self._var.pop(t, None)
        if not holes.any():
            self.out[t] = dn_in
            return
        if count is None or (count[holes] == 0).any():  # pragma: no cover - every hole lies in a processed tile
            raise RuntimeError(f"date {t}: some invalid pixels were covered by no tile")
        n = np.maximum(count, 1)
        mean = total / n
        bad = ~np.isfinite(mean)
        if bad.any():  # a diverged model: fall back to the band mean (normalised 0) there
            self.nonfinite += int((bad & holes).sum())
            mean = np.where(bad, 0.0, mean)
        dn = np.clip(np.rint((mean - self.b) / self.a), self.lo, self.hi).astype(self.out.dtype)
        self.out[t] = np.where(holes, dn, dn_in)
        if var is not None:
            std = np.sqrt(np.maximum(var / n, 0.0)) * self.band_std
            self.std[t] = np.where(holes & np.isfinite(std), std, 0.0).astype(np.float32)

    def done(self) -> bool:
        return not self._sum and bool((self.expected == 0).all())


# --------------------------------------------------------------------------------------------------
# the cube
# --------------------------------------------------------------------------------------------------


def _open(cube: xr.Dataset | str | os.PathLike) -> xr.Dataset:
    if isinstance(cube, xr.Dataset):
        return cube
    from hvaeseg.data.store import open_cube

    return open_cube(cube, validate=False)


def _plan(rows_y: list[int], rows_x: list[int], rows_t: list[list[int]], sizes: dict[str, int],
          shape: dict[str, int]) -> PatchPlan:
    n = len(rows_y)
    return PatchPlan(
        sizes=sizes, cube_shape=shape, y=np.asarray(rows_y, dtype=np.int64), x=np.asarray(rows_x, dtype=np.int64),
        t=np.asarray(rows_t, dtype=np.int64).reshape(n, sizes.get("time", 1)), split=np.zeros(n),
        labelled=np.zeros(n, dtype=bool), group=np.arange(n),
    )


def _seeded(seed: int, device: torch.device):
    """A forked torch random state seeded by ``seed`` (the caller's state is restored on leaving)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _fill(cube: xr.Dataset | str | os.PathLike, ds: xr.Dataset, valid: np.ndarray, ys: list[int], xs: list[int],
          box: tuple[int, int, int, int], *, method: str, hvae: Any, patch_size: int, dates: int, window: str,
          num_samples: int, batch_size: int, device: torch.device, seed: int,
          stats: tuple[list[float], list[float]] | None, progress: bool, spread_factor: float = 1.0) -> _Accumulator:
    """Fill the pixels of ``box = (y0, y1, x0, x1)`` from the tiles at ``ys x xs`` (all inside the box), in the
    whole cube's order: the accumulator holds the box's filled DN (``acc.out``) and spread (``acc.std``).

    :param valid: ``(T, y1 - y0, x1 - x0)`` bool, the box's ``valid``.
    :param stats: the whole cube's ``(band_mean, band_std)`` (``posterior``).
    :param spread_factor: the posterior spread is multiplied by it (:mod:`hvaeseg.calibration`).
    """
    refl = ds["reflectance"]
    T, C = ds.sizes["time"], ds.sizes["band"]
    times = ds["time"].values
    y0, _, x0, _ = box
    P = patch_size
    # the plan: date-major (a date is finished, and its accumulators freed, as soon as its tiles are done)
    rows_y, rows_x, rows_t, target, pos = [], [], [], [], []
    expected = np.zeros(T, dtype=np.int64)
    if method == "interpolation":
        for y in ys:
            for x in xs:
                if (~valid[:, y - y0:y - y0 + P, x - x0:x - x0 + P]).any():
                    rows_y.append(y)
                    rows_x.append(x)
                    rows_t.append(list(range(T)))
        expected[:] = len(rows_y)
        sizes = {"y": P, "x": P, "time": T}
    else:
        for t in range(T):
            for y in ys:
                for x in xs:
                    tile = valid[:, y - y0:y - y0 + P, x - x0:x - x0 + P]
                    if tile[t].all():
                        continue
                    stack = [t] if dates == 1 else window_dates(t, tile.mean(axis=(1, 2)), times, dates, window)
                    rows_y.append(y)
                    rows_x.append(x)
                    rows_t.append(stack)
                    target.append(t)
                    pos.append(stack.index(t))
                    expected[t] += 1
        sizes = {"y": P, "x": P, **({"time": dates} if dates > 1 else {})}
    plan = _plan(rows_y, rows_x, rows_t, sizes, {"time": T, "y": ds.sizes["y"], "x": ds.sizes["x"]})

    scale, offset = dn_scaling(refl.attrs, refl.dtype)
    a_t: torch.Tensor | None = None  # the posterior's normaliser, as tensors
    b_t: torch.Tensor | None = None
    if method == "posterior":
        if stats is None:  # pragma: no cover - the callers pass them
            raise ValueError("posterior filling needs the cube's band statistics")
        a_t, b_t = normaliser(scale, offset, stats[0], stats[1], C)
        a, b = a_t.double().numpy(), b_t.double().numpy()
        band_std = np.asarray(stats[1], dtype=np.float64)
    else:  # interpolation works on the DN themselves
        a, b, band_std = np.ones(C), np.zeros(C), None
    acc = _Accumulator(ds, valid, expected, a, b, band_std, with_std=method == "posterior", box=box)

    loader = PatchLoader(cube if not isinstance(cube, xr.Dataset) else ds, plan, batch_size=batch_size,
                         device=device, workers=1, prefetch=2, normalise=False) if len(plan) else None
    was_training = bool(getattr(hvae, "training", False))
    if hvae is not None:
        hvae.train(False)
    use_doy = method == "posterior" and bool(hvae.spec.needs_doy)
    day_gaps = torch.from_numpy(_days(times))
    row = 0
    try:
        with _seeded(seed, device):
            torch.manual_seed(int(seed))
            batches = loader.batches(0) if loader is not None else iter(())
            total = len(loader) if loader is not None else 0
            desc = f"inpainting {len(plan)} tile{'s' if dates == 1 or method == 'interpolation' else ' stacks'}"
            for batch in _progress.progress(batches, desc=desc, total=total, enabled=None if progress else False):
                n = batch.valid.shape[0]
                if method == "interpolation":
                    dn = batch.x.to(torch.float64)
                    filled = temporal_linear_interpolation(dn, batch.valid, day_gaps.to(dn.device)).cpu().numpy()
                    for i in range(n):
                        for t in range(T):
                            acc.add(t, int(plan.y[row]) - y0, int(plan.x[row]) - x0, filled[i, t], None)
                        row += 1
                    continue
                assert a_t is not None and b_t is not None  # the posterior's normaliser, set above
                xn = normalise_dn(batch.x, a_t, b_t)
                doy = batch.doy if use_doy else None
                # a stack fills its target date only: the decoder runs on that date (the latents see the stack)
                date = None if dates == 1 else torch.as_tensor(pos[row:row + n], device=xn.device)
                mean_t, std_t, _ = posterior_inpaint(hvae, xn, batch.valid, int(num_samples), doy=doy, date=date)
                mean = mean_t.double().cpu().numpy()
                var = (std_t.double() * spread_factor).square().cpu().numpy()
                for i in range(n):
                    acc.add(target[row], int(plan.y[row]) - y0, int(plan.x[row]) - x0, mean[i], var[i])
                    row += 1
    finally:
        if loader is not None:
            loader.close()
        if hvae is not None:
            hvae.train(was_training)
    if not acc.done():  # pragma: no cover - the loader yields every row of the plan
        raise RuntimeError("not every tile was filled")
    return acc


@torch.no_grad()
def inpaint_cube(
    cube: xr.Dataset | str | os.PathLike,
    *,
    method: str = "posterior",
    hvae: Any = None,
    patch_size: int,
    dates: int = 1,
    window: str = "nearest",
    num_samples: int = 8,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    run: str | os.PathLike | None = None,
    spread_factor: float = 1.0,
) -> xr.Dataset:
    """The cube with every invalid pixel filled (see the module doc for the tiles, the stacks and the output).

    :param cube: a cube (``xarray.Dataset``, in memory or lazily opened) or a store path/URL; it must store
        integer DN reflectance. It is only read.
    :param method: ``"posterior"`` (sample the HVAE ``hvae``) or ``"interpolation"`` (linear in time, no model).
    :param hvae: an :class:`~hvaeseg.hierarchy.HVAE` on ``device`` (``posterior`` only); put in eval mode
        while filling.
    :param patch_size: tile side (the model's training patch size).
    :param dates: dates per stack of a temporal model (``1``: single-date model).
    :param window: how a temporal model's stack is chosen: ``"nearest"`` or ``"season"`` (module doc).
    :param num_samples: posterior samples per tile.
    :param batch_size: tiles per model call.
    :param device: where the model runs.
    :param seed: seed of the posterior sampling.
    :param progress: show a progress bar over the tiles (on a terminal; ``HVAESEG_NO_PROGRESS=1`` silences it).
    :param run: the run folder the model comes from, recorded as ``inpaint_run``.
    :param spread_factor: multiplies the posterior ``std`` (the samples' deviations from their mean; the values are
        unchanged): a factor fitted by :func:`hvaeseg.calibrate_cube.cube_spread_factor`, recorded as
        ``inpaint_spread_factor``.
    :raises ValueError, TypeError: bad arguments, a float reflectance cube, a model that does not fit.
    """
    ds = _checked(cube, method=method, hvae=hvae, patch_size=patch_size, dates=dates, window=window,
                  num_samples=num_samples, batch_size=batch_size, spread_factor=spread_factor)
    device = torch.device(device)
    patch_size, dates, batch_size = int(patch_size), int(dates), int(batch_size)
    Y, X = ds.sizes["y"], ds.sizes["x"]
    ys, xs = tile_starts(Y, patch_size), tile_starts(X, patch_size)  # raises for a too large patch
    valid = np.asarray(ds["valid"].transpose("time", "y", "x").values, dtype=bool)
    stats = _band_stats(ds) if method == "posterior" else None
    acc = _fill(cube, ds, valid, ys, xs, (0, Y, 0, X), method=method, hvae=hvae, patch_size=patch_size, dates=dates,
                window=window, num_samples=num_samples, batch_size=batch_size, device=device, seed=seed, stats=stats,
                progress=progress, spread_factor=float(spread_factor))
    refl = ds["reflectance"]
    out = _filled_dataset(ds, acc.out.transpose(*[("time", "band", "y", "x").index(d) for d in refl.dims]),
                          acc.std, ~valid)
    out.attrs.update(_provenance(ds, method=method, run=run, num_samples=num_samples, dates=dates, window=window,
                                 seed=seed, patch_size=patch_size, batch_size=batch_size,
                                 spread_factor=spread_factor))
    if acc.nonfinite:
        out.attrs["inpaint_nonfinite_pixels"] = int(acc.nonfinite)
    return out


def _checked(cube: xr.Dataset | str | os.PathLike, *, method: str, hvae: Any, patch_size: int, dates: int,
             window: str, num_samples: int, batch_size: int, spread_factor: float = 1.0) -> xr.Dataset:
    """The cube, opened, once the arguments are checked against it and the model."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if not (float(spread_factor) > 0 and np.isfinite(float(spread_factor))):
        raise ValueError(f"spread_factor: expected a finite factor > 0, got {spread_factor}")
    if float(spread_factor) != 1 and method != "posterior":
        raise ValueError("spread_factor scales the posterior spread: it needs method='posterior'")
    patch_size, dates, batch_size = int(patch_size), int(dates), int(batch_size)
    if patch_size < 1 or dates < 1 or batch_size < 1:
        raise ValueError(f"expected positive patch_size, dates and batch_size, got {patch_size}, {dates}, {batch_size}")
    if window not in WINDOWS:
        raise ValueError(f"window: expected one of {', '.join(WINDOWS)}, got {window!r}")
    ds = _open(cube)
    if "reflectance" not in ds or "valid" not in ds:
        raise ValueError("the cube needs `reflectance` and `valid` variables to be filled")
    refl = ds["reflectance"]
    if not np.issubdtype(refl.dtype, np.integer):
        raise TypeError(
            f"inpainting reads and writes integer DN reflectance; this cube stores {refl.dtype}: store it as L2A DN "
            "first, ds['reflectance'] = ((ds['reflectance'] + 0.1) / 1e-4).round().clip(1, 65535).fillna(0)"
            ".astype('uint16').assign_attrs(scale_factor=1e-4, add_offset=-0.1), and write it with "
            "hvaeseg.data.store.write_cube"
        )
    T, C, Y, X = (ds.sizes[d] for d in ("time", "band", "y", "x"))
    if method == "posterior":
        if hvae is None:
            raise ValueError("method 'posterior' needs a model: pass hvae= (an HVAE), or use method='interpolation'")
        if int(num_samples) < 1:
            raise ValueError(f"expected num_samples >= 1, got {num_samples}")
        spec = hvae.spec
        if spec.temporal != (dates > 1):
            raise ValueError(
                f"the model is {'temporal' if spec.temporal else 'single-date'} and dates={dates}: "
                "pass the run's number of dates per stack (1 for single-date models)"
            )
        if spec.image.bands != C:
            raise ValueError(f"the model reads {spec.image.bands} bands and the cube has {C}")
        spec.check_patch(patch_size, patch_size)
        if dates > T:
            raise ValueError(f"the model fills stacks of {dates} dates and the cube has only {T}")
    tile_starts(Y, patch_size), tile_starts(X, patch_size)  # raises for a too large patch
    return ds


def _band_stats(ds: xr.Dataset) -> tuple[list[float], list[float]]:
    """The cube's stored band statistics, or computed in memory, as the loader would (never written into it)."""
    stats = read_band_stats(ds)
    return compute_band_stats(ds) if stats is None else stats


def _filled_dataset(ds: xr.Dataset, reflectance: np.ndarray, std: np.ndarray, filled: np.ndarray) -> xr.Dataset:
    """The input with ``reflectance`` (in its own dims order) replaced and ``std``, ``filled`` added."""
    refl = ds["reflectance"]
    out = ds.copy(deep=False)
    out["reflectance"] = (refl.dims, reflectance, dict(refl.attrs))
    std_attrs = {"long_name": "posterior standard deviation of the filled reflectance (0 where observed)",
                 "units": "1"}
    out["std"] = (("time", "band", "y", "x"), std, std_attrs)
    out["filled"] = (("time", "y", "x"), filled, {"long_name": "pixel filled by inpainting (invalid in the input)"})
    return out


def _provenance(ds: xr.Dataset, *, method: str, run: str | os.PathLike | None, num_samples: int, dates: int,
                window: str, seed: int, patch_size: int, batch_size: int, spread_factor: float = 1.0) -> dict[str, Any]:
    return dict(
        inpaint_method=method,
        inpaint_run="" if run is None else str(run),
        inpaint_samples=int(num_samples) if method == "posterior" else 0,
        inpaint_dates=int(dates) if method == "posterior" else int(ds.sizes["time"]),
        inpaint_window=window if method == "posterior" and dates > 1 else "",
        inpaint_seed=int(seed),
        inpaint_patch_size=int(patch_size),
        inpaint_batch_size=int(batch_size),
        inpaint_spread_factor=float(spread_factor),
        inpaint_created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )


# --------------------------------------------------------------------------------------------------
# region by region (parallel inpainting: hvaeseg.parallel)
# --------------------------------------------------------------------------------------------------


def inpaint_template(cube: xr.Dataset | str | os.PathLike, *, method: str = "posterior", hvae: Any = None,
                     patch_size: int, dates: int = 1, window: str = "nearest", num_samples: int = 8,
                     batch_size: int = 8, seed: int = 0, run: str | os.PathLike | None = None,
                     spread_factor: float = 1.0) -> xr.Dataset:
    """What :func:`inpaint_cube` returns for ``cube``, with zero-memory placeholders (``np.broadcast_to`` of 0)
    for ``reflectance``, ``std`` and ``filled``, stamped with the schema version as
    :func:`~hvaeseg.data.store.write_cube` does: the create step of a region-by-region write
    (:class:`hvaeseg.data.region_store.RegionStore`). The arguments are checked as :func:`inpaint_cube` does."""
    from hvaeseg.data.schema import SCHEMA_VERSION

    ds = _checked(cube, method=method, hvae=hvae, patch_size=patch_size, dates=dates, window=window,
                  num_samples=num_samples, batch_size=batch_size, spread_factor=spread_factor)
    refl = ds["reflectance"]
    T, C, Y, X = (ds.sizes[d] for d in ("time", "band", "y", "x"))
    out = _filled_dataset(ds, np.broadcast_to(np.zeros((), dtype=refl.dtype), refl.shape),
                          np.broadcast_to(np.zeros((), dtype=np.float32), (T, C, Y, X)),
                          np.broadcast_to(np.zeros((), dtype=bool), (T, Y, X)))
    out.attrs.update(_provenance(ds, method=method, run=run, num_samples=num_samples, dates=dates, window=window,
                                 seed=seed, patch_size=patch_size, batch_size=batch_size,
                                 spread_factor=spread_factor))
    out.attrs.setdefault("hvaeseg_schema_version", SCHEMA_VERSION)
    return out


def region_seed(seed: int, index: int) -> int:
    """The seed of region ``index``'s posterior draws: from ``(seed, index)`` alone, so a region's values do not
    depend on which process fills it, nor on how many share the work."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


@torch.no_grad()
def inpaint_region(
    cube: xr.Dataset | str | os.PathLike,
    region: Region,
    *,
    method: str = "posterior",
    hvae: Any = None,
    patch_size: int,
    dates: int = 1,
    window: str = "nearest",
    num_samples: int = 8,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    seed: int = 0,
    stats: tuple[list[float], list[float]] | None = None,
    spread_factor: float = 1.0,
) -> tuple[dict[str, np.ndarray], int]:
    """The filled cube's variables over one region (:mod:`hvaeseg.data.regions`), filled from every tile over it
    in the whole cube's order (arguments as :func:`inpaint_cube`'s).

    Interpolation gives exactly the pixels :func:`inpaint_cube` gives. The posterior draws of a region are seeded
    by :func:`region_seed` ``(seed, region.index)``: the same for any split of the work, but not the draws of
    :func:`inpaint_cube`'s single stream (equal in distribution).

    :param stats: the whole cube's band statistics (default: read, or computed, here: pass them for many regions).
    :returns: ``({variable: values over the region, in its dims order}, non-finite pixels)`` for every variable
        of the output with ``y`` and ``x`` (``reflectance``, ``std``, ``filled`` and the input's ``valid``,
        ``labels``, ...).
    """
    device = torch.device(device)
    ds = _checked(cube, method=method, hvae=hvae, patch_size=patch_size, dates=dates, window=window,
                  num_samples=num_samples, batch_size=batch_size, spread_factor=spread_factor)
    P = int(patch_size)
    Y, X = ds.sizes["y"], ds.sizes["x"]
    ys = [y for y in tile_starts(Y, P) if y < region.y1 and y + P > region.y0]
    xs = [x for x in tile_starts(X, P) if x < region.x1 and x + P > region.x0]
    box = (ys[0], ys[-1] + P, xs[0], xs[-1] + P)
    valid = np.asarray(ds["valid"].isel(y=slice(box[0], box[1]), x=slice(box[2], box[3]))
                       .transpose("time", "y", "x").values, dtype=bool)
    if method == "posterior" and stats is None:
        stats = _band_stats(ds)
    acc = _fill(cube, ds, valid, ys, xs, box, method=method, hvae=hvae, patch_size=P, dates=int(dates),
                window=window, num_samples=num_samples, batch_size=int(batch_size), device=device,
                seed=region_seed(seed, region.index), stats=stats, progress=False, spread_factor=float(spread_factor))
    cut = (slice(region.y0 - box[0], region.y1 - box[0]), slice(region.x0 - box[2], region.x1 - box[2]))
    refl = ds["reflectance"]
    out = {
        "reflectance": acc.out[(slice(None), slice(None), *cut)].transpose(
            *[("time", "band", "y", "x").index(d) for d in refl.dims]),
        "std": acc.std[(slice(None), slice(None), *cut)],
        "filled": ~valid[(slice(None), *cut)],
    }
    for name, var in ds.variables.items():
        if name not in out and "y" in var.dims and "x" in var.dims:
            out[str(name)] = np.asarray(var.isel(region.slices).values)
    return out, int(acc.nonfinite)


def write_filled(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False,
                 chunks: Mapping[str, int | None] | None = None) -> str:
    """Validate the filled cube and write it to a Zarr store atomically (:func:`hvaeseg.data.store.write_cube`:
    temporary sibling, renamed last; nothing is left at ``path`` on error).

    :param chunks: chunk sizes by dimension (default :data:`hvaeseg.data.store.DEFAULT_CHUNKS`).
    :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from hvaeseg.data.store import write_cube

    return write_cube(ds, path, overwrite=overwrite, chunks=chunks)
