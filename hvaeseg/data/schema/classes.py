"""Class tables of a label map: the CF flag attributes (``flag_values``, ``flag_meanings``, ``flag_colors``) that
name and colour the classes, written by :func:`class_attrs` and read by :func:`class_names` / :func:`class_colors`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import xarray as xr

__all__ = ["DEFAULT_CLASS_COLORS", "class_attrs", "class_colors", "class_names"]


#: class colours used when a label map carries no ``flag_colors`` (matplotlib tab20 order, then grey)
DEFAULT_CLASS_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)  # fmt: skip

_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_NAME_RE = re.compile(r"^\S+$")


def class_attrs(names: Sequence[str], colors: Sequence[str] | None = None) -> dict:
    """CF flag attributes for a label map with classes ``names`` (ids 0..K-1 in that order).

    :param names: one word per class (no spaces), e.g. ``["water", "forest", "crop"]``.
    :param colors: ``#rrggbb`` per class; default :data:`DEFAULT_CLASS_COLORS`.
    :returns: ``{"flag_values": [0..K-1], "flag_meanings": "water forest crop", "flag_colors": "#.. #.."}``
    """
    names = [str(n) for n in names]
    if not names:
        raise ValueError("class_attrs needs at least one class name")
    bad = [n for n in names if not _NAME_RE.match(n)]
    if bad:
        raise ValueError(f"class names must be single words (flag_meanings is space-separated), got {bad}; use '_'")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    if colors is None:
        colors = [DEFAULT_CLASS_COLORS[i % len(DEFAULT_CLASS_COLORS)] for i in range(len(names))]
    colors = [str(c) for c in colors]
    if len(colors) != len(names):
        raise ValueError(f"expected {len(names)} colours (one per class), got {len(colors)}")
    badc = [c for c in colors if not _COLOR_RE.match(c)]
    if badc:
        raise ValueError(f"colours must be '#rrggbb', got {badc}")
    return {
        "flag_values": list(range(len(names))),
        "flag_meanings": " ".join(names),
        "flag_colors": " ".join(colors),
    }


def _labels_attrs(obj: xr.Dataset | xr.DataArray | Mapping) -> Mapping:
    if isinstance(obj, xr.Dataset):
        if "labels" not in obj:
            raise ValueError("the cube has no `labels` variable")
        return obj["labels"].attrs
    if isinstance(obj, xr.DataArray):
        return obj.attrs
    return obj


def class_names(ds: xr.Dataset | xr.DataArray) -> list[str]:
    """Class names (``flag_meanings``) of a cube's labels, or of a labels DataArray; index = class id."""
    attrs = _labels_attrs(ds)
    if "flag_meanings" not in attrs:
        raise ValueError("labels lack the `flag_meanings` attribute. Fix: labels.attrs.update(class_attrs(names))")
    return str(attrs["flag_meanings"]).split()


def class_colors(ds: xr.Dataset | xr.DataArray) -> list[str]:
    """``#rrggbb`` per class (``flag_colors``, else :data:`DEFAULT_CLASS_COLORS`); index = class id."""
    attrs = _labels_attrs(ds)
    k = len(class_names(ds))
    if "flag_colors" in attrs:
        colors = str(attrs["flag_colors"]).split()
        if len(colors) == k and all(_COLOR_RE.match(c) for c in colors):
            return colors
    return [DEFAULT_CLASS_COLORS[i % len(DEFAULT_CLASS_COLORS)] for i in range(k)]
