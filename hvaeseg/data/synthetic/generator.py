"""Rendering: the landscape, the surface spectra and the atmosphere of each date become cube arrays.

One date at a time, one block of rows at a time (about 2^18 pixels, so the working arrays stay in
cache); per band, per block:

``clean = A[unit] + texture * D[unit] + noise``   (DN, float32, then clamped to >= 1 and truncated to uint16)

where ``A`` (``1e4 * reflectance * illumination + 1000.5``: the L2A offset of 1000 DN plus 0.5 for
rounding) and ``D`` are per-unit look-up tables of the date (a few hundred thousand entries, computed
from :mod:`.spectra`), gathered with ``torch.index_select`` (about three times faster than numpy
fancy indexing on one core), and ``noise`` is a view into one buffer of normals drawn once per cube
at an offset drawn per date and band (no normals are drawn per pixel and date).

Where the date has clouds, cirrus, shadow or snow, ``reflectance`` composes them over the noise-free
surface (snow, then shadow, then cloud, then cirrus) and adds the same sensor noise; elsewhere, and
wherever the SCL code says clear, ``reflectance`` is a copy of ``clean_reflectance``: equal bytes
wherever ``valid`` (the noise belongs to the surface signal, so the equality is exact).

Random streams: ``SeedSequence(seed).spawn(2)`` gives a static stream (landscape, parcel parameters,
noise buffer: spawned again into three) and a dates stream, spawned into one child per date. A date's
arrays depend only on the static state and its own child, so rendering dates in any order, in memory or
streamed to a store, gives the same bytes; and since every per-band draw is made for all 13 bands,
a cube of a band subset is exactly the matching slice of the full cube.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from hvaeseg.data.bands import BAND_NAMES, band_coords
from hvaeseg.data.schema import SCHEMA_VERSION, SCL_CODES, class_attrs, valid_from_scl
from hvaeseg.data.synthetic.atmosphere import CLOUD_HIGH, NOISE_MARGIN, REGIMES, DatePlan, draw_date_plan
from hvaeseg.data.synthetic.config import CLASS_COLORS, SyntheticConfig
from hvaeseg.data.synthetic.landcover import FOREST, N_SURFACES, ROAD, URBAN, WATER, make_landcover
from hvaeseg.data.synthetic.spectra import draw_unit_params, snow_spectrum, unit_spectra

__all__ = ["SyntheticCube", "DateArrays", "GENERATOR_NAME", "CRS", "ORIGIN"]

GENERATOR_NAME = "hvaeseg.data.synthetic"
CRS = "EPSG:32631"
#: top-left corner (easting, northing) in metres of UTM 31N: central Flanders, near Ghent
ORIGIN = (500_000.0, 5_660_000.0)
PIXEL_M = 10.0
DN_OFFSET = 1000.0  # L2A processing baseline >= 04.00: reflectance = (DN - 1000) / 1e4
SCALE_FACTOR = 1e-4
ADD_OFFSET = -0.1
_BLOCK_PIXELS = 1 << 18
_REVISIT_DAYS = 5
#: how visible snow is per surface type: none on open water, half under forest canopies
_SNOW_WEIGHT = {WATER: 0.0, FOREST: 0.5, URBAN: 0.8, ROAD: 0.9}
#: valid per SCL code (0..255), from the schema's rule; a look-up is faster than np.isin per pixel
_VALID_LUT = np.zeros(256, dtype=bool)
_VALID_LUT[: len(SCL_CODES)] = valid_from_scl(np.arange(len(SCL_CODES), dtype=np.uint8))


@dataclass(frozen=True)
class DateArrays:
    """One date of a cube: ``reflectance``/``clean`` ``(band, y, x)`` uint16 DN, ``scl``/``valid`` ``(y, x)``."""

    reflectance: np.ndarray
    clean: np.ndarray
    scl: np.ndarray
    valid: np.ndarray

    @classmethod
    def empty(cls, n_bands: int, size: tuple[int, int]) -> DateArrays:
        h, w = size
        return cls(
            np.empty((n_bands, h, w), np.uint16),
            np.empty((n_bands, h, w), np.uint16),
            np.empty((h, w), np.uint8),
            np.empty((h, w), bool),
        )


def date_axis(config: SyntheticConfig) -> np.ndarray:
    """Acquisition times: ``n_dates`` over ``span_days`` on the 5-day revisit grid, at 10:30; datetime64[ns]."""
    n = config.n_dates
    step = config.span_days / n
    days = np.floor(np.arange(n) * step / _REVISIT_DAYS).astype(np.int64) * _REVISIT_DAYS
    if n > 1 and (np.diff(days) <= 0).any():
        days = np.arange(n, dtype=np.int64) * _REVISIT_DAYS
    start = np.datetime64(config.start_date, "D")
    return (start + days.astype("timedelta64[D]")).astype("datetime64[ns]") + np.timedelta64(630, "m")


class SyntheticCube:
    """A synthetic cube that renders its dates on demand (the static landscape is built once).

    >>> cube = SyntheticCube(SyntheticConfig(size=64, n_dates=2))
    >>> cube.render(0).reflectance.shape
    (10, 64, 64)

    :param config: what to generate.
    :param preset: the preset name the config came from (recorded in the attributes only).
    """

    def __init__(self, config: SyntheticConfig, preset: str | None = None):
        if not isinstance(config, SyntheticConfig):
            raise TypeError(f"expected a SyntheticConfig, got {type(config).__name__}")
        self.config = config
        self.preset = preset
        static, dates = np.random.SeedSequence(config.seed).spawn(2)
        lc_seed, params_seed, noise_seed = static.spawn(3)
        self._date_seeds = dates.spawn(config.n_dates)
        self.times = date_axis(config)
        self.landcover = make_landcover(config, np.random.default_rng(lc_seed))
        self.params = draw_unit_params(np.random.default_rng(params_seed), self.landcover)
        h, w = config.size
        noise = np.random.default_rng(noise_seed).standard_normal(h * w + NOISE_MARGIN, dtype=np.float32)
        noise *= np.float32(config.noise / SCALE_FACTOR)
        self._noise = torch.from_numpy(noise)
        self._band_index = np.array([BAND_NAMES.index(b) for b in config.bands])
        weight = np.ones(N_SURFACES, dtype=np.float32)
        for kind, v in _SNOW_WEIGHT.items():
            weight[kind] = v
        self._snow_weight = torch.from_numpy(np.tile(weight, self.landcover.n_parcels))
        self._unit = torch.from_numpy(self.landcover.unit.reshape(-1))
        self._texture = torch.from_numpy(self.landcover.texture.reshape(-1))

    # ------------------------------------------------------------------------------------ metadata
    @property
    def n_dates(self) -> int:
        return self.config.n_dates

    @property
    def size(self) -> tuple[int, int]:
        return self.config.size

    def plan(self, t: int, *, fields: bool = True) -> DatePlan:
        """The random plan of date ``t`` (regime, illumination, sun, cloud/cirrus/snow fields)."""
        t = self._check_date(t)
        rng = np.random.default_rng(self._date_seeds[t])
        return draw_date_plan(rng, self.config, t, self.times[t], fields=fields)

    def _check_date(self, t: int) -> int:
        if not isinstance(t, (int, np.integer)) or not 0 <= t < self.n_dates:
            raise IndexError(f"date index must be an int in 0..{self.n_dates - 1}, got {t!r}")
        return int(t)

    def coords(self, times: bool = True) -> dict:
        """Cube coordinates: time (with per-date ``cloud_regime``), band (+ wavelength, resolution), y, x."""
        h, w = self.size
        x0, y0 = ORIGIN
        coords: dict = {
            **band_coords(self.config.bands),
            "y": ("y", y0 - (np.arange(h) + 0.5) * PIXEL_M, {"units": "m", "standard_name": "projection_y_coordinate"}),
            "x": ("x", x0 + (np.arange(w) + 0.5) * PIXEL_M, {"units": "m", "standard_name": "projection_x_coordinate"}),
        }
        if times:
            regimes = np.array([self.plan(t, fields=False).regime for t in range(self.n_dates)], dtype=np.int8)
            coords["time"] = ("time", self.times)
            coords["cloud_regime"] = (
                "time",
                regimes,
                {"flag_values": [0, 1, 2], "flag_meanings": " ".join(REGIMES), "long_name": "sky of the date"},
            )
        return coords

    def attrs(self) -> dict:
        from hvaeseg import __version__

        return {
            "title": "hvaeseg synthetic Sentinel-2 L2A cube",
            "crs": CRS,
            "hvaeseg_schema_version": SCHEMA_VERSION,
            "generator": GENERATOR_NAME,
            "generator_version": __version__,
            "seed": self.config.seed,
            "preset": self.preset or "custom",
            "synthetic_config": self.config.to_json(),
        }

    def variable_attrs(self) -> dict[str, dict]:
        refl = {"scale_factor": SCALE_FACTOR, "add_offset": ADD_OFFSET, "units": "1"}
        scl_meanings = " ".join(SCL_CODES[k] for k in sorted(SCL_CODES))
        return {
            "reflectance": {**refl, "long_name": "surface reflectance (L2A DN, baseline >= 04.00)"},
            "clean_reflectance": {**refl, "long_name": "surface reflectance without clouds, shadows, cirrus, snow"},
            "valid": {"long_name": "observed and clear"},
            "scl": {
                "long_name": "scene classification",
                "flag_values": sorted(SCL_CODES),
                "flag_meanings": scl_meanings,
            },
            "labels": {
                "long_name": "land cover",
                **class_attrs(self.config.classes, [CLASS_COLORS[c] for c in self.config.classes]),
            },
        }

    def dataset(self, reflectance, clean, scl, valid, times=None, coords: dict | None = None) -> xr.Dataset:
        """A cube Dataset around the given ``(time, ...)`` arrays (all dates, or ``times`` only)."""
        attrs = self.variable_attrs()
        coords = dict(self.coords() if coords is None else coords)
        if times is not None:
            sel = np.asarray(times)
            coords["time"] = ("time", self.times[sel])
            coords["cloud_regime"] = ("time", np.asarray(coords["cloud_regime"][1])[sel], coords["cloud_regime"][2])
        cube = ("time", "band", "y", "x")
        return xr.Dataset(
            {
                "reflectance": (cube, reflectance, attrs["reflectance"]),
                "clean_reflectance": (cube, clean, attrs["clean_reflectance"]),
                "valid": (("time", "y", "x"), valid, attrs["valid"]),
                "scl": (("time", "y", "x"), scl, attrs["scl"]),
                "labels": (("y", "x"), self.landcover.labels, attrs["labels"]),
            },
            coords=coords,
            attrs=self.attrs(),
        )

    def template(self) -> xr.Dataset:
        """The full cube with zero-memory placeholders for the per-date variables (for streaming)."""
        t, b = self.n_dates, len(self.config.bands)
        h, w = self.size
        zero = lambda dtype, shape: np.broadcast_to(np.zeros((), dtype=dtype), shape)  # noqa: E731
        cube, plane = (t, b, h, w), (t, h, w)
        return self.dataset(zero(np.uint16, cube), zero(np.uint16, cube), zero(np.uint8, plane), zero(bool, plane))

    # ------------------------------------------------------------------------------------ rendering
    def render(self, t: int, out: DateArrays | None = None) -> DateArrays:
        """Render date ``t`` (into ``out`` when given, C-contiguous arrays of the right shapes)."""
        plan = self.plan(t)
        h, w = self.size
        nb = len(self.config.bands)
        if out is None:
            out = DateArrays.empty(nb, (h, w))
        _check_out(out, nb, (h, w))
        mean, tex, scl_lut = unit_spectra(self.params, plan.doy)
        gain = plan.illumination / SCALE_FACTOR
        table_a = torch.from_numpy(np.ascontiguousarray((mean[:, self._band_index] * gain + (DN_OFFSET + 0.5)).T))
        table_d = torch.from_numpy(np.ascontiguousarray((tex[:, self._band_index] * gain).T))
        scl_table = torch.from_numpy(scl_lut)
        offsets = plan.noise_offsets[self._band_index]
        composite = _Composite(plan, self._band_index) if plan.has_atmosphere else None

        refl = out.reflectance.reshape(nb, -1)
        clean = out.clean.reshape(nb, -1)
        scl = out.scl.reshape(-1)
        valid = out.valid.reshape(-1)
        rows = max(1, _BLOCK_PIXELS // w)
        cap = rows * w
        buf_a, buf_d, buf_r = (torch.empty(cap, dtype=torch.float32) for _ in range(3))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            p0, p1 = r0 * w, r1 * w
            n = p1 - p0
            unit = self._unit[p0:p1]
            texture = self._texture[p0:p1]
            a, d = buf_a[:n], buf_d[:n]
            scl_blk = scl[p0:p1]
            torch.index_select(scl_table, 0, unit, out=torch.from_numpy(scl_blk))
            layers = composite.layers(r0, r1, w, unit, self._snow_weight) if composite is not None else None
            if layers is not None:
                layers.classify(scl_blk)
            valid_blk = valid[p0:p1]
            np.take(_VALID_LUT, scl_blk, out=valid_blk)
            for i in range(nb):
                torch.index_select(table_a[i], 0, unit, out=a)
                torch.index_select(table_d[i], 0, unit, out=d)
                d.mul_(texture)
                a.add_(d)  # the noise-free surface
                noise = self._noise[offsets[i] + p0 : offsets[i] + p1]
                if layers is not None:  # seen through the layers, then the same sensor noise
                    r = buf_r[:n]
                    layers.apply(i, a, r, d)
                    r.add_(noise).clamp_(min=1.0)
                a.add_(noise).clamp_(min=1.0)
                np.copyto(clean[i, p0:p1], a.numpy(), casting="unsafe")
                if layers is None:
                    refl[i, p0:p1] = clean[i, p0:p1]
                else:
                    np.copyto(refl[i, p0:p1], r.numpy(), casting="unsafe")
                    np.copyto(refl[i, p0:p1], clean[i, p0:p1], where=valid_blk)
        return out

    def render_dataset(self, t: int, out: DateArrays | None = None, coords: dict | None = None) -> xr.Dataset:
        """Date ``t`` as a one-date cube Dataset (what :class:`~hvaeseg.data.store.CubeWriter` takes)."""
        arr = self.render(t, out)
        return self.dataset(
            arr.reflectance[None], arr.clean[None], arr.scl[None], arr.valid[None], times=[t], coords=coords
        )


def _check_out(out: DateArrays, nb: int, size: tuple[int, int]) -> None:
    want: dict[str, tuple[tuple[int, ...], type[np.generic]]] = {
        "reflectance": ((nb, *size), np.uint16), "clean": ((nb, *size), np.uint16)
    }
    want.update(scl=(size, np.uint8), valid=(size, np.bool_))
    for name, (shape, dtype) in want.items():
        arr = getattr(out, name)
        if arr.shape != shape or arr.dtype != dtype or not arr.flags.c_contiguous:
            raise ValueError(
                f"out.{name}: expected a C-contiguous {np.dtype(dtype)} array {shape}, got {arr.dtype} {arr.shape}"
            )


class _Composite:
    """The atmosphere of one date, per band constants in DN units."""

    def __init__(self, plan: DatePlan, band_index: np.ndarray):
        self.plan = plan
        def dn(v: np.ndarray | None) -> torch.Tensor | None:
            return None if v is None else torch.tensor(np.asarray(v)[band_index] / SCALE_FACTOR, dtype=torch.float32)

        self.cloud = dn(plan.cloud_reflectance)
        self.snow = dn(snow_spectrum())
        self.cirrus = plan.cirrus_reflectance[band_index] / SCALE_FACTOR
        self.shadow_depth = None if plan.shadow_depth is None else plan.shadow_depth[band_index]

    def layers(self, r0: int, r1: int, w: int, unit: torch.Tensor, snow_weight: torch.Tensor) -> _BlockLayers | None:
        raw = self.plan.layers(r0, r1, w)
        flat = {name: torch.from_numpy(v.reshape(-1)) for name, v in raw.items()}
        if "snow" in flat:
            flat["snow"].mul_(torch.index_select(snow_weight, 0, unit))
        flat = {name: v for name, v in flat.items() if bool((v > 0).any())}
        if not flat:
            return None
        return _BlockLayers(self, flat)


class _BlockLayers:
    """The layers present in one block of rows, and how they change each band."""

    def __init__(self, comp: _Composite, layers: dict[str, torch.Tensor]):
        self.comp = comp
        self.cloud = layers.get("cloud")
        self.shadow = layers.get("shadow")
        self.cirrus = layers.get("cirrus")
        self.snow = layers.get("snow")
        self.cirrus_keep = None
        if self.cirrus is not None:
            self.cirrus_keep = 1.0 - comp.plan.cirrus_dimming * self.cirrus

    def classify(self, scl: np.ndarray) -> None:
        """Overwrite the clear SCL codes of the block where a layer is present (later ones win)."""
        if self.snow is not None:
            scl[self.snow.numpy() > 0] = 11
        if self.shadow is not None:
            scl[self.shadow.numpy() > 0] = 3
        if self.cirrus is not None:
            scl[self.cirrus.numpy() > 0] = 10
        if self.cloud is not None:
            c = self.cloud.numpy()
            scl[c > 0] = 8
            scl[c > CLOUD_HIGH] = 9

    def apply(self, i: int, surface: torch.Tensor, r: torch.Tensor, tmp: torch.Tensor) -> None:
        """``r`` = band ``i`` seen through the layers, from the noise-free surface DN (with the +1000.5 offset)."""
        comp = self.comp
        torch.sub(surface, DN_OFFSET + 0.5, out=r)
        # a block has a layer only on dates whose plan has it, and so its per-band constants (not None)
        if self.snow is not None:
            assert comp.snow is not None
            r.lerp_(comp.snow[i], self.snow)
        if self.shadow is not None:
            assert comp.shadow_depth is not None
            torch.mul(self.shadow, -float(comp.shadow_depth[i]), out=tmp)
            tmp.add_(1.0)
            r.mul_(tmp)
        if self.cloud is not None:
            assert comp.cloud is not None
            r.lerp_(comp.cloud[i], self.cloud)
        if self.cirrus is not None:
            assert self.cirrus_keep is not None
            r.mul_(self.cirrus_keep)
            r.add_(self.cirrus, alpha=float(comp.cirrus[i]))
        r.add_(DN_OFFSET + 0.5)

