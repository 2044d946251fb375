"""The entry point :func:`ingest`: check the output, read the products (NetCDF or GeoTIFF) and write the cube
(see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from hvaeseg.data.ingest._common import IngestError, PathType
from hvaeseg.data.ingest.geotiff import ingest_geotiff
from hvaeseg.data.ingest.netcdf import discover_netcdf, ingest_netcdf
from hvaeseg.data.ingest.outputs import _input_paths, check_output

#: the ``format`` values of :func:`ingest`; the last two read camera images into a mosaic cube
FORMATS = ("auto", "netcdf", "geotiff", "cityscapes", "folder")
IMAGE_FORMATS = ("cityscapes", "folder")


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
        (or ``format="geotiff"``) and ``band_files=`` and/or ``stack=``, and ``times=`` in ``options``. For
        ``format="cityscapes"`` or ``"folder"`` (camera images to a mosaic cube): the one root folder, with
        ``split=``, ``size=``, ``void=`` (Cityscapes) or ``code_table=``, ``size=`` (folder) in ``options``.
    :param format: ``"auto"`` (NetCDF, or GeoTIFF when ``band_files``/``stack`` are given), ``"netcdf"``,
        ``"geotiff"``, ``"cityscapes"`` (:func:`~hvaeseg.data.ingest.cityscapes.ingest_cityscapes`) or ``"folder"``
        (:func:`~hvaeseg.data.ingest.image_folder.ingest_image_folder`).
    :param out: the store path or URL; checked first by :func:`check_output` (not an input; an existing
        path is replaced, with ``overwrite``, only when it is a cube store).
    :param chunks, codec, storage_options: as in :func:`hvaeseg.data.store.write_cube` (a mosaic's default: whole
        images per chunk, :func:`~hvaeseg.data.ingest.images.chunks_for`).
    :param options: passed to :func:`ingest_netcdf`, :func:`ingest_geotiff`, ``ingest_cityscapes`` or
        ``ingest_image_folder``.
    :returns: the store path written.
    """
    from hvaeseg.data.ingest.images import chunks_for
    from hvaeseg.data.store import write_cube

    if format not in FORMATS:
        raise ValueError(f"expected format {', '.join(map(repr, FORMATS))}, got {format!r}")
    paths = [] if inputs is None else [inputs] if isinstance(inputs, (str, PathLike)) else list(inputs)
    check_output(out, _input_paths(paths, options), overwrite, storage_options=storage_options)
    if format in IMAGE_FORMATS:
        ds = _ingest_images(format, paths, options)
        chunks = chunks if chunks is not None else chunks_for(ds)
    elif format == "geotiff" or (format == "auto" and ("band_files" in options or "stack" in options)):
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


def _ingest_images(format: str, paths: list, options: dict[str, Any]):
    """A mosaic cube from the one root folder of a Cityscapes or image-folder dataset."""
    from hvaeseg.data.ingest.cityscapes import ingest_cityscapes
    from hvaeseg.data.ingest.image_folder import ingest_image_folder

    if len(paths) != 1:
        raise IngestError(f"--format {format} takes one input, the dataset's root folder, got {len(paths)}: "
                          f"{', '.join(map(str, paths)) or 'none'}")
    if format == "cityscapes":
        return ingest_cityscapes(paths[0], **options)
    return ingest_image_folder(paths[0], **options)
