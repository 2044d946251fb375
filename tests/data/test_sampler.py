"""PatchSampler / SpatialSplit / PatchPlan: determinism, splits, labelled subset, edge and invalid rules."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.data.sampler import SPLITS, PatchPlan, PatchSampler, SpatialSplit


def grid_cube(
    T: int = 4, Y: int = 64, X: int = 64, valid: np.ndarray | None = None, labels: np.ndarray | None = None
) -> xr.Dataset:
    """What the sampler reads: time/y/x sizes, `valid` and `labels`."""
    if valid is None:
        valid = np.ones((T, Y, X), dtype=bool)
    data = {"valid": (("time", "y", "x"), valid)}
    if labels is not None:
        data["labels"] = (("y", "x"), labels.astype(np.int16))
    return xr.Dataset(data, coords={"time": np.arange(T).astype("datetime64[D]").astype("datetime64[ns]")})


def _inside_one_split_block(plan: PatchPlan, split: SpatialSplit | None) -> bool:
    H, W = plan.sizes["y"], plan.sizes["x"]
    shape = plan.cube_shape
    smap = split.split_map(shape) if split is not None else np.zeros((shape["y"], shape["x"]), np.int8)
    for y, x, s in zip(plan.y, plan.x, plan.split):
        if y < 0 or x < 0 or y + H > shape["y"] or x + W > shape["x"]:
            return False
        if not (smap[y : y + H, x : x + W] == s).all():
            return False
        if split is not None:  # never across a block border, even between two blocks of one split
            by, bx = split.block["y"], split.block["x"]
            if y // by != (y + H - 1) // by or x // bx != (x + W - 1) // bx:
                return False
    return True


# ---------------------------------------------------------------------------------------------- determinism


def test_same_settings_same_plan_and_seed_changes_it():
    cube = grid_cube(T=6, Y=96, X=96)
    kw = dict(sizes={"y": 16, "x": 16}, n_patches=20, split=SpatialSplit({"y": 32, "x": 32}, seed=2), n_labelled=3)
    a = PatchSampler(**kw, seed=5).plan(cube)
    b = PatchSampler(**kw, seed=5).plan(cube)
    c = PatchSampler(**kw, seed=6).plan(cube)
    assert a == b
    assert a != c
    assert a.counts() == {"train": 23, "val": 20, "test": 20}


@pytest.mark.parametrize("mode", ["random", "grid"])
@pytest.mark.parametrize("sizes", [{"y": 16, "x": 8}, {"time": 3, "y": 16, "x": 16}])
def test_plan_round_trips_through_json_exactly(tmp_path, mode, sizes):
    cube = grid_cube(T=6, Y=64, X=64)
    s = PatchSampler(sizes, mode=mode, n_patches={"train": 7, "val": 2}, split=SpatialSplit({"y": 32, "x": 32}),
                     n_labelled=1, min_valid=0.25, seed=1)
    plan = s.plan(cube)
    text = plan.to_json()
    back = PatchPlan.from_json(text)
    assert back == plan and back.to_json() == text
    for field in ("y", "x", "t", "split", "labelled", "group"):
        got, want = getattr(back, field), getattr(plan, field)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    plan.save(tmp_path / "plan.json")
    assert PatchPlan.load(tmp_path / "plan.json") == plan
    assert PatchSampler.from_dict(plan.meta) == s
    assert back.t.shape == (len(plan), sizes.get("time", 1))


def test_plan_rejects_other_versions():
    plan = PatchSampler({"y": 8, "x": 8}, n_patches=2).plan(grid_cube())
    d = plan.to_dict()
    d["version"] = 99
    with pytest.raises(ValueError, match="version"):
        PatchPlan.from_dict(d)


# ---------------------------------------------------------------------------------------------- splits


@given(
    Y=st.integers(24, 120),
    X=st.integers(24, 120),
    block=st.integers(12, 48),
    patch=st.integers(4, 12),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["random", "grid"]),
    remainder=st.sampled_from(["drop", "shift"]),
)
def test_splits_are_disjoint_and_patches_stay_in_their_blocks(Y, X, block, patch, seed, mode, remainder):
    split = SpatialSplit({"y": block, "x": block}, seed=seed)
    if split.grid({"y": Y, "x": X})[0] * split.grid({"y": Y, "x": X})[1] < 3:
        return
    s = PatchSampler({"y": patch, "x": patch}, mode=mode, n_patches=5, split=split, grid_remainder=remainder, seed=seed)
    try:
        plan = s.plan(grid_cube(T=2, Y=Y, X=X))
    except ValueError as err:  # allowed only when some split's blocks are all too small (edge blocks)
        assert "fits inside a single" in str(err)
        name = str(err).split(" block")[0].rsplit(" ", 1)[1]
        blocks = split.blocks({"y": Y, "x": X}, name)
        assert all(b[1] - b[0] < patch or b[3] - b[2] < patch for b in blocks)
        return
    assert _inside_one_split_block(plan, split)
    # pixels used by different splits never overlap
    used = np.zeros((len(SPLITS), Y, X), dtype=bool)
    for y, x, c in zip(plan.y, plan.x, plan.split):
        used[c, y : y + patch, x : x + patch] = True
    assert not (used.sum(axis=0) > 1).any()
    # every block has exactly one split; the shares are as asked (largest remainder, each >= 1 block)
    a = split.assignment({"y": Y, "x": X})
    counts = np.bincount(a.ravel(), minlength=3)
    assert counts.sum() == a.size and (counts >= 1).all()


def test_split_is_a_function_of_its_seed():
    shape = {"y": 200, "x": 300}
    a = SpatialSplit({"y": 50, "x": 50}, seed=1).assignment(shape)
    assert np.array_equal(a, SpatialSplit({"y": 50, "x": 50}, seed=1).assignment(shape))
    assert not np.array_equal(a, SpatialSplit({"y": 50, "x": 50}, seed=2).assignment(shape))
    assert np.bincount(a.ravel()).tolist() == [17, 4, 3]  # 24 blocks at 0.7 / 0.15 / 0.15


def test_split_errors():
    with pytest.raises(ValueError, match="summing to 1"):
        SpatialSplit({"y": 8, "x": 8}, fractions={"train": 0.5, "val": 0.2})
    with pytest.raises(ValueError, match="cannot hold"):
        SpatialSplit({"y": 64, "x": 64}).assignment({"y": 64, "x": 64})
    with pytest.raises(ValueError, match="smaller than the patch"):
        PatchSampler({"y": 64, "x": 64}, split=SpatialSplit({"y": 32, "x": 32}))


# ---------------------------------------------------------------------------------------------- labelled subset


@given(
    seed=st.integers(0, 1000),
    n_labelled=st.integers(1, 6),
    n_patches=st.integers(1, 30),
    mode=st.sampled_from(["random", "grid"]),
    n_dates=st.sampled_from([None, 1, 2]),
)
def test_labelled_subset_is_inside_train_and_the_same_for_every_method(seed, n_labelled, n_patches, mode, n_dates):
    labels = np.full((96, 96), -1)
    labels[10:90, 5:60] = 2
    cube = grid_cube(T=4, Y=96, X=96, labels=labels)
    split = SpatialSplit({"y": 32, "x": 32}, seed=seed)
    sizes = {"y": 16, "x": 16} if n_dates is None else {"time": n_dates, "y": 16, "x": 16}
    s = PatchSampler(sizes, mode=mode, n_patches=n_patches, split=split, n_labelled=n_labelled, seed=seed)
    plan = s.plan(cube)
    lab = plan.select(split="train", labelled=True)
    assert len(lab) == n_labelled
    smap = split.split_map({"y": 96, "x": 96})
    for y, x in zip(lab.y, lab.x):
        assert (smap[y : y + 16, x : x + 16] == SPLITS.index("train")).all()
        assert (labels[y : y + 16, x : x + 16] >= 0).any()  # holds labelled pixels
    # non-overlapping tiles
    assert len({(int(y), int(x)) for y, x in zip(lab.y, lab.x)}) == n_labelled
    assert all(y % 16 == 0 and x % 16 == 0 for y, x in zip(lab.y, lab.x))
    # the same locations for another method / mode / patch count / stack length, same seed
    other = PatchSampler({"y": 16, "x": 16}, mode="random", n_patches=3, split=split, n_labelled=n_labelled, seed=seed)
    np.testing.assert_array_equal(other.labelled_locations(cube), np.stack([lab.y, lab.x], axis=1))
    # only val/test and the labelled training locations carry labels
    assert not plan.select(split="train", labelled=False).labelled.any()
    assert plan.select(split="val").labelled.all()


def test_too_many_labelled_locations_is_an_error():
    with pytest.raises(ValueError, match="labelled training locations"):
        PatchSampler({"y": 16, "x": 16}, n_patches=1, n_labelled=17).plan(grid_cube(Y=64, X=64))


# ---------------------------------------------------------------------------------------------- edges


def test_grid_drops_or_shifts_the_remainder():
    cube = grid_cube(T=2, Y=70, X=50)
    drop = PatchSampler({"y": 16, "x": 16}, mode="grid").plan(cube)
    assert sorted(set(drop.y.tolist())) == [0, 16, 32, 48] and sorted(set(drop.x.tolist())) == [0, 16, 32]
    shift = PatchSampler({"y": 16, "x": 16}, mode="grid", grid_remainder="shift").plan(cube)
    assert sorted(set(shift.y.tolist())) == [0, 16, 32, 48, 54] and sorted(set(shift.x.tolist())) == [0, 16, 32, 34]
    covered = np.zeros((70, 50), bool)
    for y, x in zip(shift.y, shift.x):
        covered[y : y + 16, x : x + 16] = True
    assert covered.all()  # shift covers everything, nothing is padded
    for plan in (drop, shift):
        assert _inside_one_split_block(plan, None)


def test_blocks_smaller_than_the_patch_hold_none():
    # 70 = 2 blocks of 32 + a 6-pixel strip that can hold no 16-pixel patch
    split = SpatialSplit({"y": 32, "x": 32}, fractions={"train": 1.0})
    plan = PatchSampler({"y": 16, "x": 16}, mode="grid", split=split, grid_remainder="shift").plan(
        grid_cube(Y=70, X=70)
    )
    assert plan.y.max() + 16 <= 64 and plan.x.max() + 16 <= 64
    rnd = PatchSampler({"y": 16, "x": 16}, n_patches=200, split=split).plan(grid_cube(Y=70, X=70))
    assert _inside_one_split_block(rnd, split)


def test_plan_check_rejects_patches_across_the_border():
    plan = PatchSampler({"y": 16, "x": 16}, n_patches=3).plan(grid_cube())
    plan.y[0] = 60
    with pytest.raises(ValueError, match="cube border"):
        plan.check()


# ---------------------------------------------------------------------------------------------- invalid pixels


def _cloudy_cube() -> tuple[xr.Dataset, np.ndarray]:
    """8 dates of 64 x 64: date d is fully invalid in the left half when d is odd, and date 7 everywhere;
    the 16 x 16 tile at (0, 0) has no valid pixel on any date."""
    valid = np.ones((8, 64, 64), bool)
    valid[1::2, :, :32] = False
    valid[7] = False
    valid[:, :16, :16] = False
    return grid_cube(T=8, valid=valid), valid


@pytest.mark.parametrize("sizes", [{"y": 16, "x": 16}, {"time": 2, "y": 16, "x": 16}])
def test_random_patches_never_have_a_date_without_valid_pixels(sizes):
    cube, valid = _cloudy_cube()
    plan = PatchSampler(sizes, n_patches=300, seed=3, min_valid=0.5).plan(cube)
    assert len(plan) == 300
    for y, x, ts in zip(plan.y, plan.x, plan.t):
        for t in ts:
            assert valid[t, y : y + 16, x : x + 16].mean() >= 0.5
        assert np.all(np.diff(ts) > 0)
    assert 7 not in plan.t


def test_grid_keeps_all_invalid_tiles_with_their_best_dates():
    cube, valid = _cloudy_cube()
    plan = PatchSampler({"time": 3, "y": 16, "x": 16}, mode="grid", seed=0, min_valid=0.5).plan(cube)
    assert len(plan) == 16  # every tile is kept
    corner = np.nonzero((plan.y == 0) & (plan.x == 0))[0][0]
    assert plan.t[corner].tolist() == [0, 1, 2]  # none qualifies: best (all 0) -> earliest dates
    left = np.nonzero((plan.y == 16) & (plan.x == 0))[0][0]
    assert all(t % 2 == 0 and t != 7 for t in plan.t[left])  # qualifying dates only


def test_impossible_min_valid_is_a_clear_error():
    cube, _ = _cloudy_cube()
    with pytest.raises(ValueError, match="min_valid"):
        PatchSampler({"time": 8, "y": 16, "x": 16}, n_patches=5, max_rounds=3).plan(cube)


# ---------------------------------------------------------------------------------------------- windows


def test_windowed_random_sampling_keeps_groups_in_their_super_tile():
    cube = grid_cube(T=5, Y=128, X=128)
    s = PatchSampler({"y": 16, "x": 16}, n_patches=50, window={"y": 64, "x": 64}, per_window=8, seed=4)
    plan = s.plan(cube)
    assert len(plan) == 50
    for g in np.unique(plan.group):
        m = plan.group == g
        assert m.sum() <= 8
        assert len({tuple(t) for t in plan.t[m]}) == 1  # one date set per super-tile
        wy, wx = plan.y[m] // 64, plan.x[m] // 64
        assert len(set(wy)) == 1 and len(set(wx)) == 1
        assert ((plan.y[m] + 16 - 1) // 64 == wy).all() and ((plan.x[m] + 16 - 1) // 64 == wx).all()
    # groups are contiguous in plan order
    starts = np.flatnonzero(np.diff(plan.group)) + 1
    assert len(starts) + 1 == len(np.unique(plan.group))


# ---------------------------------------------------------------------------------------------- cover mode
# The expectations below are brute force, loop by loop, from the rules as the module docstring states them.


def _starts(extent: int, size: int) -> list[int]:
    """Stride = size from 0, the last tile shifted back to end at the border."""
    out = list(range(0, extent - size + 1, size))
    return out if out[-1] + size == extent else [*out, extent - size]


def _fraction(valid: np.ndarray, t: int, y: int, x: int, h: int, w: int) -> float:
    return float(valid[t, y : y + h, x : x + w].mean())


def _qualifies(f: float, min_valid: float) -> bool:
    return f >= min_valid and f > 0


def _clearest(valid: np.ndarray, y: int, x: int, h: int, w: int, n: int) -> list[int]:
    """The n dates of highest valid fraction, earliest first on ties, sorted by date."""
    T = valid.shape[0]
    return sorted(sorted(range(T), key=lambda t: (-_fraction(valid, t, y, x, h, w), t))[:n])


def _mosaic_cube(T: int = 3, n_images: int = 5, size: tuple[int, int] = (20, 30), columns: int = 3, seed: int = 0):
    """A mosaic of 5 images in 3 columns (one empty cell), random `valid` and `labels`."""
    from hvaeseg.data.mosaic import MosaicLayout

    layout = MosaicLayout(size, columns, n_images)
    rng = np.random.default_rng(seed)
    index = layout.image_index()
    valid = (rng.random((T, *index.shape)) < rng.random((T, 1, 1))) & (index >= 0)
    labels = np.where(index >= 0, rng.integers(-1, 3, index.shape), -1)
    ds = grid_cube(T=T, Y=index.shape[0], X=index.shape[1], valid=valid, labels=labels)
    ds["image_index"] = (("y", "x"), index)
    ds["image_split"] = (("image",), np.full(n_images, -1, dtype=np.int8))
    return ds.assign_attrs(layout.attrs()), layout


def _blotchy_valid(T: int, Y: int, X: int, seed: int) -> np.ndarray:
    """Clouds in 8-pixel blocks, a fully clear date 0 and a fully cloudy date 2 (ties between tiles and dates)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((T, Y // 8 + 1, X // 8 + 1)) < rng.random((T, 1, 1))
    valid = np.repeat(np.repeat(coarse, 8, 1), 8, 2)[:, :Y, :X]
    valid[0], valid[2] = True, False
    return valid


@pytest.mark.parametrize("patch, dates", [(16, 1), (16, 3), (20, 1), (20, 5), (50, 2)])
def test_cover_mode_tiles_the_whole_cube_with_every_or_the_clearest_dates(patch, dates):
    T, Y, X = 5, 50, 70
    valid = _blotchy_valid(T, Y, X, seed=patch + dates)
    sizes = {"y": patch, "x": patch, **({"time": dates} if dates > 1 else {})}
    plan = PatchSampler(sizes, mode="cover").plan(grid_cube(T=T, Y=Y, X=X, valid=valid))
    rows = []
    for y in _starts(Y, patch):
        for x in _starts(X, patch):
            if dates == 1:
                rows += [(y, x, [t]) for t in range(T)]
            else:
                rows.append((y, x, _clearest(valid, y, x, patch, patch, dates)))
    assert [(int(y), int(x), t.tolist()) for y, x, t in zip(plan.y, plan.x, plan.t)] == rows
    assert (plan.split == 0).all() and not plan.labelled.any() and plan.group.tolist() == list(range(len(rows)))
    covered = np.zeros((Y, X), bool)
    for y, x in zip(plan.y, plan.x):
        covered[y : y + patch, x : x + patch] = True
    assert covered.all()


@pytest.mark.parametrize("patch, dates", [(16, 1), (16, 2), (20, 3), (7, 1)])
def test_cover_mode_tiles_a_mosaic_cell_by_cell(patch, dates):
    ds, layout = _mosaic_cube()
    valid = ds["valid"].values
    sizes = {"y": patch, "x": patch, **({"time": dates} if dates > 1 else {})}
    plan = PatchSampler(sizes, mode="cover").plan(ds)
    (h, w), rows = layout.image_size, []
    for cell in range(layout.rows * layout.columns):  # the empty cell of the last row included
        y0, x0 = (cell // layout.columns) * h, (cell % layout.columns) * w
        for y in _starts(h, patch):
            for x in _starts(w, patch):
                ts = [[t] for t in range(3)] if dates == 1 else [_clearest(valid, y0 + y, x0 + x, patch, patch, dates)]
                rows += [(y0 + y, x0 + x, t) for t in ts]
    assert [(int(y), int(x), t.tolist()) for y, x, t in zip(plan.y, plan.x, plan.t)] == rows
    with pytest.raises(ValueError, match="larger than the mosaic"):
        PatchSampler({"y": 21, "x": 21}, mode="cover").plan(ds)


def test_whole_cube_prediction_plans_with_the_cover_mode():
    from hvaeseg.predict import _cover_plan

    cube = grid_cube(T=4, Y=40, X=52, valid=_blotchy_valid(4, 40, 52, seed=1))
    for dates in (1, 3):
        plan = _cover_plan(cube, 16, dates)
        sizes = {"y": 16, "x": 16, **({"time": dates} if dates > 1 else {})}
        assert plan == PatchSampler(sizes, mode="cover").plan(cube)


# ---------------------------------------------------------------------------------------------- labelled dates


@pytest.mark.parametrize("min_valid", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("mosaic", [False, True])
def test_every_labelled_date_is_one_single_date_patch(min_valid, mosaic):
    if mosaic:
        cube, _ = _mosaic_cube(T=4, seed=2)
        split, patch = SpatialSplit({"y": 8, "x": 8}, seed=1), 8
    else:
        labels = np.full((64, 80), -1)
        labels[8:60, 4:50] = 1
        cube = grid_cube(T=6, Y=64, X=80, valid=_blotchy_valid(6, 64, 80, seed=3), labels=labels)
        split, patch = SpatialSplit({"y": 32, "x": 40}, seed=2), 10
    valid = cube["valid"].values
    kw = dict(sizes={"y": patch, "x": patch}, n_patches={"train": 9}, split=split, n_labelled=2,
              min_valid=min_valid, splits=("train",), seed=4)
    drawn = PatchSampler(**kw).plan(cube)  # one patch per location: the same locations and random patches
    every = PatchSampler(**kw, labelled_dates="every").plan(cube)
    lab = drawn.select(labelled=True)
    rows = []
    for y, x, g in zip(lab.y.tolist(), lab.x.tolist(), lab.group.tolist()):
        fracs = [_fraction(valid, t, y, x, patch, patch) for t in range(valid.shape[0])]
        dates = [t for t, f in enumerate(fracs) if _qualifies(f, min_valid)] or [int(np.argmax(fracs))]
        rows += [(y, x, t, g) for t in dates]
    unl = drawn.select(labelled=False)
    rows += [(y, x, t, g) for y, x, (t,), g in zip(unl.y.tolist(), unl.x.tolist(), unl.t.tolist(), unl.group.tolist())]
    got = [(int(y), int(x), int(t), int(g)) for y, x, (t,), g in zip(every.y, every.x, every.t, every.group)]
    assert got == rows
    assert every.labelled.tolist() == [True] * (len(rows) - len(unl)) + [False] * len(unl)
    assert (every.split == 0).all() and PatchSampler.from_dict(every.meta).labelled_dates == "every"


def test_a_run_plans_every_labelled_date_with_the_sampler():
    from hvaeseg.experiment import _draw_plans, open_data
    from hvaeseg.run_config import RunConfig

    config = RunConfig(method="supervised", data="synthetic:tiny", labels=3, patch_size=16, block=64,
                       unlabelled_patches=5, min_valid=0.6)
    cube = open_data(config.data)
    train, _ = _draw_plans(config, cube, cube)
    sampler = PatchSampler({"y": 16, "x": 16}, n_patches={"train": 5}, split=SpatialSplit(
        {"y": 64, "x": 64}, fractions={"train": 0.6, "val": 0.2, "test": 0.2}), n_labelled=3,
        labelled_dates="every", min_valid=0.6, splits=("train",))
    assert train == sampler.plan(cube)
    assert len(train.select(labelled=True)) > 3  # a location on several dates


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="unknown"):
        PatchSampler({"y": 8, "x": 8, "band": 2})
    with pytest.raises(ValueError, match="both 'y' and 'x'"):
        PatchSampler({"y": 8})
    with pytest.raises(ValueError, match="mode"):
        PatchSampler({"y": 8, "x": 8}, mode="spiral")
    with pytest.raises(ValueError, match="needs a window"):
        PatchSampler({"y": 8, "x": 8}, per_window=4)
    with pytest.raises(ValueError, match="does not fit"):
        PatchSampler({"y": 80, "x": 8}).plan(grid_cube())
    with pytest.raises(ValueError, match="single-date"):
        PatchSampler({"time": 2, "y": 8, "x": 8}, labelled_dates="every")
    with pytest.raises(ValueError, match="no split"):
        PatchSampler({"y": 8, "x": 8}, mode="cover", split=SpatialSplit({"y": 32, "x": 32}))
