"""Progress when stderr is not a terminal: a line at a steady interval with count, speed, ETA and status."""

from __future__ import annotations

import io

from hvaeseg._progress import progress, progress_line


class _Clock:
    """A clock that advances ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_lines_at_the_interval_with_count_speed_eta_and_status(monkeypatch):
    monkeypatch.delenv("HVAESEG_NO_PROGRESS", raising=False)
    out = io.StringIO()
    items = list(progress(range(10), "training x", status=lambda: "loss 1.5", interval=3.0, stream=out,
                          clock=_Clock(1.0)))
    assert items == list(range(10))  # every item, in order
    lines = out.getvalue().splitlines()
    # readings at t = 1 (start), 2, 3, ...: item k ends at t = k + 2; a line when 3 s have passed since the last
    assert [line.split(":")[1].split()[0] for line in lines] == ["3/10", "6/10", "9/10"]
    assert lines[0] == "training x: 3/10 (30%), 1.00 it/s, elapsed 3s, ETA 7s, loss 1.5"


def test_short_work_and_silenced_progress_print_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.delenv("HVAESEG_NO_PROGRESS", raising=False)
    assert list(progress(range(3), "quick", interval=30.0, stream=out, clock=_Clock(1.0))) == [0, 1, 2]
    monkeypatch.setenv("HVAESEG_NO_PROGRESS", "1")
    assert list(progress(range(3), "silenced", interval=0.0, stream=out, clock=_Clock(1.0))) == [0, 1, 2]
    assert out.getvalue() == ""


def test_progress_line_formats():
    line = progress_line("predicting", 50, 200, 100.0)
    assert line == "predicting: 50/200 (25%), 0.50 it/s, elapsed 1m40s, ETA 5m00s"
    assert progress_line("reading", 7, None, 2.0) == "reading: 7, 3.50 it/s, elapsed 2s"
    assert progress_line("t", 1, 10, 0.0) == "t: 1/10 (10%), - it/s, elapsed 0s"


def test_evaluate_and_ingest_log_progress_lines(tmp_path, capsys, monkeypatch):
    """Evaluation and ingestion report progress like training (a line per interval when not on a terminal)."""
    from pathlib import Path

    from hvaeseg.cli import main
    from tests.test_experiment import train_args

    monkeypatch.setenv("HVAESEG_PROGRESS_INTERVAL", "0")
    monkeypatch.delenv("HVAESEG_NO_PROGRESS", raising=False)
    run = tmp_path / "run"
    assert main(train_args("supervised", run, 2)) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    err = capsys.readouterr().err
    assert "evaluating on test: " in err and "it/s" in err
    site = Path(__file__).resolve().parents[1] / "bench" / "data" / "worldcereal-be-00002806639B424A"
    products = sorted(str(p) for p in site.glob("S2_L2A_*.nc"))
    assert products
    main(["data", "ingest", *products, str(tmp_path / "cube.zarr")])
    assert "reading products: 1/" in capsys.readouterr().err
