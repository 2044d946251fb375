"""``hvaeseg spec ...``: look at latent hierarchies (:class:`~hvaeseg.hierarchy.HierarchySpec`).

- ``hvaeseg spec draw SPEC.yaml [-o OUT.png] [--dpi N]``: the hierarchy as a graph (one box per variable, one
  arrow per parent link; :meth:`HierarchySpec.draw`), written to a PNG (default: ``SPEC.png`` beside the spec).
- ``hvaeseg spec draw default --classes K --bands B [--temporal] [--day-of-year] [--shared-channels N]
  [--interpolation] [--code-bits D] [--channels C] [--s-prior P] [-o OUT.png]``: the same for the built-in
  default hierarchy (:meth:`HierarchySpec.default`; default output ``hierarchy_default.png``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "load_spec"]

#: the SPEC argument naming the built-in default hierarchy
DEFAULT = "default"
_DEFAULT_OPTIONS = ("classes", "bands", "code_bits", "channels", "s_prior", "temporal", "day_of_year",
                    "shared_channels", "interpolation")


def load_spec(path: str | Path):
    """Read a hierarchy spec file, with one-line errors that name the file.

    :raises FileNotFoundError: when there is no such file.
    :raises ValueError: for a folder, a file that is not valid YAML/JSON, or an invalid hierarchy.
    """
    import json

    import yaml

    from hvaeseg.hierarchy import HierarchySpec

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no hierarchy spec at {str(path)!r}: give a .yaml or .json spec file (see examples/specs/), or "
            f"'{DEFAULT}' with --classes and --bands for the built-in default"
        )
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder: expected a hierarchy spec file (.yaml or .json)")
    try:
        return HierarchySpec.load(path)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{path}: not a valid YAML/JSON hierarchy spec ({detail})") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: invalid hierarchy spec: {err}") from None


def _default_spec(args: argparse.Namespace):
    from hvaeseg.hierarchy import HierarchySpec

    if args.classes is None or args.bands is None:
        raise ValueError(f"the built-in '{DEFAULT}' hierarchy needs --classes K and --bands B (e.g. --classes 6 "
                         "--bands 10)")
    return HierarchySpec.default(
        args.classes, args.bands, args.code_bits if args.code_bits is not None else 8,
        channels=args.channels if args.channels is not None else 8, s_prior=args.s_prior or "empirical",
        temporal=args.temporal, day_of_year=args.day_of_year,
        shared_channels=args.shared_channels if args.shared_channels is not None else 0,
        interpolation=args.interpolation,
    )


def _draw(args: argparse.Namespace) -> int:
    builtin = args.spec == DEFAULT  # a file called "default" is read as ./default
    if builtin:
        spec = _default_spec(args)
        out = Path(args.output) if args.output else Path("hierarchy_default.png")
    else:
        given = [f"--{name.replace('_', '-')}" for name in _DEFAULT_OPTIONS if getattr(args, name) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)}: only for the built-in '{DEFAULT}' hierarchy; a spec file "
                             "declares its own classes, bands and layers")
        spec = load_spec(args.spec)
        out = Path(args.output) if args.output else Path(args.spec).with_suffix(".png")
    if out.suffix.lower() != ".png":
        raise ValueError(f"expected an output path ending in .png, got {str(out)!r}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"no folder {str(out.parent)!r} to write {out.name} into: create it first")
    ax = spec.draw()
    ax.figure.savefig(out, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= ``low``, refused with ``expected WHAT`` otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add the ``spec`` group to the ``hvaeseg`` sub-parsers; returns the group's own sub-parsers."""
    group = sub.add_parser("spec", help="look at latent hierarchies (HierarchySpec files)",
                           description="Look at latent hierarchies: HierarchySpec YAML/JSON files or the built-in "
                           "default.")
    commands = group.add_subparsers(dest="spec_command", required=True, metavar="SUBCOMMAND")
    p = commands.add_parser(
        "draw",
        help="draw a hierarchy as a graph (PNG)",
        description="Draw a hierarchy as a graph: one box per variable (name, family, channels, resolution), one "
        "arrow per parent link, top to bottom by depth; layers shared by the dates of a stack and the observed "
        "day of the year are drawn apart.",
    )
    p.add_argument("spec", metavar="SPEC", help=f"hierarchy spec file (.yaml/.json), or '{DEFAULT}' for the built-in "
                   "default hierarchy (then give --classes and --bands)")
    p.add_argument("-o", "--output", default=None, metavar="OUT.png",
                   help="output image (default: SPEC with .png, or hierarchy_default.png)")
    p.add_argument("--dpi", type=_positive, default=120, help="resolution of the PNG (default: 120)")
    d = p.add_argument_group(f"built-in default hierarchy (SPEC = {DEFAULT})")
    d.add_argument("--classes", type=_positive, default=None, metavar="K", help="number of classes of s")
    d.add_argument("--bands", type=_positive, default=None, metavar="B", help="number of spectral bands of x")
    d.add_argument("--code-bits", type=_positive, default=None, metavar="D", help="bits of the global code l (8)")
    d.add_argument("--channels", type=_positive, default=None, metavar="C", help="maps per latent layer (8)")
    d.add_argument("--s-prior", choices=("empirical", "categorical"), default=None, help="prior of s (empirical)")
    d.add_argument("--temporal", action="store_true", help="the temporal hierarchy (stacks of dates)")
    d.add_argument("--day-of-year", action="store_true", help="condition the layers and image on the date")
    d.add_argument("--shared-channels", type=_non_negative, default=None, metavar="N",
                   help="temporal: channels of u, the layer shared by the dates (0: none)")
    d.add_argument("--interpolation", action="store_true",
                   help="temporal: the image takes interp, its interpolation from the other dates of the stack")
    p.set_defaults(func=_draw)
    return commands
