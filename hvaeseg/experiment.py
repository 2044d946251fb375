"""A run, end to end: data -> split and plans -> method -> training -> evaluation -> prediction.

This is what ``hvaeseg train / evaluate / predict`` call. A run folder holds everything needed to repeat or
continue it (a rerun with a larger ``steps`` or ``time_budget_s`` trains it on: :func:`train_run`):

``config.json``      the :class:`~hvaeseg.run_config.RunConfig` (validated dataclass; the cube's absolute path)
``plan_train.json``  the training plan (labelled locations and unlabelled patches), ``plan_eval.json`` the
                     validation/test tiles (:class:`~hvaeseg.data.sampler.PatchPlan`, exact JSON)
``checkpoint.pt``    the latest state, ``best.pt`` the state with the best validation mean IoU
``history.json``     losses and validation metrics; ``metrics.json`` the evaluation

A fitted method (:class:`~hvaeseg.methods.FittedMethod`: ``pixel-gbm``) is not trained by the loop: it is fitted
once on every labelled training patch, choosing its size on the validation tiles, and the same files are written
(``best.pt`` and ``checkpoint.pt`` then hold the one fitted state, ``history.json`` its validation curve).

Protocol (docs/protocols.md): a fixed spatial split and labelled subset drawn by ``data_seed`` (the same for
every method and every training seed), the checkpoint chosen on validation, the test split reported once.
Labelled locations are ``patch_size`` tiles of the training blocks; every date of a labelled location on which
at least ``min_valid`` of its pixels are clear is a labelled patch (labels are time-invariant: the sampler's
``labelled_dates="every"``, :mod:`hvaeseg.data.sampler`); a temporal run draws one stack per labelled location.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from hvaeseg._progress import progress
from hvaeseg.data.loader import PatchLoader
from hvaeseg.data.sampler import PatchPlan, PatchSampler, SpatialSplit
from hvaeseg.data.schema import class_names
from hvaeseg.data.store import open_cube
from hvaeseg.distributed import DistributedContext, barrier
from hvaeseg.methods.base import FittedMethod, Method, SegmentationMethod
from hvaeseg.nets.precision import bf16_supported, prepare_modules
from hvaeseg.objectives.pool import LabelPool
from hvaeseg.run_config import (
    EXTENDABLE,
    SYNTHETIC_PREFIX,
    LoaderOptions,
    RunConfig,
    default,
    describe,
    flag,
    locate_data,
)
from hvaeseg.train import (
    BEST,
    CHECKPOINT,
    History,
    LoopConfig,
    Trainer,
    atomic_save,
    evaluate_segmentation,
    load_checkpoint,
    step_seed,
)

# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


def open_data(data: str, data_seed: int = 0) -> xr.Dataset | str:
    """The cube behind ``data``: ``synthetic:PRESET`` is generated in memory (seeded by ``data_seed``); a path or
    URL is returned as is, for the loader to stream chunk by chunk (it is validated on opening)."""
    if data.startswith(SYNTHETIC_PREFIX):
        from hvaeseg.data.synthetic import make_cube

        preset = data[len(SYNTHETIC_PREFIX):]
        if preset == "large":
            raise ValueError("synthetic:large does not fit in memory: write it with `hvaeseg data synth` and "
                             "pass the store path")
        return make_cube(preset, seed=data_seed)
    open_cube(data)  # validates, with a clear error, before any training starts
    return data


def _dataset(cube: xr.Dataset | str) -> xr.Dataset:
    return cube if isinstance(cube, xr.Dataset) else open_cube(cube, validate=False)


@dataclass
class RunData:
    """The cube and the plans of a run."""

    cube: xr.Dataset | str
    train_plan: PatchPlan
    eval_plan: PatchPlan
    num_classes: int
    num_bands: int
    class_names: list[str]
    band_names: list[str] = field(default_factory=list)

    def band_stats(self) -> tuple[list[float], list[float]]:
        """``(band_mean, band_std)`` the loader normalises with: the cube's stored statistics, computed (and
        stored, where the store is writable) if missing, as :class:`PatchLoader` does."""
        from hvaeseg.data.stats import compute_band_stats, ensure_band_stats, read_band_stats

        stats = read_band_stats(self.cube)
        if stats is not None:
            return stats
        try:
            return ensure_band_stats(self.cube)
        except (PermissionError, OSError):
            return compute_band_stats(self.cube)


def prepare_data(config: RunConfig, plans_from: str | os.PathLike | None = None) -> RunData:
    """Open the cube and draw the plans (everything seeded by ``config.data_seed``).

    :param plans_from: a run folder whose saved plans (``plan_train.json``, ``plan_eval.json``) are used
        instead of drawing them again (evaluation and prediction of a finished run).
    """
    cube = open_data(config.data, config.data_seed)
    ds = _dataset(cube)
    if "labels" not in ds:
        raise ValueError(f"{config.data} has no `labels` variable: training and evaluation need a label map")
    names = class_names(ds)
    saved = None if plans_from is None else [Path(plans_from) / f for f in ("plan_train.json", "plan_eval.json")]
    if saved is not None and all(p.exists() for p in saved):
        train, evaluation = (PatchPlan.load(p) for p in saved)
    else:
        train, evaluation = _draw_plans(config, cube, ds)
    bands = [str(b) for b in ds["band"].values] if "band" in ds.coords else []
    return RunData(cube, train, evaluation, len(names), int(ds.sizes["band"]), names, bands)


def _draw_plans(config: RunConfig, cube: xr.Dataset | str, ds: xr.Dataset) -> tuple[PatchPlan, PatchPlan]:
    shape = _shape(ds)
    check_sizes(shape, config)
    split = _split(config.block, config.fractions, config.data_seed)
    sampler = PatchSampler(
        config.sizes, mode="random", n_patches={"train": config.unlabelled_patches}, split=split,
        n_labelled=config.labels, labelled_dates="every" if config.dates == 1 else "draw",
        min_valid=config.min_valid, splits=("train",), seed=config.data_seed,
    )
    if config.labels:
        have = len(sampler.labelled_candidates(cube))
        if have < config.labels and "image_y" in shape:
            raise ValueError(
                f"--labels {config.labels} is more than the training images of the mosaic hold: {have} images with "
                f"labelled pixels (labels count whole images): pass --labels {have} or fewer"
            )
        if have < config.labels:
            raise ValueError(
                f"--labels {config.labels} is more than the training blocks hold: {have} locations "
                f"({config.patch_size}x{config.patch_size} tiles with labelled pixels, --block {config.block}): pass "
                f"--labels {have} or fewer, or a smaller --patch-size"
            )
    train = sampler.plan(cube)
    evaluation = PatchSampler(
        config.sizes, mode="grid", split=split, splits=("val", "test"), min_valid=config.min_valid,
        grid_remainder="shift", seed=config.data_seed,
    ).plan(cube)
    return train, evaluation


# --------------------------------------------------------------------------------------------------
# patch and block sizes that fit a cube
# --------------------------------------------------------------------------------------------------


def _split(block: int, fractions: Sequence[float], data_seed: int) -> SpatialSplit:
    return SpatialSplit(block={"y": block, "x": block}, fractions=dict(zip(("train", "val", "test"), fractions)),
                        seed=data_seed)


def cube_shape(data: str) -> dict[str, int]:
    """``{"time": T, "y": Y, "x": X}`` of the cube behind ``data``, without generating a synthetic one (its
    preset says its size) nor reading a store's arrays; for a mosaic of camera images
    (:mod:`hvaeseg.data.mosaic`) also ``"image_y": H, "image_x": W``, the size of its images (the split's blocks)."""
    if data.startswith(SYNTHETIC_PREFIX):
        from hvaeseg.data.synthetic.config import resolve_config

        cfg = resolve_config(data[len(SYNTHETIC_PREFIX):])
        return {"time": int(cfg.n_dates), "y": int(cfg.size[0]), "x": int(cfg.size[1])}
    return _shape(open_cube(data))


def _shape(ds: xr.Dataset) -> dict[str, int]:
    """The shape :func:`cube_shape` describes, of an open cube."""
    from hvaeseg.data.mosaic import MosaicLayout

    shape = {k: int(ds.sizes[k]) for k in ("time", "y", "x")}
    layout = MosaicLayout.from_cube(ds)
    if layout is not None:
        shape.update(image_y=layout.image_size[0], image_x=layout.image_size[1])
    return shape


def _problem(shape: dict[str, int], patch: int, block: int, labels: int, fractions: Sequence[float],
             data_seed: int) -> tuple[str, int] | None:
    """Why ``patch`` and ``block`` do not fit a cube of ``shape``: ``("patch", 0)``, ``("splits", blocks)`` (a
    split with a positive share gets no block that holds a patch) or ``("labels", locations)`` (the training
    blocks hold fewer than ``labels`` patch tiles); None when they fit. Geometry only: labelled pixels are
    counted when the plans are drawn. A mosaic of images (``image_y``, ``image_x`` in ``shape``) is split image by
    image, not in blocks: only the patch must fit in an image (the images per split are counted with the
    plans)."""
    if "image_y" in shape:
        return ("patch", 0) if patch > min(shape["image_y"], shape["image_x"]) else None
    if patch > min(shape["y"], shape["x"]):
        return "patch", 0
    split = _split(block, fractions, data_seed)
    ny, nx = split.grid(shape)
    try:
        split.assignment(shape)
    except ValueError:
        return "splits", ny * nx
    tiles = {}
    for name, share in zip(("train", "val", "test"), fractions):
        if share > 0:
            tiles[name] = sum(((y1 - y0) // patch) * ((x1 - x0) // patch)
                              for y0, y1, x0, x1 in split.blocks(shape, name))
    if not all(tiles.values()):
        return "splits", ny * nx
    if tiles.get("train", 0) < labels:
        return "labels", tiles.get("train", 0)
    return None


def check_sizes(shape: dict[str, int], config: RunConfig) -> None:
    """Refuse ``dates``, ``patch_size`` or ``block`` that do not fit a cube of ``shape`` (``{"time": T, "y": Y,
    "x": X}``), with the flag to change and a value that fits.

    :raises ValueError: more dates per stack than the cube has, a patch larger than the cube, blocks that cannot
        give every split a patch, or training blocks that hold fewer than ``labels`` patch tiles.
    """
    if "time" in shape and config.dates > shape["time"]:
        raise ValueError(f"--dates {config.dates} is more than the {shape['time']} dates of the cube: pass --dates "
                         f"{shape['time']} or fewer")
    sizes = (shape, config.patch_size, config.block, config.labels, config.fractions, config.data_seed)
    problem = _problem(*sizes)
    if problem is not None:
        raise ValueError(_why(*sizes, problem))


def _why(shape: dict[str, int], P: int, B: int, labels: int, fractions: Sequence[float], data_seed: int,
         problem: tuple[str, int]) -> str:
    """The message of a :func:`_problem`: what does not fit, and the flag to change."""
    kind, count = problem
    Y, X = shape["y"], shape["x"]
    if kind == "patch" and "image_y" in shape:
        h, w = shape["image_y"], shape["image_x"]
        return (f"--patch-size {P} is larger than the {h}x{w} images of the mosaic: pass --patch-size {min(h, w)} "
                "or less (or ingest the images larger, --size)")
    if kind == "patch":
        return f"--patch-size {P} is larger than the {Y}x{X} cube: pass --patch-size {min(Y, X)} or less"
    if kind == "splits":
        # halvings first: a block that divides the cube leaves no narrow blocks at its edges
        tries = [B >> k for k in range(1, 8) if B >> k >= P] + list(range(B - 1, P - 1, -1))
        fits = [b for b in tries if _problem(shape, P, b, 0, fractions, data_seed) is None]
        fix = f"pass a smaller --block, e.g. --block {fits[0]}" if fits else "pass a smaller --patch-size"
        splits = sum(1 for f in fractions if f > 0)
        return (f"--block {B} cuts the {Y}x{X} cube into {count} block(s), too few to give each of the {splits} "
                f"train/val/test splits a {P}x{P} patch: {fix}")
    return (f"--labels {labels} is more than the training blocks hold: {count} locations ({P}x{P} tiles, --block "
            f"{B}, a {Y}x{X} cube): pass --labels {count} or fewer, or a smaller --patch-size or --block")


def fit_sizes(
    shape: dict[str, int],
    labels: int,
    *,
    patch_size: int | None = None,
    block: int | None = None,
    fractions: Sequence[float] = default("fractions"),
    data_seed: int = 0,
) -> tuple[int, int]:
    """``(patch_size, block)`` for a cube of ``shape``: the given ones, and for those not given the largest that
    fit (what ``hvaeseg train`` uses when ``--patch-size`` or ``--block`` is left out).

    The defaults of :class:`RunConfig` (64 and 128) are tried first; then the patch halves once (to 32) and the
    block halves down to the patch size, until the cube holds the three splits and ``labels`` training tiles.
    The ``synthetic:small`` cube (512 x 512) keeps the defaults; ``tiny`` (128 x 128) gets 64/64 for a few
    labels and 32/32 for ten.

    :raises ValueError: nothing fits; the message says which flag to change.
    """
    patches = [patch_size] if patch_size is not None else [default("patch_size"), default("patch_size") // 2]
    if patch_size is None and "image_y" in shape:  # a mosaic: the largest default that fits in its images
        side = min(shape["image_y"], shape["image_x"])
        patches = [p for p in patches if p <= side] or [side]
    if block is not None:
        patches = [p for p in patches if p <= block] or [block]
    tried: list[tuple[int, int, tuple[str, int]]] = []
    for p in patches:
        blocks = [block] if block is not None else [b for b in (default("block") >> k for k in range(8)) if b >= p]
        if p not in blocks and block is None:
            blocks.append(p)
        for b in blocks:
            if b < p:
                raise ValueError(f"--block {b} is smaller than --patch-size {p}: pass a --block of at least {p}, "
                                 f"or --patch-size {b} or less")
            problem = _problem(shape, p, b, labels, fractions, data_seed)
            if problem is None:
                return p, b
            tried.append((p, b, problem))
    short = [(count, p, b) for p, b, (kind, count) in tried if kind == "labels"]
    if short:
        count, p, b = max(short)
        raise ValueError(f"--labels {labels} is more than the training blocks of the {shape['y']}x{shape['x']} cube "
                         f"hold: at most {count} locations (with --patch-size {p} --block {b}): pass --labels "
                         f"{count} or fewer")
    p, b, problem = tried[-1]
    raise ValueError(_why(shape, p, b, labels, fractions, data_seed, problem))


class _Streams:
    """Resumable, seeded batch streams of a run: the batch of step ``k`` depends on ``(seed, k)`` only.

    With ``labels == 0`` (unsupervised HVAE training) the labelled and pool streams yield ``None``, which the
    objectives read as "no labelled term" (symmetric learning then samples s from the model's prior).

    ``shard = (rank, world)``: the streams of process ``rank`` of ``world`` (:mod:`hvaeseg.distributed`). The
    batch of a step is then the slice ``rank`` of the global batch of ``world x batch_size`` items a one-process
    run with that batch size reads (:class:`~hvaeseg.data.loader.PatchLoader`'s ``shard``); the labelled batch is
    ``min(batch_size, labelled patches // world)`` per process.
    """

    def __init__(self, data: RunData, config: RunConfig, method: Method, loader: LoaderOptions | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.config = config
        self.shard = shard
        rank, world = shard
        self.loaders: dict[str, PatchLoader] = {}
        self.pool: LabelPool | None = None
        loader = loader or LoaderOptions()
        loader.check(data, config)
        stream = functools.partial(PatchLoader, batch_size=config.batch_size, device=config.device, repeat=True,
                                   workers=loader.workers, prefetch=2, processes=loader.processes, shard=shard)
        lab = data.train_plan.select(labelled=True)
        if "labelled" in method.streams and len(lab):
            if len(lab) < world:
                raise ValueError(f"the run has {len(lab)} labelled patches, fewer than its {world} processes: each "
                                 "process needs one; use fewer processes, or more --labels")
            self.loaders["labelled"] = stream(
                data.cube, lab, batch_size=min(config.batch_size, len(lab) // world), seed=config.seed
            )
        if "unlabelled" in method.streams:
            self.loaders["unlabelled"] = stream(
                data.cube, data.train_plan.select(labelled=False), seed=config.seed + 1
            )
        if "pool" in method.streams and len(lab):
            # one map per labelled location (the plan repeats a location once per qualifying date)
            _, first = np.unique(np.stack([lab.y, lab.x], axis=1), axis=0, return_index=True)
            maps = PatchLoader(data.cube, lab.take(np.sort(first)), batch_size=len(first), workers=0,
                               normalise=False)
            self.pool = LabelPool(next(iter(maps)).labels, dihedral=True, seed=config.data_seed)
            method.use_label_pool(self.pool)

    def close(self) -> None:
        for loader in self.loaders.values():
            loader.close()

    def factories(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: loader.stream for name, loader in self.loaders.items()}
        out.setdefault("labelled", _nothing)
        out["pool"] = self._pool_stream if self.pool is not None else _nothing
        return out

    def _pool_stream(self, start: int):
        pool, cfg = self.pool, self.config
        assert pool is not None  # the stream of a run with a label pool only (factories)
        rank, world = self.shard
        B = cfg.batch_size
        for step in itertools.count(start):
            g = torch.Generator().manual_seed(step_seed(cfg.seed + 2, step))
            if world == 1:
                yield pool.sample(B, g, device=cfg.device)
            else:  # the global draw of a one-process run with batch world x B; this process's slice of it
                yield pool.sample(B * world, g)[rank * B:(rank + 1) * B].to(cfg.device)


def _nothing(start: int):
    """A stream of ``None``: the method gets no batch of this kind."""
    return itertools.repeat(None)


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


def build_method(config: RunConfig, data: RunData) -> SegmentationMethod:
    """A fresh method of ``config`` for ``data`` (:func:`hvaeseg.methods.build_method`), its weights laid out for
    ``config.precision``; the cube's band statistics are read (or computed) only for a method that needs them."""
    from hvaeseg.methods import build_method as build
    from hvaeseg.methods import method_class

    torch.manual_seed(config.seed)
    band_stats = data.band_stats() if method_class(config.method).needs_band_stats else None
    method = build(config.method, data.num_bands, data.num_classes, config.dates > 1, config.options,
                   seed=config.seed, patch_size=config.patch_size, device=config.device,
                   band_names=data.band_names or None, band_stats=band_stats)
    if isinstance(method, Method):  # trained by the loop (not fitted)
        prepare_modules(method.modules().values(), config.precision)  # channels-last weights for bf16
    return method


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1))


@dataclass
class FitResult:
    """What :func:`train_run` returns for a fitted method: the attributes callers read from a
    :class:`~hvaeseg.train.Trainer` (``step``: boosting rounds kept; ``history``: validation curve, best step,
    best validation mean IoU, fit seconds), plus the method and its fit statistics."""

    step: int
    history: History
    method: FittedMethod
    stats: dict[str, Any]
    #: tells a fitted run's result from a :class:`~hvaeseg.train.Trainer`
    fitted: bool = True


def train_run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = True,
    loader: LoaderOptions | None = None,
    distributed: DistributedContext | None = None,
) -> Trainer | FitResult:
    """Train ``config`` into the run folder ``out`` (continuing from its checkpoint when ``resume``).

    ``loader`` says how batches are read (threads by default); it does not change the results. A fitted method
    (``pixel-gbm``) is fitted once instead (see :func:`fit_run`; a finished fit is not repeated when
    ``resume``) and a :class:`FitResult` is returned.

    A run folder holds one configuration, saved with its cube's path made absolute. A rerun into the same
    folder may change only ``steps`` and ``time_budget_s`` (:data:`~hvaeseg.run_config.EXTENDABLE`): it
    trains the run on from its checkpoint, to the new number of steps (the same parameters as a run trained
    that long at once), and ``time_budget_s`` caps the run's total training time over every rerun, so a run
    that stopped at its budget trains on only with a larger budget (or none).

    Everything is checked before the folder is written; when this call fails before a checkpoint exists, what
    it wrote is removed again (never the files a folder held before), so that the corrected rerun starts clean.

    ``distributed``: this process's place in a data-parallel run (:mod:`hvaeseg.distributed`, its process group
    joined). Each process trains on its slice of every global batch of ``world_size x batch_size`` patches per
    stream; the main process alone reads and writes ``out``. A checkpoint resumes only with its number of
    processes.

    :raises FileExistsError: ``out`` holds a run with a different configuration (the message names the fields).
    :raises ValueError: a rerun asks for fewer steps than the run has trained, or its time budget is spent; a
        fitted method (``pixel-gbm``) with several processes; a checkpoint of another number of processes.
    """
    ctx = distributed if distributed is not None else DistributedContext()
    if ctx.is_distributed:
        from hvaeseg.methods import method_class

        if method_class(config.method).fitted:
            raise ValueError(
                f"--method {config.method} is fitted in one call, not trained step by step, so it cannot be trained "
                f"by {ctx.world_size} processes: run `hvaeseg train --method {config.method} ...` without torchrun "
                "(one process)"
            )
    out = Path(out)
    config = config.with_absolute_data()
    config.check_device()
    _check_rerun(config, out, resume)
    loop = LoopConfig(config.steps, config.seed, config.val_every, config.checkpoint_every, config.time_budget_s,
                      precision=config.precision)
    data = prepare_data(config)
    loader = loader or LoaderOptions()
    loader.check(data, config)  # before anything is written
    if ctx.is_distributed:  # the main process computes (and stores) missing band statistics, the others read them
        if ctx.is_main:
            data.band_stats()
        barrier(ctx)
    method = build_method(config, data)
    with _removed_on_failure(out) if ctx.is_main else contextlib.nullcontext():
        if isinstance(method, FittedMethod):
            _write_run_files(config, data, out)
            return fit_run(config, data, method, out, resume=resume, loader=loader)
        assert isinstance(method, Method)  # the registry holds Method and FittedMethod classes only
        streams = _Streams(data, config, method, loader, shard=ctx.shard)
        try:
            validation = None
            if ctx.is_main:  # the main process alone validates
                val = data.eval_plan.select(split="val")
                val_loader = PatchLoader(data.cube, val, batch_size=config.batch_size, device=config.device,
                                         workers=1)
                validation = functools.partial(val_loader.batches, 0)
            trainer = Trainer(method, streams.factories(), validation, data.num_classes, out, loop, distributed=ctx)
            if resume:
                trainer.resume()
            if ctx.is_main:  # only now: a failure until here leaves a run folder as it was
                _write_run_files(config, data, out)
            trainer.fit()
        finally:
            streams.close()
    return trainer


def _write_run_files(config: RunConfig, data: RunData, out: Path) -> None:
    """``config.json`` and the plans, into the run folder ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "config.json", config.to_json())
    data.train_plan.save(out / "plan_train.json")
    data.eval_plan.save(out / "plan_eval.json")


def _check_rerun(config: RunConfig, out: Path, resume: bool) -> None:
    """Refuse to train ``config`` into ``out`` when ``out`` holds another run: another configuration (apart
    from :data:`EXTENDABLE` fields), fewer steps than it has trained, or a spent time budget."""
    if not (out / "config.json").exists():
        return
    old = RunConfig.load(out)
    changed = old.differences(config)
    if not changed:
        return
    if set(changed) - set(EXTENDABLE):
        raise FileExistsError(
            f"{out} holds a run with another configuration ({describe(changed)}): choose a new --out, delete "
            f"that folder, or rerun with its settings (only {' and '.join(map(flag, EXTENDABLE))} may change, "
            "to train it on)"
        )
    from hvaeseg.methods import is_fitted

    if not resume or is_fitted(config.method) or not (out / CHECKPOINT).exists():
        return
    state = load_checkpoint(out / CHECKPOINT)
    step, seconds = int(state["step"]), float(state.get("history", {}).get("train_seconds", 0.0))
    if config.steps < step:
        raise ValueError(
            f"{out} has trained {step} steps, more than --steps {config.steps}: pass --steps {step} or more to train "
            "it on, or --no-resume to train it afresh, or choose a new --out"
        )
    if config.time_budget_s is not None and step < config.steps and seconds >= config.time_budget_s:
        raise ValueError(
            f"{out} has trained for {seconds:.0f} s, which spends --time-budget {config.time_budget_s:g} (a cap on "
            f"the training time over every rerun): pass a larger --time-budget, or none, to train it on to "
            f"--steps {config.steps}"
        )


@contextlib.contextmanager
def _removed_on_failure(out: Path) -> Iterator[None]:
    """Remove what the block creates in the folder ``out`` (the folder too, if it creates it) when the block
    fails before a checkpoint is written; the files the folder held before are never touched."""
    existed = out.exists()
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    had_checkpoint = (out / CHECKPOINT).exists()
    try:
        yield
    except BaseException:
        if not had_checkpoint and not (out / CHECKPOINT).exists():
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            elif out.is_dir():
                for p in out.iterdir():
                    if p.name in before:
                        continue
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        raise


def fit_run(
    config: RunConfig,
    data: RunData,
    method: FittedMethod,
    out: str | os.PathLike,
    *,
    resume: bool = True,
    loader: LoaderOptions | None = None,
) -> FitResult:
    """Fit ``method`` on every labelled training patch of ``data`` (one pass, no repetition), choosing its size
    on the validation tiles, and write ``best.pt``, ``checkpoint.pt`` (the layout of the loop's checkpoints:
    ``{"step", "method", "history"}``) and ``history.json`` into ``out``.

    ``history.validation`` holds one entry per boosting round (``{"step": round, "multi_logloss": ...}``) and the
    kept round's entry also the validation ``accuracy`` and ``mean_iou``; ``best_step`` is that round,
    ``best_score`` that mean IoU and ``train_seconds`` the fit time. ``config.steps`` and ``time_budget_s`` do
    not apply. With ``resume``, a run folder that already holds a finished fit is read back, not refitted.
    """
    out = Path(out)
    loader = loader or LoaderOptions()
    if resume and all((out / f).exists() for f in (CHECKPOINT, BEST, "history.json")):
        state = load_checkpoint(out / CHECKPOINT)
        method.load_state_dict(state["method"])
        method.train(False)
        return FitResult(int(state["step"]), History(**state["history"]), method, dict(getattr(method, "stats", {})))
    lab = data.train_plan.select(labelled=True)
    val = data.eval_plan.select(split="val")
    reader = functools.partial(PatchLoader, batch_size=config.batch_size, workers=loader.workers,
                               processes=loader.processes)
    with contextlib.ExitStack() as stack:
        lab_loader = stack.enter_context(reader(data.cube, lab))
        val_loader = stack.enter_context(reader(data.cube, val)) if len(val) else None
        stats = method.fit(lab_loader.batches(0), val_loader.batches(0) if val_loader is not None else None)
        method.train(False)
        history = History(train_seconds=float(stats.get("fit_seconds", 0.0)))
        curve = list(getattr(method, "eval_curve", []))
        history.validation = [{"step": i + 1, "multi_logloss": v} for i, v in enumerate(curve)]
        step = int(stats.get("iterations", 0))
        history.best_step = step
        if val_loader is not None:
            cm = evaluate_segmentation(method, val_loader.batches(0), data.num_classes)
            scores = {"accuracy": cm.accuracy(), "mean_iou": cm.mean_iou()}
            if 1 <= step <= len(history.validation):
                history.validation[step - 1].update(scores)
            else:  # no curve (a single class: a constant prediction)
                history.validation.append({"step": step, **scores})
            history.best_score = scores["mean_iou"]
    method.train(True)
    history_json = json.loads(json.dumps(asdict(history)))
    state = {"step": step, "method": method.state_dict(), "history": history_json}
    atomic_save(state, out / BEST)
    atomic_save(state, out / CHECKPOINT)
    _write_json(out / "history.json", history_json)
    return FitResult(step, history, method, stats)


def load_run(
    run_dir: str | os.PathLike, *, checkpoint: str = BEST, device: str | None = None
) -> tuple[RunConfig, RunData, SegmentationMethod]:
    """The config, data and trained method of a run folder (the ``best.pt`` state by default).

    :param device: where to run it (default: the device it was trained on). Where it runs does not define a
        run: a run trained on ``cuda`` loads on a CPU machine with ``device="cpu"``; the returned config says
        where it runs now.
    :raises FileNotFoundError: not a run folder, no checkpoint in it, or its cube not found.
    :raises ValueError: the checkpoint is damaged or belongs to another method or configuration; the device
        is not available.
    """
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir)
    config = replace(config, data=locate_data(config.data, run_dir))  # a relative path found nowhere: say so
    if device is not None:
        config = replace(config, device=device)
    if config.precision != "fp32" and not bf16_supported(config.device):
        print(f"note: {run_dir} was trained in {config.precision}; {config.device!r} has no bfloat16 units here, so "
              "it runs in fp32", file=sys.stderr)
        config = replace(config, precision="fp32")
    config.check_device()
    data = prepare_data(config, plans_from=run_dir)
    method = build_method(config, data)
    path = run_dir / checkpoint
    if not path.exists() and checkpoint == BEST and (run_dir / CHECKPOINT).exists():
        print(f"note: {run_dir} has no {BEST} (no validation yet); using its latest state, {CHECKPOINT}",
              file=sys.stderr)
        path = run_dir / CHECKPOINT
    state = load_checkpoint(path)
    try:
        method.load_state_dict(state["method"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path} does not hold a state of this run's {config.method!r} method ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else err!r}): it was written by another method, configuration "
            "or version; retrain, or point to the run folder it came from"
        ) from err
    method.train(False)
    return config, data, method


def check_cube(
    data: RunData, cube: xr.Dataset | str, name: str, *, patch_size: int = 1, dates: int = 1
) -> tuple[dict[str, Any], list[int] | None]:
    """Check that a run trained on ``data`` can predict ``cube`` (named ``name`` in messages), and say how to
    number its classes there: ``(class attributes, class ids)`` for :func:`~hvaeseg.predict.predict_cube`.

    The bands must be the run's, in the run's order, and the cube must hold a ``patch_size`` patch and have at
    least ``dates`` dates (the run's patches). Where the cube has labels that name classes otherwise than the
    run (another order, more classes), the prediction is written in the cube's numbering, mapped by name: the
    ids are the cube's id of each of the run's classes, the attributes the cube's labels'. Else the run's own
    numbering: ids None, the attributes of the run's labels.

    :raises ValueError: other bands, a cube smaller than a patch or with too few dates; labels that lack some
        of the run's classes (their ids would mean other classes than the prediction's).
    """
    ds = _dataset(cube)
    bands = [str(b) for b in ds["band"].values] if "band" in ds.coords else []
    if int(ds.sizes["band"]) != data.num_bands or (bands and data.band_names and bands != data.band_names):
        have = " ".join(bands) if bands else f"{ds.sizes['band']} bands"
        want = " ".join(data.band_names) if data.band_names else f"{data.num_bands} bands"
        order = " (in another order)" if sorted(bands) == sorted(data.band_names) else ""
        raise ValueError(f"{name} has the bands {have}{order}, but the run was trained on {want}: give a cube with "
                         f"the run's bands in its order (e.g. `hvaeseg data ingest ... --bands "
                         f"{','.join(data.band_names) or '...'}`)")
    if min(int(ds.sizes["y"]), int(ds.sizes["x"])) < patch_size:
        raise ValueError(f"{name} is {ds.sizes['y']}x{ds.sizes['x']} pixels, smaller than the run's {patch_size}x"
                         f"{patch_size} patches: give a cube of at least {patch_size}x{patch_size} pixels")
    shape = _shape(ds)
    if "image_y" in shape and min(shape["image_y"], shape["image_x"]) < patch_size:
        raise ValueError(f"{name} is a mosaic of {shape['image_y']}x{shape['image_x']} images, smaller than the run's "
                         f"{patch_size}x{patch_size} patches: ingest the images at {patch_size}x{patch_size} pixels "
                         "or more (--size)")
    if int(ds.sizes["time"]) < dates:
        raise ValueError(f"{name} has {ds.sizes['time']} dates, but the run predicts from stacks of {dates}: give a "
                         f"cube with at least {dates} dates")
    own = dict(_dataset(data.cube)["labels"].attrs)
    if "labels" not in ds:
        return own, None
    names = class_names(ds)
    if names == data.class_names:
        return own, None
    missing = [c for c in data.class_names if c not in names]
    if missing:
        raise ValueError(f"{name}'s labels lack the run's classes {' '.join(missing)} (it has: {' '.join(names)}; the "
                         f"run: {' '.join(data.class_names)}), so its class ids would mean other classes than the "
                         "prediction's: give a cube labelled with the run's classes, or one without labels")
    return dict(ds["labels"].attrs), [names.index(c) for c in data.class_names]


def evaluate_run(
    run_dir: str | os.PathLike, split: str = "test", *, iwae_samples: int = 8, device: str | None = None
) -> dict[str, Any]:
    """Segmentation metrics on ``split``, with the method's own metrics (``evaluation_metrics``: IWAE with
    ``iwae_samples`` importance samples, consistency and reconstruction for the HVAE methods), written to
    ``RUN/metrics.json`` under the split's name; ``device`` as in :func:`load_run`."""
    config, data, method = load_run(run_dir, device=device)
    plan = data.eval_plan.select(split=split)
    if len(plan) == 0:
        raise ValueError(f"the {split!r} split of this run has no patches; use a smaller --block or another split")
    loader = PatchLoader(data.cube, plan, batch_size=config.batch_size, device=config.device, workers=1)
    batches = progress(loader.batches(0), desc=f"evaluating on {split}", total=len(loader))
    cm = evaluate_segmentation(method, batches, data.num_classes, config.precision)
    result: dict[str, Any] = {"split": split, "patches": len(plan), **cm.to_dict(data.class_names)}
    scored = progress(loader.batches(0), desc=f"model metrics on {split}", total=len(loader))
    result.update(method.evaluation_metrics(scored, iwae_samples=iwae_samples))
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[split] = result
    _write_json(path, metrics)
    return result

