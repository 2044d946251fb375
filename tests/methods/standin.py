"""A tiny stand-in for :class:`hvaeseg.nets.SegmentationUNet` with the same call signature, for fast method tests."""

import torch
from torch import nn

from hvaeseg.data.loader import PatchBatch


class TinyNet(nn.Module):
    """``forward(x, valid) -> logits (B, K, H, W)`` from ``x * valid`` and ``valid``; temporal stacks are
    pooled over dates weighted by ``valid``. Has a BatchNorm, so tests see train/eval differences."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 8, kernel: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + 1, hidden, kernel, padding=kernel // 2),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, doy: torch.Tensor | None = None) -> torch.Tensor:
        v = valid.unsqueeze(-3).to(x.dtype)
        inp = torch.cat([x * v, v], dim=-3)
        if x.dim() == 4:
            return self.head(self.body(inp))
        B, T = x.shape[:2]
        h = self.body(inp.flatten(0, 1)).unflatten(0, (B, T))
        h = (h * v).sum(1) / v.sum(1).clamp_min(1)
        return self.head(h)


def random_batch(B=2, C=3, H=8, W=8, T=None, K=3, seed=0, void=True):
    """A random PatchBatch (temporal when T is given), with a random day of the year per image and date."""
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if T is None else (B, T)
    x = torch.randn(*lead, C, H, W, generator=g)
    valid = torch.rand(*lead, H, W, generator=g) < 0.8
    labels = torch.randint(-1 if void else 0, K, (B, H, W), generator=g)
    doy = torch.randint(1, 366, lead, generator=g).float()
    return PatchBatch(x, valid, labels, doy)
