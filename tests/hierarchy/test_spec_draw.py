"""``HierarchySpec.draw`` (one box per variable, one arrow per parent link) and ``hvaeseg spec draw``."""

from __future__ import annotations

import pytest
from matplotlib.patches import FancyArrowPatch

from hvaeseg.cli import main
from hvaeseg.hierarchy import HierarchySpec
from hvaeseg.hierarchy.draw import NODE_COLORS, spec_graph
from tests.hierarchy.helpers import SPECS_DIR, load_example, tiny_spec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXAMPLES = ["default", "gaussian", "temporal", "temporal_shared", "temporal_interp", "temporal_interp_seen"]


def drawn(ax) -> tuple[dict, dict]:
    """``({name: Text}, {(parent, child): FancyArrowPatch})`` of a drawing, read back from the artists' gids."""
    nodes = {t.get_gid().removeprefix("node:"): t for t in ax.texts if (t.get_gid() or "").startswith("node:")}
    edges = {}
    for p in ax.patches:
        gid = p.get_gid() or ""
        if gid.startswith("edge:"):
            assert isinstance(p, FancyArrowPatch)
            parent, child = gid.removeprefix("edge:").split("->")
            edges[(parent, child)] = p
    return nodes, edges


def parent_links(spec: HierarchySpec) -> set[tuple[str, str]]:
    links = {(p, layer.name) for layer in spec.layers for p in layer.parents}
    return links | {(p, "x") for p in spec.image.parents}


@pytest.mark.parametrize("name", EXAMPLES)
def test_one_box_per_variable_and_one_arrow_per_parent_link(name):
    spec = load_example(name)
    ax = spec.draw()
    nodes, edges = drawn(ax)
    observed = ({"doy"} if spec.day_of_year else set()) | ({"interp"} if spec.interpolates else set())
    variables = {"s", "l", "x"} | {layer.name for layer in spec.layers} | observed
    assert set(nodes) == variables and len(nodes) == len(spec.layers) + 3 + len(observed)
    n_links = sum(len(layer.parents) for layer in spec.layers) + len(spec.image.parents)
    assert len(edges) == n_links and set(edges) == parent_links(spec)
    for layer in spec.layers:  # the label says name, family, channels, resolution
        text = nodes[layer.name].get_text()
        assert text.splitlines()[0] == layer.name and layer.family in text and f"{layer.channels} ch." in text
        assert ("full res." if layer.resolution == 1 else f"1/{layer.resolution} res.") in text


def test_rows_follow_depth_and_kinds_are_told_apart():
    spec = HierarchySpec.default(5, 10, temporal=True, day_of_year=True, shared_channels=2)
    ax = spec.draw()
    nodes, edges = drawn(ax)
    _, _, depth = spec_graph(spec)
    y = {n: t.get_position()[1] for n, t in nodes.items()}
    for parent, child in edges:  # every arrow points down
        assert y[parent] > y[child] and depth[parent] < depth[child]
    assert y["s"] == y["l"] == y["doy"] and y["z1"] > y["z2"] > y["x"]
    face = {n: t.get_bbox_patch().get_facecolor() for n, t in nodes.items()}
    assert face["u"] != face["z1"] and face["z1"] == face["z2"]  # shared layer vs per-date layers
    assert nodes["u"].get_bbox_patch().get_linewidth() > nodes["z1"].get_bbox_patch().get_linewidth()
    assert nodes["doy"].get_bbox_patch().get_linestyle() != nodes["s"].get_bbox_patch().get_linestyle()
    for (parent, _), arrow in edges.items():  # the covariate's arrows are dashed
        assert (arrow.get_linestyle() == "--") == (parent == "doy")
    assert "shared by the dates" in nodes["u"].get_text()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == len(NODE_COLORS) and "latent layer shared by the dates" in legend


def test_the_title_says_when_the_s_posterior_is_exact():
    from hvaeseg.hierarchy import HierarchySpec

    assert HierarchySpec.pixel_mixture(3, 4).draw().get_title().endswith("0 latent layers, exact s posterior")
    assert "exact" not in HierarchySpec.default(3, 4).draw().get_title()


def test_draw_on_given_axes_and_save(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    ax0, ax1 = fig.subplots(1, 2)
    assert tiny_spec().draw(ax1) is ax1
    assert drawn(ax1)[0] and not drawn(ax0)[0]
    fig.savefig(tmp_path / "two.png")
    assert (tmp_path / "two.png").read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_draws_a_spec_file(tmp_path, capsys):
    out = tmp_path / "spec.png"
    assert main(["spec", "draw", str(SPECS_DIR / "temporal_shared.yaml"), "-o", str(out), "--dpi", "40"]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {out}" in capsys.readouterr().out
    # default output: beside the spec
    spec_file = tmp_path / "mine.yaml"
    tiny_spec().save(spec_file)
    assert main(["spec", "draw", str(spec_file), "--dpi", "40"]) == 0
    assert (tmp_path / "mine.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_draws_the_builtin_default(tmp_path):
    out = tmp_path / "default.png"
    argv = ["spec", "draw", "default", "--classes", "4", "--bands", "6", "--temporal", "--shared-channels", "2",
            "--day-of-year", "-o", str(out), "--dpi", "40"]
    assert main(argv) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize(("content", "message"), [
    (None, "no hierarchy spec at"),
    ("num_classes: 3\nlayers: [\n", "not a valid YAML/JSON hierarchy spec"),
    ("- a\n- b\n", "invalid hierarchy spec: expected a mapping"),
    ("num_classes: 3\ncode_bits: 2\nlayers: []\nimage: {bands: 2, parents: [s, q]}\n",
     "invalid hierarchy spec: image: unknown parent 'q'"),
], ids=["missing", "bad-yaml", "not-a-mapping", "invalid"])
def test_cli_errors_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "spec.yaml"
    if content is not None:
        path.write_text(content)
    assert main(["spec", "draw", str(path), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hvaeseg spec: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out.png").exists()


def test_cli_default_needs_classes_and_bands_and_files_refuse_them(tmp_path, capsys):
    assert main(["spec", "draw", "default", "--classes", "3", "-o", str(tmp_path / "a.png")]) == 2
    assert "needs --classes K and --bands B" in capsys.readouterr().err
    assert main(["spec", "draw", str(SPECS_DIR / "default.yaml"), "--bands", "3"]) == 2
    assert "--bands: only for the built-in 'default' hierarchy" in capsys.readouterr().err
    assert main(
        ["spec", "draw", "default", "--classes", "3", "--bands", "2", "-o", str(tmp_path / "no" / "a.png")]
    ) == 2
    assert "create it first" in capsys.readouterr().err
