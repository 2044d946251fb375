"""The HVAE ablation: what each training aid of the HVAE methods (``symmetric``, ``elbo``) is worth, as a table.

    python bench/ablation.py                                      # every variant, seed 0, 240 s per run, 2 at once
    python bench/ablation.py --variants 'symmetric:*' --seeds 0 1 2
    python bench/ablation.py --variants '*:final' '*:old'         # a subset (glob patterns on METHOD:NAME or NAME)
    python bench/ablation.py --list                               # the variants and their options
    python bench/ablation.py --render-only                        # re-write the markdown from the JSON

The training aids added this session are fields of :class:`hvaeseg.methods.HVAEConfig` (:data:`CHANGES`:
the field, its value before and what that means). For each HVAE method the variants (:data:`VARIANTS`) are
``old`` (every change off), ``old+day_of_year`` (the old configuration with the day-of-year covariate alone),
``final`` (the defaults), ``final-no-FIELD`` for each change (that one field back at its old value:
leave-one-out) and a few extra variants. ``sleep_masks`` concerns symmetric learning only.

The protocol is compare.py's (and budget.py's): every run is one subprocess ``python bench/compare.py --cubes C
--methods M --labels N --seeds S --options M=JSON --eval-val --threads 1 ...`` (``OMP_NUM_THREADS=1``),
``--jobs`` at once; the same spatial split, labelled subset (N = ``--labels`` locations) and tiles for every
variant, ``--budget`` seconds of training, the checkpoint with the best validation mean IoU evaluated once on
the test split, and (``--eval-val``) on the val split too. Each variant's runs are kept in their own folder,
``--out``/METHOD/VARIANT/CUBE/METHOD-NN-seedS/. Resumable as budget.py: a run whose folder holds
``compare_row.json`` for the same config is not run again.

Rows measured before 2026-12-02 ran symmetric learning with ``sleep_relabel = 0`` (then the default, today
0.25; see ``bench/results/sleep_relabel/``), and their stored configs cannot tell: rerun into a fresh
``--out`` to measure the table under today's defaults.

``--variants`` selects what is run; the JSON and the table hold every variant with finished runs under
``--out`` (for ``--seeds`` and ``--cubes``) and the imported rows.

Imported rows: ``--import JSONL`` reads the one-line JSON rows of ad-hoc runs (keys ``tag``, ``method``,
``data``, ``seed``, ``steps``, ``best``, ``val_acc``, ``val_miou``, ``acc``, ``miou``, ``cons``, ``iwae``,
``per_class``, ``wall``), and ``--import-map TAG=VARIANT`` (repeatable; VARIANT as ``METHOD:NAME`` or ``NAME``,
the method then taken from the row) enters the rows of TAG as that variant, marked ``"source":
--import-source`` in the JSON and with ``*`` by the seed in the table. The last line of a (tag, data, seed)
counts. A (variant, seed) that is imported is not run (``--rerun-imported`` runs it anyway); where a finished
run and an imported row exist for the same (cube, variant, seed), the run's row is kept.

Output: ``--json`` with ``runs`` (one row per (cube, variant, seed): accuracy, mean_iou, iou per class,
val_accuracy, val_mean_iou, consistency, iwae_nats_per_value, steps, ...) and ``summary`` (per (cube, method,
variant): mean and sample sd over seeds, None with one seed; ``delta_mean_iou`` / ``delta_accuracy``: the
mean minus that of ``final`` of the same method), and ``--markdown``, the table; both rewritten after every
finished run.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
if str(BENCH) not in sys.path:  # budget.py, compare.py and scenes.py, beside this script
    sys.path.insert(0, str(BENCH))
import budget  # noqa: E402  (light: no torch until main)
from run_settings import add_run_settings, report_failures  # noqa: E402
from scenes import cube as resolve_cube  # noqa: E402
from scenes import label as cube_label  # noqa: E402

#: the HVAE methods, in the table's order
METHODS = ("symmetric", "elbo")
DEFAULT_BUDGET_S = 240.0
DEFAULT_LABELS = 10
#: how imported rows are marked (``--import-source``)
DEFAULT_IMPORT_SOURCE = "ad hoc /tmp/w/exp.py"
#: what differs in the imported runs' protocol (``--import-note``; the default is that of /tmp/w/exp.py)
DEFAULT_IMPORT_NOTE = ("exp.py trains the same RunConfig as compare.py except that it writes checkpoint.pt only at "
                       "the end (compare.py: every 50 steps, within the timed budget), and evaluates IWAE with 4 "
                       "samples (compare.py: 8).")
#: how rows of this script's runs are marked
SOURCE = "bench/ablation.py"

#: the changes of this session: (HVAEConfig field, its value before, what that value means); the final value is
#: HVAEConfig's default
CHANGES: tuple[tuple[str, Any, str], ...] = (
    ("init_scale", 1.0, "initial image scale 1.0 (final: 0.25)"),
    ("global_lr", 0.001, "global parameters (image scale, s prior logits) at the plain lr 1e-3 (final: 1e-2)"),
    ("augment", False, "no dihedral augmentation"),
    ("weight_decay", 0.0, "no weight decay (final: 0.02 on weight tensors)"),
    ("ema_decay", 0.0, "no EMA: predict with the current encoder (final: EMA 0.999 of its U-Net)"),
    ("sleep_masks", False, "generated images reach the encoder without cloud masks"),
    ("clip_norm", 100.0, "each player's gradient norm clipped at 100 (final: no clipping)"),
    ("day_of_year", False, "no day-of-year covariate in the decoder and the encoder"),
)
#: changes that concern one method only
ONLY = {"sleep_masks": "symmetric"}


def changes(method: str) -> list[tuple[str, Any, str]]:
    """The changes that apply to ``method``."""
    return [c for c in CHANGES if ONLY.get(c[0], method) == method]


def old_options(method: str) -> dict[str, Any]:
    """Every change of ``method`` back at its old value."""
    return {name: old for name, old, _ in changes(method)}


def _variants() -> list[tuple[str, str, dict, str]]:
    out = []
    extras = {
        "symmetric": [
            ("sleep_q=0", {"weights": {"sleep_q": 0.0}}, "no sleep term: the encoder learns from labels only"),
            ("sleep_q=0.2", {"weights": {"sleep_q": 0.2}}, "sleep term at weight 0.2 (final: 1)"),
            ("sleep_warmup=800", {"sleep_warmup": 800}, "sleep weight ramped from 0 over 800 steps"),
            ("image_scale=pixel", {"image_scale": "pixel"}, "image scale predicted per pixel and band (final: "
             "one per band)"),
        ],
        "elbo": [
            ("estimator=score_function", {"estimator": "score_function", "num_particles": 2},
             "score-function gradients (2 particles, leave-one-out baseline) instead of straight-through"),
        ],
    }
    for method in METHODS:
        old = old_options(method)
        out.append(("old", method, dict(old), "every change off (the configuration before this session)"))
        out.append(("old+day_of_year", method, {**old, "day_of_year": True}, "old, plus the day-of-year covariate"))
        out.append(("final", method, {}, "the defaults: every change on"))
        for name, value, what in changes(method):
            out.append((f"final-no-{name}", method, {name: value}, f"final, but {what}"))
        for name, options, what in extras[method]:
            out.append((name, method, options, what))
    return out


#: the variants: (name, method, options for ``hvaeseg train --options``, description), in the table's order
VARIANTS: list[tuple[str, str, dict, str]] = _variants()


def key(method: str, name: str) -> str:
    """A variant's key, ``METHOD:NAME``."""
    return f"{method}:{name}"


def by_key() -> dict[str, tuple[str, str, dict, str]]:
    return {key(m, n): (n, m, o, d) for n, m, o, d in VARIANTS}


def select(patterns: list[str] | None) -> list[tuple[str, str, dict, str]]:
    """The variants matching any of ``patterns`` (globs on ``METHOD:NAME`` or on ``NAME``), in
    :data:`VARIANTS` order; all with no patterns.

    :raises ValueError: for a pattern that matches no variant (a typo, most likely).
    """
    if not patterns:
        return list(VARIANTS)

    def hit(pattern: str, v) -> bool:
        return fnmatch.fnmatchcase(key(v[1], v[0]), pattern) or fnmatch.fnmatchcase(v[0], pattern)

    for pattern in patterns:
        if not any(hit(pattern, v) for v in VARIANTS):
            raise ValueError(f"--variants {pattern!r} matches no variant; see --list")
    return [v for v in VARIANTS if any(hit(p, v) for p in patterns)]


def slug(name: str) -> str:
    """A folder name for a variant: ``sleep_q=0.2`` -> ``sleep_q-0.2``, ``old+day_of_year`` -> ``old-day_of_year``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def variant_out(out: str | os.PathLike, method: str, name: str) -> Path:
    """The ``--out`` given to compare.py for a variant's runs."""
    return Path(out) / method / slug(name)


# --------------------------------------------------------------------------------------------------
# rows, imports, summary, markdown (pure)
# --------------------------------------------------------------------------------------------------

#: the fields of a compare.py row kept in the ablation's rows
ROW_KEYS = ("accuracy", "mean_iou", "iou", "val_accuracy", "val_mean_iou", "consistency", "iwae_nats_per_value",
            "steps", "best_step", "train_seconds", "wall_seconds")
#: the fields averaged over seeds in the summary (mean and sample sd)
SUMMARY_KEYS = ("accuracy", "mean_iou", "val_accuracy", "val_mean_iou", "consistency", "iwae_nats_per_value",
                "steps", "train_seconds")
#: ad-hoc row field -> ablation row field
IMPORT_FIELDS = {"acc": "accuracy", "miou": "mean_iou", "per_class": "iou", "val_acc": "val_accuracy",
                 "val_miou": "val_mean_iou", "cons": "consistency", "iwae": "iwae_nats_per_value", "steps": "steps",
                 "best": "best_step", "wall": "wall_seconds"}


def ablation_row(row: dict, *, cube: str, variant: str, method: str, labels: int, seed: int,
                 run: str | os.PathLike | None = None) -> dict:
    """An ablation row from a compare.py row (``compare_row.json``)."""
    return {"cube": cube, "variant": variant, "method": method, "labels": labels, "seed": seed,
            **{k: row.get(k) for k in ROW_KEYS}, "source": SOURCE, **({"run": str(run)} if run else {})}


def parse_import_map(items: list[str] | None) -> dict[str, str]:
    """``["TAG=VARIANT", ...]`` -> ``{tag: variant}``; VARIANT is ``METHOD:NAME`` or a NAME (resolved per row).

    :raises ValueError: on a malformed item, a tag given twice or a variant that does not exist.
    """
    known = by_key()
    names = {n for n, *_ in VARIANTS}
    out: dict[str, str] = {}
    for item in items or []:
        tag, sep, variant = item.partition("=")
        tag, variant = tag.strip(), variant.strip()
        if not sep or not tag or not variant:
            raise ValueError(f"--import-map: expected TAG=VARIANT, e.g. sym-doy=symmetric:final, got {item!r}")
        if tag in out:
            raise ValueError(f"--import-map: tag {tag!r} given twice")
        if variant not in known and variant not in names:
            raise ValueError(f"--import-map {item!r}: no variant {variant!r}; see --list")
        out[tag] = variant
    return out


def import_rows(lines: Iterable[dict], mapping: dict[str, str], *, cubes: dict[str, str], labels: dict[str, int],
                seeds: list[int], source: str = DEFAULT_IMPORT_SOURCE) -> tuple[list[dict], list[str]]:
    """The ablation rows of the ad-hoc rows ``lines`` whose tag ``mapping`` maps to a variant.

    :param cubes: the study's cubes -> their resolved data (an ad-hoc row's ``data`` may be either).
    :param labels: cube -> the study's N; a row with another ``labels`` is left out (rows without it count as N).
    :param seeds: the study's seeds; rows of other seeds are left out.
    :returns: the rows (the last line of a (tag, data, seed) counts) and notes on what was left out.
    :raises ValueError: for a mapped tag found nowhere, or a row whose method is not its variant's.
    """
    known = by_key()
    found: set[str] = set()
    latest: dict[tuple, dict] = {}
    notes: list[str] = []
    for row in lines:
        tag = row.get("tag")
        if tag not in mapping:
            continue
        found.add(tag)
        variant = mapping[tag] if ":" in mapping[tag] else key(row.get("method", "?"), mapping[tag])
        if variant not in known:
            raise ValueError(f"--import-map {tag}={mapping[tag]}: the row's method {row.get('method')!r} has no "
                             f"variant {mapping[tag]!r}")
        name, method, _, _ = known[variant]
        if row.get("method") != method:
            raise ValueError(f"--import-map {tag}={mapping[tag]}: the rows of {tag!r} are of method "
                             f"{row.get('method')!r}, the variant's is {method!r}")
        data = row.get("data")
        cube = next((c for c, d in cubes.items() if data in (c, d)), None)
        if cube is None:
            notes.append(f"{tag} seed {row.get('seed')}: data {data!r} is not among the cubes {list(cubes)}; left out")
            continue
        if row.get("seed") not in seeds:
            notes.append(f"{tag}: seed {row.get('seed')} is not among the seeds {seeds}; left out")
            continue
        if row.get("labels", labels[cube]) != labels[cube]:
            notes.append(f"{tag}: N = {row.get('labels')}, the study's is {labels[cube]}; left out")
            continue
        latest[(tag, data, row["seed"])] = {
            "cube": cube, "variant": name, "method": method, "labels": labels[cube], "seed": row["seed"],
            **{k: None for k in ROW_KEYS}, **{ours: row.get(theirs) for theirs, ours in IMPORT_FIELDS.items()},
            "source": source, "tag": tag,
        }
    missing = [t for t in mapping if t not in found]
    if missing:
        raise ValueError(f"--import-map: tags {missing} are not in the imported file")
    return list(latest.values()), notes


def merge(new: list[dict], imported: list[dict]) -> list[dict]:
    """One row per (cube, method, variant, seed): a row of a finished run over an imported one (and a later
    imported row over an earlier one); ordered by cube (first seen), method, variant (:data:`VARIANTS`), seed."""
    rows: dict[tuple, dict] = {}
    for r in imported:
        rows[(r["cube"], r["method"], r["variant"], r["seed"])] = r
    for r in new:
        rows[(r["cube"], r["method"], r["variant"], r["seed"])] = r
    cubes = list(dict.fromkeys(r["cube"] for r in [*new, *imported]))
    order = _order()
    return sorted(rows.values(), key=lambda r: (cubes.index(r["cube"]), *order(r["method"], r["variant"]),
                                                r["seed"]))


def _order():
    index = {key(m, n): i for i, (n, m, _, _) in enumerate(VARIANTS)}

    def order(method: str, variant: str) -> tuple[int, int, str]:
        m = METHODS.index(method) if method in METHODS else len(METHODS)
        return m, index.get(key(method, variant), len(index)), variant

    return order


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (cube, method, variant): ``seeds``, ``imported_seeds`` (those from imported rows),
    ``description``, ``options``, for each of :data:`SUMMARY_KEYS` the mean over seeds and ``KEY_sd`` (sample
    sd, None with one seed), ``iou`` (mean per class), and ``delta_mean_iou`` / ``delta_accuracy``: the mean
    minus that of ``final`` of the same (cube, method) (None without one). In the table's order."""
    known = by_key()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cube"], r["method"], r["variant"]), []).append(r)
    cubes = list(dict.fromkeys(r["cube"] for r in rows))
    order = _order()
    out = []
    for (cube, method, variant), rs in sorted(groups.items(), key=lambda kv: (cubes.index(kv[0][0]),
                                                                              *order(kv[0][1], kv[0][2]))):
        _, _, options, description = known.get(key(method, variant), (variant, method, None, ""))
        entry: dict[str, Any] = {
            "cube": cube, "method": method, "variant": variant, "description": description, "options": options,
            "seeds": sorted(r["seed"] for r in rs),
            "imported_seeds": sorted(r["seed"] for r in rs if r.get("source", SOURCE) != SOURCE),
        }
        for k in SUMMARY_KEYS:
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            entry[k], entry[f"{k}_sd"] = budget._mean_sd(vals)
        classes = list(dict.fromkeys(c for r in rs for c in (r.get("iou") or {})))
        entry["iou"] = {c: budget._mean_sd([float(r["iou"][c]) for r in rs
                                            if (r.get("iou") or {}).get(c) is not None])[0] for c in classes}
        out.append(entry)
    final = {(e["cube"], e["method"]): e for e in out if e["variant"] == "final"}
    for e in out:
        f = final.get((e["cube"], e["method"]), {})
        for k in ("mean_iou", "accuracy"):
            e[f"delta_{k}"] = e[k] - f[k] if e.get(k) is not None and f.get(k) is not None else None
    return out


def _fmt(mean: float | None, sd: float | None = None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    text = f"{mean:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _delta(entry: dict) -> str:
    if entry["variant"] == "final":
        return "(ref)"
    d = entry.get("delta_mean_iou")
    return "–" if d is None else f"{d:+.3f}"


COLUMNS = ("method", "variant", "description", "seeds", "test acc", "test mIoU", "val acc", "val mIoU",
           "consistency", "IWAE", "steps", "Δ test mIoU vs final")


def render_markdown(report: dict) -> str:
    """The table of a report (``summary``, ``budget_s``, ``labels``, ``cubes`` as ``[{"cube", "label"}]``,
    optional ``threads`` and ``import_notes``): a section per cube, one row per (method, variant)."""
    summary = report.get("summary", [])
    labels = {c["cube"]: c.get("label") or c["cube"] for c in report.get("cubes", [])}
    cubes = list(dict.fromkeys([*labels, *(e["cube"] for e in summary)]))
    per_cube = {c["cube"]: c["labels"] for c in report.get("cubes", []) if c.get("labels") is not None}
    n = report.get("labels")
    if len(set(per_cube.values())) == 1:  # N as run (a cube with fewer locations than asked has them all)
        n = next(iter(per_cube.values()))
    n = "all" if n == 0 else n
    budget_s = report.get("budget_s")
    lines = [
        "# HVAE ablation",
        "",
        f"Protocol of `bench/compare.py`: N = {n} labelled locations, "
        f"{f'{budget_s:g} s' if budget_s is not None else '?'} training per run on "
        f"{report.get('threads', 1)} thread, the checkpoint with the best validation mean IoU evaluated once on "
        "the test split (and on the val split). Mean ± sample sd over seeds (one seed: the value). "
        "IWAE: nats per observed value (test). Δ: test mean IoU minus that of `final` of the same method. "
        "Made by `bench/ablation.py`.",
    ]
    for cube in cubes:
        es = [e for e in summary if e["cube"] == cube]
        heading = labels.get(cube, cube) + (f" (N = {per_cube[cube]})" if per_cube.get(cube, n) != n else "")
        lines += ["", f"## {heading}", "",
                  "| " + " | ".join(COLUMNS) + " |",
                  "|" + "|".join(["---"] * 4 + ["---:"] * (len(COLUMNS) - 4)) + "|"]
        if not es:
            lines.append("| " + " | ".join(["–"] * len(COLUMNS)) + " |")
        for e in es:
            imported = set(e.get("imported_seeds") or [])
            seeds = " ".join(f"{s}*" if s in imported else str(s) for s in e["seeds"])
            cells = [
                e["method"], f"`{e['variant']}`", (e.get("description") or "").replace("|", "\\|"), seeds,
                _fmt(e.get("accuracy"), e.get("accuracy_sd")), _fmt(e.get("mean_iou"), e.get("mean_iou_sd")),
                _fmt(e.get("val_accuracy"), e.get("val_accuracy_sd")),
                _fmt(e.get("val_mean_iou"), e.get("val_mean_iou_sd")),
                _fmt(e.get("consistency"), e.get("consistency_sd")),
                _fmt(e.get("iwae_nats_per_value"), e.get("iwae_nats_per_value_sd")),
                _fmt(e.get("steps"), e.get("steps_sd"), 0), _delta(e),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if any(e.get("imported_seeds") for e in summary):
        sources = sorted({s for s in report.get("import_sources", [])}) or ["an imported file"]
        lines += ["", " ".join([f"`*` a seed imported from {', '.join(sources)} (not run by this script).",
                                *report.get("import_notes", [])])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


@dataclass
class AblationRun(budget.Run):
    """One run: a variant on a cube with a seed."""

    variant: str
    options: dict
    out: Path  # compare.py's --out for this variant

    def name(self) -> str:
        return f"{self.cube}  {key(self.method, self.variant):<36}  seed {self.seed}"


def command(args: argparse.Namespace, run: AblationRun) -> list[str]:
    """compare.py's command line for ``run``: budget.py's, with the variant's options, folder and --eval-val."""
    ns = copy.copy(args)
    ns.out = str(run.out)
    ns.method_options = {run.method: run.options} if run.options else {}
    return budget.command(ns, run) + ["--eval-val"]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=None, metavar="PATTERN",
                   help="run only these variants: globs on METHOD:NAME or NAME (default: all; see --list)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="training seconds per run")
    p.add_argument("--labels", type=int, default=DEFAULT_LABELS, help="N labelled locations (0 = all)")
    p.add_argument("--cubes", nargs="+", default=["synthetic:small"], metavar="CUBE",
                   help="synthetic:PRESET, a scene of bench/data or a store path (resolved by bench/scenes.py)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, each one single-thread process")
    p.add_argument("--out", default="runs/ablation", help="the run folders (OUT/METHOD/VARIANT/CUBE/METHOD-NN-seedS)")
    p.add_argument("--json", default=str(RESULTS / "ablation.json"))
    p.add_argument("--markdown", default=str(RESULTS / "ablation.md"))
    p.add_argument("--import", dest="import_file", default=None, metavar="JSONL",
                   help="ad-hoc rows (one JSON object a line) to enter the table through --import-map")
    p.add_argument("--import-map", action="append", default=[], metavar="TAG=VARIANT",
                   help="enter the imported rows of TAG as VARIANT (METHOD:NAME or NAME; repeatable)")
    p.add_argument("--import-source", default=DEFAULT_IMPORT_SOURCE, help="how imported rows are marked")
    p.add_argument("--import-note", default=DEFAULT_IMPORT_NOTE,
                   help="what differs in the imported runs' protocol (a footnote of the table)")
    p.add_argument("--rerun-imported", action="store_true", help="run imported (variant, seed)s too")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--render-only", action="store_true", help="re-write --markdown from --json; no training")
    add_run_settings(p)
    args = p.parse_args(argv)
    if not args.budget > 0:
        p.error(f"--budget: expected a positive number of seconds, got {args.budget}")
    if args.jobs < 1:
        p.error(f"--jobs: expected at least 1, got {args.jobs}")
    if args.labels < 0:
        p.error(f"--labels: expected N >= 0 (0 = all locations), got {args.labels}")
    for name in ("cubes", "seeds"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            p.error(f"--{name} repeats a value: {values}")
    if args.import_map and not args.import_file:
        p.error("--import-map needs --import JSONL")
    try:
        args.selected = select(args.variants)
        args.mapping = parse_import_map(args.import_map)
    except ValueError as err:
        p.error(str(err))
    args.steps = None  # budget.command / compare.run_config: wall-clock budget only
    args.json, args.markdown = Path(args.json), Path(args.markdown)
    return p, args


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p, args = parse_args(argv)
    if args.list:
        for name, method, options, description in VARIANTS:
            print(f"{key(method, name):<36} {json.dumps(options)}\n{'':<36} {description}")
        return 0
    if args.render_only:
        if not args.json.exists():
            p.error(f"--render-only: {args.json} does not exist (run the ablation first, or give --json)")
        _write_text(args.markdown, render_markdown(json.loads(args.json.read_text())))
        print(f"wrote {args.markdown}", file=sys.stderr)
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # this process only plans and collects
    os.environ.setdefault("HVAESEG_NO_PROGRESS", "1")
    from hvaeseg.experiment import RunConfig
    from hvaeseg.methods import method_config

    import compare  # torch and hvaeseg

    for name, method, options, _ in VARIANTS:  # a wrong option fails here, before any run starts
        try:
            method_config(method, options)
        except (TypeError, ValueError) as err:
            p.error(f"variant {key(method, name)}: {err}")

    data = {c: resolve_cube(c, cache_dir=args.cube_cache) for c in args.cubes}
    for d in data.values():
        if not d.startswith("synthetic:"):
            from hvaeseg.data.stats import ensure_band_stats

            ensure_band_stats(d)
    n_all = {c: compare.all_locations(RunConfig(method="supervised", data=data[c], labels=1,
                                                patch_size=args.patch_size, block=args.block)) for c in args.cubes}
    n = {c: n_all[c] if args.labels == 0 or args.labels > n_all[c] else args.labels for c in args.cubes}

    imported, notes = [], []
    if args.import_file:
        lines = [json.loads(t) for t in Path(args.import_file).read_text().splitlines() if t.strip()]
        try:
            imported, notes = import_rows(lines, args.mapping, cubes=data, labels=n, seeds=args.seeds,
                                          source=args.import_source)
        except ValueError as err:
            p.error(str(err))
        for note in notes:
            print(f"import: {note}", file=sys.stderr)

    selected = {key(m, v) for v, m, _, _ in args.selected}
    runs: list[AblationRun] = []
    for seed in args.seeds:  # seed-major: an interrupted study has whole seeds first
        for c in args.cubes:
            for name, method, options, _ in VARIANTS:
                ns = copy.copy(args)
                ns.method_options = {method: options} if options else {}
                config = json.loads(compare.run_config(ns, data[c], method, n[c], seed).to_json())
                out = variant_out(args.out, method, name)
                runs.append(AblationRun(c, method, n[c], seed, compare.run_dir(out, c, method, n[c], seed), config,
                                        name, options, out))
    states = {id(r): budget.state(r, compare.ROW_FILE) for r in runs}
    conflicts = [r for r in runs if states[id(r)][0] == "conflict"]
    if any(key(r.method, r.variant) in selected for r in conflicts):
        r = next(r for r in conflicts if key(r.method, r.variant) in selected)
        p.error(f"{r.folder} holds a run with other settings: choose another --out (or delete it)")
    for r in conflicts:
        print(f"left out (other settings in its folder): {r.name()}", file=sys.stderr)

    def row_of(run: AblationRun, row: dict) -> dict:
        return ablation_row(row, cube=run.cube, variant=run.variant, method=run.method, labels=run.labels,
                            seed=run.seed, run=run.folder)

    new = {id(r): row_of(r, states[id(r)][1]) for r in runs if states[id(r)][0] == "done"}
    have_imported = {(r["cube"], r["method"], r["variant"], r["seed"]) for r in imported}
    plan = [r for r in runs if key(r.method, r.variant) in selected]
    todo = [r for r in plan if states[id(r)][0] == "todo"
            and (args.rerun_imported or (r.cube, r.method, r.variant, r.seed) not in have_imported)]
    todo_ids = {id(r) for r in todo}
    for r in plan:
        if id(r) in new:
            print(f"skip (done): {r.name()}  acc {new[id(r)]['accuracy']:.3f}  mIoU {new[id(r)]['mean_iou']:.3f}",
                  file=sys.stderr)
        elif states[id(r)][0] == "todo" and id(r) not in todo_ids:
            print(f"skip (imported): {r.name()}", file=sys.stderr)
    estimate = ""
    if todo:
        seconds = len(todo) * args.budget / min(args.jobs, len(todo))  # the budgets alone: no data, no evaluation
        estimate = ", at least " + (f"{seconds / 3600:.1f} h" if seconds >= 3600 else
                                    f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s")
    print(f"ablation: {len(plan)} runs selected, {sum(id(r) in new for r in plan)} done, {len(todo)} to run, "
          f"{args.jobs} at a time{estimate}; {len(new)} finished runs and {len(imported)} imported rows in the "
          "table", file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "study": "HVAE ablation", "budget_s": args.budget, "labels": args.labels, "threads": 1,
        "cubes": [{"cube": c, "label": cube_label(c), "data": data[c], "all_locations": n_all[c], "labels": n[c]}
                  for c in args.cubes],
        "seeds": args.seeds,
        "changes": [{"field": f, "old": old, "what": what, **({"only": ONLY[f]} if f in ONLY else {})}
                    for f, old, what in CHANGES],
        "variants": [{"key": key(m, v), "name": v, "method": m, "options": o, "description": d}
                     for v, m, o, d in VARIANTS],
        "selected": sorted(selected, key=lambda k: [key(m, v) for v, m, _, _ in VARIANTS].index(k)),
        "settings": {"patch_size": args.patch_size, "block": args.block, "batch_size": args.batch_size,
                     "val_every": args.val_every, "unlabelled_patches": args.unlabelled_patches,
                     "iwae_samples": args.iwae_samples, "threads": 1, "jobs": args.jobs},
        "out": args.out,
        **({"import": {"file": args.import_file, "map": args.mapping, "source": args.import_source,
                       "notes": notes}} if args.import_file else {}),
        "import_sources": [args.import_source] if imported else [],
        "import_notes": [args.import_note] if imported and args.import_note else [],
    }

    def write(failed: list[AblationRun] = ()) -> None:
        rows = merge([new[id(r)] for r in runs if id(r) in new], imported)
        done = {(r["cube"], r["method"], r["variant"], r["seed"]) for r in rows}
        missing = [r for r in plan if (r.cube, r.method, r.variant, r.seed) not in done]
        report.update(complete=not missing, missing=[str(r.folder) for r in missing],
                      failed=[str(r.folder) for r in failed], runs=rows, summary=summarise(rows))
        budget._write_json(args.json, report)
        _write_text(args.markdown, render_markdown(report))

    def on_row(run: AblationRun, row: dict) -> None:
        new[id(run)] = row_of(run, row)
        write()

    write()
    try:
        failed = budget.run_pool(args, todo, compare.ROW_FILE, on_row, command=command)
    except KeyboardInterrupt:
        write()
        print(f"interrupted: {args.json} holds what finished; run the same command again to continue",
              file=sys.stderr)
        return 130
    write(failed)
    return report_failures(failed, f"wrote {args.json} and {args.markdown}")


if __name__ == "__main__":
    sys.exit(main())
