"""hvaeseg: semi-supervised, spatio-temporal segmentation of Sentinel-2 image time series.

A hierarchical VAE whose top latent is the segmentation, written as Pyro models and guides, trained by the
ELBO or by symmetric equilibrium learning, with MixMatch and a supervised U-Net as baselines.

The main entry points::

    from hvaeseg import HierarchySpec, HVAE                       # the model
    from hvaeseg.objectives import SymmetricEquilibrium, SemiSupervisedELBO
    from hvaeseg.data.synthetic import make_cube                  # the built-in synthetic cube
    from hvaeseg.experiment import RunConfig, train_run           # what `hvaeseg train` runs
"""

from typing import TYPE_CHECKING

__all__ = ["HVAE", "HierarchySpec", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from hvaeseg.hierarchy import HVAE, HierarchySpec


def __getattr__(name: str):
    # lazy: `import hvaeseg.data...` (the CLI's data commands, loader worker processes) need no torch or Pyro
    if name in ("HVAE", "HierarchySpec"):
        from hvaeseg import hierarchy

        return getattr(hierarchy, name)
    raise AttributeError(f"module 'hvaeseg' has no attribute {name!r}")
