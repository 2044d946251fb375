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
# # 2. Symmetric learning vs. the semi-supervised ELBO
#
# Same hierarchy, same data, same labelled subset, same number of steps; only the objective differs:
#
# - **symmetric** equilibrium learning: two players, the decoder maximises log p at posterior samples
#   (wake), the encoder maximises log q at samples of the model generated from label-pool maps (sleep)
#   plus log q(s|x) on the labelled patches. A quarter of the sleep maps (`sleep_relabel=0.25`) have their
#   classes shuffled by a random map of the classes, so that a class no labelled location holds (water in
#   the synthetic cube at 10 labels) still reaches the encoder; wake and sleep then find it like a mixture
#   model finds a cluster;
# - **elbo**: one optimizer on all parameters, the semi-supervised ELBO with straight-through gradients
#   through the discrete latents and a classifier term `alpha * log q(s|x)`.
#
# We train both with `hvaeseg.experiment` (the code behind `hvaeseg train` / `hvaeseg evaluate`), then
# compare segmentation accuracy and mean IoU on the held-out test blocks, the IWAE bound on log p(x),
# and encoder-decoder consistency (s -> x~ ~ p(x|s) -> argmax q(s|x~), agreement with s).
#
# `HVAESEG_TUTORIAL_FAST=1` runs a few steps on the tiny cube; the full mode trains on the `small`
# synthetic cube for a few minutes.

# %%
import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from hvaeseg.data.sampler import SpatialSplit
from hvaeseg.data.schema import class_colors, class_names
from hvaeseg.experiment import RunConfig, evaluate_run, load_run, train_run
from hvaeseg.hierarchy import HVAE, HierarchySpec
from hvaeseg.objectives import LabelPool, SymmetricEquilibrium, SymmetricStepper
from hvaeseg.predict import predict_cube

FAST = os.environ.get("HVAESEG_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("HVAESEG_TUTORIAL_OUT", "tutorials/_out")) / "02_elbo_vs_symmetric"
OUT.mkdir(parents=True, exist_ok=True)
METHODS = ("symmetric", "elbo")

# %% [markdown]
# ## The two objectives in Pyro's shape
#
# Before training with the command-line machinery, here are both objectives on one small HVAE, each stepped
# the way Pyro users step a model. The ELBO is Pyro's own `SVI` with `Trace_ELBO` (score-function gradients
# for the discrete latents); symmetric learning has two players, each with its own loss, parameters and
# optimizer, so `SymmetricStepper.step` updates both and returns both losses, as `SVI.step` returns the
# pair of Pyro's `ReweightedWakeSleep`.

# %%
pyro.set_rng_seed(0)
K, BANDS, SIZE = 3, 4, 16
spec = HierarchySpec.default(K, BANDS, 4, channels=2, encoder_widths=(8, 8, 8), decoder_width=8)
x, valid = torch.randn(4, BANDS, SIZE, SIZE), torch.ones(4, SIZE, SIZE, dtype=torch.bool)
s = torch.randint(0, K, (4, SIZE, SIZE))

elbo_model = HVAE(spec)
svi = SVI(elbo_model.model, elbo_model.guide, Adam({"lr": 1e-3}), Trace_ELBO())
print("SVI + Trace_ELBO, loss per step:", [round(svi.step(x, s, valid)) for _ in range(3)])

sym_model = HVAE(spec)
decoder, encoder = sym_model.parameter_groups()
stepper = SymmetricStepper(
    sym_model.model, sym_model.guide, SymmetricEquilibrium(sleep_relabel=0.25, num_classes=K),
    decoder=(decoder, torch.optim.Adam(decoder, lr=1e-3)), encoder=(encoder, torch.optim.Adam(encoder, lr=1e-3)),
)
pool = LabelPool(s)
print("SymmetricStepper, (decoder, encoder) loss per step:",
      [tuple(round(v) for v in stepper.step(labelled=(x, s, valid), unlabelled=(x, valid), pool=pool.sample(4)))
       for _ in range(3)])

# %% [markdown]
# ## One configuration, two methods
#
# Everything that defines a run is a `RunConfig`; `data_seed` fixes the cube, the spatial split into
# train / validation / test blocks and the labelled locations, so both methods see the same data.
# `labels` counts labelled 32 x 32 locations; every clear enough date of such a location is a labelled
# patch. Method hyper-parameters go in `options`, the fields of `hvaeseg.methods.HVAEConfig`: for
# example `options={"lr": 3e-4, "alpha": 10.0, "estimator": "score_function"}`, or
# `options={"spec": spec.to_dict()}` to train the hierarchy you declared in tutorial 1 (its classes and
# bands must match the data). Both methods here use the defaults: the default hierarchy with a learned
# categorical prior on `s` (the ELBO needs its density; it also lets us report the IWAE bound for both).

# %%
common = dict(
    data="synthetic:tiny" if FAST else "synthetic:small",
    labels=4 if FAST else 16,
    steps=10 if FAST else 400,
    batch_size=4 if FAST else 8,
    patch_size=32,
    block=32 if FAST else 64,
    unlabelled_patches=64 if FAST else 2048,
    val_every=5 if FAST else 50,
    checkpoint_every=5 if FAST else 100,
    seed=0,
    data_seed=0,
)
IWAE_SAMPLES = 4 if FAST else 16
configs = {m: RunConfig(method=m, **common) for m in METHODS}
print(configs["symmetric"].to_json())

# %% [markdown]
# ## Training
#
# Each run folder gets `config.json`, the patch plans, `checkpoint.pt`, `best.pt` (best validation
# mean IoU) and `history.json`. `train_run` resumes a folder that holds the same configuration; we
# start from scratch.

# %%
runs = {m: OUT / "runs" / m for m in METHODS}
for m in METHODS:
    shutil.rmtree(runs[m], ignore_errors=True)
    trainer = train_run(configs[m], runs[m])
    h = trainer.history
    print(f"{m:>10}: {trainer.step} steps in {h.train_seconds:.0f} s, best validation mIoU "
          f"{h.best_score:.3f} at step {h.best_step}")

# %% [markdown]
# ## Loss curves and validation from `history.json`
#
# The two objectives are on different scales (and symmetric learning has two losses, one per player),
# so each gets its own panel; the right panel is what we actually care about, validation mean IoU.

# %%
histories = {m: json.loads((runs[m] / "history.json").read_text()) for m in METHODS}
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for m, ax in zip(METHODS, axes[:2]):
    steps = [r["step"] for r in histories[m]["losses"]]
    for key in histories[m]["losses"][0]:
        if key != "step":
            ax.plot(steps, [r[key] for r in histories[m]["losses"]], label=key)
    ax.set_title(f"{m}: training losses")
    ax.set_xlabel("step")
    ax.legend()
for m in METHODS:
    val = histories[m]["validation"]
    axes[2].plot([r["step"] for r in val], [r["mean_iou"] for r in val], marker="o", label=m)
axes[2].set_title("validation mean IoU")
axes[2].set_xlabel("step")
axes[2].legend()
fig.tight_layout()
fig.savefig(OUT / "losses.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## Test metrics
#
# `evaluate_run` loads `best.pt` and reports on the test blocks: pixel accuracy and mean IoU (void
# excluded), the IWAE bound with k samples in nats per observed value (per-image bounds summed over
# valid pixels x bands; higher is better), consistency, and the reconstruction error of the decoder
# mean at a posterior sample (normalised units).

# %%
results = {m: evaluate_run(runs[m], "test", iwae_samples=IWAE_SAMPLES) for m in METHODS}
rows = [
    ("accuracy", "accuracy"),
    ("mean IoU", "mean_iou"),
    (f"IWAE (k={IWAE_SAMPLES}), nats/value", "iwae_nats_per_value"),
    ("consistency", "consistency"),
    ("reconstruction MAE", "recon_mae"),
]
header = f"test split ({results['symmetric']['patches']} patches)"
print(f"{header:<30}" + "".join(f"{m:>12}" for m in METHODS))
for name, key in rows:
    print(f"{name:<30}" + "".join(f"{results[m][key]:12.3f}" for m in METHODS))

# %% [markdown]
# What to look for (in the full mode; the fast mode's numbers are noise):
#
# - accuracy and mean IoU come out close: both objectives train the same U-Net head q(s|x) on the same
#   labelled patches, and the unlabelled patches help each in its own way;
# - the **IWAE bound** favours the ELBO, which maximises a bound on log p(x) directly;
# - **consistency** is where they differ most: the sleep term of symmetric learning trains the encoder
#   on the decoder's own samples, so q(s|x~) recognises the classes the decoder drew, while the ELBO
#   never asks the encoder to invert the decoder's samples.
#
# One seed and a few hundred steps are an illustration, not a benchmark: for a claim, repeat with
# several `RunConfig.seed` values (the data and labelled subset stay fixed by `data_seed`) and report
# the mean and spread.

# %%
fig, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3))
for ax, (name, key) in zip(axes, rows):
    values = [results[m][key] for m in METHODS]
    ax.bar(METHODS, values, color=["tab:blue", "tab:orange"])
    ax.set_title(name, fontsize=9)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "metrics.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## Maps
#
# Predict the whole scene with each trained model (`hvaeseg.predict.predict_cube` tiles the cube,
# predicts every date and averages the probabilities over the dates where a pixel is clear) and put
# the maps next to the truth. The test blocks, never seen in training, are outlined in white.

# %%
config, data, _ = load_run(runs["symmetric"])
cube = data.cube  # the synthetic cube, in memory (a store path for real data)
names, colors = class_names(cube), class_colors(cube)
cmap = matplotlib.colors.ListedColormap(colors)
split = SpatialSplit(block={"y": config.block, "x": config.block},
                     fractions=dict(zip(("train", "val", "test"), config.fractions)), seed=config.data_seed)
test_blocks = split.blocks({"y": cube.sizes["y"], "x": cube.sizes["x"]}, "test")

maps = {"truth": np.ma.masked_less(cube["labels"].values, 0)}
for m in METHODS:
    cfg, dat, method = load_run(runs[m])
    pred = predict_cube(method.predict_proba, dat.cube, dat.num_classes, patch_size=cfg.patch_size)
    maps[m] = pred["class_map"].values
    acc = float((maps[m] == maps["truth"]).mean())
    print(f"{m}: whole-scene pixel agreement with the truth {acc:.3f} (train, validation and test blocks)")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
for ax, (title, image) in zip(axes, maps.items()):
    ax.imshow(image, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    for y0, y1, x0, x1 in test_blocks:
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.2))
    ax.set_title(title)
    ax.set_axis_off()
handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in zip(names, colors)]
fig.legend(handles=handles, loc="lower center", ncol=len(names), fontsize=8)
fig.tight_layout(rect=(0, 0.07, 1, 0.96))
fig.savefig(OUT / "maps.png", dpi=100)
plt.close(fig)
print("figures in", OUT)
