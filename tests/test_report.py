"""`hvaeseg report RUN`: a run's training curves as a PNG, and the text summary."""

from __future__ import annotations

import json
import math

import pytest

from hvaeseg.cli import main
from hvaeseg.report import COLLAPSE_THRESHOLD, PANEL_TITLES, plot_history, summarize_history, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = ("s", "l", "z1", "z2")
CONFIG = {"method": "symmetric", "data": "synthetic:tiny", "labels": 2}


def hvae_history(steps=(10, 20, 30), active=None, empirical_s=False) -> dict:
    """A history as the symmetric method writes it; ``active`` overrides the active share of some layers."""
    active = active or {}
    losses = [{"step": s, "decoder": 1.6e5 / (1 + s), "encoder": 6e3 / (1 + s),
               "grad_norm_decoder": 1e5, "grad_norm_encoder": 3e3} for s in range(0, steps[-1], 5)]
    validation = []
    for i, step in enumerate(steps):
        layers = {name: {"kl": 10.0 ** (k - 1) * (1 + i), "kl_per_dim": 0.01, "active": active.get(name, 0.5)}
                  for k, name in enumerate(LAYERS)}
        if empirical_s:
            layers["s"] = {"entropy": 500.0, "entropy_per_dim": 0.5}
        validation.append({
            "step": step, "accuracy": 0.3 - 0.05 * i, "mean_iou": 0.2 - 0.04 * i,
            "diagnostics": {
                "sigma": [0.3 + 0.01 * b for b in range(10)],
                "layers": layers,
                "terms": {"labelled_p": -3e4, "unlabelled_p": -2e4, "supervised_q": -500.0, "sleep_q": -2e3},
                "grad_norms": {"labelled_p": {"decoder": 2e4, "encoder": 0.0},
                               "supervised_q": {"decoder": 0.0, "encoder": 1e3},
                               "sleep_q": {"decoder": 50.0, "encoder": 1.3e3}},
                "train_accuracy": 0.7 + 0.1 * i,
            },
        })
    return {"losses": losses, "validation": validation, "best_step": steps[0], "best_score": 0.2,
            "train_seconds": 12.0}


def supervised_history() -> dict:
    return {"losses": [{"step": s, "ce": 2.0 / (1 + s / 10)} for s in range(0, 40, 10)],
            "validation": [{"step": s, "accuracy": 0.2 + s / 100, "mean_iou": 0.1 + s / 200} for s in (10, 20, 30, 40)],
            "best_step": 40, "best_score": 0.3, "train_seconds": 3.0}


def titles(fig) -> set[str]:
    return {ax.get_title() for ax in fig.axes if ax.get_title()}


def axes_titled(fig, title):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


# --------------------------------------------------------------------------------------------- the figure


def test_hvae_figure_has_every_panel():
    fig = plot_history(hvae_history(), CONFIG)
    want = {PANEL_TITLES[k] for k in ("losses", "validation_train", "kl", "active", "sigma", "terms", "grad_norms")}
    assert titles(fig) == want
    kl = axes_titled(fig, PANEL_TITLES["kl"])
    assert len(kl.get_lines()) == len(LAYERS) and kl.get_yscale() == "log"
    assert [line.get_label() for line in kl.get_lines()] == list(LAYERS)
    act = axes_titled(fig, PANEL_TITLES["active"])
    assert len(act.get_lines()) == len(LAYERS) + 1  # and the collapse threshold
    assert len(axes_titled(fig, PANEL_TITLES["sigma"]).get_lines()) == 10
    # train-batch accuracy beside the validation curves, and the best step marked
    val = axes_titled(fig, PANEL_TITLES["validation_train"])
    labels = [line.get_label() for line in val.get_lines()]
    assert {"validation accuracy", "validation mean IoU", "train-batch accuracy"} <= set(labels)
    (best,) = [line for line in val.get_lines() if line.get_label().startswith("best step 10")]
    assert list(best.get_xdata()) == [10, 10]
    # the losses span decades: log scale, one line per loss (gradient norms are not losses)
    losses = axes_titled(fig, PANEL_TITLES["losses"])
    assert losses.get_yscale() == "log"
    assert sorted(line.get_label() for line in losses.get_lines()) == ["decoder", "encoder"]
    # gradient norms: term -> player pairs that are ever above zero, plus the per-step update norms
    grads = axes_titled(fig, PANEL_TITLES["grad_norms"])
    assert grads.get_yscale() == "log"
    assert len(grads.get_lines()) == 4 + 2
    # all-negative terms spanning decades are drawn as -value on a log scale
    terms = axes_titled(fig, PANEL_TITLES["terms"])
    assert terms.get_yscale() == "log" and all(line.get_label().startswith("−") for line in terms.get_lines())
    title = fig._suptitle.get_text()
    assert "symmetric" in title and "synthetic:tiny" in title and "0.200" in title and "step 10" in title


def test_collapsed_layer_is_labelled_in_the_figure():
    fig = plot_history(hvae_history(active={"z1": 0.0}), CONFIG)
    labels = [line.get_label() for line in axes_titled(fig, PANEL_TITLES["active"]).get_lines()]
    assert "z1 (collapsed)" in labels and "z2" in labels


def test_supervised_figure_has_no_hvae_panels():
    fig = plot_history(supervised_history(), {"method": "supervised", "data": "cube.zarr", "labels": 10})
    assert titles(fig) == {PANEL_TITLES["losses"], PANEL_TITLES["validation"]}
    assert axes_titled(fig, PANEL_TITLES["losses"]).get_yscale() == "linear"  # less than a decade or two
    assert "supervised" in fig._suptitle.get_text()


def test_fitted_history_draws_its_curve():
    # a boosted model: one validation entry per round, the kept round with accuracy and mean IoU; no losses
    validation = [{"step": i + 1, "multi_logloss": 1 / math.sqrt(i + 1)} for i in range(20)]
    validation[11].update(accuracy=0.7, mean_iou=0.4)
    fig = plot_history({"losses": [], "validation": validation, "best_step": 12, "best_score": 0.4},
                       {"method": "pixel-gbm"})
    assert titles(fig) == {PANEL_TITLES["validation"], "validation multi_logloss"}
    assert fig.axes[0].get_xlabel() == "boosting round"
    assert "round 12" in summarize_history({"validation": validation, "best_step": 12, "best_score": 0.4})


@pytest.mark.parametrize("history", [
    hvae_history(steps=(10,)),                                            # a single validation point
    {"losses": [{"step": 0, "ce": 1.0}], "validation": [{"step": 1, "accuracy": 0.5, "mean_iou": 0.3}],
     "best_step": 1, "best_score": 0.3},
    {"losses": [], "validation": [], "best_step": None, "best_score": float("-inf"), "train_seconds": 0.0},
    {},                                                                   # nothing at all
    {"losses": [{"step": 0, "ce": None}, {"step": 1, "ce": float("nan")}, {"ce": 0.5}, "junk"],
     "validation": [{"step": 5, "accuracy": None, "mean_iou": 0.1,
                     "diagnostics": {"sigma": None, "layers": {"z1": {"kl": None, "active": None}, "z2": 3},
                                     "terms": None, "grad_norms": {"t": None}, "train_accuracy": None}}],
     "best_step": None, "best_score": None},
    hvae_history(empirical_s=True),
])
def test_odd_histories_draw(history, tmp_path):
    fig = plot_history(history, None)
    fig.savefig(tmp_path / "x.png")
    assert is_png(tmp_path / "x.png")
    summarize_history(history, None)


def test_empirical_prior_entropy_is_drawn_as_its_own_line():
    fig = plot_history(hvae_history(empirical_s=True), CONFIG)
    kl = axes_titled(fig, PANEL_TITLES["kl"])
    assert [line.get_label() for line in kl.get_lines()] == ["s (entropy of q)", "l", "z1", "z2"]
    # s reports no active share under the empirical prior
    assert len(axes_titled(fig, PANEL_TITLES["active"]).get_lines()) == 3 + 1


def test_no_pyplot_state_leaks():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_history(hvae_history(), CONFIG)
    assert plt.get_fignums() == before


# --------------------------------------------------------------------------------------------- summary


def test_summary_names_a_collapsed_layer():
    text = summarize_history(hvae_history(active={"z1": 0.0, "z2": 0.2}), CONFIG)
    warnings = [line for line in text.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "z1" in warnings[0] and "collapsed" in warnings[0]
    assert "best validation mean IoU 0.200 at step 10" in text
    # the last train-batch accuracy against the last validation accuracy
    assert "train-batch accuracy 0.900 vs validation accuracy 0.200 at step 30" in text


def test_summary_without_collapse_has_no_warning():
    text = summarize_history(hvae_history(active={k: 1.0 for k in LAYERS}), CONFIG)
    assert "collapsed" not in text and "warning" not in text
    for name in LAYERS:
        assert any(line.strip().startswith(name + " ") for line in text.splitlines())
    # the threshold is strict: a share at it is not collapsed
    assert "collapsed" not in summarize_history(hvae_history(active={"z1": COLLAPSE_THRESHOLD}), CONFIG)


def test_summary_names_the_prediction_rule_chosen_with_the_best_checkpoint():
    """An HVAE run with ``decoder_betas``: the best round's rule is named; other rounds' rules are not."""
    history = supervised_history()
    for entry, beta in zip(history["validation"], (0.0, 1.0, 0.5, 0.25)):
        entry["prediction"] = beta
    text = summarize_history(history, {"method": "symmetric"})
    assert "best validation mean IoU 0.300 at step 40 with decoder beta 0.25" in text
    assert "decoder beta" not in summarize_history(supervised_history(), {"method": "supervised"})


def test_summary_of_a_supervised_run():
    text = summarize_history(supervised_history(), {"method": "supervised"})
    assert "best validation mean IoU 0.300 at step 40" in text
    assert "latent" not in text and "train-batch" not in text


# --------------------------------------------------------------------------------------------- the command


def fake_run(path, history=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    if history is not None:
        (path / "history.json").write_text(json.dumps(history))
    return path


def test_report_command_on_a_history(tmp_path, capsys):
    run = fake_run(tmp_path / "run", hvae_history(active={"z2": 0.01}))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert is_png(run / "report.png")
    assert str(run / "report.png") in out and "layer z2 has collapsed" in out
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    other = tmp_path / "elsewhere.png"
    assert main(["report", str(run), "-o", str(other)]) == 0
    assert is_png(other) and str(other) in capsys.readouterr().out


def test_report_command_errors(tmp_path, capsys):
    not_run = tmp_path / "not-a-run"
    not_run.mkdir()
    assert main(["report", str(not_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run folder" in err and "config.json" in err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no run folder" in capsys.readouterr().err
    untrained = fake_run(tmp_path / "untrained")
    assert main(["report", str(untrained)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no history.json" in err and "train first" in err
    assert not (untrained / "report.png").exists()
    bad = fake_run(tmp_path / "bad")
    (bad / "history.json").write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    ok = fake_run(tmp_path / "ok", supervised_history())
    assert main(["report", str(ok), "-o", str(tmp_path / "no" / "such" / "dir.png")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_report_of_a_real_symmetric_run(tmp_path, capsys):
    run = tmp_path / "sym"
    assert main(["train", "--method", "symmetric", "--data", "synthetic:tiny", "--labels", "2", "--steps", "20",
                 "--patch-size", "32", "--block", "64", "--unlabelled-patches", "32", "--batch-size", "4",
                 "--val-every", "10", "--checkpoint-every", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    path, summary = write_report(run)
    assert path == run / "report.png" and is_png(path)
    history = json.loads((run / "history.json").read_text())
    fig = plot_history(history, json.loads((run / "config.json").read_text()))
    want = {PANEL_TITLES[k] for k in ("losses", "validation_train", "kl", "active", "terms", "grad_norms")}
    assert want <= titles(fig)
    layers = history["validation"][-1]["diagnostics"]["layers"]
    assert len(axes_titled(fig, PANEL_TITLES["kl"]).get_lines()) == len(layers)
    assert "best validation mean IoU" in summary and "train-batch accuracy" in summary
    for name in layers:
        assert any(line.strip().startswith(name + " ") for line in summary.splitlines())
