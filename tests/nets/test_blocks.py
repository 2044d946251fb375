import pytest
import torch

from hvaeseg.nets import ConditionalConvNet, ResBlock, resize


def test_res_block_starts_as_identity_and_learns():
    block = ResBlock(8, residual_scale=0.5)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x), x)
    assert block.conv2.weight.abs().sum() == 0
    block(x).pow(2).sum().backward()
    assert block.conv2.weight.grad.abs().sum() > 0


def test_resize_down_is_area_average_and_up_repeats():
    onehot = torch.zeros(1, 2, 4, 4)
    onehot[:, 0, :, :2] = 1
    onehot[:, 1, :, 2:] = 1
    down = resize(onehot, (2, 2))
    torch.testing.assert_close(down.sum(1), torch.ones(1, 2, 2))  # class fractions
    x = torch.arange(4.0).view(1, 1, 2, 2)
    up = resize(x, (4, 4))
    assert torch.equal(up[0, 0, ::2, ::2], x[0, 0]) and torch.equal(up[0, 0, 1::2, 1::2], x[0, 0])
    assert resize(x, (2, 2)) is x


def test_conditional_net_shapes_and_date_broadcast():
    net = ConditionalConvNet([3, 2], [4], width=8, depth=1, out_channels=5)
    B, T = 2, 3
    shared = torch.randn(B, 1, 3, 6, 6)  # e.g. s, shared by the dates
    per_date = torch.randn(B, T, 2, 6, 6)
    code = torch.randn(B, T, 4)
    out = net([shared, per_date], [code])
    assert out.shape == (B, T, 5, 6, 6)
    # the shared parent is broadcast: same as copying it per date
    copied = net([shared.expand(B, T, 3, 6, 6).contiguous(), per_date], [code])
    torch.testing.assert_close(out, copied)
    # per-date computation equals the 4-d call date by date
    for t in range(T):
        torch.testing.assert_close(out[:, t], net([shared[:, 0], per_date[:, t]], [code[:, t]]), atol=1e-5, rtol=1e-5)


def test_conditional_net_with_only_global_parents_needs_size():
    net = ConditionalConvNet([], [4], width=8, depth=0, out_channels=2)
    out = net([], [torch.randn(3, 4)], size=(5, 7))
    assert out.shape == (3, 2, 5, 7)
    with pytest.raises(ValueError, match="expected size"):
        net([], [torch.randn(3, 4)])
    with pytest.raises(ValueError, match="expected at least one parent"):
        ConditionalConvNet([], [], 8, 1, 2)


def test_conditional_net_called_without_parent_values_says_so():
    # found by mypy (h: Tensor | None): no parent tensors at all ended in `None + Tensor`, a TypeError
    net = ConditionalConvNet([3], [4], width=8, depth=0, out_channels=2)
    with pytest.raises(ValueError, match="expected at least one parent"):
        net([], [], size=(5, 7))
