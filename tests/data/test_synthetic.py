"""The synthetic cube generator: reproducibility, streaming, schema, and the physics it promises."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.data.bands import BAND_NAMES, L2A_BANDS
from hvaeseg.data.schema import class_names, valid_from_scl, validate_cube
from hvaeseg.data.synthetic import (
    CLASS_NAMES,
    PRESETS,
    SyntheticConfig,
    SyntheticCube,
    make_cube,
    synthetic_cube,
    write_synthetic,
)

VARS = ("reflectance", "clean_reflectance", "valid", "scl", "labels")


def refl(ds: xr.Dataset, var: str = "reflectance", band: str | None = None) -> np.ndarray:
    """Decoded reflectance as float64 (DN * 1e-4 - 0.1)."""
    da = ds[var] if band is None else ds[var].sel(band=band)
    return da.values.astype(np.float64) * da.attrs["scale_factor"] + da.attrs["add_offset"]


@pytest.fixture(scope="module")
def tiny() -> xr.Dataset:
    return make_cube("tiny", seed=0)


@pytest.fixture(scope="module")
def year() -> xr.Dataset:
    """Two dates a month over a year, no clouds: for phenology."""
    return make_cube("tiny", seed=1, n_dates=24, cloud_regime=(1.0, 0.0, 0.0), snow_probability=0.0)


# ------------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_bytes(tiny):
    again = make_cube("tiny", seed=0)
    for v in VARS:
        assert again[v].values.tobytes() == tiny[v].values.tobytes(), v
    xr.testing.assert_identical(again, tiny)


def test_different_seeds_differ(tiny):
    other = make_cube("tiny", seed=1)
    for v in VARS:
        assert not np.array_equal(other[v].values, tiny[v].values), v


def test_streaming_equals_in_memory(tmp_path):
    from hvaeseg.data.store import open_cube

    kw = dict(seed=5, size=(40, 56), n_dates=4, cloud_regime=(0.2, 0.4, 0.4))
    path = write_synthetic(tmp_path / "s.zarr", "tiny", **kw)
    streamed = open_cube(path)
    memory = make_cube("tiny", **kw)
    for v in VARS:
        assert streamed[v].dtype == memory[v].dtype, v
        assert streamed[v].values.tobytes() == memory[v].values.tobytes(), v
    np.testing.assert_array_equal(streamed.time.values, memory.time.values)
    np.testing.assert_array_equal(streamed.cloud_regime.values, memory.cloud_regime.values)
    assert streamed.attrs["synthetic_config"] == memory.attrs["synthetic_config"]


def test_streaming_to_memory_url():
    from hvaeseg.data.store import open_cube

    path = write_synthetic("memory://synthetic-test/cube.zarr", "tiny", seed=2, size=24, n_dates=2)
    streamed = open_cube(path)
    memory = make_cube("tiny", seed=2, size=24, n_dates=2)
    assert streamed["reflectance"].values.tobytes() == memory["reflectance"].values.tobytes()


def test_dates_render_in_any_order():
    cube = synthetic_cube("tiny", seed=3, size=32, n_dates=4)
    forward = [cube.render(t).reflectance.copy() for t in range(4)]
    cube2 = synthetic_cube("tiny", seed=3, size=32, n_dates=4)
    for t in (3, 1, 0, 2):
        np.testing.assert_array_equal(cube2.render(t).reflectance, forward[t])


def test_band_subset_is_a_slice_of_the_full_cube():
    full = make_cube("tiny", seed=4, size=32, n_dates=3, bands=BAND_NAMES)
    sub = make_cube("tiny", seed=4, size=32, n_dates=3, bands=("B10", "B01", "B8A"))
    for v in VARS:
        want = full[v].sel(band=["B10", "B01", "B8A"]) if "band" in full[v].dims else full[v]
        np.testing.assert_array_equal(sub[v].values, want.values, err_msg=v)


# ------------------------------------------------------------------------------------ schema


def test_tiny_is_a_valid_cube(tiny):
    validate_cube(tiny)
    assert dict(tiny.sizes) == {"time": 6, "band": 10, "y": 128, "x": 128}
    assert tuple(tiny.band.values) == L2A_BANDS
    assert tiny.reflectance.dtype == tiny.clean_reflectance.dtype == np.uint16
    assert tiny.scl.dtype == np.uint8 and tiny.valid.dtype == bool and tiny.labels.dtype == np.int16
    for v in ("reflectance", "clean_reflectance"):
        assert tiny[v].attrs["scale_factor"] == 1e-4 and tiny[v].attrs["add_offset"] == -0.1
        assert tiny[v].values.min() >= 1  # DN 0 means no data: never produced
    assert tiny.attrs["crs"] == "EPSG:32631"
    assert tiny.attrs["generator"] == "hvaeseg.data.synthetic"
    assert tiny.attrs["seed"] == 0 and tiny.attrs["preset"] == "tiny"
    assert SyntheticConfig.from_dict(__import__("json").loads(tiny.attrs["synthetic_config"])) == PRESETS["tiny"]
    assert class_names(tiny) == list(CLASS_NAMES)
    assert len(tiny.labels.attrs["flag_colors"].split()) == len(CLASS_NAMES)
    # 10 m pixels, y decreasing, pixel centres
    assert np.allclose(np.diff(tiny.x.values), 10.0) and np.allclose(np.diff(tiny.y.values), -10.0)
    assert np.issubdtype(tiny.time.dtype, np.datetime64) and (np.diff(tiny.time.values).astype(np.int64) > 0).all()


def test_every_class_present_in_tiny(tiny):
    counts = np.bincount(tiny.labels.values.ravel(), minlength=len(CLASS_NAMES))
    assert (counts > 0).all(), dict(zip(CLASS_NAMES, counts))
    assert tiny.labels.values.min() >= 0


def test_valid_follows_scl(tiny):
    np.testing.assert_array_equal(tiny.valid.values, valid_from_scl(tiny.scl.values))
    assert set(np.unique(tiny.scl.values)) <= {3, 4, 5, 6, 8, 9, 10, 11}


def test_clean_equals_reflectance_where_valid(tiny):
    valid = tiny.valid.values[:, None]
    r, c = tiny.reflectance.values, tiny.clean_reflectance.values
    np.testing.assert_array_equal(np.where(valid, r, 0), np.where(valid, c, 0))
    assert (~tiny.valid.values).any() and (r != c).any()  # tiny has clouds somewhere


@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    n_dates=st.integers(1, 3),
    mask=st.lists(st.booleans(), min_size=13, max_size=13).filter(any),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_size_and_band_subset_gives_a_valid_cube(h, w, n_dates, mask, seed):
    bands = tuple(b for b, keep in zip(BAND_NAMES, mask) if keep)
    ds = make_cube("tiny", seed=seed, size=(h, w), n_dates=n_dates, bands=bands, cloud_regime=(0.2, 0.4, 0.4))
    validate_cube(ds)
    assert dict(ds.sizes) == {"time": n_dates, "band": len(bands), "y": h, "x": w}
    assert tuple(ds.band.values) == bands
    valid = ds.valid.values[:, None]
    assert np.array_equal(np.where(valid, ds.reflectance.values, 0), np.where(valid, ds.clean_reflectance.values, 0))


# ------------------------------------------------------------------------------------ physics


def test_water_is_dark_in_the_nir(year):
    water = year.labels.values == CLASS_NAMES.index("water")
    nir = refl(year, "clean_reflectance", "B08")[:, water]
    assert nir.max() < 0.05


def _growing_season(ds: xr.Dataset) -> np.ndarray:
    month = ds.time.dt.month.values
    return (month >= 6) & (month <= 8)


@pytest.mark.parametrize("name", ["forest", "grassland"])
def test_vegetation_nir_over_red_in_the_growing_season(year, name):
    m = year.labels.values == CLASS_NAMES.index(name)
    summer = _growing_season(year)
    red = refl(year, "clean_reflectance", "B04")[summer][:, m]
    nir = refl(year, "clean_reflectance", "B08")[summer][:, m]
    assert (nir.mean(axis=1) / red.mean(axis=1) > 3).all()
    assert np.median(nir / red) > 3


def _class_ndvi(ds: xr.Dataset, name: str) -> np.ndarray:
    m = ds.labels.values == CLASS_NAMES.index(name)
    red = refl(ds, "clean_reflectance", "B04")[:, m]
    nir = refl(ds, "clean_reflectance", "B08")[:, m]
    return ((nir - red) / (nir + red)).mean(axis=1)


@pytest.mark.parametrize("name", ["winter_cereal", "maize"])
def test_crop_ndvi_rises_and_falls(year, name):
    ndvi = _class_ndvi(year, name)
    peak = int(np.argmax(ndvi))
    assert 2 <= peak <= len(ndvi) - 3, ndvi.round(2)
    assert ndvi[peak] > 0.7
    assert ndvi[peak] - ndvi[0] > 0.25 and ndvi[peak] - ndvi[-1] > 0.25
    # at the peak the crop is green: NIR / red well above 3
    m = year.labels.values == CLASS_NAMES.index(name)
    red = refl(year, "clean_reflectance", "B04")[peak][m].mean()
    nir = refl(year, "clean_reflectance", "B08")[peak][m].mean()
    assert nir / red > 3


def test_crops_peak_at_different_times(year):
    months = year.time.dt.month.values
    assert months[np.argmax(_class_ndvi(year, "winter_cereal"))] in (4, 5, 6)
    assert months[np.argmax(_class_ndvi(year, "maize"))] in (7, 8)


def test_deciduous_forest_is_seasonal(year):
    ndvi = _class_ndvi(year, "forest")
    months = year.time.dt.month.values
    assert ndvi[np.isin(months, (6, 7, 8))].mean() > ndvi[np.isin(months, (12, 1, 2))].mean() + 0.2


def test_clouds_are_bright_and_flat():
    ds = make_cube("tiny", seed=6, size=64, n_dates=3, cloud_regime=(0.0, 0.0, 1.0))
    thick = ds.scl.values == 9
    assert thick.mean() > 0.5
    vis = {b: refl(ds, band=b)[thick] for b in ("B02", "B03", "B04")}
    assert all(v.min() > 0.3 for v in vis.values())
    nir = refl(ds, band="B08")[thick]
    ratio = vis["B02"] / nir
    assert 0.8 < np.median(ratio) < 1.25
    assert np.abs(vis["B02"] / vis["B04"] - 1).max() < 0.25


def test_shadows_are_darker_than_their_clean_pixels():
    ds = make_cube("tiny", seed=7, size=96, n_dates=4, cloud_regime=(0.0, 1.0, 0.0), cirrus_probability=0.0)
    shadow = ds.scl.values == 3
    assert shadow.sum() > 100
    r = refl(ds)[:, :, :][np.broadcast_to(shadow[:, None], ds.reflectance.shape)]
    c = refl(ds, "clean_reflectance")[np.broadcast_to(shadow[:, None], ds.reflectance.shape)]
    assert r.mean() < 0.8 * c.mean()
    assert np.mean(r <= c + 2e-4) > 0.999
    # a cloud hides its shadow: shadow pixels are never flagged as cloud
    assert not (shadow & np.isin(ds.scl.values, (8, 9))).any()


def test_shadows_are_displaced_from_their_clouds_by_the_sun():
    cube = synthetic_cube("tiny", seed=14, size=256, n_dates=12, cloud_regime=(0.0, 1.0, 0.0), cirrus_probability=0.0)
    for t in (5, 6):  # early summer: sun high in the south-east at 10:30, shadows to the north-west
        plan = cube.plan(t)
        layers = plan.layers(0, 256, 256)
        cloud, shadow = layers["cloud"] - layers["cloud"].mean(), layers["shadow"] - layers["shadow"].mean()
        xc = np.fft.irfft2(np.fft.rfft2(shadow) * np.conj(np.fft.rfft2(cloud)), s=cloud.shape)
        py, px = np.unravel_index(np.argmax(xc), xc.shape)
        py, px = (py + 128) % 256 - 128, (px + 128) % 256 - 128
        dy, dx = plan.shadow_shift
        assert dy < -10 and dx < -10  # north (up) and west (left)
        assert abs(py - dy) <= 2 and abs(px - dx) <= 2, ((py, px), (dy, dx))


def test_sun_is_lower_in_winter():
    from hvaeseg.data.synthetic.atmosphere import sun_position

    summer, winter = sun_position(172.0), sun_position(355.0)
    assert 25 < summer[0] < 40 and 65 < winter[0] < 80
    assert 100 < summer[1] < 180 and 120 < winter[1] < 180  # south-east in the morning


def test_snow_only_on_winter_dates():
    ds = make_cube("tiny", seed=8, size=48, n_dates=24, snow_probability=1.0, cloud_regime=(1.0, 0.0, 0.0))
    month = ds.time.dt.month.values
    winter = np.isin(month, PRESETS["tiny"].winter_months)
    snow = (ds.scl.values == 11).any(axis=(1, 2))
    assert snow[winter].all() and not snow[~winter].any()
    # snow is bright in the visible and dark at 1.6 um
    px = ds.scl.values == 11
    assert np.median(refl(ds, band="B03")[px]) > 0.4 > 0.2 > np.median(refl(ds, band="B11")[px])
    never = make_cube("tiny", seed=8, size=48, n_dates=24, snow_probability=0.0)
    assert not (never.scl.values == 11).any()


def test_cloud_regime_shares_in_expectation():
    shares = (0.2, 0.5, 0.3)
    cube = SyntheticCube(SyntheticConfig(size=8, n_dates=3000, cloud_regime=shares, seed=9))
    regimes = np.array([cube.plan(t, fields=False).regime for t in range(cube.n_dates)])
    freq = np.bincount(regimes, minlength=3) / regimes.size
    np.testing.assert_allclose(freq, shares, atol=0.03)


def test_clear_dates_are_clear_and_overcast_dates_covered():
    ds = make_cube("tiny", seed=10, size=32, n_dates=20, snow_probability=0.0)
    invalid = 1 - ds.valid.values.mean(axis=(1, 2))
    regime = ds.cloud_regime.values
    assert (invalid[regime == 0] == 0).all()
    assert (invalid[regime == 2] > 0.85).all()
    assert set(regime) == {0, 1, 2}


def test_partly_cloudy_cover_is_in_range():
    cube = synthetic_cube("tiny", seed=11, size=96, n_dates=12, cloud_regime=(0.0, 1.0, 0.0), cirrus_probability=0.0)
    for t in range(cube.n_dates):
        plan = cube.plan(t)
        scl = cube.render(t).scl
        cloud = np.isin(scl, (8, 9)).mean()
        assert abs(cloud - plan.cover) < 0.2, (cloud, plan.cover)


def test_labels_are_static_and_class_subsets_work():
    ds = make_cube("tiny", seed=12, size=64, n_dates=2, classes=("water", "grassland", "maize"))
    assert class_names(ds) == ["water", "grassland", "maize"]
    assert set(np.unique(ds.labels.values)) <= {0, 1, 2}
    validate_cube(ds)


def test_no_noise_gives_flat_units():
    ds = make_cube("tiny", seed=13, size=32, n_dates=1, noise=0.0, cloud_regime=(1.0, 0.0, 0.0))
    noisy = make_cube("tiny", seed=13, size=32, n_dates=1, cloud_regime=(1.0, 0.0, 0.0))
    diff = noisy.clean_reflectance.values.astype(np.int64) - ds.clean_reflectance.values
    assert 10 < diff.std() < 30  # noise 0.002 reflectance = 20 DN


# ------------------------------------------------------------------------------------ config


def test_config_validation_lists_problems():
    with pytest.raises(ValueError, match="cloud_regime.*summing to 1"):
        SyntheticConfig(cloud_regime=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="B8"):
        SyntheticConfig(bands=("B8",))
    with pytest.raises(ValueError, match="n_dates") as err:
        SyntheticConfig(n_dates=0, noise=-1.0)
    assert "noise" in str(err.value)
    with pytest.raises(TypeError, match="size"):
        SyntheticConfig(size="big")
    with pytest.raises(ValueError, match="classes"):
        SyntheticConfig(classes=("water", "jungle"))
    with pytest.raises(TypeError, match=r"SyntheticConfig: unknown field\(s\) 'clouds'"):
        make_cube("tiny", clouds=3)
    with pytest.raises(ValueError, match="unknown preset"):
        make_cube("huge")


def test_presets():
    assert PRESETS["tiny"].size == (128, 128) and PRESETS["tiny"].n_dates == 6
    assert PRESETS["small"].size == (512, 512) and PRESETS["small"].n_dates == 12
    assert PRESETS["large"].size == (4096, 4096) and PRESETS["large"].n_dates == 24
    assert all(p.bands == L2A_BANDS for p in PRESETS.values())
    assert SyntheticConfig(size=7).size == (7, 7)
    c = PRESETS["tiny"].replace(size=(3, 5))
    assert c.height == 3 and c.width == 5
    assert SyntheticConfig.from_dict(c.to_dict()) == c


# ------------------------------------------------------------------------------------ bigger presets


@pytest.mark.slow
def test_small_preset():
    ds = make_cube("small", seed=0)
    validate_cube(ds)
    assert dict(ds.sizes) == {"time": 12, "band": 10, "y": 512, "x": 512}
    valid = ds.valid.values[:, None]
    assert np.array_equal(np.where(valid, ds.reflectance.values, 0), np.where(valid, ds.clean_reflectance.values, 0))
    assert (np.bincount(ds.labels.values.ravel(), minlength=7) > 0).all()


@pytest.mark.slow
def test_large_preset_renders_dates():
    cube = synthetic_cube("large", seed=0)
    for t in (0, 12):
        ds = cube.render_dataset(t)
        assert dict(ds.sizes) == {"time": 1, "band": 10, "y": 4096, "x": 4096}
        validate_cube(ds)
