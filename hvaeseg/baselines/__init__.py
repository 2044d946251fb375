"""Discriminative baselines: the supervised U-Net and MixMatch for segmentation, trained by the shared loop,
with the augmentations they share (the dihedral group, translations with validity masks, spectral jitter);
and the per-pixel LightGBM baseline (``pixel-gbm``), fitted in one call."""

from hvaeseg.baselines.augment import Augmentation, DihedralElement
from hvaeseg.baselines.mixmatch import MixMatchConfig, MixMatchMethod
from hvaeseg.baselines.pixel_gbm import PixelGBMConfig, PixelGBMMethod
from hvaeseg.baselines.supervised import SupervisedConfig, SupervisedMethod

__all__ = [
    "Augmentation",
    "DihedralElement",
    "MixMatchConfig",
    "MixMatchMethod",
    "PixelGBMConfig",
    "PixelGBMMethod",
    "SupervisedConfig",
    "SupervisedMethod",
]
