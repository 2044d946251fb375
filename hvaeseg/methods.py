"""The registry of training methods: ``--method NAME`` -> a :class:`~hvaeseg.method.Method`.

=============  ==========================================================  =============================
name           what                                                        hyper-parameters
=============  ==========================================================  =============================
symmetric      HVAE, symmetric equilibrium learning (two players)          :class:`HVAEConfig`
elbo           HVAE, semi-supervised ELBO (straight-through or REINFORCE)  :class:`HVAEConfig`
supervised     the guide's U-Net, cross-entropy on labelled patches        :class:`SupervisedConfig`
mixmatch       the same U-Net, MixMatch for segmentation                   :class:`MixMatchConfig`
pixel-gbm      LightGBM on per-pixel spectra and indices, fitted at once   :class:`PixelGBMConfig`
=============  ==========================================================  =============================

The methods trained step by step (by :class:`hvaeseg.train.Trainer`) subclass :class:`~hvaeseg.method.Method`;
``pixel-gbm`` is a :class:`~hvaeseg.method.FittedMethod`, fitted in one call by
:func:`hvaeseg.experiment.train_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import torch

from hvaeseg.baselines.mixmatch import MixMatchConfig, MixMatchMethod
from hvaeseg.baselines.pixel_gbm import PixelGBMConfig, PixelGBMMethod
from hvaeseg.baselines.supervised import SupervisedConfig, SupervisedMethod
from hvaeseg.hvae_methods import ELBOMethod, HVAEConfig, SymmetricMethod
from hvaeseg.method import FittedMethod, Method
from hvaeseg.options import check_option_types

#: method name -> (class, config dataclass)
METHODS: dict[str, tuple[type[Method] | type[FittedMethod], type]] = {
    "symmetric": (SymmetricMethod, HVAEConfig),
    "elbo": (ELBOMethod, HVAEConfig),
    "supervised": (SupervisedMethod, SupervisedConfig),
    "mixmatch": (MixMatchMethod, MixMatchConfig),
    "pixel-gbm": (PixelGBMMethod, PixelGBMConfig),
}


def is_fitted(name: str) -> bool:
    """Whether method ``name`` is a :class:`~hvaeseg.method.FittedMethod` (fitted in one call, no loop)."""
    if name not in METHODS:
        raise ValueError(f"expected a method among {sorted(METHODS)}, got {name!r}")
    return issubclass(METHODS[name][0], FittedMethod)


def method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The validated config dataclass of method ``name`` from ``options`` (unknown keys are an error)."""
    if name not in METHODS:
        raise ValueError(f"expected a method among {sorted(METHODS)}, got {name!r}")
    config_class = METHODS[name][1]
    options = dict(options or {})
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no options {unknown}; its options are {sorted(known)}")
    check_option_types(config_class, options, f"method {name!r}")
    for key, value in options.items():  # JSON gives lists where the dataclasses want tuples
        if isinstance(value, list):
            options[key] = tuple(value)
    return config_class(**options)


def build_method(
    name: str,
    in_channels: int,
    num_classes: int,
    temporal: bool,
    options: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    patch_size: int | None = None,
    device: str | torch.device = "cpu",
    band_names: Sequence[str] | None = None,
    band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Method | FittedMethod:
    """A fresh method ``name`` for ``in_channels`` bands and ``num_classes`` classes, on ``device``.

    :param band_names: the cube's band names, and ``band_stats`` the ``(band_mean, band_std)`` its loader
        normalises with: used by the fitted methods (pixel-gbm computes spectral indices from reflectance).
    """
    cls, _ = METHODS[name] if name in METHODS else (None, None)
    config = method_config(name, options)
    if cls is not None and issubclass(cls, FittedMethod):
        return cls.build(in_channels, num_classes, config, temporal=temporal, seed=seed, band_names=band_names,
                         band_stats=band_stats)
    if cls in (SymmetricMethod, ELBOMethod):
        method = cls.build(in_channels, num_classes, temporal, config, patch_size=patch_size, seed=seed)
    else:
        method = cls.build(in_channels, num_classes, config, temporal=temporal, seed=seed)
    for module in method.modules().values():
        module.to(device)
    return method
