"""Diagnostic for issue 10: the decoder of symmetric learning with ``exact_s``, emulated without the encoder.

With ``exact_s`` the decoder's loss does not involve the encoder, so the game's decoder trajectory is that of a
decoder-only run on the same streams (the run's options with every encoder term at weight 0, the same seeds), which
costs a quarter of a game step. Prints, every EVERY steps, the decoder's Bayes accuracy and IoU per class on the
test tiles and the learned class prior, one JSON line each.

    python bench/results/exact_s/decoder_emulator.py RUN SEED STEPS EVERY ['{"option": value}'] [--lr-drop STEP F]
        [--ema DECAY ...] [--log-steps]

RUN: a finished run folder (its config and plans; its own ``decoder_warmup`` / ``decoder_replay`` are dropped);
the JSON options are merged into the run's. ``--lr-drop STEP F`` multiplies the decoder's learning rates by F from
step STEP on (a probe of an annealed decoder; no such option exists in training). ``--ema DECAY ...`` also scores,
at each print, Polyak averages of the decoder's parameters with these decays, updated after every step from the first
(a probe of ``HVAEConfig.teacher_decay``, which warms its decay up as ``ema_decay`` does): ``"emaDECAY": [Bayes
accuracy, IoU of the first class]``.
``--log-steps`` also prints each step's decoder loss (nats per image, lower is better) and the decoder's gradient
norm before clipping, ``{"k": step, "loss": ..., "g": ...}``: where a decoder diverges.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
torch.set_num_threads(1)
from hvaeseg.data.loader import PatchLoader  # noqa: E402
from hvaeseg.experiment import _Streams, build_method, prepare_data  # noqa: E402
from hvaeseg.methods.base import StepBatch  # noqa: E402
from hvaeseg.metrics import ConfusionMatrix  # noqa: E402
from hvaeseg.run_config import RunConfig  # noqa: E402


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("seed", type=int)
    p.add_argument("steps", type=int)
    p.add_argument("every", type=int)
    p.add_argument("options", nargs="?", type=json.loads, default={})
    p.add_argument("--ema", type=float, nargs="+", default=[], metavar="DECAY",
                   help="also score Polyak averages of the decoder with these decays (from the first step)")
    p.add_argument("--lr-drop", nargs=2, type=float, default=None, metavar=("STEP", "FACTOR"))
    p.add_argument("--log-steps", action="store_true",
                   help="also print every step's decoder loss and gradient norm (before clipping): {'k', 'loss', 'g'}")
    args = p.parse_args(argv)
    run, seed, steps, every, extra = args.run, args.seed, args.steps, args.every, args.options
    cfg = RunConfig.load(run)
    opts = {k: v for k, v in cfg.options.items() if k not in ("decoder_warmup", "decoder_replay")}
    opts.update(extra)
    opts["weights"] = {**opts.get("weights", {}), "supervised_q": 0.0, "posterior_q": 0.0, "sleep_q": 0.0}
    cfg = dataclasses.replace(cfg, seed=seed, options=opts)
    data = prepare_data(cfg, plans_from=run)
    torch.manual_seed(seed)
    method = build_method(cfg, data)
    streams = _Streams(data, cfg, method)
    f = streams.factories()
    lab, unl, pool = f["labelled"](0), f["unlabelled"](0), f["pool"](0)
    test = list(PatchLoader(data.cube, data.eval_plan.select(split="test"), batch_size=16, workers=0).batches(0))
    hvae, K = method.hvae, data.num_classes

    dec = hvae.decoder
    emas = {d: {n: q.detach().clone() for n, q in dec.named_parameters()} for d in args.ema}

    def evaluate_with(params):
        live = {n: q.detach().clone() for n, q in dec.named_parameters()}
        with torch.no_grad():
            for n, q in dec.named_parameters():
                q.copy_(params[n])
        try:
            return evaluate()
        finally:
            with torch.no_grad():
                for n, q in dec.named_parameters():
                    q.copy_(live[n])

    def evaluate():
        conf = ConfusionMatrix(K)
        with torch.no_grad():
            for b in test:
                pred = hvae.s_posterior_logits(b.x, b.valid, doy=b.doy if hvae.spec.needs_doy else None).argmax(-1)
                conf.update(pred, b.labels, b.valid if b.valid.dim() == 3 else b.valid.any(1))
        return conf.accuracy(), [None if v != v else round(float(v), 2) for v in conf.iou()]  # NaN: class absent

    t0 = time.time()
    for k in range(steps + 1):
        if k % every == 0:
            a, iou = evaluate()
            pri = torch.softmax(hvae.decoder.s_logits.detach(), -1)
            row = {"step": k, "acc": round(a, 4), "iou": iou, "prior": [round(float(v), 3) for v in pri],
                   "t": round(time.time() - t0, 1)}
            for d, e in emas.items():
                a2, iou2 = evaluate_with(e)
                row[f"ema{d}"] = [round(a2, 4), iou2[0]]  # the average's Bayes accuracy, the first class's IoU
            print(json.dumps(row), flush=True)
        if k == steps:
            break
        if args.lr_drop is not None and k == int(args.lr_drop[0]):
            for group in method.optimizers()["decoder"].param_groups:
                group["lr"] *= args.lr_drop[1]
        batch = StepBatch(labelled=next(lab), unlabelled=next(unl), pool=next(pool))
        losses = method.losses(batch, k)
        method.update(losses)
        if args.log_steps:
            print(json.dumps({"k": k, "loss": round(float(losses["decoder"].detach()), 1),
                              "g": round(method.stepper.last_grad_norms.get("decoder", float("nan")), 1)}), flush=True)
        with torch.no_grad():
            for d, e in emas.items():
                for n, q in dec.named_parameters():
                    e[n].lerp_(q.detach(), 1 - d)
    streams.close()


if __name__ == "__main__":
    main(sys.argv[1:])
