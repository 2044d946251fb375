"""Streaming patches from a cube to the device: chunk-aware reads, prefetch threads, device normalisation.

:class:`PatchLoader` reads the patches of a :class:`~hvaeseg.data.sampler.PatchPlan` in batches and yields
:class:`PatchBatch` tensors on the device:

* ``x``: ``(B, C, H, W)`` float32, or ``(B, T, C, H, W)`` for plans with ``"time"`` in their sizes:
  ``(DN * scale_factor + add_offset - band_mean) / band_std``, computed **on the device** from the raw
  uint16 DN (half the bytes of float32 cross the bus). ``band_mean``/``band_std`` come from the cube's
  attributes (:func:`hvaeseg.data.stats.ensure_band_stats` computes and stores them once if missing).
* ``valid``: ``(B, H, W)`` / ``(B, T, H, W)`` bool.
* ``labels``: ``(B, H, W)`` int64, -1 = void; all -1 for patches the plan does not flag ``labelled``.

Reading is **chunk-aware**: for each batch the loader lists the store chunks its patches touch, decodes
each chunk once and, while it is hot in cache, copies it into every patch that needs it; then the chunk's
buffer serves the next chunk.
For a local Zarr v3 store with a plain codec chain (bytes + blosc / zstd / gzip, no sharding) chunks are
read and decoded directly with numcodecs, which releases the GIL, skipping zarr's per-call machinery;
any other store (fsspec URL, sharded, v2) goes through ``zarr.Array`` slicing of whole chunks. In-memory
cubes are sliced directly. Batches are built by ``workers`` background threads, at most
``prefetch + workers`` batches exist at once (bounded memory), into host buffers that are reused once the
batch they held is gone (pinned ones when the device is CUDA), and are copied with ``non_blocking=True``.

Edges and invalid pixels follow the sampler's rules (:mod:`hvaeseg.data.sampler`): patches never cross the
cube border (a plan that does is rejected with ``ValueError``), nothing is padded; a patch with no valid
pixel is yielded like any other with ``valid`` all False (the losses mask invalid pixels) and ``x``
holding the normalised stored DN (no data, DN 0, normalises to ``(add_offset - mean) / std``).

Order: without shuffling, the plan's order. With ``shuffle`` (the default when ``repeat=True``), epoch
``e`` reads the patches in an order that is a function of ``(seed, e)`` only: the plan's groups are
permuted, and the patches inside each group, so that patches drawn from one super-tile stay together
(one decode serves them all). ``repeat=True`` runs epochs ``epoch, epoch + 1, ...`` forever and drops
each epoch's incomplete last batch, so every batch has ``batch_size`` patches.

The CPU path gives exactly the tensors of a naive read of the same plan (:func:`read_patches_naive`, one
``xarray`` ``isel`` per patch and the same normalisation): the tests check this bit for bit.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr

from hvaeseg.data.sampler import PatchPlan
from hvaeseg.data.stats import dn_scaling, ensure_band_stats, read_band_stats

__all__ = ["PatchBatch", "PatchLoader", "read_patches_naive", "normalise_dn", "normaliser"]


class PatchBatch(NamedTuple):
    """One batch of patches (see the module doc for shapes and meaning)."""

    x: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor


# --------------------------------------------------------------------------------------------------
# normalisation (shared by the loader and the naive reference, so both give the same bits)
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
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if mean.shape != (n_bands,) or std.shape != (n_bands,):
            raise ValueError(f"expected {n_bands} band statistics, got mean {mean.shape} and std {std.shape}")
        a = scale / std
        b = (offset - mean) / std
    return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def normalise_dn(
    dn: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: np.ndarray | None = None
) -> torch.Tensor:
    """``dn (..., C, H, W)`` (uint16 / any number) to float32 ``dn * a[c] + b[c]`` on ``dn``'s device.

    One float32 multiply and one float32 add per element (each exactly rounded), so the CPU (numpy:
    single-threaded, GIL released, no contention between loader threads) and the GPU (torch) give the
    same bits. ``out``: a float32 array of ``dn``'s shape to write into (CPU only).
    """
    shape = (-1, 1, 1)
    if dn.device.type == "cpu":
        if out is None:
            out = np.empty(dn.shape, dtype=np.float32)
        x = out
        x[...] = dn.numpy()  # exact: every uint16 is a float32
        np.multiply(x, a.numpy().astype(np.float32).reshape(shape), out=x)
        np.add(x, b.numpy().astype(np.float32).reshape(shape), out=x)
        return torch.from_numpy(x)
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
# chunk readers: get(chunk coords) -> (the chunk's array, clipped at the array edge)
# --------------------------------------------------------------------------------------------------


class _InMemory:
    """A numpy array: one 'chunk' (the whole array), no copy."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.shape = a.shape
        self.chunks = a.shape

    def get(self, key: tuple[int, ...]) -> np.ndarray:
        return self.a

    def release(self, chunk: np.ndarray) -> None:
        pass


class _Lazy:
    """A lazily indexed xarray variable (e.g. a store opened by ``open_cube``): read whole chunks."""

    def __init__(self, var: xr.Variable) -> None:
        self.var = var
        self.shape = var.shape
        ch = var.encoding.get("chunks") or var.encoding.get("preferred_chunks")
        if isinstance(ch, Mapping):
            ch = tuple(ch.get(d, n) for d, n in zip(var.dims, var.shape))
        self.chunks = tuple(int(c) for c in ch) if ch else var.shape

    def get(self, key: tuple[int, ...]) -> np.ndarray:
        sl = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))
        return np.asarray(self.var[sl].values)

    def release(self, chunk: np.ndarray) -> None:
        pass


def _numcodecs_decoder(codec: Any):
    """A numcodecs decoder equivalent to a zarr v3 compressor codec, or None if there is none."""
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        return numcodecs.Blosc()
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd()
    if isinstance(codec, GzipCodec):
        return numcodecs.GZip()
    return None


class _ZarrChunks:
    """A zarr array read one whole chunk at a time; direct file read + numcodecs decode when possible.

    The direct path reads the chunk file into a per-thread buffer and decodes into a per-thread pool of
    chunk buffers (:meth:`release` gives a chunk back), so steady-state reading allocates nothing: on
    this kind of machine fresh allocations (page faults) cost as much as the decoding itself.
    """

    #: chunk buffers kept per thread for reuse
    POOL = 16

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.shape = tuple(arr.shape)
        self.chunks = tuple(arr.chunks)
        self._direct = self._direct_path(arr)
        self._count = int(np.prod(self.chunks))
        self._tls = threading.local()

    @staticmethod
    def _direct_path(arr: Any):
        try:
            from zarr.codecs import BytesCodec
            from zarr.core.chunk_grids import RegularChunkGrid
            from zarr.storage import LocalStore

            md = arr.metadata
            if md.zarr_format != 3 or not isinstance(md.chunk_grid, RegularChunkGrid):
                return None
            store = arr.store_path.store
            if not isinstance(store, LocalStore):
                return None
            codecs = list(md.codecs)
            if not codecs or not isinstance(codecs[0], BytesCodec):
                return None
            dtype = np.dtype(md.dtype.to_native_dtype())
            endian = getattr(codecs[0].endian, "value", codecs[0].endian)
            if dtype.itemsize > 1 and endian not in ("little", None) or dtype.byteorder == ">":
                return None
            decoders = [_numcodecs_decoder(c) for c in codecs[1:]]
            if any(d is None for d in decoders) or len(decoders) > 1:
                return None
            root = os.path.join(str(store.root), arr.store_path.path)
            fill = np.asarray(md.fill_value, dtype=dtype)
            return root, md.chunk_key_encoding, decoders[0] if decoders else None, dtype.newbyteorder("<"), fill
        except Exception:  # noqa: BLE001 - any surprise: use zarr itself
            return None

    def _local(self):
        tls = self._tls
        if not hasattr(tls, "free"):
            tls.free = []
            tls.raw = bytearray(0)
        return tls

    def _read_file(self, path: str, tls) -> memoryview | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if len(tls.raw) < size:
                tls.raw = bytearray(size)
            view = memoryview(tls.raw)[:size]
            got = 0
            while got < size:
                n = os.readv(fd, [view[got:]])
                if n == 0:
                    raise OSError(f"{path}: file shrank while being read")
                got += n
            return view
        finally:
            os.close(fd)

    def get(self, key: tuple[int, ...]) -> np.ndarray:
        if self._direct is None:
            region = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))
            return np.asarray(self.arr[region])
        root, enc, decoder, dtype, fill = self._direct
        tls = self._local()
        raw = self._read_file(os.path.join(root, enc.encode_chunk_key(key)), tls)
        out = tls.free.pop() if tls.free else np.empty(self._count, dtype=dtype)
        if raw is None:  # never-written chunk: all fill value
            out[:] = fill
        elif decoder is None:
            out.view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
        else:
            decoder.decode(raw, out=out)
        out = out.reshape(self.chunks)
        if all((k + 1) * c <= n for k, c, n in zip(key, self.chunks, self.shape)):
            return out
        return out[tuple(slice(0, min(c, n - k * c)) for k, c, n in zip(key, self.chunks, self.shape))]

    def release(self, chunk: np.ndarray) -> None:
        """Give a chunk from :meth:`get` back for reuse (it must not be used afterwards)."""
        if self._direct is None:
            return
        buf = chunk.base if chunk.base is not None else chunk
        tls = self._local()
        if buf.size == self._count and len(tls.free) < self.POOL:
            tls.free.append(buf)


# --------------------------------------------------------------------------------------------------
# the source: the cube's arrays behind chunk readers
# --------------------------------------------------------------------------------------------------


class _Source:
    """reflectance / valid / labels of a cube as chunk readers, with scaling and band statistics."""

    def __init__(self, cube: Any, storage_options: Mapping[str, Any] | None) -> None:
        if isinstance(cube, xr.Dataset):
            self._from_dataset(cube)
        elif isinstance(cube, (str, os.PathLike)):
            self._from_store(os.fspath(cube), storage_options)
        else:
            raise TypeError(f"expected a cube (xarray.Dataset) or a store path/URL, got {type(cube).__name__}")

    def _from_dataset(self, ds: xr.Dataset) -> None:
        if "reflectance" not in ds:
            raise ValueError("the cube has no `reflectance` variable")
        refl = ds["reflectance"].transpose("time", "band", "y", "x")
        self.refl_attrs = dict(refl.attrs)
        self.dtype = refl.dtype

        def reader(da: xr.DataArray):
            data = da.variable._data  # noqa: SLF001 - is it already a numpy array?
            return _InMemory(data) if isinstance(data, np.ndarray) else _Lazy(da.variable)

        self.refl = reader(refl)
        self.valid = reader(ds["valid"].transpose("time", "y", "x")) if "valid" in ds else None
        self.labels = reader(ds["labels"].transpose("y", "x")) if "labels" in ds else None

    def _from_store(self, path: str, storage_options) -> None:
        import zarr

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            try:
                g = zarr.open_group(path, mode="r", storage_options=storage_options)
            except FileNotFoundError:
                raise FileNotFoundError(f"no cube at {path}") from None
            names = set(g.array_keys())
            if "reflectance" not in names:
                raise ValueError(f"{path}: the store has no `reflectance` array")
            arrays = {}
            for name, dims in (("reflectance", ("time", "band", "y", "x")), ("valid", ("time", "y", "x")), ("labels", ("y", "x"))):
                if name in names:
                    arrays[name] = g[name]
                    have = tuple(arrays[name].metadata.dimension_names or ())
                    if have and have != dims:  # an unusual dim order: let xarray transpose
                        self._from_dataset(_open_ds(path, storage_options))
                        return
        self.refl_attrs = dict(arrays["reflectance"].attrs)
        self.dtype = np.dtype(arrays["reflectance"].dtype)
        self.refl = _ZarrChunks(arrays["reflectance"])
        self.valid = _ZarrChunks(arrays["valid"]) if "valid" in arrays else None
        self.labels = _ZarrChunks(arrays["labels"]) if "labels" in arrays else None

    @property
    def shape(self) -> dict[str, int]:
        T, C, Y, X = self.refl.shape
        return {"time": T, "band": C, "y": Y, "x": X}


def _open_ds(cube: Any, storage_options) -> xr.Dataset:
    if isinstance(cube, xr.Dataset):
        return cube
    from hvaeseg.data.store import open_cube

    return open_cube(os.fspath(cube), storage_options=storage_options, validate=False)


# --------------------------------------------------------------------------------------------------
# cutting patches out of chunks
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def _range_pieces(start: int, stop: int, c: int) -> tuple[tuple[int, slice, slice], ...]:
    """The chunks (size ``c``) that ``[start, stop)`` touches: ``(chunk, output slice, slice in the chunk)``.

    Cached (Python ints in, immutable out): patches share offsets, and planning holds the GIL."""
    out = []
    for k in range(start // c, (stop - 1) // c + 1):
        lo, hi = max(start, k * c), min(stop, (k + 1) * c)
        out.append((k, slice(lo - start, hi - start), slice(lo - k * c, hi - k * c)))
    return tuple(out)


_FIRST = slice(0, 1)


def _index_pieces(idx: np.ndarray, c: int) -> list[tuple[int, Any, Any]]:
    if c == 1:
        return [(t, slice(i, i + 1), _FIRST) for i, t in enumerate(idx.tolist())]
    out = []
    ks = idx // c
    for k in np.unique(ks):
        pos = np.nonzero(ks == k)[0]
        if len(pos) == 1:
            p = int(pos[0])
            out.append((int(k), slice(p, p + 1), slice(int(idx[p] - k * c), int(idx[p] - k * c) + 1)))
        else:
            out.append((int(k), pos, idx[pos] - k * c))
    return out


def _box_pieces(
    ranges: Sequence[tuple[int, int]], chunks: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """The chunks a box of ``(start, stop)`` ranges touches: ``(chunk key, output slices, chunk slices)``."""
    per_dim = [_range_pieces(start, stop, c) for (start, stop), c in zip(ranges, chunks)]
    return [tuple(zip(*combo)) for combo in itertools.product(*per_dim)]


def _gather(reader: Any, requests: Sequence[Sequence[Any]], out: np.ndarray, rows: Sequence[int]) -> None:
    """Fill ``out[rows[i]]`` with the region ``requests[i]`` of the array behind ``reader``.

    A request has one entry per array dim: index arrays (dates) first, then ``(start, stop)`` ranges.
    Chunk-major: every piece of every request is listed under the chunk it comes from, then each chunk is
    decoded once, copied into all the pieces that need it while it is hot in cache, and given back before
    the next one is decoded (one decoded chunk alive per thread). Chunks go in key order (locality).
    """
    if not requests:
        return
    chunks = tuple(reader.chunks)
    n_index = sum(isinstance(r, np.ndarray) for r in requests[0])
    box_chunks = chunks[n_index:]
    pieces: dict[tuple, list[tuple[np.ndarray, tuple, tuple]]] = {}
    for row, req in zip(rows, requests):
        box = _box_pieces(req[n_index:], box_chunks)
        dst = out[row]
        index_dims = [_index_pieces(r, c) for r, c in zip(req[:n_index], chunks)]
        for combo in itertools.product(*index_dims):
            ikey, iosl, icsl = zip(*combo) if combo else ((), (), ())
            for key, osl, csl in box:
                pieces.setdefault(ikey + key, []).append((dst, iosl + osl, icsl + csl))
    for key in sorted(pieces):
        chunk = reader.get(key)
        try:
            for dst, osl, csl in pieces[key]:
                dst[osl] = chunk[csl]
        finally:
            reader.release(chunk)


# --------------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------------


_NP_DTYPES = {torch.uint16: np.uint16, torch.bool: np.bool_, torch.int16: np.int16, torch.int64: np.int64}


def _refcounts(arrays: Sequence[np.ndarray]) -> list[int]:
    """Reference counts of ``arrays`` (one code path for calibration and use, so the counts compare)."""
    return [sys.getrefcount(a) for a in arrays]


class _HostBuffers:
    """Reusable unpinned host arrays for the batches, so steady-state reading allocates nothing.

    A batch's tensors are views of an array from here (``torch.from_numpy``: every tensor sharing the
    storage keeps the array referenced). An array is handed out again only once nothing but this pool
    refers to it, i.e. when every tensor of the batch it went into is gone; no caller has to give anything
    back. At most ``keep`` arrays per (shape, dtype) are kept; beyond that fresh ones are allocated (and
    freed as usual). Fresh memory costs page faults on first touch, as much as decoding on small machines.
    """

    def __init__(self, keep: int) -> None:
        self.keep = int(keep)
        self._lock = threading.Lock()
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._free_refs = _refcounts([np.empty(0)])[0]

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype))
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for a, refs in zip(arrays, _refcounts(arrays)):
                if refs <= self._free_refs:
                    return a
            a = np.empty(shape, dtype=dtype)
            if len(arrays) < self.keep:
                arrays.append(a)
            return a


class PatchLoader:
    """Iterable of :class:`PatchBatch` for the patches of ``plan`` (see the module doc).

    :param cube: an ``xarray.Dataset`` (in memory or lazily opened) or a store path/URL.
    :param plan: which patches, in which order (:class:`~hvaeseg.data.sampler.PatchPlan`).
    :param batch_size: patches per batch.
    :param device: where the tensors go (``"cpu"``, ``"cuda"``, a ``torch.device``).
    :param prefetch: batches prepared ahead of the consumer.
    :param workers: background threads building batches (0: build in the calling thread).
    :param pin_memory: host buffers in pinned memory; default: when ``device`` is CUDA.
    :param normalise: standardise with the cube's band statistics (computed and stored once if missing);
        ``False``: ``x`` is the raw DN as a ``torch.uint16`` tensor (what crosses the bus), for
        benchmarks and debugging; :func:`normalise_dn` turns it into the normalised float32.
    :param repeat: endless: epochs ``epoch, epoch + 1, ...``, each reshuffled, incomplete batches dropped.
    :param shuffle: reorder per epoch by ``(seed, epoch)`` (default: ``repeat``).
    :param seed: seed of the shuffling.
    :param epoch: the (first) epoch; :meth:`set_epoch` changes it.
    :param drop_last: drop an incomplete last batch (always true with ``repeat``).
    :param storage_options: for fsspec URLs.
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
    ) -> None:
        if not isinstance(plan, PatchPlan):
            raise TypeError(f"expected a PatchPlan, got {type(plan).__name__}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefetch < 0 or workers < 0:
            raise ValueError(f"prefetch and workers must be >= 0, got {prefetch} and {workers}")
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
        self.drop_last = bool(drop_last) or self.repeat
        self.src = _Source(cube, storage_options)
        # batches alive at once: queued + being built + the consumer's current and previous one
        self._host = _HostBuffers(keep=max(self.prefetch, 1) + self.workers + 2)
        shape = self.src.shape
        want = {k: shape[k] for k in ("time", "y", "x")}
        if dict(plan.cube_shape) != want:
            raise ValueError(f"the plan was made for a cube of {plan.cube_shape}, this cube is {want}")
        plan.check()
        if self.repeat and len(plan) < self.batch_size:
            raise ValueError(f"repeat=True needs at least batch_size={self.batch_size} patches, the plan has {len(plan)}")
        scale, offset = dn_scaling(self.src.refl_attrs, self.src.dtype)
        if not np.issubdtype(self.src.dtype, np.integer):
            raise TypeError(f"the loader reads uint16 DN reflectance, this cube stores {self.src.dtype}")
        mean = std = None
        if self.normalise:
            stats = read_band_stats(cube, storage_options=storage_options)
            if stats is None:
                stats = self._compute_stats(cube, storage_options)
            mean, std = stats
        a, b = normaliser(scale, offset, mean, std, shape["band"])
        self._a, self._b = a.to(self.device), b.to(self.device)

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
        order = self.epoch_order(epoch)
        B = self.batch_size
        n = len(order) // B * B if self.drop_last else len(order)
        return [order[i : i + B] for i in range(0, n, B)]

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.plan)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

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
        labels = self._empty((B, H, W), torch.int64 if self.device.type == "cpu" else torch.int16)
        dn_np, valid_np, labels_np = dn.numpy(), valid.numpy(), labels.numpy()
        ys, xs, ts = p.y[index].tolist(), p.x[index].tolist(), p.t[index]  # Python ints: cheap planning
        rows = range(B)
        _gather(src.refl, [(ts[i], (0, C), (ys[i], ys[i] + H), (xs[i], xs[i] + W)) for i in rows], dn_np, rows)
        if src.valid is not None:
            _gather(src.valid, [(ts[i], (ys[i], ys[i] + H), (xs[i], xs[i] + W)) for i in rows], valid_np, rows)
        else:
            valid_np[:] = True
        labelled = [i for i in rows if p.labelled[index[i]]]
        labels_np[:] = -1
        if src.labels is not None and labelled:
            _gather(src.labels, [((ys[i], ys[i] + H), (xs[i], xs[i] + W)) for i in labelled], labels_np, labelled)
        return dn, valid, labels

    def _finish(self, dn: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> PatchBatch:
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
        if not self.plan.temporal:
            x, valid = x[:, 0], valid[:, 0]
        return PatchBatch(x, valid, labels)

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

    def _run(self, jobs: Iterator[tuple[int, np.ndarray]]) -> Iterator[PatchBatch]:
        cpu = self.device.type == "cpu"

        def build(index: np.ndarray):
            host = self.read_host(index)
            # on the CPU the 'device' is here: normalise in the worker, in parallel
            return self._finish(*host) if cpu else host

        if self.workers == 0:
            for _, index in jobs:
                out = build(index)
                yield out if cpu else self._finish(*out)
            return
        ex = ThreadPoolExecutor(self.workers, thread_name_prefix="hvaeseg-loader")
        pending: collections.deque[Future] = collections.deque()
        depth = max(self.prefetch, 1) + self.workers - 1
        try:
            for _, index in itertools.islice(jobs, depth):
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


# --------------------------------------------------------------------------------------------------
# the naive reference
# --------------------------------------------------------------------------------------------------


def read_patches_naive(
    cube: Any,
    plan: PatchPlan,
    index: Sequence[int] | np.ndarray | None = None,
    *,
    normalise: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> PatchBatch:
    """The reference read: one ``xarray`` ``isel`` per patch and variable, then the loader's normalisation.

    Gives the tensors :class:`PatchLoader` gives on the CPU for the same patches (bit for bit). The band
    statistics must already be in the cube (``ensure_band_stats``) when ``normalise``.
    """
    ds = _open_ds(cube, storage_options)
    index = np.arange(len(plan)) if index is None else np.asarray(index, dtype=np.int64)
    H, W = plan.sizes["y"], plan.sizes["x"]
    refl = ds["reflectance"].transpose("time", "band", "y", "x")
    xs, vs, ls = [], [], []
    for i in index:
        sel = {"time": plan.t[i], "y": slice(plan.y[i], plan.y[i] + H), "x": slice(plan.x[i], plan.x[i] + W)}
        xs.append(np.asarray(refl.isel(sel).values))
        vs.append(np.asarray(ds["valid"].transpose("time", "y", "x").isel(sel).values) if "valid" in ds else np.ones((plan.n_dates, H, W), bool))
        if plan.labelled[i] and "labels" in ds:
            ls.append(np.asarray(ds["labels"].transpose("y", "x").isel(y=sel["y"], x=sel["x"]).values).astype(np.int16))
        else:
            ls.append(np.full((H, W), -1, np.int16))
    C = refl.sizes["band"]
    dn = torch.from_numpy(np.stack(xs) if xs else np.zeros((0, plan.n_dates, C, H, W), np.uint16))
    valid = torch.from_numpy(np.stack(vs) if vs else np.zeros((0, plan.n_dates, H, W), bool))
    labels = torch.from_numpy(np.stack(ls) if ls else np.zeros((0, H, W), np.int16)).to(torch.int64)
    scale, offset = dn_scaling(refl.attrs, refl.dtype)
    if normalise:
        stats = read_band_stats(ds)
        if stats is None:
            raise ValueError("the cube has no band statistics; run hvaeseg.data.stats.ensure_band_stats(cube) first")
        a, b = normaliser(scale, offset, stats[0], stats[1], C)
        x = normalise_dn(dn, a, b)
    else:
        x = dn
    if not plan.temporal:
        x, valid = x[:, 0], valid[:, 0]
    return PatchBatch(x, valid, labels)

