"""Per-band reflectance statistics for normalisation, computed once and kept in the cube's attributes.

``band_mean`` / ``band_std`` (dataset attributes, one float per band, reflectance units) are the mean and
standard deviation of ``DN * scale_factor + add_offset`` over the *valid* pixels (``valid`` True and the
band's DN not 0) of every date. A band without any such pixel gets mean 0 and std 1, a constant band std 1,
so normalising never divides by zero. The loader normalises on the device with them:
``x = (reflectance - band_mean) / band_std``.

:func:`compute_band_stats` streams the cube one date and one row strip at a time (memory is one strip),
in float64, in a fixed order: the result does not depend on chunking.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["compute_band_stats", "ensure_band_stats", "read_band_stats", "dn_scaling"]

#: rows read at a time when streaming a large cube
_STRIP_ROWS = 1024


def dn_scaling(attrs: Mapping[str, Any], dtype: np.dtype) -> tuple[float, float]:
    """``(scale_factor, add_offset)`` of the reflectance variable (``(1, 0)`` for float reflectance)."""
    if np.issubdtype(np.dtype(dtype), np.integer) or "scale_factor" in attrs:
        return float(attrs.get("scale_factor", 1.0)), float(attrs.get("add_offset", 0.0))
    return 1.0, 0.0


def _open(cube: Any, storage_options: Mapping[str, Any] | None) -> xr.Dataset:
    if isinstance(cube, xr.Dataset):
        return cube
    if isinstance(cube, (str, os.PathLike)):
        from hvaeseg.data.store import open_cube

        return open_cube(cube, storage_options=storage_options, validate=False)
    raise TypeError(f"expected a cube (xarray.Dataset) or a store path/URL, got {type(cube).__name__}")


def compute_band_stats(
    cube: Any, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[float], list[float]]:
    """``(band_mean, band_std)`` over the valid pixels, in reflectance units (see the module doc).

    Integer DN are summed exactly (integer sums of DN and DN squared), so the result is the same
    whatever the strip size or chunking; float reflectance is summed in float64.

    :param cube: an ``xarray.Dataset`` or a store path/URL.
    """
    ds = _open(cube, storage_options)
    refl = ds["reflectance"].transpose("time", "band", "y", "x")
    valid = ds["valid"].transpose("time", "y", "x") if "valid" in ds else None
    T, C, Y, _ = refl.shape
    scale, offset = dn_scaling(refl.attrs, refl.dtype)
    integer = np.issubdtype(refl.dtype, np.integer)
    n = [0] * C
    s1: list[Any] = [0] * C
    s2: list[Any] = [0] * C
    for t in range(T):
        for y0 in range(0, Y, _STRIP_ROWS):
            ys = slice(y0, min(y0 + _STRIP_ROWS, Y))
            r = np.asarray(refl[t, :, ys].values)
            m = np.ones(r.shape[1:], dtype=bool) if valid is None else np.asarray(valid[t, ys].values, dtype=bool)
            for c in range(C):
                v = r[c][m & ((r[c] != 0) if integer else np.isfinite(r[c]))]
                n[c] += int(v.size)
                if integer:  # exact: python ints never overflow
                    v = v.astype(np.int64)
                    s1[c] += int(v.sum())
                    s2[c] += int((v * v).sum())
                else:
                    v = v.astype(np.float64)
                    s1[c] += float(v.sum())
                    s2[c] += float((v * v).sum())
    mean, std = [], []
    empty = []
    for c in range(C):
        if n[c] == 0:
            empty.append(c)
            mean.append(0.0)
            std.append(1.0)
            continue
        m_dn = s1[c] / n[c]
        var_dn = (n[c] * s2[c] - s1[c] * s1[c]) / (n[c] * n[c])  # exact for integers until this division
        sd = float(np.sqrt(max(float(var_dn), 0.0))) * scale
        mean.append(float(m_dn) * scale + offset)
        std.append(sd if sd > 0 else 1.0)
    if empty:
        names = list(map(str, ds["band"].values)) if "band" in ds.coords else empty
        warnings.warn(
            f"bands {[names[c] for c in empty]} have no valid pixel; their statistics are set to mean 0, std 1",
            stacklevel=2,
        )
    return mean, std


def read_band_stats(
    cube: Any, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[float], list[float]] | None:
    """The stored ``(band_mean, band_std)``, or ``None`` when the cube has none (or a wrong number)."""
    attrs, n_bands = _attrs_and_bands(cube, storage_options)
    mean, std = attrs.get("band_mean"), attrs.get("band_std")
    if mean is None or std is None:
        return None
    mean, std = [float(v) for v in np.ravel(mean)], [float(v) for v in np.ravel(std)]
    if len(mean) != n_bands or len(std) != n_bands:
        return None
    return mean, std


def _attrs_and_bands(cube: Any, storage_options) -> tuple[dict, int]:
    if isinstance(cube, xr.Dataset):
        return dict(cube.attrs), int(cube.sizes["band"])
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        g = zarr.open_group(os.fspath(cube), mode="r", storage_options=storage_options)
        refl = g["reflectance"]
        if not isinstance(refl, zarr.Array):
            raise ValueError(f"{cube}: expected the array `reflectance`, got a group")
        return dict(g.attrs), int(refl.shape[1])


def ensure_band_stats(
    cube: Any, *, recompute: bool = False, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[float], list[float]]:
    """The cube's ``(band_mean, band_std)``; computed and stored in its attributes if missing.

    For a Dataset the attributes are set in place (``ds.attrs``); for a store they are written into
    the Zarr group's attributes (so every later open finds them).
    """
    if not recompute:
        got = read_band_stats(cube, storage_options=storage_options)
        if got is not None:
            return got
    mean, std = compute_band_stats(cube, storage_options=storage_options)
    if isinstance(cube, xr.Dataset):
        cube.attrs["band_mean"] = mean
        cube.attrs["band_std"] = std
    else:
        _write_store_attrs(str(cube), {"band_mean": mean, "band_std": std}, storage_options)
    return mean, std


def _write_store_attrs(path: str, attrs: Mapping[str, Any], storage_options) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        g = zarr.open_group(path, mode="r+", storage_options=storage_options)
        g.attrs.update(dict(attrs))
