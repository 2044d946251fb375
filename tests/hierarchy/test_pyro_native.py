"""The HVAE with Pyro's own tools (docs/conventions.md, "Pyro inference"): SVI with Trace_ELBO and
TraceGraph_ELBO, Predictive (prior and posterior, with and without a guide), poutine.condition and poutine.do,
for both s priors, single-date and temporal; and the empirical s prior's sampler (an attached label pool)."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from hvaeseg.distributions import EmpiricalPrior, sample_label_maps
from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.traces import unwrap

K, C, D, SIZE, B, T = 3, 2, 2, 8, 2, 3
SETTINGS = [("empirical", False), ("categorical", False), ("empirical", True), ("categorical", True)]
IDS = ["empirical", "categorical", "empirical-temporal", "categorical-temporal"]
NO_POOL = "the empirical s prior has no sampler without a label pool: attach one"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_spec(s_prior: str, temporal: bool) -> HierarchySpec:
    """The default hierarchy with tiny nets; the temporal one also has the shared layer u and doy parents."""
    return HierarchySpec.default(K, C, D, channels=2, s_prior=s_prior, temporal=temporal, encoder_widths=(4, 4, 4),
                                 decoder_width=4, day_of_year=temporal, shared_channels=1 if temporal else 0)


def make(s_prior: str, temporal: bool, seed: int = 0):
    """``(hvae, x, valid, kwargs)`` for 8x8 images (``kwargs`` holds ``doy`` for the temporal hierarchy)."""
    pyro.set_rng_seed(seed)
    hvae = HVAE(tiny_spec(s_prior, temporal))
    lead = (B, T) if temporal else (B,)
    x = torch.randn(*lead, C, SIZE, SIZE)
    valid = torch.rand(*lead, SIZE, SIZE) > 0.2
    kw = {"doy": torch.tensor([[30.0, 120.0, 200.0], [60.0, 150.0, 300.0]])} if temporal else {}
    return hvae, x, valid, kw


def pool_maps(n: int = 5, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    """``(n, size, size)`` label maps without void, so that samples must equal pool maps exactly."""
    return torch.randint(0, K, (n, size, size), generator=torch.Generator().manual_seed(seed))


def site_shapes(spec: HierarchySpec) -> dict[str, tuple[int, ...]]:
    """Value shapes of the model's sites per docs/conventions.md (one draw, no num_samples dim)."""
    lead = (B, T) if spec.temporal else (B,)
    shapes = {"s": (B, 1, SIZE, SIZE) if spec.temporal else (B, SIZE, SIZE), "l": lead + (D,),
              "x": lead + (C, SIZE, SIZE)}
    for layer in spec.layers:
        own = (B, 1) if spec.temporal and layer.shared else lead
        shapes[layer.name] = own + (layer.channels, SIZE // layer.resolution, SIZE // layer.resolution)
    return shapes


def is_pool_map(s: torch.Tensor, pool: torch.Tensor) -> bool:
    """Whether the ``(H, W)`` map ``s`` is one of the ``(N, H, W)`` pool maps."""
    return bool((pool == s).flatten(1).all(1).any())


def check_sites(samples: dict[str, torch.Tensor], spec: HierarchySpec, n: int) -> None:
    want = site_shapes(spec)
    for name in spec.site_names:
        assert tuple(samples[name].shape) == (n,) + want[name], name
    s = samples["s"]
    assert s.dtype == torch.int64 and s.min() >= 0 and s.max() < K
    assert set(samples["l"].unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(samples["x"]).all()


# ------------------------------------------------------------------------------------------------- SVI
@pytest.mark.parametrize("loss", [Trace_ELBO, TraceGraph_ELBO], ids=["Trace_ELBO", "TraceGraph_ELBO"])
@pytest.mark.parametrize(("s_prior", "temporal"), SETTINGS, ids=IDS)
def test_svi_steps_and_moves_both_players(loss, s_prior, temporal):
    hvae, x, valid, kw = make(s_prior, temporal)
    decoder, encoder = hvae.parameter_groups()
    before = {id(p): p.detach().clone() for p in hvae.parameters()}
    pyro.clear_param_store()
    svi = SVI(hvae.model, hvae.guide, Adam({"lr": 1e-2}), loss())
    s = torch.randint(-1, K, (B, SIZE, SIZE))  # a labelled step (void pixels sampled by the guide), then unlabelled
    losses = [svi.step(x, s, valid, **kw), svi.step(x, None, valid, **kw)]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses), losses
    moved = {id(p) for p in hvae.parameters() if not torch.equal(p.detach(), before[id(p)])}
    assert moved & {id(p) for p in decoder}, "no decoder parameter changed"
    assert moved & {id(p) for p in encoder}, "no encoder parameter changed"


def test_svi_on_two_models_steps_each_its_own_parameters():
    """Pyro's parameter store is global: the second HVAE's steps must not move the first one's tensors."""
    a, x, valid, _ = make("categorical", False, seed=0)
    b, _, _, _ = make("categorical", False, seed=1)
    svi_a = SVI(a.model, a.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    svi_b = SVI(b.model, b.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    svi_a.step(x, None, valid)
    before_a = [p.detach().clone() for p in a.parameters()]
    before_b = [p.detach().clone() for p in b.parameters()]
    svi_b.step(x, None, valid)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before_a))
    assert not all(torch.equal(p, q) for p, q in zip(b.parameters(), before_b))
    svi_a.step(x, None, valid)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), before_a))


def test_trace_mean_field_elbo_refuses_the_discrete_guide():
    """Documented in docs/conventions.md: the discrete guide is not fully reparameterised."""
    hvae, x, valid, kw = make("categorical", False)
    svi = SVI(hvae.model, hvae.guide, Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    with pytest.raises(NotImplementedError, match="reparameterized"):
        svi.step(x, None, valid)


# ------------------------------------------------------------------------------------------ Predictive
@pytest.mark.parametrize(("s_prior", "temporal"), SETTINGS, ids=IDS)
def test_prior_predictive(s_prior, temporal):
    hvae, x, valid, kw = make(s_prior, temporal)
    pool = pool_maps()
    hvae.attach_label_pool(pool)
    samples = Predictive(hvae.model, num_samples=3)(None, None, valid, **kw)
    check_sites(samples, hvae.spec, 3)
    if s_prior == "empirical":  # pool maps of the model's size and without void: drawn whole
        for s in samples["s"].reshape(-1, SIZE, SIZE):
            assert is_pool_map(s, pool)
    # sized by shape= alone, no valid mask
    shape = (B, T, SIZE, SIZE) if temporal else (B, SIZE, SIZE)
    samples = Predictive(hvae.model, num_samples=2)(None, None, None, shape=shape, **kw)
    check_sites(samples, hvae.spec, 2)


@pytest.mark.parametrize(("s_prior", "temporal"), SETTINGS, ids=IDS)
def test_posterior_predictive_with_guide(s_prior, temporal):
    hvae, x, valid, kw = make(s_prior, temporal)
    hvae.attach_label_pool(pool_maps())
    samples = Predictive(hvae.model, guide=hvae.guide, num_samples=2)(x, None, valid, **kw)
    check_sites(samples, hvae.spec, 2)
    assert torch.equal(samples["x"], x.expand(2, *x.shape))  # observed
    # labelled pixels keep their label (the guide samples only the void ones)
    labels = torch.randint(-1, K, (B, SIZE, SIZE))
    samples = Predictive(hvae.model, guide=hvae.guide, num_samples=2)(x, labels, valid, **kw)
    s = samples["s"].reshape(2, B, SIZE, SIZE)
    lab = (labels >= 0).expand_as(s)
    assert torch.equal(s[lab], labels.expand_as(s)[lab])
    # uncondition: x regenerated from the posterior samples of (s, l, z)
    regen = Predictive(poutine.uncondition(hvae.model), guide=hvae.guide, num_samples=2)(x, None, valid, **kw)
    check_sites(regen, hvae.spec, 2)
    assert not torch.equal(regen["x"][0], x)


@pytest.mark.parametrize(("s_prior", "temporal"), SETTINGS, ids=IDS)
def test_posterior_predictive_from_samples_without_guide(s_prior, temporal):
    hvae, x, valid, kw = make(s_prior, temporal)
    hvae.attach_label_pool(pool_maps())
    latents = ("s", "l") + hvae.spec.order
    post = Predictive(hvae.guide, num_samples=2)(x, None, valid, **kw)  # the guide's samples
    assert set(post) == set(latents)
    out = Predictive(hvae.model, posterior_samples=post, return_sites=latents + ("x",))(None, None, valid, **kw)
    check_sites(out, hvae.spec, 2)
    for name in latents:  # the model ran on the given latents
        assert torch.equal(out[name], post[name]), name


# --------------------------------------------------------------------------------------------- handlers
def _layer_params(trace, name: str) -> torch.Tensor:
    fn = unwrap(trace.nodes[name]["fn"])
    return fn.logits if hasattr(fn, "logits") else fn.loc


@pytest.mark.parametrize(("s_prior", "temporal"), SETTINGS, ids=IDS)
def test_condition_fixes_s_or_l_and_samples_the_rest(s_prior, temporal):
    hvae, x, valid, kw = make(s_prior, temporal)
    want = site_shapes(hvae.spec)
    s = torch.randint(0, K, want["s"])
    l = torch.randint(0, 2, want["l"]).float()
    with torch.no_grad():
        # s fixed: no pool needed, even for the empirical prior
        trace = poutine.trace(poutine.condition(hvae.model, data={"s": s})).get_trace(None, None, valid, **kw)
        assert torch.equal(trace.nodes["s"]["value"], s) and trace.nodes["s"]["is_observed"]
        for name in hvae.spec.site_names:
            assert tuple(trace.nodes[name]["value"].shape) == want[name], name
            if name != "s":
                assert not trace.nodes[name]["is_observed"], name
        # l fixed: s is drawn from the prior, so the empirical prior needs a pool
        if s_prior == "empirical":
            with pytest.raises(ValueError, match=NO_POOL):
                poutine.trace(poutine.condition(hvae.model, data={"l": l})).get_trace(None, None, valid, **kw)
            hvae.attach_label_pool(pool_maps())
        trace = poutine.trace(poutine.condition(hvae.model, data={"l": l})).get_trace(None, None, valid, **kw)
        assert torch.equal(trace.nodes["l"]["value"], l) and trace.nodes["l"]["is_observed"]
        assert tuple(trace.nodes["s"]["value"].shape) == want["s"] and not trace.nodes["s"]["is_observed"]
        # with both fixed, the prior of z1 (parents s, l) is a function of them alone
        both = poutine.condition(hvae.model, data={"s": s, "l": l})
        a = poutine.trace(both).get_trace(None, None, valid, **kw)
        b = poutine.trace(both).get_trace(None, None, valid, **kw)
    torch.testing.assert_close(_layer_params(a, "z1"), _layer_params(b, "z1"))


@pytest.mark.parametrize(("s_prior", "temporal"), SETTINGS, ids=IDS)
def test_do_intervenes_on_s(s_prior, temporal):
    hvae, x, valid, kw = make(s_prior, temporal)
    pool = pool_maps()
    hvae.attach_label_pool(pool)
    want = site_shapes(hvae.spec)
    s0 = torch.randint(0, K, want["s"])
    l0 = torch.randint(0, 2, want["l"]).float()
    with torch.no_grad():
        done = poutine.trace(poutine.do(hvae.model, data={"s": s0, "l": l0})).get_trace(None, None, valid, **kw)
        conditioned = poutine.trace(poutine.condition(hvae.model, data={"s": s0, "l": l0})).get_trace(
            None, None, valid, **kw)
    fresh = done.nodes["s"]["value"]  # the trace's s: a draw from the prior that nothing downstream uses
    assert tuple(fresh.shape) == want["s"] and not done.nodes["s"]["is_observed"]
    if s_prior == "empirical":
        for m in fresh.reshape(-1, SIZE, SIZE):
            assert is_pool_map(m, pool)
    # downstream sites see the intervened values: the same prior as when conditioning on them
    torch.testing.assert_close(_layer_params(done, "z1"), _layer_params(conditioned, "z1"))


# ----------------------------------------------------------------------------- the empirical prior's pool
def test_empirical_prior_raises_only_when_sampled_without_a_pool():
    hvae, x, valid, _ = make("empirical", False)
    labels = torch.randint(-1, K, (B, SIZE, SIZE))
    with torch.no_grad():
        # s given, or replayed from the guide: no sample needed, no pool needed
        poutine.trace(hvae.model).get_trace(x, labels, valid)
        guide_trace = poutine.trace(hvae.guide).get_trace(x, None, valid)
        model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x, None, valid)
    model_trace.compute_log_prob()
    assert torch.equal(model_trace.nodes["s"]["log_prob"], torch.zeros(B))  # no density
    svi = SVI(hvae.model, hvae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x, None, valid)))
    # a sample of s: the clear error
    with pytest.raises(ValueError, match=NO_POOL):
        Predictive(hvae.model, num_samples=1)(None, None, valid)
    with pytest.raises(ValueError, match=NO_POOL):
        Predictive(hvae.model, guide=hvae.guide, num_samples=1)(x, None, valid)
    with pytest.raises(ValueError, match="no sampler without a label pool"):
        hvae.sample_prior(2, size=SIZE)
    with pytest.raises(ValueError, match=NO_POOL):
        EmpiricalPrior(K, (B, SIZE, SIZE)).sample()
    # attached: samples; detached: the error again
    pool = pool_maps()
    assert hvae.attach_label_pool(pool) is hvae and hvae.label_pool is pool
    out = hvae.sample_prior(3, size=SIZE)
    assert all(is_pool_map(s, pool) for s in out["s"])
    hvae.attach_label_pool(None)
    with pytest.raises(ValueError, match=NO_POOL):
        Predictive(hvae.model, num_samples=1)(None, None, valid)


def test_pool_samples_are_crops_with_void_filled_from_class_frequencies():
    g = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 4, (3, 12, 10), generator=g)  # K = 5, but class 4 never appears
    pool[torch.rand(pool.shape, generator=g) < 0.3] = -1
    pyro.set_rng_seed(0)
    samples = sample_label_maps(pool, (40, 6, 5), num_classes=5)
    assert samples.shape == (40, 6, 5) and samples.dtype == torch.int64
    assert samples.min() >= 0 and samples.max() <= 3  # void filled, only with classes of the pool
    offsets = set()
    for s in samples:
        found = [(i, r, c) for i in range(3) for r in range(12 - 6 + 1) for c in range(10 - 5 + 1)
                 if bool(((pool[i, r:r + 6, c:c + 5] == s) | (pool[i, r:r + 6, c:c + 5] < 0)).all())]
        assert found, "a sample that is no crop of a pool map"
        offsets.add(found[0])
    assert len(offsets) > 10  # random maps and offsets, not one fixed crop
    # one labelled class in the whole pool: every void pixel becomes that class
    single = torch.full((2, 6, 6), -1, dtype=torch.long)
    single[0, 0, 0] = 2
    assert torch.equal(sample_label_maps(single, (4, 6, 6), 3), torch.full((4, 6, 6), 2))
    # the frequencies: 3 labelled pixels of class 0 for 1 of class 1
    freq = torch.full((1, 40, 40), -1, dtype=torch.long)
    freq[0, 0, :3], freq[0, 0, 3] = 0, 1
    draws = sample_label_maps(freq, (1, 40, 40), 2)[0, 1:]  # rows of void only
    assert 0.70 < float((draws == 0).float().mean()) < 0.80


def test_pool_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least 8x8 pixels.*got maps of 6x10.*attach larger label maps"):
        sample_label_maps(torch.zeros(2, 6, 10, dtype=torch.long), (1, 8, 8), 3)
    hvae = HVAE(tiny_spec("empirical", False))
    with pytest.raises(TypeError, match="expected integer label maps"):
        hvae.attach_label_pool(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"class ids in \[0, 3\) or -1 \(void\).*got values in \[3, 3\]"):
        hvae.attach_label_pool(torch.full((2, 8, 8), 3))
    with pytest.raises(ValueError, match="at least one labelled pixel"):
        hvae.attach_label_pool(torch.full((2, 8, 8), -1))
    with pytest.raises(TypeError, match="LabelPool"):
        hvae.attach_label_pool([[0, 1]])
    # smaller pool maps than the model's images: the error at sampling time
    hvae.attach_label_pool(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 8x8 pixels"):
        hvae.sample_prior(1, size=SIZE)


def test_a_label_pool_object_attaches_all_its_maps_and_log_prob_is_unchanged():
    from hvaeseg.objectives import LabelPool

    maps = torch.randint(-1, K, (2, SIZE, SIZE), generator=torch.Generator().manual_seed(3))
    pool = LabelPool(maps, dihedral=True)
    hvae = HVAE(tiny_spec("empirical", False)).attach_label_pool(pool)
    assert torch.equal(hvae.label_pool, pool.all_maps())
    prior = EmpiricalPrior(K, (B, SIZE, SIZE), hvae.label_pool)
    s = prior.sample()
    assert s.shape == (B, SIZE, SIZE)
    assert torch.equal(prior.log_prob(s), torch.zeros(B, SIZE, SIZE))
    assert torch.equal(prior.to_event(2).log_prob(torch.randint(-1, K, (B, SIZE, SIZE))), torch.zeros(B))


def test_hvae_methods_attach_the_runs_label_pool():
    """A run hands its label pool to the method (``Method.use_label_pool``); the HVAE methods attach it to the
    model, so its empirical s prior can be sampled, e.g. by Predictive."""
    from hvaeseg.methods.hvae import HVAEConfig, SymmetricMethod
    from hvaeseg.objectives import LabelPool
    from tests.methods.standin import random_batch

    config = HVAEConfig(spec=tiny_spec("empirical", False).to_dict(), augment=False, s_prior="empirical")
    method = SymmetricMethod.build(C, K, config=config, patch_size=SIZE)
    lab = random_batch(B=2, C=C, H=SIZE, W=SIZE, K=K, seed=1)
    assert method.hvae.label_pool is None
    method.use_label_pool(LabelPool(lab.labels, dihedral=True))
    assert method.hvae.label_pool.shape == (2 * 8, SIZE, SIZE)
    samples = Predictive(method.hvae.model, num_samples=1)(None, None, None, shape=(2, SIZE, SIZE))
    assert samples["s"].shape == (1, 2, SIZE, SIZE)
