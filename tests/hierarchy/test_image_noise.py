"""The image's Student-t noise (``ImageLayerSpec.noise``): its spec, its density against the closed form, its learned
degrees of freedom, and posterior sampling with it."""

from __future__ import annotations

import math

import pyro.poutine as poutine
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.hierarchy.posterior import posterior_inpaint
from hvaeseg.hierarchy.spec import ImageLayerSpec
from hvaeseg.traces import unwrap


def student_t_spec(temporal: bool = False) -> HierarchySpec:
    d = HierarchySpec.default(3, 2, 4, channels=2, temporal=temporal, encoder_widths=(4, 4, 4),
                              decoder_width=4).to_dict()
    d["image"]["noise"] = "student_t"
    return HierarchySpec.from_dict(d)


def test_the_spec_validates_and_round_trips_the_noise():
    assert ImageLayerSpec(2).noise == "normal"
    with pytest.raises(ValueError, match="unknown noise 'laplace': choose one of normal, student_t"):
        ImageLayerSpec(2, noise="laplace")
    with pytest.raises(ValueError, match="noise student_t has no band covariance: set cov_rank: 0"):
        ImageLayerSpec(3, noise="student_t", cov_rank=1)
    spec = student_t_spec()
    assert spec.image.noise == "student_t"
    assert HierarchySpec.from_yaml(spec.to_yaml()) == spec


def hand_log_density(x, df, loc, scale):
    """log of the Student-t density, written out."""
    z = (x - loc) / scale
    return (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(scale)
            - (df + 1) / 2 * math.log1p(z * z / df))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_the_image_site_is_the_stated_student_t_on_the_valid_pixels(seed):
    torch.manual_seed(seed % 1000)
    hvae = HVAE(student_t_spec())
    with torch.no_grad():
        hvae.decoder.x_df.copy_(torch.randn(2))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 8, 8, generator=g)
    valid = torch.rand(2, 8, 8, generator=g) < 0.7
    guide = poutine.trace(hvae.guide).get_trace(x, None, valid)
    trace = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(x, None, valid)
    trace.compute_log_prob()
    fn = unwrap(trace.nodes["x"]["fn"])
    df = 2 + torch.nn.functional.softplus(hvae.decoder.x_df)
    torch.testing.assert_close(fn.df, df[:, None, None].expand_as(fn.df))
    loc, scale = fn.loc.detach(), fn.scale.detach()
    lp = fn.log_prob(x).detach()
    for b, c, i, j in [(0, 0, 1, 2), (1, 1, 5, 7), (0, 1, 3, 3)]:
        want = hand_log_density(float(x[b, c, i, j]), float(df[c].detach()), float(loc[b, c, i, j]),
                                float(scale[b, c, i, j]))
        assert float(lp[b, c, i, j]) == pytest.approx(want, rel=1e-5)
    want = (fn.log_prob(x) * valid[:, None]).sum()  # hidden pixels do not count
    torch.testing.assert_close(trace.nodes["x"]["log_prob_sum"], want)


def test_the_degrees_of_freedom_start_at_five_and_are_learned():
    hvae = HVAE(student_t_spec())
    torch.testing.assert_close(hvae.decoder.degrees_of_freedom().flatten(), torch.full((2,), 5.0))
    x = 3 * torch.randn(2, 2, 8, 8)  # far from the start's unit scale: the tails matter
    guide = poutine.trace(hvae.guide).get_trace(x, None, None)
    trace = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(x, None, None)
    (grad,) = torch.autograd.grad(trace.log_prob_sum(), [hvae.decoder.x_df])
    assert bool((grad != 0).all())


def test_a_student_t_hvae_fills_a_stack_and_keeps_observed_pixels():
    hvae = HVAE(student_t_spec(temporal=True)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 8, 8, generator=g)
    valid = torch.rand(2, 3, 8, 8, generator=g) < 0.6
    doy = torch.tensor([[20.0, 90.0, 200.0]] * 2)
    mean, std, draws = posterior_inpaint(hvae, x, valid, 6, decoder_mean=False, doy=doy)
    assert draws.shape == (6, *x.shape) and torch.isfinite(draws).all()
    keep = valid.unsqueeze(2).expand_as(x)
    assert torch.equal(mean[keep], x[keep]) and bool((std[~keep] > 0).all())
