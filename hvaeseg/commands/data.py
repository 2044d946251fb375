"""``hvaeseg data ...``: make, inspect and look at cubes.

- ``hvaeseg data synth OUT.zarr [--preset tiny|small|large] [--seed N] [--size N | HxW] [--dates N]
  [--bands B02,B03,...] [--clouds CLEAR,PARTLY,OVERCAST] [--overwrite]``
- ``hvaeseg data info CUBE [--json] [--no-validate]``
- ``hvaeseg data quicklook CUBE [--date D] -o PNG``

:func:`register` returns the ``data`` sub-parsers so that other command modules can add to the group.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

__all__ = ["register", "parse_size", "parse_bands", "parse_clouds"]

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
    return values  # type: ignore[return-value]


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
    fig = quicklook(ds, date)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0


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
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "info",
        help="dims, bands, dates, cloud fraction per date, class histogram",
        description="Summarise a cube: dims, bands, dates with their invalid (cloud) fraction, class histogram.",
    )
    p.add_argument("cube", metavar="CUBE", help="Zarr store (path or fsspec URL)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-validate", action="store_true", help="skip the schema check")
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
    p.set_defaults(func=_quicklook)
    return sub
