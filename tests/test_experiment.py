"""Runs end to end: `hvaeseg train / evaluate / predict` for every method on the tiny synthetic cube."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from hvaeseg.cli import main
from hvaeseg.experiment import (
    RunConfig,
    _Streams,
    build_method,
    evaluate_run,
    fit_sizes,
    load_run,
    prepare_data,
    train_run,
)
from hvaeseg.methods import METHODS, Method, StepBatch, method_config, register, unregister

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


def test_a_rerun_with_more_steps_trains_the_run_on_to_the_same_parameters(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(train_args("supervised", full, 4)) == 0
    assert main(train_args("supervised", part, 2)) == 0
    assert json.loads((part / "config.json").read_text())["steps"] == 2
    # the same run folder with more steps: trained on from its checkpoint at step 2...
    assert main(train_args("supervised", part, 4)) == 0
    assert json.loads((part / "config.json").read_text())["steps"] == 4
    # ...to the parameters and losses of the run trained 4 steps at once
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for name in a["method"]["modules"]:
        for key in a["method"]["modules"][name]:
            assert torch.equal(a["method"]["modules"][name][key], b["method"]["modules"][name][key]), (name, key)
    assert a["history"]["losses"][-1] == b["history"]["losses"][-1]  # (each session also logs its last step)
    assert [v["step"] for v in b["history"]["validation"]] == [2, 4]


def test_a_run_stopped_by_its_time_budget_trains_on_with_a_larger_one(tmp_path, capsys):
    run = tmp_path / "run"
    config = RunConfig(method="supervised", labels=2, steps=10_000, val_every=0, checkpoint_every=0,
                       time_budget_s=0.01, **TINY)
    first = train_run(config, run)
    assert 1 <= first.step < 10_000
    # the same config again: the budget is spent, so no further step (a rerun does not change a finished run)
    assert train_run(config, run).step == first.step
    # more steps with the spent budget: refused, with the flag to change
    with pytest.raises(ValueError, match="pass a larger --time-budget"):
        train_run(replace(config, steps=20_000), run)
    # a larger budget (here: none, with a few more steps) trains it on
    more = train_run(replace(config, steps=first.step + 2, time_budget_s=None), run)
    assert more.step == first.step + 2
    assert more.history.train_seconds > first.history.train_seconds


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
    assert "method 'elbo' options: unknown field(s) 'no_such_option'" in capsys.readouterr().err


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


def test_a_synth_cube_trains_with_the_defaults_and_its_run_evaluates_from_anywhere(tmp_path, monkeypatch, capsys):
    """`hvaeseg data synth cube.zarr` then `hvaeseg train --data cube.zarr`: patch and block sizes are fitted to
    the 128 x 128 cube; config.json keeps the cube's absolute path, so the run evaluates from any folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "cube.zarr"]) == 0
    assert main(["train", "--method", "supervised", "--data", "cube.zarr", "--steps", "2", "--unlabelled-patches",
                 "16", "--batch-size", "2", "--out", "run"]) == 0
    assert "note: --patch-size 32 --block 32, to fit the 128x128 cube with --labels 10" in capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["patch_size"], config["block"], config["labels"]) == (32, 32, 10)
    assert config["data"] == str(tmp_path / "cube.zarr")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    # a run folder of an older version names its cube as typed: found above the run folder
    old = tmp_path / "runs" / "old"
    old.parent.mkdir()
    shutil.copytree(tmp_path / "run", old)
    (old / "config.json").write_text(json.dumps({**config, "data": "cube.zarr"}))
    assert RunConfig.load(old).data == str(tmp_path / "cube.zarr")
    assert main(["evaluate", str(old), "--json"]) == 0
    # and a rerun of the old run (data as typed, from its folder) is the same configuration: it resumes
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "supervised", "--data", "cube.zarr", "--steps", "2", "--unlabelled-patches",
                 "16", "--batch-size", "2", "--out", str(old)]) == 0


def test_sizes_fitted_to_the_cube():
    small, tiny = {"y": 512, "x": 512}, {"y": 128, "x": 128}
    assert fit_sizes(small, 10) == (64, 128)  # the defaults, where they fit
    assert fit_sizes(tiny, 2) == (64, 64)
    assert fit_sizes(tiny, 8) == (32, 64)
    assert fit_sizes(tiny, 10) == (32, 32)
    assert fit_sizes(tiny, 2, patch_size=16) == (16, 64)
    assert fit_sizes(tiny, 2, block=32) == (32, 32)
    assert fit_sizes(tiny, 2, block=16) == (16, 16)
    with pytest.raises(ValueError, match="--labels 11 .* at most 10 locations"):
        fit_sizes(tiny, 11)
    with pytest.raises(ValueError, match="--patch-size 32 is larger than the 16x16 cube"):
        fit_sizes({"y": 16, "x": 16}, 1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-step supervised run on the tiny synthetic cube (tests must not change it)."""
    out = tmp_path_factory.mktemp("runs") / "sup"
    assert main(train_args("supervised", out, 2)) == 0
    return out


def test_a_failed_start_leaves_no_files_and_never_touches_an_existing_run(tiny_run, tmp_path, monkeypatch, capsys):
    import hvaeseg.experiment

    class Broken:
        def __init__(self, *args, **kwargs):
            raise ValueError("no streams today")

    fresh, kept = tmp_path / "fresh", tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    done = tiny_run
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(hvaeseg.experiment, "_Streams", Broken)
        for out in (fresh, kept, done):
            assert main(train_args("supervised", out, 4)) == 2
            assert "no streams today" in capsys.readouterr().err
    assert not fresh.exists()  # made by the failed call: removed
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]  # there before: only what the call wrote is removed
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before  # a run: untouched
    # the rerun starts clean
    assert main(train_args("supervised", fresh, 2)) == 0
    assert main(train_args("supervised", kept, 2)) == 0


def test_predict_another_cube_numbers_classes_by_name(tiny_run, tmp_path, capsys):
    """A cube whose labels number the run's classes otherwise gets its prediction in its own numbering."""
    from hvaeseg.data.schema import class_names
    from hvaeseg.data.store import write_cube
    from hvaeseg.data.synthetic import make_cube

    run = tiny_run
    ds = make_cube("tiny", seed=0, size=64, n_dates=2)
    write_cube(ds, tmp_path / "same.zarr")  # the run's classes: predicted in the run's numbering
    names = class_names(ds)
    perm = np.array([3, 0, 6, 1, 5, 2, 4])  # run class i is class perm[i] of the other cube
    other_names = [""] * len(names)
    for i, name in enumerate(names):
        other_names[perm[i]] = name
    labels = ds["labels"].values
    ds["labels"].values[:] = np.where(labels >= 0, perm[np.clip(labels, 0, None)], labels)
    ds["labels"].attrs["flag_meanings"] = " ".join(other_names)
    write_cube(ds, tmp_path / "other.zarr")
    assert main(["predict", str(run), "--data", str(tmp_path / "same.zarr"), "--out", str(tmp_path / "own.zarr")]) == 0
    assert main(["predict", str(run), "--data", str(tmp_path / "other.zarr"), "--out", str(tmp_path / "p.zarr")]) == 0
    assert "mapped by name" in capsys.readouterr().out
    own, other = (xr.open_zarr(tmp_path / f, chunks=None) for f in ("own.zarr", "p.zarr"))
    np.testing.assert_array_equal(other["class_map"].values, perm[own["class_map"].values])
    assert other["class_map"].attrs["flag_meanings"] == " ".join(other_names)
    assert own["class_map"].attrs["flag_meanings"] == " ".join(names)
    np.testing.assert_array_equal(other["class"].values, perm)
    np.testing.assert_allclose(other["probability"].values, own["probability"].values)


def test_every_option_has_help_and_the_config_defaults():
    """train/evaluate/predict options all have help; train's defaults are RunConfig's (one source of truth)."""
    import argparse
    import inspect

    from hvaeseg.cli import build_parser
    from hvaeseg.commands.train import _TRAIN_FIELDS
    from hvaeseg.experiment import evaluate_run
    from hvaeseg.run_config import default, flag

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("train", "evaluate", "predict"):
        parser = sub.choices[command]
        for action in parser._actions:
            assert action.help, (command, action.option_strings or action.dest)
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
    train = sub.choices["train"]
    actions = {a.dest: a for a in train._actions}
    for name in _TRAIN_FIELDS:
        assert flag(name) in actions[name].option_strings
        if name not in ("method", "patch_size", "block"):
            assert actions[name].default == default(name), name
    help_text = " ".join(train.format_help().split())
    assert "(default: 1000)" in help_text and "(default: 64, or smaller where the cube needs it)" in help_text
    assert "symmetric, elbo, supervised" in help_text  # the registry's methods
    iwae = next(a for a in sub.choices["evaluate"]._actions if a.dest == "iwae_samples")
    assert iwae.default == inspect.signature(evaluate_run).parameters["iwae_samples"].default


# ------------------------------------------------------------------------------------------- adding a method
@dataclass(frozen=True)
class ToyConfig:
    lr: float = 0.5


class ToyMethod(Method):
    """Per-pixel logistic regression on the bands: the whole of a new method (its class declares what it needs)."""

    name = "toy"
    config_class = ToyConfig
    streams = ("labelled",)
    needs_labels = True

    def __init__(self, in_channels: int, num_classes: int, config: ToyConfig) -> None:
        self.net = nn.Conv2d(in_channels, num_classes, 1)
        self.sgd = torch.optim.SGD(self.net.parameters(), lr=config.lr)

    @classmethod
    def build(cls, in_channels, num_classes, *, temporal=False, config=None, device="cpu", **unused):
        # the other arguments of the one build signature (seed, patch_size, band names...) do not matter to it
        return cls(in_channels, num_classes, config or ToyConfig()).to(device)

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"sgd": self.sgd}

    def losses(self, batch: StepBatch, step: int):
        b = batch.labelled
        logits = self.net(b.x * b.valid.unsqueeze(1))
        return {"ce": nn.functional.cross_entropy(logits, b.labels, ignore_index=-1)}

    def predict_proba(self, x, valid, doy=None):
        with torch.no_grad():
            return self.net(x * valid.unsqueeze(1)).softmax(1)


@pytest.fixture
def toy():
    register(ToyMethod)  # the one line that adds a method
    yield ToyMethod
    unregister("toy")


def test_a_new_method_is_one_class_and_one_registration(toy, tmp_path, capsys):
    from hvaeseg.commands.train import METHOD_NAMES

    assert "toy" in METHOD_NAMES  # the command line lists it
    with pytest.raises(ValueError, match="needs labelled locations"):  # its declaration is read
        RunConfig(method="toy", labels=0)
    with pytest.raises(ValueError, match=r"method 'toy' option lr: expected a number"):  # its options are checked
        method_config("toy", {"lr": "fast"})
    config = RunConfig(method="toy", labels=2, steps=2, val_every=1, checkpoint_every=1, options={"lr": 0.1}, **TINY)
    trainer = train_run(config, tmp_path / "run")
    assert trainer.step == 2 and [r["step"] for r in trainer.history.losses] == [0, 1]
    assert [v["step"] for v in trainer.history.validation] == [1, 2]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["method"]
    assert set(state["modules"]) == {"net"} and set(state["optimizers"]) == {"sgd"}
    result = evaluate_run(tmp_path / "run", "test")
    assert result["split"] == "test" and 0 <= result["accuracy"] <= 1 and len(result["confusion_matrix"]) == 7
    _, _, method = load_run(tmp_path / "run")
    assert isinstance(method, ToyMethod)
    torch.testing.assert_close(method.net.weight, trainer.method.net.weight)
    # and through the command line, with no edit to it either
    assert main(train_args("toy", tmp_path / "cli", 2, "--options", '{"lr": 0.1}')) == 0
    assert "trained toy for 2 steps" in capsys.readouterr().out


def test_the_registry_refuses_what_it_cannot_run(toy):
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register(type("OtherToy", (ToyMethod,), {}))
    register(ToyMethod)  # the same class again: nothing changes
    with pytest.raises(TypeError, match="expected a Method or FittedMethod subclass"):
        register(ToyConfig)
    with pytest.raises(TypeError, match="expected a dataclass as the class attribute `config_class`"):
        register(type("NoConfig", (ToyMethod,), {"name": "no-config", "config_class": dict}))
    with pytest.raises(TypeError, match="expected a classmethod `build`"):
        register(type("Unbuildable", (ToyMethod,), {"name": "unbuildable", "build": Method.build}))
    with pytest.raises(ValueError, match="streams: expected some of"):
        register(type("Odd", (ToyMethod,), {"name": "odd", "streams": ("labels",)}))
    assert not {"no-config", "unbuildable", "odd"} & set(METHODS)
