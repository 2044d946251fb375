"""Missing and damaged chunks of a cube store: errors that name the variable, the chunk and the fix.

Zarr reads a chunk that is not in the store as the array's fill value, without a word: a deleted
``reflectance`` chunk reads as DN 0 under a ``valid`` that still says "observed", a deleted ``labels``
chunk as class 0. And a truncated or overwritten chunk fails deep in a codec (``RuntimeError: error during
blosc decompression: -1``) without naming any file. Here:

* **Complete stores.** The writers of :mod:`hvaeseg.data.store` write every chunk, also those equal to the
  fill value (zarr skips those by default), and stamp the dataset attribute ``hvaeseg_chunks = "complete"``
  (:data:`CHUNKS_ATTR`). In such a store every missing chunk is damage. :func:`check_chunks` lists the
  store's keys (no chunk is read: one directory walk, or one listing of an object store) and raises
  :class:`MissingChunkError` for the first missing chunk, with the count of all of them.
* **Other stores** (written by other tools, or by hvaeseg before the attribute existed) may lack chunks
  that were all fill value. There a missing ``reflectance`` chunk (DN 0: no data) is an error only where
  ``valid`` marks pixels of it observed (only the ``valid`` chunks under missing reflectance chunks are read).
* **Damaged chunks.** Arrays opened inside :func:`naming_errors` decode through a pipeline that turns a
  codec failure into :class:`CorruptChunkError`; the loader's direct chunk reader
  (:class:`hvaeseg.data.chunks.ZarrChunks`) does the same, and in a complete store it refuses a missing
  chunk file (:func:`missing_chunk_error`) instead of filling it.

Both errors are a :class:`ChunkError`, a ``ValueError``: the command line reports them on one line.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from zarr.core.metadata import ArrayV3Metadata

__all__ = [
    "CHUNKS_ATTR",
    "COMPLETE",
    "ChunkError",
    "MissingChunkError",
    "CorruptChunkError",
    "naming_errors",
    "check_chunks",
    "corrupt_chunk_error",
    "missing_chunk_error",
]

#: dataset attribute by which a store says it holds every chunk (value :data:`COMPLETE`)
CHUNKS_ATTR = "hvaeseg_chunks"
COMPLETE = "complete"

_RESTORE = "Fix: restore the file from a copy of the cube, or write the cube again (e.g. hvaeseg data ingest)"


class ChunkError(ValueError):
    """A chunk of a cube store cannot be used. ``variable``, ``key`` (e.g. ``c/2/0/0/0``) and ``path`` (the
    file or object) say which one."""

    def __init__(self, message: str, *, variable: str, key: str, path: str) -> None:
        super().__init__(message)
        self.variable, self.key, self.path = variable, key, path


class MissingChunkError(ChunkError):
    """A chunk is not in the store, where it must be."""


class CorruptChunkError(ChunkError):
    """A chunk is in the store but does not decode (truncated, overwritten, wrong codec)."""


def missing_chunk_error(variable: str, key: str, path: str, fill: Any, *, others: str = "") -> MissingChunkError:
    """The error for a chunk missing from a complete store (``others``: what else is missing, for the count)."""
    return MissingChunkError(
        f"`{variable}` chunk {key} is missing: {path} does not exist{others}, and the store was written with every "
        f"chunk (attribute {CHUNKS_ATTR}={COMPLETE!r}); zarr would read it as {fill!r} everywhere. {_RESTORE}. "
        f"(A store rewritten by a tool that skips empty chunks: delete its {CHUNKS_ATTR} attribute.)",
        variable=variable, key=key, path=path,
    )


def corrupt_chunk_error(variable: str, key: str, path: str, err: BaseException) -> CorruptChunkError:
    """The error for a chunk that does not decode; ``err`` is the codec's own error."""
    reason = " ".join(str(err).split()) or type(err).__name__
    return CorruptChunkError(
        f"`{variable}` chunk {key} is damaged: {path} does not decode ({type(err).__name__}: {reason}); the file is "
        f"truncated or overwritten. {_RESTORE}",
        variable=variable, key=key, path=path,
    )


# --------------------------------------------------------------------------------------------- decoding


def _describe(byte_getter: Any) -> tuple[str, str, str]:
    """``(variable, chunk key, file or URL)`` of a zarr ``StorePath`` of a chunk."""
    full = str(getattr(byte_getter, "path", "")) or str(byte_getter)
    parts = full.split("/")
    i = parts.index("c", 1) if "c" in parts[1:] else len(parts) - 1
    variable, key = "/".join(parts[:i]) or full, "/".join(parts[i:])
    store = getattr(byte_getter, "store", None)
    root = getattr(store, "root", None)
    if root is not None:
        return variable, key, os.path.join(str(root), full)
    fs, base = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and base is not None:
        try:
            return variable, key, fs.unstrip_protocol(f"{base}/{full}")
        except Exception:  # noqa: BLE001 - a name for a message only
            pass
    return variable, key, str(byte_getter)


def _naming_pipeline() -> type:
    """The codec pipeline of :func:`naming_errors`, made on first use (zarr is imported only when a store is
    opened)."""
    from zarr.core.codec_pipeline import BatchedCodecPipeline

    class NamingCodecPipeline(BatchedCodecPipeline):
        """zarr's codec pipeline, except that a chunk that fails to decode raises :class:`CorruptChunkError`
        naming it (zarr reads one chunk per batch by default; a failing batch of several is retried chunk by
        chunk to find the culprit)."""

        async def read_batch(self, batch_info, out, drop_axes=()) -> None:  # noqa: D102 - see the class
            batch_info = list(batch_info)
            try:
                await super().read_batch(batch_info, out, drop_axes)
            except ChunkError:
                raise
            except Exception as err:  # noqa: BLE001 - any codec failure: name the chunk
                culprit, cause = batch_info[0], err
                if len(batch_info) > 1:
                    for one in batch_info:
                        try:
                            await super().read_batch([one], out, drop_axes)
                        except Exception as one_err:  # noqa: BLE001
                            culprit, cause = one, one_err
                            break
                raise corrupt_chunk_error(*_describe(culprit[0]), cause) from err

    NamingCodecPipeline.__qualname__ = "NamingCodecPipeline"  # registered under hvaeseg.data.integrity.<name>
    return NamingCodecPipeline


_PIPELINE: dict[str, Any] = {}


def _pipeline_path() -> str:
    """The zarr config name of the naming pipeline, registering it with zarr the first time."""
    if "path" not in _PIPELINE:
        from zarr.registry import register_pipeline

        cls = _naming_pipeline()
        register_pipeline(cls)
        _PIPELINE["class"], _PIPELINE["path"] = cls, f"{cls.__module__}.{cls.__qualname__}"
    return _PIPELINE["path"]


@contextlib.contextmanager
def naming_errors() -> Iterator[None]:
    """Arrays opened inside decode through a codec pipeline that names failing chunks, for their whole life
    (zarr fixes an array's pipeline when it opens it): zarr's own, except that a chunk that does not decode
    raises :class:`CorruptChunkError`. zarr's configuration is as before afterwards."""
    import zarr

    with zarr.config.set({"codec_pipeline.path": _pipeline_path()}):
        yield


# --------------------------------------------------------------------------------------------- listing


def _keys(fs: Any, root: str, local: bool) -> set[str]:
    """Every file of the store, as keys relative to ``root`` (one walk, no file opened)."""
    if local:
        keys: set[str] = set()
        for parent, _, files in os.walk(root):
            rel = os.path.relpath(parent, root)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            keys.update(prefix + f for f in files)
        return keys
    base = root.rstrip("/") + "/"
    fs.invalidate_cache(root)  # a listing cached before the store was (re)written would miss its keys
    return {p[len(base):] for p in fs.find(root) if p.startswith(base)}


def _chunk_grid(arr: Any) -> tuple[tuple[int, ...], Any] | None:
    """``(chunks per dim, key encoding)`` of a zarr v3 array on a regular grid, else None (not checked)."""
    md = arr.metadata
    shape = getattr(getattr(md, "chunk_grid", None), "chunk_shape", None)
    if getattr(md, "zarr_format", None) != 3 or shape is None:
        return None
    return tuple(math.ceil(n / c) for n, c in zip(arr.shape, shape)), md.chunk_key_encoding


def _missing(name: str, arr: Any, keys: set[str]) -> list[tuple[int, ...]]:
    grid = _chunk_grid(arr)
    if grid is None:
        return []
    counts, encoding = grid
    return [
        coords for coords in itertools.product(*(range(n) for n in counts))
        if f"{name}/{encoding.encode_chunk_key(coords)}" not in keys
    ]


def check_chunks(path: str | os.PathLike, *, storage_options: Mapping | None = None) -> None:
    """Refuse a store that lacks chunks it must hold (see the module doc); reads no chunk of a complete store.

    :raises MissingChunkError: naming the variable, the chunk key and the file, with the count of missing chunks.
    """
    import fsspec
    import zarr
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(os.fspath(path), **dict(storage_options or {}))
    local = isinstance(fs, LocalFileSystem)
    root = root.rstrip("/") or root
    with naming_errors():
        group = zarr.open_group(os.fspath(path), mode="r", zarr_format=3,
                                storage_options=None if local or storage_options is None else dict(storage_options))
        arrays = dict(group.arrays())
        complete = group.attrs.get(CHUNKS_ATTR) == COMPLETE
        if not complete and "reflectance" not in arrays:
            return
        keys = _keys(fs, root, local)

        def where(name: str, coords: tuple[int, ...]) -> tuple[str, str]:
            metadata = cast("ArrayV3Metadata", arrays[name].metadata)  # the group is opened as zarr v3
            key = metadata.chunk_key_encoding.encode_chunk_key(coords)
            full = f"{root}/{name}/{key}"
            return key, (os.path.normpath(full) if local else fs.unstrip_protocol(full))

        if complete:
            order = ["reflectance", "valid", "labels", "scl", "clean_reflectance"]
            names = [n for n in order if n in arrays] + sorted(n for n in arrays if n not in order)
            missing = {n: m for n in names if (m := _missing(n, arrays[n], keys))}
            if missing:
                first = next(iter(missing))
                total = sum(len(m) for m in missing.values())
                others = "" if total == 1 else (
                    f" ({total} chunks missing in all: "
                    + ", ".join(f"{len(m)} of `{n}`" for n, m in missing.items()) + ")"
                )
                key, file = where(first, missing[first][0])
                fill = arrays[first].metadata.fill_value
                raise missing_chunk_error(first, key, file, getattr(fill, "item", lambda: fill)(), others=others)
            return
        _check_observed_nodata(arrays, keys, where)


def _check_observed_nodata(arrays: dict[str, Any], keys: set[str], where) -> None:
    """In a store that may skip empty chunks: a missing reflectance chunk (DN 0 = no data) under observed pixels."""
    refl, valid = arrays["reflectance"], arrays.get("valid")
    dims = tuple(refl.metadata.dimension_names or ())
    if valid is None or dims != ("time", "band", "y", "x") or tuple(valid.metadata.dimension_names or ()) != (
        "time", "y", "x"
    ):
        return
    chunks = refl.metadata.chunk_grid.chunk_shape
    for coords in _missing("reflectance", refl, keys):
        t, _, y, x = (slice(k * c, (k + 1) * c) for k, c in zip(coords, chunks))
        seen = int(np.count_nonzero(np.asarray(valid[t, y, x])))
        if seen:
            key, file = where("reflectance", coords)
            raise MissingChunkError(
                f"`reflectance` chunk {key} is missing: {file} does not exist, so zarr reads it as DN 0 (no data), "
                f"but `valid` marks {seen} of its pixels observed. {_RESTORE}; if those pixels really have no data, "
                "set `valid` to False there",
                variable="reflectance", key=key, path=file,
            )
