"""Reading patches out of a cube's chunks, without torch: the part of the loader that threads and worker
processes share (:mod:`hvaeseg.data.loader` wraps it in tensors, :mod:`hvaeseg.data.workers` runs it in
processes).

* Chunk readers give whole chunks by chunk coordinates (``get(key)``, ``release(chunk)``): a numpy array
  (:class:`InMemoryChunks`), a lazily indexed xarray variable (:class:`LazyChunks`), or a Zarr array
  (:class:`ZarrChunks`, which reads v3 chunk files, local or behind an fsspec URL such as ``s3://``, and
  decodes them with numcodecs directly; a chunk that does not decode, or that is missing from a store written
  complete, is a :class:`~hvaeseg.data.integrity.ChunkError` naming it). A reader may also have
  ``fetch(keys)``: :func:`gather` announces the chunks it is about to read, a window at a time, and a remote
  :class:`ZarrChunks` downloads them all in one concurrent ``cat`` (one GET per chunk, all in flight together).
* :class:`CubeSource`: ``reflectance`` / ``valid`` / ``labels`` of a cube behind chunk readers. Reflectance
  always comes out as uint16 DN: float reflectance is encoded chunk by chunk (:class:`DNChunks`,
  :func:`dn_encoding`) at the 1e-4 step of Sentinel-2 L2A products, NaN becoming DN 0 (no data).
* :func:`gather` cuts regions out of chunks, chunk-major (each chunk decoded once per call);
  :func:`fill_patches` fills a batch's raw arrays (DN, valid, labels) for given patch positions.
* :class:`HostBuffers`: reusable host arrays, handed out again once nothing refers to them.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import xarray as xr

from hvaeseg.data.integrity import CHUNKS_ATTR, COMPLETE, corrupt_chunk_error, missing_chunk_error, naming_errors

__all__ = [
    "CubeSource",
    "DNChunks",
    "DNEncoding",
    "FLOAT_DN_SCALE",
    "FLOAT_DN_OFFSET",
    "HostBuffers",
    "InMemoryChunks",
    "LazyChunks",
    "ZarrChunks",
    "dn_encoding",
    "fill_patches",
    "gather",
    "normalise_into",
    "open_dataset",
    "reflectance_to_dn",
]


# --------------------------------------------------------------------------------------------------
# chunk readers: get(chunk coords) -> (the chunk's array, clipped at the array edge)
# --------------------------------------------------------------------------------------------------


class InMemoryChunks:
    """A numpy array: one 'chunk' (the whole array), no copy."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.shape = a.shape
        self.chunks = a.shape

    def get(self, key: tuple[int, ...]) -> np.ndarray:
        return self.a

    def release(self, chunk: np.ndarray) -> None:
        pass


class LazyChunks:
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


def numcodecs_decoder(codec: Any):
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


#: whether :func:`_warn_direct_path_off` has warned in this process (it warns once)
_DIRECT_PATH_WARNED = False


def _warn_direct_path_off(err: BaseException) -> None:
    """Warn, once per process, that the direct chunk reader of :class:`ZarrChunks` is off because the zarr
    internals it reads (array metadata, codecs, store classes) are not what it expects: chunks are then read
    through zarr itself, correct but slower. The zarr versions it is tested with are pinned in pyproject.toml."""
    global _DIRECT_PATH_WARNED
    if _DIRECT_PATH_WARNED:
        return
    _DIRECT_PATH_WARNED = True
    try:
        from importlib.metadata import version

        zarr_version = version("zarr")
    except Exception:  # noqa: BLE001 - only for the message
        zarr_version = "unknown"
    warnings.warn(
        f"reading Zarr chunks through zarr itself (slower): the direct chunk reader does not understand zarr "
        f"{zarr_version} ({type(err).__name__}: {err}); install the zarr version pinned by hvaeseg "
        "(pyproject.toml) to get it back",
        RuntimeWarning,
        stacklevel=4,
    )


#: store classes :func:`_warn_store_not_direct` has warned about in this process (once each)
_STORE_WARNED: set[str] = set()


def _warn_store_not_direct(store: Any) -> None:
    """Warn, once per store class and process, that chunks of ``store`` are read through zarr itself (one
    request per chunk, no :meth:`ZarrChunks.fetch` batching): the direct reader knows local and fsspec stores."""
    name = type(store).__name__
    if name in _STORE_WARNED:
        return
    _STORE_WARNED.add(name)
    warnings.warn(
        f"reading Zarr chunks of a {name} through zarr itself (slower: no batched fetches); the direct chunk reader "
        "handles local paths and fsspec URLs (s3://...): open the cube by its path or URL",
        RuntimeWarning,
        stacklevel=4,
    )


def _sync_filesystem(fs: Any) -> Any:
    """A blocking twin of the file system of a zarr ``FsspecStore`` (which is made asynchronous)."""
    inner = getattr(fs, "sync_fs", None)  # zarr's wrapper of a synchronous file system (memory://)
    if inner is not None:
        return inner
    if getattr(fs, "asynchronous", False):
        options = {k: v for k, v in fs.storage_options.items() if k not in ("asynchronous", "loop")}
        return type(fs)(*getattr(fs, "storage_args", ()), **options)
    return fs


class ZarrChunks:
    """A zarr array read one whole chunk at a time; direct chunk read + numcodecs decode when possible.

    The direct path reads the chunk file into a per-thread buffer and decodes into a per-thread pool of
    chunk buffers (:meth:`release` gives a chunk back), so steady-state reading allocates nothing: on
    this kind of machine fresh allocations (page faults) cost as much as the decoding itself.

    A store behind an fsspec URL (``s3://``...) is read the same way, its chunk objects fetched with the file
    system's ``cat``: :meth:`fetch` downloads the chunks :func:`gather` is about to read all at once
    (concurrently), and :meth:`get` decodes them from there (a chunk not fetched first is one ``cat_file``).
    Other zarr stores are read through zarr, with a warning (once).
    """

    #: chunk buffers kept per thread for reuse
    POOL = 16
    #: chunks :func:`gather` announces to :meth:`fetch` at a time (bounds the bytes held: ~a chunk each)
    FETCH_WINDOW = 32

    def __init__(self, arr: Any, *, complete: bool = False) -> None:
        """:param complete: the store holds every chunk (:data:`~hvaeseg.data.integrity.CHUNKS_ATTR`), so a
        missing chunk file is an error, not fill value (checked for free on the direct path)."""
        self.arr = arr
        self.name = str(arr.path).strip("/") or str(arr.name)
        self.complete = bool(complete)
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
            from zarr.storage import FsspecStore, LocalStore

            md = arr.metadata
            if md.zarr_format != 3 or not isinstance(md.chunk_grid, RegularChunkGrid):
                return None
            store = arr.store_path.store
            if not isinstance(store, (LocalStore, FsspecStore)):
                _warn_store_not_direct(store)
                return None
            codecs = list(md.codecs)
            if not codecs or not isinstance(codecs[0], BytesCodec):
                return None
            dtype = np.dtype(md.dtype.to_native_dtype())
            endian = getattr(codecs[0].endian, "value", codecs[0].endian)
            if dtype.itemsize > 1 and endian not in ("little", None) or dtype.byteorder == ">":
                return None
            decoders = [numcodecs_decoder(c) for c in codecs[1:]]
            if any(d is None for d in decoders) or len(decoders) > 1:
                return None
            if isinstance(store, LocalStore):
                fs, root = None, os.path.join(str(store.root), arr.store_path.path)
            else:
                fs = _sync_filesystem(store.fs)
                root = "/".join(p for p in (str(store.path).rstrip("/"), arr.store_path.path) if p)
            fill = np.asarray(md.fill_value, dtype=dtype)
            decoder = decoders[0] if decoders else None
            return fs, root, md.chunk_key_encoding, decoder, dtype.newbyteorder("<"), fill
        except Exception as err:  # noqa: BLE001 - any surprise: use zarr itself, and say so (once)
            _warn_direct_path_off(err)
            return None

    def _local(self):
        tls = self._tls
        if not hasattr(tls, "free"):
            tls.free = []
            tls.raw = bytearray(0)
            tls.fetched = {}
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

    @property
    def remote(self) -> bool:
        """Whether chunks come through an fsspec file system (:meth:`fetch` batches them)."""
        return self._direct is not None and self._direct[0] is not None

    def _path(self, key: tuple[int, ...]) -> tuple[str, str]:
        fs, root, enc = self._direct[:3]
        name = enc.encode_chunk_key(key)
        return name, (os.path.join(root, name) if fs is None else f"{root}/{name}")

    def fetch(self, keys: Sequence[tuple[int, ...]]) -> None:
        """Download the chunks ``keys`` (of a remote store) in one concurrent ``cat``, for :meth:`get` to decode
        (kept per thread until then; each is used once). Local stores: nothing to do."""
        if not self.remote:
            return
        fs = self._direct[0]
        paths = [self._path(k)[1] for k in keys]
        tls = self._local()
        tls.fetched.clear()  # what an interrupted gather left
        if not paths:
            return
        got = fs.cat(paths, on_error="return")  # {path: bytes or the exception}, one request per chunk, concurrent
        for path in paths:
            if path in got:  # else get() reads it alone
                value = got[path]
                tls.fetched[path] = None if isinstance(value, FileNotFoundError) else value

    def _read_remote(self, path: str, tls) -> bytes | memoryview | None:
        fs = self._direct[0]
        if path in tls.fetched:
            value = tls.fetched.pop(path)
        else:
            try:
                value = fs.cat_file(path)
            except FileNotFoundError:
                value = None
        if isinstance(value, BaseException):
            raise value
        return value

    def get(self, key: tuple[int, ...]) -> np.ndarray:
        if self._direct is None:
            region = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))
            return np.asarray(self.arr[region])
        fs, _, _, decoder, dtype, fill = self._direct
        tls = self._local()
        name, path = self._path(key)
        raw = self._read_file(path, tls) if fs is None else self._read_remote(path, tls)
        if fs is not None:
            path = fs.unstrip_protocol(path)  # named as a URL in errors
        out = tls.free.pop() if tls.free else np.empty(self._count, dtype=dtype)
        try:
            if raw is None:
                if self.complete:
                    raise missing_chunk_error(self.name, name, path, fill.item())
                out[:] = fill  # never written (a store that skips all-fill chunks): all fill value
            elif decoder is None:
                out.view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
            else:
                decoder.decode(raw, out=out)
        except Exception as err:
            tls.free.append(out)
            if raw is None:
                raise
            raise corrupt_chunk_error(self.name, name, path, err) from err
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
# float reflectance as DN
# --------------------------------------------------------------------------------------------------

#: the DN encoding of float reflectance on reading: Sentinel-2 L2A's (baseline >= 04.00), so float
#: reflectance made from L2A DN (either baseline: offsets are whole steps) comes back as exactly those DN
FLOAT_DN_SCALE, FLOAT_DN_OFFSET = 1e-4, -0.1


class DNEncoding(NamedTuple):
    """How float values of a reflectance variable become uint16 DN: ``DN = round((v - offset) / scale)``
    clipped to ``lowest..65535``, NaN -> 0 (no data); ``attrs`` give the DN their meaning
    (``scale_factor``/``add_offset``) for the loader's normalisation."""

    scale: float
    offset: float
    lowest: int
    attrs: dict


def dn_encoding(dtype: Any, attrs: Mapping[str, Any], encoding: Mapping[str, Any] | None = None) -> DNEncoding | None:
    """The :class:`DNEncoding` of a float reflectance variable (None for integer DN, read as they are):

    * float reflectance (the schema's float32: physical units, NaN = no data): the L2A encoding
      (:data:`FLOAT_DN_SCALE`, :data:`FLOAT_DN_OFFSET`); values are rounded to its 1e-4 step, the precision of
      L2A products, and kept >= DN 1 so that only NaN reads as no data;
    * float DN (a float variable with ``scale_factor``): rounded, with its own scaling;
    * DN decoded by xarray (``xarray.open_zarr``'s default ``mask_and_scale``: ``scale_factor``/``add_offset``
      and an integer dtype in ``encoding``): encoded back exactly.
    """
    if not np.issubdtype(np.dtype(dtype), np.floating):
        return None
    attrs = dict(attrs)
    encoding = encoding or {}
    stored = encoding.get("dtype")
    if "scale_factor" in attrs:
        return DNEncoding(1.0, 0.0, 0, attrs)
    if stored is not None and np.issubdtype(np.dtype(stored), np.integer) and (
        "scale_factor" in encoding or "add_offset" in encoding
    ):
        scale, offset = float(encoding.get("scale_factor", 1.0)), float(encoding.get("add_offset", 0.0))
        return DNEncoding(scale, offset, 0, {**attrs, "scale_factor": scale, "add_offset": offset})
    return DNEncoding(FLOAT_DN_SCALE, FLOAT_DN_OFFSET, 1,
                      {**attrs, "scale_factor": FLOAT_DN_SCALE, "add_offset": FLOAT_DN_OFFSET})


def reflectance_to_dn(values: np.ndarray, enc: DNEncoding) -> np.ndarray:
    """``values`` (any float array) as uint16 DN by ``enc`` (see :class:`DNEncoding`), in float64."""
    v = (np.asarray(values, dtype=np.float64) - enc.offset) / enc.scale
    nodata = np.isnan(v)
    np.rint(v, out=v)
    np.clip(v, enc.lowest, 65535, out=v)
    v[nodata] = 0
    return v.astype(np.uint16)


class DNChunks:
    """A reader of float reflectance chunks giving them as uint16 DN (:func:`reflectance_to_dn`)."""

    def __init__(self, inner: Any, enc: DNEncoding) -> None:
        self.inner, self.enc = inner, enc
        self.shape, self.chunks = inner.shape, inner.chunks
        if hasattr(inner, "fetch"):
            self.fetch = inner.fetch

    def get(self, key: tuple[int, ...]) -> np.ndarray:
        chunk = self.inner.get(key)
        try:
            return reflectance_to_dn(chunk, self.enc)
        finally:
            self.inner.release(chunk)

    def release(self, chunk: np.ndarray) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# the source: the cube's arrays behind chunk readers
# --------------------------------------------------------------------------------------------------


class CubeSource:
    """reflectance / valid / labels of a cube as chunk readers, with scaling and band statistics.

    ``refl`` gives uint16 DN whatever the stored dtype (``stored_dtype``); ``dtype`` is then uint16 and
    ``refl_attrs`` hold the ``scale_factor``/``add_offset`` that give those DN their meaning.
    """

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
        self.dtype = self.stored_dtype = refl.dtype

        def reader(da: xr.DataArray):
            data = da.variable._data  # noqa: SLF001 - is it already a numpy array?
            return InMemoryChunks(data) if isinstance(data, np.ndarray) else LazyChunks(da.variable)

        enc = dn_encoding(refl.dtype, refl.attrs, refl.encoding)
        if enc is None:
            self.refl = reader(refl)
        elif isinstance(refl.variable._data, np.ndarray):  # noqa: SLF001 - in memory: encode once, not per batch
            self.refl = InMemoryChunks(reflectance_to_dn(refl.variable._data, enc))  # noqa: SLF001
        else:
            self.refl = DNChunks(reader(refl), enc)
        if enc is not None:
            self.refl_attrs, self.dtype = dict(enc.attrs), np.dtype(np.uint16)
        self.valid = reader(ds["valid"].transpose("time", "y", "x")) if "valid" in ds else None
        self.labels = reader(ds["labels"].transpose("y", "x")) if "labels" in ds else None

    def _from_store(self, path: str, storage_options) -> None:
        import zarr
        from zarr.core.metadata import ArrayV3Metadata

        with warnings.catch_warnings(), naming_errors():
            warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            try:
                g = zarr.open_group(path, mode="r", storage_options=storage_options)
            except FileNotFoundError:
                raise FileNotFoundError(f"no cube at {path}") from None
            complete = g.attrs.get(CHUNKS_ATTR) == COMPLETE
            names = set(g.array_keys())
            if "reflectance" not in names:
                raise ValueError(f"{path}: the store has no `reflectance` array")
            arrays: dict[str, zarr.Array] = {}
            for name, dims in (
                ("reflectance", ("time", "band", "y", "x")), ("valid", ("time", "y", "x")), ("labels", ("y", "x"))
            ):
                if name in names:
                    node = g[name]
                    assert isinstance(node, zarr.Array), name  # a name from array_keys()
                    arrays[name] = node
                    md = node.metadata
                    if not isinstance(md, ArrayV3Metadata):
                        raise ValueError(f"{path}: `{name}` is a Zarr v{md.zarr_format} array; cubes are Zarr v3 "
                                         "stores (hvaeseg data ingest, or write_cube, writes them)")
                    have = tuple(md.dimension_names or ())
                    if have and have != dims:  # an unusual dim order: let xarray transpose
                        self._from_dataset(open_dataset(path, storage_options))
                        return
        self.refl_attrs = dict(arrays["reflectance"].attrs)
        self.dtype = self.stored_dtype = np.dtype(arrays["reflectance"].dtype)
        self.refl = ZarrChunks(arrays["reflectance"], complete=complete)
        enc = dn_encoding(self.dtype, self.refl_attrs)
        if enc is not None:
            self.refl = DNChunks(self.refl, enc)
            self.refl_attrs, self.dtype = dict(enc.attrs), np.dtype(np.uint16)
        self.valid = ZarrChunks(arrays["valid"], complete=complete) if "valid" in arrays else None
        self.labels = ZarrChunks(arrays["labels"], complete=complete) if "labels" in arrays else None

    @property
    def shape(self) -> dict[str, int]:
        T, C, Y, X = self.refl.shape
        return {"time": T, "band": C, "y": Y, "x": X}


def open_dataset(cube: Any, storage_options) -> xr.Dataset:
    if isinstance(cube, xr.Dataset):
        return cube
    from hvaeseg.data.store import open_cube

    return open_cube(os.fspath(cube), storage_options=storage_options, validate=False)


# --------------------------------------------------------------------------------------------------
# cutting patches out of chunks
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def range_pieces(start: int, stop: int, c: int) -> tuple[tuple[int, slice, slice], ...]:
    """The chunks (size ``c``) that ``[start, stop)`` touches: ``(chunk, output slice, slice in the chunk)``.

    Cached (Python ints in, immutable out): patches share offsets, and planning holds the GIL."""
    out = []
    for k in range(start // c, (stop - 1) // c + 1):
        lo, hi = max(start, k * c), min(stop, (k + 1) * c)
        out.append((k, slice(lo - start, hi - start), slice(lo - k * c, hi - k * c)))
    return tuple(out)


_FIRST = slice(0, 1)


def index_pieces(idx: np.ndarray, c: int) -> list[tuple[int, Any, Any]]:
    if c == 1:
        return [(t, slice(i, i + 1), _FIRST) for i, t in enumerate(idx.tolist())]
    out: list[tuple[int, Any, Any]] = []
    ks = idx // c
    for k in np.unique(ks):
        pos = np.nonzero(ks == k)[0]
        if len(pos) == 1:
            p = int(pos[0])
            out.append((int(k), slice(p, p + 1), slice(int(idx[p] - k * c), int(idx[p] - k * c) + 1)))
        else:
            out.append((int(k), pos, idx[pos] - k * c))
    return out


def box_pieces(
    ranges: Sequence[tuple[int, int]], chunks: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """The chunks a box of ``(start, stop)`` ranges touches: ``(chunk key, output slices, chunk slices)``."""
    per_dim = [range_pieces(start, stop, c) for (start, stop), c in zip(ranges, chunks)]
    return [tuple(zip(*combo)) for combo in itertools.product(*per_dim)]


def gather(reader: Any, requests: Sequence[Sequence[Any]], out: np.ndarray, rows: Sequence[int]) -> None:
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
        box = box_pieces(req[n_index:], box_chunks)
        dst = out[row]
        index_dims = [index_pieces(r, c) for r, c in zip(req[:n_index], chunks)]
        for combo in itertools.product(*index_dims):
            ikey, iosl, icsl = zip(*combo) if combo else ((), (), ())
            for key, osl, csl in box:
                pieces.setdefault(ikey + key, []).append((dst, iosl + osl, icsl + csl))
    keys = sorted(pieces)
    fetch = getattr(reader, "fetch", None)
    window = getattr(reader, "FETCH_WINDOW", len(keys)) or len(keys)
    for start in range(0, len(keys), window):
        if fetch is not None:  # a remote reader downloads the window's chunks at once
            fetch(keys[start:start + window])
        for key in keys[start:start + window]:
            chunk = reader.get(key)
            try:
                for dst, osl, csl in pieces[key]:
                    dst[osl] = chunk[csl]
            finally:
                reader.release(chunk)


def fill_patches(
    src: CubeSource,
    ts: np.ndarray,
    ys: Sequence[int],
    xs: Sequence[int],
    labelled: Sequence[bool],
    dn: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Fill one batch's raw arrays with the patches at ``(ts[i], ys[i], xs[i])``.

    :param ts: ``(B, T)`` dates of each patch; ``ys``, ``xs``: top-left corners (Python ints).
    :param labelled: which patches get their labels; the others (and cubes without labels) get -1.
    :param dn: ``(B, T, C, H, W)`` DN out; ``valid``: ``(B, T, H, W)`` bool out (all True for cubes without
        ``valid``); ``labels``: ``(B, H, W)`` out, any integer dtype.
    """
    B, H, W = labels.shape
    C = dn.shape[2]
    rows = range(B)
    gather(src.refl, [(ts[i], (0, C), (ys[i], ys[i] + H), (xs[i], xs[i] + W)) for i in rows], dn, rows)
    if src.valid is not None:
        gather(src.valid, [(ts[i], (ys[i], ys[i] + H), (xs[i], xs[i] + W)) for i in rows], valid, rows)
    else:
        valid[:] = True
    labels[:] = -1
    rows_labelled = [i for i in rows if labelled[i]]
    if src.labels is not None and rows_labelled:
        gather(src.labels, [((ys[i], ys[i] + H), (xs[i], xs[i] + W)) for i in rows_labelled], labels, rows_labelled)


def normalise_into(dn: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = dn * a[c] + b[c]`` in float32 for ``dn (..., C, H, W)``: one exactly rounded float32 multiply
    and add per element (every uint16 is a float32), the arithmetic the GPU path repeats bit for bit."""
    shape = (-1, 1, 1)
    out[...] = dn
    np.multiply(out, np.asarray(a, np.float32).reshape(shape), out=out)
    np.add(out, np.asarray(b, np.float32).reshape(shape), out=out)
    return out


# --------------------------------------------------------------------------------------------------
# reusable host buffers
# --------------------------------------------------------------------------------------------------


def _refcounts(arrays: Sequence[np.ndarray]) -> list[int]:
    """Reference counts of ``arrays`` (one code path for calibration and use, so the counts compare)."""
    return [sys.getrefcount(a) for a in arrays]


class HostBuffers:
    """Reusable host arrays for the batches, so steady-state reading allocates nothing.

    A batch's tensors are views of an array from here (``torch.from_numpy``: every tensor sharing the
    storage keeps the array referenced). An array is handed out again only once nothing but this pool
    refers to it, i.e. when every tensor of the batch it went into is gone; no caller has to give anything
    back. At most ``keep`` arrays per (shape, dtype) are kept (``None``: all); beyond that fresh ones are
    allocated (and freed as usual). Fresh memory costs page faults on first touch, as much as decoding on
    small machines.

    :param allocate: makes a new array ``(shape, dtype) -> ndarray`` (default ``numpy.empty``).
    """

    def __init__(
        self, keep: int | None, allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None
    ) -> None:
        self.keep = None if keep is None else int(keep)
        self._allocate = allocate or (lambda shape, dtype: np.empty(shape, dtype=dtype))
        self._lock = threading.Lock()
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._free_refs = _refcounts([np.empty(0)])[0]

    def empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` that nothing else refers to (contents undefined)."""
        key = (tuple(shape), np.dtype(dtype))
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for a, refs in zip(arrays, _refcounts(arrays)):
                if refs <= self._free_refs:
                    return a
            a = self._allocate(tuple(shape), np.dtype(dtype))
            if self.keep is None or len(arrays) < self.keep:
                arrays.append(a)
            return a

    def arrays(self) -> list[np.ndarray]:
        """Every array kept (for cleanup)."""
        with self._lock:
            return [a for arrays in self._arrays.values() for a in arrays]
