"""The exact posterior of ``s`` (``exact_s``) against brute-force enumeration of every class map of a tiny image:
the class log-likelihoods against the model's own trace, the posterior marginals, ``log p(x)``, the Fisher
identity behind the decoder's EM gradient, the enumerated ELBO and the encoder's cross-entropy; then what each
player of each objective receives, and the errors that name a hierarchy where the posterior is not exact."""

from __future__ import annotations

import itertools

import pyro.poutine as poutine
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.hierarchy import HVAE, HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec
from hvaeseg.objectives import SemiSupervisedELBO, SymmetricEquilibrium
from hvaeseg.objectives.exact import enumerated_elbo, marginal_log_prob, posterior_cross_entropy

K, BANDS, H, W = 3, 3, 2, 2


def exact_spec(temporal: bool = False, cov_rank: int = 0, scale: str = "band", interp: bool = False,
               **network) -> HierarchySpec:
    parents = ("s", "doy", "interp") if interp else ("s", "doy")
    return HierarchySpec(
        num_classes=K, code_bits=2, layers=(), s_prior="categorical", temporal=temporal,
        image=ImageLayerSpec(BANDS, parents, cov_rank=cov_rank, scale=scale, init_scale=0.5),
        network=NetworkSpec((4,), (1,), 4, 1, **{"decoder_interactions": True, "decoder_kernel": 1, **network}),
    )


def tiny(temporal=False, cov_rank=0, scale="band", interp=False, seed=0):
    torch.manual_seed(seed)
    hvae = HVAE(exact_spec(temporal, cov_rank, scale, interp)).eval()  # eval: no interp dropout
    with torch.no_grad():  # away from the zero-initialised heads, so that the classes differ
        for p in hvae.decoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
    lead = (1, 2) if temporal else (1,)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, BANDS, H, W, generator=g)
    valid = torch.ones(*lead, H, W, dtype=torch.bool)
    valid.view(-1)[1] = False  # one pixel (of one date) hidden
    doy = 365 * torch.rand(*lead, generator=g)
    return hvae, x, valid, doy


def all_maps() -> torch.Tensor:
    """Every class map of an H x W image: ``(K^(H W), H, W)``."""
    return torch.tensor(list(itertools.product(range(K), repeat=H * W))).view(-1, H, W)


def joint(hvae, x, valid, doy, s) -> torch.Tensor:
    """``log p(s) + log p(x | s)`` from the model's own trace (``l`` is no parent of the image)."""
    trace = poutine.trace(hvae.model).get_trace(x, s[None], valid, doy=doy)
    trace.compute_log_prob()
    return trace.nodes["s"]["log_prob_sum"] + trace.nodes["x"]["log_prob_sum"]


CASES = [dict(), dict(cov_rank=2), dict(scale="pixel"), dict(temporal=True), dict(temporal=True, interp=True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_the_exact_posterior_and_likelihood_match_enumeration(case):
    hvae, x, valid, doy = tiny(**case)
    with torch.no_grad():
        a = hvae.s_posterior_logits(x, valid, doy=doy)[0]  # (H, W, K)
        maps = all_maps()
        log_joints = torch.stack([joint(hvae, x, valid, doy, s) for s in maps])
    assert torch.allclose(marginal_log_prob(a[None]), torch.logsumexp(log_joints, 0), rtol=1e-5)
    post = torch.softmax(log_joints, 0)
    for i, j, k in itertools.product(range(H), range(W), range(K)):
        brute = post[maps[:, i, j] == k].sum()
        assert torch.allclose(torch.softmax(a[i, j], -1)[k], brute, atol=1e-5)
    # a pixel hidden on every date keeps the prior
    if not case.get("temporal"):
        assert torch.allclose(torch.softmax(a.view(-1, K)[1], -1), hvae.s_prior_logits().exp(), atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_the_class_likelihoods_of_a_batch_are_those_of_its_images(case):
    # the classes are stacked along the batch in one pass of the image net: image b's rows must stay image b's
    hvae, _, _, _ = tiny(**case)
    g = torch.Generator().manual_seed(1)
    lead = (3, 2) if case.get("temporal") else (3,)
    x = torch.randn(*lead, BANDS, H, W, generator=g)
    valid = torch.rand(*lead, H, W, generator=g) < 0.7
    doy = 365 * torch.rand(*lead, generator=g)
    with torch.no_grad():
        batch = hvae.class_log_likelihood(x, valid, doy=doy)
        alone = torch.cat([hvae.class_log_likelihood(x[b:b + 1], valid[b:b + 1], doy=doy[b:b + 1]) for b in range(3)])
    assert batch.shape == (3, H, W, K)
    assert torch.allclose(batch, alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])  # the images differ, so a mix-up of rows would show


def test_labelled_pixels_score_their_class_in_the_marginal():
    hvae, x, valid, doy = tiny()
    s = torch.tensor([[[2, -1], [0, -1]]])
    with torch.no_grad():
        a = hvae.s_posterior_logits(x, valid, doy=doy)
        maps = all_maps()
        keep = (maps[:, 0, 0] == 2) & (maps[:, 1, 0] == 0)
        brute = torch.logsumexp(torch.stack([joint(hvae, x, valid, doy, m) for m in maps[keep]]), 0)
    assert torch.allclose(marginal_log_prob(a, s), brute, rtol=1e-5)


def test_the_decoder_gradient_of_the_marginal_is_the_posterior_mean_of_the_joints_gradient():
    """Fisher's identity, the EM gradient: d log p(x) = sum_s p(s|x) d log p(x, s), with every map enumerated."""
    hvae, x, valid, doy = tiny(cov_rank=1)
    params = [p for p in hvae.decoder.parameters() if p.requires_grad]
    exact = torch.autograd.grad(marginal_log_prob(hvae.s_posterior_logits(x, valid, doy=doy)).sum(), params,
                                allow_unused=True)
    maps = all_maps()
    with torch.no_grad():
        weights = torch.softmax(torch.stack([joint(hvae, x, valid, doy, s) for s in maps]), 0)
    brute = [torch.zeros_like(p) for p in params]
    for w, s in zip(weights, maps):
        grads = torch.autograd.grad(joint(hvae, x, valid, doy, s), params, allow_unused=True)
        brute = [b + w * (torch.zeros_like(b) if g is None else g) for b, g in zip(brute, grads)]
    for e, b in zip(exact, brute):
        assert torch.allclose(torch.zeros_like(b) if e is None else e, b, atol=1e-4, rtol=1e-4)


def test_the_enumerated_elbo_is_the_elbo_and_is_tight_at_the_posterior():
    hvae, x, valid, doy = tiny()
    s = torch.tensor([[[1, -1], [-1, -1]]])
    q_logits = torch.randn(1, H, W, K, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = hvae.s_posterior_logits(x, valid, doy=doy)
        log_q = torch.log_softmax(q_logits[0], -1)
        brute = torch.zeros(())
        for m in all_maps():
            if m[0, 0] != 1:
                continue
            lq = sum(log_q[i, j, m[i, j]] for i, j in itertools.product(range(H), range(W)) if (i, j) != (0, 0))
            brute = brute + lq.exp() * (joint(hvae, x, valid, doy, m) - lq)
        assert torch.allclose(enumerated_elbo(a, q_logits, s), brute, rtol=1e-5)
        assert enumerated_elbo(a, q_logits, s) < marginal_log_prob(a, s)
        assert torch.allclose(enumerated_elbo(a, a, s), marginal_log_prob(a, s), rtol=1e-6)


def test_the_posterior_cross_entropy_by_hand_and_without_gradient_to_the_posterior():
    a = torch.randn(2, H, W, K, requires_grad=True)
    q = torch.randn(2, H, W, K, requires_grad=True)
    s = torch.tensor([[[0, -1], [-1, -1]], [[-1, -1], [-1, 2]]])
    out = posterior_cross_entropy(a, q, s)
    p, lq = torch.softmax(a, -1), torch.log_softmax(q, -1)
    for b in range(2):
        want = sum((p[b, i, j] * lq[b, i, j]).sum() for i, j in itertools.product(range(H), range(W)) if s[b, i, j] < 0)
        assert torch.allclose(out[b], want)
    out.sum().backward()
    assert a.grad is None and q.grad is not None


def _batches(temporal=False):
    hvae, x, valid, doy = tiny(temporal=temporal)
    hvae.train()
    s = torch.tensor([[[0, -1], [2, 1]]])
    return hvae, (x, s, valid, doy), (x.flip(-1), valid.flip(-1), doy)


@pytest.mark.parametrize("temporal", [False, True])
def test_symmetric_exact_terms_and_players(temporal):
    hvae, lab, unl = _batches(temporal)
    decoder, encoder = hvae.parameter_groups()
    obj = SymmetricEquilibrium(exact_s=True)
    terms = obj.terms(hvae.model, hvae.guide, labelled=lab, unlabelled=unl, pool=lab[1].clamp(min=0))
    with torch.no_grad():
        want_lab = marginal_log_prob(hvae.s_posterior_logits(lab[0], lab[2], doy=lab[3]), lab[1])
        want_unl = marginal_log_prob(hvae.s_posterior_logits(unl[0], unl[1], doy=unl[2]))
    assert torch.allclose(terms["labelled_p"], want_lab.mean())
    assert torch.allclose(terms["unlabelled_p"], want_unl.mean())
    assert set(terms) >= {"posterior_q", "supervised_q", "sleep_q"}
    dec_grads = torch.autograd.grad(terms["decoder_loss"], encoder, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in dec_grads)  # the decoder's loss does not reach the encoder
    post = torch.autograd.grad(terms["posterior_q"], decoder, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in post)  # the posterior is a fixed target
    assert any(g is not None and g.any() for g in torch.autograd.grad(terms["posterior_q"], encoder, allow_unused=True))


def test_elbo_exact_is_the_enumerated_elbo_with_the_codes_kl():
    hvae, lab, unl = _batches()
    terms = SemiSupervisedELBO(exact_s=True).terms(hvae.model, hvae.guide, labelled=lab, unlabelled=unl,
                                                   differentiable=True)
    x, valid, doy = unl
    guide = poutine.trace(hvae.guide).get_trace(x, valid=valid, doy=doy)
    q_l = torch.sigmoid(guide.nodes["l"]["fn"].base_dist.logits)
    kl_l = (q_l * torch.log(2 * q_l) + (1 - q_l) * torch.log(2 * (1 - q_l))).sum()
    q_logits = guide.nodes["s"]["fn"].base_dist.logits
    want = enumerated_elbo(hvae.s_posterior_logits(x, valid, doy=doy), q_logits) - kl_l
    assert torch.allclose(terms["unlabelled_elbo"], want.mean(), rtol=1e-5)
    grads = torch.autograd.grad(terms["unlabelled_elbo"], list(hvae.parameters()), allow_unused=True)
    moved = {name for (name, _), g in zip(hvae.named_parameters(), grads) if g is not None and g.any()}
    assert any(n.startswith("encoder.") for n in moved) and any(n.startswith("decoder.") for n in moved)


def test_the_unlabelled_q_share_scales_only_the_gradient_that_reaches_q_s():
    """``unlabelled_q_share``: the unlabelled term's value and the decoder's gradient are unchanged, the encoder's
    gradient is affine in the share, and at share 0 it is the codes' KL term's alone (q(s|x) learns nothing)."""
    hvae, _, unl = _batches()
    decoder, encoder = hvae.parameter_groups()

    def run(share):
        term = SemiSupervisedELBO(exact_s=True, unlabelled_q_share=share).terms(
            hvae.model, hvae.guide, unlabelled=unl, differentiable=True)["unlabelled_elbo"]
        grads = torch.autograd.grad(term, decoder + encoder, allow_unused=True)
        flat = [torch.zeros_like(p) if g is None else g for p, g in zip(decoder + encoder, grads)]
        return term.detach(), flat[:len(decoder)], flat[len(decoder):]

    (v1, d1, e1), (v0, d0, e0), (vq, dq, eq) = run(1.0), run(0.0), run(0.25)
    assert torch.equal(v1, v0) and torch.allclose(v1, vq)
    assert all(torch.allclose(a, b) for a, b in zip(d1, d0)) and all(torch.allclose(a, b) for a, b in zip(d1, dq))
    assert all(torch.allclose(q, z + 0.25 * (o - z), atol=1e-6) for q, z, o in zip(eq, e0, e1))
    assert any(not torch.allclose(o, z) for o, z in zip(e1, e0))
    x, valid, doy = unl
    q_l = torch.sigmoid(poutine.trace(hvae.guide).get_trace(x, valid=valid, doy=doy).nodes["l"]["fn"].base_dist.logits)
    kl_l = (q_l * torch.log(2 * q_l) + (1 - q_l) * torch.log(2 * (1 - q_l))).flatten(1).sum(-1)
    want = torch.autograd.grad(-kl_l.mean(), encoder, allow_unused=True)
    assert all(torch.allclose(z, torch.zeros_like(z) if w is None else w, atol=1e-6) for z, w in zip(e0, want))
    with pytest.raises(ValueError, match=r"unlabelled_q_share in \[0, 1\], got 1.5"):
        SemiSupervisedELBO(exact_s=True, unlabelled_q_share=1.5)
    with pytest.raises(ValueError, match="needs exact_s=True"):
        SemiSupervisedELBO(unlabelled_q_share=0.5)


@given(st.floats(0.0, 20.0), st.floats(0.0, 20.0))
@settings(max_examples=15, deadline=None)
def test_the_labelled_weight_weighs_the_labelled_elbo_alone(weight, alpha):
    """``labelled_weight`` w: the loss is -(w J_lab + alpha log q(s_lab|x) + J_unl), each term as at weight 1 (the
    enumerated ELBO is exact, so the values are deterministic), and so is its gradient."""
    hvae, lab, unl = _batches()
    base = SemiSupervisedELBO(alpha=alpha, exact_s=True).terms(hvae.model, hvae.guide, labelled=lab, unlabelled=unl)
    obj = SemiSupervisedELBO(alpha=alpha, exact_s=True, labelled_weight=weight)
    got = obj.terms(hvae.model, hvae.guide, labelled=lab, unlabelled=unl, differentiable=True)
    want = -(weight * base["labelled_elbo"] + alpha * base["supervised_q"] + base["unlabelled_elbo"])
    torch.testing.assert_close(got["loss"].detach(), want, rtol=1e-5, atol=1e-3)
    params = list(hvae.parameters())
    g_lab = torch.autograd.grad(got["labelled_elbo"], params, allow_unused=True, retain_graph=True)
    g_sup = torch.autograd.grad(got["supervised_q"], params, allow_unused=True, retain_graph=True)
    g_unl = torch.autograd.grad(got["unlabelled_elbo"], params, allow_unused=True, retain_graph=True)
    g_loss = torch.autograd.grad(got["loss"], params, allow_unused=True)
    zero = torch.zeros(())
    for gl, gs, gu, g in zip(g_lab, g_sup, g_unl, g_loss):
        combined = -(weight * (zero if gl is None else gl) + alpha * (zero if gs is None else gs)
                     + (zero if gu is None else gu))
        torch.testing.assert_close(zero.expand_as(combined) if g is None else g, combined, rtol=1e-4, atol=1e-3)
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="labelled_weight as a finite number >= 0"):
            SemiSupervisedELBO(exact_s=True, labelled_weight=bad)


@pytest.mark.parametrize(("spec", "problem"), [
    (lambda: exact_spec(decoder_kernel=3), "decoder convolutions are 3x3.*decoder_kernel: 1"),
    (lambda: HierarchySpec(K, 2, (LatentLayerSpec("z", parents=("s",)),), ImageLayerSpec(BANDS, ("s", "z")),
                           s_prior="categorical", network=NetworkSpec(decoder_kernel=1)), "latent layers \\(z\\)"),
    (lambda: HierarchySpec(K, 2, (), ImageLayerSpec(BANDS, ("s", "l")), s_prior="categorical",
                           network=NetworkSpec(decoder_kernel=1)), "image's parents are \\['s', 'l'\\]"),
    (lambda: HierarchySpec(K, 2, (), ImageLayerSpec(BANDS, ("s",)), network=NetworkSpec(decoder_kernel=1)),
     "s prior is 'empirical'.*s_prior: categorical"),
])
def test_hierarchies_without_an_exact_posterior_say_why(spec, problem):
    spec = spec()
    assert not spec.exact_s
    hvae = HVAE(spec)
    with pytest.raises(ValueError, match="the posterior of s is not exact in this hierarchy: .*" + problem):
        hvae.class_log_likelihood(torch.zeros(1, BANDS, 4, 4), doy=torch.zeros(1) if spec.needs_doy else None)
    assert exact_spec().exact_s


def test_the_objectives_refuse_a_model_that_is_not_an_hvae_and_holdout_with_exact_s():
    _, lab, unl = _batches()
    with pytest.raises(ValueError, match="needs the model of an hvaeseg.HVAE"):
        SymmetricEquilibrium(exact_s=True).terms(lambda **_: None, lambda *a, **k: None, unlabelled=unl)
    with pytest.raises(ValueError, match="wake_holdout=0 with exact_s"):
        SymmetricEquilibrium(exact_s=True, wake_holdout=0.5)
    with pytest.raises(ValueError, match="exact_s as true or false"):
        SemiSupervisedELBO(exact_s="yes")


def test_posterior_q_takes_its_target_from_the_teacher():
    """With a teacher (``SymmetricEquilibrium.teacher``, e.g. a Polyak average of the decoder) the encoder's
    posterior_q fits the teacher's exact posterior, not the live decoder's; the decoder's terms stay the model's."""
    from hvaeseg.objectives._common import s_logits
    from hvaeseg.traces import site_distribution

    hvae, lab, unl = _batches()
    teacher, _, _, _ = tiny(seed=5)  # another decoder
    obj = SymmetricEquilibrium(exact_s=True)
    plain = obj.terms(hvae.model, hvae.guide, labelled=lab, unlabelled=unl, pool=lab[1].clamp(min=0))
    obj.teacher = lambda x, valid, doy: teacher.s_posterior_logits(x, valid, doy=doy)
    taught = obj.terms(hvae.model, hvae.guide, labelled=lab, unlabelled=unl, pool=lab[1].clamp(min=0))
    x, valid, doy = unl
    q = s_logits(site_distribution(hvae.guide, "s", x, s=None, valid=valid, doy=doy), (1, H, W))
    with torch.no_grad():
        want = posterior_cross_entropy(teacher.s_posterior_logits(x, valid, doy=doy), q).mean()
        live = posterior_cross_entropy(hvae.s_posterior_logits(x, valid, doy=doy), q).mean()
    torch.testing.assert_close(taught["posterior_q"], want)
    torch.testing.assert_close(plain["posterior_q"], live)
    assert not torch.allclose(want, live)
    for k in ("labelled_p", "unlabelled_p"):
        torch.testing.assert_close(taught[k], plain[k])
