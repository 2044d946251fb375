"""Diagnostic: the fill of a trained temporal run (samples of decoder means, no calibration) next to the
window interpolation with the same --window, on the same tasks. Its first version toggled network.masked_heads (the
guide's per-date ladder heads gated by the valid share), an experiment of a working copy that was not committed;
that attribute is ignored by the committed code, so the loop now runs the model as trained only.
Usage: diag_mask.py CUBE RUN SEED PROTOCOL [SAMPLES [WINDOW]]"""
import json
import sys
from pathlib import Path

import inpaint as m
import pyro
import torch

cube_spec, run, seed, protocol = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
samples = int(sys.argv[5]) if len(sys.argv) > 5 else 4
window = sys.argv[6] if len(sys.argv) > 6 else "nearest"
torch.set_num_threads(1)
cube = m.load_cube(cube_spec, "/work/main/runs/cubes")
tasks, note = m.protocol_tasks(cube, protocol, seed)
truths = [m.task_truth(cube, t) for t in tasks]
config, hvae = m.load_hvae(Path(run))
hvae.train(False)
out = {}
pyro.set_rng_seed(seed)
fills = m.hvae_fills(None, cube, tasks, patch=config.patch_size, dates=config.dates, window=window,
                     calibration_samples=0, truths=truths)
row = m.score(cube, tasks, fills, truths)
print("window-interp", window, row["psnr"], row["mae"], flush=True)
for masked in (False,):
    object.__setattr__(hvae.spec.network, "masked_heads", masked)
    pyro.set_rng_seed(seed)
    fills = m.hvae_fills(hvae, cube, tasks, patch=config.patch_size, dates=config.dates, window=window,
                         samples=samples, calibration_samples=0, truths=truths)
    row = m.score(cube, tasks, fills, truths)
    out[f"masked={masked}"] = {"psnr": row["psnr"], "mae": row["mae"]}
    print(masked, out[f"masked={masked}"], flush=True)
print(json.dumps(out))
