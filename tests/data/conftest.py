"""Shared data fixtures: a small, seeded, hand-built cube that passes :func:`validate_cube`.

``toy_cube``: 3 dates x 4 bands (B02 B03 B04 B08) x 32 x 32, uint16 DN with L2A scaling attributes,
``valid`` derived from ``scl`` (with a cloud blob and a no-data corner), and 3-class ``labels`` with a void
border. Tests that change it get their own copy (the fixture builds a fresh one each time).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hvaeseg.data.bands import band_coords
from hvaeseg.data.schema import SCHEMA_VERSION, class_attrs, valid_from_scl

TOY_BANDS = ("B02", "B03", "B04", "B08")
TOY_CLASSES = ("water", "forest", "crop")
TOY_COLORS = ("#1f4e9e", "#1b7a2e", "#e0c341")
#: mean DN per class and band (B02, B03, B04, B08): dark water, red-edge vegetation, brighter crop
_CLASS_DN = np.array([[1300, 1350, 1200, 1050], [1250, 1400, 1250, 3500], [1400, 1650, 1500, 4000]], dtype=np.float64)


def make_toy_cube(seed: int = 0, n_dates: int = 3, size: int = 32, bands=TOY_BANDS) -> xr.Dataset:
    """A small valid cube, bitwise reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.where(xx < w // 3, 0, np.where(yy < h // 2, 1, 2)).astype(np.int16)
    labels[0, :] = -1  # void border row
    labels[:, -1] = -1
    band_index = [TOY_BANDS.index(b) for b in bands]
    base = _CLASS_DN[np.clip(labels, 0, None)][..., band_index]  # (y, x, band)
    refl = base.transpose(2, 0, 1)[None] + rng.normal(0.0, 40.0, (n_dates, len(bands), h, w))
    scl = np.where(labels == 0, 6, 4).astype(np.uint8)[None].repeat(n_dates, axis=0)
    # a bright cloud blob on date 1 and a no-data corner on the last date
    cloud = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (h // 4) ** 2
    if n_dates > 1:
        refl[1][:, cloud] = 6000.0
        scl[1][cloud] = 9
    refl = np.clip(np.round(refl), 1, 10000).astype(np.uint16)
    refl[-1][:, : h // 4, : w // 4] = 0
    scl[-1][: h // 4, : w // 4] = 0
    time = np.array("2024-03-01", dtype="datetime64[ns]") + np.arange(n_dates) * np.timedelta64(16, "D")
    ds = xr.Dataset(
        {
            "reflectance": (
                ("time", "band", "y", "x"),
                refl,
                {"scale_factor": 1e-4, "add_offset": -0.1, "units": "1", "long_name": "surface reflectance (DN)"},
            ),
            "scl": (("time", "y", "x"), scl),
            "labels": (("y", "x"), labels, class_attrs(TOY_CLASSES, TOY_COLORS)),
        },
        coords={
            "time": time.astype("datetime64[ns]"),
            **band_coords(bands),
            "y": 5_000_005.0 - 10.0 * np.arange(h),
            "x": 600_005.0 + 10.0 * np.arange(w),
        },
        attrs={"crs": "EPSG:32631", "hvaeseg_schema_version": SCHEMA_VERSION, "title": "toy cube"},
    )
    ds["valid"] = valid_from_scl(ds["scl"], ds["reflectance"])
    return ds[["reflectance", "valid", "scl", "labels"]]


@pytest.fixture
def toy_cube() -> xr.Dataset:
    """A fresh 3-date, 4-band, 32x32 valid cube (see :func:`make_toy_cube`)."""
    return make_toy_cube()


def loader_cube(n_dates: int = 5, size: int = 48) -> xr.Dataset:
    """The toy cube of the loader tests, with a date that has no valid pixel at all (the all-invalid rule)."""
    ds = make_toy_cube(seed=1, n_dates=n_dates, size=size)
    ds["valid"][2] = False
    return ds


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """:func:`loader_cube` in a store with 16 x 16 chunks (so patches straddle chunks), with band statistics.

    Shared by the tests of a module, which only read it."""
    from hvaeseg.data.stats import ensure_band_stats
    from hvaeseg.data.store import write_cube

    path = write_cube(loader_cube(), tmp_path_factory.mktemp("loader") / "cube.zarr", chunks={"y": 16, "x": 16})
    ensure_band_stats(path)
    return path
