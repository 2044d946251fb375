"""Relabelled sleep maps (``SymmetricEquilibrium(sleep_relabel=rho)``): the map of classes, its rate, its use."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.methods.hvae import HVAEConfig
from hvaeseg.objectives import SymmetricEquilibrium, SymmetricWeights
from hvaeseg.objectives.symmetric import relabel_maps
from tests.objectives.tiny import TinyHVAE


@settings(max_examples=60, deadline=None)
@given(K=st.integers(1, 6), B=st.integers(1, 5), H=st.integers(1, 4), W=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_relabelling_is_a_map_of_classes_per_image_and_keeps_void(K, B, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randint(-1, K, (B, H, W), generator=g)
    torch.manual_seed(seed)
    out = relabel_maps(maps, 1.0, K)
    assert out.shape == maps.shape and out.dtype == maps.dtype
    assert torch.equal(out < 0, maps < 0)  # void stays void, nothing else becomes void
    assert bool(((out >= 0) & (out < K))[maps >= 0].all())
    for b in range(B):  # equal classes in, equal classes out: a function of the class id
        for c in maps[b].unique().tolist():
            if c >= 0:
                assert out[b][maps[b] == c].unique().numel() == 1


def test_rho_zero_draws_nothing_and_returns_the_maps():
    maps = torch.randint(0, 3, (4, 2, 2))
    state = torch.random.get_rng_state()
    assert relabel_maps(maps, 0.0, 3) is maps
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_share_rho_of_the_maps_is_relabelled():
    K, n, rho = 64, 4000, 0.3  # every class present: a random map of 64 classes is never the identity
    maps = torch.arange(K).view(1, 8, 8).expand(n, 8, 8)
    torch.manual_seed(0)
    changed = (relabel_maps(maps, rho, K) != maps).flatten(1).any(1).float().mean().item()
    sd = (rho * (1 - rho) / n) ** 0.5
    assert abs(changed - rho) < 4 * sd


def test_the_sleep_term_generates_classes_that_no_pool_map_holds():
    """A pool of class 0 only: without relabelling the model generates from class 0 only; with it, class 1
    reaches the generated maps and the encoder is scored on it."""
    m = TinyHVAE(K=2, H=2, W=3, D=1, C=2)
    seen = []

    def model(x=None, s=None, valid=None, **kw):
        if x is None:
            seen.append(s.clone())
        return m.model(x, s, valid)

    pool = torch.zeros(32, 2, 3, dtype=torch.long)
    xu = torch.zeros(4, 2, 2, 3)
    weights = SymmetricWeights(labelled_p=0, unlabelled_p=0, supervised_q=0, sleep_q=1)
    torch.manual_seed(0)
    SymmetricEquilibrium(weights).differentiable_loss(model, m.guide, unlabelled=(xu, None), pool=pool)
    assert bool((seen[-1] == 0).all())
    _, enc = SymmetricEquilibrium(weights, sleep_relabel=1.0, num_classes=2).differentiable_loss(
        model, m.guide, unlabelled=(xu, None), pool=pool
    )
    assert bool((seen[-1] == 1).any()) and torch.isfinite(enc)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sleep_relabel"):
        SymmetricEquilibrium(sleep_relabel=1.5, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        SymmetricEquilibrium(sleep_relabel=0.5)
    with pytest.raises(ValueError, match="sleep_relabel"):
        HVAEConfig(sleep_relabel=-0.1)
    with pytest.raises(ValueError, match="sleep_relabel"):
        HVAEConfig(sleep_relabel=True)


def test_relabelling_needs_the_number_of_classes():
    # found by mypy (num_classes: int | None): None with rho > 0 reached torch.randint(None, ...), a TypeError
    maps = torch.zeros(2, 3, 3, dtype=torch.long)
    assert relabel_maps(maps, 0.0, None) is maps  # nothing drawn, nothing needed
    with pytest.raises(ValueError, match="expected num_classes"):
        relabel_maps(maps, 0.5, None)
