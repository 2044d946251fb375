"""Pyro overhead of one symmetric-learning step of the default HVAE, against plain PyTorch.

One step = a wake step (sample (s, l, z) from the guide without gradient; backward of the model's
log-probability) plus a sleep step (sample (l, z, x) from the model given label maps, without gradient;
backward of the guide's log-probability). The Pyro version runs ``HVAE.model`` / ``HVAE.guide`` through
``poutine.trace`` / ``poutine.replay``; the reference calls the very same network modules directly and
writes the sampling and log-probabilities by hand. Both run in the same process, interleaved (the order
alternates every repeat), after a warm-up; the median of the repeats is reported.

    python bench/step.py                       # batch 8 and 32, 64x64x10 patches, CPU
    python bench/step.py --batch-sizes 8 --repeats 21 --output step.json

Prints JSON with ``ratio_vs_reference`` per batch size (target: <= 1.10 at batch 8).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvaeseg.hierarchy import HVAE, HierarchySpec  # noqa: E402
from hvaeseg.hierarchy.networks import LATENT_MIN_SCALE, parent_input  # noqa: E402
from hvaeseg.traces import replay  # noqa: E402  (replays observed sites too: the sleep phase needs it)

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------- Pyro step
def pyro_step(hvae: HVAE, x, s, valid, s_pool) -> None:
    # wake: (s, l, z) ~ q(.|x, s) without gradient; maximise log p(x, s, l, z)
    with torch.no_grad():
        guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid)
    s_full = guide_trace.nodes["s"]["value"]
    model_trace = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, s_full, valid)
    (-model_trace.log_prob_sum()).backward()
    # sleep: (l, z, x~) ~ p(.|s'') without gradient; maximise log q(s'', l, z | x~)
    with torch.no_grad():
        model_trace = poutine.trace(hvae.model).get_trace(None, s_pool, None)
    x_tilde = model_trace.nodes["x"]["value"]
    guide_trace = poutine.trace(replay(hvae.guide, trace=model_trace)).get_trace(x_tilde, None, None)
    (-guide_trace.log_prob_sum()).backward()


# -------------------------------------------------------------------------------------- reference step
def _bernoulli_sample(logits):
    return (torch.rand_like(logits) < torch.sigmoid(logits)).to(logits.dtype)


def _bernoulli_lp(logits, value):
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="sum")


def _categorical_sample(log_probs):
    cdf = log_probs.exp().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), dtype=cdf.dtype)
    return (cdf < u).sum(-1).clamp_(max=cdf.shape[-1] - 1)


def _categorical_lp(log_probs, value, count):
    lp = log_probs.gather(-1, value.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(count, lp, torch.zeros(())).sum()


def _normal_lp(loc, scale, value, mask=None):
    lp = -((value - loc) ** 2) / (2 * scale**2) - scale.log() - LOG_SQRT_2PI
    if mask is not None:
        lp = torch.where(mask, lp, torch.zeros(()))
    return lp.sum()


def _layer_sample(layer, out):
    if layer.family == "bernoulli":
        return _bernoulli_sample(out)
    if layer.family == "categorical":
        logits = out.unflatten(-3, (layer.channels, layer.categories)).movedim(-3, -1)
        return _categorical_sample(logits.log_softmax(-1))
    loc, raw = out.chunk(2, dim=-3)
    return loc + (LATENT_MIN_SCALE + F.softplus(raw)) * torch.randn_like(loc)


def _layer_lp(layer, out, z):
    if layer.family == "bernoulli":
        return _bernoulli_lp(out, z)
    if layer.family == "categorical":
        lp = out.unflatten(-3, (layer.channels, layer.categories)).movedim(-3, -1).log_softmax(-1)
        return _categorical_lp(lp, z, torch.ones((), dtype=torch.bool))
    loc, raw = out.chunk(2, dim=-3)
    return _normal_lp(loc, LATENT_MIN_SCALE + F.softplus(raw), z)


def reference_step(hvae: HVAE, x, s, valid, s_pool) -> None:
    spec, dec, enc = hvae.spec, hvae.decoder, hvae.encoder
    dtype = x.dtype
    B, _, H, W = x.shape
    layers = {la.name: la for la in spec.layers}

    def size(name):
        r = layers[name].resolution
        return (H // r, W // r)

    # ---- wake: guide sample without gradient
    with torch.no_grad():
        logits, feats = enc.unet.forward_features(x, valid)
        log_q = logits.movedim(1, -1).log_softmax(-1)
        s_full = torch.where(s >= 0, s, _categorical_sample(log_q))
        inputs = {"s": parent_input(spec, "s", s_full, dtype)}
        inputs["l"] = _bernoulli_sample(enc.l_logits(feats, valid))
        values = {"s": s_full, "l": inputs["l"]}
        for name in spec.order:
            out = dec.net_output(name, inputs, size(name)) + enc.head(name, feats)
            values[name] = _layer_sample(layers[name], out)
            inputs[name] = parent_input(spec, name, values[name], dtype)
    # ---- wake: model log-probability with gradient
    lp = _bernoulli_lp(torch.zeros_like(values["l"]), values["l"])  # empirical s prior: no density
    for name in spec.order:
        lp = lp + _layer_lp(layers[name], dec.net_output(name, inputs, size(name)), values[name])
    loc, scale = dec.x_params(dec.net_output("x", inputs, (H, W)))
    lp = lp + _normal_lp(loc, scale, x, valid.unsqueeze(1))
    (-lp).backward()

    # ---- sleep: model sample given label maps, without gradient
    with torch.no_grad():
        inputs = {"s": parent_input(spec, "s", s_pool, dtype)}
        inputs["l"] = _bernoulli_sample(torch.zeros(B, spec.code_bits))
        values = {"l": inputs["l"]}
        for name in spec.order:
            values[name] = _layer_sample(layers[name], dec.net_output(name, inputs, size(name)))
            inputs[name] = parent_input(spec, name, values[name], dtype)
        loc, scale = dec.x_params(dec.net_output("x", inputs, (H, W)))
        x_tilde = loc + scale * torch.randn_like(loc)
    # ---- sleep: guide log-probability with gradient
    logits, feats = enc.unet.forward_features(x_tilde, None)
    log_q = logits.movedim(1, -1).log_softmax(-1)
    lp = _categorical_lp(log_q, s_pool, s_pool >= 0)
    lp = lp + _bernoulli_lp(enc.l_logits(feats, None), values["l"])
    for name in spec.order:
        out = dec.net_output(name, inputs, size(name)) + enc.head(name, feats)
        lp = lp + _layer_lp(layers[name], out, values[name])
    (-lp).backward()


# ---------------------------------------------------------------------------------------------- driver
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
_clock = time.perf_counter


def _timed(fn, hvae, *args) -> float:
    hvae.zero_grad(set_to_none=True)
    t0 = _clock()
    fn(hvae, *args)
    return _clock() - t0


def bench(batch: int, repeats: int, warmup: int, size: int, bands: int, classes: int) -> dict:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    hvae = HVAE(HierarchySpec.default(classes, bands))
    x = torch.randn(batch, bands, size, size)
    valid = torch.rand(batch, size, size) > 0.2
    s = torch.randint(0, classes, (batch, size, size))
    s[:, : size // 4] = -1  # void rows: sampled by the guide
    s_pool = torch.randint(0, classes, (batch, size, size))
    s_pool[:, :, : size // 8] = -1
    args = (x, s, valid, s_pool)
    for _ in range(warmup):
        _timed(pyro_step, hvae, *args)
        _timed(reference_step, hvae, *args)
    pyro_t, ref_t = [], []
    for i in range(repeats):
        if i % 2 == 0:
            pyro_t.append(_timed(pyro_step, hvae, *args))
            ref_t.append(_timed(reference_step, hvae, *args))
        else:
            ref_t.append(_timed(reference_step, hvae, *args))
            pyro_t.append(_timed(pyro_step, hvae, *args))
    p, r = statistics.median(pyro_t), statistics.median(ref_t)
    ratios = [a / b for a, b in zip(pyro_t, ref_t)]
    return {
        "pyro_ms": round(1e3 * p, 2),
        "reference_ms": round(1e3 * r, 2),
        "ratio_vs_reference": round(p / r, 4),
        "median_paired_ratio": round(statistics.median(ratios), 4),
        "pyro_ms_all": [round(1e3 * t, 2) for t in pyro_t],
        "reference_ms_all": [round(1e3 * t, 2) for t in ref_t],
    }


def _load() -> float:
    try:
        import os

        return os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=None, help="default: 15 at batch <= 8, else 7")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bands", type=int, default=10)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (perf_counter) or process (CPU time of this process, all threads: robust when other "
        "processes compete for the cores)",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    hvae = HVAE(HierarchySpec.default(args.classes, args.bands))
    results = {}
    for b in args.batch_sizes:
        reps = args.repeats or (15 if b <= 8 else 7)
        results[str(b)] = bench(b, reps, args.warmup, args.size, args.bands, args.classes)
    report = {
        "benchmark": "wake + sleep step, default HVAE, Pyro vs plain PyTorch (same modules)",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "load_average_1min": round(_load(), 2),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "patch": [args.bands, args.size, args.size],
        "classes": args.classes,
        "parameters": sum(p.numel() for p in hvae.parameters()),
        "results": results,
        "ratio_vs_reference": {b: r["ratio_vs_reference"] for b, r in results.items()},
        "target": {"batch": 8, "max_ratio": 1.10},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
