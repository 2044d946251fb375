"""PatchLoader: the tensors of a naive read (:mod:`tests.data.naive`, which shares no code with the package),
chunk-aware, ordered by (seed, epoch), bounded read-ahead, edges and invalid patches."""

from __future__ import annotations

import datetime
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.data.chunks import HostBuffers, ZarrChunks, index_pieces, range_pieces
from hvaeseg.data.loader import (
    PatchBatch,
    PatchLoader,
    _normalise_torch,
    day_of_year,
    normalise_dn,
    normaliser,
)
from hvaeseg.data.sampler import PatchPlan, PatchSampler, SpatialSplit
from hvaeseg.data.stats import compute_band_stats, ensure_band_stats, read_band_stats
from hvaeseg.data.store import open_cube, write_cube

from .conftest import loader_cube, make_toy_cube
from .naive import assert_reads, read_patches_naive


def _plan(cube, sizes, **kw) -> PatchPlan:
    kw.setdefault("n_patches", 13)
    kw.setdefault("seed", 7)
    return PatchSampler(sizes, **kw).plan(cube)


def _cat(batches: list[PatchBatch]) -> PatchBatch:
    return PatchBatch(*(torch.cat(parts) for parts in zip(*batches)))


def _assert_identical(a: PatchBatch, b: PatchBatch) -> None:
    for name, x, y in zip(PatchBatch._fields, a, b):
        assert (x is None) == (y is None), name
        if x is None:
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name


SIZES = [{"y": 12, "x": 20}, {"time": 3, "y": 16, "x": 16}]


# ---------------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_what_a_naive_read_gives(store, sizes, workers):
    plan = _plan(
        store, sizes, split=SpatialSplit({"y": 24, "x": 24}, fractions={"train": 0.5, "val": 0.5}), n_labelled=2
    )
    loader = PatchLoader(store, plan, batch_size=5, workers=workers)
    batches = list(loader)
    assert [len(b.x) for b in batches] == [5] * (len(plan) // 5) + ([len(plan) % 5] if len(plan) % 5 else [])
    got = _cat(batches)
    assert_reads(got, read_patches_naive(store, plan))
    T = sizes.get("time")
    H, W = sizes["y"], sizes["x"]
    assert got.x.shape == ((len(plan), 4, H, W) if T is None else (len(plan), T, 4, H, W))
    assert got.x.dtype == torch.float32 and got.valid.dtype == torch.bool and got.labels.dtype == torch.int64
    raw = _cat(list(PatchLoader(store, plan, batch_size=5, workers=workers, normalise=False)))
    assert_reads(raw, read_patches_naive(store, plan, normalise=False))  # the DN, bit for bit


def test_stores_with_several_dates_and_bands_per_chunk_read_the_same(store, tmp_path):
    """Chunks spanning 3 dates and 2 bands (index pieces with fancy indexing, band ranges over chunks)."""
    other = write_cube(open_cube(store).load(), tmp_path / "t3.zarr", chunks={"time": 3, "band": 2, "y": 16, "x": 16})
    ensure_band_stats(other)
    plan = _plan(store, {"time": 3, "y": 16, "x": 16}, n_patches=17, n_labelled=5)
    _assert_identical(
        _cat(list(PatchLoader(other, plan, batch_size=6))), _cat(list(PatchLoader(store, plan, batch_size=6)))
    )
    assert_reads(_cat(list(PatchLoader(other, plan, batch_size=6))), read_patches_naive(other, plan))


@pytest.mark.parametrize("sizes", SIZES)
def test_in_memory_lazy_and_store_cubes_give_the_same_tensors(store, sizes):
    plan = _plan(store, sizes, window={"y": 24, "x": 24}, per_window=4)
    ref = _cat(list(PatchLoader(store, plan, batch_size=4)))
    lazy = open_cube(store)
    _assert_identical(_cat(list(PatchLoader(lazy, plan, batch_size=4, workers=1))), ref)
    mem = open_cube(store).load()
    _assert_identical(_cat(list(PatchLoader(mem, plan, batch_size=6, workers=0))), ref)


def test_direct_chunk_decoding_matches_zarr(store):
    import zarr

    arr = zarr.open_group(store, mode="r")["reflectance"]
    direct = ZarrChunks(arr)
    assert direct._direct is not None  # local store, blosc: decoded without zarr
    via_zarr = ZarrChunks(arr)
    via_zarr._direct = None
    for key in [(0, 0, 0, 0), (4, 0, 2, 1), (2, 0, 1, 2)]:
        a, b = direct.get(key), via_zarr.get(key)
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_normalise_false_gives_raw_dn_that_normalise_dn_turns_into_x(store):
    plan = _plan(store, {"y": 8, "x": 8})
    raw = _cat(list(PatchLoader(store, plan, batch_size=4, normalise=False)))
    assert raw.x.dtype == torch.uint16
    assert_reads(raw, read_patches_naive(store, plan, normalise=False))
    mean, std = read_band_stats(store)
    a, b = normaliser(1e-4, -0.1, mean, std, 4)
    assert_reads(PatchBatch(normalise_dn(raw.x, a, b), raw.valid, raw.labels, raw.doy), read_patches_naive(store, plan))


def test_numpy_and_torch_normalisation_give_the_same_bits():
    """The CPU path (numpy) and the accelerator path (torch ops, here run on the CPU) agree bit for bit."""
    g = torch.Generator().manual_seed(0)
    dn = torch.randint(0, 65536, (6, 10, 32, 32), generator=g, dtype=torch.int32).to(torch.uint16)
    a, b = normaliser(
        1e-4, -0.1, torch.rand(10, generator=g).tolist(), (0.01 + torch.rand(10, generator=g)).tolist(), 10
    )
    assert torch.equal(normalise_dn(dn, a, b), _normalise_torch(dn, a, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches(store):
    plan = _plan(store, {"time": 2, "y": 16, "x": 16})
    cpu = _cat(list(PatchLoader(store, plan, batch_size=4)))
    gpu = [PatchBatch(*(t.cpu() for t in b)) for b in PatchLoader(store, plan, batch_size=4, device="cuda")]
    _assert_identical(_cat(gpu), cpu)


# ---------------------------------------------------------------------------------------------- chunks


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 200), st.integers(1, 90))
def test_range_pieces_tile_the_range_exactly(c, start, length):
    stop = start + length
    pieces = range_pieces(start, stop, c)
    covered = []
    for k, osl, csl in pieces:
        assert 0 <= csl.start < csl.stop <= c  # inside the chunk
        assert osl.stop - osl.start == csl.stop - csl.start
        assert k * c + csl.start == start + osl.start  # the same array element on both sides
        covered.extend(range(osl.start, osl.stop))
    assert covered == list(range(length))  # in order, no gap, no overlap
    assert [k for k, _, _ in pieces] == list(range(start // c, (stop - 1) // c + 1))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.integers(1, 7))
def test_index_pieces_pick_every_index_once(idx, c):
    idx = np.asarray(idx)
    seen = np.zeros(len(idx), int)
    for k, osl, csl in index_pieces(idx, c):
        positions = np.arange(len(idx))[osl]
        seen[positions] += 1
        np.testing.assert_array_equal(k * c + np.arange(c)[csl], idx[positions])
    assert (seen == 1).all()


def test_each_chunk_is_decoded_once_per_batch(store):
    # 16 patches of 8 x 8 from one 16 x 16 window: one chunk per date of that window serves them all
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=16, window={"y": 16, "x": 16}, per_window=16)
    loader = PatchLoader(store, plan, batch_size=16, workers=0)
    calls: list[tuple] = []
    get = loader.src.refl.get
    loader.src.refl.get = lambda key: calls.append(key) or get(key)
    (batch,) = list(loader)
    assert len(calls) == len(set(calls)) == len({(int(t),) for t in plan.t[:, 0]})
    assert_reads(batch, read_patches_naive(store, plan))


@pytest.mark.parametrize(("prefetch", "workers"), [(1, 2), (3, 1), (2, 3)])
def test_workers_read_ahead_of_the_consumer_by_a_bounded_number_of_batches(store, prefetch, workers):
    """At most ``prefetch + workers`` batches exist at once: the consumer's and ``prefetch + workers - 1``
    being read ahead. A consumer that stops taking batches finds exactly that many read, never more."""
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=60)
    loader = PatchLoader(store, plan, batch_size=2, workers=workers, prefetch=prefetch)
    ahead = prefetch + workers - 1
    lock = threading.Lock()
    started, done = [0], [0]
    read = loader.read_host

    def counting(index):
        with lock:
            started[0] += 1
        try:
            return read(index)
        finally:
            with lock:
                done[0] += 1

    loader.read_host = counting
    it = iter(loader)
    for consumed in range(1, 6):
        next(it)
        want = min(consumed + ahead, len(loader))
        deadline = time.monotonic() + 10
        while True:  # until the workers are idle with the batches read ahead
            with lock:
                s, d = started[0], done[0]
            assert s <= want, f"{s} batches read with {consumed} consumed (prefetch {prefetch}, workers {workers})"
            if s == d == want:
                break
            assert time.monotonic() < deadline, f"reading stopped at {s} batches, {want} expected"
            time.sleep(0.002)
    it.close()  # stopping early shuts the threads down
    assert not [t for t in threading.enumerate() if t.name.startswith("hvaeseg-loader")]


def test_host_buffers_are_reused_only_when_no_tensor_refers_to_them():
    pool = HostBuffers(keep=2)
    first = pool.empty((3, 4), np.uint16)
    ptr_first = first.ctypes.data
    view = torch.from_numpy(first)[1:]  # a view of a tensor keeps the storage, and so the array, alive
    del first
    second = pool.empty((3, 4), np.uint16)
    assert second.ctypes.data != ptr_first  # not handed out while `view` lives
    ptr_second = second.ctypes.data
    del second
    assert pool.empty((3, 4), np.uint16).ctypes.data == ptr_second  # free again: reused
    del view
    assert {pool.empty((3, 4), np.uint16).ctypes.data for _ in range(5)} == {ptr_first}
    held = [pool.empty((3, 4), np.uint16) for _ in range(4)]  # beyond `keep`: fresh, unpooled arrays
    assert len({h.ctypes.data for h in held}) == 4
    assert sum(len(v) for v in pool._arrays.values()) == 2
    assert pool.empty((2, 2), np.bool_).dtype == np.bool_  # another (shape, dtype): its own arrays


@pytest.mark.parametrize("normalise", [False, True])
def test_batches_a_consumer_keeps_are_never_overwritten(store, normalise):
    """Batches (views of the reused host arrays) held past many later batches keep their contents."""
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=60, n_labelled=30)
    loader = PatchLoader(store, plan, batch_size=2, workers=2, prefetch=1, normalise=normalise)
    kept = []
    for i, batch in enumerate(loader):
        if i % 3 == 0:
            kept.append((i, batch))
    ref = read_patches_naive(store, plan, normalise=normalise)
    for i, batch in kept:
        assert_reads(batch, PatchBatch(*(t[2 * i : 2 * i + 2] for t in ref)))
    assert all(len(v) <= loader._host.keep for v in loader._host._arrays.values())  # bounded memory


# ---------------------------------------------------------------------------------------------- order


def _firsts(loader: PatchLoader, n: int) -> list[torch.Tensor]:
    out = []
    for i, b in enumerate(loader):
        out.append(b.x)
        if i + 1 == n:
            break
    return out


def test_repeat_order_is_a_function_of_seed_and_epoch(store):
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=24, window={"y": 16, "x": 16}, per_window=4)
    a = PatchLoader(store, plan, batch_size=5, repeat=True, seed=3)
    b = PatchLoader(store, plan, batch_size=5, repeat=True, seed=3, workers=0)
    assert len(a) == 4  # 24 patches: incomplete batch dropped
    xa, xb = _firsts(a, 10), _firsts(b, 10)  # 2.5 epochs
    assert all(torch.equal(u, v) for u, v in zip(xa, xb))
    assert all(len(x) == 5 for x in xa)
    # epoch 1 of a run started at epoch 0 == a run started at epoch 1
    c = PatchLoader(store, plan, batch_size=5, repeat=True, seed=3, epoch=1)
    assert all(torch.equal(u, v) for u, v in zip(xa[4:8], _firsts(c, 4)))
    # another seed or epoch: another order; groups stay together
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert not np.array_equal(
        a.epoch_order(0), PatchLoader(store, plan, batch_size=5, repeat=True, seed=4).epoch_order(0)
    )
    g = plan.group[a.epoch_order(0)]
    assert (np.diff(g) != 0).sum() == len(np.unique(g)) - 1
    assert sorted(a.epoch_order(2).tolist()) == list(range(len(plan)))


def test_without_shuffle_the_plan_order_is_kept(store):
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=9)
    loader = PatchLoader(store, plan, batch_size=4)
    assert np.array_equal(loader.epoch_order(5), np.arange(9)) and len(loader) == 3
    assert_reads(_cat(list(loader)), read_patches_naive(store, plan))


def test_repeat_needs_a_full_batch(store):
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=3)
    with pytest.raises(ValueError, match="batch_size"):
        PatchLoader(store, plan, batch_size=4, repeat=True)


# ---------------------------------------------------------------------------------------------- rules


def test_edge_and_all_invalid_patches_follow_the_rule(store):
    cube = open_cube(store)
    Y, X = cube.sizes["y"], cube.sizes["x"]
    # hand-made plan: the bottom-right corner patch, and a patch on the all-invalid date 2
    plan = PatchPlan(
        sizes={"y": 16, "x": 16}, cube_shape={"time": 5, "y": Y, "x": X}, y=[Y - 16, 0], x=[X - 16, 5], t=[[4], [2]],
        split=[0, 0], labelled=[True, False], group=[0, 1],
    )
    batch = _cat(list(PatchLoader(store, plan, batch_size=2)))
    assert_reads(batch, read_patches_naive(store, plan))
    assert not batch.valid[1].any()  # yielded, with valid all False
    assert torch.isfinite(batch.x).all()
    assert (batch.labels[1] == -1).all()  # not labelled: all void
    np.testing.assert_array_equal(batch.labels[0].numpy(), cube["labels"].values[Y - 16 :, X - 16 :])
    # a patch across the border is refused, never padded
    plan.x[0] = X - 8
    with pytest.raises(ValueError, match="cube border"):
        PatchLoader(store, plan, batch_size=2)


def test_plan_for_another_cube_is_refused(store, tmp_path):
    plan = _plan(store, {"y": 8, "x": 8})
    other = write_cube(make_toy_cube(n_dates=3, size=32), tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="plan was made for"):
        PatchLoader(other, plan, batch_size=2)


# ---------------------------------------------------------------------------------------------- statistics


def test_band_stats_are_over_valid_pixels_and_stored_once(tmp_path):
    ds = loader_cube()
    path = write_cube(ds, tmp_path / "s.zarr")
    assert read_band_stats(path) is None
    mean, std = ensure_band_stats(path)
    assert read_band_stats(path) == (mean, std)
    assert open_cube(path).attrs["band_mean"] == mean  # in the store's attributes
    dn = ds["reflectance"].values
    ok = ds["valid"].values[:, None] & (dn != 0)
    for c in range(4):
        v = dn[:, c][ok[:, c]].astype(np.float64) * 1e-4 - 0.1
        assert mean[c] == pytest.approx(v.mean(), rel=1e-12)
        assert std[c] == pytest.approx(v.std(), rel=1e-9)
    # a Dataset gets them in its attrs; the same numbers whatever the chunking
    mem = loader_cube()
    assert ensure_band_stats(mem) == (mean, std) and mem.attrs["band_std"] == std
    assert compute_band_stats(open_cube(write_cube(ds, tmp_path / "c.zarr", chunks={"y": 8, "x": 8}))) == (mean, std)


def test_loader_computes_missing_stats_once(tmp_path):
    path = write_cube(loader_cube(), tmp_path / "n.zarr")
    plan = _plan(path, {"y": 8, "x": 8})
    PatchLoader(path, plan, batch_size=4)
    assert read_band_stats(path) is not None


def test_stream_benchmark_counts_patches_and_bytes(tmp_path, capsys):
    """bench/stream.py end to end on a tiny store, on a clock that advances one second per reading: every
    figure is then a count (patches read per timed region), so each is known exactly."""
    import importlib.util
    import itertools
    import json
    import types
    from pathlib import Path

    pytest.importorskip("xbatcher")
    spec = importlib.util.spec_from_file_location(
        "bench_stream", Path(__file__).resolve().parents[2] / "bench" / "stream.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    clock = itertools.count()
    bench.time = types.SimpleNamespace(perf_counter=lambda: float(next(clock)))  # only the bench's own clock
    out = bench.main([
        "--store", str(tmp_path / "b.zarr"), "--size", "256", "--dates", "2", "--patches", "16", "--batch", "5",
        "--window", "128", "--per-window", "4", "--baseline-patches", "2", "--rounds", "1", "--workers", "1",
    ])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    bands = out["store"]["shape"]["band"]
    assert out["store"]["shape"] == {"time": 2, "band": bands, "y": 256, "x": 256}
    assert out["patch"]["bytes"] == bands * 128 * 128 * 2  # uint16 DN
    assert out["store"]["reflectance_raw_bytes"] == 2 * bands * 256 * 256 * 2
    per_s = out["patches_per_s"]
    # (a) every patch of the plan, the last, incomplete batch (16 = 3 x 5 + 1) included, in each variant
    for k in ("a_hvaeseg_loader", "a_cpu_normalised", "a_processes", "a_processes_cpu_normalised"):
        assert per_s[k] == 16, k
    assert per_s["b_xbatcher_lazy"] == per_s["b_xbatcher_dask"] == per_s["b_xbatcher"] == 2  # --baseline-patches
    assert per_s["c_xarray_isel"] == 2
    # (d) the whole reflectance decoded once, in patches: 2 dates x 256 x 256 = 8 patches of 128 x 128
    assert per_s["d_decode_direct"] == per_s["d_decode_zarr"] == per_s["d_decode_limit"] == 8
    assert out["ratio_vs_xbatcher"] == 16 / 2 and out["ratio_vs_decode_limit"] == 16 / 8
    assert out["rounds"]["a"] == [16] and out["ratio_vs_decode_limit_per_round"] == [2]


def test_stream_from_any_batch_matches_an_uninterrupted_stream(toy_cube):
    from hvaeseg.data.loader import PatchLoader
    from hvaeseg.data.sampler import PatchSampler

    plan = PatchSampler({"y": 8, "x": 8}, n_patches=10, seed=1).plan(toy_cube)
    loader = PatchLoader(toy_cube, plan, batch_size=3, repeat=True, seed=5, workers=1)  # 3 batches per epoch
    it = loader.stream(0)
    full = [next(it) for _ in range(8)]
    for start in (1, 3, 5):
        it = loader.stream(start)
        for i in range(start, 8):
            got = next(it)
            assert all(torch.equal(a, b) for a, b in zip(got, full[i]))
    with pytest.raises(ValueError, match="start"):
        loader.stream(-1)


# ---------------------------------------------------------------------------------------------- day of year


@pytest.mark.parametrize(("when", "expected"), [
    ("2020-01-01", 1.0),
    ("2020-01-01T12:00", 1.5),
    ("2020-02-29", 60.0),
    ("2020-12-31", 366.0),  # leap year
    ("2021-12-31", 365.0),
    ("2021-03-01T12:00", 60.5),
    ("1999-12-31T18:00", 365.75),
    ("2100-03-01", 60.0),  # 2100 is not a leap year
])
def test_day_of_year_on_hand_values(when, expected):
    got = day_of_year(np.array([when], dtype="datetime64[ns]"))
    assert got.dtype == np.float32 and got.shape == (1,)
    assert got[0] == expected
    assert day_of_year(np.datetime64(when, "s")) == expected  # any datetime64 unit, scalars too


def test_day_of_year_rejects_other_types():
    with pytest.raises(TypeError, match="datetime64"):
        day_of_year(np.array([1.0, 2.0]))


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 12, 31, 23, 59, 59)))
def test_day_of_year_is_days_since_new_year_plus_one(when):
    """Float32 rounding: within about a second of a leap year's end the value rounds up to 367.0 (the float32
    spacing at 366 is 3e-5 days, 2.6 s), hence the closed upper bound."""
    expected = (when - datetime.datetime(when.year, 1, 1)).total_seconds() / 86400 + 1
    got = day_of_year(np.array([np.datetime64(when, "us")]))[0]
    assert 1.0 <= got <= 367.0
    assert abs(float(got) - expected) <= float(np.spacing(np.float32(expected)))
    if expected < 366.99:
        assert got < 367.0


def _expected_doy(times: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Day of the year of ``times[t]`` from the calendar (``date.timetuple().tm_yday``) plus the time of day."""
    out = np.empty(t.shape, dtype=np.float64)
    for i, ti in np.ndenumerate(t):
        stamp = times[ti].astype("datetime64[us]").item()
        seconds = stamp.hour * 3600 + stamp.minute * 60 + stamp.second + stamp.microsecond * 1e-6
        out[i] = stamp.timetuple().tm_yday + seconds / 86400
    return out


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_doy_is_the_day_of_year_of_each_patch_date(store, sizes, workers):
    plan = _plan(store, sizes, n_patches=11, n_labelled=3)
    got = _cat(list(PatchLoader(store, plan, batch_size=4, workers=workers))).doy
    times = open_cube(store)["time"].values
    # the toy dates: 1 March 2024 (a leap year: day 61), then every 16 days
    np.testing.assert_array_equal(_expected_doy(times, np.arange(len(times))), 61 + 16 * np.arange(len(times)))
    want = _expected_doy(times, plan.t)
    if "time" in sizes:
        assert got.shape == (len(plan), sizes["time"])
    else:
        assert got.shape == (len(plan),)
        want = want[:, 0]
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))
    assert len(np.unique(want)) > 1  # the plan spans several dates


@pytest.mark.parametrize("temporal", [False, True])
def test_loader_doy_has_the_time_of_day_and_wraps_at_the_new_year(temporal):
    cube = loader_cube(n_dates=5, size=32)
    stamps = ["2023-12-20T10:30", "2023-12-31T10:30", "2024-01-01T10:30", "2024-02-29T10:30", "2024-12-31T10:30"]
    cube = cube.assign_coords(time=np.array(stamps, dtype="datetime64[ns]"))
    sizes = {"time": 2, "y": 16, "x": 16} if temporal else {"y": 16, "x": 16}
    plan = _plan(cube, sizes, n_patches=12)
    got = _cat(list(PatchLoader(cube, plan, batch_size=5, workers=0, normalise=False))).doy
    want = np.array([354.4375, 365.4375, 1.4375, 60.4375, 366.4375])[plan.t]
    np.testing.assert_array_equal(got.numpy(), (want if temporal else want[:, 0]).astype(np.float32))


# ---------------------------------------------------------------------------------------------- float reflectance


def _float_cube(store):
    """The store's cube with float32 reflectance in physical units (NaN = no data), same band statistics."""
    ds = open_cube(store).load()
    dn = ds["reflectance"]
    refl = (dn.astype(np.float32) * np.float32(1e-4) - np.float32(0.1)).where(dn != 0)
    refl.attrs = {k: v for k, v in dn.attrs.items() if k not in ("scale_factor", "add_offset")}
    return ds.assign(reflectance=refl.astype(np.float32))


@pytest.fixture(scope="module")
def float_store(store, tmp_path_factory) -> str:
    return write_cube(_float_cube(store), tmp_path_factory.mktemp("float") / "f32.zarr", chunks={"y": 16, "x": 16})


@pytest.mark.parametrize("sizes", SIZES)
def test_float_reflectance_reads_as_the_dn_it_came_from(store, float_store, sizes):
    """float32 made from L2A DN is read back as exactly those DN: the same tensors, bit for bit."""
    plan = _plan(store, sizes, n_labelled=3)
    ref = _cat(list(PatchLoader(store, plan, batch_size=5)))
    loader = PatchLoader(float_store, plan, batch_size=5, workers=2)
    assert loader.dn_scaling == (1e-4, -0.1)
    got = _cat(list(loader))
    _assert_identical(got, ref)
    assert_reads(got, read_patches_naive(float_store, plan))
    _assert_identical(_cat(list(PatchLoader(_float_cube(store), plan, batch_size=5, workers=0))), ref)  # in memory
    assert torch.isfinite(got.x).all()  # NaN (no data) becomes DN 0, as in a DN cube


def test_float_reflectance_in_worker_processes(store, float_store):
    plan = _plan(store, {"y": 16, "x": 16})
    with PatchLoader(float_store, plan, batch_size=4, workers=1, processes=True) as loader:
        _assert_identical(_cat(list(loader)), _cat(list(PatchLoader(store, plan, batch_size=4))))


def test_float_reflectance_is_rounded_to_the_l2a_step(tmp_path):
    cube = make_toy_cube(n_dates=2, size=16)
    dn = cube["reflectance"]
    refl = (dn.astype(np.float64) * 1e-4 - 0.1 + 3e-5).where(dn != 0)  # off the 1e-4 grid, inside a step
    refl[0, 0, 0, 0] = -0.1  # the lowest reflectance a DN holds: not confused with no data
    refl.attrs = {"units": "1"}  # reflectance: no scale_factor
    cube["reflectance"] = refl.astype(np.float32)
    plan = PatchPlan(sizes={"y": 16, "x": 16}, cube_shape={"time": 2, "y": 16, "x": 16}, y=[0, 0], x=[0, 0],
                     t=[[0], [1]], split=[0, 0], labelled=[False, False], group=[0, 1])
    raw = _cat(list(PatchLoader(cube, plan, batch_size=2, workers=0, normalise=False))).x.numpy()
    want = dn.values.astype(np.int64)
    want[0, 0, 0, 0] = 1
    np.testing.assert_array_equal(raw, want)


def test_xarray_decoded_cubes_read_as_the_store(store):
    """``xarray.open_zarr(path)`` (CF decoding: float64 reflectance, scaling in .encoding) gives the same tensors."""
    import xarray as xr

    plan = _plan(store, {"y": 12, "x": 20})
    decoded = xr.open_zarr(store, chunks=None)
    assert decoded["reflectance"].dtype == np.float64
    _assert_identical(_cat(list(PatchLoader(decoded, plan, batch_size=4, workers=1))),
                      _cat(list(PatchLoader(store, plan, batch_size=4))))
