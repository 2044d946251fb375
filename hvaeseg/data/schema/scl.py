"""Sentinel-2 scene classification (SCL): the codes, those counted as a clear observation, and ``valid`` from them."""

from __future__ import annotations

import numpy as np
import xarray as xr

from hvaeseg.data.schema._common import _is_int

__all__ = ["CLEAR_SCL", "SCL_CODES", "valid_from_scl"]


#: Sentinel-2 L2A scene classification (SCL) codes
SCL_CODES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}

#: SCL codes counted as a clear observation: dark area, vegetation, not vegetated, water, unclassified
CLEAR_SCL: tuple[int, ...] = (2, 4, 5, 6, 7)


def valid_from_scl(scl, reflectance=None):
    """``valid`` from SCL codes: clear where the code is in :data:`CLEAR_SCL`.

    :param scl: ``(time, y, x)`` uint8 codes, a DataArray or an array.
    :param reflectance: optional ``(time, band, y, x)``; pixels where any band is no data (DN 0 for
        integer DN, NaN for float) are invalid too. Arrays use axis -3 as the band axis.
    :returns: bool, a DataArray named ``valid`` when ``scl`` is one, else a numpy array.
    """
    clear = np.array(CLEAR_SCL, dtype=np.uint8)
    if isinstance(scl, xr.DataArray):
        valid = scl.isin(clear)
        if reflectance is not None:
            refl = (reflectance if isinstance(reflectance, xr.DataArray)
                    else xr.DataArray(reflectance, dims=("time", "band", "y", "x")))
            present = (refl != 0) if _is_int(refl.dtype) else refl.notnull()
            valid = valid & present.all("band")
        valid = valid.rename("valid")
        valid.attrs = {"long_name": "observed and clear"}  # not the inputs' (scale_factor would make it float)
        return valid
    mask = np.isin(np.asarray(scl), clear)
    if reflectance is not None:
        values = np.asarray(reflectance)
        mask &= ((values != 0) if _is_int(values.dtype) else ~np.isnan(values)).all(axis=-3)
    return mask
