"""Loader worker processes: batches read in other processes, straight into shared memory.

Loader *threads* share one GIL with each other and with the training loop: the Python between the many
short GIL-free steps of a batch (file reads, decoding, one copy per patch piece) makes threads wait on
each other, and a training loop on the same interpreter waits too. Worker *processes* have their own
interpreters. :class:`~hvaeseg.data.loader.PatchLoader` uses them with ``processes=True``:

* :class:`SharedSlots`: files in shared memory (``/dev/shm`` where there is one), one batch each, laid out
  by a :class:`SlotLayout`; a slot is reused once nothing refers to it
  (:class:`~hvaeseg.data.chunks.HostBuffers`), exactly like the thread path's host buffers.
* :class:`ProcessWorkers`: ``n`` spawned processes; each opens the cube store itself and fills the slots it
  is sent with :func:`~hvaeseg.data.chunks.fill_patches` (the thread path's code). Only the patch
  positions cross the queue, never the pixels. A worker's exception comes back with its traceback; a
  worker that dies is reported instead of waited for.

Processes are started with ``spawn`` (safe beside threads and CUDA), import neither torch nor Pyro, and
live as long as their loader (:meth:`ProcessWorkers.close`, or when the loader is garbage-collected).
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import threading
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvaeseg.data.chunks import CubeSource, HostBuffers, fill_patches, normalise_into

__all__ = ["ProcessWorkers", "SharedSlots", "SlotLayout", "WorkerError"]

_ALIGN = 64


class WorkerError(RuntimeError):
    """A loader worker process failed (its traceback is in the message) or died."""


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class SlotLayout:
    """One batch's arrays in one flat byte buffer: DN uint16 (or normalised float32) ``(B, T, C, H, W)``,
    then valid bool ``(B, T, H, W)``, then labels ``(B, H, W)`` of ``labels_dtype``, each at a 64-byte
    aligned offset."""

    batch: int
    dates: int
    bands: int
    height: int
    width: int
    labels_dtype: str = "int64"
    #: the first array holds normalised float32 ``x`` instead of the raw uint16 DN
    normalised: bool = False

    def _parts(self, n: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        T, C, H, W = self.dates, self.bands, self.height, self.width
        x = np.dtype(np.float32 if self.normalised else np.uint16)
        return [((n, T, C, H, W), x), ((n, T, H, W), np.dtype(np.bool_)), ((n, H, W), np.dtype(self.labels_dtype))]

    @property
    def nbytes(self) -> int:
        return sum(_aligned(int(np.prod(shape)) * dt.itemsize) for shape, dt in self._parts(self.batch))

    def views(self, raw: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, valid, labels)`` for the first ``n <= batch`` patches, as views of ``raw`` (uint8)."""
        if not 0 <= n <= self.batch:
            raise ValueError(f"a slot holds up to {self.batch} patches, asked for {n}")
        out, offset = [], 0
        for (shape, dt), (full, _) in zip(self._parts(n), self._parts(self.batch)):
            size = int(np.prod(shape)) * dt.itemsize
            out.append(raw[offset : offset + size].view(dt).reshape(shape))
            offset += _aligned(int(np.prod(full)) * dt.itemsize)
        return out[0], out[1], out[2]


def _shared_dir() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def _map(path: str, nbytes: int | None = None) -> np.ndarray:
    """A file as a writable uint8 array (created with ``nbytes`` when given)."""
    with open(path, "w+b" if nbytes is not None else "r+b") as f:
        if nbytes is not None:
            f.truncate(nbytes)
        mm = mmap.mmap(f.fileno(), 0)
    return np.frombuffer(mm, dtype=np.uint8)


class SharedSlots:
    """Shared-memory files for batches, in a private temporary folder removed by :meth:`close`.

    :param on_new: called with each new slot's array (e.g. to pin it for CUDA copies).
    """

    def __init__(self, on_new: Callable[[np.ndarray], None] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="hvaeseg-loader-", dir=_shared_dir())
        self._on_new = on_new
        self._paths: dict[int, str] = {}
        self._count = itertools.count()
        self._buffers = HostBuffers(keep=None, allocate=self._allocate)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        path = os.path.join(self.dir, f"slot-{next(self._count)}")
        try:
            raw = _map(path, int(shape[0]))
        except OSError as err:
            raise OSError(
                f"cannot create a {shape[0] / 2**20:.1f} MiB shared-memory batch in {self.dir} ({err}); "
                "free space there (in containers: a larger /dev/shm) or use loader threads (processes=False)"
            ) from err
        self._paths[id(raw)] = path
        if self._on_new is not None:
            self._on_new(raw)
        return raw

    def acquire(self, nbytes: int) -> tuple[np.ndarray, str]:
        """A slot of ``nbytes`` that nothing refers to, and its file's path (for the workers)."""
        raw = self._buffers.empty((int(nbytes),), np.uint8)
        return raw, self._paths[id(raw)]

    def slots(self) -> list[np.ndarray]:
        return self._buffers.arrays()

    def close(self) -> None:
        """Remove the files (memory is freed once the last mapping is gone)."""
        self._finalizer()


# --------------------------------------------------------------------------------------------------
# the worker processes
# --------------------------------------------------------------------------------------------------


def _worker_main(cube: str, storage_options: dict, tasks: Any, results: Any) -> None:
    """Loop of one worker process: fill the slots it is sent until it gets ``None``."""
    try:
        src = CubeSource(cube, storage_options or None)
    except BaseException as exc:  # noqa: BLE001 - report, do not die silently
        results.put((None, _report(exc)))
        return
    mapped: dict[str, np.ndarray] = {}
    scratch = HostBuffers(keep=2)  # raw DN before normalisation
    while True:
        job = tasks.get()
        if job is None:
            return
        jid, path, layout, n, ts, ys, xs, labelled, norm = job
        try:
            raw = mapped.get(path)
            if raw is None:
                raw = mapped[path] = _map(path)
            x, valid, labels = layout.views(raw, n)
            dn = scratch.empty(x.shape, np.uint16) if layout.normalised else x
            fill_patches(src, ts, ys, xs, labelled, dn, valid, labels)
            if layout.normalised:
                normalise_into(dn, norm[0], norm[1], x)
            del dn, x, valid, labels
            results.put((jid, None))
        except BaseException as exc:  # noqa: BLE001 - the loader re-raises it (see _report)
            results.put((jid, _report(exc)))


def _report(exc: BaseException) -> tuple[str, str]:
    """What a worker sends back about ``exc``: ``("data", message)`` for a :class:`ValueError` (a missing or
    damaged chunk, bad values: the user's data, re-raised as a ValueError with the same one-line message), else
    ``("bug", traceback)``."""
    if isinstance(exc, ValueError):
        return "data", str(exc)
    return "bug", traceback.format_exc()


def _raise(err: tuple[str, str], what: str) -> None:
    kind, text = err
    if kind == "data":
        raise ValueError(text)
    raise WorkerError(f"{what}:\n{text}")


def _stop(procs: Sequence[Any], tasks: Any) -> None:
    for _ in procs:
        try:
            tasks.put(None)
        except (OSError, ValueError):
            break
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


class ProcessWorkers:
    """``n`` worker processes reading patches of the store ``cube`` into shared-memory slots.

    :meth:`submit` sends a job and returns its id; :meth:`wait` blocks until that job is done (and raises
    :class:`WorkerError` if it failed or a worker died). A slot stays referenced here while its job runs,
    so it is never handed out again mid-write, even if the caller gives up on the job.
    """

    #: seconds between checks that the workers are still alive while waiting
    POLL = 0.5

    def __init__(self, cube: str | os.PathLike, n: int, storage_options: Mapping[str, Any] | None = None) -> None:
        if n < 1:
            raise ValueError(f"ProcessWorkers needs n >= 1 processes, got {n}")
        ctx = mp.get_context("spawn")
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        from hvaeseg.data.remote import storage_options_for

        # a spawned process does not inherit this one's defaults for URLs (hvaeseg.data.remote): hand them over
        args = (os.fspath(cube), storage_options_for(cube, storage_options), self.tasks, self.results)
        self.procs = [
            ctx.Process(target=_worker_main, args=args, name=f"hvaeseg-loader-{i}", daemon=True) for i in range(n)
        ]
        for p in self.procs:
            p.start()
        self._ids = itertools.count()
        self._running: dict[int, np.ndarray] = {}  # job id -> its slot (kept referenced until done)
        self._done: dict[int, tuple[str, str] | None] = {}  # job -> its error (_report), None: done
        self._forgotten: set[int] = set()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.tasks)

    def submit(self, slot: np.ndarray, path: str, layout: SlotLayout, n: int, ts: np.ndarray,
               ys: Sequence[int], xs: Sequence[int], labelled: Sequence[bool],
               norm: tuple[np.ndarray, np.ndarray] | None = None) -> int:
        """Fill ``slot`` (the file ``path``) with ``n`` patches (normalised with ``x = DN * a + b``,
        ``norm = (a, b)``, when the layout says so); returns the job id."""
        if layout.normalised and norm is None:
            raise ValueError("a normalised slot layout needs norm=(a, b)")
        if not self._finalizer.alive:
            raise RuntimeError("the loader's worker processes were closed")
        with self._lock:
            jid = next(self._ids)
            self._running[jid] = slot
        self.tasks.put((jid, path, layout, n, np.ascontiguousarray(ts), list(ys), list(xs), list(labelled), norm))
        return jid

    def wait(self, jid: int) -> None:
        """Block until job ``jid`` is done; re-raise a worker's error."""
        with self._lock:
            while jid not in self._done:
                try:
                    got, err = self.results.get(timeout=self.POLL)
                except queue.Empty:
                    dead = [p for p in self.procs if not p.is_alive()]
                    if dead:
                        raise WorkerError(
                            f"loader worker process {dead[0].name} died (exit code {dead[0].exitcode}); "
                            "out of memory? Fewer workers or a smaller batch, or threads (processes=False)"
                        ) from None
                    continue
                if got is None:  # a worker could not even open the cube
                    _raise(err, "a loader worker could not open the cube")
                self._running.pop(got, None)
                if got in self._forgotten:
                    self._forgotten.discard(got)
                else:
                    self._done[got] = err
            err = self._done.pop(jid)
        if err is not None:
            _raise(err, "a loader worker failed")

    def forget(self, jids: Sequence[int]) -> None:
        """The caller will not wait for ``jids``: their results are dropped when they come."""
        with self._lock:
            for jid in jids:
                if self._done.pop(jid, False) is False:  # not back yet
                    self._forgotten.add(jid)

    @property
    def alive(self) -> bool:
        return self._finalizer.alive

    def close(self) -> None:
        """Stop the processes (idempotent)."""
        self._finalizer()
