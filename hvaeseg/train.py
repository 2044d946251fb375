"""One training loop for every method (symmetric, ELBO, supervised, MixMatch).

The loop owns what all methods share: seeding, the data streams, progress, periodic validation, atomic
checkpoints, bit-identical resume and the NaN guard. A method (:class:`hvaeseg.methods.Method`) owns its networks,
optimizers and losses.

Determinism: before every step the global torch generator is re-seeded from ``(seed, step)``, and every data
stream yields the batch of a step as a function of ``(seed, step)`` only. So a run resumed from the checkpoint of
step ``k`` takes exactly the steps an uninterrupted run takes, and ends with identical parameters.

Several processes (:mod:`hvaeseg.distributed`, started by ``torchrun``): each process takes its slice of the
step's global batch and seeds its step from ``(seed, step, rank)``, the method averages each player's gradients
over the processes, and process 0 alone validates, checkpoints and writes files. Process 0 decides when to stop
(time budget, Ctrl-C) and broadcasts it after every step, so all processes stop at the same step; a checkpoint
records the number of processes, and only that number may resume it. With one process none of this runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from hvaeseg._progress import progress
from hvaeseg._temporary import stale_pid
from hvaeseg.distributed import (
    DistributedContext,
    barrier,
    broadcast_flag,
    broadcast_modules,
    broadcast_object,
    mean_over_processes,
)
from hvaeseg.methods.base import Method, SegmentationMethod, StepBatch
from hvaeseg.metrics import ConfusionMatrix
from hvaeseg.nets.precision import PRECISIONS, autocast

if TYPE_CHECKING:  # pragma: no cover
    from hvaeseg.data.loader import PatchBatch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or Inf; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: the step under way was finished, a checkpoint of it saved, and training
    stopped; continuing from that checkpoint gives what an uninterrupted run gives.

    :param step: the steps done (the checkpoint's step).
    :param checkpoint: where the state was saved.
    """

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped after step {step}; saved {checkpoint}: run the same command again to resume")
        self.step, self.checkpoint = step, checkpoint


@contextlib.contextmanager
def _deferred_interrupt(grace_s: float = 0.0) -> Iterator[Callable[[], bool]]:
    """Within the block, a first SIGINT only sets a flag (the returned callable reads it), so a step is never
    cut in half; a second one interrupts at once, unless it comes within ``grace_s`` seconds of the first
    (under torchrun a Ctrl-C reaches each process twice: from the terminal and forwarded by torchrun). Outside
    the main thread (where Python delivers signals) nothing changes and the flag stays false."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits = [0]
    first = [0.0]
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        now = time.monotonic()
        if hits[0] and now - first[0] < grace_s:
            return
        hits[0] += 1
        first[0] = first[0] or now
        if hits[0] > 1:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: hits[0] > 0
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass(frozen=True)
class LoopConfig:
    """How long and how often: the parts of a run the loop itself needs.

    :param steps: number of optimisation steps in total (a resumed run continues up to this number).
    :param seed: seeds every step (``torch.manual_seed`` of a hash of ``(seed, step)``).
    :param val_every: validate every this many steps (0 = only at the end).
    :param checkpoint_every: write ``checkpoint.pt`` every this many steps (0 = only at the end).
    :param time_budget_s: stop early (cleanly, with a checkpoint) after this much wall-clock training time in
        total: a resumed run counts the time it trained before (``History.train_seconds``), and one whose budget
        is spent takes no further step.
    :param precision: ``"fp32"`` or ``"bf16"``: the forward passes of training and validation run in
        :func:`hvaeseg.nets.precision.autocast` (the method's modules should be prepared with
        :func:`~hvaeseg.nets.precision.prepare_modules`).
    """

    steps: int = 1000
    seed: int = 0
    val_every: int = 100
    checkpoint_every: int = 100
    time_budget_s: float | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.steps < 1:
            raise ValueError(f"steps: expected a positive number of steps, got {self.steps}")
        for name in ("val_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0 (0 = only at the end), got {getattr(self, name)}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s: expected a positive number of seconds or None, got {self.time_budget_s}")


#: ``stream(start_step)`` returns an iterator whose i-th item is the batch of step ``start_step + i``
StreamFactory = Callable[[int], Iterator[Any]]


@dataclass
class History:
    """What the loop records: losses per step (every ``log_every``) and validation metrics."""

    losses: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_score: float = -math.inf
    train_seconds: float = 0.0


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for ``step`` of a run seeded with ``seed`` (SplitMix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def rank_step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of ``step`` for process ``rank`` of a data-parallel run: a function of ``(seed, step, rank)``, so
    the processes draw different noise and a resumed run draws what an uninterrupted one draws."""
    return step_seed(step_seed(seed, step), rank)


#: what the main process tells the others after a step (:func:`hvaeseg.distributed.broadcast_flag`)
_GO_ON, _OUT_OF_TIME, _INTERRUPTED = 0, 1, 2


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary sibling, then rename: a crash never leaves a half-written file; the
    temporaries a killed process left beside ``path`` are removed first."""
    for old in path.parent.glob(f".{path.name}.tmp-*"):
        if stale_pid(old.name):
            old.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :class:`Trainer` (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train first, or point to a run folder that has one")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled code (never unpickled here)
        raise ValueError(
            f"{path} is not a readable hvaeseg checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]}): "
            "it is damaged or was written by something else; retrain, or resume from another copy"
        ) from None
    if not isinstance(state, dict) or "method" not in state:
        raise ValueError(f"{path} is not an hvaeseg checkpoint (no 'method' state in it): point to a run folder's "
                         f"{CHECKPOINT} or {BEST}")
    return state


def predict_batch(predict_proba: Callable[..., Any], batch: Any) -> torch.Tensor:
    """``predict_proba(x, valid, doy)`` on a batch, or ``predict_proba(x, valid)`` when the batch carries no
    day of the year (batches are anything with ``x``, ``valid`` and optionally ``doy``)."""
    doy = getattr(batch, "doy", None)
    return predict_proba(batch.x, batch.valid) if doy is None else predict_proba(batch.x, batch.valid, doy)


def evaluate_segmentation(
    method: SegmentationMethod, batches: Iterable[PatchBatch], num_classes: int, precision: str = "fp32"
) -> ConfusionMatrix:
    """Accumulate a confusion matrix of ``method``'s argmax predictions over ``batches`` (void excluded),
    predicted in ``precision`` (:func:`hvaeseg.nets.precision.autocast`)."""
    return _confusions(method, batches, num_classes, precision,
                       lambda batch: {None: predict_batch(method.predict_proba, batch)})[None]


def evaluate_candidates(
    method: SegmentationMethod, batches: Iterable[PatchBatch], num_classes: int, precision: str = "fp32"
) -> dict[float, ConfusionMatrix]:
    """One confusion matrix per candidate prediction rule of ``method``
    (:meth:`~hvaeseg.methods.base.SegmentationMethod.prediction_keys`, in that order) over ``batches``, from one
    pass."""
    return _confusions(method, batches, num_classes, precision,
                       lambda batch: cast(dict[Any, torch.Tensor], predict_batch(method.predict_candidates, batch)),
                       method.prediction_keys())


def _confusions(
    method: SegmentationMethod, batches: Iterable[PatchBatch], num_classes: int, precision: str,
    predict: Callable[[PatchBatch], dict[Any, torch.Tensor]], keys: Iterable[Any] = (None,),
) -> dict[Any, ConfusionMatrix]:
    """One confusion matrix per key of ``predict(batch)`` (``{key: (B, K, H, W)}`` probabilities), with ``method``
    in evaluation mode, no gradients, and ``precision``'s autocast."""
    cms = {key: ConfusionMatrix(num_classes) for key in keys}
    method.train(False)
    with torch.no_grad():
        for batch in batches:
            with autocast(precision, batch.x.device):
                probas = predict(batch)
            for key, cm in cms.items():
                cm.update(probas[key].argmax(1), batch.labels)
    method.train(True)
    return cms


class Trainer:
    """Train ``method`` on the given streams, validating and checkpointing into ``run_dir``.

    :param method: the method to train.
    :param streams: one factory per stream the method consumes (``"labelled"``, ``"unlabelled"``, ``"pool"``);
        see :data:`StreamFactory`.
    :param validation: a callable returning the validation batches (called at each validation), or None.
    :param num_classes: K, for the validation metrics.
    :param run_dir: folder for ``checkpoint.pt``, ``best.pt`` and ``history.json`` (written by the main process
        only).
    :param config: the loop's settings.
    :param distributed: this process's place among the processes of a data-parallel run
        (:mod:`hvaeseg.distributed`; the streams must already yield this process's slice of each batch); None
        or a single process: a plain run.
    """

    def __init__(
        self,
        method: Method,
        streams: dict[str, StreamFactory],
        validation: Callable[[], Iterable[PatchBatch]] | None,
        num_classes: int,
        run_dir: str | os.PathLike,
        config: LoopConfig,
        distributed: DistributedContext | None = None,
    ) -> None:
        missing = [s for s in method.streams if s not in streams]
        if missing:
            raise ValueError(f"method {method.name!r} needs the streams {missing}; got {sorted(streams)}")
        self.method = method
        self.streams = streams
        self.validation = validation
        self.num_classes = num_classes
        self.run_dir = Path(run_dir)
        self.config = config
        self.history = History()
        self.step = 0
        self.distributed = distributed if distributed is not None else DistributedContext()
        if self.distributed.is_distributed:
            method.distribute(self.distributed)
        params = (p for module in method.modules().values() for p in module.parameters())
        self._device = next(params, torch.empty(0)).device  # where the forward passes run (autocast)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "method": self.method.state_dict(),
            "history": json.loads(json.dumps(asdict(self.history))),
            "world_size": self.distributed.world_size,
        }

    def save(self, name: str = CHECKPOINT) -> Path:
        """Write the state to ``run_dir / name`` (the main process only; the others return the path)."""
        path = self.run_dir / name
        if not self.distributed.is_main:
            return path
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_save(self._state(), path)
        return path

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Load ``checkpoint.pt`` from the run folder (or ``path``) if it exists; True when resumed. Under several
        processes the main process reads it and sends it to the others (they need no access to the run folder).

        :raises ValueError: the checkpoint was written by another number of processes.
        """
        path = Path(path) if path is not None else self.run_dir / CHECKPOINT
        ctx = self.distributed
        state = (load_checkpoint(path) if path.exists() else None) if ctx.is_main else None
        state = broadcast_object(state, ctx)
        if state is None:
            return False
        saved = int(state.get("world_size", 1))
        if saved != ctx.world_size:
            how = ("one process (plain `hvaeseg train`, or torchrun with 1 process in all)" if saved == 1 else
                   f"{saved} processes in all (e.g. torchrun --nproc_per_node {saved}, or --nnodes x --nproc_per_node "
                   f"= {saved})")
            raise ValueError(
                f"{path} was trained by {saved} process(es), this run has {ctx.world_size}: the number of processes "
                f"sets the global batch, so resume it with {how}, or train afresh (--no-resume or a new --out)"
            )
        self.method.load_state_dict(state["method"])
        self.step = int(state["step"])
        self.history = History(**state["history"])
        return True

    # -- loop ----------------------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Accuracy and mean IoU on the validation batches. A method with candidate prediction rules
        (:meth:`~hvaeseg.methods.base.SegmentationMethod.predict_candidates`) is scored under each; the rule with
        the best mean IoU (the first in the method's order on a tie) is the one it predicts with from here on, so
        the checkpoint and its rule are chosen together. Its figures are the round's, with ``prediction`` (its key)
        and ``candidates`` (``{key: [accuracy, mean IoU]}``)."""
        if self.validation is None:
            return {}
        if not self.method.prediction_keys():
            cm = evaluate_segmentation(self.method, self.validation(), self.num_classes, self.config.precision)
            return {"step": self.step, "accuracy": cm.accuracy(), "mean_iou": cm.mean_iou()}
        scored = evaluate_candidates(self.method, self.validation(), self.num_classes, self.config.precision)
        key = max(scored, key=lambda k: scored[k].mean_iou())  # max keeps the first of equals
        self.method.use_prediction(key)
        cm = scored[key]
        return {"step": self.step, "accuracy": cm.accuracy(), "mean_iou": cm.mean_iou(), "prediction": key,
                "candidates": {str(k): [c.accuracy(), c.mean_iou()] for k, c in scored.items()}}

    def _record_validation(self, batch: StepBatch | None = None) -> None:
        if not self.distributed.is_main:
            return
        metrics: dict[str, Any] = self.validate()  # with the diagnostics added below
        if not metrics:
            return
        if batch is not None:
            diagnostics = self.method.diagnostics(batch)
            if diagnostics:
                metrics["diagnostics"] = diagnostics
        self.history.validation.append(metrics)
        if metrics["mean_iou"] > self.history.best_score:
            self.history.best_score = metrics["mean_iou"]
            self.history.best_step = self.step
            self.save(BEST)

    def fit(self, log_every: int = 10) -> History:
        """Run (or continue) training up to ``config.steps``; returns the history, also saved as JSON."""
        cfg, ctx = self.config, self.distributed
        iters = {name: self.streams[name](self.step) for name in self.method.streams}
        start_step, batch = self.step, None
        if ctx.is_distributed:  # every process starts from the main process's weights
            broadcast_modules(list(self.method.modules().values()), ctx)
        self.method.train(True)
        start_time = time.perf_counter() - self.history.train_seconds
        # a run resumed with its time budget spent takes no further step (the budget caps its total training time)
        spent = cfg.time_budget_s is not None and self.history.train_seconds >= cfg.time_budget_s
        end = self.step if spent else cfg.steps
        bar = progress(range(self.step, end), desc=f"training {self.method.name}", total=end - self.step,
                       enabled=None if ctx.is_main else False, status=self._status)
        with _deferred_interrupt(grace_s=1.0 if ctx.is_distributed else 0.0) as interrupted:
            for step in bar:
                if ctx.is_distributed:  # each process draws its own noise and augmentations, resumably
                    seed = rank_step_seed(cfg.seed, step, ctx.rank)
                    torch.manual_seed(seed)
                    self.method.seed_step(step_seed(seed, 0))
                else:
                    torch.manual_seed(step_seed(cfg.seed, step))
                batch = StepBatch(**{name: next(it) for name, it in iters.items()})
                with autocast(self.config.precision, self._device):
                    losses = self.method.losses(batch, step)
                if ctx.is_distributed:  # the average over the processes: logged, and NaN on one is NaN on all
                    values = mean_over_processes(losses, ctx)
                    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
                else:
                    bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
                if bad:
                    last = self.run_dir / CHECKPOINT
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step}: {bad}. Training stopped; the last good checkpoint is "
                        f"{last if last.exists() else '(none written yet)'}. Lower the learning rate or check the data."
                    )
                self.method.update(losses)
                self.method.after_update(step)
                self.step = step + 1
                self.history.train_seconds = time.perf_counter() - start_time
                if step % log_every == 0 or self.step == cfg.steps:
                    logged = values if ctx.is_distributed else {k: float(v.detach()) for k, v in losses.items()}
                    self.history.losses.append({"step": step, **logged, **self.method.step_statistics()})
                out_of_time = cfg.time_budget_s is not None and self.history.train_seconds >= cfg.time_budget_s
                if cfg.val_every and self.step % cfg.val_every == 0:
                    self._record_validation(batch)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                stop = _INTERRUPTED if interrupted() else _OUT_OF_TIME if out_of_time else _GO_ON
                if ctx.is_distributed:  # the main process decides, so that every process stops at this step
                    stop = broadcast_flag(stop, ctx)
                if stop == _INTERRUPTED:
                    path = self.save()
                    self.write_history()
                    barrier(ctx)  # the others wait for the checkpoint (torchrun stops all once one exits)
                    raise TrainingInterrupted(self.step, path)
                if stop == _OUT_OF_TIME:
                    break
        if not self.history.validation or self.history.validation[-1].get("step") != self.step:
            self._record_validation(batch if self.step > start_step else None)
        self.save()
        self.write_history()
        barrier(ctx)  # no process returns before the run folder is complete
        return self.history

    def _status(self) -> str:
        """The last logged losses and the last validation, for progress lines in logs."""
        parts = []
        if self.history.losses:
            last = self.history.losses[-1]
            losses = {k: v for k, v in last.items() if k != "step" and not k.startswith("grad_norm")}
            parts.append("loss " + " ".join(f"{k} {v:.4g}" for k, v in losses.items()))
        if self.history.validation:
            v = self.history.validation[-1]
            if "mean_iou" in v:
                parts.append(f"val mIoU {v['mean_iou']:.3f} at step {v['step']}")
        return ", ".join(parts)

    def write_history(self) -> Path:
        """Write ``history.json`` (the main process only; the others return the path)."""
        path = self.run_dir / "history.json"
        if not self.distributed.is_main:
            return path
        tmp = path.with_name(".history.json.tmp")
        tmp.write_text(json.dumps(asdict(self.history), indent=1))
        os.replace(tmp, path)
        return path
