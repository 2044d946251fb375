"""Bad-input corpus of ``hvaeseg data ingest``: each case exits 2 with one line naming the problem and the fix,
and leaves its inputs (and any existing output) byte-identical.

The products are tiny synthetic ones built in ``tmp_path``: a WorldCereal-like NetCDF site (10 m and 20 m
band files, an ``OUTPUT.nc`` label file, a ``code,name`` table) and georeferenced GeoTIFFs (band files, a
label map, a multi-band stack). Every one of them ingests cleanly with the right command
(:func:`test_the_fixtures_ingest`), so each case fails for its own reason only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hvaeseg.cli import main
from tests.bad_inputs.helpers import refuses

pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray, affine >= 2.5

B10 = ("B02", "B03", "B04", "B08")
B20 = ("B05", "B06", "B07", "B8A", "B11", "B12")
TIF_BANDS = ("B02", "B03", "B04")


# ---------------------------------------------------------------------------------------------- fixtures


def _netcdf_site(d: Path) -> dict[str, Path]:
    """A 2-date site: 10 m file (4 bands, 4 x 4), 20 m file (6 bands and SCL, 2 x 2), OUTPUT.nc (codes 0, 1, 2)
    and table.csv (``code,name``)."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    times = np.array(["2020-01-01", "2020-01-11"], dtype="datetime64[ns]")

    def grid(n: int, res: float):
        return 5_000_040.0 - res * (np.arange(n) + 0.5), 500_000.0 + res * (np.arange(n) + 0.5)

    def product(names, n, res, scl=False):
        y, x = grid(n, res)
        data = {b: (("timestamp", "y", "x"), rng.integers(1, 10_000, (2, n, n), dtype=np.uint16),
                    {"scale_factor": 1e-4}) for b in names}
        if scl:
            data["SCL"] = (("timestamp", "y", "x"), np.full((2, n, n), 4, np.uint8))
        return xr.Dataset(data, coords={"timestamp": times, "y": y, "x": x}, attrs={"epsg": "32631"})

    paths = {"10m": d / "S2_L2A_10m.nc", "20m": d / "S2_L2A_20m.nc", "labels": d / "OUTPUT.nc",
             "table": d / "table.csv"}
    product(B10, 4, 10.0).to_netcdf(paths["10m"], engine="h5netcdf")
    product(B20, 2, 20.0, scl=True).to_netcdf(paths["20m"], engine="h5netcdf")
    y, x = grid(4, 10.0)
    codes = np.array([[0, 1, 1, 2]] * 4, dtype=np.uint16)
    xr.Dataset({"CT": (("y", "x"), codes)}, coords={"y": y, "x": x}, attrs={"epsg": "32631"}).to_netcdf(
        paths["labels"], engine="h5netcdf")
    paths["table"].write_text("code,name\n1,wheat\n2,maize\n")
    return paths


def _tif(path: Path, array: np.ndarray, descriptions=None, **profile) -> Path:
    """A georeferenced GeoTIFF of ``array`` (``(layers, y, x)`` or ``(y, x)``), 10 m pixels, EPSG:32631."""
    import rasterio
    from rasterio.transform import from_origin

    a = array if array.ndim == 3 else array[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0],
                           dtype=a.dtype, transform=from_origin(500_000.0, 5_000_080.0, 10.0, 10.0),
                           crs="EPSG:32631", **profile) as f:
            f.write(a)
            for i, text in enumerate(descriptions or (), start=1):
                f.set_band_description(i, text)
    return path


def _geotiffs(d: Path) -> dict[str, Path]:
    """B02, B03, B04 (one date, 8 x 8), a label map (codes 0-3), a 3-layer stack without band descriptions."""
    pytest.importorskip("rioxarray")
    rng = np.random.default_rng(1)
    d.mkdir(parents=True, exist_ok=True)
    bands = {b: rng.integers(1, 10_000, (8, 8), dtype=np.uint16) for b in TIF_BANDS}
    paths = {b: _tif(d / f"{b}.tif", a) for b, a in bands.items()}
    paths["labels"] = _tif(d / "labels.tif", rng.integers(0, 4, (8, 8)).astype(np.int16))
    paths["stack"] = _tif(d / "stack.tif", np.stack([bands[b] for b in TIF_BANDS]))
    return paths


def _tif_argv(p: dict[str, Path], *extra: str) -> list[str]:
    return ["data", "ingest", "--geotiff", *(f"{b}={p[b]}" for b in TIF_BANDS), "--bands", ",".join(TIF_BANDS),
            "--no-scl", "--times", "2020-01-01", *extra]


@pytest.fixture
def site(tmp_path) -> dict[str, Path]:
    return _netcdf_site(tmp_path / "site")


@pytest.fixture
def tifs(tmp_path) -> dict[str, Path]:
    return _geotiffs(tmp_path / "tif")


def _nc_argv(f: dict[str, Path], *extra: str) -> list[str]:
    return ["data", "ingest", str(f["10m"]), str(f["20m"]), *extra]


def test_the_fixtures_ingest(site, tifs, tmp_path, capsys):
    """The products of the corpus are good ones: with the right command each ingests (exit 0)."""
    assert main(_nc_argv(site, "--labels", str(site["labels"]), "--code-table", str(site["table"]),
                         str(tmp_path / "nc.zarr"))) == 0
    assert main(_tif_argv(tifs, "--boa-offset", "0", "--labels", str(tifs["labels"]), str(tmp_path / "t.zarr"))) == 0
    assert main(["data", "ingest", "--geotiff", str(tifs["stack"]), "--stack-bands", "B02,B03,B04", "--bands",
                 "B02,B03,B04", "--no-scl", "--times", "2020-01-01", "--boa-offset", "0",
                 str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == 3 and "void codes by default: 0" in out


# ---------------------------------------------------------------------------------------------- the output


def test_forgotten_output_with_overwrite_keeps_the_label_file(site, capsys):
    """`ingest 10m.nc 20m.nc OUTPUT.nc --overwrite`: the label file was taken as the output; it stays."""
    line = refuses(capsys, _nc_argv(site, str(site["labels"]), "--overwrite"),
                   str(site["labels"]), "not a cube store", "never replaced", "output argument was forgotten",
                   "last argument", unchanged=tuple(site.values()))
    assert "pass overwrite" not in line


def test_forgotten_output_without_overwrite_does_not_suggest_it(site, capsys):
    line = refuses(capsys, _nc_argv(site, str(site["labels"])), "not a cube store", "last argument",
                   unchanged=tuple(site.values()))
    assert "pass overwrite" not in line.lower()


def test_output_that_is_the_label_input(site, capsys):
    refuses(capsys, _nc_argv(site, "--labels", str(site["labels"]), str(site["labels"]), "--overwrite"),
            "is also an input", "--labels", "new store path", unchanged=tuple(site.values()))


def test_output_that_is_the_site_folder(site, capsys):
    folder = site["10m"].parent
    refuses(capsys, ["data", "ingest", str(folder), str(folder), "--overwrite"], "is also an input",
            unchanged=(folder,))


def test_output_folder_that_holds_the_inputs(site, capsys):
    folder = site["10m"].parent
    refuses(capsys, _nc_argv(site, str(folder), "--overwrite"), "holds", "input", unchanged=(folder,))


def test_output_folder_that_is_not_a_cube(site, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("keep me\n")
    refuses(capsys, _nc_argv(site, str(results), "--overwrite"), "folder that is not a cube store",
            "--overwrite only replaces a cube store", unchanged=(results, *site.values()))


def test_output_zarr_store_that_is_not_a_cube(site, tmp_path, capsys):
    other = tmp_path / "other.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(other, zarr_format=3, consolidated=False)
    refuses(capsys, _nc_argv(site, str(other), "--overwrite"), "Zarr store but not a cube",
            "hvaeseg_schema_version", unchanged=(other,))


def test_forgotten_geotiff_output_keeps_the_label_map(tifs, capsys):
    refuses(capsys, _tif_argv(tifs, "--boa-offset", "0", str(tifs["labels"]), "--overwrite"),
            "labels.tif", "not a cube store", unchanged=tuple(tifs.values()))


# ---------------------------------------------------------------------------------------------- code tables


@pytest.mark.parametrize(
    "name, text, needles",
    [
        ("codes.csv", "code,name\nwheat,1\n", ("code table (--code-table)", "'wheat' is not an integer", "code,name")),
        ("codes.csv", "code;name\n1;wheat\n", ("no code column", "code,name")),
        ("codes.csv", "code,name\n1,\n", ("code 1 has an empty name",)),
        ("codes.csv", "code,name\n1,wheat\n1,maize\n", ("code 1 is named twice",)),
        ("codes.json", "{1: 'wheat'}", ("not valid JSON", "{\"1\"")),
        ("codes.json", '["wheat", "maize"]', ("expected a JSON object",)),
    ],
    ids=["code-not-integer", "semicolons", "empty-name", "named-twice", "bad-json", "json-list"],
)
def test_malformed_code_table(site, tmp_path, capsys, name, text, needles):
    table = tmp_path / name
    table.write_text(text)
    refuses(capsys, _nc_argv(site, "--labels", str(site["labels"]), "--code-table", str(table),
                             str(tmp_path / "out.zarr")), *needles, unchanged=(table, tmp_path / "out.zarr"))


# ---------------------------------------------------------------------------------------------- label codes


def test_classes_absent_from_the_label_map(site, tmp_path, capsys):
    refuses(capsys, _nc_argv(site, "--labels", str(site["labels"]), "--classes", "7,8", str(tmp_path / "o.zarr")),
            "none of the class codes [7, 8]", "codes present: [0, 1, 2]", unchanged=(tmp_path / "o.zarr",))


def test_classes_that_include_the_void_code(site, tmp_path, capsys):
    refuses(capsys, _nc_argv(site, "--labels", str(site["labels"]), "--classes", "0,1", str(tmp_path / "o.zarr")),
            "void code 0", "--void-codes none", unchanged=(tmp_path / "o.zarr",))


def test_void_codes_that_are_not_codes(site, tmp_path, capsys):
    refuses(capsys, _nc_argv(site, "--labels", str(site["labels"]), "--void-codes", "nodata",
                             str(tmp_path / "o.zarr")), "--void-codes", "'none'")


def test_label_map_with_several_layers(tifs, tmp_path, capsys):
    two = _tif(tmp_path / "two.tif", np.ones((2, 8, 8), np.int16))
    refuses(capsys, _tif_argv(tifs, "--boa-offset", "0", "--labels", str(two), str(tmp_path / "o.zarr")),
            "2 layers", "one layer of class codes", "gdal_translate -b", unchanged=(two, tmp_path / "o.zarr"))


def test_label_map_with_fractional_codes(tifs, tmp_path, capsys):
    frac = _tif(tmp_path / "frac.tif", np.full((8, 8), 1.5, np.float32))
    refuses(capsys, _tif_argv(tifs, "--boa-offset", "0", "--labels", str(frac), str(tmp_path / "o.zarr")),
            "not integer class codes", "float32", unchanged=(frac,))


# ---------------------------------------------------------------------------------------------- GeoTIFF


def test_geotiff_without_offset_metadata(tifs, tmp_path, capsys):
    refuses(capsys, _tif_argv(tifs, str(tmp_path / "o.zarr")), "reflectance offset is unknown", "--boa-offset DN",
            unchanged=(*tifs.values(), tmp_path / "o.zarr"))


def _stack_argv(stack: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "ingest", "--geotiff", str(stack), "--bands", "B02,B03,B04", "--no-scl", "--times", "2020-01-01",
            "--boa-offset", "0", *extra, str(out)]


def test_stack_with_unknown_band_order(tifs, tmp_path, capsys):
    refuses(capsys, _stack_argv(tifs["stack"], tmp_path / "o.zarr"), "3 layers and no band descriptions",
            "band order is unknown", "--stack-bands", unchanged=(tifs["stack"], tmp_path / "o.zarr"))


def test_stack_with_descriptions_that_name_no_band(tmp_path, capsys):
    pytest.importorskip("rioxarray")
    stack = _tif(tmp_path / "s.tif", np.ones((3, 8, 8), np.uint16), descriptions=("blue", "band 2", "red"))
    refuses(capsys, _stack_argv(stack, tmp_path / "o.zarr"), "layer 2 'band 2'", "--stack-bands", unchanged=(stack,))


def test_stack_bands_that_do_not_match_the_layers(tifs, tmp_path, capsys):
    refuses(capsys, _stack_argv(tifs["stack"], tmp_path / "o.zarr", "--stack-bands", "B02,B03"),
            "has 3 layers", "names 2", unchanged=(tifs["stack"],))


def test_stack_bands_with_an_unknown_band(tifs, tmp_path, capsys):
    refuses(capsys, _stack_argv(tifs["stack"], tmp_path / "o.zarr", "--stack-bands", "B02,B03,B8"),
            "--stack-bands", "B8", "did you mean")


def test_stack_bands_without_geotiff(site, tmp_path, capsys):
    refuses(capsys, _nc_argv(site, "--stack-bands", "B02,B03", str(tmp_path / "o.zarr")), "--stack-bands",
            "--geotiff")
