"""Cityscapes (Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016) to a
mosaic cube: RGB images with their fine labels mapped to the 8 categories.

Layout read (the folders of ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` extracted into
one root)::

    ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png     8-bit RGB, 2048 x 1024
    ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png      8-bit label ids (the other gtFine files,
                                                               *_color.png, *_instanceIds.png, *_polygons.json,
                                                               *_labelTrainIds.png, are not read)

Every image needs its label map and every label map its image; a file in a split folder that is not
``<city>/<name>_leftImg8bit.png`` and a requested split without images are errors that name the file or folder
and the fix, raised before any pixel is read (:class:`~hvaeseg.data.ingest.IngestError`; nothing is written).
Splits: ``train`` and ``val`` (the official ``test`` split has no public labels). With both, the official val
images are reserved for the *test* split of every run (``image_split = 2``) and the train images are free: a
run shares them between its train and val splits by its fractions, so that checkpoints are chosen on images
of the official train split and the official val split is reported once, as in the original table.

Why a mosaic (:mod:`hvaeseg.data.mosaic` has the full reasoning): the images, resized to one size, are laid
out side by side on one date of a ``(time, band, y, x)`` cube, and the sampler splits a mosaic image by image,
so the four methods, ``evaluate``, ``predict`` and the label-budget study run unchanged on it, with labelled
budgets counted in images; bands ``R, G, B`` (``sensor = "camera"``), reflectance = 8-bit value / 255
(:mod:`~hvaeseg.data.ingest.images`), resized with area averaging (images) and nearest (labels).

Label ids to categories, after ``cityscapesscripts/helpers/labels.py`` of cityscapesScripts
(https://github.com/mcordts/cityscapesScripts; the ``labels`` table, columns ``id`` and ``category``):

=============  ===============================================================================
category       label ids
=============  ===============================================================================
void           0 unlabeled, 1 ego vehicle, 2 rectification border, 3 out of roi, 4 static,
               5 dynamic, 6 ground, -1 license plate
flat           7 road, 8 sidewalk, 9 parking, 10 rail track
construction   11 building, 12 wall, 13 fence, 14 guard rail, 15 bridge, 16 tunnel
object         17 pole, 18 polegroup, 19 traffic light, 20 traffic sign
nature         21 vegetation, 22 terrain
sky            23 sky
human          24 person, 25 rider
vehicle        26 car, 27 truck, 28 bus, 29 caravan, 30 trailer, 31 train, 32 motorcycle, 33 bicycle
=============  ===============================================================================

One deviation, asked for by the project's issue: labels.py puts *license plate* (id -1) in the category
``vehicle`` (catId 7, ``ignoreInEval``); here it is ``void``. It changes no ingested pixel of the official data:
an id of -1 "is ignored when creating ground truth images" (labels.py), so plates are drawn as the car under
them; a map that does hold it, as 255 (-1 in 8 bits), gets void. Any other value (e.g. 34 .. 254, or the
255 = ignore of ``*_labelTrainIds.png``, which the file name already rules out) is an error naming the file.

Classes: ``--void class`` (default) keeps ``void`` as class 0 of 8, as in the original table (it is learned
and scored like the others); ``--void ignore`` makes void pixels ``-1`` (no label, not scored) and the classes
the 7 others, ids 0 .. 6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import xarray as xr

from hvaeseg.data.ingest._common import IngestError
from hvaeseg.data.ingest.images import ImagePair, mosaic_cube

__all__ = [
    "CATEGORIES",
    "CATEGORY_COLORS",
    "LABELS",
    "CityscapesLabel",
    "category_names",
    "category_of",
    "class_ids",
    "discover_cityscapes",
    "ingest_cityscapes",
]

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
#: the splits with public fine labels
SPLITS = ("train", "val")
VOID_MODES = ("class", "ignore")


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of the official label table: ``name``, ``id`` (the value in ``*_labelIds.png``), ``category``."""

    name: str
    id: int
    category: str


#: the 8 categories, in class-id order
CATEGORIES: tuple[str, ...] = ("void", "flat", "construction", "object", "nature", "sky", "human", "vehicle")
#: a colour per category: the labels.py colour of its main label (road, building, pole, vegetation, ...)
CATEGORY_COLORS: tuple[str, ...] = (
    "#000000", "#804080", "#464646", "#999999", "#6b8e23", "#4682b4", "#dc143c", "#00008e",
)

#: the official label table (id -> category; license plate in void, see the module docstring)
LABELS: tuple[CityscapesLabel, ...] = tuple(CityscapesLabel(n, i, c) for n, i, c in (
    ("unlabeled", 0, "void"), ("ego vehicle", 1, "void"), ("rectification border", 2, "void"),
    ("out of roi", 3, "void"), ("static", 4, "void"), ("dynamic", 5, "void"), ("ground", 6, "void"),
    ("road", 7, "flat"), ("sidewalk", 8, "flat"), ("parking", 9, "flat"), ("rail track", 10, "flat"),
    ("building", 11, "construction"), ("wall", 12, "construction"), ("fence", 13, "construction"),
    ("guard rail", 14, "construction"), ("bridge", 15, "construction"), ("tunnel", 16, "construction"),
    ("pole", 17, "object"), ("polegroup", 18, "object"), ("traffic light", 19, "object"),
    ("traffic sign", 20, "object"), ("vegetation", 21, "nature"), ("terrain", 22, "nature"), ("sky", 23, "sky"),
    ("person", 24, "human"), ("rider", 25, "human"), ("car", 26, "vehicle"), ("truck", 27, "vehicle"),
    ("bus", 28, "vehicle"), ("caravan", 29, "vehicle"), ("trailer", 30, "vehicle"), ("train", 31, "vehicle"),
    ("motorcycle", 32, "vehicle"), ("bicycle", 33, "vehicle"), ("license plate", -1, "void"),
))
_BY_ID = {label.id: label for label in LABELS}
#: the value of id -1 (license plate) in an 8-bit label image
_PLATE_8BIT = 255


def category_of(label_id: int) -> str:
    """The category of an official label id (-1 .. 33).

    :raises KeyError: not an official label id.
    """
    return _BY_ID[int(label_id)].category


def _check_void(void: str) -> str:
    if void not in VOID_MODES:
        raise IngestError(f"--void: expected 'class' (void is class 0 of 8) or 'ignore' (void pixels are -1, 7 "
                          f"classes), got {void!r}")
    return void


def category_names(void: str = "class") -> tuple[str, ...]:
    """The class names of a cube ingested with ``void``: the 8 categories, or the 7 without ``void``."""
    return CATEGORIES if _check_void(void) == "class" else CATEGORIES[1:]


def class_ids(void: str = "class") -> dict[int, int]:
    """Official label id -> class id of the cube (-1 = void when ``void == "ignore"``), for every id -1 .. 33."""
    names = category_names(void)
    return {label.id: names.index(label.category) if label.category in names else -1 for label in LABELS}


def _lookup(void: str) -> np.ndarray:
    """``(256,)`` int16: class id of each 8-bit value of a labelIds image; -2 where the value is no label id."""
    lut = np.full(256, -2, dtype=np.int16)
    for label_id, cls in class_ids(void).items():
        lut[_PLATE_8BIT if label_id == -1 else label_id] = cls
    return lut


def _splits(split: str | Sequence[str]) -> list[str]:
    items = [s.strip() for s in split.split(",")] if isinstance(split, str) else [str(s).strip() for s in split]
    items = [s for s in items if s]
    if not items:
        raise IngestError("--split: expected train, val or train,val, got nothing")
    bad = [s for s in items if s not in SPLITS]
    if bad:
        hint = (": the official test split has no public labels; the study tests on val (--split train,val)"
                if "test" in bad else "")
        raise IngestError(f"--split: expected splits among {', '.join(SPLITS)}, got {', '.join(bad)}{hint}")
    if len(set(items)) != len(items):
        raise IngestError(f"--split repeats a split: {','.join(items)}")
    return items


def discover_cityscapes(root: str | PathLike, split: str | Sequence[str] = SPLITS) -> list[ImagePair]:
    """The image/label pairs of ``split`` under the Cityscapes ``root``, checked (module docstring), in split, city
    and name order; the official val images reserved for test when train is read too.

    :raises IngestError: not a Cityscapes root, an empty split, a file with a wrong name, an image without its
        label map or a label map without its image (all problems found, the first few listed).
    """
    root = Path(root)
    splits = _splits(split)
    layout = (f"expected ROOT/leftImg8bit/<split>/<city>/<name>{IMAGE_SUFFIX} (leftImg8bit_trainvaltest.zip) and "
              f"ROOT/gtFine/<split>/<city>/<name>{LABEL_SUFFIX} (gtFine_trainvaltest.zip)")
    if not root.is_dir():
        raise IngestError(f"{root}: no such folder; {layout}")
    missing = [d for d in ("leftImg8bit", "gtFine") if not (root / d).is_dir()]
    if missing:
        raise IngestError(f"{root} is not a Cityscapes root: it has no {' and no '.join(d + '/' for d in missing)} "
                          f"folder; {layout}: extract both archives into {root}")
    found = sorted(d.name for d in (root / "leftImg8bit").iterdir() if d.is_dir())
    problems: list[str] = []
    pairs: list[ImagePair] = []
    reserve = "train" in splits and "val" in splits
    for name in splits:
        image_dir, label_dir = root / "leftImg8bit" / name, root / "gtFine" / name
        files = sorted(p for p in image_dir.rglob("*") if p.is_file() and not p.name.startswith(".")) \
            if image_dir.is_dir() else []
        if not files:
            with_images = [s for s in found if any((root / "leftImg8bit" / s).glob(f"*/*{IMAGE_SUFFIX}"))]
            problems.append(f"the split {name!r} is empty: no images in {image_dir} (expected <city>/<name>"
                            f"{IMAGE_SUFFIX}); splits with images: {', '.join(with_images) or 'none'}: pass --split "
                            "with those (Python split=)")
            continue
        for f in files:
            rel = f.relative_to(image_dir)
            if len(rel.parts) != 2:
                problems.append(f"{f} is not in a city folder: expected {image_dir}/<city>/<name>{IMAGE_SUFFIX}; move "
                                "it into its city's folder or remove it")
            elif not f.name.endswith(IMAGE_SUFFIX):
                problems.append(f"{f} is not a Cityscapes image: the name must end in {IMAGE_SUFFIX} (as in "
                                f"leftImg8bit_trainvaltest.zip); rename it or remove it from {f.parent}")
            else:
                stem, city = f.name[: -len(IMAGE_SUFFIX)], rel.parts[0]
                label = label_dir / city / f"{stem}{LABEL_SUFFIX}"
                if not label.is_file():
                    problems.append(f"the image {f} has no label map {label}: extract gtFine_trainvaltest.zip into "
                                    f"{root} (it holds gtFine/<split>/<city>/<name>{LABEL_SUFFIX}), or remove the "
                                    "image")
                else:
                    reserved = 2 if reserve and name == "val" else -1
                    pairs.append(ImagePair(stem, f, label, city=city, subset=name, reserved=reserved))
        if label_dir.is_dir():
            for label in sorted(label_dir.glob(f"*/*{LABEL_SUFFIX}")):
                image = image_dir / label.parent.name / f"{label.name[: -len(LABEL_SUFFIX)]}{IMAGE_SUFFIX}"
                if not image.exists():
                    problems.append(f"the label map {label} has no image {image}: extract "
                                    f"leftImg8bit_trainvaltest.zip into {root}, or remove the label map")
    if problems:
        shown = problems[:5]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        listed = shown[0] if len(shown) == 1 else "; ".join(f"({i}) {p}" for i, p in enumerate(shown, 1))
        raise IngestError(f"cannot ingest {root} as Cityscapes: {listed}{more}")
    return pairs


def ingest_cityscapes(
    root: str | PathLike,
    *,
    split: str | Sequence[str] = SPLITS,
    size: Sequence[int] | None = None,
    void: str = "class",
) -> xr.Dataset:
    """The Cityscapes images of ``split`` as a mosaic cube (module docstring); nothing is written.

    :param root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
    :param split: ``"train"``, ``"val"`` or both (default; the val images are then reserved for test).
    :param size: ``(H, W)`` to resize every image to (e.g. ``(128, 256)``); default the native 1024 x 2048.
    :param void: ``"class"`` (void is class 0 of 8) or ``"ignore"`` (void pixels -1, 7 classes).
    :raises IngestError: a bad layout (:func:`discover_cityscapes`), unreadable or mismatched files, or a label
        map holding values that are not Cityscapes label ids.
    """
    names = category_names(void)
    pairs = discover_cityscapes(root, split)
    lut = _lookup(void)

    def map_codes(codes: np.ndarray, pair: ImagePair) -> np.ndarray:
        ids = lut[np.clip(codes, 0, 255)]
        bad = (codes < 0) | (codes > 255) | (ids == -2)
        if bad.any():
            values = np.unique(codes[bad])
            shown = ", ".join(map(str, values[:8].tolist())) + (", ..." if len(values) > 8 else "")
            raise IngestError(
                f"{pair.label} holds values {{{shown}}} ({int(bad.sum()):,} pixels) that are not Cityscapes label ids "
                f"(0 .. 33, and 255 for the license plate's -1): is it a gtFine *{LABEL_SUFFIX} file? Fix or remove it"
            )
        return ids

    members = {c: [label.id for label in LABELS if label.category == c] for c in CATEGORIES}
    label_ids = "; ".join(f"{c}: {' '.join(map(str, ids))}" for c, ids in members.items())
    splits = _splits(split)
    reserved = "train" in splits and "val" in splits
    ds = mosaic_cube(
        pairs, size=size, map_codes=map_codes, class_names=names,
        class_colors=[CATEGORY_COLORS[CATEGORIES.index(n)] for n in names], cities=True,
        label_attrs={
            "label_ids": label_ids,
            "class_names_source": "Cityscapes categories (cityscapesScripts helpers/labels.py; license plate, id -1, "
                                  "in void)",
            "void_category": void,
        },
        attrs={
            "source_format": "cityscapes", "source_root": Path(root).name, "source_splits": ",".join(splits),
            "split_protocol": (
                "official val images reserved for the test split (image_split = 2); official train images shared "
                "between the train and val splits of a run by its fractions" if reserved else
                "no split reserved: every image is shared among the splits of a run by its fractions"
            ),
        },
    )
    void_px = int((ds["labels"].values[ds["image_index"].values >= 0] < 0).sum())
    empty = int((ds["image_index"].values < 0).sum())
    what = ("the void category is class 0" if void == "class" else
            f"{void_px:,} pixels of the void category (ids 0-6, -1) are void (-1)")
    ds["labels"].attrs["void_description"] = f"{what}; {empty:,} pixels of empty mosaic cells are void (-1)"
    return ds
