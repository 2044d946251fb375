"""Training-step time in float32 against bfloat16 mixed precision (``--precision bf16``), per method; prints JSON.

    python bench/precision.py                          # synthetic:small, N = 10, batch 8 of 32 x 32, one thread
    python bench/precision.py --methods supervised symmetric --steps 40

For each method both precisions train the same method (same initial weights, same batches) in one process, in
alternating rounds (so a slow patch of a shared machine hits both), after a warm-up; the figure is the median
over rounds of the milliseconds per step (forward in the precision's autocast region, backward, optimiser
step, EMA), and the speed-up is fp32 / bf16. ``loss_rel_diff`` is the relative difference of the first step's
losses (same weights, same batch): what bfloat16 convolutions change in the objective.

bfloat16 pays only where the hardware has bfloat16 units (AVX512-BF16 / AMX on CPUs, Ampere and later GPUs);
the script says so and exits where it has not.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvaeseg.experiment import RunConfig, _Streams, build_method, prepare_data  # noqa: E402
from hvaeseg.methods.base import StepBatch  # noqa: E402
from hvaeseg.nets.precision import autocast, bf16_supported, prepare_modules  # noqa: E402


def _step(method, batch, step: int, precision: str) -> dict[str, float]:
    with autocast(precision, "cpu"):
        losses = method.losses(batch, step)
    method.update(losses)
    method.after_update(step)
    return {k: float(v.detach()) for k, v in losses.items()}


def measure(method_name: str, args: argparse.Namespace) -> dict:
    cfg = RunConfig(method=method_name, data=args.data, labels=args.labels, patch_size=args.patch_size,
                    block=args.block, batch_size=args.batch_size, steps=10)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    base = build_method(cfg, data)
    streams = _Streams(data, cfg, base)
    its = {k: f(0) for k, f in streams.factories().items()}
    batches = [StepBatch(**{k: next(it) for k, it in its.items()}) for _ in range(args.steps)]
    methods = {"fp32": base, "bf16": copy.deepcopy(base)}
    prepare_modules(methods["bf16"].modules().values(), "bf16")
    first = {}
    for name, m in methods.items():
        m.train(True)
        torch.manual_seed(1)
        first[name] = _step(m, batches[0], 0, name)
        for i in range(1, args.warmup):
            _step(m, batches[i % len(batches)], i, name)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    step = args.warmup
    for _ in range(args.rounds):
        for name, m in methods.items():
            t0 = time.perf_counter()
            for i in range(args.steps):
                _step(m, batches[i], step + i, name)
            times[name].append((time.perf_counter() - t0) / args.steps * 1000)
        step += args.steps
    ms = {k: statistics.median(v) for k, v in times.items()}
    key = next(iter(first["fp32"]))
    ref, low = first["fp32"][key], first["bf16"][key]
    return {"method": method_name, "ms_per_step_fp32": round(ms["fp32"], 2), "ms_per_step_bf16": round(ms["bf16"], 2),
            "speedup": round(ms["fp32"] / ms["bf16"], 3), "loss_term": key,
            "loss_rel_diff": abs(low - ref) / max(abs(ref), 1e-12), "rounds": args.rounds, "steps": args.steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["supervised", "mixmatch", "symmetric", "elbo"])
    p.add_argument("--data", default="synthetic:small")
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not bf16_supported("cpu"):
        print(json.dumps({"skipped": "this CPU has no bfloat16 units (AVX512-BF16 / AMX)"}))
        return 0
    rows = [measure(m, args) for m in args.methods]
    print(json.dumps({"device": "cpu", "threads": args.threads, "batch_size": args.batch_size,
                      "patch_size": args.patch_size, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
