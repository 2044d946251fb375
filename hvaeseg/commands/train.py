"""``hvaeseg train``, ``hvaeseg evaluate`` and ``hvaeseg predict``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from typing import Any

from hvaeseg.commands._table import format_metrics


class _MethodNames(Sequence):
    """The ``--method`` choices: the names in :data:`hvaeseg.methods.METHODS`, read from the registry when
    first needed (parsing ``train`` or printing its help), so that the other commands do not import torch."""

    def _names(self) -> tuple[str, ...]:
        from hvaeseg.methods import METHODS

        return tuple(METHODS)

    def __getitem__(self, i):  # type: ignore[override]
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(self._names())


#: the method names of the registry (:data:`hvaeseg.methods.METHODS`)
METHOD_NAMES: Sequence[str] = _MethodNames()


def _options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--options: expected a JSON object such as '{{\"lr\": 0.001}}', got {text!r} ({err})"
        ) from err
    if not isinstance(options, dict):
        raise ValueError(f"--options: expected a JSON object, got {type(options).__name__}")
    return options


def _train(args: argparse.Namespace) -> int:
    from hvaeseg.experiment import LoaderOptions, RunConfig, evaluate_run, train_run

    config = RunConfig(
        method=args.method, data=args.data, labels=args.labels, steps=args.steps, seed=args.seed,
        data_seed=args.data_seed, batch_size=args.batch_size, patch_size=args.patch_size, dates=args.dates,
        unlabelled_patches=args.unlabelled_patches, block=args.block, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, time_budget_s=args.time_budget, device=args.device,
        options=_options(args.options),
    )
    loader = LoaderOptions(workers=args.loader_workers, processes=args.loader_processes)
    trainer = train_run(config, args.out, resume=not args.no_resume, loader=loader)
    h = trainer.history
    what = "boosting rounds" if getattr(trainer, "fitted", False) else "steps"
    print(f"trained {config.method} for {trainer.step} {what} in {h.train_seconds:.0f} s; "
          f"best validation mean IoU {h.best_score:.3f} at step {h.best_step}; run folder {args.out}")
    if args.evaluate:
        print(format_metrics(evaluate_run(args.out, "test")))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from hvaeseg.experiment import evaluate_run

    result = evaluate_run(args.run, args.split, iwae_samples=args.iwae_samples, device=args.device)
    print(json.dumps(result, indent=1) if args.json else format_metrics(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from hvaeseg.data.store import check_output_free
    from hvaeseg.experiment import load_run, open_data
    from hvaeseg.predict import predict_cube, write_prediction

    check_output_free(args.out, args.overwrite)  # before the prediction runs
    config, data, method = load_run(args.run, device=args.device)
    cube = open_data(args.data, config.data_seed) if args.data else data.cube
    pred = predict_cube(method.predict_proba, cube, data.num_classes, patch_size=config.patch_size,
                        dates=config.dates, batch_size=config.batch_size, device=config.device)
    write_prediction(pred, args.out, overwrite=args.overwrite)
    print(f"wrote class map and probabilities ({pred.sizes['y']}x{pred.sizes['x']}, {data.num_classes} classes) "
          f"to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method on a cube",
                       description="Train a segmentation method; CUBE may be a store path, a URL or synthetic:PRESET.")
    # a metavar, so that argparse lists the choices (importing the registry) only for help and errors
    p.add_argument("--method", choices=METHOD_NAMES, required=True, metavar="METHOD", help="one of: %(choices)s")
    p.add_argument("--data", default="synthetic:small", metavar="CUBE",
                   help="store path, fsspec URL or synthetic:PRESET (default synthetic:small)")
    p.add_argument("--labels", type=int, default=10, metavar="N", help="labelled training locations (default 10)")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0, help="seed of split, labelled subset and plans")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--dates", type=int, default=1, help="dates per patch (>1: temporal stacks)")
    p.add_argument("--unlabelled-patches", type=int, default=2048)
    p.add_argument("--block", type=int, default=128, help="side of the spatial split blocks (pixels)")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    p.add_argument("--device", default="cpu")
    p.add_argument("--options", default=None, metavar="JSON", help="method hyper-parameters as a JSON object")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if RUN has a checkpoint")
    p.add_argument("--loader-workers", type=int, default=1, metavar="N",
                   help="loader threads (or processes) per training stream (default 1; results do not change)")
    p.add_argument("--loader-processes", action="store_true",
                   help="read batches in worker processes (cube in a store; for GPU training)")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split when done")
    p.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run")
    e.add_argument("run", metavar="RUN")
    e.add_argument("--split", default="test", choices=("val", "test"))
    e.add_argument("--iwae-samples", type=int, default=8)
    e.add_argument("--device", default=None, help="cpu or cuda (default: the device the run was trained on)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_evaluate)

    q = sub.add_parser("predict", help="predict a class map for a whole cube")
    q.add_argument("run", metavar="RUN")
    q.add_argument("--data", default=None, metavar="CUBE", help="cube to predict (default: the run's cube)")
    q.add_argument("--device", default=None, help="cpu or cuda (default: the device the run was trained on)")
    q.add_argument("--out", required=True, metavar="PRED.zarr")
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=_predict)
