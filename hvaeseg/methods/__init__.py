"""Segmentation methods: the interface (:mod:`.base`), the registry (:mod:`.registry`) and the built-in methods.

==========  ==================  ==========================================================
name        module              what (hyper-parameters: the module's config dataclass)
==========  ==================  ==========================================================
symmetric   :mod:`.hvae`        HVAE, symmetric equilibrium learning (two players)
elbo        :mod:`.hvae`        HVAE, semi-supervised ELBO (straight-through or REINFORCE)
supervised  :mod:`.supervised`  the guide's U-Net, cross-entropy on labelled patches
mixmatch    :mod:`.mixmatch`    the same U-Net, MixMatch for segmentation
pixel-gbm   :mod:`.pixel_gbm`   LightGBM on per-pixel spectra and indices, fitted at once
==========  ==================  ==========================================================

The methods trained step by step (by :class:`hvaeseg.train.Trainer`) subclass :class:`Method`; ``pixel-gbm`` is a
:class:`FittedMethod`, fitted in one call by :func:`hvaeseg.experiment.train_run`. :mod:`.augment` holds the
augmentations the discriminative methods and the HVAE share.

Adding a method: a module with its class (the class attributes of :class:`SegmentationMethod` and its ``build``)
and one :func:`register` line below.
"""

from hvaeseg.methods.base import FittedMethod, Method, SeededMethod, SegmentationMethod, StepBatch
from hvaeseg.methods.hvae import ELBOMethod, GenerativeMethod, HVAEConfig, SymmetricMethod
from hvaeseg.methods.mixmatch import MixMatchConfig, MixMatchMethod
from hvaeseg.methods.pixel_gbm import PixelGBMConfig, PixelGBMMethod
from hvaeseg.methods.registry import (
    METHODS,
    build_method,
    is_fitted,
    method_class,
    method_config,
    register,
    unregister,
)
from hvaeseg.methods.supervised import SupervisedConfig, SupervisedMethod

# the built-in methods, in the order `hvaeseg train --help` lists them
register(SymmetricMethod)
register(ELBOMethod)
register(SupervisedMethod)
register(MixMatchMethod)
register(PixelGBMMethod)

__all__ = [
    "ELBOMethod",
    "FittedMethod",
    "GenerativeMethod",
    "HVAEConfig",
    "METHODS",
    "Method",
    "MixMatchConfig",
    "MixMatchMethod",
    "PixelGBMConfig",
    "PixelGBMMethod",
    "SeededMethod",
    "SegmentationMethod",
    "StepBatch",
    "SupervisedConfig",
    "SupervisedMethod",
    "SymmetricMethod",
    "build_method",
    "is_fitted",
    "method_class",
    "method_config",
    "register",
    "unregister",
]
