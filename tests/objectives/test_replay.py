"""The decoder's replayed batches (``decoder_replay``): the loss is the average over this step's and the kept steps'
batches of the weighted exact log-likelihood (checked by hand from :func:`exact_log_likelihood`), the buffer keeps
the last ``size`` steps, survives a checkpoint, and changes nothing of the encoder's loss; the methods and configs
that cannot use it say so."""

from __future__ import annotations

import pytest
import torch

from hvaeseg.hierarchy import HierarchySpec, ImageLayerSpec, NetworkSpec
from hvaeseg.methods.base import StepBatch
from hvaeseg.methods.hvae import ELBOMethod, HVAEConfig, SymmetricMethod
from hvaeseg.objectives import DecoderReplay
from hvaeseg.objectives.exact import exact_log_likelihood
from tests.methods.standin import random_batch

C, K, P = 3, 3, 4

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def spec() -> HierarchySpec:
    return HierarchySpec(K, 2, (), ImageLayerSpec(C, ("s", "doy"), cov_rank=1), s_prior="categorical",
                         network=NetworkSpec((4,), (1,), 4, 1, decoder_interactions=True, decoder_kernel=1),
                         patch_size=P)


def method(replay: int, cls=SymmetricMethod, **options) -> SymmetricMethod:
    torch.manual_seed(0)
    config = HVAEConfig(spec=spec().to_dict(), exact_s=True, augment=False, decoder_replay=replay,
                        weights={"sleep_q": 0.0, "posterior_q": 2.0}, **options)
    return cls.build(C, K, config=config, patch_size=P)


def batches(seed: int) -> StepBatch:
    lab = random_batch(B=2, C=C, H=P, W=P, K=K, seed=seed)
    unl = random_batch(B=3, C=C, H=P, W=P, K=K, seed=seed + 100)
    return StepBatch(lab, unl._replace(labels=torch.full_like(unl.labels, -1)))


def test_the_loss_averages_this_step_and_the_kept_steps_and_keeps_the_last_size():
    m = method(0)
    model = m.hvae.model
    replay = DecoderReplay(2)
    w = (0.5, 2.0)

    def loss(b):  # the weighted decoder loss of one step's batches, means per image
        return -(w[0] * exact_log_likelihood(model, labelled=b.labelled)
                 + w[1] * exact_log_likelihood(model, unlabelled=b.unlabelled))

    steps = [batches(seed) for seed in range(4)]
    for i, b in enumerate(steps):
        got = replay.decoder_loss(model, loss(b), w, labelled=b.labelled, unlabelled=b.unlabelled)
        kept = steps[max(0, i - 2):i]  # the last two steps before this one
        want = (loss(b) + sum(loss(k) for k in kept)) / (1 + len(kept))
        torch.testing.assert_close(got, want)
        assert len(replay) == min(i + 1, 2)
    assert got.requires_grad  # the kept batches are data: the gradient reaches the decoder through them too
    assert all(not t.requires_grad for b in replay.unlabelled for t in b if isinstance(t, torch.Tensor))


def test_a_stream_without_a_kept_batch_or_at_weight_zero_adds_nothing():
    model = method(0).hvae.model
    replay = DecoderReplay(3)
    b0, b1 = batches(0), batches(1)
    replay.decoder_loss(model, torch.zeros(()), (1.0, 1.0), unlabelled=b0.unlabelled)  # keeps an unlabelled batch only
    got = replay.decoder_loss(model, torch.zeros(()), (0.0, 1.0), labelled=b1.labelled, unlabelled=b1.unlabelled)
    torch.testing.assert_close(got, -exact_log_likelihood(model, unlabelled=b0.unlabelled) / 2)
    assert (len(replay.labelled), len(replay.unlabelled)) == (1, 2)


def test_symmetric_learning_with_replay_changes_the_decoder_loss_only_and_resumes_exactly(tmp_path):
    plain, replayed = method(0), method(2)
    for step in range(3):
        b = batches(step)
        lp, lr = plain.losses(b, step), replayed.losses(b, step)
        torch.testing.assert_close(lp["encoder"], lr["encoder"])  # same parameters: neither has stepped
        if step == 0:  # nothing kept yet
            torch.testing.assert_close(lp["decoder"], lr["decoder"])
        else:
            assert not torch.allclose(lp["decoder"], lr["decoder"])
    assert len(replayed.replay) == 2
    torch.save(replayed.state_dict(), tmp_path / "state.pt")
    resumed = method(2)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    b = batches(7)
    torch.testing.assert_close(resumed.losses(b, 3)["decoder"], replayed.losses(b, 3)["decoder"])


def test_the_elbo_a_default_config_and_a_bad_size_are_refused():
    with pytest.raises(ValueError, match="decoder_replay: the ELBO's decoder gradient is weighted by q"):
        method(2, ELBOMethod)
    with pytest.raises(ValueError, match="decoder_replay: .*needs exact_s: true"):
        HVAEConfig(decoder_replay=2)
    with pytest.raises(ValueError, match="decoder_replay: expected an int >= 0"):
        HVAEConfig(decoder_replay=-1, exact_s=True)
    for size in (0, 1.5, True):
        with pytest.raises(ValueError, match="expected the replay size as an int >= 1"):
            DecoderReplay(size)  # type: ignore[arg-type]
