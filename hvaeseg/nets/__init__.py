"""Plain :mod:`torch.nn` building blocks (no Pyro): residual blocks, the U-Net encoder, the segmentation U-Net."""

from hvaeseg.nets.blocks import ConditionalConvNet, ResBlock, resize, zero_init
from hvaeseg.nets.covariates import DOY_FEATURES, doy_features
from hvaeseg.nets.ema import ema_copy, ema_decay_at, ema_update
from hvaeseg.nets.unet import SegmentationUNet, UNetEncoder, masked_input, valid_weighted_pool

__all__ = [
    "DOY_FEATURES",
    "doy_features",
    "ConditionalConvNet",
    "ResBlock",
    "SegmentationUNet",
    "UNetEncoder",
    "ema_copy",
    "ema_decay_at",
    "ema_update",
    "masked_input",
    "resize",
    "valid_weighted_pool",
    "zero_init",
]
