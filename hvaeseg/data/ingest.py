"""Ingestion of real Sentinel-2 L2A products into a cube (``docs/conventions.md``).

Two layouts are read:

* **NetCDF** laid out like the WorldCereal training sites (``../shared/data/worldcereal-be-*``): one file
  per resolution with one variable per band (``B02`` .. ``B12``, ``B8A``, plus ``SCL`` in the 20 m file),
  dims ``(timestamp, y, x)``, uint16 DN with ``scale_factor``; a label file with integer class codes
  (``CT`` crop type, ``LC`` land cover) on the 10 m grid; a CSV code table (``wc2eurocrops_map.csv``)
  that names the codes. See :func:`ingest_netcdf`.
* **GeoTIFF** band files read with ``rioxarray`` (``pip install hvaeseg[real]``): one file per band with
  one layer per date, or one single-layer file per band and date. See :func:`ingest_geotiff`. A GeoTIFF
  without georeference (no geotransform: rasterio reads the identity transform and warns
  ``NotGeoreferencedWarning``) is an error naming the files, unless ``local_grid=True`` (CLI
  ``--local-grid``) puts them on a local pixel grid: 10 m pixels, x from 0 at the left edge, y from 0 at
  the bottom edge and decreasing from the top (north-up layout), no CRS; the cube records
  ``grid = "local"``.

Resampling onto the 10 m grid (the grid of the finest band file), by variable:

* **reflectance**: bilinear interpolation in the source pixel grid with pixel *centres* aligned: the
  target pixel centre ``c`` sits at fractional source index ``u = (c - c0) / step`` where ``c0`` is the
  first source pixel centre. For 20 m -> 10 m this puts every 20 m centre half-way between two 10 m
  centres (10 m index ``2j + 0.5``), i.e. ``u = i/2 - 0.25``; targets beyond the outermost source centres
  (a quarter source pixel at each edge) take the edge value. No-data source pixels (DN 0) get weight
  zero and the weights are renormalised; a target whose four neighbours are all no data is no data.
  The result is rounded to the nearest DN and kept >= 1 where data exist. A constant field stays
  exactly constant and a linear ramp stays linear.
* **SCL** (and any class-like layer): nearest, i.e. the source pixel that *contains* the target pixel
  centre (for integer resolution ratios there is never a tie).
* Bands already on the target grid are copied unchanged.

``valid`` = SCL code in :data:`hvaeseg.data.schema.CLEAR_SCL` and no band is no data (DN 0).
The BOA offset comes from the explicit ``boa_add_offset`` (DN, as in the product metadata, e.g. -1000),
else from the metadata (``BOA_ADD_OFFSET`` attribute, a CF ``add_offset`` on the band variables, or a
``PROCESSING_BASELINE`` >= 04.00 meaning -1000), else 0 (harmonised or pre-04.00 products, like the
WorldCereal sample); the cube's ``add_offset = boa_add_offset * scale_factor`` and the attribute
``boa_offset_source`` says where it came from. DN are stored unchanged.

Labels: the class codes present in the label map that the code table names (code 0 excluded) become
ids ``0 .. K-1`` in increasing code order (or in the order of an explicit ``classes`` list, to give
several cubes the same ids); code 0 and codes absent from the table are void (-1). The labels carry
``flag_values``/``flag_meanings``/``flag_colors`` and ``source_codes`` (the original code of each id).
Class names come from the code table (``code_<c>`` without one), or from an explicit ``class_names`` list,
one single-word name per class id (checked before any pixel is read: same count, non-empty, unique).

Every check runs before anything is written; a bad input raises :class:`IngestError` naming the files
and what differs: CRS or footprints that differ between files, timestamps that differ between the
files of different resolutions, missing bands, a label grid that does not match the 10 m grid.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg.data.bands import L2A_BANDS, band_coords, check_band_names
from hvaeseg.data.schema import SCHEMA_VERSION, class_attrs, valid_from_scl, validate_cube

__all__ = [
    "IngestError",
    "ingest",
    "ingest_netcdf",
    "ingest_geotiff",
    "discover_netcdf",
    "read_code_table",
    "resample_to_grid",
]

#: default scale of L2A DN when a product does not say
L2A_SCALE_FACTOR = 1e-4
#: the BOA offset (DN) of processing baseline >= 04.00
BASELINE_04_BOA_OFFSET = -1000.0
#: pixel size (metres) of the local grid given to GeoTIFFs without georeference (``local_grid=True``)
LOCAL_GRID_RESOLUTION = 10.0

_TIME_DIMS = ("time", "timestamp", "t", "date")
_SCL_NAMES = ("SCL", "scl", "SCENE_CLASSIFICATION")
_BAND_RE = re.compile(r"^B(0[1-9]|1[0-2]|8A)$")
# tolerance (metres) for comparing pixel centres, bounds and resolutions
_TOL = 1e-3


class IngestError(ValueError):
    """The input products cannot be made into one cube; the message says which files and what differs."""


PathType = str | PathLike


# --------------------------------------------------------------------------------------------------
# one raster variable from one file
# --------------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """One variable (band or SCL) of one source: a lazily read ``(time, y, x)`` array and its grid."""

    name: str
    source: str
    data: Any  # (time, y, x) array-like (xarray variable or numpy), read on demand
    times: np.ndarray  # datetime64[ns]
    y: np.ndarray
    x: np.ndarray
    crs: str | None
    attrs: dict = field(default_factory=dict)

    @property
    def resolution(self) -> float:
        return float(abs(self.x[1] - self.x[0])) if len(self.x) > 1 else float("nan")

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return _bounds(self.y, self.x)

    def values(self, t: slice | None = None) -> np.ndarray:
        d = self.data if t is None else self.data[t]
        return np.asarray(d.values if hasattr(d, "values") else d)


def _bounds(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a grid of pixel centres (half a pixel beyond the outer centres)."""
    ry = abs(float(y[1] - y[0])) if len(y) > 1 else 0.0
    rx = abs(float(x[1] - x[0])) if len(x) > 1 else 0.0
    return (float(x.min()) - rx / 2, float(y.min()) - ry / 2, float(x.max()) + rx / 2, float(y.max()) + ry / 2)


def _fmt_bounds(b: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in b) + ")"


def _normalise_crs(*candidates: Any) -> str | None:
    """``"EPSG:nnnn"`` from the first candidate that names an EPSG code, else the first non-empty string."""
    first = None
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, (int, np.integer)):
            return f"EPSG:{int(c)}"
        s = str(c).strip()
        if not s:
            continue
        first = first or s
        if s.isdigit():
            return f"EPSG:{s}"
        m = re.search(r"(?:epsg|EPSG)[:=](\d+)", s)
        if m:
            return f"EPSG:{m.group(1)}"
        m = re.findall(r'AUTHORITY\["EPSG","(\d+)"\]', s)
        if m:  # WKT: the last authority is the projected CRS itself
            return f"EPSG:{m[-1]}"
    return first


def _time_dim(da: xr.DataArray, source: str) -> str:
    for d in da.dims:
        if d in _TIME_DIMS:
            return str(d)
    others = [d for d in da.dims if d not in ("y", "x")]
    if len(others) == 1:
        return str(others[0])
    raise IngestError(f"{source}: variable {da.name!r} has dims {da.dims}; expected (time, y, x)")


def _check_regular(coord: np.ndarray, name: str, source: str) -> None:
    if len(coord) < 2:
        raise IngestError(f"{source}: needs at least 2 pixels along {name!r}, got {len(coord)}")
    d = np.diff(coord)
    if not np.allclose(d, d[0], rtol=0, atol=_TOL):
        raise IngestError(f"{source}: the {name!r} coordinate is not evenly spaced; expected a regular grid")


def _open_netcdf(path: PathType) -> xr.Dataset:
    try:
        return xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False, decode_times=True)
    except FileNotFoundError:
        raise
    except ImportError as err:  # pragma: no cover - h5netcdf is a dependency of the 'real' extra
        raise ImportError("reading NetCDF products needs h5netcdf: pip install 'hvaeseg[real]'") from err
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise IngestError(f"{path}: cannot be read as NetCDF ({type(err).__name__}: {err})") from err


def _netcdf_crs(ds: xr.Dataset, var: xr.DataArray | None = None) -> str | None:
    cands: list[Any] = []
    for attrs in ([var.attrs] if var is not None else []) + [ds.attrs]:
        cands += [attrs.get("epsg"), attrs.get("crs")]
    for name in ("spatial_ref", "crs"):
        if name in ds.variables:
            a = ds[name].attrs
            cands += [a.get("crs_wkt"), a.get("spatial_ref"), a.get("epsg_code")]
    return _normalise_crs(*cands)


def _netcdf_layers(path: PathType) -> list[_Layer]:
    ds = _open_netcdf(path)
    src = str(path)
    layers = []
    for name, da in ds.data_vars.items():
        name = str(name)
        if not (_BAND_RE.match(name) or name in _SCL_NAMES):
            continue
        if "y" not in da.dims or "x" not in da.dims or da.ndim != 3:
            raise IngestError(f"{src}: variable {name!r} has dims {da.dims}; expected (time, y, x)")
        tdim = _time_dim(da, src)
        da = da.transpose(tdim, "y", "x")
        y, x = np.asarray(ds["y"].values, dtype=np.float64), np.asarray(ds["x"].values, dtype=np.float64)
        _check_regular(y, "y", src)
        _check_regular(x, "x", src)
        times = np.asarray(ds[tdim].values)
        if not np.issubdtype(times.dtype, np.datetime64):
            raise IngestError(f"{src}: the time coordinate {tdim!r} of {name!r} is not a date (dtype {times.dtype})")
        attrs = {**ds.attrs, **da.attrs}
        layers.append(
            _Layer(
                name="SCL" if name in _SCL_NAMES else name, source=src, data=da.variable,
                times=times.astype("datetime64[ns]"), y=y, x=x, crs=_netcdf_crs(ds, da), attrs=attrs,
            )
        )
    return layers


# --------------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------------


def _fractional_index(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Position of each ``dst`` pixel centre in source pixel units (0 = first source centre)."""
    return (np.asarray(dst, dtype=np.float64) - float(src[0])) / float(src[1] - src[0])


def _linear_weights(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: indices ``i0``, ``i1`` and the weight ``f`` of ``i1``."""
    n = len(src)
    u = np.clip(_fractional_index(src, dst), 0.0, n - 1.0)
    i0 = np.minimum(np.floor(u).astype(np.int64), max(n - 2, 0))
    f = u - i0
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, f


def _nearest_index(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Index of the source pixel containing each ``dst`` centre (edges clamped)."""
    return np.clip(np.floor(_fractional_index(src, dst) + 0.5).astype(np.int64), 0, len(src) - 1)


def _same_coords(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=_TOL)


def _resample_array(
    values: np.ndarray, src_y, src_x, dst_y, dst_x, method: str, nodata: float | None
) -> np.ndarray:
    """Resample ``values (..., y, x)`` from the source to the target pixel centres (see module doc)."""
    if _same_coords(src_y, dst_y) and _same_coords(src_x, dst_x):
        return values.copy()
    if method == "nearest":
        iy, ix = _nearest_index(src_y, dst_y), _nearest_index(src_x, dst_x)
        return values[..., iy[:, None], ix[None, :]]
    if method != "bilinear":
        raise ValueError(f"expected method 'bilinear' or 'nearest', got {method!r}")
    y0, y1, fy = _linear_weights(src_y, dst_y)
    x0, x1, fx = _linear_weights(src_x, dst_x)
    v = values.astype(np.float64)
    if nodata is None:
        m = np.isfinite(v)
    elif isinstance(nodata, float) and np.isnan(nodata):
        m = ~np.isnan(v)
    else:
        m = v != nodata
    v = np.where(m, v, 0.0)
    wm = m.astype(np.float64)
    num = np.zeros(values.shape[:-2] + (len(dst_y), len(dst_x)))
    den = np.zeros_like(num)
    for iy, wy in ((y0, 1.0 - fy), (y1, fy)):
        for ix, wx in ((x0, 1.0 - fx), (x1, fx)):
            w = wy[:, None] * wx[None, :]
            num += w * v[..., iy[:, None], ix[None, :]]
            den += w * wm[..., iy[:, None], ix[None, :]]
    has = den > 0
    out = np.divide(num, den, out=np.zeros_like(num), where=has)
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        lo = 1 if nodata == 0 else info.min
        out = np.where(has, np.clip(np.rint(out), lo, info.max), nodata if nodata is not None else 0)
        return out.astype(values.dtype)
    fill = np.nan if nodata is None else nodata
    return np.where(has, out, fill).astype(values.dtype)


def resample_to_grid(
    da: xr.DataArray, y: np.ndarray, x: np.ndarray, method: str = "bilinear", nodata: float | None = 0
) -> xr.DataArray:
    """Resample ``da`` (dims ``(..., y, x)``, pixel-centre coordinates) onto the pixel centres ``y``, ``x``.

    :param method: ``"bilinear"`` for reflectance (pixel centres aligned, no-data excluded and the weights
        renormalised, integer data rounded) or ``"nearest"`` (the source pixel containing the target
        centre) for class-like data such as SCL.
    :param nodata: the no-data value (DN 0 for L2A; ``None`` for float data where NaN is no data).
    """
    if tuple(da.dims[-2:]) != ("y", "x"):
        raise ValueError(f"expected dims (..., y, x), got {da.dims}")
    sy, sx = np.asarray(da["y"].values, np.float64), np.asarray(da["x"].values, np.float64)
    out = _resample_array(
        np.asarray(da.values), sy, sx, np.asarray(y, np.float64), np.asarray(x, np.float64), method, nodata
    )
    coords = {k: v for k, v in da.coords.items() if "y" not in v.dims and "x" not in v.dims}
    return xr.DataArray(
        out, dims=da.dims, coords={**coords, "y": np.asarray(y), "x": np.asarray(x)}, attrs=da.attrs, name=da.name
    )


# --------------------------------------------------------------------------------------------------
# code table and labels
# --------------------------------------------------------------------------------------------------

_CODE_COLUMNS = {"CT": ("croptype", "ct", "code"), "LC": ("landcover", "lc", "code")}


def read_code_table(
    path: PathType, *, code_column: str | None = None, name_column: str = "name", label_var: str = "CT"
) -> dict[int, str]:
    """``{code: name}`` from a CSV code table such as ``wc2eurocrops_map.csv`` (columns ``name,croptype,...``).

    :param code_column: the column of integer codes; default: the column matching ``label_var``
        (``CT`` -> ``croptype``, ``LC`` -> ``landcover``), else ``code``.
    :raises IngestError: missing columns, non-integer codes, or one code with two names.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise IngestError(f"{path}: the code table is empty")
    cols = {c.lower(): c for c in rows[0]}
    if code_column is None:
        for cand in _CODE_COLUMNS.get(label_var.upper(), ()) + (label_var.lower(), "code"):
            if cand in cols:
                code_column = cols[cand]
                break
        else:
            raise IngestError(f"{path}: no code column for {label_var!r} among {list(rows[0])}; pass code_column=")
    if code_column not in rows[0] or name_column not in rows[0]:
        raise IngestError(f"{path}: expected columns {code_column!r} and {name_column!r}, found {list(rows[0])}")
    table: dict[int, str] = {}
    for i, r in enumerate(rows, start=2):
        try:
            code = int(str(r[code_column]).strip())
        except ValueError:
            raise IngestError(f"{path}:{i}: code {r[code_column]!r} is not an integer") from None
        name = str(r[name_column]).strip()
        if code in table and table[code] != name:
            raise IngestError(f"{path}:{i}: code {code} is named twice ({table[code]!r} and {name!r})")
        table[code] = name
    return table


def _word(name: str) -> str:
    w = re.sub(r"[\s,;]+", "_", name.strip()).strip("_")
    return w or "unnamed"


def _check_class_names(class_names: Sequence[str] | None, classes: Sequence[int] | None) -> list[str] | None:
    """``class_names`` stripped and checked (non-empty single words, unique, one per class code)."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise IngestError(
            "class_names (--class-names): expected a list of names (e.g. ['cloud_shadow', 'clear', 'cloud']), "
            f"got the string {class_names!r}"
        )
    names = [str(n).strip() for n in class_names]
    problems = []
    if not names:
        problems.append("no names given")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        problems.append(f"name {', '.join(str(i + 1) for i in empty)} of {len(names)} is empty")
    spaced = [n for n in names if n and re.search(r"\s", n)]
    if spaced:
        problems.append(f"names must be single words (flag_meanings is space-separated), got {spaced}; use '_'")
    dup = sorted({n for n in names if n and names.count(n) > 1})
    if dup:
        problems.append(f"names repeat: {', '.join(dup)}")
    if classes is not None and len(names) != len(list(classes)):
        problems.append(
            f"{len(names)} names for {len(list(classes))} class codes {list(classes)}; "
            "give one name per code, in the same order"
        )
    if problems:
        raise IngestError(f"class_names (--class-names) {names}: " + "; ".join(problems))
    return names


def _map_labels(
    codes: np.ndarray,
    table: Mapping[int, str] | None,
    classes: Sequence[int] | None,
    source: str,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, dict]:
    codes = np.asarray(codes).astype(np.int64)
    present = [int(c) for c in np.unique(codes) if c != 0]
    if classes is None:
        keep = [c for c in present if table is None or c in table]
    else:
        keep = [int(c) for c in classes]
        if len(set(keep)) != len(keep):
            raise IngestError(f"classes repeat a code: {keep}")
        if 0 in keep:
            raise IngestError("code 0 means 'no data' and cannot be a class")
    if not keep:
        raise IngestError(f"{source}: no pixel has a class code named by the code table (codes present: {present})")
    names: list[str] = []
    if class_names is not None:
        if len(class_names) != len(keep):
            raise IngestError(
                f"class_names (--class-names): {len(class_names)} names {list(class_names)} for the {len(keep)} "
                f"classes of {source} (codes {keep}); give one name per class, and the codes in id order with "
                "classes= (--classes)"
            )
        names = list(class_names)
    else:
        for c in keep:
            n = _word(table[c]) if table is not None and c in table else f"code_{c}"
            names.append(n if n not in names else f"{n}_{c}")
    lut_codes = np.array(keep, dtype=np.int64)
    order = np.argsort(lut_codes)
    pos = np.searchsorted(lut_codes[order], codes)
    pos = np.clip(pos, 0, len(keep) - 1)
    hit = lut_codes[order][pos] == codes
    ids = np.where(hit, order[pos], -1).astype(np.int16)
    attrs = {**class_attrs(names), "source_codes": keep, "long_name": "class id (-1 = void)"}
    return ids, attrs


# --------------------------------------------------------------------------------------------------
# assembling a cube from layers
# --------------------------------------------------------------------------------------------------


def _boa_offset(layers: Sequence[_Layer], explicit: float | None, scale: float) -> tuple[float, str]:
    """BOA offset in DN and where it came from."""
    if explicit is not None:
        return float(explicit), "option"
    for layer in layers:
        a = {str(k).lower(): v for k, v in layer.attrs.items()}
        if "boa_add_offset" in a:
            return float(np.asarray(a["boa_add_offset"]).ravel()[0]), f"metadata BOA_ADD_OFFSET ({layer.source})"
    for layer in layers:
        a = {str(k).lower(): v for k, v in layer.attrs.items()}
        if "add_offset" in a:
            return float(a["add_offset"]) / scale, f"metadata add_offset ({layer.source})"
    for layer in layers:
        a = {str(k).lower(): v for k, v in layer.attrs.items()}
        if "processing_baseline" in a:
            try:
                baseline = float(str(a["processing_baseline"]).strip())
            except ValueError:
                continue
            return (BASELINE_04_BOA_OFFSET if baseline >= 4.0 else 0.0), f"metadata PROCESSING_BASELINE={baseline:g}"
    return 0.0, "default: no BOA_ADD_OFFSET, add_offset or PROCESSING_BASELINE in the metadata (harmonised product)"


def _resolution_name(layer: _Layer) -> str:
    r = layer.resolution
    return f"{r:g} m file {layer.source}" if np.isfinite(r) else f"file {layer.source}"


def _check_layers(layers: Sequence[_Layer], bands: Sequence[str], require_scl: bool) -> list[str]:
    """Every cross-file problem, as message lines (empty when the layers fit together)."""
    problems = []
    names = [layer.name for layer in layers]
    sources = sorted({layer.source for layer in layers})
    missing = [b for b in bands if b not in names]
    if missing:
        found = sorted({n for n in names if n != "SCL"})
        problems.append(
            f"missing bands {', '.join(missing)}: not found in {', '.join(sources)} "
            f"(found {', '.join(found) or 'none'})"
        )
    if require_scl and "SCL" not in names:
        problems.append(
            f"missing the SCL layer (scene classification) needed for `valid`: not found in {', '.join(sources)}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    for n in dup:
        problems.append(f"band {n} is given more than once: {', '.join(l.source for l in layers if l.name == n)}")
    if not layers:
        return problems
    # per source file: CRS, footprint, times (all layers of one file share them)
    per_file: dict[str, _Layer] = {}
    for layer in layers:
        per_file.setdefault(layer.source, layer)
    files = list(per_file.values())
    crs = {f.source: f.crs for f in files}
    if len({c for c in crs.values()}) > 1:
        problems.append("the files have different CRS: " + "; ".join(f"{s}: {c}" for s, c in crs.items()))
    ref = min(files, key=lambda f: f.resolution)
    for f in files:
        if f is ref:
            continue
        if not np.allclose(f.bounds, ref.bounds, rtol=0, atol=_TOL):
            problems.append(
                f"the footprints differ: {_resolution_name(f)} covers {_fmt_bounds(f.bounds)} but "
                f"{_resolution_name(ref)} covers {_fmt_bounds(ref.bounds)} (left, bottom, right, top)"
            )
    for layer in layers:
        f = per_file[layer.source]
        if layer is not f and (not np.array_equal(layer.times, f.times)):
            problems.append(f"{layer.source}: {layer.name} has other timestamps than the rest of the file")
    for f in files:
        if f is ref or np.array_equal(f.times, ref.times):
            continue
        a, b = set(ref.times.tolist()), set(f.times.tolist())
        only_ref, only_f = sorted(a - b), sorted(b - a)
        detail = []
        if len(f.times) != len(ref.times):
            detail.append(f"{len(ref.times)} vs {len(f.times)} dates")
        if only_ref:
            detail.append(f"{len(only_ref)} only in the first (e.g. {np.datetime64(only_ref[0], 'ns')})")
        if only_f:
            detail.append(f"{len(only_f)} only in the second (e.g. {np.datetime64(only_f[0], 'ns')})")
        if not detail:
            detail.append("same dates in another order")
        problems.append(
            f"the timestamps differ between the {_resolution_name(ref)} and the {_resolution_name(f)}: "
            + ", ".join(detail)
        )
    return problems


def _assemble(
    layers: Sequence[_Layer],
    *,
    labels: tuple[np.ndarray, np.ndarray, np.ndarray, str | None, str] | None,
    code_table: Mapping[int, str] | None,
    classes: Sequence[int] | None,
    bands: Sequence[str] | None,
    boa_add_offset: float | None,
    require_scl: bool,
    attrs: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
) -> xr.Dataset:
    if bands is None:
        present = {layer.name for layer in layers if layer.name != "SCL"}
        bands = [b for b in L2A_BANDS if b in present] + sorted(present - set(L2A_BANDS))
        if not bands:
            raise IngestError(
                "no Sentinel-2 band variables (B02, B03, ...) found in " + ", ".join(sorted({l.source for l in layers}))
            )
    bands = list(check_band_names(bands))
    problems = _check_layers(layers, bands, require_scl)
    band_layers = {layer.name: layer for layer in layers}
    if not problems:
        ref = min({layer.source: layer for layer in layers}.values(), key=lambda f: f.resolution)
    if labels is not None and not problems:
        ly, lx, _, lcrs, lsrc = labels
        if not (_same_coords(ly, ref.y) and _same_coords(lx, ref.x)):
            problems.append(
                f"the label grid does not match: {lsrc} is {len(ly)}x{len(lx)} "
                f"covering {_fmt_bounds(_bounds(ly, lx))}, "
                f"the {ref.resolution:g} m grid of {ref.source} is {len(ref.y)}x{len(ref.x)} covering "
                f"{_fmt_bounds(ref.bounds)}; labels must be on the same pixel centres"
            )
        if lcrs is not None and ref.crs is not None and lcrs != ref.crs:
            problems.append(f"the label file {lsrc} has CRS {lcrs} but the bands {ref.crs}")
    if problems:
        raise IngestError("cannot ingest these products:\n" + "\n".join(f"  - {p}" for p in problems))

    scales = {float(np.asarray(band_layers[b].attrs.get("scale_factor", L2A_SCALE_FACTOR))) for b in bands}
    if len(scales) > 1:
        raise IngestError(f"the bands have different scale_factor {sorted(scales)}; expected one DN scale")
    scale = scales.pop()
    offset_dn, offset_source = _boa_offset([band_layers[b] for b in bands], boa_add_offset, scale)

    times = ref.times
    order = np.argsort(times, kind="stable")
    if (np.diff(times[order]) == np.timedelta64(0)).any():
        raise IngestError(f"{ref.source}: duplicate timestamps; expected one acquisition per date")
    Y, X = ref.y, ref.x
    refl = np.empty((len(times), len(bands), len(Y), len(X)), dtype=np.uint16)
    methods = {}
    for i, b in enumerate(bands):
        layer = band_layers[b]
        v = layer.values()
        if not np.issubdtype(v.dtype, np.integer):
            raise IngestError(f"{layer.source}: band {b} has dtype {v.dtype}; expected integer DN")
        refl[:, i] = _resample_array(v, layer.y, layer.x, Y, X, "bilinear", 0)[order]
        methods[b] = "copied (native grid)" if _same_coords(layer.y, Y) and _same_coords(layer.x, X) else (
            f"bilinear from {layer.resolution:g} m, pixel centres aligned, no-data excluded"
        )
    data_vars: dict[str, Any] = {
        "reflectance": (
            ("time", "band", "y", "x"), refl,
            {"scale_factor": scale, "add_offset": float(offset_dn * scale), "units": "1",
             "long_name": "surface reflectance (DN)", "resampling": "; ".join(f"{b}: {m}" for b, m in methods.items())},
        )
    }
    if "SCL" in band_layers:
        s = band_layers["SCL"]
        scl = _resample_array(s.values(), s.y, s.x, Y, X, "nearest", None)[order].astype(np.uint8)
        data_vars["scl"] = (("time", "y", "x"), scl, {
            "long_name": "scene classification (SCL)",
            "resampling": f"nearest from {s.resolution:g} m (containing pixel)",
        })
        valid = valid_from_scl(scl, refl)
    else:
        valid = (refl != 0).all(axis=1)
    data_vars["valid"] = (("time", "y", "x"), valid, {"long_name": "observed and clear"})
    if labels is not None:
        ids, lattrs = _map_labels(labels[2], code_table, classes, labels[4], class_names)
        data_vars["labels"] = (("y", "x"), ids, lattrs)
    crs = ref.crs
    ds = xr.Dataset(
        data_vars,
        coords={"time": times[order].astype("datetime64[ns]"), **band_coords(bands), "y": Y, "x": X},
        attrs={
            **({"crs": crs} if crs else {}),
            "hvaeseg_schema_version": SCHEMA_VERSION,
            "boa_add_offset": float(offset_dn),
            "boa_offset_source": offset_source,
            "sources": [Path(s).name for s in sorted({layer.source for layer in layers})]
            + ([Path(labels[4]).name] if labels is not None else []),
            **dict(attrs),
        },
    )
    validate_cube(ds)
    return ds


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------


def _read_label_netcdf(path: PathType, label_var: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None, str]:
    ds = _open_netcdf(path)
    if label_var not in ds.data_vars:
        raise IngestError(f"{path}: no label variable {label_var!r}; found {list(ds.data_vars)}")
    da = ds[label_var]
    if set(da.dims) != {"y", "x"}:
        raise IngestError(f"{path}: label variable {label_var!r} has dims {da.dims}; expected (y, x)")
    da = da.transpose("y", "x")
    return (
        np.asarray(ds["y"].values, np.float64), np.asarray(ds["x"].values, np.float64), np.asarray(da.values),
        _netcdf_crs(ds, da), str(path),
    )


def _table(code_table: PathType | Mapping[int, str] | None, label_var: str) -> Mapping[int, str] | None:
    if code_table is None or isinstance(code_table, Mapping):
        return code_table
    return read_code_table(code_table, label_var=label_var)


def ingest_netcdf(
    *paths: PathType,
    labels: PathType | None = None,
    label_var: str = "CT",
    code_table: PathType | Mapping[int, str] | None = None,
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    bands: Sequence[str] | None = L2A_BANDS,
    boa_add_offset: float | None = None,
    require_scl: bool = True,
) -> xr.Dataset:
    """Build a cube from NetCDF band files (one per resolution) and an optional label file.

    :param paths: the band files, e.g. the ``S2_L2A_10m_*.nc`` and ``S2_L2A_20m_*.nc`` of a WorldCereal
        site (any order; the finest grid is the target).
    :param labels: label file with an integer code variable on the 10 m grid (``OUTPUT_*.nc``).
    :param label_var: the label variable (``CT`` crop type, ``LC`` land cover).
    :param code_table: CSV (``wc2eurocrops_map.csv``) or ``{code: name}``; codes it lacks become void.
    :param classes: explicit class codes in id order (same ids across cubes); default: codes present.
    :param class_names: one name per class id (single words, unique), overriding the code table's names;
        with ``classes`` the same count, else one per code kept (in increasing code order).
    :param bands: bands that must be present, in cube order (default the 10 L2A bands); ``None`` takes
        whatever bands the files hold.
    :param boa_add_offset: BOA offset in DN (e.g. -1000); default from metadata, else 0.
    :param require_scl: raise when no SCL layer is found (else ``valid`` is only "no band is DN 0").
    :returns: the cube (in memory), already validated.
    :raises IngestError: for inputs that do not fit together (see the module doc).
    """
    if not paths:
        raise IngestError("no band files given")
    class_names = _check_class_names(class_names, classes)
    if class_names is not None and labels is None:
        raise IngestError("class_names given but no label file (labels=)")
    layers = [layer for p in paths for layer in _netcdf_layers(p)]
    lab = _read_label_netcdf(labels, label_var) if labels is not None else None
    site = {}
    try:
        with _open_netcdf(paths[0]) as first:
            site = {k: str(first.attrs[k]) for k in ("location_id", "tile") if k in first.attrs}
    except IngestError:
        pass
    return _assemble(
        layers, labels=lab, code_table=_table(code_table, label_var), classes=classes, bands=bands,
        boa_add_offset=boa_add_offset, require_scl=require_scl,
        attrs={**site, "label_variable": label_var} if lab else site, class_names=class_names,
    )


def discover_netcdf(directory: PathType) -> dict[str, Any]:
    """Find the pieces of a WorldCereal-style site folder.

    :returns: ``{"paths": [S2_*.nc ...], "labels": OUTPUT_*.nc or None, "code_table": *.csv or None}``.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a folder")
    ncs = sorted(d.glob("*.nc"))
    lab = [p for p in ncs if p.name.upper().startswith("OUTPUT")]
    bands = [p for p in ncs if p not in lab]
    csvs = sorted(d.glob("*.csv"))
    if not bands:
        raise IngestError(f"{d}: no band NetCDF files (*.nc other than OUTPUT_*.nc)")
    if len(lab) > 1:
        raise IngestError(f"{d}: several label files {[p.name for p in lab]}; pass labels= explicitly")
    if len(csvs) > 1:
        raise IngestError(f"{d}: several code tables {[p.name for p in csvs]}; pass code_table= explicitly")
    return {"paths": bands, "labels": lab[0] if lab else None, "code_table": csvs[0] if csvs else None}


def _rioxarray():
    try:
        import rioxarray  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "reading GeoTIFF band files needs rioxarray (and rasterio): pip install 'hvaeseg[real]'"
        ) from err
    return rioxarray


def _file_list(files: PathType | Sequence[PathType]) -> list[PathType]:
    return [files] if isinstance(files, (str, PathLike)) else list(files)


@dataclass
class _GeoTiff:
    """One GeoTIFF opened lazily (no pixel read yet) and whether it carries a georeference."""

    path: str
    da: xr.DataArray
    georeferenced: bool
    crs: str | None


def _open_geotiff(path: PathType) -> _GeoTiff:
    rio = _rioxarray()
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        # a file without geotransform is reported below, with the fix, instead of this warning
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            da = rio.open_rasterio(path, masked=False)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001
            raise IngestError(f"{path}: cannot be read as GeoTIFF ({type(err).__name__}: {err})") from err
        # no geotransform (nor GCPs / RPCs): rasterio reports the identity transform (unit pixels, y = row index)
        georeferenced = not da.rio.transform().is_identity
    crs = _normalise_crs(da.rio.crs.to_string() if da.rio.crs is not None else None)
    return _GeoTiff(str(path), da, georeferenced, crs)


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
    name: str, files: Sequence[PathType], times: Sequence[Any], opened: Mapping[str, _GeoTiff], local: bool
) -> _Layer:
    times = np.asarray(times, dtype="datetime64[ns]")
    planes, y = [], None
    crs = x = None
    for f in files:
        g = opened[str(f)]
        da = g.da
        if local:
            fy, fx = _local_grid(da.sizes["y"], da.sizes["x"])
            fcrs = None
        else:
            fy, fx = np.asarray(da["y"].values, np.float64), np.asarray(da["x"].values, np.float64)
            fcrs = g.crs
        if y is None:
            y, x, crs = fy, fx, fcrs
        elif not (_same_coords(fy, y) and _same_coords(fx, x)) or fcrs != crs:
            raise IngestError(
                f"{name}: {f} is not on the grid of {files[0]} (every file of one band must share a grid)"
            )
        planes.append(np.asarray(da.values))
    src = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"
    data = np.concatenate(planes, axis=0)
    _check_regular(y, "y", src)
    _check_regular(x, "x", src)
    if data.shape[0] != len(times):
        raise IngestError(
            f"the timestamps differ: {name} has {data.shape[0]} layers in {src} but {len(times)} dates were given"
        )
    return _Layer(name=name, source=src, data=data, times=times, y=y, x=x, crs=crs, attrs={})


def ingest_geotiff(
    band_files: Mapping[str, PathType | Sequence[PathType]],
    *,
    times: Sequence[Any] | Mapping[str, Sequence[Any]],
    scl: PathType | Sequence[PathType] | None = None,
    labels: PathType | None = None,
    code_table: PathType | Mapping[int, str] | None = None,
    label_var: str = "CT",
    classes: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    bands: Sequence[str] | None = L2A_BANDS,
    scale_factor: float = L2A_SCALE_FACTOR,
    boa_add_offset: float | None = None,
    require_scl: bool = True,
    local_grid: bool = False,
) -> xr.Dataset:
    """Build a cube from GeoTIFF band files (read with rioxarray).

    :param band_files: ``{"B02": path_or_paths, ...}``: per band either one file with one layer per
        date, or one single-layer file per date (in date order).
    :param times: the acquisition dates, one per layer; or ``{band or "SCL": dates}`` when files differ.
    :param scl: the SCL file(s), laid out like the bands.
    :param labels: a single-layer GeoTIFF of integer class codes on the finest band grid.
    :param scale_factor: DN scale (GeoTIFFs rarely say; L2A is 1e-4).
    :param local_grid: files without georeference (no geotransform) are placed on a local pixel grid
        (10 m pixels, x from 0 at the left edge, y from 0 at the bottom edge, decreasing from the top row;
        no CRS) instead of being an error; every file must then lack a georeference and have the same size.
        The cube's attributes say ``grid = "local"``.
    Other parameters as in :func:`ingest_netcdf`.
    :raises IngestError: also, before any pixel is read, for files without georeference (unless
        ``local_grid``), naming them and the fix.
    """
    def times_for(name: str):
        if isinstance(times, Mapping):
            if name not in times:
                raise IngestError(f"no dates given for {name}")
            return times[name]
        return times

    class_names = _check_class_names(class_names, classes)
    if class_names is not None and labels is None:
        raise IngestError("class_names given but no label file (labels=)")
    files = [(str(b), _file_list(f)) for b, f in band_files.items()]
    if scl is not None:
        files.append(("SCL", _file_list(scl)))
    every = [f for _, fs in files for f in fs] + ([labels] if labels is not None else [])
    opened = {str(f): _open_geotiff(f) for f in dict.fromkeys(str(f) for f in every)}  # lazy: no pixel read
    problems = _georeference_problems(list(opened.values()), local_grid)
    if problems:
        raise IngestError("cannot ingest these products:\n" + "\n".join(f"  - {p}" for p in problems))
    local = bool(local_grid and opened and not any(g.georeferenced for g in opened.values()))

    layers = [_geotiff_layer(name, fs, times_for(name), opened, local) for name, fs in files]
    for layer in layers[: len(band_files)]:
        layer.attrs["scale_factor"] = scale_factor
    lab = None
    if labels is not None:
        g = opened[str(labels)]
        ly, lx = _local_grid(g.da.sizes["y"], g.da.sizes["x"]) if local else (
            np.asarray(g.da["y"].values, np.float64), np.asarray(g.da["x"].values, np.float64))
        lab = (ly, lx, np.asarray(g.da.values)[0], None if local else g.crs, str(labels))
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
    )


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
        (or ``format="geotiff"``) and ``band_files=`` / ``times=`` in ``options``.
    :param out: the store path or URL.
    :param chunks, codec, storage_options: as in :func:`hvaeseg.data.store.write_cube`.
    :param options: passed to :func:`ingest_netcdf` or :func:`ingest_geotiff`.
    :returns: the store path written.
    """
    from hvaeseg.data.store import write_cube

    if format not in ("auto", "netcdf", "geotiff"):
        raise ValueError(f"expected format 'auto', 'netcdf' or 'geotiff', got {format!r}")
    paths = [] if inputs is None else [inputs] if isinstance(inputs, (str, PathLike)) else list(inputs)
    if format == "geotiff" or (format == "auto" and "band_files" in options):
        if paths:
            raise ValueError("GeoTIFF ingestion takes band_files= (and times=), not input paths")
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
