"""Bad cubes: lost or damaged chunks, reflectance that is not what the loader reads, broken variables.

Each case damages a copy of the tiny synthetic store (or writes a variant of it) and runs ``hvaeseg data info``,
``hvaeseg train`` or ``hvaeseg predict`` on it: exit 2, one line naming the variable, the chunk or value and the
fix, and nothing written or changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hvaeseg.cli import main
from hvaeseg.data.store import open_cube, write_dataset
from hvaeseg.data.synthetic import write_synthetic

from .helpers import refuses

# the tiny preset in one chunk per date: reflectance c/T/0/0/0, valid c/T/0/0, labels c/0/0
TRAIN = ["--method", "supervised", "--labels", "2", "--steps", "2", "--patch-size", "32", "--block", "64",
         "--unlabelled-patches", "32", "--batch-size", "4", "--val-every", "2", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return Path(write_synthetic(tmp_path_factory.mktemp("tiny") / "cube.zarr", "tiny", progress_bar=False))


@pytest.fixture
def cube(tiny, tmp_path) -> Path:
    """A copy of the tiny store, to damage."""
    return Path(shutil.copytree(tiny, tmp_path / "cube.zarr"))


def _variant(tiny: Path, path: Path, change) -> Path:
    """The tiny cube changed by ``change(ds) -> ds``, written without validation (as another tool would)."""
    ds = change(open_cube(tiny).load())
    return Path(write_dataset(ds, path))


def _in_units(ds, dtype="float32"):
    """Reflectance in physical units (NaN = no data), as many tools deliver it."""
    dn = ds["reflectance"]
    refl = (dn.astype(np.float64) * 1e-4 - 0.1).where(dn != 0).astype(dtype)
    refl.attrs = {"units": "1"}
    return ds.assign(reflectance=refl).drop_vars("clean_reflectance")


def _train(capsys, cube: Path, tmp_path: Path, *needles: str) -> str:
    run = tmp_path / "run"
    return refuses(capsys, ["train", "--data", str(cube), "--out", str(run), *TRAIN], *needles, unchanged=(cube, run))


# --------------------------------------------------------------------------------------------- lost chunks


def test_info_on_a_deleted_reflectance_chunk(cube, capsys):
    (cube / "reflectance/c/2/0/0/0").unlink()
    refuses(capsys, ["data", "info", str(cube)], "`reflectance` chunk c/2/0/0/0 is missing",
            str(cube / "reflectance/c/2/0/0/0"), "Fix: restore", unchanged=(cube,))


def test_train_on_a_deleted_reflectance_chunk(cube, tmp_path, capsys):
    (cube / "reflectance/c/2/0/0/0").unlink()
    _train(capsys, cube, tmp_path, "`reflectance` chunk c/2/0/0/0 is missing", "Fix: restore")


def test_info_on_a_deleted_valid_chunk(cube, capsys):
    (cube / "valid/c/4/0/0").unlink()  # would read as all invalid
    refuses(capsys, ["data", "info", str(cube)], "`valid` chunk c/4/0/0 is missing", "Fix:", unchanged=(cube,))


def test_info_on_a_deleted_labels_chunk(cube, capsys):
    (cube / "labels/c/0/0").unlink()  # would read as class 0 everywhere
    refuses(capsys, ["data", "info", str(cube)], "`labels` chunk c/0/0 is missing", "Fix:", unchanged=(cube,))


def test_info_on_a_deleted_chunk_of_a_store_that_skips_empty_chunks(cube, capsys):
    meta = json.loads((cube / "zarr.json").read_text())
    del meta["attributes"]["hvaeseg_chunks"]  # written by a tool that leaves all-fill chunks out
    (cube / "zarr.json").write_text(json.dumps(meta))
    (cube / "reflectance/c/0/0/0/0").unlink()
    refuses(capsys, ["data", "info", str(cube)], "`reflectance` chunk c/0/0/0/0 is missing", "DN 0 (no data)",
            "`valid` marks", unchanged=(cube,))


# --------------------------------------------------------------------------------------------- damaged chunks


def test_info_on_a_truncated_reflectance_chunk(cube, capsys):
    chunk = cube / "reflectance/c/3/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    refuses(capsys, ["data", "info", str(cube)], "`reflectance` chunk c/3/0/0/0 is damaged", str(chunk),
            "Fix: restore", unchanged=(cube,))


def test_train_on_a_truncated_reflectance_chunk(cube, tmp_path, capsys):
    chunk = cube / "reflectance/c/3/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    _train(capsys, cube, tmp_path, "`reflectance` chunk c/3/0/0/0 is damaged", "Fix: restore")


def test_info_on_a_garbage_valid_chunk(cube, capsys):
    (cube / "valid/c/1/0/0").write_bytes(bytes(range(256)) * 8)
    refuses(capsys, ["data", "info", str(cube)], "`valid` chunk c/1/0/0 is damaged", "Fix:", unchanged=(cube,))


def test_info_on_an_empty_labels_chunk(cube, capsys):
    (cube / "labels/c/0/0").write_bytes(b"")
    refuses(capsys, ["data", "info", str(cube)], "`labels` chunk c/0/0 is damaged", unchanged=(cube,))


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(tiny), "--out", str(out), *TRAIN]) == 0
    return out


def test_predict_on_a_damaged_chunk(run, cube, tmp_path, capsys):
    (cube / "reflectance/c/5/0/0/0").write_bytes(b"\x00" * 64)
    pred = tmp_path / "pred.zarr"
    refuses(capsys, ["predict", str(run), "--data", str(cube), "--out", str(pred)],
            "`reflectance` chunk c/5/0/0/0 is damaged", unchanged=(cube, run, pred))


def test_predict_on_a_deleted_chunk(run, cube, tmp_path, capsys):
    (cube / "valid/c/5/0/0").unlink()
    pred = tmp_path / "pred.zarr"
    refuses(capsys, ["predict", str(run), "--data", str(cube), "--out", str(pred)],
            "`valid` chunk c/5/0/0 is missing", unchanged=(cube, run, pred))


# --------------------------------------------------------------------------------------------- reflectance values


def _nan_where_valid(ds):
    ds = _in_units(ds)
    ds["reflectance"][1, 3, 10:12, 20:30] = np.nan  # a band with no data, under pixels still `valid`
    ds["valid"][1, 10:12, 20:30] = True
    return ds


def test_info_on_float_reflectance_with_nan_where_valid(tiny, tmp_path, capsys):
    bad = _variant(tiny, tmp_path / "nan.zarr", _nan_where_valid)
    refuses(capsys, ["data", "info", str(bad)], "`reflectance` has no data (NaN) in 20 pixels", "(dates 1)",
            "Fix: ds['valid'] = ds['valid'] & ds['reflectance'].notnull().all('band')", unchanged=(bad,))


def test_train_on_float_reflectance_with_nan_where_valid(tiny, tmp_path, capsys):
    bad = _variant(tiny, tmp_path / "nan.zarr", _nan_where_valid)
    _train(capsys, bad, tmp_path, "has no data (NaN)", "notnull()")


def test_info_on_dn_zero_where_valid(tiny, tmp_path, capsys):
    def change(ds):
        ds["reflectance"][0, :, 5, 5] = 0
        ds["valid"][0, 5, 5] = True
        return ds

    bad = _variant(tiny, tmp_path / "zero.zarr", change)
    refuses(capsys, ["data", "info", str(bad)], "has no data (DN 0) in 1 pixels",
            "(ds['reflectance'] != 0).all('band')", unchanged=(bad,))


def test_info_on_float64_reflectance_with_negative_values(tiny, tmp_path, capsys):
    def change(ds):
        ds["reflectance"][:, :, :8, :8] = 400  # reflectance -0.06: dark water
        return _in_units(ds, "float64")

    bad = _variant(tiny, tmp_path / "f64.zarr", change)
    refuses(capsys, ["data", "info", str(bad)], "`reflectance` has dtype float64, expected uint16 or float32",
            ".astype('float32')", "((ds['reflectance'] + 0.1) / 1e-4)", "add_offset=-0.1", unchanged=(bad,))


def test_info_on_reflectance_in_units_that_kept_the_dn_attributes(tiny, tmp_path, capsys):
    def change(ds):
        attrs = dict(ds["reflectance"].attrs)
        ds = _in_units(ds)
        ds["reflectance"] = ds["reflectance"].fillna(0).assign_attrs(attrs)  # scale_factor still there
        return ds

    bad = _variant(tiny, tmp_path / "kept.zarr", change)
    refuses(capsys, ["data", "info", str(bad)], "is float with scale_factor, so it is read as DN",
            "attrs.pop('scale_factor')", unchanged=(bad,))


# --------------------------------------------------------------------------------------------- variables


def test_info_on_a_cube_without_valid(tiny, tmp_path, capsys):
    bad = _variant(tiny, tmp_path / "novalid.zarr", lambda ds: ds.drop_vars("valid"))
    refuses(capsys, ["data", "info", str(bad)], "missing variable `valid`", "valid_from_scl(ds['scl']",
            unchanged=(bad,))


def test_train_on_a_cube_without_reflectance(tiny, tmp_path, capsys):
    bad = _variant(tiny, tmp_path / "norefl.zarr", lambda ds: ds.drop_vars(["reflectance", "clean_reflectance"]))
    _train(capsys, bad, tmp_path, "missing variable `reflectance`", "Fix:")


def test_info_on_valid_stored_as_uint8(tiny, tmp_path, capsys):
    bad = _variant(tiny, tmp_path / "u8.zarr", lambda ds: ds.assign(valid=ds["valid"].astype("uint8")))
    refuses(capsys, ["data", "info", str(bad)], "`valid` has dtype uint8, expected bool",
            "ds['valid'] = ds['valid'].astype(bool)", unchanged=(bad,))


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_overwrite_never_replaces_what_is_not_a_zarr_store(kind, tmp_path, capsys):
    """``--overwrite`` replaces a store, never a plain file or a folder of other things (data synth here; predict
    and inpaint check their outputs the same way, through hvaeseg.data.store)."""
    out = tmp_path / "mine"
    if kind == "file":
        out.write_text("my notes")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("my notes")
    refuses(capsys, ["data", "synth", str(out), "--preset", "tiny", "--overwrite"],
            str(out), "not a Zarr store" if kind == "folder" else "existing file", "another output path",
            unchanged=(tmp_path,))
