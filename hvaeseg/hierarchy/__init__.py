"""The latent hierarchy: :class:`HierarchySpec` (validated dataclasses) -> :class:`HVAE` (Pyro model and guide)."""

from hvaeseg.hierarchy.hvae import HVAE
from hvaeseg.hierarchy.spec import HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec

__all__ = ["HVAE", "HierarchySpec", "ImageLayerSpec", "LatentLayerSpec", "NetworkSpec"]
