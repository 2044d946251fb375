import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from hvaeseg.cli import main
from hvaeseg.commands.data import parse_bands, parse_clouds, parse_size
from hvaeseg.data.store import open_cube, write_cube

from .conftest import TOY_BANDS, TOY_CLASSES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cube_path(toy_cube, tmp_path) -> str:
    path = str(tmp_path / "toy.zarr")
    write_cube(toy_cube, path)
    return path


def _png_ok(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    return image


# --------------------------------------------------------------------------------------------- info


def test_info_table(cube_path, capsys):
    assert main(["data", "info", cube_path]) == 0
    out = capsys.readouterr().out
    assert cube_path in out
    for name in TOY_BANDS + TOY_CLASSES:
        assert name in out
    assert "2024-03-17" in out and "18.8%" in out  # the cloudy date and its invalid fraction
    assert "832.8 nm" in out and "void" in out


def test_info_json(cube_path, capsys):
    assert main(["data", "info", cube_path, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dims"] == {"time": 3, "band": 4, "y": 32, "x": 32}
    assert [b["name"] for b in summary["bands"]] == list(TOY_BANDS)
    assert summary["bands"][3]["wavelength_nm"] == 832.8
    assert [d["time"] for d in summary["dates"]] == ["2024-03-01", "2024-03-17", "2024-04-02"]
    assert summary["dates"][0]["invalid_fraction"] == 0.0
    assert summary["dates"][1]["invalid_fraction"] > 0.1
    assert [c["name"] for c in summary["classes"]] == list(TOY_CLASSES)
    assert sum(c["pixels"] for c in summary["classes"]) + summary["void_pixels"] == 32 * 32


@pytest.mark.filterwarnings("ignore:.*Zarr V3 specification", "ignore:Consolidated metadata")
def test_info_errors_are_one_line(tmp_path, toy_cube, capsys):
    assert main(["data", "info", str(tmp_path / "missing.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hvaeseg data: error: no cube at") and err.count("\n") == 1
    bad = toy_cube.copy(deep=True)
    bad["labels"][0, 0] = 9
    bad.to_zarr(tmp_path / "bad.zarr", zarr_format=3)
    assert main(["data", "info", str(tmp_path / "bad.zarr")]) == 2
    assert "`labels` out of range" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "bad.zarr"), "--no-validate"]) == 0


# --------------------------------------------------------------------------------------------- quicklook


def test_quicklook_png(cube_path, tmp_path, capsys):
    png = tmp_path / "look.png"
    assert main(["data", "quicklook", cube_path, "-o", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    _png_ok(png)


@pytest.mark.parametrize("date", ["1", "-1", "2024-03-17", "2024-04-02T00:00"])
def test_quicklook_dates(cube_path, tmp_path, date):
    png = tmp_path / "look.png"
    assert main(["data", "quicklook", cube_path, "--date", date, "-o", str(png)]) == 0
    _png_ok(png)


def test_quicklook_bad_date(cube_path, tmp_path, capsys):
    assert main(["data", "quicklook", cube_path, "--date", "2023-01-01", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no date 2023-01-01 in the cube; dates: 2024-03-01, 2024-03-17, 2024-04-02" in err
    assert not (tmp_path / "x.png").exists()
    assert main(["data", "quicklook", cube_path, "--date", "7", "-o", str(tmp_path / "x.png")]) == 2
    assert "date index 7 out of range" in capsys.readouterr().err


def test_quicklook_without_labels_or_rgb(toy_cube, tmp_path):
    ds = toy_cube.drop_vars("labels").sel(band=["B03", "B08"])
    write_cube(ds, tmp_path / "c.zarr")
    assert main(["data", "quicklook", str(tmp_path / "c.zarr"), "-o", str(tmp_path / "c.png")]) == 0
    _png_ok(tmp_path / "c.png")


def test_quicklook_default_is_clearest_date(toy_cube):
    from hvaeseg.data.summary import date_index, quicklook

    assert date_index(toy_cube) == 0
    fig = quicklook(toy_cube)
    assert "2024-03-01" in fig.axes[0].get_title()


# --------------------------------------------------------------------------------------------- parsing


def test_parsers():
    assert parse_size("512") == 512 and parse_size("256x512") == (256, 512)
    assert parse_bands("B02, B03,B8A") == ("B02", "B03", "B8A")
    assert parse_clouds("0.5,0.3,0.2") == (0.5, 0.3, 0.2)
    for bad in ("0", "12x", "axb", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="B08 or B8A"):
        parse_bands("B02,B8")
    for bad in ("0.5,0.5", "0.5,0.3,0.3", "a,b,c", "-0.1,0.6,0.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_clouds(bad)


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "synth", "x.zarr", "--bands", "B02,B8"])
    assert info.value.code == 2
    assert "did you mean B08 or B8A" in capsys.readouterr().err


def test_every_data_command_is_reached_through_the_data_group(tmp_path, capsys):
    """``hvaeseg data`` needs a sub-command and lists all four, ``ingest`` (added by its own module to the
    group ``hvaeseg.commands.data.register`` returns) among them; ``data ingest`` runs the ingestion."""
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2 and "DATA_COMMAND" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["data", "--help"])
    assert info.value.code == 0
    listed = capsys.readouterr().out
    for command in ("synth", "info", "quicklook", "ingest"):
        assert f"    {command} " in listed, command
    with pytest.raises(SystemExit):  # not a top-level command
        main(["ingest", "a.nc", "b.zarr"])
    assert "invalid choice: 'ingest'" in capsys.readouterr().err
    missing, out = tmp_path / "missing.nc", tmp_path / "out.zarr"
    assert main(["data", "ingest", str(missing), str(out)]) == 2
    assert str(missing) in capsys.readouterr().err  # the ingestion ran and named what it could not open
    assert not out.exists()


def test_python_dash_m(cube_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "hvaeseg", "data", "info", cube_path, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dims"]["band"] == 4


# --------------------------------------------------------------------------------------------- synth


def test_synth_end_to_end(tmp_path, capsys):
    out = tmp_path / "syn.zarr"
    args = ["data", "synth", str(out), "--seed", "3", "--size", "48x64", "--dates", "3", "--bands", "B02,B03,B04,B08"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    ds = open_cube(out)
    assert dict(ds.sizes) == {"time": 3, "band": 4, "y": 48, "x": 64}
    assert ds["band"].values.tolist() == ["B02", "B03", "B04", "B08"]
    assert "clean_reflectance" in ds
    before = ds["reflectance"].values.copy()
    # exists: refused without --overwrite, replaced with it
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(
        args[:3] + ["--seed", "4", "--size", "48x64", "--dates", "3", "--bands", "B02,B03,B04,B08", "--overwrite"]
    ) == 0
    after = open_cube(out)["reflectance"].values
    assert after.shape == before.shape and not np.array_equal(after, before)
    assert sorted(os.listdir(tmp_path)) == ["syn.zarr"]
    png = tmp_path / "syn.png"
    assert main(["data", "quicklook", str(out), "-o", str(png)]) == 0
    _png_ok(png)


def test_synth_clouds_option(tmp_path):
    out = tmp_path / "overcast.zarr"
    assert main(["data", "synth", str(out), "--size", "32", "--dates", "2", "--clouds", "0,0,1"]) == 0
    ds = open_cube(out)
    assert float(ds["valid"].mean()) < 0.5  # every date overcast


# --------------------------------------------------------------------------------------------- float reflectance


def test_float32_reflectance_cube_trains_end_to_end(tmp_path, capsys):
    """float32 reflectance (NaN = no data, only where not `valid`): `data info` and `train` take it as it is."""
    from hvaeseg.data.store import write_dataset
    from hvaeseg.data.synthetic import make_cube

    ds = make_cube("tiny", progress_bar=False).drop_vars("clean_reflectance")
    dn = ds["reflectance"]
    refl = (dn.astype(np.float32) * np.float32(1e-4) - np.float32(0.1)).where(ds["valid"] | (dn[:, :1] > 1500)[:, 0])
    refl.attrs = {"units": "1"}
    path = write_dataset(ds.assign(reflectance=refl.astype(np.float32)), tmp_path / "f32.zarr")
    assert main(["data", "info", path]) == 0
    assert "reflectance float32" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--method", "supervised", "--data", path, "--labels", "2", "--steps", "2", "--patch-size",
                 "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "4", "--val-every", "2",
                 "--checkpoint-every", "2", "--out", str(run)]) == 0
    assert (run / "best.pt").exists()
