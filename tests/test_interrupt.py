"""Ctrl-C during training: the step under way finishes, its state is saved, the command exits 130 saying how
to resume, and the resumed run ends with the parameters of an uninterrupted one."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from hvaeseg.cli import main
from hvaeseg.methods.supervised import SupervisedMethod

STEPS = 6


def _args(out, steps=STEPS):
    return ["train", "--method", "supervised", "--data", "synthetic:tiny", "--labels", "2", "--steps", str(steps),
            "--patch-size", "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "4",
            "--val-every", "2", "--checkpoint-every", "100", "--out", str(out)]


def _params(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["method"]["modules"]["net"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    assert main(_args(out)) == 0
    return _params(out)


@pytest.mark.parametrize("at_step", [0, 2, 3])
def test_sigint_saves_the_finished_step_and_resumes_to_identical_parameters(
    uninterrupted, tmp_path, monkeypatch, capsys, at_step
):
    original = SupervisedMethod.after_update
    sent = []

    def after_update(self, step):
        original(self, step)
        if step == at_step and not sent:  # Ctrl-C arrives in the middle of training, once
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SupervisedMethod, "after_update", after_update)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    assert main(_args(out)) == 130
    err = capsys.readouterr().err
    assert f"interrupted: stopped after step {at_step + 1}" in err and "run the same command again" in err
    assert "Traceback" not in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == at_step + 1
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written left behind
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back
    monkeypatch.setattr(SupervisedMethod, "after_update", original)
    assert main(_args(out)) == 0
    resumed = _params(out)
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), k


def test_a_second_sigint_interrupts_at_once():
    from hvaeseg.train import _deferred_interrupt

    with pytest.raises(KeyboardInterrupt), _deferred_interrupt() as interrupted:
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupted()
        os.kill(os.getpid(), signal.SIGINT)  # the user insists
        for _ in range(10**6):  # the handler runs between bytecodes
            pass
