"""``hvaeseg train``, ``hvaeseg evaluate`` and ``hvaeseg predict``."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from hvaeseg._dataclass_io import from_dict
from hvaeseg.commands._storage import add_storage_options
from hvaeseg.commands._table import format_metrics
from hvaeseg.run_config import LoaderOptions, RunConfig, default, field_help, flag, read_config_file


class _MethodNames(Sequence):
    """The ``--method`` choices: the names in :data:`hvaeseg.methods.METHODS`, read from the registry when
    first needed (parsing ``train`` or printing its help), so that the other commands do not import torch."""

    def _names(self) -> tuple[str, ...]:
        from hvaeseg.methods import METHODS

        return tuple(METHODS)

    def __getitem__(self, i):
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


def _given_sizes(patch: int | None, block: int | None) -> tuple[int, int]:
    """The patch size and block as given (None: not given), the defaults standing in for those left out (for
    checking the rest of the configuration before the cube is looked at)."""
    if patch is None:
        patch = default("patch_size") if block is None or block < 1 else min(default("patch_size"), block)
    return patch, max(default("block"), patch) if block is None else block


def _run_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~hvaeseg.run_config.RunConfig` fields ``hvaeseg train`` was given: those of ``--config``,
    overridden by the flags given on the command line (a flag left out does not override, even where its default
    differs from the file)."""
    settings = read_config_file(args.config) if args.config else {}
    settings.update({name: getattr(args, name) for name in _TRAIN_FIELDS if name in args.given_fields})
    if "options" in args.given_fields:
        settings["options"] = _options(args.options)
    if settings.get("method") is None:
        methods = ", ".join(METHOD_NAMES)
        if args.config:
            raise ValueError(f"--method: expected a training method ({methods}), given neither as a flag nor in "
                             f"{args.config}: pass --method METHOD, or add method: METHOD to {args.config}")
        raise ValueError(f"--method: expected a training method ({methods}), got none: pass --method METHOD (or a "
                         "--config file that gives method)")
    return settings


def _train(args: argparse.Namespace) -> int:
    """``hvaeseg train``; under torchrun (``RANK``, ``WORLD_SIZE`` set) one of several data-parallel processes
    (:mod:`hvaeseg.distributed`), of which process 0 alone prints, writes the run folder and evaluates."""
    from hvaeseg.distributed import DistributedContext, session
    from hvaeseg.experiment import cube_shape, evaluate_run, fit_sizes, train_run

    given = _run_fields(args)
    patch_size, block_size = given.get("patch_size"), given.get("block")
    patch, block = _given_sizes(patch_size, block_size)
    # everything but the sizes checked first: a bad flag is named before the cube is opened
    config = from_dict(RunConfig, {**given, "patch_size": patch, "block": block})
    context = DistributedContext.from_env(config.device)  # one process, or one of torchrun's
    if patch_size is None or block_size is None:
        shape = cube_shape(config.data)
        patch, block = fit_sizes(shape, config.labels, patch_size=patch_size, block=block_size,
                                 fractions=config.fractions, data_seed=config.data_seed)
        if (patch, block) != (config.patch_size, config.block) and context.is_main:
            print(f"note: --patch-size {patch} --block {block}, to fit the {shape['y']}x{shape['x']} cube with "
                  f"--labels {config.labels} (pass them to choose others)", file=sys.stderr)
        config = replace(config, patch_size=patch, block=block)
    loader = LoaderOptions(workers=args.loader_workers, processes=args.loader_processes)
    with session(context):
        trainer = train_run(config, args.out, resume=not args.no_resume, loader=loader, distributed=context)
    if not context.is_main:
        return 0
    h = trainer.history
    processes = f" by {context.world_size} processes" if context.is_distributed else ""
    print(f"trained {config.method}{processes} for {trainer.step} {trainer.method.step_unit} in {h.train_seconds:.0f} "
          f"s; best validation mean IoU {h.best_score:.3f} at step {h.best_step}; run folder {args.out}")
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
    from hvaeseg.experiment import check_cube, load_run, open_data
    from hvaeseg.nets.precision import autocast
    from hvaeseg.parallel import parallel_part
    from hvaeseg.predict import predict_cube, write_prediction

    chunks = _output_chunks(args.chunk)
    part = parallel_part(args.part)
    if part is not None:  # one part of a prediction in parallel (--part, or torchrun's RANK/WORLD_SIZE)
        from hvaeseg.parallel import PredictJob, run_part

        job = PredictJob(run=args.run, out=args.out, data=args.data, device=args.device, chunk=args.chunk,
                         overwrite=args.overwrite)
        print(run_part(job, *part).summary("predicted", args.out))
        return 0
    check_output_free(args.out, args.overwrite)  # before the prediction runs
    config, data, method = load_run(args.run, device=args.device)
    cube = open_data(args.data, config.data_seed) if args.data else data.cube
    class_attrs, class_ids = check_cube(data, cube, args.data or config.data, patch_size=config.patch_size,
                                        dates=config.dates)
    with autocast(config.precision, config.device):
        pred = predict_cube(method.predict_proba, cube, data.num_classes, patch_size=config.patch_size,
                            dates=config.dates, batch_size=config.batch_size, device=config.device,
                            class_attrs=class_attrs, class_ids=class_ids)
    write_prediction(pred, args.out, overwrite=args.overwrite, chunks=chunks)
    mapped = "" if class_ids is None else f", numbered as the labels of {args.data} (mapped by name)"
    print(f"wrote class map and probabilities ({pred.sizes['y']}x{pred.sizes['x']}, {data.num_classes} classes"
          f"{mapped}) to {args.out}")
    return 0


def _output_chunks(chunk: int | None) -> dict[str, int] | None:
    """``--chunk PIXELS``: the output's y/x chunks (None: the store's default)."""
    if chunk is None:
        return None
    if chunk < 1:
        raise ValueError(f"--chunk: expected a positive number of pixels, got {chunk}")
    return {"y": chunk, "x": chunk}


def add_parallel_options(p: argparse.ArgumentParser) -> None:
    """``--part I/N`` and ``--chunk PIXELS`` (``hvaeseg predict`` and ``hvaeseg inpaint``)."""
    p.add_argument("--part", default=None, metavar="I/N",
                   help="compute part I of N (0 <= I < N) of the output's regions (one per output chunk, "
                        "i %% N == I) into OUT.partial, which the last part to finish renames to OUT; run the N "
                        "parts at once, anywhere that sees OUT; a rerun fills only the regions not done. Under "
                        "torchrun the part is RANK/WORLD_SIZE. See docs/scaling.md")
    p.add_argument("--chunk", type=int, default=None, metavar="PIXELS",
                   help="y/x chunk side of the output store (default 256); with --part, one region per chunk")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where there is none to show (a switch, a required
    option, a default of None, whose meaning the help states); ``{methods}`` lists the registry's methods."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "{methods}" in text:  # the registry is imported only to print help
            text = text.replace("{methods}", ", ".join(METHOD_NAMES))
        if ("%(default)" in text or not action.option_strings or action.required
                or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))):
            return text
        return f"{text} (default: %(default)s)"


#: the :class:`~hvaeseg.run_config.RunConfig` fields ``hvaeseg train`` sets, each by the flag :func:`flag` names
_TRAIN_FIELDS = ("method", "data", "labels", "steps", "seed", "data_seed", "batch_size", "patch_size", "dates",
                 "unlabelled_patches", "block", "fractions", "min_valid", "val_every", "checkpoint_every",
                 "time_budget_s", "device", "precision")


class _Given(argparse.Action):
    """Store the option's value and add its ``dest`` to ``given_fields``: the flags given on the command line,
    which override ``--config`` (a flag left out keeps its default in the namespace, for ``--help``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given_fields = getattr(namespace, "given_fields", frozenset()) | {self.dest}


def _config_option(p: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """``hvaeseg train``'s option for the RunConfig field ``name``: its flag, type, default and help (the
    field's ``:param:`` text) come from :class:`~hvaeseg.run_config.RunConfig`; ``kwargs`` add to them. Giving
    it records ``name`` in ``args.given_fields`` (:class:`_Given`)."""
    kind = typing.get_type_hints(RunConfig)[name]
    kind = {int: int, float: float, str: str}.get(kind, float)  # float | None, tuple[float, ...]: floats
    options = {"dest": name, "type": kind, "default": default(name), "help": field_help(name).replace("%", "%%"),
               "action": _Given}
    p.add_argument(flag(name), **{**options, **kwargs})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a method on a cube", formatter_class=HelpFormatter,
                       description="Train a segmentation method into a run folder. Rerun the same command to resume "
                                   "it, or with a larger --steps (or --time-budget) to train it on. The settings "
                                   "can come from a --config file (the fields of a run's config.json); the flags "
                                   "given override it, and RUN/config.json records the result.")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="YAML or JSON file of run settings: the keys of a run's config.json (method, data, labels, "
                        "steps, ..., time_budget_s, precision; method options as a mapping under options), any left "
                        "out; a flag given on the command line replaces the file's value of that field (--options "
                        "the whole options mapping); a data path is relative to the current folder, as with --data; "
                        "an unknown key is an error")
    # no argparse choices for --method: an unknown method is refused by RunConfig in one line, like any other
    # bad value, and the registry (torch) is imported only when needed
    _config_option(p, "method", metavar="METHOD", default=None,
                   help="training method: {methods} (required, here or in the --config file)")
    _config_option(p, "data", metavar="CUBE")
    _config_option(p, "labels", metavar="N")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (created; a rerun resumes it)")
    _config_option(p, "steps", metavar="N")
    _config_option(p, "seed", metavar="N")
    _config_option(p, "data_seed", metavar="N")
    _config_option(p, "batch_size", metavar="N")
    for name in ("patch_size", "block"):
        _config_option(p, name, metavar="PIXELS", default=None,
                       help=f"{field_help(name)} (default: {default(name)}, or smaller where the cube needs it)")
    _config_option(p, "dates", metavar="T")
    _config_option(p, "unlabelled_patches", metavar="N")
    _config_option(p, "fractions", nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    _config_option(p, "min_valid", metavar="FRACTION")
    _config_option(p, "val_every", metavar="STEPS")
    _config_option(p, "checkpoint_every", metavar="STEPS")
    _config_option(p, "time_budget_s", metavar="SECONDS")
    _config_option(p, "device", metavar="DEVICE")
    _config_option(p, "precision", metavar="fp32|bf16")
    _config_option(p, "options", type=str, default=None, metavar="JSON",
                   help=f"{field_help('options')}, e.g. '{{\"lr\": 0.001}}' (default: the method's defaults)")
    p.add_argument("--no-resume", action="store_true",
                   help="train afresh even if RUN holds a checkpoint of this configuration")
    p.add_argument("--loader-workers", type=int, default=LoaderOptions.workers, metavar="N",
                   help="loader threads (or processes) per training stream; results do not change")
    p.add_argument("--loader-processes", action="store_true",
                   help="read batches in worker processes (needs the cube in a store; for GPU training)")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split when done")
    add_storage_options(p)
    p.set_defaults(func=_train, given_fields=frozenset())

    e = sub.add_parser("evaluate", help="evaluate a trained run", formatter_class=HelpFormatter,
                       description="Segmentation metrics of a run's best state on one split of its cube (and IWAE, "
                                   "consistency and reconstruction for the HVAE methods), added to RUN/metrics.json.")
    e.add_argument("run", metavar="RUN", help="run folder written by hvaeseg train")
    e.add_argument("--split", default="test", choices=("val", "test"), help="the split to evaluate")
    e.add_argument("--iwae-samples", type=int, default=8, metavar="K",
                   help="importance samples per image of the IWAE bound (HVAE methods)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: the device the run was trained on)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    add_storage_options(e)
    e.set_defaults(func=_evaluate)

    q = sub.add_parser("predict", help="predict a class map for a whole cube", formatter_class=HelpFormatter,
                       description="Predict the class map and class probabilities of a whole cube with a run's best "
                                   "state. Another cube must have the run's bands; where it has labels, the map is "
                                   "numbered as they are (mapped by class name).")
    q.add_argument("run", metavar="RUN", help="run folder written by hvaeseg train")
    q.add_argument("--data", default=None, metavar="CUBE",
                   help="cube to predict: store path, URL or synthetic:PRESET (default: the run's cube)")
    q.add_argument("--device", default=None, help="cpu or cuda (default: the device the run was trained on)")
    q.add_argument("--out", required=True, metavar="PRED.zarr", help="Zarr store to write")
    q.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_storage_options(q)
    add_parallel_options(q)
    q.set_defaults(func=_predict)
