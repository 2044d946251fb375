"""Data-parallel training over several processes with :mod:`torch.distributed`, as started by ``torchrun``.

``torchrun --nproc_per_node N -m hvaeseg train ...`` starts N copies of ``hvaeseg train`` with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:meth:`DistributedContext.from_env` reads them and :func:`session` joins the process group (backend ``"nccl"``
for CUDA, ``"gloo"`` on the CPU). Without those variables, or with ``WORLD_SIZE=1``, the context is the single
process one and nothing here touches :mod:`torch.distributed`: a run is exactly a plain run.

The context is passed down explicitly (:class:`hvaeseg.train.Trainer`, :func:`hvaeseg.experiment.train_run`,
:meth:`hvaeseg.methods.Method.distribute`); the only global state is the process group that
:mod:`torch.distributed` itself holds.

What the processes share (see ``docs/scaling.md``):

- every process draws the global batch of a step, ``WORLD_SIZE x --batch-size`` patches, as a one-process run
  with that batch size does, and reads only its own slice of it (:class:`~hvaeseg.data.loader.PatchLoader`'s
  ``shard``), so the global batch is the same patches whatever the number of processes;
- each player's gradient is averaged over the processes (:func:`average_gradients`) before it is clipped and
  stepped, which equals the gradient of the global batch for losses that are means over equal per-process
  batches (the HVAE objectives: means per image) or weighted means (the supervised cross-entropy, weighted by
  labelled pixels);
- process 0 validates, checkpoints and writes the run folder, and decides when to stop (time budget, Ctrl-C):
  it broadcasts its decision after every step (:func:`broadcast_flag`), so every process stops at the same step.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "average_gradients",
    "barrier",
    "broadcast_flag",
    "broadcast_modules",
    "broadcast_object",
    "destroy",
    "init",
    "mean_over_processes",
    "session",
]

#: the variables torchrun sets for every process
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

#: default wait of a collective for the other processes (NCCL's own default, 10 minutes, is shorter than the
#: validation of a large split that the other processes wait through)
TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the processes of a run.

    :param rank: this process's number, ``0 <= rank < world_size`` (0 is the main process).
    :param world_size: the number of processes (1: a plain run).
    :param local_rank: the number of this process on its node (it picks the GPU, ``cuda:LOCAL_RANK``).
    :param device: ``"cpu"`` or ``"cuda"``: the run's device, which chooses the backend and where the small
        tensors of the collectives live.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ValueError(f"world_size: expected an int >= 1, got {self.world_size!r}")
        if not (isinstance(self.rank, int) and 0 <= self.rank < self.world_size):
            raise ValueError(f"rank: expected an int in [0, {self.world_size}), got {self.rank!r}")
        if not (isinstance(self.local_rank, int) and self.local_rank >= 0):
            raise ValueError(f"local_rank: expected an int >= 0, got {self.local_rank!r}")

    @classmethod
    def from_env(cls, device: str = "cpu", environ: Mapping[str, str] | None = None) -> DistributedContext:
        """The context torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or the
        single-process one when they are not set.

        :param device: the run's device (``"cpu"``, ``"cuda"``); under several processes a CUDA run must name no
            GPU (``cuda``, not ``cuda:1``): each process uses ``cuda:LOCAL_RANK``.
        :raises ValueError: a variable that is not a number, only some of them set, or ``cuda:N`` with several
            processes.
        """
        env = os.environ if environ is None else environ
        given = {k: env[k] for k in ENV_VARS if env.get(k, "") != ""}
        if not given:
            return cls(device=device)
        if "WORLD_SIZE" not in given or "RANK" not in given:
            raise ValueError(f"the environment sets {', '.join(sorted(given))} but not RANK and WORLD_SIZE: start "
                             "several processes with torchrun (which sets them all), or unset them for one process")
        try:
            rank, world = int(given["RANK"]), int(given["WORLD_SIZE"])
            local = int(given.get("LOCAL_RANK", rank))
        except ValueError:
            raise ValueError(f"expected RANK, WORLD_SIZE and LOCAL_RANK as integers, got {given}") from None
        if world > 1 and device.startswith("cuda:"):
            raise ValueError(f"--device {device} with {world} processes: pass --device cuda; each process uses the "
                             "GPU of its LOCAL_RANK (cuda:LOCAL_RANK)")
        return cls(rank=rank, world_size=world, local_rank=local, device=device)

    @property
    def is_main(self) -> bool:
        """This is process 0, the one that validates, checkpoints and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """There are several processes (collectives are needed); False for a plain run."""
        return self.world_size > 1

    @property
    def backend(self) -> str:
        """``"nccl"`` for a CUDA run, ``"gloo"`` on the CPU."""
        return "nccl" if self.device.startswith("cuda") else "gloo"

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``: which slice of every global batch this process reads."""
        return self.rank, self.world_size

    def _tensor_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def init(context: DistributedContext, timeout_s: float = TIMEOUT_S) -> None:
    """Join the process group of ``context`` (``env://``: ``MASTER_ADDR`` / ``MASTER_PORT`` from torchrun); for a
    CUDA run first make ``cuda:LOCAL_RANK`` this process's device. Nothing for a single process, or when the group
    exists already.

    :param timeout_s: how long a collective waits for the other processes before it fails (they wait while
        process 0 validates and checkpoints, so this must exceed a validation).

    :raises ValueError: a CUDA run with more processes on a node than it has GPUs.
    """
    if not context.is_distributed or dist.is_initialized():
        return
    if context.backend == "nccl":
        count = torch.cuda.device_count()
        if context.local_rank >= count:
            raise ValueError(f"process {context.rank} has LOCAL_RANK {context.local_rank}, but this node has {count} "
                             f"GPU(s): pass torchrun --nproc_per_node {count} or fewer")
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(context.backend, rank=context.rank, world_size=context.world_size,
                            timeout=timedelta(seconds=timeout_s))


def destroy(context: DistributedContext) -> None:
    """Leave the process group (nothing for a single process)."""
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(context: DistributedContext, timeout_s: float = TIMEOUT_S) -> Iterator[DistributedContext]:
    """``with session(ctx):`` joins the process group for the block (:func:`init`, then :func:`destroy`)."""
    init(context, timeout_s)
    try:
        yield context
    finally:
        destroy(context)


def average_gradients(
    params: Iterable[nn.Parameter], context: DistributedContext, weight: float | Tensor | None = None
) -> None:
    """Replace each parameter's ``.grad`` by its average over the processes, in place (one all-reduce per
    dtype, plus one for the set of gradients present).

    With ``weight`` (this process's share, e.g. the pixels its loss is a mean over) the average is weighted:
    ``sum_r weight_r grad_r / sum_r weight_r``, which is the gradient of the mean over every process's pixels;
    else every process counts alike (``sum_r grad_r / world_size``). A parameter without a gradient on some
    processes counts as zero there; one without a gradient on every process keeps none (an optimizer then
    leaves it alone, as in one process). Nothing for a single process.

    :param params: the parameters of one player (every process must pass the same ones, in the same order).
    """
    if not context.is_distributed:
        return
    params = list(params)
    device = context._tensor_device()
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(present)
    w = torch.as_tensor(1.0 if weight is None else weight, dtype=torch.float64, device=device).reshape(1)
    # each parameter's gradient (the tensor ``p.grad`` holds, written in place below), by dtype and device
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p, n in zip(params, present.tolist()):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grad = p.grad
        groups.setdefault((grad.dtype, grad.device), []).append(grad)
    if not groups:
        return
    for (dtype, _), group in groups.items():
        flat = torch.cat([g.reshape(-1) for g in group]).to(device=device)
        # the weight travels with the gradients (in float64), so one all-reduce gives both sums
        buf = torch.cat([flat.double() * w, w]) if weight is not None else flat
        dist.all_reduce(buf)
        if weight is not None:
            flat = (buf[:-1] / buf[-1].clamp_min(1e-300)).to(dtype)  # no weight anywhere: zero gradients
        else:
            flat = buf / context.world_size
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def mean_over_processes(values: Mapping[str, Tensor], context: DistributedContext) -> dict[str, float]:
    """The average over the processes of each scalar in ``values`` (detached), as numbers: the logged losses of
    a step, and a NaN on any process makes the average NaN on every one (so all stop together). Without
    several processes, the values themselves."""
    names = list(values)
    if not context.is_distributed:
        return {k: float(values[k].detach()) for k in names}
    device = context._tensor_device()
    buf = torch.stack([values[k].detach().float().reshape(()).to(device) for k in names])
    dist.all_reduce(buf)
    return dict(zip(names, (buf / context.world_size).tolist()))


def broadcast_flag(value: int, context: DistributedContext) -> int:
    """Process 0's ``value`` on every process (what the others pass is ignored): how the main process tells
    the others to stop. ``value`` itself for a single process."""
    if not context.is_distributed:
        return value
    flag = torch.tensor([value if context.is_main else 0], dtype=torch.int64, device=context._tensor_device())
    dist.broadcast(flag, src=0)
    return int(flag.item())


def broadcast_object(obj: Any, context: DistributedContext) -> Any:
    """Process 0's ``obj`` on every process (what the others pass is ignored); ``obj`` itself for a single
    process. ``obj`` is sent as ``torch.save`` bytes and read with ``torch.load(weights_only=True)``, so it holds
    what a checkpoint may hold (tensors, numbers, strings, lists, dicts, None). Used for the checkpoint a run
    resumes from, read by process 0 only, so the other processes need no access to the run folder."""
    if not context.is_distributed:
        return obj
    device = context._tensor_device()
    if context.is_main:
        out = io.BytesIO()
        torch.save(obj, out)
        data = torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = data.to(device) if context.is_main else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    if context.is_main:
        return obj
    return torch.load(io.BytesIO(buf.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)


def broadcast_modules(modules: Sequence[nn.Module], context: DistributedContext) -> None:
    """Copy process 0's parameters and buffers into every process's ``modules`` (in place), so that all start
    from the same weights whatever their initialisation did. Nothing for a single process."""
    if not context.is_distributed:
        return
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            # collectives need contiguous tensors; channels-last weights (bf16 runs) are copied out and back
            buf = t.data if t.data.is_contiguous() else t.data.contiguous()
            dist.broadcast(buf, src=0)
            if buf is not t.data:
                with torch.no_grad():
                    t.data.copy_(buf)


def barrier(context: DistributedContext) -> None:
    """Wait until every process gets here (nothing for a single process)."""
    if context.is_distributed:
        dist.barrier()
