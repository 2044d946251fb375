"""Streaming patches from a cube to the device: chunk-aware reads, prefetch threads, device normalisation.

:class:`PatchLoader` reads the patches of a :class:`~hvaeseg.data.sampler.PatchPlan` in batches and yields
:class:`PatchBatch` tensors on the device:

* ``x``: ``(B, C, H, W)`` float32, or ``(B, T, C, H, W)`` for plans with ``"time"`` in their sizes:
  ``(DN * scale_factor + add_offset - band_mean) / band_std``, computed **on the device** from the raw
  uint16 DN (half the bytes of float32 cross the bus). ``band_mean``/``band_std`` come from the cube's
  attributes (:func:`hvaeseg.data.stats.ensure_band_stats` computes and stores them once if missing).
  Float32 reflectance (physical units, NaN = no data) is read as the DN of Sentinel-2 L2A
  (``(reflectance + 0.1) / 1e-4`` rounded, NaN -> DN 0; :func:`hvaeseg.data.chunks.dn_encoding`): its 1e-4
  step is the precision of L2A products, and the same uint16 path carries it to the device.
* ``valid``: ``(B, H, W)`` / ``(B, T, H, W)`` bool.
* ``labels``: ``(B, H, W)`` int64, -1 = void; all -1 for patches the plan does not flag ``labelled``.
* ``doy``: ``(B,)`` / ``(B, T)`` float32 day of the year (1 = 1 January, fractional for times of day) of
  each patch's date(s), on the device: the acquisition date is known, and phenology depends on it.

Reading is **chunk-aware**: for each batch the loader lists the store chunks its patches touch, decodes
each chunk once and, while it is hot in cache, copies it into every patch that needs it; then the chunk's
buffer serves the next chunk.
For a local Zarr v3 store with a plain codec chain (bytes + blosc / zstd / gzip, no sharding) chunks are
read and decoded directly with numcodecs, which releases the GIL, skipping zarr's per-call machinery;
any other store (fsspec URL, sharded, v2) goes through ``zarr.Array`` slicing of whole chunks. In-memory
cubes are sliced directly (:mod:`hvaeseg.data.chunks`). Batches are built by ``workers`` background
threads, at most ``prefetch + workers`` batches exist at once (bounded memory), into host buffers that are
reused once the batch they held is gone (pinned ones when the device is CUDA), and are copied with
``non_blocking=True``. With ``processes=True`` the workers are processes (:mod:`hvaeseg.data.workers`)
writing into shared memory: they share no GIL with each other or with the training loop.

Edges and invalid pixels follow the sampler's rules (:mod:`hvaeseg.data.sampler`): patches never cross the
cube border (a plan that does is rejected with ``ValueError``), nothing is padded; a patch with no valid
pixel is yielded like any other with ``valid`` all False (the losses mask invalid pixels) and ``x``
holding the normalised stored DN (no data, DN 0, normalises to ``(add_offset - mean) / std``).

Order: without shuffling, the plan's order. With ``shuffle`` (the default when ``repeat=True``), epoch
``e`` reads the patches in an order that is a function of ``(seed, e)`` only: the plan's groups are
permuted, and the patches inside each group, so that patches drawn from one super-tile stay together
(one decode serves them all). ``repeat=True`` runs epochs ``epoch, epoch + 1, ...`` forever and drops
each epoch's incomplete last batch, so every batch has ``batch_size`` patches.

The tests check the CPU path against a naive read of the same plan that shares no code with this package
(``tests/data/naive.py``: numpy slicing of the raw store, band statistics and normalisation in float64):
the DN, masks, labels and days bit for bit, ``x`` to float32 rounding.
"""

from __future__ import annotations

import collections
import itertools
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch

from hvaeseg.data.chunks import (
    CubeSource,
    HostBuffers,
    fill_patches,
    normalise_into,
    open_dataset,
)
from hvaeseg.data.sampler import PatchPlan
from hvaeseg.data.stats import dn_scaling, ensure_band_stats, read_band_stats
from hvaeseg.data.workers import ProcessWorkers, SharedSlots, SlotLayout

__all__ = ["PatchBatch", "PatchLoader", "day_of_year", "normalise_dn", "normaliser"]


class PatchBatch(NamedTuple):
    """One batch of patches (see the module doc for shapes and meaning); ``doy`` is None when unknown."""

    x: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor
    doy: torch.Tensor | None = None


def day_of_year(times: Any) -> np.ndarray:
    """Day of the year, 1-based and fractional (``2020-01-01T12:00`` -> 1.5), of ``datetime64`` times: float32.

    :raises TypeError: when ``times`` are not datetimes.
    """
    t = np.asarray(times)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise TypeError(f"expected datetime64 times to compute the day of the year, got {t.dtype}")
    start = t.astype("datetime64[Y]").astype("datetime64[ns]")
    days = (t.astype("datetime64[ns]") - start) / np.timedelta64(1, "D")
    return (days + 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# normalisation (the same bits on the CPU and on an accelerator)
# --------------------------------------------------------------------------------------------------


def normaliser(
    scale: float, offset: float, mean: Sequence[float] | None, std: Sequence[float] | None, n_bands: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band float32 ``(a, b)`` with ``x = DN * a + b`` = ``(DN * scale + offset - mean) / std``.

    Without statistics (``mean is None``) it only applies the scaling: ``x`` = reflectance.
    """
    if mean is None or std is None:
        a = np.full(n_bands, scale, dtype=np.float64)
        b = np.full(n_bands, offset, dtype=np.float64)
    else:
        m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if m.shape != (n_bands,) or s.shape != (n_bands,):
            raise ValueError(f"expected {n_bands} band statistics, got mean {m.shape} and std {s.shape}")
        a = scale / s
        b = (offset - m) / s
    return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def normalise_dn(
    dn: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: np.ndarray | None = None
) -> torch.Tensor:
    """``dn (..., C, H, W)`` (uint16 / any number) to float32 ``dn * a[c] + b[c]`` on ``dn``'s device.

    One float32 multiply and one float32 add per element (each exactly rounded), so the CPU (numpy:
    single-threaded, GIL released, no contention between loader threads) and the GPU (torch) give the
    same bits. ``out``: a float32 array of ``dn``'s shape to write into (CPU only).
    """
    if dn.device.type == "cpu":
        out = np.empty(dn.shape, dtype=np.float32) if out is None else out
        return torch.from_numpy(normalise_into(dn.numpy(), a.numpy(), b.numpy(), out))
    return _normalise_torch(dn, a, b)


def _normalise_torch(dn: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The accelerator path of :func:`normalise_dn` (torch ops; same arithmetic as the numpy path)."""
    shape = (-1, 1, 1)
    if dn.dtype == torch.uint16:  # widen through int32: uint16 kernels are not everywhere on accelerators
        dn = dn.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF)
    x = dn.to(torch.float32)
    x.mul_(a.to(x.device).view(shape)).add_(b.to(x.device).view(shape))
    return x


# --------------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------------


_NP_DTYPES = {torch.uint16: np.uint16, torch.bool: np.bool_, torch.int16: np.int16, torch.int64: np.int64}


class PatchLoader:
    """Iterable of :class:`PatchBatch` for the patches of ``plan`` (see the module doc).

    :param cube: an ``xarray.Dataset`` (in memory or lazily opened) or a store path/URL.
    :param plan: which patches, in which order (:class:`~hvaeseg.data.sampler.PatchPlan`).
    :param batch_size: patches per batch.
    :param device: where the tensors go (``"cpu"``, ``"cuda"``, a ``torch.device``).
    :param prefetch: batches prepared ahead of the consumer.
    :param workers: background threads building batches (0: build in the calling thread), or processes.
    :param processes: build batches in ``workers`` worker processes (:mod:`hvaeseg.data.workers`) instead of
        threads: no GIL shared with each other or with the training loop. They write into shared memory,
        need a store path or URL as ``cube``, start once (about a second) and live until :meth:`close`
        (or the loader is garbage-collected; ``with PatchLoader(...) as loader:`` closes it). Scripts
        that use them need the usual ``if __name__ == "__main__":`` guard (processes are spawned).
    :param pin_memory: host buffers in pinned memory; default: when ``device`` is CUDA.
    :param normalise: standardise with the cube's band statistics (computed and stored once if missing);
        ``False``: ``x`` is the raw DN as a ``torch.uint16`` tensor (what crosses the bus; for float
        reflectance the L2A DN it is read as), for benchmarks and debugging; :func:`normalise_dn` turns it
        into the normalised float32.
    :param repeat: endless: epochs ``epoch, epoch + 1, ...``, each reshuffled, incomplete batches dropped.
    :param shuffle: reorder per epoch by ``(seed, epoch)`` (default: ``repeat``).
    :param seed: seed of the shuffling.
    :param epoch: the (first) epoch; :meth:`set_epoch` changes it.
    :param drop_last: drop an incomplete last batch (always true with ``repeat``).
    :param storage_options: for fsspec URLs.
    :param shard: ``(index, count)``: one of ``count`` loaders (the processes of a data-parallel run) that share
        each batch. The epoch's order is cut into global batches of ``count * batch_size`` patches, exactly as a
        loader of that batch size cuts it, and this loader reads only the slice ``[index * batch_size,
        (index + 1) * batch_size)`` of each: the ``count`` shards are disjoint, their union is the global batch,
        and each is a function of ``(seed, batch number)`` only. Incomplete global batches are dropped.
        ``(0, 1)`` (the default) is a plain loader.
    """

    def __init__(
        self,
        cube: Any,
        plan: PatchPlan,
        *,
        batch_size: int,
        device: str | torch.device = "cpu",
        prefetch: int = 2,
        workers: int = 2,
        pin_memory: bool | None = None,
        normalise: bool = True,
        repeat: bool = False,
        shuffle: bool | None = None,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        processes: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not isinstance(plan, PatchPlan):
            raise TypeError(f"expected a PatchPlan, got {type(plan).__name__}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 0 or workers < 0:
            raise ValueError(f"prefetch and workers must be >= 0, got {prefetch} and {workers}")
        index, count = (int(v) for v in shard)
        if not (count >= 1 and 0 <= index < count):
            raise ValueError(f"shard: expected (index, count) with 0 <= index < count, got {tuple(shard)}")
        #: ``(index, count)``: this loader's slice of every global batch of ``count * batch_size`` patches
        self.shard = (index, count)
        self.plan = plan
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} asked for, but CUDA is not available here; use device='cpu'")
        self.prefetch = int(prefetch)
        self.workers = int(workers)
        self.pin_memory = (self.device.type == "cuda") if pin_memory is None else bool(pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            self.pin_memory = False
        self.normalise = bool(normalise)
        self.repeat = bool(repeat)
        self.shuffle = self.repeat if shuffle is None else bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.drop_last = bool(drop_last) or self.repeat or count > 1
        self.processes = bool(processes)
        if self.processes:
            if not isinstance(cube, (str, os.PathLike)):
                raise ValueError(
                    "processes=True: worker processes open the cube themselves, so pass its store path or URL "
                    f"(got a {type(cube).__name__}), or use threads (processes=False)"
                )
            if self.workers < 1:
                raise ValueError("processes=True needs workers >= 1")
        self._cube, self._storage_options = cube, storage_options
        self._pool: ProcessWorkers | None = None
        self._slots: SharedSlots | None = None
        self._slot_events: dict[int, Any] = {}
        self.src = CubeSource(cube, storage_options)
        # batches alive at once: queued + being built + the consumer's current and previous one
        # batches in flight (queued or being built), plus the consumer's current and previous one
        self._in_flight = max(self.prefetch, 1) + self.workers - 1
        self._host = HostBuffers(keep=self._in_flight + 3)
        # labels: final int64 on the CPU; int16 crosses to an accelerator (a quarter of the bytes)
        self._labels_dtype = torch.int64 if self.device.type == "cpu" else torch.int16
        shape = self.src.shape
        want = {k: shape[k] for k in ("time", "y", "x")}
        if dict(plan.cube_shape) != want:
            raise ValueError(f"the plan was made for a cube of {plan.cube_shape}, this cube is {want}")
        plan.check()
        if self.repeat and len(plan) < self.batch_size * count:
            shards = "" if count == 1 else f" x {count} shards"
            raise ValueError(
                f"repeat=True needs at least batch_size={self.batch_size}{shards} patches, the plan has {len(plan)}"
            )
        scale, offset = dn_scaling(self.src.refl_attrs, self.src.dtype)  # the DN's: float reflectance is encoded
        #: ``(scale_factor, add_offset)`` of the DN the loader moves (``x`` with ``normalise=False``)
        self.dn_scaling = (scale, offset)
        mean = std = None
        if self.normalise:
            stats = read_band_stats(cube, storage_options=storage_options)
            if stats is None:
                stats = self._compute_stats(cube, storage_options)
            mean, std = stats
        a, b = normaliser(scale, offset, mean, std, shape["band"])
        self._a, self._b = a.to(self.device), b.to(self.device)
        times = open_dataset(cube, storage_options)["time"].values
        self._doy = day_of_year(times) if np.issubdtype(np.asarray(times).dtype, np.datetime64) else None

    @staticmethod
    def _compute_stats(cube: Any, storage_options) -> tuple[list[float], list[float]]:
        try:
            return ensure_band_stats(cube, storage_options=storage_options)
        except (PermissionError, OSError) as err:
            from hvaeseg.data.stats import compute_band_stats

            warnings.warn(f"cannot store band statistics in {cube} ({err}); computed them in memory", stacklevel=3)
            return compute_band_stats(cube, storage_options=storage_options)

    # -- order ---------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration uses (the first one, with ``repeat``)."""
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Patch indices in reading order for ``epoch``: a function of ``(seed, epoch)`` only."""
        n = len(self.plan)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, int(epoch)])
        groups, inverse = np.unique(self.plan.group, return_inverse=True)
        group_rank = rng.permutation(len(groups))
        within = rng.random(n)
        return np.lexsort((within, group_rank[inverse]))

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The patch indices of each batch of ``epoch`` (this loader's slice of each global batch, with a
        :attr:`shard`)."""
        order = self.epoch_order(epoch)
        index, count = self.shard
        B = self.batch_size * count
        n = len(order) // B * B if self.drop_last else len(order)
        batches = [order[i : i + B] for i in range(0, n, B)]
        if count > 1:
            b = self.batch_size
            batches = [batch[index * b : (index + 1) * b] for batch in batches]
        return batches

    def __len__(self) -> int:
        """Batches per epoch."""
        n, B = len(self.plan), self.batch_size * self.shard[1]
        return n // B if self.drop_last else -(-n // B)

    # -- reading -----------------------------------------------------------------------------------
    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if self.pin_memory:  # torch's caching host allocator reuses pinned blocks once their copies are done
            return torch.empty(shape, dtype=dtype, pin_memory=True)
        return torch.from_numpy(self._host.empty(shape, _NP_DTYPES[dtype]))

    def read_host(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw host tensors for the patches ``index``: DN uint16 ``(B, T, C, H, W)``, valid bool
        ``(B, T, H, W)``, labels ``(B, H, W)`` (pinned when the loader pins): int64 when the device is the
        CPU (final: no widening pass), int16 otherwise (a quarter of the bytes cross the bus; widened there)."""
        p, src = self.plan, self.src
        index = np.asarray(index, dtype=np.int64)
        B, T = len(index), p.n_dates
        H, W, C = p.sizes["y"], p.sizes["x"], src.shape["band"]
        dn = self._empty((B, T, C, H, W), torch.uint16)
        valid = self._empty((B, T, H, W), torch.bool)
        labels = self._empty((B, H, W), self._labels_dtype)
        fill_patches(src, *self._positions(index), dn.numpy(), valid.numpy(), labels.numpy())
        return dn, valid, labels

    def _positions(self, index: np.ndarray) -> tuple[np.ndarray, list[int], list[int], list[bool]]:
        """``(ts, ys, xs, labelled)`` of the patches ``index`` as :func:`fill_patches` takes them (positions
        as Python ints: planning under the GIL is cheaper)."""
        p = self.plan
        return p.t[index], p.y[index].tolist(), p.x[index].tolist(), p.labelled[index].tolist()

    def _finish(self, dn: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, index: np.ndarray) -> PatchBatch:
        """To the device (non-blocking from pinned memory), normalise there, drop T for single dates."""
        if self.device.type != "cpu":
            nb = self.pin_memory and self.device.type == "cuda"
            # uint16 crosses as its int16 bit pattern (a plain copy; no uint16 kernel needed there)
            dn = dn.view(torch.int16).to(self.device, non_blocking=nb).view(torch.uint16)
            valid, labels = (t.to(self.device, non_blocking=nb) for t in (valid, labels))
        cpu = dn.device.type == "cpu"
        if self.normalise:
            x = normalise_dn(dn, self._a, self._b, out=self._host.empty(dn.shape, np.float32) if cpu else None)
        else:
            x = dn
        labels = labels.to(torch.int64)  # int16 from an accelerator's host buffer; on the CPU already int64
        return self._single_date(x, valid, labels, index)

    def _single_date(self, x: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor, index: np.ndarray) -> PatchBatch:
        """The batch with the dates' days of the year, without the date axis unless the plan has ``"time"``."""
        doy = None
        if self._doy is not None:
            doy = torch.from_numpy(self._doy[self.plan.t[np.asarray(index, dtype=np.int64)]]).to(self.device)
        if not self.plan.temporal:
            x, valid = x[:, 0], valid[:, 0]
            doy = None if doy is None else doy[:, 0]
        return PatchBatch(x, valid, labels, doy)

    def batches(self, epoch: int | None = None) -> Iterator[PatchBatch]:
        """The batches of one epoch (default :attr:`epoch`), in that epoch's order."""
        e = self.epoch if epoch is None else int(epoch)
        return self._run((e, b) for b in self.epoch_batches(e))

    def __iter__(self) -> Iterator[PatchBatch]:
        if not self.repeat:
            return self.batches(self.epoch)
        start = self.epoch
        jobs = ((e, b) for e in itertools.count(start) for b in self.epoch_batches(e))
        return self._run(jobs)

    def stream(self, start: int = 0) -> Iterator[PatchBatch]:
        """Endless batches from global batch number ``start`` on (epoch ``start // len(self)``, counted from
        :attr:`epoch`): the i-th item is batch ``start + i``, a function of ``(seed, start + i)`` only. This is
        what makes a resumed training run read exactly the batches an uninterrupted one reads; skipped batches
        are never read."""
        if start < 0:
            raise ValueError(f"start: expected a batch number >= 0, got {start}")
        per_epoch = len(self.epoch_batches(self.epoch))
        if per_epoch == 0:
            raise ValueError(f"the plan has {len(self.plan)} patches, fewer than one batch of {self.batch_size}")
        first, offset = divmod(start, per_epoch)

        def jobs() -> Iterator[tuple[int, np.ndarray]]:
            for e in itertools.count(self.epoch + first):
                batches = self.epoch_batches(e)
                for b in batches[offset if e == self.epoch + first else 0:]:
                    yield e, b

        return self._run(jobs())

    # -- worker processes ----------------------------------------------------------------------------
    def _layout(self) -> SlotLayout:
        p = self.plan
        cpu = self.device.type == "cpu"
        # on the CPU the workers normalise (the consumer gets final tensors); else raw DN crosses the bus
        return SlotLayout(self.batch_size, p.n_dates, self.src.shape["band"], p.sizes["y"], p.sizes["x"],
                          labels_dtype=np.dtype(_NP_DTYPES[self._labels_dtype]).name,
                          normalised=cpu and self.normalise)

    def _start_processes(self) -> ProcessWorkers:
        if self._pool is None or not self._pool.alive:
            self._slots = SharedSlots(on_new=self._pin_slot if self.pin_memory else None)
            self._pool = ProcessWorkers(self._cube, self.workers, self._storage_options)
        return self._pool

    def _pin_slot(self, raw: np.ndarray) -> None:
        """Page-lock a shared-memory slot so copies from it to the GPU are asynchronous."""
        err = torch.cuda.cudart().cudaHostRegister(raw.ctypes.data, raw.nbytes, 0)
        if int(err) != 0:
            warnings.warn(f"could not pin a shared-memory batch for CUDA (error {err}); copies will be synchronous",
                          stacklevel=2)

    def _acquire_slot(self, nbytes: int) -> tuple[np.ndarray, str]:
        assert self._slots is not None  # set by _start_processes, before any slot is acquired
        raw, path = self._slots.acquire(nbytes)
        event = self._slot_events.pop(id(raw), None)
        if event is not None:  # the asynchronous copy out of this slot must be over before it is refilled
            event.synchronize()
        return raw, path

    def _run_processes(self, jobs: Iterator[tuple[int, np.ndarray]]) -> Iterator[PatchBatch]:
        pool, layout = self._start_processes(), self._layout()
        norm = (self._a.numpy(), self._b.numpy()) if layout.normalised else None
        pending: collections.deque[tuple[int, np.ndarray, np.ndarray]] = collections.deque()  # (job, slot, index)

        def submit(index: np.ndarray) -> None:
            raw, path = self._acquire_slot(layout.nbytes)
            jid = pool.submit(raw, path, layout, len(index), *self._positions(index), norm)
            pending.append((jid, raw, index))

        try:
            for _, index in itertools.islice(jobs, self._in_flight):
                submit(index)
            while pending:
                jid, raw, index = pending.popleft()
                pool.wait(jid)
                nxt = next(jobs, None)
                if nxt is not None:
                    submit(nxt[1])
                x, valid, labels = (torch.from_numpy(a) for a in layout.views(raw, len(index)))
                finish = self._single_date if layout.normalised else self._finish
                batch = finish(x, valid, labels, index)
                if self.pin_memory and self.device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record()
                    self._slot_events[id(raw)] = event
                del raw
                yield batch
        finally:
            pool.forget([jid for jid, _, _ in pending])

    def close(self) -> None:
        """Stop the worker processes and free their shared memory (no-op for threads); idempotent."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._slots is not None:
            for raw in self._slots.slots() if self.pin_memory else ():
                torch.cuda.cudart().cudaHostUnregister(raw.ctypes.data)
            self._slots.close()
            self._slots = None
        self._slot_events.clear()

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, jobs: Iterator[tuple[int, np.ndarray]]) -> Iterator[PatchBatch]:
        if self.processes:
            yield from self._run_processes(jobs)
            return
        cpu = self.device.type == "cpu"

        def build(index: np.ndarray):
            host = self.read_host(index)
            # on the CPU the 'device' is here: normalise in the worker, in parallel
            return self._finish(*host, index) if cpu else (*host, index)

        if self.workers == 0:
            for _, index in jobs:
                out = build(index)
                yield out if cpu else self._finish(*out)
            return
        ex = ThreadPoolExecutor(self.workers, thread_name_prefix="hvaeseg-loader")
        pending: collections.deque[Future] = collections.deque()
        try:
            for _, index in itertools.islice(jobs, self._in_flight):
                pending.append(ex.submit(build, index))
            while pending:
                out = pending.popleft().result()
                nxt = next(jobs, None)
                if nxt is not None:
                    pending.append(ex.submit(build, nxt[1]))
                yield out if cpu else self._finish(*out)
        finally:
            for f in pending:
                f.cancel()
            ex.shutdown(wait=True, cancel_futures=True)
