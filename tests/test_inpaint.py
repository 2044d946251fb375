import pytest
import torch

from hvaeseg.hierarchy import HVAE
from hvaeseg.inpaint import posterior_inpaint, temporal_linear_interpolation
from tests.hierarchy.helpers import load_example, tiny_spec


@pytest.mark.parametrize("make", [tiny_spec, lambda: load_example("temporal")])
def test_inpaint_returns_observed_pixels_bit_for_bit(make):
    spec = make()
    hvae = HVAE(spec)
    lead = (2, 3) if spec.temporal else (2,)
    size = 8 if not spec.temporal else 16
    x = torch.randn(*lead, spec.image.bands, size, size) * 3.3
    valid = torch.rand(*lead, size, size) > 0.4
    mean, std, samples = hvae.inpaint(x, valid, num_samples=3)
    keep = valid.unsqueeze(-3).expand_as(x)
    assert mean.shape == x.shape and std.shape == x.shape and samples.shape == (3,) + x.shape
    assert torch.equal(mean[keep], x[keep])
    assert torch.equal(samples[:, keep], x[keep].expand(3, -1))
    assert (std[keep] == 0).all() and (std[~keep] > 0).all()
    assert torch.isfinite(mean).all()
    # the decoder-mean variant also keeps observed pixels
    mean2, _, _ = posterior_inpaint(hvae, x, valid, 2, decoder_mean=True)
    assert torch.equal(mean2[keep], x[keep])


def test_inpaint_argument_errors():
    hvae = HVAE(tiny_spec())
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="expected valid as a bool tensor"):
        posterior_inpaint(hvae, x, torch.ones(1, 8, 8), 2)
    with pytest.raises(ValueError, match="num_samples >= 1"):
        posterior_inpaint(hvae, x, torch.ones(1, 8, 8, dtype=torch.bool), 0)


def test_temporal_linear_interpolation_recovers_linear_series():
    B, T, C, H, W = 2, 6, 3, 4, 4
    t = torch.tensor([0.0, 1.0, 3.0, 4.0, 8.0, 9.0])
    slope, offset = torch.randn(B, 1, C, H, W), torch.randn(B, 1, C, H, W)
    x = offset + slope * t.view(1, T, 1, 1, 1)
    valid = torch.ones(B, T, H, W, dtype=torch.bool)
    valid[:, 2:5, :2] = False  # interior gaps: exact for a linear series
    noisy = x.clone()
    noisy[~valid.unsqueeze(2).expand_as(x)] = float("nan")  # never read
    out = temporal_linear_interpolation(noisy, valid, times=t)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[valid.unsqueeze(2).expand_as(x)], x[valid.unsqueeze(2).expand_as(x)])


def test_temporal_linear_interpolation_edges_and_empty_pixels():
    x = torch.arange(4.0).view(1, 4, 1, 1, 1).repeat(1, 1, 1, 1, 2)  # (1, 4, 1, 1, 2)
    valid = torch.tensor([[False, True, True, False]]).view(1, 4, 1, 1).repeat(1, 1, 1, 2)
    valid[0, :, 0, 1] = False  # pixel 1 never clear
    out = temporal_linear_interpolation(x, valid)
    assert out[0, :, 0, 0, 0].tolist() == [1.0, 1.0, 2.0, 2.0]  # nearest clear date at the ends
    assert out[0, :, 0, 0, 1].tolist() == [1.5] * 4  # band mean of the clear observations
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, C, H, W\)"):
        temporal_linear_interpolation(x[0], valid[0])


def _stack(spec, seed=0, B=2, T=3, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, spec.image.bands, size, size, generator=g)
    valid = torch.rand(B, T, size, size, generator=g) > 0.4
    doy = torch.tensor([[30.0, 90.0, 200.0][:T]] * B)
    return x, valid, doy


@pytest.mark.parametrize("name", ["temporal", "temporal_shared", "temporal_interp", "temporal_interp_seen"])
def test_the_encoded_guide_samples_as_the_guide_alone(name):
    """guide(..., encoded=HVAE.encode(...)) is the same distribution and draws the same values as the guide that
    runs its own U-Net (posterior_inpaint runs the U-Net once for all its samples)."""
    import pyro
    import pyro.poutine as poutine

    hvae = HVAE(load_example(name)).eval()
    x, valid, doy = _stack(hvae.spec)
    traces = []
    for encoded in (None, hvae.encode(x, valid, doy)):
        pyro.set_rng_seed(3)
        traces.append(poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy, encoded=encoded))
    a, b = traces
    sites = [n for n, node in a.nodes.items() if node["type"] == "sample" and not node["is_observed"]]
    assert "s" in sites and "l" in sites
    for n in sites:
        assert torch.equal(a.nodes[n]["value"], b.nodes[n]["value"]), n
    torch.testing.assert_close(a.log_prob_sum(), b.log_prob_sum())


@pytest.mark.parametrize("name", ["temporal", "temporal_shared", "temporal_interp", "temporal_interp_seen"])
def test_filling_one_date_is_that_date_of_the_stack(name):
    """date= narrows the decoder to one date of each stack: given the same draw of the latents (one sample, same
    seed) its decoder mean is the whole stack's at that date, and observed pixels come back bit for bit."""
    import pyro

    hvae = HVAE(load_example(name)).eval()
    x, valid, doy = _stack(hvae.spec, seed=1)
    date = torch.tensor([2, 0])
    pyro.set_rng_seed(4)
    whole, _, _ = posterior_inpaint(hvae, x, valid, 1, decoder_mean=True, doy=doy)
    pyro.set_rng_seed(4)
    one, std, draws = posterior_inpaint(hvae, x, valid, 1, decoder_mean=True, doy=doy, date=date)
    rows = torch.arange(2)
    assert one.shape == (2, hvae.spec.image.bands, 16, 16) and draws.shape == (1, *one.shape)
    torch.testing.assert_close(one, whole[rows, date], rtol=1e-5, atol=1e-5)
    mean, std, draws = posterior_inpaint(hvae, x, valid, 3, doy=doy, date=date)
    keep = valid[rows, date].unsqueeze(1).expand_as(mean)
    assert torch.equal(mean[keep], x[rows, date][keep]) and (std[keep] == 0).all() and (std[~keep] > 0).all()
    assert draws.shape == (3, *mean.shape)


def test_filling_one_date_argument_errors():
    hvae = HVAE(load_example("temporal_interp")).eval()
    x, valid, doy = _stack(hvae.spec)
    for bad in (torch.tensor([0, 3]), torch.tensor([0]), torch.tensor([0.0, 1.0]), torch.tensor([-1, 0])):
        with pytest.raises(ValueError, match=r"expected date as \(2,\) integer indices in \[0, 3\)"):
            posterior_inpaint(hvae, x, valid, 1, doy=doy, date=bad)
    with pytest.raises(ValueError, match="expected doy of shape"):
        posterior_inpaint(hvae, x, valid, 1, date=torch.tensor([0, 1]))
    single = HVAE(tiny_spec())
    with pytest.raises(ValueError, match="needs a temporal HVAE"):
        posterior_inpaint(single, torch.randn(2, 2, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool), 1,
                          date=torch.tensor([0, 0]))
