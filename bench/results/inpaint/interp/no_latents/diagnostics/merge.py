"""Merge the per-seed JSONs of runs/w/ (one bench/inpaint.py call per cube and seed) into one report per cube with
the benchmark's own summarise / table / plot_report.

usage (from the repository root): PYTHONPATH=bench python merge.py OUT_DIR"""
import json
import sys

import inpaint as m


def merge_reports(out: str, groups: list[tuple[str, list[str], str]]) -> None:
    """For each ``(name, files, title)``: ``OUT/name.json`` and ``.png`` from the rows of ``files`` (a file
    that does not exist is reported and skipped)."""
    for name, files, title in groups:
        rows = {}
        for path in files:
            try:
                report = json.load(open(path))
            except FileNotFoundError:
                print(f"missing: {path}", file=sys.stderr)
                continue
            for r in report["rows"]:
                rows[(r["cube"], r["protocol"], r["method"], r["seed"])] = r
        summary = m.summarise(list(rows.values()))
        merged = {"title": title, "rows": list(rows.values()), "summary": summary}
        json.dump(m._clean(merged), open(f"{out}/{name}.json", "w"), indent=1)
        m.plot_report(merged, f"{out}/{name}.png")
        print(title)
        print(m.table(summary))


if __name__ == "__main__":
    merge_reports(sys.argv[1], [
        ("inpaint_wc", [f"runs/w/nou0_wc{s}.json" for s in ("", "_s1", "_s2")],
         "WorldCereal, pasted masks, 3 seeds: temporal = s, l, doy, interp -> x (no latent layer), interp_dropout 0, "
         "wake_holdout 0.5, 480 steps, last checkpoint"),
        ("inpaint_synth", ["runs/w/nou0_syn.json", "runs/w/nou0_syn_pasted.json", "runs/w/nou0_syn_s1.json",
                           "runs/w/nou0_syn_s2.json"],
         "synthetic:small, 3 seeds: temporal = s, l, doy, interp -> x (no latent layer), interp_dropout 0, "
         "wake_holdout 0.5, 480 steps, last checkpoint"),
    ])
