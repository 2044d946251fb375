"""Residual convolution blocks, resizing and the conditional conv net used between HVAE layers.

Plain :mod:`torch.nn`, no Pyro. No batch norm anywhere (batch statistics couple the samples of a batch
and break the HVAE's likelihood); stability comes from zero-initialised last convolutions, so every
residual block starts as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConditionalConvNet", "ResBlock", "resize", "zero_init"]


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (in place) and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the last two dims of ``x (N, C, H, W)`` to ``size`` by interpolation.

    Down-scaling by an integer factor averages (area interpolation: a one-hot map becomes class
    fractions); up-scaling repeats pixels (nearest). ``x`` is returned as is when the size already fits.
    """
    h, w = int(size[0]), int(size[1])
    H, W = x.shape[-2:]
    if (H, W) == (h, w):
        return x
    if H % h == 0 and W % w == 0 and H // h == W // w:
        return F.avg_pool2d(x, H // h)
    if h % H == 0 and w % W == 0:
        return F.interpolate(x, size=(h, w), mode="nearest")
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


class ResBlock(nn.Module):
    """``x + scale * conv(SiLU(conv(SiLU(x))))`` with 3x3 (or ``kernel`` x ``kernel``) convolutions; the last
    conv starts at zero.

    :param channels: input = output channels.
    :param hidden: channels between the two convolutions (default ``channels``).
    :param residual_scale: factor on the residual branch (e.g. ``1 / sqrt(number of blocks)``).
    :param kernel: odd side of the convolutions (1: the block acts on each pixel alone).
    """

    def __init__(self, channels: int, hidden: int | None = None, residual_scale: float = 1.0, kernel: int = 3):
        super().__init__()
        hidden = hidden or channels
        self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2)
        self.conv2 = zero_init(nn.Conv2d(hidden, channels, kernel, padding=kernel // 2))
        self.residual_scale = float(residual_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.conv1(F.silu(x))))
        if self.residual_scale != 1.0:
            h = h * self.residual_scale
        return x + h


def _conv_any(conv: nn.Module, p: torch.Tensor) -> torch.Tensor:
    """``conv`` of ``(N, C, h, w)``, or of ``(B, T, C, h, w)`` date by date."""
    if p.dim() == 5:
        return conv(p.flatten(0, 1)).unflatten(0, p.shape[:2])
    return conv(p)


def _stack(channels: int, depth: int, kernel: int = 3) -> nn.Sequential:
    scale = 1.0 / max(depth, 1) ** 0.5
    return nn.Sequential(*[ResBlock(channels, residual_scale=scale, kernel=kernel) for _ in range(depth)])


class ConditionalConvNet(nn.Module):
    """Maps several parent tensors to the parameters of one layer: the decoder net between HVAE layers.

    Each spatial parent ``(N, C_i, h, w)`` -- or ``(B, T, C_i, h, w)``, or ``(B, 1, C_i, h, w)`` for a parent
    shared by all dates -- already at the output resolution, gets its own 3x3 projection to ``width``
    channels; global parents ``(B, D)`` / ``(B, T, D)`` a linear projection added as a per-map bias. The
    projections are summed (shared parents broadcast over dates without being copied), followed by
    ``depth`` residual blocks and a 1x1 head to ``out_channels``.

    With ``interactions``, each spatial parent also gets a 3x3 projection of its products with the global
    parents' features (``p_c * g_d`` for every channel ``c`` and feature ``d``), so that what a parent means may
    change with a global one: a class's spectrum with the day of the year (its phenology), which a per-map bias
    cannot say.

    With ``kernel=1`` every convolution is 1x1: output pixel ``(h, w)`` depends on the spatial parents at
    ``(h, w)`` only (and on the global parents), so a layer's parameters given a class map are computed pixel
    by pixel, which is what lets :meth:`hvaeseg.HVAE.class_log_likelihood` enumerate each pixel's classes.

    :param spatial_channels: channels of each spatial parent, in call order.
    :param global_channels: size of each global (vector) parent, in call order.
    :param width: hidden channels.
    :param depth: residual blocks.
    :param out_channels: output channels.
    :param interactions: add the projections of spatial x global products (needs both kinds of parent).
    :param kernel: side of every convolution, 3 (default) or 1 (pixel by pixel).
    """

    def __init__(
        self,
        spatial_channels: Sequence[int],
        global_channels: Sequence[int],
        width: int,
        depth: int,
        out_channels: int,
        interactions: bool = False,
        kernel: int = 3,
    ):
        super().__init__()
        if not spatial_channels and not global_channels:
            raise ValueError("expected at least one parent, got none")
        if kernel not in (1, 3):
            raise ValueError(f"expected kernel 1 or 3, got {kernel!r}")
        pad = kernel // 2
        self.spatial = nn.ModuleList(nn.Conv2d(c, width, kernel, padding=pad, bias=False) for c in spatial_channels)
        g = sum(global_channels)
        self.interactions = nn.ModuleList(
            nn.Conv2d(c * g, width, kernel, padding=pad, bias=False)
            for c in (spatial_channels if interactions and g else ())
        )
        self.globals = nn.ModuleList(nn.Linear(d, width, bias=False) for d in global_channels)
        self.bias = nn.Parameter(torch.zeros(width))
        self.blocks = _stack(width, depth, kernel)
        self.head = nn.Conv2d(width, out_channels, 1)
        self.width = width

    def forward(
        self,
        spatial: Sequence[torch.Tensor],
        globals_: Sequence[torch.Tensor] = (),
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Return ``(N, out_channels, h, w)``, or ``(B, T, out_channels, h, w)`` if any parent has dates.

        :param size: ``(h, w)``; needed only when there are no spatial parents.
        """
        h: torch.Tensor | None = None
        for conv, p in zip(self.spatial, spatial):
            y = _conv_any(conv, p)
            h = y if h is None else h + y
        if self.interactions:
            g = torch.cat(list(globals_), -1)  # (B, G) or (B, T, G)
            for conv, p in zip(self.interactions, spatial):
                if p.dim() == 4 and g.dim() == 3:
                    p = p.unsqueeze(1)
                elif p.dim() == 5 and g.dim() == 2:
                    g = g.unsqueeze(1)
                prod = p.unsqueeze(-3) * g[..., None, :, None, None]  # (..., C, G, h, w)
                y = _conv_any(conv, prod.flatten(-4, -3))
                assert h is not None  # interactions are built only with spatial parents
                h = (h.unsqueeze(1) if h.dim() < y.dim() else h) + y
        for lin, g in zip(self.globals, globals_):
            y = lin(g)[..., None, None]  # (B, W, 1, 1) or (B, T, W, 1, 1)
            if y.dim() == 5 and h is not None and h.dim() == 4:
                h = h.unsqueeze(1)
            elif y.dim() == 4 and h is not None and h.dim() == 5:
                y = y.unsqueeze(1)
            h = y if h is None else h + y
        if h is None:
            raise ValueError("expected at least one parent (spatial or global), got none")
        if spatial:
            h = h + self.bias[:, None, None]
        else:  # only global parents: tile to the requested size
            if size is None:
                raise ValueError("expected size=(h, w) for a net with only global parents")
            h = (h + self.bias[:, None, None]).expand(*h.shape[:-2], int(size[0]), int(size[1]))
        # float32 out under bf16 autocast too (hvaeseg.nets.precision): distribution parameters stay float32
        if h.dim() == 5:
            B, T = h.shape[:2]
            out = self.head(self.blocks(h.flatten(0, 1)))
            return out.unflatten(0, (B, T)).float()
        return self.head(self.blocks(h)).float()
