import os
import uuid

import fsspec
import numpy as np
import pytest
import xarray as xr
from xarray.backends.common import ArrayWriter

from hvaeseg.data.schema import CubeValidationError, decoded_reflectance
from hvaeseg.data.store import (
    CODECS,
    DEFAULT_CHUNKS,
    DEFAULT_CODEC,
    CubeWriter,
    compressors,
    open_cube,
    template_from_block,
    write_cube,
    write_dataset,
)

from .conftest import make_toy_cube


@pytest.fixture(params=["local", "memory"])
def where(request, tmp_path):
    """A fresh store location: a local path, or a memory:// URL (removed afterwards)."""
    if request.param == "local":
        yield str(tmp_path / "cube.zarr")
    else:
        root = f"/hvaeseg-test-{uuid.uuid4().hex[:8]}"
        yield f"memory://{root}/cube.zarr"
        fs = fsspec.filesystem("memory")
        if fs.exists(root):
            fs.rm(root, recursive=True)


def _fs(path):
    return fsspec.core.url_to_fs(path)


def exists(path) -> bool:
    fs, root = _fs(path)
    return fs.exists(root)


def siblings(path) -> list[str]:
    """Everything next to ``path`` whose name starts with the store's name (temp / old copies)."""
    fs, root = _fs(path)
    parent, name = root.rsplit("/", 1)
    if not fs.exists(parent):
        return []
    return sorted(p.rsplit("/", 1)[1] for p in fs.ls(parent, detail=False) if p.rsplit("/", 1)[1].startswith(name))


def assert_exact(a: xr.Dataset, b: xr.Dataset) -> None:
    """Bitwise equal values, same dtypes, attrs everywhere (data, coords, dataset)."""
    a, b = a.load(), b.load()
    assert a.identical(b)
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        va, vb = a[name], b[name]
        assert va.dtype == vb.dtype, name
        assert va.dims == vb.dims, name
        assert va.attrs == vb.attrs, name
        if va.dtype.kind in "biuf":
            assert va.values.tobytes() == vb.values.tobytes(), name
        else:
            np.testing.assert_array_equal(va.values, vb.values)
    assert a.attrs == b.attrs


# --------------------------------------------------------------------------------------------- round trip


def test_round_trip_is_exact(toy_cube, where):
    assert write_cube(toy_cube, where) == where
    opened = open_cube(where)
    assert opened["reflectance"].dtype == np.uint16  # raw DN, not decoded
    assert opened["reflectance"].attrs["scale_factor"] == 1e-4
    assert opened["valid"].dtype == bool and opened["labels"].dtype == np.int16 and opened["scl"].dtype == np.uint8
    assert_exact(opened, toy_cube)
    assert siblings(where) == [where.rsplit("/", 1)[1]]


def test_round_trip_float_reflectance_keeps_nan(toy_cube, where):
    ds = toy_cube.assign(reflectance=decoded_reflectance(toy_cube))
    assert np.isnan(ds["reflectance"].values).any()
    write_cube(ds, where)
    assert_exact(open_cube(where), ds)


def test_round_trip_with_clean_reflectance_and_other_dates(where):
    ds = make_toy_cube(seed=3, n_dates=5, size=40, bands=("B02", "B04", "B08"))
    ds["clean_reflectance"] = ds["reflectance"].copy(data=ds["reflectance"].values + 1)
    ds["time"] = ds.time.values + np.timedelta64(37, "m")  # not midnight: time encoding must be exact
    write_cube(ds, where)
    assert_exact(open_cube(where), ds)


def test_open_is_lazy_and_does_not_decode(toy_cube, where):
    write_cube(toy_cube, where)
    opened = open_cube(where, validate=False)
    assert not opened["reflectance"].variable._in_memory
    assert opened["reflectance"].encoding["chunks"] == (1, 4, 32, 32)


def test_write_stamps_schema_version(toy_cube, tmp_path):
    ds = toy_cube.copy()
    ds.attrs = {"crs": "EPSG:32631"}
    write_cube(ds, tmp_path / "c.zarr")
    assert open_cube(tmp_path / "c.zarr").attrs["hvaeseg_schema_version"] == 1
    assert "hvaeseg_schema_version" not in ds.attrs  # the input is not changed


def test_write_ignores_encodings_from_elsewhere(toy_cube, tmp_path):
    write_cube(toy_cube, tmp_path / "a.zarr", chunks={"y": 8, "x": 8})
    reopened = open_cube(tmp_path / "a.zarr").load()
    before = dict(reopened["reflectance"].encoding)
    write_cube(reopened, tmp_path / "b.zarr")  # default chunks again, not the 8x8 of a.zarr
    assert open_cube(tmp_path / "b.zarr")["reflectance"].encoding["chunks"] == (1, 4, 32, 32)
    assert reopened["reflectance"].encoding == before


# --------------------------------------------------------------------------------------------- chunks and codecs


def test_default_chunks():
    assert DEFAULT_CHUNKS == {"time": 1, "band": -1, "y": 256, "x": 256}


def test_chunks_per_variable(tmp_path):
    ds = make_toy_cube(n_dates=2, size=300)
    write_cube(ds, tmp_path / "c.zarr")
    enc = {v: open_cube(tmp_path / "c.zarr")[v].encoding["chunks"] for v in ("reflectance", "valid", "scl", "labels")}
    assert enc == {"reflectance": (1, 4, 256, 256), "valid": (1, 256, 256), "scl": (1, 256, 256), "labels": (256, 256)}
    write_cube(ds, tmp_path / "d.zarr", chunks={"y": 100, "x": -1, "time": 2})
    opened = open_cube(tmp_path / "d.zarr")
    assert opened["reflectance"].encoding["chunks"] == (2, 4, 100, 300)
    assert opened["labels"].encoding["chunks"] == (100, 300)
    with pytest.raises(ValueError, match="chunk size for 'y'"):
        write_cube(ds, tmp_path / "e.zarr", chunks={"y": 0})
    assert not (tmp_path / "e.zarr").exists()


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_round_trips(toy_cube, tmp_path, codec):
    write_cube(toy_cube, tmp_path / "c.zarr", codec=codec)
    opened = open_cube(tmp_path / "c.zarr")
    assert_exact(opened, toy_cube)
    assert len(opened["reflectance"].encoding["compressors"]) == (0 if codec == "none" else 1)


def test_codecs():
    from zarr.codecs import BloscCodec, ZstdCodec

    assert DEFAULT_CODEC in CODECS
    assert compressors(None) == compressors(DEFAULT_CODEC)
    (lz4,) = compressors("blosc-lz4")
    assert isinstance(lz4, BloscCodec) and lz4.cname.value == "lz4" and lz4.shuffle.value == "shuffle"
    (bz,) = compressors("blosc-zstd")
    assert bz.cname.value == "zstd" and bz.shuffle.value == "shuffle"
    assert isinstance(compressors("zstd")[0], ZstdCodec)
    own = ZstdCodec(level=7)
    assert compressors(own) == (own,) and compressors([own]) == (own,)
    with pytest.raises(ValueError, match="unknown codec 'gzip'"):
        compressors("gzip")


# --------------------------------------------------------------------------------------------- safety


def test_existing_path_needs_overwrite(toy_cube, where):
    write_cube(toy_cube, where)
    other = make_toy_cube(seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_cube(other, where)
    assert_exact(open_cube(where), toy_cube)  # untouched
    write_cube(other, where, overwrite=True)
    assert_exact(open_cube(where), other)
    assert siblings(where) == [where.rsplit("/", 1)[1]]  # no temp or old copies left


def test_existing_file_is_not_clobbered(toy_cube, tmp_path):
    path = tmp_path / "c.zarr"
    path.write_text("not a cube")
    with pytest.raises(FileExistsError):
        write_cube(toy_cube, path)
    assert path.read_text() == "not a cube"
    with pytest.raises(FileExistsError, match="only ever replaces a Zarr store"):  # not even with overwrite
        write_cube(toy_cube, path, overwrite=True)
    assert path.read_text() == "not a cube"
    store = tmp_path / "d.zarr"
    write_cube(toy_cube.isel(time=[0]), store)
    write_cube(toy_cube, store, overwrite=True)  # a store is replaced
    assert_exact(open_cube(store), toy_cube)


def test_invalid_cube_writes_nothing(toy_cube, where):
    bad = toy_cube.drop_vars("valid")
    with pytest.raises(CubeValidationError, match="missing variable `valid`"):
        write_cube(bad, where)
    assert not exists(where) and siblings(where) == []


class Crash(RuntimeError):
    pass


def _crash_after_first_array(monkeypatch):
    calls = []
    real_add = ArrayWriter.add

    def add(self, source, target, *args, **kwargs):
        if calls:
            raise Crash("simulated crash while writing")
        calls.append(1)
        return real_add(self, source, target, *args, **kwargs)

    monkeypatch.setattr(ArrayWriter, "add", add)
    return calls


def test_crash_midway_leaves_nothing(toy_cube, where, monkeypatch):
    calls = _crash_after_first_array(monkeypatch)
    with pytest.raises(Crash):
        write_cube(toy_cube, where)
    assert calls  # the first array was written before the crash
    assert not exists(where)
    assert siblings(where) == []  # the temporary store is gone too


def test_crash_during_overwrite_keeps_the_old_store(toy_cube, where, monkeypatch):
    write_cube(toy_cube, where)
    _crash_after_first_array(monkeypatch)
    with pytest.raises(Crash):
        write_cube(make_toy_cube(seed=5), where, overwrite=True)
    monkeypatch.undo()
    assert_exact(open_cube(where), toy_cube)
    assert siblings(where) == [where.rsplit("/", 1)[1]]


def test_interrupted_commit_does_not_look_complete(toy_cube, where):
    """A store without its root zarr.json (the last thing a commit moves) does not open."""
    write_cube(toy_cube, where)
    fs, root = _fs(where)
    fs.rm(f"{root}/zarr.json")
    with pytest.raises(FileNotFoundError, match="holds no Zarr group"):
        open_cube(where)


def test_open_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no cube at"):
        open_cube(tmp_path / "nothing.zarr")
    with pytest.raises(FileNotFoundError):
        open_cube("memory://hvaeseg-nothing/here.zarr")


@pytest.mark.filterwarnings("ignore:.*Zarr V3 specification", "ignore:Consolidated metadata")
def test_open_validates(toy_cube, tmp_path):
    bad = toy_cube.copy(deep=True)
    bad["labels"][0, 0] = 7
    bad.to_zarr(tmp_path / "bad.zarr", zarr_format=3)  # written around write_cube's check
    with pytest.raises(CubeValidationError, match="`labels` out of range"):
        open_cube(tmp_path / "bad.zarr")
    assert open_cube(tmp_path / "bad.zarr", validate=False)["labels"].values[0, 0] == 7


# --------------------------------------------------------------------------------------------- streaming


def stream(ds, path, step=1, **kwargs):
    template = template_from_block(ds.isel(time=[0]), ds.time.values)
    with CubeWriter(path, template, **kwargs) as writer:
        for t0 in range(0, ds.sizes["time"], step):
            writer.write_dates(t0, ds.isel(time=slice(t0, t0 + step)))
    return writer


@pytest.mark.parametrize("step", [1, 2])
def test_streamed_store_equals_write_cube(where, step):
    ds = make_toy_cube(seed=2, n_dates=4)
    ds["clean_reflectance"] = ds["reflectance"].copy(data=ds["reflectance"].values + 3)
    stream(ds, where, step=step)
    streamed = open_cube(where)
    assert_exact(streamed, ds)
    fs, root = _fs(where)
    whole = where + "-whole"
    write_cube(ds, whole)
    other = open_cube(whole)
    for name in ds.variables:  # same chunks and codecs as write_cube
        for key in ("chunks", "compressors", "dtype"):
            assert streamed[name].encoding.get(key) == other[name].encoding.get(key), (name, key)
    assert siblings(where) == [where.rsplit("/", 1)[1], where.rsplit("/", 1)[1] + "-whole"]


def test_template_is_zero_memory(toy_cube):
    time = np.datetime64("2024-01-01", "ns") + np.arange(100) * np.timedelta64(5, "D")
    tpl = template_from_block(toy_cube.isel(time=[0]), time)
    assert tpl.sizes["time"] == 100
    assert tpl["reflectance"].data.strides == (0, 0, 0, 0)
    assert tpl["reflectance"].attrs == toy_cube["reflectance"].attrs
    np.testing.assert_array_equal(tpl["labels"].values, toy_cube["labels"].values)


def test_streaming_error_leaves_nothing(toy_cube, where):
    template = template_from_block(toy_cube.isel(time=[0]), toy_cube.time.values)
    with pytest.raises(Crash):
        with CubeWriter(where, template) as writer:
            writer.write_dates(0, toy_cube.isel(time=[0]))
            raise Crash("generator failed")
    assert not exists(where) and siblings(where) == []


def test_streaming_missing_dates_commits_nothing(toy_cube, where):
    template = template_from_block(toy_cube.isel(time=[0]), toy_cube.time.values)
    with pytest.raises(ValueError, match=r"1 of 3 dates were never written \(indices \[2\]\)"):
        with CubeWriter(where, template) as writer:
            writer.write_dates(0, toy_cube.isel(time=[0, 1]))
    assert not exists(where) and siblings(where) == []


def test_streaming_rejects_bad_blocks(toy_cube, where):
    template = template_from_block(toy_cube.isel(time=[0]), toy_cube.time.values)
    with CubeWriter(where, template) as writer:
        with pytest.raises(ValueError, match="`reflectance` has dtype float32, expected uint16"):
            writer.write_dates(0, toy_cube.isel(time=[0]).assign(reflectance=lambda d: d.reflectance.astype("float32")))
        with pytest.raises(ValueError, match="differs from template time"):
            writer.write_dates(1, toy_cube.isel(time=[0]))
        with pytest.raises(ValueError, match="outside the template"):
            writer.write_dates(3, toy_cube.isel(time=[0]))
        with pytest.raises(ValueError, match="lacks variable"):
            writer.write_dates(0, toy_cube.isel(time=[0]).drop_vars("scl"))
        with pytest.raises(ValueError, match="sizes y=16"):
            writer.write_dates(0, toy_cube.isel(time=[0], y=slice(0, 16)))
        hot = toy_cube.isel(time=[0]).copy(deep=True)
        hot["reflectance"][0, 0, 0, 0] = 65000
        with pytest.raises(CubeValidationError, match="out of physical range"):
            writer.write_dates(0, hot)
        writer.write_dates(0, toy_cube.isel(time=slice(0, 3)))
    assert_exact(open_cube(where), toy_cube)


def test_streaming_overwrite_rules(toy_cube, where):
    write_cube(toy_cube, where)
    template = template_from_block(toy_cube.isel(time=[0]), toy_cube.time.values)
    with pytest.raises(FileExistsError, match="overwrite"):
        CubeWriter(where, template)
    other = make_toy_cube(seed=9)
    stream(other, where, overwrite=True)
    assert_exact(open_cube(where), other)


def test_streaming_needs_the_context(toy_cube, tmp_path):
    template = template_from_block(toy_cube.isel(time=[0]), toy_cube.time.values)
    writer = CubeWriter(tmp_path / "c.zarr", template)
    with pytest.raises(RuntimeError, match="with CubeWriter"):
        writer.write_dates(0, toy_cube.isel(time=[0]))
    with pytest.raises(CubeValidationError):
        CubeWriter(tmp_path / "d.zarr", template.drop_vars("valid"))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------- any dataset


def test_write_dataset_any_layout(where, monkeypatch):
    pred = xr.Dataset(
        {
            "class_map": (("y", "x"), np.arange(12, dtype=np.int16).reshape(3, 4) % 3, {"flag_meanings": "a b c"}),
            "probability": (("class", "y", "x"), np.full((3, 3, 4), 1 / 3, dtype=np.float32)),
        },
        coords={"y": [30.0, 20.0, 10.0], "x": [0.0, 10.0, 20.0, 30.0], "class": np.arange(3)},
        attrs={"crs": "EPSG:32631"},
    )
    assert write_dataset(pred, where) == where
    back = open_cube(where, validate=False)
    assert_exact(back, pred)  # no schema stamp, no checks: written as it is
    assert back["probability"].encoding["chunks"] == (3, 3, 4)
    with pytest.raises(FileExistsError):
        write_dataset(pred, where)
    _crash_after_first_array(monkeypatch)
    with pytest.raises(Crash):
        write_dataset(pred * 1, where + "-2")
    assert not exists(where + "-2")
    assert siblings(where) == [where.rsplit("/", 1)[1]]
