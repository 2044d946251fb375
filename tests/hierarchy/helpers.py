"""Shared fixtures-as-functions for the hierarchy tests (tiny specs, example spec paths)."""

from pathlib import Path

from hvaeseg.hierarchy import HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec

SPECS_DIR = Path(__file__).resolve().parents[2] / "examples" / "specs"


def load_example(name: str) -> HierarchySpec:
    return HierarchySpec.load(SPECS_DIR / f"{name}.yaml")


def tiny_spec(s_prior: str = "categorical", temporal: bool = False) -> HierarchySpec:
    """Every family, small nets: 8x8 images with 2 bands, 3 classes."""
    return HierarchySpec(
        num_classes=3,
        code_bits=2,
        layers=(
            LatentLayerSpec("c", "categorical", 1, 2, ("s", "l"), categories=3),
            LatentLayerSpec("b", "bernoulli", 2, 2, ("c", "l")),
            LatentLayerSpec("g", "gaussian", 1, 1, ("s", "b")),
        ),
        image=ImageLayerSpec(2, ("s", "l", "g")),
        s_prior=s_prior,
        temporal=temporal,
        network=NetworkSpec((4, 4), (1, 1), 4, 1),
    )
