"""Missing and damaged chunks: complete stores, errors naming the chunk, the loader's reads."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import fsspec
import pytest
import xarray as xr

from hvaeseg.data.integrity import (
    CHUNKS_ATTR,
    COMPLETE,
    ChunkError,
    CorruptChunkError,
    MissingChunkError,
    check_chunks,
)
from hvaeseg.data.loader import PatchLoader
from hvaeseg.data.sampler import PatchSampler
from hvaeseg.data.stats import ensure_band_stats
from hvaeseg.data.store import open_cube, write_cube

from .conftest import loader_cube


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> Path:
    """:func:`loader_cube` (date 2 all invalid: its `valid` chunks are all fill value) in 16 x 16 chunks."""
    path = tmp_path_factory.mktemp("integrity") / "cube.zarr"
    write_cube(loader_cube(), path, chunks={"y": 16, "x": 16})
    ensure_band_stats(path)
    return path


@pytest.fixture
def cube(complete, tmp_path) -> Path:
    """A copy of the complete store that a test may damage."""
    return Path(shutil.copytree(complete, tmp_path / "cube.zarr"))


def _unmark(path: Path) -> None:
    """Make ``path`` look written by a tool that skips empty chunks: no hvaeseg_chunks attribute."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].pop(CHUNKS_ATTR)
    meta_path.write_text(json.dumps(meta))


def _plan(path, n=24):
    return PatchSampler({"y": 16, "x": 16}, n_patches=n, seed=3).plan(str(path))


def test_writers_write_every_chunk_and_say_so(complete, tmp_path):
    ds = xr.open_zarr(complete)  # the attribute is in the store...
    assert ds.attrs[CHUNKS_ATTR] == COMPLETE
    assert CHUNKS_ATTR not in open_cube(complete).attrs  # ...but not in the cube: a rewrite must not claim it
    n_valid = len([p for p in (complete / "valid" / "c").rglob("*") if p.is_file()])
    assert n_valid == 5 * 3 * 3  # all of them, though date 2's are all False (zarr skips those by default)
    check_chunks(complete)
    # the streaming writer too
    from hvaeseg.data.synthetic import write_synthetic

    streamed = write_synthetic(tmp_path / "s.zarr", "tiny", size=32, n_dates=2, cloud_regime=(0.0, 0.0, 1.0))
    assert xr.open_zarr(streamed).attrs[CHUNKS_ATTR] == COMPLETE
    assert len([p for p in (Path(streamed) / "valid" / "c").rglob("*") if p.is_file()]) == 2
    check_chunks(streamed)


@pytest.mark.parametrize(("variable", "key"), [("reflectance", "c/2/0/1/2"), ("valid", "c/1/2/0"), ("labels", "c/1/1")])
def test_a_missing_chunk_of_a_complete_store_is_an_error_naming_it(cube, variable, key):
    (cube / variable / key).unlink()
    with pytest.raises(MissingChunkError) as info:
        open_cube(cube)
    err = info.value
    assert (err.variable, err.key) == (variable, key)
    assert Path(err.path) == cube / variable / key
    assert f"`{variable}` chunk {key} is missing" in str(err) and "Fix:" in str(err)
    open_cube(cube, validate=False)  # opening alone (no check) still works, for a look at what is left


def test_the_count_covers_every_missing_chunk(cube):
    for key in ("c/0/0/0/0", "c/1/0/0/0"):
        (cube / "reflectance" / key).unlink()
    (cube / "valid" / "c/4/2/2").unlink()
    with pytest.raises(MissingChunkError, match=r"3 chunks missing in all: 2 of `reflectance`, 1 of `valid`"):
        check_chunks(cube)


def test_a_store_that_skips_empty_chunks_may_lack_them(cube):
    _unmark(cube)
    (cube / "valid" / "c/2/0/0").unlink()  # date 2 is all invalid: zarr would not have written it
    ds = open_cube(cube)
    assert not ds["valid"][2].values.any()
    (cube / "reflectance" / "c/2/0/0/0").unlink()  # DN 0 under invalid pixels only: consistent
    open_cube(cube)


def test_a_missing_reflectance_chunk_under_observed_pixels_is_an_error_anywhere(cube):
    _unmark(cube)
    (cube / "reflectance" / "c/1/0/0/0").unlink()  # a corner: clear on date 1
    with pytest.raises(MissingChunkError, match=r"`reflectance` chunk c/1/0/0/0 is missing.*DN 0 \(no data\).*valid"):
        open_cube(cube)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_chunk_is_an_error_naming_it(cube, damage):
    chunk = cube / "reflectance" / "c/3/0/1/0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 4)
    with pytest.raises(CorruptChunkError) as info:
        open_cube(cube)  # validation reads the (small) cube
    err = info.value
    assert (err.variable, err.key, Path(err.path)) == ("reflectance", "c/3/0/1/0", chunk)
    assert "is damaged" in str(err) and "Fix:" in str(err)
    # and any later read through xarray
    ds = open_cube(cube, validate=False)
    with pytest.raises(CorruptChunkError, match="c/3/0/1/0"):
        ds["reflectance"].load()


def test_the_loader_names_damaged_and_missing_chunks(cube):
    """Read straight from the store (the direct numcodecs path), with no open_cube check before."""
    plan = _plan(cube)
    chunks = [p for p in (cube / "valid" / "c").rglob("*") if p.is_file()]
    for chunk in chunks:
        chunk.write_bytes(b"not a chunk")
    with pytest.raises(CorruptChunkError, match=r"`valid` chunk c/\d/\d/\d is damaged: .*valid/c/\d/\d/\d does"):
        list(PatchLoader(str(cube), plan, batch_size=8, workers=1))
    for chunk in chunks:
        chunk.unlink()
    with pytest.raises(MissingChunkError, match=r"`valid` chunk c/\d/\d/\d is missing"):
        list(PatchLoader(str(cube), plan, batch_size=8, workers=0))


def test_the_loader_names_damaged_chunks_read_through_zarr(complete):
    """An fsspec store: chunks go through zarr's own decoding (no direct path)."""
    root = f"/hvaeseg-test-{uuid.uuid4().hex[:8]}/cube.zarr"
    fs = fsspec.filesystem("memory")
    fs.put(str(complete), root, recursive=True)
    try:
        url = f"memory://{root}"
        plan = PatchSampler({"y": 16, "x": 16}, n_patches=24, seed=3).plan(url)
        for chunk in fs.find(f"{root}/reflectance/c"):
            fs.pipe_file(chunk, b"\x02\x01\x21\x02garbage")
        with pytest.raises(CorruptChunkError, match=r"`reflectance` chunk c/\d/0/\d/\d is damaged: memory://"):
            list(PatchLoader(url, plan, batch_size=24, workers=0))
        fs.rm(f"{root}/reflectance/c/0/0/0/0")
        with pytest.raises(MissingChunkError, match="c/0/0/0/0"):
            check_chunks(url)
    finally:
        fs.rm(root.rsplit("/", 1)[0], recursive=True)


def test_chunk_errors_are_value_errors_on_one_line(cube):
    (cube / "labels" / "c/0/0").write_bytes(b"")
    with pytest.raises(ChunkError) as info:
        open_cube(cube)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_no_chunk_is_read_to_check_a_complete_store(complete, monkeypatch):
    """The check lists keys and reads metadata only (which is what keeps it cheap)."""
    import zarr.storage

    read = []
    real_get = zarr.storage.LocalStore.get

    async def spy(self, key, *args, **kwargs):
        read.append(key)
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", spy)
    check_chunks(complete)
    assert read and all(key.endswith("zarr.json") for key in read), read
