"""Whole-cube gap filling: `hvaeseg.inpaint_cube` and `hvaeseg inpaint` (fast: tiny cubes, untrained or 2-step
models, few samples)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.cli import main
from hvaeseg.data.bands import band_coords
from hvaeseg.data.schema import class_attrs, validate_cube
from hvaeseg.data.store import open_cube, write_cube
from hvaeseg.data.synthetic import make_cube
from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.inpaint import temporal_linear_interpolation
from hvaeseg.inpaint_cube import dn_range, inpaint_cube, window_dates, write_filled

BANDS = 10
CLASSES = 7


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    """64 x 64 pixels, 4 dates: overcast, partly cloudy and clear ones."""
    return make_cube("tiny", seed=0, size=64, n_dates=4)


def _hvae(temporal: bool = False, interpolation: bool = False) -> HVAE:
    torch.manual_seed(0)
    return HVAE(HierarchySpec.default(CLASSES, BANDS, temporal=temporal, day_of_year=True,
                                      interpolation=interpolation))


def _check_contract(inp: xr.Dataset, out: xr.Dataset, *, posterior: bool) -> None:
    """What every filled cube must satisfy."""
    validate_cube(out)
    r_in, r_out = inp["reflectance"].values, out["reflectance"].values
    valid = inp["valid"].values
    keep = np.broadcast_to(valid[:, None], r_in.shape)
    assert r_out.dtype == r_in.dtype and out["reflectance"].attrs == inp["reflectance"].attrs
    assert np.array_equal(r_out[keep], r_in[keep])  # observed DN bit for bit
    assert np.array_equal(out["filled"].values, ~valid) and out["filled"].dtype == bool
    assert np.array_equal(out["valid"].values, valid)
    lo, hi = dn_range(r_in.dtype, inp["reflectance"].attrs["scale_factor"], inp["reflectance"].attrs["add_offset"])
    holes = r_out[~keep]
    assert (holes != 0).all() and holes.min() >= lo and holes.max() <= hi
    std = out["std"].values
    assert std.dtype == np.float32 and std.shape == r_in.shape
    assert (std[keep] == 0).all()
    if posterior:
        assert (~keep).any() and (std[~keep] > 0).any() and np.isfinite(std).all()
    else:
        assert (std == 0).all()
    for name in inp.data_vars:
        if name != "reflectance":
            assert np.array_equal(out[name].values, inp[name].values), name
    for name in inp.coords:
        assert np.array_equal(out[name].values, inp[name].values), name
    for key, value in inp.attrs.items():
        assert out.attrs[key] == value
    for key in ("inpaint_method", "inpaint_run", "inpaint_samples", "inpaint_dates", "inpaint_seed",
                "inpaint_created"):
        assert key in out.attrs


# --------------------------------------------------------------------------------------------- the fill


def test_posterior_fill_keeps_observed_pixels_and_fills_exactly_the_invalid_ones(cube):
    assert 0 < cube["valid"].values.mean() < 1
    out = inpaint_cube(cube, hvae=_hvae(), patch_size=32, num_samples=2, progress=False)
    _check_contract(cube, out, posterior=True)
    assert out.attrs["inpaint_method"] == "posterior" and out.attrs["inpaint_samples"] == 2
    assert "band_mean" not in cube.attrs  # statistics computed in memory: the input is only read


def test_posterior_fill_is_reproducible_and_leaves_the_global_rng_alone(cube):
    hvae = _hvae()
    state = torch.get_rng_state()
    a = inpaint_cube(cube, hvae=hvae, patch_size=32, num_samples=2, seed=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = inpaint_cube(cube, hvae=hvae, patch_size=32, num_samples=2, seed=3, progress=False)
    c = inpaint_cube(cube, hvae=hvae, patch_size=32, num_samples=2, seed=4, progress=False)
    assert np.array_equal(a["reflectance"].values, b["reflectance"].values)
    assert np.array_equal(a["std"].values, b["std"].values)
    assert not np.array_equal(a["std"].values, c["std"].values)


def test_overlapping_tiles_and_a_temporal_model(cube):
    """A patch that does not divide the cube (last tiles shifted back, overlaps averaged), and a T=2 model."""
    out = inpaint_cube(cube, hvae=_hvae(temporal=True), patch_size=48, dates=2, num_samples=2, progress=False)
    _check_contract(cube, out, posterior=True)
    assert out.attrs["inpaint_dates"] == 2


def test_a_model_that_interpolates_between_dates_fills_the_cube(cube):
    """A temporal model with the interp covariate: the whole-cube fill keeps the contract, and (its decoder being a
    correction to the interpolation, zero at initialisation) it fills close to the interpolation of each pixel's
    clear dates, where an untrained plain model fills far from it."""
    from hvaeseg.data.schema import decoded_reflectance

    out = inpaint_cube(cube, hvae=_hvae(temporal=True, interpolation=True), patch_size=32, dates=4, num_samples=4,
                       progress=False)
    _check_contract(cube, out, posterior=True)
    plain = inpaint_cube(cube, hvae=_hvae(temporal=True), patch_size=32, dates=4, num_samples=4, progress=False)
    base = inpaint_cube(cube, method="interpolation", patch_size=32, progress=False)
    # the hidden pixels with a clear date (all 4 dates are in every stack, so the stack's interpolation is the series')
    hidden = out["filled"].values & cube["valid"].values.any(axis=0)
    assert hidden.any()
    sel = np.broadcast_to(hidden[:, None], cube["reflectance"].shape)

    def gap(ds):
        return float(np.abs(decoded_reflectance(ds).values[sel] - decoded_reflectance(base).values[sel]).mean())

    assert gap(out) < 0.5 * gap(plain)


def test_model_and_arguments_that_do_not_fit(cube):
    with pytest.raises(ValueError, match="single-date"):
        inpaint_cube(cube, hvae=_hvae(), patch_size=32, dates=2, progress=False)
    with pytest.raises(ValueError, match="temporal"):
        inpaint_cube(cube, hvae=_hvae(temporal=True), patch_size=32, dates=1, progress=False)
    with pytest.raises(ValueError, match="needs a model"):
        inpaint_cube(cube, patch_size=32, progress=False)
    with pytest.raises(ValueError, match="larger than the cube"):
        inpaint_cube(cube, method="interpolation", patch_size=128, progress=False)
    with pytest.raises(ValueError, match="method"):
        inpaint_cube(cube, method="kriging", patch_size=32, progress=False)
    with pytest.raises(TypeError, match="integer DN"):
        inpaint_cube(cube.assign(reflectance=cube["reflectance"].astype("float32") * 1e-4), method="interpolation",
                     patch_size=32, progress=False)


# --------------------------------------------------------------------------------------------- interpolation


def _hand_cube(dn: np.ndarray, valid: np.ndarray, days: list[int]) -> xr.Dataset:
    """A cube of ``dn (time, band, y, x)`` with dates ``days`` after 1 March 2021."""
    T, C, H, W = dn.shape
    times = np.datetime64("2021-03-01T10:00", "ns") + np.asarray(days) * np.timedelta64(1, "D")
    refl_attrs = {"scale_factor": 1e-4, "add_offset": -0.1}
    return xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), dn.astype(np.uint16), refl_attrs),
            "valid": (("time", "y", "x"), valid.astype(bool)),
            "labels": (("y", "x"), np.zeros((H, W), np.int16), class_attrs(["crop"])),
        },
        coords={"time": times, **band_coords(["B02", "B03"][:C]), "y": 5e6 - 10.0 * np.arange(H),
                "x": 4e5 + 10.0 * np.arange(W)},
        attrs={"crs": "EPSG:32631", "hvaeseg_schema_version": 1},
    )


def test_interpolation_of_one_pixel_by_hand():
    """Days 0, 10, 40, 50, 80: clear on days 10 and 50 only, two bands."""
    days = [0, 10, 40, 50, 80]
    clear = np.array([False, True, False, True, False])
    dn = np.zeros((5, 2, 1, 1), np.int64)
    dn[:, 0, 0, 0] = [9999, 1000, 9999, 3001, 9999]  # cloudy values are never read
    dn[:, 1, 0, 0] = [9999, 2000, 9999, 1000, 9999]
    cube = _hand_cube(dn, clear.reshape(5, 1, 1), days)
    out = inpaint_cube(cube, method="interpolation", patch_size=1, progress=False)
    _check_contract(cube, out, posterior=False)
    got = out["reflectance"].values[:, :, 0, 0]
    # day 40 lies 30/40 of the way from day 10 to day 50; before the first / after the last clear date: nearest
    b0 = [1000, 1000, round(1000 + 2001 * 30 / 40), 3001, 3001]
    b1 = [2000, 2000, round(2000 - 1000 * 30 / 40), 1000, 1000]
    assert got[:, 0].tolist() == b0 and got[:, 1].tolist() == b1
    assert out.attrs["inpaint_method"] == "interpolation" and out.attrs["inpaint_samples"] == 0


def test_interpolation_equals_temporal_linear_interpolation_with_overlapping_tiles():
    rng = np.random.default_rng(0)
    T, C, H, W = 6, 2, 5, 7
    days = [0, 3, 17, 18, 40, 95]
    dn = rng.integers(500, 6000, size=(T, C, H, W))
    valid = rng.random((T, H, W)) < 0.5
    valid[rng.integers(0, T, size=(H, W)), np.arange(H)[:, None], np.arange(W)] = True  # each pixel clear once
    cube = _hand_cube(dn, valid, days)
    out = inpaint_cube(cube, method="interpolation", patch_size=3, progress=False)  # tiles overlap
    _check_contract(cube, out, posterior=False)
    x = torch.from_numpy(dn.astype(np.float64))[None]
    ref = temporal_linear_interpolation(x, torch.from_numpy(valid)[None], torch.tensor(days, dtype=torch.float64))
    assert np.array_equal(out["reflectance"].values, np.rint(ref[0].numpy()).astype(np.uint16))


# --------------------------------------------------------------------------------------------- window_dates


@st.composite
def _windows(draw):
    n = draw(st.integers(1, 16))
    gaps = draw(st.lists(st.integers(1, 60), min_size=n - 1, max_size=n - 1))
    days = np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)
    times = np.datetime64("2021-01-01", "ns") + days * np.timedelta64(1, "D")
    clear = np.asarray(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]), min_size=n, max_size=n)))
    T = draw(st.integers(1, n))
    target = draw(st.integers(0, n - 1))
    return target, clear, times, T, days


@given(_windows())
def test_window_dates_properties(args):
    target, clear, times, T, days = args
    got = window_dates(target, clear, times, T, "season")
    assert target in got and len(got) == T and got == sorted(set(got))
    if T > 1:
        span = days[-1] - days[0]
        group = np.clip(np.floor((days - days[0]) / span * (T - 1)).astype(int), 0, T - 2)
        others = [i for i in range(len(days)) if i != target]
        if len({int(group[i]) for i in others}) == T - 1:  # every group non-empty: one date from each
            chosen = [i for i in got if i != target]
            assert sorted(int(group[i]) for i in chosen) == list(range(T - 1))
            for i in chosen:  # the clearest of its group
                assert clear[i] == max(clear[j] for j in others if group[j] == group[i])


@given(_windows())
def test_window_dates_nearest_by_brute_force(args):
    """Nearest rule: no unchosen date is a better candidate than a chosen one (brute force over pairs)."""
    target, clear, times, T, days = args
    got = window_dates(target, clear, times, T, "nearest")
    assert target in got and len(got) == T and got == sorted(set(got))
    ok = clear >= 0.5
    gap = np.abs(days - days[target])

    def better(i, j):  # i preferred over j
        if ok[i] != ok[j]:
            return bool(ok[i])
        if ok[i]:
            return (gap[i], -clear[i], i) < (gap[j], -clear[j], j)
        return (-clear[i], gap[i], i) < (-clear[j], gap[j], j)

    chosen = [i for i in got if i != target]
    left = [j for j in range(len(days)) if j != target and j not in chosen]
    assert not any(better(j, i) for i in chosen for j in left)


def test_window_dates_examples():
    times = np.datetime64("2021-01-15", "ns") + np.arange(12) * np.timedelta64(30, "D")
    clear = np.array([0.1, 0.9, 0.2, 0.9, 0.0, 0.3, 1.0, 0.5, 0.5, 0.2, 0.1, 0.0])
    # season: halves of the year; first half: dates 1 and 3 tie at 0.9, date 3 is closer to the target 5
    assert window_dates(5, clear, times, 3, "season") == [3, 5, 6]
    # nearest: among the half-clear dates, 6 is 30 days from 5; 3 and 7 are 60 days away, 3 is clearer
    assert window_dates(5, clear, times, 3) == [3, 5, 6]
    assert window_dates(5, clear, times, 4) == [3, 5, 6, 7]
    assert window_dates(0, clear, times, 1) == [0]
    with pytest.raises(ValueError, match="only 12"):
        window_dates(0, clear, times, 13)
    with pytest.raises(ValueError, match="nearest, season"):
        window_dates(0, clear, times, 2, "closest")
    # season: an empty group gives its place to the clearest remaining date
    times = np.datetime64("2021-01-01", "ns") + np.array([0, 1, 2, 3, 100]) * np.timedelta64(1, "D")
    assert window_dates(4, np.array([0.5, 0.9, 0.8, 0.1, 0.0]), times, 3, "season") == [1, 2, 4]
    # nearest: too few half-clear dates: the clearest of the rest complete the stack
    assert window_dates(4, np.array([0.3, 0.9, 0.1, 0.2, 0.0]), times, 3) == [0, 1, 4]


# --------------------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("cube") / "cube.zarr")
    write_cube(make_cube("tiny", seed=0, size=64, n_dates=4), path)
    return path


def _nothing_at(path) -> bool:
    parent, name = os.path.split(str(path))
    return not any(f.startswith(name) for f in os.listdir(parent))


def test_cli_fills_the_runs_cube(symmetric_run, tmp_path, capsys):
    out = tmp_path / "filled.zarr"
    assert main(["inpaint", symmetric_run, "--data", "synthetic:tiny", "--out", str(out), "--samples", "2"]) == 0
    text = capsys.readouterr().out
    assert "filled" in text and "2021-" in text and " s;" in text
    filled = open_cube(str(out))  # a valid cube
    _check_contract(make_cube("tiny", seed=0), filled.load(), posterior=True)
    assert filled.attrs["inpaint_run"] == symmetric_run and filled.attrs["inpaint_samples"] == 2
    # an existing --out is refused without --overwrite
    assert main(["inpaint", symmetric_run, "--out", str(out), "--samples", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_refuses_runs_without_a_generative_model_and_missing_runs(tmp_path, capsys):
    from hvaeseg.experiment import RunConfig

    sup = tmp_path / "sup"
    sup.mkdir()
    (sup / "config.json").write_text(RunConfig(method="supervised", labels=2, data="synthetic:tiny").to_json())
    out = tmp_path / "filled.zarr"
    assert main(["inpaint", str(sup), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "was trained with supervised, which has no generative model" in err and "--method interpolation" in err
    assert main(["inpaint", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run folder" in err
    assert main(["inpaint", "--data", "synthetic:tiny", "--out", str(out)]) == 2  # posterior needs a run
    assert "RUN is required" in capsys.readouterr().err
    assert _nothing_at(out)


def test_cli_interpolation_without_a_run_and_output_checks(store, tmp_path, capsys):
    out = tmp_path / "filled.zarr"
    base = ["inpaint", "--data", store, "--method", "interpolation"]
    assert main([*base, "--out", store]) == 2  # the input itself
    assert "is the input cube" in capsys.readouterr().err
    assert main([*base, "--out", str(out)]) == 0
    _check_contract(open_cube(store).load(), open_cube(str(out)).load(), posterior=False)
    assert main([*base, "--out", str(out)]) == 2
    assert main([*base, "--out", str(out), "--overwrite", "--patch-size", "16"]) == 0
    assert open_cube(str(out)).attrs["inpaint_patch_size"] == 16
    # the before/after quicklook
    png = tmp_path / "compare.png"
    assert main(["data", "quicklook", store, "--compare", str(out), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "quicklook", store, "--compare", str(out), "--date", "1", "-o", str(png)]) == 0
    assert main(["data", "quicklook", store, "--compare", store, "-o", str(png)]) == 2
    assert "hvaeseg inpaint" in capsys.readouterr().err


def test_a_crash_writes_nothing(store, tmp_path, monkeypatch):
    import hvaeseg.inpaint_cube as mod

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(mod, "temporal_linear_interpolation", boom)
    out = tmp_path / "filled.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        main(["inpaint", "--data", store, "--method", "interpolation", "--out", str(out)])
    assert _nothing_at(out)
    # and a failure while writing leaves nothing either
    monkeypatch.undo()
    filled = inpaint_cube(store, method="interpolation", patch_size=32, progress=False)
    monkeypatch.setattr(xr.Dataset, "to_zarr", boom)
    with pytest.raises(RuntimeError, match="killed"):
        write_filled(filled, out)
    assert _nothing_at(out)


def test_posterior_tile_holds_the_transfer_window():
    from hvaeseg.hierarchy.spec import TransferSpec
    from hvaeseg.inpaint_cube import posterior_tile

    assert posterior_tile(32, None, 512, 512) == 32  # no transfer: the run's patch
    assert posterior_tile(32, TransferSpec(radius=16), 512, 512) == 64
    assert posterior_tile(32, TransferSpec(radius=16), 48, 512) == 48  # within the cube
    assert posterior_tile(128, TransferSpec(radius=16), 512, 512) == 128  # never below the run's patch


@pytest.mark.slow
def test_cli_fills_a_transfer_run_at_its_larger_tile(tmp_path):
    """hvaeseg inpaint of a temporal run whose covariate borrows space fills at posterior_tile's side by default,
    and at --patch-size when given."""
    import json

    spec = {"num_classes": 7, "code_bits": 4, "temporal": True, "patch_size": 32, "layers": [],
            "image": {"bands": 10, "parents": ["s", "l", "doy", "interp"], "interp_dropout": 0.0,
                      "transfer": {"radius": 16, "stride": 8}},
            "network": {"encoder_widths": [8, 8, 8], "decoder_width": 8}}
    run = str(tmp_path / "run")
    assert main(["train", "--method", "symmetric", "--data", "synthetic:tiny", "--labels", "2", "--steps", "1",
                 "--dates", "2", "--patch-size", "32", "--block", "64", "--unlabelled-patches", "8", "--batch-size",
                 "2", "--val-every", "1", "--checkpoint-every", "1", "--options", json.dumps({"spec": spec}),
                 "--out", run]) == 0
    for extra, side in (([], 64), (["--patch-size", "32"], 32)):
        out = tmp_path / f"filled{side}.zarr"
        assert main(["inpaint", run, "--out", str(out), "--samples", "1", *extra]) == 0
        assert open_cube(str(out)).attrs["inpaint_patch_size"] == side


# --------------------------------------------------------------------------------------------- recalibration


def test_the_spread_factor_scales_the_std_and_nothing_else(cube):
    hvae = _hvae()
    plain = inpaint_cube(cube, hvae=hvae, patch_size=32, num_samples=3, seed=1, progress=False)
    wide = inpaint_cube(cube, hvae=hvae, patch_size=32, num_samples=3, seed=1, progress=False, spread_factor=1.5)
    assert np.array_equal(plain["reflectance"].values, wide["reflectance"].values)
    np.testing.assert_allclose(wide["std"].values, 1.5 * plain["std"].values, rtol=1e-6)
    assert plain.attrs["inpaint_spread_factor"] == 1.0 and wide.attrs["inpaint_spread_factor"] == 1.5
    for bad in (0.0, -2.0, float("inf")):
        with pytest.raises(ValueError, match="spread_factor"):
            inpaint_cube(cube, hvae=hvae, patch_size=32, progress=False, spread_factor=bad)
    with pytest.raises(ValueError, match="method='posterior'"):
        inpaint_cube(cube, method="interpolation", patch_size=32, progress=False, spread_factor=2.0)


@pytest.mark.parametrize("temporal", [False, True])
def test_cube_spread_factor_fits_on_hidden_clear_pixels_only(cube, temporal, monkeypatch):
    import hvaeseg.calibrate_cube as cc

    valid = cube["valid"].values  # dates 0-3 are 0%, 1%, 100% and 6% clear: one pair, (2, 3)
    calls = []
    inner = cc.posterior_inpaint

    def spy(hvae, x, v, k, **kw):
        calls.append((x.clone(), v.clone(), kw.get("date")))
        return inner(hvae, x, v, k, **kw)

    monkeypatch.setattr(cc, "posterior_inpaint", spy)
    hvae = _hvae(temporal=temporal)
    cal = cc.cube_spread_factor(cube, hvae=hvae, patch_size=32, dates=2 if temporal else 1, num_samples=4,
                                max_tiles=16, batch_size=3)
    hidden = valid[2] & ~valid[3]
    # every tile of the 64 x 64 cube that holds a hidden pixel is one item; each hidden pixel counts once per band
    tiles = sum(bool(hidden[y:y + 32, x:x + 32].any()) for y in (0, 32) for x in (0, 32))
    assert cal.tiles == tiles and cal.values == int(hidden.sum()) * BANDS
    assert cal.factor > 0 and np.isfinite(cal.factor) and 0 <= cal.coverage_before <= 1 and cal.level == 0.9
    assert "spread factor" in str(cal)
    # the model never saw a hidden value: the target date's input is 0 and invalid there
    for x, v, date in calls:
        target = (slice(None), 0) if date is None else (torch.arange(len(date)), date)
        xt, vt = (x, v) if not temporal else (x[target], v[target])
        assert not bool(vt.all())  # the pasted mask
        assert bool((xt * (~vt).unsqueeze(-3) == 0).all())
    monkeypatch.undo()
    again = cc.cube_spread_factor(cube, hvae=hvae, patch_size=32, dates=2 if temporal else 1, num_samples=4,
                                  max_tiles=16, batch_size=3)
    assert again == cal  # seeded


def test_cube_spread_factor_never_uses_the_hidden_pixels(cube, monkeypatch):
    import hvaeseg.calibrate_cube as cc

    valid = cube["valid"].values
    hide = np.zeros_like(valid)
    hide[2, :40] = True  # the top of the clear date: neither seen nor a calibration value
    hide[3] = True  # another date: no effect (date 3 is a donor and context, never a target)
    seen = []
    inner = cc.posterior_inpaint
    monkeypatch.setattr(cc, "posterior_inpaint", lambda h, x, v, k, **kw: seen.append(v.clone()) or inner(h, x, v, k,
                                                                                                           **kw))
    cal = cc.cube_spread_factor(cube, hvae=_hvae(), patch_size=32, num_samples=4, max_tiles=16, hide=hide)
    assert cal.values == int((valid[2] & ~valid[3] & ~hide[2]).sum()) * BANDS
    for v in seen:  # the top tiles' first 32 rows and the bottom tiles' first 8 are never shown
        assert not bool(v[:, :8].any())
    with pytest.raises(ValueError, match="hide"):
        cc.cube_spread_factor(cube, hvae=_hvae(), patch_size=32, num_samples=4, hide=hide[:2])


def test_cube_spread_factor_needs_a_calibration_pair(cube):
    from hvaeseg.calibrate_cube import cube_spread_factor

    clear = cube.assign(valid=cube["valid"] | True)
    with pytest.raises(ValueError, match="no calibration pair"):
        cube_spread_factor(clear, hvae=_hvae(), patch_size=32, num_samples=4)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        cube_spread_factor(cube, hvae=_hvae(), patch_size=32, num_samples=1)


def test_cli_recalibrates_the_spread(symmetric_run, store, tmp_path, capsys):
    out = tmp_path / "filled.zarr"
    assert main(["inpaint", symmetric_run, "--data", store, "--out", str(out), "--samples", "2", "--recalibrate",
                 "--calibration-samples", "4", "--calibration-tiles", "2"]) == 0
    text = capsys.readouterr().out
    assert "spread factor" in text and "filled" in text
    factor = open_cube(str(out)).attrs["inpaint_spread_factor"]
    assert factor > 0 and f"{factor:.3f}" in text
    assert main(["inpaint", "--method", "interpolation", "--data", store, "--out", str(tmp_path / "i.zarr"),
                 "--recalibrate"]) == 2
    assert "--recalibrate" in capsys.readouterr().err and _nothing_at(tmp_path / "i.zarr")
