"""``SymmetricEquilibrium(wake_holdout=p)``: unlabelled wake images hide pixels from the guide that the model still
scores (the decoder learns to predict what the posterior did not see); an interpolating HVAE interpolates from the
pixels the guide saw."""

from __future__ import annotations

import pyro
import pytest
import torch

from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.objectives import SymmetricEquilibrium, SymmetricWeights
from tests.objectives.test_symmetric import _recording
from tests.objectives.tiny import TinyHVAE

WAKE_ONLY = SymmetricWeights(labelled_p=0, unlabelled_p=1, supervised_q=0, sleep_q=0)


def test_holdout_hides_valid_pixels_under_other_images_masks_at_the_asked_rate():
    obj = SymmetricEquilibrium(wake_holdout=0.5)
    torch.manual_seed(0)
    valid = torch.rand(400, 3, 6, 6) < 0.6
    hide = obj._holdout(valid)
    assert hide.shape == valid.shape and hide.dtype == torch.bool
    assert not bool((hide & ~valid).any())  # only valid pixels are hidden
    touched = hide.flatten(2).any(-1)  # (B, T): dates that hide something
    assert 0.4 < float(touched.float().mean()) < 0.55  # p = 0.5, less the draws whose donor hides nothing new
    assert SymmetricEquilibrium()._holdout(valid) is None
    assert obj._holdout(None) is None
    for bad in (1.5, -0.1, True):
        with pytest.raises(ValueError, match="wake_holdout"):
            SymmetricEquilibrium(wake_holdout=bad)


def test_holdout_one_hides_on_every_date_exactly_what_a_donor_mask_of_the_batch_covers():
    obj = SymmetricEquilibrium(wake_holdout=1.0)
    torch.manual_seed(3)
    valid = torch.rand(64, 2, 5, 5) < 0.5
    flat = valid.reshape(-1, 5, 5)
    hide = obj._holdout(valid).reshape(-1, 5, 5)
    for i in range(flat.shape[0]):  # some image of the batch is the donor: hide == valid & ~donor
        assert any(torch.equal(hide[i], flat[i] & ~flat[j]) for j in range(flat.shape[0]))
    assert bool(hide.flatten(1).any(1).float().mean() > 0.9)  # p = 1: (nearly) every date hides something


@pytest.mark.parametrize("holdout", [0.0, 0.9, 1.0])
def test_the_guide_never_sees_hidden_pixels_and_the_model_scores_every_valid_one(holdout):
    m = TinyHVAE(K=2, H=3, W=4, D=1, C=2)
    model, guide, calls = _recording(m)
    torch.manual_seed(1)
    x = torch.randint(0, 2, (16, 2, 3, 4)).float()
    valid = torch.rand(16, 3, 4) < 0.7
    pyro.set_rng_seed(0)
    SymmetricEquilibrium(WAKE_ONLY, wake_holdout=holdout).differentiable_loss(model, guide, unlabelled=(x, valid))
    (g,), (md,) = calls["guide"], calls["model"]
    assert torch.equal(md["valid"], valid)
    assert not bool((g["valid"] & ~valid).any())
    assert torch.equal(g["valid"], valid) == (holdout == 0)


def test_an_interpolating_hvae_interpolates_from_what_the_guide_saw():
    spec = HierarchySpec.default(3, 2, 4, channels=2, temporal=True, shared_channels=1, interpolation=True,
                                 encoder_widths=(4, 4, 4), decoder_width=4, s_prior="categorical")
    seen: dict = {}

    class Recording(HVAE):
        def guide(self, x, s=None, valid=None, **kw):
            seen["guide_valid"] = valid
            return super().guide(x, s, valid, **kw)

        def model(self, x=None, s=None, valid=None, **kw):
            if x is not None:
                seen["model_valid"], seen["interp_from"] = valid, kw.get("interp_from")
            return super().model(x, s, valid, **kw)

    hvae = Recording(spec)
    torch.manual_seed(2)
    x = torch.randn(8, 3, 2, 8, 8)
    valid = torch.rand(8, 3, 8, 8) < 0.8
    doy = torch.tensor([[10.0, 40.0, 90.0]] * 8)
    SymmetricEquilibrium(WAKE_ONLY, wake_holdout=0.9).differentiable_loss(hvae.model, hvae.guide,
                                                                          unlabelled=(x, valid, doy))
    src_x, src_valid = seen["interp_from"]
    assert torch.equal(src_x, x) and torch.equal(src_valid, seen["guide_valid"])
    assert torch.equal(seen["model_valid"], valid) and not torch.equal(src_valid, valid)
