"""Loader worker processes: the same tensors as threads, shared-memory slots, errors, shutdown."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.data.loader import PatchLoader
from hvaeseg.data.sampler import PatchPlan, PatchSampler
from hvaeseg.data.stats import ensure_band_stats
from hvaeseg.data.store import open_cube, write_cube
from hvaeseg.data.workers import ProcessWorkers, SharedSlots, SlotLayout, WorkerError

from .naive import assert_reads, read_patches_naive
from .test_loader import _assert_identical, _cat


def _plan(cube, sizes, **kw) -> PatchPlan:
    kw.setdefault("n_patches", 23)
    kw.setdefault("seed", 3)
    return PatchSampler(sizes, **kw).plan(cube)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 3), st.integers(1, 5), st.integers(1, 12), st.integers(1, 12),
       st.sampled_from(["int16", "int64"]), st.booleans(), st.data())
def test_slot_views_are_disjoint_aligned_and_inside_the_slot(B, T, C, H, W, labels_dtype, normalised, data):
    layout = SlotLayout(B, T, C, H, W, labels_dtype, normalised)
    n = data.draw(st.integers(0, B))
    raw = np.zeros(layout.nbytes, np.uint8)
    x, valid, labels = layout.views(raw, n)
    assert x.shape == (n, T, C, H, W) and valid.shape == (n, T, H, W) and labels.shape == (n, H, W)
    assert x.dtype == (np.float32 if normalised else np.uint16) and valid.dtype == bool and labels.dtype == labels_dtype
    spans = []
    for a in (x, valid, labels):
        start = a.ctypes.data - raw.ctypes.data
        assert start % 64 == 0 and start + a.nbytes <= layout.nbytes
        spans.append((start, start + a.nbytes))
        a.view(np.uint8)[...] = len(spans)  # write through the view: lands in the slot, nowhere else
    for i, (s0, s1) in enumerate(spans):
        assert (raw[s0:s1] == i + 1).all()
    with pytest.raises(ValueError, match="holds up to"):
        layout.views(raw, B + 1)


@pytest.mark.parametrize("normalise", [True, False])
def test_processes_give_the_tensors_threads_give(store, normalise):
    single = _plan(store, {"y": 12, "x": 20}, n_labelled=4)
    temporal = _plan(store, {"time": 3, "y": 16, "x": 16}, n_labelled=4)
    for plan in (single, temporal):
        with PatchLoader(store, plan, batch_size=5, workers=2, normalise=normalise, processes=True) as loader:
            got = _cat(list(loader))
            again = _cat(list(loader))  # the same processes serve another epoch
        ref = _cat(list(PatchLoader(store, plan, batch_size=5, workers=2, normalise=normalise)))
        _assert_identical(got, ref)
        _assert_identical(again, ref)
        if normalise:
            assert_reads(got, read_patches_naive(store, plan))


def test_batches_kept_by_the_consumer_survive_and_stopping_early_is_safe(store):
    plan = _plan(store, {"y": 8, "x": 8}, n_patches=60, n_labelled=20)
    ref = read_patches_naive(store, plan, normalise=False)
    with PatchLoader(store, plan, batch_size=2, workers=2, prefetch=1, normalise=False, processes=True) as loader:
        kept = [(i, b) for i, b in enumerate(loader) if i % 4 == 0]
        for i, batch in kept:
            assert_reads(batch, type(batch)(*(t[2 * i : 2 * i + 2] for t in ref)))
        # stop mid-epoch with jobs in flight, then read again: nothing is mixed up
        it = iter(loader)
        next(it), next(it)
        it.close()
        assert_reads(_cat(list(loader)), ref)
        # the endless stream resumes at any batch, as with threads
        stream = PatchLoader(store, plan, batch_size=2, repeat=True, seed=4, normalise=False)
        loader_r = PatchLoader(
            store, plan, batch_size=2, repeat=True, seed=4, normalise=False, processes=True, workers=1
        )
        with loader_r:
            a, b = loader_r.stream(7), stream.stream(7)
            for _ in range(5):
                _assert_identical(next(a), next(b))
            a.close()


def test_close_stops_the_processes_and_frees_the_shared_memory(store):
    plan = _plan(store, {"y": 8, "x": 8})
    loader = PatchLoader(store, plan, batch_size=4, workers=2, processes=True)
    list(loader)
    procs, folder = loader._pool.procs, loader._slots.dir
    assert all(p.is_alive() for p in procs) and os.listdir(folder)
    loader.close()
    assert not any(p.is_alive() for p in procs)
    assert not Path(folder).exists()
    loader.close()  # idempotent
    assert len(list(loader)) == 6  # iterating again starts new processes
    loader.close()


def test_a_damaged_chunk_read_by_a_worker_is_the_one_line_data_error(store, tmp_path):
    """What is wrong with the user's data comes back as the ValueError the loader gives in-process (one line
    naming the variable and chunk), not as a worker traceback."""
    broken = tmp_path / "broken.zarr"
    write_cube(open_cube(store).load(), broken, chunks={"y": 16, "x": 16})
    ensure_band_stats(broken)
    chunk = next(p for p in (broken / "reflectance" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"not a blosc frame")
    plan = _plan(str(broken), {"y": 16, "x": 16}, n_patches=40)
    with PatchLoader(str(broken), plan, batch_size=8, workers=1, processes=True) as loader:
        with pytest.raises(ValueError, match="reflectance") as info:
            list(loader)
    assert not isinstance(info.value, WorkerError) and "Traceback" not in str(info.value)
    assert "\n" not in str(info.value)


def test_other_worker_errors_come_back_with_their_traceback():
    from hvaeseg.data.workers import _raise, _report

    try:
        raise KeyError("a bug")
    except KeyError as exc:
        report = _report(exc)
    with pytest.raises(WorkerError, match="Traceback") as info:
        _raise(report, "a loader worker failed")
    assert "KeyError: 'a bug'" in str(info.value)
    with pytest.raises(ValueError, match="^bad data$"):
        _raise(_report(ValueError("bad data")), "a loader worker failed")


def test_a_dead_worker_is_reported_not_waited_for(store):
    slots = SharedSlots()
    pool = ProcessWorkers(store, 1)
    try:
        pool.procs[0].kill()
        pool.procs[0].join()
        layout = SlotLayout(1, 1, 4, 8, 8)
        raw, path = slots.acquire(layout.nbytes)
        jid = pool.submit(raw, path, layout, 1, np.zeros((1, 1), int), [0], [0], [False])
        with pytest.raises(WorkerError, match="died"):
            pool.wait(jid)
    finally:
        pool.close()
        slots.close()


def test_process_arguments_are_checked(store):
    plan = _plan(store, {"y": 8, "x": 8})
    with pytest.raises(ValueError, match="store path"):
        PatchLoader(open_cube(store), plan, batch_size=4, processes=True)
    with pytest.raises(ValueError, match="workers >= 1"):
        PatchLoader(store, plan, batch_size=4, workers=0, processes=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_from_processes_equal_cpu_batches(store):
    plan = _plan(store, {"time": 2, "y": 16, "x": 16})
    cpu = _cat(list(PatchLoader(store, plan, batch_size=4)))
    with PatchLoader(store, plan, batch_size=4, device="cuda", processes=True) as loader:
        gpu = [type(b)(*(t.cpu() for t in b)) for b in loader]
    _assert_identical(_cat(gpu), cpu)
