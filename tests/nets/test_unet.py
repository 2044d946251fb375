import pytest
import torch

from hvaeseg.nets import SegmentationUNet, UNetEncoder, masked_input, valid_weighted_pool


def test_encoder_returns_features_by_downscale_factor():
    enc = UNetEncoder(5, widths=(8, 12, 16), depths=(1, 0, 2))
    feats = enc(torch.randn(2, 5, 32, 32))
    assert list(feats) == [1, 2, 4]
    assert feats[1].shape == (2, 8, 32, 32)
    assert feats[2].shape == (2, 12, 16, 16)
    assert feats[4].shape == (2, 16, 8, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        enc(torch.randn(1, 5, 30, 32))
    with pytest.raises(ValueError, match="one non-negative depth per width"):
        UNetEncoder(5, widths=(8, 12), depths=(1,))


def test_segmentation_unet_shapes_and_masking():
    net = SegmentationUNet(4, 3, widths=(8, 16))
    x = torch.randn(2, 4, 16, 16)
    valid = torch.rand(2, 16, 16) > 0.5
    logits = net(x, valid)
    assert logits.shape == (2, 3, 16, 16)
    # values under invalid pixels are not seen
    x2 = torch.where(valid.unsqueeze(1), x, torch.full_like(x, 7.0))
    torch.testing.assert_close(net(x2, valid), logits)
    # valid=None means all valid
    torch.testing.assert_close(net(x), net(x, torch.ones(2, 16, 16, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, C, H, W\) with C=4"):
        net(torch.randn(2, 5, 16, 16))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_masked_input():
    x = torch.ones(1, 2, 2, 2)
    valid = torch.tensor([[[True, False], [False, True]]])
    out = masked_input(x, valid)
    assert out.shape == (1, 3, 2, 2)
    assert torch.equal(out[0, 2], valid[0].float()) and torch.equal(out[0, 0], valid[0].float())


def test_temporal_pooling_weights_by_valid_fraction():
    feats = torch.stack([torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 2, 2), 5.0)], dim=1)  # (B, T, C, h, w)
    valid = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    valid[:, 0] = True  # date 0 clear everywhere
    valid[:, 1, :2, :2] = True  # date 1 clear on the top-left quarter only
    pooled = valid_weighted_pool(feats, valid)
    assert pooled.shape == (1, 2, 2, 2)
    assert pooled[0, 0, 0, 0] == pytest.approx(3.0)  # equal weights
    assert pooled[0, 0, 1, 1] == pytest.approx(1.0)  # date 1 cloudy there


def test_temporal_unet_ignores_cloudy_dates():
    net = SegmentationUNet(3, 4, widths=(8, 8), temporal=True)
    x = torch.randn(2, 3, 3, 8, 8)
    valid = torch.rand(2, 3, 8, 8) > 0.3
    valid[:, 2] = False
    logits = net(x, valid)
    assert logits.shape == (2, 4, 8, 8)
    x2 = x.clone()
    x2[:, 2] = -50.0
    torch.testing.assert_close(net(x2, valid), logits)
    # a stack of one date equals the single-image network with the same weights, when fully valid
    single = SegmentationUNet(3, 4, widths=(8, 8))
    single.load_state_dict(net.state_dict())
    ones = torch.ones(2, 1, 8, 8, dtype=torch.bool)
    torch.testing.assert_close(net(x[:, :1], ones), single(x[:, 0], ones[:, 0]), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- day of year
@pytest.mark.parametrize("temporal", [False, True])
def test_day_of_year_unet_needs_doy_of_the_right_shape(temporal):
    net = SegmentationUNet(3, 2, widths=(4, 4), temporal=temporal, day_of_year=True)
    lead = (2, 3) if temporal else (2,)
    x = torch.randn(*lead, 3, 8, 8)
    assert net(x, None, torch.full(lead, 100.0)).shape == (2, 2, 8, 8)
    for bad in (None, torch.ones(3), torch.ones(*lead, 1), torch.ones(2, 4) if temporal else torch.ones(2, 1)):
        with pytest.raises(ValueError, match="day of the year: expected doy of shape"):
            net(x, None, bad)
    # a network without the option ignores a date
    plain = SegmentationUNet(3, 2, widths=(4, 4), temporal=temporal)
    torch.testing.assert_close(plain(x, None, torch.full(lead, 100.0)), plain(x))


def test_day_of_year_unet_starts_independent_of_the_date_and_learns_to_use_it():
    torch.manual_seed(0)
    net = SegmentationUNet(3, 2, widths=(4, 4), day_of_year=True)
    x = torch.randn(4, 3, 8, 8)
    early, late = torch.full((4,), 30.0), torch.full((4,), 200.0)
    # zero-initialised: at first the output is exactly that of the date-free network
    assert torch.equal(net(x, None, early), net(x, None, late))
    # one step on a loss whose target depends on the date
    doy = torch.tensor([30.0, 30.0, 200.0, 200.0])
    target = (doy > 100).long()[:, None, None].expand(4, 8, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(net(x, None, doy), target).backward()
    assert all(lin.weight.grad.abs().sum() > 0 for lin in net.doy)
    opt.step()
    assert not torch.allclose(net(x, None, early), net(x, None, late))
