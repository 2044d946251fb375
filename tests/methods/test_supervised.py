import copy

import pytest
import torch
import torch.nn.functional as F

from hvaeseg.methods.base import StepBatch
from hvaeseg.methods.supervised import (
    SupervisedConfig,
    SupervisedMethod,
    cross_entropy,
    decay_param_groups,
)
from tests.methods.standin import TinyNet, random_batch


def test_cross_entropy_ignores_void_and_is_never_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(-1, 3, (2, 4, 4))
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels, ignore_index=-1))
    void = torch.full((2, 4, 4), -1)
    loss = cross_entropy(logits, void)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_weight_decay_applies_to_weights_only():
    net = TinyNet(3, 4)
    decay, no_decay = decay_param_groups(net, 0.1)
    names = {id(p): n for n, p in net.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"body.0.weight", "head.weight"}
    assert {names[id(p)] for p in no_decay["params"]} == {"body.0.bias", "body.1.weight", "body.1.bias", "head.bias"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    method = SupervisedMethod(net, SupervisedConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in method.optimizer.param_groups] == [0.1, 0.0]


def test_pixels_invalid_on_every_date_keep_their_labels():
    batch = random_batch(B=1, T=2, void=False)
    batch.valid[:, :, 0, 0] = False  # hidden on every date
    method = SupervisedMethod(TinyNet(3, 3), SupervisedConfig(dihedral=False))
    flipped = batch.labels.clone()
    flipped[0, 0, 0] = (flipped[0, 0, 0] + 1) % 3
    a = method.losses(StepBatch(labelled=batch), 0)["ce"]
    b = method.losses(StepBatch(labelled=batch._replace(labels=flipped)), 0)["ce"]
    assert a.item() != b.item()


def test_losses_are_seeded_and_resume_from_state():
    """A method restored mid-run (weights, AdamW moments, augmentation generator) continues exactly as the
    uninterrupted one: same losses and weights, although it was built with another seed and other weights."""
    batch = StepBatch(labelled=random_batch(B=3, seed=1))
    config = SupervisedConfig(max_shift=2, jitter=0.1)
    a = SupervisedMethod(TinyNet(3, 3), config, seed=5)
    for step in range(3):
        a.update(a.losses(batch, step))
    state = copy.deepcopy(a.state_dict())
    torch.manual_seed(123)  # another initialisation of the fresh method's weights
    b = SupervisedMethod(TinyNet(3, 3), config, seed=99)
    assert not all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))
    b.load_state_dict(state)
    for step in range(3, 6):
        la, lb = a.losses(batch, step), b.losses(batch, step)
        assert la["ce"].item() == lb["ce"].item()
        a.update(la)
        b.update(lb)
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters()))
    # without the optimizer's moments the continuation differs: the test would catch a lost AdamW state
    c = SupervisedMethod(TinyNet(3, 3), config, seed=99)
    c.net.load_state_dict(state["modules"]["net"])
    c.generator.set_state(state["generator"])
    for step in range(3, 6):
        c.update(c.losses(batch, step))
    assert not all(torch.equal(p, q) for p, q in zip(a.net.parameters(), c.net.parameters()))
    probs = a.predict_proba(batch.labelled.x, batch.labelled.valid)
    assert probs.shape == (3, 3, 8, 8)
    torch.testing.assert_close(probs.sum(1), torch.ones(3, 8, 8))
    assert a.net.training  # predict_proba restores the mode it found


def test_config_and_batch_errors():
    with pytest.raises(ValueError, match="lr"):
        SupervisedConfig(lr=0)
    with pytest.raises(ValueError, match="widths"):
        SupervisedConfig(widths=(8, 0))
    with pytest.raises(ValueError, match="max_shift"):
        SupervisedConfig(max_shift=-2)
    with pytest.raises(ValueError, match="date_dropout"):
        SupervisedConfig(date_dropout=1)
    method = SupervisedMethod(TinyNet(3, 3))
    with pytest.raises(ValueError, match="labelled batch"):
        method.losses(StepBatch(), 0)


def test_build_uses_the_guide_unet():
    from hvaeseg import nets

    method = SupervisedMethod.build(3, 4, config=SupervisedConfig(widths=(8, 16)), temporal=True)
    assert isinstance(method.net, nets.SegmentationUNet)
    batch = random_batch(B=2, T=3, K=4)
    losses = method.losses(StepBatch(labelled=batch), 0)
    method.update(losses)
    assert method.predict_proba(batch.x, batch.valid, batch.doy).shape == (2, 4, 8, 8)


def test_date_dropout_hides_dates_from_the_network():
    """With date dropout the network sees some dates of a labelled stack as invalid and zero: the loss is that of
    the batch with those dates hidden by hand (the method's generator replayed)."""
    from hvaeseg.methods.augment import drop_dates

    batch = random_batch(B=4, T=3, seed=2)
    config = SupervisedConfig(dihedral=False, date_dropout=0.5)
    method = SupervisedMethod(TinyNet(3, 3), config, seed=7)
    g = torch.Generator().manual_seed(0)
    g.set_state(method.generator.get_state())
    dropped = config.augmentation.draw(batch.x, g).dropped
    assert dropped.any() and (~dropped).any(dim=1).all()
    loss = method.losses(StepBatch(labelled=batch), 0)["ce"]
    x, valid = drop_dates(batch.x, batch.valid, dropped)
    plain = SupervisedMethod(method.net, SupervisedConfig(dihedral=False))
    assert loss.item() == plain.losses(StepBatch(labelled=batch._replace(x=x, valid=valid)), 0)["ce"].item()
    full = plain.losses(StepBatch(labelled=batch), 0)["ce"]
    assert loss.item() != full.item()
