"""Bad inputs to ``hvaeseg train``, ``evaluate`` and ``predict``: each is refused in one line that names the flag
(or the cube) and the fix, before anything is written; existing runs and outputs stay byte-identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hvaeseg.cli import main
from tests.bad_inputs.helpers import refuses

TINY = ["--data", "synthetic:tiny", "--labels", "2", "--steps", "2", "--patch-size", "32", "--block", "64",
        "--unlabelled-patches", "16", "--batch-size", "2", "--val-every", "2", "--checkpoint-every", "2"]


def train(out: Path, *extra: str, method: str = "supervised") -> list[str]:
    """``hvaeseg train`` of a 2-step run on the tiny cube into ``out``; ``extra`` flags come last (and win)."""
    return ["train", "--method", method, *TINY, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 2-step supervised run on the tiny synthetic cube (32-pixel patches)."""
    out = tmp_path_factory.mktemp("runs") / "sup"
    assert main(train(out)) == 0
    return out


@pytest.fixture(scope="module")
def cubes(tmp_path_factory) -> dict[str, Path]:
    """Stores that a run of the tiny cube cannot predict: other bands, other classes, too small."""
    from hvaeseg.data.store import write_cube
    from hvaeseg.data.synthetic import make_cube, write_synthetic

    folder = tmp_path_factory.mktemp("cubes")
    out = {"bands": folder / "bands.zarr", "classes": folder / "classes.zarr", "small": folder / "small.zarr"}
    write_synthetic(out["bands"], "tiny", 0, bands=("B02", "B03", "B04", "B08"))
    write_synthetic(out["small"], "tiny", 0, size=(16, 16))
    ds = make_cube("tiny", seed=0)
    names = ds["labels"].attrs["flag_meanings"].split()
    ds["labels"].attrs["flag_meanings"] = " ".join(["rice", "cotton", *names[2:]])  # two classes unknown to runs
    write_cube(ds, out["classes"])
    return out


# -------------------------------------------------------------------------------------------------- train
def test_unknown_method(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--method", "unet"), "--method", "unet", "supervised",
            unchanged=(tmp_path / "r",))


def test_negative_labels(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--labels", "-1"), "--labels", ">= 0", unchanged=(tmp_path / "r",))


def test_no_labels_for_a_supervised_method(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--labels", "0"), "needs labelled locations", "--labels",
            unchanged=(tmp_path / "r",))


def test_more_labels_than_the_cube_holds_with_fitted_sizes(tmp_path, capsys):
    argv = ["train", "--method", "supervised", "--data", "synthetic:tiny", "--labels", "1000", "--out",
            str(tmp_path / "r")]
    refuses(capsys, argv, "--labels 1000", "at most 10 locations", "--patch-size 32 --block 32",
            unchanged=(tmp_path / "r",))


def test_more_labels_than_the_given_blocks_hold(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--labels", "9"), "--labels 9", "pass --labels 8 or fewer",
            unchanged=(tmp_path / "r",))


def test_block_smaller_than_the_patch(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--block", "16"), "--block 16", "--patch-size 32",
            unchanged=(tmp_path / "r",))


def test_block_zero_without_a_patch_size(tmp_path, capsys):
    argv = ["train", "--method", "supervised", "--data", "synthetic:tiny", "--block", "0", "--out", str(tmp_path / "r")]
    refuses(capsys, argv, "--block", "positive integer", unchanged=(tmp_path / "r",))


def test_block_too_large_for_the_splits(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--block", "128"), "--block 128", "1 block", "e.g. --block 64",
            unchanged=(tmp_path / "r",))


def test_patch_larger_than_the_cube(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--patch-size", "256", "--block", "256"), "--patch-size 256",
            "128x128 cube", "--patch-size 128 or less", unchanged=(tmp_path / "r",))


def test_patch_size_zero(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--patch-size", "0"), "--patch-size", "positive integer",
            unchanged=(tmp_path / "r",))


def test_more_dates_per_stack_than_the_cube_has(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--dates", "7", method="symmetric"), "--dates 7", "6 dates",
            unchanged=(tmp_path / "r",))


def test_negative_validation_interval(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--val-every", "-1"), "--val-every", unchanged=(tmp_path / "r",))


def test_fractions_that_do_not_sum_to_one(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--fractions", "0.5", "0.5", "0.5"), "--fractions", "summing to 1",
            unchanged=(tmp_path / "r",))


def test_zero_time_budget(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--time-budget", "0"), "--time-budget", unchanged=(tmp_path / "r",))


def test_options_not_an_object(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--options", "[1, 2]"), "--options", "JSON object",
            unchanged=(tmp_path / "r",))


def test_missing_cube(tmp_path, capsys):
    refuses(capsys, train(tmp_path / "r", "--data", str(tmp_path / "nope.zarr")), "no cube at", "nope.zarr",
            unchanged=(tmp_path / "r",))


def test_fewer_steps_than_the_run_has_trained(run, capsys):
    refuses(capsys, train(run, "--steps", "1"), "has trained 2 steps", "--steps 2 or more", "--no-resume",
            unchanged=(run,))


def test_another_configuration_in_the_run_folder(run, capsys):
    refuses(capsys, train(run, "--labels", "3", "--seed", "1"), "another configuration", "--labels 2 -> 3",
            "--seed 0 -> 1", "--steps", unchanged=(run,))


# ----------------------------------------------------------------------------------------------- evaluate
def test_evaluate_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    refuses(capsys, ["evaluate", str(tmp_path)], "not a run folder", "hvaeseg train", unchanged=(tmp_path,))


def test_evaluate_a_run_whose_relative_cube_path_is_found_nowhere(run, tmp_path, capsys, monkeypatch):
    old = shutil.copytree(run, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**config, "data": "cubes/gone.zarr"}))
    monkeypatch.chdir(tmp_path)
    refuses(capsys, ["evaluate", str(old)], "relative path 'cubes/gone.zarr'", "absolute path", unchanged=(old,))


# ------------------------------------------------------------------------------------------------ predict
def test_predict_a_cube_with_other_bands(run, cubes, tmp_path, capsys):
    out = tmp_path / "pred.zarr"
    refuses(capsys, ["predict", str(run), "--data", str(cubes["bands"]), "--out", str(out)],
            "bands B02 B03 B04 B08", "trained on B02 B03 B04 B05", "--bands", unchanged=(out, cubes["bands"], run))


def test_predict_a_cube_labelled_with_other_classes(run, cubes, tmp_path, capsys):
    out = tmp_path / "pred.zarr"
    refuses(capsys, ["predict", str(run), "--data", str(cubes["classes"]), "--out", str(out)],
            "lack the run's classes water forest", "rice cotton", unchanged=(out, cubes["classes"], run))


def test_predict_a_cube_smaller_than_a_patch(run, cubes, tmp_path, capsys):
    out = tmp_path / "pred.zarr"
    refuses(capsys, ["predict", str(run), "--data", str(cubes["small"]), "--out", str(out)],
            "16x16 pixels", "32x32 patches", unchanged=(out, cubes["small"], run))


def test_predict_a_missing_cube(run, tmp_path, capsys):
    out = tmp_path / "pred.zarr"
    refuses(capsys, ["predict", str(run), "--data", str(tmp_path / "nope.zarr"), "--out", str(out)],
            "no cube at", unchanged=(out, run))
