"""NetCDF products laid out like the WorldCereal training sites: one file per resolution, a label file and a
CSV code table (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg._progress import progress
from hvaeseg.data.bands import L2A_BANDS
from hvaeseg.data.ingest._common import (
    _BAND_RE,
    _SCL_NAMES,
    _TIME_DIMS,
    IngestError,
    PathType,
    _check_regular,
    _Layer,
    _normalise_crs,
    _number,
)
from hvaeseg.data.ingest.assemble import _assemble
from hvaeseg.data.ingest.classes import _check_class_names, _LabelMap, _table, _table_source


def _time_dim(da: xr.DataArray, source: str) -> str:
    for d in da.dims:
        if d in _TIME_DIMS:
            return str(d)
    others = [d for d in da.dims if d not in ("y", "x")]
    if len(others) == 1:
        return str(others[0])
    raise IngestError(f"{source}: variable {da.name!r} has dims {da.dims}; expected (time, y, x)")


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
    :raises IngestError: for inputs that do not fit together (see :mod:`hvaeseg.data.ingest`).
    """
    if not paths:
        raise IngestError("no band files given")
    class_names = _check_class_names(class_names, classes)
    if class_names is not None and labels is None:
        raise IngestError("class_names given but no label file (labels=)")
    if void_codes is not None and labels is None:
        raise IngestError("void_codes (--void-codes) given but no label file (labels=)")
    layers = [layer for p in progress(paths, desc="reading products") for layer in _netcdf_layers(p)]
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
