"""The ``hvaeseg`` command line (also ``python -m hvaeseg``).

Each command group lives in its own module under :mod:`hvaeseg.commands`; this module only assembles them
and maps user errors to exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvaeseg",
        description="Semi-supervised segmentation of Sentinel-2 image time series with hierarchical VAEs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from hvaeseg.commands import data, ingest, inpaint, report, train

    data_commands = data.register(sub)
    ingest.add_ingest_parser(data_commands)
    train.register(sub)
    report.register(sub)
    inpaint.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
        # user errors: one clear line, no traceback from deep inside a library
        print(f"hvaeseg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
