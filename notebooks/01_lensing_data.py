# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (enflens)
#     language: python
#     name: enflens
# ---

# %% [markdown]
# # 01 · Strong-lensing images with and without dark-matter substructure
#
# A massive galaxy bends the light of a galaxy far behind it. When source, lens and observer
# are nearly aligned the source appears as arcs or a full **Einstein ring**. A light ray seen
# at angle $\theta$ on the sky left the source at
#
# $$\beta = \theta - \alpha(\theta),$$
#
# the *lens equation*, with $\alpha$ the deflection caused by all the mass in the lens plane.
# The ring radius, the **Einstein radius**, of a point mass $M$ is
# $\theta_E = \sqrt{\tfrac{4GM}{c^2}\,\tfrac{D_{LS}}{D_L D_S}}$.
#
# Small dark-matter clumps inside the lens add small deflections and leave faint, local
# distortions on the arcs. What the clumps look like depends on what dark matter is. This
# project learns to tell three cases apart (the DeepLenseSim classes):
#
# | label | class | substructure |
# |---|---|---|
# | 0 | `no_sub` | none: smooth lens only |
# | 1 | `cdm` | cold dark matter: 25 point-mass subhalos, masses $10^6$–$10^{10}\,M_\odot$ |
# | 2 | `axion` | ultra-light axion DM: a *vortex*, a line of mass (longer for lighter $m_a$) |
#
# The simulator is `enflens.data.lensing` (built on
# [lenstronomy](https://github.com/lenstronomy/lenstronomy), the engine DeepLenseSim uses), the
# dataset store `enflens.data`. This notebook shows what the data look like and builds the
# study dataset the later notebooks read.

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"  # model_i | model_ii | model_iii
N_TRAIN = 3000  # training images per class
N_VAL = 300  # validation images per class
N_TEST = 1000  # test images per class
DATA_SEED = 0
WORKERS = 2  # simulation processes (the images do not depend on it)
N_SHOW = 6  # samples per class in the sample grid
N_STATS = 3000  # parameter draws per class for the class statistics

# %%
import json

import matplotlib.pyplot as plt
import numpy as np

from enflens import data
from enflens.data import lensing
from enflens.study import stages
from enflens.study.results import save_results, savefig

CLASSES = lensing.CLASS_NAMES

# %% [markdown]
# ## The recipes
#
# All three DeepLenseSim recipes share the physics (see `RECIPES.md`, section 2):
#
# - **lens**: a singular isothermal ellipsoid (SIE) of $10^{12}\,M_\odot$ at $z=0.5$,
#   ellipticity $e_1=0.1, e_2=0$, plus external shear $\gamma_1=0.05$;
# - **source**: an elliptical Sérsic galaxy at $z=1$ ($R=0.25''$, $n=1$, $e_1=-0.1$, $e_2=0.1$)
#   whose centre is uniform in $[-0.35'', 0.35'']^2$;
# - **cdm**: 25 point masses with $dN/dm \propto m^{-0.9}$ on $[10^6, 10^{10}]\,M_\odot$, at
#   radius uniform in $[0.25'', 2'']$ and a uniform angle;
# - **axion**: $3\times10^{10}\,M_\odot$ in 100 equal point masses, evenly spaced on a line
#   through the lens centre at a random angle, half-length $0.03''\,(10^{-22}\,\mathrm{eV}/m_a)$
#   with $\log_{10}(m_a/\mathrm{eV}) \sim U[-24, -22]$.
#
# They differ in the instrument:
#
# | recipe | pixels | ″/px | instrument | source |
# |---|---|---|---|---|
# | `model_i` | 150² | 0.05 | PSF 0.087″, bkg rms 0.01, $t=10^{U(3,3.5)}$ s, Poisson | amp 20 |
# | `model_ii` | 64² | 0.101 | lenstronomy `ObservationConfig.Euclid` VIS, 6-yr coadd | mag 20 |
# | `model_iii` | 64² | 0.08 | lenstronomy `ObservationConfig.HST` WFC3 F160W | mag 20 |
#
# The band settings below are the ones this lenstronomy version actually uses (they change
# between versions, so every dataset file records them).

# %%
for name in lensing.RECIPE_NAMES:
    r = lensing.get_recipe(name)
    print(f'{name:10s} {r.num_pix}x{r.num_pix} px, field {2 * r.half_fov:.2f}"  {r.title}')
    print(f"{'':10s} kwargs_band = {json.dumps(r.kwargs_band, sort_keys=True)}")
theta_e = float(lensing.einstein_radius(lensing.MAIN_HALO_MASS))
print(f"main-halo Einstein radius: {theta_e:.3f} arcsec")

# %% [markdown]
# ### Where this project departs from the published code, and why
#
# We rewrote the recipes from their description rather than copying the code, and chose to
# differ where the published code has a defect or an ambiguity:
#
# 1. **Noise.** The published Model II helper (`simple_sim_2`) computes a noise map but
#    stores `image_model + image_model`: twice the noise-free image. We add lenstronomy's
#    `noise_for_model` realisation (background + Poisson) once, from a stored seed.
# 2. **Model I noise.** The published `simple_sim` adds Poisson noise twice (a Gaussian
#    approximation, then a Poisson draw of the sum, in counts). We add lenstronomy's noise
#    once, in counts per second, with the same background rms 0.01 and exposure times.
# 3. **`hst`.** The published head code silently ignores the instrument name `'hst'` (the image
#    then has no instrument); a later copy maps it to WFC3 F160W. `model_iii` uses WFC3 F160W.
# 4. **Distances.** The Einstein radius keeps the published *luminosity-distance* formula
#    (1.28″ for $10^{12}\,M_\odot$; angular-diameter distances, the textbook choice, would
#    give 1.66″), so the ring has the published size. But the published Model II/III also hand
#    lenstronomy a redshift list with `z_source_convention=2.5` and the source at $z=1$, which
#    makes lenstronomy treat every $\theta_E$ as valid for a source at $z=2.5$ and shrink all
#    deflections (computed below). We ray-trace in a single plane, so the stated $\theta_E$ is
#    the ring radius.
# 5. **Subhalo mass function.** The docstring says $dN/dm \propto m^{-1.9}$, the code uses
#    $m^{-0.9}$; we follow the code (and `RECIPES.md`). The published code also draws a
#    Poisson number of subhalos and then ignores it; we use exactly 25.
# 6. **Randomness.** The published scripts use the global NumPy generator. Here sample $i$ of
#    a split draws from `default_rng([seed, split, i])`, so any sample can be regenerated alone
#    and the result does not depend on the number of processes.
# 7. **Normalisation.** Images are divided by their own maximum after clipping negative
#    (noise) pixels to 0, so they lie in $[0, 1]$; the maximum is stored per image.
#
# Numerics follow the published settings: no supersampling (factor 1), Gaussian PSF.

# %%
scale = lensing.published_deflection_scale()
print(
    f"published multi-plane set-up scales every deflection by {scale:.3f}: "
    f'effective Einstein radius {scale * theta_e:.2f}" instead of {theta_e:.2f}"'
)

# %% [markdown]
# ## The study dataset
#
# The later notebooks train on `RECIPE` with `N_TRAIN`/`N_VAL`/`N_TEST` images **per class**
# (labels interleaved: sample $i$ has label $i \bmod 3$). The file's name carries a hash of
# these parameters (`enflens.study.stages.dataset`), so a rerun with the same parameters
# reuses it and any change regenerates it.

# %%
ds = stages.dataset(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED, workers=WORKERS)
path, splits, reused = ds.path, ds.splits, ds.cached
attrs = splits["train"].attrs
print(f"{'reused' if reused else 'wrote'} {path.name}")
for s, d in splits.items():
    print(f"  {s:5s} {d.images.shape}  per class {np.bincount(d.labels, minlength=3).tolist()}")
print(
    f"simulation: {attrs['images_per_second']:.0f} images/s with {attrs['workers']} workers "
    f"(lenstronomy {attrs['lenstronomy_version']})"
)

# %% [markdown]
# ## What the classes look like
#
# Each row one class, from the training split (shown with `origin="lower"`: $x$ to the right,
# $y$ up, the convention of `enflens.grid`). The differences are subtle; that is the point.

# %%
train = splits["train"]
half = lensing.get_recipe(RECIPE).half_fov
extent = (-half, half, -half, half)
n_show = min(N_SHOW, len(train) // 3)
fig, axes = plt.subplots(3, n_show, figsize=(1.9 * n_show, 6.0), squeeze=False)
for label in range(3):
    idx = np.flatnonzero(train.labels == label)[:n_show]
    for ax, i in zip(axes[label], idx, strict=True):
        ax.imshow(train.images[i], origin="lower", cmap="magma", extent=extent)
        ax.set_xticks([])
        ax.set_yticks([])
        if label == 2:
            ax.set_title(f"m_a={train.params['m_a'][i]:.1e}", fontsize=7)
    axes[label, 0].set_ylabel(CLASSES[label])
fig.suptitle(f'{RECIPE}: training samples ({2 * half:.1f}" field)')
savefig(fig, "01_lensing_data_samples")

# %% [markdown]
# The same three draws (train samples 0, 1, 2 of seed `DATA_SEED`) rendered with each recipe:
# the instrument sets resolution, field of view and noise.

# %%
fig, axes = plt.subplots(3, 3, figsize=(7.5, 7.5))
for col, name in enumerate(lensing.RECIPE_NAMES):
    sim = lensing.Simulator(name)
    h = sim.recipe.half_fov
    for label in range(3):
        raw, _ = sim.sample(DATA_SEED, 0, label)
        img, _ = lensing.normalise(raw)
        ax = axes[label, col]
        ax.imshow(img, origin="lower", cmap="magma", extent=(-h, h, -h, h))
        ax.set_xticks([])
        ax.set_yticks([])
        if label == 0:
            ax.set_title(name)
        if col == 0:
            ax.set_ylabel(CLASSES[label])
savefig(fig, "01_lensing_data_recipes")

# %% [markdown]
# ## Noise-free and noisy
#
# Every stored sample carries its full lenstronomy description: `sample_params` rebuilds the
# lens and source keyword arguments, the band settings and the noise seed, and
# `lensing.render` re-renders it (any lenstronomy user can do the same with `ImageModel`).

# %%
fig, axes = plt.subplots(3, 3, figsize=(7.5, 7.5))
for label in range(3):
    i = int(np.flatnonzero(train.labels == label)[0])
    p = data.sample_params(path, "train", i)
    clean = lensing.render(p, noise=False)
    noisy = lensing.render(p, noise=True)
    assert np.array_equal(lensing.normalise(noisy)[0], train.images[i])  # exact re-render
    snr = clean.max() / np.std((noisy - clean)[:8, :8])  # peak over background noise
    lim = np.abs(noisy - clean).max()
    axes[0, label].imshow(clean, origin="lower", cmap="magma", extent=extent)
    axes[1, label].imshow(noisy, origin="lower", cmap="magma", extent=extent)
    axes[2, label].imshow(noisy - clean, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
    for ax in axes[:, label]:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, label].set_title(f"{CLASSES[label]} (peak S/N {snr:.0f})")
axes[0, 0].set_ylabel("noise-free")
axes[1, 0].set_ylabel("noisy (stored)")
axes[2, 0].set_ylabel("noise")
savefig(fig, "01_lensing_data_noise")

# %% [markdown]
# ## Convergence and deflection
#
# The convergence $\kappa$ (surface density in units of the critical density) and the
# deflection $\alpha$ come from lenstronomy's `LensModel.kappa` and `LensModel.alpha`. A point
# mass has a delta-function $\kappa$; taking the derivatives by finite differences over half a
# pixel turns $\kappa$ into the mass per pixel, so each subhalo shows as one bright pixel and
# the vortex as a line. The right column shows the deflection the substructure adds to the
# smooth lens, $|\alpha - \alpha_\mathrm{SIE+shear}|$. The axion example is the training
# sample with the longest vortex that still fits in the field.


# %%
def macro_only(p):
    return {**p, "lens_model_list": p["lens_model_list"][:2], "kwargs_lens": p["kwargs_lens"][:2]}


pix = lensing.get_recipe(RECIPE).pixel_scale
fig, axes = plt.subplots(2, 3, figsize=(10, 6.3), layout="constrained")
vortex = np.where(
    train.params["vortex_half_length"] < 0.8 * half, train.params["vortex_half_length"], 0
)
examples = {1: int(np.flatnonzero(train.labels == 1)[0]), 2: int(np.nanargmax(vortex))}
for row, (label, i) in enumerate(examples.items()):
    p = data.sample_params(path, "train", i)
    maps, macro = lensing.lens_maps(p, diff=pix / 2), lensing.lens_maps(macro_only(p))
    dalpha = np.hypot(maps["alpha_x"] - macro["alpha_x"], maps["alpha_y"] - macro["alpha_y"])
    panels = [
        (train.images[i], "image", "magma"),
        (np.log10(np.clip(maps["kappa"], 1e-3, None)), "log10 kappa", "viridis"),
        (np.log10(np.clip(dalpha, 1e-5, None)), "log10 |extra deflection| (arcsec)", "cividis"),
    ]
    for ax, (img, title, cmap) in zip(axes[row], panels, strict=True):
        im = ax.imshow(img, origin="lower", cmap=cmap, extent=extent)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(f"{CLASSES[label]}: {title}", fontsize=9)
savefig(fig, "01_lensing_data_lens_maps")

# %% [markdown]
# ## Class statistics
#
# The parameter draws alone are cheap, so we look at `N_STATS` per class: the total CDM
# subhalo mass (dominated by the few heaviest subhalos of the shallow $m^{-0.9}$ mass function)
# and the vortex length against the axion mass. Light axions make long vortices, up to 6″,
# longer than the Model II field; heavy ones a 0.06″ dot.

# %%
rng_draws = [lensing.sample_rng(DATA_SEED, 9, i) for i in range(N_STATS)]
cdm = [lensing.draw_sample(RECIPE, 1, g) for g in rng_draws]
ax_draws = [lensing.draw_sample(RECIPE, 2, g) for g in rng_draws]
m_total = np.array([d.sub_mass.sum() for d in cdm])
m_a = np.array([d.m_a for d in ax_draws])
length = 2 * np.array([d.vortex_half_length for d in ax_draws])

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
axes[0].hist(np.log10(m_total), bins=40, color="tab:blue")
axes[0].axvline(np.log10(lensing.AXION_MASS), color="tab:red", ls="--", label="vortex mass")
axes[0].set_xlabel("log10 total CDM subhalo mass (Msun)")
axes[0].legend()
axes[1].loglog(m_a, length, ".", ms=2, color="tab:red")
axes[1].axhline(2 * half, color="k", ls=":", label=f"{RECIPE} field width")
axes[1].axhline(2 * theta_e, color="tab:gray", ls="--", label="Einstein ring diameter")
axes[1].set_xlabel("m_a (eV)")
axes[1].set_ylabel("vortex length (arcsec)")
axes[1].legend()
for label in range(3):
    axes[2].hist(
        train.image_scale[train.labels == label], bins=20, histtype="step", label=CLASSES[label]
    )
axes[2].set_xlabel("raw image maximum (e-/s)")
axes[2].legend()
savefig(fig, "01_lensing_data_class_stats")
print(
    f"total CDM mass: median {np.median(m_total):.2e} Msun "
    f"(5-95%: {np.percentile(m_total, 5):.2e} - {np.percentile(m_total, 95):.2e}); "
    f"vortex: {lensing.AXION_MASS:.0e} Msun"
)

# %% [markdown]
# The mean image per class and its difference from the `no_sub` mean. Part of the difference
# is the random source position (noisy for small sets), part is physical: the substructure adds
# mass (a few per cent of the main halo, the vortex close to the centre), which changes the
# ring radius slightly. A classifier can use that cue as well as the local distortions.

# %%
means = [train.images[train.labels == k].mean(0) for k in range(3)]
fig, axes = plt.subplots(1, 5, figsize=(15, 3), layout="constrained")
for k in range(3):
    axes[k].imshow(means[k], origin="lower", cmap="magma", extent=extent)
    axes[k].set_title(f"mean {CLASSES[k]}")
lim = max(np.abs(means[k] - means[0]).max() for k in (1, 2))
for j, k in enumerate((1, 2)):
    im = axes[3 + j].imshow(
        means[k] - means[0], origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent
    )
    axes[3 + j].set_title(f"{CLASSES[k]} - no_sub")
fig.colorbar(im, ax=axes[3:], shrink=0.8)
savefig(fig, "01_lensing_data_class_means")

# %% [markdown]
# ## Results

# %%
results = {
    "recipe": RECIPE,
    "dataset": path.name,
    "reused_cached_dataset": reused,
    "n_images": {s: len(d) for s, d in splits.items()},
    "n_per_class": json.loads(attrs["n_per_class"]),
    "sim_images_per_second": float(attrs["images_per_second"]),
    "sim_workers": int(attrs["workers"]),
    "generation_seconds": float(attrs["generation_seconds"]),
    "sha256": {s: attrs[f"sha256_{s}"] for s in data.SPLITS},
    "kwargs_band": json.loads(attrs["kwargs_band"]),
    "lenstronomy_version": attrs["lenstronomy_version"],
    "einstein_radius_arcsec": theta_e,
    "published_deflection_scale": scale,
    "cdm_total_mass_median_msun": float(np.median(m_total)),
}
print(save_results("01_lensing_data", PROFILE, results))
print(json.dumps(results, indent=1))
