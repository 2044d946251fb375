"""A seeded Cityscapes miniature in the official layout, drawn from shapes, for the tests (never hand-edited).

    ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png     8-bit RGB
    ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      8-bit label ids
    ROOT/gtFine/<split>/<city>/..._gtFine_color.png, ..._gtFine_polygons.json  (present, never read)

Each label map is a sky band (id 23) over a road band (id 7) with rectangles and one ellipse of other ids on top;
over the whole miniature every official label id 0 .. 33 is drawn, and 255 (the license plate's -1 in 8 bits)
once. An image's colours follow the *category* of each pixel (plus noise), so a model can learn the categories.
:func:`make_cityscapes` returns what it drew, and :data:`CATEGORY_OF` is the test's own copy of the official
id -> category table (cityscapesScripts ``helpers/labels.py``; license plate in void, as the issue asks), kept
apart from the module under test so that the two check each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: the test's copy of the official table: label id (255 = -1, license plate, in an 8-bit image) -> category
CATEGORY_OF: dict[int, str] = {
    **{i: "void" for i in (0, 1, 2, 3, 4, 5, 6)}, 255: "void",
    **{i: "flat" for i in (7, 8, 9, 10)},
    **{i: "construction" for i in (11, 12, 13, 14, 15, 16)},
    **{i: "object" for i in (17, 18, 19, 20)},
    21: "nature", 22: "nature", 23: "sky", 24: "human", 25: "human",
    **{i: "vehicle" for i in range(26, 34)},
}
CATEGORIES = ("void", "flat", "construction", "object", "nature", "sky", "human", "vehicle")
#: a base colour per category (RGB), far apart
_COLOR = np.array([[20, 20, 20], [128, 64, 128], [70, 70, 70], [200, 200, 40], [60, 160, 30], [70, 130, 230],
                   [220, 20, 60], [0, 0, 160]], dtype=np.float64)
#: the default miniature: (split, city, images)
CITIES = (("train", "aachen", 3), ("train", "bochum", 3), ("val", "frankfurt", 2))


@dataclass
class Miniature:
    """What :func:`make_cityscapes` drew: per image (in split, city, name order) its name, split, city, label ids
    ``(H, W)`` and RGB ``(H, W, 3)`` uint8."""

    root: Path
    names: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    cities: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def category_counts(self, splits: tuple[str, ...] = ("train", "val")) -> dict[str, int]:
        """Pixels per category over the images of ``splits``, by :data:`CATEGORY_OF`."""
        counts = dict.fromkeys(CATEGORIES, 0)
        for split, lab in zip(self.splits, self.labels):
            if split in splits:
                values, n = np.unique(lab, return_counts=True)
                for v, c in zip(values.tolist(), n.tolist()):
                    counts[CATEGORY_OF[v]] += c
        return counts


def make_cityscapes(root: str | Path, *, seed: int = 0, size: tuple[int, int] = (32, 64),
                    cities: tuple[tuple[str, str, int], ...] = CITIES) -> Miniature:
    """Write the miniature under ``root`` (module docstring); every label id is drawn when there are at least 7
    images (5 ids each)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    images = [(split, city, k) for split, city, n in cities for k in range(n)]
    ids = [i for i in range(34) if i not in (7, 23)] + [255]  # sky and road are in every image
    per_image = [ids[j::len(images)] for j in range(len(images))]
    out = Miniature(root)
    yy, xx = np.mgrid[0:h, 0:w]
    for (split, city, k), mine in zip(images, per_image):
        lab = np.where(yy < h // 3, 23, 7).astype(np.uint8)
        for n, code in enumerate(mine):  # rectangles in a row across the middle, random sizes
            x0 = int(n * w / max(len(mine), 1)) + int(rng.integers(0, 3))
            y0 = int(rng.integers(h // 4, h // 2))
            lab[y0:y0 + int(rng.integers(4, h // 2)), x0:x0 + int(rng.integers(3, max(4, w // len(mine))))] = code
        if mine:  # and one ellipse of the first id near the bottom
            cy, cx = h - h // 6, int(rng.integers(w // 4, 3 * w // 4))
            lab[((yy - cy) / (h / 8)) ** 2 + ((xx - cx) / (w / 10)) ** 2 <= 1] = mine[0]
        cat = np.vectorize(lambda v: CATEGORIES.index(CATEGORY_OF[int(v)]))(lab)
        rgb = np.clip(_COLOR[cat] + rng.normal(0, 12, (h, w, 3)), 0, 255).round().astype(np.uint8)
        name = f"{city}_{k:06d}_{19 + k:06d}"
        image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(image_dir / f"{name}_leftImg8bit.png")
        Image.fromarray(lab, "L").save(label_dir / f"{name}_gtFine_labelIds.png")
        Image.fromarray(rgb[..., ::-1].copy(), "RGB").save(label_dir / f"{name}_gtFine_color.png")  # never read
        (label_dir / f"{name}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": h, "imgWidth": w}))
        out.names.append(name), out.splits.append(split), out.cities.append(city)
        out.labels.append(lab), out.images.append(rgb)
    return out
