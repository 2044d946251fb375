"""The shared training loop: determinism, bit-identical resume, the NaN guard, atomic checkpoints."""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import torch
from torch import nn

from hvaeseg.methods.base import Method, StepBatch
from hvaeseg.train import CHECKPOINT, LoopConfig, NonFiniteLossError, Trainer, load_checkpoint, step_seed


class Batch(NamedTuple):
    x: torch.Tensor
    valid: torch.Tensor
    labels: torch.Tensor


class TinyMethod(Method):
    """A 1x1-conv classifier with dropout (so the global RNG matters) and Adam (so optimizer state matters)."""

    name = "tiny"
    streams = ("labelled",)

    def __init__(self, poison_at: int | None = None) -> None:
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(8, 2, 1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.poison_at = poison_at

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"opt": self.opt}

    def losses(self, batch: StepBatch, step: int):
        b = batch.labelled
        loss = nn.functional.cross_entropy(self.net(b.x), b.labels, ignore_index=-1)
        if step == self.poison_at:
            loss = loss * float("nan")
        return {"ce": loss}

    def predict_proba(self, x, valid):
        return self.net(x).softmax(1)


def stream(seed: int):
    """A resumable stream: the batch of step k is a function of (seed, k) only."""

    def factory(start: int):
        k = start
        while True:
            g = torch.Generator().manual_seed(step_seed(seed, k))
            x = torch.randn(4, 3, 8, 8, generator=g)
            labels = (x[:, 0] > 0).long()
            yield Batch(x, torch.ones(4, 8, 8, dtype=torch.bool), labels)
            k += 1

    return factory


def validation():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(4, 3, 8, 8, generator=g)
    return [Batch(x, torch.ones(4, 8, 8, dtype=torch.bool), (x[:, 0] > 0).long())]


def make_trainer(tmp_path, steps: int, poison_at: int | None = None, **loop) -> Trainer:
    torch.manual_seed(0)
    method = TinyMethod(poison_at)
    config = LoopConfig(steps=steps, seed=7, val_every=loop.pop("val_every", 5), checkpoint_every=5, **loop)
    return Trainer(method, {"labelled": stream(3)}, validation, 2, tmp_path, config)


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.method.net.parameters()]


class TwoRuleMethod(TinyMethod):
    """TinyMethod with two candidate rules: 0.0 its own net, 1.0 an oracle of the validation labels (the sign of
    band 0); the chosen rule is part of the state."""

    def __init__(self) -> None:
        super().__init__()
        self.rule = 0.0

    def prediction_keys(self):
        return (0.0, 1.0)

    def predict_candidates(self, x, valid):
        oracle = torch.stack([(x[:, 0] <= 0), (x[:, 0] > 0)], 1).float()
        return {0.0: self.net(x).softmax(1), 1.0: oracle}

    def use_prediction(self, key):
        self.rule = key

    def predict_proba(self, x, valid):
        return self.predict_candidates(x, valid)[self.rule]

    def state_dict(self):
        return {**super().state_dict(), "rule": self.rule}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.rule = state["rule"]


def test_validation_chooses_the_prediction_rule_with_the_checkpoint(tmp_path):
    """A method with candidate rules is scored under each at every validation; the best by mean IoU is the one it
    predicts with and the one ``best.pt`` keeps; the round records both rules' figures."""
    torch.manual_seed(0)
    config = LoopConfig(steps=6, seed=7, val_every=3, checkpoint_every=3)
    trainer = Trainer(TwoRuleMethod(), {"labelled": stream(3)}, validation, 2, tmp_path, config)
    history = trainer.fit()
    last = history.validation[-1]
    assert last["prediction"] == 1.0 and last["accuracy"] == 1.0 and last["mean_iou"] == 1.0
    assert last["candidates"]["1.0"] == [1.0, 1.0] and last["candidates"]["0.0"][1] < 1.0
    assert trainer.method.rule == 1.0
    assert load_checkpoint(tmp_path / "best.pt")["method"]["rule"] == 1.0
    tie = TwoRuleMethod()
    tie.predict_candidates = lambda x, valid: {0.0: tie.net(x).softmax(1), 1.0: tie.net(x).softmax(1)}
    tied = Trainer(tie, {"labelled": stream(3)}, validation, 2, tmp_path / "tie", config).validate()
    assert tied["prediction"] == 0.0  # equal scores: the first rule


def test_training_learns_and_writes_run_files(tmp_path):
    trainer = make_trainer(tmp_path, 60)
    history = trainer.fit()
    assert history.validation[-1]["accuracy"] > 0.9  # the label is the sign of band 0
    assert history.losses[-1]["ce"] < history.losses[0]["ce"]
    assert (tmp_path / CHECKPOINT).exists() and (tmp_path / "best.pt").exists()
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["best_step"] == history.best_step
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_same_seed_same_parameters(tmp_path):
    a = make_trainer(tmp_path / "a", 12)
    a.fit()
    b = make_trainer(tmp_path / "b", 12)
    b.fit()
    for p, q in zip(params(a), params(b)):
        assert torch.equal(p, q)


def test_resume_is_bit_identical(tmp_path):
    full = make_trainer(tmp_path / "full", 20)
    full.fit()
    # an interrupted run: 10 steps, then a fresh process-like trainer (new method object) resumes to 20
    part = make_trainer(tmp_path / "part", 10)
    part.fit()
    resumed = make_trainer(tmp_path / "part", 20)
    assert resumed.resume()
    assert resumed.step == 10
    resumed.fit()
    for p, q in zip(params(full), params(resumed)):
        assert torch.equal(p, q)
    assert resumed.history.losses[-1] == full.history.losses[-1]


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, 50, poison_at=13)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 13"):
        trainer.fit()
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 10  # written at step 10, before the poisoned step
    fresh = TinyMethod()
    fresh.load_state_dict(state["method"])
    assert all(torch.isfinite(p).all() for p in fresh.net.parameters())
    # the parameters in memory were not touched by the poisoned update either
    assert all(torch.isfinite(p).all() for p in trainer.method.net.parameters())


def test_time_budget_stops_early_with_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, 10_000, time_budget_s=0.5, val_every=0)
    trainer.fit()
    assert 0 < trainer.step < 10_000
    assert load_checkpoint(tmp_path / CHECKPOINT)["step"] == trainer.step


def test_a_resumed_run_with_its_time_budget_spent_takes_no_step(tmp_path):
    first = make_trainer(tmp_path, 10_000, time_budget_s=0.2, val_every=0)
    first.fit()
    again = make_trainer(tmp_path, 10_000, time_budget_s=0.2, val_every=0)
    assert again.resume()
    again.fit()
    assert again.step == first.step  # the budget caps the total training time, over every session
    more = make_trainer(tmp_path, 10_000, time_budget_s=first.history.train_seconds + 0.2, val_every=0)
    assert more.resume()
    more.fit()
    assert more.step > first.step


def test_missing_stream_and_bad_config_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="needs the streams"):
        Trainer(TinyMethod(), {}, None, 2, tmp_path, LoopConfig(steps=1))
    with pytest.raises(ValueError, match="steps"):
        LoopConfig(steps=0)
    with pytest.raises(FileNotFoundError, match="train first"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_checkpoint_loads_with_weights_only(tmp_path):
    trainer = make_trainer(tmp_path, 5)
    trainer.fit()
    # weights_only=True refuses arbitrary pickles: loading must still work
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 5


# ---------------------------------------------------------------------------- history: diagnostics, gradients
@pytest.mark.parametrize("method", ["symmetric", "elbo", "supervised"])
def test_history_records_diagnostics_and_gradient_norms(method, tmp_path):
    from hvaeseg.experiment import RunConfig, train_run

    options = {"channels": 2, "code_bits": 2} if method in ("symmetric", "elbo") else {}
    config = RunConfig(method=method, data="synthetic:tiny", labels=2, steps=2, patch_size=32, block=64,
                       unlabelled_patches=8, batch_size=2, val_every=1, checkpoint_every=0, options=options)
    train_run(config, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [v["step"] for v in history["validation"]] == [1, 2]
    assert [entry["step"] for entry in history["losses"]] == [0, 1]
    if method == "supervised":
        assert all("diagnostics" not in v for v in history["validation"])
        assert all(not any(k.startswith("grad_norm") for k in entry) for entry in history["losses"])
        return
    for v in history["validation"]:
        d = v["diagnostics"]
        assert set(d) == {"sigma", "layers", "terms", "grad_norms", "train_accuracy"}
        assert len(d["sigma"]) == 10 and all(s > 0 for s in d["sigma"])  # one per band of the tiny cube
        assert {"s", "l", "z1", "z2"} <= set(d["layers"])
        assert 0 <= d["train_accuracy"] <= 1
        assert all(set(norms) == {"decoder", "encoder"} for norms in d["grad_norms"].values())
    players = ("decoder", "encoder") if method == "symmetric" else ("all",)
    for entry in history["losses"]:
        for player in players:
            assert entry[f"grad_norm_{player}"] > 0
        assert not any(k.startswith("grad_norm") and k[len("grad_norm_"):] not in players for k in entry)
