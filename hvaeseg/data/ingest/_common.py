"""What every part of the ingestion shares: :class:`IngestError`, one raster variable of one file
(:class:`_Layer`), grid helpers and the one-line messages (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

#: pixel size (metres) of the local grid given to GeoTIFFs without georeference (``local_grid=True``)
LOCAL_GRID_RESOLUTION = 10.0

_TIME_DIMS = ("time", "timestamp", "t", "date")
_SCL_NAMES = ("SCL", "scl", "SCENE_CLASSIFICATION")
_BAND_RE = re.compile(r"^B(0[1-9]|1[0-2]|8A)$")
# tolerance (metres) for comparing pixel centres, bounds and resolutions
_TOL = 1e-3


class IngestError(ValueError):
    """The input products cannot be made into one cube; the message says which files and what differs."""


PathType = str | PathLike



# --------------------------------------------------------------------------------------------------
# one raster variable from one file
# --------------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """One variable (band or SCL) of one source: a lazily read ``(time, y, x)`` array and its grid."""

    name: str
    source: str
    data: Any  # (time, y, x) array-like (xarray variable or numpy), read on demand
    times: np.ndarray  # datetime64[ns]
    y: np.ndarray
    x: np.ndarray
    crs: str | None
    attrs: dict = field(default_factory=dict)

    @property
    def resolution(self) -> float:
        return float(abs(self.x[1] - self.x[0])) if len(self.x) > 1 else float("nan")

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return _bounds(self.y, self.x)

    def values(self, t: slice | None = None) -> np.ndarray:
        d = self.data if t is None else self.data[t]
        return np.asarray(d.values if hasattr(d, "values") else d)


def _bounds(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a grid of pixel centres (half a pixel beyond the outer centres)."""
    ry = abs(float(y[1] - y[0])) if len(y) > 1 else 0.0
    rx = abs(float(x[1] - x[0])) if len(x) > 1 else 0.0
    return (float(x.min()) - rx / 2, float(y.min()) - ry / 2, float(x.max()) + rx / 2, float(y.max()) + ry / 2)


def _problems_message(problems: Sequence[str]) -> str:
    """One line for every problem found: ``cannot ingest these products: (1) ...; (2) ...``."""
    if len(problems) == 1:
        return f"cannot ingest these products: {problems[0]}"
    return "cannot ingest these products: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, start=1))


def _fmt_bounds(b: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in b) + ")"


def _normalise_crs(*candidates: Any) -> str | None:
    """``"EPSG:nnnn"`` from the first candidate that names an EPSG code, else the first non-empty string."""
    first = None
    for c in candidates:
        if c is None:
            continue
        if isinstance(c, (int, np.integer)):
            return f"EPSG:{int(c)}"
        s = str(c).strip()
        if not s:
            continue
        first = first or s
        if s.isdigit():
            return f"EPSG:{s}"
        m = re.search(r"(?:epsg|EPSG)[:=](\d+)", s)
        if m:
            return f"EPSG:{m.group(1)}"
        authorities = re.findall(r'AUTHORITY\["EPSG","(\d+)"\]', s)
        if authorities:  # WKT: the last authority is the projected CRS itself
            return f"EPSG:{authorities[-1]}"
    return first


def _check_regular(coord: np.ndarray, name: str, source: str) -> None:
    if len(coord) < 2:
        raise IngestError(f"{source}: needs at least 2 pixels along {name!r}, got {len(coord)}")
    d = np.diff(coord)
    if not np.allclose(d, d[0], rtol=0, atol=_TOL):
        raise IngestError(f"{source}: the {name!r} coordinate is not evenly spaced; expected a regular grid")


def _number(value: Any) -> float | None:
    """A metadata value (number, numeric string, one-element array) as a float; None when it is not one (or NaN)."""
    if value is None:
        return None
    try:
        number = float(np.asarray(value, dtype=np.float64).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return None if np.isnan(number) else number


def _file_list(files: PathType | Sequence[PathType]) -> list[PathType]:
    return [files] if isinstance(files, (str, PathLike)) else list(files)
