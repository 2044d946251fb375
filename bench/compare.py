"""Compare methods on one or more cubes under the same protocol and wall-clock budget; prints JSON.

On each cube, every method sees the same spatial split, labelled subset (``data_seed``) and evaluation tiles;
each trains for the same wall-clock budget (``--budget`` seconds) with validation every ``--val-every`` steps,
the checkpoint with the best validation mean IoU is evaluated once on the test split. Several training seeds
give a mean and a spread.

    python bench/compare.py --methods symmetric elbo supervised mixmatch --labels 10 --budget 240
    python bench/compare.py --methods supervised mixmatch --labels 10 100 0 --seeds 0 1 2 --budget 120
    python bench/compare.py --cubes synthetic:small s2-cloud-shadow-512 --methods supervised symmetric --budget 240

``--cubes`` takes ``synthetic:PRESET``, the name of a real scene under ``bench/data`` (ingested once into
``--cube-cache``, see ``bench/scenes.py``) or a cube store path; ``--preset P`` is short for
``--cubes synthetic:P``. ``--labels 0`` means *all* labelled training locations (counted per cube). Every
row carries its ``cube`` and the summary is grouped by (cube, method, labels). The run folders are kept under
``--out``/CUBE/METHOD-NN-seedS/.

``--steps N`` trains every run for N steps instead (equal steps: no time budget, unless ``--budget`` is given
too, which then caps each run's training time); ``--options METHOD=JSON`` (repeatable) passes method
hyper-parameters (``hvaeseg train --options``). A finished run also writes its row, with the per-class IoU,
the fit time of a fitted method (``pixel-gbm``) and the run's config, to ``compare_row.json`` in its folder
(written last: a folder without it holds an unfinished run; ``bench/budget.py`` skips runs that have it).
``--eval-val`` also evaluates the val split once the test split is done (the test figures, steps and times are
unchanged) and adds ``val_accuracy`` and ``val_mean_iou`` to the row (``bench/ablation.py`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hvaeseg.data.sampler import PatchPlan
from hvaeseg.experiment import RunConfig, evaluate_run, train_run
from hvaeseg.report import best_prediction

if str(Path(__file__).resolve().parent) not in sys.path:  # bench/scenes.py, beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_settings import add_run_settings  # noqa: E402
from scenes import cube as resolve_cube  # noqa: E402
from scenes import label as cube_label  # noqa: E402

KEYS = ("accuracy", "mean_iou", "iwae_nats_per_value", "consistency", "steps_per_second", "labelled_pixels")
#: the file a finished run's row is written to, in its run folder
ROW_FILE = "compare_row.json"
#: the wall-clock budget per run when neither --budget nor --steps is given
DEFAULT_BUDGET_S = 240.0
#: steps of a run trained for a wall-clock budget (the budget ends it first)
UNBOUNDED_STEPS = 10**7


def all_locations(config: RunConfig) -> int:
    """How many labelled training locations the split holds (the "all labels" budget)."""
    from hvaeseg.data.sampler import PatchSampler, SpatialSplit
    from hvaeseg.experiment import open_data

    split = SpatialSplit(block={"y": config.block, "x": config.block},
                         fractions=dict(zip(("train", "val", "test"), config.fractions)), seed=config.data_seed)
    sampler = PatchSampler(config.sizes, split=split, splits=("train",), seed=config.data_seed)
    return len(sampler.labelled_candidates(open_data(config.data, config.data_seed)))


def _slug(cube: str) -> str:
    """A folder name for a cube: ``synthetic-small``, ``s2-cloud-shadow-512``, ``x`` for ``/some/x.zarr``."""
    name = Path(cube).name.removesuffix(".zarr") if cube.endswith(".zarr") else cube
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def parse_options(items: list[str] | None, methods: list[str] | None = None) -> dict[str, dict]:
    """``["METHOD=JSON", ...]`` -> ``{method: options}``, each checked against the method's config dataclass.

    :param methods: the methods of the study; options for another method are an error (a typo, most likely).
    :raises ValueError: on a malformed item, an unknown method or option, or a method given twice.
    """
    from hvaeseg.methods import METHODS, method_config

    out: dict[str, dict] = {}
    for item in items or []:
        method, sep, text = item.partition("=")
        method = method.strip()
        if not sep or not method:
            raise ValueError(f"--options: expected METHOD=JSON, e.g. 'supervised={{\"lr\": 0.001}}', got {item!r}")
        if method not in METHODS:
            raise ValueError(f"--options {item!r}: unknown method {method!r}; expected one of {sorted(METHODS)}")
        if methods is not None and method not in methods:
            raise ValueError(f"--options {item!r}: {method!r} is not among the methods run ({' '.join(methods)})")
        if method in out:
            raise ValueError(f"--options: {method!r} given twice; put all its options in one JSON object")
        try:
            options = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--options {item!r}: not JSON ({err})") from None
        if not isinstance(options, dict):
            raise ValueError(f"--options {item!r}: expected a JSON object, got {type(options).__name__}")
        method_config(method, options)  # unknown or invalid options fail here, before any run starts
        out[method] = options
    return out


def run_dir(out: str | os.PathLike, cube: str, method: str, labels: int, seed: int) -> Path:
    """The run folder of (cube, method, N, seed) under ``out``."""
    return Path(out) / _slug(cube) / f"{method}-N{labels}-seed{seed}"


def run_config(args: argparse.Namespace, data: str, method: str, labels: int, seed: int) -> RunConfig:
    """The :class:`RunConfig` of one run, from the parsed arguments (``budget``, ``steps``, ``batch_size``,
    ``patch_size``, ``block``, ``val_every``, ``unlabelled_patches``, ``dates``, ``method_options``)."""
    return RunConfig(
        method=method, data=data, labels=labels, steps=args.steps or UNBOUNDED_STEPS, seed=seed, data_seed=0,
        batch_size=args.batch_size, patch_size=args.patch_size, dates=getattr(args, "dates", 1), block=args.block,
        val_every=args.val_every,
        checkpoint_every=args.val_every, time_budget_s=args.budget, unlabelled_patches=args.unlabelled_patches,
        options=dict(getattr(args, "method_options", {}).get(method, {})),
    )


def labelled_pixels(lab: PatchPlan) -> int:
    """Pixels of the cube that the labelled patches cover (their union over dates: a location counts once; on an
    image mosaic the tiles of an image may overlap, and its pixels count once too)."""
    if len(lab) == 0:
        return 0
    Y, X = int(lab.cube_shape["y"]), int(lab.cube_shape["x"])
    H, W = int(lab.sizes["y"]), int(lab.sizes["x"])
    covered = np.zeros((Y, X), dtype=bool)
    for y, x in {(int(y), int(x)) for y, x in zip(lab.y, lab.x)}:
        covered[y:y + H, x:x + W] = True
    return int(covered.sum())


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_one(args: argparse.Namespace, cube: str, data: str, method: str, labels: int, seed: int) -> dict:
    out = run_dir(args.out, cube, method, labels, seed)
    config = run_config(args, data, method, labels, seed)
    (out / ROW_FILE).unlink(missing_ok=True)  # the run is done again: its old row no longer stands
    t0 = time.perf_counter()
    trainer = train_run(config, out, resume=False)
    train_s = trainer.history.train_seconds
    result = evaluate_run(out, "test", iwae_samples=args.iwae_samples)
    lab = PatchPlan.load(out / "plan_train.json").select(labelled=True)  # the plan the run trained on
    row = {
        "cube": cube, "method": method, "labels": labels, "seed": seed, "dates": config.dates, "steps": trainer.step,
        "steps_per_second": trainer.step / train_s, "train_seconds": train_s,
        "wall_seconds": time.perf_counter() - t0,
        # the budget: N locations (patch_size^2 pixels each; on a mosaic, whole images); every clear-enough date
        # of a location is a labelled (single-date) patch, so labelled_patches counts (location, date) pairs
        "labelled_patches": len(lab), "labelled_pixels": labelled_pixels(lab),
        "best_step": trainer.history.best_step,
        # the prediction rule validation chose with the checkpoint (HVAE ``decoder_betas``), None for a single rule
        "prediction": best_prediction({"validation": trainer.history.validation,
                                       "best_step": trainer.history.best_step}),
        **{k: result.get(k) for k in ("accuracy", "mean_iou", "iwae_nats_per_value", "consistency",
                                      "recon_mae", "recon_rmse")},
    }
    if getattr(args, "eval_val", False):  # after the test split: the test figures stay as they are
        val = evaluate_run(out, "val", iwae_samples=1)  # its IWAE is not reported: one sample is enough
        row.update(val_accuracy=val.get("accuracy"), val_mean_iou=val.get("mean_iou"))
    print(json.dumps(row), file=sys.stderr)
    fitted = getattr(trainer, "fitted", False)
    _write_json(out / ROW_FILE, {
        **row, "iou": result.get("iou"), "patches": result.get("patches"), "pixels": result.get("pixels"),
        "fit_seconds": float(trainer.stats["fit_seconds"]) if fitted and "fit_seconds" in trainer.stats else None,
        "budget_s": args.budget, "steps_target": args.steps, "config": json.loads(config.to_json()),
    })
    return row


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cube"], r["method"], r["labels"]), []).append(r)
    out = []
    for (cube, method, labels), rs in groups.items():
        entry = {"cube": cube, "cube_label": cube_label(cube), "method": method, "labels": labels, "seeds": len(rs)}
        for k in KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                entry[k] = statistics.fmean(vals)
                entry[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["symmetric", "elbo", "supervised", "mixmatch"])
    p.add_argument("--labels", nargs="+", type=int, default=[10], help="N per run; 0 = all locations")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--budget", type=float, default=None,
                   help=f"training seconds per run (default {DEFAULT_BUDGET_S:g}; with --steps: a cap, default none)")
    p.add_argument("--steps", type=int, default=None,
                   help="train every run for this many steps (equal steps) instead of a wall-clock budget")
    p.add_argument("--options", action="append", default=[], metavar="METHOD=JSON",
                   help="hyper-parameters of METHOD as a JSON object (repeatable, one per method)")
    p.add_argument("--cubes", nargs="+", default=None, metavar="CUBE",
                   help="synthetic:PRESET, a scene of bench/data (e.g. s2-cloud-shadow-512) or a store path "
                   "(default synthetic:small)")
    p.add_argument("--preset", default=None, help="short for --cubes synthetic:PRESET")
    add_run_settings(p)
    p.add_argument("--eval-val", action="store_true",
                   help="also evaluate the val split (after the test split) and add val_accuracy / val_mean_iou "
                   "to each row (bench/ablation.py)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: expected a positive number of steps, got {args.steps}")
    if args.budget is not None and not args.budget > 0:
        p.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    if args.budget is None and args.steps is None:
        args.budget = DEFAULT_BUDGET_S
    try:
        args.method_options = parse_options(args.options, args.methods)
    except ValueError as err:
        p.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset is not None and args.cubes is not None:
        p.error("give --cubes or --preset (short for --cubes synthetic:PRESET), not both")
    cubes = args.cubes or [f"synthetic:{args.preset or 'small'}"]
    if len(set(cubes)) != len(cubes):
        p.error(f"--cubes repeats a cube: {cubes}")
    os.environ.setdefault("HVAESEG_NO_PROGRESS", "1")
    data = {c: resolve_cube(c, cache_dir=args.cube_cache) for c in cubes}  # ingests real scenes up front
    n_all = {}
    for c in cubes:
        probe = RunConfig(method="supervised", data=data[c], labels=1, patch_size=args.patch_size, block=args.block)
        n_all[c] = all_locations(probe)
    rows = []
    for c in cubes:
        for labels in args.labels:
            n = n_all[c] if labels == 0 or labels > n_all[c] else labels
            for seed in args.seeds:
                for method in args.methods:
                    rows.append(run_one(args, c, data[c], method, n, seed))
    report = {
        "cubes": [{"cube": c, "label": cube_label(c), "data": data[c], "all_locations": n_all[c]} for c in cubes],
        "patch_size": args.patch_size, "block": args.block, "budget_s": args.budget, "threads": torch.get_num_threads(),
        **({"steps": args.steps} if args.steps is not None else {}),
        **({"options": args.method_options} if args.method_options else {}),
        **({"preset": args.preset} if args.preset is not None else {}),
        "runs": rows, "summary": summarise(rows),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
