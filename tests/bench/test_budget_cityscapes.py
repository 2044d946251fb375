"""The label-budget study on a Cityscapes root (``--cubes cityscapes:ROOT:HxW``), on the seeded miniature with
tiny settings: every run of the plan trained and evaluated (compare.py in this process instead of one subprocess
per run, to spare the start-up), budgets counted in images, the official val images as the test split, and the
table in the layout of the original."""

from __future__ import annotations

import json

import pytest

from tests.bench.conftest import _bench_script
from tests.data.cityscapes_mini import make_cityscapes


@pytest.fixture(scope="module")
def budget_table():
    yield from _bench_script("budget_table")


def test_the_budget_study_runs_on_the_cityscapes_miniature(budget, budget_table, tmp_path, monkeypatch):
    mini = make_cityscapes(tmp_path / "cityscapes")
    ran = []

    def in_process(args, runs, row_file, on_row, command=budget.command):
        import compare  # bench/ is on sys.path (budget.py put it there)

        for run in runs:
            run.folder.mkdir(parents=True, exist_ok=True)
            assert compare.main(command(args, run)[2:]) == 0  # [python, compare.py, ARGS...]
            status, row = budget.state(run, row_file)
            assert status == "done"
            ran.append(run)
            on_row(run, row)
        return []

    monkeypatch.setattr(budget, "run_pool", in_process)
    cube = f"cityscapes:{mini.root}:16x32"
    js = tmp_path / "b.json"
    argv = ["--cubes", cube, "--methods", "symmetric", "elbo", "supervised", "mixmatch", "--labels", "1", "0",
            "--seeds", "0", "--steps", "2", "--patch-size", "16", "--block", "16", "--batch-size", "4",
            "--unlabelled-patches", "8", "--val-every", "2", "--iwae-samples", "1", "--jobs", "1",
            "--cube-cache", str(tmp_path / "cubes"), "--out", str(tmp_path / "runs"), "--json", str(js),
            "--png", str(tmp_path / "b.png")]
    assert budget.main(argv) == 0
    report = json.loads(js.read_text())
    (entry,) = report["cubes"]
    assert entry["unit"] == "images" and entry["all_locations"] == 5  # the 6 train images less 1 for validation
    assert report["complete"] and len(report["runs"]) == 8 == len(ran)
    for row in report["runs"]:
        assert 0 <= row["accuracy"] <= 1 and row["labels"] in (1, 5)
    tests = {json.loads((r.folder / "compare_row.json").read_text())["pixels"] for r in ran}
    assert tests == {2 * 16 * 32}  # the test split: the two official val images, every pixel
    assert (tmp_path / "b.png").stat().st_size > 10_000
    table = budget_table.table(report)
    for text in ("HVAE (symmetric)", "HVAE (ELBO)", "supervised U-Net", "MixMatch", "| 1 |", "all (5)",
                 "labelled images"):
        assert text in table, text
