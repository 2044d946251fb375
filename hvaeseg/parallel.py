"""Prediction and inpainting in parallel: several processes write their regions of one output store.

A job (:class:`PredictJob`, :class:`InpaintJob`) holds what a command was given (plain values: it pickles, for
dask or process pools) and loads the run and cube once per process when first needed. Its steps are those of
:class:`hvaeseg.data.region_store.RegionStore`:

- :meth:`~RegionJob.open`: create ``OUT.partial`` (every process may call it at once) and check it is this
  command's;
- :meth:`~RegionJob.pending`: the regions of part ``p`` of ``n`` (``i % n == p``, :mod:`hvaeseg.data.regions`)
  not yet done;
- :meth:`~RegionJob.compute`: compute one region and write it (then mark it done);
- :meth:`~RegionJob.finish`: complete the store (rename to ``OUT``) when every region is done.

:func:`run_part` runs the steps for one part (``hvaeseg predict/inpaint --part i/n``, or ``RANK``/``WORLD_SIZE``
under torchrun); :func:`map_regions` maps :meth:`~RegionJob.compute` over every pending region with any ``map``
(``concurrent.futures`` executors, or dask: ``map_regions(job, client.map, client.gather)``).

The values equal a single process's (:mod:`hvaeseg.data.regions`: each region is computed from every tile
over it), except the posterior draws of inpainting, which are seeded per region
(:func:`hvaeseg.inpaint_cube.region_seed`): the same for any number of parts, another draw than a run without
parts.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import xarray as xr

from hvaeseg import _progress
from hvaeseg.data.region_store import RegionStore
from hvaeseg.data.regions import part_regions

__all__ = ["RegionJob", "PredictJob", "InpaintJob", "PartResult", "run_part", "map_regions", "parallel_part"]

#: what each process has loaded (run, cube, model), by job identity: loaded once per process, not per region
_LOADED: dict[str, Any] = {}


def _where(data: str) -> str:
    """A data or run path as every process names it (absolute, links resolved); URLs and synthetic cubes as
    given."""
    if "://" in data or data.startswith("synthetic:"):
        return data
    return os.path.realpath(data)


@overload
def _device(device: str) -> str: ...


@overload
def _device(device: None) -> None: ...


def _device(device: str | None) -> str | None:
    """``cuda`` under torchrun: the process's own GPU (``cuda:LOCAL_RANK``)."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _checkpoint_digest(run: str) -> str:
    """sha256 of the run's best state: a run trained on between two parts is another run."""
    path = os.path.join(run, "best.pt")
    if not os.path.isfile(path):
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class PartResult:
    """What one part did: ``computed`` regions (indices), ``skipped`` (done before, by this or another process),
    and whether this part ``completed`` the store (renamed it to ``OUT``)."""

    part: int
    parts: int
    regions: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    completed: bool = False
    #: ``OUT`` was already complete (written by this same command) when the part started
    found_complete: bool = False

    def summary(self, what: str, out: str) -> str:
        """One line for the log, e.g. ``part 0/2: predicted 4 of 8 regions (0 already done); wrote OUT``."""
        mine = len(self.computed) + len(self.skipped)
        head = (f"part {self.part}/{self.parts}: {what} {len(self.computed)} of {self.regions} regions "
                f"({len(self.skipped)} of its {mine} already done)")
        if self.completed:
            return f"{head}; all regions done, wrote {out}"
        if self.found_complete:
            return f"{head}; {out} was already complete"
        return f"{head}; {out} is complete once every part has finished (rerun a part to fill what it left)"


class RegionJob(abc.ABC):
    """The steps shared by :class:`PredictJob` and :class:`InpaintJob` (see the module doc). Subclasses define
    :meth:`_load` (the run and cube, once per process), :meth:`_identity`, :meth:`_template` and
    :meth:`_compute`."""

    out: str
    chunk: int | None
    overwrite: bool

    # what subclasses define ------------------------------------------------------------------------
    @abc.abstractmethod
    def _identity(self) -> dict[str, Any]:
        """Defined by each job (see the class docstring)."""

    @abc.abstractmethod
    def _load(self) -> Any:
        """Defined by each job (see the class docstring)."""

    @abc.abstractmethod
    def _template(self, state: Any) -> xr.Dataset:
        """Defined by each job (see the class docstring)."""

    @abc.abstractmethod
    def _compute(self, state: Any, index: int) -> tuple[dict[str, np.ndarray], int]:
        """Defined by each job (see the class docstring)."""

    def _final_attrs(self, store: RegionStore) -> Mapping[str, Any]:
        return {}

    # the steps -------------------------------------------------------------------------------------
    def _key(self) -> str:
        import json

        if getattr(self, "_key_text", None) is None:  # computed once (it reads the run's checkpoint)
            self._key_text = json.dumps({"class": type(self).__name__, "identity": self._identity(),
                                         "out": _where(self.out), "chunk": self.chunk,
                                         "overwrite": self.overwrite}, sort_keys=True)
        return self._key_text

    def _state(self) -> Any:
        key = self._key()
        if key not in _LOADED:
            _LOADED.clear()  # one job at a time per process
            _LOADED[key] = {"loaded": self._load()}
        return _LOADED[key]["loaded"]

    def store(self) -> RegionStore:
        """The output store (created by :meth:`open`, in this process or another)."""
        import json

        self._state()
        entry = _LOADED[self._key()]
        if "store" not in entry:
            chunks = None if self.chunk is None else {"y": int(self.chunk), "x": int(self.chunk)}
            identity = json.loads(self._key())["identity"]
            entry["store"] = RegionStore(self.out, self._template(entry["loaded"]), identity,
                                         chunks=chunks, overwrite=self.overwrite)
        return entry["store"]

    def open(self) -> RegionStore:
        """Create ``OUT.partial`` where absent (safe in every process at once) and check it is this command's.

        :raises FileExistsError: ``OUT`` exists (without ``overwrite``) or ``OUT.partial`` is another command's.
        """
        return self.store().open()

    def _opened(self) -> RegionStore:
        store = self.store()
        return store if store.opened else store.open()

    @property
    def n_regions(self) -> int:
        return len(self.store().regions)

    def pending(self, part: int = 0, parts: int = 1) -> list[int]:
        """The regions of part ``part`` of ``parts`` not yet done (all parts: ``pending()``)."""
        done = self.open().done()
        return [i for i in part_regions(len(done), part, parts) if not done[i]]

    def compute(self, index: int) -> int:
        """Compute region ``index`` and write it into ``OUT.partial`` (marking it done); returns ``index``."""
        store = self._opened()
        values, note = self._compute(self._state(), int(index))
        store.write(store.regions[int(index)], values, note=note)
        return int(index)

    def finish(self) -> bool:
        """Complete the store if every region is done: returns whether this call renamed it to ``OUT``."""
        return self._opened().finish(self._final_attrs)


def run_part(job: RegionJob, part: int, parts: int, *, progress: bool = True) -> PartResult:
    """Compute part ``part`` of ``parts`` of ``job`` (its regions not yet done), then complete the store if
    every region is done. A progress bar (or log lines) per process, prefixed with the part."""
    store = job.open()
    mine = part_regions(len(store.regions), part, parts)
    done = store.done()
    result = PartResult(part, parts, len(store.regions), skipped=[i for i in mine if done[i]],
                        found_complete=store.complete)
    todo = [i for i in mine if not done[i]]
    what = "filling" if isinstance(job, InpaintJob) else "predicting"
    for index in _progress.progress(todo, desc=f"part {part}/{parts}: {what} regions",
                                    enabled=None if progress else False):
        job.compute(index)
        result.computed.append(index)
    result.completed = job.finish()
    return result


def parallel_part(part: str | None) -> tuple[int, int] | None:
    """The part this process computes: ``--part I/N`` when given, else ``(RANK, WORLD_SIZE)`` from the environment
    (torchrun), else None (a plain run: one process, no regions)."""
    from hvaeseg.data.regions import parse_part, part_from_env

    return parse_part(part) if part is not None else part_from_env()


def map_regions(job: RegionJob, map: Callable[..., Iterable[Any]] = map,
                gather: Callable[[Any], Iterable[Any]] = list) -> bool:
    """Compute every pending region of ``job`` with ``map`` and complete the store: returns whether it did.

    ``map(job.compute, indices)`` runs anywhere the job can be pickled to (the workers load the run and cube
    once each); ``gather`` waits for what ``map`` returned. With dask.distributed::

        map_regions(PredictJob(run="runs/a", data="cube.zarr", out="pred.zarr"), client.map, client.gather)

    or a process pool: ``with ProcessPoolExecutor(4) as pool: map_regions(job, pool.map)``.
    """
    indices = job.pending()
    list(gather(map(job.compute, indices)))
    return job.finish()


# ------------------------------------------------------------------------------------------------- predict


@dataclass
class PredictJob(RegionJob):
    """``hvaeseg predict RUN --data DATA --out OUT`` region by region.

    :param run: the run folder.
    :param out: the output store.
    :param data: the cube (default: the run's).
    :param device: where the model runs (default: the run's; ``cuda`` under torchrun: ``cuda:LOCAL_RANK``).
    :param chunk: ``y``/``x`` chunk side of the output (default 256): one region per chunk.
    :param overwrite: replace an existing ``OUT`` when complete.
    """

    run: str
    out: str
    data: str | None = None
    device: str | None = None
    chunk: int | None = None
    overwrite: bool = False

    def _identity(self) -> dict[str, Any]:
        from hvaeseg.run_config import RunConfig

        config = RunConfig.load(self.run)
        return {"command": "predict", "run": _where(self.run), "checkpoint": _checkpoint_digest(self.run),
                "data": _where(self.data or config.data)}

    def _load(self) -> dict[str, Any]:
        from hvaeseg.data.store import open_cube
        from hvaeseg.experiment import check_cube, load_run, open_data
        from hvaeseg.predict import _cover_plan

        config, data, method = load_run(self.run, device=_device(self.device))
        cube = open_data(self.data, config.data_seed) if self.data else data.cube
        class_attrs, class_ids = check_cube(data, cube, self.data or config.data, patch_size=config.patch_size,
                                            dates=config.dates)
        ds = cube if isinstance(cube, xr.Dataset) else open_cube(cube, validate=False)
        return {"config": config, "num_classes": data.num_classes, "method": method, "cube": cube, "ds": ds,
                "class_attrs": class_attrs, "class_ids": class_ids,
                "plan": _cover_plan(ds, config.patch_size, config.dates)}

    def _template(self, state: dict[str, Any]) -> xr.Dataset:
        from hvaeseg.predict import prediction_template

        return prediction_template(state["ds"], state["num_classes"], class_attrs=state["class_attrs"],
                                   class_ids=state["class_ids"])

    def _compute(self, state: dict[str, Any], index: int) -> tuple[dict[str, np.ndarray], int]:
        from hvaeseg.nets.precision import autocast
        from hvaeseg.predict import predict_region

        config = state["config"]
        with autocast(config.precision, config.device):
            values = predict_region(state["method"].predict_proba, state["cube"], state["num_classes"],
                                    self.store().regions[index], patch_size=config.patch_size, dates=config.dates,
                                    batch_size=config.batch_size, device=config.device,
                                    class_ids=state["class_ids"], plan=state["plan"])
        return values, 0


# ------------------------------------------------------------------------------------------------- inpaint


@dataclass
class InpaintJob(RegionJob):
    """``hvaeseg inpaint [RUN] --data DATA --out OUT`` region by region (arguments as the command's).

    :param run: an HVAE run folder (``method="posterior"``; optional for interpolation).
    :param patch_size: tile side (default: the run's; 64, at most the cube's size, without a run).
    :param recalibrate: scale the spread by :func:`hvaeseg.calibrate_cube.cube_spread_factor` (each part fits it
        again, with the same seed: the same factor on the same kind of device).
    """

    out: str
    run: str | None = None
    data: str | None = None
    method: str = "posterior"
    samples: int = 8
    window: str = "nearest"
    batch_size: int = 8
    patch_size: int | None = None
    seed: int = 0
    device: str | None = None
    chunk: int | None = None
    overwrite: bool = False
    recalibrate: bool = False
    calibration_samples: int = 32
    calibration_tiles: int = 64

    def _config(self) -> Any:
        from hvaeseg.run_config import RunConfig

        return None if self.run is None else RunConfig.load(self.run)

    def _identity(self) -> dict[str, Any]:
        config = self._config()
        data = self.data if self.data is not None else (config.data if config is not None else None)
        if data is None:
            raise ValueError("--data CUBE is required without RUN (a store path, URL or synthetic:PRESET)")
        return {"command": "inpaint", "run": None if self.run is None else _where(self.run),
                "checkpoint": "" if self.run is None else _checkpoint_digest(self.run), "data": _where(data),
                "method": self.method, "samples": self.samples if self.method == "posterior" else 0,
                "window": self.window, "batch_size": self.batch_size, "patch_size": self.patch_size,
                "seed": self.seed, "recalibrate": [self.calibration_samples, self.calibration_tiles]
                if self.recalibrate else None}

    def _load(self) -> dict[str, Any]:
        from hvaeseg.commands.inpaint import inpaint_inputs
        from hvaeseg.inpaint_cube import _band_stats, _open

        config = self._config()
        data = self.data if self.data is not None else config.data
        device = _device(self.device or (config.device if config is not None else "cpu"))
        cube, hvae, dates, patch = inpaint_inputs(self.method, self.run, data, config, self.patch_size, device)
        ds = _open(cube)
        if self.patch_size is None and config is None:
            patch = min(patch, ds.sizes["y"], ds.sizes["x"])
        stats = _band_stats(ds) if self.method == "posterior" else None
        factor = 1.0
        if self.recalibrate:
            from hvaeseg.calibrate_cube import cube_spread_factor

            factor = cube_spread_factor(cube, hvae=hvae, patch_size=patch, dates=dates, window=self.window,
                                        num_samples=self.calibration_samples, max_tiles=self.calibration_tiles,
                                        batch_size=self.batch_size, device=device, seed=self.seed,
                                        stats=stats).factor
        return {"cube": cube, "ds": ds, "hvae": hvae, "dates": dates, "patch": patch, "device": device,
                "stats": stats, "data": data, "spread_factor": factor}

    def _arguments(self, state: dict[str, Any]) -> dict[str, Any]:
        return dict(method=self.method, hvae=state["hvae"], patch_size=state["patch"], dates=state["dates"],
                    window=self.window, num_samples=self.samples, batch_size=self.batch_size, seed=self.seed,
                    spread_factor=state["spread_factor"])

    def _template(self, state: dict[str, Any]) -> xr.Dataset:
        from hvaeseg.inpaint_cube import inpaint_template

        tpl = inpaint_template(state["ds"], run=self.run, **self._arguments(state))
        tpl.attrs["inpaint_data"] = str(state["data"])
        return tpl

    def _compute(self, state: dict[str, Any], index: int) -> tuple[dict[str, np.ndarray], int]:
        from hvaeseg.inpaint_cube import inpaint_region

        return inpaint_region(state["cube"], self.store().regions[index], device=state["device"],
                              stats=state["stats"], **self._arguments(state))

    def _final_attrs(self, store: RegionStore) -> Mapping[str, Any]:
        nonfinite = int(store.notes().sum())
        return {"inpaint_nonfinite_pixels": nonfinite} if nonfinite else {}
