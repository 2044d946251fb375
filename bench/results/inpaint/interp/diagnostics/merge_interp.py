"""Merge the per-seed JSONs of the interp + wake_holdout runs on WorldCereal into one report (the benchmark's own
summarise / table / plot_report)."""
import json
import sys

import inpaint as m

WC = "runs/cubes/worldcereal.zarr"
rows = {}
def add(path, methods=None):
    for r in json.load(open(path))["rows"]:
        if methods and r["method"] not in methods:
            continue
        r = dict(r, cube=WC if r["cube"].endswith("worldcereal.zarr") else r["cube"])
        rows[(r["cube"], r["protocol"], r["method"], r["seed"])] = r
add("runs/w/window_interp.json")
for s in (0, 1, 2):
    add(f"runs/w/flatho_wc_s{s}.json", {"temporal"})
rows = [r for r in rows.values() if r["cube"] == WC]
summary = m.summarise(rows)
report = {"title": ("WorldCereal, pasted masks, 3 seeds: temporal = interp hierarchy + wake_holdout 0.5, "
                    "480 steps, last checkpoint"),
          "rows": rows, "summary": summary}
out = sys.argv[1]
json.dump(m._clean(report), open(f"{out}/inpaint_wc_interp_holdout.json", "w"), indent=1)
m.plot_report(report, f"{out}/inpaint_wc_interp_holdout.png")
print(m.table(summary))
