"""The label-budget study's results as a markdown table in the layout of the original Cityscapes table: one row per
method, one column per budget (N labelled images, or locations, and "all"), each cell ``accuracy / mean IoU``
on the test split in percent (mean ± sample sd over seeds when there are several), one table per cube.

    python bench/budget_table.py                                   # bench/results/budget.json -> stdout
    python bench/budget_table.py --json runs/cs/b.json --out runs/cs/b.md

It reads the JSON that ``bench/budget.py`` writes (its ``summary`` and ``cubes``); nothing is run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: the methods' order in the table (others follow in the order of the report), and their names there
ORDER = ("symmetric", "elbo", "supervised", "mixmatch", "pixel-gbm")
NAMES = {"symmetric": "HVAE (symmetric)", "elbo": "HVAE (ELBO)", "supervised": "supervised U-Net",
         "mixmatch": "MixMatch", "pixel-gbm": "pixel GBM"}


def _cell(entry: dict | None) -> str:
    if entry is None or entry.get("accuracy") is None:
        return "-"

    def pct(key: str) -> str:
        sd = entry.get(f"{key}_sd")
        return f"{100 * entry[key]:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")

    return f"{pct('accuracy')} / {pct('mean_iou')}"


def table(report: dict) -> str:
    """The markdown tables of a budget report (module docstring)."""
    out = []
    summary = report.get("summary", [])
    for cube in report.get("cubes", []):
        name, unit = cube["cube"], cube.get("unit", "locations")
        entries = [e for e in summary if e["cube"] == name]
        budgets = sorted({e["labels"] for e in entries})
        methods = [m for m in ORDER if any(e["method"] == m for e in entries)]
        methods += [m for m in dict.fromkeys(e["method"] for e in entries) if m not in methods]
        heads = ["all" + (f" ({n})" if n else "") if n == cube.get("all_locations") else str(n) for n in budgets]
        out.append(f"**{cube.get('label', name)}**: test accuracy / mean IoU (%) against the number of labelled "
                   f"{unit}")
        out.append("")
        out.append("| method | " + " | ".join(heads) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for m in methods:
            by_n = {e["labels"]: e for e in entries if e["method"] == m}
            out.append(f"| {NAMES.get(m, m)} | " + " | ".join(_cell(by_n.get(n)) for n in budgets) + " |")
        out.append("")
    if report.get("title"):
        out.append(f"_{report['title']}; checkpoints chosen on validation, the test split reported once._")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=str(RESULTS / "budget.json"), help="the study's JSON (bench/budget.py --json)")
    p.add_argument("--out", default=None, help="write the markdown here (default: print it)")
    args = p.parse_args(argv)
    path = Path(args.json)
    if not path.exists():
        p.error(f"--json: {path} does not exist (run bench/budget.py first)")
    text = table(json.loads(path.read_text()))
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
