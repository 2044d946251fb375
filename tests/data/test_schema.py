import re

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.data.schema import (
    CLEAR_SCL,
    SCHEMA_VERSION,
    SCL_CODES,
    CubeSchema,
    CubeValidationError,
    class_attrs,
    class_colors,
    class_names,
    decoded_reflectance,
    valid_from_scl,
    validate_cube,
)
from hvaeseg.data.store import template_from_block

from .conftest import make_toy_cube


def problems_of(ds, **kwargs) -> list[str]:
    with pytest.raises(CubeValidationError) as info:
        validate_cube(ds, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    # the message lists every problem
    for p in err.problems:
        assert p in str(err)
    assert f"({len(err.problems)} problem" in str(err)
    return err.problems


def only_problem(ds, **kwargs) -> str:
    problems = problems_of(ds, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def test_toy_cube_is_valid(toy_cube):
    validate_cube(toy_cube)
    validate_cube(toy_cube, require=("reflectance", "valid", "scl", "labels"))


def test_schema_is_data():
    v = CubeSchema.variables
    assert v["reflectance"].dims == ("time", "band", "y", "x")
    assert v["valid"].dims == ("time", "y", "x") and v["valid"].dtypes == ("bool",)
    assert v["scl"].dtypes == ("uint8",)
    assert v["labels"].dims == ("y", "x") and v["labels"].dtypes == ("int16",)
    assert set(v["labels"].attrs) == {"flag_values", "flag_meanings"}
    assert v["clean_reflectance"].dims == v["reflectance"].dims
    assert CubeSchema.version == SCHEMA_VERSION == 1
    assert CubeSchema.reflectance_range == (-0.1, 2.0)


def test_scl_table():
    assert len(SCL_CODES) == 12 and set(SCL_CODES) == set(range(12))
    assert SCL_CODES[9] == "cloud_high_probability" and SCL_CODES[11] == "snow"
    assert CLEAR_SCL == (2, 4, 5, 6, 7)


# --------------------------------------------------------------------------------------------- one problem each


def test_missing_variable(toy_cube):
    p = only_problem(toy_cube.drop_vars("valid"))
    assert p.startswith("missing variable `valid` (time, y, x) bool")
    assert "valid_from_scl" in p  # scl is there: the fix says how to derive valid
    p = only_problem(toy_cube.drop_vars("labels"), require=("reflectance", "valid", "labels"))
    assert "missing variable `labels` (y, x) int16" in p


def test_wrong_dims_order(toy_cube):
    ds = toy_cube.assign(valid=toy_cube["valid"].transpose("y", "x", "time"))
    p = only_problem(ds)
    assert "`valid` has dims (y, x, time), expected (time, y, x)" in p
    assert "transpose('time', 'y', 'x')" in p


def test_wrong_dim_names(toy_cube):
    ds = toy_cube.rename(y="row")
    problems = problems_of(ds)
    assert any("`reflectance` has dims (time, band, row, x), expected (time, band, y, x)" in p for p in problems)
    assert any("ds.rename({'row': 'y'})" in p for p in problems)


@pytest.mark.parametrize(
    "var, dtype, expect",
    [
        ("valid", "uint8", "`valid` has dtype uint8, expected bool"),
        ("scl", "int32", "`scl` has dtype int32, expected uint8"),
        ("labels", "int32", "`labels` has dtype int32, expected int16"),
        ("reflectance", "int32", "`reflectance` has dtype int32, expected uint16 or float32"),
    ],
)
def test_wrong_dtype(toy_cube, var, dtype, expect):
    ds = toy_cube.copy()
    ds[var] = ds[var].astype(dtype)
    p = only_problem(ds)
    assert expect in p and "Fix:" in p


def test_unknown_band_name(toy_cube):
    ds = toy_cube.assign_coords(band=["B02", "B3", "B04", "B08"])
    p = only_problem(ds)
    assert "unknown Sentinel-2 band 'B3' (did you mean B03?)" in p


def test_repeated_band_name(toy_cube):
    ds = toy_cube.assign_coords(band=["B02", "B03", "B03", "B08"])
    assert "band names repeat: B03" in only_problem(ds)


def test_missing_band_coords(toy_cube):
    p = only_problem(toy_cube.drop_vars(["wavelength", "resolution"]))
    assert "band coordinate(s) wavelength, resolution missing" in p and "band_coords" in p


def test_labels_out_of_range(toy_cube):
    ds = toy_cube.copy(deep=True)
    ds["labels"][3, 4] = 3  # K = 3: valid ids 0..2
    ds["labels"][5, 5] = -2
    p = only_problem(ds)
    assert p.startswith("`labels` out of range: 2 pixels with values {-2, 3}")
    assert "allowed -1 = void or 0..2 for the 3 classes of flag_values" in p


def test_labels_missing_flag_attributes(toy_cube):
    ds = toy_cube.copy()
    ds["labels"].attrs = {}
    p = only_problem(ds)
    assert "`labels` lacks attribute(s) flag_values, flag_meanings" in p and "class_attrs" in p


def test_labels_inconsistent_flags(toy_cube):
    ds = toy_cube.copy()
    ds["labels"].attrs = dict(ds["labels"].attrs, flag_meanings="water forest")
    assert "3 flag_values but 2 flag_meanings" in only_problem(ds)


def test_nan_in_float_labels(toy_cube):
    ds = toy_cube.copy()
    ds["labels"] = ds["labels"].astype("float64").where(ds["labels"] >= 0)
    p = only_problem(ds)
    assert "`labels` has dtype float64, expected int16; it holds 63 NaN values" in p
    assert "fillna(-1).astype('int16')" in p


def test_nan_in_float_dn_reflectance(toy_cube):
    ds = toy_cube.copy()
    refl = ds["reflectance"].astype("float32")
    ds["reflectance"] = refl.where(refl != 0)  # no data as NaN, but still DN with scale_factor
    p = only_problem(ds)
    assert "`reflectance` is float DN (has scale_factor) and holds 256 NaN values" in p  # 8x8 corner x 4 bands
    assert "fillna(0)" in p


def test_float_reflectance_in_units_is_fine(toy_cube):
    ds = toy_cube.copy()
    ds["reflectance"] = decoded_reflectance(ds)
    assert ds["reflectance"].dtype == np.float32 and np.isnan(ds["reflectance"].values).any()
    validate_cube(ds)


def test_float_reflectance_that_is_dn(toy_cube):
    ds = toy_cube.copy()
    ds["reflectance"] = ds["reflectance"].astype("float32")
    ds["reflectance"].attrs = {}
    p = only_problem(ds)
    assert "`reflectance` out of physical range" in p and "look like DN" in p


def test_empty_time_axis(toy_cube):
    p = only_problem(toy_cube.isel(time=slice(0, 0)))
    assert p.startswith("the time axis is empty")


def test_non_monotonic_time(toy_cube):
    t = toy_cube.time.values
    ds = toy_cube.assign_coords(time=[t[0], t[2], t[1]])
    p = only_problem(ds)
    assert "`time` is not strictly increasing: it goes backwards at index 2" in p and "sortby('time')" in p
    ds = toy_cube.assign_coords(time=[t[0], t[1], t[1]])
    assert "it repeats at index 2" in only_problem(ds)


def test_time_must_be_datetime(toy_cube):
    ds = toy_cube.assign_coords(time=[0, 1, 2])
    assert "`time` has dtype int64, expected datetime64[ns]" in only_problem(ds)


def test_grids_do_not_match_by_size(toy_cube):
    other = toy_cube["labels"].isel(y=slice(0, 16), x=slice(0, 16)).rename(y="y20", x="x20")
    ds = toy_cube.drop_vars("labels").assign(labels=other.drop_vars(["y20", "x20"]))
    p = only_problem(ds)
    assert p.startswith("grids do not match: `labels` is on (y20=16, x20=16) while the cube grid is (y=32, x=32)")


def test_grids_do_not_match_by_coordinates(toy_cube):
    # labels on a grid shifted by 3 m: an outer-join merge interleaves the two grids
    shifted = toy_cube["labels"].assign_coords(y=toy_cube.y + 3.0, x=toy_cube.x + 3.0)
    ds = xr.merge([toy_cube.drop_vars("labels"), shifted.to_dataset()], join="outer", compat="override")
    problems = problems_of(ds)
    assert any(
        p.startswith("`y` spacing is irregular (steps from 3 to 7)") and "grids that do not match" in p
        for p in problems
    )
    assert any(p.startswith("`x` spacing is irregular (steps from 3 to 7)") for p in problems)
    # and the NaN the join put into integer variables
    assert any("`labels` has dtype float" in p and "NaN values" in p for p in problems)
    assert any("`valid` has dtype float64" in p and "fillna(0).astype(bool)" in p for p in problems)


def test_y_must_decrease(toy_cube):
    ds = toy_cube.isel(y=slice(None, None, -1))
    assert "`y` increases; the convention is y decreasing" in only_problem(ds)


def test_reflectance_out_of_physical_range(toy_cube):
    ds = toy_cube.copy(deep=True)
    ds["reflectance"][0, 0, 5, 5] = 40000  # 3.9 after scaling
    p = only_problem(ds)
    assert p.startswith("`reflectance` out of physical range:")
    assert "outside [-0.1, 2.0]" in p and "max 3.9" in p


def test_dn_zero_is_no_data_not_out_of_range(toy_cube):
    assert (toy_cube["reflectance"].values == 0).any()  # decodes to -0.1 - tiny: must be ignored
    validate_cube(toy_cube)


def test_missing_scaling_attrs(toy_cube):
    ds = toy_cube.copy()
    ds["reflectance"].attrs = {}
    p = only_problem(ds)
    assert "`reflectance` lacks attribute(s) scale_factor, add_offset" in p
    assert "scale_factor=1e-4, add_offset=-0.1" in p


def test_scl_codes_out_of_range(toy_cube):
    ds = toy_cube.copy(deep=True)
    ds["scl"][0, 0, 0] = 15
    assert "`scl` holds codes outside 0..11: {15}" in only_problem(ds)


def test_newer_schema_version(toy_cube):
    ds = toy_cube.assign_attrs(hvaeseg_schema_version=SCHEMA_VERSION + 1)
    assert "newer than this hvaeseg understands" in only_problem(ds)


def test_clean_reflectance_must_match(toy_cube):
    ds = toy_cube.assign(clean_reflectance=decoded_reflectance(toy_cube))
    assert "`clean_reflectance` has dtype float32 but `reflectance` uint16" in only_problem(ds)
    validate_cube(toy_cube.assign(clean_reflectance=toy_cube["reflectance"]))


def test_not_a_dataset(toy_cube):
    with pytest.raises(TypeError, match="expected an xarray.Dataset"):
        validate_cube(toy_cube["reflectance"])
    with pytest.raises(ValueError, match="unknown variable"):
        validate_cube(toy_cube, require=("nonsense",))


# --------------------------------------------------------------------------------------------- many at once


def test_several_problems_reported_together(toy_cube):
    t = toy_cube.time.values
    ds = toy_cube.drop_vars("valid").assign_coords(band=["B02", "B8", "B04", "B08"], time=[t[1], t[0], t[2]])
    ds["labels"] = ds["labels"].where(ds["labels"] != 2, 9).astype("int16").assign_attrs(toy_cube["labels"].attrs)
    ds["scl"] = ds["scl"].astype("float32")
    problems = problems_of(ds)
    expected = [
        "missing variable `valid`",
        "`scl` has dtype float32, expected uint8",
        "not strictly increasing",
        "unknown Sentinel-2 band 'B8' (did you mean B08 or B8A?)",
        "`labels` out of range",
    ]
    assert len(problems) == len(expected), problems
    for e in expected:
        assert sum(e in p for p in problems) == 1, (e, problems)


# Each corruption breaks one rule and must be reported whatever else is broken with it.
def _drop_valid(ds):
    return ds.drop_vars("valid")


def _labels_below_void(ds):
    ds = ds.copy(deep=True)
    ds["labels"][2, 2] = -7
    return ds


def _unknown_band(ds):
    return ds.assign_coords(band=["B02", "B3", "B04", "B08"])


def _time_backwards(ds):
    t = ds.time.values
    return ds.assign_coords(time=[t[2], t[1], t[0]])


def _scl_transposed(ds):
    return ds.assign(scl=ds["scl"].transpose("y", "x", "time"))


def _no_flag_meanings(ds):
    ds = ds.copy()
    ds["labels"].attrs = {k: v for k, v in ds["labels"].attrs.items() if k != "flag_meanings"}
    return ds


def _hot_pixels(ds):
    ds = ds.copy(deep=True)
    ds["reflectance"][0, :, 3, 3] = 50000
    return ds


def _labels_as_int32(ds):
    return ds.assign(labels=ds["labels"].astype("int32"))


def _y_increasing(ds):
    return ds.isel(y=slice(None, None, -1))


def _future_version(ds):
    return ds.assign_attrs(hvaeseg_schema_version=99)


CORRUPTIONS = {
    "missing variable `valid`": _drop_valid,
    "`labels` out of range": _labels_below_void,
    "unknown Sentinel-2 band 'B3'": _unknown_band,
    "`time` is not strictly increasing": _time_backwards,
    "`scl` has dims (y, x, time)": _scl_transposed,
    "`labels` lacks attribute(s) flag_meanings": _no_flag_meanings,
    "`reflectance` out of physical range": _hot_pixels,
    "`labels` has dtype int32, expected int16": _labels_as_int32,
    "`y` increases": _y_increasing,
    "schema version 99": _future_version,
}


@given(st.sets(st.sampled_from(sorted(CORRUPTIONS)), min_size=1), st.integers(0, 3))
def test_every_corruption_is_reported(chosen, seed):
    ds = make_toy_cube(seed=seed)
    for key in sorted(chosen):
        ds = CORRUPTIONS[key](ds)
    with pytest.raises(CubeValidationError) as info:
        validate_cube(ds)
    problems = info.value.problems
    for key in chosen:
        assert any(key in p for p in problems), (key, problems)
    # nothing is reported that was not broken
    assert len(problems) == len(chosen), (chosen, problems)


# --------------------------------------------------------------------------------------------- big cubes


def test_big_cubes_are_checked_on_a_sample(toy_cube, monkeypatch):
    monkeypatch.setattr(CubeSchema, "sample_limit", 100)
    ds = toy_cube.copy(deep=True)
    validate_cube(ds)
    ds["reflectance"][0, 1, 0, 0] = 60000  # in the top-left window of a sampled date
    assert "out of physical range" in only_problem(ds)


def test_zero_memory_template_validates_without_materialising(toy_cube):
    time = np.datetime64("2024-01-01", "ns") + np.arange(2000) * np.timedelta64(1, "D")
    big = toy_cube.isel(time=[0])
    tpl = template_from_block(big, time)
    assert tpl["reflectance"].data.strides[0] == 0  # a broadcast view, no memory behind it
    validate_cube(tpl)  # fast: nothing of 2000 dates is materialised


# --------------------------------------------------------------------------------------------- helpers


def test_valid_from_scl_numpy_and_xarray(toy_cube):
    scl = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    v = valid_from_scl(scl)
    assert v.dtype == bool and v.ravel().tolist() == [c in CLEAR_SCL for c in range(12)]
    refl = np.full((1, 2, 3, 4), 1000, dtype=np.uint16)
    refl[0, 1, 0, 2] = 0  # one band missing -> no data
    v = valid_from_scl(scl, refl)
    assert not v[0, 0, 2] and v.sum() == len(CLEAR_SCL) - 1
    da = valid_from_scl(toy_cube["scl"], toy_cube["reflectance"])
    assert da.name == "valid" and da.dims == ("time", "y", "x") and da.dtype == bool
    np.testing.assert_array_equal(da.values, toy_cube["valid"].values)
    f = decoded_reflectance(toy_cube)
    np.testing.assert_array_equal(valid_from_scl(toy_cube["scl"], f).values, toy_cube["valid"].values)


def test_class_attrs_and_readers(toy_cube):
    attrs = class_attrs(["water", "crop"], ["#0000ff", "#FFaa00"])
    assert attrs == {"flag_values": [0, 1], "flag_meanings": "water crop", "flag_colors": "#0000ff #FFaa00"}
    assert class_attrs(["a", "b", "c"])["flag_colors"].count("#") == 3
    assert class_names(toy_cube) == ["water", "forest", "crop"]
    assert class_names(toy_cube["labels"]) == ["water", "forest", "crop"]
    assert class_colors(toy_cube) == ["#1f4e9e", "#1b7a2e", "#e0c341"]
    no_colors = toy_cube["labels"].copy()
    no_colors.attrs = {k: v for k, v in no_colors.attrs.items() if k != "flag_colors"}
    assert len(class_colors(no_colors)) == 3
    with pytest.raises(ValueError, match="single words"):
        class_attrs(["bare soil"])
    with pytest.raises(ValueError, match="expected 2 colours"):
        class_attrs(["a", "b"], ["#000000"])
    with pytest.raises(ValueError, match="#rrggbb"):
        class_attrs(["a"], ["red"])
    with pytest.raises(ValueError, match="repeat"):
        class_attrs(["a", "a"])
    with pytest.raises(ValueError, match="no `labels`"):
        class_names(toy_cube.drop_vars("labels"))


def test_decoded_reflectance(toy_cube):
    r = decoded_reflectance(toy_cube)
    assert r.dtype == np.float32 and r.dims == toy_cube["reflectance"].dims
    dn = toy_cube["reflectance"].values
    got = r.values
    assert np.isnan(got[dn == 0]).all()
    np.testing.assert_allclose(got[dn != 0], dn[dn != 0] * 1e-4 - 0.1, rtol=1e-6, atol=1e-6)
    assert "scale_factor" not in r.attrs and r.attrs["units"] == "1"
    again = decoded_reflectance(toy_cube.assign(reflectance=r))  # float in units: unchanged
    np.testing.assert_array_equal(again.values, got)


def test_error_message_format(toy_cube):
    with pytest.raises(CubeValidationError) as info:
        validate_cube(toy_cube.drop_vars(["valid", "reflectance"]))
    msg = str(info.value)
    # one line (the command line prints errors on one line), problems numbered
    assert re.match(r"cube is not valid \(2 problems\): \[1\] missing variable `reflectance`.* \[2\] missing", msg)
    assert "\n" not in msg
    assert all("Fix:" in p for p in info.value.problems)


# --------------------------------------------------------------------------------------------- float reflectance


def _in_units(ds, dtype="float32"):
    """``ds`` with reflectance in physical units (NaN = no data), no scaling attributes."""
    r = decoded_reflectance(ds).astype(dtype)
    r.attrs = {"units": "1"}
    return ds.assign(reflectance=r)


@pytest.mark.parametrize("as_float", [False, True])
def test_no_data_where_valid_is_refused(toy_cube, as_float):
    ds = toy_cube.copy(deep=True)
    ds["reflectance"][0, 2, 5, 6] = 0  # one band of one clear pixel: no data, yet `valid`
    ds = _in_units(ds) if as_float else ds
    p = only_problem(ds)
    what = "NaN" if as_float else "DN 0"
    assert f"`reflectance` has no data ({what}) in 1 pixels that `valid` marks observed (dates 0)" in p
    fix = p.split("Fix: ", 1)[1]
    exec(fix, {"ds": ds})  # the fix, as printed, makes the cube valid
    validate_cube(ds)
    assert not ds["valid"][0, 5, 6]


def test_no_data_where_valid_is_checked_on_a_sample_of_big_cubes(toy_cube, monkeypatch):
    monkeypatch.setattr(CubeSchema, "sample_limit", 100)
    ds = _in_units(toy_cube)
    validate_cube(ds)
    ds["reflectance"][1, 0, 3, 20] = np.nan  # in both windows (they overlap on a small cube): counted once
    assert "has no data (NaN) in 1 pixels that `valid` marks observed (dates 1)" in only_problem(ds)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_reflectance_with_negative_values(toy_cube, dtype):
    """float32 is a cube; float64 is refused with fixes that keep negative reflectance (no uint16 wrap-around)."""
    ds = toy_cube.copy(deep=True)
    ds["reflectance"][:, :, 20:, 20:] = 500  # DN 500 - 0.1 offset: reflectance -0.05 (dark water)
    ds = _in_units(ds, dtype)
    want = decoded_reflectance(toy_cube.copy(deep=True).assign(reflectance=ds["reflectance"]))
    assert float(ds["reflectance"].min()) < 0
    if dtype == "float32":
        validate_cube(ds)
        return
    p = only_problem(ds)
    assert "`reflectance` has dtype float64, expected uint16 or float32" in p
    as_float, as_dn = p.split("Fix: ", 1)[1].split(" (reflectance units, NaN = no data), or store L2A DN: ")
    for fix in (as_float, as_dn):
        fixed = ds.copy()
        exec(fix, {"ds": fixed})
        validate_cube(fixed)
        got = decoded_reflectance(fixed)
        np.testing.assert_allclose(got.values, want.values, atol=5.1e-5)  # NaN at the same places
    assert fixed["reflectance"].dtype == np.uint16 and int(fixed["reflectance"][0, 0, 25, 25]) == 500


def test_float_reflectance_that_kept_dn_attributes_is_refused(toy_cube):
    ds = toy_cube.copy()
    r = decoded_reflectance(ds)
    r.attrs = dict(toy_cube["reflectance"].attrs)  # arithmetic that kept scale_factor/add_offset
    p = only_problem(ds.assign(reflectance=r.fillna(0)))
    assert "is float with scale_factor, so it is read as DN" in p and "attrs.pop('scale_factor')" in p


def test_an_xarray_decoded_store_validates_as_the_store(toy_cube, tmp_path):
    """``xarray.open_zarr(path)`` (CF decoding: float64, scaling in .encoding) gives the problems of the raw store."""
    from hvaeseg.data.store import open_cube, write_cube, write_dataset

    good = write_cube(toy_cube, tmp_path / "good.zarr")
    decoded = xr.open_zarr(good, chunks=None)
    assert decoded["reflectance"].dtype == np.float64 and "scale_factor" not in decoded["reflectance"].attrs
    validate_cube(decoded)
    bad = toy_cube.copy(deep=True)
    bad["reflectance"][0, 0, 3, 3] = 60000  # out of range
    bad["reflectance"][1, 1, 1, 1] = 0  # no data under `valid`
    bad_store = write_dataset(bad, tmp_path / "bad.zarr")
    raw = problems_of(open_cube(bad_store, validate=False))
    assert len(raw) == 2
    assert problems_of(xr.open_zarr(bad_store, chunks=None)) == raw
