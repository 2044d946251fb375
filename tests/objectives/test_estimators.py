"""IWAE bound, encoder-decoder consistency, reconstruction error."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from hvaeseg.objectives import consistency, iwae_bound, reconstruction_error
from hvaeseg.traces import replay, unwrap
from tests.objectives.tiny import TinyHVAE, all_images, all_latents, log_guide, log_joint, log_marginal, rows


def test_iwae_bound_increases_with_k_towards_the_exact_log_likelihood():
    m = TinyHVAE(scale=1.5)  # an imperfect guide: a visible gap at k = 1
    x = all_images(m)[[3, 10, 12]]
    valid = torch.tensor([[[True, False]], [[True, True]], [[True, True]]])
    exact = log_marginal(m, x, valid).detach()
    R = 300  # independent estimates per image: the batch holds R copies of each image
    xr, vr = x.repeat(R, 1, 1, 1), valid.repeat(R, 1, 1)
    means, ses = [], []
    for k in (1, 4, 16, 128):
        est = iwae_bound(m.model, m.guide, xr, vr, num_samples=k).reshape(R, 3)
        means.append(est.mean(0))
        ses.append(est.std(0) / R**0.5)
    means, ses = torch.stack(means), torch.stack(ses)
    # k = 1 is the ELBO: compare with its exact value
    h = all_latents(m)
    n = len(h["s"])
    elbo = []
    for b in range(3):
        lq = log_guide(m, x[b : b + 1].expand(n, -1, -1, -1), h, valid[b : b + 1].expand(n, -1, -1))
        lp = log_joint(m, x[b : b + 1].expand(n, -1, -1, -1), h, valid[b : b + 1].expand(n, -1, -1))
        elbo.append((lq.exp() * (lp - lq)).sum().detach())
    assert torch.all((means[0] - torch.stack(elbo)).abs() < 4 * ses[0] + 1e-4)
    # a lower bound (statistically) ...
    assert torch.all(means <= exact + 4 * ses + 1e-4)
    # ... that increases with k ...
    for a, b in zip(range(3), range(1, 4)):
        assert torch.all(means[b] > means[a] - 4 * (ses[a] ** 2 + ses[b] ** 2) ** 0.5)
    assert torch.all(means[3] - means[0] > 0.2)  # the gap at k = 1 is real and shrinks
    # ... towards log p(x)
    assert torch.all(exact - means[3] < 0.1)
    assert torch.all(exact - means[3] < 0.15 * (exact - means[0]))


def test_iwae_bound_chunks_and_checks():
    m = TinyHVAE()
    x = all_images(m)[:2]
    pyro.set_rng_seed(0)
    a = iwae_bound(m.model, m.guide, x, num_samples=8, chunk_size=3)
    assert a.shape == (2,) and torch.isfinite(a).all() and not a.requires_grad
    with pytest.raises(ValueError, match="num_samples"):
        iwae_bound(m.model, m.guide, x, num_samples=0)
    e = TinyHVAE(s_prior="empirical")
    with pytest.raises(ValueError, match="closed-form s prior"):
        iwae_bound(e.model, e.guide, x, num_samples=2)


def _perfect_pair(K=3, H=2, W=3, noise=0.05):
    """x = one-hot(s) + small noise (Gaussian), guide q(s|x) = softmax(x / tau): perfectly consistent."""

    def model(x=None, s=None, valid=None):
        B = s.shape[0] if s is not None else x.shape[0]
        with pyro.plate("batch", B):
            s = pyro.sample("s", dist.Categorical(logits=torch.zeros(B, H, W, K)).to_event(2), obs=s)
            mean = torch.nn.functional.one_hot(s, K).permute(0, 3, 1, 2).float()
            fn = dist.Normal(mean, noise)
            if valid is not None:
                fn = fn.mask(valid.unsqueeze(1))
            return pyro.sample("x", fn.to_event(3), obs=x)

    def guide(x, s=None, valid=None):
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("s", dist.Categorical(logits=x.permute(0, 2, 3, 1) / 0.1).to_event(2))

    def blind_guide(x, s=None, valid=None):  # ignores x, always favours class 0
        with pyro.plate("batch", x.shape[0]):
            logits = torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], H, W, K)
            pyro.sample("s", dist.Categorical(logits=logits).to_event(2))

    return model, guide, blind_guide


def test_consistency_of_a_perfect_and_of_a_blind_encoder():
    model, guide, blind = _perfect_pair()
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 3, (20, 2, 3), generator=g)
    s[torch.rand(s.shape, generator=g) < 0.3] = -1  # void pixels: filled for generation, not counted
    s[:, 0, 0] = 1
    assert consistency(model, guide, s, num_samples=2) == 1.0
    blind_score = consistency(model, blind, s)
    labelled = s[s >= 0]
    assert blind_score == pytest.approx(float((labelled == 0).float().mean()))
    with pytest.raises(ValueError, match="only void"):
        consistency(model, guide, torch.full((2, 2, 3), -1))


def test_consistency_generates_void_pixels_from_their_nearest_label():
    """A model whose image shows, at each pixel, the class of its right neighbour (wrapping), read back by
    the encoder: a labelled pixel agrees iff its right neighbour was generated with its class, so the
    score shows how void neighbours were filled (nearest labelled pixel, the first in row-major order on
    ties) and that only labelled pixels count."""
    K = 3

    def model(x=None, s=None, valid=None):
        with pyro.plate("batch", s.shape[0]):
            s = pyro.sample("s", dist.Categorical(logits=torch.zeros(*s.shape, K)).to_event(2), obs=s)
            mean = torch.nn.functional.one_hot(s.roll(-1, dims=-1), K).permute(0, 3, 1, 2).float()
            return pyro.sample("x", dist.Normal(mean, 0.05).to_event(3), obs=x)

    def guide(x, s=None, valid=None):
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("s", dist.Categorical(logits=x.permute(0, 2, 3, 1) / 0.1).to_event(2))

    s = torch.tensor([[[1, -1, 2, 2]], [[1, -1, -1, 2]]])
    # filled: [1, 1, 2, 2] (pixel 1 is as near to 1 as to 2: the first wins) and [1, 1, 2, 2];
    # labelled pixels whose right neighbour has their class: (0, 0), (0, 2) of map 0 and (1, 0) of map 1
    pyro.set_rng_seed(0)
    assert consistency(model, guide, s, num_samples=4) == 3 / 5


def _exact_agreement(m: TinyHVAE, s_gen: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance, per map, of the number of ``counted`` pixels where ``argmax q(s | x) = s_gen`` for
    ``x ~ p(x | s_gen)``: every binary image enumerated, ``p(x | s) ∝ sum_{l, z} p(x, s, l, z)``."""
    xs, h = all_images(m), all_latents(m)
    valid = torch.ones(1, m.H, m.W, dtype=torch.bool)
    pred = m.s_posterior_logits(xs, valid.expand(len(xs), -1, -1)).argmax(-1)  # what the encoder says per image
    means, variances = [], []
    for b in range(len(s_gen)):
        hb = rows(h, (h["s"] == s_gen[b]).flatten(1).all(1))
        n = len(hb["s"])
        log_px = torch.stack(
            [torch.logsumexp(log_joint(m, x[None].expand(n, -1, -1, -1), hb, valid.expand(n, -1, -1)), 0) for x in xs]
        )
        w = log_px.softmax(0)  # p(x | s_gen[b]) over every image
        agree = ((pred == s_gen[b]) & counted[b]).flatten(1).sum(1).to(w.dtype)
        means.append((w * agree).sum())
        variances.append((w * agree**2).sum() - means[-1] ** 2)
    return torch.stack(means), torch.stack(variances)


@torch.no_grad()
def test_consistency_on_the_tiny_model_matches_enumeration():
    """The Monte Carlo estimate against its exact expectation, by enumeration of (x, l, z) given s."""
    m = TinyHVAE(K=3, scale=1.5, seed=5)  # every map agrees sometimes, never always
    s = torch.tensor([[[0, 1]], [[2, -1]], [[1, 2]]])
    s_gen = torch.tensor([[[0, 1]], [[2, 2]], [[1, 2]]])  # the void pixel generated as its labelled neighbour
    labelled = s >= 0
    mean, var = _exact_agreement(m, s_gen, labelled)
    n_lab, N = int(labelled.sum()), 4000
    exact, se = float(mean.sum()) / n_lab, float(var.sum() / N) ** 0.5 / n_lab
    assert 0.1 < (mean / labelled.flatten(1).sum(1)).min() and (mean / labelled.flatten(1).sum(1)).max() < 0.9
    pyro.set_rng_seed(0)
    got = consistency(m.model, m.guide, s, num_samples=N, valid=torch.ones(3, 1, 2, dtype=torch.bool))
    assert abs(got - exact) < 4 * se
    # counting the void pixel too would move the estimate away: the test can tell the two apart
    all_pixels, _ = _exact_agreement(m, s_gen, torch.ones_like(labelled))
    assert abs(float(all_pixels.sum()) / s.numel() - exact) > 10 * se


def test_reconstruction_error_on_valid_pixels():
    m = TinyHVAE(likelihood="gaussian")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 1, 2, generator=g)
    valid = torch.tensor([[[True, False]], [[True, True]], [[False, False]], [[False, True]]])
    pyro.set_rng_seed(5)
    out = reconstruction_error(m.model, m.guide, x, valid)
    # by hand with the same posterior sample
    pyro.set_rng_seed(5)
    gtr = poutine.trace(m.guide).get_trace(x, valid=valid)
    mtr = poutine.trace(replay(m.model, trace=gtr)).get_trace(x=x, valid=valid)
    mean = unwrap(mtr.nodes["x"]["fn"]).mean.detach()
    mask = valid.unsqueeze(1).expand_as(x)
    err = (mean - x)[mask]
    assert out["mae"] == pytest.approx(float(err.abs().mean()), rel=1e-6)
    assert out["rmse"] == pytest.approx(float(err.pow(2).mean().sqrt()), rel=1e-6)
    # occluded pixels do not matter
    x2 = x.clone()
    x2[~mask] = 100.0
    pyro.set_rng_seed(5)
    assert reconstruction_error(m.model, m.guide, x2, valid)["mae"] == pytest.approx(out["mae"], rel=1e-5)
    with pytest.raises(ValueError, match="valid pixel"):
        reconstruction_error(m.model, m.guide, x, torch.zeros_like(valid))
