"""Cost of posterior inpainting per batch of stacks: ``posterior_inpaint`` as ``hvaeseg inpaint`` calls it now
(the guide's U-Net once per call, ``HVAE.encode``; the decoder on each stack's target date only, ``date=``)
against the reference, the same call on a view of the same HVAE without ``encode`` and without ``date=`` (the U-Net
per sample, the decoder on every date of the stack: how it ran before). Both run in the same process, interleaved
(the order alternates every repeat), after a warm-up; the median of the repeats is reported. The ``interp``
covariate is computed once per call in both.

    python bench/posterior_speed.py                          # examples/specs/temporal_interp.yaml, 8 x 4 dates
    python bench/posterior_speed.py --spec SPEC.yaml --batch 8 --dates 4 --samples 8 --repeats 7 --threads 1

Prints JSON with the seconds per call of each and ``speedup`` (reference / now).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvaeseg.hierarchy import HVAE, HierarchySpec  # noqa: E402
from hvaeseg.hierarchy.posterior import posterior_inpaint  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "examples" / "specs" / "temporal_interp.yaml"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(SPEC), help="a temporal HierarchySpec YAML")
    p.add_argument("--batch", type=int, default=8, help="stacks per call (hvaeseg inpaint's default batch)")
    p.add_argument("--dates", type=int, default=4)
    p.add_argument("--size", type=int, default=32, help="tile side, pixels")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = HierarchySpec.load(args.spec)
    if not spec.temporal:
        p.error(f"{args.spec} is not a temporal hierarchy: date= fills one date of a stack")
    torch.manual_seed(0)
    hvae = HVAE(spec).eval()
    B, T, S = args.batch, args.dates, args.size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, spec.image.bands, S, S, generator=g)
    valid = torch.rand(B, T, S, S, generator=g) < 0.6
    doy = torch.linspace(20.0, 300.0, T).expand(B, T).contiguous()
    date = torch.randint(0, T, (B,), generator=g)
    # the reference: the same HVAE seen without encode (so the guide runs its U-Net each sample), no date=
    before = SimpleNamespace(spec=spec, guide=hvae.guide, model=hvae.model, interp_covariate=hvae.interp_covariate)
    calls = {
        "now": lambda: posterior_inpaint(hvae, x, valid, args.samples, doy=doy, date=date),
        "reference": lambda: posterior_inpaint(before, x, valid, args.samples, doy=doy),
    }
    for f in calls.values():  # warm-up (first touch of fresh memory is slow here)
        f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(args.repeats):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    now, ref = statistics.median(times["now"]), statistics.median(times["reference"])
    out = {
        "spec": Path(args.spec).name, "batch": B, "dates": T, "size": S, "samples": args.samples,
        "threads": args.threads, "repeats": args.repeats, "seconds_per_call": {"now": now, "reference": ref},
        "speedup": ref / now, "torch": torch.__version__, "machine": platform.machine(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
