"""Merge the per-seed JSONs of the residual-transfer runs (per_seed/*.json, one bench/inpaint.py call per cube, seed
and design) into one report per cube and design.

usage (from the repository root): PYTHONPATH=bench python bench/results/inpaint/transfer/merge.py"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interp" / "no_latents" / "diagnostics"))
from merge import merge_reports  # noqa: E402

#: the figures' titles: the design of README.md in short
DESIGN = "temporal_interp.yaml (transfer 16/2/0.2), wake_holdout 0.5, 480 steps"
SEEDS = ("s0", "s1", "s2")
merge_reports(str(HERE), [
    ("inpaint_wc_band", [f"{HERE}/per_seed/tr_wc_{s}.json" for s in SEEDS],
     f"WorldCereal, pasted: {DESIGN}, scale band"),
    # seed 0's band run was evaluated for the temporal method alone: its no-model rows (deterministic, the same
    # for any run) come from the pixel run's file, read first so that the band run's temporal row wins
    ("inpaint_synth_band", [f"{HERE}/per_seed/trp_syn_s0.json"] + [f"{HERE}/per_seed/tr_syn_{s}.json" for s in SEEDS],
     f"synthetic:small, occluded: {DESIGN}, scale band"),
    ("inpaint_wc_pixel", [f"{HERE}/per_seed/trp_wc_{s}.json" for s in SEEDS],
     f"WorldCereal, pasted: {DESIGN}, scale pixel (seed 0)"),
    ("inpaint_synth_pixel", [f"{HERE}/per_seed/trp_syn_{s}.json" for s in SEEDS],
     f"synthetic:small, occluded: {DESIGN}, scale pixel (seed 0)"),
    # wake_holdout 0.9 (seed 0, evaluated for the temporal method alone: the no-model rows from the pixel runs)
    ("inpaint_wc_holdout09", [f"{HERE}/per_seed/trp_wc_s0.json", f"{HERE}/per_seed/trh_wc_s0.json"],
     f"WorldCereal, pasted: {DESIGN.replace('wake_holdout 0.5', 'wake_holdout 0.9')} (seed 0)"),
    ("inpaint_synth_holdout09", [f"{HERE}/per_seed/trp_syn_s0.json", f"{HERE}/per_seed/trh_syn_s0.json"],
     f"synthetic:small, occluded: {DESIGN.replace('wake_holdout 0.5', 'wake_holdout 0.9')} (seed 0)"),
    # clear_radius 4 with a per-pixel scale (2026-12-03, session from 17:34 UTC; seeds 0 and 1)
    ("inpaint_wc_clear", [f"{HERE}/per_seed/trc_wc_{s}.json" for s in SEEDS[:2]],
     f"WorldCereal, pasted: {DESIGN}, clear_radius 4, scale pixel (seeds 0, 1)"),
    ("inpaint_synth_clear", [f"{HERE}/per_seed/trc_syn_{s}.json" for s in SEEDS[:2]],
     f"synthetic:small, occluded: {DESIGN}, clear_radius 4, scale pixel (seeds 0, 1)"),
    # the adopted runs (tr_*) filled at 64-px tiles (--inference-patch 64, now posterior_tile's default), same session
    ("inpaint_wc_tile64", [f"{HERE}/per_seed/tr64_wc_{s}.json" for s in SEEDS],
     f"WorldCereal, pasted: {DESIGN}, scale band, 64-px tiles"),
    ("inpaint_synth_tile64", [f"{HERE}/per_seed/tr64_syn_{s}.json" for s in SEEDS],
     f"synthetic:small, occluded: {DESIGN}, scale band, 64-px tiles"),
    # clear_radius 4, seen (reaching the spread only), scale pixel; 32 calibration samples (2026-12-03, from 21:02 UTC)
    ("inpaint_wc_seen", [f"{HERE}/per_seed/trsb_wc_{s}.json" for s in SEEDS],
     f"WorldCereal, pasted: {DESIGN}, clear_radius 4, seen, scale pixel"),
    ("inpaint_synth_seen", [f"{HERE}/per_seed/trsb_syn_{s}.json" for s in SEEDS],
     f"synthetic:small, occluded: {DESIGN}, clear_radius 4, seen, scale pixel"),
    # --recalibrate (hvaeseg.calibrate_cube) on the stored runs, 32 calibration samples (2026-12-04): the seen design
    # (trsb's runs) and the adopted one (tr's runs, band scale), both at 64-px tiles
    ("inpaint_wc_seen_recal", [f"{HERE}/per_seed/trsr_wc_{s}.json" for s in SEEDS],
     f"WorldCereal, pasted: {DESIGN}, clear_radius 4, seen, scale pixel, --recalibrate"),
    ("inpaint_synth_seen_recal", [f"{HERE}/per_seed/trsr_syn_{s}.json" for s in SEEDS],
     f"synthetic:small, occluded: {DESIGN}, clear_radius 4, seen, scale pixel, --recalibrate"),
    ("inpaint_wc_recal", [f"{HERE}/per_seed/trar_wc_{s}.json" for s in SEEDS],
     f"WorldCereal, pasted: {DESIGN}, scale band, 64-px tiles, --recalibrate"),
    ("inpaint_synth_recal", [f"{HERE}/per_seed/trar_syn_{s}.json" for s in SEEDS],
     f"synthetic:small, occluded: {DESIGN}, scale band, 64-px tiles, --recalibrate"),
])
