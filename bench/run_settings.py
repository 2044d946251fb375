"""The run settings every study passes through to ``bench/compare.py`` (light: no torch), so that compare.py,
the label-budget study and the ablation share one definition of each flag and its default."""

from __future__ import annotations

import argparse
import sys


def add_run_settings(p: argparse.ArgumentParser) -> None:
    """Add the cube cache and the per-run training settings: ``--cube-cache``, ``--patch-size``, ``--block``,
    ``--batch-size``, ``--unlabelled-patches``, ``--val-every``, ``--iwae-samples`` and ``--dates``."""
    p.add_argument("--cube-cache", default="runs/cubes", help="where real scenes are ingested (once)")
    p.add_argument("--patch-size", type=int, default=32, help="patch side in pixels")
    p.add_argument("--block", type=int, default=128, help="spatial split block side in pixels")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--unlabelled-patches", type=int, default=2048, help="size of the unlabelled patch stream")
    p.add_argument("--val-every", type=int, default=50, help="validate (and maybe checkpoint) every N steps")
    p.add_argument("--iwae-samples", type=int, default=8, help="importance samples of the HVAE's IWAE bound")
    p.add_argument("--dates", type=int, default=1,
                   help="dates per patch stack (1: single-date; T > 1: temporal models on T-date stacks)")


def report_failures(failed: list, done_message: str) -> int:
    """Print ``done_message`` and, when runs failed, how to retry them; the exit status (1 when any failed)."""
    print(done_message, file=sys.stderr)
    if failed:
        print(f"{len(failed)} run(s) failed (see compare.log in their folders); run the same command again to "
              "retry them", file=sys.stderr)
        return 1
    return 0
