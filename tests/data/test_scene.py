"""The real labelled scene kept in the repository (``bench/data/s2-cloud-shadow-512``) and ``bench/scenes.py``.

The scene is read from its path inside the repository, which a fresh clone has. Ingesting it takes
about a second, so these tests run in the default suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from hvaeseg.data.schema import class_names, validate_cube
from hvaeseg.data.store import open_cube

pytest.importorskip("rioxarray")
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")  # rioxarray, affine >= 2.5

REPO = Path(__file__).resolve().parents[2]
NAME = "s2-cloud-shadow-512"
SCENE = REPO / "bench" / "data" / NAME
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
CLASSES = ["cloud_shadow", "clear", "cloud"]
#: pixels per class, as bench/data/s2-cloud-shadow-512/README.md states them
COUNTS = {"cloud_shadow": 28_583, "clear": 183_964, "cloud": 49_597}


def _scenes():
    spec = importlib.util.spec_from_file_location("bench_scenes", REPO / "bench" / "scenes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_command() -> list[str]:
    """The ``hvaeseg data ingest`` command of the scene's README, as argv after ``hvaeseg data``."""
    text = (SCENE / "README.md").read_text()
    m = re.search(r"^hvaeseg data ingest (.*?)$(?<!\\)", text.replace("\\\n", " "), flags=re.M)
    assert m, "the README has no `hvaeseg data ingest` command"
    return ["ingest", *shlex.split(m.group(1))]


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory) -> str:
    return _scenes().cube(NAME, cache_dir=tmp_path_factory.mktemp("cubes"))


def test_the_scene_files_and_licence_are_in_the_repository():
    for f in [f"{b}.tif" for b in BANDS] + ["labels.tif", "LICENSE-ukis-csmask.txt", "README.md", "scene.json"]:
        assert (SCENE / f).is_file(), f
    assert "Apache License" in (SCENE / "LICENSE-ukis-csmask.txt").read_text()


def test_the_scene_ingests_to_the_cube_its_readme_describes(scene_store):
    ds = open_cube(scene_store)
    validate_cube(ds)
    assert dict(ds.sizes) == {"time": 1, "band": 6, "y": 512, "x": 512}
    assert list(ds["band"].values) == BANDS
    assert ds["valid"].values.all()  # no SCL, no DN 0: every pixel valid
    assert class_names(ds) == CLASSES
    assert ds["labels"].attrs["source_codes"] == [1, 2, 3]
    ids, counts = np.unique(ds["labels"].values, return_counts=True)
    assert dict(zip(ids.tolist(), counts.tolist())) == {i: COUNTS[n] for i, n in enumerate(CLASSES)}  # no void
    readme = (SCENE / "README.md").read_text()
    for n in COUNTS.values():
        assert f"{n:,}" in readme
    assert ds.attrs["scene"] == NAME and len(ds.attrs["scene_sha256"]) == 64


def test_the_readme_command_gives_the_same_cube(scene_store, tmp_path, monkeypatch):
    from hvaeseg.commands.ingest import add_ingest_parser

    argv = _readme_command()
    assert "--class-names" in argv
    argv[-1] = str(tmp_path / argv[-1])  # the output store
    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers())
    monkeypatch.chdir(SCENE)  # the command's paths are relative to the scene folder
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    got, ref = open_cube(argv[-1]), open_cube(scene_store)
    assert class_names(got) == CLASSES
    for var in ("reflectance", "valid", "labels"):
        np.testing.assert_array_equal(got[var].values, ref[var].values)


def test_scenes_ingests_once_and_passes_synthetic_through(scene_store, monkeypatch):
    scenes = _scenes()
    marker = Path(scene_store) / "zarr.json"
    before = marker.stat().st_mtime_ns
    monkeypatch.setattr(scenes, "_ingest", lambda *a: pytest.fail("ingested again"))
    assert scenes.cube(NAME, cache_dir=Path(scene_store).parent) == scene_store
    assert marker.stat().st_mtime_ns == before
    assert scenes.cube("synthetic:small") == "synthetic:small"
    assert scenes.label("synthetic:small") == "synthetic:small"
    assert scenes.label(NAME) == "real: s2-cloud-shadow-512"
    assert scenes.label("/tmp/elsewhere/wc.zarr") == "store: wc.zarr"  # an absolute path is a store, not a scene
    assert NAME in scenes.scenes()
    with pytest.raises(ValueError, match="unknown cube 'nope'.*s2-cloud-shadow-512"):
        scenes.cube("nope")


def test_scenes_reingests_a_cache_that_does_not_validate(tmp_path):
    scenes = _scenes()
    stale = tmp_path / f"{NAME}.zarr"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")  # not a cube
    assert scenes.cube(NAME, cache_dir=tmp_path) == str(stale)
    assert class_names(open_cube(stale)) == CLASSES
