"""Merge the per-seed JSONs of the decoder_interactions probe (runs/w/inter_*.json) into one report per cube.

usage (from the repository root): PYTHONPATH=bench python bench/results/inpaint/interp/interactions/merge.py OUT_DIR"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "no_latents" / "diagnostics"))
from merge import merge_reports  # noqa: E402

DESIGN = "s, l, doy, interp -> x, decoder_interactions, interp_dropout 0, wake_holdout 0.5, 480 steps, last checkpoint"
merge_reports(sys.argv[1], [
    ("inpaint_wc", [f"runs/w/inter_wc{s}.json" for s in ("", "_s1", "_s2")],
     f"WorldCereal, pasted masks, 3 seeds: temporal = {DESIGN}"),
    ("inpaint_synth", [f"runs/w/inter_syn{s}.json" for s in ("", "_s1", "_s2")],
     f"synthetic:small, occluded, 3 seeds: temporal = {DESIGN}"),
])
