"""``hvaeseg inpaint [RUN] --data CUBE --out FILLED.zarr [--samples K] [--method posterior|interpolation]``.

Fills every invalid pixel of a cube (:func:`hvaeseg.inpaint_cube.inpaint_cube`) with the posterior of a trained
HVAE run (``symmetric`` or ``elbo``), or by linear interpolation in time (``--method interpolation``, no run
needed), and writes the filled cube atomically. Every check (run, method, cube, output path) is made before
any work, and nothing is written on any error.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING, Any

from hvaeseg.commands._storage import add_storage_options

if TYPE_CHECKING:
    import torch

    from hvaeseg.hierarchy import HVAE
    from hvaeseg.run_config import RunConfig

__all__ = ["register", "HVAE_METHODS", "inpaint_inputs"]

#: run methods with a generative model to sample
HVAE_METHODS = ("symmetric", "elbo")

#: tile side for interpolation without a run
DEFAULT_INTERPOLATION_PATCH = 64


def _same_store(a: str, b: str) -> bool:
    """Whether two local store paths name the same place (URLs: compared as written)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(os.path.abspath(a)) == os.path.realpath(os.path.abspath(b))


def inpaint_inputs(
    method: str, run: str | os.PathLike | None, data: str, config: RunConfig | None, patch_size: int | None,
    device: str | torch.device,
) -> tuple[Any, HVAE | None, int, int]:
    """What an inpainting of ``data`` by ``method`` works with (this command's, and its parallel parts',
    :class:`hvaeseg.parallel.InpaintJob`): ``(cube, hvae, dates, patch)``, the cube (a Dataset, or a store path or
    URL), the run's HVAE on ``device`` (``None`` for interpolation), the dates per stack and the tile side.

    :param config: the run's configuration (``RunConfig.load(run)``), ``None`` without a run.
    :param patch_size: the tile side asked for (``None``: :func:`~hvaeseg.inpaint_cube.posterior_tile` of the run,
        i.e. its patch size, larger for a hierarchy with ``image.transfer``; without a run
        :data:`DEFAULT_INTERPOLATION_PATCH`).
    :raises ValueError: ``posterior`` without a run, or with a run whose method has no generative model.
    """
    from hvaeseg.experiment import load_run, open_data
    from hvaeseg.methods.hvae import GenerativeMethod

    data_seed = config.data_seed if config is not None else 0
    if method == "posterior":
        if run is None:
            raise ValueError("RUN is required with --method posterior (a trained symmetric or elbo run); "
                             "without a run use --method interpolation")
        config, run_data, trained = load_run(run)
        if not isinstance(trained, GenerativeMethod):
            raise ValueError(f"{run} was trained with {config.method}, which has no generative model: inpaint with "
                             "an HVAE run (symmetric or elbo) or --method interpolation")
        cube = run_data.cube if data == config.data else open_data(data, data_seed)
        hvae = trained.hvae.to(device)
        if patch_size is None:
            from hvaeseg.inpaint_cube import _open, posterior_tile

            sizes = _open(cube).sizes
            patch_size = posterior_tile(config.patch_size, hvae.spec.image.transfer, sizes["y"], sizes["x"])
        return cube, hvae, config.dates, patch_size
    cube = open_data(data, data_seed)
    return cube, None, 1, patch_size or (config.patch_size if config is not None else DEFAULT_INTERPOLATION_PATCH)


def _inpaint(args: argparse.Namespace) -> int:
    from hvaeseg.data.store import check_output_free
    from hvaeseg.experiment import SYNTHETIC_PREFIX, RunConfig

    if args.samples < 1:
        raise ValueError(f"--samples: expected K >= 1, got {args.samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected N >= 1, got {args.batch_size}")
    if args.patch_size is not None and args.patch_size < 1:
        raise ValueError(f"--patch-size: expected a positive size, got {args.patch_size}")
    if args.recalibrate and args.method != "posterior":
        raise ValueError("--recalibrate scales the posterior spread: it needs --method posterior (an HVAE run)")
    if args.recalibrate and (args.calibration_samples < 2 or args.calibration_tiles < 1):
        raise ValueError(f"--calibration-samples must be >= 2 and --calibration-tiles >= 1, got "
                         f"{args.calibration_samples} and {args.calibration_tiles}")
    config = None
    if args.run is not None:
        config = RunConfig.load(args.run)  # FileNotFoundError: not a run folder
        if args.method == "posterior" and config.method not in HVAE_METHODS:
            raise ValueError(
                f"{args.run} was trained with {config.method}, which has no generative model: inpaint with an "
                "HVAE run (symmetric or elbo) or --method interpolation"
            )
    elif args.method == "posterior":
        raise ValueError("RUN is required with --method posterior (a trained symmetric or elbo run); "
                         "without a run use --method interpolation")
    data = args.data if args.data is not None else (config.data if config is not None else None)
    if data is None:
        raise ValueError("--data CUBE is required without RUN (a store path, URL or synthetic:PRESET)")
    if not data.startswith(SYNTHETIC_PREFIX) and _same_store(data, args.out):
        raise ValueError(f"--out {args.out} is the input cube: write the filled cube to another path")
    from hvaeseg.commands.train import _output_chunks
    from hvaeseg.parallel import parallel_part

    chunks = _output_chunks(args.chunk)
    part = parallel_part(args.part)
    if part is not None:  # one part of a fill in parallel (--part, or torchrun's RANK/WORLD_SIZE)
        from hvaeseg.parallel import InpaintJob, run_part

        job = InpaintJob(out=args.out, run=args.run, data=data, method=args.method, samples=args.samples,
                         window=args.window, batch_size=args.batch_size, patch_size=args.patch_size, seed=args.seed,
                         device=args.device, chunk=args.chunk, overwrite=args.overwrite, recalibrate=args.recalibrate,
                         calibration_samples=args.calibration_samples, calibration_tiles=args.calibration_tiles)
        print(run_part(job, *part).summary("filled", args.out))
        return 0
    check_output_free(args.out, args.overwrite)  # before any work; checked again when committing
    device = args.device or (config.device if config is not None else "cpu")

    start = time.perf_counter()
    from hvaeseg.inpaint_cube import inpaint_cube, write_filled

    cube, hvae, dates, patch = inpaint_inputs(args.method, args.run, data, config, args.patch_size, device)
    if args.patch_size is None and config is None:
        from hvaeseg.inpaint_cube import _open

        ds = _open(cube)
        patch = min(patch, ds.sizes["y"], ds.sizes["x"])
    factor = 1.0
    if args.recalibrate:
        from hvaeseg.calibrate_cube import cube_spread_factor

        calibration = cube_spread_factor(cube, hvae=hvae, patch_size=patch, dates=dates, window=args.window,
                                         num_samples=args.calibration_samples, max_tiles=args.calibration_tiles,
                                         batch_size=args.batch_size, device=device, seed=args.seed)
        print(calibration)
        factor = calibration.factor
    filled = inpaint_cube(cube, method=args.method, hvae=hvae, patch_size=patch, dates=dates, window=args.window,
                          num_samples=args.samples, batch_size=args.batch_size, device=device, seed=args.seed,
                          run=args.run, spread_factor=factor)
    filled.attrs["inpaint_data"] = str(data)
    write_filled(filled, args.out, overwrite=args.overwrite, chunks=chunks)
    seconds = time.perf_counter() - start
    print(_summary(filled, args, seconds))
    return 0


def _summary(ds, args: argparse.Namespace, seconds: float) -> str:
    import numpy as np

    from hvaeseg.data.summary import _iso, _time_unit

    mask = np.asarray(ds["filled"].values)
    per_date = mask.reshape(mask.shape[0], -1)
    n_pix = per_date.shape[1]
    times = ds["time"].values
    unit = _time_unit(times)
    how = f"posterior, {args.samples} samples" if args.method == "posterior" else "linear interpolation in time"
    lines = [f"filled {int(mask.sum())} of {mask.size} pixel-dates ({mask.mean():.1%}) by {how} in {seconds:.1f} s; "
             f"wrote {args.out}", f"{'date':<20} {'filled':>10} {'share':>7}"]
    for t in range(per_date.shape[0]):
        k = int(per_date[t].sum())
        lines.append(f"{_iso(times[t], unit):<20} {k:>10} {k / n_pix:>7.1%}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inpaint",
        help="fill every invalid (cloudy) pixel of a cube",
        description="Fill every invalid pixel of a cube by sampling the posterior of a trained HVAE run "
        "(symmetric or elbo), or by linear interpolation in time (--method interpolation, no RUN needed). "
        "Writes the cube with filled reflectance (same encoding), `std` (posterior spread) and `filled` (mask).",
    )
    p.add_argument("run", metavar="RUN", nargs="?", default=None,
                   help="run folder of an HVAE (optional with --method interpolation)")
    p.add_argument("--data", default=None, metavar="CUBE",
                   help="store path, URL or synthetic:PRESET to fill (default: the run's cube)")
    p.add_argument("--out", required=True, metavar="FILLED.zarr", help="where to write the filled cube")
    p.add_argument("--samples", type=int, default=8, metavar="K", help="posterior samples per tile (default 8)")
    p.add_argument("--method", choices=("posterior", "interpolation"), default="posterior",
                   help="posterior (HVAE run) or interpolation (linear in time); default posterior")
    p.add_argument("--window", choices=("nearest", "season"), default="nearest",
                   help="temporal runs: the other dates of each stack are the nearest at least half-clear dates "
                   "(nearest, default) or the clearest date of each part of the season (season)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="tiles per model call (default 8)")
    p.add_argument("--patch-size", type=int, default=None, metavar="P",
                   help="tile side (default: the run's patch size, at least 4 x the transfer radius for a hierarchy "
                   f"with image.transfer; {DEFAULT_INTERPOLATION_PATCH} without a run)")
    p.add_argument("--recalibrate", action="store_true",
                   help="scale the posterior spread by a factor fitted so that 90%% intervals of the samples hold "
                   "90%% of the cube's own clear pixels hidden under its own cloud masks (hvaeseg.calibrate_cube); "
                   "the factor is printed and stored as inpaint_spread_factor")
    p.add_argument("--calibration-samples", type=int, default=32, metavar="K",
                   help="--recalibrate: samples of x per calibration tile (default 32)")
    p.add_argument("--calibration-tiles", type=int, default=64, metavar="N",
                   help="--recalibrate: (date, mask, tile) items that fit the factor (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior sampling (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the run's device)")
    add_storage_options(p)
    from hvaeseg.commands.train import add_parallel_options

    add_parallel_options(p)
    p.set_defaults(func=_inpaint)
