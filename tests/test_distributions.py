import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.distributions import (
    BandCorrelatedNormal,
    EmpiricalPrior,
    FastBernoulli,
    FastCategorical,
    PartiallyObservedCategorical,
    StraightThroughCategorical,
    constant_gaussian_log_prob,
)
from hvaeseg.traces import unwrap

# chi-square critical value at p = 0.001 for 4 degrees of freedom (K = 5 classes): a correct sampler
# fails this with probability 1e-3, and the seed is fixed, so the test is deterministic.
CHI2_999_DOF4 = 18.467


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_categorical_frequencies_match_probs():
    logits = torch.tensor([0.3, -1.0, 2.0, 0.0, -0.5])
    n = 40_000
    d = FastCategorical(logits.expand(n, 5))
    s = d.sample()
    assert s.dtype == torch.int64 and s.shape == (n,)
    counts = torch.bincount(s, minlength=5).float()
    assert chi_square(counts, logits.softmax(-1)) < CHI2_999_DOF4
    # sample_shape on a small batch
    assert FastCategorical(torch.zeros(2, 3, 4)).sample((5,)).shape == (5, 2, 3)


def test_categorical_zero_probability_class_never_drawn():
    logits = torch.tensor([0.0, -math.inf, 0.0]).expand(10_000, 3)
    s = FastCategorical(logits).sample()
    assert (s != 1).all()


def test_bernoulli_frequencies_match_probs():
    logits = torch.tensor([-2.0, 0.0, 1.5])
    n = 40_000
    x = FastBernoulli(logits.expand(n, 3)).sample()
    assert x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(logits)
    z = (x.mean(0) - p) / (p * (1 - p) / n).sqrt()
    assert z.abs().max() < 4.0  # a correct sampler exceeds 4 sigma with probability ~6e-5


def test_partially_observed_frequencies_on_void_pixels():
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5, 0.2])
    n = 40_000
    labels = torch.full((n,), -1)
    labels[::2] = 3
    s = PartiallyObservedCategorical(logits.expand(n, 5), labels).sample()
    assert (s[::2] == 3).all()
    counts = torch.bincount(s[1::2], minlength=5).float()
    assert chi_square(counts, logits.softmax(-1)) < CHI2_999_DOF4


def test_categorical_log_prob_by_hand():
    logits = torch.randn(2, 3, 4)
    value = torch.tensor([[0, 3, -1], [2, 2, 1]])
    d = FastCategorical(logits)
    expected = torch.empty(2, 3)
    for i in range(2):
        for j in range(3):
            k = int(value[i, j])
            expected[i, j] = 0.0 if k < 0 else logits[i, j, k] - torch.logsumexp(logits[i, j], 0)
    torch.testing.assert_close(d.log_prob(value), expected)
    torch.testing.assert_close(d.logits.exp().sum(-1), torch.ones(2, 3))
    # one-hot float values (void = zero vector) give the same numbers
    onehot = F.one_hot(value.clamp(min=0), 4).float() * (value >= 0).unsqueeze(-1)
    torch.testing.assert_close(d.log_prob(onehot), expected)


def test_bernoulli_log_prob_by_hand_and_differentiable_in_value():
    logits = torch.tensor([-1.0, 0.5, 2.0])
    value = torch.tensor([0.0, 1.0, 1.0], requires_grad=True)
    lp = FastBernoulli(logits).log_prob(value)
    p = torch.sigmoid(logits)
    torch.testing.assert_close(lp, (value * p.log() + (1 - value) * (1 - p).log()).detach())
    lp.sum().backward()
    torch.testing.assert_close(value.grad, logits)  # d/dv [v l - softplus(l)] = l


def test_partially_observed_log_prob_counts_void_only():
    logits = torch.randn(3, 4)
    labels = torch.tensor([-1, 2, -1])
    d = PartiallyObservedCategorical(logits, labels)
    value = torch.tensor([1, 2, 0])
    full = FastCategorical(logits).log_prob(value)
    torch.testing.assert_close(d.log_prob(value), torch.stack([full[0], torch.tensor(0.0), full[2]]))
    torch.testing.assert_close(d.logits, logits.log_softmax(-1))


def test_empirical_prior():
    d = EmpiricalPrior(5, (2, 3, 4))
    s = torch.randint(-1, 5, (2, 3, 4))
    assert torch.equal(d.log_prob(s), torch.zeros(2, 3, 4))
    assert torch.equal(d.log_prob(F.one_hot(s.clamp(min=0), 5).float()), torch.zeros(2, 3, 4))
    assert d.to_event(2).log_prob(s).shape == (2,)
    with pytest.raises(ValueError, match="the empirical s prior has no sampler without a label pool: attach one"):
        d.sample()
    assert d.expand((6, 2, 3, 4)).batch_shape == (6, 2, 3, 4)
    assert d.straight_through(0.5) is d
    # with a pool: samples are pool maps (here whole, no void), kept by expand; log_prob unchanged
    pool = torch.randint(0, 5, (3, 3, 4))
    d = EmpiricalPrior(5, (2, 3, 4), pool)
    s = d.expand((6, 2, 3, 4)).sample()
    assert s.shape == (6, 2, 3, 4) and s.dtype == torch.int64
    assert all(bool((pool == m).flatten(1).all(1).any()) for m in s.reshape(-1, 3, 4))
    assert torch.equal(d.log_prob(s[0]), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="no reparameterised sampler"):
        d.rsample()


def _grad(fn, logits):
    logits = logits.clone().requires_grad_(True)
    fn(logits).backward()
    return logits.grad


def test_straight_through_categorical_gradient_equals_relaxed_gradient():
    logits = torch.randn(6, 4)
    weights = torch.randn(6, 4)
    tau = 0.7

    def st(lg):
        torch.manual_seed(1)
        value = FastCategorical(lg).straight_through(tau).rsample()
        return (weights * value).sum()

    def relaxed(lg):
        torch.manual_seed(1)
        _, soft = StraightThroughCategorical(lg, tau).relaxed_rsample()
        return (weights * soft).sum()

    torch.manual_seed(1)
    value = FastCategorical(logits).straight_through(tau).rsample()
    assert value.shape == (6, 4)
    assert torch.equal(value.sum(-1), torch.ones(6)) and set(value.unique().tolist()) == {0.0, 1.0}
    g_st, g_rel = _grad(st, logits), _grad(relaxed, logits)
    assert g_st.abs().sum() > 0
    torch.testing.assert_close(g_st, g_rel)


def test_straight_through_bernoulli_gradient_equals_relaxed_gradient():
    logits = torch.randn(10)
    weights = torch.randn(10)

    def st(lg):
        torch.manual_seed(2)
        return (weights * FastBernoulli(lg).straight_through(0.5).rsample()).sum()

    def relaxed(lg):
        torch.manual_seed(2)
        return (weights * FastBernoulli(lg).straight_through(0.5).relaxed_rsample()[1]).sum()

    torch.manual_seed(2)
    value = FastBernoulli(logits).straight_through(0.5).rsample()
    assert set(value.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(_grad(st, logits), _grad(relaxed, logits))


def test_straight_through_log_prob_is_discrete_and_differentiable_in_value():
    logits = torch.randn(5, 3)
    d = FastCategorical(logits)
    st = d.straight_through(1.0)
    value = st.rsample()
    assert value.requires_grad is False  # logits without grad
    value = value.clone().requires_grad_(True)
    lp = st.log_prob(value)
    torch.testing.assert_close(lp, d.log_prob(value.argmax(-1)))
    lp.sum().backward()
    torch.testing.assert_close(value.grad, logits.log_softmax(-1))
    # the model scores the relaxed guide sample with a normal (non-relaxed) distribution
    torch.testing.assert_close(FastCategorical(logits).log_prob(value), lp)


def test_partially_observed_straight_through_keeps_labels():
    logits = torch.randn(8, 3, requires_grad=True)
    labels = torch.tensor([0, -1, 2, -1, -1, 1, -1, 0])
    st = PartiallyObservedCategorical(logits, labels).straight_through(0.5)
    value = st.rsample()
    assert torch.equal(value[labels >= 0].argmax(-1), labels[labels >= 0])
    lp = st.log_prob(value)
    assert torch.equal(lp[labels >= 0], torch.zeros(4))
    (value[labels < 0] * torch.randn(4, 3)).sum().backward()
    assert logits.grad[labels >= 0].abs().sum() == 0 and logits.grad[labels < 0].abs().sum() > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: FastBernoulli(torch.randn(2, 3, 4)),
        lambda: FastCategorical(torch.randn(2, 3, 4, 5)),
        lambda: PartiallyObservedCategorical(torch.randn(2, 3, 4, 5), torch.randint(-1, 5, (2, 3, 4))),
        lambda: FastBernoulli(torch.randn(2, 3, 4)).straight_through(0.5),
        lambda: FastCategorical(torch.randn(2, 3, 4, 5)).straight_through(0.5),
    ],
)
def test_pyro_wrappers_mask_and_to_event(make):
    d = make()
    value = d.sample()
    lp = d.log_prob(value)
    assert lp.shape == (2, 3, 4)
    mask = torch.tensor([True, False]).view(2, 1, 1)
    masked = d.mask(mask).to_event(2)
    assert masked.batch_shape == (2,)
    out = masked.log_prob(value)
    torch.testing.assert_close(out, torch.stack([lp[0].sum(), torch.tensor(0.0)]))
    assert unwrap(masked) is d
    expanded = d.expand((7, 2, 3, 4))
    assert expanded.batch_shape == (7, 2, 3, 4)
    assert expanded.sample().shape[:4] == (7, 2, 3, 4)


def test_log_probs_of_values_in_the_support_are_torchs():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 6, generator=g) * 3
    value = torch.randint(0, 6, (3, 5), generator=g)
    want = torch.distributions.Categorical(logits=logits).log_prob(value)
    torch.testing.assert_close(FastCategorical(logits).log_prob(value), want)
    torch.testing.assert_close(FastCategorical(logits).expand((2, 3, 5)).log_prob(value), want.expand(2, 3, 5))
    void = torch.full((3, 5), -1)
    torch.testing.assert_close(PartiallyObservedCategorical(logits, void).log_prob(value), want)
    bits = torch.randn(4, 7, generator=g) * 3
    b = (torch.rand(4, 7, generator=g) < 0.5).float()
    torch.testing.assert_close(FastBernoulli(bits).log_prob(b), torch.distributions.Bernoulli(logits=bits).log_prob(b))


@pytest.mark.parametrize(
    "make",
    [
        FastBernoulli,
        FastCategorical,
        lambda lg: PartiallyObservedCategorical(lg, torch.zeros(lg.shape[:-1], dtype=torch.long)),
        lambda lg: FastBernoulli(lg).straight_through(0.5),
        lambda lg: FastCategorical(lg).straight_through(0.5),
        lambda lg: FastCategorical(lg).expand((2,) + lg.shape[:-1]),
    ],
    ids=["bernoulli", "categorical", "partially-observed", "st-bernoulli", "st-categorical", "expanded"],
)
def test_parameters_are_never_checked_even_with_pyro_validation_on(make):
    """No argument validation (a pass over every pixel at every step): where torch's distributions refuse
    NaN logits under validation, these take them as they are."""
    logits = torch.zeros(3, 4)
    logits[1, 2] = math.nan
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError, match="constraint"):
            torch.distributions.Categorical(logits=logits)
        d = make(logits)
    assert torch.isnan(d.logits).any()  # taken as given, not checked


def test_void_and_relaxed_values_are_scored_with_pyro_validation_on():
    """Validation rejects values outside the support (void -1, relaxed Bernoulli values); these distributions
    never validate, so a model scores label maps with void pixels and relaxed guide samples even while
    Pyro's validation is on (as it is when debugging)."""
    logits = torch.randn(2, 3, 4)
    s = torch.tensor([[0, -1, 3], [-1, -1, 2]])
    relaxed = torch.tensor([0.25, 1.0, 0.0])

    def model():
        with pyro.plate("batch", 2):
            pyro.sample("s", FastCategorical(logits).to_event(1), obs=s)
            pyro.sample("b", FastBernoulli(torch.zeros(2, 3)).to_event(1), obs=relaxed.expand(2, 3))

    with pyro.validation_enabled(True):
        with pytest.raises(ValueError, match="support"):  # what validation would do here
            torch.distributions.Categorical(logits=logits).log_prob(s)
        with pytest.raises(ValueError, match="support"):
            torch.distributions.Bernoulli(logits=torch.zeros(3)).log_prob(relaxed)
        tr = poutine.trace(model).get_trace()
        tr.compute_log_prob()
    lp = logits.log_softmax(-1)
    want_s = torch.stack([lp[0, 0, 0] + lp[0, 2, 3], lp[1, 2, 2]])  # void pixels add log 1 = 0
    torch.testing.assert_close(tr.nodes["s"]["log_prob"], want_s)
    want_b = (relaxed * math.log(0.5) + (1 - relaxed) * math.log(0.5)).sum()
    torch.testing.assert_close(tr.nodes["b"]["log_prob"], want_b.expand(2))


# ----------------------------------------------------------------------------- BandCorrelatedNormal
def _band_correlated(seed=0, B=2, C=4, r=2, H=3, W=5, masked=True):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    scale = 0.2 + torch.rand(C, 1, 1, generator=g, dtype=torch.float64)
    factor = torch.randn(B, C * r, H, W, generator=g, dtype=torch.float64)
    mask = torch.rand(B, H, W, generator=g) > 0.3 if masked else None
    return BandCorrelatedNormal(loc, scale, factor, mask), (loc, scale, factor, mask)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_band_correlated_log_prob_is_the_sum_of_per_pixel_low_rank_gaussians(rank):
    """Against torch's LowRankMultivariateNormal, pixel by pixel, masked pixels left out."""
    d, (loc, scale, factor, mask) = _band_correlated(r=rank)
    x = torch.randn(loc.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B, C, H, W = loc.shape
    want = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for w in range(W):
                if mask[b, h, w]:
                    F_ = factor[b, :, h, w].reshape(C, rank)  # band c, factor k at channel c * r + k
                    want[b] += td.LowRankMultivariateNormal(loc[b, :, h, w], F_, scale[:, 0, 0] ** 2).log_prob(
                        x[b, :, h, w])
    torch.testing.assert_close(d.log_prob(x), want)
    assert d.batch_shape == (B,) and d.event_shape == (C, H, W)


def test_band_correlated_with_a_zero_factor_is_the_masked_normal():
    d, (loc, scale, factor, mask) = _band_correlated()
    zero = BandCorrelatedNormal(loc, scale, torch.zeros_like(factor), mask)
    x = loc + 0.5
    want = (td.Normal(loc, scale).log_prob(x) * mask.unsqueeze(1)).sum((1, 2, 3))
    torch.testing.assert_close(zero.log_prob(x), want)


def test_band_correlated_samples_have_the_declared_mean_and_covariance():
    torch.manual_seed(0)
    d, (loc, scale, factor, _) = _band_correlated(B=1, H=1, W=2, masked=False)
    x = d.sample((40000,))  # (n, 1, C, 1, 2)
    assert x.shape == (40000, 1, 4, 1, 2)
    for w in range(2):
        px = x[:, 0, :, 0, w]
        F_ = factor[0, :, 0, w].reshape(4, 2)
        cov = F_ @ F_.T + torch.diag(scale[:, 0, 0] ** 2)
        torch.testing.assert_close(px.mean(0), loc[0, :, 0, w], atol=0.05, rtol=0)
        torch.testing.assert_close(torch.cov(px.T), cov, atol=0.08 * float(cov.abs().max()), rtol=0)
        torch.testing.assert_close(d.variance[0, :, 0, w], torch.diagonal(cov))
    # pixels are independent of one another
    assert abs(float(torch.corrcoef(torch.stack([x[:, 0, 0, 0, 0], x[:, 0, 0, 0, 1]]))[0, 1])) < 0.02


def test_band_correlated_is_differentiable_in_every_parameter_and_rejects_a_bad_factor():
    d, (loc, scale, factor, mask) = _band_correlated()
    params = [loc.clone().requires_grad_(), scale.clone().requires_grad_(), factor.clone().requires_grad_()]
    BandCorrelatedNormal(*params, mask).log_prob(loc + 0.3).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with pytest.raises(ValueError, match=r"factor: expected \(\.\.\., C \* r, 3, 5\) with C = 4"):
        BandCorrelatedNormal(loc, scale, factor[:, :5], mask)


@settings(max_examples=15, deadline=None)
@given(G=st.integers(1, 4), lead=st.sampled_from([(2,), (2, 3), ()]), C=st.integers(1, 5), rank=st.integers(0, 3),
       per_band=st.booleans(), seed=st.integers(0, 2**16))
def test_constant_gaussian_log_prob_is_each_pixels_low_rank_gaussian(G, lead, C, rank, per_band, seed):
    """Every pixel under every parameter set against torch's LowRankMultivariateNormal (rank 0: the diagonal
    Normal), values and gradients, in float64."""
    g = torch.Generator().manual_seed(seed)
    H, W = 2, 3
    x = 2 * torch.randn(*lead, C, H, W, generator=g, dtype=torch.float64)
    loc = torch.randn(G, *lead, C, generator=g, dtype=torch.float64).requires_grad_()
    scale_shape = (C,) if per_band else (G, *lead, C)
    scale = (0.1 + torch.rand(scale_shape, generator=g, dtype=torch.float64)).requires_grad_()
    factor = (0.5 * torch.randn(G, *lead, C, rank, generator=g, dtype=torch.float64)).requires_grad_() if rank else None
    got = constant_gaussian_log_prob(x, loc, scale, factor)
    assert got.shape == (G, *lead, H, W)
    full_scale = scale.expand(G, *lead, C)
    want = torch.empty_like(got)
    for idx in itertools.product(*(range(n) for n in (G, *lead))):
        F_ = factor[idx] if rank else torch.zeros(C, 1, dtype=torch.float64)
        dist = td.LowRankMultivariateNormal(loc[idx], F_, full_scale[idx] ** 2)
        want[idx] = dist.log_prob(x[idx[1:]].movedim(0, -1))  # (H, W, C) -> (H, W)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape, generator=g, dtype=torch.float64)
    params = [loc, scale] + ([factor] if rank else [])
    grads = torch.autograd.grad((got * weights).sum(), params)
    wants = torch.autograd.grad((want * weights).sum(), params)
    for a, b in zip(grads, wants):
        torch.testing.assert_close(a, b)
