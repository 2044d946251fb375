import json
import warnings

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.hierarchy import HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec
from hvaeseg.hierarchy.spec import FAMILIES
from tests.hierarchy.helpers import SPECS_DIR


def spec_with(layers, image_parents=("s", "l"), **kwargs):
    return HierarchySpec(num_classes=4, code_bits=3, layers=layers, image=ImageLayerSpec(3, image_parents), **kwargs)


def test_default_is_valid_and_small():
    spec = HierarchySpec.default(6, 10)
    assert spec.site_names == ("s", "l", "z1", "z2", "x")
    assert spec.s_prior == "empirical" and spec.temporal is False
    assert HierarchySpec.default(6, 10, s_prior="categorical", temporal=True).temporal


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip_default(fmt, tmp_path):
    spec = HierarchySpec.default(5, 12, code_bits=4, patch_size=64)
    text = spec.to_yaml() if fmt == "yaml" else spec.to_json()
    back = HierarchySpec.from_yaml(text) if fmt == "yaml" else HierarchySpec.from_json(text)
    assert back == spec
    assert back.to_dict() == spec.to_dict()
    path = tmp_path / f"spec.{fmt}"
    spec.save(path)
    assert HierarchySpec.load(path) == spec


@pytest.mark.parametrize("name", ["default", "gaussian", "temporal", "temporal_interp", "temporal_interp_seen",
                                  "pixel_mixture"])
def test_example_specs_load(name):
    spec = HierarchySpec.load(SPECS_DIR / f"{name}.yaml")
    assert HierarchySpec.from_yaml(spec.to_yaml()) == spec
    if name == "default":
        assert spec == HierarchySpec.default(6, 10)
    if name == "pixel_mixture":
        assert spec == HierarchySpec.pixel_mixture(7, 10) and spec.exact_s


def test_topological_order_follows_parents_not_listing():
    spec = spec_with(
        [
            LatentLayerSpec("b", parents=("a",), resolution=2),
            LatentLayerSpec("a", parents=("s",), resolution=4),
        ],
        image_parents=("b",),
    )
    assert spec.order == ("a", "b")
    assert spec.site_names == ("s", "l", "a", "b", "x")


# ------------------------------------------------------------------------------------------------ errors
ERRORS = [
    # (description, constructor, message fragment)
    (
        "unknown parent",
        lambda: spec_with([LatentLayerSpec("z1", parents=("s", "z9"))], ("z1",)),
        "layer 'z1': unknown parent 'z9': parents must be among s, l, z1",
    ),
    (
        "image unknown parent",
        lambda: spec_with([LatentLayerSpec("z1")], ("z7",)),
        "image: unknown parent 'z7'",
    ),
    (
        "cycle",
        lambda: spec_with(
            [LatentLayerSpec("z1", parents=("s", "z2")), LatentLayerSpec("z2", parents=("z1",))], ("z2",)
        ),
        "the parents form a cycle 'z1' -> 'z2' -> 'z1': remove one of these parent links",
    ),
    (
        "self parent",
        lambda: LatentLayerSpec("z1", parents=("z1",)),
        "layer 'z1': lists itself as a parent",
    ),
    (
        "resolution not dividing the patch size",
        lambda: spec_with([LatentLayerSpec("z1", resolution=4)], ("z1",), patch_size=18),
        "resolution 4 does not divide the patch size 18",
    ),
    (
        "resolution without encoder level",
        lambda: spec_with([LatentLayerSpec("z1", resolution=8)], ("z1",)),
        "layer 'z1': resolution 8 has no encoder features (the encoder levels are at factors 1, 2, 4)",
    ),
    (
        "non-positive channels",
        lambda: LatentLayerSpec("z1", channels=0),
        "layer 'z1': channels must be a positive integer, got 0",
    ),
    (
        "non-positive resolution",
        lambda: LatentLayerSpec("z1", resolution=-2),
        "layer 'z1': resolution must be a positive integer, got -2",
    ),
    (
        "duplicate names",
        lambda: spec_with([LatentLayerSpec("z1"), LatentLayerSpec("z1")], ("z1",)),
        "duplicate layer name 'z1': give each latent layer its own name",
    ),
    ("reserved name s", lambda: LatentLayerSpec("s"), "layer 's': the name is reserved"),
    ("reserved name x", lambda: LatentLayerSpec("x"), "layer 'x': the name is reserved"),
    ("reserved name l", lambda: LatentLayerSpec("l"), "layer 'l': the name is reserved"),
    ("bad name", lambda: LatentLayerSpec("z 1"), "layer name 'z 1' is not a valid name"),
    ("unknown family", lambda: LatentLayerSpec("z1", family="poisson"), "layer 'z1': unknown family 'poisson'"),
    (
        "categorical without categories",
        lambda: LatentLayerSpec("z1", family="categorical"),
        "layer 'z1': a categorical layer needs categories >= 2",
    ),
    (
        "categories on bernoulli",
        lambda: LatentLayerSpec("z1", categories=3),
        "layer 'z1': categories is only for family 'categorical'",
    ),
    ("no parents", lambda: LatentLayerSpec("z1", parents=()), "layer 'z1': no parents"),
    ("repeated parent", lambda: LatentLayerSpec("z1", parents=("s", "s")), "layer 'z1': parents ['s', 's'] repeat"),
    ("bands", lambda: ImageLayerSpec(0), "image: bands must be a positive integer, got 0"),
    ("image scale", lambda: ImageLayerSpec(3, scale="global"), "image: unknown scale 'global'"),
    ("min scale", lambda: ImageLayerSpec(3, min_scale=0.0), "image: min_scale must be a positive number"),
    ("init scale", lambda: ImageLayerSpec(3, min_scale=0.5, init_scale=0.25),
     "image: init_scale must be a number above"),
    ("cov rank", lambda: ImageLayerSpec(3, cov_rank=3), "image: cov_rank must be an integer in [0, bands = 3), got 3"),
    ("cov rank type", lambda: ImageLayerSpec(3, cov_rank=1.5), "image: cov_rank must be an integer"),
    ("num classes", lambda: HierarchySpec(0, 3, (), ImageLayerSpec(3)), "num_classes must be a positive integer"),
    ("code bits", lambda: HierarchySpec(3, 0, (), ImageLayerSpec(3)), "code_bits must be a positive integer"),
    (
        "s prior",
        lambda: HierarchySpec(3, 2, (), ImageLayerSpec(3), s_prior="uniform"),
        "s_prior: unknown prior 'uniform': choose one of empirical, categorical",
    ),
    ("widths", lambda: NetworkSpec(encoder_widths=(32, 0)), "network: encoder_widths must be positive integers"),
    ("interactions", lambda: NetworkSpec(decoder_interactions="yes"),
     "network: decoder_interactions must be true or false, got 'yes'"),
    ("kernel", lambda: NetworkSpec(decoder_kernel=5), "network: decoder_kernel must be 1 or 3, got 5"),
    ("kernel type", lambda: NetworkSpec(decoder_kernel=True), "network: decoder_kernel must be 1 or 3, got True"),
    ("depths", lambda: NetworkSpec(encoder_depths=(1,)), "network: encoder_depths must give one non-negative depth"),
    (
        "unknown field",
        lambda: HierarchySpec.from_dict({**HierarchySpec.default(3, 2).to_dict(), "colour": 1}),
        "unknown field(s) 'colour'",
    ),
    (
        "unknown layer field",
        lambda: HierarchySpec.from_dict(
            {**HierarchySpec.default(3, 2).to_dict(), "layers": [{"name": "z1", "chanels": 3}]}
        ),
        "layers[0]: unknown field(s) 'chanels'",
    ),
    ("missing field", lambda: HierarchySpec.from_dict({"num_classes": 3}), "missing field(s) code_bits, layers, image"),
]


@pytest.mark.parametrize("what,make,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_spec_errors_name_the_layer_and_the_fix(what, make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_parents_must_be_a_list():
    with pytest.raises(TypeError, match="layer 'z1': parents must be a list of names"):
        LatentLayerSpec("z1", parents="s")


def test_unused_layer_warns():
    with pytest.warns(UserWarning, match="latent layer\\(s\\) 'z2' are parents of nothing"):
        spec_with([LatentLayerSpec("z1"), LatentLayerSpec("z2")], ("z1",))


def test_check_patch():
    spec = HierarchySpec.default(3, 2)
    spec.check_patch(64, 32)
    with pytest.raises(ValueError, match="does not divide the patch size 30x32"):
        spec.check_patch(30, 32)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no hierarchy spec at"):
        HierarchySpec.load(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- hypothesis: round trips
NAMES = [f"z{i}" for i in range(1, 6)]


@st.composite
def valid_specs(draw):
    n_levels = draw(st.integers(1, 4))
    factors = [2**i for i in range(n_levels)]
    n_layers = draw(st.integers(0, 4))
    layers = []
    for i in range(n_layers):
        family = draw(st.sampled_from(FAMILIES))
        # parents among s, l and earlier layers: acyclic by construction
        pool = ["s", "l"] + NAMES[:i]
        parents = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=len(pool), unique=True))
        layers.append(
            LatentLayerSpec(
                name=NAMES[i],
                family=family,
                channels=draw(st.integers(1, 16)),
                resolution=draw(st.sampled_from(factors)),
                parents=tuple(parents),
                categories=draw(st.integers(2, 5)) if family == "categorical" else None,
            )
        )
    drawn = draw(st.permutations(layers))  # listing order is free
    temporal = draw(st.booleans())
    image_pool = ["s", "l"] + [la.name for la in layers] + (["interp"] if temporal else [])
    image = ImageLayerSpec(
        bands=(bands := draw(st.integers(1, 13))),
        cov_rank=draw(st.integers(0, bands - 1)),
        parents=tuple(draw(st.lists(st.sampled_from(image_pool), min_size=1, max_size=len(image_pool), unique=True))),
        scale=draw(st.sampled_from(["band", "pixel"])),
        min_scale=(min_scale := draw(st.floats(1e-6, 1.0, allow_nan=False))),
        init_scale=min_scale + draw(st.floats(1e-3, 2.0, allow_nan=False)),
        interp_dropout=draw(st.floats(0.0, 0.99)),
    )
    network = NetworkSpec(
        encoder_widths=tuple(draw(st.lists(st.integers(1, 128), min_size=n_levels, max_size=n_levels))),
        encoder_depths=tuple(draw(st.lists(st.integers(0, 3), min_size=n_levels, max_size=n_levels))),
        decoder_width=draw(st.integers(1, 64)),
        decoder_depth=draw(st.integers(0, 3)),
        decoder_interactions=draw(st.booleans()),
        decoder_kernel=draw(st.sampled_from([1, 3])),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HierarchySpec(
            num_classes=draw(st.integers(1, 20)),
            code_bits=draw(st.integers(1, 32)),
            layers=tuple(drawn),
            image=image,
            s_prior=draw(st.sampled_from(["empirical", "categorical"])),
            temporal=temporal,
            network=network,
            patch_size=draw(st.one_of(st.none(), st.integers(1, 8).map(lambda k: k * factors[-1]))),
        )


@given(valid_specs())
def test_yaml_and_json_round_trip_exact(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_yaml = HierarchySpec.from_yaml(spec.to_yaml())
        from_json = HierarchySpec.from_json(spec.to_json())
        from_dict = HierarchySpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert from_yaml == spec and from_json == spec and from_dict == spec
    assert from_yaml.to_yaml() == spec.to_yaml()
    assert json.loads(from_json.to_json()) == spec.to_dict()
    assert from_yaml.order == spec.order


# ---------------------------------------------------------------------------------------------- day of year
def test_doy_is_a_parent_of_layers_or_the_image():
    plain = spec_with((LatentLayerSpec("z1", parents=("s", "l")),), image_parents=("s", "z1"))
    assert plain.day_of_year is False
    on_layer = spec_with((LatentLayerSpec("z1", parents=("s", "doy")),), image_parents=("s", "z1"))
    on_image = spec_with((LatentLayerSpec("z1", parents=("s", "l")),), image_parents=("s", "z1", "doy"))
    assert on_layer.day_of_year and on_image.day_of_year
    assert "doy" not in on_layer.site_names and "doy" not in on_layer.order  # an observed input, not a site
    assert on_layer.input_channels("doy") == 4
    assert HierarchySpec.default(3, 4, day_of_year=True).day_of_year
    assert not HierarchySpec.default(3, 4).day_of_year
    with pytest.raises(ValueError, match="reserved"):
        LatentLayerSpec("doy", parents=("s",))
    with pytest.raises(ValueError, match=r"unknown parent 'month'.*doy"):
        spec_with((LatentLayerSpec("z1", parents=("s", "month")),), image_parents=("s", "z1"))
    with pytest.raises(ValueError, match="image: unknown parent 'date'"):
        spec_with((LatentLayerSpec("z1", parents=("s",)),), image_parents=("z1", "date"))


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_doy_parents_survive_a_round_trip(fmt, tmp_path):
    spec = spec_with((LatentLayerSpec("z1", parents=("s", "l", "doy")), LatentLayerSpec("z2", parents=("z1",))),
                     image_parents=("s", "z2", "doy"))
    path = tmp_path / f"spec.{fmt}"
    spec.save(path)
    back = HierarchySpec.load(path)
    assert back == spec and back.day_of_year
    assert back.layer("z1").parents == ("s", "l", "doy") and back.image.parents == ("s", "z2", "doy")
