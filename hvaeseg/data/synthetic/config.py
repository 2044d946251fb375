"""The synthetic cube's parameters: :class:`SyntheticConfig` (validated, frozen) and the :data:`PRESETS`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from hvaeseg._dataclass_io import check_fields, from_dict
from hvaeseg.data.bands import L2A_BANDS, check_band_names

__all__ = ["CLASS_NAMES", "CLASS_COLORS", "PARCEL_CLASSES", "SyntheticConfig", "PRESETS", "resolve_config"]

#: every land-cover class the generator knows, in label order (a config may keep a subset)
CLASS_NAMES: tuple[str, ...] = ("water", "forest", "grassland", "winter_cereal", "maize", "bare_soil", "urban")

#: colours of :data:`CLASS_NAMES` (``#rrggbb``), close to common land-cover map legends
CLASS_COLORS: dict[str, str] = {
    "water": "#2b83ba",
    "forest": "#1a7a31",
    "grassland": "#a6d96a",
    "winter_cereal": "#e6c229",
    "maize": "#f17c0f",
    "bare_soil": "#a6761d",
    "urban": "#d7191c",
}

#: classes drawn per parcel (the others come from smooth random fields: water, forest, urban blocks)
PARCEL_CLASSES: tuple[str, ...] = ("grassland", "winter_cereal", "maize", "bare_soil")


def _size_pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        h, w = size
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w)):
            raise TypeError(f"size: expected an int or a pair of ints (H, W), got {size!r}")
        h, w = int(h), int(w)
    else:
        raise TypeError(f"size: expected an int or a pair of ints (H, W), got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"size: expected positive sizes, got {(h, w)}")
    return h, w


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that defines a synthetic cube; the same config and seed give the same bytes.

    :param size: ``(H, W)`` pixels of 10 m (an int means a square).
    :param n_dates: number of acquisition dates.
    :param bands: Sentinel-2 band names, any of the 13, in the order wanted in the cube.
    :param classes: land-cover classes (a subset of :data:`CLASS_NAMES`, in that order); label ``k`` is
        ``classes[k]``. A class left out is not generated: no water bodies, no forest, no towns (and no
        roads) or, for parcel classes, parcels share the remaining parcel classes.
    :param cloud_regime: shares ``(clear, partly cloudy, overcast)`` of the dates, summing to 1; each date
        is drawn independently with these probabilities.
    :param partly_cover: range of the cloud cover of a partly cloudy date.
    :param overcast_cover: range of the cloud cover of an overcast date.
    :param cirrus_probability: chance that a cloudy (partly or overcast) date also has thin cirrus.
    :param snow_probability: chance that a date in ``winter_months`` has snow on the ground.
    :param winter_months: months (1..12) in which snow may fall.
    :param noise: standard deviation of the additive sensor noise, in reflectance units.
    :param start_date: first acquisition date (ISO ``YYYY-MM-DD``).
    :param span_days: the dates spread over this many days (on the 5-day revisit grid).
    :param parcel_size_m: mean side of a field parcel (Voronoi cell), metres.
    :param block_size_m: mean side of a road block (group of parcels bounded by roads), metres.
    :param water_fraction: target share of the area covered by water bodies.
    :param forest_fraction: target share of the area covered by forest.
    :param urban_fraction: target share of parcels that are built-up.
    :param parcel_shares: relative shares of grassland, winter cereal, maize and bare soil parcels.
    :param seed: the seed of every random draw.
    """

    size: tuple[int, int] = (128, 128)
    n_dates: int = 6
    bands: tuple[str, ...] = L2A_BANDS
    classes: tuple[str, ...] = CLASS_NAMES
    cloud_regime: tuple[float, float, float] = (0.4, 0.35, 0.25)
    partly_cover: tuple[float, float] = (0.1, 0.6)
    overcast_cover: tuple[float, float] = (0.92, 1.0)
    cirrus_probability: float = 0.3
    snow_probability: float = 0.5
    winter_months: tuple[int, ...] = (12, 1, 2)
    noise: float = 0.002
    start_date: str = "2021-01-01"
    span_days: int = 365
    parcel_size_m: float = 300.0
    block_size_m: float = 1500.0
    water_fraction: float = 0.04
    forest_fraction: float = 0.15
    urban_fraction: float = 0.06
    parcel_shares: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        problems: list[str] = []

        def check(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        set_("size", _size_pair(self.size))
        check(_is_int(self.n_dates) and self.n_dates >= 1, f"n_dates: expected an int >= 1, got {self.n_dates!r}")
        if isinstance(self.bands, str):
            raise TypeError(f"bands: expected a sequence of band names, got the string {self.bands!r}")
        set_("bands", check_band_names(self.bands))
        if isinstance(self.classes, str):
            raise TypeError(f"classes: expected a sequence of class names, got the string {self.classes!r}")
        classes = tuple(str(c) for c in self.classes)
        unknown = [c for c in classes if c not in CLASS_NAMES]
        check(not unknown, f"classes: unknown {unknown}; known classes: {', '.join(CLASS_NAMES)}")
        check(len(classes) > 0, "classes: expected at least one class")
        check(len(set(classes)) == len(classes), f"classes: repeated names in {classes}")
        if not unknown and len(set(classes)) == len(classes):
            ordered = tuple(c for c in CLASS_NAMES if c in classes)
            check(ordered == classes, f"classes: expected the canonical order {ordered}, got {classes}")
        set_("classes", classes)

        set_("cloud_regime", _floats(self.cloud_regime, 3, "cloud_regime"))
        check(
            all(p >= 0 for p in self.cloud_regime) and abs(sum(self.cloud_regime) - 1.0) < 1e-6,
            f"cloud_regime: expected three non-negative shares (clear, partly, overcast) summing to 1, "
            f"got {self.cloud_regime}",
        )
        for name in ("partly_cover", "overcast_cover"):
            lo, hi = _floats(getattr(self, name), 2, name)
            set_(name, (lo, hi))
            check(0.0 <= lo <= hi <= 1.0, f"{name}: expected 0 <= low <= high <= 1, got {(lo, hi)}")
        for name in ("cirrus_probability", "snow_probability"):
            p = float(getattr(self, name))
            set_(name, p)
            check(0.0 <= p <= 1.0, f"{name}: expected a probability in [0, 1], got {p}")
        months = tuple(int(m) for m in self.winter_months)
        set_("winter_months", months)
        check(all(1 <= m <= 12 for m in months), f"winter_months: expected months 1..12, got {months}")
        set_("noise", float(self.noise))
        check(0.0 <= self.noise <= 0.05, f"noise: expected a std in [0, 0.05] reflectance, got {self.noise}")
        try:
            day = np.datetime64(str(self.start_date), "D")
            check(not np.isnat(day), f"start_date: expected an ISO date 'YYYY-MM-DD', got {self.start_date!r}")
            set_("start_date", str(day))
        except ValueError:
            problems.append(f"start_date: expected an ISO date 'YYYY-MM-DD', got {self.start_date!r}")
        check(
            _is_int(self.span_days) and self.span_days >= 1, f"span_days: expected an int >= 1, got {self.span_days!r}"
        )
        for name in ("parcel_size_m", "block_size_m"):
            v = float(getattr(self, name))
            set_(name, v)
            check(v >= 20.0, f"{name}: expected at least 20 m (two pixels), got {v}")
        for name in ("water_fraction", "forest_fraction", "urban_fraction"):
            v = float(getattr(self, name))
            set_(name, v)
            check(0.0 <= v <= 1.0, f"{name}: expected a share in [0, 1], got {v}")
        shares = _floats(self.parcel_shares, 4, "parcel_shares")
        set_("parcel_shares", shares)
        check(
            all(s >= 0 for s in shares) and sum(shares) > 0,
            f"parcel_shares: expected 4 non-negative shares (grassland, winter cereal, maize, bare soil), "
            f"not all zero, got {shares}",
        )
        check(_is_int(self.seed) and 0 <= self.seed < 2**63, f"seed: expected a non-negative int, got {self.seed!r}")
        if problems:
            raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))
        set_("n_dates", int(self.n_dates))
        set_("span_days", int(self.span_days))
        set_("seed", int(self.seed))

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> SyntheticConfig:
        """Inverse of :meth:`to_dict`; unknown names raise :class:`~hvaeseg._dataclass_io.FieldError` (a
        :class:`TypeError`)."""
        return from_dict(cls, d, "SyntheticConfig")

    def replace(self, **changes) -> SyntheticConfig:
        """A copy with ``changes`` (validated again); unknown names raise :class:`~hvaeseg._dataclass_io.FieldError`
        (a :class:`TypeError`)."""
        check_fields(type(self), changes, "SyntheticConfig")
        return dataclasses.replace(self, **changes)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _floats(v, n: int, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in v)
    except TypeError:
        raise TypeError(f"{name}: expected {n} numbers, got {v!r}") from None
    if len(out) != n:
        raise ValueError(f"{name}: expected {n} numbers, got {len(out)} ({v!r})")
    return out


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


#: named configurations: ``tiny`` (tests: a few 64x64 patches), ``small`` (CPU benchmark), ``large``
#: (GPU benchmark, 8 GB of uint16 per reflectance variable; stream it with ``write_synthetic``)
PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(size=(128, 128), n_dates=6, parcel_size_m=200.0, block_size_m=600.0),
    "small": SyntheticConfig(size=(512, 512), n_dates=12),
    "large": SyntheticConfig(size=(4096, 4096), n_dates=24),
}


def resolve_config(preset: str | SyntheticConfig = "tiny", seed: int | None = None, **overrides) -> SyntheticConfig:
    """The config of ``preset`` (a name of :data:`PRESETS` or a config) with ``seed`` and ``overrides``.

    Overrides whose value is ``None`` are ignored, so callers can pass optional arguments through.
    """
    if isinstance(preset, SyntheticConfig):
        base = preset
    elif isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[preset]
    else:
        raise TypeError(f"preset: expected a preset name or a SyntheticConfig, got {type(preset).__name__}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if seed is not None:
        changes["seed"] = seed
    return base.replace(**changes) if changes else base

