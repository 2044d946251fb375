"""Inpainting benchmark: one protocol for synthetic and real cubes (``docs/protocols.md``); JSON and a figure.

Two protocols, each scored on its pixels only, in reflectance units:

``occluded`` (synthetic cubes only: they know the truth under their clouds, ``clean_reflectance``)
    The models see the cube as observed; the invalid pixels of the partly cloudy dates (valid share strictly
    between 5% and 95%) are scored against ``clean_reflectance``.
``pasted`` (every cube)
    Target dates are those with >= 95% valid pixels; each gets the invalid mask of a donor date with 30-80%
    valid pixels, drawn by the seed; the hidden pixels that were valid are scored against the observed
    reflectance. Each target is inpainted on its own, every other date as observed.

A cube without such dates skips the protocol (the report's ``notes`` say so).

Methods:

``interpolation``    :func:`hvaeseg.inpaint.temporal_linear_interpolation` over each pixel's full time series
                     with the real day gaps.
``single-date``      the posterior mean of a single-date HVAE run (``posterior_inpaint(hvae, x, valid, K,
                     decoder_mean=True, doy=doy)``) on the target date alone.
``temporal``         the same with a temporal HVAE run on T-date stacks: the target date and T-1 other dates
                     (:func:`hvaeseg.inpaint_cube.window_dates`, per tile; ``--window nearest``: the T-1 dates
                     nearest the target among those at least half clear in the tile; ``--window season``: the
                     time range cut into T-1 groups of equal span, the clearest date of each group).
``temporal+labels``  the temporal run with the guide given the label map (``s=labels``).
``window-interpolation``  no model: temporal linear interpolation (real day gaps) inside the stacks the temporal
                     runs see (``--dates`` T, ``--window``, per tile), i.e. from the T-1 nearest at least half
                     clear dates only. It is what the ``interp`` covariate of a temporal hierarchy holds
                     (``"interpolation": true``), so it separates the gain of choosing dates from the decoder's.
``window-transfer``  no model: ``window-interpolation`` plus the residual borrowed from similar clear pixels of the
                     tile on the target date (:func:`hvaeseg.hierarchy.interpolation.residual_transfer`, settings
                     ``--transfer``): what the ``interp`` covariate holds with ``image.transfer`` set.

The HVAE methods work tile by tile (the run's patch size; tiles that cover the image, the last row and column
shifted back to end at the border, each pixel taken from the last tile that covers it; only tiles holding
scored pixels), on the loader's normalisation with the cube's band statistics (those the runs trained with):
``x = (DN * scale_factor + add_offset - band_mean) / band_std``. The models never see the hidden values: the
input is ``x * valid`` with ``valid`` the pasted (or real) mask. The calibration of the HVAE methods comes from
``--calibration-samples`` samples of ``x`` (``decoder_mean=False``): the share of the hidden values inside the
central sample intervals (:func:`hvaeseg.metrics.interval_coverage`, levels 0.5 .. 0.95) and the RMSE of the
posterior mean in bins of the predicted std (:func:`hvaeseg.metrics.error_vs_spread`).

SSIM windows reach beyond the scored pixels; there every method's prediction is set to the truth, so every
method is judged on the same context.

Runs: ``--single-run RUN ...`` / ``--temporal-run RUN ...`` (run folders; each is matched to the cube it was
trained on, and to a seed by its training seed when a cube has several), or ``--train``: symmetric learning,
``--labels`` labelled locations (capped at what the split holds), patch ``--patch-size``, ``dates=1`` resp.
``dates=--dates``, ``--budget`` seconds (or ``--steps`` steps, capped at ``--budget`` seconds), one run per seed,
kept under ``--out``/CUBE/ and reused when finished.
``--block`` defaults to 128 for cubes of at least 512 pixels a side, else 32 (the 64 x 64 WorldCereal site,
``synthetic:tiny``).

    python bench/inpaint.py --cubes synthetic:small runs/cubes/worldcereal.zarr --train --budget 240
    python bench/inpaint.py --cubes synthetic:small --single-run runs/a --temporal-run runs/b --seeds 0

``--cubes`` takes ``synthetic:PRESET``, a scene of ``bench/data`` (see ``bench/scenes.py``) or a cube store path
(a real time series such as the WorldCereal site: ``hvaeseg data ingest FOLDER OUT.zarr``). The JSON
(``--json``) holds every row (cube, protocol, method, seed) and a summary (mean ± sd over seeds per method,
protocol and cube, with the PSNR margin of each HVAE method over interpolation, paired by seed); the PNG
(``--png``) draws PSNR and MAE bars and a reliability diagram per cube and protocol. ``--plot-only`` redraws
the PNG from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvaeseg.calibration import rescale
from hvaeseg.data.loader import day_of_year, normalise_dn, normaliser
from hvaeseg.data.stats import compute_band_stats, dn_scaling, ensure_band_stats, read_band_stats
from hvaeseg.data.tiles import tile_starts
from hvaeseg.hierarchy.interpolation import interpolation_input
from hvaeseg.hierarchy.spec import TransferSpec
from hvaeseg.inpaint import posterior_inpaint, temporal_linear_interpolation
from hvaeseg.inpaint_cube import WINDOWS, posterior_tile, window_dates
from hvaeseg.metrics import error_vs_spread, inpainting_errors, interval_coverage, per_band_rmse

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/scenes.py, beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import DATA as SCENES_DIR  # noqa: E402
from scenes import cube as resolve_cube  # noqa: E402
from scenes import label as scene_label  # noqa: E402

#: the methods, in the order of the tables and the figure
METHODS = ("interpolation", "window-interpolation", "window-transfer", "single-date", "temporal", "temporal+labels")
#: the methods that sample the HVAE's posterior (calibrated), and the run kind each needs
HVAE_METHODS = {"single-date": "single", "temporal": "temporal", "temporal+labels": "temporal"}
PROTOCOLS = {
    "occluded": "synthetic cubes only: the models see the cube as observed; scored: the invalid pixels of the "
                "partly cloudy dates (valid share strictly between 5% and 95%), against clean_reflectance",
    "pasted": "target dates (>= 95% valid) each get the invalid mask of a donor date (30-80% valid) drawn by the "
              "seed, one target at a time; scored: the hidden pixels that were valid, against the observed "
              "reflectance",
}
#: the valid share of a partly cloudy date (occluded protocol): strictly between these
PARTLY = (0.05, 0.95)
#: target dates of the pasted protocol: at least this valid share
TARGET_MIN_VALID = 0.95
#: donor dates of the pasted protocol: a valid share in this closed range
DONOR_VALID = (0.30, 0.80)
#: nominal levels of the reliability diagram (coverage of the central sample intervals)
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: the level whose coverage ``--recalibrate`` fits (hvaeseg.calibration)
CALIBRATION_LEVEL = 0.9
#: added to the seed of the calibration items and draws (a stream apart from the protocol's)
CALIBRATION_SEED_OFFSET = 10_000
#: the scalar metrics of a row, summarised over seeds
KEYS = ("mae", "rmse", "psnr", "ssim", "spectral_angle_deg")
#: the file a finished training run gets in its folder (a folder without it holds an unfinished run)
DONE_FILE = "inpaint_done.json"
#: steps of a run trained for a wall-clock budget (the budget ends it first)
UNBOUNDED_STEPS = 10**7
#: values per strip of the interpolation (bounds its memory)
_STRIP_VALUES = 4_000_000


# --------------------------------------------------------------------------------------------------
# the cube in memory
# --------------------------------------------------------------------------------------------------


@dataclass
class Cube:
    """A cube as the benchmark uses it: raw DN, the loader's normalisation, masks, labels, dates.

    ``dn``: ``(T, C, H, W)`` uint16 (``clean_dn`` the synthetic truth under the clouds, or None); ``valid``
    ``(T, H, W)`` bool; ``labels`` ``(H, W)`` int64 (-1 void) or None; ``days``: ``(T,)`` float64 days since the
    first date; ``doy``: ``(T,)`` float32 day of the year (None for non-datetime times); ``mean``/``std``:
    the band statistics the loader normalises with.
    """

    name: str
    data: str
    dn: np.ndarray
    valid: torch.Tensor
    labels: torch.Tensor | None
    days: np.ndarray
    doy: torch.Tensor | None
    times: list[str]
    bands: list[str]
    scale: float
    offset: float
    mean: np.ndarray
    std: np.ndarray
    clean_dn: np.ndarray | None = None
    source: Any = field(default=None, repr=False)  # the Dataset it was read from
    _x: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_dataset(
        cls, ds: Any, name: str, data: str, stats: tuple[Sequence[float], Sequence[float]] | None = None
    ) -> Cube:
        """Read a cube (``xarray.Dataset``, e.g. :func:`hvaeseg.data.store.open_cube`) into memory.

        :param stats: ``(band_mean, band_std)``; default: the cube's stored statistics (computed if missing).
        """
        refl = ds["reflectance"].transpose("time", "band", "y", "x")
        if not np.issubdtype(refl.dtype, np.integer):
            raise TypeError(f"{name}: expected uint16 DN reflectance (the loader's input), got {refl.dtype}")
        scale, offset = dn_scaling(refl.attrs, refl.dtype)
        if stats is None:
            stats = read_band_stats(ds) or compute_band_stats(ds)
        times = np.asarray(ds["time"].values)
        if np.issubdtype(times.dtype, np.datetime64):
            days = (times - times[0]) / np.timedelta64(1, "D")
            doy = torch.from_numpy(day_of_year(times))
            names = [str(t)[:10] for t in times]
        else:
            days, doy, names = np.arange(len(times), dtype=np.float64), None, [str(t) for t in times]
        T, _, H, W = refl.shape
        valid = (np.asarray(ds["valid"].transpose("time", "y", "x").values, dtype=bool) if "valid" in ds
                 else np.ones((T, H, W), bool))
        labels = None
        if "labels" in ds:
            labels = torch.from_numpy(np.asarray(ds["labels"].transpose("y", "x").values).astype(np.int64))
        clean = None
        if "clean_reflectance" in ds:
            clean = np.asarray(ds["clean_reflectance"].transpose("time", "band", "y", "x").values)
        return cls(
            name=name, data=data, dn=np.asarray(refl.values), valid=torch.from_numpy(valid), labels=labels,
            days=np.asarray(days, dtype=np.float64), doy=doy, times=names, bands=[str(b) for b in ds["band"].values],
            scale=scale, offset=offset, mean=np.asarray(stats[0], np.float64), std=np.asarray(stats[1], np.float64),
            clean_dn=clean, source=ds,
        )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.dn.shape)  # type: ignore[return-value]

    def normalise(self, dn: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(..., C, H, W)`` DN -> the loader's normalised float32 (:func:`hvaeseg.data.loader.normalise_dn`)."""
        a, b = normaliser(self.scale, self.offset, self.mean, self.std, len(self.bands))
        dn = torch.as_tensor(np.ascontiguousarray(dn)) if isinstance(dn, np.ndarray) else dn
        return normalise_dn(dn, a, b)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., C, H, W)`` -> reflectance (float32): ``x * band_std + band_mean``."""
        shape = (-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(shape)
        mean = torch.tensor(self.mean, dtype=torch.float64).view(shape)
        return (x.double() * std + mean).float()

    def spread(self, std: torch.Tensor) -> torch.Tensor:
        """A normalised standard deviation ``(..., C, H, W)`` in reflectance units."""
        return (std.double() * torch.tensor(self.std, dtype=torch.float64).view(-1, 1, 1)).float()

    def reflectance(self, index: Any = slice(None), clean: bool = False) -> torch.Tensor:
        """``DN * scale_factor + add_offset`` of ``dn[index]`` (``clean_dn`` with ``clean``), float32."""
        src = self.clean_dn if clean else self.dn
        if src is None:
            raise ValueError(f"{self.name} has no clean_reflectance (the truth under the clouds)")
        return torch.from_numpy((np.asarray(src[index], np.float64) * self.scale + self.offset).astype(np.float32))

    @property
    def x(self) -> torch.Tensor:
        """The whole cube normalised, ``(T, C, H, W)`` float32 (computed once)."""
        if self._x is None:
            self._x = self.normalise(self.dn)
        return self._x


def cube_label(spec: str) -> str:
    """A short display label: ``synthetic:tiny``, ``real: s2-cloud-shadow-512`` (a bench scene), ``store: wc.zarr``."""
    if spec.startswith("synthetic:") or ("/" not in spec and (SCENES_DIR / spec / "scene.json").is_file()):
        return scene_label(spec)
    return f"store: {Path(spec).name}"


def _missing_store_message(spec: str) -> str:
    return (
        f"cube store {spec!r} not found. Ingest the real time series into it first, e.g. "
        f"`hvaeseg data ingest /work/shared/data/worldcereal-be-00002806639B424A {spec}` "
        "(`hvaeseg data ingest SOURCE_FOLDER OUT.zarr` for any folder of L2A products), or give "
        f"synthetic:PRESET or a scene of {SCENES_DIR}"
    )


def check_cube_spec(spec: str) -> None:
    """Raise ``ValueError`` with the ingest command for a store path that does not exist."""
    if spec.startswith("synthetic:") or (SCENES_DIR / spec / "scene.json").is_file():
        return
    if not Path(spec).exists():
        raise ValueError(_missing_store_message(spec))


def load_cube(spec: str, cache_dir: str | os.PathLike = "runs/cubes") -> Cube:
    """The cube of ``spec`` (``synthetic:PRESET`` generated with data seed 0, as the runs are; a bench scene; a
    store path), with the band statistics the runs train with (stored into the store if missing)."""
    from hvaeseg.data.store import open_cube
    from hvaeseg.experiment import open_data

    check_cube_spec(spec)
    data = resolve_cube(spec, cache_dir=cache_dir)
    cube = open_data(data, 0)
    if isinstance(cube, str):
        try:
            stats = ensure_band_stats(cube)  # what the loader of a training run does
        except (PermissionError, OSError):
            stats = compute_band_stats(cube)
        ds = open_cube(cube, validate=False)
    else:
        ds, stats = cube, ensure_band_stats(cube)
    return Cube.from_dataset(ds, spec, data, stats)


# --------------------------------------------------------------------------------------------------
# protocols: what is hidden and what is scored
# --------------------------------------------------------------------------------------------------


@dataclass
class Task:
    """One scored image: the target date, the mask the models see there and the pixels scored.

    ``valid_in``: ``(H, W)`` bool, what the models see at the target date; ``scored``: ``(H, W)`` bool, hidden
    pixels with a known truth; ``donor``: the date whose mask was pasted (pasted protocol).
    """

    protocol: str
    target: int
    valid_in: torch.Tensor
    scored: torch.Tensor
    donor: int | None = None

    def valid_stack(self, valid: torch.Tensor) -> torch.Tensor:
        """The cube's ``(T, H, W)`` valid with the target date's mask replaced by ``valid_in``."""
        out = valid.clone()
        out[self.target] = self.valid_in
        return out


def valid_shares(valid: torch.Tensor) -> np.ndarray:
    """The valid share of each date of ``(T, H, W)``."""
    return valid.double().mean((1, 2)).numpy()


def occluded_tasks(valid: torch.Tensor) -> list[Task]:
    """The occluded protocol: one task per partly cloudy date (valid share strictly inside :data:`PARTLY`)
    scoring its invalid pixels; the models see the real mask."""
    share = valid_shares(valid)
    return [Task("occluded", int(t), valid[t].clone(), ~valid[t])
            for t in np.flatnonzero((share > PARTLY[0]) & (share < PARTLY[1]))]


def pasted_tasks(valid: torch.Tensor, seed: int) -> list[Task]:
    """The pasted protocol: each target date (valid share >= :data:`TARGET_MIN_VALID`) gets the invalid mask of a
    donor date (valid share in :data:`DONOR_VALID`) drawn by ``seed``; what the models see there is
    ``valid[target] & valid[donor]``; scored: ``valid[target] & ~valid[donor]`` (hidden, and was valid).
    Empty when the cube has no target or no donor date."""
    share = valid_shares(valid)
    targets = np.flatnonzero(share >= TARGET_MIN_VALID)
    donors = np.flatnonzero((share >= DONOR_VALID[0]) & (share <= DONOR_VALID[1]))
    if len(targets) == 0 or len(donors) == 0:
        return []
    drawn = np.random.default_rng(seed).choice(donors, size=len(targets), replace=True)
    tasks = []
    for t, d in zip(targets, drawn):
        t, d = int(t), int(d)
        tasks.append(Task("pasted", t, valid[t] & valid[d], valid[t] & ~valid[d], donor=d))
    return [task for task in tasks if bool(task.scored.any())]


def protocol_tasks(cube: Cube, protocol: str, seed: int) -> tuple[list[Task], str | None]:
    """The tasks of ``protocol`` on ``cube`` and, when there are none, why (a note for the report)."""
    if protocol == "occluded":
        if cube.clean_dn is None:
            return [], (f"{cube.name}: occluded protocol skipped: no clean_reflectance (the truth under the clouds "
                        "is known for synthetic cubes only)")
        tasks = occluded_tasks(cube.valid)
        return tasks, None if tasks else (f"{cube.name}: occluded protocol skipped: no partly cloudy date "
                                          f"(valid share strictly between {PARTLY[0]:.0%} and {PARTLY[1]:.0%})")
    if protocol == "pasted":
        tasks = pasted_tasks(cube.valid, seed)
        if tasks:
            return tasks, None
        share = valid_shares(cube.valid)
        n_t = int((share >= TARGET_MIN_VALID).sum())
        n_d = int(((share >= DONOR_VALID[0]) & (share <= DONOR_VALID[1])).sum())
        return [], (f"{cube.name}: pasted protocol skipped: {n_t} target dates (>= {TARGET_MIN_VALID:.0%} valid) "
                    f"and {n_d} donor dates ({DONOR_VALID[0]:.0%}-{DONOR_VALID[1]:.0%} valid); it needs both")
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")


def task_truth(cube: Cube, task: Task) -> torch.Tensor:
    """``(C, H, W)`` reflectance the task is scored against: clean (occluded) or observed (pasted)."""
    return cube.reflectance(task.target, clean=task.protocol == "occluded")


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------


@dataclass
class Fill:
    """A method's fill of one task: ``mean`` ``(C, H, W)`` reflectance, ``std`` (HVAE methods) likewise; the
    calibration counts ``inside[level]`` of ``counted`` scored values."""

    mean: torch.Tensor
    std: torch.Tensor | None = None
    inside: dict[float, float] = field(default_factory=dict)
    counted: int = 0
    inside_raw: dict[float, float] = field(default_factory=dict)  # before the spread factor (when not 1)


def interpolation_fills(cube: Cube, tasks: Sequence[Task]) -> list[Fill]:
    """Temporal linear interpolation with the real day gaps, per pixel over its full time series, of each
    task's target date (tasks that share the cube's real mask, as the occluded ones, in one pass)."""
    T, C, H, W = cube.shape
    days = torch.from_numpy(cube.days)
    rows = max(1, _STRIP_VALUES // (T * C * W))
    out: list[Fill | None] = [None] * len(tasks)
    groups: dict[int, list[int]] = {}  # tasks that see the real mask share one pass
    for i, task in enumerate(tasks):
        same = bool(torch.equal(task.valid_in, cube.valid[task.target]))
        groups.setdefault(-1 if same else i, []).append(i)
    for key, members in groups.items():
        valid = cube.valid if key == -1 else tasks[key].valid_stack(cube.valid)
        dates = [tasks[i].target for i in members]
        filled = torch.empty(len(dates), C, H, W)
        for y0 in range(0, H, rows):
            ys = slice(y0, min(y0 + rows, H))
            v = valid[:, ys]
            x = cube.reflectance((slice(None), slice(None), ys)) * v.unsqueeze(1)  # hidden values never enter
            filled[:, :, ys] = temporal_linear_interpolation(x[None], v[None], days)[0, dates]
        for j, i in enumerate(members):
            out[i] = Fill(filled[j])
    return out  # type: ignore[return-value]


@dataclass
class _Item:
    task: int
    y: int
    x: int
    dates: list[int]  # the stack's dates (one for single-date models)
    slot: int  # where the target date sits in ``dates``


def hvae_fills(
    hvae: Any | None,
    cube: Cube,
    tasks: Sequence[Task],
    *,
    patch: int,
    dates: int = 1,
    window: str = "nearest",
    labels: bool = False,
    samples: int = 16,
    calibration_samples: int = 32,
    levels: Sequence[float] = LEVELS,
    batch_size: int = 32,
    truths: Sequence[torch.Tensor] | None = None,
    transfer: TransferSpec | None = None,
    spread_factor: float = 1.0,
) -> list[Fill]:
    """Posterior inpainting of each task's target date by ``hvae``, tile by tile (see the module doc).

    The mean is :func:`posterior_inpaint` with ``decoder_mean=True`` and ``samples`` samples; with
    ``calibration_samples`` > 0 a second call draws that many samples of ``x`` for the spread (``std``) and
    the interval coverage of the scored values against ``truths`` (each task's truth, default
    :func:`task_truth`).

    :param hvae: an HVAE (conventions-following ``model`` and ``guide``), single-date (``dates=1``) or temporal;
        None: each stack's target date is filled by temporal linear interpolation inside the stack (real day gaps;
        the ``window-interpolation`` method), with no calibration; with ``transfer`` also the residual borrowed from
        similar clear pixels (``window-transfer``).
    :param window: the stack rule of a temporal model (:func:`~hvaeseg.inpaint_cube.window_dates`).
    :param labels: give the guide the cube's label map (``s=labels``).
    :param spread_factor: the samples of ``x`` are scaled about their mean by it
        (:func:`hvaeseg.calibration.rescale`) before the spread and the coverage; with a factor other than 1 the
        coverage of the unscaled samples is kept too (``Fill.inside_raw``).
    """
    T, C, H, W = cube.shape
    if labels and cube.labels is None:
        raise ValueError(f"{cube.name} has no label map: the method needs one")
    if hvae is None:
        if dates < 2:
            raise ValueError("window interpolation needs stacks of T >= 2 dates (--dates)")
        calibration_samples = 0
    truths = list(truths) if truths is not None else [task_truth(cube, t) for t in tasks]
    ys, xs = tile_starts(H, patch), tile_starts(W, patch)
    owner = torch.full((H, W), -1, dtype=torch.int64)  # each pixel: the last tile that covers it
    tiles = [(y, x) for y in ys for x in xs]
    for k, (y, x) in enumerate(tiles):
        owner[y:y + patch, x:x + patch] = k
    items: list[_Item] = []
    stacks = [task.valid_stack(cube.valid) for task in tasks]
    for i, task in enumerate(tasks):
        for y, x in tiles:
            if not bool(task.scored[y:y + patch, x:x + patch].any()):
                continue
            if dates == 1:
                items.append(_Item(i, y, x, [task.target], 0))
            else:
                clear = stacks[i][:, y:y + patch, x:x + patch].double().mean((1, 2)).numpy()
                ds = [int(d) for d in window_dates(task.target, clear, cube.days, dates, window)]
                if len(ds) != dates or task.target not in ds:
                    raise ValueError(f"window_dates gave {ds} for target {task.target} and T={dates}")
                items.append(_Item(i, y, x, ds, ds.index(task.target)))
    # the fill starts as what the models see: the masked input, in reflectance
    fills = []
    for task in tasks:
        seen = cube.denormalise(cube.x[task.target] * task.valid_in)
        fills.append(Fill(seen, torch.zeros_like(seen) if calibration_samples else None,
                          {float(a): 0.0 for a in levels} if calibration_samples else {}, 0))
    sl = lambda it: (slice(it.y, it.y + patch), slice(it.x, it.x + patch))  # noqa: E731
    for b0 in range(0, len(items), batch_size):
        batch = items[b0:b0 + batch_size]
        xb = torch.stack([cube.x[:, :, sl(it)[0], sl(it)[1]][it.dates] for it in batch])  # (B, T', C, P, P)
        vb = torch.stack([stacks[it.task][:, sl(it)[0], sl(it)[1]][it.dates] for it in batch])  # (B, T', P, P)
        xb = xb * vb.unsqueeze(2)  # the model never sees a hidden value
        doy = None if cube.doy is None else torch.stack([cube.doy[it.dates] for it in batch])  # (B, T')
        if dates == 1:
            xb, vb, doy = xb[:, 0], vb[:, 0], None if doy is None else doy[:, 0]
        s = torch.stack([cube.labels[sl(it)] for it in batch]) if labels else None
        if hvae is None and transfer is not None:
            if doy is None:
                raise ValueError(f"{cube.name}: window-transfer needs the dates' days of the year (datetime times)")
            mean = interpolation_input(xb, vb, doy, transfer=transfer)[:, :, :C]
        elif hvae is None:
            days = torch.stack([torch.from_numpy(cube.days[it.dates]) for it in batch])  # (B, T')
            mean = temporal_linear_interpolation(xb, vb, days)
        else:  # a stack's decoder runs on its target date alone (date=)
            date = None if dates == 1 else torch.tensor([it.slot for it in batch])
            mean, _, _ = posterior_inpaint(hvae, xb, vb, samples, s=s, decoder_mean=True, doy=doy, date=date)
        std = draws = None
        if calibration_samples:
            _, std, raw = posterior_inpaint(hvae, xb, vb, calibration_samples, s=s, decoder_mean=False, doy=doy,
                                            date=date)
            draws = rescale(raw, spread_factor) if spread_factor != 1 else raw
            std = std * spread_factor  # the spread of the rescaled draws (0 where observed)
        for j, it in enumerate(batch):
            ry, rx = sl(it)
            pick = (j,) if dates == 1 or hvae is not None else (j, it.slot)  # the model's: the target date only
            fill = fills[it.task]
            own = owner[ry, rx] == tiles.index((it.y, it.x))
            fill.mean[:, ry, rx] = torch.where(own, cube.denormalise(mean[pick]), fill.mean[:, ry, rx])
            if std is None:
                continue
            fill.std[:, ry, rx] = torch.where(own, cube.spread(std[pick]), fill.std[:, ry, rx])
            scored = tasks[it.task].scored[ry, rx] & own
            if bool(scored.any()):
                truth = truths[it.task][None, :, ry, rx]
                smp = cube.denormalise(draws[(slice(None), *pick)])  # (K, C, P, P)
                n = int(scored.sum()) * C
                for a, share in interval_coverage(smp[:, None], truth, scored[None], levels).items():
                    fill.inside[a] += share * n
                if spread_factor != 1:
                    smp = cube.denormalise(raw[(slice(None), *pick)])
                    for a, share in interval_coverage(smp[:, None], truth, scored[None], levels).items():
                        fill.inside_raw[a] = fill.inside_raw.get(a, 0.0) + share * n
                fill.counted += n
    return fills


# --------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------


def score(cube: Cube, tasks: Sequence[Task], fills: Sequence[Fill], truths: Sequence[torch.Tensor] | None = None,
          bins: int = 10) -> dict[str, Any]:
    """The metrics of one (method, protocol, cube, seed) over the scored pixels of all its tasks.

    Outside the scored pixels the prediction is the truth (the SSIM windows see the same context for every
    method)."""
    truths = list(truths) if truths is not None else [task_truth(cube, t) for t in tasks]
    truth = torch.stack(truths)
    mask = torch.stack([t.scored for t in tasks])
    pred = torch.where(mask.unsqueeze(1), torch.stack([f.mean for f in fills]), truth)
    row: dict[str, Any] = dict(inpainting_errors(pred, truth, mask))
    row["rmse_per_band"] = dict(zip(cube.bands, per_band_rmse(pred, truth, mask)))
    row["scored_pixels"] = int(mask.sum())
    if fills and fills[0].std is not None:
        counted = sum(f.counted for f in fills)
        row["coverage"] = {f"{a:g}": sum(f.inside[a] for f in fills) / counted for a in fills[0].inside}
        if any(f.inside_raw for f in fills):
            row["coverage_raw"] = {f"{a:g}": sum(f.inside_raw.get(a, 0.0) for f in fills) / counted
                                   for a in fills[0].inside}
        std = torch.stack([f.std for f in fills])
        row["error_vs_spread"] = error_vs_spread(pred, std, truth, mask, bins=bins)
        row["mean_std"] = float(std[mask.unsqueeze(1).expand_as(std)].mean())
    return row


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(u) for u in v]
    return v


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean ± sd over seeds per (cube, protocol, method): the metrics of :data:`KEYS`, the coverage at each
    level, and for the HVAE methods the PSNR margin over ``interpolation`` (the difference of the two on the same
    seed, cube and protocol, then mean ± sd over the seeds that have both). Entries come in the order of the
    cubes in ``rows``, then protocol and method order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cube"], r["protocol"], r["method"]), []).append(r)
    reference = {(r["cube"], r["protocol"], r["seed"]): r for r in rows if r["method"] == "interpolation"}

    def mean_sd(vals: list[float]) -> tuple[float, float]:
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    out = []
    cubes = {c: i for i, c in enumerate(dict.fromkeys(r["cube"] for r in rows))}
    protocols = {p: i for i, p in enumerate(PROTOCOLS)}
    methods = {m: i for i, m in enumerate(METHODS)}

    def order(key: tuple) -> tuple:
        return cubes[key[0]], protocols.get(key[1], 99), key[1], methods.get(key[2], 99), key[2]

    for (cube, protocol, method), rs in sorted(groups.items(), key=lambda kv: order(kv[0])):
        entry: dict[str, Any] = {"cube": cube, "protocol": protocol, "method": method, "seeds": len(rs)}
        pixels = [r["scored_pixels"] for r in rs if r.get("scored_pixels") is not None]
        dates = [len(r["targets"]) for r in rs if r.get("targets") is not None]
        if pixels:
            entry["scored_pixels"] = statistics.fmean(pixels)
        if dates:
            entry["dates"] = statistics.fmean(dates)
        for k in KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                entry[k], entry[f"{k}_sd"] = mean_sd(vals)
        for cov in ("coverage", "coverage_raw"):
            levels = sorted({a for r in rs for a in (r.get(cov) or {})}, key=float)
            if levels:
                entry[cov] = {}
                entry[f"{cov}_sd"] = {}
                for a in levels:
                    vals = [r[cov][a] for r in rs if (r.get(cov) or {}).get(a) is not None]
                    entry[cov][a], entry[f"{cov}_sd"][a] = mean_sd(vals)
        factors = [r["spread_factor"] for r in rs if r.get("spread_factor") is not None]
        if factors:
            entry["spread_factor"], entry["spread_factor_sd"] = mean_sd(factors)
        if method != "interpolation":
            margins = [r["psnr"] - reference[(cube, protocol, r["seed"])]["psnr"] for r in rs
                       if (cube, protocol, r["seed"]) in reference and r.get("psnr") is not None
                       and reference[(cube, protocol, r["seed"])].get("psnr") is not None]
            if margins:
                entry["psnr_margin"], entry["psnr_margin_sd"] = mean_sd(margins)
        out.append(entry)
    return out


def table(summary: Sequence[dict]) -> str:
    """The summary as a plain-text table."""
    head = f"{'cube':<28} {'protocol':<9} {'method':<16} {'PSNR dB':>14} {'MAE':>15} {'RMSE':>8} {'SSIM':>6} " \
           f"{'SAM deg':>7} {'cov80':>6} {'cov90':>6} {'dPSNR':>13}"
    lines = [head, "-" * len(head)]
    for e in summary:
        def pm(k, fmt):
            return f"{e[k]:{fmt}} ± {e.get(k + '_sd', 0):{fmt.lstrip('+')}}" if e.get(k) is not None else "-"  # noqa: B023 - called only in this iteration
        cov = e.get("coverage") or {}
        c80 = f"{cov['0.8']:.3f}" if "0.8" in cov else "-"
        c90 = f"{cov['0.9']:.3f}" if "0.9" in cov else "-"
        lines.append(
            f"{cube_label(e['cube'])[:28]:<28} {e['protocol']:<9} {e['method']:<16} {pm('psnr', '.2f'):>14} "
            f"{pm('mae', '.4f'):>15} {e.get('rmse', float('nan')):8.4f} {e.get('ssim', float('nan')):6.3f} "
            f"{e.get('spectral_angle_deg', float('nan')):7.2f} {c80:>6} {c90:>6} {pm('psnr_margin', '+.2f'):>13}"
            + (f"  spread x{pm('spread_factor', '.3f')}, unscaled cov90 {e['coverage_raw']['0.9']:.3f}"
               if e.get("spread_factor") is not None and "0.9" in (e.get("coverage_raw") or {}) else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# figure (matplotlib on an Agg canvas; no pyplot)
# --------------------------------------------------------------------------------------------------

COLORS = {"interpolation": "tab:orange", "window-interpolation": "silver", "window-transfer": "tab:brown",
          "single-date": "tab:blue", "temporal": "tab:green",
          "temporal+labels": "tab:purple"}


def figure(summary: Sequence[dict], title: str = ""):
    """One row of panels per (cube, protocol): PSNR and MAE bars per method with error bars (sd over seeds), and
    a reliability diagram of the HVAE methods (observed against nominal coverage of the central sample
    intervals, the diagonal for reference). Returns a :class:`matplotlib.figure.Figure` on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys((e["cube"], e["protocol"]) for e in summary))
    n = max(1, len(groups))
    fig = Figure(figsize=(13.0, 1.0 + 3.3 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    handles = {}
    for i, (cube, protocol) in enumerate(groups):
        es = [e for e in summary if e["cube"] == cube and e["protocol"] == protocol]
        name = f"{cube_label(cube)}, {protocol}"
        counts = next(({k: e[k] for k in ("dates", "scored_pixels") if k in e} for e in es), {})
        detail = (f" ({counts['dates']:.0f} dates, {counts['scored_pixels']:.0f} px)"
                  if {"dates", "scored_pixels"} <= set(counts) else "")
        for j, (key, label) in enumerate((("psnr", "PSNR (dB, higher is better)"),
                                          ("mae", "MAE (reflectance, lower is better)"))):
            ax = axes[i][j]
            vals = [(e["method"], e.get(key), e.get(f"{key}_sd") or 0.0) for e in es if e.get(key) is not None]
            pos = range(len(vals))
            bars = ax.bar(pos, [v for _, v, _ in vals], yerr=[s for _, _, s in vals], capsize=4,
                          color=[COLORS.get(m, "grey") for m, _, _ in vals], edgecolor="black", linewidth=0.5)
            for m, bar in zip((m for m, _, _ in vals), bars):
                handles.setdefault(m, bar)
            for p, (_, v, _) in zip(pos, vals):
                ax.annotate(f"{v:.2f}" if key == "psnr" else f"{v:.4f}", (p, v), xytext=(0, 3),
                            textcoords="offset points", ha="center", va="bottom", fontsize=8)
            if key == "psnr" and vals:
                lo = min(v - s for _, v, s in vals)
                hi = max(v + s for _, v, s in vals)
                ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo) - 1), hi + 0.15 * (hi - lo) + 0.5)
            elif vals:
                ax.set_ylim(0, max(v + s for _, v, s in vals) * 1.18)
            ax.set_xticks(list(pos), [m for m, _, _ in vals], fontsize=8, rotation=20, ha="right")
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(name + detail, fontsize=10)
            ax.grid(True, axis="y", alpha=0.3)
        ax = axes[i][2]
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.text(0.97, 0.93, "calibrated", rotation=45, ha="right", va="top", fontsize=8, color="grey",
                transform_rotates_text=True, rotation_mode="anchor")
        drawn = False
        for e in es:
            cov = e.get("coverage") or {}
            if not cov:
                continue
            lv = sorted(cov, key=float)
            sd = e.get("coverage_sd") or {}
            h = ax.errorbar([float(a) for a in lv], [cov[a] for a in lv], yerr=[sd.get(a, 0.0) for a in lv],
                            marker="o", markersize=4, capsize=3, color=COLORS.get(e["method"], "grey"))
            handles.setdefault(e["method"], h)
            raw = e.get("coverage_raw") or {}
            if raw:  # --recalibrate: the unscaled samples, dashed
                ax.plot([float(a) for a in lv], [raw[a] for a in lv], linestyle="--", marker="x", markersize=4,
                        linewidth=1, color=COLORS.get(e["method"], "grey"))
                ax.text(0.42, 0.95, f"dashed: before the spread factor (x{e.get('spread_factor', 1.0):.2f})",
                        fontsize=7, va="top", color=COLORS.get(e["method"], "grey"))
            drawn = True
        ax.set_xlim(0.4, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("nominal coverage of the central interval", fontsize=9)
        ax.set_ylabel("observed coverage", fontsize=9)
        ax.set_title(f"{name}: calibration", fontsize=10)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.7, 0.5, "no posterior samples", ha="center", va="center", fontsize=9, color="grey")
    if not groups:
        axes[0][0].text(0.5, 0.5, "no rows", ha="center", va="center", transform=axes[0][0].transAxes)
    if handles:
        ms = [m for m in METHODS if m in handles] + [m for m in handles if m not in METHODS]
        fig.legend([handles[m] for m in ms], ms, loc="outside lower center", ncol=len(ms), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_report(report: dict, png: str | os.PathLike) -> Path:
    """Draw the figure of a report (the JSON this script writes) into ``png`` (the summary from its rows when
    it has them)."""
    summary = summarise(report["rows"]) if report.get("rows") else report["summary"]
    fig = figure(summary, title=report.get("title", ""))
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


def _slug(cube: str) -> str:
    name = Path(cube).name.removesuffix(".zarr") if cube.endswith(".zarr") else cube
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _data_key(data: str) -> str:
    return data if data.startswith("synthetic:") else str(Path(data).resolve())


def default_block(cube: Cube) -> int:
    """128 for cubes of at least 512 pixels a side, else 32 (the 64 x 64 WorldCereal site, synthetic:tiny)."""
    return 128 if min(cube.shape[-2:]) >= 512 else 32


def train_config(args: argparse.Namespace, cube: Cube, dates: int, seed: int):
    """The :class:`~hvaeseg.experiment.RunConfig` of a run trained by ``--train``."""
    from hvaeseg.experiment import RunConfig

    from compare import all_locations

    block = args.block or default_block(cube)
    probe = RunConfig(method="symmetric", data=cube.data, labels=1, patch_size=args.patch_size, dates=dates,
                      block=block)
    labels = min(args.labels, all_locations(probe))
    return RunConfig(
        method="symmetric", data=cube.data, labels=labels, steps=getattr(args, "steps", None) or UNBOUNDED_STEPS,
        seed=seed, data_seed=0,
        batch_size=8, patch_size=args.patch_size, dates=dates, block=block, val_every=50, checkpoint_every=50,
        time_budget_s=args.budget, options=dict(getattr(args, "options", None) or {}),
    )


def trained_run(config, folder: Path) -> Path:
    """``folder`` with ``config`` trained: reused when it holds that run finished, else trained afresh."""
    from hvaeseg.experiment import RunConfig, train_run

    done = folder / DONE_FILE
    if done.exists() and (folder / "config.json").exists() and not RunConfig.load(folder).differences(config):
        print(f"reusing {folder}", file=sys.stderr)
        return folder
    length = f"{config.time_budget_s:g} s" if config.steps == UNBOUNDED_STEPS else f"{config.steps} steps"
    print(f"training {folder} ({length})", file=sys.stderr)
    trainer = train_run(config, folder, resume=False)
    info = {"steps": trainer.step, "train_seconds": trainer.history.train_seconds,
            "best_step": trainer.history.best_step}
    done.write_text(json.dumps(info))
    print(f"  {json.dumps(info)}", file=sys.stderr)
    return folder


def match_runs(paths: Sequence[str], cubes: Sequence[Cube], kind: str) -> dict[str, dict[int, Path]]:
    """Run folders given on the command line, by cube name and training seed.

    :param kind: ``single`` (``dates == 1``) or ``temporal`` (``dates > 1``).
    :raises ValueError: for a folder that is not a run of that kind on one of ``cubes``.
    """
    from hvaeseg.experiment import RunConfig

    by_key = {_data_key(c.data): c for c in cubes}
    out: dict[str, dict[int, Path]] = {}
    for p in paths:
        config = RunConfig.load(p)
        cube = by_key.get(_data_key(config.data))
        if cube is None:
            raise ValueError(f"run {p} was trained on {config.data}, which is none of --cubes "
                             f"({', '.join(c.data for c in cubes)})")
        if (config.dates > 1) != (kind == "temporal"):
            raise ValueError(f"run {p} has dates={config.dates}: expected a {kind} run "
                             f"({'dates > 1' if kind == 'temporal' else 'dates=1'})")
        if config.data.startswith("synthetic:") and config.data_seed != 0:
            raise ValueError(f"run {p} was trained on {config.data} with data_seed {config.data_seed}; this "
                             "benchmark generates synthetic cubes with data seed 0")
        runs = out.setdefault(cube.name, {})
        if config.seed in runs:
            raise ValueError(f"runs {runs[config.seed]} and {p} are both {kind} runs on {cube.name} with seed "
                             f"{config.seed}")
        runs[config.seed] = Path(p)
    return out


def pick_run(runs: dict[int, Path], seed: int) -> Path | None:
    """The run of ``seed``, or the one run given for the cube (it then serves every seed)."""
    if seed in runs:
        return runs[seed]
    if len(runs) == 1:
        return next(iter(runs.values()))
    return None


def load_hvae(folder: Path, checkpoint: str = "best") -> tuple[Any, Any]:
    """``(config, hvae)`` of a run folder: its ``best.pt`` (chosen on the validation segmentation) or, with
    ``checkpoint="last"``, its ``checkpoint.pt`` (the last step trained)."""
    from hvaeseg.experiment import load_run
    from hvaeseg.train import BEST, CHECKPOINT

    config, _, method = load_run(folder, checkpoint={"best": BEST, "last": CHECKPOINT}[checkpoint])
    hvae = getattr(method, "hvae", None)
    if hvae is None:
        raise ValueError(f"run {folder} is a {config.method} run, not an HVAE: expected symmetric or elbo")
    return config, hvae


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def spread_calibration(hvae: Any, cube: Cube, tasks: Sequence[Task], *, seed: int, patch: int, dates: int,
                       args: argparse.Namespace) -> dict[str, Any]:
    """``--recalibrate``: the spread factor of ``hvae`` fitted by :func:`hvaeseg.calibrate_cube.cube_spread_factor`
    (what ``hvaeseg inpaint --recalibrate`` does) at :data:`CALIBRATION_LEVEL` on values the protocol does not
    score: the dates with at least :data:`TARGET_MIN_VALID` valid pixels (those the pasted protocol targets) each
    take the mask of the dates whose valid share the protocol takes its masks from (pasted: :data:`DONOR_VALID`;
    occluded: the partly cloudy dates, :data:`PARTLY`), and the pixels the tasks score on a date are hidden there
    and never used. ``--calibration-tiles`` items, drawn by ``seed`` + :data:`CALIBRATION_SEED_OFFSET`, and
    ``--calibration-samples`` samples each. Returns the row's calibration fields."""
    from hvaeseg.calibrate_cube import cube_spread_factor

    hide = torch.zeros_like(cube.valid)
    for task in tasks:
        hide[task.target] |= task.scored
    cal = cube_spread_factor(
        cube.source, hvae=hvae, patch_size=patch, dates=dates, window=args.window,
        num_samples=args.calibration_samples, max_tiles=args.calibration_tiles, batch_size=args.inference_batch,
        level=CALIBRATION_LEVEL, seed=seed + CALIBRATION_SEED_OFFSET, stats=(cube.mean.tolist(), cube.std.tolist()),
        min_target=TARGET_MIN_VALID, donor_range=DONOR_VALID if tasks[0].protocol == "pasted" else PARTLY,
        hide=hide.numpy())
    return {"spread_factor": cal.factor, "calibration_values": cal.values, "calibration_tiles": cal.tiles,
            "calibration_coverage_raw": cal.coverage_before}


def evaluate(cube: Cube, protocol: str, seed: int, methods: Sequence[str], hvaes: dict[str, tuple[Any, Path, Any]],
             args: argparse.Namespace, notes: list[str]) -> list[dict]:
    """The rows of one (cube, protocol, seed): one per method.

    :param hvaes: ``{"single" | "temporal": (hvae, run folder, RunConfig)}`` for the HVAE methods.
    """
    import pyro

    tasks, note = protocol_tasks(cube, protocol, seed)
    if note:
        if note not in notes:
            notes.append(note)
            print(note, file=sys.stderr)
        return []
    truths = [task_truth(cube, t) for t in tasks]
    rows = []
    factors: dict[str, dict[str, Any]] = {}  # --recalibrate: each run kind's fitted factor
    for method in methods:
        if method == "temporal+labels" and cube.labels is None:
            msg = f"{cube.name}: temporal+labels skipped: the cube has no label map"
            if msg not in notes:
                notes.append(msg)
            continue
        t0 = time.perf_counter()
        run, tile, recal = None, None, {}
        H, W = cube.valid.shape[-2:]
        if method == "interpolation":
            fills = interpolation_fills(cube, tasks)
        elif method in ("window-interpolation", "window-transfer"):
            transfer = args.transfer if method == "window-transfer" else None
            tile = args.inference_patch or posterior_tile(args.patch_size, transfer, H, W)  # as its model's
            fills = hvae_fills(None, cube, tasks, patch=tile, dates=args.dates, window=args.window,
                               calibration_samples=0, batch_size=args.inference_batch, truths=truths,
                               transfer=transfer)
        else:
            hvae, run, config = hvaes[HVAE_METHODS[method]]
            pyro.set_rng_seed(seed)
            tile = args.inference_patch or posterior_tile(config.patch_size, hvae.spec.image.transfer, H, W)
            if args.recalibrate and HVAE_METHODS[method] not in factors:  # one factor per run (with labels too)
                factors[HVAE_METHODS[method]] = spread_calibration(hvae, cube, tasks, seed=seed, patch=tile,
                                                                   dates=config.dates, args=args)
            recal = factors.get(HVAE_METHODS[method], {})
            fills = hvae_fills(hvae, cube, tasks, patch=tile, dates=config.dates, window=args.window,
                               labels=method == "temporal+labels", samples=args.samples,
                               calibration_samples=args.calibration_samples, batch_size=args.inference_batch,
                               truths=truths, spread_factor=recal.get("spread_factor", 1.0))
        row = {"cube": cube.name, "protocol": protocol, "method": method, "seed": seed,
               **score(cube, tasks, fills, truths),
               **({"inference_patch": tile} if tile is not None else {}),
               "targets": [cube.times[t.target] for t in tasks],
               **({"donors": [cube.times[t.donor] for t in tasks]} if protocol == "pasted" else {}),
               "seconds": time.perf_counter() - t0}
        if run is not None:
            row.update(run=str(run), run_seed=config.seed, **recal)
        rows.append(_clean(row))
        print(f"{cube.name:<24} {protocol:<9} seed {seed} {method:<16} PSNR {row['psnr']:6.2f}  MAE "
              f"{row['mae']:.4f}  ({len(tasks)} dates, {row['scored_pixels']} px, {row['seconds']:.1f} s)",
              file=sys.stderr)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cubes", nargs="+", default=["synthetic:small"], metavar="CUBE",
                   help="synthetic:PRESET, a scene of bench/data or a cube store path (default synthetic:small)")
    p.add_argument("--cube-cache", default="runs/cubes", help="where bench scenes are ingested (once)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="seeds of the pasted masks and of the trained runs")
    p.add_argument("--single-run", nargs="+", default=[], metavar="RUN", help="single-date HVAE run folders")
    p.add_argument("--temporal-run", nargs="+", default=[], metavar="RUN", help="temporal HVAE run folders")
    p.add_argument("--train", action="store_true", help="train the runs that are not given (kept under --out)")
    p.add_argument("--budget", type=float, default=240.0, help="training seconds per run (--train)")
    p.add_argument("--steps", type=int, default=None,
                   help="--train: train every run for this many steps (equal steps, immune to machine load), "
                        "--budget seconds at most")
    p.add_argument("--dates", type=int, default=4, help="T of the temporal runs (--train)")
    p.add_argument("--labels", type=int, default=10, help="labelled locations of the trained runs (capped)")
    p.add_argument("--options", type=json.loads, default={}, metavar="JSON",
                   help='symmetric-learning options of the trained runs, e.g. \'{"shared_channels": 16}\' '
                   "(hvaeseg.methods.HVAEConfig; a folder trained with other options is trained again: use "
                   "another --out)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which state of each run fills: best.pt (chosen on the validation segmentation) or the "
                        "last step trained (checkpoint.pt)")
    p.add_argument("--patch-size", type=int, default=32, help="patch side of the trained runs and of the window-* "
                   "baselines' tiles")
    p.add_argument("--inference-patch", type=int, default=None,
                   help="tile side at which the models and window-* baselines fill (default: "
                        "hvaeseg.inpaint_cube.posterior_tile, as hvaeseg inpaint: each run's patch size, --patch-size "
                        "for the baselines, at least 4 x the transfer radius with a transfer)")
    p.add_argument("--block", type=int, default=None,
                   help="split block of the trained runs (default: 128 for cubes >= 512 px a side, else 32)")
    p.add_argument("--window", choices=WINDOWS, default="nearest",
                   help="the other dates of a temporal stack: the nearest half-clear dates of the target (nearest) "
                   "or the clearest date of each part of the season (season); hvaeseg.inpaint_cube.window_dates")
    p.add_argument("--transfer", type=json.loads, default={}, metavar="JSON",
                   help='window-transfer\'s settings (hvaeseg.hierarchy.spec.TransferSpec), e.g. \'{"radius": 16, '
                        '"stride": 2, "bandwidth": 0.2}\' (default: its defaults)')
    p.add_argument("--samples", type=int, default=16, help="posterior samples of the mean (decoder_mean=True)")
    p.add_argument("--calibration-samples", type=int, default=32,
                   help="samples of x for the spread and the calibration (0: none)")
    p.add_argument("--recalibrate", action="store_true",
                   help="scale each HVAE method's samples about their mean by a spread factor fitted to cover 90%% "
                        "of clear values hidden on purpose where the protocol scores nothing "
                        "(hvaeseg.calibrate_cube, as hvaeseg inpaint --recalibrate); the rows keep the unscaled "
                        "coverage as coverage_raw")
    p.add_argument("--calibration-tiles", type=int, default=64,
                   help="--recalibrate: (date, mask, tile) items that fit the factor (default 64)")
    p.add_argument("--inference-batch", type=int, default=32, help="tiles per posterior_inpaint call")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="runs/inpaint", help="folder of the trained runs")
    p.add_argument("--json", default="bench/results/inpaint.json")
    p.add_argument("--png", default="bench/results/inpaint.png")
    p.add_argument("--plot-only", action="store_true", help="redraw --png from --json")
    args = p.parse_args(argv)
    if not isinstance(args.options, dict):
        p.error(f"--options: expected a JSON object, got {args.options!r}")
    try:
        from hvaeseg.methods.registry import method_config

        method_config("symmetric", args.options)
    except (TypeError, ValueError) as err:
        p.error(f"--options: {err}")
    try:
        args.transfer = TransferSpec(**args.transfer)
    except (TypeError, ValueError) as err:
        p.error(f"--transfer: {err}")
    if args.dates < 2:
        p.error(f"--dates: expected T >= 2 dates per temporal stack, got {args.dates}")
    if args.inference_patch is not None and args.inference_patch < 1:
        p.error(f"--inference-patch: expected a positive tile side, got {args.inference_patch}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: expected a positive number of steps, got {args.steps}")
    if not args.budget > 0:
        p.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    if args.samples < 1 or args.calibration_samples < 0:
        p.error("--samples must be >= 1 and --calibration-samples >= 0")
    if args.recalibrate and args.calibration_samples < 2:
        p.error("--recalibrate fits the spread of the calibration samples: give --calibration-samples >= 2 "
                "(e.g. 32)")
    if args.calibration_tiles < 1:
        p.error(f"--calibration-tiles: expected a positive number of tiles, got {args.calibration_tiles}")
    if len(set(args.cubes)) != len(args.cubes):
        p.error(f"--cubes repeats a cube: {args.cubes}")
    for c in args.cubes:
        try:
            check_cube_spec(c)
        except ValueError as err:
            p.error(str(err))
    args.parser = p
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    p = args.parser
    if args.plot_only:
        report = json.loads(Path(args.json).read_text())
        print(f"figure: {plot_report(report, args.png)}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HVAESEG_NO_PROGRESS", "1")
    cubes = [load_cube(c, args.cube_cache) for c in args.cubes]
    kinds = {HVAE_METHODS[m] for m in args.methods if m in HVAE_METHODS}
    try:
        given = {"single": match_runs(args.single_run, cubes, "single"),
                 "temporal": match_runs(args.temporal_run, cubes, "temporal")}
    except (ValueError, FileNotFoundError) as err:
        p.error(str(err))
    # every run needed, before any evaluation: a missing one is an error unless --train
    plan: dict[tuple[str, str, int], tuple[Path, bool]] = {}
    for cube in cubes:
        for kind in sorted(kinds):
            for seed in args.seeds:
                run = pick_run(given[kind].get(cube.name, {}), seed)
                if run is not None:
                    plan[(cube.name, kind, seed)] = (run, False)
                elif args.train:
                    name = "single" if kind == "single" else f"temporal-T{args.dates}"
                    plan[(cube.name, kind, seed)] = (Path(args.out) / _slug(cube.name) / f"{name}-seed{seed}", True)
                else:
                    p.error(f"no {kind} HVAE run for {cube.name} (seed {seed}): give --{kind}-run RUN or --train")
    rows: list[dict] = []
    notes: list[str] = []
    for cube in cubes:
        print(f"{cube.name}: {cube.shape[0]} dates, {cube.shape[1]} bands, {cube.shape[2]} x {cube.shape[3]}",
              file=sys.stderr)
        for seed in args.seeds:
            hvaes = {}
            for kind in sorted(kinds):
                folder, train = plan[(cube.name, kind, seed)]
                if train:
                    trained_run(train_config(args, cube, 1 if kind == "single" else args.dates, seed), folder)
                config, hvae = load_hvae(folder, args.checkpoint)
                hvaes[kind] = (hvae, folder, config)
            for protocol in args.protocols:
                rows.extend(evaluate(cube, protocol, seed, args.methods, hvaes, args, notes))
    summary = summarise(rows)
    report = {
        "title": (f"Inpainting, protocols {' + '.join(args.protocols)}: mean ± sd over {len(args.seeds)} seed(s); "
                  f"HVAE: posterior mean of {args.samples} decoder means, spread and calibration from "
                  f"{args.calibration_samples} samples of x, {args.checkpoint} checkpoint"),
        "protocols": {k: v for k, v in PROTOCOLS.items() if k in args.protocols},
        "cubes": [{"cube": c.name, "label": cube_label(c.name), "data": c.data, "shape": list(c.shape),
                   "bands": c.bands, "band_mean": c.mean.tolist(), "band_std": c.std.tolist()} for c in cubes],
        "methods": args.methods, "seeds": args.seeds, "samples": args.samples, "window": args.window,
        "calibration_samples": args.calibration_samples, "levels": list(LEVELS),
        "recalibrate": {"level": CALIBRATION_LEVEL, "tiles": args.calibration_tiles} if args.recalibrate else None,
        "train": {"budget_s": args.budget, "steps": args.steps, "dates": args.dates, "labels": args.labels,
                  "patch_size": args.patch_size,
                  "block": args.block, "options": args.options} if args.train else None,
        "threads": torch.get_num_threads(), "notes": notes, "rows": rows, "summary": summary,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_clean(report), indent=1, allow_nan=False))
    os.replace(tmp, path)
    png = plot_report(report, args.png)
    for k in args.protocols:
        print(f"{k}: {PROTOCOLS[k]}")
    for n in notes:
        print(f"note: {n}")
    print(table(summary))
    print(f"rows and summary: {path}; figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
