"""SIGKILL at random points of training: the rerun resumes from the last complete checkpoint and ends with the
parameters of an uninterrupted run, bit for bit; nothing left behind looks complete when it is not."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from hvaeseg.cli import main

STEPS = 10


def _args(out):
    return ["train", "--method", "supervised", "--data", "synthetic:tiny", "--labels", "2", "--steps", str(STEPS),
            "--patch-size", "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "4",
            "--val-every", "3", "--checkpoint-every", "2", "--out", str(out)]


def _params(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["method"]["modules"]["net"]


def _train_in_subprocess(out, threads: int) -> subprocess.Popen:
    code = (f"import torch; torch.set_num_threads({threads}); from hvaeseg.cli import main; "
            f"raise SystemExit(main({_args(out)!r}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.getcwd())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    assert main(_args(out)) == 0
    return _params(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_anywhere_then_rerun_gives_the_uninterrupted_parameters(seed, uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = _train_in_subprocess(out, torch.get_num_threads())
    # a random moment once training has begun (the first checkpoint is written at step 2)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # what is left is either complete or named as a temporary
    for f in out.iterdir():
        if f.name == "checkpoint.pt" or f.name == "best.pt":
            assert "method" in torch.load(f, weights_only=True)  # a whole checkpoint, never a torn one
        elif f.suffix == ".json":
            json.loads(f.read_text())  # whole JSON
        else:
            assert ".tmp" in f.name or f.name.startswith("plan"), f"unexpected leftover {f.name}"
    assert main(_args(out)) == 0  # the same command resumes
    params = _params(out)
    assert params.keys() == uninterrupted.keys()
    assert all(torch.equal(params[k], uninterrupted[k]) for k in params)
    assert not [f.name for f in out.iterdir() if ".tmp" in f.name]  # temporaries of the killed process cleaned
