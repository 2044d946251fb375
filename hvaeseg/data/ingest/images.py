"""Camera images (8-bit PNG) and their label maps to a mosaic cube (:mod:`hvaeseg.data.mosaic`): reading, resizing,
and laying the images out on one date. Shared by :mod:`~hvaeseg.data.ingest.cityscapes` and
:mod:`~hvaeseg.data.ingest.image_folder` (see :mod:`hvaeseg.data.ingest`).

Reading (Pillow, a dependency of matplotlib): images in any 8-bit mode (RGB; grey ``L`` and palette ``P`` are
converted to RGB, the alpha of ``RGBA``/``LA`` is dropped); label maps of one channel, ``L``/``P`` (8 bit, a
palette image's indices are the codes) or ``I;16``/``I`` (16 bit); a colour label image (``RGB``) is an error.
Every file's header (mode and size) is checked before any pixel is read.

Resizing to ``size = (H, W)``:

* **images: area averaging.** Output pixel ``(i, j)`` covers ``[i s_y, (i+1) s_y) x [j s_x, (j+1) s_x)`` of the
  input (``s = input / output`` per axis) and is the mean of the input over that footprint, each input pixel
  weighted by the share of its area inside it: the weights are separable, ``out = A_y @ img @ A_x^T`` with
  ``A[i, k] = |[i s, (i+1) s) ∩ [k, k+1)| / s``. Exact for any ratio; for whole ratios it is the plain mean of
  ``s_y x s_x`` blocks (computed that way). Enlarging repeats pixels (each output footprint lies in at most two
  input pixels).
* **labels: nearest.** Output pixel ``(i, j)`` takes the input pixel that contains its centre:
  ``k = floor((i + 1/2) s)``. A resized label map holds only ids of its input, never a blend.

Storage: reflectance is the 8-bit value / 255, in [0, 1], stored as uint16 DN = 1 + round(256 x value) with
``scale_factor = 1/65280`` and ``add_offset = -1/65280`` (so ``DN * scale_factor + add_offset = value / 255``):
area averages keep 1/256 of an 8-bit step, and DN 0 keeps its meaning "no data" (the empty cells of the
mosaic's last row) while a black pixel (value 0, DN 1) is data. ``valid`` is True on every image pixel.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg._progress import progress
from hvaeseg.data.bands import CAMERA_BANDS, CAMERA_SENSOR
from hvaeseg.data.ingest._common import IngestError
from hvaeseg.data.mosaic import IMAGE_DIM, MosaicLayout
from hvaeseg.data.schema import SCHEMA_VERSION, class_attrs, validate_cube

#: DN per 8-bit step; DN = 1 + DN_PER_STEP * value
DN_PER_STEP = 256
#: reflectance per DN: 8-bit value / 255 = (DN - 1) / 65280
CAMERA_SCALE_FACTOR = 1.0 / (255 * DN_PER_STEP)
#: the offset that keeps DN 0 for no data
CAMERA_ADD_OFFSET = -CAMERA_SCALE_FACTOR
#: the date of the one time step of a mosaic (camera images carry no acquisition date here)
PLACEHOLDER_DATE = np.datetime64("2000-01-01T00:00:00", "ns")

_IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P")
_LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")


@dataclass(frozen=True)
class ImagePair:
    """One image and its label map.

    :param name: the image's name (unique in the cube), e.g. ``aachen_000000_000019``.
    :param image: the image file.
    :param label: the label file (one channel of codes).
    :param city: Cityscapes: the city (empty for other datasets).
    :param subset: the dataset's own split of the image (Cityscapes ``train`` / ``val``; empty if none).
    :param reserved: the run split the image is reserved for (0 train, 1 val, 2 test; -1 free).
    """

    name: str
    image: Path
    label: Path
    city: str = ""
    subset: str = ""
    reserved: int = -1


def pillow():
    """The ``PIL.Image`` module, or an error saying how to install it."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("reading PNG images needs Pillow: pip install pillow") from None
    return Image


# --------------------------------------------------------------------------------------------------
# resizing
# --------------------------------------------------------------------------------------------------


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64: the share of input pixel ``k`` in the footprint of output pixel ``i``."""
    s = n_in / n_out
    edges = np.arange(n_out + 1, dtype=np.float64) * s
    k = np.arange(n_in, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], k[None, :] + 1) - np.maximum(edges[:-1, None], k[None, :])
    return np.clip(overlap, 0.0, None) / s


def area_resize(values: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Area-averaged resize of ``values (H, W)`` or ``(H, W, C)`` to ``size = (h, w)``; float64 (module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    (H, W), (h, w) = v.shape[:2], (int(size[0]), int(size[1]))
    if (H, W) == (h, w):
        return v.copy()
    if H % h == 0 and W % w == 0:  # whole ratios: the mean of blocks (the same numbers, faster)
        return v.reshape(h, H // h, w, W // w, *v.shape[2:]).mean(axis=(1, 3))
    out = np.tensordot(_area_weights(H, h), v, axes=(1, 0))  # (h, W, ...)
    out = np.tensordot(_area_weights(W, w), out, axes=(1, 1))  # (w, h, ...)
    return np.swapaxes(out, 0, 1)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Input index of every output pixel along one axis: the input pixel containing the output pixel's centre."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def nearest_resize(values: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest resize of ``values (H, W, ...)`` to ``size = (h, w)``: every output value is an input value."""
    v = np.asarray(values)
    iy, ix = nearest_index(v.shape[0], int(size[0])), nearest_index(v.shape[1], int(size[1]))
    return v[iy[:, None], ix[None, :]]


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(mode, (H, W))`` of an image file, from its header only."""
    Image = pillow()
    try:
        with Image.open(path) as im:
            return im.mode, (int(im.size[1]), int(im.size[0]))
    except FileNotFoundError:
        raise IngestError(f"{path}: no such file") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
        raise IngestError(f"{path}: not a readable image ({type(err).__name__}: {err}); expected a PNG file") from None


def check_headers(pairs: Sequence[ImagePair], size: Sequence[int] | None) -> tuple[int, int]:
    """Check every file's mode and size before any pixel is read; returns the cube's image size ``(H, W)``:
    ``size``, or else the one size every image must share.

    :raises IngestError: naming the files: an image of an unsupported mode, a colour label image, a label map
        of another size than its image, or (without ``size``) images of different sizes.
    """
    problems: list[str] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for p in pairs:
        mode, shape = _header(p.image)
        if mode not in _IMAGE_MODES:
            problems.append(f"{p.image} is a {mode!r} image; expected 8-bit RGB (or grey / palette): convert it, "
                            "e.g. with Pillow's Image.convert('RGB')")
        lmode, lshape = _header(p.label)
        if lmode not in _LABEL_MODES:
            hint = (" (a colour rendering of the labels? give the map of label codes, e.g. Cityscapes' "
                    "*_gtFine_labelIds.png, not *_color.png)" if lmode in ("RGB", "RGBA") else "")
            problems.append(f"{p.label} is a {lmode!r} image; expected one channel of integer label codes (mode L, "
                            f"P or I;16){hint}")
        if lshape != shape:
            problems.append(f"{p.label} is {lshape[0]}x{lshape[1]} but its image {p.image} is {shape[0]}x{shape[1]}; "
                            "a label map must have its image's size")
        if first is None:
            first = (p.image, shape)
        elif size is None and shape != first[1]:
            problems.append(f"{p.image} is {shape[0]}x{shape[1]} but {first[0]} is {first[1][0]}x{first[1][1]}: pass "
                            "--size H W (Python size=(H, W)) to resize every image to one size")
        if len(problems) >= 5:
            break
    if len(problems) == 1:
        raise IngestError(f"cannot ingest these images: {problems[0]}")
    if problems:
        listed = "; ".join(f"({i}) {q}" for i, q in enumerate(problems, 1))
        more = " (the first 5 problems; there may be more)" if len(problems) >= 5 else ""
        raise IngestError(f"cannot ingest these images: {listed}{more}")
    if size is not None:
        h, w = (int(v) for v in size)
        if h < 1 or w < 1:
            raise IngestError(f"--size {h} {w}: expected a positive height and width in pixels")
        return h, w
    assert first is not None
    return first[1]


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an 8-bit image file (grey and palette images converted, alpha dropped)."""
    Image = pillow()
    with Image.open(path) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)


def read_codes(path: Path) -> np.ndarray:
    """``(H, W)`` int64 label codes of a one-channel image (a palette image's indices)."""
    Image = pillow()
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# the mosaic
# --------------------------------------------------------------------------------------------------


def mosaic_cube(
    pairs: Sequence[ImagePair],
    *,
    size: Sequence[int] | None,
    map_codes: Callable[[np.ndarray, ImagePair], np.ndarray],
    class_names: Sequence[str],
    class_colors: Sequence[str] | None = None,
    label_attrs: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    cities: bool = False,
) -> xr.Dataset:
    """The mosaic cube of ``pairs`` (validated; nothing written).

    :param size: ``(H, W)`` to resize every image to (None: the images' own size, which they must share).
    :param map_codes: ``(codes (H, W) int64, pair) -> class ids (H, W)`` int16 in ``-1 .. K-1``; raises
        :class:`IngestError` for codes it does not know.
    :param class_names: the K class names; ``class_colors`` their colours.
    :param label_attrs: extra attributes of ``labels``; ``attrs`` extra dataset attributes.
    :param cities: add the ``image_city`` coordinate.
    """
    if not pairs:
        raise IngestError("no images to ingest")
    names = [p.name for p in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise IngestError(f"image names repeat ({', '.join(dup[:5])}): every image of a cube needs its own name")
    h, w = check_headers(pairs, size)
    layout = MosaicLayout.for_images(len(pairs), (h, w))
    Y, X = layout.shape["y"], layout.shape["x"]
    dn = np.zeros((1, 3, Y, X), dtype=np.uint16)
    labels = np.full((Y, X), -1, dtype=np.int16)
    native: set[tuple[int, int]] = set()
    for p, (y0, y1, x0, x1) in progress(list(zip(pairs, layout.boxes().tolist())), desc="reading images",
                                        total=len(pairs)):
        rgb = read_image(p.image)
        native.add(rgb.shape[:2])
        value = area_resize(rgb, (h, w))  # (h, w, 3) float64, 0..255
        dn[0, :, y0:y1, x0:x1] = np.moveaxis(1 + np.rint(value * DN_PER_STEP), -1, 0).astype(np.uint16)
        ids = np.asarray(map_codes(read_codes(p.label), p), dtype=np.int16)
        labels[y0:y1, x0:x1] = nearest_resize(ids, (h, w))
    resized = sorted(native - {(h, w)})
    how = ("not resized" if not resized else
           "resized from " + ", ".join(f"{a}x{b}" for a, b in resized) + f" to {h}x{w}: area averaging")
    coords: dict[str, Any] = {
        "time": ("time", np.array([PLACEHOLDER_DATE]),
                 {"long_name": "placeholder date: camera images carry no acquisition date in this cube"}),
        "band": ("band", np.array(CAMERA_BANDS, dtype=str), {"long_name": "8-bit sRGB channel / 255"}),
        "y": ("y", Y - 0.5 - np.arange(Y, dtype=np.float64), {"units": "pixel", "long_name": "row from the bottom"}),
        "x": ("x", 0.5 + np.arange(X, dtype=np.float64), {"units": "pixel", "long_name": "column from the left"}),
        "image_name": (IMAGE_DIM, np.array(names, dtype=str)),
        "image_source": (IMAGE_DIM, np.array([_relative(p.image, pairs) for p in pairs], dtype=str)),
    }
    if any(p.subset for p in pairs):
        coords["image_subset"] = (IMAGE_DIM, np.array([p.subset for p in pairs], dtype=str),
                                  {"long_name": "the dataset's own split of the image"})
    if cities:
        coords["image_city"] = (IMAGE_DIM, np.array([p.city for p in pairs], dtype=str))
    lattrs = {
        **class_attrs(class_names, class_colors), "long_name": "class id (-1 = void)",
        "resampling": "not resized" if not resized else "nearest (the input pixel containing the centre)",
        **dict(label_attrs or {}),
    }
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(class_names))
    lattrs["class_pixels"] = [int(c) for c in counts]
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), dn, {
                "scale_factor": CAMERA_SCALE_FACTOR, "add_offset": CAMERA_ADD_OFFSET, "units": "1",
                "long_name": "8-bit value / 255 (DN = 1 + 256 x value; DN 0 = no data)", "resampling": how,
            }),
            "valid": (("time", "y", "x"), (dn != 0).all(axis=1), {"long_name": "observed and clear"}),
            "labels": (("y", "x"), labels, lattrs),
            "image_index": (("y", "x"), layout.image_index(), {"long_name": "image of the pixel (-1 = empty cell)"}),
            "image_split": ((IMAGE_DIM,), np.array([p.reserved for p in pairs], dtype=np.int8), {
                "long_name": "the split the image is reserved for", "flag_values": [-1, 0, 1, 2],
                "flag_meanings": "free train val test",
            }),
        },
        coords=coords,
        attrs={
            "hvaeseg_schema_version": SCHEMA_VERSION, "sensor": CAMERA_SENSOR, "grid": "image",
            "grid_description": (f"a mosaic of {len(pairs)} images of {h}x{w} pixels in {layout.columns} columns "
                                 "(image i at row i // columns, column i % columns); 1 unit = 1 pixel, origin at the "
                                 "lower-left corner"),
            **layout.attrs(), **dict(attrs or {}),
        },
    )
    validate_cube(ds)
    return ds


def _relative(path: Path, pairs: Sequence[ImagePair]) -> str:
    """``path`` relative to the folder all images share (their common parent), for the record."""
    try:
        root = Path(os.path.commonpath([str(q.image.parent) for q in pairs]))
        return str(path.relative_to(root.parent if root.parent != root else root))
    except ValueError:
        return path.name


def chunks_for(ds: xr.Dataset) -> dict[str, int]:
    """Chunk sizes for a mosaic: whole images per chunk, at least 256 pixels a side (so a patch never decodes a
    chunk of another image for nothing)."""
    h, w = (int(v) for v in ds.attrs["mosaic_image_size"])
    return {"y": h * -(-256 // h), "x": w * -(-256 // w)}
