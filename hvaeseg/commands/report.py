"""``hvaeseg report RUN [-o OUT.png]``: a run's training curves as a PNG, and a short summary."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from hvaeseg.report import write_report

    path, summary = write_report(args.run, args.output, dpi=args.dpi)
    print(f"wrote {path}")
    print(summary)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="draw a run's training curves as a PNG",
        description="Draw a run's training curves (losses; validation vs train-batch accuracy; for the HVAE "
        "methods KL and active units per layer, image scale per band, objective terms, gradient norms) to a "
        "PNG, and print the best step and warnings (collapsed layers, train vs validation accuracy).",
    )
    p.add_argument("run", metavar="RUN", help="run folder (hvaeseg train ... --out RUN)")
    p.add_argument("-o", "--output", default=None, metavar="OUT.png", help="output image (default RUN/report.png)")
    p.add_argument("--dpi", type=int, default=110, help="resolution of the PNG (default: 110)")
    p.set_defaults(func=_report)
