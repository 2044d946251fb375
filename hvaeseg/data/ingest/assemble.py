"""Assembling a cube from the layers of several files: the cross-file checks, resampling onto the finest grid,
``valid`` from SCL, and the labels (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hvaeseg.data.bands import L2A_BANDS, band_coords, check_band_names
from hvaeseg.data.ingest._common import _TOL, IngestError, _bounds, _fmt_bounds, _Layer, _problems_message
from hvaeseg.data.ingest.classes import _LabelMap, _map_labels
from hvaeseg.data.ingest.offsets import L2A_SCALE_FACTOR, _boa_offset
from hvaeseg.data.ingest.resample import _resample_array, _same_coords
from hvaeseg.data.schema import SCHEMA_VERSION, valid_from_scl, validate_cube


def _resolution_name(layer: _Layer) -> str:
    r = layer.resolution
    return f"{r:g} m file {layer.source}" if np.isfinite(r) else f"file {layer.source}"


def _check_layers(layers: Sequence[_Layer], bands: Sequence[str], require_scl: bool) -> list[str]:
    """Every cross-file problem, as message lines (empty when the layers fit together)."""
    problems = []
    names = [layer.name for layer in layers]
    sources = sorted({layer.source for layer in layers})
    missing = [b for b in bands if b not in names]
    if missing:
        found = sorted({n for n in names if n != "SCL"})
        problems.append(
            f"missing bands {', '.join(missing)}: not found in {', '.join(sources)} "
            f"(found {', '.join(found) or 'none'}); pass --bands with the bands the cube is to hold (Python bands=)"
        )
    if require_scl and "SCL" not in names:
        problems.append(
            f"missing the SCL layer (scene classification) needed for `valid`: not found in {', '.join(sources)}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    for n in dup:
        problems.append(f"band {n} is given more than once: {', '.join(l.source for l in layers if l.name == n)}")
    if not layers:
        return problems
    # per source file: CRS, footprint, times (all layers of one file share them)
    per_file: dict[str, _Layer] = {}
    for layer in layers:
        per_file.setdefault(layer.source, layer)
    files = list(per_file.values())
    crs = {f.source: f.crs for f in files}
    if len({c for c in crs.values()}) > 1:
        problems.append("the files have different CRS: " + "; ".join(f"{s}: {c}" for s, c in crs.items()))
    ref = min(files, key=lambda f: f.resolution)
    for f in files:
        if f is ref:
            continue
        if not np.allclose(f.bounds, ref.bounds, rtol=0, atol=_TOL):
            problems.append(
                f"the footprints differ: {_resolution_name(f)} covers {_fmt_bounds(f.bounds)} but "
                f"{_resolution_name(ref)} covers {_fmt_bounds(ref.bounds)} (left, bottom, right, top)"
            )
    for layer in layers:
        f = per_file[layer.source]
        if layer is not f and (not np.array_equal(layer.times, f.times)):
            problems.append(f"{layer.source}: {layer.name} has other timestamps than the rest of the file")
    for f in files:
        if f is ref or np.array_equal(f.times, ref.times):
            continue
        a, b = set(ref.times.tolist()), set(f.times.tolist())
        only_ref, only_f = sorted(a - b), sorted(b - a)
        detail = []
        if len(f.times) != len(ref.times):
            detail.append(f"{len(ref.times)} vs {len(f.times)} dates")
        if only_ref:
            detail.append(f"{len(only_ref)} only in the first (e.g. {np.datetime64(only_ref[0], 'ns')})")
        if only_f:
            detail.append(f"{len(only_f)} only in the second (e.g. {np.datetime64(only_f[0], 'ns')})")
        if not detail:
            detail.append("same dates in another order")
        problems.append(
            f"the timestamps differ between the {_resolution_name(ref)} and the {_resolution_name(f)}: "
            + ", ".join(detail)
        )
    return problems


def _assemble(
    layers: Sequence[_Layer],
    *,
    labels: _LabelMap | None,
    code_table: Mapping[int, str] | None,
    classes: Sequence[int] | None,
    bands: Sequence[str] | None,
    boa_add_offset: float | None,
    require_scl: bool,
    attrs: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    void_codes: Sequence[int] | None = None,
    table_source: str | None = None,
    offset_required: bool = False,
) -> xr.Dataset:
    if bands is None:
        present = {layer.name for layer in layers if layer.name != "SCL"}
        bands = [b for b in L2A_BANDS if b in present] + sorted(present - set(L2A_BANDS))
        if not bands:
            raise IngestError(
                "no Sentinel-2 band variables (B02, B03, ...) found in " + ", ".join(sorted({l.source for l in layers}))
            )
    bands = list(check_band_names(bands))
    problems = _check_layers(layers, bands, require_scl)
    band_layers = {layer.name: layer for layer in layers}
    if not problems:
        ref = min({layer.source: layer for layer in layers}.values(), key=lambda f: f.resolution)
    if labels is not None and not problems:
        ly, lx, lcrs, lsrc = labels.y, labels.x, labels.crs, labels.source
        if not (_same_coords(ly, ref.y) and _same_coords(lx, ref.x)):
            problems.append(
                f"the label grid does not match: {lsrc} is {len(ly)}x{len(lx)} "
                f"covering {_fmt_bounds(_bounds(ly, lx))}, "
                f"the {ref.resolution:g} m grid of {ref.source} is {len(ref.y)}x{len(ref.x)} covering "
                f"{_fmt_bounds(ref.bounds)}; labels must be on the same pixel centres"
            )
        if lcrs is not None and ref.crs is not None and lcrs != ref.crs:
            problems.append(f"the label file {lsrc} has CRS {lcrs} but the bands {ref.crs}")
    if problems:
        raise IngestError(_problems_message(problems))

    scales = {float(np.asarray(band_layers[b].attrs.get("scale_factor", L2A_SCALE_FACTOR))) for b in bands}
    if len(scales) > 1:
        raise IngestError(f"the bands have different scale_factor {sorted(scales)}; expected one DN scale")
    scale = scales.pop()
    offset_dn, offset_source = _boa_offset([band_layers[b] for b in bands], boa_add_offset, scale, offset_required)

    times = ref.times
    order = np.argsort(times, kind="stable")
    if (np.diff(times[order]) == np.timedelta64(0)).any():
        raise IngestError(f"{ref.source}: duplicate timestamps; expected one acquisition per date")
    Y, X = ref.y, ref.x
    refl = np.empty((len(times), len(bands), len(Y), len(X)), dtype=np.uint16)
    methods = {}
    for i, b in enumerate(bands):
        layer = band_layers[b]
        v = layer.values()
        if not np.issubdtype(v.dtype, np.integer):
            raise IngestError(f"{layer.source}: band {b} has dtype {v.dtype}; expected integer DN")
        refl[:, i] = _resample_array(v, layer.y, layer.x, Y, X, "bilinear", 0)[order]
        methods[b] = "copied (native grid)" if _same_coords(layer.y, Y) and _same_coords(layer.x, X) else (
            f"bilinear from {layer.resolution:g} m, pixel centres aligned, no-data excluded"
        )
    data_vars: dict[str, Any] = {
        "reflectance": (
            ("time", "band", "y", "x"), refl,
            {"scale_factor": scale, "add_offset": float(offset_dn * scale), "units": "1",
             "long_name": "surface reflectance (DN)", "resampling": "; ".join(f"{b}: {m}" for b, m in methods.items())},
        )
    }
    if "SCL" in band_layers:
        s = band_layers["SCL"]
        scl = _resample_array(s.values(), s.y, s.x, Y, X, "nearest", None)[order].astype(np.uint8)
        data_vars["scl"] = (("time", "y", "x"), scl, {
            "long_name": "scene classification (SCL)",
            "resampling": f"nearest from {s.resolution:g} m (containing pixel)",
        })
        valid = valid_from_scl(scl, refl)
    else:
        valid = (refl != 0).all(axis=1)
    data_vars["valid"] = (("time", "y", "x"), valid, {"long_name": "observed and clear"})
    if labels is not None:
        ids, lattrs = _map_labels(labels, code_table, classes, class_names, void_codes, table_source)
        data_vars["labels"] = (("y", "x"), ids, lattrs)
    crs = ref.crs
    ds = xr.Dataset(
        data_vars,
        coords={"time": times[order].astype("datetime64[ns]"), **band_coords(bands), "y": Y, "x": X},
        attrs={
            **({"crs": crs} if crs else {}),
            "hvaeseg_schema_version": SCHEMA_VERSION,
            "boa_add_offset": float(offset_dn),
            "boa_offset_source": offset_source,
            "sources": [Path(s).name for s in sorted({layer.source for layer in layers})]
            + ([Path(labels.source).name] if labels is not None else []),
            **dict(attrs),
        },
    )
    validate_cube(ds)
    return ds
