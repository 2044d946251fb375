"""What an ingest decided, as lines the command line prints (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def ingest_notes(ds: xr.Dataset) -> list[str]:
    """What an ingest decided that a user should know, one line each (the command line prints them): the
    reflectance scale and offset and where the offset came from, the classes and where their names came from,
    and which label codes became void."""
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
