"""Mixed precision (hvaeseg.nets.precision): float32 out of every network, losses close to float32, clear errors."""

from __future__ import annotations

import pyro.poutine as poutine
import pytest
import torch

from hvaeseg.methods.hvae import SymmetricMethod
from hvaeseg.nets import SegmentationUNet
from hvaeseg.nets import precision as P


def _hvae():
    torch.manual_seed(0)
    return SymmetricMethod.build(4, 3, patch_size=16).hvae


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 16, 16, generator=g), torch.ones(2, 16, 16, dtype=torch.bool), torch.full((2,), 120.0)


def test_fp32_is_no_autocast_at_all():
    with P.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with P.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")


def test_every_network_returns_float32_under_bf16():
    hvae = _hvae()
    x, valid, doy = _batch()
    with P.autocast("bf16", "cpu"):
        logits, feats = hvae.encoder.unet.forward_features(x, valid, doy)
        assert any(f.dtype == torch.bfloat16 for f in feats.values())  # the trunk did run in bfloat16
        assert logits.dtype == torch.float32
        assert hvae.encoder.l_logits(feats, valid).dtype == torch.float32
        for layer in hvae.spec.layers:
            assert hvae.encoder.head(layer.name, feats, valid).dtype == torch.float32
        guide = poutine.trace(hvae.guide).get_trace(x, s=None, valid=valid, doy=doy)
        model = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(
            x=x, s=guide.nodes["s"]["value"], valid=valid, doy=doy)
    for tr in (guide, model):
        for site in tr.nodes.values():
            if site["type"] == "sample":
                for v in (getattr(site["fn"], "logits", None), getattr(site["fn"], "loc", None)):
                    assert v is None or v.dtype == torch.float32


def test_bf16_log_probabilities_are_close_to_float32():
    hvae = _hvae()
    x, valid, doy = _batch()
    with torch.no_grad():
        guide = poutine.trace(hvae.guide).get_trace(x, s=None, valid=valid, doy=doy)
        ref = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(
            x=x, s=guide.nodes["s"]["value"], valid=valid, doy=doy).log_prob_sum()
        with P.autocast("bf16", "cpu"):
            low = poutine.trace(poutine.replay(hvae.model, trace=guide)).get_trace(
                x=x, s=guide.nodes["s"]["value"], valid=valid, doy=doy).log_prob_sum()
    assert low.dtype == torch.float32
    assert abs(float(low - ref)) <= 1e-2 * abs(float(ref))


def test_channels_last_keeps_values_and_state_dicts():
    torch.manual_seed(0)
    net = SegmentationUNet(4, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    P.prepare_modules([net], "bf16")
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    fresh = SegmentationUNet(4, 3)
    fresh.load_state_dict(net.state_dict())
    x, valid, _ = _batch()
    with torch.no_grad():
        assert torch.allclose(fresh(x, valid), net(x, valid), atol=1e-5)
    plain = SegmentationUNet(4, 3)
    P.prepare_modules([plain], "fp32")
    assert next(m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous()


def test_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="expected one of fp32, bf16"):
        P.check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        P.autocast("half", "cpu")
    monkeypatch.setattr(P, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="use --precision fp32"):
        P.check_precision("bf16", "cpu")
    P.check_precision("fp32", "cpu")
