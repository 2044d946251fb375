"""Surface spectra and their seasonal course: what each land-cover unit looks like on each date.

Endmember spectra are given at wavelength nodes from 400 to 2500 nm and interpolated linearly to any
Sentinel-2 band centre, so all 13 bands (B01, B09, B10 too) get values. The numbers are *typical
bottom-of-atmosphere (L2A) surface reflectances*, rounded, chosen to fall inside the ranges commonly
reported for Sentinel-2 L2A land-cover classes and to follow the shapes of laboratory spectra (USGS
spectral library style curves for green and dry vegetation, soils, water, asphalt, snow); they are not
copied from one specific source and carry no claim beyond "realistic looking":

- green vegetation (full canopy): blue 0.02-0.03, green peak ~0.08, red 0.02-0.03, red edge rising
  from ~0.08 (705 nm) to ~0.42 (783 nm), NIR plateau ~0.45, SWIR 0.24 (1610 nm) and 0.12 (2190 nm) with
  the leaf-water absorptions at 1450 / 1940 nm: NDVI ~0.9, NIR/red ~18.
- dry vegetation (straw, stubble, senescent crop): rising smoothly, red ~0.2, NIR ~0.3, high SWIR
  (~0.42 at 1610 nm) from cellulose/lignin: NDVI ~0.2.
- bare soil (loam): monotonically rising from ~0.06 (blue) to ~0.3 (SWIR 1), darker when wet.
- water: clear ~0.04 in blue-green, ~0.005 in NIR, ~0 in SWIR; turbid water brighter in green/red
  (~0.08) but still < 0.03 in NIR.
- coniferous canopy darker than broadleaf (NIR ~0.25 vs ~0.36); leaf-off deciduous forest (branches
  and litter) ~0.075 red, ~0.16 NIR.
- built-up: flat and bright (concrete ~0.1-0.22), red-tile roofs redder; asphalt dark (0.05-0.12).
- snow: ~0.85 in the visible, falling through the NIR to ~0.06 at 1610 nm (NDSI ~0.87).
- clouds: ~0.6 and flat through the VNIR, lower in the SWIR (droplet absorption); see :mod:`.atmosphere`.

B10 (1375 nm) sits in a strong water-vapour absorption band: the surface is nearly invisible there
(surface spectra are multiplied by 0.03 at B10), only high clouds and cirrus are bright.

Phenology (day-of-year curves, per parcel): winter cereal green over winter at low cover, green-up in
March, peak in May, senescent (straw) in June-July, harvested in July-August, stubble then ploughed,
sown again in October; maize bare until May (half of the parcels with a winter cover crop until
April), green-up in June, peak July-August, senescent in September, harvested September-October;
grassland green all year (NDVI ~0.8) with a spring peak and 0-3 mowing cuts; deciduous forest leaf-on
late April to October; built-up parcels have some garden vegetation. Each parcel has its own dates and
levels, so a map of one date shows crops at different stages. The timing and levels were checked
against the real Flanders L2A sample in ``shared/data`` (maize: cover crop NDVI ~0.6 in
February-April, bare soil in May with B04 ~0.15 / B08 ~0.26 / B11 ~0.29, NDVI ~0.8 in July, harvest
mid-September; grassland NDVI 0.7-0.9 with summer dips).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvaeseg.data.bands import BANDS
from hvaeseg.data.synthetic.landcover import (
    BARE,
    FOREST,
    GRASS,
    MAIZE,
    N_SURFACES,
    ROAD,
    URBAN,
    WATER,
    WINTER,
    LandCover,
)

__all__ = [
    "ENDMEMBERS", "WAVELENGTHS", "endmember", "UnitParams", "draw_unit_params", "unit_spectra", "snow_spectrum",
    "cloud_spectrum",
]  # fmt: skip

#: central wavelengths (nm) of all 13 bands, in :data:`hvaeseg.data.bands.BANDS` order
WAVELENGTHS = np.array([b.wavelength_nm for b in BANDS], dtype=np.float64)
_B04, _B08 = 3, 7  # indices of red and NIR in WAVELENGTHS

# (wavelength nm, reflectance) nodes; see the module docstring for where the values come from
ENDMEMBERS: dict[str, tuple[tuple[float, float], ...]] = {
    "vegetation": (
        (400, 0.020), (450, 0.025), (500, 0.035), (550, 0.080), (600, 0.050), (650, 0.030), (680, 0.025),
        (700, 0.080), (720, 0.200), (740, 0.330), (760, 0.410), (800, 0.445), (900, 0.455), (950, 0.430),
        (1000, 0.440), (1100, 0.430), (1200, 0.380), (1300, 0.380), (1400, 0.250), (1450, 0.170),
        (1500, 0.200), (1600, 0.240), (1700, 0.220), (1800, 0.180), (1950, 0.060), (2100, 0.120),
        (2200, 0.120), (2300, 0.090), (2500, 0.050),
    ),
    "dry_vegetation": (
        (400, 0.060), (500, 0.100), (550, 0.140), (600, 0.180), (650, 0.200), (700, 0.240), (750, 0.280),
        (800, 0.310), (900, 0.330), (1000, 0.350), (1200, 0.400), (1400, 0.330), (1450, 0.300),
        (1600, 0.420), (1700, 0.430), (1800, 0.400), (1950, 0.250), (2100, 0.330), (2200, 0.300),
        (2300, 0.270), (2500, 0.200),
    ),
    "soil": (
        (400, 0.050), (450, 0.065), (500, 0.085), (550, 0.105), (600, 0.130), (650, 0.145), (700, 0.165),
        (750, 0.190), (800, 0.215), (850, 0.235), (900, 0.245), (1000, 0.255), (1200, 0.275),
        (1400, 0.260), (1450, 0.240), (1600, 0.300), (1800, 0.310), (1900, 0.250), (2000, 0.260),
        (2200, 0.260), (2300, 0.240), (2500, 0.220),
    ),
    "clear_water": (
        (400, 0.040), (450, 0.045), (500, 0.045), (550, 0.040), (600, 0.025), (650, 0.015), (700, 0.010),
        (750, 0.006), (800, 0.005), (900, 0.004), (1000, 0.003), (1600, 0.002), (2200, 0.001), (2500, 0.001),
    ),
    "turbid_water": (
        (400, 0.050), (450, 0.060), (500, 0.070), (550, 0.090), (600, 0.085), (650, 0.075), (700, 0.060),
        (750, 0.030), (800, 0.025), (850, 0.022), (900, 0.015), (1000, 0.010), (1600, 0.005),
        (2200, 0.003), (2500, 0.002),
    ),
    "conifer": (
        (400, 0.015), (450, 0.020), (500, 0.025), (550, 0.045), (600, 0.030), (650, 0.020), (680, 0.018),
        (700, 0.040), (720, 0.100), (740, 0.170), (760, 0.220), (800, 0.250), (900, 0.260), (1000, 0.250),
        (1200, 0.220), (1400, 0.130), (1450, 0.090), (1600, 0.120), (1700, 0.110), (1800, 0.090),
        (1950, 0.030), (2100, 0.060), (2200, 0.055), (2300, 0.040), (2500, 0.020),
    ),
    "broadleaf": (
        (400, 0.020), (450, 0.025), (500, 0.030), (550, 0.060), (600, 0.040), (650, 0.025), (680, 0.022),
        (700, 0.060), (720, 0.170), (740, 0.270), (760, 0.330), (800, 0.360), (900, 0.370), (1000, 0.360),
        (1200, 0.320), (1400, 0.200), (1450, 0.140), (1600, 0.180), (1700, 0.170), (1800, 0.140),
        (1950, 0.050), (2100, 0.090), (2200, 0.085), (2300, 0.070), (2500, 0.040),
    ),
    "leaf_off": (
        (400, 0.030), (450, 0.040), (500, 0.050), (550, 0.060), (600, 0.070), (650, 0.075), (700, 0.090),
        (750, 0.120), (800, 0.150), (900, 0.170), (1000, 0.190), (1200, 0.220), (1400, 0.200),
        (1450, 0.180), (1600, 0.250), (1800, 0.250), (1950, 0.150), (2100, 0.200), (2200, 0.190),
        (2300, 0.170), (2500, 0.130),
    ),
    "concrete": (
        (400, 0.100), (450, 0.120), (500, 0.140), (550, 0.155), (600, 0.165), (650, 0.175), (700, 0.185),
        (800, 0.200), (900, 0.210), (1000, 0.215), (1200, 0.225), (1400, 0.220), (1600, 0.230),
        (1800, 0.230), (2000, 0.210), (2200, 0.210), (2500, 0.190),
    ),
    "roof_tiles": (
        (400, 0.050), (450, 0.055), (500, 0.060), (550, 0.075), (600, 0.120), (650, 0.160), (700, 0.190),
        (800, 0.220), (900, 0.240), (1000, 0.260), (1200, 0.280), (1400, 0.270), (1600, 0.300),
        (1800, 0.300), (2000, 0.270), (2200, 0.280), (2500, 0.250),
    ),
    "asphalt": (
        (400, 0.050), (500, 0.060), (600, 0.070), (700, 0.080), (800, 0.090), (1000, 0.100),
        (1600, 0.120), (2200, 0.120), (2500, 0.110),
    ),
    "snow": (
        (400, 0.850), (500, 0.880), (600, 0.870), (700, 0.850), (800, 0.800), (900, 0.720), (1000, 0.600),
        (1100, 0.500), (1200, 0.400), (1300, 0.350), (1400, 0.150), (1500, 0.080), (1600, 0.060),
        (1800, 0.080), (2000, 0.020), (2200, 0.040), (2500, 0.020),
    ),
    "cloud": (
        (400, 1.000), (700, 1.000), (900, 0.980), (1000, 0.960), (1200, 0.920), (1375, 0.850),
        (1600, 0.750), (2200, 0.550), (2500, 0.500),
    ),
}  # fmt: skip


def endmember(name: str, wavelengths: np.ndarray = WAVELENGTHS) -> np.ndarray:
    """Endmember ``name`` at ``wavelengths`` (nm), linearly interpolated; float64."""
    nodes = np.array(ENDMEMBERS[name], dtype=np.float64)
    return np.interp(wavelengths, nodes[:, 0], nodes[:, 1])


def _surface_visibility(wavelengths: np.ndarray) -> np.ndarray:
    """Share of the surface signal seen through the atmosphere: ~0 at 1375 nm (water vapour), else 1."""
    return 1.0 - 0.97 * np.exp(-(((wavelengths - 1375.0) / 30.0) ** 2))


_VIS = _surface_visibility(WAVELENGTHS)
_E = {name: endmember(name) * (1.0 if name == "cloud" else _VIS) for name in ENDMEMBERS}
#: how much darker wet soil is per band: ~25 % in the visible, ~45 % in the SWIR
_MOIST = np.interp(WAVELENGTHS, [400, 1000, 1500, 2500], [0.25, 0.3, 0.45, 0.45])


def _sig(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class UnitParams:
    """Per-parcel random parameters (each ``(P,)`` float64 unless noted) for every surface type."""

    bright: np.ndarray
    soil_bright: np.ndarray
    soil_wet: np.ndarray
    # winter cereal: green-up, senescence, harvest, tillage, sowing (day of year); cover levels
    wc_greenup: np.ndarray
    wc_senesce: np.ndarray
    wc_harvest: np.ndarray
    wc_till: np.ndarray
    wc_sow: np.ndarray
    wc_peak: np.ndarray
    wc_winter: np.ndarray
    # maize
    mz_greenup: np.ndarray
    mz_senesce: np.ndarray
    mz_harvest: np.ndarray
    mz_peak: np.ndarray
    mz_cover_crop: np.ndarray
    # grassland: base cover, seasonal amplitude, mowing days (inf = no cut) and depth
    gr_base: np.ndarray
    gr_amp: np.ndarray
    gr_mow: np.ndarray  # (P, 3)
    gr_depth: np.ndarray
    # bare soil weeds
    weeds: np.ndarray
    # forest: conifer share, leaf-on and leaf-off days
    conifer: np.ndarray
    leaf_on: np.ndarray
    leaf_off: np.ndarray
    # built-up: concrete vs tiles mix, garden share, brightness
    concrete: np.ndarray
    garden: np.ndarray
    urban_bright: np.ndarray
    # road: verge share (mixed pixels), asphalt brightness
    verge: np.ndarray
    # water (per parcel, equal within a road block: one lake keeps one character)
    turbidity: np.ndarray
    algae: np.ndarray


def draw_unit_params(rng: np.random.Generator, landcover: LandCover) -> UnitParams:
    """Draw :class:`UnitParams` for the parcels of ``landcover``."""
    p = landcover.n_parcels
    u = lambda lo, hi: rng.uniform(lo, hi, p)  # noqa: E731
    bright = np.exp(0.05 * rng.standard_normal(p))
    soil_bright, soil_wet = u(0.75, 1.25), u(0.3, 0.9)
    wc = dict(
        wc_greenup=u(65, 95), wc_senesce=u(165, 185), wc_harvest=u(200, 222), wc_till=u(232, 268),
        wc_sow=u(278, 305), wc_peak=u(0.82, 0.95), wc_winter=u(0.2, 0.4),
    )  # fmt: skip
    sow = u(110, 140)
    mz = dict(
        mz_greenup=sow + u(35, 48), mz_senesce=u(238, 258), mz_harvest=u(262, 292), mz_peak=u(0.85, 0.97),
        mz_cover_crop=np.where(rng.random(p) < 0.5, u(0.3, 0.6), 0.0),
    )  # fmt: skip
    n_cuts = rng.choice(4, size=p, p=[0.2, 0.3, 0.35, 0.15])
    first = u(130, 158)
    gaps = rng.uniform(38, 55, (p, 2))
    mow = np.stack([first, first + gaps[:, 0], first + gaps[:, 0] + gaps[:, 1]], axis=1)
    mow[np.arange(3)[None, :] >= n_cuts[:, None]] = np.inf
    gr = dict(gr_base=u(0.75, 0.88), gr_amp=u(0.04, 0.1), gr_mow=mow, gr_depth=u(0.25, 0.4))
    weeds = u(0.0, 0.2)
    forest = dict(conifer=rng.uniform(0, 1, p) ** 2 * 0.8, leaf_on=u(105, 125), leaf_off=u(285, 305))
    urban = dict(concrete=u(0, 1), garden=u(0.05, 0.3), urban_bright=np.exp(0.12 * rng.standard_normal(p)))
    verge = u(0.05, 0.25)
    n_blocks = landcover.n_blocks
    block_turbidity = rng.uniform(0, 1, n_blocks) ** 2
    block_algae = rng.uniform(0, 1, n_blocks)
    blocks = landcover.parcel_block
    return UnitParams(
        bright=bright, soil_bright=soil_bright, soil_wet=soil_wet, **wc, **mz, **gr, weeds=weeds, **forest,
        **urban, verge=verge, turbidity=block_turbidity[blocks], algae=block_algae[blocks],
    )  # fmt: skip


def _season(doy: float, peak: float) -> float:
    """Smooth yearly cycle in [0, 1], 1 on day ``peak``."""
    return 0.5 + 0.5 * float(np.cos(2 * np.pi * (doy - peak) / 365.25))


def _cover_winter(q: UnitParams, d: float) -> tuple[np.ndarray, np.ndarray]:
    green = (q.wc_winter + (q.wc_peak - q.wc_winter) * _sig((d - q.wc_greenup) / 10.0)) * (
        1.0 - _sig((d - q.wc_senesce) / 8.0)
    ) + q.wc_winter * _sig((d - (q.wc_sow + 35.0)) / 10.0)
    dry = _sig((d - q.wc_senesce) / 8.0) * (1.0 - _sig((d - q.wc_harvest) / 3.0)) * 0.9 + _sig(
        (d - q.wc_harvest) / 3.0
    ) * (1.0 - _sig((d - q.wc_till) / 3.0)) * 0.45
    return green, dry


def _cover_maize(q: UnitParams, d: float) -> tuple[np.ndarray, np.ndarray]:
    green = q.mz_peak * _sig((d - q.mz_greenup) / 9.0) * (1.0 - _sig((d - q.mz_senesce) / 8.0))
    green = green + q.mz_cover_crop * ((1.0 - _sig((d - 95.0) / 6.0)) + _sig((d - (q.mz_harvest + 40.0)) / 8.0))
    dry = _sig((d - q.mz_senesce) / 8.0) * (1.0 - _sig((d - q.mz_harvest) / 3.0)) * 0.85 + _sig(
        (d - q.mz_harvest) / 3.0
    ) * (1.0 - _sig((d - q.mz_harvest - 35.0) / 5.0)) * 0.3
    return green, dry


def _cover_grass(q: UnitParams, d: float) -> tuple[np.ndarray, np.ndarray]:
    cut = _sig((d - q.gr_mow) / 1.0) * (1.0 - _sig((d - q.gr_mow - 20.0) / 5.0))  # (P, 3), inf -> 0
    cut = np.nan_to_num(cut, nan=0.0).sum(axis=1)
    green = np.clip(q.gr_base + q.gr_amp * _season(d, 120.0) - q.gr_depth * cut, 0.2, 0.95)
    dry = 0.25 * (1.0 - green) + 0.3 * q.gr_depth * cut
    return green, np.minimum(dry, 1.0 - green)


def unit_spectra(q: UnitParams, doy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unit's surface spectrum on day of year ``doy``, its texture direction and its SCL code.

    :returns: ``mean (U, 13)`` reflectance, ``texture (U, 13)`` (reflectance change per unit of the
        texture field) and ``scl (U,)`` uint8 (4 vegetation, 5 not vegetated, 6 water), with
        ``U = P * N_SURFACES`` units ordered ``parcel * N_SURFACES + surface``; float32 arrays.
    """
    with np.errstate(over="ignore"):
        return _unit_spectra(q, float(doy))


def _unit_spectra(q: UnitParams, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = q.bright.size
    veg, dry_v, soil0 = _E["vegetation"], _E["dry_vegetation"], _E["soil"]
    wet = _season(d, 15.0)
    soil = (q.soil_bright[:, None] * soil0[None, :]) * (1.0 - wet * q.soil_wet[:, None] * _MOIST[None, :])
    mean = np.empty((p, N_SURFACES, veg.size))
    tex = np.empty_like(mean)

    def fractional(kind: int, green: np.ndarray, dry: np.ndarray) -> None:
        green, dry = green[:, None], dry[:, None]
        r = green * veg + dry * dry_v + np.clip(1.0 - green - dry, 0.0, 1.0) * soil
        mean[:, kind] = r
        tex[:, kind] = 0.5 * green * (1.0 - green) * (veg - soil) + 0.04 * r

    fractional(WINTER, *_cover_winter(q, d))
    fractional(MAIZE, *_cover_maize(q, d))
    fractional(GRASS, *_cover_grass(q, d))
    summer = _season(d, 190.0)
    fractional(BARE, q.weeds * summer, np.full(p, 0.1))
    tex[:, BARE] = 0.06 * mean[:, BARE]

    leaf = (_sig((d - q.leaf_on) / 7.0) * (1.0 - _sig((d - q.leaf_off) / 8.0)))[:, None]
    con = q.conifer[:, None]
    mean[:, FOREST] = con * _E["conifer"] + (1.0 - con) * (leaf * _E["broadleaf"] + (1.0 - leaf) * _E["leaf_off"])
    tex[:, FOREST] = 0.08 * mean[:, FOREST]

    mix, garden = q.concrete[:, None], q.garden[:, None]
    built = mix * _E["concrete"] + (1.0 - mix) * _E["roof_tiles"]
    green_sp = summer * veg + (1.0 - summer) * _E["leaf_off"]
    mean[:, URBAN] = q.urban_bright[:, None] * ((1.0 - garden) * built + garden * green_sp)
    tex[:, URBAN] = 0.3 * mean[:, URBAN]

    verge = q.verge[:, None]
    mean[:, ROAD] = (1.0 - verge) * _E["asphalt"] + verge * (0.6 * green_sp + 0.4 * soil0)
    tex[:, ROAD] = 0.05 * mean[:, ROAD]

    turb = q.turbidity[:, None]
    mean[:, WATER] = (1.0 - turb) * _E["clear_water"] + turb * _E["turbid_water"]
    mean[:, WATER] += (0.015 * summer) * q.algae[:, None] * veg
    tex[:, WATER] = 0.03 * mean[:, WATER]

    mean *= q.bright[:, None, None]
    tex *= q.bright[:, None, None]
    red, nir = mean[:, :, _B04], mean[:, :, _B08]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.where(ndvi > 0.4, 4, 5).astype(np.uint8)
    scl[:, WATER] = 6
    u = p * N_SURFACES
    return mean.reshape(u, -1).astype(np.float32), tex.reshape(u, -1).astype(np.float32), scl.reshape(u)


def snow_spectrum() -> np.ndarray:
    """Fresh snow at the 13 band centres (reflectance, float64; dark at B10 like every surface)."""
    return _E["snow"].copy()


def cloud_spectrum() -> np.ndarray:
    """Relative spectral shape of thick clouds at the 13 band centres (1 in the visible; float64)."""
    return _E["cloud"].copy()
