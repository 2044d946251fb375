"""Collect the runs of the exact-posterior study (issue 10) into ``runs.jsonl`` and print a summary table.

Each argument is ``VARIANT=DIR``: every ``compare_row.json`` under ``DIR`` (a ``bench/compare.py --out`` folder)
becomes a row of ``runs.jsonl`` tagged with ``VARIANT`` (rows already there for that variant are replaced;
``VARIANT+=DIR`` adds the folder's rows to the variant's, replacing only those of the same cube, method and seed:
a seed run later); the table gives, per variant, cube and method, the mean and standard deviation over seeds
(``bench/compare.py``'s ``summarise``).

    python bench/results/exact_s/collect.py exact_sym=runs/ex5 baselines=runs/base
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hvaeseg.report import best_prediction  # noqa: E402

from compare import summarise  # noqa: E402  (bench/compare.py)

HERE = Path(__file__).resolve().parent
KEEP = ("cube", "method", "labels", "seed", "steps", "train_seconds", "best_step", "prediction", "accuracy", "mean_iou",
        "iwae_nats_per_value", "consistency", "iou", "fit_seconds", "steps_per_second", "budget_s", "steps_target",
        "options")


def read_row(path: Path) -> dict:
    """A run's ``compare_row.json``; rows written before ``bench/compare.py`` recorded ``prediction`` get it from the
    run's ``history.json`` (the validation round of ``best_step``)."""
    row = json.loads(path.read_text())
    history = path.with_name("history.json")
    if "prediction" not in row and history.exists():
        row["prediction"] = best_prediction(json.loads(history.read_text()))
    return row


def main(args: list[str]) -> None:
    path = HERE / "runs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for arg in args:
        variant, folder = arg.split("=", 1)
        add = variant.endswith("+")
        variant = variant.rstrip("+")
        new = [{"variant": variant, **{k: row[k] for k in KEEP if k in row}}
               for row in (read_row(f) for f in sorted(Path(folder).rglob("compare_row.json")))]
        keys = {(r["cube"], r["method"], r["seed"]) for r in new}
        rows = [r for r in rows if r["variant"] != variant or (add and (r["cube"], r["method"], r["seed"]) not in keys)]
        rows += new
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("| variant | cube | method | seeds | accuracy | mean IoU | IWAE (nats/value) | steps/s |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for e in summarise([r for r in rows if r["variant"] == variant]):
            iwae = f"{e['iwae_nats_per_value']:.3f}" if "iwae_nats_per_value" in e else "-"
            steps = f"{e['steps_per_second']:.2f}" if "steps_per_second" in e else "-"
            print(f"| {variant} | {e['cube']} | {e['method']} | {e['seeds']} | {e['accuracy']:.3f} ± "
                  f"{e['accuracy_sd']:.3f} | {e['mean_iou']:.3f} ± {e['mean_iou_sd']:.3f} | {iwae} | {steps} |")


if __name__ == "__main__":
    main(sys.argv[1:])
