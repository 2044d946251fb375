import dataclasses

import numpy as np
import pytest
import xarray as xr

from hvaeseg.data.bands import BAND_NAMES, BANDS, L2A_BANDS, RGB, Band, band, band_coords, check_band_names


def test_all_thirteen_bands_in_sentinel2_order():
    assert [b.name for b in BANDS] == [
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
    ]  # fmt: skip
    assert BAND_NAMES == tuple(b.name for b in BANDS)
    # Sentinel-2 order is also wavelength order (B8A sits between B08 and B09)
    wl = [b.wavelength_nm for b in BANDS]
    assert wl == sorted(wl)


@pytest.mark.parametrize(
    "name, wavelength, resolution",
    [("B01", 442.7, 60), ("B02", 492.4, 10), ("B04", 664.6, 10), ("B05", 704.1, 20), ("B08", 832.8, 10),
     ("B8A", 864.7, 20), ("B10", 1373.5, 60), ("B11", 1613.7, 20), ("B12", 2202.4, 20)],
)  # fmt: skip
def test_handbook_values(name, wavelength, resolution):
    b = band(name)
    assert b.wavelength_nm == wavelength
    assert b.resolution_m == resolution
    assert b.bandwidth_nm > 0


def test_resolution_groups():
    by_res = {r: {b.name for b in BANDS if b.resolution_m == r} for r in (10, 20, 60)}
    assert by_res[10] == {"B02", "B03", "B04", "B08"}
    assert by_res[20] == {"B05", "B06", "B07", "B8A", "B11", "B12"}
    assert by_res[60] == {"B01", "B09", "B10"}


def test_l2a_bands_and_rgb():
    assert L2A_BANDS == ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
    assert all(band(n).resolution_m in (10, 20) for n in L2A_BANDS)
    order = [BAND_NAMES.index(n) for n in L2A_BANDS]
    assert order == sorted(order)
    assert RGB == ("B04", "B03", "B02")


def test_band_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        band("B02").wavelength_nm = 1.0  # type: ignore[misc]
    assert isinstance(band("B02"), Band)


@pytest.mark.parametrize(
    "name, suggestion",
    [("B8", "B08 or B8A"), ("b02", "B02"), ("B2", "B02"), ("B8a", "B8A"), ("B1", "B01")],
)
def test_unknown_band_suggests_close_matches(name, suggestion):
    with pytest.raises(ValueError, match=f"did you mean {suggestion}"):
        band(name)


def test_unknown_band_without_suggestion_lists_bands():
    with pytest.raises(ValueError, match="unknown Sentinel-2 band 'NIR'.*known bands: B01"):
        band("NIR")


def test_check_band_names_reports_everything():
    with pytest.raises(ValueError) as info:
        check_band_names(["B02", "B8", "B02", "X"])
    msg = str(info.value)
    assert "'B8'" in msg and "'X'" in msg and "duplicate band names B02" in msg
    with pytest.raises(ValueError, match="no bands"):
        check_band_names([])
    assert check_band_names(["B8A", "B02"]) == ("B8A", "B02")


def test_band_coords_ready_for_a_dataset():
    coords = band_coords(["B02", "B8A", "B11"])
    ds = xr.Dataset(coords=coords)
    assert ds["band"].values.tolist() == ["B02", "B8A", "B11"]
    np.testing.assert_array_equal(ds["wavelength"].values, [492.4, 864.7, 1613.7])
    np.testing.assert_array_equal(ds["resolution"].values, [10, 20, 20])
    assert ds["wavelength"].dims == ("band",) and ds["wavelength"].attrs["units"] == "nm"
    assert ds["resolution"].dtype == np.int64
    with pytest.raises(ValueError, match="B08 or B8A"):
        band_coords(["B8"])
