"""Runs end to end: `hvaeseg train / evaluate / predict` for every method on the tiny synthetic cube."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from hvaeseg.cli import main
from hvaeseg.experiment import RunConfig, _Streams, build_method, prepare_data, train_run

TINY = dict(data="synthetic:tiny", patch_size=32, block=64, unlabelled_patches=32, batch_size=4)


def train_args(method: str, out, steps: int = 3, *extra: str) -> list[str]:
    return ["train", "--method", method, "--data", "synthetic:tiny", "--labels", "2", "--steps", str(steps),
            "--patch-size", "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "4",
            "--val-every", "2", "--checkpoint-every", "2", "--out", str(out), *extra]


@pytest.mark.parametrize("method", ["symmetric", "elbo", "supervised", "mixmatch"])
def test_train_evaluate_predict(method, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(method, run)) == 0
    for name in ("config.json", "plan_train.json", "plan_eval.json", "checkpoint.pt", "best.pt", "history.json"):
        assert (run / name).exists(), name
    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert 0 <= result["accuracy"] <= 1 and len(result["confusion_matrix"]) == 7
    assert json.loads((run / "metrics.json").read_text())["test"]["pixels"] == result["pixels"]
    if method in ("symmetric", "elbo"):
        assert result["iwae_nats_per_value"] < 0 and 0 <= result["consistency"] <= 1
    pred_path = tmp_path / "pred.zarr"
    assert main(["predict", str(run), "--out", str(pred_path)]) == 0
    pred = xr.open_zarr(pred_path, chunks=None)
    cube = prepare_data(RunConfig(method=method, labels=2, **TINY)).cube
    np.testing.assert_array_equal(pred["y"].values, cube["y"].values)
    assert pred["class_map"].shape == (128, 128)
    np.testing.assert_allclose(pred["probability"].sum("class").values, 1.0, atol=1e-5)
    assert pred["class_map"].attrs["flag_meanings"] == cube["labels"].attrs["flag_meanings"]


def test_temporal_symmetric_run(tmp_path):
    config = RunConfig(method="symmetric", labels=2, steps=2, dates=2, val_every=0, checkpoint_every=0, **TINY)
    trainer = train_run(config, tmp_path / "run")
    assert trainer.step == 2
    assert trainer.history.validation and 0 <= trainer.history.validation[-1]["accuracy"] <= 1


def test_cli_resume_continues_to_the_same_parameters(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(train_args("supervised", full, 4)) == 0
    assert main(train_args("supervised", part, 2)) == 0
    # the same run folder with more steps: a different config, so it is refused...
    assert main(train_args("supervised", part, 4)) == 2
    # ...while the interrupted run (same config, a checkpoint at step 2) resumes to the same end
    config = RunConfig(method="supervised", labels=2, steps=4, val_every=2, checkpoint_every=2, **TINY)
    (part / "config.json").write_text(config.to_json())
    train_run(config, part)
    a = torch.load(full / "checkpoint.pt", weights_only=True)["method"]["modules"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["method"]["modules"]
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def test_label_pool_holds_only_labelled_maps(tmp_path):
    config = RunConfig(method="symmetric", labels=2, **TINY)
    data = prepare_data(config)
    streams = _Streams(data, config, build_method(config, data))
    lab = data.train_plan.select(labelled=True)
    truth = data.cube["labels"].values
    expected = {truth[y:y + 32, x:x + 32].tobytes() for y, x in zip(lab.y, lab.x)}
    assert {m.numpy().astype(truth.dtype).tobytes() for m in streams.pool.maps} == expected
    # and the unlabelled stream never carries labels
    batch = next(streams.loaders["unlabelled"].stream(0))
    assert bool((batch.labels == -1).all())


def test_bad_run_configs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="method"):
        RunConfig(method="unet")
    with pytest.raises(ValueError, match="needs labelled locations"):
        RunConfig(method="mixmatch", labels=0)
    with pytest.raises(ValueError, match="block"):
        RunConfig(method="elbo", block=16, patch_size=32)
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main([*train_args("elbo", tmp_path / "r"), "--options", '{"no_such_option": 1}']) == 2
    assert "no options" in capsys.readouterr().err


def test_unsupervised_symmetric_run_without_labels(tmp_path):
    config = RunConfig(method="symmetric", labels=0, steps=2, val_every=0, checkpoint_every=0, **TINY)
    trainer = train_run(config, tmp_path / "run")
    assert trainer.step == 2
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in trainer.history.losses)


def test_pool_has_one_map_per_labelled_location(tmp_path):
    config = RunConfig(method="symmetric", labels=3, **TINY)
    data = prepare_data(config)
    lab = data.train_plan.select(labelled=True)
    assert len(lab) > 3  # several dates per location...
    method = build_method(config, data)
    assert method.hvae.label_pool is None
    streams = _Streams(data, config, method)
    assert len(streams.pool.maps) == 3  # ...but one map each in the pool
    # and the model's empirical s prior draws from it (all 8 dihedral transforms of each map)
    assert method.hvae.label_pool.shape == (3 * 8, 32, 32)
    sample = method.hvae.sample_prior(n=2, size=16, doy=torch.tensor([100.0, 200.0]))
    assert sample["s"].shape == (2, 16, 16)


def test_loader_processes_train_to_the_same_parameters(tmp_path):
    """How batches are read (threads, processes, more workers) does not change a run."""
    from hvaeseg.data.synthetic import write_synthetic
    from hvaeseg.experiment import LoaderOptions

    store = write_synthetic(tmp_path / "tiny.zarr", "tiny", 0)
    config = RunConfig(method="supervised", labels=2, steps=3, val_every=3, checkpoint_every=3,
                       **{**TINY, "data": str(store)})
    train_run(config, tmp_path / "threads")
    train_run(config, tmp_path / "processes", loader=LoaderOptions(workers=2, processes=True))
    a, b = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True)["method"]["modules"]
            for r in ("threads", "processes"))
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    in_memory = RunConfig(method="supervised", labels=2, steps=1, **TINY)
    with pytest.raises(ValueError, match="generated in memory"):
        train_run(in_memory, tmp_path / "mem", loader=LoaderOptions(processes=True))
    assert not (tmp_path / "mem").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="workers"):
        LoaderOptions(workers=0)
