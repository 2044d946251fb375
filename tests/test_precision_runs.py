"""Runs in bf16 mixed precision (``hvaeseg train --precision bf16``): train, evaluate, predict; fall back to fp32
where the machine has no bfloat16 units.

The bf16 code path runs on every machine: without bfloat16 units torch's CPU autocast emulates bfloat16 (slower,
same results within bfloat16's precision), so the runs below pretend the units are there (``bf16_units``): nothing
here depends on the hardware, and nothing is skipped."""

from __future__ import annotations

import json

import pytest
import torch

import hvaeseg.experiment
from hvaeseg.cli import main
from tests.test_experiment import train_args


@pytest.fixture
def bf16_units(monkeypatch):
    """Take ``--precision bf16`` on this machine as on one with bfloat16 units (emulated where it has none): the
    refusal and the fall-back where it has none are tested below."""
    import hvaeseg.nets.precision as P

    monkeypatch.setattr(P, "bf16_supported", lambda device: True)
    monkeypatch.setattr(hvaeseg.experiment, "bf16_supported", lambda device: True)


@pytest.mark.parametrize("method", ["supervised", "symmetric"])
def test_a_bf16_run_trains_evaluates_and_predicts(method, bf16_units, tmp_path, capsys):
    out = tmp_path / method
    assert main(train_args(method, out, 3, "--precision", "bf16")) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    state = torch.load(out / "best.pt", weights_only=True)
    assert state  # a checkpoint was written
    config, _, loaded = hvaeseg.experiment.load_run(out)
    assert config.precision == "bf16"
    conv = next(m for mod in loaded.modules().values() for m in mod.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert main(["evaluate", str(out)]) == 0
    assert main(["predict", str(out), "--out", str(tmp_path / "pred.zarr")]) == 0
    history = json.loads((out / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(v)) for row in history["losses"] for k, v in row.items() if k != "step")


def test_bf16_is_refused_for_training_and_falls_back_when_loading_without_bfloat16_units(tmp_path, capsys,
                                                                                          monkeypatch):
    import hvaeseg.nets.precision as P

    out = tmp_path / "run"
    assert main(train_args("supervised", out, 2)) == 0
    monkeypatch.setattr(P, "bf16_supported", lambda device: False)
    monkeypatch.setattr(hvaeseg.experiment, "bf16_supported", lambda device: False)
    capsys.readouterr()
    assert main(train_args("supervised", tmp_path / "other", 2, "--precision", "bf16")) == 2
    assert "use --precision fp32" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "precision": "bf16"}))  # as if trained elsewhere in bf16
    loaded, _, _ = hvaeseg.experiment.load_run(out)
    assert loaded.precision == "fp32" and "runs in fp32" in capsys.readouterr().err
