"""``hvaeseg train --config FILE`` and the one reader of config dataclasses (:mod:`hvaeseg._dataclass_io`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg._dataclass_io import FieldError, check_fields, from_dict
from hvaeseg.cli import build_parser, main
from hvaeseg.commands.train import _run_fields
from hvaeseg.data.sampler import SPLITS, SpatialSplit
from hvaeseg.methods import METHODS
from hvaeseg.methods.registry import method_config
from hvaeseg.run_config import RunConfig, read_config_file
from tests.bad_inputs.helpers import refuses

#: a 2-step supervised run on the tiny synthetic cube, as flags and as the same settings in a file
FLAGS = ["--method", "supervised", "--data", "synthetic:tiny", "--labels", "2", "--steps", "2", "--patch-size", "32",
         "--block", "64", "--unlabelled-patches", "16", "--batch-size", "2", "--val-every", "2", "--checkpoint-every",
         "2", "--fractions", "0.5", "0.25", "0.25", "--options", '{"widths": [8, 16]}']
SETTINGS = {"method": "supervised", "data": "synthetic:tiny", "labels": 2, "steps": 2, "patch_size": 32, "block": 64,
            "unlabelled_patches": 16, "batch_size": 2, "val_every": 2, "checkpoint_every": 2,
            "fractions": [0.5, 0.25, 0.25], "options": {"widths": [8, 16]}}


def _write(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings) if path.suffix == ".json" else yaml.safe_dump(settings))
    return path


def _saved(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _fields(*argv: str) -> dict:
    """What ``hvaeseg train ARGV`` would make its run of (no training)."""
    return _run_fields(build_parser().parse_args(["train", "--out", "unused", *argv]))


# ------------------------------------------------------------------------------------------------- train --config
def test_a_config_file_trains_the_run_its_flags_train(tmp_path):
    by_flags, by_file = tmp_path / "flags", tmp_path / "file"
    assert main(["train", *FLAGS, "--out", str(by_flags)]) == 0
    config = _write(tmp_path / "run.yaml", SETTINGS)
    assert main(["train", "--config", str(config), "--out", str(by_file)]) == 0
    assert _saved(by_file) == _saved(by_flags)
    assert _saved(by_file)["fractions"] == [0.5, 0.25, 0.25] and _saved(by_file)["options"] == {"widths": [8, 16]}


def test_a_flag_overrides_the_file_and_config_json_records_the_result(tmp_path):
    config = _write(tmp_path / "run.yaml", {**SETTINGS, "seed": 5, "labels": 3})
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--labels", "2", "--out", str(run)]) == 0
    saved = _saved(run)
    assert saved["labels"] == 2 and saved["seed"] == 5 and saved["steps"] == 2  # the flag; the file elsewhere


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_flags_given_override_the_file_even_at_their_defaults(tmp_path, suffix):
    config = str(_write(tmp_path / f"run{suffix}", {**SETTINGS, "seed": 5, "time_budget_s": 60.0}))
    assert _fields("--config", config) == {**SETTINGS, "seed": 5, "time_budget_s": 60.0}
    fields = _fields("--config", config, "--seed", "0", "--method", "elbo", "--options", '{"lr": 0.01}')
    assert fields["seed"] == 0 and fields["method"] == "elbo"  # 0 is --seed's default, but it was given
    assert fields["options"] == {"lr": 0.01}  # --options replaces the file's options as a whole
    assert fields["time_budget_s"] == 60.0 and fields["labels"] == 2  # not given: the file's
    assert _fields("--method", "elbo") == {"method": "elbo"}  # no file: only the flags given (defaults: RunConfig's)


def test_a_run_config_json_is_a_config_file(tmp_path):
    config = RunConfig(method="elbo", labels=3, fractions=(0.5, 0.25, 0.25), options={"lr": 0.01})
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert from_dict(RunConfig, _fields("--config", str(path))) == config


def test_an_empty_config_file_sets_nothing(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("")
    assert _fields("--config", str(path), "--method", "elbo") == {"method": "elbo"}


def test_an_unknown_key_is_refused_naming_it_and_the_file(tmp_path, capsys):
    config = _write(tmp_path / "run.yaml", {**SETTINGS, "lables": 3})
    line = refuses(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "r")], "'lables'", str(config),
                   "known fields: method", unchanged=(tmp_path / "r", config))
    assert "'labels'" not in line  # only the unknown key is named as unknown


@pytest.mark.parametrize(
    "text, needles",
    [
        ("labels: '3'\n", ("run.yaml option labels: expected an integer", "unquoted")),
        ("time_budget_s: 1e3\n", ("option time_budget_s: expected a number or null", "1.0e-3")),
        ("- method\n", ("run.yaml", "expected a mapping of run settings")),
        ("method: [unclosed\n", ("run.yaml", "not a valid YAML file")),
        ("data: synthetic:tiny\n", ("--method", "run.yaml", "add method: METHOD")),
        ("method: unet\n", ("--method", "unet", "supervised")),
        ("method: supervised\nlabels: -1\n", ("--labels", ">= 0")),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, text, needles):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    refuses(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "r")], *needles,
            unchanged=(tmp_path / "r", config))


def test_a_missing_config_file_or_method_is_a_one_line_error(tmp_path, capsys):
    refuses(capsys, ["train", "--config", str(tmp_path / "no.yaml"), "--out", str(tmp_path / "r")], "--config",
            "no.yaml", unchanged=(tmp_path / "r",))
    refuses(capsys, ["train", "--out", str(tmp_path / "r")], "--method", "supervised", unchanged=(tmp_path / "r",))


# ------------------------------------------------------------------------------------------------- from_dict
@dataclass(frozen=True)
class _Inner:
    a: int
    b: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner
    inners: tuple[_Inner, ...] = ()
    maybe: _Inner | None = None
    pair: tuple[float, float] | None = None
    table: dict[str, int] = field(default_factory=dict)


def test_unknown_fields_are_named_with_the_known_ones():
    with pytest.raises(FieldError) as err:
        from_dict(_Outer, {"name": "x", "inner": {"a": 1}, "nme": 1, "extra": 2}, "run.yaml")
    assert str(err.value) == ("run.yaml: unknown field(s) 'extra', 'nme'; known fields: name, inner, inners, maybe, "
                              "pair, table")
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)  # as cls(**d) would raise
    with pytest.raises(FieldError, match=r"^unknown field\(s\) 'x'; known fields: a, b; see the docs$"):
        check_fields(_Inner, ["a", "x"], hint="see the docs")


def test_nested_errors_name_the_field():
    with pytest.raises(FieldError, match=r"^cfg\.inners\[1\]: unknown field\(s\) 'c'; known fields: a, b$"):
        from_dict(_Outer, {"name": "x", "inner": {"a": 1}, "inners": [{"a": 1}, {"a": 2, "c": 3}]}, "cfg")
    with pytest.raises(FieldError, match=r"^inner: missing field\(s\) a$"):
        from_dict(_Outer, {"name": "x", "inner": {}})
    with pytest.raises(FieldError, match=r"^missing field\(s\) name, inner$"):
        from_dict(_Outer, {})
    with pytest.raises(TypeError, match="^cfg: expected a mapping of _Outer fields, got list$"):
        from_dict(_Outer, [1], "cfg")


def test_lists_become_tuples_and_mappings_dataclasses_where_annotated():
    data = {"name": "x", "inner": {"a": 1, "b": ["p", "q"]}, "inners": [{"a": 2}], "maybe": {"a": 3},
            "pair": [0.5, 1], "table": {"k": 1}}
    out = from_dict(_Outer, data)
    assert out == _Outer("x", _Inner(1, ("p", "q")), (_Inner(2),), _Inner(3), (0.5, 1), {"k": 1})
    assert from_dict(_Outer, {"name": "x", "inner": out.inner}).inner is out.inner  # instances kept as they are
    assert from_dict(_Outer, out) is out


_fractions = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)).filter(lambda t: sum(t) > 0)


@st.composite
def _run_configs(draw) -> RunConfig:
    patch = draw(st.integers(1, 128))
    a, b, c = draw(_fractions)
    n = a + b + c
    options = draw(st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.booleans(), st.integers(),
                                                                   st.floats(allow_nan=False, allow_infinity=False),
                                                                   st.lists(st.integers(), max_size=3)), max_size=3))
    return RunConfig(
        method=draw(st.sampled_from(sorted(METHODS))),
        data=draw(st.sampled_from(["synthetic:tiny", "/data/cube.zarr", "s3://bucket/cube.zarr"])),
        labels=draw(st.integers(1, 10_000)), steps=draw(st.integers(1, 10**6)), seed=draw(st.integers(0, 2**31)),
        data_seed=draw(st.integers(0, 2**31)), patch_size=patch, block=draw(st.integers(patch, 4 * patch)),
        dates=draw(st.integers(1, 12)), fractions=(a / n, b / n, c / n), min_valid=draw(st.floats(0, 1)),
        val_every=draw(st.integers(0, 1000)),
        time_budget_s=draw(st.none() | st.floats(1e-3, 1e6)), precision=draw(st.sampled_from(["fp32", "bf16"])),
        options=options,
    )


@given(_run_configs())
def test_run_configs_round_trip(config):
    assert from_dict(RunConfig, asdict(config)) == config
    assert from_dict(RunConfig, json.loads(json.dumps(asdict(config)))) == config  # lists back to tuples
    assert RunConfig.from_json(config.to_json()) == config


@st.composite
def _spatial_splits(draw) -> SpatialSplit:
    keys = draw(st.lists(st.sampled_from(SPLITS), min_size=1, max_size=3, unique=True))
    weights = draw(st.lists(st.integers(1, 20), min_size=len(keys), max_size=len(keys)))
    fractions = {k: w / sum(weights) for k, w in zip(keys, weights)}
    block = {"y": draw(st.integers(1, 512)), "x": draw(st.integers(1, 512))}
    return SpatialSplit(block, fractions, draw(st.integers(0, 2**31)))


@given(_spatial_splits())
def test_spatial_splits_round_trip(split):
    assert from_dict(SpatialSplit, asdict(split)) == split
    assert SpatialSplit.from_dict(json.loads(json.dumps(split.to_dict()))) == split


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
#: the flags that shrink an example run to two steps on the tiny cube (the file gives everything else)
TINY = ["--data", "synthetic:tiny", "--labels", "2", "--steps", "2", "--patch-size", "32", "--block", "64",
        "--unlabelled-patches", "16", "--batch-size", "2", "--val-every", "2", "--checkpoint-every", "2",
        "--fractions", "0.5", "0.25", "0.25"]


def test_the_example_configs_are_there():
    assert {p.name for p in EXAMPLES} >= {"symmetric_exact_s.yaml", "elbo_exact_s.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_config_trains_and_validation_chooses_its_prediction_rule(path, tmp_path):
    """Each file of ``examples/configs`` is a valid run (its options those of its method), trains with the flags that
    shrink it, and a file with several ``decoder_betas`` has validation score each and record the one it keeps."""
    settings = read_config_file(path)
    method_config(settings["method"], settings["options"])
    assert main(["train", "--config", str(path), *TINY, "--out", str(tmp_path / "run")]) == 0
    assert _saved(tmp_path / "run")["options"] == settings["options"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    betas = settings["options"].get("decoder_betas", [0])
    assert history["validation"]
    for entry in history["validation"]:
        if len(betas) > 1:
            assert set(entry["candidates"]) == {str(float(b)) for b in betas}
            assert entry["prediction"] in betas
            assert entry["mean_iou"] == max(miou for _, miou in entry["candidates"].values())
        else:
            assert "prediction" not in entry
