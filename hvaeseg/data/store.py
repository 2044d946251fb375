"""Zarr (v3) storage of cubes through xarray: local paths and fsspec URLs, atomic writes.

:func:`write_cube` writes a whole in-memory cube; :class:`CubeWriter` streams a cube too big for memory
date by date (region writes into a store whose metadata comes from a template). Both write into a
temporary sibling (``PATH.tmp-<id>``) and only rename it to ``PATH`` once everything is written: locally an
``os.replace`` of the directory, on fsspec file systems (object stores have no rename) a copy of every file with
the root ``zarr.json`` (the group, without which nothing opens) copied last (see :func:`atomic_zarr_write` for
the rule and what a reader sees when a writer dies). A crash never leaves a store at ``PATH`` that
looks complete, and a cube that fails :func:`~hvaeseg.data.schema.validate_cube` writes nothing.
:func:`atomic_zarr_write` is that rule for any writer (``with atomic_zarr_write(url) as pending: ...``).

URLs (``s3://bucket/cube.zarr``) take ``storage_options``, or the defaults of :mod:`hvaeseg.data.remote`.

:func:`open_cube` opens with ``chunks=None`` (lazy, no dask) and ``mask_and_scale=False``: reflectance
stays raw uint16 DN with its ``scale_factor``/``add_offset`` attributes (decode with
:func:`~hvaeseg.data.schema.decoded_reflectance`), and bool/integer dtypes come back exactly.

Every chunk is written, also those equal to the fill value (zarr skips those by default), and the store says
so with the dataset attribute ``hvaeseg_chunks = "complete"``: :func:`open_cube` then refuses a store that
lost a chunk, and a chunk that does not decode is an error naming it, not a codec traceback
(:mod:`hvaeseg.data.integrity`).

Chunks: :data:`DEFAULT_CHUNKS` (one date, all bands, 256 x 256 pixels; ``labels`` by y/x only), so one
chunk is one date of one 256 x 256 tile with every band: the unit a patch sampler decodes.

Codec: measured by ``python bench/codecs.py --repeats 6 --variants`` on the synthetic ``small`` preset
(12 dates x 10 bands x 512 x 512, 132.65 MB raw; local disk; 2 shared CPUs with load average ~9, so
the ``*_cpu_*`` columns, per CPU second, are the steadier ones; zarr 3.1.6, numcodecs
0.16.6). ``ratio`` = raw / stored bytes of the whole store; MB/s are raw MB; a patch
is a random 128 x 128 window of all bands of one date read straight from the zarr array::

    [
        {"codec": "zstd", "ratio": 1.357, "write_MBps": 58.7, "read_MBps": 262.1,
         "patches_per_s": 284.5, "write_cpu_MBps": 117.5, "read_cpu_MBps": 520.6, "patches_per_cpu_s": 330.3},
        {"codec": "blosc-lz4", "ratio": 1.427, "write_MBps": 130.5, "read_MBps": 392.7,
         "patches_per_s": 631.2, "write_cpu_MBps": 264.7, "read_cpu_MBps": 876.2, "patches_per_cpu_s": 649.2},
        {"codec": "blosc-zstd", "ratio": 1.717, "write_MBps": 29.1, "read_MBps": 370.6,
         "patches_per_s": 284.5, "write_cpu_MBps": 56.5, "read_cpu_MBps": 567.8, "patches_per_cpu_s": 401.2},
        {"codec": "none", "ratio": 1.002, "write_MBps": 197.7, "read_MBps": 824.2,
         "patches_per_s": 551.7, "write_cpu_MBps": 327.7, "read_cpu_MBps": 1246.0, "patches_per_cpu_s": 1367.9},
        {"codec": "zstd-l1", "ratio": 1.321, "write_MBps": 121.9, "read_MBps": 261.6,
         "patches_per_s": 266.4, "write_cpu_MBps": 250.0, "read_cpu_MBps": 578.5, "patches_per_cpu_s": 371.0},
        {"codec": "blosc-lz4-l9", "ratio": 1.452, "write_MBps": 130.7, "read_MBps": 633.9,
         "patches_per_s": 612.5, "write_cpu_MBps": 228.5, "read_cpu_MBps": 760.5, "patches_per_cpu_s": 592.1},
        {"codec": "blosc-zstd-l1", "ratio": 1.573, "write_MBps": 90.6, "read_MBps": 271.7,
         "patches_per_s": 264.3, "write_cpu_MBps": 173.4, "read_cpu_MBps": 397.8, "patches_per_cpu_s": 265.4},
        {"codec": "blosc-zstd-l3", "ratio": 1.653, "write_MBps": 76.4, "read_MBps": 253.8,
         "patches_per_s": 253.3, "write_cpu_MBps": 119.2, "read_cpu_MBps": 556.1, "patches_per_cpu_s": 349.7},
        {"codec": "blosc-zstd-l3-bitshuffle", "ratio": 1.589, "write_MBps": 79.0, "read_MBps": 314.3,
         "patches_per_s": 314.9, "write_cpu_MBps": 159.7, "read_cpu_MBps": 579.7, "patches_per_cpu_s": 362.5}
    ]

Default: ``blosc-lz4`` (Blosc LZ4, level 5, byte shuffle). Of the three candidates it is the fastest to
write (2.2x zarr's default zstd, 4.5x blosc-zstd) and to read (1.5-1.7x per CPU second; 2.2x their
random-patch rate), and it still stores 5 % less than zstd. blosc-zstd stores the least (17 % less
than blosc-lz4) but compresses at ~30-55 MB/s: the 16 GB (raw) ``large`` preset would spend 5-9 minutes
in compression alone, and every training epoch would decode more slowly. Choose ``codec="blosc-zstd"``
where storage or transfer costs more than CPU (object stores).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from hvaeseg._temporary import is_temporary_name, stale_pid, target_of
from hvaeseg.data.integrity import CHUNKS_ATTR, COMPLETE, check_chunks, naming_errors
from hvaeseg.data.remote import protocol_of, remote_errors
from hvaeseg.data.schema import SCHEMA_VERSION, validate_cube

if TYPE_CHECKING:
    import zarr

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_CODEC",
    "CODECS",
    "compressors",
    "write_cube",
    "write_dataset",
    "open_cube",
    "CubeWriter",
    "template_from_block",
    "PendingStore",
    "atomic_zarr_write",
    "check_output_free",
]

#: chunk size per dimension; -1 = the whole dimension. Variables use the entries of their own dims.
DEFAULT_CHUNKS: dict[str, int] = {"time": 1, "band": -1, "y": 256, "x": 256}

#: codec names understood by :func:`compressors` (``"none"`` stores raw chunks)
CODECS: tuple[str, ...] = ("zstd", "blosc-lz4", "blosc-zstd", "none")

#: the codec used when none is given; chosen by ``bench/codecs.py`` (table above)
DEFAULT_CODEC = "blosc-lz4"


def compressors(codec: str | Any | Sequence[Any] | None = None) -> tuple:
    """Zarr 3 compressors for ``codec``.

    :param codec: a name from :data:`CODECS` (``None`` = :data:`DEFAULT_CODEC`), one zarr codec object
        (e.g. ``zarr.codecs.BloscCodec(...)``), or a sequence of them.
    :returns: a tuple for the ``compressors`` encoding of xarray / zarr.
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec is None:
        codec = DEFAULT_CODEC
    if isinstance(codec, str):
        name = codec.lower()
        if name == "zstd":
            return (ZstdCodec(level=0),)  # zarr's default: zstd at its default level (3)
        if name == "blosc-lz4":
            return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)
        if name == "blosc-zstd":
            return (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"),)
        if name == "none":
            return ()
        raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)} or zarr codec objects")
    if isinstance(codec, (list, tuple)):
        return tuple(codec)
    return (codec,)


# --------------------------------------------------------------------------------------------- locations


@contextlib.contextmanager
def _quiet_zarr():
    """Silence zarr warnings that say nothing to a user of a cube (format notes, not problems)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata is currently not part.*")
        warnings.filterwarnings("ignore", message=".*Failed to open Zarr store with consolidated metadata.*")
        yield


class _Location:
    """A store location: local directory or fsspec URL, with the file operations atomic writes need."""

    def __init__(self, path: str | os.PathLike, storage_options: Mapping | None = None):
        self.given = os.fspath(path)
        self.storage_options = dict(storage_options or {})
        with remote_errors(self.given):
            try:
                self.fs, root = fsspec.core.url_to_fs(self.given, **self.storage_options)
            except ImportError as err:
                raise ValueError(f"{self.given}: {protocol_of(self.given)}:// URLs need a package that is not "
                                 f"installed ({err}); for s3:// pip install 'hvaeseg[s3]'") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") if root not in ("/", "") else root
        if not self.local:  # listings cached by this (shared) file system may predate writes made by zarr's own
            self.fs.invalidate_cache()

    def url(self, root: str | None = None) -> str:
        root = self.root if root is None else root
        return root if self.local else self.fs.unstrip_protocol(root)

    def xr_kwargs(self) -> dict:
        return {} if self.local else {"storage_options": self.storage_options or None}

    def exists(self, root: str | None = None) -> bool:
        root = self.root if root is None else root
        return os.path.lexists(root) if self.local else self.fs.exists(root)

    def sibling(self, tag: str) -> str:
        """A temporary sibling ``ROOT.TAG-PID-HEX``: the PID tells a later write whether its writer still runs."""
        return f"{self.root}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def remove_stale_siblings(self) -> list[str]:
        """Remove (local stores only) temporary siblings ``ROOT.tmp-*`` / ``ROOT.old-*`` whose writer no longer
        runs: what a killed write left. Returns what was removed."""
        if not self.local or not self.root:
            return []
        parent, name = os.path.split(self.root)
        try:
            entries = os.listdir(parent or ".")
        except OSError:
            return []
        removed = []
        for entry in entries:
            if entry.startswith(name + ".") and is_temporary_name(entry) and stale_pid(entry):
                path = os.path.join(parent, entry)
                self.remove(path)
                removed.append(path)
        return removed

    def remove(self, root: str) -> None:
        if self.local:
            if os.path.isdir(root) and not os.path.islink(root):
                shutil.rmtree(root, ignore_errors=True)
            elif os.path.lexists(root):
                os.remove(root)
        elif self.fs.exists(root):
            self.fs.rm(root, recursive=True)

    def write_bytes(self, root: str, data: bytes) -> None:
        parent = root.rsplit("/", 1)[0]
        if self.local:
            os.makedirs(parent, exist_ok=True)
            with open(root, "wb") as f:
                f.write(data)
        else:
            self.fs.pipe_file(root, data)

    def zarr_store(self, root: str):
        import zarr.storage

        if self.local:
            return zarr.storage.LocalStore(root)
        return zarr.storage.FsspecStore.from_url(self.url(root), storage_options=self.storage_options or None)

    def check_free(self, overwrite: bool) -> None:
        """Refuse an existing location unless ``overwrite``, and, even with it, one that is not a Zarr store (a
        plain file, a folder holding other things: nothing but a store is ever replaced); first remove what
        killed writes to it left."""
        with remote_errors(self.given):
            self._check_free(overwrite)

    def _check_free(self, overwrite: bool) -> None:
        self.remove_stale_siblings()
        if not overwrite and self.exists():
            raise FileExistsError(f"{self.given} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if overwrite:
            self.check_replaceable()

    def check_replaceable(self) -> None:
        """Raise :class:`FileExistsError` when the location exists and is neither a Zarr store (its
        ``zarr.json`` at the top) nor an empty folder: ``overwrite`` only ever replaces a store."""
        if not self.exists():
            return
        if self.local:
            if not os.path.isdir(self.root):
                kind = "an existing file"
            elif not os.listdir(self.root) or os.path.isfile(os.path.join(self.root, "zarr.json")):
                return
            else:
                kind = "an existing folder that is not a Zarr store"
        elif self.fs.exists(f"{self.root}/zarr.json") or self.unfinished():
            return
        else:
            kind = "an existing path that is not a Zarr store"
        raise FileExistsError(
            f"{self.given} is {kind}, and overwriting only ever replaces a Zarr store: choose another output path"
        )

    def commit(self, tmp: str, overwrite: bool) -> None:
        """Move the finished store ``tmp`` to the location: the step that makes it visible."""
        if self.exists() and not overwrite:
            raise FileExistsError(f"{self.given} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        self.check_replaceable()  # checked before the work too; what may have appeared there since is kept
        if self.local:
            if os.path.lexists(self.root):
                old = self.sibling("old")
                os.replace(self.root, old)
                try:
                    os.replace(tmp, self.root)
                except BaseException:
                    os.replace(old, self.root)
                    raise
                self.remove(old)
            else:
                os.replace(tmp, self.root)
            return
        # no rename on object stores: copy (server-side on S3), the group metadata last (see atomic_zarr_write)
        fs = self.fs
        fs.invalidate_cache()
        marker, root_marker = f"{tmp}/zarr.json", f"{self.root}/zarr.json"
        if fs.exists(self.root):
            if fs.exists(root_marker):
                fs.rm_file(root_marker)  # first: the old store stops opening before any of it goes
            fs.rm(self.root, recursive=True)
        files = sorted(fs.find(tmp))
        if marker not in files:
            raise FileNotFoundError(f"{self.url(tmp)} holds no zarr.json: nothing to commit")
        rest = [f for f in files if f != marker]
        if rest:  # one batched call: the file system copies them concurrently
            fs.copy(rest, [self.root + f[len(tmp):] for f in rest])
        fs.copy(marker, root_marker)
        fs.rm(tmp, recursive=True)
        fs.invalidate_cache()

    def unfinished(self) -> bool:
        """(Object stores.) Whether the location holds what a commit cut off left: arrays (``*/zarr.json``)
        without the group's ``zarr.json``. Such a store never opens, and ``overwrite`` may replace it."""
        return not self.local and not self.fs.exists(f"{self.root}/zarr.json") and bool(
            self.fs.glob(f"{self.root}/*/zarr.json")
        )


# --------------------------------------------------------------------------------------------- encoding


def _merge_chunks(chunks: Mapping[str, int | None] | None) -> dict[str, int]:
    merged = dict(DEFAULT_CHUNKS)
    for dim, n in (chunks or {}).items():
        if n is None:
            n = -1
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or (n < 1 and n != -1):
            raise ValueError(f"chunk size for {dim!r} must be a positive int or -1 (whole dimension), got {n!r}")
        merged[str(dim)] = int(n)
    return merged


def _var_chunks(var: xr.Variable, chunks: Mapping[str, int]) -> tuple[int, ...]:
    out = []
    for dim, size in zip(var.dims, var.shape):
        n = chunks.get(str(dim), -1)
        out.append(max(1, size if n == -1 else min(n, size)))
    return tuple(out)


def _full_metadata(proxy_fs: Any, proxy_root: str, template: xr.Dataset, names: Iterable[str],
                   chunks: Mapping[str, int]) -> dict[str, dict]:
    """The Zarr metadata (``zarr.json``) of each variable in ``names`` at its full shape in ``template``: read from a
    proxy store (a slice of ``template`` written at ``proxy_root`` on ``proxy_fs``), with the shape and chunk shape
    set from ``template`` and ``chunks``."""
    out = {}
    for name in names:
        meta = json.loads(proxy_fs.cat_file(f"{proxy_root}/{name}/zarr.json"))
        var = template[name].variable
        meta["shape"] = list(var.shape)
        meta["chunk_grid"]["configuration"]["chunk_shape"] = list(_var_chunks(var, chunks))
        out[name] = meta
    return out


def _writable_arrays(group: zarr.Group, names: Iterable[str]) -> dict[str, zarr.Array]:
    """The arrays ``names`` of ``group``, set to write every chunk, also all-fill ones (so that the store can be
    stamped complete: :mod:`hvaeseg.data.integrity`)."""
    import zarr

    arrays = {}
    for name in names:
        node = group[name]
        if not isinstance(node, zarr.Array):
            raise ValueError(f"{name!r} in {group.store} is a group, expected an array")
        arrays[name] = node.with_config({"write_empty_chunks": True})
    return arrays


def _encoding(ds: xr.Dataset, chunks: Mapping[str, int], codec) -> dict[str, dict]:
    comp = compressors(codec)
    enc = {}
    for name, var in ds.variables.items():
        e: dict[str, Any] = {"chunks": _var_chunks(var, chunks), "compressors": comp, "_FillValue": None}
        if np.issubdtype(var.dtype, np.datetime64):
            e.update({k: v for k, v in var.encoding.items() if k in ("units", "calendar")})
        enc[str(name)] = e
    return enc


def _prepared(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy without encodings inherited from where ``ds`` was read (they clash with ours),
    stamped with the schema version."""
    out = ds.copy(deep=False)
    for var in out.variables.values():
        var.encoding = {}
    if "hvaeseg_schema_version" not in out.attrs:
        out.attrs["hvaeseg_schema_version"] = SCHEMA_VERSION
    return out


def _stamped(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` (a shallow copy) with the attribute saying that the store holds every chunk: the writers here
    write them all (``write_empty_chunks``); set only on what they write, never carried over from an input."""
    out = ds.copy(deep=False)
    out.attrs = {**{k: v for k, v in ds.attrs.items() if k != CHUNKS_ATTR}, CHUNKS_ATTR: COMPLETE}
    return out


# --------------------------------------------------------------------------------------------- whole cubes


def write_cube(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    chunks: Mapping[str, int | None] | None = None,
    codec: str | Any | None = None,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
) -> str:
    """Validate ``ds`` and write it to a Zarr v3 store at ``path``, atomically.

    :param ds: a cube (see :class:`~hvaeseg.data.schema.CubeSchema`); stamped with
        ``hvaeseg_schema_version`` when it has none.
    :param path: local path or fsspec URL (``memory://...``, ``s3://...``).
    :param chunks: per-dimension chunk sizes overriding :data:`DEFAULT_CHUNKS` (-1 = whole dimension).
    :param codec: see :func:`compressors`; default :data:`DEFAULT_CODEC`.
    :param overwrite: replace an existing store at ``path``.
    :param storage_options: for fsspec URLs (credentials, endpoint...).
    :returns: ``path`` as a string.
    :raises CubeValidationError: the cube is invalid; nothing is written.
    :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    validate_cube(ds)
    return write_dataset(
        _prepared(ds), path, chunks=chunks, codec=codec, overwrite=overwrite, storage_options=storage_options
    )


def check_output_free(path: str | os.PathLike, overwrite: bool, *, storage_options: Mapping | None = None) -> None:
    """Refuse, before any work is done, an output ``path`` that exists when ``overwrite`` is false (the writers
    check again when they commit).

    :raises FileExistsError: naming ``path`` and ``--overwrite``.
    """
    _Location(path, storage_options).check_free(overwrite)


def write_dataset(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    chunks: Mapping[str, int | None] | None = None,
    codec: str | Any | None = None,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
) -> str:
    """Write any Dataset (a prediction, a statistics table...) to Zarr v3 atomically, without cube checks.

    Same storage rules as :func:`write_cube` (temporary sibling then rename, chunks by dimension name
    with dims missing from ``chunks``/:data:`DEFAULT_CHUNKS` in one chunk, codec, overwrite, every chunk
    written and ``hvaeseg_chunks = "complete"`` stamped); the Dataset's own encodings are ignored and its
    attributes are written as they are.

    :returns: ``path`` as a string.
    :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    loc = _Location(path, storage_options)
    loc.check_free(overwrite)
    merged = _merge_chunks(chunks)
    out = _stamped(ds)
    for var in out.variables.values():
        var.encoding = {}
    encoding = _encoding(out, merged, codec)
    with atomic_zarr_write(loc, overwrite=overwrite, checked=True) as pending, _quiet_zarr():
        out.to_zarr(pending.url, mode="w-", zarr_format=3, consolidated=True, encoding=encoding,
                    write_empty_chunks=True, **pending.xr_kwargs())
    return loc.given


@dataclass(frozen=True)
class PendingStore:
    """A store being written by :func:`atomic_zarr_write`: write it at :attr:`url` (a temporary sibling of
    :attr:`target`), with :attr:`storage_options`."""

    #: where to write: ``TARGET.tmp-PID-HEX``, a local path or a URL
    url: str
    #: where the store appears once the ``with`` block ends without error
    target: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def xr_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Dataset.to_zarr(self.url, ...)``."""
        return {"storage_options": self.storage_options} if "://" in self.url and self.storage_options else {}

    def zarr_store(self) -> Any:
        """A zarr store of :attr:`url` (``zarr.open_group(pending.zarr_store(), mode="r+")``, region writes...)."""
        loc = _Location(self.url, self.storage_options)
        return loc.zarr_store(loc.root)


@contextlib.contextmanager
def atomic_zarr_write(
    path: str | os.PathLike | _Location,
    *,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
    checked: bool = False,
) -> Iterator[PendingStore]:
    """Write a Zarr store so that it appears at ``path`` whole or not at all (as far as the storage allows)::

        with atomic_zarr_write("s3://bucket/pred.zarr", overwrite=True) as pending:
            ds.to_zarr(pending.url, mode="w-", zarr_format=3, **pending.xr_kwargs())
            # ... any number of writes into pending.url, from any thread or process ...

    **Rule.** Everything is written into a temporary sibling ``PATH.tmp-PID-HEX``; when the block ends without
    error it is committed to ``PATH``, and on any error (or Ctrl-C) it is deleted and ``PATH`` is left as it was.

    * Local paths: the commit is an ``os.replace`` of the directory (an existing store is first renamed aside to
      ``PATH.old-PID-HEX`` and deleted afterwards): atomic.
    * Object stores (``s3://``..., no rename): the commit first deletes an existing store at ``PATH`` (its
      group ``zarr.json`` first, so that it stops opening before any of it goes), then copies every object of the
      sibling to ``PATH`` (server-side copies, concurrently), the group ``zarr.json`` last, then deletes the
      sibling. Readers only accept a store with the group ``zarr.json`` (:func:`open_cube`, zarr, xarray), and
      it holds the consolidated metadata of every array written before it.

    **What a reader sees if the writer dies** (object stores):

    * while writing the sibling: ``PATH`` as it was (the old store, or nothing); a ``PATH.tmp-PID-HEX/`` prefix
      stays behind: :func:`open_cube` refuses it by name, and it is *not* removed automatically (no process can
      tell whether its writer, maybe on another machine, still runs): delete it (``aws s3 rm --recursive``);
    * during the commit: ``PATH`` without its group ``zarr.json`` (the old store partly deleted, the new one
      partly copied): :func:`open_cube` says there is no cube there, ``xarray.open_zarr`` fails; a later write
      with ``overwrite`` replaces it;
    * after the group ``zarr.json`` is copied: the complete new store (the sibling may remain, as above).

    With ``overwrite`` on an object store there is thus a window in which neither the old nor the new store
    opens, never one in which a mixture does.

    :param path: local path or fsspec URL (or a location made by this module).
    :param overwrite: replace an existing Zarr store at ``path`` (never anything else).
    :param storage_options: for URLs (default: those of :mod:`hvaeseg.data.remote`).
    :param checked: ``path`` was already checked by :func:`check_output_free` (skip the check before writing;
        the commit checks again).
    :raises FileExistsError: ``path`` exists and ``overwrite`` is false, or it is not a Zarr store.
    """
    loc = path if isinstance(path, _Location) else _Location(path, storage_options)
    if not checked:
        loc.check_free(overwrite)
    tmp = loc.sibling("tmp")
    try:
        yield PendingStore(loc.url(tmp), loc.given, dict(loc.storage_options))
        with remote_errors(loc.given):
            loc.commit(tmp, overwrite)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that got us here is the one to report
            loc.remove(tmp)
        raise


def open_cube(
    path: str | os.PathLike,
    *,
    storage_options: Mapping | None = None,
    validate: bool = True,
    check: bool | None = None,
) -> xr.Dataset:
    """Open the cube at ``path`` lazily (no dask): raw DN, exact dtypes and attributes.

    Reading a chunk that does not decode raises :class:`~hvaeseg.data.integrity.CorruptChunkError` naming it.
    The store attribute ``hvaeseg_chunks`` is not in the Dataset's ``attrs`` (it describes the store, and a
    Dataset written elsewhere by other means must not claim it).

    :param validate: run :func:`~hvaeseg.data.schema.validate_cube` (value checks on a sample for big cubes).
    :param check: check that no chunk is missing (:func:`~hvaeseg.data.integrity.check_chunks`: a listing of
        the store's keys, no chunk read); default: ``validate``.
    :raises FileNotFoundError: nothing (complete) at ``path``.
    :raises MissingChunkError: a chunk the store must hold is missing (see :mod:`hvaeseg.data.integrity`).
    """
    with remote_errors(path):
        return _open_cube(_Location(path, storage_options), storage_options, validate, check)


def _open_cube(loc: _Location, storage_options: Mapping | None, validate: bool, check: bool | None) -> xr.Dataset:
    if is_temporary_name(loc.root):
        raise ValueError(
            f"{loc.given} is the temporary store of a write that did not finish (or is still running), not a "
            f"cube: delete it, or write the cube again (the next write to "
            f"{target_of(loc.given)} removes it)"
        )
    if not loc.exists(f"{loc.root}/zarr.json"):
        hint = ""
        if loc.exists():
            hint = " (the path exists but holds no Zarr group: not a cube, or a copy that did not finish)"
        raise FileNotFoundError(f"no cube at {loc.given}{hint}")
    try:
        with _quiet_zarr(), naming_errors():  # the arrays keep the pipeline that names damaged chunks
            ds = xr.open_zarr(loc.url(), chunks=None, mask_and_scale=False, zarr_format=3, **loc.xr_kwargs())
    except (FileNotFoundError, KeyError) as err:
        raise FileNotFoundError(f"no readable cube at {loc.given}: {err}") from None
    ds.attrs.pop(CHUNKS_ATTR, None)  # about the store, not the cube: a cube written back does not carry it
    if validate if check is None else check:
        with _quiet_zarr():
            check_chunks(loc.given, storage_options=storage_options)
    if validate:
        validate_cube(ds)
    return ds


# --------------------------------------------------------------------------------------------- streaming


def template_from_block(block: xr.Dataset, time: Sequence | np.ndarray) -> xr.Dataset:
    """A :class:`CubeWriter` template from one block of dates and the full time axis.

    Variables with a ``time`` dim become zero-memory placeholders (``np.broadcast_to`` of a zero) with
    the full time length, the block's dtype and attributes; everything else (``labels``, coordinates,
    dataset attributes) is taken from ``block`` as it is.
    """
    time = np.asarray(time).astype("datetime64[ns]")
    data_vars: dict[Hashable, xr.Variable | tuple] = {}
    for name, da in block.data_vars.items():
        if "time" in da.dims:
            shape = tuple(len(time) if d == "time" else da.sizes[d] for d in da.dims)
            data_vars[name] = (da.dims, np.broadcast_to(np.zeros((), dtype=da.dtype), shape), dict(da.attrs))
        else:
            data_vars[name] = da.variable
    coords: dict[Hashable, Any] = {k: v.variable for k, v in block.coords.items() if "time" not in v.dims}
    coords["time"] = ("time", time, dict(block["time"].attrs) if "time" in block.coords else {})
    return xr.Dataset(data_vars, coords=coords, attrs=dict(block.attrs))


class CubeWriter:
    """Stream a cube to a Zarr store date by date, atomically (for cubes that do not fit in memory).

    ::

        template = template_from_block(first_block, all_times)  # or any Dataset of the full shape
        with CubeWriter("big.zarr", template) as w:
            for t0 in range(0, n_dates, 1):
                w.write_dates(t0, block_for(t0))                  # (time, ...) variables only

    Entering creates a temporary store: time-invariant variables (``labels``) and coordinates are
    written from the template; the arrays of time-dependent variables are created empty with the
    template's dtypes, attributes and encodings (exactly what :func:`write_cube` writes: every chunk, and
    ``hvaeseg_chunks = "complete"``). Their template values are never read. Leaving without error checks
    every date was written, consolidates the metadata and renames the store to ``path``; leaving with an
    error deletes the temporary store.

    :param path: local path or fsspec URL.
    :param template: Dataset with the full shapes, coords, attrs and time-invariant data.
    :param chunks, codec, overwrite, storage_options: as in :func:`write_cube`.
    :param validate: validate the template (structure) and each block (values, sampled).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        template: xr.Dataset,
        *,
        chunks: Mapping[str, int | None] | None = None,
        codec: str | Any | None = None,
        overwrite: bool = False,
        storage_options: Mapping | None = None,
        validate: bool = True,
    ):
        if not isinstance(template, xr.Dataset):
            raise TypeError(f"template must be an xarray.Dataset, got {type(template).__name__}")
        if "time" not in template.dims:
            raise ValueError("template has no time dimension; use write_cube for time-invariant data")
        if validate:
            validate_cube(template)
        self._loc = _Location(path, storage_options)
        self._loc.check_free(overwrite)
        self.path = self._loc.given
        self.template = _stamped(_prepared(template))
        self.time_vars = [str(v) for v in template.data_vars if "time" in template[v].dims]
        self._chunks = _merge_chunks(chunks)
        self._codec = codec
        self._overwrite = overwrite
        self._validate = validate
        self._written = np.zeros(template.sizes["time"], dtype=bool)
        self._tmp: str | None = None
        self._arrays: dict[str, Any] = {}
        self._done = False

    # context manager -------------------------------------------------------------------------
    def __enter__(self) -> CubeWriter:
        self._create()
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    # steps -------------------------------------------------------------------------------------
    def _create(self) -> None:
        if self._tmp is not None:
            raise RuntimeError("CubeWriter was already entered; use a new one per store")
        loc, tpl = self._loc, self.template
        self._tmp = loc.sibling("tmp")
        try:
            static = tpl.drop_vars(self.time_vars)
            with _quiet_zarr():
                static.to_zarr(
                    loc.url(self._tmp),
                    mode="w-",
                    zarr_format=3,
                    consolidated=False,
                    encoding=_encoding(static, self._chunks, self._codec),
                    write_empty_chunks=True,
                    **loc.xr_kwargs(),
                )
                for name, meta in self._array_metadata().items():
                    loc.write_bytes(f"{self._tmp}/{name}/zarr.json", json.dumps(meta, indent=2).encode())
            import zarr

            group = zarr.open_group(loc.zarr_store(self._tmp), mode="r+", zarr_format=3)
            self._arrays = _writable_arrays(group, self.time_vars)
        except BaseException:
            self.abort()
            raise

    def _array_metadata(self) -> dict[str, dict]:
        """Zarr metadata of the time-dependent arrays, as xarray would write them, at full shape.

        xarray writes a one-pixel, one-date proxy of the template to memory; its ``zarr.json`` files hold
        the attributes, dtype, fill value, codecs and dimension names; only shape and chunk shape change.
        """
        tpl = self.template
        proxy = tpl[self.time_vars].isel({d: slice(0, 1) for d in ("time", "y", "x") if d in tpl.dims})
        mem = fsspec.filesystem("memory")
        root = f"/hvaeseg-proxy-{uuid.uuid4().hex}"
        try:
            proxy.to_zarr(
                f"memory://{root}",
                mode="w-",
                zarr_format=3,
                consolidated=False,
                encoding=_encoding(proxy, self._chunks, self._codec),
            )
            return _full_metadata(mem, root, tpl, self.time_vars, self._chunks)
        finally:
            if mem.exists(root):
                mem.rm(root, recursive=True)

    def write_dates(self, t0: int, ds_slice: xr.Dataset) -> None:
        """Write dates ``t0 .. t0 + n - 1`` from ``ds_slice`` (``n = ds_slice.sizes["time"]``).

        :param ds_slice: every time-dependent variable of the template, with the template's dims order,
            dtype and non-time sizes; its ``time`` coordinate, if any, must equal the template's.
        """
        if self._tmp is None or self._done:
            raise RuntimeError("write_dates needs an open writer: use `with CubeWriter(...) as writer:`")
        problems = []
        missing = [v for v in self.time_vars if v not in ds_slice.data_vars]
        if missing:
            problems.append(f"block lacks variable(s) {', '.join(missing)}")
        n = ds_slice.sizes.get("time", 0)
        total = len(self._written)
        t0 = int(t0)
        if n == 0 or t0 < 0 or t0 + n > total:
            problems.append(f"dates {t0}..{t0 + n - 1} are outside the template's 0..{total - 1} (block of {n} dates)")
        for name in self.time_vars:
            if name in missing:
                continue
            want, have = self.template[name], ds_slice[name]
            if want.dtype.kind not in "biuf":
                problems.append(f"`{name}` has dtype {want.dtype}; streamed variables must be bool, integer or float")
            if have.dims != want.dims:
                problems.append(f"`{name}` has dims {have.dims}, expected {want.dims}")
                continue
            wrong = [f"{d}={have.sizes[d]} (expected {want.sizes[d]})" for d in want.dims
                     if d != "time" and have.sizes[d] != want.sizes[d]]
            if wrong:
                problems.append(f"`{name}` has sizes {', '.join(wrong)}")
            if have.dtype != want.dtype:
                problems.append(f"`{name}` has dtype {have.dtype}, expected {want.dtype}")
        if not problems and "time" in ds_slice.coords:
            expect = self.template["time"].values[t0 : t0 + n]
            if not np.array_equal(ds_slice["time"].values.astype("datetime64[ns]"), expect):
                problems.append(
                    f"block time {ds_slice['time'].values} differs from template time[{t0}:{t0 + n}] {expect}"
                )
        if not problems and "band" in ds_slice.coords and "band" in self.template.coords:
            if not np.array_equal(ds_slice["band"].values, self.template["band"].values):
                problems.append(
                    f"block bands {list(ds_slice['band'].values)} differ from {list(self.template['band'].values)}"
                )
        if problems:
            raise ValueError("cannot write block: " + "; ".join(problems))

        if self._validate:
            coords = self.template.isel(time=slice(t0, t0 + n)).coords
            check = xr.Dataset(
                {v: (self.template[v].dims, ds_slice[v].data, self.template[v].attrs) for v in self.time_vars},
                coords={k: c.variable for k, c in coords.items()},
                attrs=self.template.attrs,
            )
            validate_cube(check, require=())
        # straight into the zarr arrays: xarray's region writes would re-apply the store's scale_factor
        # to our raw DN (it decodes attributes of existing arrays as encoding)
        for name in self.time_vars:
            self._arrays[name][t0 : t0 + n] = np.asarray(ds_slice[name].data)
        self._written[t0 : t0 + n] = True

    def commit(self) -> str:
        """Check every date was written, consolidate metadata and move the store to ``path``."""
        if self._tmp is None or self._done:
            raise RuntimeError("nothing to commit: the writer was not entered or is already closed")
        try:
            if not self._written.all():
                missing = np.flatnonzero(~self._written)
                raise ValueError(
                    f"{missing.size} of {self._written.size} dates were never written "
                    f"(indices {missing[:10].tolist()}{'...' if missing.size > 10 else ''}); nothing was committed"
                )
            import zarr

            with _quiet_zarr():
                zarr.consolidate_metadata(self._loc.zarr_store(self._tmp))
            self._loc.commit(self._tmp, self._overwrite)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Delete the temporary store; ``path`` is left as it was."""
        if self._tmp is not None:
            self._loc.remove(self._tmp)
        self._done = True
