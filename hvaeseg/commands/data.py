"""``hvaeseg data ...``: make, inspect and look at cubes.

- ``hvaeseg data synth OUT.zarr [--preset tiny|small|large] [--seed N] [--size N | HxW] [--dates N]
  [--bands B02,B03,...] [--clouds CLEAR,PARTLY,OVERCAST] [--overwrite]``
- ``hvaeseg data info CUBE [--json] [--no-validate]``
- ``hvaeseg data quicklook CUBE [--date D] -o PNG [--compare FILLED.zarr]``: with ``--compare``, one date
  before and after ``hvaeseg inpaint``: input RGB, filled RGB, filled mask and posterior std side by side

:func:`register` returns the ``data`` sub-parsers so that other command modules can add to the group.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

from hvaeseg.commands._storage import add_storage_options

__all__ = ["register", "parse_size", "parse_bands", "parse_clouds", "compare_quicklook"]

PRESETS = ("tiny", "small", "large")


# --------------------------------------------------------------------------------------------- parsing


def parse_size(text: str) -> int | tuple[int, int]:
    """``"512"`` -> 512, ``"256x512"`` -> (256, 512) (H x W)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 512 or 256x512), got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sizes, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_bands(text: str) -> tuple[str, ...]:
    """``"B02,B03,B8A"`` -> ("B02", "B03", "B8A"), checked against the band table."""
    from hvaeseg.data.bands import check_band_names

    names = [n.strip() for n in str(text).split(",") if n.strip()]
    try:
        return check_band_names(names)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_clouds(text: str) -> tuple[float, float, float]:
    """``"0.5,0.3,0.2"`` -> shares of clear, partly cloudy and overcast dates (summing to 1)."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers CLEAR,PARTLY,OVERCAST, got {text!r}") from None
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative shares CLEAR,PARTLY,OVERCAST summing to 1 (e.g. 0.5,0.3,0.2), got {text!r}"
        )
    return values


# --------------------------------------------------------------------------------------------- commands


def _synth(args: argparse.Namespace) -> int:
    from hvaeseg.data.store import open_cube

    try:
        from hvaeseg.data.synthetic import write_synthetic
    except ImportError as err:  # pragma: no cover - only before the generator exists
        raise ValueError(f"the synthetic generator is not available: {err}") from None
    overrides = {
        k: v
        for k, v in (
            ("size", args.size),
            ("n_dates", args.dates),
            ("bands", args.bands),
            ("cloud_regime", args.clouds),
        )
        if v is not None
    }
    start = time.perf_counter()
    if "overwrite" in inspect.signature(write_synthetic).parameters:
        path = write_synthetic(args.out, args.preset, args.seed, overwrite=args.overwrite, **overrides)
    else:
        # a generator without `overwrite`: write beside the target, then swap it in atomically
        from hvaeseg.data.store import _Location

        loc = _Location(args.out)
        loc.check_free(args.overwrite)
        tmp = loc.sibling("tmp")
        try:
            write_synthetic(loc.url(tmp), args.preset, args.seed, **overrides)
            loc.commit(tmp, args.overwrite)
        finally:
            loc.remove(tmp)
        path = args.out
    seconds = time.perf_counter() - start
    ds = open_cube(path, validate=False)
    dims = " x ".join(f"{ds.sizes[d]} {d}" for d in ("time", "band", "y", "x") if d in ds.sizes)
    print(f"wrote {path}: {args.preset} preset, seed {args.seed}, {dims} in {seconds:.1f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    from hvaeseg.data.store import open_cube
    from hvaeseg.data.summary import format_summary, summarise

    ds = open_cube(args.cube, validate=not args.no_validate)
    summary = summarise(ds)
    if args.json:
        print(json.dumps({"path": args.cube, **summary}, indent=2))
    else:
        print(f"cube {args.cube}")
        print(format_summary(summary))
    return 0


def _quicklook(args: argparse.Namespace) -> int:
    from hvaeseg.data.store import open_cube
    from hvaeseg.data.summary import quicklook

    ds = open_cube(args.cube, validate=not args.no_validate)
    date = args.date
    if date is not None and date.lstrip("-").isdigit() and len(date.lstrip("-")) < 4:
        date = int(date)
    if args.compare is not None:
        fig = compare_quicklook(ds, open_cube(args.compare, validate=not args.no_validate), date)
    else:
        fig = quicklook(ds, date)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0


def _rgb_bands(ds) -> list[str]:
    from hvaeseg.data.bands import RGB

    names = [str(b) for b in ds["band"].values]
    chosen = [b for b in RGB if b in names]
    return chosen if len(chosen) == 3 else (names * 3)[:3]


def compare_quicklook(ds, filled, date: int | str | None = None, *, max_pixels: int = 1024):
    """One date before and after inpainting: input RGB, filled RGB, filled mask, posterior std (four panels).

    Both RGB panels share one 2-98 % stretch (from the filled image, which has no clouds), so they compare
    directly; the std panel shows the mean over the three RGB bands (reflectance units).

    :param ds: the input cube; ``filled``: the output of ``hvaeseg inpaint`` for it (same dates and grid).
    :param date: index or ISO date of ``ds`` (see :func:`hvaeseg.data.summary.date_index`); default the partly
        filled date whose filled share is closest to one half (else the date with the most filled pixels).
    :raises ValueError: ``filled`` is not an inpainted cube of ``ds``'s shape.
    :returns: a :class:`matplotlib.figure.Figure` (Agg canvas).
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hvaeseg.data.schema import decoded_reflectance
    from hvaeseg.data.summary import _iso, _time_unit, date_index

    missing = [v for v in ("reflectance", "filled") if v not in filled.data_vars]
    if missing:
        raise ValueError(f"--compare: the store lacks {', '.join(missing)}; give the output of `hvaeseg inpaint`")
    shape = {d: ds.sizes.get(d) for d in ("time", "y", "x")}
    other = {d: filled.sizes.get(d) for d in ("time", "y", "x")}
    if shape != other:
        raise ValueError(f"--compare: the filled cube has sizes {other}, the cube {shape}: not its inpainting")
    if date is None:
        share = np.asarray(filled["filled"].mean(("y", "x")).values)
        partly = (share > 0) & (share < 1)
        i = int(np.argmin(np.where(partly, np.abs(share - 0.5), np.inf))) if partly.any() else int(np.argmax(share))
    else:
        i = date_index(ds, date)
    h, w = ds.sizes["y"], ds.sizes["x"]
    step = max(1, int(np.ceil(max(h, w) / max_pixels)))
    sub = {"time": i, "y": slice(None, None, step), "x": slice(None, None, step)}
    bands = _rgb_bands(ds)

    def rgb(cube) -> np.ndarray:
        one = cube["reflectance"].isel(sub).sel(band=bands)
        refl = decoded_reflectance(one.to_dataset(name="reflectance"))
        return np.asarray(refl.transpose("y", "x", "band").values, dtype=np.float32)

    before, after = rgb(ds), rgb(filled)
    mask = np.asarray(filled["filled"].isel(sub).values, dtype=bool)
    lo, hi = [], []
    for c in range(3):
        ref = after[..., c][np.isfinite(after[..., c])]
        a, b = np.percentile(ref, [2, 98]) if ref.size else (0.0, 1.0)
        lo.append(a)
        hi.append(max(b - a, 1e-6))
    lo_a, span = np.asarray(lo, np.float32), np.asarray(hi, np.float32)

    def show(img: np.ndarray) -> np.ndarray:
        out = np.clip((img - lo_a) / span, 0, 1)
        return np.dstack([np.nan_to_num(out, nan=0.0), np.isfinite(out).all(axis=-1).astype(np.float32)])

    when = _iso(ds["time"].values[i], _time_unit(ds["time"].values))
    fig = Figure(figsize=(20, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].imshow(show(before), interpolation="nearest")
    axes[0].set_title(f"input {'/'.join(bands)}\n{when}")
    method = filled.attrs.get("inpaint_method", "inpainting")
    axes[1].imshow(show(after), interpolation="nearest")
    axes[1].set_title(f"filled ({method})\nsame stretch")
    axes[2].imshow(mask.astype(np.uint8), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title(f"filled (white): {mask.mean():.1%} of the pixels")
    std = None
    if "std" in filled.data_vars:
        std = np.asarray(filled["std"].isel(sub).sel(band=bands).mean("band").values, dtype=np.float32)
    if std is not None and np.nanmax(std, initial=0.0) > 0:
        im = axes[3].imshow(std, cmap="magma", vmin=0, interpolation="nearest")
        fig.colorbar(im, ax=axes[3], shrink=0.8, label="reflectance")
        axes[3].set_title("posterior std (mean of the RGB bands)")
    else:
        axes[3].text(0.5, 0.5, "no posterior spread" + (f" ({method})" if std is not None else ""), ha="center",
                     va="center", transform=axes[3].transAxes)
        axes[3].set_title("std")
    if step > 1:
        fig.suptitle(f"subsampled 1:{step}", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------- parser


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add the ``data`` group to the top-level ``subparsers``; return the group's own sub-parsers.

    Other command modules add ``data`` sub-commands to the returned object, e.g.
    ``register(sub).add_parser("ingest", ...)``.
    """
    group = subparsers.add_parser(
        "data",
        help="make, inspect and look at Sentinel-2 cubes",
        description="Make, inspect and look at Sentinel-2 cubes (Zarr stores; local paths or fsspec URLs).",
    )
    sub = group.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = sub.add_parser(
        "synth",
        help="generate a synthetic cube with known truth",
        description="Generate a synthetic Sentinel-2 cube (seeded, with clean reflectance under the clouds) "
        "and write it to a Zarr store, atomically.",
    )
    p.add_argument("out", metavar="OUT.zarr", help="where to write the store (path or fsspec URL)")
    p.add_argument("--preset", choices=PRESETS, default="tiny", help="size preset (default: tiny)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=parse_size, metavar="N|HxW", help="image size, overriding the preset")
    p.add_argument("--dates", type=int, metavar="N", help="number of dates, overriding the preset")
    p.add_argument("--bands", type=parse_bands, metavar="B02,B03,...", help="band subset (default: the 10 L2A bands)")
    p.add_argument(
        "--clouds",
        type=parse_clouds,
        metavar="CLEAR,PARTLY,OVERCAST",
        help="shares of clear, partly cloudy and overcast dates, e.g. 0.5,0.3,0.2",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    add_storage_options(p)
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "info",
        help="dims, bands, dates, cloud fraction per date, class histogram",
        description="Summarise a cube: dims, bands, dates with their invalid (cloud) fraction, class histogram.",
    )
    p.add_argument("cube", metavar="CUBE", help="Zarr store (path or fsspec URL)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-validate", action="store_true",
                   help="skip the schema check and the check for missing chunks (damaged ones are still errors)")
    add_storage_options(p)
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "quicklook",
        help="PNG of one date: RGB composite, label map, valid mask",
        description="Render one date of a cube: RGB composite (2-98%% stretch), label map with legend, valid mask.",
    )
    p.add_argument("cube", metavar="CUBE", help="Zarr store (path or fsspec URL)")
    p.add_argument("--date", metavar="D", help="date index or ISO date (default: the clearest date)")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="output image")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: 100)")
    p.add_argument("--no-validate", action="store_true", help="skip the schema check")
    p.add_argument("--compare", metavar="FILLED.zarr", default=None,
                   help="the output of `hvaeseg inpaint` for CUBE: draw the date before and after (input RGB, "
                   "filled RGB, filled mask, std); default date: the one with the most filled pixels")
    p.set_defaults(func=_quicklook)
    return sub
