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

import numpy as np

from enflens import data
from enflens.data import lensing
from enflens.study import figures, stages
from enflens.study.results import save_results, savefig

CLASSES = lensing.CLASS_NAMES

# %% [markdown]
# ## The recipes
#
# All three DeepLenseSim recipes share the physics (Alexander et al. 2020 and its code
# mwt5345/DeepLenseSim; `docs/references.md` §2):
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
#    $m^{-0.9}$; we follow the code. The published code also draws a
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
fig = figures.class_samples(train.images, train.labels, train.params["m_a"],
                            min(N_SHOW, len(train) // 3), half, CLASSES)  # fmt: skip
fig.suptitle(f'{RECIPE}: training samples ({2 * half:.1f}" field)')
savefig(fig, "01_lensing_data_samples")

# %% [markdown]
# The same three draws (train samples 0, 1, 2 of seed `DATA_SEED`) rendered with each recipe:
# the instrument sets resolution, field of view and noise.

# %%
sims = {name: lensing.Simulator(name) for name in lensing.RECIPE_NAMES}
panels = {name: [lensing.normalise(sim.sample(DATA_SEED, 0, label)[0])[0] for label in range(3)]
          for name, sim in sims.items()}  # fmt: skip
fovs = {name: sim.recipe.half_fov for name, sim in sims.items()}
savefig(figures.recipe_panel(panels, fovs, CLASSES), "01_lensing_data_recipes")

# %% [markdown]
# ## Noise-free and noisy
#
# Every stored sample carries its full lenstronomy description: `sample_params` rebuilds the
# lens and source keyword arguments, the band settings and the noise seed, and
# `lensing.render` re-renders it (any lenstronomy user can do the same with `ImageModel`).

# %%
first = [int(np.flatnonzero(train.labels == label)[0]) for label in range(3)]
descr = [data.sample_params(path, "train", i) for i in first]
clean = [lensing.render(p, noise=False) for p in descr]
noisy = [lensing.render(p, noise=True) for p in descr]
for i, n in zip(first, noisy, strict=True):
    assert np.array_equal(lensing.normalise(n)[0], train.images[i])  # exact re-render
snr = [c.max() / np.std((n - c)[:8, :8]) for c, n in zip(clean, noisy, strict=True)]
titles = [f"{CLASSES[k]} (peak S/N {snr[k]:.0f})" for k in range(3)]
savefig(figures.noise_panel(clean, noisy, half, titles), "01_lensing_data_noise")

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
pix = lensing.get_recipe(RECIPE).pixel_scale
vortex = np.where(train.params["vortex_half_length"] < 0.8 * half,
                  train.params["vortex_half_length"], 0)  # fmt: skip
examples = {1: int(np.flatnonzero(train.labels == 1)[0]), 2: int(np.nanargmax(vortex))}
rows = [(CLASSES[label], train.images[i],
         lensing.substructure_deflection(data.sample_params(path, "train", i), diff=pix / 2))
        for label, i in examples.items()]  # fmt: skip
savefig(figures.lens_maps(rows, half), "01_lensing_data_lens_maps")

# %% [markdown]
# ## Class statistics
#
# The parameter draws alone are cheap, so we look at `N_STATS` per class: the total CDM
# subhalo mass (dominated by the few heaviest subhalos of the shallow $m^{-0.9}$ mass function)
# and the vortex length against the axion mass. Light axions make long vortices, up to 6″,
# longer than the Model II field; heavy ones a 0.06″ dot.

# %%
stats = lensing.class_statistics(RECIPE, DATA_SEED, N_STATS)
m_total = stats["cdm_total_mass"]
fig = figures.class_stats(stats, train.image_scale, train.labels, axion_mass=lensing.AXION_MASS,
                          field_width=2 * half, ring_diameter=2 * theta_e, class_names=CLASSES)
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
fig = figures.class_means(train.images, train.labels, half, CLASSES)
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
