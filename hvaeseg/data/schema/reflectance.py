"""Reading reflectance: :func:`decoded_reflectance` (DN or float to physical units), and the stored DN behind a
CF-decoded variable (``xarray.open_zarr`` without ``mask_and_scale=False``), lazily, for validation."""

from __future__ import annotations

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from hvaeseg.data.schema._common import _is_int

__all__ = ["decoded_reflectance"]


def decoded_reflectance(ds: xr.Dataset, var: str = "reflectance") -> xr.DataArray:
    """Reflectance in physical units as float32: ``DN * scale_factor + add_offset``, no data -> NaN.

    Integer DN 0 is no data. Float variables are taken as reflectance already unless they carry
    ``scale_factor`` (float DN), which is then applied the same way. Lazy inputs stay lazy until used.
    """
    da = ds[var]
    attrs = {k: v for k, v in da.attrs.items() if k not in ("scale_factor", "add_offset")}
    if _is_int(da.dtype) or "scale_factor" in da.attrs:
        scale = np.float32(da.attrs.get("scale_factor", 1.0))
        offset = np.float32(da.attrs.get("add_offset", 0.0))
        out = da.astype(np.float32) * scale + offset
        out = out.where(da != 0)
    else:
        out = da.astype(np.float32)
    out = out.astype(np.float32).rename(var)
    out.attrs = attrs
    return out


def _cf_decoded(da: xr.DataArray) -> tuple[float, float, np.dtype, float] | None:
    """``(scale_factor, add_offset, stored dtype, fill)`` of DN that xarray decoded to float (CF
    ``mask_and_scale``: the scaling moved from ``attrs`` to ``encoding``), else None."""
    enc = da.encoding
    stored = enc.get("dtype")
    if (
        not np.issubdtype(da.dtype, np.floating)
        or "scale_factor" in da.attrs
        or not ("scale_factor" in enc or "add_offset" in enc)
        or stored is None
        or not _is_int(np.dtype(stored))
    ):
        return None
    fill = enc.get("_FillValue", 0)
    return float(enc.get("scale_factor", 1.0)), float(enc.get("add_offset", 0.0)), np.dtype(stored), fill


class _StoredDN(BackendArray):
    """A CF-decoded DN variable seen as its stored integer DN, lazily: only what is indexed is read."""

    def __init__(self, var: xr.Variable, scale: float, offset: float, dtype: np.dtype, fill: float) -> None:
        self.var, self.scale, self.offset, self.fill = var, scale, offset, fill
        self.shape, self.dtype = var.shape, np.dtype(dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        v = (np.asarray(self.var[key].values, dtype=np.float64) - self.offset) / self.scale
        masked = np.isnan(v)  # _FillValue decoded to NaN
        info = np.iinfo(self.dtype)
        v = np.clip(np.rint(np.where(masked, self.fill, v)), info.min, info.max)
        return v.astype(self.dtype)


def _as_stored(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with CF-decoded DN reflectance back as the stored DN (lazily; scaling back in ``attrs``)."""
    decoded = {name: cf for name in ("reflectance", "clean_reflectance")
               if name in ds.data_vars and (cf := _cf_decoded(ds[name])) is not None}
    if not decoded:
        return ds
    out = ds.copy(deep=False)
    for name, (scale, offset, dtype, fill) in decoded.items():
        var = ds[name].variable
        data = indexing.LazilyIndexedArray(_StoredDN(var, scale, offset, dtype, fill))
        attrs = {**var.attrs, "scale_factor": scale, "add_offset": offset}
        out[name] = xr.Variable(var.dims, data, attrs)
    return out
