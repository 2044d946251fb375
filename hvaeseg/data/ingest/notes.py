"""What an ingest decided, as lines the command line prints (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def ingest_notes(ds: xr.Dataset) -> list[str]:
    """What an ingest decided that a user should know, one line each (the command line prints them): the
    reflectance scale and offset and where the offset came from, the classes and where their names came from,
    and which label codes became void."""
    if ds.attrs.get("sensor") == "camera":
        return _image_notes(ds)
    lines = []
    refl = ds["reflectance"].attrs
    lines.append(
        f"reflectance: scale_factor {float(refl.get('scale_factor', 1.0)):g}, add_offset "
        f"{float(refl.get('add_offset', 0.0)):g} (BOA offset {float(ds.attrs.get('boa_add_offset', 0.0)):g} DN; "
        f"from {ds.attrs.get('boa_offset_source', 'unknown')})"
    )
    if "labels" in ds:
        la = ds["labels"].attrs
        names = str(la.get("flag_meanings", "")).split()
        codes = list(np.asarray(la.get("source_codes", [])).ravel().tolist())
        pairs = ", ".join(f"{c} -> {i} {n}" for i, (c, n) in enumerate(zip(codes, names)))
        source = la.get("class_names_source", "?")
        lines.append(f"labels: {len(names)} classes, code -> id name: {pairs} (names from {source})")
        if "void_description" in la:
            lines.append(f"labels: {la['void_description']}")
    return lines


def _image_notes(ds: xr.Dataset) -> list[str]:
    """The notes of a mosaic of camera images: the images and their splits, the storage, the classes."""
    h, w = (int(v) for v in np.ravel(ds.attrs.get("mosaic_image_size", [0, 0])))
    n = int(ds.sizes.get("image", 0))
    subsets = ""
    if "image_subset" in ds.coords:
        values, counts = np.unique(ds["image_subset"].values.astype(str), return_counts=True)
        subsets = " (" + ", ".join(f"{c} {v}" for v, c in zip(values, counts)) + ")"
    lines = [
        f"images: {n}{subsets}, {h}x{w} pixels each, in a mosaic of {ds.attrs.get('mosaic_columns')} columns; "
        f"{ds['reflectance'].attrs.get('resampling', '')}",
        f"splits: {ds.attrs.get('split_protocol', 'no split reserved')}",
        "reflectance: bands " + " ".join(str(b) for b in ds["band"].values) + ", 8-bit value / 255 (uint16 DN = 1 + "
        "256 x value, DN 0 = no data)",
    ]
    if "labels" in ds:
        la = ds["labels"].attrs
        names = str(la.get("flag_meanings", "")).split()
        pixels = list(la.get("class_pixels", []))
        listed = ", ".join(f"{i} {name}" + (f" ({pixels[i]:,} px)" if i < len(pixels) else "")
                           for i, name in enumerate(names))
        lines.append(f"labels: {len(names)} classes: {listed} (names from {la.get('class_names_source', '?')})")
        if "label_ids" in la:
            lines.append(f"labels: label ids per category: {la['label_ids']}")
        if "void_description" in la:
            lines.append(f"labels: {la['void_description']}")
    return lines
