"""The direct chunk reader of :class:`hvaeseg.data.chunks.ZarrChunks`: on with the installed zarr, and exact.

The reader decodes chunk files itself using zarr's array metadata and codec classes; a zarr release that changes
them would turn it off (reading then goes through zarr, slower). These tests fail when that happens with the
installed zarr, so a zarr upgrade is noticed here rather than as a silent slowdown.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from hvaeseg.data import chunks
from hvaeseg.data.chunks import ZarrChunks

#: (name, compressors) of every codec the direct reader decodes
CODECS = [("blosc", [BloscCodec()]), ("zstd", [ZstdCodec()]), ("gzip", [GzipCodec()]), ("none", None)]


def _keys(reader: ZarrChunks):
    return itertools.product(*(range(-(-n // c)) for n, c in zip(reader.shape, reader.chunks)))


def _zarr_chunk(arr, key):
    return np.asarray(arr[tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, arr.chunks, arr.shape))])


@pytest.mark.parametrize("codec", CODECS, ids=[name for name, _ in CODECS])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "bool"])
def test_direct_reader_is_on_and_reads_what_zarr_reads(tmp_path, codec, dtype):
    """Every chunk (edge chunks clipped, a never-written chunk as fill value) equals zarr's own reading."""
    rng = np.random.default_rng(0)
    shape, chunk_shape = (3, 2, 13, 10), (2, 2, 5, 4)  # edge chunks on three axes
    if dtype == "bool":
        data = rng.random(shape) > 0.5
    elif dtype == "float32":
        data = rng.normal(size=shape).astype(np.float32)
    else:
        data = rng.integers(-300 if dtype == "int16" else 0, 3000, size=shape).astype(dtype)
    fill = False if dtype == "bool" else 7
    arr = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=shape, chunks=chunk_shape, dtype=dtype, compressors=codec[1], fill_value=fill
    )
    written = data.copy()
    written[:2, :, :5, :4] = fill  # chunk (0, 0, 0, 0) holds only the fill value: zarr does not write it
    arr[...] = written
    assert not (tmp_path / "a.zarr" / "c" / "0" / "0" / "0" / "0").exists()
    arr = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    reader = ZarrChunks(arr)
    assert reader._direct is not None, f"the direct chunk reader is off with zarr {zarr.__version__}"
    for key in _keys(reader):
        got, want = reader.get(key), _zarr_chunk(arr, key)
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert np.array_equal(got, want), key
        reader.release(got)


def test_a_surprise_in_zarr_warns_once_and_reads_through_zarr(tmp_path, monkeypatch):
    """When zarr's internals are not what the direct reader expects, it says so once and zarr reads instead."""
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 6), chunks=(2, 4), dtype="uint16")
    arr[...] = np.arange(24, dtype=np.uint16).reshape(4, 6)

    class Changed:  # a zarr array whose metadata no longer reads as the reader expects
        def __init__(self, inner):
            self.inner, self.path, self.name = inner, inner.path, inner.name
            self.shape, self.chunks = inner.shape, inner.chunks

        @property
        def metadata(self):
            raise AttributeError("no such attribute in this zarr")

        def __getitem__(self, region):
            return self.inner[region]

    monkeypatch.setattr(chunks, "_DIRECT_PATH_WARNED", False)
    with pytest.warns(RuntimeWarning, match="reading Zarr chunks through zarr itself"):
        reader = ZarrChunks(Changed(arr))
    assert reader._direct is None
    assert np.array_equal(reader.get((1, 1)), np.asarray(arr[2:4, 4:6]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ZarrChunks(Changed(arr))  # once per process
