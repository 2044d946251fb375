"""Ingestion of real Sentinel-2 L2A products into a cube (``docs/conventions.md``).

Two layouts are read:

* **NetCDF** laid out like the WorldCereal training sites (``../shared/data/worldcereal-be-*``): one file
  per resolution with one variable per band (``B02`` .. ``B12``, ``B8A``, plus ``SCL`` in the 20 m file),
  dims ``(timestamp, y, x)``, uint16 DN with ``scale_factor``; a label file with integer class codes
  (``CT`` crop type, ``LC`` land cover) on the 10 m grid; a CSV code table (``wc2eurocrops_map.csv``)
  that names the codes. See :func:`ingest_netcdf`.
* **GeoTIFF** files read with ``rioxarray`` (``pip install hvaeseg[real]``): one file per band with
  one layer per date, or one single-layer file per band and date (``band_files``, CLI ``NAME=PATH``); or
  multi-band *stacks*, one file per date holding every band as a layer (``stack``, CLI a bare ``PATH``),
  whose layer order comes from ``stack_bands`` (CLI ``--stack-bands``) or else from the file's band
  descriptions (``B02``, ``B2`` or a STAC common name such as ``blue``, ``nir08``, ``swir16``; ``SCL``);
  a stack whose order cannot be established is an error. See :func:`ingest_geotiff`. A GeoTIFF
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
The BOA offset comes from the explicit ``boa_add_offset`` (DN, as in the product metadata, e.g. -1000;
CLI ``--boa-offset``), else from the metadata (``BOA_ADD_OFFSET`` attribute or tag, a CF ``add_offset`` on
the band variables, the GDAL scale/offset of a GeoTIFF band, or a ``PROCESSING_BASELINE`` >= 04.00 meaning
-1000). Without any of these a NetCDF product is taken as harmonised (offset 0, like the WorldCereal sample),
while GeoTIFFs, which rarely carry product metadata, are an error naming ``--boa-offset``: the offset is never
silently 0 where nothing says so. The cube's ``add_offset = boa_add_offset * scale_factor`` and the
attribute ``boa_offset_source`` says where it came from. DN are stored unchanged.

Labels: ``void_codes`` (CLI ``--void-codes``) are the label codes that mean "no label"; by default code 0
and the label file's declared no-data value (``_FillValue`` / GeoTIFF nodata); an empty list
(``--void-codes none``) makes every code a possible class, 0 included. The class codes present in the
label map that the code table names (void codes excluded) become ids ``0 .. K-1`` in increasing code order
(or in the order of an explicit ``classes`` list, to give several cubes the same ids; a void code there is
an error, and so are classes of which no pixel occurs); void codes and codes absent from the table or from
``classes`` are void (-1). Label values must be integers (a float map with fractions is an error; NaN is
void) in one layer. The labels carry ``flag_values``/``flag_meanings``/``flag_colors``, ``source_codes``
(the original code of each id), ``void_codes``, ``void_description`` (which codes became void, with pixel
counts) and ``class_names_source``; the command line prints them (:func:`ingest_notes`).
Class names come from the code table (CSV with a header such as ``code,name``, or JSON
``{"code": "name"}``; see :func:`read_code_table`), else ``code_<c>`` (announced), or from an explicit
``class_names`` list, one single-word name per class id (checked before any pixel is read: same count,
non-empty, unique).

Output (:func:`ingest`): checked before anything is read. It may not be one of the inputs (or hold one),
and an existing path is only ever replaced (``overwrite=True``, CLI ``--overwrite``) when it is a cube
store (a Zarr group with ``hvaeseg_schema_version``): never a plain file, such as a label NetCDF taken as
the output when the output argument was forgotten, nor a folder that is not a cube.

Every check runs before anything is written; a bad input raises :class:`IngestError` naming the files
and what differs: CRS or footprints that differ between files, timestamps that differ between the
files of different resolutions, missing bands, a label grid that does not match the 10 m grid. Messages
are one line (several problems are numbered), as the command line prints them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg.data.bands import BAND_NAMES, L2A_BANDS, band_coords, check_band_names
from hvaeseg.data.schema import SCHEMA_VERSION, class_attrs, valid_from_scl, validate_cube

__all__ = [
    "IngestError",
    "ingest",
    "ingest_netcdf",
    "ingest_geotiff",
    "discover_netcdf",
    "read_code_table",
    "resample_to_grid",
    "ingest_notes",
    "check_output",
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


def _problems_message(problems: Sequence[str]) -> str:
    """One line for every problem found: ``cannot ingest these products: (1) ...; (2) ...``."""
    if len(problems) == 1:
        return f"cannot ingest these products: {problems[0]}"
    return "cannot ingest these products: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))


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


_TABLE_HINT = (
    "expected a CSV with a header row naming a code column and a name column, e.g. `code,name` then `1,cloud_shadow` "
    "(WorldCereal tables: `name,croptype,...`), or JSON {\"1\": \"cloud_shadow\", ...}"
)


def read_code_table(
    path: PathType, *, code_column: str | None = None, name_column: str = "name", label_var: str = "CT"
) -> dict[int, str]:
    """``{code: name}`` from a code table (CLI ``--code-table``): a CSV such as ``wc2eurocrops_map.csv``
    (columns ``name,croptype,...``) or a plain ``code,name`` table, or a JSON file ``{"1": "cloud_shadow", ...}``
    (or a list of ``{"code": 1, "name": "cloud_shadow"}``).

    :param code_column: the CSV column of integer codes; default: the column matching ``label_var``
        (``CT`` -> ``croptype``, ``LC`` -> ``landcover``), else ``code``.
    :raises IngestError: unreadable file, missing columns, non-integer codes, empty names, or one code with
        two names; the message names the file (and line) and the expected layout.
    """
    where = f"code table (--code-table) {path}"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise IngestError(f"{where}: not a text file; {_TABLE_HINT}") from None
    if Path(path).suffix.lower() == ".json":
        return _json_code_table(text, where)
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise IngestError(f"{where}: the code table is empty (no header and data rows); {_TABLE_HINT}")
    cols = {c.lower(): c for c in rows[0] if c is not None}
    if code_column is None:
        for cand in _CODE_COLUMNS.get(label_var.upper(), ()) + (label_var.lower(), "code"):
            if cand in cols:
                code_column = cols[cand]
                break
        else:
            raise IngestError(
                f"{where}: no code column for {label_var!r} among {list(rows[0])}; {_TABLE_HINT} (Python: code_column=)"
            )
    if name_column not in rows[0] and name_column.lower() in cols:
        name_column = cols[name_column.lower()]
    if code_column not in rows[0] or name_column not in rows[0]:
        raise IngestError(
            f"{where}: expected columns {code_column!r} and {name_column!r}, found {list(rows[0])}; {_TABLE_HINT}"
        )
    table: dict[int, str] = {}
    for i, r in enumerate(rows, start=2):
        try:
            code = int(str(r[code_column]).strip())
        except ValueError:
            raise IngestError(f"{where}:{i}: code {r[code_column]!r} is not an integer; {_TABLE_HINT}") from None
        _add_code_name(table, code, r[name_column], f"{where}:{i}")
    return table


def _json_code_table(text: str, where: str) -> dict[int, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(f"{where}: not valid JSON ({err.msg}, line {err.lineno}); {_TABLE_HINT}") from None
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, list) and all(isinstance(r, Mapping) and {"code", "name"} <= set(r) for r in data):
        items = [(r["code"], r["name"]) for r in data]
    else:
        raise IngestError(f"{where}: expected a JSON object of code: name, got {type(data).__name__}; {_TABLE_HINT}")
    if not items:
        raise IngestError(f"{where}: the code table is empty; {_TABLE_HINT}")
    table: dict[int, str] = {}
    for key, name in items:
        try:
            code = int(str(key).strip())
        except ValueError:
            raise IngestError(f"{where}: code {key!r} is not an integer; {_TABLE_HINT}") from None
        if not isinstance(name, str):
            raise IngestError(f"{where}: the name of code {code} is {name!r}, not a string; {_TABLE_HINT}")
        _add_code_name(table, code, name, where)
    return table


def _add_code_name(table: dict[int, str], code: int, name: Any, where: str) -> None:
    name = "" if name is None else str(name).strip()
    if not name:
        raise IngestError(f"{where}: code {code} has an empty name; name every code or drop its row")
    if code in table and table[code] != name:
        raise IngestError(f"{where}: code {code} is named twice ({table[code]!r} and {name!r})")
    table[code] = name


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


@dataclass
class _LabelMap:
    """A label map read from a file: pixel centres, integer codes ``(y, x)`` and its declared no-data value."""

    y: np.ndarray
    x: np.ndarray
    codes: np.ndarray
    crs: str | None
    source: str
    nodata: float | None = None


def _int_codes(values: Sequence[Any] | None, what: str) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise IngestError(f"{what}: expected a list of integer codes, got the string {values!r}")
    out = []
    for v in values:
        try:
            integral = not isinstance(v, (bool, np.bool_)) and float(v).is_integer()
        except (TypeError, ValueError):
            integral = False
        if not integral:
            raise IngestError(f"{what}: expected integer codes, got {v!r}")
        out.append(int(float(v)))
    return out


def _void_codes(void_codes: Sequence[int] | None, nodata: float | None) -> tuple[list[int], str]:
    """The void codes and a phrase saying where they come from."""
    if void_codes is not None:
        codes = sorted(set(_int_codes(void_codes, "void_codes (--void-codes)")))
        if not codes:
            return codes, "no void codes: --void-codes none"
        return codes, f"void codes from --void-codes: {', '.join(map(str, codes))}"
    codes, why = [0], "void codes by default: 0"
    if nodata is not None and np.isfinite(nodata) and float(nodata).is_integer() and int(nodata) != 0:
        codes.append(int(nodata))
        why += f" and the label file's no-data value {int(nodata)}"
    return codes, why + "; --void-codes sets them"


def _fmt_codes(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{c}: {n:,} px" for c, n in counts.items())


def _map_labels(
    lab: _LabelMap,
    table: Mapping[int, str] | None,
    classes: Sequence[int] | None,
    class_names: Sequence[str] | None = None,
    void_codes: Sequence[int] | None = None,
    table_source: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Class ids ``(y, x)`` int16 (-1 = void) and the label attributes (see the module doc)."""
    source, raw = lab.source, np.asarray(lab.codes)
    if raw.dtype.kind not in "iuf":
        raise IngestError(f"{source}: the labels have dtype {raw.dtype}; expected integer class codes")
    known = np.ones(raw.shape, bool)
    if raw.dtype.kind == "f":
        known = np.isfinite(raw)
        frac = known & (raw != np.round(raw))
        if frac.any():
            raise IngestError(
                f"{source}: the labels are not integer class codes ({raw.dtype}, e.g. {raw[frac][0]:g} at "
                f"{int(frac.sum()):,} pixels); expected one integer code per class: reclassify the map to integer "
                "codes before ingesting (NaN is read as void)"
            )
    codes = np.where(known, raw, 0).astype(np.int64)
    void, void_why = _void_codes(void_codes, lab.nodata)
    values, counts = np.unique(codes[known], return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist()))
    present = [c for c in count if c not in void]
    if classes is None:
        keep = [c for c in present if table is None or c in table]
    else:
        keep = _int_codes(classes, "classes (--classes)")
        if len(set(keep)) != len(keep):
            raise IngestError(f"classes (--classes) repeat a code: {keep}")
        bad = [c for c in keep if c in void]
        if bad:
            raise IngestError(
                f"classes (--classes) {keep} include the void code {', '.join(map(str, bad))}: void codes mean "
                f"'no label' ({void_why}); to make code {bad[0]} a class, pass --void-codes with the codes that "
                "mean no label instead (--void-codes none: no void code; Python void_codes=[])"
            )
    if not keep:
        what = "named by the code table" if table is not None else "that is not a void code"
        raise IngestError(
            f"{source}: no pixel has a class code {what} (codes present: {present}; void codes {void}, {void_why})"
        )
    names: list[str] = []
    if class_names is not None:
        if len(class_names) != len(keep):
            raise IngestError(
                f"class_names (--class-names): {len(class_names)} names {list(class_names)} for the {len(keep)} "
                f"classes of {source} (codes {keep}); give one name per class, and the codes in id order with "
                "classes= (--classes)"
            )
        names = list(class_names)
        names_source = "class_names (--class-names)"
    else:
        unnamed = [c for c in keep if table is None or c not in table]
        for c in keep:
            n = _word(table[c]) if table is not None and c in table else f"code_{c}"
            names.append(n if n not in names else f"{n}_{c}")
        names_source = f"code table {table_source}" if table is not None else "no code table"
        if unnamed:
            names_source += (
                f"; codes {', '.join(map(str, unnamed))} named code_<c>: name them with --class-names or "
                "--code-table (a code,name CSV or JSON)"
            )
    lut_codes = np.array(keep, dtype=np.int64)
    order = np.argsort(lut_codes)
    pos = np.searchsorted(lut_codes[order], codes)
    pos = np.clip(pos, 0, len(keep) - 1)
    hit = (lut_codes[order][pos] == codes) & known
    ids = np.where(hit, order[pos], -1).astype(np.int16)
    if not hit.any():
        raise IngestError(
            f"{source}: none of the class codes {keep} (classes, --classes) occurs in the label map (codes present: "
            f"{sorted(count)}); give the codes the file holds"
        )
    parts = []
    as_void = {c: count[c] for c in void if count.get(c)}
    if as_void:
        parts.append(f"code {_fmt_codes(as_void)} ({void_why})")
    else:
        parts.append(f"no pixel holds a void code ({void_why})")
    other = {c: n for c, n in count.items() if c not in void and c not in keep}
    if other:
        why = "not in classes (--classes)" if classes is not None else "not named by the code table"
        parts.append(f"code {_fmt_codes(other)}, {why}")
    if not known.all():
        parts.append(f"NaN ({int((~known).sum()):,} px)")
    attrs = {
        **class_attrs(names), "source_codes": keep, "void_codes": list(void),
        "long_name": "class id (-1 = void)",
        "void_description": f"{int((ids < 0).sum()):,} void pixels (-1): " + "; ".join(parts),
        "class_names_source": names_source,
    }
    return ids, attrs


# --------------------------------------------------------------------------------------------------
# assembling a cube from layers
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A metadata value (number, numeric string, one-element array) as a float; None when it is not one (or NaN)."""
    if value is None:
        return None
    try:
        number = float(np.asarray(value, dtype=np.float64).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return None if np.isnan(number) else number


def _boa_offset(
    layers: Sequence[_Layer], explicit: float | None, scale: float, required: bool = False
) -> tuple[float, str]:
    """BOA offset in DN and where it came from; ``required``: no metadata is an error (GeoTIFF), not 0."""
    if explicit is not None:
        return float(explicit), "option"
    for key, what in (("boa_add_offset", "BOA_ADD_OFFSET"), ("add_offset", "add_offset")):
        for layer in layers:
            a = {str(k).lower(): v for k, v in layer.attrs.items()}
            value = _number(a.get(key))
            if value is not None:
                dn = value if key == "boa_add_offset" else value / scale
                return dn, f"metadata {what} ({layer.source})"
    for layer in layers:
        a = {str(k).lower(): v for k, v in layer.attrs.items()}
        if "processing_baseline" in a:
            baseline = _number(str(a["processing_baseline"]).strip())
            if baseline is None:
                continue
            return (BASELINE_04_BOA_OFFSET if baseline >= 4.0 else 0.0), f"metadata PROCESSING_BASELINE={baseline:g}"
    if required:
        files = sorted({layer.source for layer in layers})
        named = files[0] + (f" (+{len(files) - 1} more)" if len(files) > 1 else "")
        raise IngestError(
            f"the reflectance offset is unknown: {named} carry no offset metadata (no GDAL scale/offset, "
            "BOA_ADD_OFFSET or PROCESSING_BASELINE tag) and none was given; pass --boa-offset DN (Python: "
            "boa_add_offset=): 0 when reflectance = DN x 1e-4 (harmonised products, processing baseline before "
            "04.00), -1000 for L2A processing baseline 04.00 or later"
        )
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
            f"(found {', '.join(found) or 'none'}); pass --bands with the bands the cube is to hold (Python bands=)"
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
    labels: _LabelMap | None,
    code_table: Mapping[int, str] | None,
    classes: Sequence[int] | None,
    bands: Sequence[str] | None,
    boa_add_offset: float | None,
    require_scl: bool,
    attrs: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    void_codes: Sequence[int] | None = None,
    table_source: str | None = None,
    offset_required: bool = False,
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
        ly, lx, lcrs, lsrc = labels.y, labels.x, labels.crs, labels.source
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
        raise IngestError(_problems_message(problems))

    scales = {float(np.asarray(band_layers[b].attrs.get("scale_factor", L2A_SCALE_FACTOR))) for b in bands}
    if len(scales) > 1:
        raise IngestError(f"the bands have different scale_factor {sorted(scales)}; expected one DN scale")
    scale = scales.pop()
    offset_dn, offset_source = _boa_offset([band_layers[b] for b in bands], boa_add_offset, scale, offset_required)

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
        ids, lattrs = _map_labels(labels, code_table, classes, class_names, void_codes, table_source)
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
            + ([Path(labels.source).name] if labels is not None else []),
            **dict(attrs),
        },
    )
    validate_cube(ds)
    return ds


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------


def _read_label_netcdf(path: PathType, label_var: str) -> _LabelMap:
    ds = _open_netcdf(path)
    if label_var not in ds.data_vars:
        raise IngestError(f"{path}: no label variable {label_var!r}; found {list(ds.data_vars)}")
    da = ds[label_var]
    if set(da.dims) != {"y", "x"}:
        raise IngestError(f"{path}: label variable {label_var!r} has dims {da.dims}; expected (y, x)")
    da = da.transpose("y", "x")
    nodata = None
    for key in ("_FillValue", "missing_value", "NoData", "nodata"):
        if key in da.attrs:
            nodata = _number(da.attrs[key])
            break
    return _LabelMap(
        np.asarray(ds["y"].values, np.float64), np.asarray(ds["x"].values, np.float64), np.asarray(da.values),
        _netcdf_crs(ds, da), str(path), nodata,
    )


def _table(code_table: PathType | Mapping[int, str] | None, label_var: str) -> Mapping[int, str] | None:
    if code_table is None or isinstance(code_table, Mapping):
        return code_table
    return read_code_table(code_table, label_var=label_var)


def _table_source(code_table: PathType | Mapping[int, str] | None) -> str | None:
    if code_table is None:
        return None
    return "(mapping)" if isinstance(code_table, Mapping) else Path(code_table).name


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
    void_codes: Sequence[int] | None = None,
) -> xr.Dataset:
    """Build a cube from NetCDF band files (one per resolution) and an optional label file.

    :param paths: the band files, e.g. the ``S2_L2A_10m_*.nc`` and ``S2_L2A_20m_*.nc`` of a WorldCereal
        site (any order; the finest grid is the target).
    :param labels: label file with an integer code variable on the 10 m grid (``OUTPUT_*.nc``).
    :param label_var: the label variable (``CT`` crop type, ``LC`` land cover).
    :param code_table: CSV (``wc2eurocrops_map.csv``, or ``code,name``), JSON, or ``{code: name}``; codes it
        lacks become void (see :func:`read_code_table`).
    :param classes: explicit class codes in id order (same ids across cubes); default: codes present. A void
        code among them, or classes of which no pixel occurs, is an error.
    :param class_names: one name per class id (single words, unique), overriding the code table's names;
        with ``classes`` the same count, else one per code kept (in increasing code order).
    :param bands: bands that must be present, in cube order (default the 10 L2A bands); ``None`` takes
        whatever bands the files hold.
    :param boa_add_offset: BOA offset in DN (e.g. -1000); default from metadata, else 0.
    :param require_scl: raise when no SCL layer is found (else ``valid`` is only "no band is DN 0").
    :param void_codes: label codes meaning "no label" (void, -1); default code 0 and the label variable's
        ``_FillValue``; ``[]``: none, so code 0 may be a class.
    :returns: the cube (in memory), already validated.
    :raises IngestError: for inputs that do not fit together (see the module doc).
    """
    if not paths:
        raise IngestError("no band files given")
    class_names = _check_class_names(class_names, classes)
    if class_names is not None and labels is None:
        raise IngestError("class_names given but no label file (labels=)")
    if void_codes is not None and labels is None:
        raise IngestError("void_codes (--void-codes) given but no label file (labels=)")
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
        void_codes=void_codes, table_source=_table_source(code_table),
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
        names = [_band_from_description(d) for d in descs]
        if all(d is None or not str(d).strip() for d in descs):
            raise IngestError(
                f"{g.path} has {g.count} layers and no band descriptions, so the band order is unknown; {fix}"
            )
        bad = [f"layer {i + 1} {d!r}" for i, (d, n) in enumerate(zip(descs, names)) if n is None]
        if bad:
            raise IngestError(
                f"{g.path}: the band descriptions do not all name a Sentinel-2 band ({', '.join(bad)}; expected "
                f"e.g. B02, B2, blue or SCL), so the band order is unknown; {fix}"
            )
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
        planes.append(np.asarray((da if index is None else da.isel(band=slice(index, index + 1))).values))
    src = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} more)"
    data = np.concatenate(planes, axis=0)
    _check_regular(y, "y", src)
    _check_regular(x, "x", src)
    if data.shape[0] != len(times):
        raise IngestError(
            f"the timestamps differ: {name} has {data.shape[0]} layers in {src} but {len(times)} dates were given"
        )
    attrs = dict(opened[str(files[0])].layer_attrs[index or 0]) if opened[str(files[0])].layer_attrs else {}
    return _Layer(name=name, source=src, data=data, times=times, y=y, x=x, crs=crs, attrs=attrs)


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

    layers = [_geotiff_layer(name, fs, times_for(name), opened, local, index) for name, fs, index in files]
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


#: the options of :func:`ingest_netcdf` / :func:`ingest_geotiff` that name input files, as the CLI spells them
_INPUT_OPTIONS = {"labels": "--labels", "code_table": "--code-table", "scl": "SCL=", "stack": "a stack input"}


def _input_paths(paths: Sequence[PathType], options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(what, path)`` for every input file or folder of one ingest."""
    out = [("", os.fspath(p)) for p in paths]
    for name, value in (options.get("band_files") or {}).items():
        out += [(f"{name}=", os.fspath(p)) for p in _file_list(value)]
    for key, what in _INPUT_OPTIONS.items():
        value = options.get(key)
        if value is None or (key == "code_table" and isinstance(value, Mapping)):
            continue
        out += [(what, os.fspath(p)) for p in _file_list(value)]
    return out


def check_output(
    out: PathType,
    inputs: Sequence[tuple[str, str]] = (),
    overwrite: bool = False,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Refuse, before anything is read, an output that is an input or would replace what is not a cube store.

    An existing ``out`` is only ever replaced (``overwrite``) when it is a cube store (a Zarr group with
    ``hvaeseg_schema_version``): a plain file (e.g. the label NetCDF, taken as the output when the output
    argument was forgotten) or a folder that is not a cube is refused whatever ``overwrite`` says, and so is
    an ``out`` that is (or holds) one of ``inputs``; then :func:`hvaeseg.data.store.check_output_free` applies.

    :param inputs: ``(what, path)`` pairs, ``what`` naming the option in messages (``"--labels"``).
    :raises IngestError: ``out`` is, or holds, an input.
    :raises FileExistsError: ``out`` exists and is not a cube store, or is one and ``overwrite`` is false.
    """
    from hvaeseg.data.store import _Location, check_output_free

    loc = _Location(out, storage_options)
    fix = "give a new store path as the last argument (the output), e.g. site.zarr"
    if loc.local:
        target = os.path.realpath(loc.root)
        for what, path in inputs:
            real = os.path.realpath(path)
            if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                held = "is also" if real == target else f"holds {path},"
                raise IngestError(
                    f"the output {out} {held} an input of this command{f' ({what})' if what else ''}: writing the "
                    f"cube would replace it; {fix}"
                )
    if loc.exists():
        problem = _not_a_cube_store(loc, out, storage_options)
        if problem:
            raise FileExistsError(
                f"the output {out} {problem} and is never replaced (--overwrite only replaces a cube store "
                f"written by hvaeseg); if the output argument was forgotten, the last input was taken for it: {fix}"
            )
    check_output_free(out, overwrite, storage_options=storage_options)


def _not_a_cube_store(loc: Any, out: PathType, storage_options: Mapping[str, Any] | None) -> str | None:
    """Why the existing ``out`` is not a cube store, or None when it is one."""
    from hvaeseg.data.store import open_cube

    if loc.local and not os.path.isdir(loc.root):
        return "is an existing file, not a cube store,"
    if loc.local and not os.listdir(loc.root):
        return None  # an empty folder: nothing to lose
    try:
        attrs = open_cube(out, storage_options=storage_options, validate=False).attrs
    except (FileNotFoundError, ValueError):
        return "is an existing folder that is not a cube store (no Zarr group),"
    except Exception:  # noqa: BLE001 - whatever cannot be opened is not a cube to replace
        return "exists and cannot be opened as a cube store,"
    if "hvaeseg_schema_version" not in attrs:
        return "is a Zarr store but not a cube (no hvaeseg_schema_version attribute),"
    return None


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


def ingest_notes(ds: xr.Dataset) -> list[str]:
    """What an ingest decided that a user should know, one line each (the command line prints them): the
    reflectance scale and offset and where the offset came from, the classes and where their names came from,
    and which label codes became void."""
    lines = []
    refl = ds["reflectance"].attrs
    lines.append(
        f"reflectance: scale_factor {float(refl.get('scale_factor', 1.0)):g}, add_offset "
        f"{float(refl.get('add_offset', 0.0)):g} (BOA offset {float(ds.attrs.get('boa_add_offset', 0.0)):g} DN; "
        f"from {ds.attrs.get('boa_offset_source', 'unknown')})"
    )
    if "labels" in ds:
        la = ds["labels"].attrs
        names = str(la.get("flag_meanings", "")).split()
        codes = list(np.asarray(la.get("source_codes", [])).ravel().tolist())
        pairs = ", ".join(f"{c} -> {i} {n}" for i, (c, n) in enumerate(zip(codes, names)))
        source = la.get("class_names_source", "?")
        lines.append(f"labels: {len(names)} classes, code -> id name: {pairs} (names from {source})")
        if "void_description" in la:
            lines.append(f"labels: {la['void_description']}")
    return lines
