"""The HVAE training methods: HVAEConfig validation, the two players of symmetric learning (each steps its own
parameters with the gradient of its own loss only), diagnostics, the EMA of the encoder's U-Net."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hvaeseg.hierarchy import HierarchySpec, ImageLayerSpec, NetworkSpec
from hvaeseg.methods.base import StepBatch
from hvaeseg.methods.hvae import ELBOMethod, HVAEConfig, SymmetricMethod
from hvaeseg.methods.registry import method_config
from hvaeseg.objectives import (
    LabelPool,
    SemiSupervisedELBO,
    SymmetricEquilibrium,
    SymmetricStepper,
    SymmetricWeights,
)
from tests.methods.standin import random_batch

C, K, P = 3, 3, 8  # bands, classes, patch side


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_spec(day_of_year: bool = True, s_prior: str = "categorical", init_scale: float = 0.25) -> HierarchySpec:
    return HierarchySpec.default(K, C, 2, channels=2, s_prior=s_prior, encoder_widths=(4, 4, 4), decoder_width=4,
                                 patch_size=P, day_of_year=day_of_year, init_scale=init_scale)


def build(cls=SymmetricMethod, spec: HierarchySpec | None = None, **options):
    options.setdefault("augment", False)
    config = HVAEConfig(spec=(spec or tiny_spec()).to_dict(), **options)
    return cls.build(C, K, config=config, patch_size=P)


def step_batch(seed: int = 0) -> StepBatch:
    lab = random_batch(B=2, C=C, H=P, W=P, K=K, seed=seed + 1)
    unl = random_batch(B=2, C=C, H=P, W=P, K=K, seed=seed + 2)
    unl = unl._replace(labels=torch.full_like(unl.labels, -1))
    pool = LabelPool(lab.labels, seed=seed).sample(4)
    return StepBatch(lab, unl, pool)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(("field", "value"), [
    ("lr", -1e-3), ("lr", 0), ("global_lr", -1.0), ("lr", True),
    ("estimator", "nonsense"),
    ("temperature", -3), ("temperature", 0),
    ("init_scale", 0),
    ("ema_decay", 1), ("ema_decay", -0.1),
    ("num_particles", 0), ("num_particles", 1.5), ("num_particles", True),
    ("clip_norm", 0), ("clip_norm", -5.0),
    ("weight_decay", -1),
    ("augment", "yes"), ("sleep_masks", 1), ("day_of_year", None),
    ("s_prior", "uniform"),
    ("alpha", -1.0), ("alpha", float("nan")),
    ("image_cov_rank", -1), ("image_cov_rank", 1.5), ("decoder_interactions", "yes"),
    ("exact_s", 1), ("decoder_lr", 0), ("decoder_lr", True), ("hierarchy", "deep"),
    ("teacher_decay", 1.0), ("teacher_decay", -0.5), ("teacher_decay", True),
    ("posterior_warmup", -1), ("posterior_warmup", 2.5), ("posterior_warmup", True),
    ("decoder_betas", []), ("decoder_betas", [-0.5]), ("decoder_betas", [0.0, 0.0]), ("decoder_betas", 0.5),
    ("decoder_betas", [float("inf")]), ("decoder_betas", [True]), ("decoder_betas", [[0.5]]),
])
def test_config_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: expected") as err:
        HVAEConfig(**{field: value})
    assert repr(value) in str(err.value)


@pytest.mark.parametrize("make", [
    lambda: HVAEConfig(estimator="nonsense", temperature=-3),
    lambda: method_config("elbo", {"estimator": "nonsense", "temperature": -3}),  # as a run's --options
])
def test_a_nonsense_estimator_with_a_negative_temperature_is_refused(make):
    with pytest.raises(ValueError, match=r"^(temperature|estimator): expected") as err:
        make()
    assert "-3" in str(err.value) or "'nonsense'" in str(err.value)


def test_config_boundaries_are_accepted():
    config = HVAEConfig(ema_decay=0, clip_norm=None, weight_decay=0, num_particles=1, alpha=0,
                        weights={"sleep_q": 0, "labelled_p": 2})
    assert config.weights == SymmetricWeights(sleep_q=0.0, labelled_p=2.0)
    assert HVAEConfig(estimator="score_function", clip_norm=1e-3).clip_norm == 1e-3


def test_correlated_bands_and_interactions_reach_the_default_hierarchy():
    method = SymmetricMethod.build(C, K, config=HVAEConfig(image_cov_rank=2, decoder_interactions=True), patch_size=P)
    spec = method.hvae.spec
    assert spec.image.cov_rank == 2 and spec.network.decoder_interactions
    assert method.hvae.decoder.nets["x"].head.out_channels == C * (1 + 2)
    with pytest.raises(ValueError, match=rf"image: cov_rank must be an integer in \[0, bands = {C}\)"):
        SymmetricMethod.build(C, K, config=HVAEConfig(image_cov_rank=C), patch_size=P)


@pytest.mark.parametrize("cls", [SymmetricMethod, ELBOMethod])
def test_both_objectives_train_the_band_factors_of_a_correlated_image(cls):
    """One step of each objective with a rank-2 band covariance: finite losses, and the decoder's factor
    channels (the x head's last C * 2 outputs) move; the sleep images of symmetric learning are drawn from it."""
    torch.manual_seed(0)
    spec = HierarchySpec.default(K, C, 2, channels=2, s_prior="categorical", encoder_widths=(4, 4, 4),
                                 decoder_width=4, patch_size=P, day_of_year=True, image_cov_rank=2,
                                 decoder_interactions=True)
    method = build(cls, spec)
    head = method.hvae.decoder.nets["x"].head
    before = head.weight[C:].detach().clone()
    losses = method.losses(step_batch(), 0)
    assert all(torch.isfinite(v).all() for v in losses.values())
    method.update(losses)
    assert not torch.equal(head.weight[C:], before)


def exact_spec() -> HierarchySpec:
    """A pixel mixture (s, doy -> x, 1x1 decoder): the posterior of s is exact."""
    return HierarchySpec(K, 2, (), ImageLayerSpec(C, ("s", "doy"), cov_rank=1), s_prior="categorical",
                         network=NetworkSpec((4, 4, 4), (1, 1, 1), 4, 1, decoder_interactions=True, decoder_kernel=1),
                         patch_size=P)


@pytest.mark.parametrize("cls", [SymmetricMethod, ELBOMethod])
def test_exact_s_trains_a_pixel_mixture_and_names_a_hierarchy_without_it(cls):
    """One step with ``exact_s``: the exact terms are the logged ones (symmetric: ``posterior_q``, the sleep term
    off), both players move; the default hierarchy (latent layers) is refused with the reason and the fix."""
    torch.manual_seed(0)
    options = {"weights": {"sleep_q": 0.0}} if cls is SymmetricMethod else {}
    method = build(cls, exact_spec(), exact_s=True, decoder_lr=0.01, **options)
    decoder, encoder = method.hvae.parameter_groups()
    before = snapshot(decoder), snapshot(encoder)
    losses = method.losses(step_batch(), 0)
    assert all(torch.isfinite(v).all() for v in losses.values())
    method.update(losses)
    for group, old in zip((decoder, encoder), before):
        assert any(not torch.equal(p, o) for p, o in zip(group, old))
    terms = method.diagnostics(step_batch(1))["terms"]
    assert ("posterior_q" in terms and "sleep_q" not in terms) if cls is SymmetricMethod else "unlabelled_elbo" in terms
    lrs = sorted({g["lr"] for opt in method.optimizers().values() for g in opt.param_groups if g["params"]})
    assert 0.01 in lrs and method.config.lr in lrs
    built = cls.build(C, K, config=HVAEConfig(hierarchy="pixel_mixture", image_cov_rank=1, exact_s=True), patch_size=P)
    spec = built.hvae.spec
    assert spec.exact_s and spec.image.cov_rank == 1 and spec.network.decoder_kernel == 1 and not spec.layers
    with pytest.raises(ValueError, match="exact_s: the posterior of s is not exact in this hierarchy: it has latent "
                                         "layers .*pixel_mixture.yaml"):
        cls.build(C, K, config=HVAEConfig(exact_s=True), patch_size=P)


def test_the_teacher_is_a_polyak_average_of_the_decoder_and_teaches_posterior_q():
    """``teacher_decay``: a copy of the HVAE whose decoder follows the live one by a moving average (its encoder
    never moves) and whose exact posterior is posterior_q's target; it needs exact_s."""
    from hvaeseg.nets.ema import ema_decay_at

    torch.manual_seed(0)
    method = build(SymmetricMethod, exact_spec(), exact_s=True, teacher_decay=0.9, weights={"sleep_q": 0.0})
    teacher = method.teacher
    assert teacher is not None and "teacher" in method.modules()
    assert method.objective.teacher is not None and method.objective_at(0).teacher is not None
    assert not any(p.requires_grad for p in teacher.parameters())
    old_dec, old_enc = snapshot(teacher.decoder.parameters()), snapshot(teacher.encoder.parameters())
    for step in range(2):
        method.update(method.losses(step_batch(step), step))
        method.after_update(step)
        decay = ema_decay_at(step, 0.9)
        for avg, old, live in zip(teacher.decoder.parameters(), old_dec, method.hvae.decoder.parameters()):
            torch.testing.assert_close(avg, decay * old + (1 - decay) * live)
        old_dec = snapshot(teacher.decoder.parameters())
    assert all(torch.equal(p, o) for p, o in zip(teacher.encoder.parameters(), old_enc))
    assert any(not torch.equal(a, b) for a, b in zip(teacher.decoder.parameters(), method.hvae.decoder.parameters()))
    with pytest.raises(ValueError, match="teacher_decay averages the decoder that teaches posterior_q"):
        HVAEConfig(teacher_decay=0.99)
    assert build(SymmetricMethod, exact_spec(), exact_s=True).teacher is None


def test_the_posterior_warmup_ramps_posterior_q_and_leaves_the_encoder_the_labels_at_first():
    """``posterior_warmup``: posterior_q's weight is ``step / warmup`` of its own; at step 0 the term is not computed,
    so the encoder's loss is the supervised term alone; the decoder's terms keep their weights; it needs exact_s."""
    torch.manual_seed(0)
    method = build(SymmetricMethod, exact_spec(), exact_s=True, posterior_warmup=4,
                   weights={"sleep_q": 0.0, "posterior_q": 3.0})
    batch = step_batch()
    losses = method.losses(batch, 0)
    w = method.stepper.objective.weights
    assert (w.posterior_q, w.labelled_p, w.unlabelled_p, w.supervised_q) == (0.0, 1.0, 1.0, 1.0)
    supervised = SymmetricEquilibrium(SymmetricWeights(0.0, 0.0, 1.0, 0.0, 0.0), exact_s=True).terms(
        method.hvae.model, method.hvae.guide, labelled=batch.labelled)["supervised_q"]
    assert float(losses["encoder"].detach()) == pytest.approx(-float(supervised.detach()), rel=1e-5)
    method.losses(batch, 3)
    assert method.stepper.objective.weights.posterior_q == pytest.approx(2.25)
    assert method.objective.weights.posterior_q == 3.0  # the full-weight objective is kept
    method.losses(batch, 4)
    assert method.stepper.objective is method.objective
    with pytest.raises(ValueError, match="posterior_warmup ramps what the encoder learns from the exact posterior"):
        HVAEConfig(posterior_warmup=100)


def test_the_posterior_warmup_ramps_the_elbos_share_of_q_s():
    """The ELBO with ``posterior_warmup``: the unlabelled term's share of q(s|x)'s gradient is ``step / warmup``;
    the full objective is kept and is used from the warm-up's end."""
    method = build(ELBOMethod, exact_spec(), exact_s=True, posterior_warmup=4)
    assert method.objective_at(0).unlabelled_q_share == 0.0
    assert method.objective_at(1).unlabelled_q_share == 0.25 and method.objective.unlabelled_q_share == 1.0
    assert method.objective_at(4) is method.objective
    method.update(method.losses(step_batch(), 0))  # a step at share 0 trains


def test_the_elbos_labelled_weight_reaches_its_objective_and_its_logged_terms():
    """``labelled_elbo_weight`` is the ELBO's ``labelled_weight`` (the value is checked term by term in
    ``tests/objectives/test_exact.py``) and the weight its diagnostics give ``labelled_elbo``."""
    method = build(ELBOMethod, exact_spec(), exact_s=True, labelled_elbo_weight=3.0)
    assert method.objective.labelled_weight == 3.0
    terms = method._terms(step_batch())
    assert terms["labelled_elbo"][1] == 3.0 and terms["unlabelled_elbo"][1] == 1.0
    method.update(method.losses(step_batch(), 0))
    with pytest.raises(ValueError, match="labelled_elbo_weight: expected a finite number >= 0"):
        HVAEConfig(labelled_elbo_weight=-1)


@pytest.mark.parametrize("cls", [SymmetricMethod, ELBOMethod])
def test_decoder_betas_weigh_the_exact_class_likelihood_into_the_prediction(cls):
    """Each candidate is ``q(s|x) p(x|s)^beta`` renormalised over the classes (``q`` the EMA encoder's, ``p`` the
    decoder's exact class likelihood), beta 0 is the encoder alone; ``use_prediction`` makes one of them
    ``predict_proba``'s, the state keeps it, and beta needs exact_s."""
    torch.manual_seed(0)
    method = build(cls, exact_spec(), exact_s=True, decoder_betas=[0, 0.5, 1.0])
    assert method.prediction_keys() == (0.0, 0.5, 1.0) and method.decoder_beta == 0.0
    b = step_batch().unlabelled
    method.train(False)
    with torch.no_grad():
        cands = method.predict_candidates(b.x, b.valid, b.doy)
        q = method.predict_proba(b.x, b.valid, b.doy)
        lik = method.hvae.class_log_likelihood(b.x, b.valid, doy=b.doy).movedim(-1, 1).exp()  # (B, K, H, W)
    assert list(cands) == [0.0, 0.5, 1.0]
    torch.testing.assert_close(cands[0.0], q)
    for beta in (0.5, 1.0):
        joint = q.double() * lik.double() ** beta
        torch.testing.assert_close(cands[beta].double(), joint / joint.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)
    assert not torch.equal(cands[1.0].argmax(1), q.argmax(1))  # the decoder's evidence moves some pixels
    method.use_prediction(1.0)
    with torch.no_grad():
        torch.testing.assert_close(method.predict_proba(b.x, b.valid, b.doy), cands[1.0])
    again = build(cls, exact_spec(), exact_s=True, decoder_betas=[0, 0.5, 1.0])
    again.load_state_dict(method.state_dict())
    assert again.decoder_beta == 1.0
    with pytest.raises(ValueError, match=r"decoder beta 2.0 is not among decoder_betas \[0.0, 0.5, 1.0\]"):
        method.use_prediction(2.0)
    assert build(cls, exact_spec(), exact_s=True).prediction_keys() == ()  # one rule: validation as before
    with pytest.raises(ValueError, match="decoder_betas weighs the decoder's exact class likelihood"):
        HVAEConfig(decoder_betas=[0, 1])


def test_decoder_betas_on_stacks_sum_the_dates_evidence():
    """On a temporal stack the decoder's evidence is the class likelihood summed over the dates (``s`` is shared),
    so the beta-1 candidate is ``q`` times the product of the dates' likelihoods, renormalised."""
    torch.manual_seed(0)
    config = HVAEConfig(spec=dataclasses.replace(exact_spec(), temporal=True).to_dict(), augment=False,
                        exact_s=True, decoder_betas=[0, 1])
    method = SymmetricMethod.build(C, K, temporal=True, config=config, patch_size=P)
    method.train(False)
    x, valid, doy = torch.randn(2, 3, C, P, P), torch.ones(2, 3, P, P, dtype=torch.bool), 365 * torch.rand(2, 3)
    valid[0, 1, :2] = False  # a date hidden on two rows: it adds no evidence there
    with torch.no_grad():
        cands = method.predict_candidates(x, valid, doy)
        per_date = [method.hvae.class_log_likelihood(x[:, t:t + 1], valid[:, t:t + 1], doy=doy[:, t:t + 1])
                    for t in range(3)]
    joint = cands[0.0].double() * torch.stack(per_date).sum(0).movedim(-1, 1).double().exp()
    assert cands[1.0].shape == (2, K, P, P)
    torch.testing.assert_close(cands[1.0].double(), joint / joint.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)


def test_config_spec_must_match_the_data():
    config = HVAEConfig(spec=tiny_spec().to_dict())
    with pytest.raises(ValueError, match="the data has 4 classes"):
        SymmetricMethod.build(C, 4, config=config, patch_size=P)


# ------------------------------------------------------------------------------------------ the two players
def test_parameter_groups_partition_the_hvae_and_each_optimizer_holds_its_group():
    method = build(global_lr=0.05, lr=1e-3, weight_decay=0.03)
    hvae = method.hvae
    dec, enc = method.decoder_params, method.encoder_params
    ids_dec, ids_enc = {id(p) for p in dec}, {id(p) for p in enc}
    assert len(ids_dec) == len(dec) and len(ids_enc) == len(enc)
    assert not ids_dec & ids_enc
    assert ids_dec | ids_enc == {id(p) for p in hvae.parameters()}
    # the split follows the networks: the guide's U-Net and heads are the encoder, the decoder nets theta
    assert {id(p) for p in hvae.encoder.parameters()} == ids_enc
    assert {id(p) for p in hvae.decoder.parameters()} == ids_dec
    for name, ids in (("decoder", ids_dec), ("encoder", ids_enc)):
        groups = method.optimizers()[name].param_groups
        held = [id(p) for g in groups for p in g["params"]]
        assert len(held) == len(set(held)) and set(held) == ids, name
        decay, plain, glob = groups
        assert decay["weight_decay"] == 0.03 and all(p.dim() > 1 for p in decay["params"])
        assert plain["weight_decay"] == 0 and all(p.dim() <= 1 for p in plain["params"])
        assert glob["lr"] == 0.05 and decay["lr"] == plain["lr"] == 1e-3
    # the global parameters (image scale, class logits of the s prior) are the decoder's, at global_lr
    dec_glob = {id(p) for p in method.optimizers()["decoder"].param_groups[2]["params"]}
    assert dec_glob == {id(hvae.decoder.x_scale), id(hvae.decoder.s_logits)}
    assert method.optimizers()["encoder"].param_groups[2]["params"] == []


@pytest.mark.parametrize("frozen", ["decoder", "encoder"])
def test_each_player_step_leaves_the_other_players_parameters_unchanged(frozen, monkeypatch):
    """With one optimizer's step disabled, ``update`` must leave that player's parameters bit for bit as they
    were (nothing else, e.g. the other optimizer or a shared backward, may move them), while the other player
    moves."""
    method = build(weight_decay=0.1)
    moving = "encoder" if frozen == "decoder" else "decoder"
    params = {"decoder": method.decoder_params, "encoder": method.encoder_params}
    losses = method.losses(step_batch(), 0)
    before = {k: snapshot(v) for k, v in params.items()}
    monkeypatch.setattr(method.optimizers()[frozen], "step", lambda *a, **k: None)
    method.update(losses)
    for p, b in zip(params[frozen], before[frozen]):
        assert torch.equal(p.detach(), b)
    changed = [not torch.equal(p.detach(), b) for p, b in zip(params[moving], before[moving])]
    assert sum(changed) > len(changed) // 2, f"the {moving} barely moved: {sum(changed)} of {len(changed)}"


def test_each_player_receives_the_gradient_of_its_own_loss_alone(monkeypatch):
    method = build()
    losses = method.losses(step_batch(), 0)
    params = {"decoder": method.decoder_params, "encoder": method.encoder_params}
    loss = {"decoder": losses["decoder"], "encoder": losses["encoder"]}

    def grads(value, ps):
        g = torch.autograd.grad(value, ps, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if x is None else x for p, x in zip(ps, g)]

    expected = {k: grads(loss[k], params[k]) for k in params}
    # the test has power: the encoder loss reaches decoder parameters (the ladder guide reuses the decoder's
    # prior nets), so summing the losses, or stepping everything with both, would show
    leak = grads(loss["encoder"], params["decoder"])
    assert any(bool(g.abs().sum() > 0) for g in leak)

    seen: dict[str, list[torch.Tensor]] = {}
    for name, opt in method.optimizers().items():
        def record(*a, _name=name, **k):
            seen[_name] = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params[_name]]
        monkeypatch.setattr(opt, "step", record)
    method.update(losses)
    for name in params:
        for got, want in zip(seen[name], expected[name]):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert all(p.grad is None for p in params[name])  # zeroed after the step
    stats = method.step_statistics()
    assert set(stats) == {"grad_norm_decoder", "grad_norm_encoder"}
    for name in params:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in expected[name]]))
        assert stats[f"grad_norm_{name}"] == pytest.approx(float(norm), rel=1e-5)


def test_clipping_is_per_player_and_the_logged_norm_is_the_unclipped_one(monkeypatch):
    method = build(clip_norm=1.0)
    losses = method.losses(step_batch(), 0)
    params = {"decoder": method.decoder_params, "encoder": method.encoder_params}
    norms = {}
    for name, opt in method.optimizers().items():
        def record(*a, _name=name, **k):
            norms[_name] = float(torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params[_name] if p.grad is not None])))
        monkeypatch.setattr(opt, "step", record)
    method.update(losses)
    stats = method.step_statistics()
    for name in params:
        assert stats[f"grad_norm_{name}"] > 1.0  # the losses are sums over pixels: far above the threshold
        assert norms[name] == pytest.approx(1.0, rel=1e-4)


# --------------------------------------------------------------------------------------------- the stepper
def test_the_stepper_steps_as_the_loop_does_and_returns_the_two_losses_as_numbers():
    """``SymmetricStepper.step`` (the shape of ``pyro.infer.SVI.step``) is the method's ``losses`` then
    ``update``: the same parameters after the step, bit for bit, and the same two losses, as floats."""
    torch.manual_seed(0)
    loop = build(clip_norm=50.0)
    torch.manual_seed(0)
    alone = build(clip_norm=50.0)
    assert all(torch.equal(p, q) for p, q in zip(loop.hvae.parameters(), alone.hvae.parameters()))
    batch = step_batch()
    torch.manual_seed(1)
    losses = loop.losses(batch, 0)
    loop.update(losses)
    torch.manual_seed(1)
    dec, enc = alone.stepper.step(labelled=batch.labelled, unlabelled=batch.unlabelled, pool=batch.pool)
    assert type(dec) is float and type(enc) is float
    assert (dec, enc) == (float(losses["decoder"].detach()), float(losses["encoder"].detach()))
    moved = [not torch.equal(p, b) for p, b in zip(loop.hvae.parameters(), alone.hvae.parameters())]
    assert not any(moved)
    assert alone.step_statistics() == loop.step_statistics() and set(loop.step_statistics()) == {
        "grad_norm_decoder", "grad_norm_encoder"}
    assert alone.stepper.optimizers == alone.optimizers() and set(alone.optimizers()) == {"decoder", "encoder"}


def test_evaluate_loss_and_differentiable_loss_move_nothing():
    method = build()
    hvae, batch = method.hvae, step_batch()
    kw = dict(labelled=batch.labelled, unlabelled=batch.unlabelled, pool=batch.pool)
    before = snapshot(hvae.parameters())
    torch.manual_seed(2)
    numbers = method.stepper.evaluate_loss(**kw)
    torch.manual_seed(2)
    tensors = method.objective.differentiable_loss(hvae.model, hvae.guide, **kw)
    torch.manual_seed(2)
    plain = method.objective.loss(hvae.model, hvae.guide, **kw)  # Pyro's verb: the same values, as numbers
    assert all(t.requires_grad for t in tensors) and all(type(v) is float for v in numbers)
    assert numbers == pytest.approx(tuple(float(t.detach()) for t in tensors), rel=1e-6)
    assert all(type(v) is float for v in plain) and plain == numbers
    assert all(torch.equal(p, b) for p, b in zip(hvae.parameters(), before))
    assert all(p.grad is None for p in hvae.parameters())


def test_the_sleep_warmup_ramps_the_steppers_objective():
    method = build(sleep_warmup=4)
    batch = step_batch()
    method.losses(batch, 1)
    assert method.stepper.objective.weights.sleep_q == pytest.approx(0.25)
    assert method.objective.weights.sleep_q == 1.0  # the full-weight objective is kept
    method.losses(batch, 4)
    assert method.stepper.objective is method.objective


def test_supervised_steps_rest_the_decoder_and_train_the_encoder_on_the_labels_alone():
    method = build(supervised_steps=2)
    batch = step_batch()
    for step, full in ((0, True), (1, False), (2, False), (3, True)):
        dec, enc = snapshot(method.decoder_params), snapshot(method.encoder_params)
        losses = method.losses(batch, step)
        assert set(losses) == ({"decoder", "encoder"} if full else {"encoder"})
        if not full:  # the encoder's loss is exactly the supervised term: -E log q(s_lab | x)
            weights = method.stepper.objective.weights
            assert (weights.labelled_p, weights.unlabelled_p, weights.sleep_q) == (0.0, 0.0, 0.0)
            ref = SymmetricEquilibrium(SymmetricWeights(0.0, 0.0, 1.0, 0.0)).terms(
                method.hvae.model, method.hvae.guide, labelled=batch.labelled)
            assert float(losses["encoder"].detach()) == pytest.approx(-float(ref["supervised_q"].detach()), rel=1e-5)
        method.update(losses)
        dec_moved = any(not torch.equal(a, p) for a, p in zip(dec, method.decoder_params))
        enc_moved = any(not torch.equal(a, p) for a, p in zip(enc, method.encoder_params))
        assert dec_moved == full and enc_moved
    with pytest.raises(ValueError, match="supervised_steps: expected an int >= 0"):
        HVAEConfig(supervised_steps=-1)


def test_the_stepper_refuses_shared_parameters_and_other_objectives():
    method = build()
    hvae, dec, enc = method.hvae, method.decoder_params, method.encoder_params
    opts = method.optimizers()
    with pytest.raises(ValueError, match="disjoint parameters, got 1 shared"):
        SymmetricStepper(hvae.model, hvae.guide, SymmetricEquilibrium(), decoder=(dec, opts["decoder"]),
                         encoder=(enc + dec[:1], opts["encoder"]))
    with pytest.raises(TypeError, match="expected a SymmetricEquilibrium objective, got SemiSupervisedELBO"):
        SymmetricStepper(hvae.model, hvae.guide, SemiSupervisedELBO(), decoder=(dec, opts["decoder"]),
                         encoder=(enc, opts["encoder"]))


# ------------------------------------------------------------------------------------------------ diagnostics
def test_diagnostics_report_and_leave_no_trace():
    method = build(ema_decay=0.9, init_scale=0.4, spec=tiny_spec(init_scale=0.4))
    batch = step_batch()
    params = list(method.hvae.parameters())
    before = snapshot(params)
    generator = method.generator.get_state()
    out = method.diagnostics(batch)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert all(p.grad is None for p in params)
    assert torch.equal(method.generator.get_state(), generator)

    assert len(out["sigma"]) == C and all(s == pytest.approx(0.4, rel=1e-5) for s in out["sigma"])  # initial scale
    assert set(out["layers"]) == {"s", "l", "z1", "z2"}
    for name, layer in out["layers"].items():
        assert layer["kl"] >= 0 and layer["kl_per_dim"] >= 0 and 0 <= layer["active"] <= 1, name
    assert set(out["terms"]) == {"labelled_p", "unlabelled_p", "supervised_q", "sleep_q"}
    assert all(v < 0 for v in out["terms"].values())  # log-probabilities of continuous x / discrete s
    norms = out["grad_norms"]
    assert set(norms) == set(out["terms"])
    assert norms["supervised_q"]["decoder"] == 0.0 and norms["supervised_q"]["encoder"] > 0
    for term in ("labelled_p", "unlabelled_p"):  # the decoder's terms: samples drawn without gradient
        assert norms[term]["encoder"] == 0.0 and norms[term]["decoder"] > 0
    assert norms["sleep_q"]["encoder"] > 0

    # the deterministic parts against a hand computation from the guide's U-Net
    lab = batch.labelled
    with torch.no_grad():
        logits = method.hvae.encoder.unet(lab.x, lab.valid, lab.doy)
    log_q = F.log_softmax(logits, 1).gather(1, lab.labels.clamp(min=0)[:, None])[:, 0]
    mask = lab.labels >= 0
    expected_sup = float(torch.where(mask, log_q, torch.zeros(())).flatten(1).sum(1).mean())
    assert out["terms"]["supervised_q"] == pytest.approx(expected_sup, rel=1e-5)
    accuracy = float((logits.argmax(1)[mask] == lab.labels[mask]).float().mean())
    assert out["train_accuracy"] == pytest.approx(accuracy) and 0 <= out["train_accuracy"] <= 1


def test_diagnostics_of_the_elbo_method():
    method = build(ELBOMethod)
    out = method.diagnostics(step_batch())
    assert set(out["terms"]) == {"labelled_elbo", "supervised_q", "unlabelled_elbo"}
    assert out["grad_norms"]["supervised_q"]["decoder"] == 0.0
    assert out["grad_norms"]["supervised_q"]["encoder"] > 0
    assert set(out["layers"]) == {"s", "l", "z1", "z2"}


# ------------------------------------------------------------------------------------------------------- EMA
def _perturb(net: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(("decay", "step", "effective"), [
    (0.9, 10**6, 0.9),  # late in a run: the configured decay
    (0.999, 0, 0.1),  # first step: min(decay, 1/10), so the average is not stuck at the initial weights
    (0.5, 2, 0.25),  # min(0.5, 3/12)
])
def test_ema_moves_towards_the_current_weights(decay, step, effective):
    method = build(ema_decay=decay)
    net, ema = method.hvae.encoder.unet, method.ema
    assert ema is not None and ema is not net
    _perturb(net)
    old = snapshot(ema.parameters())
    current = snapshot(net.parameters())
    assert any(not torch.equal(o, c) for o, c in zip(old, current))
    method.after_update(step)
    for e, o, c in zip(ema.parameters(), old, current):
        torch.testing.assert_close(e.detach(), o + (1 - effective) * (c - o), rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in ema.parameters())


def test_ema_with_decay_near_zero_follows_the_net_and_predict_proba_uses_it():
    method = build(ema_decay=1e-9)
    net = method.hvae.encoder.unet
    b = random_batch(B=2, C=C, H=P, W=P, K=K, seed=5)
    _perturb(net)
    # before the update the prediction is the EMA's (the initial weights), not the perturbed net's
    with torch.no_grad():
        stale = torch.softmax(method.ema(b.x, b.valid, b.doy), 1)
    torch.testing.assert_close(method.predict_proba(b.x, b.valid, b.doy), stale)
    assert not torch.allclose(method.predict_proba(b.x, b.valid, b.doy), method.hvae.segment(b.x, b.valid, b.doy))
    method.after_update(10**6)
    for e, p in zip(method.ema.parameters(), net.parameters()):
        torch.testing.assert_close(e, p.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(method.predict_proba(b.x, b.valid, b.doy), method.hvae.segment(b.x, b.valid, b.doy),
                               rtol=1e-5, atol=1e-6)
    assert set(method.modules()) == {"hvae", "ema"}


def test_without_ema_the_prediction_is_the_current_encoder():
    method = build(ema_decay=0)
    assert method.ema is None and set(method.modules()) == {"hvae"}
    b = random_batch(B=2, C=C, H=P, W=P, K=K, seed=5)
    _perturb(method.hvae.encoder.unet)
    method.after_update(3)
    torch.testing.assert_close(method.predict_proba(b.x, b.valid, b.doy), method.hvae.segment(b.x, b.valid, b.doy))


def test_a_hierarchy_without_dates_ignores_doy_in_prediction():
    method = build(spec=tiny_spec(day_of_year=False), ema_decay=0.5)
    b = random_batch(B=2, C=C, H=P, W=P, K=K, seed=6)
    torch.testing.assert_close(method.predict_proba(b.x, b.valid, b.doy), method.predict_proba(b.x, b.valid))
    # and one with dates needs them
    with pytest.raises(ValueError, match="day of the year"):
        build(ema_decay=0).predict_proba(b.x, b.valid)
