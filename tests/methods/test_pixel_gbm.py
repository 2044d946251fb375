"""The per-pixel LightGBM baseline: features, fitting, state, and whole runs through the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.data.loader import PatchBatch
from hvaeseg.methods.base import FittedMethod
from hvaeseg.methods.pixel_gbm import (
    PixelGBMConfig,
    PixelGBMMethod,
    _lightgbm,
    feature_names,
    pixel_features,
)

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
#: two well separated spectra (reflectance): vegetation-like and soil-like
SPECTRA = np.array([[0.03, 0.06, 0.04, 0.45, 0.20, 0.10],
                    [0.12, 0.15, 0.20, 0.25, 0.35, 0.30]])
FAST = dict(max_trees=60, early_stopping_rounds=10, min_child_samples=5, threads=1)


def toy_batch(B=4, H=8, W=8, classes=(0, 1), seed=0, noise=0.01, T=None, invalid=0.0) -> PatchBatch:
    """Reflectance patches whose pixels take the spectrum of their class plus noise (x is reflectance)."""
    g = np.random.default_rng(seed)
    labels = g.choice(np.asarray(classes), size=(B, H, W))
    dates = 1 if T is None else T
    x = SPECTRA[labels % len(SPECTRA)][:, None] + noise * g.standard_normal((B, dates, H, W, len(BANDS)))
    x = x.transpose(0, 1, 4, 2, 3)  # (B, T, C, H, W)
    valid = g.random((B, dates, H, W)) >= invalid
    x, valid = torch.tensor(x, dtype=torch.float32), torch.from_numpy(valid)
    doy = torch.from_numpy(g.integers(1, 366, size=(B, dates))).float()
    if T is None:
        x, valid, doy = x[:, 0], valid[:, 0], doy[:, 0]
    return PatchBatch(x, valid, torch.from_numpy(labels).long(), doy)


def fitted(num_classes=2, batches=None, val=None, **options) -> PixelGBMMethod:
    method = PixelGBMMethod(num_classes, BANDS, PixelGBMConfig(**{**FAST, **options}), seed=0)
    method.fit(batches or [toy_batch(seed=1)], val if val is not None else [toy_batch(seed=2)])
    return method


# --------------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------------


@settings(max_examples=20)
@given(B=st.integers(1, 3), T=st.one_of(st.none(), st.integers(1, 3)), H=st.integers(1, 5), W=st.integers(1, 5),
       bands=st.lists(st.sampled_from(BANDS), min_size=1, max_size=6, unique=True), indices=st.booleans(),
       seed=st.integers(0, 2**16))
def test_features_shape_and_nan_exactly_where_invalid(B, T, H, W, bands, indices, seed):
    g = np.random.default_rng(seed)
    dates = 1 if T is None else T
    shape = (B, dates, len(bands), H, W)
    x = torch.tensor(g.uniform(0.01, 1.0, shape), dtype=torch.float32)
    valid = torch.from_numpy(g.random((B, dates, H, W)) < 0.6)
    if T is None:
        x, valid = x[:, 0], valid[:, 0]
    feats = pixel_features(x, valid, bands, indices=indices)
    names = feature_names(bands, dates, indices=indices)
    assert feats.dtype == np.float32 and feats.shape == (B * H * W, len(names))
    per_date = len(names) // dates
    blocks = feats.reshape(B, H, W, dates, per_date)
    invalid = ~valid.numpy().reshape(B, dates, H, W).transpose(0, 2, 3, 1)  # (B, H, W, T)
    assert np.isnan(blocks[invalid]).all()
    assert np.isfinite(blocks[~invalid]).all()  # positive reflectance: every index is defined


def test_index_values_from_known_reflectance():
    refl = np.array([0.05, 0.08, 0.10, 0.40, 0.20, 0.15])
    mean, std = np.array([0.1, 0.1, 0.1, 0.3, 0.2, 0.2]), np.array([0.05, 0.05, 0.06, 0.1, 0.08, 0.07])
    x = torch.tensor((refl - mean) / std, dtype=torch.float32).view(1, 6, 1, 1)  # as the loader normalises
    valid = torch.ones(1, 1, 1, dtype=torch.bool)
    feats = pixel_features(x, valid, BANDS, mean, std)[0]
    names = feature_names(BANDS)
    assert names == [f"t0_{b}" for b in BANDS] + ["t0_ndvi", "t0_ndwi", "t0_ndbi", "t0_brightness"]
    got = dict(zip(names, feats.astype(np.float64)))
    expected = {"t0_ndvi": (0.40 - 0.10) / (0.40 + 0.10), "t0_ndwi": (0.08 - 0.40) / (0.08 + 0.40),
                "t0_ndbi": (0.20 - 0.40) / (0.20 + 0.40), "t0_brightness": refl.mean(),
                **{f"t0_{b}": r for b, r in zip(BANDS, refl)}}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    # an index whose bands the cube lacks is skipped: no B11, no NDBI
    no_swir = [b for b in BANDS if b != "B11"]
    keep = [i for i, b in enumerate(BANDS) if b != "B11"]
    feats = pixel_features(x[:, keep], valid, no_swir, mean[keep], std[keep])[0]
    names = feature_names(no_swir)
    assert "t0_ndbi" not in names and len(names) == feats.shape[0] == 5 + 3
    assert dict(zip(names, feats))["t0_ndvi"] == pytest.approx(0.6, abs=1e-6)
    # without indices: the bands only
    assert pixel_features(x, valid, BANDS, mean, std, indices=False).shape == (1, 6)


def test_feature_errors_are_clear():
    x, valid = torch.zeros(1, 6, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="band_names"):
        pixel_features(x, valid, BANDS[:5])
    with pytest.raises(ValueError, match="valid"):
        pixel_features(x, torch.ones(1, 3, 2, dtype=torch.bool), BANDS)


@pytest.mark.parametrize("T", [None, 2])
def test_predictions_reshape_back_to_their_pixels(T):
    """A pixel's probability row is the booster's prediction for that pixel's own feature row."""
    method = fitted(3, [toy_batch(classes=(0, 1, 2), seed=1, noise=0.1, T=T, invalid=0.2)], val=[])
    batch = toy_batch(B=2, H=5, W=7, classes=(0, 1, 2), seed=3, noise=0.1, T=T, invalid=0.2)
    proba = method.predict_proba(batch.x, batch.valid, batch.doy)
    assert proba.shape == (2, 3, 5, 7) and proba.dtype == torch.float32
    feats = method.features(batch.x, batch.valid, batch.doy)
    for b, y, x in [(0, 0, 0), (0, 4, 6), (1, 2, 3), (1, 0, 6), (1, 4, 0)]:
        row = method.booster.predict(feats[[b * 5 * 7 + y * 7 + x]])[0]
        np.testing.assert_allclose(proba[b, :, y, x].numpy(), row, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------


def test_separable_toy_problem_is_learned_and_absent_classes_keep_their_channels():
    method = fitted(4, [toy_batch(seed=s) for s in (1, 2)], [toy_batch(seed=3)])  # classes 2 and 3 never seen
    assert isinstance(method, FittedMethod) and method.stats["classes_present"] == [0, 1]
    test = toy_batch(B=4, seed=4)
    proba = method.predict_proba(test.x, test.valid, test.doy)
    assert proba.shape == (4, 4, 8, 8)
    torch.testing.assert_close(proba.sum(1), torch.ones(4, 8, 8))
    accuracy = (proba.argmax(1) == test.labels).float().mean().item()
    assert accuracy >= 0.99
    assert proba[:, 2:].max().item() < 0.05
    assert method.stats["train_rows"] == method.stats["train_pixels"] == 2 * 4 * 8 * 8
    assert 1 <= method.stats["iterations"] <= method.stats["rounds_run"] <= FAST["max_trees"]
    assert len(method.eval_curve) == method.stats["rounds_run"]


def test_void_pixels_are_left_out_and_invalid_pixels_kept():
    batch = toy_batch(seed=1, invalid=0.3)
    labels = batch.labels.clone()
    labels[:, :2] = -1
    method = fitted(2, [batch._replace(labels=labels)])
    assert method.stats["train_pixels"] == int((labels >= 0).sum())  # invalid pixels count, void ones do not


def test_a_single_class_gives_a_constant_prediction():
    method = fitted(3, [toy_batch(classes=(1,), seed=1)])
    assert method.booster is None and method.constant_class == 1
    test = toy_batch(B=2, seed=2)
    proba = method.predict_proba(test.x, test.valid, test.doy)
    assert proba.shape == (2, 3, 8, 8) and bool((proba[:, 1] == 1).all()) and float(proba.sum()) == 2 * 8 * 8


def test_subsampled_pixels_and_missing_labels():
    method = fitted(2, [toy_batch(seed=1), toy_batch(seed=2)], max_train_pixels=100, max_val_pixels=50)
    assert method.stats["train_pixels"] == 2 * 256 and method.stats["train_rows"] == 100
    assert method.stats["val_rows"] == 50
    again = fitted(2, [toy_batch(seed=1), toy_batch(seed=2)], max_train_pixels=100, max_val_pixels=50)
    assert again.booster.model_to_string() == method.booster.model_to_string()  # seeded
    nothing = toy_batch(seed=1)
    with pytest.raises(ValueError, match="no labelled"):
        fitted(2, [nothing._replace(labels=torch.full_like(nothing.labels, -1))])
    with pytest.raises(RuntimeError, match="not fitted"):
        PixelGBMMethod(2, BANDS).predict_proba(nothing.x, nothing.valid, nothing.doy)


def test_state_round_trip_through_torch_save(tmp_path):
    method = fitted(3, [toy_batch(classes=(0, 1, 2), seed=1, noise=0.1)])
    torch.save({"method": method.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["method"]
    fresh = PixelGBMMethod(3, BANDS, PixelGBMConfig(**FAST))
    fresh.load_state_dict(state)
    test = toy_batch(classes=(0, 1, 2), seed=5, noise=0.1)
    assert torch.equal(
        fresh.predict_proba(test.x, test.valid, test.doy), method.predict_proba(test.x, test.valid, test.doy)
    )
    assert fresh.stats == method.stats
    with pytest.raises(ValueError, match="bands"):
        PixelGBMMethod(3, BANDS[::-1]).load_state_dict(state)


@pytest.mark.parametrize(("options", "message"), [
    ({"num_leaves": 1}, "num_leaves: expected an integer >= 2, got 1"),
    ({"num_leaves": 3.5}, "num_leaves: expected an integer"),
    ({"learning_rate": 0}, "learning_rate: expected a number > 0"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"max_trees": 0}, "max_trees: expected an integer >= 1"),
    ({"early_stopping_rounds": 0}, "early_stopping_rounds"),
    ({"min_child_samples": 0}, "min_child_samples"),
    ({"feature_fraction": 1.5}, r"feature_fraction: expected a fraction in \(0, 1\]"),
    ({"bagging_fraction": 0}, "bagging_fraction: expected a number > 0"),
    ({"lambda_l2": -1}, "lambda_l2: expected a number >= 0"),
    ({"indices": "yes"}, "indices: expected true or false"),
    ({"max_val_pixels": 0}, "max_val_pixels"),
    ({"max_train_pixels": 0}, "max_train_pixels: expected an integer >= 1 or None"),
    ({"threads": True}, "threads"),
])
def test_bad_config_values_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        PixelGBMConfig(**options)


def test_missing_lightgbm_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(ImportError, match="pip install lightgbm"):
        _lightgbm()


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------

#: the tiny synthetic cube cut into small blocks, so that the training blocks see most classes
TINY_ARGS = ["--data", "synthetic:tiny", "--labels", "8", "--patch-size", "16", "--block", "32", "--batch-size", "8"]


def test_train_evaluate_predict_through_the_cli(tmp_path, capsys):
    from hvaeseg.cli import main
    from hvaeseg.experiment import RunConfig, prepare_data

    run = tmp_path / "run"
    assert main(["train", "--method", "pixel-gbm", *TINY_ARGS, "--out", str(run), "--evaluate"]) == 0
    assert "boosting rounds" in capsys.readouterr().out
    for name in ("config.json", "plan_train.json", "plan_eval.json", "checkpoint.pt", "best.pt", "history.json"):
        assert (run / name).exists(), name
    history = json.loads((run / "history.json").read_text())
    best = history["best_step"]
    assert best >= 1 and history["train_seconds"] > 0
    assert [v["step"] for v in history["validation"]] == list(range(1, len(history["validation"]) + 1))
    assert history["validation"][best - 1]["mean_iou"] == history["best_score"]
    assert torch.load(run / "best.pt", weights_only=True)["step"] == best

    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    cm = np.asarray(result["confusion_matrix"])
    majority = cm.sum(1).max() / cm.sum()
    assert result["accuracy"] > majority and result["mean_iou"] > 0

    pred_path = tmp_path / "pred.zarr"
    assert main(["predict", str(run), "--out", str(pred_path)]) == 0
    pred = xr.open_zarr(pred_path, chunks=None)
    cube = prepare_data(RunConfig(method="pixel-gbm", data="synthetic:tiny", labels=8, patch_size=16, block=32)).cube
    assert pred["class_map"].shape == (128, 128)
    np.testing.assert_array_equal(pred["x"].values, cube["x"].values)
    np.testing.assert_allclose(pred["probability"].sum("class").values, 1.0, atol=1e-5)


def test_the_fit_uses_exactly_the_labelled_pixels_of_the_plan(tmp_path):
    from hvaeseg.data.sampler import PatchPlan
    from hvaeseg.data.synthetic import make_cube
    from hvaeseg.experiment import RunConfig, train_run

    config = RunConfig(method="pixel-gbm", data="synthetic:tiny", labels=3, patch_size=16, block=32, batch_size=8,
                       options={"max_trees": 20, "threads": 1})
    result = train_run(config, tmp_path / "run")
    plan = PatchPlan.load(tmp_path / "run" / "plan_train.json").select(labelled=True)
    truth = make_cube("tiny", seed=0)["labels"].values
    expected = sum(int((truth[y:y + 16, x:x + 16] >= 0).sum()) for y, x in zip(plan.y, plan.x))
    assert len(plan) > 3  # a patch per qualifying date of each labelled location
    assert result.stats["train_pixels"] == result.stats["train_rows"] == expected
    assert result.step == result.history.best_step == result.stats["iterations"]
    # a finished fit is read back, not repeated
    again = train_run(config, tmp_path / "run")
    assert again.step == result.step and again.history.best_score == result.history.best_score


def test_registry_and_configs():
    from hvaeseg.commands.train import METHOD_NAMES
    from hvaeseg.experiment import RunConfig
    from hvaeseg.methods import METHODS, is_fitted, method_config

    assert "pixel-gbm" in METHOD_NAMES and tuple(METHOD_NAMES) == tuple(METHODS)
    assert is_fitted("pixel-gbm") and not is_fitted("supervised")
    assert method_config("pixel-gbm", {"indices": False}) == PixelGBMConfig(indices=False)
    with pytest.raises(ValueError, match="needs labelled locations"):
        RunConfig(method="pixel-gbm", labels=0)


# --------------------------------------------------------------------------------------------------
# day of year
# --------------------------------------------------------------------------------------------------


def date_batch(doys, H=2, W=2, seed=0, invalid=0.0) -> PatchBatch:
    """Patches that all share one spectrum (plus noise) and whose class is the season only: 1 before day 180."""
    g = np.random.default_rng(seed)
    doys = np.asarray(doys, dtype=np.float64)
    B = len(doys)
    x = SPECTRA[0][None, :, None, None] + 0.01 * g.standard_normal((B, len(BANDS), H, W))
    labels = np.broadcast_to((doys < 180).astype(np.int64)[:, None, None], (B, H, W)).copy()
    valid = g.random((B, H, W)) >= invalid
    return PatchBatch(torch.tensor(x, dtype=torch.float32), torch.from_numpy(valid), torch.from_numpy(labels),
                      torch.tensor(doys, dtype=torch.float32))


def test_day_of_year_feature_columns():
    names = feature_names(BANDS, 2, day_of_year=True)
    per_date = feature_names(BANDS) + [f"t0_doy{i}" for i in range(4)]
    assert names == per_date + [n.replace("t0_", "t1_") for n in per_date]
    batch = date_batch([40.0, 300.0], invalid=0.5)
    feats = pixel_features(batch.x, batch.valid, BANDS, doy=batch.doy)
    assert feats.shape == (2 * 2 * 2, len(per_date))
    doy_cols = feats[:, -4:].reshape(2, 4, 4)  # (patch, pixel, feature)
    from hvaeseg.nets.covariates import doy_features

    want = doy_features(batch.doy.double()).numpy().astype(np.float32)
    np.testing.assert_allclose(doy_cols, np.broadcast_to(want[:, None], (2, 4, 4)), rtol=1e-6)
    invalid = ~batch.valid.numpy().reshape(-1)
    assert invalid.any() and np.isnan(feats[invalid, :-4]).all()  # bands unknown under clouds, the date is not


@pytest.mark.parametrize("day_of_year", [True, False])
def test_a_class_that_depends_only_on_the_date(day_of_year):
    train = [date_batch(np.arange(3, 366, 6), seed=1)]
    val = [date_batch(np.arange(6, 366, 12), seed=2)]
    method = fitted(2, train, val, day_of_year=day_of_year)
    doy_names = [f"t0_doy{i}" for i in range(4)]
    assert method.feature_names == feature_names(BANDS) + (doy_names if day_of_year else [])
    test = date_batch(np.random.default_rng(3).integers(1, 366, 64), seed=4)
    share = float(test.labels.float().mean())
    assert 0.35 < share < 0.65  # both seasons in the test set
    proba = method.predict_proba(test.x, test.valid, test.doy)  # ignored without the option
    accuracy = float((proba.argmax(1) == test.labels).float().mean())
    if day_of_year:
        assert accuracy >= 0.95
    else:
        assert accuracy < 0.7  # the spectra carry no information: chance
