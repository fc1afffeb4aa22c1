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
import matplotlib.pyplot as plt
import numpy as np

from enflens import data, grid
from enflens.data import lensing
from enflens.evaluate import latents, rotation
from enflens.fields import adapters
from enflens.geometry import SE2, Latents
from enflens.metalearn import encode as encode_mod
from enflens.metalearn.latent_store import read_latent_store
from enflens.study import classifiers as study_clf
from enflens.study import figures, stages
from enflens.study.results import repo_path, save_results, savefig
from enflens.viz import draw_latents, draw_paths, show_image, unbatch

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
# The positions start on a $5\times5$ grid with orientations $0$; the fit moves them by a
# fraction of the grid spacing and turns them.

# %%
fig, axes = plt.subplots(3, N_SHOW, figsize=(2.6 * N_SHOW, 7.8), squeeze=False,
                         layout="constrained")  # fmt: skip
for c in range(3):
    for ax, i in zip(axes[c], np.flatnonzero(val.labels == c)[:N_SHOW], strict=False):
        show_image(ax, val.images[i])
        draw_latents(ax, unbatch(lat_val, i), color="cyan")
        ax.set_title(f"{CLASSES[c]}  {stores['val'].psnr[i]:.1f} dB", fontsize=9)
savefig(fig, "04_latent_visualization_clouds")

# %% [markdown]
# ## How the latents move during the fit
#
# The fit of the first encoding batch again, keeping every inner step (same keys and pixel
# subsets as the encoding, so step $K$ *is* the stored latent, checked below). Lines: the path
# of each latent from its start (open circle) to its fitted position (dot).

# %%
batch_idx = np.arange(min(BS, len(val)))
batch = np.resize(val.images[batch_idx], (BS, H, H))
path_lat, path_rec = encode_mod.fit_path(
    adapter, params, batch, steps=K, pixels=settings["pixels"], sampling=settings["sampling"],
    key=jax.random.fold_in(jax.random.PRNGKey(settings["seed"]), 0),
)  # fmt: skip
nb = len(batch_idx)
err = np.abs(path_lat.positions[-1, :nb] - lat_val.positions[batch_idx]).max()
assert err < 1e-4, f"refit differs from the stored latents by {err}"
step_pos = np.linalg.norm(np.diff(path_lat.positions[:, :nb], axis=0), axis=-1)  # (K, nb, N)
step_ori = np.abs(np.diff(path_lat.orientations[:, :nb], axis=0))  # (K, nb, N)
ctx_norm = np.linalg.norm(path_lat.contexts[:, :nb], axis=-1)  # (K+1, nb, N)
motion = {
    "position_step_px": (step_pos.mean(axis=(1, 2)) * PX).tolist(),
    "orientation_step_deg": np.degrees(step_ori.mean(axis=(1, 2))).tolist(),
    "total_position_px": float(
        np.linalg.norm(path_lat.positions[-1, :nb] - path_lat.positions[0, :nb], axis=-1).mean()
        * PX
    ),
    "context_norm_per_step": ctx_norm.mean(axis=(1, 2)).tolist(),
}
print(json.dumps(motion, indent=1))

fig, axes = plt.subplots(2, 3, figsize=(10, 6.8), layout="constrained")
for c in range(3):
    j = int(np.flatnonzero(val.labels[batch_idx] == c)[0])
    show_image(axes[0, c], batch[j])
    draw_paths(axes[0, c], path_lat.positions[:, j], color="cyan")
    axes[0, c].set_title(CLASSES[c])
    psnrs = grid.psnr(path_rec[:, j, ..., 0], np.repeat(batch[j][None], K + 1, 0))
    axes[1, c].plot(np.arange(K + 1), psnrs, "o-", color=CLASS_COLORS[c])
    axes[1, c].set_xlabel("inner step")
    axes[1, c].set_xticks(np.arange(K + 1))
axes[1, 0].set_ylabel("PSNR of this fit (dB)")
savefig(fig, "04_latent_visualization_inner_steps")

# %% [markdown]
# ## Rotate the image, fit again: do the latents rotate with it?
#
# For an image $I$ with fitted latents $z$ and a rotation $g$ by angle $a$, the equivariant
# ENF decodes the rotated latents $g z$ (positions $R_a p_i$, orientations $\theta_i + a$) into
# exactly the rotated field. Whether *fitting* the rotated image $I \circ g^{-1}$
# (`grid.rotate_images`, bilinear) also returns $\approx g z$ depends on the fitting
# procedure, and we measure it. Matching: each latent of $g z$ still inside the frame (a
# rotation by a non-multiple of $90°$ moves the corners out) is paired with the nearest latent of
# the new fit; we report the mean position error in pixels and orientation error in degrees.
#
# Two fits of the rotated image:
#
# * **standard** (what the encoding does): $K$ steps from the learned initialisation, the same
#   $5\times5$ grid with orientations $0$ for every image;
# * **rotated initialisation**: $K$ steps from $g z^{(0)}$, the initial grid rotated with the
#   image (orientations $a$). If the fit were exactly equivariant the result would be $g z$
#   (up to the bilinear resampling, the lost corners and the pixel subsets).
#
# A control: the *unrotated* latents $z$ against the standard refit (no rotation applied).

# %%
rng = np.random.default_rng(SEED)
n_pose = min(N_POSE, BS, len(val))
angles = rng.uniform(0.0, 2 * np.pi, BS)
rotated = np.asarray(grid.rotate_images(batch, angles))  # (BS, H, W)
key0 = jax.random.fold_in(jax.random.PRNGKey(settings["seed"]), 0)
fit_kw = {"steps": K, "pixels": settings["pixels"], "sampling": settings["sampling"], "key": key0}
z_std, rec_std = encode_mod.fit_path(adapter, params, rotated, **fit_kw)
g = SE2(jax.numpy.asarray(angles, "float32"), jax.numpy.zeros((BS, 2), "float32"))
init_rot = adapter.expand(params["init"], BS).transform(g)
z_rot, rec_rot = encode_mod.fit_path(adapter, params, rotated, latents0=init_rot, **fit_kw)
z_orig = jax.tree.map(lambda a: a[-1], path_lat)  # stored latents of the batch, (BS, ...)
z_goal = jax.tree.map(np.asarray, z_orig.transform(g))  # g z


def pose_stats(fitted: Latents, reference: Latents) -> dict:
    pos, ori, kept = [], [], []
    for i in range(n_pose):
        m = rotation.match_poses(unbatch(reference, i), unbatch(fitted, i))
        pos.append(m["position"].mean() * PX)
        ori.append(np.degrees(m["orientation"].mean()))
        kept.append(m["kept"].sum())
    return {"position_px": np.array(pos), "orientation_deg": np.array(ori), "kept": np.array(kept)}


z_std_k, z_rot_k = (jax.tree.map(lambda a: a[-1], z) for z in (z_std, z_rot))
stats = {
    "standard_init": pose_stats(z_std_k, z_goal),
    "rotated_init": pose_stats(z_rot_k, z_goal),
    "control_unrotated": pose_stats(z_std_k, jax.tree.map(np.asarray, z_orig)),
}
for name, s in stats.items():
    print(f"{name:18s} position {s['position_px'].mean():5.2f} px, "
          f"orientation {s['orientation_deg'].mean():6.1f} deg (mean over {n_pose} images, "
          f"{s['kept'].mean():.1f} latents kept per image)")  # fmt: skip
rec_psnr = {
    "standard_init": float(grid.psnr(rec_std[-1, :n_pose, ..., 0], rotated[:n_pose]).mean()),
    "rotated_init": float(grid.psnr(rec_rot[-1, :n_pose, ..., 0], rotated[:n_pose]).mean()),
}
print("PSNR of the fits of the rotated images:", rec_psnr)

# %% [markdown]
# One of them in pictures: the original with its latents; the rotated image with the rotated
# latents $g z$ (where an equivariant fit would put them); the standard refit; the refit from
# the rotated initialisation. Lines join each latent of $g z$ to its match.

# %%
demo = int(np.flatnonzero(val.labels[batch_idx[:n_pose]] == 1)[0])  # a cdm image
a_deg = float(np.degrees(angles[demo]))
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), layout="constrained")
show_image(axes[0], batch[demo])
draw_latents(axes[0], unbatch(z_orig, demo), color="cyan")
axes[0].set_title("original fit z")
goal = unbatch(z_goal, demo)
for ax, (name, fitted) in zip(
    axes[1:], [("g z", None), ("standard refit", z_std_k), ("refit from g z0", z_rot_k)],
    strict=True,
):  # fmt: skip
    show_image(ax, rotated[demo])
    draw_latents(ax, goal, color="cyan", windows=fitted is None)
    if fitted is None:
        ax.set_title(f"rotated by {a_deg:.0f} deg, latents g z")
        continue
    f = unbatch(fitted, demo)
    m = rotation.match_poses(goal, f)
    draw_latents(ax, f, color="yellow", windows=False)
    gp = np.asarray(goal.positions)[m["kept"]]
    for p, q in zip(gp, np.asarray(f.positions)[m["index"]], strict=True):
        ax.plot([p[0], q[0]], [p[1], q[1]], "w-", lw=0.7)
    ax.set_title(f"{name} (yellow): {m['position'].mean() * PX:.1f} px, "
                 f"{np.degrees(m['orientation'].mean()):.0f} deg", fontsize=9)  # fmt: skip
savefig(fig, "04_latent_visualization_rotation")
m_demo = rotation.match_poses(goal, unbatch(z_std_k, demo))
pose_error = {
    "angle_deg": a_deg,
    "position_px": float(m_demo["position"].mean() * PX),
    "orientation_deg": float(np.degrees(m_demo["orientation"].mean())),
    "n_matched": int(m_demo["kept"].sum()),
    "fit": "standard (learned initialisation), as in the latent stores",
    "image": f"val[{int(batch_idx[demo])}] ({CLASSES[val.labels[batch_idx[demo]]]})",
    "mean_over_images": {
        name: {
            "position_px": float(s["position_px"].mean()),
            "orientation_deg": float(s["orientation_deg"].mean()),
        }
        for name, s in stats.items()
    },
    "n_images": n_pose,
    "angles": "uniform in [0, 360) deg, one per image",
    "rotated_image_fit_psnr_db": rec_psnr,
}
print(json.dumps(pose_error, indent=1))

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
    "pose_error": pose_error,
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
