"""A folder of image / label PNG pairs with a class table to a mosaic cube (``--format folder``), the generic
form of :mod:`~hvaeseg.data.ingest.cityscapes`.

Layout::

    ROOT/images/<name>.png      8-bit RGB (grey and palette images are converted; alpha is dropped)
    ROOT/labels/<name>.png      one channel of integer class codes (8 or 16 bit; a palette image's indices)

paired by file name. The class table (``--code-table``: a ``code,name`` CSV or JSON ``{"code": "name"}``, as for
the other ingests, :func:`~hvaeseg.data.ingest.read_code_table`) names the classes: its codes, in increasing
order, become the class ids ``0 .. K-1`` (every class of the table, whether or not a pixel holds it, so that
cubes ingested with one table share their ids); any other code in a label map is void (-1), counted in
``void_description``. Every image needs its label map and every label map its image; a file that is not a
``.png`` is an error naming it. No image is reserved for a split (``image_split = -1``): a run shares all of
them among its train, val and test splits by its fractions. Resizing and storage as in
:mod:`~hvaeseg.data.ingest.images`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import xarray as xr

from hvaeseg.data.ingest._common import IngestError, PathType
from hvaeseg.data.ingest.classes import _word, read_code_table
from hvaeseg.data.ingest.images import ImagePair, mosaic_cube

__all__ = ["discover_image_folder", "ingest_image_folder"]

SUFFIX = ".png"


def discover_image_folder(root: str | PathLike) -> list[ImagePair]:
    """The image/label pairs under ``root`` (module docstring), in name order.

    :raises IngestError: no ``images/`` or ``labels/`` folder, no images, a file that is not a PNG, an image without
        its label map or a label map without its image (the first few problems listed).
    """
    root = Path(root)
    layout = f"expected ROOT/images/<name>{SUFFIX} and ROOT/labels/<name>{SUFFIX}, paired by name"
    if not root.is_dir():
        raise IngestError(f"{root}: no such folder; {layout}")
    missing = [d for d in ("images", "labels") if not (root / d).is_dir()]
    if missing:
        raise IngestError(f"{root} has no {' and no '.join(d + '/' for d in missing)} folder; {layout}")
    problems: list[str] = []
    listed = {}
    for kind in ("images", "labels"):
        files = sorted(p for p in (root / kind).iterdir() if not p.name.startswith("."))
        for f in files:
            if not f.is_file() or f.suffix.lower() != SUFFIX:
                problems.append(f"{f} is not a {SUFFIX} file: {layout}; convert or remove it")
        listed[kind] = {f.stem: f for f in files if f.is_file() and f.suffix.lower() == SUFFIX}
    images, labels = listed["images"], listed["labels"]
    if not images and not problems:
        problems.append(f"{root / 'images'} holds no {SUFFIX} images; {layout}")
    for stem in sorted(set(images) - set(labels)):
        problems.append(f"the image {images[stem]} has no label map {root / 'labels' / (stem + SUFFIX)}: add it, or "
                        "remove the image")
    for stem in sorted(set(labels) - set(images)):
        problems.append(f"the label map {labels[stem]} has no image {root / 'images' / (stem + SUFFIX)}: add it, or "
                        "remove the label map")
    if problems:
        shown = problems[:5]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        text = shown[0] if len(shown) == 1 else "; ".join(f"({i}) {p}" for i, p in enumerate(shown, 1))
        raise IngestError(f"cannot ingest the image folder {root}: {text}{more}")
    return [ImagePair(stem, images[stem], labels[stem]) for stem in sorted(images)]


def ingest_image_folder(
    root: str | PathLike,
    *,
    code_table: PathType | Mapping[int, str] | None,
    size: Sequence[int] | None = None,
) -> xr.Dataset:
    """The image/label pairs under ``root`` as a mosaic cube (module docstring); nothing is written.

    :param code_table: the class table, a file (CSV/JSON) or ``{code: name}``.
    :param size: ``(H, W)`` to resize every image to; default the images' own size (which they must share).
    :raises IngestError: no class table, a bad layout (:func:`discover_image_folder`), unreadable or mismatched
        files.
    """
    if code_table is None:
        raise IngestError("--format folder needs the class table: pass --code-table TABLE (a code,name CSV or JSON "
                          "{\"code\": \"name\"}; Python code_table=)")
    if isinstance(code_table, Mapping):
        table, source = {int(k): str(v) for k, v in code_table.items()}, "(mapping)"
    else:
        table, source = read_code_table(code_table, label_var="code"), Path(code_table).name
    if not table:
        raise IngestError(f"the class table {source} names no class")
    if min(table) < 0:
        raise IngestError(f"the class table {source} has negative codes {sorted(c for c in table if c < 0)}; label "
                          "images hold codes >= 0")
    pairs = discover_image_folder(root)
    codes = sorted(table)
    names: list[str] = []
    for c in codes:
        n = _word(table[c])
        names.append(n if n not in names else f"{n}_{c}")
    lut = np.full(max(codes) + 1, -1, dtype=np.int16)
    lut[codes] = np.arange(len(codes), dtype=np.int16)
    other: dict[int, int] = {}

    def map_codes(values: np.ndarray, pair: ImagePair) -> np.ndarray:
        inside = (values >= 0) & (values < len(lut))
        ids = np.where(inside, lut[np.clip(values, 0, len(lut) - 1)], -1).astype(np.int16)
        for v, n in zip(*np.unique(values[ids < 0], return_counts=True)):
            other[int(v)] = other.get(int(v), 0) + int(n)
        return ids

    ds = mosaic_cube(
        pairs, size=size, map_codes=map_codes, class_names=names,
        label_attrs={"source_codes": codes, "class_names_source": f"class table {source}"},
        attrs={"source_format": "folder", "source_root": Path(root).name,
               "split_protocol": "no split reserved: every image is shared among the splits of a run by its fractions"},
    )
    empty = int((ds["image_index"].values < 0).sum())
    parts = [f"code {c}: {n:,} px of the label files, not in the class table" for c, n in sorted(other.items())]
    parts.append(f"{empty:,} px of empty mosaic cells")
    ds["labels"].attrs["void_description"] = "void (-1): " + "; ".join(parts)
    return ds
