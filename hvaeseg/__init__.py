"""hvaeseg: semi-supervised, spatio-temporal segmentation of Sentinel-2 image time series.

A hierarchical VAE whose top latent is the segmentation, written as Pyro models and guides, trained by the
ELBO or by symmetric equilibrium learning, with MixMatch and a supervised U-Net as baselines.
"""

__version__ = "0.1.0"
