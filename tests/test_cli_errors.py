"""How the command line reports errors: one line and exit code 2, ``--debug`` adds the traceback, outputs are
checked before any work."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hvaeseg.cli import main


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_predict_refuses_an_existing_output_before_loading_the_run(tmp_path, capsys):
    out = tmp_path / "prediction.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = _digest(tmp_path)
    # the run does not exist either: the output is checked first, so that is the error the user sees
    assert main(["predict", str(tmp_path / "no-run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "not a run folder" not in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _digest(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    plain = capsys.readouterr().err
    assert "Traceback" not in plain and "not a run folder" in plain
    assert main(["--debug", "evaluate", str(tmp_path / "nowhere")]) == 2
    debug = capsys.readouterr().err
    assert "Traceback (most recent call last)" in debug and debug.rstrip().endswith(plain.strip())


def test_interrupt_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    import hvaeseg.experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hvaeseg.experiment, "evaluate_run", interrupted)
    assert main(["evaluate", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "hvaeseg evaluate: interrupted\n"
