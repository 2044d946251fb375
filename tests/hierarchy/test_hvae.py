import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.distributions as td
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.distributions import EmpiricalPrior, FastCategorical, PartiallyObservedCategorical
from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.traces import replay, unwrap
from tests.hierarchy.helpers import load_example, tiny_spec


def batch(spec: HierarchySpec, B=2, T=3, size=None, void=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = size or 4 * spec.network.factors[-1]
    lead = (B, T) if spec.temporal else (B,)
    x = torch.randn(*lead, spec.image.bands, size, size, generator=g)
    valid = torch.rand(*lead, size, size, generator=g) > 0.3
    s = torch.randint(0, spec.num_classes, (B, size, size), generator=g)
    s[torch.rand(B, size, size, generator=g) < void] = -1
    return x, s, valid


def traces(hvae, x, s, valid):
    guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid)
    model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid)
    return guide_trace, model_trace


def sample_sites(trace):
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and n not in ("batch", "time")}


# ---------------------------------------------------------------------------------- site names & shapes
def expected_shapes(spec, B, T, H, W):
    lead = (B, T) if spec.temporal else (B,)
    shapes = {
        "s": ((B, 1, H, W) if spec.temporal else (B, H, W)),
        "l": lead + (spec.code_bits,),
        "x": lead + (spec.image.bands, H, W),
    }
    for layer in spec.layers:
        shapes[layer.name] = lead + (layer.channels, H // layer.resolution, W // layer.resolution)
    return shapes


@pytest.mark.parametrize("name", ["default", "gaussian", "temporal"])
def test_site_names_and_shapes(name):
    spec = load_example(name)
    hvae = HVAE(spec)
    B, T, size = 2, 3, 32
    x, s, valid = batch(spec, B, T, size)
    guide_trace, model_trace = traces(hvae, x, s, valid)
    want = expected_shapes(spec, B, T, size, size)
    assert list(sample_sites(model_trace)) == list(spec.site_names)
    assert list(sample_sites(guide_trace)) == list(spec.site_names[:-1])
    batch_shape = (B, T) if spec.temporal else (B,)
    for trace in (guide_trace, model_trace):
        for site_name, site in sample_sites(trace).items():
            assert tuple(site["value"].shape) == want[site_name], site_name
            expect = (B, 1) if (site_name == "s" and spec.temporal) else batch_shape
            assert tuple(site["fn"].batch_shape) == expect, site_name
    # the guide's q(s|x): (B, H, W, K) logits ((B, 1, H, W, K) for stacks)
    q_s = unwrap(guide_trace.nodes["s"]["fn"])
    assert isinstance(q_s, PartiallyObservedCategorical)
    assert tuple(q_s.logits.shape) == want["s"] + (spec.num_classes,)
    assert model_trace.nodes["x"]["is_observed"] and not guide_trace.nodes["s"]["is_observed"]
    families = {la.name: la.family for la in spec.layers}
    for layer_name, family in families.items():
        value = model_trace.nodes[layer_name]["value"]
        assert value.dtype == (torch.int64 if family == "categorical" else torch.float32)
    assert {la.family for la in spec.layers} >= ({"gaussian"} if name == "gaussian" else set())


def test_guide_without_s_is_fast_categorical():
    spec = tiny_spec()
    hvae = HVAE(spec)
    x, _, valid = batch(spec)
    trace = poutine.trace(hvae.guide).get_trace(x, None, valid)
    assert type(unwrap(trace.nodes["s"]["fn"])) is FastCategorical


# ---------------------------------------------------------------------------------- log-prob by hand
def _onehot(v, k):
    return F.one_hot(v.clamp(min=0), k).float() * (v >= 0).unsqueeze(-1)


def test_model_log_prob_equals_hand_computed_sum():
    spec = tiny_spec(s_prior="categorical")
    hvae = HVAE(spec)
    with torch.no_grad():  # make every prior non-trivial
        for p in hvae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, s, valid = batch(spec, B=2, size=8)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid)
    model_trace = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, s, valid)
    v = {n: guide_trace.nodes[n]["value"] for n in ("s", "l", "c", "b", "g")}
    assert torch.equal(model_trace.nodes["s"]["value"], s)  # observed labels, void pixels included

    dec = hvae.decoder
    total = torch.zeros(())
    # s: factorised categorical, void pixels marginalised (log 1 = 0)
    log_pi = torch.log_softmax(dec.s_logits, -1)
    total += torch.where(s >= 0, log_pi[s.clamp(min=0)], torch.zeros(())).sum()
    # l: Bernoulli(1/2)^D
    total += td.Bernoulli(probs=torch.full_like(v["l"], 0.5)).log_prob(v["l"]).sum()
    s_in = _onehot(s, 3).permute(0, 3, 1, 2)
    c_in = _onehot(v["c"], 3).movedim(-1, 2).flatten(1, 2)  # (B, C * Kc, h, w)
    # c: categorical at 1/2 resolution from (s, l)
    net = dec.nets["c"]
    out = net([F.avg_pool2d(s_in, 2)], [v["l"]])
    logits_c = out.view(2, 1, 3, 4, 4).permute(0, 1, 3, 4, 2)
    total += td.Categorical(logits=logits_c).log_prob(v["c"]).sum()
    # b: Bernoulli from (c, l)
    out = dec.nets["b"]([c_in], [v["l"]])
    total += td.Bernoulli(logits=out).log_prob(v["b"]).sum()
    # g: Gaussian at full resolution from (s, b)
    out = dec.nets["g"]([s_in, F.interpolate(v["b"], scale_factor=2, mode="nearest")], [])
    loc, raw = out.chunk(2, 1)
    total += td.Normal(loc, 1e-3 + F.softplus(raw)).log_prob(v["g"]).sum()
    # x: Gaussian with a learned per-band scale, valid pixels only
    out = dec.nets["x"]([s_in, v["g"]], [v["l"]])
    scale = (1e-3 + F.softplus(dec.x_scale)).view(1, -1, 1, 1)
    lp = td.Normal(out, scale).log_prob(x)
    total += (lp * valid.unsqueeze(1)).sum()

    torch.testing.assert_close(model_trace.log_prob_sum(), total, rtol=1e-5, atol=1e-3)


def test_model_log_prob_with_correlated_bands_equals_hand_computed_image_term():
    """cov_rank 2: the x site scores each valid pixel under N(loc, diag(scale^2) + F F^T), F from the x net."""
    base = tiny_spec(s_prior="categorical")
    spec = HierarchySpec.from_dict({**base.to_dict(), "image": {**base.image.__dict__, "bands": 3, "cov_rank": 2}})
    hvae = HVAE(spec)
    x, s, valid = batch(spec, B=2, size=8)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid)
    model_trace = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, s, valid)
    site = model_trace.nodes["x"]
    v = {n: guide_trace.nodes[n]["value"] for n in ("l", "g")}
    out = hvae.decoder.nets["x"]([_onehot(s, 3).permute(0, 3, 1, 2), v["g"]], [v["l"]])  # (B, 3 + 3 * 2, H, W)
    loc, factor = out[:, :3], out[:, 3:]
    scale = 1e-3 + F.softplus(hvae.decoder.x_scale)
    want = torch.zeros(2)
    for b in range(2):
        for h in range(8):
            for w in range(8):
                if valid[b, h, w]:
                    F_ = factor[b, :, h, w].reshape(3, 2)
                    want[b] += td.LowRankMultivariateNormal(loc[b, :, h, w], F_, scale**2).log_prob(x[b, :, h, w])
    torch.testing.assert_close(site["fn"].log_prob(x), want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(unwrap(site["fn"]).mean, loc)
    # generating: an image of the declared shape, not only a density
    prior = poutine.trace(hvae.model).get_trace(None, s, None, shape=(2, 8, 8))
    assert prior.nodes["x"]["value"].shape == (2, 3, 8, 8)


def test_a_temporal_stack_with_correlated_bands_scores_and_generates_every_date():
    spec = HierarchySpec.default(3, 4, temporal=True, day_of_year=True, image_cov_rank=2, decoder_interactions=True,
                                 channels=2, encoder_widths=(4, 4, 4), decoder_width=4)
    hvae = HVAE(spec)
    x, s, valid = batch(spec, B=2, T=3, size=8)
    doy = torch.tensor([[30.0, 120.0, 250.0], [60.0, 150.0, 300.0]])
    guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid, doy=doy)
    model_trace = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, s, valid, doy=doy)
    fn = model_trace.nodes["x"]["fn"]
    assert fn.batch_shape == (2, 3) and fn.log_prob(x).shape == (2, 3)
    assert torch.isfinite(model_trace.log_prob_sum())
    # a date's score counts its valid pixels only: changing an invalid pixel changes nothing
    x2 = x.clone()
    x2[~valid.unsqueeze(2).expand_as(x)] += 5.0
    torch.testing.assert_close(fn.log_prob(x2), fn.log_prob(x))
    prior = poutine.trace(hvae.model).get_trace(None, s, None, shape=(2, 3, 8, 8), doy=doy)
    assert prior.nodes["x"]["value"].shape == (2, 3, 4, 8, 8)


def test_an_interpolating_image_starts_as_the_interpolation_but_its_band_factors_can_learn():
    """The correction head is zero at initialisation; the factors are not (zero is a stationary point)."""
    spec = HierarchySpec.default(3, 4, temporal=True, interpolation=True, image_cov_rank=2)
    head = HVAE(spec).decoder.nets["x"].head
    assert torch.all(head.weight[:4] == 0) and torch.all(head.bias == 0)
    assert head.weight[4:].abs().sum() > 0


def test_guide_log_prob_counts_void_pixels_of_s_only():
    spec = tiny_spec()
    hvae = HVAE(spec)
    x, s, valid = batch(spec, size=8)
    trace = poutine.trace(hvae.guide).get_trace(x, s, valid)
    trace.compute_log_prob()
    logits = unwrap(trace.nodes["s"]["fn"]).logits
    value = trace.nodes["s"]["value"]
    by_hand = torch.where(s < 0, logits.log_softmax(-1).gather(-1, value.unsqueeze(-1)).squeeze(-1), 0.0)
    torch.testing.assert_close(trace.nodes["s"]["log_prob"], by_hand.sum((1, 2)))


# -------------------------------------------------------------------------- invalid pixels do not count
@given(
    seed=st.integers(0, 2**16),
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=16),
)
def test_perturbing_invalid_pixels_leaves_log_probs_unchanged(seed, values):
    torch.manual_seed(0)
    hvae = HVAE(tiny_spec())
    x, s, valid = batch(hvae.spec, size=8, seed=seed)
    invalid = (~valid).unsqueeze(1).expand_as(x)
    n = int(invalid.sum())
    if n == 0:
        return
    noise = torch.tensor(values).repeat(n // len(values) + 1)[:n]
    x2 = x.clone()
    x2[invalid] = noise
    guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid)
    lp = []
    for xi in (x, x2):
        model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(xi, None, valid)
        g = poutine.trace(replay(hvae.guide, trace=guide_trace)).get_trace(xi, s, valid)
        lp.append((model_trace.log_prob_sum(), g.log_prob_sum()))
    assert torch.equal(lp[0][0], lp[1][0])  # model: bit for bit
    torch.testing.assert_close(lp[0][1], lp[1][1])  # guide sees x * valid only


# --------------------------------------------------------------------------------------- guide given s
def test_guide_with_s_keeps_labels_and_samples_void_pixels():
    spec = tiny_spec()
    hvae = HVAE(spec)
    x, s, valid = batch(spec, B=2, size=8, void=0.5)
    draws = torch.stack([poutine.trace(hvae.guide).get_trace(x, s, valid).nodes["s"]["value"] for _ in range(40)])
    lab = s >= 0
    assert torch.equal(draws[:, lab], s[lab].expand(40, -1))
    void_draws = draws[:, ~lab]
    assert (void_draws >= 0).all() and (void_draws < spec.num_classes).all()
    # void pixels are sampled: with q(s|x) near uniform at init, they vary between draws
    assert (void_draws != void_draws[0]).any(0).float().mean() > 0.8


# ---------------------------------------------------------------------------------- parameter groups
@pytest.mark.parametrize("make", [lambda: load_example("default"), lambda: load_example("gaussian"),
                                  lambda: load_example("temporal"), tiny_spec])
def test_parameter_groups_disjoint_and_cover(make):
    hvae = HVAE(make())
    decoder, encoder = hvae.parameter_groups()
    dec, enc = {id(p) for p in decoder}, {id(p) for p in encoder}
    assert len(dec) == len(decoder) and len(enc) == len(encoder)
    assert not dec & enc
    assert dec | enc == {id(p) for p in hvae.parameters()}
    assert dec == {id(p) for p in hvae.decoder.parameters()}
    assert enc == {id(p) for p in hvae.encoder.parameters()}


# --------------------------------------------------------------------------------------- prior samples
@pytest.mark.parametrize("name", ["default", "gaussian", "temporal"])
def test_prior_samples_shapes_and_ranges(name):
    spec = load_example(name)
    hvae = HVAE(spec)
    size = 32
    if spec.s_prior == "empirical":
        s = torch.randint(-1, spec.num_classes, (1, size, size))
        out = hvae.sample_prior(3, s=s, dates=2)
        assert torch.equal(out["s"], s.expand(3, -1, -1))
    else:
        out = hvae.sample_prior(3, size=size, dates=2)
    want = expected_shapes(spec, 3, 2, size, size)
    want["s"] = (3, size, size)
    assert list(out) == list(spec.site_names)
    for k, v in out.items():
        assert tuple(v.shape) == want[k], k
        assert not v.requires_grad
    assert out["s"].dtype == torch.int64 and (out["s"] < spec.num_classes).all() and (out["s"] >= -1).all()
    if spec.s_prior == "categorical":
        assert (out["s"] >= 0).all()
    assert set(out["l"].unique().tolist()) <= {0.0, 1.0}
    for layer in spec.layers:
        v = out[layer.name]
        if layer.family == "bernoulli":
            assert set(v.unique().tolist()) <= {0.0, 1.0}
        elif layer.family == "categorical":
            assert v.dtype == torch.int64 and v.min() >= 0 and v.max() < layer.categories
        else:
            assert v.is_floating_point() and torch.isfinite(v).all()
    assert torch.isfinite(out["x"]).all()


def test_empirical_prior_needs_s():
    hvae = HVAE(HierarchySpec.default(3, 2))
    with pytest.raises(ValueError, match="the empirical s prior has no sampler"):
        hvae.sample_prior(2, size=16)
    with pytest.raises(ValueError, match="the empirical s prior has no sampler"):
        poutine.trace(hvae.model).get_trace(None, None, None, shape=(2, 16, 16))
    s_site = poutine.trace(hvae.model).get_trace(None, torch.zeros(1, 16, 16, dtype=torch.long)).nodes["s"]
    assert isinstance(unwrap(s_site["fn"]), EmpiricalPrior)


# ------------------------------------------------------------------------ straight-through inputs of s
def test_decoder_accepts_one_hot_s_and_gradient_flows():
    spec = tiny_spec(s_prior="categorical")
    hvae = HVAE(spec)
    x, s, valid = batch(spec, size=8, void=0.0)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid)
    s_int = guide_trace.nodes["s"]["value"]
    onehot = F.one_hot(s_int, 3).float().requires_grad_(True)
    lp_int = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, s_int, valid).log_prob_sum()
    lp_hot = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, onehot, valid).log_prob_sum()
    torch.testing.assert_close(lp_int, lp_hot)
    lp_hot.backward()
    assert onehot.grad is not None and onehot.grad.abs().sum() > 0


def test_straight_through_guide_samples_feed_the_model():
    spec = tiny_spec(s_prior="categorical")
    hvae = HVAE(spec)
    x, s, valid = batch(spec, size=8)

    def relax(msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in ("s", "l", "c", "b"):
            fn = unwrap(msg["fn"])
            n = msg["fn"].reinterpreted_batch_ndims if hasattr(msg["fn"], "reinterpreted_batch_ndims") else 0
            msg["fn"] = fn.straight_through(0.5).to_event(n)

    guide_trace = poutine.trace(_Relax(relax)(hvae.guide)).get_trace(x, s, valid)
    assert guide_trace.nodes["s"]["value"].shape == (2, 8, 8, 3)
    model_trace = poutine.trace(replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid)
    loss = -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    loss.backward()
    grads = [p.grad for p in hvae.encoder.unet.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


class _Relax(poutine.messenger.Messenger):
    def __init__(self, fn):
        super().__init__()
        self._fn = fn

    def _pyro_sample(self, msg):
        self._fn(msg)


# ----------------------------------------------------------------------------------------- temporal
def test_temporal_cloudy_date_does_not_change_q_s():
    spec = load_example("temporal")
    hvae = HVAE(spec)
    x, s, valid = batch(spec, B=2, T=3, size=16)
    valid[:, 1] = False
    x2 = x.clone()
    x2[:, 1] = 100.0
    p1, p2 = hvae.segment(x, valid), hvae.segment(x2, valid)
    torch.testing.assert_close(p1, p2)
    assert p1.shape == (2, spec.num_classes, 16, 16)


# ------------------------------------------------------------------------------------------ methods
def test_segment_reconstruct_layer_statistics():
    spec = tiny_spec()
    hvae = HVAE(spec)
    x, s, valid = batch(spec, size=8)
    probs = hvae.segment(x, valid)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 8, 8))
    rec = hvae.reconstruct(x, valid)
    assert rec.shape == x.shape and torch.isfinite(rec).all()
    stats = hvae.layer_statistics(x, valid)
    assert list(stats) == ["s", "l", "c", "b", "g"]
    # zero-initialised ladder heads: every layer starts at its prior (rate 0, nothing active)
    for name in ("c", "b", "g"):
        assert stats[name]["kl"] == pytest.approx(0.0, abs=1e-5) and stats[name]["active"] == 0.0
    with torch.no_grad():
        hvae.encoder.heads["b"].bias.fill_(3.0)
    stats = hvae.layer_statistics(x, valid)
    assert stats["b"]["kl"] > 1.0 and stats["b"]["active"] == 1.0
    assert stats["s"]["kl"] >= 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layer_kl_is_the_closed_form(dtype):
    """`layer_statistics` takes torch's `kl_divergence`: it equals the closed forms for every site family."""
    from pyro.distributions import Normal

    from hvaeseg.distributions import FastBernoulli
    from hvaeseg.hierarchy.hvae import _kl

    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return (3 * torch.randn(*shape, generator=g)).to(dtype)

    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    a, b = randn(2, 3, 4, 4), randn(2, 3, 4, 4)
    pa = torch.sigmoid(a)
    bernoulli = pa * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - pa) * (F.logsigmoid(-a) - F.logsigmoid(-b))
    torch.testing.assert_close(_kl(FastBernoulli(a), FastBernoulli(b)), bernoulli, **tol)
    q, p = FastCategorical(randn(2, 4, 4, 5)), FastCategorical(randn(2, 4, 4, 5))
    categorical = (q.logits.exp() * (q.logits - p.logits)).sum(-1)
    torch.testing.assert_close(_kl(q, p), categorical, **tol)
    labels = torch.randint(-1, 5, (2, 4, 4), generator=g)
    torch.testing.assert_close(_kl(PartiallyObservedCategorical(q.logits, labels), p), categorical, **tol)
    q, p = Normal(randn(2, 3), randn(2, 3).exp()), Normal(randn(2, 3), randn(2, 3).exp())
    normal = torch.log(p.scale / q.scale) + (q.scale**2 + (q.loc - p.loc) ** 2) / (2 * p.scale**2) - 0.5
    torch.testing.assert_close(_kl(q, p), normal, **tol)



def test_bernoulli_kl_stays_finite_when_logits_saturate():
    """A trained prior can push a logit past float32's sigmoid range (|logit| > ~104: probability exactly 0 or
    1), where torch's probability-based Bernoulli KL returns inf; the logit form stays finite and equals the
    float64 value (``layer_statistics`` reported KL(z2) = inf on a real run before this)."""
    from torch.distributions import kl_divergence

    from hvaeseg.distributions import FastBernoulli
    from hvaeseg.hierarchy.hvae import _kl

    a = torch.tensor([2.0, -3.0, 0.5, 30.0, -200.0])
    b = torch.tensor([-120.0, 150.0, -110.0, -130.0, -200.0])
    exact = (torch.sigmoid(a.double()) * (F.logsigmoid(a.double()) - F.logsigmoid(b.double()))
             + torch.sigmoid(-a.double()) * (F.logsigmoid(-a.double()) - F.logsigmoid(-b.double())))
    assert torch.isinf(kl_divergence(FastBernoulli(a), FastBernoulli(b))).any()  # what the fix is for
    kl = _kl(FastBernoulli(a), FastBernoulli(b))
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl.double(), exact, rtol=1e-5, atol=1e-5)
    assert kl[-1] == 0  # the same distribution, even saturated

def test_input_errors_are_clear():
    spec = tiny_spec()
    hvae = HVAE(spec)
    x, s, valid = batch(spec, size=8)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, C, H, W\) with C=2"):
        hvae.guide(x[:, :1], s, valid)
    with pytest.raises(ValueError, match="expected valid of shape"):
        hvae.guide(x, s, valid[:, :4])
    with pytest.raises(ValueError, match="expected s of shape"):
        hvae.guide(x, s[:1], valid)
    with pytest.raises(ValueError, match="does not divide the patch size 5x5"):
        hvae.guide(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="expected at least one of x, s, valid or shape"):
        hvae.model()
    with pytest.raises(TypeError, match="expected a HierarchySpec"):
        HVAE({"num_classes": 3})


def test_no_global_state_and_no_batch_norm():
    before = pyro.get_param_store().keys()
    hvae = HVAE(tiny_spec())
    x, s, valid = batch(hvae.spec, size=8)
    traces(hvae, x, s, valid)
    assert list(pyro.get_param_store().keys()) == list(before)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in hvae.modules())


# ---------------------------------------------------------------------------------------------- day of year
def _doy_spec(temporal=False):
    return HierarchySpec.default(3, 2, 2, channels=2, s_prior="categorical", temporal=temporal,
                                 encoder_widths=(4, 4, 4), decoder_width=4, day_of_year=True)


@pytest.mark.parametrize("temporal", [False, True])
def test_a_doy_hierarchy_needs_the_dates(temporal):
    spec = _doy_spec(temporal)
    hvae = HVAE(spec)
    x, s, valid = batch(spec, B=2, T=3)
    lead = (2, 3) if temporal else (2,)
    doy = torch.full(lead, 150.0)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, s, valid, doy=doy)
    poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy)
    for bad in (None, torch.full((2, 1) if temporal else (3,), 150.0)):
        with pytest.raises(ValueError, match=r"day of the year \('doy' is a parent\): expected doy of shape"):
            hvae.model(x, s, valid, doy=bad)
        with pytest.raises(ValueError, match=r"day of the year \('doy' is a parent\)"):
            hvae.guide(x, s, valid, doy=bad)


def test_decoder_output_for_x_follows_the_date_through_its_doy_weights():
    spec = _doy_spec()
    hvae = HVAE(spec)
    x, s, valid = batch(spec, B=2)
    net = hvae.decoder.nets["x"]
    doy_weight = net.globals[hvae.decoder.global_parents["x"].index("doy")].weight

    with torch.no_grad():  # one draw of (s, l, z1, z2), replayed under each date
        trace = poutine.trace(hvae.model).get_trace(None, s.clamp(min=0), valid, doy=torch.full((2,), 10.0))

    def x_mean(day):
        with torch.no_grad():
            replayed = poutine.trace(replay(hvae.model, trace=trace)).get_trace(
                None, s.clamp(min=0), valid, doy=torch.full((2,), day))
        return unwrap(replayed.nodes["x"]["fn"]).mean

    with torch.no_grad():
        doy_weight.zero_()
    torch.testing.assert_close(x_mean(30.0), x_mean(200.0), rtol=0, atol=0)  # only these weights carry the date
    with torch.no_grad():
        doy_weight.copy_(torch.linspace(-1, 1, doy_weight.numel()).reshape(doy_weight.shape))
    a, b = x_mean(30.0), x_mean(200.0)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(x_mean(30.0 + 365.25), a, rtol=1e-4, atol=1e-4)  # a function of the season


# ------------------------------------------------------------------------------- layers shared by the dates
def _shared_batch(spec, B=2, T=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, spec.image.bands, size, size, generator=g)
    valid = torch.rand(B, T, size, size, generator=g) < 0.7
    doy = torch.rand(B, T, generator=g) * 365
    return x, valid, doy


def test_a_shared_layer_has_one_value_per_pixel_for_every_date():
    spec = load_example("temporal_shared")
    assert spec.shared_order == ("u",) and "u" not in spec.per_date_order
    hvae = HVAE(spec)
    x, valid, doy = _shared_batch(spec)
    guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy)
    model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy)
    for trace in (guide_trace, model_trace):
        assert trace.nodes["u"]["value"].shape == (2, 1, 4, 16, 16)
        assert trace.nodes["u"]["fn"].batch_shape == (2, 1)
        assert trace.nodes["z1"]["fn"].batch_shape == (2, 3)
        # u is outside the time plate, the per-date layers inside it
        assert [f.name for f in trace.nodes["u"]["cond_indep_stack"]] == ["batch"]
        assert sorted(f.name for f in trace.nodes["z1"]["cond_indep_stack"]) == ["batch", "time"]


def test_q_of_a_shared_layer_ignores_cloudy_dates_and_uses_clear_ones():
    """q(u | x_1..T) pools the dates weighted by their clear share: what a fully cloudy date shows cannot
    change it, what a clear date shows does."""
    spec = load_example("temporal_shared")
    hvae = HVAE(spec)
    with torch.no_grad():  # make the encoder head of u depend on its features
        torch.nn.init.normal_(hvae.encoder.heads["u"].weight, std=0.1)
    x, valid, doy = _shared_batch(spec)
    valid[:, 1] = False

    def q_u(x):
        torch.manual_seed(0)  # the same draw of s, on which the decoder's part of q(u) depends
        trace = poutine.trace(hvae.guide).get_trace(x, None, valid, doy=doy)
        return trace.nodes["u"]["fn"].base_dist.loc

    hidden, seen = x.clone(), x.clone()
    hidden[:, 1] += 100.0  # date 1 is fully cloudy
    seen[:, 0] += 1.0  # date 0 is partly clear
    torch.testing.assert_close(q_u(x), q_u(hidden))
    assert not torch.allclose(q_u(x), q_u(seen))


def test_a_shared_layer_takes_only_shared_parents():
    from hvaeseg.hierarchy import ImageLayerSpec, LatentLayerSpec

    with pytest.raises(ValueError, match="layer 'u' is shared by the dates of a stack, so its parents must be too"):
        HierarchySpec(num_classes=3, code_bits=2, temporal=True,
                      layers=(LatentLayerSpec("u", "gaussian", 2, 1, ("s", "l"), shared=True),),
                      image=ImageLayerSpec(2, ("s", "u")))
    with pytest.raises(ValueError, match="shared must be true or false"):
        LatentLayerSpec("u", shared="yes")
    spec = load_example("temporal_shared")
    assert HierarchySpec.from_dict(spec.to_dict()) == spec  # the flag survives the round trip


def test_a_single_date_hierarchy_treats_a_shared_layer_as_an_ordinary_one():
    spec = load_example("temporal_shared")
    flat = HierarchySpec.from_dict({**spec.to_dict(), "temporal": False})
    assert flat.shared_order == () and flat.per_date_order == flat.order
    hvae = HVAE(flat)
    x = torch.randn(2, flat.image.bands, 16, 16)
    trace = poutine.trace(hvae.guide).get_trace(x, None, None, doy=torch.ones(2))
    assert trace.nodes["u"]["value"].shape == (2, 4, 16, 16)
