"""How the command line reports errors: one line and exit code 2, ``--debug`` adds the traceback, outputs are
checked before any work."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from hvaeseg.cli import main


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_predict_refuses_an_existing_output_before_loading_the_run(tmp_path, capsys):
    out = tmp_path / "prediction.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = _digest(tmp_path)
    # the run does not exist either: the output is checked first, so that is the error the user sees
    assert main(["predict", str(tmp_path / "no-run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "not a run folder" not in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _digest(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    plain = capsys.readouterr().err
    assert "Traceback" not in plain and "not a run folder" in plain
    assert main(["--debug", "evaluate", str(tmp_path / "nowhere")]) == 2
    debug = capsys.readouterr().err
    assert "Traceback (most recent call last)" in debug and debug.rstrip().endswith(plain.strip())


def test_interrupt_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    import hvaeseg.experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hvaeseg.experiment, "evaluate_run", interrupted)
    assert main(["evaluate", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "hvaeseg evaluate: interrupted\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step supervised run on the tiny synthetic cube."""
    out = tmp_path_factory.mktemp("runs") / "sup"
    args = ["train", "--method", "supervised", "--data", "synthetic:tiny", "--labels", "2", "--steps", "2",
            "--patch-size", "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "4",
            "--val-every", "2", "--checkpoint-every", "2", "--out", str(out)]
    assert main(args) == 0
    return out


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_trained_run_evaluates_on_cpu_with_device_cpu(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "gpu-run")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "cuda"}))
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "--device cpu" in err and err.count("\n") == 1
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert json.loads((run / "config.json").read_text())["device"] == "cuda"  # where it ran is not saved


@pytest.mark.parametrize("damage", ["truncated", "foreign", "not-torch"])
def test_damaged_or_foreign_checkpoints_are_clear_errors(tiny_run, tmp_path, capsys, damage):
    run = _copy_run(tiny_run, tmp_path / "run")
    best = run / "best.pt"
    if damage == "truncated":
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"net": {"w": torch.zeros(2)}}, best)
    else:
        best.write_text("hello")
    before = _digest(run)
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "best.pt" in err
    assert ("not an hvaeseg checkpoint" if damage == "foreign" else "not a readable hvaeseg checkpoint") in err
    assert _digest(run) == before


def test_a_checkpoint_of_another_method_is_named(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "run")
    state = torch.load(run / "best.pt", weights_only=True)
    state["method"]["modules"] = {"hvae": {}}
    torch.save(state, run / "best.pt")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "does not hold a state of this run's 'supervised' method" in err


def test_missing_best_falls_back_to_the_latest_state_and_says_so(tiny_run, tmp_path, capsys):
    run = _copy_run(tiny_run, tmp_path / "run")
    (run / "best.pt").unlink()
    assert main(["evaluate", str(run)]) == 0
    assert "no best.pt" in capsys.readouterr().err
