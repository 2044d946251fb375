"""The label-budget study: test accuracy and mean IoU against the number N of labelled locations, per method and
cube, with a spread over training seeds; writes JSON and draws the figure.

    python bench/budget.py                                  # equal wall clock: 240 s per run
    python bench/budget.py --steps 2000                     # equal steps: 2000 steps per run, no time budget
    python bench/budget.py --plot-only                      # re-draw bench/results/budget.png from budget.json
    python bench/budget.py --collect-only                   # JSON and figure from the finished runs; no training
    python bench/budget.py --methods symmetric --options 'symmetric={...}' --merge bench/results/budget.json \
        --json J --png P                                    # one method's new setting beside the earlier baselines

Every run is one subprocess ``python bench/compare.py --cubes C --methods M --labels N --seeds S ... --threads 1``
(``OMP_NUM_THREADS=1``), so the protocol is compare.py's: on each cube the same spatial split, labelled subset
and test tiles for every method and seed, the checkpoint chosen on validation, the test split reported once.
``--jobs`` runs go at once (one core each). ``--labels 0`` is *all* labelled training locations of the cube (as
in compare.py); an N above that is the same run as 0 and is run once.

Budget modes:

- equal wall clock (default): ``--budget S`` training seconds per run (240 when neither option is given);
- equal steps: ``--steps N`` optimisation steps per run and no time budget; ``--budget S`` given as well caps
  each run's training time as a safety net, and a run stopped by the cap before N steps is reported (progress
  line and ``short_of_steps`` in its row).

``pixel-gbm`` is fitted once (LightGBM, early stopping on the validation tiles) in either mode: it takes seconds
and is the reference; every method's margin over it (differences of the means over seeds) is in the summary.

Resumable: compare.py writes ``compare_row.json`` into a run folder (``--out``/CUBE/METHOD-NN-seedS/) when the
run has been trained and evaluated; a run whose folder holds that file, written for the same configuration, is
skipped. A run interrupted before that is trained again from the start (compare.py does not resume: a
wall-clock budget cannot be continued fairly). A folder holding a run with other settings is an error: choose
another ``--out``. Each run's output is kept in ``compare.log`` in its folder.

Output JSON (``--json``): ``runs``, one row per run (cube, method, labels, seed, accuracy, mean_iou, iou per
class, steps, train_seconds, fit_seconds for pixel-gbm, labelled_pixels, ...), and ``summary``, one entry per
(cube, method, labels): mean and sample standard deviation over the seeds (``None`` with a single seed) and
``margin_mean_iou`` / ``margin_accuracy`` over ``pixel-gbm`` at the same N. ``--merge JSON`` adds an earlier study's
rows of the methods not run here (``--merge-methods`` chooses them) at this study's cubes and budgets, each marked
with its ``source``; ``merged`` records which rows came from which study with that study's settings. The JSON
is rewritten after every finished run; the figure (``--png``) is drawn at the end, or from the JSON alone with
``--plot-only``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
if str(BENCH) not in sys.path:  # bench/scenes.py and bench/compare.py, beside this script
    sys.path.insert(0, str(BENCH))
from run_settings import add_run_settings, report_failures  # noqa: E402
from scenes import cube as resolve_cube  # noqa: E402  (light: no torch)
from scenes import label as cube_label  # noqa: E402
from scenes import unit as budget_unit  # noqa: E402

#: the methods' order, colours and markers in the figure (others are appended in the order given)
METHODS = ("symmetric", "elbo", "supervised", "mixmatch", "pixel-gbm")
STYLE = {
    "symmetric": ("tab:blue", "o"),
    "elbo": ("tab:orange", "s"),
    "supervised": ("tab:green", "^"),
    "mixmatch": ("tab:red", "D"),
    "pixel-gbm": ("black", "x"),
}
#: the reference every method's margin is measured against
REFERENCE = "pixel-gbm"
DEFAULT_BUDGET_S = 240.0
#: the fields of a compare.py row kept in the study's rows
ROW_KEYS = ("cube", "method", "labels", "seed", "accuracy", "mean_iou", "iou", "steps", "best_step",
            "train_seconds", "fit_seconds", "wall_seconds", "labelled_pixels", "labelled_patches", "prediction")
#: the fields averaged over seeds in the summary (mean and sample sd)
SUMMARY_KEYS = ("accuracy", "mean_iou", "steps", "train_seconds", "fit_seconds")


# --------------------------------------------------------------------------------------------------
# summary and margins (pure)
# --------------------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; sd is None below two values, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _order(methods: list[str]) -> dict[str, int]:
    known = [m for m in METHODS if m in methods]
    return {m: i for i, m in enumerate(known + [m for m in methods if m not in known])}


def summarise(rows: list[dict], all_locations: dict[str, int] | None = None) -> list[dict]:
    """One entry per (cube, method, labels): ``seeds`` (the seeds found), and for each of :data:`SUMMARY_KEYS`
    the mean over seeds and ``KEY_sd``, the sample standard deviation (None with one seed); ``iou``: the mean
    IoU of each class (classes undefined in a run are left out of its mean). ``all`` says whether ``labels`` is
    every training location of the cube (``all_locations``: cube -> that number). Sorted by cube (first seen),
    method (:data:`METHODS` order), labels."""
    all_locations = all_locations or {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cube"], r["method"], int(r["labels"])), []).append(r)
    cubes = list(dict.fromkeys(r["cube"] for r in rows))
    order = _order(list(dict.fromkeys(r["method"] for r in rows)))
    out = []
    for (cube, method, labels), rs in sorted(groups.items(), key=lambda kv: (cubes.index(kv[0][0]),
                                                                              order[kv[0][1]], kv[0][2])):
        entry: dict[str, Any] = {"cube": cube, "method": method, "labels": labels,
                                 "all": all_locations.get(cube) == labels, "seeds": sorted(r["seed"] for r in rs)}
        for k in SUMMARY_KEYS:
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            if vals:
                entry[k], entry[f"{k}_sd"] = _mean_sd(vals)
        classes = list(dict.fromkeys(c for r in rs for c in (r.get("iou") or {})))
        if classes:
            stats = {c: _mean_sd([float(r["iou"][c]) for r in rs if (r.get("iou") or {}).get(c) is not None])
                     for c in classes}
            entry["iou"] = {c: m for c, (m, _) in stats.items()}
            entry["iou_sd"] = {c: s for c, (_, s) in stats.items()}
        out.append(entry)
    return out


def add_margins(summary: list[dict], reference: str = REFERENCE) -> list[dict]:
    """The summary with ``margin_mean_iou`` and ``margin_accuracy`` added to each entry of a method other than
    ``reference``: its mean minus the reference's mean at the same (cube, labels); None where the reference
    has no entry (or no value) there. The entries are copied, not changed."""
    ref = {(e["cube"], e["labels"]): e for e in summary if e["method"] == reference}
    out = []
    for e in summary:
        e = dict(e)
        if e["method"] != reference:
            r = ref.get((e["cube"], e["labels"]), {})
            for k in ("mean_iou", "accuracy"):
                e[f"margin_{k}"] = e[k] - r[k] if e.get(k) is not None and r.get(k) is not None else None
        out.append(e)
    return out


def merged_rows(report: dict, source: str, plan: set[tuple[str, int]], methods: set[str]) -> list[dict]:
    """The rows of an earlier study's JSON ``report`` that join this study: those of ``methods`` at a (cube,
    labels) of this ``plan``, each marked with its ``source`` (the JSON's path). A merged row keeps its own
    settings, recorded in the source JSON; the study that merges it records which rows came from where."""
    return [{**r, "source": source} for r in report.get("runs", [])
            if r["method"] in methods and (r["cube"], int(r["labels"])) in plan]


# --------------------------------------------------------------------------------------------------
# figure (matplotlib on an Agg canvas; no pyplot)
# --------------------------------------------------------------------------------------------------


def figure_title(mode: str, budget_s: float | None = None, steps: int | None = None,
                 seeds: int | tuple[int, int] | None = None) -> str:
    """The figure's title: the budget mode and the number of seeds (``(fewest, most)`` per point when the points
    differ, e.g. a study stopped part way)."""
    if isinstance(seeds, tuple):
        lo, hi = seeds
        if lo != hi:
            spread_text = f", mean ± sd over {lo}-{hi} seeds per point (see the JSON)"
            return figure_title(mode, budget_s, steps, None).replace(";", spread_text + ";", 1)
        seeds = lo
    if mode == "steps":
        what = f"equal steps: {steps} per run" + (f" (time cap {budget_s:g} s)" if budget_s else "")
    else:
        what = f"equal wall clock: {budget_s:g} s training per run"
    spread = f", mean ± sd over {seeds} seeds" if seeds and seeds > 1 else (", 1 seed" if seeds == 1 else "")
    return f"Label budget, {what}{spread}; pixel-gbm fitted once (early stopping)"


def _merged_text(merged: list[dict]) -> str:
    """The title's note on rows merged from earlier studies (nothing when none)."""
    parts = [f"{', '.join(m['methods'])} from {Path(m['json']).name}" for m in merged if m["rows"]]
    return f"\n{'; '.join(parts)}" if parts else ""


def _dates_text(dates: int) -> str:
    """The title's note on temporal stacks (nothing for single-date runs)."""
    return f"; stacks of {dates} dates" if dates > 1 else ""


def figure(rows: list[dict], *, all_locations: dict[str, int] | None = None, title: str = "",
           cube_labels: dict[str, str] | None = None, methods: list[str] | None = None,
           units: dict[str, str] | None = None):
    """The study's figure from its rows: one row of panels per cube, pixel accuracy and mean IoU (test) against
    N on a log axis with ticks at the budgets (every location of the cube: "all" and its number), one line per
    method with error bars (sample sd over seeds), ``pixel-gbm`` dashed, one legend.

    :returns: a :class:`matplotlib.figure.Figure` on an Agg canvas (``fig.savefig(path)``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    all_locations = all_locations or {}
    summary = summarise(rows, all_locations)
    cubes = list(dict.fromkeys(r["cube"] for r in rows))
    found = list(dict.fromkeys(r["method"] for r in rows))
    methods = [m for m in methods or [] if m in found] + [m for m in found if m not in (methods or [])]
    methods = sorted(methods, key=_order(methods).get)
    panels = (("accuracy", "pixel accuracy (test)"), ("mean_iou", "mean IoU (test)"))
    fig = Figure(figsize=(11.0, 0.9 + 3.6 * max(1, len(cubes))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(cubes)), 2, squeeze=False)
    handles = {}
    for i, cube in enumerate(cubes):
        budgets = sorted({e["labels"] for e in summary if e["cube"] == cube})
        for j, (key, ylabel) in enumerate(panels):
            ax = axes[i][j]
            ax.set_xscale("log")
            for k, method in enumerate(methods):
                es = [e for e in summary if e["cube"] == cube and e["method"] == method and e.get(key) is not None]
                if not es:
                    continue
                color, marker = STYLE.get(method, (f"C{k % 10}", "o"))
                dodge = math.exp(0.035 * (k - (len(methods) - 1) / 2))  # keeps the error bars apart
                sd = [e.get(f"{key}_sd") for e in es]
                h = ax.errorbar([e["labels"] * dodge for e in es], [e[key] for e in es],
                                yerr=[v or 0.0 for v in sd] if any(v is not None for v in sd) else None,
                                color=color, marker=marker,
                                markersize=5, linewidth=1.6, capsize=3, elinewidth=1,
                                linestyle="--" if method == REFERENCE else "-", label=method)
                handles.setdefault(method, h)
            ax.xaxis.set_major_locator(FixedLocator(budgets))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([f"all ({n})" if all_locations.get(cube) == n else str(n) for n in budgets])
            if budgets:
                ax.set_xlim(min(budgets) / 1.35, max(budgets) * 1.35)
            ax.set_xlabel(f"labelled {(units or {}).get(cube, 'locations')} N")  # images on a mosaic
            ax.set_ylabel(ylabel)
            name = (cube_labels or {}).get(cube) or cube_label(cube)
            ax.set_title(f"{name}: {ylabel.removesuffix(' (test)')}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
    if not cubes:
        axes[0][0].text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=axes[0][0].transAxes)
    if handles:
        fig.legend([handles[m] for m in methods if m in handles], [m for m in methods if m in handles],
                   loc="outside lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_report(report: dict, png: str | os.PathLike) -> Path:
    """Draw the figure of a study's JSON report into ``png``."""
    fig = figure(
        report["runs"], all_locations={c["cube"]: c["all_locations"] for c in report.get("cubes", [])},
        cube_labels={c["cube"]: c["label"] for c in report.get("cubes", []) if c.get("label")},
        methods=report.get("methods"), title=report.get("title", ""),
        units={c["cube"]: c["unit"] for c in report.get("cubes", []) if c.get("unit")},
    )
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    return png


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of the study: (cube, method, N, seed), its folder and the config compare.py will give it."""

    cube: str
    method: str
    labels: int
    seed: int
    folder: Path
    config: dict  # RunConfig as JSON

    def name(self) -> str:
        return f"{self.cube}  {self.method:<10}  N={self.labels:<4}  seed {self.seed}"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def state(run: Run, row_file: str) -> tuple[str, dict | None]:
    """``("done", row)`` when the run folder holds the row of a run with this config, ``("todo", None)`` when
    it holds nothing finished (or nothing) of this config, ``("conflict", None)`` when it holds another run."""
    path = run.folder / row_file
    if path.exists():
        row = json.loads(path.read_text())
        return ("done", row) if _same_config(row.get("config") or {}, run.config) else ("conflict", None)
    config = run.folder / "config.json"
    if config.exists() and not _same_config(json.loads(config.read_text()), run.config):
        return "conflict", None
    return "todo", None


def _same_config(stored: dict, wanted: dict) -> bool:
    """Whether a stored run config (``config.json``, or a result row's) is ``wanted``: compared as
    :class:`~hvaeseg.run_config.RunConfig` s, so a cube path stored absolute and a field added since the run
    (at its default) make no difference."""
    from hvaeseg.run_config import RunConfig

    try:
        return not RunConfig.from_json(json.dumps(stored)).differences(RunConfig.from_json(json.dumps(wanted)))
    except (TypeError, ValueError):
        return False


def study_row(row: dict, run: Run, steps_target: int | None) -> dict:
    out = {k: row.get(k) for k in ROW_KEYS}
    out["run"] = str(run.folder)
    if steps_target and run.method != REFERENCE:
        out["short_of_steps"] = int(row.get("steps") or 0) < steps_target
    return out


def command(args: argparse.Namespace, run: Run) -> list[str]:
    cmd = [sys.executable, str(BENCH / "compare.py"), "--cubes", run.cube, "--cube-cache", args.cube_cache,
           "--methods", run.method, "--labels", str(run.labels), "--seeds", str(run.seed),
           "--patch-size", str(args.patch_size), "--block", str(args.block), "--batch-size", str(args.batch_size),
           "--val-every", str(args.val_every), "--unlabelled-patches", str(args.unlabelled_patches),
           "--iwae-samples", str(args.iwae_samples), "--threads", "1", "--out", args.out]
    if args.dates != 1:
        cmd += ["--dates", str(args.dates)]
    if args.budget is not None:
        cmd += ["--budget", f"{args.budget:g}"]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if run.method in args.method_options:
        cmd += ["--options", f"{run.method}={json.dumps(args.method_options[run.method])}"]
    return cmd


def _progress(i: int, n: int, run: Run, row: dict | None, seconds: float, note: str = "") -> str:
    if row is None:
        return f"[{i:>3}/{n}] {run.name()}  FAILED after {seconds:.0f} s{note}"
    spent = row.get("fit_seconds") if row.get("fit_seconds") is not None else row.get("train_seconds")
    return (f"[{i:>3}/{n}] {run.name()}  acc {row['accuracy']:.3f}  mIoU {row['mean_iou']:.3f}  "
            f"{row.get('steps')} steps  {'fit' if row.get('fit_seconds') is not None else 'train'} "
            f"{spent:.1f} s  wall {seconds:.0f} s{note}")


def run_pool(args: argparse.Namespace, runs: list[Run], row_file: str, on_row, command=command) -> list[Run]:
    """Run ``runs`` as subprocesses, ``args.jobs`` at a time; ``on_row(run, row)`` after each success.
    ``command(args, run)`` gives each run's command line (default: this study's compare.py call).
    Returns the runs that failed. On an interrupt the running subprocesses are ended and it re-raises."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HVAESEG_NO_PROGRESS": "1"}
    pending, running, failed, finished = list(runs), [], [], 0
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                run = pending.pop(0)
                run.folder.mkdir(parents=True, exist_ok=True)
                log = open(run.folder / "compare.log", "w")  # noqa: SIM115 - closed when the run ends
                proc = subprocess.Popen(command(args, run), stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((run, proc, log, time.perf_counter()))
            time.sleep(0.2)
            for item in list(running):
                run, proc, log, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                finished += 1
                seconds = time.perf_counter() - t0
                status, row = state(run, row_file)
                if proc.returncode != 0 or status != "done":
                    failed.append(run)
                    tail = (run.folder / "compare.log").read_text(errors="replace").strip().splitlines()[-8:]
                    print(_progress(finished, len(runs), run, None, seconds,
                                    f" (exit {proc.returncode}; {run.folder / 'compare.log'}):"), file=sys.stderr)
                    print("\n".join("    " + t for t in tail), file=sys.stderr)
                    continue
                note = ""
                if args.steps and run.method != REFERENCE and int(row.get("steps") or 0) < args.steps:
                    note = f"  (stopped by the {args.budget:g} s cap before {args.steps} steps)"
                print(_progress(finished, len(runs), run, row, seconds, note), file=sys.stderr, flush=True)
                on_row(run, row)
    except BaseException:
        for _run, proc, _log, _ in running:  # only the subprocesses started here
            proc.terminate()
        for _run, proc, log, _ in running:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        raise
    return failed


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cubes", nargs="+", default=["synthetic:small", "s2-cloud-shadow-512"], metavar="CUBE",
                   help="synthetic:PRESET, a scene of bench/data or a store path (resolved by bench/scenes.py)")
    p.add_argument("--labels", nargs="+", type=int, default=[5, 10, 20, 50, 0],
                   help="the budgets N (labelled locations); 0 = all training locations of the cube")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=None,
                   help=f"training seconds per run (default {DEFAULT_BUDGET_S:g}); with --steps: a cap (default none)")
    p.add_argument("--steps", type=int, default=None, help="equal steps: this many steps per run, no time budget")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, each one single-thread process")
    p.add_argument("--out", default="runs/budget", help="the run folders (OUT/CUBE/METHOD-NN-seedS)")
    p.add_argument("--json", default=None, help="result JSON (default bench/results/budget.json, "
                   "budget_steps.json with --steps)")
    p.add_argument("--png", default=None,
                   help="figure (default bench/results/budget.png, budget_steps.png with --steps)")
    add_run_settings(p)
    p.add_argument("--options", action="append", default=[], metavar="METHOD=JSON",
                   help="hyper-parameters of METHOD as a JSON object (repeatable, one per method)")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="an earlier study's JSON whose rows of other methods (see --merge-methods) at this study's "
                   "cubes and budgets join this study's rows, marked with their source (repeatable; e.g. the "
                   "baselines beside a new setting of one method)")
    p.add_argument("--merge-methods", nargs="+", default=None, metavar="METHOD",
                   help="the methods taken from --merge (default: every method of those studies not run here)")
    p.add_argument("--plot-only", action="store_true", help="re-draw --png from the existing --json; no training")
    p.add_argument("--collect-only", action="store_true",
                   help="write --json and --png from the finished run folders of this plan; no training (e.g. "
                   "after stopping a study, or to merge studies run in parts into the same --out)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps: expected a positive number of steps, got {args.steps}")
    if args.budget is not None and not args.budget > 0:
        p.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    if args.budget is None and args.steps is None:
        args.budget = DEFAULT_BUDGET_S
    if args.jobs < 1:
        p.error(f"--jobs: expected at least 1, got {args.jobs}")
    if args.merge_methods is not None and not args.merge:
        p.error("--merge-methods: give the studies to take them from with --merge JSON")
    if set(args.merge_methods or ()) & set(args.methods):
        p.error(f"--merge-methods: {sorted(set(args.merge_methods) & set(args.methods))} also run here; a method's "
                "rows come from one place (drop it from --methods or from --merge-methods)")
    for path in args.merge:
        if not Path(path).is_file():
            p.error(f"--merge: {path} does not exist (give the JSON an earlier bench/budget.py wrote)")
    if any(n < 0 for n in args.labels):
        p.error(f"--labels: expected N >= 0 (0 = all locations), got {args.labels}")
    for name in ("cubes", "methods", "seeds", "labels"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            p.error(f"--{name} repeats a value: {values}")
    suffix = "_steps" if args.steps is not None else ""
    args.json = Path(args.json) if args.json else RESULTS / f"budget{suffix}.json"
    args.png = Path(args.png) if args.png else RESULTS / f"budget{suffix}.png"
    return p, args


def main(argv: list[str] | None = None) -> int:
    p, args = parse_args(argv)
    if args.plot_only:
        if not args.json.exists():
            p.error(f"--plot-only: {args.json} does not exist (run the study first, or give --json)")
        png = plot_report(json.loads(args.json.read_text()), args.png)
        print(f"wrote {png}", file=sys.stderr)
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # this process only plans and collects
    os.environ.setdefault("HVAESEG_NO_PROGRESS", "1")
    from hvaeseg.experiment import RunConfig
    from hvaeseg.methods import METHODS as KNOWN

    import compare  # torch and hvaeseg: not needed to draw

    unknown = [m for m in args.methods if m not in KNOWN]
    if unknown:
        p.error(f"--methods: unknown {unknown}; expected some of {sorted(KNOWN)}")
    try:
        args.method_options = compare.parse_options(args.options, args.methods)
    except ValueError as err:
        p.error(str(err))

    # the cubes, ingested here once (not by two runs at once), and their band statistics stored likewise
    data = {c: resolve_cube(c, cache_dir=args.cube_cache) for c in args.cubes}
    for d in data.values():
        if not d.startswith("synthetic:"):
            from hvaeseg.data.stats import ensure_band_stats

            ensure_band_stats(d)
    n_all = {c: compare.all_locations(RunConfig(method="supervised", data=data[c], labels=1,
                                                patch_size=args.patch_size, block=args.block)) for c in args.cubes}
    runs, seen = [], set()
    for seed in args.seeds:  # seed-major: an interrupted study has whole seeds first
        for c in args.cubes:
            for requested in args.labels:
                n = n_all[c] if requested == 0 or requested > n_all[c] else requested
                for method in args.methods:
                    if (c, method, n, seed) in seen:
                        continue
                    seen.add((c, method, n, seed))
                    config = compare.run_config(args, data[c], method, n, seed)
                    runs.append(Run(c, method, n, seed, compare.run_dir(args.out, c, method, n, seed),
                                    json.loads(config.to_json())))
    states = {id(r): state(r, compare.ROW_FILE) for r in runs}
    conflicts = [r for r in runs if states[id(r)][0] == "conflict"]
    if conflicts:
        p.error(f"{len(conflicts)} run folder(s) under {args.out} hold runs with other settings, e.g. "
                f"{conflicts[0].folder}: choose another --out (or delete them)")
    rows = {id(r): study_row(states[id(r)][1], r, args.steps) for r in runs if states[id(r)][0] == "done"}
    todo = [r for r in runs if states[id(r)][0] == "todo"]
    for r in runs:
        if id(r) in rows:
            print(f"skip (done): {r.name()}  acc {rows[id(r)]['accuracy']:.3f}  mIoU {rows[id(r)]['mean_iou']:.3f}",
                  file=sys.stderr)
    trained = sum(r.method != REFERENCE for r in todo)
    estimate = ""
    if args.steps is None and trained:
        seconds = trained * args.budget / min(args.jobs, trained)  # the budgets alone: no data, no evaluation
        estimate = ", at least " + (f"{seconds / 3600:.1f} h" if seconds >= 3600 else
                                    f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s")
    print(f"label budget: {len(runs)} runs, {len(rows)} done, {len(todo)} to run, {args.jobs} at a time{estimate}; "
          f"all locations: {', '.join(f'{c} {n}' for c, n in n_all.items())}", file=sys.stderr, flush=True)

    mode = "steps" if args.steps is not None else "wall_clock"
    report: dict[str, Any] = {
        "study": "label budget", "mode": mode, "budget_s": args.budget, "steps": args.steps,
        "title": figure_title(mode, args.budget, args.steps, len(args.seeds)) + _dates_text(args.dates),
        "cubes": [{"cube": c, "label": cube_label(c), "data": data[c], "all_locations": n_all[c],
                   "unit": budget_unit(data[c])} for c in args.cubes],
        "labels": args.labels, "methods": args.methods, "seeds": args.seeds, "reference": REFERENCE,
        "settings": {"patch_size": args.patch_size, "block": args.block, "batch_size": args.batch_size,
                     "val_every": args.val_every, "unlabelled_patches": args.unlabelled_patches,
                     "iwae_samples": args.iwae_samples, "dates": args.dates, "threads": 1, "jobs": args.jobs,
                     "options": args.method_options},
        "out": args.out,
    }
    merged: list[dict] = []
    plan = {(r.cube, r.labels) for r in runs}
    for path in args.merge:
        earlier = json.loads(Path(path).read_text())
        take = set(args.merge_methods) if args.merge_methods is not None else (
            set(earlier.get("methods", [])) - set(args.methods))
        new = merged_rows(earlier, str(path), plan, take)
        merged += new
        report.setdefault("merged", []).append({"json": str(path), "methods": sorted({r["method"] for r in new}),
                                                "rows": len(new), "settings": earlier.get("settings"),
                                                "budget_s": earlier.get("budget_s"), "steps": earlier.get("steps")})
    if merged:
        report["methods"] = args.methods + [m for m in dict.fromkeys(r["method"] for r in merged)
                                            if m not in args.methods]

    def write(failed: list[Run] = ()) -> None:
        done = [rows[id(r)] for r in runs if id(r) in rows]  # in plan order
        summary = add_margins(summarise(done + merged, n_all))
        report.update(
            complete=len(done) == len(runs), missing=len(runs) - len(done),
            failed=[str(r.folder) for r in failed], runs=done + merged, summary=summary,
        )
        counts = [len(e["seeds"]) for e in summary]
        if counts:  # the seeds behind the points, not the seeds asked for
            report["title"] = (figure_title(mode, args.budget, args.steps, (min(counts), max(counts)))
                               + _dates_text(args.dates) + _merged_text(report.get("merged", [])))
        _write_json(args.json, report)

    def on_row(run: Run, row: dict) -> None:
        rows[id(run)] = study_row(row, run, args.steps)
        write()

    write()
    if args.collect_only:
        if report["runs"]:
            plot_report(report, args.png)
        print(f"collected {len(rows)} of {len(runs)} runs" + (f" and {len(merged)} merged rows" if merged else "")
              + f" into {args.json}" + (f" and {args.png}" if report["runs"] else ""), file=sys.stderr)
        return 0
    try:
        failed = run_pool(args, todo, compare.ROW_FILE, on_row)
    except KeyboardInterrupt:
        write()
        print(f"interrupted: {len(rows)} of {len(runs)} runs in {args.json}; run the same command again to "
              "continue", file=sys.stderr)
        return 130
    write(failed)
    if report["runs"]:
        plot_report(report, args.png)
    return report_failures(failed, f"wrote {args.json}" + (f" and {args.png}" if report["runs"] else ""))


if __name__ == "__main__":
    sys.exit(main())
