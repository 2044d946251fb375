"""The scripts of ``bench/`` loaded as modules (they are scripts, not a package), one fixture each."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_script(name: str) -> Iterator[ModuleType]:
    """Load ``bench/NAME.py`` as module ``bench_NAME``, registered in ``sys.modules`` while in use (its
    dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def ablation() -> Iterator[ModuleType]:
    yield from _bench_script("ablation")


@pytest.fixture(scope="module")
def budget() -> Iterator[ModuleType]:
    yield from _bench_script("budget")


@pytest.fixture(scope="module")
def inpaint() -> Iterator[ModuleType]:
    yield from _bench_script("inpaint")


@pytest.fixture(scope="module")
def compare() -> Iterator[ModuleType]:
    yield from _bench_script("compare")


@pytest.fixture(scope="module")
def posterior_speed() -> Iterator[ModuleType]:
    yield from _bench_script("posterior_speed")
