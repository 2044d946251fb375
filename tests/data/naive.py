"""The reference the loader is checked against: a naive read of a plan's patches that shares no code with
:mod:`hvaeseg.data` (the store opened by xarray without decoding, plain numpy slicing per patch, the band
statistics and the normalisation computed here in float64 from the documented rules).

Rules it implements, from the docs (:mod:`hvaeseg.data.loader`, :mod:`hvaeseg.data.stats`):

- ``x = (DN * scale_factor + add_offset - band_mean) / band_std`` per band; float32 reflectance (physical
  units, no ``scale_factor``) is the L2A DN ``round((reflectance + 0.1) / 1e-4)``, NaN -> DN 0;
- ``band_mean`` / ``band_std``: mean and (population) standard deviation of the reflectance over the pixels
  where ``valid`` holds and the band's DN is not 0; no such pixel: 0 and 1; a constant band: std 1;
- ``labels`` ``-1`` everywhere for patches the plan does not flag ``labelled``;
- ``doy``: calendar day of the year plus the time of day, of each patch date.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import xarray as xr

from hvaeseg.data.loader import PatchBatch
from hvaeseg.data.sampler import PatchPlan

#: Sentinel-2 L2A DN encoding of float reflectance: reflectance = DN * L2A_SCALE + L2A_OFFSET
L2A_SCALE, L2A_OFFSET = 1e-4, -0.1
#: difference allowed between the loader's float32 ``DN * a + b`` and the float64 reference rounded to
#: float32: ``X_ATOL + X_RTOL * |x|`` (a few float32 roundings of ``DN * a`` and ``b``, values of tens)
X_ATOL, X_RTOL = 1e-5, 2.0**-21


def _raw(cube) -> xr.Dataset:
    if isinstance(cube, xr.Dataset):
        return cube
    if isinstance(cube, (str, os.PathLike)):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            return xr.open_zarr(os.fspath(cube), chunks=None, mask_and_scale=False, consolidated=False)
    raise TypeError(f"expected a store path or an xarray.Dataset, got {type(cube).__name__}")


def raw_dn(ds: xr.Dataset) -> tuple[np.ndarray, float, float]:
    """``(DN (T, C, Y, X) uint16, scale_factor, add_offset)`` of the cube's reflectance."""
    refl = ds["reflectance"].transpose("time", "band", "y", "x")
    values = np.asarray(refl.values)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.uint16), float(refl.attrs["scale_factor"]), float(refl.attrs["add_offset"])
    if "scale_factor" in refl.attrs:
        raise ValueError("the reference reads float reflectance in physical units only (no scale_factor)")
    finite = np.isfinite(values)
    dn = np.rint((np.where(finite, values, 0).astype(np.float64) - L2A_OFFSET) / L2A_SCALE)
    return np.where(finite, np.clip(dn, 1, 65535), 0).astype(np.uint16), L2A_SCALE, L2A_OFFSET


def band_stats(dn: np.ndarray, valid: np.ndarray, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per band of ``DN * scale + offset`` over valid pixels with DN != 0 (float64); ``dn``
    ``(T, C, Y, X)``, ``valid`` ``(T, Y, X)``."""
    mean, std = np.zeros(dn.shape[1]), np.ones(dn.shape[1])
    for c in range(dn.shape[1]):
        v = dn[:, c][valid & (dn[:, c] != 0)].astype(np.float64) * scale + offset
        if v.size:
            mean[c] = v.mean()
            std[c] = v.std() if v.std() > 0 else 1.0
    return mean, std


def day_of_year(times: np.ndarray) -> np.ndarray:
    """float64 calendar day of the year (``tm_yday``) plus the fraction of the day elapsed."""
    out = np.empty(len(times))
    for i, t in enumerate(times):
        d = np.datetime64(t, "us").item()
        out[i] = d.timetuple().tm_yday + (d.hour * 3600 + d.minute * 60 + d.second + d.microsecond * 1e-6) / 86400
    return out


def read_patches_naive(cube, plan: PatchPlan, *, normalise: bool = True) -> PatchBatch:
    """The patches of ``plan``, read one by one with numpy slicing of the whole cube.

    :param cube: a store path or an ``xarray.Dataset``.
    :param normalise: ``x`` normalised (float32, from float64) with the band statistics computed here,
        which must equal the cube's stored ``band_mean`` / ``band_std`` when it has them; ``False``: the raw
        DN as ``torch.uint16``.
    """
    ds = _raw(cube)
    dn, scale, offset = raw_dn(ds)
    T, C, Y, X = dn.shape
    valid = (np.asarray(ds["valid"].transpose("time", "y", "x").values, dtype=bool) if "valid" in ds
             else np.ones((T, Y, X), bool))
    labels = np.asarray(ds["labels"].transpose("y", "x").values) if "labels" in ds else None
    H, W = plan.sizes["y"], plan.sizes["x"]
    xs, vs, ls = [], [], []
    for i in range(len(plan)):
        t, y, x = np.asarray(plan.t[i]), int(plan.y[i]), int(plan.x[i])
        xs.append(dn[t][:, :, y : y + H, x : x + W])
        vs.append(valid[t][:, y : y + H, x : x + W])
        lab = labels is not None and bool(plan.labelled[i])
        ls.append(labels[y : y + H, x : x + W].astype(np.int64) if lab else np.full((H, W), -1, np.int64))
    D = plan.n_dates
    xs_ = np.stack(xs) if xs else np.zeros((0, D, C, H, W), np.uint16)
    if normalise:
        mean, std = band_stats(dn, valid, scale, offset)
        if "band_mean" in ds.attrs:
            np.testing.assert_allclose(ds.attrs["band_mean"], mean, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ds.attrs["band_std"], std, rtol=1e-9, atol=1e-12)
        x64 = (xs_ * scale + offset - mean[:, None, None]) / std[:, None, None]
        # one DN step is far above the tolerance: a wrong pixel, band or statistic shows
        assert (scale / std).min() > 10 * (X_ATOL + X_RTOL * np.abs(x64).max(initial=0))
        x_ = torch.from_numpy(x64.astype(np.float32))
    else:
        x_ = torch.from_numpy(xs_)
    valid_ = torch.from_numpy(np.stack(vs) if vs else np.zeros((0, D, H, W), bool))
    labels_ = torch.from_numpy(np.stack(ls) if ls else np.zeros((0, H, W), np.int64))
    doy = None
    if np.issubdtype(ds["time"].dtype, np.datetime64):
        doy = torch.from_numpy(day_of_year(ds["time"].values)[np.asarray(plan.t)].astype(np.float32))
    if not plan.temporal:
        x_, valid_ = x_[:, 0], valid_[:, 0]
        doy = None if doy is None else doy[:, 0]
    return PatchBatch(x_, valid_, labels_, doy)


def assert_reads(got: PatchBatch, ref: PatchBatch) -> None:
    """``got`` (the loader's, on the CPU) is the reference read: the same DN, masks, labels and days bit for
    bit; normalised ``x`` within :data:`X_ATOL` + :data:`X_RTOL` ``|x|`` (float32 arithmetic against float64)."""
    for name, a, b in zip(PatchBatch._fields, got, ref):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        if a.is_floating_point() and name == "x":
            torch.testing.assert_close(a, b, rtol=X_RTOL, atol=X_ATOL, msg=name)
        else:
            assert torch.equal(a, b), name
