# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Filling clouds with a temporal HVAE, from the command line
#
# The HVAE is a generative model of the image given the segmentation, so it can fill pixels it did not
# see: sample the latents from the guide given the visible pixels, then the image from the decoder, keep
# the observed pixels and fill the occluded ones. Several samples give a posterior mean **and** a
# per-pixel spread: gap-filling with uncertainty.
#
# This notebook does it the way you would on your own cube, with the `hvaeseg` command line:
#
# 1. `hvaeseg data synth`: a synthetic Sentinel-2 cube that knows the truth under its clouds
#    (`clean_reflectance`);
# 2. `hvaeseg train --dates 4`: a **temporal** model, trained on stacks of 4 dates;
# 3. `hvaeseg inpaint`: fill every cloudy pixel by posterior sampling, and by linear interpolation in
#    time (the standard baseline) for comparison;
# 4. `hvaeseg data quicklook --compare`: one date before and after;
#
# and then, in Python, opens the filled stores with xarray, scores them against the truth and checks the
# calibration of the posterior's intervals.
#
# Every command runs here through `subprocess` (`python -m hvaeseg ...` is the `hvaeseg` command); in a
# terminal, type what the notebook prints after `$`. `HVAESEG_TUTORIAL_FAST=1` uses the `tiny` cube and
# trains for a few steps (the numbers are then meaningless); the full mode trains for 3 minutes on the
# `small` cube. Rerunning the notebook reuses the trained run and the filled stores.

# %%
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from hvaeseg.calibrate_cube import cube_spread_factor
from hvaeseg.data.schema import decoded_reflectance
from hvaeseg.data.stats import compute_band_stats
from hvaeseg.data.store import open_cube
from hvaeseg.experiment import load_run
from hvaeseg.inpaint_cube import inpaint_cube
from hvaeseg.metrics import error_vs_spread, inpainting_errors, interval_coverage

FAST = os.environ.get("HVAESEG_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("HVAESEG_TUTORIAL_OUT", "tutorials/_out")) / "03_posterior_inpainting"
OUT.mkdir(parents=True, exist_ok=True)
PRESET = "tiny" if FAST else "small"  # tiny: 128 x 128 pixels, 6 dates; small: 512 x 512, 12 dates
TAG = "fast" if FAST else "full"
CUBE, RUN = OUT / f"cube_{PRESET}.zarr", OUT / f"run_{TAG}"
FILLED, INTERP = OUT / f"filled_{TAG}.zarr", OUT / f"interp_{TAG}.zarr"
SAMPLES = 4 if FAST else 8  # posterior samples per pixel of `hvaeseg inpaint`


def hvaeseg(*args: object) -> None:
    """Run ``hvaeseg ARGS`` (as ``python -m hvaeseg``, the same program) and fail loudly if it fails.

    The command gets as many threads as this notebook (``OMP_NUM_THREADS``, unless already set)."""
    args = [str(a) for a in args]
    print("$ hvaeseg " + shlex.join(args), flush=True)
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), **os.environ}
    subprocess.run([sys.executable, "-m", "hvaeseg", *args], check=True, env=env)


# %% [markdown]
# ## The cube
#
# `--data synthetic:small` generates the built-in synthetic cube in memory (seeded by `--data-seed`,
# 0 by default). `hvaeseg data synth` writes the same cube to a Zarr store, which the commands that read a
# store (`inpaint --data`, `quicklook`) open. Besides `reflectance` (with clouds, shadows, cirrus and
# snow) and `valid` (the clear pixels), it holds `clean_reflectance`, the land surface alone: the truth
# we score against.

# %%
if not CUBE.exists():
    hvaeseg("data", "synth", "--preset", PRESET, "--seed", 0, CUBE)
cube = open_cube(CUBE)
valid = cube["valid"].values  # (time, y, x) bool
clear = valid.mean((1, 2))
print(dict(cube.sizes))
print("clear share per date:", " ".join(f"{c:.2f}" for c in clear))

# %% [markdown]
# ## Training a temporal model
#
# With `--dates 4` every training patch is a **stack of 4 dates** of the same 32 x 32 pixels (dates at
# least half clear there, `--min-valid`), and the default hierarchy becomes its temporal version (next
# section). Symmetric learning (`--method symmetric`) uses 10 labelled locations (`--labels 10`) and
# every unlabelled stack; `--time-budget` stops it after that many seconds of training. The run folder
# holds the configuration, the checkpoints and the training history; the same command on an existing
# folder resumes it (here it is skipped once the run has its best checkpoint).

# %%
if FAST:  # a few steps on small batches: only to check that everything runs
    budget = ["--steps", 4, "--batch-size", 2, "--unlabelled-patches", 32, "--val-every", 4, "--block", 32]
else:  # 3 minutes of training (the step count is only a ceiling)
    budget = ["--steps", 100000, "--time-budget", 180]
if not (RUN / "best.pt").exists():
    hvaeseg("train", "--method", "symmetric", "--data", f"synthetic:{PRESET}", "--dates", 4,
            "--labels", 4 if FAST else 10, "--patch-size", 32, *budget, "--out", RUN)
history = json.loads((RUN / "history.json").read_text())
print(f"trained {history['validation'][-1]['step'] if history['validation'] else 0} steps in "
      f"{history['train_seconds']:.0f} s; best validation mean IoU {history['best_score']:.3f}")

# %% [markdown]
# ## The temporal hierarchy
#
# A single-date HVAE explains one image by a segmentation `s`, a global code `l` and Bernoulli feature
# maps `z1` (1/4 resolution) and `z2` (1/2) above the image `x`. The temporal version explains a stack of
# `T` dates of the same place:
#
# - `s` (the land cover) is drawn **once per stack**: a field does not change class between dates;
# - `u` is a per-pixel Gaussian map (4 channels, full resolution, parent `s`), also **shared by the
#   dates**: each pixel's own departure from its class's spectrum, the same on every date. It is what
#   carries a pixel's clear dates to its cloudy ones;
# - `l`, `z1`, `z2` and `x` have **one value per date**; `z1`, `z2` and `x` also take the day of the year
#   `doy` (observed, not sampled) as a parent: the phenology, the same crop greener in June than in March.
#
# Filling an occluded pixel of one date therefore uses its class (seen on every date of the stack), its
# `u` (seen on the clear dates) and the date's season. The run's own hierarchy, drawn (on the command
# line: `hvaeseg spec draw default --classes K --bands 10 --temporal --day-of-year --shared-channels 4`):

# %%
config, data, method = load_run(RUN)
hvae = method.hvae
spec = hvae.spec
for layer in spec.layers:
    print(f"{layer.name}: {layer.family}, {layer.channels} channels at 1/{layer.resolution}, "
          f"parents {', '.join(layer.parents)}{', shared by the dates' if layer.shared else ', per date'}")
print(f"x: {spec.image.bands} bands, parents {', '.join(spec.image.parents)}")
ax = spec.draw()
ax.figure.savefig(OUT / "hierarchy.png", dpi=90)

# %% [markdown]
# ## Filling the cube
#
# `hvaeseg inpaint RUN --data CUBE --out FILLED.zarr --samples K` fills every invalid pixel of every date.
# For each date `t` and each 32 x 32 tile, the model sees a stack of 4 dates: `t` and the 3 dates nearest
# in time that are at least half clear in that tile (`--window nearest`); it draws `K` posterior samples
# of the latents from the whole stack and runs the decoder on date `t` (a hierarchy with `image.transfer`
# fills 64 x 64 tiles by default, so that each pixel's borrowing window fits: `--patch-size` overrides).
# The filled store is the input cube with `reflectance` filled (same
# encoding), plus `std` (the spread of the samples, reflectance units, 0 where observed) and `filled`
# (the mask of filled pixels). `--method interpolation` needs no run: each occluded pixel takes the
# linear interpolation in time between its nearest clear dates before and after.

# %%
if not FILLED.exists():
    hvaeseg("inpaint", RUN, "--data", CUBE, "--out", FILLED, "--samples", SAMPLES)
if not INTERP.exists():
    hvaeseg("inpaint", "--method", "interpolation", "--data", CUBE, "--out", INTERP)

# %% [markdown]
# Both are ordinary cubes: open them with xarray (`open_cube` is `xarray.open_zarr` plus a schema check).

# %%
filled, interp = open_cube(FILLED), open_cube(INTERP)
print(filled.data_vars)
print({k: v for k, v in filled.attrs.items() if k.startswith("inpaint_")})

# %% [markdown]
# ## Before and after
#
# `hvaeseg data quicklook CUBE --compare FILLED.zarr` draws one date before and after: the input RGB, the
# filled RGB, the `filled` mask and the posterior std. We pick the date whose occluded share is closest to
# one half.

# %%
t = int(np.argmin(np.where((clear > 0) & (clear < 1), np.abs(clear - 0.5), np.inf)))
day = str(cube.time.values[t])[:10]
hvaeseg("data", "quicklook", CUBE, "--compare", FILLED, "--date", t, "--dpi", 60, "-o",
        OUT / "quicklook.png")

# %% [markdown]
# The same date next to the interpolation and the truth, in reflectance (`decoded_reflectance`: DN times
# `scale_factor` plus `add_offset`). The occluded pixels are outlined in magenta.

# %%
RGB = ["B04", "B03", "B02"]


def rgb(ds, var: str = "reflectance") -> np.ndarray:
    """True-colour image of date ``t``: ``(y, x, 3)`` in [0, 1]."""
    refl = decoded_reflectance(ds.isel(time=t).sel(band=RGB), var).transpose("y", "x", "band").values
    return np.clip(np.nan_to_num(refl) * 3.5, 0, 1)


hole = filled["filled"].isel(time=t).values
panels = [("observed", rgb(cube)), ("posterior mean (hvaeseg inpaint)", rgb(filled)),
          ("linear interpolation in time", rgb(interp)), ("truth (clean_reflectance)", rgb(cube, "clean_reflectance"))]
fig, axes = plt.subplots(2, 3, figsize=(9.6, 6.8))
for a, (title, image) in zip(axes.flat, panels):
    a.imshow(image)
    a.contour(hole, levels=[0.5], colors="magenta", linewidths=0.6)
    a.set_title(title)
im = axes.flat[4].imshow(filled["std"].isel(time=t).sel(band=RGB).mean("band").values, cmap="viridis")
axes.flat[4].set_title("posterior std (RGB mean, reflectance)")
fig.colorbar(im, ax=axes.flat[4], fraction=0.046)
axes.flat[5].imshow(hole, cmap="gray")
axes.flat[5].set_title("filled (white)")
for a in axes.flat:
    a.set_axis_off()
fig.suptitle(f"{day}: {100 * hole.mean():.0f}% of the pixels filled")
fig.tight_layout()
fig.savefig(OUT / "inpainting.png", dpi=60)
plt.close(fig)

# %% [markdown]
# ## Scores against the truth
#
# On the filled pixels only (`filled`, every date), in reflectance: mean absolute error, PSNR (data
# range 1), SSIM and spectral angle (`hvaeseg.metrics.inpainting_errors`).


# %%
def reflectance(ds, var: str = "reflectance") -> torch.Tensor:
    """``(time, band, y, x)`` float32 reflectance."""
    return torch.from_numpy(decoded_reflectance(ds, var).transpose("time", "band", "y", "x").values)


truth = reflectance(cube, "clean_reflectance")
mask = torch.from_numpy(filled["filled"].transpose("time", "y", "x").values)
fills = {"temporal posterior": reflectance(filled), "interpolation": reflectance(interp)}
scores = {name: inpainting_errors(pred, truth, mask) for name, pred in fills.items()}
keys = ("mae", "rmse", "psnr", "ssim", "spectral_angle_deg")
print(f"{'':<20}" + "".join(f"{k:>20}" for k in keys))
for name, sc in scores.items():
    print(f"{name:<20}" + "".join(f"{sc[k]:20.4f}" for k in keys))

# %% [markdown]
# Per date: the interpolation has a clear date on each side of most gaps; the posterior sees 3 other
# dates of the tile, and its class and `u` maps.

# %%
dates = [i for i in range(len(clear)) if mask[i].any()]
per_date = {name: [inpainting_errors(pred[i:i + 1], truth[i:i + 1], mask[i:i + 1])["mae"] for i in dates]
            for name, pred in fills.items()}
for j, i in enumerate(dates):
    print(f"{str(cube.time.values[i])[:10]}: {100 * (1 - clear[i]):5.1f}% filled, MAE "
          + ", ".join(f"{name} {per_date[name][j]:.4f}" for name in fills))

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
colors = {"temporal posterior": "tab:blue", "interpolation": "tab:orange"}
for a, key in zip(axes[:2], ("mae", "psnr")):
    a.bar(range(len(fills)), [scores[n][key] for n in fills], color=list(colors.values()))
    a.set_xticks(range(len(fills)), list(fills), fontsize=8)
    a.set_title(f"{key} on the filled pixels")
for name in fills:
    axes[2].plot([100 * (1 - clear[i]) for i in dates], per_date[name], "o", color=colors[name], label=name)
axes[2].set_xlabel("share of the date filled (%)")
axes[2].set_ylabel("MAE")
axes[2].set_title("per date")
axes[2].legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "scores.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## Are the posterior's intervals calibrated?
#
# A central 90% interval of the posterior should hold the truth 90% of the time. The filled store keeps
# the mean and std of the samples, not the samples; `inpaint_cube` (the function behind the command) with
# `num_samples=1` and seed `k` returns one sample per pixel, so `N_DRAWS` seeds give `N_DRAWS` samples
# (19 are enough for a 90% interval: `hvaeseg.metrics.interval_coverage`). To save time we draw them on
# the top-left 128 x 128 pixels (the same tiles as the whole cube's). As a cheaper check on the whole cube,
# the Gaussian interval `mean +- z std` from the store's own `std`.
#
# Intervals that are too narrow (or too wide) can be corrected by one factor on the spread, fitted on the cube
# itself: `hvaeseg inpaint --recalibrate` pastes the masks of the cube's partly cloudy dates on its clear dates,
# fills the clear pixels it hid, and finds the factor whose 90% sample intervals hold 90% of them
# (`hvaeseg.calibrate_cube.cube_spread_factor`; the filled values are unchanged, `std` is multiplied by it). The
# third curve is the whole cube's Gaussian intervals with the recalibrated `std`.

# %%
N_DRAWS = 4 if FAST else 19
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95)
# the model normalises each band by the statistics of the whole cube (the crop's own would differ)
band_mean, band_std = compute_band_stats(cube)
crop = cube.isel(y=slice(0, 128), x=slice(0, 128)).assign_attrs(band_mean=band_mean, band_std=band_std)
draws = torch.stack([
    reflectance(inpaint_cube(crop, hvae=hvae, patch_size=config.patch_size, dates=config.dates, num_samples=1,
                             seed=k, progress=False))
    for k in range(N_DRAWS)
])
crop_mask = mask[:, :128, :128]
sampled = interval_coverage(draws, truth[:, :, :128, :128], crop_mask, LEVELS)
mean, std = fills["temporal posterior"], torch.from_numpy(filled["std"].transpose("time", "band", "y", "x").values)
band_mask = mask.unsqueeze(1).expand_as(truth)
z = (truth - mean)[band_mask].abs() / std[band_mask].clamp_min(1e-6)
normal = torch.distributions.Normal(0.0, 1.0)
gaussian = {a: float((z <= normal.icdf(torch.tensor((1 + a) / 2))).double().mean()) for a in LEVELS}
calibration = cube_spread_factor(cube, hvae=hvae, patch_size=config.patch_size, dates=config.dates,
                                 num_samples=8 if FAST else 32, max_tiles=8 if FAST else 64)
print(calibration)
recalibrated = {a: float((z <= calibration.factor * normal.icdf(torch.tensor((1 + a) / 2))).double().mean())
                for a in LEVELS}
for a in LEVELS:
    print(f"{a:.0%} interval: holds the truth {sampled[a]:.3f} ({N_DRAWS} samples, crop), "
          f"{gaussian[a]:.3f} (mean +- z std, whole cube), {recalibrated[a]:.3f} (recalibrated std)")
spread = error_vs_spread(mean, std, truth, mask, bins=8)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
axes[0].plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--", label="calibrated")
axes[0].plot(LEVELS, [sampled[a] for a in LEVELS], "o-", label=f"sample intervals ({N_DRAWS} draws, crop)")
axes[0].plot(LEVELS, [gaussian[a] for a in LEVELS], "s-", label="mean +- z std (whole cube)")
axes[0].plot(LEVELS, [recalibrated[a] for a in LEVELS], "^-", label=f"std x {calibration.factor:.2f} (recalibrated)")
axes[0].set_xlabel("nominal coverage of the central interval")
axes[0].set_ylabel("observed coverage")
axes[0].set_title("interval coverage")
axes[0].legend(fontsize=8)
top = max(spread["std"] + spread["rmse"])
axes[1].plot([0, top], [0, top], color="gray", lw=0.8, ls="--")
axes[1].plot(spread["std"], spread["rmse"], "o-")
axes[1].set_xlabel("posterior std (bins of equal count)")
axes[1].set_ylabel("RMSE of the posterior mean")
axes[1].set_title("error against spread")
fig.tight_layout()
fig.savefig(OUT / "calibration.png", dpi=80)
plt.close(fig)
print("figures in", OUT)

# %% [markdown]
# ## What to expect
#
# This notebook's numbers come from one short run and differ from run to run. The benchmark
# (`bench/results/inpaint/`: symmetric learning, 4-date stacks, 3 seeds) measured:
#
# | PSNR | `synthetic:small` (truth under real clouds) | WorldCereal site (pasted masks) |
# |---|---|---|
# | interpolation, each pixel's full series | 32.72 dB | 24.52 ± 0.17 dB |
# | interpolation inside the model's 4-date window | 32.66 dB | 26.60 ± 0.12 dB |
# | this notebook's model (default temporal hierarchy, 240 s) | 25.79 ± 0.74 dB | 24.05 ± 1.53 dB |
# | `interp` hierarchy without transfer + `wake_holdout`, 480 steps | 31.33 ± 0.44 dB | 27.80 ± 0.20 dB |
# | no model: window interpolation + transferred residual (`window-transfer`) | 34.32 dB | 30.22 ± 0.45 dB |
# | `temporal_interp.yaml` (`image.transfer`) + `wake_holdout`, 480 steps, 32 px | 34.34 ± 0.03 dB | 30.97 ± 0.50 dB |
# | the same runs filled at 64-px tiles (`hvaeseg inpaint`'s default for it) | 34.61 ± 0.03 dB | 31.74 ± 0.32 dB |
# | its 90% interval coverage at 64 px | 0.678 | 0.879 |
# | `temporal_interp_seen.yaml` (`transfer.seen`, pixel scale), 90% coverage with `--recalibrate` | 0.941 | 0.916 |
#
# So, honestly: the model of this notebook **does not beat** linear interpolation. A hierarchy whose image
# takes the `interp` covariate (`examples/specs/temporal_interp.yaml`: the decoder predicts a correction to
# each date's interpolation from the stack's other clear dates, by season, with no latent layer) does, once
# the covariate also borrows space (`image.transfer`: the interpolation's residual on the same date at nearby
# clear pixels of the same field). Trained with `wake_holdout` and filled at 64-px tiles, it is 7.2 dB above
# the full-series interpolation on the real site (0.7 dB above its own covariate) and 1.9 dB above it on the
# synthetic cube, where all of the gain is the covariate's (`bench/results/inpaint/transfer/`).
# What the posterior does give is **uncertainty that tracks its error**: its std is larger where its
# error is (right panel), which a deterministic interpolation cannot tell you. On the real site the
# benchmark's 90% intervals hold 0.88 of the hidden values; on the synthetic cube the transfer design's hold
# only 0.68 (its error runs at about 2.3 times its spread); a short run such as this notebook's can be
# over-confident (its 90% intervals held about 0.65 in the full mode run of
# 2026-12-02: left panel). The spread factor above corrects the level it is fitted for: with the `seen`
# design, `hvaeseg inpaint --recalibrate` brings the benchmark's 90% intervals to 0.94 (synthetic) and 0.92
# (real site); the other levels move with it (on synthetic the 50% intervals then hold 0.70).
