"""The bottom-up U-Net encoder and the segmentation U-Net (the HVAE guide's encoder, and the baselines).

Plain :mod:`torch.nn`, no Pyro. ``SegmentationUNet`` is used unchanged by the supervised and MixMatch
baselines and, inside the HVAE guide, gives q(s|x) plus the bottom-up features of the ladder guide.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hvaeseg.nets.blocks import ResBlock, resize, zero_init
from hvaeseg.nets.covariates import DOY_FEATURES, doy_features

__all__ = ["SegmentationUNet", "UNetEncoder", "masked_input", "valid_weighted_pool"]


def _blocks(channels: int, depth: int) -> nn.Sequential:
    scale = 1.0 / max(depth, 1) ** 0.5
    return nn.Sequential(*[ResBlock(channels, residual_scale=scale) for _ in range(depth)])


def _check_widths(widths: Sequence[int], depths: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    widths = tuple(int(w) for w in widths)
    depths = tuple(int(d) for d in depths)
    if not widths or any(w <= 0 for w in widths):
        raise ValueError(f"expected a non-empty list of positive widths, got {widths}")
    if len(depths) != len(widths) or any(d < 0 for d in depths):
        raise ValueError(
            f"expected one non-negative depth per width ({len(widths)} of them), got depths={depths}"
        )
    return widths, depths


class UNetEncoder(nn.Module):
    """Bottom-up half of a U-Net: level ``i`` has ``widths[i]`` channels at down-scaling factor ``2**i``.

    :param in_channels: input channels.
    :param widths: channels per level, finest first.
    :param depths: residual blocks per level.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 48, 64), depths: Sequence[int] | None = None):
        super().__init__()
        widths, depths = _check_widths(widths, depths if depths is not None else [1] * len(widths))
        self.widths, self.depths = widths, depths
        self.factors = tuple(2**i for i in range(len(widths)))
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(widths[i - 1], widths[i], 1) if widths[i] != widths[i - 1] else nn.Identity()
            for i in range(1, len(widths))
        )
        self.levels = nn.ModuleList(_blocks(w, d) for w, d in zip(widths, depths))

    @property
    def max_factor(self) -> int:
        return self.factors[-1]

    def forward(self, x: torch.Tensor, biases: list[torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
        """``x (N, in_channels, H, W)`` -> ``{2**i: (N, widths[i], H / 2**i, W / 2**i)}``.

        :param biases: optional per-level ``(N, widths[i], 1, 1)`` added to each level's input (covariates).
        """
        H, W = x.shape[-2:]
        if H % self.max_factor or W % self.max_factor:
            raise ValueError(
                f"expected height and width divisible by {self.max_factor} (the U-Net's coarsest level), "
                f"got {H}x{W}: crop or pad the patches, or use fewer widths"
            )
        h = self.stem(x)
        if biases is not None:
            h = h + biases[0]
        h = self.levels[0](h)
        out = {1: h}
        for i in range(1, len(self.widths)):
            h = self.down[i - 1](F.avg_pool2d(h, 2))
            if biases is not None:
                h = h + biases[i]
            h = self.levels[i](h)
            out[self.factors[i]] = h
        return out


def masked_input(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``(x * valid, valid)`` stacked on the channel dim: ``(..., C, H, W)`` -> ``(..., C + 1, H, W)``."""
    if valid is None:
        v = x.new_ones(x.shape[:-3] + (1,) + x.shape[-2:])
    else:
        v = valid.unsqueeze(-3).to(x.dtype)
    return torch.cat([x * v, v], dim=-3)


def valid_weighted_pool(
    features: torch.Tensor, valid: torch.Tensor | None, eps: float = 1e-6
) -> torch.Tensor:
    """Pool per-date features ``(B, T, C, h, w)`` over dates, weighted by each date's valid fraction.

    The weight of date ``t`` at a pixel of the ``h x w`` grid is the fraction of valid full-resolution
    pixels under it (``valid (B, T, H, W)``), so cloudy dates contribute nothing. Returns ``(B, C, h, w)``.
    """
    if valid is None:
        return features.mean(1)
    B, T = valid.shape[:2]
    w = resize(valid.flatten(0, 1).unsqueeze(1).to(features.dtype), features.shape[-2:])
    w = w.unflatten(0, (B, T))  # (B, T, 1, h, w)
    return (w * features).sum(1) / w.sum(1).clamp(min=eps)


class SegmentationUNet(nn.Module):
    """U-Net from ``(x * valid, valid)`` to per-pixel class logits.

    :param in_channels: bands C of ``x``.
    :param num_classes: K.
    :param widths: channels per level, finest first (the coarsest level is at factor ``2**(len-1)``).
    :param depths: residual blocks per level (default one each).
    :param temporal: inputs are stacks ``(B, T, C, H, W)``; per-date bottom-up features are pooled over
        dates weighted by the valid fraction before the top-down path.
    :param day_of_year: take each date's day of the year (:func:`~hvaeseg.nets.covariates.doy_features`) as
        an input: a learned per-channel bias of every bottom-up level, starting at zero.

    ``forward(x, valid=None, doy=None) -> (B, K, H, W)`` logits, where ``valid`` is ``(B, H, W)`` bool
    (temporal: ``(B, T, H, W)``) or ``None`` (all valid) and ``doy`` is ``(B,)`` (temporal ``(B, T)``) days of
    the year, required when ``day_of_year``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 48, 64),
        depths: Sequence[int] | None = None,
        temporal: bool = False,
        day_of_year: bool = False,
    ):
        super().__init__()
        if in_channels <= 0 or num_classes <= 0:
            raise ValueError(
                f"expected positive in_channels and num_classes, got {in_channels} and {num_classes}"
            )
        self.in_channels, self.num_classes, self.temporal = int(in_channels), int(num_classes), bool(temporal)
        self.encoder = UNetEncoder(self.in_channels + 1, widths, depths)
        widths, depths = self.encoder.widths, self.encoder.depths
        self.lateral = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1)
        )
        self.up = nn.ModuleList(_blocks(widths[i], depths[i]) for i in range(len(widths) - 1))
        self.head = nn.Conv2d(widths[0], self.num_classes, 1)
        self.day_of_year = bool(day_of_year)
        self.doy = (
            nn.ModuleList(zero_init(nn.Linear(DOY_FEATURES, w)) for w in widths) if self.day_of_year else None
        )

    def _check(self, x: torch.Tensor) -> None:
        want = 5 if self.temporal else 4
        if x.dim() != want or x.shape[-3] != self.in_channels:
            shape = "(B, T, C, H, W)" if self.temporal else "(B, C, H, W)"
            raise ValueError(f"expected x of shape {shape} with C={self.in_channels}, got {tuple(x.shape)}")

    def _doy_biases(self, doy: torch.Tensor | None, x: torch.Tensor) -> list[torch.Tensor] | None:
        if not self.day_of_year:
            return None
        lead = tuple(x.shape[:-3])
        if doy is None or tuple(doy.shape) != lead:
            got = None if doy is None else tuple(doy.shape)
            raise ValueError(
                f"this network takes the day of the year: expected doy of shape {lead} (one per image"
                f"{' and date' if self.temporal else ''}), got {got}"
            )
        f = doy_features(doy.reshape(-1), x.dtype)
        assert self.doy is not None  # day_of_year nets have them (checked by the caller)
        return [lin(f)[:, :, None, None] for lin in self.doy]

    def bottom_up(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """Bottom-up features ``{factor: (B, C_f, H/f, W/f)}`` (temporal: ``(B, T, C_f, H/f, W/f)``, per date)."""
        self._check(x)
        inp = masked_input(x, valid)
        biases = self._doy_biases(doy, x)
        if not self.temporal:
            return self.encoder(inp, biases)
        B, T = x.shape[:2]
        feats = self.encoder(inp.flatten(0, 1), biases)
        return {f: v.unflatten(0, (B, T)) for f, v in feats.items()}

    def top_down(self, features: dict[int, torch.Tensor], valid: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(B, K, H, W)`` from bottom-up features (pooled over dates when temporal)."""
        if self.temporal:
            features = {f: valid_weighted_pool(v, valid) for f, v in features.items()}
        factors = self.encoder.factors
        h = features[factors[-1]]
        for i in range(len(factors) - 2, -1, -1):
            skip = features[factors[i]]
            h = self.lateral[i](F.interpolate(h, size=skip.shape[-2:], mode="nearest")) + skip
            h = self.up[i](h)
        return self.head(h).float()  # float32 logits under bf16 autocast too (hvaeseg.nets.precision)

    def forward_features(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``(logits (B, K, H, W), bottom-up features)``: one pass for the ladder guide."""
        feats = self.bottom_up(x, valid, doy)
        return self.top_down(feats, valid), feats

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.forward_features(x, valid, doy)[0]
