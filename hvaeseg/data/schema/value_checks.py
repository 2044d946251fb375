"""The checks of :func:`~hvaeseg.data.schema.validate_cube` that read values: float DN, labels against their classes,
the physical range of reflectance, no data under ``valid``, SCL codes. A big array is checked on a fixed sample
(:func:`_sample`), so that validation reads few chunks of a cube of any size."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg.data.schema._common import _is_int, _preview
from hvaeseg.data.schema.classes import _COLOR_RE
from hvaeseg.data.schema.layout import CubeSchema
from hvaeseg.data.schema.scl import SCL_CODES


def _sample(da: xr.DataArray) -> np.ndarray:
    """All of ``da`` when small, else a fixed sample that reads few chunks.

    The sample is up to 4 evenly spaced dates (all bands) in two 256 x 256 windows (top-left corner and
    centre): a cheap look at a cube of any size. Each window is cut in one indexing step, so a lazy or
    zero-stride (broadcast) array never materialises more than the sample.
    """
    windows = _windows(da)
    if windows == [{}]:
        return np.asarray(da.values)
    return np.concatenate([np.asarray(da.isel(win).values).ravel() for win in windows])


def _windows(da: xr.DataArray) -> list[dict[Hashable, Any]]:
    """The ``isel`` indexers of :func:`_sample` (``[{}]``: all of ``da``); by dimension name, so variables
    with the same time/y/x sizes are sampled at the same pixels."""
    if da.size <= CubeSchema.sample_limit:
        return [{}]
    index: dict[Hashable, Any] = {}
    if "time" in da.dims and da.sizes["time"] > 4:
        index["time"] = np.unique(np.linspace(0, da.sizes["time"] - 1, 4).round().astype(int))
    windows = []
    for corner in ((0.0, 0.0), (0.5, 0.5)):
        win = dict(index)
        for dim, frac in zip(CubeSchema.spatial_dims, corner):
            if dim in da.dims:
                n = da.sizes[dim]
                start = min(int(n * frac), max(n - 256, 0))
                win[dim] = slice(start, start + 256)
        windows.append(win)
    return windows


def _check_nan_dn(ds: xr.Dataset, name: str) -> list[str]:
    """Float reflectance meant as DN (has scale_factor) must hold whole DN: no NaN (it cannot be stored as
    uint16), no fractions (reflectance that kept the DN attributes through arithmetic: it would read as DN 0)."""
    da = ds[name]
    if not np.issubdtype(da.dtype, np.floating) or "scale_factor" not in da.attrs:
        return []
    values = _sample(da)
    n_nan = int(np.isnan(values).sum())
    problems = []
    if n_nan:
        problems.append(
            f"`{name}` is float DN (has scale_factor) and holds {n_nan} NaN values; DN stores are uint16 where "
            f"0 = no data. Fix: ds['{name}'] = ds['{name}'].fillna(0).round().clip(0, 65535).astype('uint16')"
        )
    finite = values[np.isfinite(values)]
    fractional = finite[finite != np.round(finite)]
    if fractional.size:
        problems.append(
            f"`{name}` is float with scale_factor, so it is read as DN, but {fractional.size} of its values are "
            f"not whole numbers (e.g. {_preview(np.unique(fractional)[:3].tolist(), 3)}): reflectance that kept "
            f"the DN attributes? Fix: ds['{name}'].attrs.pop('scale_factor'); ds['{name}'].attrs.pop('add_offset', "
            f"None) (float32 reflectance carries no scaling)"
        )
    return problems


def _flag_count(labels: xr.DataArray) -> tuple[int | None, list[str]]:
    """Number of classes K from the CF flag attributes, and problems with those attributes."""
    attrs = labels.attrs
    if "flag_values" not in attrs or "flag_meanings" not in attrs:
        return None, []  # reported as missing attributes
    problems = []
    values = np.atleast_1d(np.asarray(attrs["flag_values"]))
    meanings = str(attrs["flag_meanings"]).split()
    k = len(values)
    fix = "Fix: ds['labels'].attrs.update(class_attrs(names))"
    if not np.issubdtype(values.dtype, np.integer) or not np.array_equal(values, np.arange(k)):
        problems.append(f"`labels` flag_values must be 0..K-1, got [{_preview(values.tolist())}]. {fix}")
    if len(meanings) != k:
        problems.append(f"`labels` has {k} flag_values but {len(meanings)} flag_meanings. {fix}")
    if "flag_colors" in attrs:
        colors = str(attrs["flag_colors"]).split()
        bad = [c for c in colors if not _COLOR_RE.match(c)]
        if len(colors) != k or bad:
            problems.append(
                f"`labels` flag_colors must be {k} '#rrggbb' colours, got {len(colors)}"
                + (f" (bad: {_preview(bad)})" if bad else "")
                + f". {fix}"
            )
    return k, problems


def _check_labels(ds: xr.Dataset) -> list[str]:
    lab = ds["labels"]
    k, problems = _flag_count(lab)
    values = np.asarray(lab.values)
    if np.issubdtype(values.dtype, np.floating):
        finite = values[np.isfinite(values)]
        if (finite != np.round(finite)).any():
            problems.append("`labels` holds non-integer values. Fix: labels are class ids; round or remap them")
        values = finite
    hi = k - 1 if k is not None else None
    bad = values < -1 if hi is None else (values < -1) | (values > hi)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        found = np.unique(values[bad])
        allowed = "-1 = void" + (f" or 0..{hi} for the {k} classes of flag_values" if hi is not None else " or >= 0")
        problems.append(
            f"`labels` out of range: {n_bad} pixels with values {{{_preview(found.astype(np.int64).tolist())}}}; "
            f"allowed {allowed}. Fix: set unknown classes to -1 (ds['labels'] = ds['labels'].where("
            f"ds['labels'] <= {hi if hi is not None else 'K-1'}, -1)) or add them to flag_values/flag_meanings"
        )
    return problems


def _check_reflectance_range(ds: xr.Dataset, name: str) -> list[str]:
    da = ds[name]
    raw = _sample(da)
    if _is_int(raw.dtype):
        scale = float(da.attrs.get("scale_factor", 1.0))
        offset = float(da.attrs.get("add_offset", 0.0))
        raw = raw[raw != 0]
        refl = raw.astype(np.float64) * scale + offset
    else:
        refl = raw[np.isfinite(raw)].astype(np.float64)
        if "scale_factor" in da.attrs:
            refl = refl[refl != 0] * float(da.attrs["scale_factor"]) + float(da.attrs.get("add_offset", 0.0))
    if refl.size == 0:
        return []
    lo, hi = CubeSchema.reflectance_range
    out = (refl < lo - 1e-6) | (refl > hi + 1e-6)
    n_out = int(np.count_nonzero(out))
    if not n_out:
        return []
    share = n_out / refl.size
    fix = (
        "Fix: check the DN scaling (L2A: scale_factor=1e-4, add_offset=-0.1 for baseline >= 04.00, else 0.0)"
        if _is_int(da.dtype) or "scale_factor" in da.attrs
        else "Fix: float reflectance must be in reflectance units (DN * 1e-4 + offset), not DN"
    )
    if not _is_int(da.dtype) and "scale_factor" not in da.attrs and np.nanmax(refl) > 100:
        fix += "; these values look like DN: divide by 10000 or store uint16 with scale_factor/add_offset"
    return [
        f"`{name}` out of physical range: {share:.1%} of the checked values lie outside [{lo}, {hi}] "
        f"(min {refl.min():.4g}, max {refl.max():.4g}). {fix}"
    ]


def _check_nodata_valid(ds: xr.Dataset) -> list[str]:
    """No data (DN 0 / NaN) in any band where ``valid`` says observed: the loader would train on it."""
    refl, valid = ds["reflectance"], ds["valid"]
    if (
        tuple(refl.dims) != CubeSchema.variables["reflectance"].dims
        or tuple(valid.dims) != CubeSchema.variables["valid"].dims
        or valid.dtype != np.bool_
        or not np.issubdtype(refl.dtype, np.number)
        or any(refl.sizes[d] != valid.sizes[d] for d in valid.dims)
    ):
        return []  # reported above
    dn = _is_int(refl.dtype) or "scale_factor" in refl.attrs
    shape = tuple(valid.sizes[d] for d in valid.dims)
    found = []  # flat (time, y, x) indices of the bad pixels: the sample's windows may overlap
    for win in _windows(refl):
        r = np.asarray(refl.isel(win).values)
        observed = np.asarray(valid.isel(win).values)
        nodata = ((r == 0) | np.isnan(r) if not _is_int(r.dtype) else r == 0) if dn else np.isnan(r)
        t, y, x = np.nonzero(nodata.any(axis=1) & observed)
        index = [np.arange(n)[win.get(d, slice(None))] for d, n in zip(valid.dims, shape)]
        found.append(np.ravel_multi_index((index[0][t], index[1][y], index[2][x]), shape))
    bad = np.unique(np.concatenate(found))
    if not bad.size:
        return []
    n_bad, dates = bad.size, np.unique(np.unravel_index(bad, shape)[0])
    what, present = ("DN 0", "(ds['reflectance'] != 0)") if dn else ("NaN", "ds['reflectance'].notnull()")
    return [
        f"`reflectance` has no data ({what}) in {n_bad} pixels that `valid` marks observed (dates "
        f"{_preview(dates.tolist())}): training would use them. Fix: ds['valid'] = ds['valid'] & "
        f"{present}.all('band')"
    ]


def _check_scl(ds: xr.Dataset) -> list[str]:
    values = _sample(ds["scl"])
    bad = values > max(SCL_CODES)
    if not bad.any():
        return []
    return [
        f"`scl` holds codes outside 0..11: {{{_preview(np.unique(values[bad]).tolist())}}}. "
        "Fix: map them to SCL codes (0 no data ... 11 snow) or drop `scl`"
    ]
