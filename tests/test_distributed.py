"""Data-parallel training (:mod:`hvaeseg.distributed`) on the CPU: 2 gloo processes spawned by the tests.

What is checked: the gradient each player steps with in a 2-process run (batch 4 each) equals the one-process
gradient on the 8 patches (symmetric learning's decoder and encoder, the supervised U-Net with a pixel-weighted
average); a 2-process run trains, checkpoints, resumes to the parameters of an uninterrupted 2-process run,
stops all processes at one step (time budget, Ctrl-C on process 0 only), evaluates, and only process 0 touches
its run folder; one process under torchrun's variables is bit for bit a plain run; clear errors.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Bernoulli, Categorical

from hvaeseg.cli import main
from hvaeseg.distributed import DistributedContext
from hvaeseg.distributions import PartiallyObservedCategorical
from hvaeseg.experiment import RunConfig, evaluate_run, prepare_data, train_run

TINY = dict(data="synthetic:tiny", patch_size=32, block=64, unlabelled_patches=32, batch_size=2)


# --------------------------------------------------------------------------------------------------
# spawning
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, world: int, *args) -> None:
    """Run ``worker(rank, context, *args)`` in ``world`` spawned processes joined in a gloo group, as torchrun
    would start them (its environment variables); raises if any process fails."""
    mp.start_processes(_entry, args=(worker, world, _free_port(), args), nprocs=world, start_method="spawn",
                       join=True)


def _entry(rank: int, worker, world: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", HVAESEG_NO_PROGRESS="1")
    torch.set_num_threads(1)
    from hvaeseg.distributed import session

    context = DistributedContext.from_env("cpu")
    with session(context):
        worker(rank, context, *args)


# --------------------------------------------------------------------------------------------------
# 1. the gradient of 2 processes x 4 patches is the one-process gradient of the 8 patches
# --------------------------------------------------------------------------------------------------

C, K, P = 3, 3, 16  # bands, classes, patch side


def _patches():
    """8 fixed patches: x, valid (some invalid pixels), labels (patches 4-7 mostly void, so the two halves hold
    different numbers of labelled pixels) and pool maps."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, C, P, P, generator=g)
    valid = torch.rand(8, P, P, generator=g) > 0.1
    labels = torch.randint(K, (8, P, P), generator=g)
    labels[4:, : 3 * P // 4] = -1
    labels[0, :2] = -1
    pool = torch.randint(K, (8, P, P), generator=g)
    return x, valid, labels, pool


class _Modes(Messenger):
    """Sets every unobserved sample site to a deterministic value of its distribution (Bernoulli: logit > 0,
    categorical: arg max, labelled pixels kept; Gaussian: its mean), so that each image's "samples" depend on that
    image alone, whatever batch or process it is in: the sampling noise of one process and of two then agree."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["value"] is None and not site_is_subsample(msg):
            msg["value"] = _mode(msg["fn"])


def _mode(site_fn):
    fn = site_fn
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if isinstance(fn, PartiallyObservedCategorical):
        value = torch.where(fn.labels >= 0, fn.labels, fn.logits.argmax(-1))
    elif isinstance(fn, Categorical):
        value = fn.logits.argmax(-1)
    elif isinstance(fn, Bernoulli):
        value = (fn.logits > 0).to(fn.logits.dtype)
    else:
        value = fn.mean
    return value.detach().expand(site_fn.batch_shape + site_fn.event_shape)


def _gradients(rows: slice, context: DistributedContext | None) -> dict[str, list[torch.Tensor]]:
    """The gradient each optimizer steps with, after one update on patches ``rows`` (``context``: averaged over
    its processes): symmetric learning's decoder and encoder, and the supervised U-Net."""
    from hvaeseg.data.loader import PatchBatch
    from hvaeseg.hierarchy import HVAE, HierarchySpec
    from hvaeseg.methods.base import StepBatch
    from hvaeseg.methods.hvae import HVAEConfig, SymmetricMethod
    from hvaeseg.methods.supervised import SupervisedConfig, SupervisedMethod

    x, valid, labels, pool = (t[rows] for t in _patches())
    batch = StepBatch(labelled=PatchBatch(x, valid, labels), unlabelled=PatchBatch(-x, ~valid, labels * 0 - 1),
                      pool=pool)
    grads: dict[str, list[torch.Tensor]] = {}

    def record(name, params):
        def hook(optimizer, args, kwargs):
            grads[name] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        return hook

    torch.manual_seed(0)
    spec = HierarchySpec.default(K, C, 4, channels=2, s_prior="categorical", encoder_widths=(8, 8, 16),
                                 decoder_width=8, patch_size=P)
    config = HVAEConfig(augment=False, sleep_masks=False, sleep_relabel=0.0, ema_decay=0.0, day_of_year=False)
    sym = SymmetricMethod(HVAE(spec), config, seed=0)
    modes = _Modes()
    sym.stepper.model, sym.stepper.guide = modes(sym.hvae.model), modes(sym.hvae.guide)
    for name, player in sym.stepper.players.items():
        player.optimizer.register_step_pre_hook(record(name, player.params))
    torch.manual_seed(0)
    sup = SupervisedMethod.build(C, K, config=SupervisedConfig(dihedral=False, widths=(8, 16), day_of_year=False))
    sup.clip_norm = None  # the recorded gradient is then the averaged one itself
    sup.optimizer.register_step_pre_hook(record("supervised", list(sup.net.parameters())))
    for method in (sym, sup):
        if context is not None:
            method.distribute(context)
        method.update(method.losses(batch, step=0))
    return grads


def _gradient_worker(rank: int, context: DistributedContext, out: Path) -> None:
    torch.save(_gradients(slice(4 * rank, 4 * rank + 4), context), out / f"grads{rank}.pt")


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    scale = max(float(t.abs().max()) for t in b)
    return all(torch.allclose(u, v, rtol=1e-4, atol=1e-5 * scale) for u, v in zip(a, b, strict=True))


def test_two_processes_step_with_the_gradient_of_the_whole_batch(tmp_path, one_thread):
    _spawn(_gradient_worker, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(2)]
    whole = _gradients(slice(0, 8), None)
    halves = [_gradients(slice(0, 4), None), _gradients(slice(4, 8), None)]
    for name in ("decoder", "encoder", "supervised"):
        assert all(any(float(g.abs().max()) > 0 for g in grads[name]) for grads in (whole, *halves)), name
        # each process steps with the gradient of the 8 patches...
        for r in range(2):
            assert _close(ranks[r][name], whole[name]), (name, r)
        # ...which neither half's own gradient is (a missing all-reduce), nor their sum (summed, not averaged)
        assert not _close(halves[0][name], whole[name]) and not _close(halves[1][name], whole[name]), name
        summed = [a + b for a, b in zip(halves[0][name], halves[1][name])]
        assert not _close(summed, whole[name]), name
    # the cross-entropy is a mean over labelled pixels, which the halves hold unequally: their plain average is
    # not the whole batch's gradient, the pixel-weighted one is
    plain = [(a + b) / 2 for a, b in zip(halves[0]["supervised"], halves[1]["supervised"])]
    assert not _close(plain, whole["supervised"])
    # the HVAE losses are means per image: the plain average is exact
    for name in ("decoder", "encoder"):
        assert _close([(a + b) / 2 for a, b in zip(halves[0][name], halves[1][name])], whole[name]), name


# --------------------------------------------------------------------------------------------------
# 2. a 2-process run: train, checkpoint, resume, stop together, evaluate; process 0 alone writes
# --------------------------------------------------------------------------------------------------


def _config(steps: int, **extra) -> RunConfig:
    settings = {**TINY, "val_every": 2, "checkpoint_every": 2, **extra}
    return RunConfig(method="supervised", labels=2, steps=steps, options={"widths": [8, 16]}, **settings)


def _run_folder(tmp_path: Path, name: str, rank: int) -> Path:
    """Process 0's run folder is the real one; the others get a folder of their own, which must stay absent
    (they write nothing, and need not read the run folder to resume)."""
    return tmp_path / (name if rank == 0 else f"{name}-rank{rank}")


def _report(tmp_path: Path, name: str, rank: int, trainer) -> None:
    (tmp_path / f"{name}-report{rank}.json").write_text(json.dumps(
        {"step": trainer.step, "losses": trainer.history.losses}))


def _train_resume_worker(rank: int, context: DistributedContext, tmp_path: Path) -> None:
    part = _run_folder(tmp_path, "part", rank)
    first = train_run(_config(2), part, distributed=context)
    assert first.step == 2
    _report(tmp_path, "part2", rank, first)
    _report(tmp_path, "part", rank, train_run(_config(4), part, distributed=context))  # resumes at step 2
    _report(tmp_path, "full", rank, train_run(_config(4), _run_folder(tmp_path, "full", rank), distributed=context))


def _reports(tmp_path: Path, name: str) -> list[dict]:
    return [json.loads((tmp_path / f"{name}-report{r}.json").read_text()) for r in range(2)]


def test_a_two_process_run_trains_resumes_and_evaluates(tmp_path, one_thread):
    _spawn(_train_resume_worker, 2, tmp_path)
    assert not any(tmp_path.glob("*-rank1")), "process 1 wrote into a run folder"
    for name in ("part", "full"):
        run = tmp_path / name
        for file in ("config.json", "plan_train.json", "plan_eval.json", "checkpoint.pt", "best.pt", "history.json"):
            assert (run / file).exists(), (name, file)
        ranks = _reports(tmp_path, name)
        assert ranks[0]["step"] == ranks[1]["step"] == 4
        assert ranks[0]["losses"] == ranks[1]["losses"]  # the losses averaged over the processes, on both
    # the run interrupted at step 2 and continued ends where the uninterrupted one does, bit for bit
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True) for n in ("part", "full"))
    assert a["step"] == b["step"] == 4 and a["world_size"] == b["world_size"] == 2
    for key, value in a["method"]["modules"]["net"].items():
        assert torch.equal(value, b["method"]["modules"]["net"][key]), key
    assert a["history"]["losses"][-1] == b["history"]["losses"][-1]
    result = evaluate_run(tmp_path / "part", "test")
    assert 0 <= result["accuracy"] <= 1
    # resuming with another number of processes is refused, with the fix
    with pytest.raises(ValueError, match=r"trained by 2 process\(es\), this run has 1: .*resume it with 2 processes"):
        train_run(_config(6), tmp_path / "part")


def _stop_worker(rank: int, context: DistributedContext, tmp_path: Path) -> None:
    from hvaeseg.train import TrainingInterrupted

    budget = train_run(_config(10_000, time_budget_s=1.0, val_every=0, checkpoint_every=0),
                       _run_folder(tmp_path, "budget", rank), distributed=context)
    _report(tmp_path, "budget", rank, budget)
    run = _run_folder(tmp_path, "stopped", rank)
    if rank == 0:  # Ctrl-C reaches process 0 alone, once its first checkpoint is written
        def interrupt():
            while not (run / "checkpoint.pt").exists():
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
    try:
        train_run(_config(10_000, val_every=0, checkpoint_every=1), run, distributed=context)
    except TrainingInterrupted as stop:
        (tmp_path / f"stopped-report{rank}.json").write_text(json.dumps({"step": stop.step}))


def test_every_process_stops_at_the_step_process_0_decides(tmp_path, one_thread):
    _spawn(_stop_worker, 2, tmp_path)
    assert not any(tmp_path.glob("*-rank1"))
    budget = _reports(tmp_path, "budget")
    assert 1 <= budget[0]["step"] == budget[1]["step"] < 10_000
    stopped = _reports(tmp_path, "stopped")
    assert 1 <= stopped[0]["step"] == stopped[1]["step"] < 10_000
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["step"] == stopped[0]["step"]


# --------------------------------------------------------------------------------------------------
# 3. one process under torchrun's variables is a plain run; sharded streams; clear errors
# --------------------------------------------------------------------------------------------------


def _train_args(out: Path, method: str = "supervised") -> list[str]:
    return ["train", "--method", method, "--data", "synthetic:tiny", "--labels", "2", "--steps", "3",
            "--patch-size", "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "2",
            "--val-every", "2", "--checkpoint-every", "2", "--out", str(out)]


def test_one_process_under_torchrun_is_bit_identical_to_a_plain_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(_train_args(tmp_path / "torchrun")) == 0
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert main(_train_args(tmp_path / "plain")) == 0
    a, b = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=True) for n in ("torchrun", "plain"))
    assert a["world_size"] == b["world_size"] == 1
    for key, value in a["method"]["modules"]["net"].items():
        assert torch.equal(value, b["method"]["modules"]["net"][key]), key
    assert a["history"]["losses"] == b["history"]["losses"]
    assert torch.equal(a["method"]["generator"], b["method"]["generator"])


def test_sharded_streams_are_disjoint_slices_of_the_one_process_batch():
    from hvaeseg.data.loader import PatchLoader

    data = prepare_data(RunConfig(method="supervised", labels=2, **TINY))
    plan = data.train_plan.select(labelled=False)
    common = dict(repeat=True, workers=0, seed=5)
    whole = PatchLoader(data.cube, plan, batch_size=6, **common)
    shards = [PatchLoader(data.cube, plan, batch_size=2, shard=(r, 3), **common) for r in range(3)]
    assert len(whole) == len(shards[0]) >= 2
    for epoch in (0, 1):
        for i, batch in enumerate(whole.epoch_batches(epoch)):
            parts = [s.epoch_batches(epoch)[i] for s in shards]
            assert all(len(p) == 2 for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), batch)  # disjoint slices of the global batch
    start = len(whole) - 1  # across an epoch boundary, as a resumed stream starts
    for k, (batch, *parts) in enumerate(zip(whole.stream(start), *(s.stream(start) for s in shards))):
        np.testing.assert_array_equal(torch.cat([p.x for p in parts]).numpy(), batch.x.numpy())
        if k == 1:
            break
    with pytest.raises(ValueError, match="shard"):
        PatchLoader(data.cube, plan, batch_size=2, shard=(3, 3))


def test_pixel_gbm_refuses_several_processes_with_the_fix(tmp_path):
    config = RunConfig(method="pixel-gbm", labels=2, steps=2, **TINY)
    with pytest.raises(ValueError, match="cannot be trained by 2 processes: run .* without torchrun"):
        train_run(config, tmp_path / "run", distributed=DistributedContext(rank=0, world_size=2))
    assert not (tmp_path / "run").exists()


def test_context_from_the_environment():
    assert DistributedContext.from_env(environ={}) == DistributedContext()
    ctx = DistributedContext.from_env("cuda", environ={"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.backend) == (3, 4, 1, False, "nccl")
    assert DistributedContext.from_env(environ={"RANK": "0", "WORLD_SIZE": "1"}).is_distributed is False
    with pytest.raises(ValueError, match="pass --device cuda"):
        DistributedContext.from_env("cuda:1", environ={"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not RANK and WORLD_SIZE"):
        DistributedContext.from_env(environ={"LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="rank"):
        DistributedContext(rank=2, world_size=2)


@pytest.mark.slow
def test_torchrun_two_processes_from_the_command_line(tmp_path):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HVAESEG_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hvaeseg",
           *_train_args(tmp_path / "run", "symmetric"), "--evaluate"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained symmetric by 2 processes for 3 steps") == 1  # process 0 alone prints
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["world_size"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["patches"] > 0
