"""Both objectives and the estimators on a tiny HVAE (default hierarchy, plain and temporal): finite losses,
gradients in the right parameter groups, and the clear error for the empirical prior under the ELBO."""

from __future__ import annotations

import pytest
import torch

from hvaeseg.hierarchy import HVAE, HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec
from hvaeseg.objectives import (
    LabelPool,
    SemiSupervisedELBO,
    SymmetricEquilibrium,
    consistency,
    iwae_bound,
    reconstruction_error,
)

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
    dec, enc = SymmetricEquilibrium(num_particles=2).loss(
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
    loss = SemiSupervisedELBO(estimator=estimator, num_particles=2).loss(
        m.model, m.guide, labelled=(x, s, valid), unlabelled=(x, valid)
    )
    assert torch.isfinite(loss)
    grads = torch.autograd.grad(loss, theta + phi, allow_unused=True)
    assert _nonzero(grads[: len(theta)]) >= len(theta) // 2
    assert _nonzero(grads[len(theta) :]) >= len(phi) // 2


def test_elbo_refuses_the_empirical_prior_of_an_hvae():
    m, x, valid, s = _tiny("empirical", False)
    with pytest.raises(ValueError, match="ELBO needs a closed-form s prior: set s_prior='categorical'"):
        SemiSupervisedELBO().loss(m.model, m.guide, labelled=(x, s, valid))


@pytest.mark.parametrize("temporal", [False, True], ids=["plain", "temporal"])
def test_estimators_on_tiny_hvae(temporal):
    m, x, valid, s = _tiny("categorical", temporal)
    bound = iwae_bound(m.model, m.guide, x, valid, num_samples=3)
    assert bound.shape == (2,) and torch.isfinite(bound).all()
    c = consistency(m.model, m.guide, s, valid=torch.ones_like(valid))
    assert 0.0 <= c <= 1.0
    err = reconstruction_error(m.model, m.guide, x, valid)
    assert err["mae"] > 0 and err["rmse"] >= err["mae"]
