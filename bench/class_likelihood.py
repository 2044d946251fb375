"""Cost of the exact class log-likelihoods ``HVAE.class_log_likelihood`` (every pixel under every class, the core of
``exact_s`` training: three calls per symmetric step, two per ELBO step) as it runs now, the classes stacked along
the batch in one pass of the image net, against the reference, the per-class loop it replaced (the net and the
Gaussian density once per class, written out below from the same HVAE's parts). Forward and backward of the
log-likelihood of the batch (EM's decoder loss), both in the same process, interleaved (the order alternates every
repeat), after a warm-up; the median of the repeats is reported. The two must agree to float precision.

    python bench/class_likelihood.py                          # pixel_mixture, rank 2, 8 patches 64 x 64, K = 7
    python bench/class_likelihood.py --classes 7 --bands 10 --batch 8 --size 64 --repeats 21 --threads 1

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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvaeseg.distributions import BandCorrelatedNormal  # noqa: E402
from hvaeseg.hierarchy import HVAE, HierarchySpec  # noqa: E402


def per_class_loop(hvae: HVAE, x: torch.Tensor, valid: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
    """The reference: ``(B, H, W, K)`` with the image net and the density run once per class (single-date only)."""
    B, T, H, W = hvae._dims(x, None, valid, None)
    inputs = hvae._covariate_inputs(x, valid, doy, None, B, T, H, W)
    K = hvae.spec.num_classes
    eye = torch.eye(K, dtype=x.dtype)
    out = []
    for k in range(K):
        inputs["s"] = eye[k].view(K, 1, 1).expand(B, K, 1, 1)
        loc, scale, factor = hvae._image_params(inputs, lambda i: hvae.decoder.net_output("x", i, (1, 1)))
        if factor is not None:
            lp = BandCorrelatedNormal(loc, scale, factor).pixel_log_prob(x)
        else:
            lp = torch.distributions.Normal(loc, scale, validate_args=False).log_prob(x).sum(-3)
        out.append(torch.where(valid, lp, torch.zeros(())))
    return torch.stack(out, -1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=7, help="K (synthetic:small has 7)")
    p.add_argument("--bands", type=int, default=10)
    p.add_argument("--cov-rank", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="patches per call (a training batch)")
    p.add_argument("--size", type=int, default=64, help="patch side, pixels")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = HierarchySpec.pixel_mixture(args.classes, args.bands, cov_rank=args.cov_rank)
    hvae = HVAE(spec)
    with torch.no_grad():  # away from the zero-initialised heads, so that the classes differ
        for q in hvae.decoder.parameters():
            q.add_(0.1 * torch.randn_like(q))
    g = torch.Generator().manual_seed(0)
    B, S = args.batch, args.size
    x = torch.randn(B, args.bands, S, S, generator=g)
    valid = torch.rand(B, S, S, generator=g) < 0.8
    doy = 365 * torch.rand(B, generator=g)
    calls = {
        "now": lambda: hvae.class_log_likelihood(x, valid, doy=doy),
        "reference": lambda: per_class_loop(hvae, x, valid, doy),
    }
    with torch.no_grad():
        now, ref = calls["now"](), calls["reference"]()
    max_abs_diff = float((now - ref).abs().max())
    if not torch.allclose(now, ref, rtol=1e-5, atol=1e-4):
        raise SystemExit(f"the stacked and the per-class log-likelihoods differ (max |diff| {max_abs_diff:.3g})")

    def step(name: str) -> float:
        hvae.zero_grad(set_to_none=True)
        start = time.perf_counter()
        torch.logsumexp(calls[name](), -1).sum().backward()  # EM's decoder loss (prior left out)
        return time.perf_counter() - start

    for name in calls:  # warm-up
        for _ in range(3):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(args.repeats):
        for name in (("now", "reference") if r % 2 == 0 else ("reference", "now")):
            times[name].append(step(name))
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "bench": "class_likelihood",
        "classes": args.classes, "bands": args.bands, "cov_rank": args.cov_rank, "batch": B, "size": S,
        "threads": args.threads, "repeats": args.repeats,
        "seconds_now": median["now"], "seconds_reference": median["reference"],
        "speedup": median["reference"] / median["now"],
        "max_abs_diff": max_abs_diff,
        "torch": torch.__version__, "machine": platform.machine(),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
