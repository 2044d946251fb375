"""Diagnostic: the fill of an interp run with its image net's output zeroed = the in-window leave-one-out
interpolation alone, against the full-series interpolation, on the same tasks."""
import json
import sys

import inpaint as m
import pyro
import torch

cube_spec, run, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
protocol = sys.argv[4] if len(sys.argv) > 4 else "pasted"
torch.set_num_threads(1)
cube = m.load_cube(cube_spec, "/work/main/runs/cubes")
tasks, note = m.protocol_tasks(cube, protocol, seed)
truths = [m.task_truth(cube, t) for t in tasks]
config, hvae = m.load_hvae(__import__("pathlib").Path(run))
hvae.train(False)
with torch.no_grad():
    for p in hvae.decoder.nets["x"].parameters():
        p.zero_()
pyro.set_rng_seed(seed)
fills = m.hvae_fills(hvae, cube, tasks, patch=config.patch_size, dates=config.dates, window="nearest", samples=1,
                     calibration_samples=0, truths=truths)
row = m.score(cube, tasks, fills, truths)
print(json.dumps({"window_interp_psnr": row["psnr"], "mae": row["mae"], "rmse": row["rmse"]}))
