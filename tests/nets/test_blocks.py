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


def test_interactions_add_a_projection_of_the_products_of_spatial_and_global_parents():
    """depth 0: out = head(conv(p) + conv_i(p x g) + lin(g) + bias), computed by hand."""
    torch.manual_seed(0)
    net = ConditionalConvNet([3], [2, 1], width=6, depth=0, out_channels=4, interactions=True)
    p, g1, g2 = torch.randn(2, 3, 5, 5), torch.randn(2, 2), torch.randn(2, 1)
    g = torch.cat([g1, g2], -1)
    prod = torch.stack([p[:, c] * g[:, d, None, None] for c in range(3) for d in range(3)], 1)  # c-major
    h = net.spatial[0](p) + net.interactions[0](prod) + (net.globals[0](g1) + net.globals[1](g2))[..., None, None]
    want = net.head(h + net.bias[:, None, None])
    torch.testing.assert_close(net([p], [g1, g2]), want)


def test_interactions_let_a_class_change_its_output_with_a_global_parent():
    """A linear net (depth 0) cannot map (class a, g=+1) -> +1, (a, -1) -> -1, (b, +1) -> -1, (b, -1) -> +1
    with additive parents (the product is what it needs); with interactions it fits it exactly."""
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])[..., None, None].expand(4, 2, 3, 3)
    g = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    y = torch.tensor([1.0, -1.0, -1.0, 1.0])[:, None, None, None].expand(4, 1, 3, 3)
    losses = {}
    for interactions in (False, True):
        torch.manual_seed(0)
        net = ConditionalConvNet([2], [1], width=4, depth=0, out_channels=1, interactions=interactions)
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        for _ in range(400):
            opt.zero_grad()
            loss = (net([s], [g]) - y).pow(2).mean()
            loss.backward()
            opt.step()
        losses[interactions] = float(loss.detach())
    assert losses[True] < 1e-3 and losses[False] > 0.5


def test_interactions_broadcast_a_parent_shared_by_the_dates():
    torch.manual_seed(0)
    net = ConditionalConvNet([3], [2], width=6, depth=1, out_channels=4, interactions=True)
    p, g = torch.randn(2, 1, 3, 5, 5), torch.randn(2, 4, 2)  # one map for 4 dates, a global per date
    out = net([p], [g])
    assert out.shape == (2, 4, 4, 5, 5)
    for t in range(4):
        torch.testing.assert_close(out[:, t], net([p[:, 0]], [g[:, t]]))


@pytest.mark.parametrize("kernel", [1, 3])
def test_a_one_by_one_net_sees_each_pixel_alone(kernel):
    """With kernel=1 a change of a spatial parent at one pixel changes the output at that pixel only; with 3x3
    convolutions it reaches the neighbours too."""
    torch.manual_seed(0)
    net = ConditionalConvNet([3], [2], 8, 2, 4, interactions=True, kernel=kernel)
    for block in net.blocks:  # away from the zero-initialised residual branch
        torch.nn.init.normal_(block.conv2.weight, std=0.3)
    p, g = torch.randn(1, 3, 5, 5), torch.randn(1, 2)
    q = p.clone()
    q[0, :, 2, 2] += 1.0
    changed = (net([q], [g]) - net([p], [g])).abs().sum(1)[0] > 1e-6
    assert changed[2, 2]
    assert int(changed.sum()) == (1 if kernel == 1 else 25)
    with pytest.raises(ValueError, match="expected kernel 1 or 3, got 5"):
        ConditionalConvNet([3], [], 8, 1, 4, kernel=5)
