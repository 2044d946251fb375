"""hvaeseg.traces: wrappers, parameter groups from traces, per-image log-probabilities, site access, replay."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn

from hvaeseg.traces import (
    labelled_log_prob,
    peel,
    per_image_log_prob,
    replay,
    rewrap,
    site_distribution,
    split_parameters,
    unwrap,
)
from tests.objectives.tiny import TinyHVAE, all_images


# ------------------------------------------------------------------------------------------- wrappers
def test_unwrap_and_rewrap_keep_shapes_and_log_prob():
    logits = torch.randn(3, 2, 4, 5)
    mask = torch.tensor([True, False, True])
    fn = dist.Categorical(logits=logits).to_event(2).mask(mask)
    base, wrappers = peel(fn)
    assert isinstance(base, dist.Categorical) and unwrap(fn) is base
    assert torch.allclose(base.logits, torch.log_softmax(logits, -1))
    rebuilt = rewrap(base, wrappers)
    value = fn.sample()
    assert rebuilt.batch_shape == fn.batch_shape and rebuilt.event_shape == fn.event_shape
    assert torch.allclose(rebuilt.log_prob(value), fn.log_prob(value))
    assert float(fn.log_prob(value)[1]) == 0.0  # masked image


def test_unwrap_expanded_distribution():
    fn = dist.Normal(torch.zeros(4), 1.0).expand([2, 4]).to_event(1)
    assert isinstance(unwrap(fn), dist.Normal)
    assert unwrap(fn).mean.shape[-1] == 4


# ----------------------------------------------------------------------------------- parameter groups
class _Mixed(PyroModule):
    """Decoder in a plain nn.Linear and a PyroParam; encoder in a plain nn.Linear and a global pyro.param;
    the guide reuses the decoder's prior (shared); one module is never used."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(2, 3)
        self.prior = PyroParam(torch.zeros(2))
        self.enc = nn.Linear(3, 2)
        self.unused = nn.Linear(1, 1)

    def model(self, x=None, s=None, valid=None):
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(logits=self.prior).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x, s=None, valid=None):
        g = pyro.param("guide_bias", torch.zeros(2))
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.enc(x) + self.prior + g).to_event(1))


def test_split_parameters_finds_plain_pyro_and_global_params():
    m = _Mixed()
    decoder, encoder = split_parameters(m.model, m.guide, torch.randn(4, 3))
    names = {id(p): n for n, p in m.named_parameters()}
    names[id(pyro.get_param_store()["guide_bias"].unconstrained())] = "guide_bias"
    assert sorted(names[id(p)] for p in decoder) == ["dec.bias", "dec.weight", "prior_unconstrained"]
    assert sorted(names[id(p)] for p in encoder) == ["enc.bias", "enc.weight", "guide_bias"]
    assert not {id(p) for p in decoder} & {id(p) for p in encoder}


def test_split_parameters_on_tiny_hvae_matches_declared_groups():
    m = TinyHVAE()
    x = all_images(m)[:3]
    s = torch.tensor([[[0, -1]], [[1, 1]], [[-1, -1]]])
    decoder, encoder = split_parameters(m.model, m.guide, x, s=s, valid=torch.ones(3, 1, 2, dtype=torch.bool))
    assert {id(p) for p in decoder} == {id(p) for p in m.decoder_parameters()}
    assert {id(p) for p in encoder} == {id(p) for p in m.encoder_parameters()}


def test_split_parameters_runs_without_grad_and_leaves_no_grads():
    m = TinyHVAE()
    split_parameters(m.model, m.guide, all_images(m)[:2])
    assert all(p.grad is None for p in m.parameters())


# ---------------------------------------------------------------------------------- per-image log-prob
def test_per_image_log_prob_is_the_hand_sum_of_sites():
    m = TinyHVAE()
    x = all_images(m)[:4]
    valid = torch.tensor([[[True, False]], [[True, True]], [[False, False]], [[True, True]]])
    tr = poutine.trace(m.guide).get_trace(x, valid=valid)
    mtr = poutine.trace(replay(m.model, trace=tr)).get_trace(x=x, valid=valid)
    per = per_image_log_prob(mtr, 4)
    assert per.shape == (4,)
    assert torch.allclose(per.sum(), mtr.log_prob_sum(), atol=1e-5)
    # by hand for image 2 (fully occluded: x contributes nothing)
    s2, l2, z2 = (mtr.nodes[n]["value"][2] for n in ("s", "l", "z"))
    hand = (
        torch.log_softmax(m.s_logits, -1)[0, torch.arange(2), s2[0]].sum()
        + dist.Bernoulli(0.5).log_prob(l2).sum()
        + dist.Bernoulli(logits=mtr.nodes["z"]["fn"].base_dist.logits[2]).log_prob(z2).sum()
    )
    assert torch.allclose(per[2], hand, atol=1e-5)


def test_per_image_log_prob_with_temporal_batch_plate_and_filters():
    def model():
        with pyro.plate("batch", 3, dim=-2):
            pyro.sample("s", dist.Normal(torch.zeros(3, 1), 1.0))
            with pyro.plate("time", 5, dim=-1):
                pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.ones(3, 5))

    tr = poutine.trace(model).get_trace()
    per = per_image_log_prob(tr, 3)
    tr.compute_log_prob()
    hand = tr.nodes["s"]["log_prob"].reshape(3) + tr.nodes["x"]["log_prob"].sum(-1)
    assert torch.allclose(per, hand)
    assert torch.allclose(per_image_log_prob(tr, 3, include_observed=False), tr.nodes["s"]["log_prob"].reshape(3))
    assert torch.allclose(per_image_log_prob(tr, 3, exclude=("s",)), tr.nodes["x"]["log_prob"].sum(-1))
    none = per_image_log_prob(tr, 3, site_filter=lambda name, site: False)
    assert torch.equal(none, torch.zeros(3))


def test_per_image_log_prob_rejects_sites_outside_the_batch_plate():
    def model():
        pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("batch", 2):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="batch"):
        per_image_log_prob(poutine.trace(model).get_trace(), 2)


# ------------------------------------------------------------------------------------ site access
def test_site_distribution_stops_at_the_site():
    m = TinyHVAE()
    x = all_images(m)[:3]
    calls = []

    def guide(x, s=None, valid=None):
        m.guide(x, s=s, valid=valid)
        calls.append("finished")

    fn = site_distribution(guide, "s", x)
    assert not calls  # nothing after the "s" site ran
    assert torch.allclose(unwrap(fn).logits, torch.log_softmax(m.s_posterior_logits(x, None), -1))
    assert unwrap(fn).logits.requires_grad
    with pytest.raises(ValueError, match="'nope'"):
        site_distribution(m.guide, "nope", x)
    # the Pyro stack is clean afterwards
    tr = poutine.trace(m.guide).get_trace(x)
    assert {n for n, site in tr.nodes.items() if site["type"] == "sample"} == {"batch", "s", "l", "z"}
    assert not pyro.poutine.runtime._PYRO_STACK


def test_replay_also_replays_sites_observed_in_the_source_trace():
    m = TinyHVAE()
    s = torch.tensor([[[1, 0]], [[0, 0]]])
    with torch.no_grad():
        mtr = poutine.trace(m.model).get_trace(x=None, s=s, valid=torch.ones(2, 1, 2, dtype=torch.bool))
    assert mtr.nodes["s"]["is_observed"]
    gtr = poutine.trace(replay(m.guide, trace=mtr)).get_trace(mtr.nodes["x"]["value"])
    for name in ("s", "l", "z"):
        assert torch.equal(gtr.nodes[name]["value"], mtr.nodes[name]["value"])
        assert not gtr.nodes[name]["is_observed"]


# ------------------------------------------------------------------------------------ labelled pixels
def test_labelled_log_prob_counts_labelled_pixels_only():
    logits = torch.randn(2, 2, 3, 4)
    s = torch.tensor([[[0, 1, -1], [3, -1, -1]], [[-1, -1, -1], [2, 2, 2]]])
    lp = labelled_log_prob(logits, s)
    ls = torch.log_softmax(logits, -1)
    hand0 = ls[0, 0, 0, 0] + ls[0, 0, 1, 1] + ls[0, 1, 0, 3]
    hand1 = ls[1, 1, 0, 2] + ls[1, 1, 1, 2] + ls[1, 1, 2, 2]
    assert torch.allclose(lp, torch.stack([hand0, hand1]))
    with pytest.raises(ValueError, match="logits of shape"):
        labelled_log_prob(logits[..., 0], s)
