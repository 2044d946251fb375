"""A run, end to end: data -> split and plans -> method -> training -> evaluation -> prediction.

This is what ``hvaeseg train / evaluate / predict`` call. A run folder holds everything needed to repeat or
continue it:

``config.json``      the :class:`RunConfig` (validated dataclass)
``plan_train.json``  the training plan (labelled locations and unlabelled patches), ``plan_eval.json`` the
                     validation/test tiles (:class:`~hvaeseg.data.sampler.PatchPlan`, exact JSON)
``checkpoint.pt``    the latest state, ``best.pt`` the state with the best validation mean IoU
``history.json``     losses and validation metrics; ``metrics.json`` the evaluation

A fitted method (:class:`~hvaeseg.method.FittedMethod`: ``pixel-gbm``) is not trained by the loop: it is fitted
once on every labelled training patch, choosing its size on the validation tiles, and the same files are written
(``best.pt`` and ``checkpoint.pt`` then hold the one fitted state, ``history.json`` its validation curve).

Protocol (DESIGN.md section 7): a fixed spatial split and labelled subset drawn by ``data_seed`` (the same for
every method and every training seed), the checkpoint chosen on validation, the test split reported once.
Labelled locations are ``patch_size`` tiles of the training blocks; every date of a labelled location on which
at least ``min_valid`` of its pixels are clear is a labelled patch (labels are time-invariant).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from hvaeseg.data.loader import PatchLoader
from hvaeseg.data.sampler import PatchPlan, PatchSampler, SpatialSplit
from hvaeseg.data.schema import class_names
from hvaeseg.data.store import open_cube
from hvaeseg.method import FittedMethod, Method
from hvaeseg.objectives.pool import LabelPool
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

SYNTHETIC_PREFIX = "synthetic:"


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (saved as ``config.json`` in the run folder).

    :param method: ``symmetric``, ``elbo``, ``supervised``, ``mixmatch`` or ``pixel-gbm``.
    :param data: a cube store (path or fsspec URL) or ``synthetic:PRESET`` for the built-in synthetic cube.
    :param labels: N, the number of labelled training locations (``patch_size`` tiles).
    :param steps: optimisation steps (not used by ``pixel-gbm``, whose size is chosen by early stopping).
    :param seed: training seed (initialisation, sampling, augmentation, batch order).
    :param data_seed: seed of the spatial split, the labelled subset and the patch plans (and of the synthetic
        cube): keep it fixed to compare methods and training seeds on the same data.
    :param batch_size: patches per stream per step.
    :param patch_size: side of the square patches (a multiple of the hierarchy's coarsest down-scaling).
    :param dates: 1 for single-date patches, T > 1 for T-date stacks (temporal models).
    :param unlabelled_patches: random training patches drawn for the unlabelled stream.
    :param block: side of the spatial split blocks (pixels).
    :param fractions: train/val/test shares of the blocks.
    :param min_valid: a date qualifies for a patch when this share of its pixels is clear.
    :param val_every: validate every this many steps; ``checkpoint_every`` likewise.
    :param time_budget_s: stop training after this much wall-clock time (benchmarks compare at equal time);
        not used by ``pixel-gbm``.
    :param device: ``cpu`` or ``cuda``.
    :param options: method hyper-parameters (fields of the method's config dataclass).
    """

    method: str
    data: str = "synthetic:small"
    labels: int = 10
    steps: int = 1000
    seed: int = 0
    data_seed: int = 0
    batch_size: int = 8
    patch_size: int = 64
    dates: int = 1
    unlabelled_patches: int = 2048
    block: int = 128
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    min_valid: float = 0.5
    val_every: int = 100
    checkpoint_every: int = 100
    time_budget_s: float | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from hvaeseg.methods import METHODS

        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {sorted(METHODS)}, got {self.method!r}")
        for name in ("steps", "batch_size", "patch_size", "dates", "unlabelled_patches", "block"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.labels < 0:
            raise ValueError(f"labels: expected N >= 0 labelled locations, got {self.labels}")
        if self.labels == 0 and self.method in ("supervised", "mixmatch", "pixel-gbm"):
            raise ValueError(f"method {self.method!r} needs labelled locations: give --labels N with N >= 1")
        if self.block < self.patch_size:
            raise ValueError(f"block ({self.block}) must be at least the patch size ({self.patch_size})")
        fr = tuple(float(f) for f in self.fractions)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
            raise ValueError(f"fractions: expected three non-negative train/val/test shares summing to 1, got {fr}")
        object.__setattr__(self, "fractions", fr)
        if not 0 <= self.min_valid <= 1:
            raise ValueError(f"min_valid: expected a fraction in [0, 1], got {self.min_valid}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: expected 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}")

    def check_device(self) -> None:
        """Refuse a CUDA device that torch cannot see (checked when a run is trained or loaded to run here, not
        when its config is read: a GPU-trained run can be evaluated on a CPU machine with ``device='cpu'``)."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch sees no CUDA device: use --device cpu")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json: unknown fields {unknown}; this run was written by another version")
        data["fractions"] = tuple(data.get("fractions", (0.6, 0.2, 0.2)))
        return cls(**data)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunConfig:
        path = Path(run_dir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json): run `hvaeseg train` first")
        return cls.from_json(path.read_text())

    @property
    def sizes(self) -> dict[str, int]:
        sizes = {"y": self.patch_size, "x": self.patch_size}
        if self.dates > 1:
            sizes["time"] = self.dates
        return sizes


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


def _expand_labelled_dates(plan: PatchPlan, ds: xr.Dataset, min_valid: float) -> PatchPlan:
    """One labelled single-date patch per (labelled location, qualifying date)."""
    lab = plan.select(labelled=True)
    if len(lab) == 0 or plan.temporal:
        return plan
    P, Q = plan.sizes["y"], plan.sizes["x"]
    rows: dict[str, list] = {k: [] for k in ("y", "x", "t", "split", "labelled", "group")}
    for i in range(len(lab)):
        y, x = int(lab.y[i]), int(lab.x[i])
        # only the location's box is read (a store opens lazily): never the whole valid array
        frac = ds["valid"][:, y:y + P, x:x + Q].values.mean(axis=(1, 2))
        dates = np.flatnonzero((frac >= min_valid) & (frac > 0))
        if len(dates) == 0:
            dates = np.array([int(np.argmax(frac))])
        for t in dates:
            rows["y"].append(y), rows["x"].append(x), rows["t"].append([int(t)])
            rows["split"].append(int(lab.split[i])), rows["labelled"].append(True)
            rows["group"].append(int(lab.group[i]))
    unl = plan.select(labelled=False)
    cat = {k: np.concatenate([np.asarray(v), getattr(unl, k)]) if k != "t" else
           np.concatenate([np.asarray(v, dtype=np.int64).reshape(-1, 1), unl.t]) for k, v in rows.items()}
    return PatchPlan(sizes=plan.sizes, cube_shape=plan.cube_shape, meta=plan.meta, **cat)


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
    split = SpatialSplit(
        block={"y": config.block, "x": config.block},
        fractions=dict(zip(("train", "val", "test"), config.fractions)),
        seed=config.data_seed,
    )
    train = PatchSampler(
        config.sizes, mode="random", n_patches={"train": config.unlabelled_patches}, split=split,
        n_labelled=config.labels, min_valid=config.min_valid, splits=("train",), seed=config.data_seed,
    ).plan(cube)
    train = _expand_labelled_dates(train, ds, config.min_valid)
    evaluation = PatchSampler(
        config.sizes, mode="grid", split=split, splits=("val", "test"), min_valid=config.min_valid,
        grid_remainder="shift", seed=config.data_seed,
    ).plan(cube)
    return train, evaluation


@dataclass(frozen=True)
class LoaderOptions:
    """How training batches are read; no effect on the results (a batch depends on ``(seed, step)`` only).

    :param workers: loader threads (or processes) per training stream.
    :param processes: worker processes instead of threads (needs the cube in a store; see
        :class:`~hvaeseg.data.loader.PatchLoader`): for GPU training, where the loader must not share the
        training loop's GIL.
    """

    workers: int = 1
    processes: bool = False

    def __post_init__(self) -> None:
        if int(self.workers) < 1:
            raise ValueError(f"loader workers: expected >= 1, got {self.workers}")

    def check(self, data: RunData, config: RunConfig) -> None:
        """Refuse processes for a cube that is not in a store."""
        if self.processes and not isinstance(data.cube, (str, os.PathLike)):
            preset = config.data.removeprefix(SYNTHETIC_PREFIX)
            raise ValueError(
                f"loader processes read the cube from its store, and {config.data} is generated in memory: write it "
                f"first (`hvaeseg data synth OUT.zarr --preset {preset} --seed {config.data_seed}`) and train with "
                "--data OUT.zarr, or drop --loader-processes"
            )


class _Streams:
    """Resumable, seeded batch streams of a run: the batch of step ``k`` depends on ``(seed, k)`` only.

    With ``labels == 0`` (unsupervised HVAE training) the labelled and pool streams yield ``None``, which the
    objectives read as "no labelled term" (symmetric learning then samples s from the model's prior).
    """

    def __init__(self, data: RunData, config: RunConfig, method: Method, loader: LoaderOptions | None = None) -> None:
        self.config = config
        self.loaders: dict[str, PatchLoader] = {}
        self.pool: LabelPool | None = None
        loader = loader or LoaderOptions()
        loader.check(data, config)
        common = dict(batch_size=config.batch_size, device=config.device, repeat=True, workers=loader.workers,
                      prefetch=2, processes=loader.processes)
        lab = data.train_plan.select(labelled=True)
        if "labelled" in method.streams and len(lab):
            self.loaders["labelled"] = PatchLoader(
                data.cube, lab, **{**common, "batch_size": min(config.batch_size, len(lab))}, seed=config.seed
            )
        if "unlabelled" in method.streams:
            self.loaders["unlabelled"] = PatchLoader(
                data.cube, data.train_plan.select(labelled=False), **common, seed=config.seed + 1
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
        for step in itertools.count(start):
            g = torch.Generator().manual_seed(step_seed(cfg.seed + 2, step))
            yield pool.sample(cfg.batch_size, g, device=cfg.device)


def _nothing(start: int):
    """A stream of ``None``: the method gets no batch of this kind."""
    return itertools.repeat(None)


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


def build_method(config: RunConfig, data: RunData) -> Method | FittedMethod:
    from hvaeseg.methods import build_method as build
    from hvaeseg.methods import is_fitted

    torch.manual_seed(config.seed)
    extra: dict[str, Any] = {}
    if is_fitted(config.method):  # they see the bands by name, and compute from reflectance
        extra = {"band_names": data.band_names or None, "band_stats": data.band_stats()}
    return build(config.method, data.num_bands, data.num_classes, config.dates > 1, config.options,
                 seed=config.seed, patch_size=config.patch_size, device=config.device, **extra)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


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
    config: RunConfig, out: str | os.PathLike, *, resume: bool = True, loader: LoaderOptions | None = None
) -> Trainer | FitResult:
    """Train ``config`` into the run folder ``out`` (continuing from its checkpoint when ``resume``).

    ``loader`` says how batches are read (threads by default); it does not change the results. A fitted method
    (``pixel-gbm``) is fitted once instead (see :func:`fit_run`; a finished fit is not repeated when
    ``resume``) and a :class:`FitResult` is returned.

    :raises FileExistsError: when ``out`` holds a run with a different configuration.
    """
    out = Path(out)
    if (out / "config.json").exists():
        old = RunConfig.load(out)
        if old != config:
            raise FileExistsError(
                f"{out} holds a run with another configuration; choose a new --out or delete that folder"
            )
    config.check_device()
    data = prepare_data(config)
    (loader or LoaderOptions()).check(data, config)  # before anything is written
    method = build_method(config, data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json())
    data.train_plan.save(out / "plan_train.json")
    data.eval_plan.save(out / "plan_eval.json")
    if isinstance(method, FittedMethod):
        return fit_run(config, data, method, out, resume=resume, loader=loader)
    streams = _Streams(data, config, method, loader)
    try:
        val = data.eval_plan.select(split="val")
        val_loader = PatchLoader(data.cube, val, batch_size=config.batch_size, device=config.device, workers=1)
        loop = LoopConfig(config.steps, config.seed, config.val_every, config.checkpoint_every, config.time_budget_s)
        trainer = Trainer(method, streams.factories(), lambda: val_loader.batches(0), data.num_classes, out, loop)
        if resume:
            trainer.resume()
        trainer.fit()
    finally:
        streams.close()
    return trainer


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
    common = dict(batch_size=config.batch_size, workers=loader.workers, processes=loader.processes)
    with contextlib.ExitStack() as stack:
        lab_loader = stack.enter_context(PatchLoader(data.cube, lab, **common))
        val_loader = stack.enter_context(PatchLoader(data.cube, val, **common)) if len(val) else None
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
) -> tuple[RunConfig, RunData, Method | FittedMethod]:
    """The config, data and trained method of a run folder (the ``best.pt`` state by default).

    :param device: where to run it (default: the device it was trained on). Where it runs does not define a
        run: a run trained on ``cuda`` loads on a CPU machine with ``device="cpu"``; the returned config says
        where it runs now.
    :raises FileNotFoundError: not a run folder, or no checkpoint in it.
    :raises ValueError: the checkpoint is damaged or belongs to another method or configuration; the device
        is not available.
    """
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir)
    if device is not None:
        config = replace(config, device=device)
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


def evaluate_run(
    run_dir: str | os.PathLike, split: str = "test", *, iwae_samples: int = 8, device: str | None = None
) -> dict[str, Any]:
    """Segmentation metrics on ``split`` (and IWAE / consistency / reconstruction for HVAE methods), written to
    ``RUN/metrics.json`` under the split's name; ``device`` as in :func:`load_run`."""
    config, data, method = load_run(run_dir, device=device)
    plan = data.eval_plan.select(split=split)
    if len(plan) == 0:
        raise ValueError(f"the {split!r} split of this run has no patches; use a smaller --block or another split")
    loader = PatchLoader(data.cube, plan, batch_size=config.batch_size, device=config.device, workers=1)
    cm = evaluate_segmentation(method, loader.batches(0), data.num_classes)
    result: dict[str, Any] = {"split": split, "patches": len(plan), **cm.to_dict(data.class_names)}
    hvae = getattr(method, "hvae", None)
    if hvae is not None:
        result.update(_generative_metrics(hvae, loader, iwae_samples))
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[split] = result
    _write_json(path, metrics)
    return result


def _generative_metrics(hvae: Any, loader: PatchLoader, k: int) -> dict[str, Any]:
    """IWAE bound (nats per observed value: per-image bounds summed, over valid pixels x bands), consistency on
    the split's label maps, and reconstruction error; the IWAE bound needs a closed-form s prior."""
    from hvaeseg.objectives.estimators import consistency, iwae_bound, reconstruction_error

    has_density = hvae.spec.s_prior != "empirical"
    iwae_sum, observed, agree, labelled, mae, rmse = 0.0, 0, 0.0, 0, [], []
    with torch.no_grad():
        for batch in loader.batches(0):
            if has_density:
                iwae_sum += float(iwae_bound(hvae.model, hvae.guide, batch.x, batch.valid, num_samples=k,
                                             doy=batch.doy).sum())
                observed += int(batch.valid.sum()) * int(batch.x.shape[-3])
            keep = (batch.labels >= 0).flatten(1).any(1)  # all-void maps say nothing
            if bool(keep.any()):
                maps, shape = batch.labels[keep], torch.ones_like(batch.valid[keep])  # shape: dates of stacks
                n = int((maps >= 0).sum())
                doy = None if batch.doy is None else batch.doy[keep]
                # weighted by labelled pixels
                agree += consistency(hvae.model, hvae.guide, maps, valid=shape, doy=doy) * n
                labelled += n
            if bool(batch.valid.any()):
                rec = reconstruction_error(hvae.model, hvae.guide, batch.x, batch.valid, batch.doy)
                mae.append(rec["mae"]), rmse.append(rec["rmse"])
    return {
        "iwae_nats_per_value": iwae_sum / observed if observed else None,
        "iwae_samples": k,
        "consistency": agree / labelled if labelled else None,
        "recon_mae": float(np.mean(mae)) if mae else None,
        "recon_rmse": float(np.mean(rmse)) if rmse else None,
    }
