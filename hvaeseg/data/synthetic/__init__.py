"""Synthetic Sentinel-2 L2A cubes with known truth: the built-in default, the test fixture, the benchmark.

>>> ds = make_cube("tiny", seed=0, size=64, n_dates=2)
>>> dict(ds.sizes)
{'time': 2, 'band': 10, 'y': 64, 'x': 64}

A cube holds ``reflectance`` (what a sensor sees, with clouds, cirrus, shadows and snow),
``clean_reflectance`` (the land surface alone: the truth under the clouds, identical to ``reflectance``
wherever ``valid``), ``scl`` (SCL-like codes), ``valid`` and time-invariant ``labels``; see
``docs/conventions.md``. The pieces:

- :mod:`.config`: :class:`SyntheticConfig` and :data:`PRESETS` (``tiny``, ``small``, ``large``);
- :mod:`.landcover`: Voronoi parcels, road blocks, towns, forest, water, texture;
- :mod:`.spectra`: endmember spectra (where the numbers come from) and crop/forest phenology;
- :mod:`.atmosphere`: cloud regime, clouds, shadows, cirrus, snow;
- :mod:`.generator`: :class:`SyntheticCube`, which renders one date at a time.

Everything is seeded: the same config and seed give the same bytes, in memory (:func:`make_cube`) or
streamed to a Zarr store date by date (:func:`write_synthetic`, for cubes bigger than memory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg._progress import progress
from hvaeseg.data.synthetic.config import CLASS_COLORS, CLASS_NAMES, PRESETS, SyntheticConfig, resolve_config
from hvaeseg.data.synthetic.generator import DateArrays, SyntheticCube

__all__ = [
    "CLASS_NAMES",
    "CLASS_COLORS",
    "PRESETS",
    "SyntheticConfig",
    "SyntheticCube",
    "DateArrays",
    "make_cube",
    "write_synthetic",
    "synthetic_cube",
]


def synthetic_cube(
    preset: str | SyntheticConfig = "tiny",
    seed: int | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    n_dates: int | None = None,
    bands=None,
    cloud_regime: tuple[float, float, float] | None = None,
    **overrides,
) -> SyntheticCube:
    """The :class:`SyntheticCube` of ``preset`` with the given changes (renders dates on demand)."""
    name = preset if isinstance(preset, str) else None
    config = resolve_config(
        preset,
        seed,
        size=size,
        n_dates=n_dates,
        bands=None if bands is None else tuple(bands),
        cloud_regime=cloud_regime,
        **overrides,
    )
    return SyntheticCube(config, preset=name)


def make_cube(
    preset: str | SyntheticConfig = "tiny",
    seed: int = 0,
    *,
    size: int | tuple[int, int] | None = None,
    n_dates: int | None = None,
    bands=None,
    cloud_regime: tuple[float, float, float] | None = None,
    progress_bar: bool | None = None,
    **overrides,
) -> xr.Dataset:
    """A synthetic cube in memory.

    :param preset: ``"tiny"`` (128 x 128 x 6 dates), ``"small"`` (512 x 512 x 12) or ``"large"``
        (4096 x 4096 x 24: 16 GB in memory, prefer :func:`write_synthetic`), or a :class:`SyntheticConfig`.
    :param seed: seed of every random draw; same seed and config, same bytes.
    :param size: ``H`` or ``(H, W)`` pixels of 10 m.
    :param n_dates: number of dates.
    :param bands: any Sentinel-2 band names, in the order wanted (default the 10 L2A bands at 10/20 m).
    :param cloud_regime: shares of clear, partly cloudy and overcast dates, summing to 1.
    :param progress_bar: force the progress bar on or off (default: on a terminal).
    :param overrides: any other :class:`SyntheticConfig` field (``noise=0.0``, ``classes=(...)``, ...).
    :returns: the cube: ``reflectance``/``clean_reflectance (time, band, y, x)`` uint16 DN,
        ``valid``/``scl (time, y, x)``, ``labels (y, x)`` int16; passes
        :func:`~hvaeseg.data.schema.validate_cube`.
    """
    cube = synthetic_cube(preset, seed, size=size, n_dates=n_dates, bands=bands, cloud_regime=cloud_regime, **overrides)
    t, nb = cube.n_dates, len(cube.config.bands)
    h, w = cube.size
    refl = np.empty((t, nb, h, w), np.uint16)
    clean = np.empty((t, nb, h, w), np.uint16)
    scl = np.empty((t, h, w), np.uint8)
    valid = np.empty((t, h, w), bool)
    for i in progress(range(t), desc="generating dates", enabled=progress_bar):
        cube.render(i, DateArrays(refl[i], clean[i], scl[i], valid[i]))
    return cube.dataset(refl, clean, scl, valid)


def write_synthetic(
    path: str | os.PathLike,
    preset: str | SyntheticConfig = "tiny",
    seed: int = 0,
    *,
    size: int | tuple[int, int] | None = None,
    n_dates: int | None = None,
    bands=None,
    cloud_regime: tuple[float, float, float] | None = None,
    chunks: Mapping[str, int | None] | None = None,
    codec: str | Any | None = None,
    overwrite: bool = False,
    storage_options: Mapping | None = None,
    progress_bar: bool | None = None,
    **overrides,
) -> str:
    """Generate a synthetic cube straight into a Zarr store, one date at a time (bounded memory).

    Same arguments as :func:`make_cube` plus the store options of
    :class:`~hvaeseg.data.store.CubeWriter` (``chunks``, ``codec``, ``overwrite``, ``storage_options``);
    the store holds exactly the bytes :func:`make_cube` returns. Memory: the landscape plus two dates.

    :returns: ``path``.
    """
    from hvaeseg.data.store import CubeWriter

    cube = synthetic_cube(preset, seed, size=size, n_dates=n_dates, bands=bands, cloud_regime=cloud_regime, **overrides)
    template = cube.template()
    coords = cube.coords()
    buffers = DateArrays.empty(len(cube.config.bands), cube.size)
    with CubeWriter(
        path, template, chunks=chunks, codec=codec, overwrite=overwrite, storage_options=storage_options
    ) as writer:
        for t in progress(range(cube.n_dates), desc="writing dates", enabled=progress_bar):
            writer.write_dates(t, cube.render_dataset(t, buffers, coords=coords))
    return os.fspath(path)
