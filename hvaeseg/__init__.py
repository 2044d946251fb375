"""hvaeseg: semi-supervised, spatio-temporal segmentation of Sentinel-2 image time series.

A hierarchical VAE whose top latent is the segmentation, written as Pyro models and guides, trained by the
ELBO or by symmetric equilibrium learning, with MixMatch and a supervised U-Net as baselines.

The main entry points::

    from hvaeseg import HierarchySpec, HVAE                       # the model
    from hvaeseg.objectives import SymmetricEquilibrium, SemiSupervisedELBO
    from hvaeseg.data.synthetic import make_cube                  # the built-in synthetic cube
    from hvaeseg.experiment import RunConfig, train_run           # what `hvaeseg train` runs
"""

from hvaeseg.hierarchy import HVAE, HierarchySpec

__all__ = ["HVAE", "HierarchySpec", "__version__"]
__version__ = "0.1.0"
