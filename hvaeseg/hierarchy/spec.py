"""``HierarchySpec``: the HVAE's latent hierarchy declared as validated, serialisable dataclasses.

A hierarchy is ``z0 = (s, l)``, latent layers ``z1 .. z(m-1)`` and the image ``x``:

.. code-block:: yaml

    num_classes: 6          # K: classes of the segmentation s
    code_bits: 8            # D: bits of the global code l ~ Bernoulli(1/2)^D
    s_prior: empirical      # or "categorical" (learned class logits, needed by the ELBO)
    temporal: false         # inputs are stacks (B, T, C, H, W)
    layers:
      - {name: z1, family: bernoulli, channels: 8, resolution: 4, parents: [s, l]}
      - {name: z2, family: bernoulli, channels: 8, resolution: 2, parents: [s, l, z1, doy]}
    image: {bands: 10, parents: [s, l, z2, doy]}
    network: {encoder_widths: [32, 48, 64], encoder_depths: [1, 1, 1], decoder_width: 32, decoder_depth: 1}

Besides ``s``, ``l`` and the latent layers, a parent may be the observed covariate ``doy``: the day of the
year of the image's date (phenology), given to the model and guide as ``doy=`` (``(B,)``, temporal ``(B, T)``).
A hierarchy that uses it conditions those layers on the date, and its guide's U-Net takes the date too.

In temporal hierarchies the image may also list the observed covariate ``interp``: each date's pixels linearly
interpolated in time from the stack's *other* clear dates (leave-one-out; :mod:`hvaeseg.hierarchy.interpolation`),
with the day gaps to them. The decoder takes it as a map and predicts the *correction* to it (the interpolated
bands are added to the mean of ``x``), so a pixel's own trajectory between its clear dates reaches the fill. It is
computed from the observed stack (or, to generate, from ``interp_from=(x, valid)`` of a real one) and needs ``doy``.
With ``image.transfer`` (a :class:`TransferSpec`) the covariate also borrows space: each date's interpolation is
corrected by its residual at nearby clear pixels of the same date whose other dates look alike (pixels of one field),
so a cloud's fill follows its field on the cloudy date.

Every spec is checked on construction; each error names the layer and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hvaeseg._dataclass_io import from_dict

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "FAMILIES",
    "IMAGE_SCALES",
    "RESERVED_NAMES",
    "COVARIATES",
    "MAP_COVARIATES",
    "S_PRIORS",
    "HierarchySpec",
    "ImageLayerSpec",
    "LatentLayerSpec",
    "NetworkSpec",
    "TransferSpec",
]

FAMILIES = ("bernoulli", "categorical", "gaussian")
S_PRIORS = ("empirical", "categorical")
IMAGE_SCALES = ("band", "pixel")
#: site names of the built-in variables: the segmentation s, the global code l and the image x
RESERVED_NAMES = ("s", "l", "x", "doy", "interp")
_TOP = ("s", "l")
#: observed covariates a layer or the image may list among its parents (vectors per image and date)
COVARIATES = ("doy",)
#: observed covariate maps the image of a temporal hierarchy may list among its parents
MAP_COVARIATES = ("interp",)
#: parents that enter a decoder net as a vector (a per-map bias), not as a map
GLOBAL_PARENTS = ("l",) + COVARIATES
_OPTIONAL = ("categories", "patch_size", "transfer")  # left out of to_dict() when None


def _positive_int(value: Any, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}: {fix}")
    return value


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list of names, got {value!r}")
    for v in value:
        if not isinstance(v, str):
            raise TypeError(f"{what} must be a list of names, got {value!r}")
    return tuple(value)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list of integers, got {value!r}")
    out = tuple(value)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{what} must be a list of integers, got {value!r}")
    return out


@dataclass(frozen=True)
class LatentLayerSpec:
    """One latent layer z_t: a ``(channels, H / resolution, W / resolution)`` map.

    :param name: site name (a Python identifier; not ``s``, ``l`` or ``x``).
    :param family: ``"bernoulli"`` (binary maps), ``"categorical"`` (``channels`` maps of ``categories``
        classes each; values are int64 indices) or ``"gaussian"`` (reparameterised).
    :param channels: number of maps.
    :param resolution: down-scaling factor with respect to the image; must be one of the encoder's
        levels (``1, 2, 4, ...`` up to ``2**(len(encoder_widths) - 1)``).
    :param parents: names among ``s``, ``l``, ``doy`` and the other layers (any acyclic graph).
    :param categories: categorical layers only: classes per map (at least 2).
    :param shared: in temporal hierarchies, one value per pixel shared by every date of a stack (outside the
        time plate, like ``s``): what makes this field or this tree differ from its class, whatever the date.
        Its parents must be shared too (``s`` or other shared layers); per-date layers and the image may list it
        as a parent, so the posterior of an occluded pixel on one date uses the same pixel's clear dates. In
        single-date hierarchies it is an ordinary layer.
    """

    name: str
    family: str = "bernoulli"
    channels: int = 8
    resolution: int = 1
    parents: tuple[str, ...] = _TOP
    categories: int | None = None
    shared: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(
                f"layer name {self.name!r} is not a valid name: use letters, digits and underscores "
                "(e.g. 'z1')"
            )
        where = f"layer {self.name!r}"
        if self.name in RESERVED_NAMES:
            raise ValueError(
                f"{where}: the name is reserved (s, l, x are the built-in sites, doy and interp observed covariates): "
                "rename "
                "the layer, e.g. 'z1'"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"{where}: unknown family {self.family!r}: choose one of {', '.join(FAMILIES)}")
        _positive_int(self.channels, f"{where}: channels", "give the number of maps, e.g. 8")
        _positive_int(self.resolution, f"{where}: resolution", "give a down-scaling factor such as 1, 2 or 4")
        object.__setattr__(self, "parents", _str_tuple(self.parents, f"{where}: parents"))
        if not self.parents:
            raise ValueError(f"{where}: no parents: give at least one of 's', 'l' or another layer")
        if len(set(self.parents)) != len(self.parents):
            raise ValueError(f"{where}: parents {list(self.parents)} repeat a name: list each parent once")
        if self.name in self.parents:
            raise ValueError(
                f"{where}: lists itself as a parent, which is a cycle: remove {self.name!r} from its parents"
            )
        if not isinstance(self.shared, bool):
            raise ValueError(f"{where}: shared must be true or false, got {self.shared!r}")
        if self.family == "categorical":
            k = self.categories
            if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 2:
                raise ValueError(
                    f"{where}: a categorical layer needs categories >= 2, got {self.categories!r}: "
                    "set e.g. categories: 4"
                )
        elif self.categories is not None:
            raise ValueError(
                f"{where}: categories is only for family 'categorical', got categories={self.categories!r} "
                f"with family {self.family!r}: remove it"
            )

    @property
    def input_channels(self) -> int:
        """Channels this layer contributes as a parent (one-hot for categorical layers)."""
        return self.channels * (self.categories or 1)

    @property
    def param_channels(self) -> int:
        """Channels of the decoder's output for this layer (logits, or loc and scale)."""
        if self.family == "gaussian":
            return 2 * self.channels
        return self.input_channels


@dataclass(frozen=True)
class TransferSpec:
    """Spatial borrowing for the ``interp`` covariate (:func:`hvaeseg.hierarchy.interpolation.residual_transfer`):
    the residual of a date's interpolation at nearby clear pixels whose other dates look alike.

    :param radius: the farthest offset, in pixels, at which a clear pixel may lend its residual (> 0).
    :param stride: the spacing of the offsets tried (1: every pixel of the ``(2 radius + 1)^2`` window; 2: every
        other row and column, a quarter of the cost).
    :param bandwidth: ``h`` of the similarity weight ``exp(-d / h^2)``, ``d`` the mean squared difference of the
        two pixels' values on the dates both are clear (normalised units, as the model's inputs).
    :param clear_radius: with ``r > 0``, one more channel: the fraction of clear pixels of the same date in the
        ``(2 r + 1)^2`` window around each pixel, the pixel itself left out (pixels outside the image are not
        clear). It tells a pixel deep inside a cloud, whose field may show nowhere on that date, from one at its
        edge, so that a per-pixel scale (``image.scale: pixel``) can widen where borrowing is blind. 0: off.
    :param seen: one more channel, the pixel's own visibility on the date (1: its value is observed, and in
        training seen by the guide; 0: hidden, by a cloud or by ``wake_holdout``). Not its value, only whether it
        is filled blind, and it reaches the spread only: the mean is computed with the channel at 0 (the image
        net runs twice), so filled pixels get their own spread, learnt on the ``wake_holdout`` pixels, and the
        mean every pixel's. Needs a spread the net predicts (``image.scale: pixel`` or ``cov_rank > 0``).
        Off by default (bench/results/inpaint/transfer/).
    """

    radius: int = 16
    stride: int = 2
    bandwidth: float = 0.2
    clear_radius: int = 0
    seen: bool = False

    def __post_init__(self) -> None:
        _positive_int(self.radius, "image: transfer radius", "e.g. 16 (pixels)")
        _positive_int(self.stride, "image: transfer stride", "e.g. 2 (pixels)")
        c = self.clear_radius
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"image: transfer clear_radius: expected an int >= 0 (pixels; 0: off), got {c!r}: e.g. 4")
        if not isinstance(self.seen, bool):
            raise ValueError(f"image: transfer seen: expected true or false, got {self.seen!r}")
        if self.stride > self.radius:
            raise ValueError(
                f"image: transfer stride {self.stride} exceeds radius {self.radius}, so no offset is tried: "
                "use stride <= radius"
            )
        h = self.bandwidth
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
            raise ValueError(
                f"image: transfer bandwidth: expected a positive number (normalised units), got {h!r}: e.g. 0.2"
            )
        object.__setattr__(self, "bandwidth", float(h))

    @property
    def channels(self) -> int:
        """Channels it adds to the ``interp`` covariate: the summed weight, the clear fraction (``clear_radius``)
        and the visibility (``seen``)."""
        return 1 + (self.clear_radius > 0) + self.seen



@dataclass(frozen=True)
class ImageLayerSpec:
    """The image x: Gaussian per band with a learned scale, observed where ``valid``.

    :param bands: C.
    :param parents: names among ``s``, ``l`` and the latent layers.
    :param scale: ``"band"`` (one learned scale per band) or ``"pixel"`` (predicted per pixel).
    :param min_scale: lower bound of the scale (``scale = min_scale + softplus(raw)``).
    :param init_scale: the scale at initialisation (``"band"``: every band; ``"pixel"``: the output with a
        zero network). Inputs are normalised to unit variance per band, so the default 0.25 says "the
        parents will explain most of the variance"; starting at 1 left the scale near 0.9 for hundreds of
        steps (its optimum is about 0.27 on the synthetic cube), so generated images were mostly noise.
    :param cov_rank: rank of each pixel's covariance between bands beyond the diagonal scale: 0 (default)
        makes the bands of a pixel independent given the parents; ``r > 0`` adds ``r`` factors per band
        predicted by the decoder (:class:`~hvaeseg.distributions.BandCorrelatedNormal`), so that a class's
        pixels may vary together across bands (brightness, greenness), as real land cover does.
    :param interp_dropout: with ``interp`` among the parents: the probability that, in training, a date's
        covariate is hidden (as if no other date were clear), so that the decoder also learns to generate from
        the latents alone, as the sleep images of symmetric learning are generated. In ``[0, 1)``.
    :param transfer: with ``interp`` among the parents: a :class:`TransferSpec` adds to the interpolation the
        residual borrowed from similar clear pixels of the same date (and a channel of its weight), so a cloud's
        fill also follows its field on that date; None (default): the interpolation alone.
    """

    bands: int
    parents: tuple[str, ...] = _TOP
    scale: str = "band"
    min_scale: float = 1e-3
    init_scale: float = 0.25
    interp_dropout: float = 0.25
    cov_rank: int = 0
    transfer: TransferSpec | None = None

    def __post_init__(self):
        _positive_int(self.bands, "image: bands", "give the number of spectral bands, e.g. 10")
        object.__setattr__(self, "parents", _str_tuple(self.parents, "image: parents"))
        if not self.parents:
            raise ValueError("image: no parents: give at least one of 's', 'l' or a latent layer")
        if len(set(self.parents)) != len(self.parents):
            raise ValueError(f"image: parents {list(self.parents)} repeat a name: list each parent once")
        if self.scale not in IMAGE_SCALES:
            raise ValueError(f"image: unknown scale {self.scale!r}: choose one of {', '.join(IMAGE_SCALES)}")
        if isinstance(self.min_scale, bool) or not isinstance(self.min_scale, (int, float)) or not self.min_scale > 0:
            raise ValueError(f"image: min_scale must be a positive number, got {self.min_scale!r}: e.g. 0.001")
        object.__setattr__(self, "min_scale", float(self.min_scale))
        if (isinstance(self.init_scale, bool) or not isinstance(self.init_scale, (int, float))
                or not self.init_scale > self.min_scale):
            raise ValueError(
                f"image: init_scale must be a number above min_scale ({self.min_scale}), got {self.init_scale!r}: "
                "e.g. 0.25 (inputs are normalised to unit variance)"
            )
        object.__setattr__(self, "init_scale", float(self.init_scale))
        p = self.interp_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"image: interp_dropout must be a probability in [0, 1), got {p!r}: e.g. 0.25")
        object.__setattr__(self, "interp_dropout", float(p))
        r = self.cov_rank
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < self.bands:
            raise ValueError(f"image: cov_rank must be an integer in [0, bands = {self.bands}), got {r!r}: e.g. 2 "
                             "(0: independent bands)")
        if self.transfer is not None:
            object.__setattr__(self, "transfer", from_dict(TransferSpec, self.transfer, "image: transfer"))
            if "interp" not in self.parents:
                raise ValueError("image: transfer borrows the residual of the interp covariate, which the image does "
                                 "not take: add 'interp' to its parents, or remove transfer")
            if self.transfer.seen and self.scale == "band" and not self.cov_rank:
                raise ValueError("image: transfer seen reaches only the spread, and a band scale takes no input: "
                                 "set image scale: pixel (or cov_rank > 0), or seen: false")


@dataclass(frozen=True)
class NetworkSpec:
    """Network sizes.

    :param encoder_widths: channels of the guide's U-Net per level, finest first; level ``i`` is at
        down-scaling factor ``2**i``.
    :param encoder_depths: residual blocks per U-Net level.
    :param decoder_width: channels of every decoder net between layers.
    :param decoder_depth: residual blocks of every decoder net.
    :param decoder_interactions: every decoder net with both spatial and global parents (``doy``, ``l``) also
        projects their products (:class:`~hvaeseg.nets.ConditionalConvNet`), so that a class's spectrum can
        follow the day of the year (default: the global parents only shift each map).
    """

    encoder_widths: tuple[int, ...] = (32, 48, 64)
    encoder_depths: tuple[int, ...] = (1, 1, 1)
    decoder_width: int = 32
    decoder_depth: int = 1
    decoder_interactions: bool = False
    decoder_kernel: int = 3

    def __post_init__(self):
        widths = _int_tuple(self.encoder_widths, "network: encoder_widths")
        depths = _int_tuple(self.encoder_depths, "network: encoder_depths")
        object.__setattr__(self, "encoder_widths", widths)
        object.__setattr__(self, "encoder_depths", depths)
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(
                f"network: encoder_widths must be positive integers, got {list(widths)}: e.g. [32, 48, 64]"
            )
        if len(depths) != len(widths) or any(d < 0 for d in depths):
            raise ValueError(
                f"network: encoder_depths must give one non-negative depth per encoder level "
                f"({len(widths)}), got {list(depths)}"
            )
        _positive_int(self.decoder_width, "network: decoder_width", "e.g. 32")
        if isinstance(self.decoder_depth, bool) or not isinstance(self.decoder_depth, int) or self.decoder_depth < 0:
            raise ValueError(f"network: decoder_depth must be a non-negative integer, got {self.decoder_depth!r}")
        if not isinstance(self.decoder_interactions, bool):
            raise ValueError(f"network: decoder_interactions must be true or false, got {self.decoder_interactions!r}")
        if isinstance(self.decoder_kernel, bool) or self.decoder_kernel not in (1, 3):
            raise ValueError(f"network: decoder_kernel must be 1 or 3, got {self.decoder_kernel!r}")

    @property
    def factors(self) -> tuple[int, ...]:
        """Down-scaling factors of the encoder levels: ``(1, 2, 4, ...)``."""
        return tuple(2**i for i in range(len(self.encoder_widths)))


@dataclass(frozen=True)
class HierarchySpec:
    """The whole hierarchy: ``z0 = (s, l)``, latent layers, image, networks.

    :param num_classes: K, classes of the segmentation ``s``.
    :param code_bits: D, bits of the global code ``l``.
    :param layers: latent layers (any order; sampled in a topological order of the parent graph that
        keeps the listed order where it is free).
    :param image: the image layer.
    :param s_prior: ``"empirical"`` (no density; ``s`` is observed or comes from a label pool) or
        ``"categorical"`` (factorised, learned class logits; closed form, needed by the ELBO).
    :param temporal: inputs are stacks ``(B, T, C, H, W)``: ``s`` is shared by the dates, ``l``, the
        layers and ``x`` are per date.
    :param network: network sizes.
    :param patch_size: optional patch side; when given, every resolution must divide it (otherwise
        this is checked when the model is called).
    """

    num_classes: int
    code_bits: int
    layers: tuple[LatentLayerSpec, ...]
    image: ImageLayerSpec
    s_prior: str = "empirical"
    temporal: bool = False
    network: NetworkSpec = field(default_factory=NetworkSpec)
    patch_size: int | None = None

    def __post_init__(self):
        _positive_int(self.num_classes, "num_classes", "give K, the number of classes of s")
        _positive_int(self.code_bits, "code_bits", "give D, the number of bits of the global code l, e.g. 8")
        if self.s_prior not in S_PRIORS:
            raise ValueError(f"s_prior: unknown prior {self.s_prior!r}: choose one of {', '.join(S_PRIORS)}")
        if not isinstance(self.temporal, bool):
            raise TypeError(f"temporal must be true or false, got {self.temporal!r}")
        if isinstance(self.layers, (str, dict)) or not isinstance(self.layers, (list, tuple)):
            raise TypeError(f"layers must be a list of layers, got {type(self.layers).__name__}")
        layers = tuple(from_dict(LatentLayerSpec, v, f"layers[{i}]") for i, v in enumerate(self.layers))
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "image", from_dict(ImageLayerSpec, self.image, "image"))
        object.__setattr__(self, "network", from_dict(NetworkSpec, self.network, "network"))
        if self.patch_size is not None:
            _positive_int(self.patch_size, "patch_size", "give the patch side in pixels, or leave it out")

        seen: set[str] = set()
        for layer in layers:
            if layer.name in seen:
                raise ValueError(f"duplicate layer name {layer.name!r}: give each latent layer its own name")
            seen.add(layer.name)
        for layer in layers:
            if "interp" in layer.parents:
                raise ValueError(
                    f"layer {layer.name!r}: only the image may take the covariate 'interp' (the interpolation of x "
                    "from the other dates): remove it from this layer's parents"
                )
        known = set(_TOP) | set(COVARIATES) | seen
        names = ", ".join(["s", "l"] + [layer.name for layer in layers] + list(COVARIATES))
        for layer in layers:
            for p in layer.parents:
                if p not in known:
                    raise ValueError(
                        f"layer {layer.name!r}: unknown parent {p!r}: parents must be among {names}"
                    )
        for p in self.image.parents:
            if p not in known | set(MAP_COVARIATES):
                raise ValueError(f"image: unknown parent {p!r}: parents must be among {names}, interp")
        if "interp" in self.image.parents and not self.temporal:
            raise ValueError(
                "image: the parent 'interp' interpolates x from the other dates of a stack, which needs "
                "temporal: true: set it, or remove 'interp'"
            )
        shared = {"s"} | {layer.name for layer in layers if layer.shared}
        for layer in layers:
            per_date = [p for p in layer.parents if p not in shared]
            if layer.shared and per_date:
                raise ValueError(
                    f"layer {layer.name!r} is shared by the dates of a stack, so its parents must be too (s or "
                    f"other shared layers), got {', '.join(map(repr, per_date))}: remove them or set shared: false"
                )

        factors = self.network.factors
        for layer in layers:
            if layer.resolution not in factors:
                raise ValueError(
                    f"layer {layer.name!r}: resolution {layer.resolution} has no encoder features "
                    f"(the encoder levels are at factors {', '.join(map(str, factors))}): choose one of "
                    "those, or add levels to network.encoder_widths"
                )
        if self.patch_size is not None:
            for f in (factors[-1],) + tuple(layer.resolution for layer in layers):
                if self.patch_size % f:
                    who = next((f"layer {la.name!r}" for la in layers if la.resolution == f), "the encoder")
                    raise ValueError(
                        f"{who}: resolution {f} does not divide the patch size {self.patch_size}: "
                        f"use a patch size that is a multiple of {f}, or a smaller resolution"
                    )
        object.__setattr__(self, "_by_name", {layer.name: layer for layer in layers})
        object.__setattr__(self, "_order", self._topological_order())
        used = {p for layer in layers for p in layer.parents} | set(self.image.parents)
        unused = [layer.name for layer in layers if layer.name not in used]
        if unused:
            warnings.warn(
                f"latent layer(s) {', '.join(map(repr, unused))} are parents of nothing, so they do not "
                "influence x: add them to the parents of a layer or of the image",
                stacklevel=3,
            )

    # derived, not fields (__post_init__ fills both, so that a cycle in the parent graph raises there)
    @functools.cached_property
    def _by_name(self) -> dict[str, LatentLayerSpec]:
        return {layer.name: layer for layer in self.layers}

    @functools.cached_property
    def _order(self) -> tuple[str, ...]:
        return self._topological_order()

    def _topological_order(self) -> tuple[str, ...]:
        by_name = {layer.name: layer for layer in self.layers}
        done: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = path[path.index(name):] + [name]
                raise ValueError(
                    f"layer {name!r}: the parents form a cycle {' -> '.join(map(repr, cycle))}: "
                    "remove one of these parent links"
                )
            state[name] = 1
            for p in by_name[name].parents:
                if p in by_name:
                    visit(p, path + [name])
            state[name] = 2
            done.append(name)

        for layer in self.layers:
            visit(layer.name, [])
        return tuple(done)

    # ----------------------------------------------------------------------------------------- queries
    @property
    def order(self) -> tuple[str, ...]:
        """Latent layer names in sampling (topological) order."""
        return self._order

    @property
    def shared_order(self) -> tuple[str, ...]:
        """Temporal hierarchies: the layers shared by the dates (sampled with ``s``, before the per-date
        ones), in sampling order; empty for single-date hierarchies."""
        if not self.temporal:
            return ()
        return tuple(n for n in self._order if self._by_name[n].shared)

    @property
    def per_date_order(self) -> tuple[str, ...]:
        """The layers sampled per date (all of them in single-date hierarchies), in sampling order."""
        shared = set(self.shared_order)
        return tuple(n for n in self._order if n not in shared)

    def layer(self, name: str) -> LatentLayerSpec:
        """The layer called ``name``."""
        layer = self._by_name.get(name)
        if layer is not None:
            return layer
        raise KeyError(f"no latent layer {name!r}; layers: {', '.join(la.name for la in self.layers)}")

    @property
    def site_names(self) -> tuple[str, ...]:
        """Sample sites of the model, in order: ``("s", "l", *order, "x")``."""
        return ("s", "l") + self.order + ("x",)

    def input_channels(self, name: str) -> int:
        """Channels that the parent ``name`` feeds to a decoder net (``s``: K one-hot, ``l``: D bits,
        ``doy``: its Fourier features)."""
        if name == "s":
            return self.num_classes
        if name == "l":
            return self.code_bits
        if name == "doy":
            from hvaeseg.nets.covariates import DOY_FEATURES

            return DOY_FEATURES
        if name == "interp":
            from hvaeseg.hierarchy.interpolation import interp_channels

            return interp_channels(self.image.bands, self.image.transfer)
        return self.layer(name).input_channels

    @property
    def day_of_year(self) -> bool:
        """Whether a layer or the image is conditioned on the day of the year (``doy`` among its parents): then
        the model and guide need ``doy=``."""
        return "doy" in self.image.parents or any("doy" in layer.parents for layer in self.layers)

    @property
    def interpolates(self) -> bool:
        """Whether the image takes the ``interp`` covariate (then the model needs ``doy=`` for the day gaps)."""
        return "interp" in self.image.parents

    @property
    def exact_s_problem(self) -> str | None:
        """Why the posterior of ``s`` given an image is not exact in this hierarchy (None when it is).

        It is exact when the image depends on ``s`` pixel by pixel and on nothing latent besides: no latent
        layers, the image's parents among ``s``, ``doy`` and ``interp``, a categorical s prior, and 1x1 decoder
        convolutions. Then ``p(s | x)`` factorises over the pixels, each ``p(s_i = k | x) ~ pi_k p(x_i | s_i = k)``
        with its K classes enumerated (:meth:`hvaeseg.HVAE.class_log_likelihood`)."""
        if self.layers:
            return f"it has latent layers ({', '.join(self.order)}) between s and the image: remove them"
        extra = [p for p in self.image.parents if p not in ("s",) + COVARIATES + MAP_COVARIATES]
        if extra or "s" not in self.image.parents:
            return f"the image's parents are {list(self.image.parents)}: give it s, with doy / interp at most"
        if self.s_prior != "categorical":
            return f"its s prior is {self.s_prior!r}, which has no density: set s_prior: categorical"
        if self.network.decoder_kernel != 1:
            return "its decoder convolutions are 3x3, so a pixel's image depends on its neighbours' classes: set " \
                   "network: decoder_kernel: 1"
        return None

    @property
    def exact_s(self) -> bool:
        """Whether the posterior of ``s`` is exact and factorised over pixels (see :attr:`exact_s_problem`)."""
        return self.exact_s_problem is None

    @property
    def needs_doy(self) -> bool:
        """Whether the model must be given ``doy=``: it conditions on it, or it interpolates between dates."""
        return self.day_of_year or self.interpolates

    def check_patch(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when an image of ``height x width`` does not fit this hierarchy."""
        for f in (self.network.factors[-1],) + tuple(layer.resolution for layer in self.layers):
            if height % f or width % f:
                who = next((f"layer {la.name!r}" for la in self.layers if la.resolution == f), "the encoder")
                raise ValueError(
                    f"{who}: resolution {f} does not divide the patch size {height}x{width}: "
                    f"use patches whose sides are multiples of {f}"
                )

    def draw(self, ax: Axes | None = None, *, fontsize: float = 8.0) -> Axes:
        """A picture of this hierarchy (matplotlib only): one box per variable (name, family, channels,
        resolution), one arrow per parent link, top to bottom by depth; layers shared by the dates and the
        observed ``doy`` are drawn apart. See :func:`hvaeseg.hierarchy.draw.draw_spec`.

        :param ax: a :class:`matplotlib.axes.Axes` to draw on (default: a new figure sized to the graph).
        :param fontsize: of the box labels.
        :returns: the :class:`matplotlib.axes.Axes` drawn on (``ax.figure.savefig("spec.png")``).
        """
        from hvaeseg.hierarchy.draw import draw_spec

        return draw_spec(self, ax, fontsize=fontsize)

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def default(
        cls,
        num_classes: int,
        bands: int,
        code_bits: int = 8,
        *,
        channels: int = 8,
        s_prior: str = "empirical",
        temporal: bool = False,
        encoder_widths: tuple[int, ...] = (32, 48, 64),
        decoder_width: int = 32,
        patch_size: int | None = None,
        day_of_year: bool = False,
        init_scale: float = 0.25,
        image_scale: str = "band",
        shared_channels: int = 0,
        interpolation: bool = False,
        image_cov_rank: int = 0,
        decoder_interactions: bool = False,
    ) -> HierarchySpec:
        """The default hierarchy: s, l -> z1 (Bernoulli, 1/4 resolution) -> z2 (Bernoulli, 1/2) -> x.

        ``z1`` has parents ``(s, l)``, ``z2`` has ``(s, l, z1)`` and ``x`` has ``(s, l, z2)``, each plus
        ``doy`` with ``day_of_year``; about 0.3 M parameters for 10 bands and 6 classes (small enough to
        train on a CPU). A temporal hierarchy with ``shared_channels > 0`` adds ``u``: a Gaussian map of that
        many channels at full resolution, shared by the dates (parent ``s``), as a parent of ``x``: each
        pixel's own departure from its class, the same on every date. A temporal hierarchy with ``interpolation``
        gives the image the ``interp`` covariate (module doc): x's mean is the interpolation from the stack's other
        dates plus the decoder's correction. ``image_cov_rank`` is the image's ``cov_rank`` (:class:`ImageLayerSpec`),
        ``decoder_interactions`` the network's (:class:`NetworkSpec`).
        """
        if interpolation and not temporal:
            raise ValueError("interpolation: the interp covariate needs a temporal hierarchy (temporal=True)")
        widths = tuple(encoder_widths)
        doy = ("doy",) if day_of_year else ()
        shared: tuple[LatentLayerSpec, ...] = ()
        if temporal and shared_channels > 0:
            shared = (LatentLayerSpec("u", "gaussian", shared_channels, 1, ("s",), shared=True),)
        return cls(
            num_classes=num_classes,
            code_bits=code_bits,
            layers=shared + (
                LatentLayerSpec("z1", "bernoulli", channels, 4, ("s", "l") + doy),
                LatentLayerSpec("z2", "bernoulli", channels, 2, ("s", "l", "z1") + doy),
            ),
            image=ImageLayerSpec(bands=bands, parents=("s", "l", "z2") + doy + tuple(la.name for la in shared)
                                 + (("interp",) if interpolation else ()),
                                 scale=image_scale, init_scale=init_scale, cov_rank=image_cov_rank),
            s_prior=s_prior,
            temporal=temporal,
            network=NetworkSpec(widths, (1,) * len(widths), decoder_width, 1, decoder_interactions),
            patch_size=patch_size,
        )

    @classmethod
    def pixel_mixture(
        cls,
        num_classes: int,
        bands: int,
        code_bits: int = 8,
        *,
        cov_rank: int = 2,
        image_scale: str = "pixel",
        init_scale: float = 1.0,
        temporal: bool = False,
        encoder_widths: tuple[int, ...] = (32, 48, 64),
        decoder_width: int = 32,
        patch_size: int | None = None,
        day_of_year: bool = True,
        interpolation: bool = False,
        decoder_interactions: bool = True,
    ) -> HierarchySpec:
        """A per-pixel mixture: ``s (, doy, interp) -> x``, no latent layer, 1x1 decoder nets, categorical s prior.

        Each pixel's bands are Gaussian given its class (and the day of the year: with ``decoder_interactions``
        the class spectra follow it), with a rank-``cov_rank`` covariance between bands; with ``image_scale =
        "pixel"`` the diagonal is the class's own. The posterior of ``s`` is exact (:attr:`exact_s`), so both
        objectives can use it (``HVAEConfig.exact_s``); the guide's U-Net still sees the whole patch. The image
        starts broad (``init_scale`` 1 in normalised units): a class that no label holds then starts as a wide
        component, as EM's mixtures do. ``examples/specs/pixel_mixture.yaml`` is its YAML form.
        """
        if interpolation and not temporal:
            raise ValueError("interpolation: the interp covariate needs a temporal hierarchy (temporal=True)")
        widths = tuple(encoder_widths)
        parents = ("s",) + (("doy",) if day_of_year else ()) + (("interp",) if interpolation else ())
        return cls(
            num_classes=num_classes,
            code_bits=code_bits,
            layers=(),
            image=ImageLayerSpec(bands=bands, parents=parents, scale=image_scale, init_scale=init_scale,
                                 cov_rank=cov_rank),
            s_prior="categorical",
            temporal=temporal,
            network=NetworkSpec(widths, (1,) * len(widths), decoder_width, 1, decoder_interactions, decoder_kernel=1),
            patch_size=patch_size,
        )

    # --------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, numbers and strings (the YAML/JSON form); unset optional fields are left out."""

        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if dataclasses.is_dataclass(v):
                return {
                    f.name: plain(getattr(v, f.name))
                    for f in dataclasses.fields(v)
                    if not (f.name in _OPTIONAL and getattr(v, f.name) is None)
                }
            return v

        return plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HierarchySpec:
        """Inverse of :meth:`to_dict`; unknown and missing fields are errors (:func:`hvaeseg._dataclass_io.from_dict`:
        the layers, the image and the network are read the same way, their errors naming them)."""
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> HierarchySpec:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str) -> HierarchySpec:
        return cls.from_dict(yaml.safe_load(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` as YAML (``.yaml``/``.yml``) or JSON (``.json``)."""
        path = Path(path)
        text = self.to_json() if path.suffix == ".json" else self.to_yaml()
        if path.suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"expected a .yaml, .yml or .json path, got {str(path)!r}")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HierarchySpec:
        """Read a spec written by :meth:`save` (or by hand) from a ``.yaml``/``.yml``/``.json`` file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no hierarchy spec at {str(path)!r}")
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)
