"""Both objectives and the estimators on a tiny HVAE (default hierarchy, plain and temporal): finite losses,
gradients in the right parameter groups, the clear error for the empirical prior under the ELBO, and the
consistency and reconstruction error equal to what their definitions give on the HVAE's own sites."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from hvaeseg.hierarchy import HVAE, HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec
from hvaeseg.objectives import (
    LabelPool,
    SemiSupervisedELBO,
    SymmetricEquilibrium,
    consistency,
    fill_void_nearest,
    iwae_bound,
    reconstruction_error,
)
from hvaeseg.traces import replay, unwrap

K, BANDS, SIDE = 3, 2, 8


def _every_family(s_prior: str, temporal: bool) -> HierarchySpec:
    """A user-declared hierarchy with a categorical, a Bernoulli and a Gaussian latent layer."""
    return HierarchySpec(
        num_classes=K,
        code_bits=2,
        layers=(
            LatentLayerSpec("c", "categorical", 1, 2, ("s", "l"), categories=3),
            LatentLayerSpec("b", "bernoulli", 2, 2, ("c", "l")),
            LatentLayerSpec("g", "gaussian", 1, 1, ("s", "b")),
        ),
        image=ImageLayerSpec(BANDS, ("s", "l", "g")),
        s_prior=s_prior,
        temporal=temporal,
        network=NetworkSpec((4, 4), (1, 1), 4, 1),
    )


def _tiny(s_prior: str, temporal: bool, families: bool = False):
    if families:
        spec = _every_family(s_prior, temporal)
    else:
        spec = HierarchySpec.default(
            K, BANDS, 2, channels=2, s_prior=s_prior, temporal=temporal, encoder_widths=(4, 4, 4), decoder_width=4
        )
    model = HVAE(spec)
    g = torch.Generator().manual_seed(0)
    lead = (2, 3) if temporal else (2,)
    x = torch.randn(*lead, BANDS, SIDE, SIDE, generator=g)
    valid = torch.rand(*lead, SIDE, SIDE, generator=g) > 0.2
    s = torch.randint(0, K, (2, SIDE, SIDE), generator=g)
    s[torch.rand(2, SIDE, SIDE, generator=g) < 0.5] = -1
    s[:, 0, 0] = 1
    return model, x, valid, s


def _nonzero(grads):
    return sum(g is not None and bool(g.abs().sum() > 0) for g in grads)


@pytest.mark.parametrize(
    "s_prior, temporal, families",
    [
        ("empirical", False, False),
        ("categorical", False, False),
        ("empirical", True, False),
        ("categorical", True, True),
        ("empirical", False, True),
    ],
    ids=["empirical", "categorical", "empirical-temporal", "categorical-temporal-every-family", "every-family"],
)
def test_symmetric_on_tiny_hvae(s_prior, temporal, families):
    m, x, valid, s = _tiny(s_prior, temporal, families)
    theta, phi = m.parameter_groups()
    pool = LabelPool(s, seed=0).sample(3)
    dec, enc = SymmetricEquilibrium(num_particles=2).differentiable_loss(
        m.model, m.guide, labelled=(x, s, valid), unlabelled=(x, valid), pool=pool
    )
    assert torch.isfinite(dec) and torch.isfinite(enc)
    g_theta = torch.autograd.grad(dec, theta, allow_unused=True, retain_graph=True)
    g_phi_dec = torch.autograd.grad(dec, phi, allow_unused=True)
    g_phi = torch.autograd.grad(enc, phi, allow_unused=True)
    # zero-initialised last convolutions leave some parameters without gradient at initialisation
    assert _nonzero(g_theta) >= len(theta) // 2
    assert _nonzero(g_phi_dec) == 0  # the decoder loss never reaches the encoder
    assert _nonzero(g_phi) >= len(phi) // 2


@pytest.mark.parametrize(
    "temporal, families", [(False, False), (True, False), (False, True)], ids=["plain", "temporal", "every-family"]
)
@pytest.mark.parametrize("estimator", ["straight_through", "score_function"])
def test_elbo_on_tiny_hvae(estimator, temporal, families):
    m, x, valid, s = _tiny("categorical", temporal, families)
    theta, phi = m.parameter_groups()
    loss = SemiSupervisedELBO(estimator=estimator, num_particles=2).differentiable_loss(
        m.model, m.guide, labelled=(x, s, valid), unlabelled=(x, valid)
    )
    assert torch.isfinite(loss)
    grads = torch.autograd.grad(loss, theta + phi, allow_unused=True)
    assert _nonzero(grads[: len(theta)]) >= len(theta) // 2
    assert _nonzero(grads[len(theta) :]) >= len(phi) // 2


def test_elbo_refuses_the_empirical_prior_of_an_hvae():
    m, x, valid, s = _tiny("empirical", False)
    with pytest.raises(ValueError, match="ELBO needs a closed-form s prior: set s_prior='categorical'"):
        SemiSupervisedELBO().differentiable_loss(m.model, m.guide, labelled=(x, s, valid))


def _favours(k: int, temporal: bool):
    """A guide blind to its input whose q(s | x) puts most mass on class ``k`` everywhere (the HVAE's
    layout: a temporal guide's "s" site has a date axis of 1)."""

    def guide(x, s=None, valid=None, **_):
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        logits = torch.nn.functional.one_hot(torch.tensor(k), K).float().expand(B, H, W, K)
        with pyro.plate("batch", B, dim=-2 if temporal else -1):
            pyro.sample("s", dist.Categorical(logits=logits.unsqueeze(1) if temporal else logits).to_event(2))

    return guide


@pytest.mark.parametrize("temporal", [False, True], ids=["plain", "temporal"])
@torch.no_grad()
def test_consistency_on_tiny_hvae(temporal):
    m, _, valid, s = _tiny("categorical", temporal)
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():  # random weights: at initialisation (zero last convs) q(s | x) hardly depends on x
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
    ones = torch.ones_like(valid)
    lab = s >= 0
    # the HVAE's images read by a blind encoder: exactly the share of class 2 among the labelled pixels
    blind = consistency(m.model, _favours(2, temporal), s, num_samples=3, valid=ones)
    assert blind == int((s[lab] == 2).sum()) / int(lab.sum())
    # the HVAE's own pair: generate from the void-filled maps, encode, count the labelled pixels recovered
    pyro.set_rng_seed(3)
    got = consistency(m.model, m.guide, s, num_samples=2, valid=ones)
    pyro.set_rng_seed(3)
    filled = fill_void_nearest(s).repeat(2, 1, 1)
    vr = ones.repeat((2,) + (1,) * (ones.dim() - 1))
    x = m.model(None, filled, vr)
    logits = unwrap(poutine.trace(m.guide).get_trace(x, valid=vr).nodes["s"]["fn"]).logits
    pred = (logits.squeeze(1) if temporal else logits).argmax(-1)
    assert got == float(((pred == filled) & lab.repeat(2, 1, 1)).sum()) / (2 * int(lab.sum()))


@pytest.mark.parametrize("temporal", [False, True], ids=["plain", "temporal"])
@torch.no_grad()
def test_estimators_on_tiny_hvae(temporal):
    m, x, valid, s = _tiny("categorical", temporal)
    bound = iwae_bound(m.model, m.guide, x, valid, num_samples=3)
    assert bound.shape == (2,) and torch.isfinite(bound).all()
    # the reconstruction error of one posterior sample, by hand: the decoder mean against x on valid pixels
    pyro.set_rng_seed(5)
    err = reconstruction_error(m.model, m.guide, x, valid)
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(m.guide).get_trace(x, valid=valid)
    mean = unwrap(poutine.trace(replay(m.model, trace=guide_trace)).get_trace(x, valid=valid).nodes["x"]["fn"]).mean
    diff = (mean.expand_as(x) - x).movedim(-3, 0)[:, valid]  # (C, valid pixels): every band of a valid pixel
    assert err["mae"] == pytest.approx(float(diff.abs().mean()), rel=1e-6)
    assert err["rmse"] == pytest.approx(float(diff.pow(2).mean().sqrt()), rel=1e-6)
