"""The Sentinel-2 MSI band table: names, central wavelengths, bandwidths and native resolutions.

Central wavelengths and bandwidths are the Sentinel-2A values of the ESA Sentinel-2 User Handbook
(Table "S2 MSI spectral bands", from the spectral response functions, document COPE-GSEG-EOPG-TN-15-0007);
Sentinel-2B and -2C differ by a few nanometres, which no model here can resolve. Native resolutions are
10 m (B02, B03, B04, B08), 20 m (B05, B06, B07, B8A, B11, B12) and 60 m (B01, B09, B10). In a cube all bands
share one 10 m grid; the native resolution is kept as a coordinate so that a user can see which bands
were resampled.

Cubes of camera images (:mod:`hvaeseg.data.mosaic`: Cityscapes or a folder of PNG pairs) carry the dataset
attribute ``sensor = "camera"`` (:data:`CAMERA_SENSOR`) and the bands :data:`CAMERA_BANDS` (R, G, B) instead.

>>> band("B8A").wavelength_nm
864.7
>>> [b.name for b in BANDS][:3]
['B01', 'B02', 'B03']
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Band",
    "BANDS",
    "BAND_NAMES",
    "L2A_BANDS",
    "RGB",
    "CAMERA_BANDS",
    "CAMERA_SENSOR",
    "band",
    "band_coords",
    "check_band_names",
]


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 MSI band.

    :param name: Sentinel-2 name, ``"B01"`` .. ``"B12"`` or ``"B8A"``.
    :param wavelength_nm: central wavelength in nanometres (Sentinel-2A).
    :param bandwidth_nm: spectral width in nanometres (Sentinel-2A).
    :param resolution_m: native ground sampling distance in metres (10, 20 or 60).
    """

    name: str
    wavelength_nm: float
    bandwidth_nm: float
    resolution_m: int


#: all 13 bands in Sentinel-2 product order (B8A sits between B08 and B09)
BANDS: tuple[Band, ...] = (
    Band("B01", 442.7, 21.0, 60),  # coastal aerosol
    Band("B02", 492.4, 66.0, 10),  # blue
    Band("B03", 559.8, 36.0, 10),  # green
    Band("B04", 664.6, 31.0, 10),  # red
    Band("B05", 704.1, 15.0, 20),  # red edge 1
    Band("B06", 740.5, 15.0, 20),  # red edge 2
    Band("B07", 782.8, 20.0, 20),  # red edge 3
    Band("B08", 832.8, 106.0, 10),  # NIR (broad)
    Band("B8A", 864.7, 21.0, 20),  # NIR (narrow)
    Band("B09", 945.1, 20.0, 60),  # water vapour
    Band("B10", 1373.5, 31.0, 60),  # SWIR cirrus (not in L2A)
    Band("B11", 1613.7, 91.0, 20),  # SWIR 1
    Band("B12", 2202.4, 175.0, 20),  # SWIR 2
)

BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)

#: the 10 bands at 10 and 20 m of an L2A product, in Sentinel-2 order: the default band set of a cube
L2A_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")

#: red, green, blue, for true-colour composites
RGB: tuple[str, str, str] = ("B04", "B03", "B02")

#: the bands of a cube of camera images (``sensor = "camera"``, e.g. Cityscapes): red, green, blue, as 8-bit
#: values / 255 (sRGB as stored, no radiometric calibration). They have no wavelength or resolution coordinate.
CAMERA_BANDS: tuple[str, str, str] = ("R", "G", "B")

#: the dataset attribute ``sensor`` of a cube of camera images; a cube without ``sensor`` is Sentinel-2
CAMERA_SENSOR = "camera"

_BY_NAME = {b.name: b for b in BANDS}


def _suggest(name: str) -> list[str]:
    """Band names a user probably meant by ``name`` (``"B8"`` -> B08, B8A; ``"b2"`` -> B02)."""
    key = str(name).strip().upper()
    out: list[str] = []
    if key.startswith("B") and key[1:].isdigit():
        padded = f"B{int(key[1:]):02d}"
        if padded in _BY_NAME:
            out.append(padded)
        if key[1:].lstrip("0") == "8":
            out.append("B8A")
    for cand in difflib.get_close_matches(key, BAND_NAMES, n=3, cutoff=0.6):
        if cand not in out:
            out.append(cand)
    return out


def _unknown_message(name: object) -> str:
    hint = _suggest(str(name))
    msg = f"unknown Sentinel-2 band {name!r}"
    if hint:
        msg += f" (did you mean {' or '.join(hint)}?)"
    return msg + f"; known bands: {', '.join(BAND_NAMES)}"


def band(name: str) -> Band:
    """The :class:`Band` called ``name``.

    :raises ValueError: for an unknown name, suggesting close matches (``"B8"`` -> ``B08 or B8A?``).
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(_unknown_message(name)) from None


def check_band_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple after checking every one is a known band and none repeats.

    :raises ValueError: listing every unknown name (with suggestions) and every duplicate.
    """
    names = tuple(str(n) for n in names)
    problems = [_unknown_message(n) for n in names if n not in _BY_NAME]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"duplicate band names {', '.join(dup)}")
    if not names:
        problems.append("no bands given")
    if problems:
        raise ValueError("; ".join(problems))
    return names


def band_coords(names: Iterable[str]) -> dict[str, tuple | np.ndarray]:
    """Coordinates for a cube's ``band`` dimension, ready for ``Dataset(coords=...)`` / ``assign_coords``.

    :returns: ``{"band": names, "wavelength": ("band", nm float64), "resolution": ("band", m int64)}``;
        ``wavelength`` and ``resolution`` carry ``units`` attributes.
    :raises ValueError: for unknown or repeated names.
    """
    names = check_band_names(names)
    bands = [_BY_NAME[n] for n in names]
    return {
        "band": np.array(names, dtype=str),
        "wavelength": (
            "band",
            np.array([b.wavelength_nm for b in bands], dtype=np.float64),
            {"units": "nm", "long_name": "central wavelength (Sentinel-2A)"},
        ),
        "resolution": (
            "band",
            np.array([b.resolution_m for b in bands], dtype=np.int64),
            {"units": "m", "long_name": "native resolution"},
        ),
    }
