import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.methods.base import StepBatch
from hvaeseg.methods.mixmatch import (
    MixMatchConfig,
    MixMatchMethod,
    guess_labels,
    masked_squared_error,
    mixup,
    one_hot_targets,
    sharpen,
    soft_cross_entropy,
)
from hvaeseg.methods.supervised import SupervisedConfig, SupervisedMethod
from tests.methods.standin import TinyNet, random_batch


def entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(1)


@given(st.integers(2, 6), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_sharpening_gives_distributions_of_lower_entropy(K, T, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(3 * torch.randn(4, K, 3, 3, generator=g, dtype=torch.float64), dim=1)
    s = sharpen(p, T)
    torch.testing.assert_close(s.sum(1), torch.ones(4, 3, 3, dtype=torch.float64))
    assert (entropy(s) <= entropy(p) + 1e-9).all()
    assert torch.equal(s.argmax(1), p.argmax(1))
    torch.testing.assert_close(sharpen(p, 1.0), p)


@pytest.mark.parametrize("T_dates", [None, 3])
def test_guessed_labels_are_distributions(T_dates):
    net = TinyNet(3, 4)
    batch = random_batch(B=3, T=T_dates, K=4)
    q = guess_labels(net, batch.x, batch.valid, K=3, T=0.5, generator=torch.Generator().manual_seed(0))
    assert q.shape == (3, 4, 8, 8)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(3, 8, 8))
    assert not q.requires_grad


def test_guess_maps_predictions_back_to_the_patch_orientation():
    # a per-pixel (1x1) network is equivariant under the whole group: every view mapped back agrees with
    # the plain prediction, so the guess is exactly the sharpened plain prediction
    net = TinyNet(3, 4, kernel=1).eval()
    batch = random_batch(B=4, K=4)
    q = guess_labels(net, batch.x, batch.valid, K=4, T=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = sharpen(torch.softmax(net(batch.x, batch.valid), 1), 0.5)
    torch.testing.assert_close(q, want)


@given(st.floats(0.0, 1.0), st.integers(0, 2**31 - 1), st.sampled_from([None, 3]))
def test_mixup_favours_its_first_argument_and_never_draws_invalid_pixels(lam, seed, T):
    g = torch.Generator().manual_seed(seed)
    lead = (2,) if T is None else (2, T)
    v1 = torch.rand(*lead, 5, 5, generator=g) < 0.7
    v2 = torch.rand(*lead, 5, 5, generator=g) < 0.7
    x1 = torch.zeros(*lead, 3, 5, 5)
    x2 = torch.ones(*lead, 3, 5, 5)
    x2 = torch.where(v2.unsqueeze(-3), x2, torch.full((), math.nan))  # poison the second's invalid pixels
    y1 = one_hot_targets(torch.zeros(2, 5, 5, dtype=torch.long), 2)
    y2 = one_hot_targets(torch.ones(2, 5, 5, dtype=torch.long), 2)
    x, y, v = mixup(x1, y1, v1, x2, y2, v2, lam)
    assert not x.isnan().any()  # nothing from an invalid pixel of the second input
    assert torch.equal(v, v1)
    both = (v1 & v2).unsqueeze(-3).expand_as(x)
    assert (x[~both] == 0).all()  # unmixed first input where the second is invalid
    share = 1 - max(lam, 1 - lam)
    torch.testing.assert_close(x[both], torch.full_like(x[both], share))
    assert (x <= 0.5).all()  # weight >= 0.5 on the first input
    assert (y[:, 0] >= 0.5).all() and torch.allclose(y.sum(1), torch.ones(2, 5, 5))
    if T is None:
        torch.testing.assert_close(y[:, 1], share * (v1 & v2).float())
    else:  # the second's share of the target: its share of the first's valid dates
        frac = (v1 & v2).sum(1) / v1.sum(1).clamp_min(1)
        torch.testing.assert_close(y[:, 1], share * frac.float())


def test_mixup_of_void_targets_mixes_the_losses_linearly():
    logits = torch.randn(1, 3, 2, 2)
    y1 = one_hot_targets(torch.tensor([[[0, -1], [1, -1]]]), 3)
    y2 = one_hot_targets(torch.tensor([[[2, 2], [-1, -1]]]), 3)
    v = torch.ones(1, 2, 2, dtype=torch.bool)
    x = torch.zeros(1, 1, 2, 2)
    _, y, _ = mixup(x, y1, v, x, y2, v, 0.7)
    logp = torch.log_softmax(logits, 1)
    want = -(0.7 * (y1 * logp).sum() + 0.3 * (y2 * logp).sum()) / (0.7 * y1.sum() + 0.3 * y2.sum())
    torch.testing.assert_close(soft_cross_entropy(logits, y), want)
    assert y[0, :, 1, 1].sum() == 0  # void in both: no target at all


def test_soft_losses_handle_void():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(-1, 3, (2, 4, 4))
    targets = one_hot_targets(labels, 3)
    torch.testing.assert_close(soft_cross_entropy(logits, targets), F.cross_entropy(logits, labels, ignore_index=-1))
    assert soft_cross_entropy(logits, torch.zeros_like(targets)).item() == 0.0
    probs = torch.softmax(logits, 1)
    known = labels != -1
    want = ((probs - targets) ** 2).sum(1)[known].mean() / 3
    torch.testing.assert_close(masked_squared_error(probs, targets), want)
    assert masked_squared_error(probs, torch.zeros_like(targets)).item() == 0.0


@pytest.mark.parametrize("T_dates", [None, 2])
def test_with_unlabelled_weight_zero_gradients_equal_the_supervised_ones(T_dates):
    torch.manual_seed(0)
    net = TinyNet(3, 3)
    labelled = random_batch(B=3, T=T_dates, seed=1)
    batch = StepBatch(labelled=labelled, unlabelled=random_batch(B=2, T=T_dates, seed=2))
    aug = dict(max_shift=2, jitter=0.1)
    sup = SupervisedMethod(copy.deepcopy(net), SupervisedConfig(**aug), seed=7)
    mm = MixMatchMethod(copy.deepcopy(net), MixMatchConfig(lambda_u=0.0, alpha=0.0, **aug), seed=7)
    sum(sup.losses(batch, 0).values()).backward()
    mm_losses = mm.losses(batch, 10_000)
    assert mm_losses["unlabelled"].item() == 0.0
    sum(mm_losses.values()).backward()
    for (name, a), b in zip(sup.net.named_parameters(), mm.net.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_unlabelled_weight_ramps_linearly():
    mm = MixMatchMethod(TinyNet(3, 3), MixMatchConfig(lambda_u=10.0, rampup_steps=100))
    assert [mm.unlabelled_weight(s) for s in (0, 50, 100, 500)] == [0.0, 5.0, 10.0, 10.0]
    assert MixMatchMethod(TinyNet(3, 3), MixMatchConfig(rampup_steps=0, lambda_u=75.0)).unlabelled_weight(0) == 75.0


def test_training_steps_update_the_ema_used_for_prediction_and_resume_exactly():
    cfg = MixMatchConfig(max_shift=1, jitter=0.05, rampup_steps=2, lambda_u=10.0)
    batch = StepBatch(labelled=random_batch(B=2, seed=3), unlabelled=random_batch(B=2, seed=4))
    method = MixMatchMethod(TinyNet(3, 3), cfg, seed=11)
    start = copy.deepcopy(method.net.state_dict())
    losses = {}
    for step in range(3):
        losses = method.losses(batch, step)
        assert set(losses) == {"labelled", "unlabelled"} and all(torch.isfinite(v) for v in losses.values())
        method.update(losses)
        method.after_update(step)
        if step == 1:
            buffer = io.BytesIO()
            torch.save(method.state_dict(), buffer)
    assert not method.ema.training and all(not p.requires_grad for p in method.ema.parameters())
    # the EMA lies between the start and the current weights, distinct from both
    for name, p in method.net.named_parameters():
        e = dict(method.ema.named_parameters())[name]
        if not torch.equal(p, start[name]):
            assert not torch.equal(e, p)
    x, valid = batch.labelled.x, batch.labelled.valid
    with torch.no_grad():
        ema_probs = torch.softmax(method.ema(x, valid), 1)
    torch.testing.assert_close(method.predict_proba(x, valid), ema_probs)
    # resume from the state of step 1: step 2 repeats exactly
    buffer.seek(0)
    resumed = MixMatchMethod(TinyNet(3, 3), cfg, seed=0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    again = resumed.losses(batch, 2)
    for k in losses:
        assert again[k].item() == losses[k].item()


def test_config_is_validated_and_streams_are_required():
    for bad in (dict(K=0), dict(T=0.0), dict(T=1.5), dict(alpha=-1.0), dict(lambda_u=-1.0),
                dict(rampup_steps=-1), dict(ema_decay=1.0), dict(lr=-1.0)):
        with pytest.raises(ValueError):
            MixMatchConfig(**bad)
    mm = MixMatchMethod(TinyNet(3, 3))
    with pytest.raises(ValueError, match="unlabelled batch"):
        mm.losses(StepBatch(labelled=random_batch()), 0)
    with pytest.raises(ValueError, match="same shape"):
        mm.losses(StepBatch(labelled=random_batch(), unlabelled=random_batch(H=4, W=4)), 0)
    with pytest.raises(TypeError, match="MixMatchConfig"):
        MixMatchMethod(TinyNet(3, 3), SupervisedConfig())
