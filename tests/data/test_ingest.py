"""Ingestion of real L2A products: the WorldCereal sample (bench/data), resampling, GeoTIFF, and bad inputs."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hvaeseg.data.bands import L2A_BANDS
from hvaeseg.data.ingest import (
    IngestError,
    discover_netcdf,
    ingest,
    ingest_geotiff,
    ingest_netcdf,
    read_code_table,
    resample_to_grid,
)
from hvaeseg.data.schema import CLEAR_SCL, class_names, validate_cube

# the WorldCereal test site (MIT licence), shipped with the repository so that a fresh clone runs these tests
SAMPLE = Path(__file__).resolve().parents[2] / "bench" / "data" / "worldcereal-be-00002806639B424A"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"WorldCereal sample not found at {SAMPLE}")


def _files(d: Path) -> dict[str, Path]:
    return {
        "10m": next(d.glob("S2_L2A_10m_*.nc")),
        "20m": next(d.glob("S2_L2A_20m_*.nc")),
        "labels": next(d.glob("OUTPUT_*.nc")),
        "table": d / "wc2eurocrops_map.csv",
    }


def _open(path: Path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False) as ds:
        return ds.load()


@pytest.fixture(scope="module")
def sample_cube() -> xr.Dataset:
    f = _files(SAMPLE)
    return ingest_netcdf(f["10m"], f["20m"], labels=f["labels"], code_table=f["table"])


# ---------------------------------------------------------------------------------------------- the sample


@needs_sample
def test_worldcereal_sample_gives_a_valid_cube(sample_cube):
    ds = sample_cube
    validate_cube(ds)
    assert dict(ds.sizes) == {"time": 118, "band": 10, "y": 64, "x": 64}
    assert list(ds["band"].values) == list(L2A_BANDS)
    assert ds["reflectance"].dtype == np.uint16
    assert ds["reflectance"].attrs["scale_factor"] == pytest.approx(1e-4)
    assert ds["reflectance"].attrs["add_offset"] == 0.0  # no BOA offset in the metadata: harmonised
    assert ds.attrs["crs"] == "EPSG:32631"
    assert np.all(np.diff(ds["time"].values) > np.timedelta64(0))


@needs_sample
def test_sample_valid_is_consistent_with_scl(sample_cube):
    ds = sample_cube
    scl = ds["scl"].values
    expect = np.isin(scl, CLEAR_SCL) & (ds["reflectance"].values != 0).all(axis=1)
    np.testing.assert_array_equal(ds["valid"].values, expect)
    # clouds (8, 9), cirrus (10), shadows (3) and snow (11) are never valid; vegetation usually is
    assert not ds["valid"].values[np.isin(scl, (3, 8, 9, 10, 11))].any()
    assert ds["valid"].values[scl == 4].mean() > 0.99
    # SCL is nearest-resampled: each 20 m pixel becomes exactly its 2 x 2 block of 10 m pixels
    src = _open(_files(SAMPLE)["20m"])["SCL"].values
    np.testing.assert_array_equal(scl, np.repeat(np.repeat(src, 2, axis=1), 2, axis=2))


@needs_sample
def test_sample_native_bands_are_copied_and_20m_bands_interpolated(sample_cube):
    f = _files(SAMPLE)
    b10, b20 = _open(f["10m"]), _open(f["20m"])
    refl = sample_cube["reflectance"]
    for b in ("B02", "B03", "B04", "B08"):
        np.testing.assert_array_equal(refl.sel(band=b).values, b10[b].values)
    # the mean over each 2 x 2 block of an interpolated band stays close to the 20 m pixel
    for b in ("B05", "B11"):
        up = refl.sel(band=b).values.astype(float)
        block_mean = up.reshape(118, 32, 2, 32, 2).mean(axis=(2, 4))
        src = b20[b].values.astype(float)
        inner = (slice(None), slice(1, -1), slice(1, -1))
        assert np.median(np.abs(block_mean[inner] - src[inner]) / src[inner]) < 0.05


@needs_sample
def test_sample_labels_have_class_names(sample_cube):
    lab = sample_cube["labels"]
    assert lab.dtype == np.int16
    names = class_names(sample_cube)
    assert names == ["Maize", "Cabages", "Potatoes", "Other_Leguminous_crops", "Permanent_grass_crops"]
    assert lab.attrs["source_codes"] == [1200, 2130, 5100, 7900, 9120]
    ids, counts = np.unique(lab.values, return_counts=True)
    assert dict(zip(ids.tolist(), counts.tolist())) == {-1: 1860, 0: 1249, 1: 31, 2: 25, 3: 96, 4: 835}
    # the mapping follows the codes pixel by pixel
    codes = _open(_files(SAMPLE)["labels"])["CT"].values
    np.testing.assert_array_equal(lab.values == 0, codes == 1200)
    np.testing.assert_array_equal(lab.values == -1, codes == 0)


@needs_sample
def test_codes_absent_from_the_table_become_void():
    f = _files(SAMPLE)
    table = read_code_table(f["table"])
    del table[2130]  # cabbages: no longer named
    ds = ingest_netcdf(f["10m"], f["20m"], labels=f["labels"], code_table=table)
    codes = _open(f["labels"])["CT"].values
    assert "Cabages" not in class_names(ds)
    assert (ds["labels"].values[codes == 2130] == -1).all()
    assert ds["labels"].attrs["flag_values"] == [0, 1, 2, 3]


@needs_sample
def test_explicit_classes_and_boa_offset():
    f = _files(SAMPLE)
    ds = ingest_netcdf(
        f["10m"], f["20m"], labels=f["labels"], code_table=f["table"], classes=[9120, 1200], boa_add_offset=-1000
    )
    assert class_names(ds) == ["Permanent_grass_crops", "Maize"]
    assert ds["reflectance"].attrs["add_offset"] == pytest.approx(-0.1)
    assert ds.attrs["boa_offset_source"] == "option"


@needs_sample
def test_ingest_writes_a_store_from_a_site_folder(tmp_path):
    from hvaeseg.data.store import open_cube

    out = ingest(SAMPLE, tmp_path / "site.zarr")
    ds = open_cube(out)
    assert dict(ds.sizes) == {"time": 118, "band": 10, "y": 64, "x": 64}
    assert class_names(ds)[0] == "Maize"
    assert discover_netcdf(SAMPLE)["labels"].name.startswith("OUTPUT")


@needs_sample
def test_command_line_ingest(tmp_path, capsys):
    from hvaeseg.commands.ingest import add_ingest_parser

    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers())
    f = _files(SAMPLE)
    out = tmp_path / "cli.zarr"
    args = parser.parse_args(
        ["ingest", str(f["10m"]), str(f["20m"]), "--labels", str(f["labels"]), "--code-table", str(f["table"]),
         str(out)]
    )
    assert args.func(args) == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "zarr.json").exists()


# ---------------------------------------------------------------------------------------------- resampling


def _grid(n: int, res: float, x0: float = 500_000.0, y0: float = 5_000_000.0):
    """Pixel centres of an n x n grid with top-left corner (x0, y0)."""
    x = x0 + res * (np.arange(n) + 0.5)
    y = y0 - res * (np.arange(n) + 0.5)
    return y, x


def _da(values: np.ndarray, y, x) -> xr.DataArray:
    return xr.DataArray(values, dims=("time", "y", "x"), coords={"y": y, "x": x})


@pytest.mark.parametrize("res", [20.0, 60.0])
def test_constant_field_stays_constant(res):
    n = 6 if res == 60 else 8
    y, x = _grid(n, res)
    ty, tx = _grid(int(n * res / 10), 10.0)
    src = _da(np.full((2, n, n), 1234, dtype=np.uint16), y, x)
    out = resample_to_grid(src, ty, tx, "bilinear")
    assert out.dtype == np.uint16 and out.shape == (2, len(ty), len(tx))
    assert (out.values == 1234).all()
    # no-data pixels do not drag their neighbours towards 0
    src.values[0, 3, 3] = 0
    out = resample_to_grid(src, ty, tx, "bilinear")
    assert set(np.unique(out.values)) <= {1234}


def test_pixel_centres_are_aligned_on_a_ramp():
    """A ramp along x at 20 m: every interior 10 m pixel gets the ramp at its own centre."""
    y, x = _grid(8, 20.0)
    ty, tx = _grid(16, 10.0)
    j = np.arange(8)
    src = _da(np.broadcast_to(1000 + 4 * j, (1, 8, 8)).astype(np.uint16), y, x)
    out = resample_to_grid(src, ty, tx, "bilinear").values[0]
    # 20 m centre j sits at 10 m index 2j + 0.5: 10 m pixel i is at 20 m index u = i/2 - 0.25
    u = np.arange(16) / 2 - 0.25
    expect = 1000 + 4 * np.clip(u, 0, 7)  # beyond the outer centres: the edge value
    np.testing.assert_array_equal(out, np.broadcast_to(expect, (16, 16)))
    assert out[0, 1] == 1001 and out[0, 2] == 1003  # not 1002/1004: corners are not aligned
    # the same along y (y decreasing)
    src_y = _da(np.broadcast_to((1000 + 4 * j)[:, None], (1, 8, 8)).astype(np.uint16), y, x)
    out_y = resample_to_grid(src_y, ty, tx, "bilinear").values[0]
    np.testing.assert_array_equal(out_y, np.broadcast_to(expect[:, None], (16, 16)))


def test_nearest_takes_the_containing_pixel():
    y, x = _grid(4, 60.0)
    ty, tx = _grid(24, 10.0)
    codes = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    out = resample_to_grid(_da(codes, y, x), ty, tx, "nearest").values[0]
    np.testing.assert_array_equal(out, np.repeat(np.repeat(codes[0], 6, axis=0), 6, axis=1))


# ---------------------------------------------------------------------------------------------- GeoTIFF


@needs_sample
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray with affine >= 2.5
def test_geotiff_bands_give_the_same_cube_as_netcdf(tmp_path, sample_cube):
    pytest.importorskip("rioxarray")
    f = _files(SAMPLE)
    n_dates = 3
    b10, b20 = _open(f["10m"]).isel(timestamp=slice(0, n_dates)), _open(f["20m"]).isel(timestamp=slice(0, n_dates))
    files = {}
    for ds, names in ((b10, ("B02", "B03", "B04", "B08")), (b20, ("B05", "B06", "B07", "B8A", "B11", "B12", "SCL"))):
        for name in names:
            da = ds[name].rename(timestamp="band").drop_vars("band", errors="ignore")
            da.attrs = {}
            da = da.rio.write_crs("EPSG:32631")
            path = tmp_path / f"{name}.tif"
            da.rio.to_raster(path)
            files[name] = path
    lab = _open(f["labels"])["CT"]
    lab.attrs = {}
    lab.rio.write_crs("EPSG:32631").rio.to_raster(tmp_path / "labels.tif")
    scl = files.pop("SCL")
    ds = ingest_geotiff(
        files, times=b10["timestamp"].values, scl=scl, labels=tmp_path / "labels.tif", code_table=f["table"],
        boa_add_offset=0,
    )
    ref = sample_cube.isel(time=slice(0, n_dates))
    for var in ("reflectance", "scl", "valid", "labels"):
        np.testing.assert_array_equal(ds[var].values, ref[var].values)
    np.testing.assert_allclose(ds["x"].values, ref["x"].values)
    # one date too few for a band: the timestamps differ
    with pytest.raises(IngestError, match="timestamps differ"):
        ingest_geotiff(files, times=b10["timestamp"].values[:2], scl=scl, boa_add_offset=0)
    # the same through the command line
    from hvaeseg.commands.ingest import add_ingest_parser

    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers())
    times = ",".join(str(t) for t in b10["timestamp"].values)
    pairs = [f"{k}={v}" for k, v in files.items()] + [f"SCL={scl}"]
    out = tmp_path / "tif.zarr"
    args = parser.parse_args(["ingest", "--geotiff", *pairs, "--times", times, "--labels", str(tmp_path / "labels.tif"),
                              "--code-table", str(f["table"]), "--boa-offset", "0", str(out)])
    assert args.func(args) == 0
    from hvaeseg.data.store import open_cube

    np.testing.assert_array_equal(open_cube(out)["reflectance"].values, ref["reflectance"].values)


# ---------------------------------------------------------------------------------------------- bad inputs


def _corrupt(tmp_path: Path, which: str, change) -> dict[str, Path]:
    """Copy the sample to ``tmp_path`` and rewrite one file through ``change(ds) -> ds``."""
    d = tmp_path / "site"
    shutil.copytree(SAMPLE, d)
    os.chmod(d, 0o755)  # a copied sample may be read-only
    for p in d.iterdir():
        os.chmod(p, 0o644)
    f = _files(d)
    ds = change(_open(f[which]))
    for attrs in [ds.attrs] + [v.attrs for v in ds.variables.values()]:
        if not isinstance(attrs.get("bounds", ""), str):  # an array `bounds` confuses xarray's CF writer
            attrs["bounds"] = str(np.asarray(attrs["bounds"]).tolist())
    f[which].unlink()
    ds.to_netcdf(f[which], engine="h5netcdf")
    return f


def _set_crs(ds: xr.Dataset) -> xr.Dataset:
    ds.attrs.update(epsg="32632", crs="+init=epsg:32632")
    for v in ds.data_vars.values():
        v.attrs.update(epsg="32632", crs="+init=epsg:32632")
    for k in ("crs_wkt", "spatial_ref"):
        ds["spatial_ref"].attrs[k] = (
            ds["spatial_ref"].attrs[k].replace("32631", "32632").replace("zone 31N", "zone 32N")
        )
    return ds


def _shift_date(ds: xr.Dataset) -> xr.Dataset:
    t = ds["timestamp"].values.copy()
    t[5] = t[5] + np.timedelta64(1, "D")
    return ds.assign_coords(timestamp=t)


BAD_INPUTS = {
    "crs": ("20m", _set_crs, "different CRS.*EPSG:32632"),
    "footprint": ("20m", lambda ds: ds.assign_coords(x=ds["x"].values + 20.0), "footprints differ"),
    "timestamps": ("20m", _shift_date, "timestamps differ between the 10 m file .* and the 20 m file"),
    "missing band": ("20m", lambda ds: ds.drop_vars("B11"), "missing bands B11"),
    "label grid": ("labels", lambda ds: ds.isel(y=slice(0, 60)), "label grid does not match"),
    "label shift": ("labels", lambda ds: ds.assign_coords(y=ds["y"].values + 10.0), "label grid does not match"),
}


@needs_sample
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error_and_writes_nothing(tmp_path, case):
    which, change, message = BAD_INPUTS[case]
    f = _corrupt(tmp_path, which, change)
    out = tmp_path / "out.zarr"
    with pytest.raises(IngestError, match=message):
        ingest([f["10m"], f["20m"]], out, labels=f["labels"], code_table=f["table"])
    assert not out.exists()
    assert not list(tmp_path.glob("out.zarr*"))  # no temporary store left behind either


@needs_sample
def test_missing_scl_is_an_error_unless_allowed(tmp_path):
    f = _corrupt(tmp_path, "20m", lambda ds: ds.drop_vars("SCL"))
    with pytest.raises(IngestError, match="missing the SCL layer"):
        ingest_netcdf(f["10m"], f["20m"])
    ds = ingest_netcdf(f["10m"], f["20m"], require_scl=False)
    np.testing.assert_array_equal(ds["valid"].values, (ds["reflectance"].values != 0).all(axis=1))


@needs_sample
def test_several_problems_are_reported_together(tmp_path):
    f = _corrupt(tmp_path, "20m", lambda ds: _set_crs(ds.drop_vars("B12")))
    with pytest.raises(IngestError) as err:
        ingest_netcdf(f["10m"], f["20m"])
    assert "missing bands B12" in str(err.value) and "different CRS" in str(err.value)


def test_read_code_table_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("name,croptype\nA,1\nB,1\n")
    with pytest.raises(IngestError, match="named twice"):
        read_code_table(p)
    p.write_text("name,croptype\nA,x\n")
    with pytest.raises(IngestError, match="not an integer"):
        read_code_table(p)
    p.write_text("label,value\nA,1\n")
    with pytest.raises(IngestError, match="no code column"):
        read_code_table(p)


# ---------------------------------------------------------------------------------------------- class names


def _tiny_geotiffs(d: Path, *, georeferenced: bool, seed: int = 0, size: int = 16) -> dict:
    """Three single-date band files (B02 B03 B04) and a label file (codes 1-3, a few 0) of ``size`` x ``size``,
    seeded; without ``georeferenced`` they have no geotransform and no CRS (rasterio: identity transform)."""
    import warnings

    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("rioxarray")
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    geo = {"transform": from_origin(500_000.0, 5_000_160.0, 10.0, 10.0), "crs": "EPSG:32631"} if georeferenced else {}
    arrays = {b: rng.integers(1, 10_000, (size, size), dtype=np.uint16) for b in ("B02", "B03", "B04")}
    codes = rng.integers(1, 4, (size, size)).astype(np.int16)
    codes[0, :3] = 0  # no data: void
    arrays["labels"] = codes
    paths = {}
    for name, a in arrays.items():
        paths[name] = d / f"{name}.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(paths[name], "w", driver="GTiff", width=size, height=size, count=1, dtype=a.dtype,
                               **geo) as f:
                f.write(a[None])
    return {"paths": paths, "arrays": arrays}


def _tiny_options(files: dict, **kw) -> dict:
    p = files["paths"]
    return {"band_files": {b: p[b] for b in ("B02", "B03", "B04")}, "times": ["2020-01-01"],
            "bands": ["B02", "B03", "B04"], "require_scl": False, "labels": p["labels"], "boa_add_offset": 0, **kw}


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_class_names_name_the_classes(tmp_path):
    files = _tiny_geotiffs(tmp_path, georeferenced=True)
    ds = ingest_geotiff(**_tiny_options(files, classes=[3, 1, 2], class_names=["cloud", "shadow", "clear"]))
    assert class_names(ds) == ["cloud", "shadow", "clear"]
    assert ds["labels"].attrs["source_codes"] == [3, 1, 2]
    codes = files["arrays"]["labels"]
    np.testing.assert_array_equal(ds["labels"].values, np.select([codes == 3, codes == 1, codes == 2], [0, 1, 2], -1))
    # without classes: one name per code present, in increasing code order
    ds = ingest_geotiff(**_tiny_options(files, class_names=[" a ", "b", "c"]))
    assert class_names(ds) == ["a", "b", "c"] and ds["labels"].attrs["source_codes"] == [1, 2, 3]


@pytest.mark.parametrize(
    "classes, names, message",
    [
        ([1, 2, 3], ["a", "b"], r"2 names for 3 class codes \[1, 2, 3\]"),
        ([1, 2, 3], ["a", "", "c"], "name 2 of 3 is empty"),
        ([1, 2, 3], ["a", "b", "a"], "names repeat: a"),
        ([1, 2, 3], ["a", "b c", "d"], "single words"),
        (None, ["a", "b"], r"2 names \['a', 'b'\] for the 3 classes of .*labels.tif \(codes \[1, 2, 3\]\)"),
        ([1, 2], "a,b", "expected a list of names"),
    ],
)
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_bad_class_names_are_a_clear_error_and_write_nothing(tmp_path, classes, names, message):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    out = tmp_path / "out.zarr"
    with pytest.raises(IngestError, match=message) as err:
        ingest(None, out, **_tiny_options(files, classes=classes, class_names=names))
    assert "class_names (--class-names)" in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("out.zarr*"))


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_class_names_on_the_command_line(tmp_path):
    from hvaeseg.commands.ingest import add_ingest_parser
    from hvaeseg.data.store import open_cube

    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    p = files["paths"]
    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers())
    base = ["ingest", "--geotiff", *(f"{b}={p[b]}" for b in ("B02", "B03", "B04")), "--bands", "B02,B03,B04",
            "--no-scl", "--times", "2020-01-01", "--boa-offset", "0", "--labels", str(p["labels"]),
            "--classes", "1,2,3"]
    args = parser.parse_args([*base, "--class-names", "cloud_shadow,clear,cloud", str(tmp_path / "a.zarr")])
    assert args.func(args) == 0
    assert class_names(open_cube(tmp_path / "a.zarr")) == ["cloud_shadow", "clear", "cloud"]
    args = parser.parse_args([*base, "--class-names", "cloud_shadow,,cloud", str(tmp_path / "b.zarr")])
    with pytest.raises(IngestError, match="name 2 of 3 is empty"):
        args.func(args)
    assert not (tmp_path / "b.zarr").exists()


# ---------------------------------------------------------------------------------------------- no georeference


def test_geotiff_without_georeference_is_a_clear_error_and_writes_nothing(tmp_path):
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    files = _tiny_geotiffs(tmp_path / "in", georeferenced=False)
    out = tmp_path / "out.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(IngestError) as err:
            ingest(None, out, **_tiny_options(files))
    msg = str(err.value)
    for name in ("B02", "B03", "B04", "labels"):
        assert f"{files['paths'][name]} has no georeference: no geotransform" in msg
    assert "--local-grid" in msg and "local_grid=True" in msg and "gdal_edit.py -a_ullr" in msg
    assert "y` increases" not in msg  # the late, obscure error of the cube validation is not reached
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]  # the error says it instead
    assert not out.exists() and not list(tmp_path.glob("out.zarr*"))


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_local_grid_ingests_files_without_georeference(tmp_path):
    from hvaeseg.data.store import open_cube

    files = _tiny_geotiffs(tmp_path / "in", georeferenced=False)
    out = ingest(None, tmp_path / "local.zarr", **_tiny_options(files, local_grid=True, classes=[1, 2, 3]))
    ds = open_cube(out)  # validates
    assert dict(ds.sizes) == {"time": 1, "band": 3, "y": 16, "x": 16}
    for b in ("B02", "B03", "B04"):
        np.testing.assert_array_equal(ds["reflectance"].sel(band=b).values[0], files["arrays"][b])
    codes = files["arrays"]["labels"]
    np.testing.assert_array_equal(ds["labels"].values, np.where(codes == 0, -1, codes - 1))
    assert ds["valid"].values.all()
    # the local grid: 10 m pixels, origin 0 at the lower-left corner, y decreasing from the top row, no CRS
    assert (np.diff(ds["y"].values) == -10).all() and ds["y"].values[0] == 155 and ds["y"].values[-1] == 5
    np.testing.assert_array_equal(ds["x"].values, 5 + 10 * np.arange(16))
    assert ds.attrs["grid"] == "local" and "no georeference" in ds.attrs["grid_description"]
    assert "crs" not in ds.attrs
    # georeferenced files: local_grid changes nothing and the cube does not say "local"
    geo = _tiny_geotiffs(tmp_path / "geo", georeferenced=True)
    ds_geo = ingest_geotiff(**_tiny_options(geo, local_grid=True))
    assert "grid" not in ds_geo.attrs and ds_geo.attrs["crs"] == "EPSG:32631" and ds_geo["x"].values[0] == 500_005


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_local_grid_on_the_command_line(tmp_path):
    from hvaeseg.commands.ingest import add_ingest_parser
    from hvaeseg.data.store import open_cube

    files = _tiny_geotiffs(tmp_path / "in", georeferenced=False)
    p = files["paths"]
    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers())
    base = ["ingest", "--geotiff", *(f"{b}={p[b]}" for b in ("B02", "B03", "B04")), "--bands", "B02,B03,B04",
            "--no-scl", "--times", "2020-01-01", "--boa-offset", "0", "--labels", str(p["labels"])]
    args = parser.parse_args([*base, str(tmp_path / "no.zarr")])
    with pytest.raises(IngestError, match=f"(?s){p['B02']} has no georeference.*--local-grid"):
        args.func(args)
    assert not (tmp_path / "no.zarr").exists()
    args = parser.parse_args([*base, "--local-grid", str(tmp_path / "cli.zarr")])
    assert args.func(args) == 0
    ds = open_cube(tmp_path / "cli.zarr")
    assert ds.attrs["grid"] == "local" and (np.diff(ds["y"].values) < 0).all()
    np.testing.assert_array_equal(ds["reflectance"].sel(band="B03").values[0], files["arrays"]["B03"])


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_local_grid_does_not_mix_with_georeferenced_files(tmp_path):
    bare = _tiny_geotiffs(tmp_path / "bare", georeferenced=False)
    geo = _tiny_geotiffs(tmp_path / "geo", georeferenced=True)
    options = _tiny_options(bare, local_grid=True)
    options["band_files"]["B04"] = geo["paths"]["B04"]
    with pytest.raises(IngestError, match=f"(?s)needs every file to lack a georeference.*{geo['paths']['B04']}"):
        ingest_geotiff(**options)


# ---------------------------------------------------------------------------------------------- the output


def _write_tif(path: Path, array: np.ndarray, descriptions=(), tags=None, scales=None, offsets=None, **profile):
    """A georeferenced GeoTIFF (EPSG:32631, 10 m pixels, the grid of :func:`_tiny_geotiffs`) of ``array``."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    a = array if array.ndim == 3 else array[None]
    with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                       dtype=a.dtype, transform=from_origin(500_000.0, 5_000_160.0, 10.0, 10.0), crs="EPSG:32631",
                       **profile) as f:
        f.write(a)
        for i, text in enumerate(descriptions, start=1):
            f.set_band_description(i, text)
        if tags:
            f.update_tags(**tags)
        if scales is not None:
            f.scales, f.offsets = scales, offsets
    return path


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_overwrite_replaces_a_cube_store_and_nothing_else(tmp_path):
    from hvaeseg.data.ingest import check_output
    from hvaeseg.data.store import open_cube

    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    out = ingest(None, tmp_path / "a.zarr", **_tiny_options(files))
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        ingest(None, out, **_tiny_options(files))
    ingest(None, out, overwrite=True, **_tiny_options(files, classes=[2, 1]))  # a cube store: replaced
    assert open_cube(out)["labels"].attrs["source_codes"] == [2, 1]
    labels = files["paths"]["labels"]
    plain = tmp_path / "notes.nc"
    plain.write_bytes(b"not a cube")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is an existing file, not a cube store"):
            ingest(None, plain, overwrite=overwrite, **_tiny_options(files))
        with pytest.raises(IngestError, match=r"is also an input of this command \(--labels\)"):
            ingest(None, labels, overwrite=overwrite, **_tiny_options(files))
    assert plain.read_bytes() == b"not a cube"
    # an output folder that holds an input, also through a symbolic link
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "in")
    with pytest.raises(IngestError, match="holds .*B02.tif, an input"):
        ingest(None, link, overwrite=True, **_tiny_options(files))
    check_output(tmp_path / "new.zarr", [("--labels", str(labels))])  # a new path: fine
    (tmp_path / "empty.zarr").mkdir()  # an empty folder: nothing to lose, replaced with overwrite
    assert open_cube(ingest(None, tmp_path / "empty.zarr", overwrite=True, **_tiny_options(files)))


# ---------------------------------------------------------------------------------------------- label codes


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_void_codes_say_which_codes_mean_no_label(tmp_path):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    codes = files["arrays"]["labels"]
    ds = ingest_geotiff(**_tiny_options(files))  # default: code 0 is void, and says so
    assert ds["labels"].attrs["void_codes"] == [0] and ds["labels"].attrs["source_codes"] == [1, 2, 3]
    assert "code 0: 3 px (void codes by default: 0" in ds["labels"].attrs["void_description"]
    ds = ingest_geotiff(**_tiny_options(files, void_codes=[]))  # no void code: 0 is a class
    assert ds["labels"].attrs["source_codes"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(ds["labels"].values, codes)
    ds = ingest_geotiff(**_tiny_options(files, void_codes=[3], classes=[0, 1, 2], class_names=["none", "a", "b"]))
    np.testing.assert_array_equal(ds["labels"].values, np.where(codes == 3, -1, codes))
    # the label file's no-data value is void by default too
    lab = codes.copy()
    lab[5, :4] = 255
    files["paths"]["labels"] = _write_tif(tmp_path / "nodata.tif", lab, nodata=255)
    ds = ingest_geotiff(**_tiny_options(files))
    assert ds["labels"].attrs["void_codes"] == [0, 255] and ds["labels"].attrs["source_codes"] == [1, 2, 3]
    assert (ds["labels"].values[5, :4] == -1).all()
    assert "no-data value 255" in ds["labels"].attrs["void_description"]


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_code_tables_name_geotiff_classes(tmp_path):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    csv_table = tmp_path / "classes.csv"
    csv_table.write_text("code,name\n1,cloud shadow\n2,clear\n3,cloud\n")
    json_table = tmp_path / "classes.json"
    json_table.write_text('{"1": "cloud_shadow", "2": "clear", "3": "cloud"}')
    for table in (csv_table, json_table, {1: "cloud_shadow", 2: "clear", 3: "cloud"}):
        ds = ingest_geotiff(**_tiny_options(files, code_table=table))
        assert class_names(ds) == ["cloud_shadow", "clear", "cloud"]
    assert ds["labels"].attrs["class_names_source"] == "code table (mapping)"
    assert read_code_table(json_table) == {1: "cloud_shadow", 2: "clear", 3: "cloud"}
    ds = ingest_geotiff(**_tiny_options(files))  # no table: code_<c>, and the attribute says how to name them
    assert class_names(ds) == ["code_1", "code_2", "code_3"]
    assert "--class-names or --code-table" in ds["labels"].attrs["class_names_source"]


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_float_labels_with_whole_codes_and_nan(tmp_path):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    lab = files["arrays"]["labels"].astype(np.float32)
    lab[1, 1] = np.nan
    files["paths"]["labels"] = _write_tif(tmp_path / "float.tif", lab)
    ds = ingest_geotiff(**_tiny_options(files))
    assert ds["labels"].values[1, 1] == -1 and ds["labels"].attrs["source_codes"] == [1, 2, 3]
    assert "NaN (1 px)" in ds["labels"].attrs["void_description"]


# ---------------------------------------------------------------------------------------------- GeoTIFF offset


@pytest.mark.parametrize(
    "metadata, offset_dn, source",
    [
        ({"scales": (1e-4,), "offsets": (-0.1,)}, -1000, "metadata add_offset"),
        ({"tags": {"BOA_ADD_OFFSET": "-1000"}}, -1000, "metadata BOA_ADD_OFFSET"),
        ({"tags": {"PROCESSING_BASELINE": "05.10"}}, -1000, "metadata PROCESSING_BASELINE=5.1"),
        ({"tags": {"PROCESSING_BASELINE": "03.01"}}, 0, "metadata PROCESSING_BASELINE=3.01"),
    ],
)
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_geotiff_offset_comes_from_the_metadata(tmp_path, metadata, offset_dn, source):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    for b in ("B02", "B03", "B04"):
        _write_tif(files["paths"][b], files["arrays"][b], **metadata)
    ds = ingest_geotiff(**_tiny_options(files, boa_add_offset=None))
    assert ds.attrs["boa_add_offset"] == pytest.approx(offset_dn)
    assert ds["reflectance"].attrs["add_offset"] == pytest.approx(offset_dn * 1e-4)
    assert ds["reflectance"].attrs["scale_factor"] == pytest.approx(1e-4)
    assert ds.attrs["boa_offset_source"].startswith(source)
    ds = ingest_geotiff(**_tiny_options(files, boa_add_offset=-500))  # the option wins
    assert ds.attrs["boa_add_offset"] == -500 and ds.attrs["boa_offset_source"] == "option"


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_geotiff_without_offset_metadata_needs_the_option(tmp_path):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    with pytest.raises(IngestError, match=r"reflectance offset is unknown: .*B02.tif \(\+2 more\).*--boa-offset DN"):
        ingest(None, tmp_path / "o.zarr", **_tiny_options(files, boa_add_offset=None))
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------------------------------------- stacks


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_multi_band_stacks_give_the_cube_of_the_band_files(tmp_path):
    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    ref = ingest_geotiff(**_tiny_options(files))
    a = files["arrays"]
    stack = np.stack([a["B04"], a["B02"], a["B03"]])  # not in cube order: the names say which is which
    options = {k: v for k, v in _tiny_options(files).items() if k != "band_files"}
    for descriptions in (("B04", "B02", "B03"), ("red", "blue", "green"), ("B4", "b2", "B3")):
        path = _write_tif(tmp_path / "stack.tif", stack, descriptions=descriptions)
        ds = ingest_geotiff(stack=path, **options)
        np.testing.assert_array_equal(ds["reflectance"].values, ref["reflectance"].values)
    # the option overrides the descriptions; two stack files are two dates
    bare = _write_tif(tmp_path / "bare.tif", stack)
    ds = ingest_geotiff(stack=[bare, bare], stack_bands=["B04", "B02", "B03"],
                        **{**options, "times": ["2020-01-01", "2020-01-11"]})
    assert ds.sizes["time"] == 2
    np.testing.assert_array_equal(ds["reflectance"].values[1], ref["reflectance"].values[0])
    # SCL may be a layer of the stack; other bands may come as band files
    scl = np.full(stack.shape[1:], 4, np.uint16)
    scl[0, 0] = 9  # cloud
    with_scl = _write_tif(tmp_path / "scl.tif", np.stack([a["B02"], a["B03"], scl]), descriptions=("B02", "B03", "SCL"))
    ds = ingest_geotiff({"B04": files["paths"]["B04"]}, stack=with_scl, **{**options, "require_scl": True})
    np.testing.assert_array_equal(ds["reflectance"].values, ref["reflectance"].values)
    assert not ds["valid"].values[0, 0, 0] and ds["valid"].values.sum() == 16 * 16 - 1


@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_stacks_on_the_command_line_and_what_it_prints(tmp_path, capsys):
    from hvaeseg.cli import main
    from hvaeseg.data.store import open_cube

    files = _tiny_geotiffs(tmp_path / "in", georeferenced=True)
    a = files["arrays"]
    stack = _write_tif(tmp_path / "stack.tif", np.stack([a["B02"], a["B03"], a["B04"]]))
    table = tmp_path / "classes.csv"
    table.write_text("code,name\n1,shadow\n2,clear\n3,cloud\n")
    out = tmp_path / "s.zarr"
    argv = ["data", "ingest", "--geotiff", str(stack), "--stack-bands", "B02,B03,B04", "--bands", "B02,B03,B04",
            "--no-scl", "--times", "2020-01-01", "--boa-offset", "0", "--labels", str(files["paths"]["labels"]),
            "--code-table", str(table), str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert "1 -> 0 shadow, 2 -> 1 clear, 3 -> 2 cloud (names from code table classes.csv)" in printed
    assert "code 0: 3 px (void codes by default: 0; --void-codes sets them)" in printed
    assert "BOA offset 0 DN; from option" in printed
    np.testing.assert_array_equal(open_cube(out)["reflectance"].values[0, 1], a["B03"])
    # --void-codes none: code 0 may be a class, but the table does not name it, and the command says so
    assert main([*argv[:-1], "--void-codes", "none", "--overwrite", str(out)]) == 0
    assert "no void codes: --void-codes none); code 0: 3 px, not named by the code table" in capsys.readouterr().out
    table.write_text("code,name\n0,unknown\n1,shadow\n2,clear\n3,cloud\n")
    assert main([*argv[:-1], "--void-codes", "none", "--overwrite", str(out)]) == 0
    assert class_names(open_cube(out)) == ["unknown", "shadow", "clear", "cloud"]
