"""``hvaeseg data ingest``: real Sentinel-2 L2A products to a cube store (see :mod:`hvaeseg.data.ingest`).

Examples::

    # a WorldCereal-style site folder (band NetCDFs, OUTPUT_*.nc labels, *.csv code table found in it)
    hvaeseg data ingest ../shared/data/worldcereal-be-00002806639B424A site.zarr

    # explicit NetCDF files
    hvaeseg data ingest S2_L2A_10m.nc S2_L2A_20m.nc --labels OUTPUT.nc --code-table map.csv site.zarr

    # GeoTIFF: one file per band with one layer per date, plus SCL, and the dates; the BOA offset (DN)
    # is needed unless the files carry it (GDAL offset, BOA_ADD_OFFSET or PROCESSING_BASELINE tag)
    hvaeseg data ingest --geotiff B02=b02.tif B03=b03.tif ... SCL=scl.tif \\
        --times 2024-03-01,2024-03-11 --boa-offset -1000 out.zarr

    # GeoTIFF without SCL, label codes 1, 2, 3 named, files without georeference on a local pixel grid
    hvaeseg data ingest --geotiff B02=b02.tif B03=b03.tif B04=b04.tif --bands B02,B03,B04 --no-scl \\
        --times 2020-01-01 --boa-offset 0 --labels labels.tif --classes 1,2,3 \\
        --class-names shadow,clear,cloud --local-grid out.zarr

    # multi-band GeoTIFF stacks, one file per date; layer order from --stack-bands (else the band
    # descriptions); class names from a code,name table; label code 0 is a class, 255 means no label
    hvaeseg data ingest --geotiff d1.tif d2.tif --stack-bands B02,B03,B04,B08 --bands B02,B03,B04,B08 \\
        --no-scl --times 2024-03-01,2024-03-11 --boa-offset 0 --labels labels.tif \\
        --code-table classes.csv --void-codes 255 out.zarr

    # Cityscapes (leftImg8bit/ and gtFine/ under ROOT): train and val images resized to 128 x 256, the
    # label ids mapped to the 8 categories; the official val images are reserved for the test split
    hvaeseg data ingest --format cityscapes ROOT cityscapes.zarr --size 128 256

    # the same, void pixels unlabelled (7 classes), the train images only
    hvaeseg data ingest --format cityscapes ROOT train.zarr --split train --size 128 256 --void ignore

    # a folder of image / label PNG pairs (ROOT/images/NAME.png, ROOT/labels/NAME.png), classes named by a table
    hvaeseg data ingest --format folder ROOT --code-table classes.csv images.zarr --size 64 64

Label code 0 means "no label" (void, -1) by default, as does the label file's no-data value; --void-codes
sets the codes that do (--void-codes none: none, so 0 may be a class). The command prints which codes
became which class, where the names and the offset came from, and how many pixels are void.

OUT.zarr is checked first: it may not be an input, and --overwrite only ever replaces a cube store
written by hvaeseg, never another file or folder (such as a label file taken for the output when the
output argument was forgotten).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hvaeseg.commands._storage import add_storage_options

__all__ = ["add_ingest_parser", "run_ingest"]


class _IntermixedParser(argparse.ArgumentParser):
    """Options may come between the paths (``IN1 IN2 --labels L OUT``): parse intermixed."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_ingest_parser(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``ingest`` to the ``hvaeseg data`` sub-commands; returns its parser."""
    parser_class = data_subparsers._parser_class  # noqa: SLF001 - only to let options sit between paths
    data_subparsers._parser_class = _IntermixedParser  # noqa: SLF001
    try:
        p = _add(data_subparsers)
    finally:
        data_subparsers._parser_class = parser_class  # noqa: SLF001
    return p


def _add(data_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = data_subparsers.add_parser(
        "ingest",
        help="ingest real Sentinel-2 L2A products (NetCDF or GeoTIFF), or camera images (Cityscapes, a folder of "
        "PNG pairs), into a cube store",
        description=(
            "Resample every band onto the 10 m grid (reflectance bilinear with pixel centres aligned, SCL "
            "nearest), derive `valid` from SCL and no-data, map label codes to class ids named by the code "
            "table, validate, and write the cube atomically (nothing is written on error). With --format "
            "cityscapes or folder: camera images, resized to one size (area averaging; labels nearest), laid out "
            "as a mosaic on one date with bands R, G, B."
        ),
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="NetCDF band files, or one site folder; with --geotiff, NAME=PATH pairs (NAME a band or SCL; "
        "PATH one file with a layer per date, or several comma-separated single-layer files) and/or bare PATHs "
        "of multi-band stacks (one file per date, in --times order, every band a layer)",
    )
    p.add_argument("out", metavar="OUT.zarr", help="the store to write (path or fsspec URL)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="the input format: netcdf (default), geotiff (as --geotiff), cityscapes (INPUT: the root "
                   "holding leftImg8bit/ and gtFine/) or folder (INPUT: a root holding images/ and labels/ PNG pairs, "
                   "with --code-table)")
    p.add_argument("--split", default=None,
                   help="cityscapes: the official splits to read, train, val or train,val (default train,val: the val "
                   "images are then reserved for the test split)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="cityscapes / folder: resize every image to H x W pixels (area averaging; labels nearest); "
                   "default the images' own size (Cityscapes 1024 x 2048)")
    p.add_argument("--void", choices=("class", "ignore"), default=None,
                   help="cityscapes: the void category is class 0 of 8 (class, the default) or unlabelled, -1 "
                   "(ignore: 7 classes)")
    p.add_argument("--geotiff", action="store_true", help="the inputs are GeoTIFF band files (needs rioxarray)")
    p.add_argument("--times", help="GeoTIFF: comma-separated dates, one per layer (e.g. 2024-03-01,2024-03-11)")
    p.add_argument("--labels", help="label file (NetCDF with --label-var; GeoTIFF with --geotiff)")
    p.add_argument("--label-var", default="CT", help="label variable of a NetCDF label file (default CT)")
    p.add_argument("--code-table", metavar="TABLE",
                   help="table naming the label codes: CSV with a header such as `code,name` (or a WorldCereal "
                   "wc2eurocrops_map.csv), or JSON {\"1\": \"name\", ...}")
    p.add_argument("--classes", help="comma-separated class codes, in id order (default: the codes present)")
    p.add_argument("--class-names", metavar="NAMES",
                   help="comma-separated class names, one per class id (as many as --classes; single words, unique); "
                   "default: the code table's names, else code_<c> (announced)")
    p.add_argument("--void-codes", metavar="CODES",
                   help="comma-separated label codes meaning 'no label' (void, -1), or 'none'; default: 0 and the "
                   "label file's no-data value. '--void-codes none' lets code 0 be a class")
    p.add_argument("--bands", help="comma-separated bands required, in cube order (default: the 10 L2A bands)")
    p.add_argument("--boa-offset", type=float, default=None, metavar="DN",
                   help="BOA offset in DN: 0 for harmonised products (reflectance = DN x 1e-4), -1000 for L2A "
                   "baseline >= 04.00; default from the metadata, else 0 for NetCDF; GeoTIFFs without offset "
                   "metadata need it")
    p.add_argument("--stack-bands", metavar="NAMES",
                   help="GeoTIFF stacks: comma-separated band (or SCL) of each layer, in layer order; default: the "
                   "files' band descriptions")
    p.add_argument("--no-scl", action="store_true", help="allow products without SCL (valid = no band is DN 0)")
    p.add_argument("--local-grid", action="store_true",
                   help="GeoTIFF without georeference (no geotransform): ingest on a local pixel grid (origin 0, 10 m "
                   "pixels, y decreasing from the top, no CRS), recorded as grid=local in the cube attributes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an existing cube store (never another file or folder, nor an input)")
    add_storage_options(p)
    p.set_defaults(func=run_ingest)
    return p


def _codes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes: expected comma-separated integer codes, got {text!r}") from None


def _void_codes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--void-codes: expected comma-separated integer codes or 'none', got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    """``--class-names``: empty items are kept, for the ingest check to name them."""
    if text is None:
        return None
    return [n.strip() for n in text.split(",")]


#: the values of --format; the last two read camera images
FORMATS = ("netcdf", "geotiff", "cityscapes", "folder")
IMAGE_FORMATS = ("cityscapes", "folder")
#: Sentinel-2 options (flag -> default) that camera-image formats refuse
_PRODUCT_OPTIONS = {
    "--geotiff": False, "--times": None, "--labels": None, "--label-var": "CT", "--classes": None,
    "--class-names": None, "--void-codes": None, "--bands": None, "--boa-offset": None, "--stack-bands": None,
    "--no-scl": False, "--local-grid": False,
}


def _check_format(args: argparse.Namespace) -> None:
    """Refuse options of another format than ``--format``'s."""
    image = args.format in IMAGE_FORMATS
    if image:
        given = [f for f, d in _PRODUCT_OPTIONS.items() if getattr(args, f[2:].replace("-", "_")) != d]
        if given:
            raise ValueError(f"{', '.join(given)}: Sentinel-2 product option(s), not for --format {args.format} "
                             "(camera images take --size, and --split / --void for cityscapes or --code-table for "
                             "folder)")
        wrong = {"cityscapes": [("--code-table", args.code_table)],
                 "folder": [("--split", args.split), ("--void", args.void)]}[args.format]
        given = [f for f, v in wrong if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: not an option of --format {args.format}")
        if len(args.inputs) != 1:
            raise ValueError(f"--format {args.format} takes one INPUT, the dataset's root folder, then OUT.zarr; got "
                             f"{len(args.inputs)} inputs: {' '.join(args.inputs)}")
        return
    given = [f for f, v in (("--split", args.split), ("--size", args.size), ("--void", args.void)) if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: for camera images only: add --format cityscapes (or folder)")
    if args.format == "geotiff":
        args.geotiff = True
    elif args.format == "netcdf" and args.geotiff:
        raise ValueError("--geotiff contradicts --format netcdf: give one")


def _run_images(args: argparse.Namespace) -> str:
    from hvaeseg.data.ingest import ingest

    options: dict = {"size": args.size}
    if args.format == "cityscapes":
        options.update(split=args.split or "train,val", void=args.void or "class")
    else:
        options["code_table"] = args.code_table
    return ingest(Path(args.inputs[0]), args.out, format=args.format, overwrite=args.overwrite, **options)


def run_ingest(args: argparse.Namespace) -> int:
    from hvaeseg.data.ingest import ingest

    _check_format(args)
    if args.format in IMAGE_FORMATS:
        _report(_run_images(args))
        return 0
    if args.class_names is not None and not args.labels:
        raise ValueError("--class-names needs --labels (the label file whose classes it names)")
    if args.void_codes is not None and not args.labels:
        raise ValueError("--void-codes needs --labels (the label file whose codes it describes)")
    if args.local_grid and not args.geotiff:
        raise ValueError("--local-grid is for GeoTIFF inputs without georeference: add --geotiff")
    if args.stack_bands is not None and not args.geotiff:
        raise ValueError("--stack-bands names the layers of GeoTIFF stacks: add --geotiff")
    options: dict = {
        "classes": _codes(args.classes),
        "class_names": _names(args.class_names),
        "void_codes": _void_codes(args.void_codes),
        "boa_add_offset": args.boa_offset,
        "require_scl": not args.no_scl,
        "label_var": args.label_var,
    }
    if args.bands:
        options["bands"] = [b.strip() for b in args.bands.split(",") if b.strip()]
    if args.code_table:
        options["code_table"] = args.code_table
    if args.labels:
        options["labels"] = args.labels
    if args.geotiff:
        if not args.times:
            raise ValueError("--geotiff needs --times (one date per layer)")
        files: dict[str, list[str]] = {}
        stacks: list[str] = []
        for item in args.inputs:
            name, sep, path = item.partition("=")
            if not sep:
                stacks.append(item)  # a multi-band stack
                continue
            if not name.strip() or not path:
                raise ValueError(f"--geotiff inputs are NAME=PATH pairs or stack files, got {item!r}")
            files[name.strip()] = [q for q in path.split(",") if q]
        scl = files.pop("SCL", None)
        if stacks:
            options["stack"] = stacks
        if args.stack_bands is not None:
            options["stack_bands"] = [b.strip() for b in args.stack_bands.split(",")]
        written = ingest(
            None, args.out, format="geotiff", overwrite=args.overwrite, band_files=files, scl=scl,
            times=[t.strip() for t in args.times.split(",") if t.strip()], local_grid=args.local_grid, **options,
        )
    else:
        written = ingest([Path(p) for p in args.inputs], args.out, format="netcdf", overwrite=args.overwrite, **options)
    _report(written)
    return 0


def _report(written: str) -> None:
    """What was written: the store, its sizes, then the ingest notes."""
    from hvaeseg.data.ingest import ingest_notes
    from hvaeseg.data.store import open_cube

    ds = open_cube(written, validate=False)
    dims = " x ".join(f"{ds.sizes[d]} {d}" for d in ("time", "band", "y", "x") if d in ds.sizes)
    print(f"wrote {written}: {dims}")
    for line in ingest_notes(ds):
        print(f"  {line}")
