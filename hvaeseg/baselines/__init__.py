"""Discriminative baselines trained by the shared loop: the supervised U-Net and MixMatch for segmentation,
with the augmentations they share (the dihedral group, translations with validity masks, spectral jitter)."""

from hvaeseg.baselines.augment import Augmentation, DihedralElement
from hvaeseg.baselines.mixmatch import MixMatchConfig, MixMatchMethod
from hvaeseg.baselines.supervised import SupervisedConfig, SupervisedMethod

__all__ = [
    "Augmentation",
    "DihedralElement",
    "MixMatchConfig",
    "MixMatchMethod",
    "SupervisedConfig",
    "SupervisedMethod",
]
