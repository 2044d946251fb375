"""The registry of training methods: ``--method NAME`` -> a :class:`~hvaeseg.method.Method`.

=============  ==========================================================  =============================
name           what                                                        hyper-parameters
=============  ==========================================================  =============================
symmetric      HVAE, symmetric equilibrium learning (two players)          :class:`HVAEConfig`
elbo           HVAE, semi-supervised ELBO (straight-through or REINFORCE)  :class:`HVAEConfig`
supervised     the guide's U-Net, cross-entropy on labelled patches        :class:`SupervisedConfig`
mixmatch       the same U-Net, MixMatch for segmentation                   :class:`MixMatchConfig`
=============  ==========================================================  =============================
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from hvaeseg.baselines.mixmatch import MixMatchConfig, MixMatchMethod
from hvaeseg.baselines.supervised import SupervisedConfig, SupervisedMethod
from hvaeseg.hvae_methods import ELBOMethod, HVAEConfig, SymmetricMethod
from hvaeseg.method import Method

#: method name -> (class, config dataclass)
METHODS: dict[str, tuple[type[Method], type]] = {
    "symmetric": (SymmetricMethod, HVAEConfig),
    "elbo": (ELBOMethod, HVAEConfig),
    "supervised": (SupervisedMethod, SupervisedConfig),
    "mixmatch": (MixMatchMethod, MixMatchConfig),
}


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
) -> Method:
    """A fresh method ``name`` for ``in_channels`` bands and ``num_classes`` classes, on ``device``."""
    cls, _ = METHODS[name] if name in METHODS else (None, None)
    config = method_config(name, options)
    if cls in (SymmetricMethod, ELBOMethod):
        method = cls.build(in_channels, num_classes, temporal, config, patch_size=patch_size)
    else:
        method = cls.build(in_channels, num_classes, config, temporal=temporal, seed=seed)
    for module in method.modules().values():
        module.to(device)
    return method
