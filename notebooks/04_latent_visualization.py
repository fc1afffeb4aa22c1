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
# # 04 · What the latents look like
#
# Notebook 03 turned every lensing image into a latent point cloud
# $z = \{(p_i, \theta_i, c_i, s_i)\}_{i=1}^N$: a pose (position $p_i$ in $[-1,1]^2$ and
# orientation $\theta_i$), a context vector $c_i$ and a Gaussian window width $s_i$. Unlike a
# CNF's global vector, these live *in the image*: each latent describes the field near its
# position, in a frame turned by its orientation. This notebook looks at them:
#
# 1. the clouds drawn over their images, for each class;
# 2. how the latents move during the $K$ inner steps of the fit;
# 3. what happens to them when the image is rotated and fitted again, with the measured
#    **pose error**;
# 4. the context vectors in two dimensions (PCA, t-SNE), coloured by class;
# 5. rotation-invariant summaries of the clouds per class: what an invariant classifier can use.
#
# Drawing convention (`enflens.viz`): images with `origin="lower"` on $[-1, 1]^2$ ($x$ right,
# $y$ up), a latent as a dot at $p_i$, an arrow along $(\cos\theta_i, \sin\theta_i)$ and a circle
# of radius $s_i$.

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"
N_TRAIN = 3000  # training images per class (common profile parameters: locate the dataset)
N_VAL = 300
N_TEST = 1000
DATA_SEED = 0
WORKERS = 2  # unused here (common profile parameter)
SEED = 0  # image choice and rotation angles
N_SHOW = 3  # images per class drawn with their latents
N_EMBED = 1500  # training images in the PCA / t-SNE maps
TSNE_PERPLEXITY = 30.0
N_POSE = 64  # validation images of the pose-error statistics (at most the encoding batch size)

# %%
import json
import time

import jax
import numpy as np

from enflens import data
from enflens.data import lensing
from enflens.evaluate import equivariance, latents
from enflens.fields import adapters
from enflens.metalearn import encode
from enflens.metalearn.latent_store import read_latent_store
from enflens.study import classifiers as study_clf
from enflens.study import figures, stages
from enflens.study.results import repo_path, save_results, savefig

t_notebook = time.perf_counter()
CLASS_COLORS = ["tab:green", "tab:red", "tab:purple"]

# %% [markdown]
# ## Inputs
#
# The ENF decoder and its latent stores are the ones notebook 03 recorded in its results file;
# each store is checked against the decoder's content hash. One coordinate unit is half the
# image width: $32$ pixels, i.e. $32 \times 0.101'' \approx 3.2''$ for Model II.

# %%
ds_path = stages.dataset_path(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED)[0]
meta03 = study_clf.read_meta_learning(repo_path("results", PROFILE, "03_meta_learning.json"))
adapter, params, dec_meta = adapters.load_trained(meta03.decoders["enf"])
stores = {
    s: read_latent_store(p, expected_hash=dec_meta["hash"], expected_kind="enf")
    for s, p in meta03.latent_stores["enf"].items()
}
val = data.load(ds_path, "val", recipe=RECIPE)
assert np.array_equal(stores["val"].labels, val.labels)
CLASSES = val.class_names
settings = study_clf.encoding_settings(meta03.latent_stores["enf"]["val"])
BS = int(stores["val"].attrs.get("batch_size", 64))  # images per encoding call
K = settings["steps"]
H = val.images.shape[1]
PX = H / 2  # pixels per coordinate unit
ARCSEC = lensing.get_recipe(RECIPE).pixel_scale  # arcsec per pixel
lat_val = stores["val"].latents
print(f"decoder {meta03.decoders['enf'].name}: {json.dumps(adapter.model_config)}")
print(f"encoding: {settings}, batch {BS}; val store {lat_val.positions.shape[0]} clouds of "
      f"{lat_val.num_latents} latents, context dim {lat_val.context_dim}")  # fmt: skip

# %% [markdown]
# ## The clouds over their images
#
# `N_SHOW` validation images per class with their stored latents (title: the PSNR of the fit).
# Every fit starts from the same two rings of latents about the lens centre, rotated into the
# image's own frame (notebook 03); the inner steps then move each latent towards the light it
# explains.

# %%
fig = figures.latent_clouds(val.images, val.labels, lat_val, stores["val"].psnr, N_SHOW, CLASSES)
savefig(fig, "04_latent_visualization_clouds")

# %% [markdown]
# ## How the latents move during the fit
#
# The fit of the first encoding batch again, keeping every inner step (same keys and pixel
# subsets as the encoding, so step $K$ *is* the stored latent, checked below). Lines: the path
# of each latent from its start (open circle) to its fitted position (dot).
#
# `equivariance.latent_motion` measures, over the first `N_POSE` validation images with the
# encoding settings, the median displacement of a latent over the $K$ steps and the PSNR of the
# same fit with the poses frozen at their start: if the poses carried no information, freezing
# them would cost nothing.

# %%
batch = encode.pad_batch(val.images[: min(BS, len(val))], BS)
key0 = jax.random.fold_in(jax.random.PRNGKey(settings["seed"]), 0)
fit_kw = {"steps": K, "pixels": settings["pixels"], "sampling": settings["sampling"]}
path_lat, path_rec = encode.fit_path(adapter, params, batch, key=key0, **fit_kw)
nb = min(BS, len(val))
err = np.abs(path_lat.positions[-1, :nb] - lat_val.positions[:nb]).max()
assert err < 1e-4, f"refit differs from the stored latents by {err}"
savefig(figures.inner_paths(batch[:nb], val.labels[:nb], path_lat, path_rec, CLASSES),
        "04_latent_visualization_inner_steps")  # fmt: skip
n_pose = min(N_POSE, len(val))
motion = equivariance.latent_motion(adapter, params, val.images[:n_pose], batch_size=BS,
                                    seed=settings["seed"], **fit_kw)  # fmt: skip
print(json.dumps(motion, indent=1))

# %% [markdown]
# ## Rotate the image, fit again: do the latents rotate with it?
#
# For an image $I$ with fitted latents $z$ and a rotation $g$ by a random continuous angle, the
# equivariant ENF decodes the rotated latents $g z$ (positions $R p_i$, orientations
# $\theta_i + a$) into exactly the rotated field. The decoder is exactly equivariant, so the
# whole fit is equivariant if and only if its *start* is: each inner step maps $g z_k$ to
# $g z_{k+1}$ because the loss of the rotated image at rotated latents is the loss of the
# original at the original latents. A start shared by all images breaks this; the start
# rotated into the image's frame (`enflens.fields.frame`: the angle of the intensity-weighted
# dipole moment about the lens centre, the quadrupole axis when the dipole is weak) restores it.
#
# `equivariance.end_to_end_summary` fits `N_POSE` validation images and their rotations (one
# random continuous angle each, **all pixels**, so that pixel subsets do not add noise) and
# compares the refit with $g z$: the median pose error (px, degrees), the median relative error
# of the contexts and the PSNR of the refit. The **control** is the same decoder fitted from the
# fixed, unrotated start (matched to the nearest latent, the kinder choice for it). What
# remains of the error with the equivariant start is approximate by nature: the rotated image
# is a resampling (three Fourier shears, `enflens.grid.rotate_images`), and sums over a pixel
# grid do not rotate with the image.

# %%
angles = np.random.default_rng(SEED).uniform(0.0, 2 * np.pi, n_pose)
end_to_end = equivariance.end_to_end_summary(adapter, params, val.images[:n_pose], angles,
                                             steps=K, pixels=None, batch_size=BS)  # fmt: skip
print(json.dumps(end_to_end, indent=1))
demo = int(np.flatnonzero(val.labels[:n_pose] == 1)[0])  # a cdm image
fits = equivariance.demo_refit(adapter, params, val.images[demo], angles[demo], steps=K)
fig = figures.rotated_refit(val.images[demo], fits["rotated_image"], fits["fit"], fits["goal"],
                            fits["refit"], fits["control"], np.degrees(angles[demo]))
savefig(fig, "04_latent_visualization_rotation")

# %% [markdown]
# ## Context vectors in two dimensions
#
# The contexts $c_i$ are invariant under the group action (only poses move), so per-image
# summaries of them are rotation invariant. Left: PCA of individual latents' contexts (a random
# subset), coloured by the class of their image. Middle and right: one point per image, the mean
# of its $N$ context vectors, by PCA and by t-SNE (`N_EMBED` training images).

# %%
n_embed = min(N_EMBED, len(stores["train"]))
sel = np.sort(np.random.default_rng(SEED).choice(len(stores["train"]), n_embed, replace=False))
train_lat = jax.tree.map(lambda a: np.asarray(a)[sel], stores["train"].latents)
y_embed = stores["train"].labels[sel]
emb = latents.context_embedding(train_lat, y_embed, seed=SEED, perplexity=TSNE_PERPLEXITY)
savefig(figures.context_embedding(emb, CLASSES), "04_latent_visualization_contexts")

# %% [markdown]
# ## Rotation-invariant summaries per class
#
# Quantities that do not change when the image (and an equivariant fit with it) is rotated:
# the context norms $|c_i|$, the distance of each latent from the image centre $|p_i|$ (the lens
# centre, in arcsec), the window widths $s_i$, and the orientation relative to the radial
# direction, $\theta_i - \operatorname{atan2}(p_{i,y}, p_{i,x})$. Differences between the
# classes here are cues that an invariant classifier (notebook 05) can use.

# %%
summaries = latents.invariant_summaries(train_lat, arcsec_per_unit=PX * ARCSEC)
per_class = latents.per_class_moments(summaries, y_embed, CLASSES)
fig = figures.invariant_histograms(summaries, y_embed, CLASSES)
savefig(fig, "04_latent_visualization_invariants")
print(json.dumps(per_class, indent=1))

# %% [markdown]
# ## Results

# %%
results = {
    "decoder": str(meta03.decoders["enf"].relative_to(repo_path())),
    "end_to_end": end_to_end,
    "latent_motion": motion,
    "invariant_summaries": per_class,
    "pca_explained_variance": emb.explained_variance,
    "n_embed": n_embed,
    "val_psnr_db_per_class": {
        CLASSES[c]: float(stores["val"].psnr[stores["val"].labels == c].mean()) for c in range(3)
    },
    "notebook_seconds": time.perf_counter() - t_notebook,
}
print(save_results("04_latent_visualization", PROFILE, results))
