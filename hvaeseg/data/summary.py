"""What is in a cube: a summary (dict / text table) and a quick-look figure.

:func:`summarise` reads only what it reports (``valid`` date by date, ``labels`` once), so it works on
lazily opened cubes of any size; :func:`quicklook` reads one date, subsampled to at most
``max_pixels`` a side.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr

from hvaeseg._progress import progress
from hvaeseg.data.bands import RGB, band
from hvaeseg.data.schema import DEFAULT_CLASS_COLORS, class_colors, class_names, decoded_reflectance, valid_from_scl

__all__ = ["summarise", "format_summary", "quicklook", "date_index"]


def _iso(t: np.datetime64, unit: Literal["D", "s"]) -> str:
    return str(np.datetime_as_string(np.asarray(t, dtype="datetime64[ns]"), unit=unit))


def _time_unit(times: np.ndarray) -> Literal["D", "s"]:
    """``"D"`` when every time is midnight, else seconds."""
    t = np.asarray(times).astype("datetime64[ns]")
    return "D" if (t == t.astype("datetime64[D]")).all() else "s"


def _valid_per_date(ds: xr.Dataset, desc: str = "reading valid") -> np.ndarray | None:
    """Share of valid pixels per date (from ``valid``, else from ``scl``), one date in memory at a time."""
    if "valid" in ds.data_vars:
        mask = ds["valid"]
    elif "scl" in ds.data_vars:
        mask = None
    else:
        return None
    out = np.empty(ds.sizes["time"], dtype=np.float64)
    for t in progress(range(ds.sizes["time"]), desc=desc, total=ds.sizes["time"]):
        m = mask.isel(time=t).values if mask is not None else valid_from_scl(ds["scl"].isel(time=t).values)
        out[t] = float(np.mean(m)) if m.size else float("nan")
    return out


def summarise(ds: xr.Dataset) -> dict[str, Any]:
    """A JSON-ready summary of a cube.

    :returns: ``{"dims", "variables", "attrs", "bands": [{name, wavelength_nm, resolution_m}],
        "dates": [{time, invalid_fraction}], "invalid_fraction": mean over dates,
        "classes": [{id, name, color, pixels, fraction}], "void_pixels", "labelled_fraction"}``;
        ``dates`` lack ``invalid_fraction`` (and ``classes`` is empty) when the cube has no
        ``valid``/``scl`` (``labels``).
    """
    order = ["time", "band", "y", "x"]
    dims = sorted(ds.sizes, key=lambda d: (order.index(d) if d in order else len(order), str(d)))
    out: dict[str, Any] = {
        "dims": {str(d): int(ds.sizes[d]) for d in dims},
        "variables": {
            str(k): {"dims": [str(d) for d in v.dims], "dtype": str(v.dtype)} for k, v in ds.data_vars.items()
        },
        "attrs": {str(k): v for k, v in ds.attrs.items() if isinstance(v, (str, int, float, bool))},
    }
    if "reflectance" in ds.data_vars:
        r = ds["reflectance"]
        out["reflectance"] = {
            "dtype": str(r.dtype),
            **{k: float(r.attrs[k]) for k in ("scale_factor", "add_offset") if k in r.attrs},
        }
    bands = []
    if "band" in ds.coords:
        for i, name in enumerate(ds["band"].values):
            name = str(name)
            entry: dict[str, Any] = {"name": name}
            wl = ds["wavelength"].values[i] if "wavelength" in ds.coords else None
            res = ds["resolution"].values[i] if "resolution" in ds.coords else None
            if wl is None or res is None:
                try:
                    b = band(name)
                    wl = b.wavelength_nm if wl is None else wl
                    res = b.resolution_m if res is None else res
                except ValueError:
                    pass
            if wl is not None:
                entry["wavelength_nm"] = float(wl)
            if res is not None:
                entry["resolution_m"] = int(res)
            bands.append(entry)
    out["bands"] = bands

    dates = []
    if "time" in ds.coords and ds.sizes.get("time", 0):
        times = ds["time"].values
        unit = _time_unit(times)
        frac_valid = _valid_per_date(ds) if "time" in ds.dims else None
        for i, t in enumerate(times):
            entry = {"time": _iso(t, unit)}
            if frac_valid is not None:
                entry["invalid_fraction"] = round(1.0 - float(frac_valid[i]), 6)
            dates.append(entry)
        if frac_valid is not None:
            out["invalid_fraction"] = round(1.0 - float(np.mean(frac_valid)), 6)
    out["dates"] = dates

    classes = []
    if "labels" in ds.data_vars:
        lab = np.asarray(ds["labels"].values)
        try:
            names = class_names(ds)
            colors = class_colors(ds)
        except ValueError:
            names, colors = [], []
        values = lab[lab >= 0].astype(np.int64)
        k = max(len(names), int(values.max()) + 1 if values.size else 0)
        counts = np.bincount(values, minlength=k)
        total = lab.size
        for i in range(k):
            classes.append(
                {
                    "id": i,
                    "name": names[i] if i < len(names) else f"class_{i}",
                    "color": colors[i] if i < len(colors) else None,
                    "pixels": int(counts[i]),
                    "fraction": round(float(counts[i]) / total, 6) if total else 0.0,
                }
            )
        out["void_pixels"] = int(np.count_nonzero(lab < 0))
        out["labelled_fraction"] = round(1.0 - out["void_pixels"] / total, 6) if total else 0.0
    out["classes"] = classes
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """:func:`summarise` output as a readable text table."""
    lines = []
    dims = summary.get("dims", {})
    lines.append("dims       " + "  ".join(f"{k}={v}" for k, v in dims.items()))
    for name, v in summary.get("variables", {}).items():
        lines.append(f"variable   {name:<18} ({', '.join(v['dims'])}) {v['dtype']}")
    if "reflectance" in summary:
        r = summary["reflectance"]
        scale = ", ".join(f"{k}={r[k]:g}" for k in ("scale_factor", "add_offset") if k in r)
        lines.append(f"scaling    reflectance {r['dtype']}" + (f": {scale}" if scale else ""))
    attrs = summary.get("attrs", {})
    if "crs" in attrs:
        lines.append(f"crs        {attrs['crs']}")
    if "hvaeseg_schema_version" in attrs:
        lines.append(f"schema     version {attrs['hvaeseg_schema_version']}")
    if summary.get("bands"):
        lines.append("")
        lines.append(f"{'band':<6}{'wavelength':>12}{'resolution':>12}")
        for b in summary["bands"]:
            wl = f"{b['wavelength_nm']:.1f} nm" if "wavelength_nm" in b else "?"
            res = f"{b['resolution_m']} m" if "resolution_m" in b else "?"
            lines.append(f"{b['name']:<6}{wl:>12}{res:>12}")
    if summary.get("dates"):
        lines.append("")
        has_frac = any("invalid_fraction" in d for d in summary["dates"])
        width = max(len(d["time"]) for d in summary["dates"])
        lines.append(f"{'#':>4}  {'date':<{width}}" + ("  invalid (cloud, shadow, no data)" if has_frac else ""))
        for i, d in enumerate(summary["dates"]):
            row = f"{i:>4}  {d['time']:<{width}}"
            if "invalid_fraction" in d:
                f = d["invalid_fraction"]
                row += f"  {f:7.1%}  {'#' * int(round(f * 20))}"
            lines.append(row)
        if "invalid_fraction" in summary:
            lines.append(f"      mean invalid fraction {summary['invalid_fraction']:.1%}")
    if summary.get("classes"):
        lines.append("")
        w = max(16, 2 + max(len(str(c["name"])) for c in summary["classes"]))
        lines.append(f"{'id':>4}  {'class':<{w}}{'colour':<9}{'pixels':>12}{'share':>8}")
        for c in summary["classes"]:
            lines.append(
                f"{c['id']:>4}  {c['name']:<{w}}{c['color'] or '-':<9}{c['pixels']:>12}{c['fraction']:>8.1%}"
            )
        void_share = 1 - summary.get("labelled_fraction", 1)
        lines.append(f"{'-1':>4}  {'void':<{w}}{'':<9}{summary.get('void_pixels', 0):>12}{void_share:>8.1%}")
    return "\n".join(lines)


def date_index(ds: xr.Dataset, date: int | str | np.datetime64 | None = None) -> int:
    """Index along ``time`` of ``date``: an int index (negative counts from the end), an ISO date or
    datetime string (a day matches the first time on that day), or ``None`` = the clearest date.

    :raises ValueError: no such date (the message lists the cube's dates).
    """
    n = ds.sizes.get("time", 0)
    if n == 0:
        raise ValueError("the cube has no dates")
    if date is None:
        frac = _valid_per_date(ds, desc="finding the clearest date")
        return int(np.argmax(frac)) if frac is not None else 0
    if isinstance(date, (int, np.integer)) and not isinstance(date, bool):
        i = int(date)
        if not -n <= i < n:
            raise ValueError(f"date index {i} out of range: the cube has {n} dates (0..{n - 1})")
        return i % n
    text = str(date).strip()
    if text.lstrip("-").isdigit() and len(text) < 4:
        return date_index(ds, int(text))
    times = ds["time"].values.astype("datetime64[ns]")
    try:
        target = np.datetime64(text)
    except ValueError:
        raise ValueError(f"cannot read date {date!r}: give an index or an ISO date such as 2024-05-01") from None
    unit = np.datetime_data(target.dtype)[0]
    matches = np.flatnonzero(times.astype(f"datetime64[{unit}]") == target)
    if matches.size == 0:
        available = ", ".join(_iso(t, _time_unit(times)) for t in times[:12]) + (" ..." if len(times) > 12 else "")
        raise ValueError(f"no date {text} in the cube; dates: {available}")
    return int(matches[0])


def _stretch(rgb: np.ndarray, mask: np.ndarray | None = None, lo: float = 2.0, hi: float = 98.0) -> np.ndarray:
    """Per-channel 2-98 % percentile stretch to [0, 1]; NaN (no data) stays NaN.

    The percentiles come from the pixels where ``mask`` is true (the clear ones) when there are any, so
    that clouds do not squash the land into the dark end.
    """
    out = np.full_like(rgb, np.nan, dtype=np.float32)
    for c in range(rgb.shape[-1]):
        ch = rgb[..., c]
        finite = ch[np.isfinite(ch) & mask] if mask is not None and mask.any() else ch[np.isfinite(ch)]
        if finite.size == 0:
            finite = ch[np.isfinite(ch)]
        if finite.size == 0:
            continue
        a, b = np.percentile(finite, [lo, hi])
        out[..., c] = np.clip((ch - a) / max(b - a, 1e-6), 0, 1)
    return out


def quicklook(ds: xr.Dataset, date: int | str | None = None, *, max_pixels: int = 1024):
    """A three-panel figure of one date: RGB composite, label map with legend, valid mask.

    :param date: index or ISO date (see :func:`date_index`); default the clearest date.
    :param max_pixels: subsample so that neither side exceeds this (big cubes stay quick).
    :returns: a :class:`matplotlib.figure.Figure` (Agg canvas; save it with ``fig.savefig(path)``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    i = date_index(ds, date)
    h, w = ds.sizes.get("y", 0), ds.sizes.get("x", 0)
    step = max(1, int(np.ceil(max(h, w) / max_pixels)))
    sub = ds.isel(y=slice(None, None, step), x=slice(None, None, step)) if step > 1 else ds
    when = _iso(ds["time"].values[i], _time_unit(ds["time"].values)) if "time" in ds.coords else str(i)

    fig = Figure(figsize=(15, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])

    if "valid" in sub.data_vars:
        valid = np.asarray(sub["valid"].isel(time=i).values)
    elif "scl" in sub.data_vars:
        valid = valid_from_scl(np.asarray(sub["scl"].isel(time=i).values))
    else:
        valid = None

    # RGB composite
    ax = axes[0]
    if "reflectance" in sub.data_vars and "band" in sub.coords:
        names = [str(b) for b in sub["band"].values]
        chosen = [b for b in RGB if b in names]
        if len(chosen) < 3:
            chosen = (names * 3)[:3] if len(names) < 3 else names[:3]
            title = f"composite {'/'.join(chosen)} (no B04/B03/B02)"
        else:
            title = "RGB B04/B03/B02, 2-98% stretch"
        one = sub["reflectance"].isel(time=i).sel(band=chosen)
        refl = decoded_reflectance(one.to_dataset(name="reflectance"))
        rgb = _stretch(np.asarray(refl.transpose("y", "x", "band").values, dtype=np.float32), valid)
        rgba = np.dstack([np.nan_to_num(rgb, nan=0.0), np.isfinite(rgb).all(axis=-1).astype(np.float32)])
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(f"{title}\n{when}")
    else:
        ax.text(0.5, 0.5, "no reflectance", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(when)

    # labels
    ax = axes[1]
    if "labels" in sub.data_vars:
        lab = np.asarray(sub["labels"].values).astype(np.int64)
        try:
            names = class_names(ds)
            colors = class_colors(ds)
        except ValueError:
            k = int(lab.max()) + 1 if (lab >= 0).any() else 1
            names, colors = [f"class_{j}" for j in range(k)], [""] * k  # "": the default colour below
        k = len(names)
        colors = [c or DEFAULT_CLASS_COLORS[j % len(DEFAULT_CLASS_COLORS)] for j, c in enumerate(colors)]
        cmap = ListedColormap(colors).with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
        shown = np.ma.masked_where((lab < 0) | (lab >= k), lab)
        ax.imshow(shown, cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
        handles = [Patch(facecolor=c, edgecolor="none", label=f"{j} {n}")
                   for j, (n, c) in enumerate(zip(names, colors))]
        if (lab < 0).any():
            handles.append(Patch(facecolor="#ffffff", edgecolor="#999999", label="-1 void"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        ax.set_title(f"labels ({k} classes)")
    else:
        ax.text(0.5, 0.5, "no labels", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("labels")

    # valid mask
    ax = axes[2]
    if valid is not None:
        ax.imshow(valid.astype(np.uint8), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"valid (white): {valid.mean():.1%} clear")
    else:
        ax.text(0.5, 0.5, "no valid mask", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("valid")
    if step > 1:
        fig.suptitle(f"subsampled 1:{step}", fontsize=9)
    return fig
