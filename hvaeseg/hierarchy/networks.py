"""The HVAE's networks as plain ``nn.Module`` s, built from a :class:`HierarchySpec`.

- :class:`Decoder` (theta): one :class:`~hvaeseg.nets.ConditionalConvNet` per latent layer and one for the
  image, the image scale and the optional class logits of the s prior. :meth:`Decoder.net_output` maps parent
  values to the raw prior parameters of a layer (:meth:`Decoder.x_params` turns the image's into ``(loc, scale)``).
- :class:`LadderEncoder` (phi): the :class:`~hvaeseg.nets.SegmentationUNet` (bottom-up features + q(s|x)),
  the head of q(l|x) and, per latent layer, a head whose output is *added* to the decoder's prior
  parameters (ladder / LVAE-style guide; the prior part is shared with the decoder).

The helpers that turn site values into network inputs (:func:`parent_input`) accept int64 indices
(one-hot internally; ``-1`` = void = zero vector) or one-hot floats (straight-through samples), so
relaxed gradients reach the decoder. Tensors may carry a date dim: ``(B, T, ...)``, and ``s`` is
``(B, 1, ...)`` in temporal models (shared by the dates, broadcast without copies).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hvaeseg.hierarchy.spec import GLOBAL_PARENTS, HierarchySpec
from hvaeseg.nets import ConditionalConvNet, SegmentationUNet, resize, valid_weighted_pool, zero_init

__all__ = ["Decoder", "LadderEncoder", "parent_input", "resize_any"]

#: lower bound of the scale of Gaussian latent layers
LATENT_MIN_SCALE = 1e-3


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def resize_any(x: torch.Tensor, size) -> torch.Tensor:
    """:func:`~hvaeseg.nets.resize` for ``(N, C, h, w)`` or ``(B, T, C, h, w)``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dim() == 5:
        return resize(x.flatten(0, 1), size).unflatten(0, x.shape[:2])
    return resize(x, size)


def one_hot_channels(value: torch.Tensor, num: int, dtype: torch.dtype, dim: int = -3) -> torch.Tensor:
    """int64 ``(..., h, w)`` -> float one-hot ``(..., num, h, w)`` (inserted at ``dim``); ``-1`` -> zeros."""
    shape = list(value.shape)
    shape.insert(len(shape) + dim + 1, num)
    index = value.clamp(min=0).unsqueeze(dim)
    src = (value >= 0).unsqueeze(dim).to(dtype)
    return torch.zeros(shape, dtype=dtype, device=value.device).scatter_(dim, index, src)


def parent_input(spec: HierarchySpec, name: str, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The network input of parent ``name`` from its site value.

    - ``s``: int64 ``(B[, 1], H, W)`` or one-hot float ``(B[, 1], H, W, K)`` -> ``(B[, 1], K, H, W)``;
    - ``l``: ``(B[, T], D)``, returned as float;
    - a categorical layer: int64 ``(B[, T], C, h, w)`` or one-hot ``(..., C, h, w, Kc)`` ->
      ``(B[, T], C * Kc, h, w)``; Bernoulli and Gaussian layers as they are.
    """
    if name == "s":
        if value.is_floating_point():
            return value.movedim(-1, -3)
        return one_hot_channels(value, spec.num_classes, dtype)
    if name == "l":
        return value if value.is_floating_point() else value.to(dtype)
    layer = spec.layer(name)
    if layer.family != "categorical":
        return value
    if value.is_floating_point():  # (..., C, h, w, Kc)
        onehot = value.movedim(-1, -3)  # (..., C, Kc, h, w)
    else:
        assert layer.categories is not None  # LatentLayerSpec checks it for categorical layers
        onehot = one_hot_channels(value, layer.categories, dtype, dim=-3)
    return onehot.flatten(-4, -3)


class Decoder(nn.Module):
    """The generative networks p(z_t | parents) and p(x | parents) of a hierarchy (theta)."""

    x_scale_offset: torch.Tensor  # a buffer (per-pixel scales), registered in __init__

    def __init__(self, spec: HierarchySpec):
        super().__init__()
        self.spec = spec
        net = spec.network
        self.nets = nn.ModuleDict()
        self.spatial_parents: dict[str, tuple[str, ...]] = {}
        self.global_parents: dict[str, tuple[str, ...]] = {}
        for layer in spec.layers:
            self._add(layer.name, layer.parents, layer.param_channels, net.decoder_width, net.decoder_depth)
        image = spec.image
        out = image.bands * (2 if image.scale == "pixel" else 1)
        self._add("x", image.parents, out + image.bands * image.cov_rank, net.decoder_width, net.decoder_depth)
        if spec.interpolates:  # a residual to the interpolation: start from it (the correction, and scale, zero)
            head = self.nets["x"].head
            assert isinstance(head, nn.Conv2d)  # ConditionalConvNet's output conv
            zero_init(head)
            if image.cov_rank:  # not the factors: F = 0 is a stationary point of the likelihood (its gradient is 0)
                nn.init.normal_(head.weight[out:], std=0.01)
        if image.scale == "band":
            init = _inverse_softplus(image.init_scale - image.min_scale)
            self.x_scale = nn.Parameter(torch.full((image.bands,), init))
        else:
            self.register_parameter("x_scale", None)
            # a zero net output gives init_scale at every pixel
            self.register_buffer("x_scale_offset", torch.tensor(_inverse_softplus(image.init_scale - image.min_scale)),
                                 persistent=False)
        if spec.s_prior == "categorical":
            self.s_logits = nn.Parameter(torch.zeros(spec.num_classes))
        else:
            self.register_parameter("s_logits", None)

    def _add(self, name, parents, out_channels, width, depth):
        spatial = [p for p in parents if p not in GLOBAL_PARENTS]  # maps (resized to the layer's resolution)
        glob = [p for p in parents if p in GLOBAL_PARENTS]  # vectors: l, doy (added as a per-map bias)
        self.spatial_parents[name] = tuple(spatial)
        self.global_parents[name] = tuple(glob)
        self.nets[name] = ConditionalConvNet(
            [self.spec.input_channels(p) for p in spatial],
            [self.spec.input_channels(p) for p in glob],
            width,
            depth,
            out_channels,
            interactions=self.spec.network.decoder_interactions,
            kernel=self.spec.network.decoder_kernel,
        )

    def net_output(self, name: str, inputs: dict[str, torch.Tensor], size) -> torch.Tensor:
        """Raw output of the net of ``name`` (a layer or ``"x"``) at spatial ``size`` ``(h, w)``.

        :param inputs: parent name -> network input (see :func:`parent_input`), at any resolution.
        """
        spatial = [resize_any(inputs[p], size) for p in self.spatial_parents[name]]
        glob = [inputs[p] for p in self.global_parents[name]]
        return self.nets[name](spatial, glob, size=size)

    def band_scales(self) -> torch.Tensor | None:
        """The image's learned per-band scale ``(C,)`` (None when it is predicted per pixel)."""
        if self.x_scale is None:
            return None
        return self.spec.image.min_scale + F.softplus(self.x_scale)

    def x_params(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loc, scale, factor)`` of p(x | parents) from the net output: loc unconstrained ``(..., C, H, W)``,
        scale positive (``(C, 1, 1)`` or ``(..., C, H, W)``), and the band covariance factor ``(..., C * r, H, W)``
        (None when the image's ``cov_rank`` is 0)."""
        image = self.spec.image
        factor = None
        if image.cov_rank:
            out, factor = out.split([out.shape[-3] - image.bands * image.cov_rank, image.bands * image.cov_rank],
                                    dim=-3)
        scale = self.band_scales()
        if scale is not None:
            return out, scale[:, None, None], factor
        loc, raw = out.chunk(2, dim=-3)
        return loc, image.min_scale + F.softplus(raw + self.x_scale_offset), factor


class LadderEncoder(nn.Module):
    """The guide's networks (phi): U-Net (q(s|x) and bottom-up features), q(l|x) head, ladder heads."""

    def __init__(self, spec: HierarchySpec):
        super().__init__()
        self.spec = spec
        net = spec.network
        self.unet = SegmentationUNet(
            spec.image.bands, spec.num_classes, net.encoder_widths, net.encoder_depths, temporal=spec.temporal,
            day_of_year=spec.day_of_year,
        )
        self.l_head = nn.Linear(net.encoder_widths[-1], spec.code_bits)
        level = {f: i for i, f in enumerate(net.factors)}
        # zero-initialised: the guide starts equal to the prior for every latent layer
        self.heads = nn.ModuleDict(
            {
                layer.name: zero_init(
                    nn.Conv2d(net.encoder_widths[level[layer.resolution]], layer.param_channels, 3, padding=1)
                )
                for layer in spec.layers
            }
        )

    def l_logits(self, features: dict[int, torch.Tensor], valid: torch.Tensor | None) -> torch.Tensor:
        """q(l|x) logits ``(B[, T], D)`` from the coarsest features, averaged over valid pixels (per date)."""
        f = features[self.spec.network.factors[-1]]  # (B[, T], C, h, w)
        if valid is None:
            pooled = f.mean((-2, -1))
        else:
            flat = valid.reshape(-1, 1, *valid.shape[-2:]).to(f.dtype)
            w = resize(flat, f.shape[-2:]).reshape(*f.shape[:-3], 1, *f.shape[-2:])
            pooled = (w * f).sum((-2, -1)) / w.sum((-2, -1)).clamp(min=1e-6)
        return self.l_head(pooled).float()  # float32 under bf16 autocast too

    def head(
        self,
        name: str,
        features: dict[int, torch.Tensor],
        valid: torch.Tensor | None = None,
        shared: bool = False,
    ) -> torch.Tensor:
        """Encoder part of q(z_t | z_<t, x) for layer ``name``: ``(B[, T], P, h, w)``; for a layer shared by
        the dates (``shared``) the per-date features are first pooled over the dates weighted by their valid
        fraction (:func:`~hvaeseg.nets.valid_weighted_pool`: cloudy dates contribute nothing), giving
        ``(B, 1, P, h, w)``."""
        f = features[self.spec.layer(name).resolution]
        if shared and f.dim() == 5:
            out = self.heads[name](valid_weighted_pool(f, valid)).unsqueeze(1)
        elif f.dim() == 5:
            out = self.heads[name](f.flatten(0, 1)).unflatten(0, f.shape[:2])
        else:
            out = self.heads[name](f)
        return out.float()  # float32 under bf16 autocast too (hvaeseg.nets.precision)
