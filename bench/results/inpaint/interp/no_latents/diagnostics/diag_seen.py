"""Diagnostic: the decoder's fill at hidden pixels against (a) the same pixels when the guide sees their truth
(reconstruction), (b) the per-pixel latent u drawn from its prior instead of the guide, (c) the in-window
interpolation alone. RMSE in reflectance over the scored pixels of a sample of tiles.

usage (from the repository root): PYTHONPATH=.:bench python diag_seen.py CUBE RUN SEED [PROTOCOL] [MAX_ITEMS]
PROTOCOL: occluded, pasted, or cloudyvalid (the valid pixels of each partly cloudy date that are also clear on
another partly cloudy date, hidden from the guide and scored)"""
import json
import sys
from pathlib import Path

import inpaint as m
import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from hvaeseg.hierarchy.posterior import _site_mean
from hvaeseg.inpaint import temporal_linear_interpolation
from hvaeseg.inpaint_cube import window_dates

cube_spec, run, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
protocol = sys.argv[4] if len(sys.argv) > 4 else "occluded"
max_items = int(sys.argv[5]) if len(sys.argv) > 5 else 96
torch.set_num_threads(1)
pyro.set_rng_seed(seed)
cube = m.load_cube(cube_spec, "runs/cubes")
if protocol == "cloudyvalid":  # valid pixels of the partly cloudy dates, hidden
    occ, _ = m.protocol_tasks(cube, "occluded", seed)
    rng_t = np.random.default_rng(seed)
    tasks = []
    for tk in occ:
        donor = int(rng_t.choice([o.target for o in occ if o.target != tk.target]))
        hide = cube.valid[tk.target] & cube.valid[donor]  # clear on both: hide the donor's clear part
        tasks.append(m.Task("pasted", tk.target, cube.valid[tk.target] & ~hide, hide, donor=donor))
else:
    tasks, _ = m.protocol_tasks(cube, protocol, seed)
config, hvae = m.load_hvae(Path(run), "last")
hvae.train(False)
P, D = config.patch_size, config.dates
mean = torch.tensor(cube.mean, dtype=torch.float32).view(-1, 1, 1)
std = torch.tensor(cube.std, dtype=torch.float32).view(-1, 1, 1)
gen = torch.Generator().manual_seed(seed)
items = []
for i, task in enumerate(tasks):
    stack = task.valid_stack(cube.valid)
    for y in m.tile_starts(cube.shape[2], P):
        for x in m.tile_starts(cube.shape[3], P):
            if int(task.scored[y:y + P, x:x + P].sum()) < 16:
                continue
            clear = stack[:, y:y + P, x:x + P].double().mean((1, 2)).numpy()
            ds = [int(d) for d in window_dates(task.target, clear, cube.days, D, "nearest")]
            items.append((i, y, x, ds))
pick = torch.randperm(len(items), generator=gen)[:max_items].tolist()
items = [items[k] for k in pick]
truth_cache = {}


def decoder_mean(xb, vb, doy, hide=(), k=4):
    out = 0
    for _ in range(k):
        guide = poutine.block(hvae.guide, hide=list(hide)) if hide else hvae.guide
        gt = poutine.trace(guide).get_trace(xb, None, vb, doy=doy)
        tr = poutine.trace(poutine.replay(hvae.model, trace=gt)).get_trace(
            None, None, vb, shape=tuple(vb.shape), doy=doy, interp_from=(xb, vb))
        out = out + _site_mean(tr.nodes["x"]["fn"])
    return out / k


sq = {"interp": 0.0, "hidden": 0.0, "seen": 0.0, "hidden_prior_u": 0.0, "seen_prior_u": 0.0}
corr_sq = {"hidden": 0.0, "seen": 0.0}
n = 0
per_date = {}
with torch.no_grad():
    for b0 in range(0, len(items), 16):
        batch = items[b0:b0 + 16]
        xs, vs, truths, masks, slots, doys = [], [], [], [], [], []
        for i, y, x, ds in batch:
            task = tasks[i]
            if i not in truth_cache:
                truth_cache[i] = (m.task_truth(cube, task) - mean) / std
            stack = task.valid_stack(cube.valid)[ds][:, y:y + P, x:x + P]
            xs.append(cube.x[ds][:, :, y:y + P, x:x + P] * stack.unsqueeze(1))
            vs.append(stack)
            truths.append(truth_cache[i][:, y:y + P, x:x + P])
            masks.append(task.scored[y:y + P, x:x + P])
            slots.append(ds.index(task.target))
            doys.append(cube.doy[ds])
        xb, vb, doy = torch.stack(xs), torch.stack(vs), torch.stack(doys)
        days = torch.stack([torch.from_numpy(cube.days[ds]) for _, _, _, ds in batch])
        interp = temporal_linear_interpolation(xb, vb, days)
        xseen, vseen = xb.clone(), vb.clone()
        for j in range(len(batch)):
            t = slots[j]
            xseen[j, t] = torch.where(masks[j], truths[j], xb[j, t])
            vseen[j, t] = vb[j, t] | masks[j]
        fills = {
            "interp": interp,
            "hidden": decoder_mean(xb, vb, doy),
            "seen": decoder_mean(xseen, vseen, doy),
            "hidden_prior_u": decoder_mean(xb, vb, doy, hide=("u",)) if "u" in hvae.spec.site_names else None,
            "seen_prior_u": decoder_mean(xseen, vseen, doy, hide=("u",)) if "u" in hvae.spec.site_names else None,
        }
        for j in range(len(batch)):
            t, mk = slots[j], masks[j]
            tr = truths[j][:, mk] * std.view(-1, 1)
            for name, f in fills.items():
                if f is None:
                    continue
                sq[name] += float(((f[j, t][:, mk] * std.view(-1, 1) - tr) ** 2).sum())
            for name in ("hidden", "seen"):
                c = (fills[name][j, t] - interp[j, t])[:, mk] * std.view(-1, 1)
                corr_sq[name] += float((c ** 2).sum())
            n += int(mk.sum()) * tr.shape[0]
            d = per_date.setdefault(int(tasks[batch[j][0]].target), {"n": 0, "interp": 0.0, "hidden": 0.0, "seen": 0.0})
            d["n"] += int(mk.sum()) * tr.shape[0]
            for name in ("interp", "hidden", "seen"):
                d[name] += float(((fills[name][j, t][:, mk] * std.view(-1, 1) - tr) ** 2).sum())
print(json.dumps({"run": run, "items": len(items), "values": n,
                  "rmse": {k: (v / n) ** 0.5 for k, v in sq.items() if v},
                  "correction_rms": {k: (v / n) ** 0.5 for k, v in corr_sq.items()},
                  "per_date": {f"{t} (doy {int(cube.doy[t])}, valid {float(cube.valid[t].double().mean()):.2f})":
                               {k: round((d[k] / d["n"]) ** 0.5, 4) for k in ("interp", "hidden", "seen")}
                               for t, d in sorted(per_date.items())}}, indent=1))
