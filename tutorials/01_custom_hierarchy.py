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
# # 1. Declare your own latent hierarchy
#
# The HVAE of hvaeseg is built from data: a `HierarchySpec` lists the latent layers between the
# segmentation `s` (plus the global code `l`) at the top and the image `x` at the bottom, each with a
# family, a number of channels, a resolution and its parents. In this tutorial we
#
# 1. declare a hierarchy with a **categorical** layer and a **Gaussian** layer,
# 2. save it as YAML and read it back, and draw it (next to the default hierarchy),
# 3. see the errors a typo or a cycle gives,
# 4. build the `HVAE` and look at its Pyro sites and their shapes,
# 5. draw samples from the prior,
# 6. train it for a few steps of **symmetric equilibrium learning** (two players, two optimizers) on
#    patches of the built-in synthetic Sentinel-2 cube,
# 7. read the per-layer statistics (rate per layer: is any layer collapsed?), and
# 8. run a **prior predictive check** with Pyro's own `Predictive`.
#
# Set `HVAESEG_TUTORIAL_FAST=1` to run everything in a few seconds (what the tests do); figures go to
# `HVAESEG_TUTORIAL_OUT` (default `tutorials/_out`).

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive

from hvaeseg.data.loader import PatchLoader
from hvaeseg.data.sampler import PatchSampler
from hvaeseg.data.schema import class_colors, class_names
from hvaeseg.data.stats import read_band_stats
from hvaeseg.data.synthetic import make_cube
from hvaeseg.hierarchy import HVAE, HierarchySpec, ImageLayerSpec, LatentLayerSpec, NetworkSpec
from hvaeseg.objectives import LabelPool, SymmetricEquilibrium
from hvaeseg.traces import unwrap

FAST = os.environ.get("HVAESEG_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("HVAESEG_TUTORIAL_OUT", "tutorials/_out")) / "01_custom_hierarchy"
OUT.mkdir(parents=True, exist_ok=True)

STEPS = 6 if FAST else 400
PATCH = 32
BATCH = 4 if FAST else 8
pyro.set_rng_seed(0)  # seeds torch, numpy and random

# %% [markdown]
# ## Declaring the hierarchy
#
# Seven land-cover classes and ten bands (the synthetic cube's), a 4-bit global code `l`, then:
#
# - `parts`: a **categorical** layer of 2 maps with 4 categories each, at 1/4 resolution, child of `s`
#   and `l` (think "which kind of parcel part is here");
# - `texture`: a **Gaussian** layer of 4 maps at 1/2 resolution, child of `s`, `l` and `parts`
#   (reparameterised, so the ELBO can use pathwise gradients through it);
# - `x`: the image, child of `s`, `l` and `texture`.
#
# Resolutions must be levels of the guide's U-Net encoder: with three encoder widths those are
# 1, 2 and 4. `s_prior="categorical"` gives `s` a learned factorised prior, so that we can sample from
# the prior without label maps (the default `"empirical"` prior takes `s` from a label pool instead).

# %%
spec = HierarchySpec(
    num_classes=7,
    code_bits=4,
    layers=[
        LatentLayerSpec("parts", family="categorical", channels=2, categories=4, resolution=4, parents=("s", "l")),
        LatentLayerSpec("texture", family="gaussian", channels=4, resolution=2, parents=("s", "l", "parts")),
    ],
    image=ImageLayerSpec(bands=10, parents=("s", "l", "texture")),
    s_prior="categorical",
    network=NetworkSpec(encoder_widths=(16, 24, 32), encoder_depths=(1, 1, 1), decoder_width=16, decoder_depth=1),
)
print("sampling order:", spec.site_names)

# %% [markdown]
# ## YAML round trip
#
# A spec is plain data: save it next to your experiments, edit it by hand, load it back.

# %%
text = spec.to_yaml()
print(text)
assert HierarchySpec.from_yaml(text) == spec
spec.save(OUT / "hierarchy.yaml")
assert HierarchySpec.load(OUT / "hierarchy.yaml") == spec

# %% [markdown]
# ## Seeing a hierarchy
#
# `spec.draw()` draws one box per variable (name, family, channels, resolution) and one arrow per parent
# link, top to bottom by depth (matplotlib only). First the built-in default hierarchy, here in its temporal
# form: `u` is shared by the dates of a stack (thick border) and `doy`, the observed day of the year, feeds
# every layer (dashed). Then ours. From the command line: `hvaeseg spec draw hierarchy.yaml -o hierarchy.png`,
# or `hvaeseg spec draw default --classes 7 --bands 10 --temporal --day-of-year --shared-channels 4`.

# %%
default = HierarchySpec.default(7, 10, temporal=True, day_of_year=True, shared_channels=4)
default.draw().figure.savefig(OUT / "hierarchy_default.png", dpi=100)
spec.draw().figure.savefig(OUT / "hierarchy_custom.png", dpi=100)

# %% [markdown]
# ## The errors you will meet
#
# Every spec is validated when it is built, and each error names the layer and says how to fix it.
# Here are three mistakes made on purpose, starting from the dict form of our spec.


# %%
def edited(**changes):
    """The spec as a dict, with some layers' fields changed: ``edited(parts={"parents": ["s", "z9"]})``."""
    d = spec.to_dict()
    for layer in d["layers"]:
        layer.update(changes.get(layer["name"], {}))
    return d


mistakes = {
    "unknown parent": edited(parts={"parents": ["s", "tecture"]}),
    "cycle": edited(parts={"parents": ["s", "texture"]}),
    "resolution without encoder level": edited(texture={"resolution": 8}),
}
for what, d in mistakes.items():
    try:
        HierarchySpec.from_dict(d)
    except ValueError as err:
        print(f"{what:>34}: {err}")
    else:
        raise AssertionError(f"{what}: expected a ValueError")

# %% [markdown]
# ## Building the HVAE and looking at its Pyro sites
#
# `HVAE(spec)` is a `PyroModule` with a `model(x, s, valid)` and a ladder `guide(x, s, valid)`. The
# parameters split into the decoder's (theta: everything the model uses) and the encoder's (phi: what
# only the guide uses). The split is computed from traces, for any hierarchy.

# %%
hvae = HVAE(spec)
decoder_params, encoder_params = hvae.parameter_groups()
count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
print(f"decoder (theta): {count(decoder_params):,} parameters, encoder (phi): {count(encoder_params):,}")

# %% [markdown]
# Run the guide on a batch, replay the model on the guide's samples, and print every site with its
# batch and event shapes. Per the conventions: `s` is `(B, H, W)` (pixels are event dims), `l` is
# `(B, D)`, each layer `(B, C, H/r, W/r)` (the categorical layer stores category indices), `x`
# `(B, C, H, W)`.

# %%
x_demo = torch.randn(2, 10, PATCH, PATCH)
valid_demo = torch.ones(2, PATCH, PATCH, dtype=torch.bool)
with torch.no_grad():
    guide_trace = poutine.trace(hvae.guide).get_trace(x_demo, None, valid_demo)
    model_trace = poutine.trace(poutine.replay(hvae.model, trace=guide_trace)).get_trace(x_demo, None, valid_demo)
guide_trace.compute_log_prob()
model_trace.compute_log_prob()
print("guide\n" + guide_trace.format_shapes())
print("model\n" + model_trace.format_shapes())

# %% [markdown]
# ## Data: patches of the synthetic cube
#
# The `tiny` synthetic cube is a 128 x 128 pixel, 6-date Sentinel-2 scene with clouds, shadows and a
# 7-class land-cover map. A `PatchSampler` draws single-date 32 x 32 patches on which at least half
# of the pixels are clear, and flags a few labelled locations; a `PatchLoader` reads them as normalised
# tensors.

# %%
cube = make_cube("tiny", seed=0)
names, colors = class_names(cube), class_colors(cube)
sampler = PatchSampler(
    {"y": PATCH, "x": PATCH},
    mode="random",
    n_patches=64 if FAST else 512,
    n_labelled=4 if FAST else 8,
    min_valid=0.5,
    seed=0,
)
plan = sampler.plan(cube)
labelled_plan, unlabelled_plan = plan.select(labelled=True), plan.select(labelled=False)
print(f"{len(labelled_plan)} labelled patches, {len(unlabelled_plan)} unlabelled patches")
lab_loader = PatchLoader(cube, labelled_plan, batch_size=min(BATCH, len(labelled_plan)), repeat=True, workers=0, seed=0)
unl_loader = PatchLoader(cube, unlabelled_plan, batch_size=BATCH, repeat=True, workers=0, seed=1)
band_mean, band_std = (torch.tensor(v) for v in read_band_stats(cube))  # the loader stored them on the cube
RGB = [list(cube.band.values).index(b) for b in ("B04", "B03", "B02")]

# %% [markdown]
# The label pool for the sleep term of symmetric learning: the labelled maps (and their 8 dihedral
# transforms). Never the labels of the unlabelled patches.

# %%
lab_maps = next(iter(PatchLoader(cube, labelled_plan, batch_size=len(labelled_plan), workers=0))).labels
pool = LabelPool(lab_maps, dihedral=True, seed=0)
print(f"label pool: {len(pool)} (map, transform) pairs of size {pool.shape}")


# %%
def rgb(x: torch.Tensor) -> np.ndarray:
    """Normalised ``(C, H, W)`` patch -> displayable ``(H, W, 3)`` true-colour image."""
    refl = x[RGB] * band_std[RGB, None, None] + band_mean[RGB, None, None]
    return (refl * 3.5).clamp(0, 1).permute(1, 2, 0).numpy()


def label_image(s: torch.Tensor) -> np.ndarray:
    """``(H, W)`` class ids (-1 void) -> ``(H, W, 3)`` colours (void grey)."""
    table = np.array([matplotlib.colors.to_rgb(c) for c in colors] + [(0.5, 0.5, 0.5)])
    return table[np.where(s.numpy() < 0, len(colors), s.numpy())]


def plot_prior_samples(title: str, path: Path) -> None:
    """Label maps from the pool, an image drawn from p(l, z, x | s) for each, and the decoder's mean of x
    for the same draw of (l, z) (the sample is that mean plus per-band Gaussian noise)."""
    s = pool.sample(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        trace = poutine.trace(hvae.model).get_trace(None, s, None)
    x_draw, x_mean = trace.nodes["x"]["value"], unwrap(trace.nodes["x"]["fn"]).mean
    fig, axes = plt.subplots(3, 4, figsize=(8, 6.4))
    for i in range(4):
        axes[0, i].imshow(label_image(s[i]), interpolation="nearest")
        axes[1, i].imshow(rgb(x_draw[i]))
        axes[2, i].imshow(rgb(x_mean[i]))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("s (label pool)")
    axes[1, 0].set_ylabel("x ~ p(x | s, l, z)")
    axes[2, 0].set_ylabel("E[x | s, l, z]")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# %% [markdown]
# ## Prior samples of the untrained model
#
# `sample_prior` draws `(s, l, parts, texture, x)` top-down. Our learned `s` prior is factorised over
# pixels, so unconditional draws of `s` are salt-and-pepper noise; the interesting part is the rest of
# the model given a plausible map. So we draw `s` from the label pool (as the sleep term of symmetric
# learning does) and `l, parts, texture, x` from the model. Untrained, the last convolution of every
# decoder block is zero-initialised, so `x` ignores `s`.

# %%
unconditional = hvae.sample_prior(n=2, size=PATCH)
print({site: tuple(v.shape) for site, v in unconditional.items()})
plot_prior_samples("samples from the untrained model", OUT / "prior_untrained.png")

# %% [markdown]
# ## Symmetric equilibrium learning, two players
#
# `SymmetricEquilibrium.differentiable_loss` returns a `(decoder_loss, encoder_loss)` pair of tensors
# (`.loss` the same pair as numbers, as Pyro's verbs go). The decoder (theta)
# descends the first, the encoder (phi) the second, each with **its own optimizer on its own
# parameters**. The encoder loss also depends on theta (the ladder guide reuses the decoder's prior
# logits), so we take each player's gradient with respect to its own parameters only.

# %%
objective = SymmetricEquilibrium()
opt_decoder = torch.optim.Adam(decoder_params, lr=1e-3)
opt_encoder = torch.optim.Adam(encoder_params, lr=1e-3)
players = ((opt_decoder, decoder_params), (opt_encoder, encoder_params))
history = []
lab_iter, unl_iter = iter(lab_loader), iter(unl_loader)
for step in range(STEPS):
    labelled, unlabelled = next(lab_iter), next(unl_iter)
    losses = objective.differentiable_loss(hvae.model, hvae.guide, labelled=labelled, unlabelled=unlabelled,
                                           pool=pool.sample(BATCH))
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
             for loss, (_, params) in zip(losses, players)]
    for (opt, params), gs in zip(players, grads):
        for p, g in zip(params, gs):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, 100.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    history.append([float(v.detach()) for v in losses])
    if step % max(1, STEPS // 8) == 0 or step == STEPS - 1:
        print(f"step {step:4d}  decoder loss {history[-1][0]:10.1f}  encoder loss {history[-1][1]:10.1f}")

# %%
h = np.array(history)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, col, name in zip(axes, h.T, ("decoder loss  -L_p", "encoder loss  -L_q")):
    ax.plot(col)
    ax.set_title(name)
    ax.set_xlabel("step")
fig.tight_layout()
fig.savefig(OUT / "losses.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## After training
#
# Samples again (the decoder now paints each class with its own spectrum and texture), and the
# per-layer statistics on a batch of real patches:
# `kl` is the rate of each layer in nats per image, `kl_per_dim` per latent variable and `active`
# the share of latent variables whose KL exceeds 0.01 nats. A layer with `active` near 0 has collapsed
# onto its prior and carries no information about the image.

# %%
plot_prior_samples(f"samples after {STEPS} steps", OUT / "prior_trained.png")
batch = next(unl_iter)
stats = hvae.layer_statistics(batch.x, batch.valid)
print(f"{'site':>8} {'kl':>10} {'kl/dim':>8} {'active':>7}")
for site, st in stats.items():
    if "kl" in st:
        print(f"{site:>8} {st['kl']:10.2f} {st['kl_per_dim']:8.4f} {st['active']:7.2f}")
    else:
        print(f"{site:>8} entropy {st['entropy']:.2f}")

# %%
sites = [k for k, v in stats.items() if "kl" in v]
fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(sites, [max(stats[k]["kl"], 1e-3) for k in sites], color="tab:blue")
ax.set_ylabel("KL(q || p), nats per image")
ax.set_yscale("log")
ax.set_title("rate per layer")
fig.tight_layout()
fig.savefig(OUT / "layer_rates.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## A prior predictive check with `Predictive`
#
# The model and guide are plain Pyro programs, so Pyro's own tools apply (see "Pyro inference" in
# `docs/conventions.md`). `Predictive(hvae.model, num_samples=n)` runs the model `n` times with nothing
# observed: every site, `s` included, comes from the prior, each with a leading `num_samples` dim. Does the
# model, before seeing any image, generate images whose bands have the spread of real ones (the inputs are
# normalised, so about mean 0 and standard deviation 1 per band)?
#
# Generated standard deviations well below the data's mean the model is too sure of itself (after the few
# steps of the fast mode it is); means far off mean its bands are biased.
#
# Our `s` prior is learned and factorised, so it can be sampled. With the default, *empirical* prior,
# attach the label pool first, `hvae.attach_label_pool(pool)`, and `s` is drawn from its maps (crops of them,
# void pixels drawn from the class frequencies). With a guide, `Predictive(hvae.model, guide=hvae.guide,
# num_samples=n)(x, None, valid)` gives posterior samples instead.

# %%
n_draws = 4 if FAST else 32
with torch.no_grad():
    prior_predictive = Predictive(hvae.model, num_samples=n_draws)(None, None, None, shape=(BATCH, PATCH, PATCH))
print({site: tuple(v.shape) for site, v in prior_predictive.items()})
x_prior = prior_predictive["x"].flatten(0, 1)  # (n_draws * BATCH, C, H, W)
real = [next(unl_iter) for _ in range(2 if FAST else 8)]
x_real = torch.cat([b.x for b in real]).movedim(1, 0)[:, torch.cat([b.valid for b in real])]  # (C, valid pixels)
band_stats = {
    "data": (x_real.mean(1), x_real.std(1)),
    "prior predictive": (x_prior.movedim(1, 0).flatten(1).mean(1), x_prior.movedim(1, 0).flatten(1).std(1)),
}
bands = list(cube.band.values)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharex=True)
for k, (what, (mean, std)) in enumerate(band_stats.items()):
    pos = np.arange(len(bands)) + (k - 0.5) * 0.38
    axes[0].bar(pos, mean.numpy(), 0.38, label=what)
    axes[1].bar(pos, std.numpy(), 0.38, label=what)
for ax, title in zip(axes, ("mean per band", "standard deviation per band")):
    ax.set_xticks(np.arange(len(bands)), bands, rotation=45)
    ax.set_title(title)
axes[0].legend()
fig.suptitle(f"prior predictive check after {STEPS} steps (normalised reflectance)")
fig.tight_layout()
fig.savefig(OUT / "prior_predictive.png", dpi=100)
plt.close(fig)
print("figures in", OUT)
