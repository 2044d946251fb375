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
# # 3. Filling clouds by sampling the posterior
#
# The HVAE is a generative model of the image given the segmentation, so it can fill pixels it did not
# see: sample `(s, l, z) ~ q(. | visible pixels)` from the guide, then `x ~ p(x | s, l, z)` from the
# decoder, keep the observed pixels and fill the occluded ones. Several samples give a posterior mean
# and a per-pixel spread, i.e. gap-filling **with uncertainty**.
#
# The synthetic cube knows the truth under its clouds (`clean_reflectance`), so we can score the
# filled pixels, and compare with the standard gap-filling baseline: linear interpolation in time
# between the nearest clear dates of each pixel.
#
# `HVAESEG_TUTORIAL_FAST=1` trains for a few steps only (the numbers are then meaningless); the full
# mode trains for a few minutes. Rerunning the notebook reuses the trained run folder.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch

from hvaeseg.data.loader import day_of_year
from hvaeseg.data.stats import dn_scaling, ensure_band_stats
from hvaeseg.experiment import RunConfig, load_run, train_run
from hvaeseg.inpaint import posterior_inpaint, temporal_linear_interpolation
from hvaeseg.metrics import inpainting_errors

FAST = os.environ.get("HVAESEG_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("HVAESEG_TUTORIAL_OUT", "tutorials/_out")) / "03_posterior_inpainting"
OUT.mkdir(parents=True, exist_ok=True)
NUM_SAMPLES = 4 if FAST else 16

# %% [markdown]
# ## A model
#
# Symmetric learning of the default hierarchy on 32 x 32 single-date patches of the `tiny` cube. The
# training patches include partly cloudy ones: the likelihood of `x` counts the clear pixels only and
# the guide sees `(x * valid, valid)`, which is exactly the situation of inpainting.

# %%
config = RunConfig(
    method="symmetric",
    data="synthetic:tiny",
    labels=4 if FAST else 8,
    steps=10 if FAST else 500,
    batch_size=4 if FAST else 8,
    patch_size=32,
    block=32,
    unlabelled_patches=64 if FAST else 1024,
    val_every=10 if FAST else 200,
    checkpoint_every=10 if FAST else 200,
)
run = OUT / ("run_fast" if FAST else "run")
trainer = train_run(config, run)  # on a rerun it finds this config finished and only loads it
print(f"trained {trainer.step} steps")
config, data, method = load_run(run)
hvae = method.hvae
pyro.set_rng_seed(0)

# %% [markdown]
# ## The cube as a batch of dates
#
# The networks are convolutional, so the whole 128 x 128 scene goes through at once, one image per
# date. We normalise the reflectance the way the loader does, `(reflectance - band_mean) / band_std`.

# %%
cube = data.cube
scale, offset = dn_scaling(cube["reflectance"].attrs, cube["reflectance"].dtype)
band_mean, band_std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in ensure_band_stats(cube))


def reflectance(name: str) -> torch.Tensor:
    """``(T, C, H, W)`` float32 reflectance of a DN variable."""
    return torch.from_numpy(cube[name].values.astype(np.float32)) * scale + offset


observed = reflectance("reflectance")  # with clouds, shadows, cirrus, snow
truth = reflectance("clean_reflectance")  # the land surface alone
valid = torch.from_numpy(cube["valid"].values)  # (T, H, W)
doy = torch.from_numpy(day_of_year(cube["time"].values))  # (T,) day of the year of each date: the model takes it
x = (observed - band_mean) / band_std
clear = valid.float().mean((1, 2))
print("clear share per date:", " ".join(f"{c:.2f}" for c in clear))

# %% [markdown]
# We score the cloud-covered pixels of the **partly cloudy** dates: a date with (almost) nothing
# clear leaves a single-date model nothing to condition on (interpolation in time still works there;
# see the last table).

# %%
partly = (clear > 0.05) & (clear < 1)
mask = ~valid & partly.view(-1, 1, 1)
print(f"{int(partly.sum())} partly cloudy dates, {int(mask.sum())} occluded pixels to fill")

# %% [markdown]
# ## Posterior inpainting
#
# `posterior_inpaint` returns the mean and the per-pixel standard deviation over `NUM_SAMPLES`
# samples, and the samples; observed pixels come back unchanged (std 0). Two flavours:
#
# - sampling `x` itself: the spread is the full predictive uncertainty (latents *and* pixel noise);
# - `decoder_mean=True`: each sample is the decoder's mean given one posterior sample of `(s, l, z)`, so
#   the average has less Monte Carlo noise and the spread is the uncertainty of the latents alone.
#
# Conditioning on the land-cover map (`s=labels`: the guide keeps those classes) shows what the model
# gains when it knows the classes under the clouds.

# %%
_, std, _ = posterior_inpaint(hvae, x, valid, NUM_SAMPLES, doy=doy)
mean, latent_std, _ = posterior_inpaint(hvae, x, valid, NUM_SAMPLES, decoder_mean=True, doy=doy)
labels = torch.from_numpy(cube["labels"].values.astype(np.int64)).expand(len(x), -1, -1)
mean_s, _, _ = posterior_inpaint(hvae, x, valid, NUM_SAMPLES, s=labels, decoder_mean=True, doy=doy)
to_refl = lambda z: z * band_std + band_mean  # noqa: E731
hvae_fill, hvae_fill_s = to_refl(mean), to_refl(mean_s)
hvae_std, hvae_latent_std = std * band_std, latent_std * band_std
occluded = ~valid.unsqueeze(1).expand_as(hvae_std)
print(f"mean std on occluded pixels: predictive {float(hvae_std[occluded].mean()):.4f}, "
      f"latents only {float(hvae_latent_std[occluded].mean()):.4f} (reflectance)")

# %% [markdown]
# ## The baseline: linear interpolation in time
#
# Each occluded pixel takes the linear interpolation between its nearest clear dates before and after
# (the nearest one when there is a clear date on one side only), with the real acquisition days.

# %%
days = torch.from_numpy((cube.time.values - cube.time.values[0]) / np.timedelta64(1, "D")).float()
interp = temporal_linear_interpolation(observed[None], valid[None], days)[0]

# %% [markdown]
# ## Scores on the occluded pixels
#
# In reflectance units (PSNR and SSIM with a data range of 1).

# %%
candidates = {
    "posterior mean": hvae_fill,
    "posterior mean | labels": hvae_fill_s,
    "temporal interpolation": interp,
}
scores = {name: inpainting_errors(pred, truth, mask) for name, pred in candidates.items()}
keys = ("mae", "rmse", "psnr", "ssim", "spectral_angle_deg")
print(f"{'':<26}" + "".join(f"{k:>20}" for k in keys))
for name, sc in scores.items():
    print(f"{name:<26}" + "".join(f"{sc[k]:20.4f}" for k in keys))

# %% [markdown]
# Is the spread of the posterior informative? Where the model is unsure, it should be wrong more
# often: the error of the posterior mean, binned by the latent spread (`decoder_mean=True`: the pixel
# noise is the same everywhere, the latents' uncertainty is not).

# %%
err = (hvae_fill - truth).abs().mean(1)[mask]
spread = hvae_latent_std.mean(1)[mask]
edges = torch.quantile(spread, torch.linspace(0, 1, 6))
which = torch.bucketize(spread, edges[1:-1])
binned = [(float(spread[which == b].mean()), float(err[which == b].mean())) for b in range(5) if (which == b).any()]
for s_, e_ in binned:
    print(f"latent spread {s_:.4f} -> mean absolute error {e_:.4f}")

# %% [markdown]
# ## Pictures
#
# For the partly cloudy date whose occluded share is closest to one half: what the sensor saw, the
# posterior mean without and with the land-cover map, the truth, the interpolation, and the latent
# spread (std over samples of the decoder mean, averaged over bands; zero where observed). The
# occluded pixels (clouds, cirrus, shadows) are outlined in magenta.

# %%
RGB = [list(cube.band.values).index(b) for b in ("B04", "B03", "B02")]


def rgb(img: torch.Tensor) -> np.ndarray:
    return (img[RGB] * 3.5).clamp(0, 1).permute(1, 2, 0).numpy()


t = int(torch.where(partly, (clear - 0.5).abs(), torch.tensor(2.0)).argmin())
panels = [
    ("observed", rgb(observed[t])),
    ("posterior mean", rgb(hvae_fill[t])),
    ("posterior mean | labels", rgb(hvae_fill_s[t])),
    ("truth (clean reflectance)", rgb(truth[t])),
    ("temporal interpolation", rgb(interp[t])),
]
fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
for ax, (title, image) in zip(axes.flat, panels):
    ax.imshow(image)
    ax.contour(~valid[t].numpy(), levels=[0.5], colors="magenta", linewidths=0.6)
    ax.set_title(title)
im = axes[1, 2].imshow(hvae_latent_std[t].mean(0).numpy(), cmap="viridis")
axes[1, 2].set_title("latent spread (reflectance)")
fig.colorbar(im, ax=axes[1, 2], fraction=0.046)
for ax in axes.flat:
    ax.set_axis_off()
fig.suptitle(f"date {str(cube.time.values[t])[:10]}, {100 * (1 - float(clear[t])):.0f}% occluded")
fig.tight_layout()
fig.savefig(OUT / "inpainting.png", dpi=100)
plt.close(fig)

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
names = list(scores)
for ax, key in zip(axes, ("mae", "psnr", "spectral_angle_deg")):
    ax.bar(range(len(names)), [scores[n][key] for n in names], color=["tab:blue", "tab:cyan", "tab:orange"])
    ax.set_xticks(range(len(names)), [n.replace(" | ", "\n| ") for n in names], fontsize=7)
    ax.set_title(key)
fig.tight_layout()
fig.savefig(OUT / "scores.png", dpi=100)
plt.close(fig)

fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(*zip(*binned), marker="o")
ax.set_xlabel("latent spread: std of the decoder mean")
ax.set_ylabel("absolute error (reflectance)")
ax.set_title("calibration of the spread")
fig.tight_layout()
fig.savefig(OUT / "calibration.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## Every occluded pixel, per date
#
# The interpolation also fills dates that are almost entirely covered; a single-date model has to
# guess there from its prior.

# %%
for t_ in range(len(x)):
    m = ~valid[t_ : t_ + 1]
    if m.any():
        a = inpainting_errors(hvae_fill[t_ : t_ + 1], truth[t_ : t_ + 1], m)["mae"]
        b = inpainting_errors(interp[t_ : t_ + 1], truth[t_ : t_ + 1], m)["mae"]
        print(f"date {t_}: {100 * (1 - float(clear[t_])):5.1f}% occluded, MAE posterior {a:.4f}, interpolation {b:.4f}")
print("figures in", OUT)

# %% [markdown]
# What to look for (full mode): under a large cloud a **single-date** model only has the visible
# pixels of that date, so the classes under the cloud are a guess and the posterior mean falls back to
# an average spectrum; the interpolation in time, which sees the clear dates before and after, is hard
# to beat there. Given the land-cover map the model paints each parcel with its class's spectrum and
# closes much of the gap. Its advantage is elsewhere: it needs no other date, and its spread says
# where it is unsure. A temporal hierarchy (`HierarchySpec(..., temporal=True)`, trained on stacks with
# `RunConfig(dates=T)`) conditions on all dates at once.
