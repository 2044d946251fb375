"""Objectives that train a model / guide pair following ``docs/conventions.md``, and estimators to compare them.

- :class:`SymmetricEquilibrium` (:mod:`.symmetric`): symmetric equilibrium learning, a (decoder loss,
  encoder loss) pair; :class:`SymmetricWeights` weighs its four terms; :class:`SymmetricStepper`
  (:mod:`.stepper`) steps its two players, in the shape of ``pyro.infer.SVI``.
- :class:`SemiSupervisedELBO` (:mod:`.elbo`): the semi-supervised ELBO with straight-through or
  score-function gradients through discrete latents (:class:`StraightThrough`, :mod:`.relax`).
- :mod:`.exact`: both objectives' terms when the posterior of ``s`` is exact (``exact_s=True``).
- :class:`LabelPool` (:mod:`.pool`): label maps for the sleep term; :func:`fill_void_nearest`.
- :func:`iwae_bound`, :func:`consistency`, :func:`reconstruction_error` (:mod:`.estimators`).
"""

from hvaeseg.objectives.elbo import SemiSupervisedELBO
from hvaeseg.objectives.estimators import consistency, iwae_bound, reconstruction_error
from hvaeseg.objectives.pool import LabelLeakError, LabelPool, dihedral_transforms, fill_void_nearest
from hvaeseg.objectives.relax import StraightThrough, relax_distribution
from hvaeseg.objectives.stepper import SymmetricStepper
from hvaeseg.objectives.symmetric import SymmetricEquilibrium, SymmetricWeights

__all__ = [
    "LabelLeakError",
    "LabelPool",
    "SemiSupervisedELBO",
    "StraightThrough",
    "SymmetricEquilibrium",
    "SymmetricStepper",
    "SymmetricWeights",
    "consistency",
    "dihedral_transforms",
    "fill_void_nearest",
    "iwae_bound",
    "reconstruction_error",
    "relax_distribution",
]
