"""Method options are checked by type against their config dataclass before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.methods import METHODS, method_config
from hvaeseg.options import check_option_types


@pytest.mark.parametrize(
    "method, options, field, want",
    [
        ("supervised", {"dihedral": "no"}, "dihedral", "true or false"),
        ("supervised", {"lr": "0.001"}, "lr", "a number"),
        ("supervised", {"max_shift": 2.5}, "max_shift", "an integer"),
        ("supervised", {"max_shift": True}, "max_shift", "an integer"),
        ("supervised", {"widths": [8, "16"]}, "widths", "a list"),
        ("mixmatch", {"day_of_year": 1}, "day_of_year", "true or false"),
        ("symmetric", {"estimator": 3}, "estimator", "a string"),
        ("symmetric", {"weights": [1, 2]}, "weights", "an object"),
        ("elbo", {"clip_norm": "big"}, "clip_norm", "a number or null"),
        ("pixel-gbm", {"num_leaves": "31"}, "num_leaves", "an integer"),
    ],
)
def test_wrong_types_name_the_field_and_what_was_expected(method, options, field, want):
    with pytest.raises(ValueError) as err:
        method_config(method, options)
    message = str(err.value)
    assert f"option {field}: expected {want}" in message
    assert method in message and "\n" not in message


def test_right_types_pass_and_lists_become_tuples():
    config = method_config("supervised", {"lr": 1, "dihedral": False, "widths": [8, 16], "jitter": 0})
    assert config.lr == 1 and config.dihedral is False and config.widths == (8, 16)
    config = method_config("symmetric", {"weights": {"sleep_q": 0.5}, "clip_norm": None})
    assert config.weights.sleep_q == 0.5 and config.clip_norm is None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_accepts_its_own_defaults(name):
    """The annotations of every config agree with its defaults (a check that reads each field's annotation)."""
    config_class = METHODS[name].config_class
    defaults = {k: v for k, v in vars(config_class()).items() if not k.startswith("_")}
    defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()}
    defaults = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in defaults.items()}
    check_option_types(config_class, defaults, name)


@dataclass
class _Toy:
    flag: bool = False
    count: int = 1
    rate: float = 0.1
    name: str = "a"


@given(st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.none()))
def test_type_check_is_exactly_the_json_kinds(value):
    """bool takes only booleans, int only non-bool integers, float any non-bool number, str only strings."""
    expect = {
        "flag": isinstance(value, bool),
        "count": isinstance(value, int) and not isinstance(value, bool),
        "rate": isinstance(value, (int, float)) and not isinstance(value, bool),
        "name": isinstance(value, str),
    }
    for field, ok in expect.items():
        if ok:
            check_option_types(_Toy, {field: value}, "toy")
        else:
            with pytest.raises(ValueError, match=f"toy option {field}: expected"):
                check_option_types(_Toy, {field: value}, "toy")
