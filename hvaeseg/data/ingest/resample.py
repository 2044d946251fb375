"""Resampling onto the 10 m grid: bilinear with pixel centres aligned for reflectance, nearest (the containing
pixel) for class-like layers (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from hvaeseg.data.ingest._common import _TOL


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
    """Resample ``values (..., y, x)`` from the source to the target pixel centres (see :mod:`hvaeseg.data.ingest`)."""
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
