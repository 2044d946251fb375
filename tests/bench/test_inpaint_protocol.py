"""The pure parts of ``bench/inpaint.py`` (the inpainting protocol) on a small hand-made cube: the mask-pasting
rule, the partly cloudy dates, the normalisation round trip (the loader's), that no model ever sees a hidden
value (a fake HVAE that records its input), the window of dates, the scores, the summary and its margins, the
figure. Nothing is trained here; the benchmark itself is checked by its smoke run (bench/README.md)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr

SCALE, OFFSET = 1e-4, -0.1
SECRET_DN = 60000  # the hidden pixels hold this: normalised it is far outside what a seen pixel gives


def _valid(T: int = 6, H: int = 8, W: int = 8) -> np.ndarray:
    """Valid shares by date: 1.0 (target), 0.5 (donor), 62/64 (target), 0.25 (neither), 0.75 (donor),
    58/64 = 0.906 (neither: under 95%, over 80%)."""
    v = np.ones((T, H, W), bool)
    v[1, :4] = False  # 0.5
    v[2, 0, :2] = False  # 0.969
    v[3, 2:] = False  # 0.25
    v[4, :, :2] = False  # 0.75
    v[5, 7, 2:] = False  # 0.906
    return v


def _dataset(valid: np.ndarray | None = None, secret: bool = False) -> xr.Dataset:
    valid = _valid() if valid is None else valid
    T, H, W = valid.shape
    rng = np.random.default_rng(0)
    clean = rng.integers(1500, 4000, size=(T, 3, H, W)).astype(np.uint16)
    refl = clean.copy()
    clouds = np.broadcast_to(~valid[:, None], refl.shape)
    refl[clouds] = 9000  # bright clouds over the invalid pixels
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), refl, {"scale_factor": SCALE, "add_offset": OFFSET}),
            "clean_reflectance": (("time", "band", "y", "x"), clean, {"scale_factor": SCALE, "add_offset": OFFSET}),
            "valid": (("time", "y", "x"), valid),
            "labels": (("y", "x"), (np.arange(H * W).reshape(H, W) % 3).astype(np.int16)),
        },
        coords={"time": np.array(["2020-01-05", "2020-02-01", "2020-03-10", "2020-04-02", "2020-05-20",
                                  "2020-07-01"], dtype="datetime64[ns]")[:T],
                "band": ["B02", "B03", "B04"], "y": np.arange(H, 0, -1) * 10.0, "x": np.arange(W) * 10.0},
    )
    return ds


def _cube(inpaint, ds=None, **kw):
    ds = _dataset(**kw) if ds is None else ds
    from hvaeseg.data.stats import compute_band_stats

    return inpaint.Cube.from_dataset(ds, "hand-made", "hand-made", compute_band_stats(ds))


# -- protocols ----------------------------------------------------------------------------------------------


def test_pasted_masks_follow_the_rule_and_the_seed(inpaint):
    valid = torch.from_numpy(_valid())
    donors_seen = set()
    for seed in range(20):
        tasks = inpaint.pasted_tasks(valid, seed)
        assert [t.target for t in tasks] == [0, 2]  # >= 95% valid
        for t in tasks:
            assert t.protocol == "pasted" and t.donor in (1, 4)  # 30-80% valid
            donors_seen.add(t.donor)
            assert torch.equal(t.valid_in, valid[t.target] & valid[t.donor])  # the donor's clouds pasted on
            assert torch.equal(t.scored, valid[t.target] & ~valid[t.donor])  # hidden, and was valid
            assert not bool((t.scored & t.valid_in).any())
            stack = t.valid_stack(valid)
            assert torch.equal(stack[t.target], t.valid_in)
            others = [d for d in range(6) if d != t.target]
            assert torch.equal(stack[others], valid[others])
        again = inpaint.pasted_tasks(valid, seed)
        assert [t.donor for t in again] == [t.donor for t in tasks]  # seeded
    assert donors_seen == {1, 4}


def test_protocols_say_why_they_are_skipped(inpaint):
    cube = _cube(inpaint)
    tasks, note = inpaint.protocol_tasks(cube, "pasted", 0)
    assert len(tasks) == 2 and note is None
    # no donor date (30-80% valid): nothing to paste
    v = _valid()
    v[1] = True
    v[4] = True
    tasks, note = inpaint.protocol_tasks(_cube(inpaint, valid=v), "pasted", 0)
    assert tasks == [] and "pasted protocol skipped" in note and "0 donor dates" in note
    # a real cube has no truth under its clouds
    ds = _dataset().drop_vars("clean_reflectance")
    tasks, note = inpaint.protocol_tasks(_cube(inpaint, ds=ds), "occluded", 0)
    assert tasks == [] and "clean_reflectance" in note


def test_occluded_protocol_scores_the_invalid_pixels_of_partly_cloudy_dates(inpaint):
    cube = _cube(inpaint)
    tasks, note = inpaint.protocol_tasks(cube, "occluded", 0)
    assert note is None
    assert [t.target for t in tasks] == [1, 3, 4, 5]  # strictly between 5% and 95% valid
    for t in tasks:
        assert torch.equal(t.valid_in, cube.valid[t.target]) and torch.equal(t.scored, ~cube.valid[t.target])
        # scored against the clean reflectance (the truth under the clouds), not the clouds
        truth = inpaint.task_truth(cube, t)
        want = torch.from_numpy(cube.clean_dn[t.target].astype(np.float64) * SCALE + OFFSET).float()
        assert torch.equal(truth, want)
    pasted, _ = inpaint.protocol_tasks(cube, "pasted", 0)
    want = torch.from_numpy(cube.dn[0].astype(np.float64) * SCALE + OFFSET).float()
    assert torch.equal(inpaint.task_truth(cube, pasted[0]), want)  # the observed reflectance


# -- normalisation --------------------------------------------------------------------------------------------


def test_normalisation_is_the_loaders_and_round_trips(inpaint):
    from hvaeseg.data.loader import PatchLoader
    from hvaeseg.data.sampler import PatchPlan
    from hvaeseg.data.stats import ensure_band_stats

    ds = _dataset()
    stats = ensure_band_stats(ds)
    cube = inpaint.Cube.from_dataset(ds, "hand-made", "hand-made")  # reads the stored statistics
    np.testing.assert_allclose(cube.mean, stats[0]) and np.testing.assert_allclose(cube.std, stats[1])
    plan = PatchPlan(sizes={"y": 4, "x": 4}, cube_shape={"time": 6, "y": 8, "x": 8}, y=[4], x=[2], t=[[3]],
                     split=[0], labelled=[False], group=[0])
    (batch,) = PatchLoader(ds, plan, batch_size=1, workers=0)
    assert torch.equal(cube.x[3, :, 4:8, 2:6], batch.x[0])  # bit for bit what the runs trained on
    assert torch.equal(cube.doy[3:4], batch.doy)
    refl = torch.from_numpy(cube.dn.astype(np.float64) * SCALE + OFFSET).float()
    torch.testing.assert_close(cube.denormalise(cube.x), refl, atol=2e-6, rtol=0)
    torch.testing.assert_close(cube.reflectance(), refl)
    std = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(cube.spread(std), std * torch.tensor(stats[1]).float().view(-1, 1, 1))


# -- no model sees a hidden value -----------------------------------------------------------------------------


class RecordingHVAE:
    """A fake HVAE: the guide records what it is given, the model's x is Normal(0, 1) (normalised), i.e. the
    decoder mean fills hidden pixels with the band means."""

    def __init__(self, bands: int):
        self.bands = bands
        self.calls: list[dict] = []
        # what posterior_inpaint(..., date=) reads of a temporal HVAE's spec (no latent layer, no interp covariate)
        self.spec = SimpleNamespace(temporal=True, per_date_order=(), interpolates=False)

    def guide(self, x, s=None, valid=None, *, doy=None, **_):
        self.calls.append({"x": x.clone(), "valid": valid.clone(), "s": None if s is None else s.clone(),
                           "doy": None if doy is None else doy.clone()})

    def model(self, x=None, s=None, valid=None, *, doy=None, shape=None):
        B, *lead = shape[:-2]
        loc = torch.zeros(B, *lead, self.bands, *shape[-2:])
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(loc.dim() - 1))


def _secret_cubes(inpaint):
    """``(cube, tasks)`` pairs whose hidden values (the real clouds and, for a pasted task, the pixels its donor's
    mask hides) hold :data:`SECRET_DN`; one pasted task per cube, since a target's pixels are legitimately seen
    when another target's stack takes that date. The band statistics are those of the cube without secrets."""
    from hvaeseg.data.stats import compute_band_stats

    ds = _dataset()
    stats = compute_band_stats(ds)
    valid = _valid()

    def with_secret(extra=None):
        dn = ds["reflectance"].values.copy()
        for t in range(len(valid)):
            dn[t][:, ~valid[t]] = SECRET_DN
        if extra is not None:
            dn[extra.target][:, extra.scored.numpy()] = SECRET_DN
        return inpaint.Cube.from_dataset(ds.assign(reflectance=ds["reflectance"].copy(data=dn)), "h", "h", stats)

    cube = with_secret()
    out = [(cube, inpaint.protocol_tasks(cube, "occluded", 0)[0])]
    for task in inpaint.protocol_tasks(cube, "pasted", 0)[0]:
        out.append((with_secret(task), [task]))
    return out


@pytest.mark.parametrize("dates,labels", [(1, False), (3, False), (3, True)])
def test_the_model_never_sees_a_hidden_value(inpaint, dates, labels):
    for cube, tasks in _secret_cubes(inpaint):
        secret = float(cube.normalise(np.full((3, 1, 1), SECRET_DN, np.uint16)).min())
        assert secret > 20  # far above any seen value
        fake = RecordingHVAE(3)
        fills = inpaint.hvae_fills(fake, cube, tasks, patch=4, dates=dates, labels=labels, samples=2,
                                   calibration_samples=3, levels=(0.5, 0.9), batch_size=3)
        assert fake.calls and len(fake.calls) % 5 == 0  # a guide pass per sample: 2 for the mean, 3 more
        for call in fake.calls:
            x, v = call["x"], call["valid"]
            assert x.shape[-3] == 3 and (x.dim() == 4) == (dates == 1)
            hidden = ~v.unsqueeze(-3).expand_as(x)
            assert bool((x[hidden] == 0).all())  # x * valid
            assert float(x.max()) < secret / 2  # no secret anywhere
            assert (call["s"] is not None) == labels
            assert call["doy"] is not None and call["doy"].shape == x.shape[:-3]
        for task, fill in zip(tasks, fills):
            # the scored pixels are filled with the decoder mean (the band means), the calibration counts them
            m = task.scored
            want = torch.tensor(cube.mean).float()[:, None].expand(3, int(m.sum()))
            torch.testing.assert_close(fill.mean[:, m], want)
            assert fill.counted == int(m.sum()) * 3 and set(fill.inside) == {0.5, 0.9}
            assert bool((fill.std[:, m] > 0).all()) and bool((fill.std[:, task.valid_in] == 0).all())


def test_overlapping_tiles_count_each_pixel_once(inpaint):
    cube = _cube(inpaint)
    assert inpaint.tile_starts(8, 3) == [0, 3, 5]  # the last tile overlaps
    tasks, _ = inpaint.protocol_tasks(cube, "occluded", 0)
    fills = inpaint.hvae_fills(RecordingHVAE(3), cube, tasks, patch=3, samples=1, calibration_samples=4,
                               levels=(0.9,))
    for task, fill in zip(tasks, fills):
        assert fill.counted == int(task.scored.sum()) * 3
        torch.testing.assert_close(fill.mean[:, task.scored],
                                   torch.tensor(cube.mean).float()[:, None].expand(3, int(task.scored.sum())))
    row = inpaint.score(cube, tasks, fills)
    assert 0 <= row["coverage"]["0.9"] <= 1 and row["error_vs_spread"]["count"]


def test_interpolation_never_sees_a_hidden_value(inpaint, monkeypatch):
    seen = []
    real = inpaint.temporal_linear_interpolation

    def recording(x, valid, times=None):
        seen.append((x.clone(), valid.clone()))
        return real(x, valid, times)

    monkeypatch.setattr(inpaint, "temporal_linear_interpolation", recording)
    for cube, tasks in _secret_cubes(inpaint):
        for task, fill in zip(tasks, inpaint.interpolation_fills(cube, tasks)):
            assert bool((fill.mean[:, task.scored] < 1.0).all())  # a secret would read 5.9
    assert seen
    for x, v in seen:
        assert bool((x[~v.unsqueeze(2).expand_as(x)] == 0).all())


def test_interpolation_uses_the_real_day_gaps_per_target(inpaint):
    cube = _cube(inpaint)
    tasks, _ = inpaint.protocol_tasks(cube, "pasted", 3)
    fills = inpaint.interpolation_fills(cube, tasks)
    refl = cube.reflectance()
    days = cube.days
    t = tasks[1]  # target 2 (2020-03-10)
    assert t.target == 2
    y, x = [int(i) for i in torch.nonzero(t.scored)[-1]]
    prev = max(d for d in range(2) if cube.valid[d, y, x])
    nxt = min(d for d in range(3, 6) if cube.valid[d, y, x])
    w = (days[2] - days[prev]) / (days[nxt] - days[prev])
    want = refl[prev, :, y, x] + float(w) * (refl[nxt, :, y, x] - refl[prev, :, y, x])
    torch.testing.assert_close(fills[1].mean[:, y, x], want)


# -- windows, tiles, scores -----------------------------------------------------------------------------------


def test_stacks_take_the_packages_window_of_dates(inpaint):
    """The temporal methods stack each target with the dates of hvaeseg.inpaint_cube.window_dates (the rule
    `hvaeseg inpaint` uses), chosen per tile on the clear shares with the pasted mask."""
    import hvaeseg.inpaint_cube

    assert inpaint.window_dates is hvaeseg.inpaint_cube.window_dates
    cube = _cube(inpaint)
    tasks, _ = inpaint.protocol_tasks(cube, "pasted", 0)
    fake = RecordingHVAE(3)
    inpaint.hvae_fills(fake, cube, tasks[:1], patch=8, dates=3, samples=1, calibration_samples=0)
    stack = tasks[0].valid_stack(cube.valid)
    want = inpaint.window_dates(tasks[0].target, stack.double().mean((1, 2)).numpy(), cube.days, 3)
    assert torch.equal(fake.calls[0]["doy"][0], cube.doy[want])
    assert torch.equal(fake.calls[0]["valid"][0], stack[want])


def test_window_interpolation_fills_from_the_stacks_dates_only(inpaint):
    """window-interpolation: the target's hidden pixels interpolated (real day gaps) between the nearest clear
    dates *of its window*, checked pixel by pixel; no hidden value is read."""
    for cube, tasks in _secret_cubes(inpaint):
        fills = inpaint.hvae_fills(None, cube, tasks, patch=8, dates=3, calibration_samples=0)
        refl = cube.reflectance()
        for task, fill in zip(tasks, fills):
            assert bool((fill.mean[:, task.scored] < 1.0).all())  # a secret would read 5.9
            stack = task.valid_stack(cube.valid)
            ds = inpaint.window_dates(task.target, stack.double().mean((1, 2)).numpy(), cube.days, 3)
            for y, x in torch.nonzero(task.scored).tolist():
                before = [d for d in ds if d < task.target and stack[d, y, x]]
                after = [d for d in ds if d > task.target and stack[d, y, x]]
                if before and after:
                    p, n = before[-1], after[0]
                    w = (cube.days[task.target] - cube.days[p]) / (cube.days[n] - cube.days[p])
                    want = refl[p, :, y, x] + float(w) * (refl[n, :, y, x] - refl[p, :, y, x])
                elif before or after:
                    want = refl[(before or after)[-1 if before else 0], :, y, x]
                else:
                    continue
                torch.testing.assert_close(fill.mean[:, y, x], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="T >= 2"):
        inpaint.hvae_fills(None, cube, tasks, patch=8, dates=1, calibration_samples=0)


def test_window_transfer_is_the_transfer_covariate_of_the_window_stack(inpaint):
    """window-transfer: each tile's target date filled with the interp covariate's bands with image.transfer set,
    computed on the window stack the models see (checked on one tile of each task); no hidden value is read."""
    from hvaeseg.hierarchy.interpolation import interpolation_input
    from hvaeseg.hierarchy.spec import TransferSpec

    transfer = TransferSpec(radius=3, stride=1, bandwidth=0.5)
    for cube, tasks in _secret_cubes(inpaint):
        fills = inpaint.hvae_fills(None, cube, tasks, patch=8, dates=3, calibration_samples=0, transfer=transfer)
        plain = inpaint.hvae_fills(None, cube, tasks, patch=8, dates=3, calibration_samples=0)
        for task, fill, base in zip(tasks, fills, plain):
            assert bool((fill.mean[:, task.scored] < 1.0).all())  # a secret would read 5.9
            stack = task.valid_stack(cube.valid)
            ds = inpaint.window_dates(task.target, stack.double().mean((1, 2)).numpy(), cube.days, 3)
            x = cube.x[ds][None] * stack[ds][None, :, None]
            want = interpolation_input(x, stack[ds][None], cube.doy[ds][None], transfer=transfer)
            want = cube.denormalise(want[0, ds.index(task.target), : len(cube.bands)])
            torch.testing.assert_close(fill.mean[:, task.scored], want[:, task.scored], rtol=1e-4, atol=1e-5)
            assert not torch.allclose(fill.mean[:, task.scored], base.mean[:, task.scored])  # it borrows


def test_tile_starts(inpaint):
    assert inpaint.tile_starts(64, 32) == [0, 32]
    assert inpaint.tile_starts(70, 32) == [0, 32, 38]
    with pytest.raises(ValueError, match="patch size"):
        inpaint.tile_starts(16, 32)


def test_score_judges_the_scored_pixels_only(inpaint):
    cube = _cube(inpaint)
    tasks, _ = inpaint.protocol_tasks(cube, "pasted", 0)
    truths = [inpaint.task_truth(cube, t) for t in tasks]
    noisy = [inpaint.Fill(tr + 0.01 * torch.randn_like(tr)) for tr in truths]
    garbage = [inpaint.Fill(torch.where(t.scored, f.mean, torch.full_like(f.mean, 7.0))) for t, f in zip(tasks, noisy)]
    a, b = inpaint.score(cube, tasks, noisy), inpaint.score(cube, tasks, garbage)
    for k in ("mae", "rmse", "psnr", "ssim", "spectral_angle_deg"):
        assert a[k] == pytest.approx(b[k])
    assert a["scored_pixels"] == sum(int(t.scored.sum()) for t in tasks)
    assert set(a["rmse_per_band"]) == {"B02", "B03", "B04"}
    assert "coverage" not in a  # no samples, no calibration


def test_missing_store_names_the_ingest_command(inpaint, tmp_path):
    with pytest.raises(ValueError, match="hvaeseg data ingest"):
        inpaint.check_cube_spec(str(tmp_path / "wc.zarr"))
    inpaint.check_cube_spec("synthetic:tiny")
    with pytest.raises(SystemExit):
        inpaint.parse_args(["--cubes", str(tmp_path / "wc.zarr")])


# -- summary and figure ---------------------------------------------------------------------------------------


def _row(cube, protocol, method, seed, psnr, mae, cov=None):
    return {"cube": cube, "protocol": protocol, "method": method, "seed": seed, "psnr": psnr, "mae": mae,
            "rmse": 2 * mae, "ssim": 0.9, "spectral_angle_deg": 3.0, **({"coverage": cov} if cov else {})}


def _rows():
    rows = []
    for seed, (pi, ps, pt) in enumerate([(30.0, 28.0, 33.0), (30.0, 29.0, 31.0), (30.0, 30.0, 32.0)]):
        rows.append(_row("synthetic:tiny", "pasted", "interpolation", seed, pi, 0.02))
        cov = {"0.8": 0.7 + 0.01 * seed, "0.9": 0.8}
        rows.append(_row("synthetic:tiny", "pasted", "single-date", seed, ps, 0.03, cov))
        rows.append(_row("synthetic:tiny", "pasted", "temporal", seed, pt, 0.01, {"0.8": 0.8, "0.9": 0.9}))
    rows.append(_row("wc.zarr", "pasted", "interpolation", 0, 25.0, 0.03))
    rows.append(_row("wc.zarr", "pasted", "temporal", 0, 26.5, 0.02, {"0.8": 0.75, "0.9": 0.85}))
    rows.append(_row("wc.zarr", "pasted", "temporal", 1, 27.0, 0.02, {"0.8": 0.75, "0.9": 0.85}))  # no reference
    return rows


def test_summary_and_margins_over_interpolation(inpaint):
    import statistics

    summary = inpaint.summarise(_rows())
    by = {(e["cube"], e["method"]): e for e in summary}
    e = by[("synthetic:tiny", "single-date")]
    assert e["seeds"] == 3 and e["psnr"] == pytest.approx(29.0) and e["psnr_sd"] == pytest.approx(1.0)
    assert e["psnr_margin"] == pytest.approx(-1.0) and e["psnr_margin_sd"] == pytest.approx(1.0)
    assert e["coverage"]["0.8"] == pytest.approx(0.71) and e["coverage_sd"]["0.8"] == pytest.approx(0.01)
    t = by[("synthetic:tiny", "temporal")]
    assert t["psnr_margin"] == pytest.approx(2.0)
    assert t["psnr_margin_sd"] == pytest.approx(statistics.stdev([3.0, 1.0, 2.0]))
    i = by[("synthetic:tiny", "interpolation")]
    assert "psnr_margin" not in i and "coverage" not in i and i["psnr_sd"] == 0.0
    w = by[("wc.zarr", "temporal")]  # the margin pairs seeds: seed 1 has no interpolation row
    assert w["seeds"] == 2 and w["psnr_margin"] == pytest.approx(1.5) and w["psnr_margin_sd"] == 0.0
    assert [e["method"] for e in summary if e["cube"] == "synthetic:tiny"] == ["interpolation", "single-date",
                                                                                 "temporal"]
    text = inpaint.table(summary)
    assert "+2.00" in text and "-1.00" in text


def test_figure_from_hand_made_rows(inpaint, tmp_path):
    summary = inpaint.summarise(_rows())
    for e in summary:
        if "coverage" in e:
            e["coverage"] = {f"{a:g}": min(1.0, a - 0.05) for a in inpaint.LEVELS}
    png = inpaint.plot_report({"summary": summary, "title": "test"}, tmp_path / "f.png")
    assert png.stat().st_size > 1000


def test_inference_patch_is_checked_and_optional(inpaint):
    assert inpaint.parse_args([]).inference_patch is None  # each run's own patch size
    assert inpaint.parse_args(["--inference-patch", "64"]).inference_patch == 64
    with pytest.raises(SystemExit):
        inpaint.parse_args(["--inference-patch", "0"])


@pytest.mark.parametrize("protocol", ["pasted", "occluded"])
def test_recalibration_fits_on_unscored_values_and_scales_the_spread(inpaint, monkeypatch, protocol):
    import hvaeseg.calibrate_cube as cc

    cube = _cube(inpaint)
    tasks, _ = inpaint.protocol_tasks(cube, protocol, 0)
    args = inpaint.parse_args(["--recalibrate", "--calibration-samples", "8", "--calibration-tiles", "5"])
    asked = {}

    def fitted(source, **kw):
        asked.update(kw, source=source)
        return cc.SpreadCalibration(1.7, kw["level"], 120, 5, 0.8)

    monkeypatch.setattr(cc, "cube_spread_factor", fitted)
    recal = inpaint.spread_calibration("model", cube, tasks, seed=2, patch=4, dates=3, args=args)
    assert recal == {"spread_factor": 1.7, "calibration_values": 120, "calibration_tiles": 5,
                     "calibration_coverage_raw": 0.8}
    # the library's fit (hvaeseg inpaint --recalibrate's), on the cube read, on the protocol's kind of masks, with the
    # scored pixels hidden on their dates and nowhere else
    assert asked["source"] is cube.source and asked["hvae"] == "model" and asked["level"] == 0.9
    assert asked["donor_range"] == (inpaint.DONOR_VALID if protocol == "pasted" else inpaint.PARTLY)
    assert asked["min_target"] == inpaint.TARGET_MIN_VALID and asked["seed"] == 2 + inpaint.CALIBRATION_SEED_OFFSET
    assert (asked["num_samples"], asked["max_tiles"], asked["patch_size"], asked["dates"]) == (8, 5, 4, 3)
    want = np.zeros(cube.valid.shape, bool)
    for task in tasks:
        want[task.target] |= task.scored.numpy()
    assert want.any() and np.array_equal(asked["hide"], want)
    # the factor scales the spread about the same mean, and the unscaled coverage is kept
    fills = {}
    for factor in (1.0, 1.7):
        pyro.set_rng_seed(1)
        fills[factor] = inpaint.hvae_fills(RecordingHVAE(3), cube, tasks, patch=4, dates=3, samples=1,
                                           calibration_samples=8, levels=(0.5, 0.9), spread_factor=factor)
    for plain, scaled in zip(fills[1.0], fills[1.7]):
        torch.testing.assert_close(scaled.std, 1.7 * plain.std)
        torch.testing.assert_close(scaled.mean, plain.mean)
        assert scaled.inside_raw == pytest.approx(plain.inside) and not plain.inside_raw
        assert all(scaled.inside[a] >= plain.inside[a] for a in plain.inside)  # wider intervals hold more
    row = inpaint.score(cube, tasks, fills[1.7])
    assert set(row["coverage_raw"]) == set(row["coverage"]) == {"0.5", "0.9"}


def test_recalibration_needs_calibration_samples(inpaint):
    with pytest.raises(SystemExit):
        inpaint.parse_args(["--recalibrate", "--calibration-samples", "0"])
    with pytest.raises(SystemExit):
        inpaint.parse_args(["--calibration-tiles", "0"])

