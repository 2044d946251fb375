"""GeoTIFF inputs read with ``rioxarray``: one file per band (one layer per date, or one file per date), or
multi-band stacks; georeference checks and the local pixel grid (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg._progress import progress
from hvaeseg.data.bands import BAND_NAMES, L2A_BANDS, check_band_names
from hvaeseg.data.ingest._common import (
    _SCL_NAMES,
    LOCAL_GRID_RESOLUTION,
    IngestError,
    PathType,
    _check_regular,
    _file_list,
    _Layer,
    _normalise_crs,
    _number,
    _problems_message,
)
from hvaeseg.data.ingest.assemble import _assemble
from hvaeseg.data.ingest.classes import _check_class_names, _LabelMap, _table, _table_source
from hvaeseg.data.ingest.offsets import L2A_SCALE_FACTOR
from hvaeseg.data.ingest.resample import _same_coords


def _rioxarray():
    try:
        import rioxarray  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "reading GeoTIFF band files needs rioxarray (and rasterio): pip install 'hvaeseg[real]'"
        ) from err
    return rioxarray


#: offset metadata kept from GeoTIFF tags (dataset and band), lower-case
_OFFSET_TAGS = ("boa_add_offset", "add_offset", "scale_factor", "processing_baseline")


@dataclass
class _GeoTiff:
    """One GeoTIFF opened lazily (no pixel read yet), whether it carries a georeference, and per layer its
    description and offset metadata (GDAL scale/offset when set, offset tags)."""

    path: str
    da: xr.DataArray
    georeferenced: bool
    crs: str | None
    descriptions: tuple[str | None, ...] = ()
    layer_attrs: list[dict] = field(default_factory=list)
    nodata: float | None = None

    @property
    def count(self) -> int:
        return int(self.da.sizes.get("band", 1))


def _open_geotiff(path: PathType) -> _GeoTiff:
    rio = _rioxarray()
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    if "://" not in str(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such GeoTIFF file")
    with warnings.catch_warnings():
        # a file without geotransform is reported below, with the fix, instead of this warning
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            da = rio.open_rasterio(path, masked=False)
            with rasterio.open(path) as src:
                descriptions, scales, offsets = tuple(src.descriptions), src.scales, src.offsets
                tags = [{**src.tags(), **src.tags(i)} for i in range(1, src.count + 1)]
                nodata = src.nodata
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001
            raise IngestError(f"{path}: cannot be read as GeoTIFF ({type(err).__name__}: {err})") from err
        # no geotransform (nor GCPs / RPCs): rasterio reports the identity transform (unit pixels, y = row index)
        georeferenced = not da.rio.transform().is_identity
    layer_attrs = []
    for i, t in enumerate(tags):
        attrs = {k.lower(): v for k, v in t.items() if k.lower() in _OFFSET_TAGS}
        attrs = {k: v if k == "processing_baseline" else _number(v) for k, v in attrs.items()}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        # GDAL reports scale 1 and offset 0 when the file sets none: only other values are metadata
        if scales[i] != 1.0 or offsets[i] != 0.0:
            attrs.update(scale_factor=float(scales[i]), add_offset=float(offsets[i]))
        layer_attrs.append(attrs)
    crs = _normalise_crs(da.rio.crs.to_string() if da.rio.crs is not None else None)
    return _GeoTiff(str(path), da, georeferenced, crs, descriptions, layer_attrs, nodata)


#: STAC ``eo:common_name`` of the Sentinel-2 bands (unambiguous ones), for GeoTIFF band descriptions
_COMMON_NAMES = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12",
}


def _band_from_description(text: str | None) -> str | None:
    """The band a GeoTIFF band description names (``B02``, ``B2``, ``blue``, ``SCL``), else None."""
    if not text or not str(text).strip():
        return None
    key = str(text).strip().upper().replace(" ", "")
    if key in BAND_NAMES:
        return key
    m = re.fullmatch(r"B0?([1-9])", key)
    if m:
        return f"B0{m.group(1)}"
    if key in _SCL_NAMES:
        return "SCL"
    return _COMMON_NAMES.get(str(text).strip().lower())


def _stack_names(stacks: Sequence[_GeoTiff], stack_bands: Sequence[str] | None) -> list[str]:
    """The band (or SCL) of each layer of the stack files: from ``stack_bands``, else the band descriptions."""
    fix = (
        "pass --stack-bands with one name per layer in layer order (e.g. --stack-bands B02,B03,B04,B08,B11,B12; "
        "Python stack_bands=[...])"
    )
    if stack_bands is not None:
        if isinstance(stack_bands, str):
            raise IngestError(f"stack_bands (--stack-bands): expected a list of band names, got {stack_bands!r}")
        names = [str(n).strip().upper() for n in stack_bands]
        names = ["SCL" if n in _SCL_NAMES else n for n in names]
        try:
            if any(n != "SCL" for n in names):
                check_band_names([n for n in names if n != "SCL"])
        except ValueError as err:
            raise IngestError(f"stack_bands (--stack-bands) {list(stack_bands)}: {err}") from None
        if names.count("SCL") > 1:
            raise IngestError(f"stack_bands (--stack-bands) {list(stack_bands)}: SCL is named more than once")
        for g in stacks:
            if g.count != len(names):
                raise IngestError(
                    f"{g.path} has {g.count} layers but stack_bands (--stack-bands) names {len(names)} "
                    f"({','.join(names)}); a stack holds one date: name every layer, in layer order"
                )
        return names
    found: list[str] | None = None
    for g in stacks:
        descs = list(g.descriptions) + [None] * (g.count - len(g.descriptions))
        described = [_band_from_description(d) for d in descs]
        if all(d is None or not str(d).strip() for d in descs):
            raise IngestError(
                f"{g.path} has {g.count} layers and no band descriptions, so the band order is unknown; {fix}"
            )
        bad = [f"layer {i + 1} {d!r}" for i, (d, n) in enumerate(zip(descs, described)) if n is None]
        if bad:
            raise IngestError(
                f"{g.path}: the band descriptions do not all name a Sentinel-2 band ({', '.join(bad)}; expected "
                f"e.g. B02, B2, blue or SCL), so the band order is unknown; {fix}"
            )
        names = [n for n in described if n is not None]  # all of them (bad is empty)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise IngestError(f"{g.path}: the band descriptions name {', '.join(dup)} more than once; {fix}")
        if found is not None and names != found:
            raise IngestError(
                f"the stack files hold the bands in different orders: {stacks[0].path} {','.join(found)}, {g.path} "
                f"{','.join(names)}; write them in one order, or ingest them separately"
            )
        found = names
    return found or []


def _local_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``(y, x)`` of the local grid: 10 m pixels, x from 0 at the left edge, y from 0 at the
    bottom edge and decreasing from the top row (the layout of a north-up raster)."""
    r = LOCAL_GRID_RESOLUTION
    return r * (height - np.arange(height) - 0.5), r * (np.arange(width) + 0.5)


def _georeference_problems(opened: Sequence[_GeoTiff], local_grid: bool) -> list[str]:
    """Message lines for files without georeference (none with ``local_grid`` unless some files have one)."""
    bare = [g for g in opened if not g.georeferenced]
    if not bare:
        return []
    if local_grid:
        if len(bare) == len(opened):
            return []
        geo = [g.path for g in opened if g.georeferenced]
        return [
            "local_grid (--local-grid) needs every file to lack a georeference, but "
            + ", ".join(g.path for g in bare) + " have none while " + ", ".join(geo)
            + " are georeferenced; georeference the former (gdal_edit.py -a_ullr ULX ULY LRX LRY -a_srs EPSG:CODE "
            "FILE.tif) and drop local_grid"
        ]
    lines = []
    for g in bare:
        h, w = g.da.sizes["y"], g.da.sizes["x"]
        lines.append(
            f"{g.path} has no georeference: no geotransform (rasterio reads the identity transform and warns "
            f"NotGeoreferencedWarning){'' if g.crs else ' and no CRS'}, so its {h} x {w} pixels have no map "
            "position (and `y` would increase)"
        )
    g = bare[0]
    h, w = g.da.sizes["y"], g.da.sizes["x"]
    r = LOCAL_GRID_RESOLUTION
    lines.append(
        "fix: georeference the files, e.g. `gdal_edit.py -a_ullr ULX ULY LRX LRY -a_srs EPSG:CODE FILE.tif` with "
        f"the upper-left and lower-right corners in the CRS (for {h} x {w} pixels of {r:g} m: LRX = ULX + {w * r:g}, "
        f"LRY = ULY - {h * r:g}); or pass --local-grid (Python: local_grid=True) to ingest on a local pixel grid "
        f"(origin 0, {r:g} m pixels, y decreasing from the top, no CRS)"
    )
    return lines


def _geotiff_layer(
    name: str,
    files: Sequence[PathType],
    times: Sequence[Any],
    opened: Mapping[str, _GeoTiff],
    local: bool,
    index: int | None = None,
) -> _Layer:
    """One band (or SCL) from ``files``: every layer of each (``index`` None) or its layer ``index`` (a stack)."""
    dates = np.asarray(times, dtype="datetime64[ns]")
    planes = []
    y: np.ndarray | None = None
    x: np.ndarray | None = None
    crs = None
    for f in files:
        g = opened[str(f)]
        da = g.da
        if local:
            fy, fx = _local_grid(da.sizes["y"], da.sizes["x"])
            fcrs = None
        else:
            fy, fx = np.asarray(da["y"].values, np.float64), np.asarray(da["x"].values, np.float64)
            fcrs = g.crs
        if y is None or x is None:
            y, x, crs = fy, fx, fcrs
        elif not (_same_coords(fy, y) and _same_coords(fx, x)) or fcrs != crs:
            raise IngestError(
                f"{name}: {f} is not on the grid of {files[0]} (every file of one band must share a grid)"
            )
        planes.append(np.asarray((da if index is None else da.isel(band=slice(index, index + 1))).values))
    if y is None or x is None:
        raise IngestError(f"{name}: expected at least one file, got none")
    src = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"
    data = np.concatenate(planes, axis=0)
    _check_regular(y, "y", src)
    _check_regular(x, "x", src)
    if data.shape[0] != len(dates):
        raise IngestError(
            f"the timestamps differ: {name} has {data.shape[0]} layers in {src} but {len(dates)} dates were given"
        )
    attrs = dict(opened[str(files[0])].layer_attrs[index or 0]) if opened[str(files[0])].layer_attrs else {}
    return _Layer(name=name, source=src, data=data, times=dates, y=y, x=x, crs=crs, attrs=attrs)


def _label_geotiff(g: _GeoTiff, local: bool) -> _LabelMap:
    if g.count != 1:
        raise IngestError(
            f"{g.path}: the label file has {g.count} layers; expected one layer of class codes (keep one with "
            f"`gdal_translate -b N {g.path} labels.tif`)"
        )
    ly, lx = _local_grid(g.da.sizes["y"], g.da.sizes["x"]) if local else (
        np.asarray(g.da["y"].values, np.float64), np.asarray(g.da["x"].values, np.float64))
    return _LabelMap(ly, lx, np.asarray(g.da.values)[0], None if local else g.crs, g.path, g.nodata)


def ingest_geotiff(
    band_files: Mapping[str, PathType | Sequence[PathType]] | None = None,
    *,
    times: Sequence[Any] | Mapping[str, Sequence[Any]],
    scl: PathType | Sequence[PathType] | None = None,
    stack: PathType | Sequence[PathType] | None = None,
    stack_bands: Sequence[str] | None = None,
    labels: PathType | None = None,
    code_table: PathType | Mapping[int, str] | None = None,
    label_var: str = "CT",
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    void_codes: Sequence[int] | None = None,
    bands: Sequence[str] | None = L2A_BANDS,
    scale_factor: float | None = None,
    boa_add_offset: float | None = None,
    require_scl: bool = True,
    local_grid: bool = False,
) -> xr.Dataset:
    """Build a cube from GeoTIFF band files or multi-band stacks (read with rioxarray).

    :param band_files: ``{"B02": path_or_paths, ...}``: per band either one file with one layer per
        date, or one single-layer file per date (in date order).
    :param times: the acquisition dates, one per layer (one per stack file); or ``{band or "SCL": dates}``
        when files differ.
    :param scl: the SCL file(s), laid out like the bands.
    :param stack: multi-band GeoTIFF(s), one per date (in date order), each holding several bands (and
        possibly SCL) as layers; may be combined with ``band_files`` for other bands.
    :param stack_bands: the band (or ``SCL``) of each stack layer, in layer order; default: the files' band
        descriptions (``B02``, ``B2``, a STAC common name such as ``blue``, or ``SCL``). A stack whose order
        neither gives is an error.
    :param labels: a single-layer GeoTIFF of integer class codes on the finest band grid; its nodata value
        is a void code by default (see ``void_codes`` in :func:`ingest_netcdf`).
    :param scale_factor: DN scale; default the GDAL scale of the files when they set one, else 1e-4 (L2A).
    :param boa_add_offset: BOA offset in DN (e.g. -1000); default from the files' metadata (GDAL offset,
        ``BOA_ADD_OFFSET`` or ``PROCESSING_BASELINE`` tag). GeoTIFFs without any are an error naming the
        option (CLI ``--boa-offset``), never a silent 0.
    :param local_grid: files without georeference (no geotransform) are placed on a local pixel grid
        (10 m pixels, x from 0 at the left edge, y from 0 at the bottom edge, decreasing from the top row;
        no CRS) instead of being an error; every file must then lack a georeference and have the same size.
        The cube's attributes say ``grid = "local"``.
    Other parameters as in :func:`ingest_netcdf`.
    :raises IngestError: also, before any pixel is read, for files without georeference (unless
        ``local_grid``), naming them and the fix, and for stacks whose band order is unknown.
    """
    def times_for(name: str):
        if isinstance(times, Mapping):
            if name not in times:
                raise IngestError(f"no dates given for {name}")
            return times[name]
        return times

    if not band_files and stack is None:
        raise IngestError("no band files given: pass band_files= (CLI NAME=PATH inputs) or stack= (a multi-band file)")
    if stack_bands is not None and stack is None:
        raise IngestError("stack_bands (--stack-bands) names the layers of a stack, but no stack file is given")
    class_names = _check_class_names(class_names, classes)
    if class_names is not None and labels is None:
        raise IngestError("class_names given but no label file (labels=)")
    if void_codes is not None and labels is None:
        raise IngestError("void_codes (--void-codes) given but no label file (labels=)")
    files: list[tuple[str, list[PathType], int | None]] = [
        (str(b), _file_list(f), None) for b, f in (band_files or {}).items()
    ]
    if scl is not None:
        files.append(("SCL", _file_list(scl), None))
    stacks = _file_list(stack) if stack is not None else []
    every = [f for _, fs, _ in files for f in fs] + stacks + ([labels] if labels is not None else [])
    opened = {str(f): _open_geotiff(f) for f in dict.fromkeys(str(f) for f in every)}  # lazy: no pixel read
    problems = _georeference_problems(list(opened.values()), local_grid)
    if problems:
        raise IngestError(_problems_message(problems))
    local = bool(local_grid and opened and not any(g.georeferenced for g in opened.values()))
    if stacks:
        names = _stack_names([opened[str(f)] for f in stacks], stack_bands)
        files += [(name, stacks, i) for i, name in enumerate(names)]
    lab = _label_geotiff(opened[str(labels)], local) if labels is not None else None

    layers = [_geotiff_layer(name, fs, times_for(name), opened, local, index)
              for name, fs, index in progress(files, desc="reading bands")]
    for layer in layers:
        if layer.name == "SCL":
            continue
        if scale_factor is not None:
            layer.attrs["scale_factor"] = float(scale_factor)
        else:
            layer.attrs.setdefault("scale_factor", L2A_SCALE_FACTOR)
    attrs = {}
    if local and layers:
        r, h, w = LOCAL_GRID_RESOLUTION, len(layers[0].y), len(layers[0].x)
        attrs = {
            "grid": "local",
            "grid_description": (
                f"no georeference in the source GeoTIFFs; local pixel grid (local_grid=True): {r:g} m pixels assumed, "
                f"origin 0 at the lower-left corner, pixel centres x = {r / 2:g} .. {(w - 0.5) * r:g} m and "
                f"y = {(h - 0.5) * r:g} .. {r / 2:g} m (decreasing from the top row); no CRS"
            ),
        }
    return _assemble(
        layers, labels=lab, code_table=_table(code_table, label_var), classes=classes, bands=bands,
        boa_add_offset=boa_add_offset, require_scl=require_scl, attrs=attrs, class_names=class_names,
        void_codes=void_codes, table_source=_table_source(code_table), offset_required=True,
    )
