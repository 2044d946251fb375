"""Prediction and inpainting in parallel (`--part I/N`, torchrun's RANK/WORLD_SIZE, `hvaeseg.parallel`): the
region rule, several processes writing one store, equal to one process's, and reruns that fill only what is
missing (small: the tiny synthetic cube, 9 regions of 48 x 48 pixels, a 2-step run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.cli import main
from hvaeseg.data.region_store import DONE_ARRAY, PARTIAL_SUFFIX, REGIONS_ATTR
from hvaeseg.data.regions import parse_part, part_from_env, part_regions, region_grid, tiles_touching
from hvaeseg.data.tiles import tile_starts
from hvaeseg.parallel import InpaintJob, PredictJob, map_regions

CHUNK = "48"  # 128 x 128 cube: 3 x 3 regions, not aligned with the 32-pixel tiles (the halo matters)


# --------------------------------------------------------------------------------------------- the region rule


@st.composite
def _grids(draw):
    Y, X = draw(st.integers(1, 90)), draw(st.integers(1, 90))
    cy, cx = draw(st.sampled_from([-1, *range(1, 40)])), draw(st.sampled_from([-1, *range(1, 40)]))
    patch = draw(st.integers(1, min(Y, X)))
    return Y, X, cy, cx, patch


@given(_grids(), st.integers(1, 5))
def test_regions_are_disjoint_chunk_aligned_and_cover_the_cube(grid, parts):
    Y, X, cy, cx, patch = grid
    regions = region_grid({"y": Y, "x": X}, {"y": cy, "x": cx})
    cover = np.zeros((Y, X), dtype=int)
    for i, r in enumerate(regions):
        assert r.index == i
        cover[r.y0:r.y1, r.x0:r.x1] += 1
        for start, stop, size, chunk in ((r.y0, r.y1, Y, cy), (r.x0, r.x1, X, cx)):
            chunk = size if chunk == -1 else chunk
            assert start % chunk == 0 and (stop % chunk == 0 or stop == size) and stop - start <= chunk
    assert (cover == 1).all()  # disjoint, and every pixel in one
    # the parts share the regions out, each exactly once
    shares = [part_regions(len(regions), p, parts) for p in range(parts)]
    assert sorted(i for share in shares for i in share) == list(range(len(regions)))
    # the halo: every tile holding a pixel of a region is among the region's tiles, and no other
    corners = [(y, x) for y in tile_starts(Y, patch) for x in tile_starts(X, patch)]
    for r in regions:
        mine = set(tiles_touching(r, corners, patch))
        for k, (y, x) in enumerate(corners):
            overlap = max(y, r.y0) < min(y + patch, r.y1) and max(x, r.x0) < min(x + patch, r.x1)
            assert (k in mine) == overlap


def test_parts_from_the_flag_and_the_environment():
    assert parse_part("1/3") == (1, 3)
    for bad in ("3/2", "2/2", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="expected I/N"):
            parse_part(bad)
    assert part_from_env({}) is None
    assert part_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(ValueError, match="RANK=2 of WORLD_SIZE=2"):
        part_from_env({"RANK": "2", "WORLD_SIZE": "2"})


# --------------------------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def plain(symmetric_run, tmp_path_factory) -> str:
    """The prediction of one plain process (no parts)."""
    out = str(tmp_path_factory.mktemp("plain") / "pred.zarr")
    assert main(["predict", symmetric_run, "--out", out, "--chunk", CHUNK]) == 0
    return out


def _arrays(path: str) -> dict[str, zarr.Array]:
    group = zarr.open_group(path, mode="r")
    return {name: arr for name, arr in group.arrays()}


def _assert_same_store(a: str, b: str, *, ignore_attrs: tuple[str, ...] = ()) -> None:
    """Every array equal (values, dtype, shape, chunks, attributes); the same store attributes but ``ignore``."""
    left, right = _arrays(a), _arrays(b)
    assert sorted(left) == sorted(right)
    for name, arr in left.items():
        other = right[name]
        assert arr.dtype == other.dtype and arr.shape == other.shape and arr.chunks == other.chunks, name
        assert dict(arr.attrs) == dict(other.attrs), name
        np.testing.assert_array_equal(arr[...], other[...], err_msg=name, strict=True)
    attrs = [{k: v for k, v in dict(zarr.open_group(p, mode="r").attrs).items() if k not in ignore_attrs}
             for p in (a, b)]
    assert attrs[0] == attrs[1]


def _chunk_files(path: str, region) -> dict[str, tuple[int, int]]:
    """``(inode, mtime_ns)`` of the chunk files of ``region`` (48 x 48 chunks: chunk index = pixel // 48)."""
    out = {}
    cy, cx = region.y0 // int(CHUNK), region.x0 // int(CHUNK)
    for var, key in (("class_map", f"c/{cy}/{cx}"), ("probability", f"c/0/{cy}/{cx}")):
        st_ = os.stat(os.path.join(path, var, *key.split("/")))
        out[f"{var}/{key}"] = (st_.st_ino, st_.st_mtime_ns)
    return out


def test_two_processes_at_once_write_the_store_one_process_writes(symmetric_run, plain, tmp_path):
    out = str(tmp_path / "pred.zarr")
    env = {**os.environ, "HVAESEG_NO_PROGRESS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "hvaeseg", "predict", symmetric_run, "--out", out, "--chunk",
                               CHUNK, "--part", f"{p}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for p in range(2)]
    results = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    lines = sorted(stdout.strip().splitlines()[-1] for stdout, _ in results)
    assert lines[0].startswith("part 0/2: predicted 5 of 9 regions (0 of its 5 already done)")
    assert lines[1].startswith("part 1/2: predicted 4 of 9 regions (0 of its 4 already done)")
    assert sum("all regions done, wrote" in line for line in lines) == 1  # exactly one completed the store
    assert not os.path.exists(out + PARTIAL_SUFFIX)
    _assert_same_store(out, plain, ignore_attrs=(REGIONS_ATTR,))
    identity = json.loads(zarr.open_group(out, mode="r").attrs[REGIONS_ATTR])
    assert identity["command"] == "predict" and identity["regions"] == 9 and identity["chunks"] == [48, 48]


def test_a_rerun_fills_only_the_missing_regions(symmetric_run, plain, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "pred.zarr")
    partial = out + PARTIAL_SUFFIX
    assert main(["predict", symmetric_run, "--out", out, "--chunk", CHUNK, "--part", "0/2"]) == 0  # part 1 never ran
    assert "predicted 5 of 9 regions" in capsys.readouterr().out
    assert not os.path.exists(out) and os.path.isdir(partial)  # readers see nothing at OUT meanwhile
    done = np.asarray(zarr.open_group(partial, mode="r")[DONE_ARRAY][:])
    assert done.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1]
    regions = region_grid({"y": 128, "x": 128}, {"y": 48, "x": 48})
    before = {k: v for i in range(0, 9, 2) for k, v in _chunk_files(partial, regions[i]).items()}
    # the same command again, as one process under a launcher's RANK/WORLD_SIZE: only the 4 missing regions
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["predict", symmetric_run, "--out", out, "--chunk", CHUNK]) == 0
    text = capsys.readouterr().out
    assert "part 0/1: predicted 4 of 9 regions (5 of its 9 already done); all regions done" in text
    after = {k: v for i in range(0, 9, 2) for k, v in _chunk_files(out, regions[i]).items()}
    assert after == before  # the regions done before were not written again
    _assert_same_store(out, plain, ignore_attrs=(REGIONS_ATTR,))
    # once complete, the same command has nothing to do; another refuses the finished store
    assert main(["predict", symmetric_run, "--out", out, "--chunk", CHUNK]) == 0
    assert "predicted 0 of 9 regions (9 of its 9 already done)" in capsys.readouterr().out
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["predict", symmetric_run, "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err


def test_parts_of_another_command_are_refused(symmetric_run, tmp_path, capsys):
    out = str(tmp_path / "filled.zarr")
    base = ["inpaint", symmetric_run, "--out", out, "--chunk", CHUNK, "--samples", "1"]
    assert main([*base, "--part", "3/2"]) == 2
    assert "--part: expected I/N with 0 <= I < N" in capsys.readouterr().err
    assert main([*base, "--chunk", "0", "--part", "0/2"]) == 2
    assert "--chunk: expected a positive number" in capsys.readouterr().err
    job = InpaintJob(out=out, run=symmetric_run, samples=1, chunk=48)
    job.open()  # the create step alone: OUT.partial of this command, no region done
    assert os.path.isdir(out + PARTIAL_SUFFIX) and job.pending(1, 2) == [1, 3, 5, 7]
    assert main([*base, "--seed", "7", "--part", "1/2"]) == 2  # another seed: another command
    err = capsys.readouterr().err
    assert "is being written by another run or command" in err and "seed 0 there, 7 here" in err
    assert main(["predict", symmetric_run, "--out", out, "--chunk", CHUNK, "--part", "1/2"]) == 2
    assert "another run or command" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_parallel_inpainting_equals_one_process(symmetric_run, tmp_path, capsys, monkeypatch):
    # interpolation: the same pixels as a plain run
    store = str(tmp_path / "cube.zarr")
    from hvaeseg.data.store import write_cube
    from hvaeseg.data.synthetic import make_cube

    write_cube(make_cube("tiny", seed=0), store)
    plain, out = str(tmp_path / "plain.zarr"), str(tmp_path / "parts.zarr")
    interp = ["inpaint", "--data", store, "--method", "interpolation", "--patch-size", "32", "--chunk", CHUNK]
    assert main([*interp, "--out", plain]) == 0
    for rank in (1, 0):  # torchrun's ranks, one after the other
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert main([*interp, "--out", out]) == 0
    assert "part 0/2: filled 5 of 9 regions" in capsys.readouterr().out
    _assert_same_store(out, plain, ignore_attrs=(REGIONS_ATTR, "inpaint_created"))
    # the posterior: draws seeded per region, so any split gives the same store
    monkeypatch.delenv("WORLD_SIZE")
    post = ["inpaint", symmetric_run, "--samples", "1", "--chunk", CHUNK]
    one, two = str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr")
    assert main([*post, "--out", one, "--part", "0/1"]) == 0
    assert main([*post, "--out", two, "--part", "1/2"]) == 0
    assert main([*post, "--out", two, "--part", "0/2"]) == 0
    _assert_same_store(one, two, ignore_attrs=("inpaint_created",))
    from hvaeseg.data.store import open_cube

    filled = open_cube(two)  # a valid, complete cube
    assert filled["filled"].values.any() and filled.attrs["inpaint_samples"] == 1


def test_parallel_inpainting_recalibrates_as_one_process(symmetric_run, tmp_path, capsys):
    from hvaeseg.data.store import open_cube

    post = ["inpaint", symmetric_run, "--samples", "1", "--recalibrate", "--calibration-samples", "4",
            "--calibration-tiles", "3"]
    plain, one, two = (str(tmp_path / f"{n}.zarr") for n in ("plain", "one", "two"))
    assert main([*post, "--out", plain]) == 0
    assert main([*post, "--chunk", CHUNK, "--out", one, "--part", "0/1"]) == 0
    assert main([*post, "--chunk", CHUNK, "--out", two, "--part", "1/2"]) == 0
    assert main([*post, "--chunk", CHUNK, "--out", two, "--part", "0/2"]) == 0
    capsys.readouterr()
    _assert_same_store(one, two, ignore_attrs=("inpaint_created",))
    # every part fits the factor the single process fits (the same seed), and stamps it
    factor = open_cube(plain).attrs["inpaint_spread_factor"]
    assert factor != 1.0 and open_cube(two).attrs["inpaint_spread_factor"] == factor
    # a part of another calibration is another command
    assert main(["inpaint", symmetric_run, "--samples", "1", "--chunk", CHUNK, "--out", str(tmp_path / "x.zarr"),
                 "--part", "0/2"]) == 0
    assert main([*post, "--chunk", CHUNK, "--out", str(tmp_path / "x.zarr"), "--part", "1/2"]) == 2
    assert "another run or command" in capsys.readouterr().err


def test_map_regions_with_an_executor(symmetric_run, plain, tmp_path):
    out = str(tmp_path / "pred.zarr")
    job = PredictJob(run=symmetric_run, out=out, chunk=48)
    with ThreadPoolExecutor(2) as pool:
        assert map_regions(job, pool.map)
    _assert_same_store(out, plain, ignore_attrs=(REGIONS_ATTR,))


def test_map_regions_with_dask(symmetric_run, plain, tmp_path):
    dask = pytest.importorskip("dask")
    out = str(tmp_path / "pred.zarr")
    job = PredictJob(run=symmetric_run, out=out, chunk=48)
    job.open()
    tasks = [dask.delayed(job.compute)(i) for i in job.pending()]
    dask.compute(*tasks, scheduler="threads")
    assert job.finish()
    _assert_same_store(out, plain, ignore_attrs=(REGIONS_ATTR,))
