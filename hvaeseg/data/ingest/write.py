"""The entry point :func:`ingest`: check the output, read the products (NetCDF or GeoTIFF) and write the cube
(see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from hvaeseg.data.ingest._common import PathType
from hvaeseg.data.ingest.geotiff import ingest_geotiff
from hvaeseg.data.ingest.netcdf import discover_netcdf, ingest_netcdf
from hvaeseg.data.ingest.outputs import _input_paths, check_output


def ingest(
    inputs: PathType | Sequence[PathType] | None,
    out: PathType,
    *,
    format: str = "auto",
    overwrite: bool = False,
    chunks: Mapping[str, int] | None = None,
    codec: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Ingest products and write the cube to ``out`` (Zarr, atomically): nothing is written on error.

    :param inputs: NetCDF band files, or one folder laid out like a WorldCereal site (band files,
        ``OUTPUT_*.nc`` labels and a ``*.csv`` code table are found in it). For GeoTIFF pass ``None``
        (or ``format="geotiff"``) and ``band_files=`` and/or ``stack=``, and ``times=`` in ``options``.
    :param out: the store path or URL; checked first by :func:`check_output` (not an input; an existing
        path is replaced, with ``overwrite``, only when it is a cube store).
    :param chunks, codec, storage_options: as in :func:`hvaeseg.data.store.write_cube`.
    :param options: passed to :func:`ingest_netcdf` or :func:`ingest_geotiff`.
    :returns: the store path written.
    """
    from hvaeseg.data.store import write_cube

    if format not in ("auto", "netcdf", "geotiff"):
        raise ValueError(f"expected format 'auto', 'netcdf' or 'geotiff', got {format!r}")
    paths = [] if inputs is None else [inputs] if isinstance(inputs, (str, PathLike)) else list(inputs)
    check_output(out, _input_paths(paths, options), overwrite, storage_options=storage_options)
    if format == "geotiff" or (format == "auto" and ("band_files" in options or "stack" in options)):
        if paths:
            raise ValueError("GeoTIFF ingestion takes band_files= and/or stack= (and times=), not input paths")
        ds = ingest_geotiff(**options)
    else:
        if len(paths) == 1 and Path(paths[0]).is_dir():
            found = discover_netcdf(paths[0])
            paths = list(found["paths"])
            options.setdefault("labels", found["labels"])
            if options.get("labels") is not None:
                options.setdefault("code_table", found["code_table"])
        ds = ingest_netcdf(*paths, **options)
    return write_cube(ds, out, chunks=chunks, codec=codec, overwrite=overwrite, storage_options=storage_options)
