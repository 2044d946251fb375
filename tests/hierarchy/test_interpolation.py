"""The ``interp`` covariate: leave-one-out interpolation in a stack, its day gaps, and the HVAE that takes it."""

from __future__ import annotations

import numpy as np
import pyro.poutine as poutine
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.hierarchy.interpolation import (
    INTERP_EXTRA_CHANNELS,
    interpolation_input,
    neighbour_interpolation,
    stack_days,
)
from hvaeseg.inpaint import posterior_inpaint, temporal_linear_interpolation
from hvaeseg.traces import unwrap


def brute_force(x: np.ndarray, valid: np.ndarray, t: np.ndarray, exclude_self: bool):
    """Pixel by pixel, from the stated rule: the latest clear date before (at or before) and the earliest after."""
    B, T, C, H, W = x.shape
    value = np.zeros_like(x)
    has_prev = np.zeros((B, T, H, W), bool)
    has_next = np.zeros((B, T, H, W), bool)
    for b in range(B):
        for i in range(T):
            for y in range(H):
                for w in range(W):
                    before = [j for j in range(T) if valid[b, j, y, w] and (j < i or (j == i and not exclude_self))]
                    after = [j for j in range(T) if valid[b, j, y, w] and (j > i or (j == i and not exclude_self))]
                    p = before[-1] if before else None
                    n = after[0] if after else None
                    has_prev[b, i, y, w], has_next[b, i, y, w] = p is not None, n is not None
                    if p is not None and n is not None:
                        lam = 0.0 if t[b, n] == t[b, p] else (t[b, i] - t[b, p]) / (t[b, n] - t[b, p])
                        value[b, i, :, y, w] = x[b, p, :, y, w] + lam * (x[b, n, :, y, w] - x[b, p, :, y, w])
                    elif p is not None:
                        value[b, i, :, y, w] = x[b, p, :, y, w]
                    elif n is not None:
                        value[b, i, :, y, w] = x[b, n, :, y, w]
    return value, has_prev, has_next


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    T=st.integers(1, 5),
    clear=st.floats(0.0, 1.0),
    exclude_self=st.booleans(),
)
def test_neighbour_interpolation_matches_the_pixel_by_pixel_rule(seed, T, clear, exclude_self):
    rng = np.random.default_rng(seed)
    B, C, H, W = 2, 2, 3, 3
    x = rng.normal(size=(B, T, C, H, W))
    valid = rng.random((B, T, H, W)) < clear
    t = np.cumsum(rng.uniform(1, 40, size=(B, T)), axis=1)
    nb = neighbour_interpolation(torch.from_numpy(x), torch.from_numpy(valid), torch.from_numpy(t),
                                 exclude_self=exclude_self)
    value, has_prev, has_next = brute_force(x, valid, t, exclude_self)
    np.testing.assert_array_equal(nb.has_prev.numpy(), has_prev)
    np.testing.assert_array_equal(nb.has_next.numpy(), has_next)
    np.testing.assert_allclose(nb.value.numpy(), value, atol=1e-12)
    # gaps: days to the neighbour, 0 without one
    assert (nb.gap_prev[~nb.has_prev] == 0).all() and (nb.gap_next[~nb.has_next] == 0).all()
    assert (nb.gap_prev >= 0).all() and (nb.gap_next >= 0).all()
    if exclude_self:
        assert (nb.gap_prev[nb.has_prev] > 0).all() and (nb.gap_next[nb.has_next] > 0).all()


def test_temporal_linear_interpolation_keeps_its_contract_on_top_of_the_neighbours():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 5, 3, 4, 4)))
    valid = torch.from_numpy(rng.random((2, 5, 4, 4)) < 0.5)
    days = torch.tensor([0.0, 3.0, 10.0, 11.0, 30.0])
    filled = temporal_linear_interpolation(x, valid, days)
    nb = neighbour_interpolation(x, valid, days)
    keep = valid.unsqueeze(2).expand_as(x)
    assert torch.equal(filled[keep], x[keep])
    inside = (~valid & nb.found).unsqueeze(2).expand_as(x)
    assert torch.equal(filled[inside], nb.value[inside])


@settings(max_examples=50, deadline=None)
@given(
    start=st.floats(0, 3000),
    steps=st.lists(st.floats(0.5, 364.0), min_size=1, max_size=6),
)
def test_stack_days_recovers_the_gaps_of_a_stack_over_new_year(start, steps):
    days = np.concatenate([[start], start + np.cumsum(steps)])
    doy = torch.from_numpy(np.remainder(days, 365.25))[None]  # what a calendar's day of the year wraps like
    np.testing.assert_allclose(stack_days(doy)[0].numpy(), days - days[0], atol=1e-6)


def test_stack_days_rejects_unbatched_doy():
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        stack_days(torch.tensor([1.0, 2.0]))


def test_the_interp_covariate_of_a_date_never_reads_that_date():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(1, 4, 3, 5, 5))).float()
    valid = torch.from_numpy(rng.random((1, 4, 5, 5)) < 0.7)
    doy = torch.tensor([[350.0, 10.0, 40.0, 90.0]])  # over New Year
    base = interpolation_input(x, valid, doy)
    assert base.shape == (1, 4, 3 + INTERP_EXTRA_CHANNELS, 5, 5)
    for t in range(4):
        changed = x.clone()
        changed[:, t] += 100.0  # every pixel of date t, clear or not
        out = interpolation_input(changed, valid, doy)
        assert torch.equal(out[:, t], base[:, t]), t
    # values under clouds are never read at all
    hidden = x.clone()
    hidden[~valid.unsqueeze(2).expand_as(x)] = 1e6
    assert torch.equal(interpolation_input(hidden, valid, doy), base)


# ----------------------------------------------------------------------------------------------- the spec


def test_spec_validates_the_interp_parent():
    with pytest.raises(ValueError, match="only the image may take the covariate 'interp'"):
        HierarchySpec(3, 2, layers=[{"name": "z1", "parents": ["s", "interp"]}], image={"bands": 2}, temporal=True)
    with pytest.raises(ValueError, match="needs temporal: true"):
        HierarchySpec(3, 2, layers=[{"name": "z1"}], image={"bands": 2, "parents": ["z1", "interp"]})
    with pytest.raises(ValueError, match="interp_dropout"):
        HierarchySpec(3, 2, layers=[{"name": "z1"}], image={"bands": 2, "parents": ["z1", "interp"],
                                                            "interp_dropout": 1.0}, temporal=True)
    with pytest.raises(ValueError, match="reserved"):
        HierarchySpec(3, 2, layers=[{"name": "interp"}], image={"bands": 2}, temporal=True)
    with pytest.raises(ValueError, match="temporal"):
        HierarchySpec.default(3, 2, interpolation=True)
    spec = HierarchySpec.default(3, 2, temporal=True, interpolation=True)
    assert spec.interpolates and spec.needs_doy and not spec.day_of_year
    assert spec.input_channels("interp") == 2 + INTERP_EXTRA_CHANNELS
    assert HierarchySpec.from_yaml(spec.to_yaml()) == spec


# ------------------------------------------------------------------------------------------------ the HVAE


def _interp_hvae(dropout: float = 0.25) -> HVAE:
    spec = HierarchySpec.default(3, 2, 4, channels=2, temporal=True, shared_channels=1, interpolation=True,
                                 encoder_widths=(4, 4, 4), decoder_width=4)
    spec = HierarchySpec.from_dict({**spec.to_dict(), "image": {**spec.to_dict()["image"], "interp_dropout": dropout}})
    torch.manual_seed(0)
    return HVAE(spec)


def _stack(B=2, T=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 2, 8, 8, generator=g)
    valid = torch.rand(B, T, 8, 8, generator=g) < 0.6
    doy = torch.tensor([[20.0, 60.0, 130.0, 200.0]] * B)
    return x, valid, doy


def _zero_image_net(hvae: HVAE) -> None:
    with torch.no_grad():
        for p in hvae.decoder.nets["x"].parameters():
            p.zero_()


def test_the_decoder_mean_is_the_interpolation_plus_the_net_output():
    hvae = _interp_hvae().eval()
    _zero_image_net(hvae)
    x, valid, doy = _stack()
    guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy)
    trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy)
    loc = unwrap(trace.nodes["x"]["fn"]).mean
    expected = interpolation_input(x, valid, doy)[:, :, :2]
    torch.testing.assert_close(loc, expected)


def test_posterior_mean_fills_hidden_pixels_from_the_other_dates():
    hvae = _interp_hvae().eval()
    _zero_image_net(hvae)
    x, valid, doy = _stack()
    mean, std, _ = posterior_inpaint(hvae, x, valid, 2, decoder_mean=True, doy=doy)
    keep = valid.unsqueeze(2).expand_as(x)
    assert torch.equal(mean[keep], x[keep]) and (std[keep] == 0).all()
    nb = neighbour_interpolation(x, valid, stack_days(doy), exclude_self=True)
    hidden = (~valid & nb.found).unsqueeze(2).expand_as(x)
    torch.testing.assert_close(mean[hidden], nb.value.float()[hidden])


def test_interp_dropout_hides_whole_dates_in_training_only():
    hvae = _interp_hvae(dropout=0.5)
    x, valid, doy = _stack(B=50)
    valid[:] = True
    hvae.eval()
    full = hvae._interp_input(x, valid, doy, None, 50, 4, 8, 8)
    hvae.train()
    torch.manual_seed(0)
    dropped = hvae._interp_input(x, valid, doy, None, 50, 4, 8, 8)
    hidden = (dropped == 0).flatten(2).all(-1)  # (B, T): the whole covariate of that date is zero
    assert 0.35 < hidden.float().mean() < 0.65
    assert torch.equal(dropped[~hidden], full[~hidden])
    hvae.eval()
    assert torch.equal(hvae._interp_input(x, valid, doy, None, 50, 4, 8, 8), full)


def test_generating_without_observations_uses_the_latents_alone_and_bad_context_is_named():
    hvae = _interp_hvae().eval()
    x, valid, doy = _stack()
    s = torch.randint(0, 3, (2, 8, 8))
    out = hvae.sample_prior(s=s, dates=4, doy=doy)  # no interp_from: "no clear neighbour" everywhere
    assert out["x"].shape == x.shape and torch.isfinite(out["x"]).all()
    with_obs = hvae.sample_prior(s=s, dates=4, doy=doy, interp_from=(x, valid))
    assert with_obs["x"].shape == x.shape
    with pytest.raises(ValueError, match="interp_from of shape"):
        hvae.sample_prior(s=s, dates=4, doy=doy, interp_from=(x[:, :3], valid[:, :3]))
    with pytest.raises(ValueError, match="days of the year"):
        poutine.trace(hvae.model).get_trace(x, None, valid)


def test_an_interpolating_temporal_run_trains(tmp_path):
    from hvaeseg.experiment import RunConfig, train_run

    config = RunConfig(method="symmetric", labels=2, steps=2, dates=3, val_every=0, checkpoint_every=0,
                       data="synthetic:tiny", patch_size=32, block=64, unlabelled_patches=32, batch_size=4,
                       options={"interpolation": True})
    trainer = train_run(config, tmp_path / "run")
    assert trainer.step == 2
    hvae = trainer.method.hvae
    assert hvae.spec.interpolates
    assert all(np.isfinite(v) for v in trainer.history.losses[-1].values() if isinstance(v, float))
