"""The pure parts of ``bench/budget.py`` (the label-budget study): summary over seeds, margins over pixel-gbm,
the figure from a hand-made list of rows, the arguments. Nothing is trained here; the study itself is checked
by its smoke run (bench/README.md)."""

from __future__ import annotations

import json
import statistics

import pytest

ALL = {"synthetic:small": 40, "s2-cloud-shadow-512": 25}


def _row(cube, method, labels, seed, acc, miou, iou=None, steps=100, seconds=10.0):
    row = {"cube": cube, "method": method, "labels": labels, "seed": seed, "accuracy": acc, "mean_iou": miou,
           "iou": iou or {"a": miou, "b": None}, "steps": steps, "train_seconds": seconds,
           "fit_seconds": seconds if method == "pixel-gbm" else None, "labelled_pixels": labels * 1024}
    return row


def _rows() -> list[dict]:
    rows = []
    for cube, n_all in ALL.items():
        for labels in (5, 10, n_all):
            for seed in (0, 1, 2):
                for k, method in enumerate(("pixel-gbm", "symmetric", "supervised")):  # not in figure order
                    acc = 0.5 + 0.01 * labels ** 0.5 + 0.05 * k + 0.01 * seed
                    rows.append(_row(cube, method, labels, seed, acc, acc - 0.2 + 0.02 * seed * k))
    return rows


def test_summary_is_the_mean_and_sample_sd_over_seeds(budget):
    rows = _rows()
    summary = budget.summarise(rows, ALL)
    assert len(summary) == 2 * 3 * 3
    # ordered by cube (as first seen), method (figure order), labels
    assert [e["method"] for e in summary[:9]] == ["symmetric"] * 3 + ["supervised"] * 3 + ["pixel-gbm"] * 3
    assert [e["labels"] for e in summary[:3]] == [5, 10, 40]
    e = next(e for e in summary if (e["cube"], e["method"], e["labels"]) == ("s2-cloud-shadow-512", "symmetric", 10))
    vals = [r["mean_iou"] for r in rows if (r["cube"], r["method"], r["labels"]) == (e["cube"], "symmetric", 10)]
    assert e["seeds"] == [0, 1, 2]
    assert e["mean_iou"] == pytest.approx(statistics.fmean(vals))
    assert e["mean_iou_sd"] == pytest.approx(statistics.stdev(vals))  # sample sd (n - 1)
    assert e["iou"]["a"] == pytest.approx(e["mean_iou"]) and e["iou"]["b"] is None
    assert e["fit_seconds"] if e["method"] == "pixel-gbm" else "fit_seconds" not in e
    assert [x["all"] for x in summary if x["cube"] == "s2-cloud-shadow-512" and x["method"] == "symmetric"] == [
        False, False, True]


def test_one_seed_has_no_sd(budget):
    (e,) = budget.summarise([_row("synthetic:small", "supervised", 5, 0, 0.7, 0.5)])
    assert e["accuracy"] == 0.7 and e["accuracy_sd"] is None and e["all"] is False


def test_margins_over_pixel_gbm(budget):
    rows = [_row("c", "pixel-gbm", 5, s, 0.80, 0.60 + 0.02 * s) for s in (0, 1)]
    rows += [_row("c", "symmetric", 5, s, 0.85, 0.70) for s in (0, 1)]
    rows += [_row("c", "symmetric", 10, 0, 0.90, 0.75)]  # no pixel-gbm at N = 10
    summary = budget.summarise(rows)
    out = budget.add_margins(summary)
    by = {(e["method"], e["labels"]): e for e in out}
    assert by["symmetric", 5]["margin_mean_iou"] == pytest.approx(0.70 - 0.61)
    assert by["symmetric", 5]["margin_accuracy"] == pytest.approx(0.05)
    assert by["symmetric", 10]["margin_mean_iou"] is None and by["symmetric", 10]["margin_accuracy"] is None
    assert "margin_mean_iou" not in by["pixel-gbm", 5]
    assert all("margin_mean_iou" not in e for e in summary)  # the input is not changed


def test_figure_from_rows(budget, tmp_path):
    title = budget.figure_title("wall_clock", 240.0, None, 3)
    assert "equal wall clock" in title and "240 s" in title and "3 seeds" in title
    assert "equal steps: 2000" in budget.figure_title("steps", None, 2000, 3)
    assert "over 1-3 seeds per point" in budget.figure_title("wall_clock", 240.0, None, (1, 3))
    assert budget.figure_title("wall_clock", 240.0, None, (3, 3)) == title
    fig = budget.figure(_rows(), all_locations=ALL, title=title, methods=["supervised", "symmetric", "pixel-gbm"])
    axes = fig.get_axes()
    assert len(axes) == 4  # 2 cubes x (accuracy, mean IoU)
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["5", "10", "all (40)"]
    assert [t.get_text() for t in axes[3].get_xticklabels()] == ["5", "10", "all (25)"]
    assert "mean IoU" in axes[1].get_ylabel() and "accuracy" in axes[0].get_ylabel()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["symmetric", "supervised", "pixel-gbm"]
    styles = {c.get_label(): c.lines[0].get_linestyle() for c in axes[0].containers}  # errorbar containers
    assert styles == {"symmetric": "-", "supervised": "-", "pixel-gbm": "--"}
    assert fig._suptitle.get_text() == title
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_plot_only_redraws_from_the_json(budget, tmp_path):
    rows = _rows()
    report = {"title": "t", "methods": ["symmetric", "supervised", "pixel-gbm"], "runs": rows,
              "cubes": [{"cube": c, "label": budget.cube_label(c), "all_locations": n} for c, n in ALL.items()],
              "summary": budget.add_margins(budget.summarise(rows, ALL))}
    (tmp_path / "b.json").write_text(json.dumps(report))
    assert budget.main(["--plot-only", "--json", str(tmp_path / "b.json"), "--png", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 10_000


def test_collect_only_writes_the_plan_and_trains_nothing(budget, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("--collect-only must not train")

    monkeypatch.setattr(budget, "run_pool", no_training)
    out, js, png = tmp_path / "runs", tmp_path / "b.json", tmp_path / "b.png"
    argv = ["--collect-only", "--cubes", "synthetic:tiny", "--methods", "supervised", "pixel-gbm", "--labels", "2",
            "--seeds", "0", "1", "--out", str(out), "--json", str(js), "--png", str(png), "--patch-size", "32",
            "--block", "64"]
    assert budget.main(argv) == 0
    report = json.loads(js.read_text())
    assert report["missing"] == 4 and report["runs"] == [] and not report["complete"]
    assert not png.exists() and not out.exists()  # nothing to draw, no run folder made


def test_arguments(budget):
    _, args = budget.parse_args([])
    assert args.budget == 240.0 and args.steps is None and args.jobs == 2
    assert args.labels == [5, 10, 20, 50, 0] and args.seeds == [0, 1, 2]
    assert args.methods == ["symmetric", "elbo", "supervised", "mixmatch", "pixel-gbm"]
    assert args.cubes == ["synthetic:small", "s2-cloud-shadow-512"]
    assert (args.json.name, args.png.name) == ("budget.json", "budget.png")
    _, args = budget.parse_args(["--steps", "2000"])
    assert args.budget is None and args.steps == 2000
    assert (args.json.name, args.png.name) == ("budget_steps.json", "budget_steps.png")
    _, args = budget.parse_args(["--steps", "2000", "--budget", "600"])  # a cap
    assert (args.budget, args.steps) == (600.0, 2000)
    with pytest.raises(SystemExit):
        budget.parse_args(["--labels", "5", "5"])


def test_an_unfinished_run_stored_with_its_absolute_cube_path_is_the_same_run(budget, tmp_path, monkeypatch):
    """compare.py's run folders store the cube path absolute; the study's plan may name it relatively."""
    monkeypatch.chdir(tmp_path)
    wanted = {"method": "supervised", "data": "runs/cubes/x.zarr", "labels": 10, "seed": 0}
    folder = tmp_path / "run"
    folder.mkdir()
    run = budget.Run(cube="x", method="supervised", labels=10, seed=0, folder=folder, config=wanted)
    (folder / "config.json").write_text(json.dumps({**wanted, "data": str(tmp_path / "runs/cubes/x.zarr")}))
    assert budget.state(run, "compare_row.json") == ("todo", None)
    (folder / "config.json").write_text(json.dumps({**wanted, "labels": 20}))
    assert budget.state(run, "compare_row.json") == ("conflict", None)


def test_a_row_written_before_a_config_field_existed_is_still_done(budget, tmp_path):
    """A finished run's row keeps the config of its time; a field added since (at its default) changes nothing."""
    wanted = {"method": "supervised", "data": "synthetic:tiny", "labels": 10, "seed": 0, "precision": "fp32"}
    folder = tmp_path / "run"
    folder.mkdir()
    old = {k: v for k, v in wanted.items() if k != "precision"}
    (folder / "compare_row.json").write_text(json.dumps({"config": old, "accuracy": 0.5}))
    run = budget.Run(cube="x", method="supervised", labels=10, seed=0, folder=folder, config=wanted)
    assert budget.state(run, "compare_row.json")[0] == "done"
    assert budget.state(budget.Run("x", "supervised", 10, 0, folder, {**wanted, "precision": "bf16"}),
                        "compare_row.json")[0] == "conflict"


def test_merged_rows_are_the_other_methods_at_this_plans_budgets_marked_with_their_source(budget):
    earlier = {"runs": _rows()}
    plan = {("synthetic:small", 5), ("synthetic:small", 40), ("s2-cloud-shadow-512", 10)}
    rows = budget.merged_rows(earlier, "old.json", plan, {"supervised", "pixel-gbm"})
    want = [r for r in _rows() if r["method"] in ("supervised", "pixel-gbm") and (r["cube"], r["labels"]) in plan]
    assert len(want) == 3 * 2 * 3 and rows == [{**r, "source": "old.json"} for r in want]
    assert budget.merged_rows(earlier, "old.json", plan, set()) == []


def test_collect_only_merges_an_earlier_studys_baselines(budget, tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "run_pool", lambda *a, **k: pytest.fail("--collect-only must not train"))
    earlier = [_row("synthetic:tiny", m, n, seed, 0.6 + 0.01 * seed, 0.4) for m in ("supervised", "symmetric")
               for n in (2, 3) for seed in (0, 1)]
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"methods": ["symmetric", "supervised"], "runs": earlier, "settings": {"x": 1},
                               "budget_s": 240.0}))
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["--collect-only", "--cubes", "synthetic:tiny", "--methods", "symmetric", "--labels", "2", "--seeds", "0",
            "--out", str(tmp_path / "runs"), "--json", str(js), "--png", str(png), "--patch-size", "32",
            "--block", "64", "--merge", str(old)]
    assert budget.main(argv) == 0
    report = json.loads(js.read_text())
    # the symmetric rows are this study's (none finished); only the supervised rows at N = 2 join, with their source
    assert [(r["method"], r["labels"], r["seed"], r["source"]) for r in report["runs"]] == [
        ("supervised", 2, 0, str(old)), ("supervised", 2, 1, str(old))]
    assert report["missing"] == 1 and report["methods"] == ["symmetric", "supervised"]
    assert report["merged"] == [{"json": str(old), "methods": ["supervised"], "rows": 2, "settings": {"x": 1},
                                 "budget_s": 240.0, "steps": None}]
    (entry,) = report["summary"]
    assert entry["method"] == "supervised" and entry["accuracy"] == pytest.approx(0.605)
    assert "supervised from old.json" in report["title"] and png.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--merge-methods", "supervised"], "give the studies"),
    (["--merge", "{old}", "--merge-methods", "symmetric", "--methods", "symmetric"], "also run here"),
    (["--merge", "{missing}"], "does not exist"),
])
def test_merge_arguments_are_checked(budget, tmp_path, capsys, argv, message):
    old = tmp_path / "old.json"
    old.write_text("{}")
    argv = [a.format(old=old, missing=tmp_path / "none.json") for a in argv]
    with pytest.raises(SystemExit):
        budget.parse_args(argv)
    assert message in capsys.readouterr().err
