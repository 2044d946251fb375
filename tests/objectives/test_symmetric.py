"""SymmetricEquilibrium: Monte Carlo gradients against exact enumeration, learning, errors.

Exact objectives (tiny model, every configuration enumerated, see tests/objectives/tiny.py), with the batch
means used by the implementation:

- L_p(theta) = mean_lab sum_{h consistent with s} sg[q(h|x,s)] log p(x,h) + mean_unl sum_h sg[q(h|x')] log p(x',h)
- L_q(phi)   = mean_lab log q(s_lab|x) + mean_pool sum_{l,z,x} sg[p(l,z,x|fill(s''))] log q(s''_lab, l, z|x)

where sg = no gradient (samples are drawn without gradient: the game gradient of each player holds the
other player's distribution fixed). The decoder gradient is taken w.r.t. theta, the encoder's w.r.t. phi.
"""

from __future__ import annotations

import types

import pyro
import pyro.poutine as poutine
import pytest
import torch

from hvaeseg.objectives import LabelPool, SymmetricEquilibrium, SymmetricWeights, fill_void_nearest
from hvaeseg.traces import labelled_log_prob, split_parameters
from tests.objectives import gradcheck
from tests.objectives.tiny import (
    TinyHVAE,
    all_images,
    all_latents,
    enumerate_given,
    log_guide,
    log_guide_no_s,
    log_joint,
    rows,
)


@pytest.fixture
def setting():
    m = TinyHVAE(K=2, H=1, W=2, D=1, C=2)
    X = all_images(m)
    return types.SimpleNamespace(
        m=m,
        x=X[[3, 10]],
        s=torch.tensor([[[1, -1]], [[0, 1]]]),  # image 0 has a void pixel
        valid=torch.tensor([[[True, False]], [[True, True]]]),  # image 0 has an occluded pixel
        xu=X[[5, 12]],
        vu=torch.tensor([[[True, True]], [[False, True]]]),
        pool=torch.tensor([[[1, -1]], [[0, 0]]]),  # map 0 has a void pixel
    )


# ------------------------------------------------------------------------------------------ exact terms
def exact_wake(m, x, valid, s=None):
    """sum_h sg[q(h|x[,s])] log p(x, h) for one image."""
    h, xx, vv, s_given = enumerate_given(m, x, valid, s)
    w = log_guide(m, xx, h, vv, s_given=s_given).detach().exp()
    assert abs(float(w.sum()) - 1) < 1e-5
    return (w * log_joint(m, xx, h, vv)).sum()


def exact_sleep(m, s_pool=None):
    """sum sg[p(l, z, x | fill(s''))] log q(s''_lab, l, z | x) for one pool map (1, H, W); with s_pool None,
    sum sg[p(s, l, z, x)] log q(s, l, z | x) (unsupervised: s from the prior)."""
    h, X = all_latents(m), all_images(m)
    if s_pool is not None:
        h = rows(h, (h["s"] == fill_void_nearest(s_pool)[0]).flatten(1).all(1))
    n, nx = len(h["s"]), len(X)
    hh = {k: v.repeat_interleave(nx, 0) for k, v in h.items()}
    xx = X.repeat(n, 1, 1, 1)
    vv = torch.ones(len(xx), m.H, m.W, dtype=torch.bool)
    lp = log_joint(m, xx, hh, vv).detach()
    if s_pool is None:
        return (lp.exp() * log_guide(m, xx, hh, vv)).sum()
    log_ps = torch.log_softmax(m.s_logits, -1)[0, torch.arange(m.W), hh["s"][0, 0]].sum().detach()
    w = (lp - log_ps).exp()  # p(l, z, x | s'')
    lq = log_guide_no_s(m, xx, hh, vv) + labelled_log_prob(
        m.s_posterior_logits(xx, vv), s_pool.expand(len(xx), -1, -1)
    )
    return (w * lq).sum()


# ------------------------------------------------------------------------------------ gradient checks
def test_decoder_gradient_is_unbiased_for_L_p(setting):
    st, m = setting, setting.m
    theta = m.decoder_parameters()
    obj = SymmetricEquilibrium(num_particles=400)

    def estimate():
        dec, _ = obj.differentiable_loss(m.model, m.guide, labelled=(st.x, st.s, st.valid), unlabelled=(st.xu, st.vu),
                                         pool=st.pool)
        return -dec

    exact_lp = sum(exact_wake(m, st.x[i : i + 1], st.valid[i : i + 1], st.s[i : i + 1]) for i in range(2)) / 2
    exact_lp = exact_lp + sum(exact_wake(m, st.xu[i : i + 1], st.vu[i : i + 1]) for i in range(2)) / 2
    exact = gradcheck.flat_grad(exact_lp, theta)
    gradcheck.check(gradcheck.mc_gradients(estimate, theta, repeats=40), exact)


def test_encoder_gradient_is_unbiased_for_L_q(setting):
    st, m = setting, setting.m
    phi = m.encoder_parameters()
    obj = SymmetricEquilibrium(num_particles=400)

    def estimate():
        _, enc = obj.differentiable_loss(m.model, m.guide, labelled=(st.x, st.s, st.valid), unlabelled=(st.xu, st.vu),
                                         pool=st.pool)
        return -enc

    supervised = labelled_log_prob(m.s_posterior_logits(st.x, st.valid), st.s).mean()
    sleep = (exact_sleep(m, st.pool[:1]) + exact_sleep(m, st.pool[1:])) / 2
    exact = gradcheck.flat_grad(supervised + sleep, phi)
    samples = gradcheck.mc_gradients(estimate, phi, repeats=40)
    gradcheck.check(samples, exact)
    # the check has power: scoring the filled (void) pixel of pool map 0 too gives a different gradient
    full_pool = fill_void_nearest(st.pool)
    supervised = labelled_log_prob(m.s_posterior_logits(st.x, st.valid), st.s).mean()
    wrong = gradcheck.flat_grad(supervised + (exact_sleep(m, full_pool[:1]) + exact_sleep(m, full_pool[1:])) / 2, phi)
    mean, se = samples.mean(0), samples.std(0) / 40**0.5
    assert ((mean - wrong).abs() > gradcheck.Z * se + gradcheck.ATOL).any()


def test_unsupervised_mode_gradients_are_unbiased(setting):
    """No labelled batch and no pool: L_p on the unlabelled batch, sleep term with s from the model prior."""
    st, m = setting, setting.m
    theta, phi = m.decoder_parameters(), m.encoder_parameters()
    obj = SymmetricEquilibrium(num_particles=300)
    xu, vu = st.xu[:1], st.vu[:1]
    dec_samples, enc_samples = [], []
    for _ in range(40):
        dec, enc = obj.differentiable_loss(m.model, m.guide, unlabelled=(xu, vu))
        dec_samples.append(gradcheck.flat_grad(-dec, theta))
        enc_samples.append(gradcheck.flat_grad(-enc, phi))
    gradcheck.check(torch.stack(dec_samples), gradcheck.flat_grad(exact_wake(m, xu, vu), theta))
    gradcheck.check(torch.stack(enc_samples), gradcheck.flat_grad(exact_sleep(m), phi))


# -------------------------------------------------------------------------------------- structure
def test_losses_reach_the_right_parameter_groups(setting):
    st, m = setting, setting.m
    theta, phi = split_parameters(m.model, m.guide, st.x, s=st.s, valid=st.valid)
    dec, enc = SymmetricEquilibrium().differentiable_loss(
        m.model, m.guide, labelled=(st.x, st.s, st.valid), unlabelled=(st.xu, st.vu), pool=st.pool
    )
    assert dec.shape == () and enc.shape == () and torch.isfinite(dec) and torch.isfinite(enc)
    g_dec_phi = torch.autograd.grad(dec, phi, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_dec_phi)  # samples carry no gradient into the guide
    g_dec_theta = torch.autograd.grad(dec, theta, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in g_dec_theta)
    g_enc_phi = torch.autograd.grad(enc, phi, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in g_enc_phi)


def test_supervised_term_counts_labelled_pixels_only(setting):
    st, m = setting, setting.m
    terms = SymmetricEquilibrium().terms(m.model, m.guide, labelled=(st.x, st.s, st.valid), pool=st.pool)
    ls = torch.log_softmax(m.s_posterior_logits(st.x, st.valid), -1)
    hand = (ls[0, 0, 0, 1] + ls[1, 0, 0, 0] + ls[1, 0, 1, 1]) / 2  # the void pixel (0, 0, 1) is not counted
    assert torch.allclose(terms["supervised_q"], hand)
    assert set(terms) == {"labelled_p", "supervised_q", "sleep_q", "decoder_loss", "encoder_loss"}


def test_weights_scale_and_skip_terms(setting):
    st, m = setting, setting.m
    kw = dict(labelled=(st.x, st.s, st.valid), unlabelled=(st.xu, st.vu), pool=st.pool)
    w = SymmetricWeights(labelled_p=2.0, unlabelled_p=0, supervised_q=0.5, sleep_q=0)
    terms = SymmetricEquilibrium(w).terms(m.model, m.guide, **kw)
    assert "unlabelled_p" not in terms and "sleep_q" not in terms
    assert torch.allclose(terms["decoder_loss"], -2.0 * terms["labelled_p"])
    assert torch.allclose(terms["encoder_loss"], -0.5 * terms["supervised_q"])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="labelled_p"):
            SymmetricWeights(labelled_p=bad)
    with pytest.raises(TypeError, match="sleep_q"):
        SymmetricWeights(sleep_q="1")
    with pytest.raises(ValueError, match="num_particles"):
        SymmetricEquilibrium(num_particles=0)
    with pytest.raises(TypeError, match="SymmetricWeights"):
        SymmetricEquilibrium({"labelled_p": 1.0})


def test_accepts_patchbatch_like_objects(setting):
    st, m = setting, setting.m
    lab = types.SimpleNamespace(x=st.x, valid=st.valid, labels=st.s)
    unl = types.SimpleNamespace(x=st.xu, valid=st.vu, labels=torch.full_like(st.s, -1))
    pyro.set_rng_seed(1)
    a = SymmetricEquilibrium().differentiable_loss(m.model, m.guide, labelled=lab, unlabelled=unl, pool=st.pool)
    pyro.set_rng_seed(1)
    b = SymmetricEquilibrium().differentiable_loss(
        m.model, m.guide, labelled=(st.x, st.s, st.valid), unlabelled=(st.xu, st.vu), pool=st.pool
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_empirical_prior_works_with_a_pool_and_fails_clearly_without(setting):
    st = setting
    m = TinyHVAE(s_prior="empirical")
    dec, enc = SymmetricEquilibrium().differentiable_loss(m.model, m.guide, labelled=(st.x, st.s, st.valid),
                                                          pool=st.pool)
    assert torch.isfinite(dec) and torch.isfinite(enc)
    with pytest.raises(ValueError, match="empirical prior"):
        SymmetricEquilibrium().differentiable_loss(m.model, m.guide, unlabelled=(st.xu, st.vu))


def test_errors_name_the_fix(setting):
    st, m = setting, setting.m
    obj = SymmetricEquilibrium()
    with pytest.raises(ValueError, match="neither"):
        obj.differentiable_loss(m.model, m.guide, pool=st.pool)
    with pytest.raises(ValueError, match="pool="):
        obj.differentiable_loss(m.model, m.guide, labelled=(st.x, st.s, st.valid))
    with pytest.raises(TypeError, match="int64"):
        obj.differentiable_loss(m.model, m.guide, labelled=(st.x, st.s.float(), st.valid), pool=st.pool)
    with pytest.raises(TypeError, match=r"labelled=\(x, s, valid\)"):
        obj.differentiable_loss(m.model, m.guide, labelled=(st.x, st.s), pool=st.pool)
    with pytest.raises(ValueError, match="only void"):
        obj.differentiable_loss(m.model, m.guide, labelled=(st.x, torch.full_like(st.s, -1), st.valid), pool=st.pool)

    def bad_guide(x, s=None, valid=None):  # ignores the labels it is given
        return m.guide(x, s=None, valid=valid)

    pyro.set_rng_seed(3)
    with pytest.raises(ValueError, match="keep labelled pixels"):
        SymmetricEquilibrium(num_particles=50).differentiable_loss(m.model, bad_guide, labelled=(st.x, st.s, st.valid),
                                                                   pool=st.pool)


# ---------------------------------------------------------------------------------------------- learning
def _learning_run(steps, n_labelled, batch_labelled, lr, seed=0):
    """Tiny truth: K=3 classes on one pixel, x = 4 binary bands that depend on s only (l and z carry no
    signal), so the true posterior p(s, l, z | x) is exactly representable by the guide. The learner
    starts from small random parameters; labelled pairs are a fixed set, unlabelled images are fresh."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    K, C = 3, 4
    truth = TinyHVAE(K=K, H=1, W=1, D=1, C=C, seed=1, scale=2.0)
    with torch.no_grad():
        truth.x_z.zero_()
        truth.x_l.zero_()
        truth.s_logits.copy_(torch.tensor([0.5, 0.3, 0.2]).log().view(1, 1, K))
    X, h = all_images(truth), all_latents(truth)
    nx, nh = len(X), len(h["s"])
    xx = X.repeat_interleave(nh, 0)
    hh = {k: v.repeat(nx, *[1] * (v.dim() - 1)) for k, v in h.items()}

    def joint(model):
        return log_joint(model, xx, hh).reshape(nx, nh)

    def sample_truth(n):
        with torch.no_grad():
            tr = poutine.trace(truth.model).get_trace(valid=torch.ones(n, 1, 1, dtype=torch.bool))
        return tr.nodes["x"]["value"], tr.nodes["s"]["value"]

    with torch.no_grad():
        jt = joint(truth)
        log_px_true = jt.logsumexp(1)
        px_true = log_px_true.exp()
        s_idx = h["s"].flatten()
        log_ps_x_true = torch.stack([jt[:, s_idx == k].logsumexp(1) for k in range(K)], 1) - log_px_true[:, None]

    def kls(model):
        """KL(p*(x) || p(x)), E_x KL(p*(s|x) || q(s|x)), E_x KL(p(s,l,z|x) || q(s,l,z|x)) (x ~ p*)."""
        with torch.no_grad():
            j = joint(model)
            log_px = j.logsumexp(1)
            kl_x = (px_true * (log_px_true - log_px)).sum()
            log_qs = torch.log_softmax(model.s_posterior_logits(X, None).reshape(nx, K), -1)
            kl_s = (px_true * (log_ps_x_true.exp() * (log_ps_x_true - log_qs)).sum(1)).sum()
            post = j - log_px[:, None]
            log_q = log_guide(model, xx, hh).reshape(nx, nh)
            kl_h = (px_true * (post.exp() * (post - log_q)).sum(1)).sum()
        return float(kl_x), float(kl_s), float(kl_h)

    m = TinyHVAE(K=K, H=1, W=1, D=1, C=C, seed=2, scale=0.1)
    x_lab, s_lab = sample_truth(n_labelled)
    pool = LabelPool(s_lab, seed=seed)
    theta, phi = split_parameters(m.model, m.guide, x_lab[:2], s=s_lab[:2])
    opt_d, opt_e = torch.optim.Adam(theta, lr=lr), torch.optim.Adam(phi, lr=lr)
    decay = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: 1 - i / steps) for o in (opt_d, opt_e)]
    obj = SymmetricEquilibrium()
    before = kls(m)
    for _ in range(steps):
        idx = torch.randint(n_labelled, (batch_labelled,))
        x_unl, _ = sample_truth(64)
        dec, enc = obj.differentiable_loss(
            m.model, m.guide, labelled=(x_lab[idx], s_lab[idx], None), unlabelled=(x_unl, None), pool=pool.sample(64)
        )
        for opt, loss, params in ((opt_d, dec, theta), (opt_e, enc, phi)):
            opt.zero_grad()
            for p, g in zip(params, torch.autograd.grad(loss, params)):
                p.grad = g
            opt.step()
        for sched in decay:
            sched.step()
    return before, kls(m)


def test_symmetric_learning_recovers_a_tiny_truth_fast():
    before, (kl_x, kl_s, kl_h) = _learning_run(steps=150, n_labelled=200, batch_labelled=16, lr=0.08)
    assert before[0] > 0.3 and before[1] > 0.15  # far from the truth at the start
    assert kl_x < 0.03  # decoder: marginal of x close to the data distribution (nats)
    assert kl_s < 0.08  # encoder: q(s|x) close to the true posterior p*(s|x)
    assert kl_h < 0.01  # encoder close to the decoder's own posterior (the equilibrium)


@pytest.mark.slow
def test_symmetric_learning_recovers_a_tiny_truth():
    _, (kl_x, kl_s, kl_h) = _learning_run(steps=1500, n_labelled=2000, batch_labelled=64, lr=0.03)
    assert kl_x < 0.003
    assert kl_s < 0.01
    assert kl_h < 0.003


# ------------------------------------------------------------------------------- sleep: real masks and dates
def _recording(m):
    """The tiny model and guide behind wrappers that accept ``doy=`` and record what they are called with."""
    calls = {"model": [], "guide": []}

    def model(x=None, s=None, valid=None, **kw):
        calls["model"].append({"valid": valid, **kw})
        return m.model(x, s, valid)

    def guide(x, s=None, valid=None, **kw):
        calls["guide"].append({"valid": valid, **kw})
        return m.guide(x, s, valid)

    return model, guide, calls


def _distinct_masks(n, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        masks = torch.rand(n, H, W, generator=g) < 0.6
        flat = {tuple(v.flatten().tolist()) for v in masks}
        if len(flat) == n and not bool(masks.all(-1).all(-1).any()):
            return masks


SLEEP_ONLY = SymmetricWeights(labelled_p=0, unlabelled_p=0, supervised_q=0, sleep_q=1)


@pytest.mark.parametrize("source", ["unlabelled", "labelled", "both", "no-pool"])
@pytest.mark.parametrize("particles", [1, 2])
def test_sleep_images_borrow_real_masks_and_dates(source, particles):
    """With ``sleep_masks=True`` the guide sees each generated image under the mask of a real image (of the
    unlabelled batch, else the labelled one) and the model and guide get that same real image's date; the model
    itself generates complete images."""
    m = TinyHVAE(K=2, H=2, W=3, D=1, C=2)
    B, n_pool = 4, 16
    g = torch.Generator().manual_seed(0)
    xu = (torch.rand(B, 2, 2, 3, generator=g) < 0.5).float()
    vu, vl = _distinct_masks(B, 2, 3, seed=1), _distinct_masks(B, 2, 3, seed=2)
    du, dl = torch.tensor([10.0, 100.0, 200.0, 300.0]), torch.tensor([20.0, 120.0, 220.0, 320.0])
    s = torch.randint(0, 2, (B, 2, 3), generator=g)
    pool = torch.randint(-1, 2, (n_pool, 2, 3), generator=g)
    pool[:, 0, 0] = 0  # at least one labelled pixel per map
    kw = {"pool": pool}
    if source in ("unlabelled", "both", "no-pool"):
        kw["unlabelled"] = (xu, vu, du)
    if source in ("labelled", "both"):
        kw["labelled"] = (xu, s, vl, dl)
    if source == "no-pool":
        kw["pool"] = None
    real_masks, real_doy = (vl, dl) if source == "labelled" else (vu, du)
    rows = (n_pool if source != "no-pool" else B) * particles

    model, guide, calls = _recording(m)
    obj = SymmetricEquilibrium(SLEEP_ONLY, num_particles=particles, sleep_masks=True)
    dec, enc = obj.differentiable_loss(model, guide, **kw)
    assert torch.isfinite(enc) and enc.requires_grad
    assert len(calls["guide"]) == 1  # the sleep term's guide only
    seen, gen = calls["guide"][0], calls["model"][-1]
    assert seen["valid"].shape == (rows, 2, 3) and seen["valid"].dtype == torch.bool
    assert bool(gen["valid"].all()) and gen["valid"].shape == (rows, 2, 3)  # generated images are complete
    assert seen["doy"].shape == (rows,) and torch.equal(seen["doy"], gen["doy"])
    for mask, day in zip(seen["valid"], seen["doy"]):
        (j,) = (real_doy == day).nonzero().flatten().tolist()  # the date of one real image...
        assert torch.equal(mask, real_masks[j])  # ...and the mask of that same image
    # drawn at random, not all the same image
    assert len(set(seen["doy"].tolist())) > 1


def test_without_sleep_masks_the_guide_sees_every_generated_pixel_but_dates_are_still_borrowed():
    m = TinyHVAE(K=2, H=2, W=3, D=1, C=2)
    xu = torch.zeros(4, 2, 2, 3)
    vu = _distinct_masks(4, 2, 3, seed=1)
    du = torch.tensor([10.0, 100.0, 200.0, 300.0])
    pool = torch.randint(0, 2, (16, 2, 3))
    model, guide, calls = _recording(m)
    SymmetricEquilibrium(SLEEP_ONLY, sleep_masks=False).differentiable_loss(model, guide, unlabelled=(xu, vu, du),
                                                                            pool=pool)
    (seen,) = calls["guide"]
    assert seen["valid"].shape == (16, 2, 3) and bool(seen["valid"].all())
    assert torch.equal(seen["doy"], calls["model"][-1]["doy"])
    assert set(seen["doy"].tolist()) <= set(du.tolist()) and len(set(seen["doy"].tolist())) > 1
    # a batch without dates: the model and guide are called without the keyword (models without covariates)
    calls["model"].clear(), calls["guide"].clear()
    SymmetricEquilibrium(SLEEP_ONLY, sleep_masks=True).differentiable_loss(model, guide, unlabelled=(xu, vu), pool=pool)
    assert all("doy" not in c for c in calls["model"] + calls["guide"])
    assert all(any(torch.equal(v, r) for r in vu) for v in calls["guide"][0]["valid"])
