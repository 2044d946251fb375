"""Spatial borrowing for the ``interp`` covariate: :func:`residual_transfer` against its stated rule, pixel by pixel,
its leave-one-out property, what it recovers, and the spec option that turns it on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.hierarchy.interpolation import (
    INTERP_EXTRA_CHANNELS,
    clear_fraction,
    interp_channels,
    interpolation_input,
    neighbour_interpolation,
    residual_transfer,
    stack_days,
)
from hvaeseg.hierarchy.spec import TransferSpec
from hvaeseg.traces import unwrap


def brute_force(x, valid, base, radius, stride, h):
    """The rule of the docstring, one (date, pixel, offset) at a time."""
    B, T, C, H, W = x.shape
    est = np.zeros_like(x)
    den = np.zeros((B, T, H, W))
    offsets = [(dy, dx) for dy in range(-radius, radius + 1, stride) for dx in range(-radius, radius + 1, stride)
               if (dy, dx) != (0, 0)]
    for b in range(B):
        for t in range(T):
            for y in range(H):
                for w in range(W):
                    num, tot = np.zeros(C), 0.0
                    for dy, dx in offsets:
                        qy, qx = y + dy, w + dx
                        if not (0 <= qy < H and 0 <= qx < W) or not valid[b, t, qy, qx]:
                            continue
                        dates = [s for s in range(T) if s != t and valid[b, s, y, w] and valid[b, s, qy, qx]]
                        if not dates:
                            continue
                        d = np.mean([(x[b, s, :, y, w] - x[b, s, :, qy, qx]) ** 2 for s in dates])
                        wt = math.exp(-d / h**2)
                        num += wt * (x[b, t, :, qy, qx] - base[b, t, :, qy, qx])
                        tot += wt
                    den[b, t, y, w] = tot
                    if tot > 0:
                        est[b, t, :, y, w] = num / tot
    return est, den


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), radius=st.integers(1, 3), stride=st.integers(1, 2),
       h=st.floats(0.3, 3.0), share=st.floats(0.2, 0.9))
def test_residual_transfer_matches_the_rule_pixel_by_pixel(seed, radius, stride, h, share):
    if stride > radius:
        stride = radius
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 3, 2, 5, 6))
    valid = rng.random((2, 3, 5, 6)) < share
    base = rng.normal(size=x.shape)
    est, den = residual_transfer(torch.from_numpy(x), torch.from_numpy(valid), torch.from_numpy(base),
                                 TransferSpec(radius, stride, h))
    want_est, want_den = brute_force(x, valid, base, radius, stride, h)
    np.testing.assert_allclose(den.numpy(), want_den, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.numpy(), want_est, rtol=1e-7, atol=1e-9)


def test_a_date_never_reads_itself_at_its_own_pixel_or_anything_under_clouds():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(1, 4, 3, 6, 6))).float()
    valid = torch.from_numpy(rng.random((1, 4, 6, 6)) < 0.7)
    doy = torch.tensor([[30.0, 80.0, 150.0, 220.0]])
    spec = TransferSpec(radius=2, stride=1, bandwidth=1.0)
    out = interpolation_input(x, valid, doy, transfer=spec)
    assert out.shape == (1, 4, interp_channels(3, spec), 6, 6)
    assert interp_channels(3, spec) == 3 + INTERP_EXTRA_CHANNELS + 1
    for t in range(4):
        for y, w in [(0, 0), (2, 3), (5, 5)]:
            changed = x.clone()
            changed[0, t, :, y, w] += 50.0  # the pixel's own value on that date
            assert torch.equal(interpolation_input(changed, valid, doy, transfer=spec)[0, t, :, y, w],
                               out[0, t, :, y, w]), (t, y, w)
    for secret in (1e6, float("nan")):
        hidden = x.clone()
        hidden[~valid.unsqueeze(2).expand_as(x)] = secret
        assert torch.equal(interpolation_input(hidden, valid, doy, transfer=spec), out)


def test_a_field_offset_on_one_date_is_recovered_under_a_cloud_and_not_across_fields():
    """Two fields with distinct histories; on date 2 the left field is 1.0 above its interpolation and the right
    field 0; a cloud covers the middle of both. The transfer fills each side from its own field."""
    T, H, W = 5, 8, 12
    days = torch.tensor([[10.0, 40.0, 70.0, 100.0, 130.0]])
    left = torch.arange(W) < W // 2
    x = torch.zeros(1, T, 1, H, W)
    x[0, :, 0, :, :] = torch.where(left, 0.0, 3.0).float()  # constant histories, far apart
    x[0, 2, 0, :, left] += 1.0  # the left field departs from its interpolation on date 2
    valid = torch.ones(1, T, H, W, dtype=torch.bool)
    valid[0, 2, 2:6, 3:9] = False  # the cloud on date 2
    base = neighbour_interpolation(x, valid, stack_days(days), exclude_self=True).value
    est, den = residual_transfer(x, valid, base, TransferSpec(radius=4, stride=1, bandwidth=0.5))
    cloud = ~valid[0, 2]
    assert bool((den[0, 2][cloud] > 0).all())
    torch.testing.assert_close(est[0, 2, 0][cloud & left], torch.ones(int((cloud & left).sum())))
    torch.testing.assert_close(est[0, 2, 0][cloud & ~left], torch.zeros(int((cloud & ~left).sum())), atol=1e-6,
                               rtol=0)
    # without the transfer the interpolation misses the left field's offset under the cloud
    assert torch.allclose(base[0, 2, 0][cloud], x[0, 1, 0][cloud])


def test_transfer_spec_validation():
    with pytest.raises(ValueError, match="radius"):
        TransferSpec(radius=0)
    with pytest.raises(ValueError, match="stride"):
        TransferSpec(radius=2, stride=3)
    with pytest.raises(ValueError, match="bandwidth"):
        TransferSpec(bandwidth=0.0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="clear_radius: expected an int >= 0"):
            TransferSpec(clear_radius=bad)
    with pytest.raises(ValueError, match="add 'interp' to its parents"):
        HierarchySpec(3, 2, layers=[{"name": "z1"}], image={"bands": 2, "transfer": {"radius": 4}}, temporal=True)
    spec = HierarchySpec.default(3, 2, temporal=True, interpolation=True)
    d = spec.to_dict()
    assert "transfer" not in d["image"]  # unset: left out of the file
    d["image"]["transfer"] = {"radius": 4, "stride": 1, "bandwidth": 0.3}
    with_transfer = HierarchySpec.from_dict(d)
    assert with_transfer.image.transfer == TransferSpec(4, 1, 0.3)
    assert with_transfer.input_channels("interp") == 2 + INTERP_EXTRA_CHANNELS + 1
    assert HierarchySpec.from_yaml(with_transfer.to_yaml()) == with_transfer
    d["image"]["transfer"]["clear_radius"] = 3
    with_clear = HierarchySpec.from_dict(d)
    assert with_clear.input_channels("interp") == 2 + INTERP_EXTRA_CHANNELS + 2
    assert HierarchySpec.from_yaml(with_clear.to_yaml()) == with_clear
    d["image"]["transfer"]["seen"] = True
    with pytest.raises(ValueError, match="seen reaches only the spread.*set image scale: pixel"):
        HierarchySpec.from_dict(d)
    d["image"]["scale"] = "pixel"
    with_seen = HierarchySpec.from_dict(d)
    assert with_seen.input_channels("interp") == 2 + INTERP_EXTRA_CHANNELS + 3
    assert HierarchySpec.from_yaml(with_seen.to_yaml()) == with_seen
    with pytest.raises(ValueError, match="seen: expected true or false"):
        TransferSpec(seen=1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), radius=st.integers(1, 3), share=st.floats(0.0, 1.0))
def test_clear_fraction_counts_the_window_without_the_pixel(seed, radius, share):
    rng = np.random.default_rng(seed)
    valid = rng.random((2, 3, 5, 7)) < share
    got = clear_fraction(torch.from_numpy(valid), radius).numpy()
    want = np.zeros(valid.shape)
    for y in range(5):
        for w in range(7):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    qy, qx = y + dy, w + dx
                    if (dy, dx) != (0, 0) and 0 <= qy < 5 and 0 <= qx < 7:
                        want[..., y, w] += valid[..., qy, qx]
    np.testing.assert_allclose(got, want / ((2 * radius + 1) ** 2 - 1), rtol=1e-12, atol=1e-12)


def test_the_clear_fraction_channel_is_leave_one_out():
    """With clear_radius, the last channel is the date's clear fraction around the pixel: whether the pixel itself
    is clear on that date does not change it (it changes its neighbours' only)."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(1, 3, 2, 6, 6))).float()
    valid = torch.from_numpy(rng.random((1, 3, 6, 6)) < 0.6)
    doy = torch.tensor([[30.0, 80.0, 150.0]])
    spec = TransferSpec(radius=2, stride=1, bandwidth=1.0, clear_radius=1)
    assert interp_channels(2, spec) == 2 + INTERP_EXTRA_CHANNELS + 2
    out = interpolation_input(x, valid, doy, transfer=spec)
    assert out.shape[2] == interp_channels(2, spec)
    torch.testing.assert_close(out[:, :, -1], clear_fraction(valid, 1).float())
    flipped = valid.clone()
    flipped[0, 1, 3, 3] = ~flipped[0, 1, 3, 3]
    again = interpolation_input(x, flipped, doy, transfer=spec)
    assert torch.equal(again[0, 1, -1, 3, 3], out[0, 1, -1, 3, 3])
    assert not torch.equal(again[0, 1, -1, 2:5, 2:5], out[0, 1, -1, 2:5, 2:5])


def test_the_seen_channel_is_the_valid_mask_and_nothing_of_the_value():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(1, 3, 2, 6, 6))).float()
    valid = torch.from_numpy(rng.random((1, 3, 6, 6)) < 0.6)
    doy = torch.tensor([[30.0, 80.0, 150.0]])
    spec = TransferSpec(radius=2, stride=1, bandwidth=1.0, clear_radius=1, seen=True)
    out = interpolation_input(x, valid, doy, transfer=spec)
    assert out.shape[2] == interp_channels(2, spec) == 2 + INTERP_EXTRA_CHANNELS + 3
    torch.testing.assert_close(out[:, :, -1], valid.float())
    torch.testing.assert_close(out[:, :, -2], clear_fraction(valid, 1).float())
    changed = x.clone()
    changed[0, 1, :, 3, 3] += 50.0  # the value of a pixel on a date never enters its own covariate there
    assert torch.equal(interpolation_input(changed, valid, doy, transfer=spec)[0, 1, :, 3, 3], out[0, 1, :, 3, 3])


def test_an_hvae_with_transfer_builds_and_scores_a_stack():
    spec = HierarchySpec.default(3, 2, 4, channels=2, temporal=True, interpolation=True, encoder_widths=(4, 4, 4),
                                 decoder_width=4)
    d = spec.to_dict()
    d["image"]["transfer"] = {"radius": 2, "stride": 1}
    torch.manual_seed(0)
    hvae = HVAE(HierarchySpec.from_dict(d))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 2, 8, 8, generator=g)
    valid = torch.rand(2, 4, 8, 8, generator=g) < 0.6
    doy = torch.tensor([[20.0, 60.0, 130.0, 200.0]] * 2)
    import pyro.poutine as poutine

    guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy)
    trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy)
    assert torch.isfinite(trace.log_prob_sum())


def test_the_covariate_given_once_fills_as_the_stack_does():
    """posterior_inpaint computes the covariate once (HVAE.interp_covariate) for all its samples: the model given
    it scores and fills exactly as given the stack."""
    import pyro
    import pyro.poutine as poutine

    from hvaeseg.hierarchy.posterior import posterior_inpaint

    spec = HierarchySpec.default(3, 2, 4, channels=2, temporal=True, interpolation=True, encoder_widths=(4, 4, 4),
                                 decoder_width=4)
    d = spec.to_dict()
    d["image"]["transfer"] = {"radius": 2, "stride": 1}
    torch.manual_seed(0)
    hvae = HVAE(HierarchySpec.from_dict(d)).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 2, 8, 8, generator=g)
    valid = torch.rand(2, 4, 8, 8, generator=g) < 0.6
    doy = torch.tensor([[20.0, 60.0, 130.0, 200.0]] * 2)
    cov = hvae.interp_covariate(x, valid, doy)
    assert cov.shape == (2, 4, hvae.spec.input_channels("interp"), 8, 8)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy)
    a = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy)
    b = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy,
                                                                               interp_from=cov)
    torch.testing.assert_close(a.log_prob_sum(), b.log_prob_sum())
    pyro.set_rng_seed(1)
    mean, std, _ = posterior_inpaint(hvae, x, valid, 3, decoder_mean=True, doy=doy)
    with pytest.raises(ValueError, match="interp covariate given as interp_from"):
        poutine.trace(hvae.model).get_trace(x, None, valid, doy=doy, interp_from=cov[:, :, :-1])
    assert torch.isfinite(mean).all() and torch.equal(mean[valid.unsqueeze(2).expand_as(x)],
                                                      x[valid.unsqueeze(2).expand_as(x)])


def test_the_seen_channel_reaches_the_spread_and_not_the_mean():
    """With transfer.seen the mean of p(x | parents) is a blind fill's: setting the visibility channel to 1 or 0
    everywhere leaves it unchanged, and changes the scale (the net, perturbed off its zero start, reads it)."""
    import pyro.poutine as poutine

    spec = HierarchySpec.default(3, 2, 4, channels=2, temporal=True, interpolation=True, encoder_widths=(4, 4, 4),
                                 decoder_width=4)
    d = spec.to_dict()
    d["image"]["transfer"] = {"radius": 2, "stride": 1, "seen": True}
    d["image"]["scale"] = "pixel"
    torch.manual_seed(0)
    hvae = HVAE(HierarchySpec.from_dict(d)).eval()
    with torch.no_grad():
        for p in hvae.decoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 2, 8, 8, generator=g)
    valid = torch.rand(2, 4, 8, 8, generator=g) < 0.6
    doy = torch.tensor([[20.0, 60.0, 130.0, 200.0]] * 2)
    cov = hvae.interp_covariate(x, valid, doy)
    assert torch.equal(cov[:, :, -1], valid.float())
    guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy)

    def x_normal(seen_value):
        given = cov.clone()
        given[:, :, -1] = seen_value
        trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy,
                                                                                       interp_from=given)
        fn = unwrap(trace.nodes["x"]["fn"])
        return fn.loc, fn.scale

    loc_seen, scale_seen = x_normal(1.0)
    loc_blind, scale_blind = x_normal(0.0)
    torch.testing.assert_close(loc_seen, loc_blind, rtol=0, atol=0)
    assert (scale_seen - scale_blind).abs().max() > 1e-3
    # and with the real mask
    loc_real, _ = x_normal(valid.float())
    torch.testing.assert_close(loc_real, loc_blind, rtol=0, atol=0)
