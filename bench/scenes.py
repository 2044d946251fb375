"""The cubes a benchmark runs on, by name: ``synthetic:PRESET``, a real scene folder under ``bench/data``, or
``cityscapes:ROOT`` (a Cityscapes root folder, not in the repository).

    from scenes import cube, label            # with bench/ on sys.path (as for the scripts beside it)
    data = cube("s2-cloud-shadow-512")        # -> "runs/cubes/s2-cloud-shadow-512.zarr", ingested once
    data = cube("synthetic:small")            # -> "synthetic:small", unchanged
    data = cube("cityscapes:/data/cityscapes:128x256")   # -> "runs/cubes/cityscapes-cityscapes-128x256-<hash>.zarr"
    RunConfig(method="supervised", data=data)

``cityscapes:ROOT[:HxW]`` ingests the official train and val images of ``ROOT`` (``leftImg8bit/``, ``gtFine/``)
resized to H x W (default :data:`CITYSCAPES_SIZE`, 128 x 256), the 8 categories with void as a class and the val
images reserved for test (:func:`hvaeseg.data.ingest.ingest_cityscapes`), into a mosaic cube; its cache name
carries a hash of the file names and sizes (not their contents: the full dataset is 11 GB) and of H x W.

A scene folder holds its files, a ``README.md`` (provenance, licence, classes, the ``hvaeseg data ingest``
command) and ``scene.json``: the keyword arguments of :func:`hvaeseg.data.ingest.ingest_geotiff` (or, with
``"format": "netcdf"``, ``"paths"`` and those of :func:`~hvaeseg.data.ingest.ingest_netcdf`), file names relative
to the folder. The ingested store records ``scene`` and ``scene_sha256`` (a hash of ``scene.json`` and the data
files); a cached store that no longer validates or whose hash differs is ingested again.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

__all__ = ["DATA", "CITYSCAPES_SIZE", "scenes", "cube", "label", "unit"]

#: the folder of the real scenes
DATA = Path(__file__).resolve().parent / "data"
#: the image size (H, W) of ``cityscapes:ROOT`` without ``:HxW``
CITYSCAPES_SIZE = (128, 256)
_SYNTHETIC = "synthetic:"
_CITYSCAPES = "cityscapes:"
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
    if spec.startswith(_CITYSCAPES):
        return _cityscapes_cube(spec, Path(cache_dir))
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


def _cityscapes_spec(spec: str) -> tuple[Path, tuple[int, int]]:
    """``cityscapes:ROOT[:HxW]`` -> (ROOT, (H, W))."""
    rest = spec[len(_CITYSCAPES):]
    root, sep, tail = rest.rpartition(":")
    match = re.fullmatch(r"(\d+)x(\d+)", tail) if sep else None
    if match is None:
        root, size = rest, CITYSCAPES_SIZE
    else:
        size = (int(match[1]), int(match[2]))
    if not root or min(size) < 1:
        raise ValueError(f"expected cityscapes:ROOT or cityscapes:ROOT:HxW (e.g. cityscapes:/data/cityscapes:128x256), "
                         f"got {spec!r}")
    return Path(root), size


def _cityscapes_cube(spec: str, cache_dir: Path) -> str:
    from hvaeseg.data.ingest import ingest_cityscapes
    from hvaeseg.data.ingest.images import chunks_for
    from hvaeseg.data.store import write_cube

    root, (h, w) = _cityscapes_spec(spec)
    listing = hashlib.sha256(f"{h}x{w}".encode())
    for sub in ("leftImg8bit/train", "leftImg8bit/val", "gtFine/train", "gtFine/val"):
        for p in sorted((root / sub).rglob("*.png")) if (root / sub).is_dir() else []:
            listing.update(f"{p.relative_to(root)}\0{p.stat().st_size}\n".encode())
    digest = listing.hexdigest()
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in root.resolve().name)
    store = cache_dir / f"cityscapes-{slug}-{h}x{w}-{digest[:10]}.zarr"
    if _cached(store, digest):
        return str(store)
    ds = ingest_cityscapes(root, size=(h, w))
    ds.attrs.update(scene=spec, scene_sha256=digest)
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_cube(ds, store, chunks=chunks_for(ds), overwrite=store.exists())
    except FileExistsError:  # another process wrote it in between
        if not _cached(store, digest):
            raise
    return str(store)


def unit(data: str) -> str:
    """What a labelled budget counts on the cube ``data`` (a resolved :func:`cube`): ``"images"`` for a mosaic of
    camera images (:mod:`hvaeseg.data.mosaic`), else ``"locations"`` (patch tiles)."""
    if data.startswith(_SYNTHETIC):
        return "locations"
    from hvaeseg.data.mosaic import MosaicLayout
    from hvaeseg.data.store import open_cube

    return "images" if MosaicLayout.from_cube(open_cube(data, validate=False)) is not None else "locations"


def label(name_or_spec: str) -> str:
    """A short display label: ``synthetic:small``, ``real: s2-cloud-shadow-512``, ``cityscapes: ROOT 128x256``,
    ``store: x.zarr``."""
    spec = str(name_or_spec)
    if spec.startswith(_SYNTHETIC):
        return spec
    if spec.startswith(_CITYSCAPES):
        root, (h, w) = _cityscapes_spec(spec)
        return f"cityscapes: {root.name} {h}x{w}"
    if "/" not in spec and (DATA / spec / "scene.json").is_file():
        return f"real: {spec}"
    return f"store: {Path(spec).name}"
