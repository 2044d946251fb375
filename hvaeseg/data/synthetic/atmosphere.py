"""What lies between the surface and the sensor on one date: clouds, their shadows, thin cirrus, snow.

Each date is drawn *clear*, *partly cloudy* or *overcast* with the shares of ``config.cloud_regime``.

- **Clouds**: a fractal Gaussian random field (power-law spectrum, 3 km down to the coarse grid
  spacing) thresholded at the quantile that gives the date's cloud cover; opacity ramps from 0 to 1 over
  a band of the field above the threshold, so edges are soft and partly transparent. Thick clouds are
  bright and spectrally flat through the VNIR (0.55-0.85 reflectance) and darker in the SWIR.
- **Shadows**: the same cloud field displaced by the sun geometry of the date (solar position at 10:30
  local solar time at 51 N, cloud base 0.6-2.5 km: in winter the shadow falls kilometres north-west of
  its cloud), darkening the surface by 55-80 %, a little less in the blue (diffuse skylight).
- **Cirrus**: on some cloudy dates, a thin streaky (anisotropic) semi-transparent layer adding
  0.02-0.11 reflectance, strongest relative to the surface in B10 (1375 nm).
- **Snow**: on some dates of the winter months, a smooth snow cover field (soft edges, thinner under
  forest, none on open water).

Clean reflectance is the surface without any of these; every pixel any of them touches (down to an
opacity of one part in a million) gets an SCL code that makes it invalid, so ``reflectance`` and
``clean_reflectance`` are identical wherever ``valid``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hvaeseg.data.synthetic.config import SyntheticConfig
from hvaeseg.data.synthetic.fields import LowResField, coarse_spacing
from hvaeseg.data.synthetic.spectra import WAVELENGTHS, cloud_spectrum

__all__ = ["REGIMES", "DatePlan", "draw_date_plan", "sun_position", "LATITUDE_DEG"]

REGIMES: tuple[str, str, str] = ("clear", "partly", "overcast")
#: the shared noise buffer holds H * W + NOISE_MARGIN normals; each (date, band) reads it from its own offset
NOISE_MARGIN = 65521
#: latitude of the scene (Flanders, UTM zone 31N), for the sun position
LATITUDE_DEG = 51.0
#: local solar time of a Sentinel-2 overpass (descending node at 10:30)
_OVERPASS_HOURS = 10.5
CLOUD_SOFT = 0.5  # field units over which cloud opacity ramps from 0 to 1
CIRRUS_SOFT = 0.8
SNOW_SOFT = 0.15
CLOUD_HIGH = 0.6  # opacity above which SCL says 9 (high probability) instead of 8
#: cirrus reflectance at full opacity: flat, a little lower in the SWIR, bright at B10 (1375 nm)
_CIRRUS_SHAPE = np.where(
    np.abs(WAVELENGTHS - 1375.0) < 50.0, 0.3, np.interp(WAVELENGTHS, [400, 1000, 2500], [0.25, 0.25, 0.18])
)
_CIRRUS_DIMMING = 0.25  # share of the surface signal a full-opacity cirrus layer removes


def sun_position(doy: float, latitude_deg: float = LATITUDE_DEG, hours: float = _OVERPASS_HOURS) -> tuple[float, float]:
    """Solar zenith and azimuth (degrees; azimuth clockwise from north) on day of year ``doy``."""
    phi = math.radians(latitude_deg)
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    hour = math.radians(15.0 * (hours - 12.0))
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))
    azimuth = math.degrees(math.atan2(math.sin(hour), math.cos(hour) * math.sin(phi) - math.tan(decl) * math.cos(phi)))
    return zenith, (azimuth + 180.0) % 360.0


@dataclass(frozen=True)
class DatePlan:
    """Everything random about one date, drawn up front from the date's own random stream.

    Fields are coarse (:class:`LowResField`); :meth:`layers` samples them for a block of rows.
    """

    index: int
    time: np.datetime64
    doy: float
    regime: int
    cover: float
    illumination: float
    noise_offsets: np.ndarray  # (13,) offsets into the shared noise buffer, one per band of BANDS
    sun_zenith: float
    sun_azimuth: float
    cloud_height_m: float
    snowy: bool = False  # snow on the ground this date
    cirrus_date: bool = False  # thin cirrus this date
    cloud: LowResField | None = None
    cloud_threshold: float = 0.0
    cloud_reflectance: np.ndarray | None = None  # (13,) opaque-cloud reflectance
    shadow_shift: tuple[float, float] = (0.0, 0.0)  # shadow(p) = cloud(p - shift), pixels
    shadow_depth: np.ndarray | None = None  # (13,) share of the surface signal a full shadow removes
    cirrus: LowResField | None = None
    cirrus_threshold: float = 0.0
    cirrus_opacity: float = 0.0
    snow: LowResField | None = None
    snow_threshold: float = 0.0

    @property
    def regime_name(self) -> str:
        return REGIMES[self.regime]

    @property
    def has_atmosphere(self) -> bool:
        return self.cloud is not None or self.cirrus is not None or self.snow is not None

    @property
    def cirrus_reflectance(self) -> np.ndarray:
        return _CIRRUS_SHAPE

    @property
    def cirrus_dimming(self) -> float:
        return _CIRRUS_DIMMING

    def layers(self, r0: int, r1: int, width: int) -> dict[str, np.ndarray]:
        """Per-pixel layers for rows ``[r0, r1)``, each ``(r1 - r0, width)`` float32 in [0, 1], exactly 0
        where absent: ``cloud`` (opacity), ``shadow`` (strength, before the per-band depth), ``cirrus``
        (opacity), ``snow`` (cover before the per-surface weight). Only the layers of the date."""
        out: dict[str, np.ndarray] = {}
        if self.cloud is not None:
            out["cloud"] = _ramp(self.cloud.rows(r0, r1, width), self.cloud_threshold, CLOUD_SOFT)
            shadow = self.cloud.rows(r0, r1, width, shift=self.shadow_shift)
            out["shadow"] = _ramp(shadow, self.cloud_threshold, CLOUD_SOFT)
        if self.cirrus is not None:
            c = _ramp(self.cirrus.rows(r0, r1, width), self.cirrus_threshold, CIRRUS_SOFT)
            c *= np.float32(self.cirrus_opacity)
            out["cirrus"] = c
        if self.snow is not None:
            out["snow"] = _ramp(self.snow.rows(r0, r1, width), self.snow_threshold, SNOW_SOFT)
        return out


def _ramp(field: np.ndarray, threshold: float, soft: float) -> np.ndarray:
    """``clip((field - threshold) / soft, 0, 1)`` in place; exactly 0 below the threshold."""
    field -= np.float32(threshold)
    field *= np.float32(1.0 / soft)
    np.clip(field, 0.0, 1.0, out=field)
    return field


def draw_date_plan(
    rng: np.random.Generator, config: SyntheticConfig, index: int, time: np.datetime64, *, fields: bool = True
) -> DatePlan:
    """Draw the atmosphere of date ``index`` at ``time`` from ``rng`` (the date's own stream).

    The scalars are always drawn first and in the same order, whatever the regime, then the fields the
    date needs; ``fields=False`` stops after the scalars (cheap: regime, cover, illumination, sun).
    """
    h, w = config.size
    day = time.astype("datetime64[D]")
    doy = float((day - day.astype("datetime64[Y]")).astype(np.int64))
    month = int(day.astype("datetime64[M]").astype(np.int64) % 12) + 1

    u = rng.random(12)
    noise_offsets = rng.integers(0, NOISE_MARGIN, size=WAVELENGTHS.size)
    illumination = float(np.exp(0.03 * rng.standard_normal()))
    clear, partly, _ = config.cloud_regime
    regime = 0 if u[0] < clear else (1 if u[0] < clear + partly else 2)
    lo, hi = (0.0, 0.0) if regime == 0 else (config.partly_cover if regime == 1 else config.overcast_cover)
    cover = lo + (hi - lo) * u[1]
    zenith, azimuth = sun_position(doy)
    height = 600.0 + 1900.0 * u[2]
    length_px = height * min(math.tan(math.radians(zenith)), 3.5) / 10.0
    az = math.radians(azimuth)
    shift = (length_px * math.cos(az), -length_px * math.sin(az))  # rows grow southward, columns eastward
    snowy = month in config.winter_months and u[9] < config.snow_probability
    cirrus_date = regime > 0 and u[5] < config.cirrus_probability
    plan = dict(
        index=index, time=time, doy=doy, regime=regime, cover=cover, illumination=illumination,
        noise_offsets=noise_offsets, sun_zenith=zenith, sun_azimuth=azimuth, cloud_height_m=height,
        snowy=snowy, cirrus_date=cirrus_date,
    )  # fmt: skip
    if not fields:
        return DatePlan(**plan)
    spacing = coarse_spacing(max(h, w), 384)
    if regime > 0 and cover > 0:
        margin = (min(math.ceil(abs(shift[0])), h), min(math.ceil(abs(shift[1])), w))
        field = LowResField.covering(
            rng, (h, w), spacing, margin=margin, corr_px=300.0, smallest_px=0.7 * spacing, slope=1.7
        )
        depth = (0.55 + 0.25 * u[4]) * np.interp(WAVELENGTHS, [400, 2500], [0.85, 1.0])
        plan.update(
            cloud=field,
            cloud_threshold=field.threshold_for_cover((h, w), cover),
            cloud_reflectance=(0.55 + 0.3 * u[3]) * cloud_spectrum(),
            shadow_shift=shift,
            shadow_depth=depth,
        )
    if cirrus_date:
        field = LowResField.covering(
            rng, (h, w), spacing, corr_px=40.0, anisotropy=6.0, angle=math.pi * u[6]
        )
        plan.update(
            cirrus=field,
            cirrus_threshold=field.threshold_for_cover((h, w), 0.3 + 0.6 * u[7]),
            cirrus_opacity=0.15 + 0.3 * u[8],
        )
    if snowy:
        field = LowResField.covering(rng, (h, w), spacing, corr_px=80.0)
        plan.update(snow=field, snow_threshold=field.threshold_for_cover((h, w), 0.4 + 0.6 * u[10]))
    return DatePlan(**plan)

