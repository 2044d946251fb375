"""A run's training curves as one figure, and a short text summary (what ``hvaeseg report RUN`` writes).

A run folder (``hvaeseg train ... --out RUN``) holds ``history.json`` (see :class:`hvaeseg.train.History`:
losses per logged step, validation entries, best step and score) and ``config.json``. :func:`plot_history`
draws, for whichever of them the history holds:

(a) the training losses per step (log scale of |loss| when they span decades);
(b) validation accuracy and mean IoU with the train-batch accuracy on the same axes and the best step marked,
    so that an overfitting encoder (train accuracy up, validation down) shows at a glance;
(c) KL per latent layer (log scale) and (d) the share of active units per layer, so that a collapsed layer
    shows;
(e) the image likelihood scale sigma per band; (f) the objective terms; (g) gradient norms per term and
    player, with the per-step update norms (``grad_norm_*`` of the losses);
and any other numeric validation curve (e.g. ``multi_logloss`` of a boosted model) in a panel of its own.

This module imports neither torch nor pyplot: figures are :class:`matplotlib.figure.Figure` objects on an Agg
canvas, and nothing is left in pyplot's global state.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "COLLAPSE_THRESHOLD",
    "PANEL_TITLES",
    "collapsed_layers",
    "load_run_files",
    "plot_history",
    "summarize_history",
    "write_report",
]

#: a latent layer whose share of active units is below this has collapsed onto its prior
COLLAPSE_THRESHOLD = 0.05

#: the title of each panel, by key (a panel is drawn only when its data exist; ``validation`` becomes
#: ``validation_train`` when the train-batch accuracy is there too, ``other`` names its curve when it has one)
PANEL_TITLES = {
    "losses": "training losses",
    "validation": "validation accuracy and mean IoU",
    "validation_train": "validation vs train-batch accuracy",
    "other": "other validation curves",
    "kl": "KL per latent layer (nats / image)",
    "active": "share of active units per layer",
    "sigma": "image scale σ per band",
    "terms": "objective terms (mean per image)",
    "grad_norms": "gradient norms per term and player",
}

#: validation keys drawn in panel (b) or not curves at all
_VALIDATION_KEYS = {"step", "accuracy", "mean_iou", "diagnostics"}
#: a set of curves whose largest |value| exceeds the smallest non-zero one by this factor gets a log scale
_DECADES = 30.0

Series = dict[str, tuple[list[float], list[float]]]


# --------------------------------------------------------------------------------------------- reading


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, NaN, infinities, bools, strings, containers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dicts(items: Any) -> list[dict[str, Any]]:
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


def _step(entry: Mapping[str, Any], index: int) -> float:
    step = _num(entry.get("step"))
    return float(index) if step is None else step


def _add(series: Series, name: str, x: float, y: Any) -> None:
    value = _num(y)
    if value is not None:
        xs, ys = series.setdefault(name, ([], []))
        xs.append(x)
        ys.append(value)


def _diagnostics(history: Mapping[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """``(step, diagnostics)`` of every validation entry that has diagnostics."""
    out = []
    for i, entry in enumerate(_dicts(history.get("validation"))):
        diag = entry.get("diagnostics")
        if isinstance(diag, dict) and diag:
            out.append((_step(entry, i), diag))
    return out


def _best(history: Mapping[str, Any]) -> tuple[float | None, float | None]:
    return _num(history.get("best_step")), _num(history.get("best_score"))


def best_prediction(history: Mapping[str, Any]) -> float | None:
    """The prediction rule validation chose with the best checkpoint (HVAE ``decoder_betas``): the ``prediction`` of
    the validation round at ``best_step`` in ``history`` (a ``history.json`` mapping); None for a method with one
    rule."""
    best = _num(history.get("best_step"))
    for i, entry in enumerate(_dicts(history.get("validation"))):
        beta = _num(entry.get("prediction"))
        if _step(entry, i) == best and beta is not None:
            return beta
    return None


def _best_rule(history: Mapping[str, Any]) -> str:
    """`` with decoder beta B`` when validation chose a prediction rule with the best checkpoint, else empty."""
    beta = best_prediction(history)
    return "" if beta is None else f" with decoder beta {beta:g}"


def _loss_series(history: Mapping[str, Any]) -> tuple[Series, Series]:
    """The losses per step, and the per-step update gradient norms (``grad_norm_<player>``) by player."""
    losses: Series = {}
    norms: Series = {}
    for i, entry in enumerate(_dicts(history.get("losses"))):
        x = _step(entry, i)
        for key, value in entry.items():
            if key == "step":
                continue
            if key.startswith("grad_norm_"):
                _add(norms, key[len("grad_norm_"):], x, value)
            else:
                _add(losses, key, x, value)
    return losses, norms


def _validation_series(history: Mapping[str, Any]) -> tuple[Series, Series]:
    """Panel (b): validation accuracy, mean IoU, train-batch accuracy; and every other numeric curve."""
    main: Series = {}
    other: Series = {}
    for i, entry in enumerate(_dicts(history.get("validation"))):
        x = _step(entry, i)
        _add(main, "validation accuracy", x, entry.get("accuracy"))
        _add(main, "validation mean IoU", x, entry.get("mean_iou"))
        diag = entry.get("diagnostics")
        if isinstance(diag, dict):
            _add(main, "train-batch accuracy", x, diag.get("train_accuracy"))
        for key, value in entry.items():
            if key not in _VALIDATION_KEYS:
                _add(other, key, x, value)
    return main, other


def _layer_series(history: Mapping[str, Any]) -> tuple[Series, Series, set[str]]:
    """KL (or, for ``s`` under the empirical prior, entropy) and active share per latent site."""
    kl: Series = {}
    active: Series = {}
    entropy: set[str] = set()
    for x, diag in _diagnostics(history):
        layers = diag.get("layers")
        if not isinstance(layers, dict):
            continue
        for site, stats in layers.items():
            if not isinstance(stats, dict):
                continue
            if stats.get("kl") is not None:
                _add(kl, site, x, stats.get("kl"))
            elif stats.get("entropy") is not None:
                _add(kl, site, x, stats.get("entropy"))
                entropy.add(site)
            _add(active, site, x, stats.get("active"))
    return kl, active, entropy


def _sigma_series(history: Mapping[str, Any]) -> Series:
    series: Series = {}
    for x, diag in _diagnostics(history):
        sigma = diag.get("sigma")
        if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            sigma = [sigma]
        if isinstance(sigma, list):
            for b, value in enumerate(sigma):
                _add(series, f"band {b}", x, value)
    return series


def _term_series(history: Mapping[str, Any]) -> Series:
    series: Series = {}
    for x, diag in _diagnostics(history):
        terms = diag.get("terms")
        if isinstance(terms, dict):
            for name, value in terms.items():
                _add(series, str(name), x, value)
    return series


def _grad_series(history: Mapping[str, Any]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """``(term, player) -> curve``; pairs that are never above 0 (a term that does not reach a player's
    parameters) are left out."""
    series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for x, diag in _diagnostics(history):
        norms = diag.get("grad_norms")
        if not isinstance(norms, dict):
            continue
        for term, players in norms.items():
            if not isinstance(players, dict):
                continue
            for player, value in players.items():
                v = _num(value)
                if v is not None:
                    xs, ys = series.setdefault((str(term), str(player)), ([], []))
                    xs.append(x)
                    ys.append(v)
    return {k: v for k, v in series.items() if any(y > 0 for y in v[1])}


# --------------------------------------------------------------------------------------------- drawing


def _is_fitted(history: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    """A boosted model's history: its validation steps are boosting rounds, and it logs no losses."""
    if isinstance(config, Mapping) and config.get("method") == "pixel-gbm":
        return True
    return not _dicts(history.get("losses")) and any("multi_logloss" in v for v in _dicts(history.get("validation")))


def _style(n_points: int) -> dict[str, Any]:
    # sparse curves get markers (a single point has no line to draw)
    return {"marker": "o", "markersize": 3.5} if n_points <= 30 else {}


def _lines(ax, series: Series, quantity: str, *, styles: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """One line per curve; a log scale (of |value| when all values are negative, symlog when signs mix)
    when the curves span decades; ``quantity`` names the y axis."""
    values = [v for _, ys in series.values() for v in ys]
    nonzero = [abs(v) for v in values if v != 0]
    spans = bool(nonzero) and max(nonzero) / min(nonzero) >= _DECADES
    sign, label = 1.0, quantity
    if spans and all(v > 0 for v in values):
        ax.set_yscale("log")
    elif spans and all(v < 0 for v in values):
        sign, label = -1.0, f"−{quantity} (log scale)"
        ax.set_yscale("log")
    elif spans:
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(min(nonzero))))
    for name, (xs, ys) in series.items():
        shown = f"−{name}" if sign < 0 else name
        ax.plot(xs, [sign * y for y in ys], label=shown, **{**_style(len(xs)), **(styles or {}).get(name, {})})
    ax.set_ylabel(label)


def _legend(ax, n: int) -> None:
    # beside the axes, so that a legend never hides a curve (constrained layout makes room for it)
    if n:
        ax.legend(fontsize=7.5, ncol=2 if n > 14 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, frameon=False)


def _panel_other(ax, other: Series) -> None:
    _lines(ax, other, "value")
    _legend(ax, len(other))


def _panel_losses(ax, losses: Series) -> None:
    _lines(ax, losses, "loss")
    _legend(ax, len(losses))


def _panel_validation(ax, series: Series, best_step: float | None, best_score: float | None, unit: str) -> None:
    styles = {
        "validation accuracy": {"color": "tab:blue"},
        "validation mean IoU": {"color": "tab:green"},
        "train-batch accuracy": {"color": "tab:orange", "linestyle": "--"},
    }
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, **{**_style(len(xs)), **styles.get(name, {})})
    if best_step is not None:
        what = f"best {unit} {best_step:g}" + (f" (mean IoU {best_score:.3f})" if best_score is not None else "")
        ax.axvline(best_step, color="0.45", linestyle=":", linewidth=1.2, label=what)
    values = [v for _, ys in series.values() for v in ys]
    if values and 0 <= min(values) and max(values) <= 1:
        ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy / IoU")
    _legend(ax, len(series) + (best_step is not None))


def _collapsed_tag(active: Series) -> dict[str, str]:
    """`` (collapsed)`` for the layers whose last active share is below the threshold."""
    return {name: " (collapsed)" for name, (_, ys) in active.items() if ys and ys[-1] < COLLAPSE_THRESHOLD}


def _panel_kl(ax, kl: Series, entropy: set[str], active: Series) -> None:
    tags = _collapsed_tag(active)
    for name, (xs, ys) in kl.items():
        label = f"{name} (entropy of q)" if name in entropy else name + tags.get(name, "")
        ax.plot(xs, ys, label=label, linestyle="--" if name in entropy else "-", **_style(len(xs)))
    if any(y > 0 for _, ys in kl.values() for y in ys):
        ax.set_yscale("log", nonpositive="mask")
    ax.set_ylabel("nats per image")
    _legend(ax, len(kl))


def _panel_active(ax, active: Series) -> None:
    tags = _collapsed_tag(active)
    for name, (xs, ys) in active.items():
        ax.plot(xs, ys, label=name + tags.get(name, ""), **_style(len(xs)))
    ax.axhline(COLLAPSE_THRESHOLD, color="tab:red", linestyle=":", linewidth=1.0,
               label=f"collapsed below {COLLAPSE_THRESHOLD:g}")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("share of units with KL > 0.01 nats")
    _legend(ax, len(active) + 1)


def _panel_sigma(ax, sigma: Series) -> None:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = len(sigma)
    for i, (name, (xs, ys)) in enumerate(sigma.items()):
        ax.plot(xs, ys, label=name, color=cmap(i / max(n - 1, 1)), **_style(len(xs)))
    ax.set_ylabel("σ (normalised reflectance)")
    if n <= 28:
        _legend(ax, n)


def _panel_terms(ax, terms: Series) -> None:
    _lines(ax, terms, "value")
    _legend(ax, len(terms))


def _panel_grads(ax, grads, step_norms: Series) -> None:
    from matplotlib import colormaps

    colors = colormaps["tab10"]
    terms = list(dict.fromkeys(t for t, _ in grads))
    players = list(dict.fromkeys(p for _, p in grads))
    dashes = ["-", "--", ":", "-."]
    for (term, player), (xs, ys) in grads.items():
        ax.plot(xs, ys, label=f"{term} → {player}", color=colors(terms.index(term) % 10),
                linestyle=dashes[players.index(player) % len(dashes)], **_style(len(xs)))
    greys = ["0.15", "0.55", "0.35", "0.7"]
    for i, (player, (xs, ys)) in enumerate(step_norms.items()):
        ax.plot(xs, ys, label=f"{player}: update, all terms", color=greys[i % len(greys)], linewidth=1.0, alpha=0.8,
                **({"marker": "."} if len(xs) <= 1 else {}))
    if any(y > 0 for _, ys in [*grads.values(), *step_norms.values()] for y in ys):
        ax.set_yscale("log", nonpositive="mask")
    ax.set_ylabel("‖gradient‖")
    _legend(ax, len(grads) + len(step_norms))


def _title(history: Mapping[str, Any], config: Mapping[str, Any] | None, fitted: bool) -> str:
    config = config if isinstance(config, Mapping) else {}
    parts = []
    if config.get("method") is not None:
        parts.append(str(config["method"]))
    if config.get("data") is not None:
        parts.append(f"on {config['data']}")
    if config.get("labels") is not None:
        parts.append(f"{config['labels']} labelled locations")
    head = ", ".join([" ".join(parts[:2])] + parts[2:]) if parts else "training report"
    best_step, best_score = _best(history)
    unit = "round" if fitted else "step"
    if best_score is not None and best_step is not None:
        tail = f"best validation mean IoU {best_score:.3f} at {unit} {best_step:g}{_best_rule(history)}"
    elif best_step is not None:
        tail = f"best {unit} {best_step:g}"
    else:
        tail = "no validation score yet"
    return f"{head} — {tail}"


def plot_history(history: dict, config: dict | None = None):
    """A figure of a run's training curves (see the module docstring for the panels).

    :param history: the content of a run's ``history.json`` (missing keys, None values, a single validation
        point and runs without diagnostics are fine).
    :param config: the content of its ``config.json`` (method, data, labels for the title), or None.
    :returns: a :class:`matplotlib.figure.Figure` on an Agg canvas (``fig.savefig(path)``); each drawn panel
        has its title from :data:`PANEL_TITLES` (a single ``other`` curve: ``"validation <name>"``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = history if isinstance(history, Mapping) else {}
    fitted = _is_fitted(history, config)
    losses, step_norms = _loss_series(history)
    validation, other = _validation_series(history)
    kl, active, entropy = _layer_series(history)
    sigma = _sigma_series(history)
    terms = _term_series(history)
    grads = _grad_series(history)
    best_step, best_score = _best(history)

    unit = "round" if fitted else "step"
    panels: list[tuple[str, Any]] = []
    if losses:
        panels.append((PANEL_TITLES["losses"], lambda ax: _panel_losses(ax, losses)))
    if validation:
        key = "validation_train" if "train-batch accuracy" in validation else "validation"
        panels.append((PANEL_TITLES[key], lambda ax: _panel_validation(ax, validation, best_step, best_score, unit)))
    if other:
        title = f"validation {next(iter(other))}" if len(other) == 1 else PANEL_TITLES["other"]
        panels.append((title, lambda ax: _panel_other(ax, other)))
    if kl:
        panels.append((PANEL_TITLES["kl"], lambda ax: _panel_kl(ax, kl, entropy, active)))
    if active:
        panels.append((PANEL_TITLES["active"], lambda ax: _panel_active(ax, active)))
    if sigma:
        panels.append((PANEL_TITLES["sigma"], lambda ax: _panel_sigma(ax, sigma)))
    if terms:
        panels.append((PANEL_TITLES["terms"], lambda ax: _panel_terms(ax, terms)))
    if grads or step_norms:
        panels.append((PANEL_TITLES["grad_norms"], lambda ax: _panel_grads(ax, grads, step_norms)))

    # one step range for every panel, so that they line up
    xs = [x for group in (losses, step_norms, validation, other, kl, active, sigma, terms, grads)
          for px, _ in group.values() for x in px]
    xs += [best_step] if best_step is not None else []
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 0.0)
    pad = 0.03 * (hi - lo)

    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(8.0 * ncols, 0.6 + 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    xlabel = "boosting round" if fitted else "step"
    for ax, (title, draw) in zip(axes, panels):
        draw(ax)
        ax.set_title(title, fontsize=10.5)
        ax.set_xlabel(xlabel)
        if hi > lo:
            ax.set_xlim(lo - pad, hi + pad)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=8.5)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "nothing recorded yet: no losses and no validation entries",
                     ha="center", va="center", transform=axes[0].transAxes)
    fig.suptitle(_title(history, config, fitted), fontsize=12)
    return fig


# --------------------------------------------------------------------------------------------- summary


def _last_layers(history: Mapping[str, Any]) -> tuple[float | None, dict[str, dict[str, Any]]]:
    for x, diag in reversed(_diagnostics(history)):
        layers = diag.get("layers")
        if isinstance(layers, dict) and layers:
            return x, {k: v for k, v in layers.items() if isinstance(v, dict)}
    return None, {}


def collapsed_layers(history: Mapping[str, Any], threshold: float = COLLAPSE_THRESHOLD) -> dict[str, float]:
    """``site -> active share`` of the latent layers whose share of active units, at the last validation with
    diagnostics, is below ``threshold``."""
    _, layers = _last_layers(history)
    out = {}
    for site, stats in layers.items():
        share = _num(stats.get("active"))
        if share is not None and share < threshold:
            out[site] = share
    return out


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summarize_history(history: dict, config: dict | None = None) -> str:
    """A few lines: best step and score; for HVAE runs the last KL per layer, a warning for each collapsed
    layer (active share below :data:`COLLAPSE_THRESHOLD`) and the last train-batch vs validation accuracy."""
    history = history if isinstance(history, Mapping) else {}
    config = config if isinstance(config, Mapping) else {}
    fitted = _is_fitted(history, config)
    unit = "round" if fitted else "step"
    lines = []
    what = " ".join(str(config[k]) if k != "data" else f"on {config[k]}"
                    for k in ("method", "data") if config.get(k) is not None)
    seconds = _num(history.get("train_seconds"))
    if what or seconds is not None:
        lines.append(", ".join(p for p in (what, f"trained for {seconds:.0f} s" if seconds is not None else "") if p))
    best_step, best_score = _best(history)
    if best_score is not None:
        lines.append(f"best validation mean IoU {best_score:.3f} at {unit} {_fmt(best_step, 'g')}"
                     f"{_best_rule(history)}")
    else:
        lines.append("no validation score recorded")

    step, layers = _last_layers(history)
    if layers:
        lines.append(f"latent layers at {unit} {step:g} (KL in nats per image, share of active units):")
        width = max(len(str(s)) for s in layers)
        for site, stats in layers.items():
            kl, ent, share = _num(stats.get("kl")), _num(stats.get("entropy")), _num(stats.get("active"))
            value = f"KL {kl:10.3f}" if kl is not None else (f"entropy {ent:.3f}" if ent is not None else "KL n/a")
            act = f"   active {share:6.1%}" if share is not None else ""
            lines.append(f"  {site:<{width}}  {value}{act}")
        for site, share in collapsed_layers(history).items():
            lines.append(f"warning: layer {site} has collapsed: {share:.1%} of its units are active "
                         f"(below {COLLAPSE_THRESHOLD:.0%}); it carries almost no information")

    last_train = last_val = None
    for i, entry in enumerate(_dicts(history.get("validation"))):
        diag = entry.get("diagnostics")
        train = _num(diag.get("train_accuracy")) if isinstance(diag, dict) else None
        val = _num(entry.get("accuracy"))
        if train is not None:
            last_train = (_step(entry, i), train, val)
        if val is not None:
            last_val = (_step(entry, i), val)
    if last_train is not None:
        s, train, val = last_train
        gap = f" (gap {train - val:+.3f})" if val is not None else ""
        lines.append(f"train-batch accuracy {train:.3f} vs validation accuracy {_fmt(val)} at {unit} {s:g}{gap}")
    elif last_val is not None:
        lines.append(f"validation accuracy {last_val[1]:.3f} at {unit} {last_val[0]:g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- run folders


def load_run_files(run: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(history, config)`` of a run folder.

    :raises FileNotFoundError: when ``run`` is not a run folder (no ``config.json``) or has no
        ``history.json`` yet.
    :raises ValueError: when one of them is not a JSON object.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder at {run}")
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json): run `hvaeseg train ... --out {run}`")
    if not (run / "history.json").is_file():
        raise FileNotFoundError(f"{run} has no history.json yet: train first (it is written when training ends)")
    out = []
    for name in ("history.json", "config.json"):
        try:
            obj = json.loads((run / name).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{run / name} is not valid JSON ({err})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{run / name}: expected a JSON object, got {type(obj).__name__}")
        out.append(obj)
    return out[0], out[1]


def write_report(run: str | os.PathLike, out: str | os.PathLike | None = None, *, dpi: int = 110) -> tuple[Path, str]:
    """Draw ``run``'s history to ``out`` (default ``RUN/report.png``), atomically (a temporary sibling, then a
    rename); returns the path written and :func:`summarize_history`'s text."""
    history, config = load_run_files(run)
    path = Path(out) if out is not None else Path(run) / "report.png"
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no folder {path.parent} to write {path.name} into")
    fig = plot_history(history, config)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, summarize_history(history, config)

