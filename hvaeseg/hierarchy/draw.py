"""A picture of a :class:`~hvaeseg.hierarchy.spec.HierarchySpec`: its variables as boxes, its parent links as arrows.

Matplotlib only (no graphviz). The variables are laid out top to bottom by depth (``s``, ``l`` and the covariate
``doy`` on the first row; every other variable one row below its deepest parent), and ordered within a row by the
mean position of their parents, which keeps most arrows short. Every box carries the variable's name, family,
channels and resolution; colours tell the kinds apart:

- ``s`` (the segmentation) and ``l`` (the global code): the top of the hierarchy;
- latent layers: one value per date in temporal hierarchies; the layers **shared by the dates** of a stack
  (``shared: true``, sampled once per pixel like ``s``) in another colour, with a thick border;
- ``x``: the image;
- ``doy``: the observed day of the year, a dashed box, with dashed arrows (it is given, not sampled).

Every box is a :class:`matplotlib.text.Text` with gid ``"node:<name>"`` and every arrow a
:class:`matplotlib.patches.FancyArrowPatch` with gid ``"edge:<parent>-><child>"``, so a drawing can be inspected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hvaeseg.hierarchy.spec import COVARIATES as _VECTOR_COVARIATES
from hvaeseg.hierarchy.spec import MAP_COVARIATES, HierarchySpec

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = ["NODE_COLORS", "draw_spec", "spec_graph"]

#: fill colour per kind of variable
NODE_COLORS = {
    "s": "#f4b183",
    "l": "#ffe699",
    "latent": "#9dc3e6",
    "shared": "#a9d18e",
    "x": "#d9d9d9",
    "doy": "#ffffff",
}
_LEGEND = {
    "s": "segmentation s",
    "l": "global code l",
    "latent": "latent layer (per date)",
    "shared": "latent layer shared by the dates",
    "x": "image x",
    "doy": "observed covariate (day of year, interpolated x)",
}
_EDGE = "#404040"
#: observed inputs, drawn as dashed boxes: the day of the year and the interpolation from the other dates
COVARIATES = _VECTOR_COVARIATES + MAP_COVARIATES
_COVARIATE_EDGE = "#8c8c8c"


def _resolution(r: int) -> str:
    return "full res." if r == 1 else f"1/{r} res."


def _kind(spec: HierarchySpec, name: str) -> str:
    if name in ("s", "l", "x") or name in COVARIATES:
        return "doy" if name in COVARIATES else name
    return "shared" if spec.temporal and spec.layer(name).shared else "latent"


def _label(spec: HierarchySpec, name: str) -> str:
    """The text of a box: name, family, channels, resolution (and what is shared)."""
    if name == "s":
        prior = "empirical prior" if spec.s_prior == "empirical" else "learned class prior"
        return f"s\ncategorical, {spec.num_classes} classes\nfull res., {prior}"
    if name == "l":
        return f"l\nbernoulli, {spec.code_bits} bits\nglobal (per image)"
    if name == "x":
        bands = f"rank-{spec.image.cov_rank} band covariance" if spec.image.cov_rank else "independent bands"
        return f"x\ngaussian, {spec.image.bands} bands\nfull res., {spec.image.scale} scale,\n{bands}"
    if name == "interp":
        return f"{name}\nx of the other dates,\ninterpolated (observed)"
    if name in COVARIATES:
        return f"{name}\nday of the year\nobserved"
    layer = spec.layer(name)
    family = layer.family if layer.family != "categorical" else f"categorical ({layer.categories} cat.)"
    text = f"{name}\n{family}\n{layer.channels} ch., {_resolution(layer.resolution)}"
    if spec.temporal and layer.shared:
        text += "\nshared by the dates"
    return text


def spec_graph(spec: HierarchySpec) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], dict[str, int]]:
    """``(nodes, edges, depth)`` of a hierarchy.

    :returns: ``nodes``: ``("s", "l", *layers in sampling order, "x")`` plus ``"doy"`` when a layer or the image
        lists it and ``"interp"`` when the image does; ``edges``: one ``(parent, child)`` per parent link, layers
        first (in sampling order), then the image's; ``depth``: row of each node (0 for ``s``, ``l``, ``doy``,
        ``interp``; one more than the deepest parent).
    """
    nodes = ("s", "l") + spec.order + ("x",) + (("doy",) if spec.day_of_year else ()) + (
        ("interp",) if spec.interpolates else ())
    parents = {name: spec.layer(name).parents for name in spec.order}
    parents["x"] = spec.image.parents
    edges = tuple((p, child) for child in spec.order + ("x",) for p in parents[child])
    depth = {"s": 0, "l": 0, "doy": 0, "interp": 0}
    for name in spec.order + ("x",):
        depth[name] = 1 + max(depth[p] for p in parents[name])
    return nodes, edges, {n: depth[n] for n in nodes}


def _positions(spec: HierarchySpec, nodes, edges, depth) -> dict[str, tuple[float, float]]:
    """Row by depth (top = 0); within a row, ordered by the mean column of the parents (covariates last)."""
    parents: dict[str, list[str]] = {}
    for p, c in edges:
        parents.setdefault(c, []).append(p)
    rows: dict[int, list[str]] = {}
    for n in nodes:
        rows.setdefault(depth[n], []).append(n)
    width = max(len(r) for r in rows.values())
    pos: dict[str, tuple[float, float]] = {}
    for d in sorted(rows):
        row = rows[d]
        if d > 0:
            def key(n: str, row=row) -> float:
                ps = [pos[p][0] for p in parents.get(n, ()) if p in pos and p not in COVARIATES]
                return sum(ps) / len(ps) if ps else float(row.index(n))

            row = sorted(row, key=key)
        else:
            row = [n for n in row if n not in COVARIATES] + [n for n in row if n in COVARIATES]
        offset = (width - len(row)) / 2
        for i, n in enumerate(row):
            pos[n] = (offset + i, -float(d))
    return pos


#: inches per unit of the layout (columns, rows), to measure how close an arrow passes to a box
_SCALE = (2.1, 1.35)


def _bend(pos: dict[str, tuple[float, float]], parent: str, child: str) -> float:
    """``rad`` of the arrow's arc (matplotlib ``arc3``): straight unless a straighter arrow would pass closer to
    the boxes of the rows in between than a bent one."""
    (x0, y0), (x1, y1) = pos[parent], pos[child]
    others = [(x, y) for n, (x, y) in pos.items() if n not in (parent, child) and y1 < y < y0]
    if not others:
        return 0.0
    sx, sy = _SCALE
    dx, dy = (x1 - x0) * sx, (y1 - y0) * sy

    def clearance(rad: float) -> float:
        # arc3's control point is the chord's midpoint moved by rad * (dy, -dx); the arc is a quadratic Bezier
        cx, cy = (x0 * sx + x1 * sx) / 2 + rad * dy, (y0 * sy + y1 * sy) / 2 - rad * dx
        best = float("inf")
        for i in range(1, 10):
            t = i / 10
            bx = (1 - t) ** 2 * x0 * sx + 2 * t * (1 - t) * cx + t**2 * x1 * sx
            by = (1 - t) ** 2 * y0 * sy + 2 * t * (1 - t) * cy + t**2 * y1 * sy
            for ox, oy in others:  # distance to the box, roughly an ellipse of 0.8 x 0.35 inches
                best = min(best, ((bx - ox * sx) / 0.8) ** 2 + ((by - oy * sy) / 0.35) ** 2)
        return best

    candidates = (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5, 0.75, -0.75, 1.0, -1.0)
    scores = [clearance(r) for r in candidates]
    good = [r for r, s in zip(candidates, scores) if s > 1.6]
    return good[0] if good else candidates[scores.index(max(scores))]


def draw_spec(spec: HierarchySpec, ax: Axes | None = None, *, fontsize: float = 8.0) -> Axes:
    """Draw ``spec`` as a graph: one box per variable, one arrow per parent link (see the module docstring).

    :param spec: the hierarchy.
    :param ax: where to draw; by default a new :class:`~matplotlib.figure.Figure` (on an Agg canvas, not
        registered with pyplot) sized to the graph.
    :param fontsize: of the box labels.
    :returns: the axes drawn on (``ax.figure.savefig(path)`` writes the picture).
    """
    from matplotlib.patches import FancyArrowPatch, Patch

    if not isinstance(spec, HierarchySpec):
        raise TypeError(f"expected a HierarchySpec, got {type(spec).__name__}")
    nodes, edges, depth = spec_graph(spec)
    pos = _positions(spec, nodes, edges, depth)
    n_cols = max(sum(1 for n in nodes if depth[n] == d) for d in set(depth.values()))
    n_rows = max(depth.values()) + 1
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(5.5, 2.1 * n_cols + 0.6), 1.35 * n_rows + 1.3), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    boxes = {}
    for n in nodes:
        kind = _kind(spec, n)
        bbox = dict(boxstyle="round,pad=0.45", facecolor=NODE_COLORS[kind], edgecolor="#262626",
                    linewidth=2.2 if kind == "shared" else 1.0, linestyle="--" if kind == "doy" else "-")
        boxes[n] = ax.text(*pos[n], _label(spec, n), ha="center", va="center", fontsize=fontsize, zorder=3,
                           bbox=bbox, gid=f"node:{n}", fontstyle="italic" if kind == "doy" else "normal")
    for p, c in edges:
        rad = _bend(pos, p, c)
        covariate = p in COVARIATES
        ax.add_patch(FancyArrowPatch(
            pos[p], pos[c], patchA=boxes[p].get_bbox_patch(), patchB=boxes[c].get_bbox_patch(),
            arrowstyle="-|>", mutation_scale=11, shrinkA=2, shrinkB=2, connectionstyle=f"arc3,rad={rad}",
            color=_COVARIATE_EDGE if covariate else _EDGE, linestyle="--" if covariate else "-",
            # drawn after the boxes: stops at their outlines
            linewidth=0.9, zorder=4, clip_on=False, gid=f"edge:{p}->{c}",
        ))
    xs = [x for x, _ in pos.values()]
    ax.set_xlim(min(xs) - 0.75, max(xs) + 0.75)
    ax.set_ylim(-(n_rows - 1) - 0.6, 0.6)
    ax.set_axis_off()
    kinds = [k for k in NODE_COLORS if any(_kind(spec, n) == k for n in nodes)]
    legend = dict(_LEGEND, latent="latent layer (per date)" if spec.temporal else "latent layer")
    handles = [Patch(facecolor=NODE_COLORS[k], edgecolor="#262626", linewidth=2.2 if k == "shared" else 1.0,
                     linestyle="--" if k == "doy" else "-", label=legend[k]) for k in kinds]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(handles)),
              fontsize=fontsize, frameon=False)
    what = "temporal" if spec.temporal else "single-date"
    ax.set_title(f"{what} hierarchy, {spec.s_prior} s prior\n{spec.num_classes} classes, {spec.code_bits}-bit "
                 f"code l, {len(spec.layers)} latent layer{'s' if len(spec.layers) != 1 else ''}"
                 + (", exact s posterior" if spec.exact_s else ""),
                 fontsize=fontsize + 1)
    return ax
