"""One output store written region by region by several processes at once (parallel prediction and inpainting).

The protocol (:class:`RegionStore`; the regions are :func:`hvaeseg.data.regions.region_grid`'s):

1. **Create** (every process, idempotent, lock-free): the store's metadata, its coordinates and every variable
   without both ``y`` and ``x`` are written into a temporary sibling ``OUT.partial.tmp-PID-HEX``, with the empty
   arrays of the region variables (those with ``y`` and ``x``) and ``region_done`` ``(region,)`` uint32 (one chunk
   per region, 0 = not written), then renamed to ``OUT.partial``. Renaming a folder onto an existing non-empty
   one fails: the first process to get there creates it, the others drop their copy and use it. The store
   attribute ``hvaeseg_regions`` (JSON: command, run, data, options, chunking, region count) says what it is
   for; a process whose command differs is refused (another run or command writes there), whatever its part.
2. **Regions**: each process writes the region variables of its regions straight into the zarr arrays (a
   region covers whole chunks, so no two processes ever write one chunk), then ``region_done[i] = 1 + note``
   (``note``: a count the command keeps per region, e.g. non-finite pixels). A rerun of the same command skips
   the regions marked done.
3. **Complete**: a process that finds every region done claims the store by renaming ``OUT.partial`` to a
   temporary sibling of ``OUT`` (one rename wins; the others stop there), drops ``region_done``, consolidates
   the metadata and moves it to ``OUT`` as :func:`hvaeseg.data.store.write_dataset` does (an existing ``OUT``
   is replaced only with ``overwrite``).

**What readers see meanwhile:** nothing new at ``OUT`` (or the previous store there, with ``overwrite``) until
the last region is written; ``OUT.partial`` is not a finished store (the chunks of regions not yet done are
missing, and it has ``region_done``): do not read it. The finished store equals what a single process writes
(same arrays and attributes, plus ``hvaeseg_regions``, and ``hvaeseg_chunks = "complete"``: every chunk was
written).

Local stores get all of this atomically. On fsspec object stores the create and claim steps are not atomic
(there is no rename): start one process first (part 0) or accept that simultaneous starts may each write the
same metadata.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
import numpy as np
import xarray as xr

from hvaeseg.data.regions import Region, region_grid
from hvaeseg.data.store import (
    _encoding,
    _full_metadata,
    _Location,
    _merge_chunks,
    _quiet_zarr,
    _stamped,
    _writable_arrays,
)

__all__ = ["RegionStore", "REGIONS_ATTR", "PARTIAL_SUFFIX", "DONE_ARRAY"]

#: store attribute naming what the store is written for (JSON), kept in the finished store as provenance
REGIONS_ATTR = "hvaeseg_regions"
#: the store being written is ``OUT`` + this suffix until every region is done
PARTIAL_SUFFIX = ".partial"
#: the per-region completion markers (dropped when the store is complete)
DONE_ARRAY = "region_done"


def _region_variables(ds: xr.Dataset) -> list[str]:
    return [str(k) for k, v in ds.variables.items() if "y" in v.dims and "x" in v.dims]


class RegionStore:
    """A Zarr store at ``path`` written region by region, by any number of processes (see the module doc).

    ::

        store = RegionStore(out, template, identity).open()   # every process; safe to run together
        for i in my_regions:
            if not store.done()[i]:
                store.write(store.regions[i], {name: values...})
        store.finish()                                        # completes the store when every region is done

    :param path: the finished store's path (local or fsspec URL).
    :param template: a Dataset with the output's full shape, coordinates, attributes and every variable without
        both ``y`` and ``x``; the values of the region variables (those with ``y`` and ``x``) are never read
        (``np.broadcast_to`` placeholders are fine).
    :param identity: JSON-able description of the command writing the store (run, data, options; never the part):
        processes with another identity are refused.
    :param chunks, codec, storage_options: as in :func:`hvaeseg.data.store.write_dataset`.
    :param overwrite: replace an existing finished store at ``path`` when this one completes.
    """

    def __init__(self, path: str | os.PathLike, template: xr.Dataset, identity: Mapping[str, Any], *,
                 chunks: Mapping[str, int | None] | None = None, codec: str | Any | None = None,
                 overwrite: bool = False, storage_options: Mapping | None = None) -> None:
        self._loc = _Location(path, storage_options)
        self.path = self._loc.given
        self.partial = f"{self._loc.root}{PARTIAL_SUFFIX}"
        self._chunks = _merge_chunks(chunks)
        self._codec = codec
        self.overwrite = overwrite
        self.identity = json.loads(json.dumps(dict(identity), sort_keys=True))
        self.regions: list[Region] = region_grid({str(d): n for d, n in template.sizes.items()}, self._chunks)
        self.identity["regions"] = len(self.regions)
        self.identity["chunks"] = [self._chunks["y"], self._chunks["x"]]
        tpl = _stamped(template)
        for var in tpl.variables.values():
            var.encoding = {}
        tpl.attrs[REGIONS_ATTR] = json.dumps(self.identity, sort_keys=True)
        self.template = tpl
        self.region_vars = _region_variables(tpl)
        self._arrays: dict[str, Any] = {}
        self._done_array: Any = None
        self._complete = False

    # ----------------------------------------------------------------------------------- create
    def open(self) -> RegionStore:
        """Create ``OUT.partial`` unless it exists, and check that it is this command's.

        :raises FileExistsError: ``OUT`` exists (and ``overwrite`` is false) and was written by another command,
            or ``OUT.partial`` belongs to another run or command.
        """
        loc = self._loc
        self._complete, self._done_array = False, None
        loc.remove_stale_siblings()
        if loc.exists() and not self.overwrite:
            if self._stored_identity(loc.root) == self.identity:
                self._complete = True  # a finished store of this same command: nothing left to do
                return self
            raise FileExistsError(f"{self.path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if self.overwrite:
            loc.check_replaceable()
        if not loc.exists(f"{self.partial}/zarr.json"):
            self._create()
        self._check_identity()
        import zarr

        group = zarr.open_group(loc.zarr_store(self.partial), mode="r+", zarr_format=3)
        self._arrays = _writable_arrays(group, self.region_vars)
        self._done_array = group[DONE_ARRAY]
        return self

    @property
    def opened(self) -> bool:
        """Whether :meth:`open` was called (and succeeded)."""
        return self._complete or self._done_array is not None

    @property
    def complete(self) -> bool:
        """Whether ``OUT`` was found finished, by this same command, when opened (nothing left to do)."""
        return self._complete

    def _stored_identity(self, root: str) -> dict | None:
        import zarr

        try:
            with _quiet_zarr():
                attrs = dict(zarr.open_group(self._loc.zarr_store(root), mode="r", zarr_format=3).attrs)
        except (FileNotFoundError, KeyError, ValueError):
            return None
        text = attrs.get(REGIONS_ATTR)
        return json.loads(text) if isinstance(text, str) else None

    def _check_identity(self) -> None:
        theirs = self._stored_identity(self.partial)
        if theirs != self.identity:
            diff = "" if theirs is None else ": " + ", ".join(
                f"{k} {theirs.get(k)!r} there, {self.identity.get(k)!r} here"
                for k in sorted(set(theirs) | set(self.identity)) if theirs.get(k) != self.identity.get(k))
            raise FileExistsError(
                f"{self.partial} is being written by another run or command{diff}: finish that one (rerun its "
                f"command), or delete {self.partial} to start this one"
            )

    def _create(self) -> None:
        loc, tpl = self._loc, self.template
        tmp = f"{self.partial}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            static = tpl.drop_vars(self.region_vars)
            with _quiet_zarr():
                static.to_zarr(loc.url(tmp), mode="w-", zarr_format=3, consolidated=False,
                               encoding=_encoding(static, self._chunks, self._codec), write_empty_chunks=True,
                               **loc.xr_kwargs())
                arrays, coordinates = self._array_metadata()
                for name, meta in arrays.items():
                    loc.write_bytes(f"{tmp}/{name}/zarr.json", json.dumps(meta, indent=2).encode())
                import zarr

                group = zarr.open_group(loc.zarr_store(tmp), mode="r+", zarr_format=3)
                # CF's `coordinates` attributes as the whole Dataset gets them (written without the region
                # variables, coordinates that only those name would go to the group's attribute instead)
                for name, node in [("", group), *((str(k), group[str(k)]) for k in static.variables)]:
                    want = coordinates.get(name)
                    if node.attrs.get("coordinates") != want:
                        attrs = {k: v for k, v in node.attrs.items() if k != "coordinates"}
                        if want is not None:
                            attrs["coordinates"] = want
                        node.attrs.put(attrs)
                group.create_array(DONE_ARRAY, shape=(len(self.regions),), chunks=(1,), dtype="uint32",
                                   fill_value=0, dimension_names=["region"])
            self._publish(tmp)
        finally:
            if loc.exists(tmp):
                loc.remove(tmp)

    def _publish(self, tmp: str) -> None:
        """Rename ``tmp`` to ``OUT.partial`` unless another process got there first (then keep theirs)."""
        if self._loc.local:
            try:
                os.rename(tmp, self.partial)
            except OSError:
                if not os.path.isfile(os.path.join(self.partial, "zarr.json")):
                    raise
            return
        if not self._loc.exists(f"{self.partial}/zarr.json"):  # not atomic on object stores (module doc)
            self._loc.fs.mv(tmp, self.partial, recursive=True)

    def _array_metadata(self) -> tuple[dict[str, dict], dict[str, Any]]:
        """Zarr metadata of the region variables as xarray writes them, at full shape, and the CF ``coordinates``
        attribute of every node (``""``: the group), from a one-pixel proxy of the whole template written to
        memory (attributes, dtype, fill value, codecs, dimension names; shape and chunks set here)."""
        tpl = self.template
        proxy = tpl.isel(y=slice(0, 1), x=slice(0, 1))
        mem = fsspec.filesystem("memory")
        root = f"/hvaeseg-proxy-{uuid.uuid4().hex}"
        try:
            proxy.to_zarr(f"memory://{root}", mode="w-", zarr_format=3, consolidated=False,
                          encoding=_encoding(proxy, self._chunks, self._codec))
            out = _full_metadata(mem, root, tpl, self.region_vars, self._chunks)
            coordinates = {}
            for name in ["", *map(str, tpl.variables)]:
                attrs = json.loads(mem.cat_file(f"{root}/{name}/zarr.json".replace("//", "/"))).get("attributes", {})
                if "coordinates" in attrs:
                    coordinates[name] = attrs["coordinates"]
            return out, coordinates
        finally:
            if mem.exists(root):
                mem.rm(root, recursive=True)

    # ----------------------------------------------------------------------------------- regions
    def done(self) -> np.ndarray:
        """``(n_regions,)`` bool: which regions are written (read from the store: other processes' too)."""
        if self._complete:
            return np.ones(len(self.regions), dtype=bool)
        return np.asarray(self._done_array[:]) > 0

    def notes(self) -> np.ndarray:
        """``(n_regions,)`` int64: the ``note`` each done region was written with (0 for those not done)."""
        return np.maximum(np.asarray(self._done_array[:], dtype=np.int64) - 1, 0)

    def write(self, region: Region, values: Mapping[str, np.ndarray], note: int = 0) -> None:
        """Write every region variable of ``region`` and mark it done.

        :param values: for each region variable, its values over the region, in the variable's dims order with
            ``y``/``x`` cut to the region (e.g. ``probability``: ``(K, y1 - y0, x1 - x0)``).
        :param note: a count to keep with the region (:meth:`notes`), >= 0.
        """
        missing = sorted(set(self.region_vars) - set(values))
        if missing:
            raise ValueError(f"{region}: no values for {', '.join(missing)}")
        for name in self.region_vars:
            dims = self.template[name].dims
            index = tuple(region.slices.get(str(d), slice(None)) for d in dims)
            want = tuple(len(range(*s.indices(n))) for s, n in zip(index, self.template[name].shape))
            data = np.asarray(values[name])
            if data.shape != want:
                raise ValueError(f"{region}: `{name}` {dims}: expected shape {want}, got {data.shape}")
            self._arrays[name][index] = data
        self._done_array[region.index] = 1 + int(note)

    # ----------------------------------------------------------------------------------- complete
    def finish(self, attrs: Callable[[RegionStore], Mapping[str, Any]] | None = None) -> bool:
        """Complete the store when every region is done (else do nothing): returns whether this call moved it to
        ``OUT`` (False also when another process is completing it).

        :param attrs: returns store attributes to add on completion (given the store, e.g. to sum :meth:`notes`).
        """
        if self._complete or not self.done().all():
            return False
        extra = dict(attrs(self)) if attrs is not None else {}
        loc = self._loc
        if loc.exists() and not self.overwrite:  # before the claim: OUT.partial is kept for a rerun
            raise FileExistsError(f"{self.path} appeared while the regions were written; the regions are kept in "
                                  f"{self.partial}: rerun with --overwrite to replace {self.path}")
        tmp = loc.sibling("tmp")
        if loc.local:
            try:
                os.rename(self.partial, tmp)  # the claim: one process wins
            except FileNotFoundError:
                return False
        else:
            if not loc.exists(self.partial):
                return False
            loc.fs.mv(self.partial, tmp, recursive=True)
        try:
            import zarr

            with _quiet_zarr():
                store = loc.zarr_store(tmp)
                group = zarr.open_group(store, mode="r+", zarr_format=3)
                del group[DONE_ARRAY]
                if extra:
                    group.attrs.update(extra)
                zarr.consolidate_metadata(store)
            loc.commit(tmp, self.overwrite)
        except BaseException:
            loc.remove(tmp)
            raise
        return True
