"""Merge the per-seed JSONs of runs/w/ (one bench/inpaint.py call per cube and seed) into one report per cube with
the benchmark's own summarise / table / plot_report.

usage (from the repository root): PYTHONPATH=bench python merge.py OUT_DIR"""
import json
import sys

import inpaint as m

out = sys.argv[1]
for name, files, title in [
    ("inpaint_wc", [f"runs/w/nou0_wc{s}.json" for s in ("", "_s1", "_s2")],
     "WorldCereal, pasted masks, 3 seeds: temporal = s, l, doy, interp -> x (no latent layer), interp_dropout 0, "
     "wake_holdout 0.5, 480 steps, last checkpoint"),
    ("inpaint_synth", ["runs/w/nou0_syn.json", "runs/w/nou0_syn_pasted.json", "runs/w/nou0_syn_s1.json",
                       "runs/w/nou0_syn_s2.json"],
     "synthetic:small, 3 seeds: temporal = s, l, doy, interp -> x (no latent layer), interp_dropout 0, "
     "wake_holdout 0.5, 480 steps, last checkpoint"),
]:
    rows = {}
    for path in files:
        for r in json.load(open(path))["rows"]:
            rows[(r["cube"], r["protocol"], r["method"], r["seed"])] = r
    rows = list(rows.values())
    summary = m.summarise(rows)
    report = {"title": title, "rows": rows, "summary": summary}
    json.dump(m._clean(report), open(f"{out}/{name}.json", "w"), indent=1)
    m.plot_report(report, f"{out}/{name}.png")
    print(title)
    print(m.table(summary))
