"""The ``hvaeseg`` command line (also ``python -m hvaeseg``).

Each command group lives in its own module under :mod:`hvaeseg.commands`; this module only assembles them
and maps user errors to exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvaeseg",
        description="Semi-supervised segmentation of Sentinel-2 image time series with hierarchical VAEs.",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from hvaeseg.commands import data, ingest, inpaint, report, spec, train

    data_commands = data.register(sub)
    ingest.add_ingest_parser(data_commands)
    train.register(sub)
    report.register(sub)
    inpaint.register(sub)
    spec.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are one line on stderr (``--debug``: the traceback too).

    Exit codes: 0 success, 2 usage or input errors (bad values, missing or existing files, permissions),
    130 interrupted (Ctrl-C); a closed output pipe (``hvaeseg data info cube.zarr | head``) ends quietly.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from hvaeseg.commands._storage import storage_options_of

        with storage_options_of(args):  # --storage-options, for the whole command
            return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
            NotADirectoryError) as err:
        # user errors: one clear line, no traceback from deep inside a library
        if args.debug:
            traceback.print_exc()
        print(f"hvaeseg {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # training saves its state first (hvaeseg.train.TrainingInterrupted)
        if args.debug:
            traceback.print_exc()
        print(f"hvaeseg {args.command}: interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): nothing more to say; keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _one_line(err: BaseException) -> str:
    """The error's message; an OSError (e.g. a permission error) as its reason and the file it concerns."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}"
    return str(err) or type(err).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
