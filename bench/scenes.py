"""The cubes a benchmark runs on, by name: ``synthetic:PRESET`` or a real scene folder under ``bench/data``.

    from scenes import cube, label            # with bench/ on sys.path (as for the scripts beside it)
    data = cube("s2-cloud-shadow-512")        # -> "runs/cubes/s2-cloud-shadow-512.zarr", ingested once
    data = cube("synthetic:small")            # -> "synthetic:small", unchanged
    RunConfig(method="supervised", data=data)

A scene folder holds its files, a ``README.md`` (provenance, licence, classes, the ``hvaeseg data ingest``
command) and ``scene.json``: the keyword arguments of :func:`hvaeseg.data.ingest.ingest_geotiff` (or, with
``"format": "netcdf"``, ``"paths"`` and those of :func:`~hvaeseg.data.ingest.ingest_netcdf`), file names relative
to the folder. The ingested store records ``scene`` and ``scene_sha256`` (a hash of ``scene.json`` and the data
files); a cached store that no longer validates or whose hash differs is ingested again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["DATA", "scenes", "cube", "label"]

#: the folder of the real scenes
DATA = Path(__file__).resolve().parent / "data"
_SYNTHETIC = "synthetic:"
_NOT_DATA = ("README.md",)


def scenes() -> list[str]:
    """Names of the scene folders under :data:`DATA` (those with a ``scene.json``)."""
    return sorted(p.parent.name for p in DATA.glob("*/scene.json")) if DATA.is_dir() else []


def _folder(name: str) -> Path:
    folder = DATA / name
    if "/" in name or name.startswith(".") or not (folder / "scene.json").is_file():
        raise ValueError(
            f"unknown cube {name!r}: expected synthetic:PRESET, a scene of {DATA} ({', '.join(scenes()) or 'none'}) "
            "or the path of a cube store (*.zarr)"
        )
    return folder


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in _NOT_DATA and not p.name.startswith("LICENSE"):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _cached(store: Path, digest: str) -> bool:
    from hvaeseg.data.store import open_cube

    try:
        return open_cube(store).attrs.get("scene_sha256") == digest  # validates
    except (FileNotFoundError, ValueError):
        return False


def _ingest(name: str, folder: Path):
    from hvaeseg.data.ingest import ingest_geotiff, ingest_netcdf

    options = json.loads((folder / "scene.json").read_text())
    options.pop("description", None)
    fmt = options.pop("format", "geotiff")

    def here(v):
        return str(folder / v) if isinstance(v, str) else [str(folder / p) for p in v]

    for key in ("labels", "scl", "code_table"):
        if options.get(key) is not None:
            options[key] = here(options[key])
    if fmt == "geotiff":
        options["band_files"] = {b: here(f) for b, f in options["band_files"].items()}
        return ingest_geotiff(**options)
    if fmt == "netcdf":
        return ingest_netcdf(*here(options.pop("paths")), **options)
    raise ValueError(f"{folder / 'scene.json'}: format must be 'geotiff' or 'netcdf', got {fmt!r}")


def cube(name_or_spec: str, cache_dir: str | Path = "runs/cubes") -> str:
    """A ``data`` string for :class:`hvaeseg.experiment.RunConfig`.

    :param name_or_spec: ``synthetic:PRESET`` (returned unchanged), the name of a scene folder under
        :data:`DATA` (ingested once into ``cache_dir/<name>.zarr``, whose path is returned), or the path of an
        existing cube store ``*.zarr`` (returned unchanged).
    :param cache_dir: where ingested scenes are kept.
    """
    spec = str(name_or_spec)
    if spec.startswith(_SYNTHETIC) or (spec.endswith(".zarr") and Path(spec).exists()):
        return spec
    folder = _folder(spec)
    store = Path(cache_dir) / f"{spec}.zarr"
    digest = _fingerprint(folder)
    if _cached(store, digest):
        return str(store)
    from hvaeseg.data.store import write_cube

    ds = _ingest(spec, folder)
    ds.attrs.update(scene=spec, scene_sha256=digest)
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_cube(ds, store, overwrite=store.exists())
    except FileExistsError:  # another process wrote it in between
        if not _cached(store, digest):
            raise
    return str(store)


def label(name_or_spec: str) -> str:
    """A short display label: ``synthetic:small``, ``real: s2-cloud-shadow-512``, ``store: x.zarr``."""
    spec = str(name_or_spec)
    if spec.startswith(_SYNTHETIC):
        return spec
    if "/" not in spec and (DATA / spec / "scene.json").is_file():
        return f"real: {spec}"
    return f"store: {Path(spec).name}"
