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
# # 03 · Meta-learning the fields: one latent per image in three gradient steps
#
# Notebook 02 built the ENF decoder $f_\psi(x; z)$: a field on the plane conditioned on a
# latent point cloud $z = \{(p_i, \theta_i, c_i, s_i)\}$. To use it as an image encoder we need,
# for every lensing image $I$, a latent $z_I$ with $f_\psi(x; z_I) \approx I(x)$ at every pixel
# $x$, and a decoder $\psi$ that makes such latents easy to find. Fitting each of ~13,000 images
# from scratch with hundreds of Adam steps would take hours; **Meta-SGD** (Li et al. 2017, as in
# Functa and the ENF paper) learns the decoder *together with* a fitting procedure of only
# $K = 3$ gradient steps.
#
# **Inner loop** (per image). Start from a shared initialisation $z^{(0)}$ and take $K$ steps
# on the reconstruction error over a random subset $S_k$ of the pixels,
#
# $$z^{(k+1)} = z^{(k)} - \alpha \odot \nabla_z \frac{1}{|S_k|}\sum_{x \in S_k}
#   \big(f_\psi(x; z^{(k)}) - I(x)\big)^2 ,$$
#
# with *learned* per-parameter learning rates $\alpha$: one for all positions, one for all
# orientations and one per context channel (ENF), one per latent dimension (CNF).
#
# **Outer loop** (over batches of images). Minimise the error *after* the inner loop,
#
# $$\min_{\psi,\, \alpha,\, z^{(0)}} \; \mathbb{E}_I \, \frac{1}{|S'|}\sum_{x\in S'}
#   \big(f_\psi(x; z_I^{(K)}) - I(x)\big)^2 ,$$
#
# with Adam, differentiating *through* the $K$ inner steps (second order: the gradient w.r.t.
# $\psi$ contains Hessian-vector products of the inner loss). The decoder thereby learns to be
# easy to fit: after training, one encoding is $K$ gradient evaluations, done for a whole batch
# at once.
#
# **Where the fit starts, and why it matters.** The decoder is exactly equivariant, so the loss
# of a rotated image at rotated latents equals the loss of the original at the original
# latents, and every inner step maps $g z_k$ to $g z_{k+1}$: the fit is equivariant *if and
# only if its start is*. A start shared by all images (the learned initialisation of plain
# Meta-SGD, as in the public ENF code) is the same cloud for an image and for its rotation, so
# the two fits end in unrelated places. Here every image starts from a **template rotated into
# its own frame** (`enflens.fields.frame`): the frame angle $\alpha(I)$ is the direction of the
# intensity-weighted dipole moment of the pixels inside the disk of radius 0.95 about the lens
# centre, $\arg \sum_x I(x)\,(x_1 + i x_2)$, which satisfies $\alpha(I\circ R_{-b}) =
# \alpha(I) + b$; when the dipole is weak, the quadrupole axis $\tfrac12\arg\sum_x I(x)
# (x_1 + i x_2)^2$, defined only up to $\pi$, which the template's symmetry absorbs. The
# template is two rings of 12 latents about the lens centre (radii 0.32 and 0.48, on either
# side of the Einstein ring, where the light is), orientations radial, symmetric under
# $90°$ rotations; only the template is rotated, never the image, so nothing is resampled. What
# is meta-learned is the decoder, the inner rates and one context vector shared by all latents.
# Exact: rotations by multiples of $90°$. Approximate: other angles (the rotated image is a
# resampling, by three Fourier shears that keep the pixel noise; sums over a pixel grid do not
# rotate), pixel subsets (the subsets of an image and of its rotation are different samples),
# weak dipoles (branch switching). The inner loss counts only the pixels inside the unit disk,
# a rotation-invariant support; the square's corners are not. To make the poses carry
# information, the learned position rate is bounded below and one inner step moves a latent at
# most 2 px and $5°$ (`docs/equivariant_start.md`).
#
# **The baseline** is a Functa-style conditional neural field (`enflens.fields.cnf`): a SIREN whose
# layers are shifted by a linear function of one global latent *vector*, fitted by the same
# Meta-SGD loop. It gets exactly as many latent floats per image as the ENF (positions +
# orientations + contexts), and the same number of outer steps.
#
# This notebook trains both on the study dataset, encodes every image of the train,
# validation and test splits into **latent stores** (notebook 05 classifies them), and measures
# reconstruction quality: PSNR $= -10 \log_{10} \mathrm{MSE}$ for images in $[0, 1]$, against the
# noisy image that was fitted and against the noise-free image the simulator re-renders.

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"
N_TRAIN = 3000  # training images per class (common profile parameters: locate the dataset)
N_VAL = 300
N_TEST = 1000
DATA_SEED = 0
WORKERS = 2  # unused here (common profile parameter)
SEED = 0  # decoder initialisation, data order and pixel subsets
# ENF decoder (enflens.fields.enf.ENFConfig fields) and its Meta-SGD adapter
# (enflens.fields.adapters.enf_adapter): the cpu-sized decoder (hidden 64, k = 4) with 24 latents on
# two rings of 12 about the lens centre (radius 0.32 / 0.48, radial orientations; the ablation's
# "rings 4 / 8 / 12" row is the earlier template, which reached out to empty sky), each image
# starting from the rings rotated into its own frame (enflens.fields.frame); the position rate is
# kept >= 2.5 and one inner step moves a latent at most 2 px and 5 degrees, so that poses move
# (docs/equivariant_start.md). Each (pixel, latent) pair's value goes through a small GELU
# network and the Fourier frequencies are learned (value_mlp, learn_rff): at 1,200 outer steps
# on 64 validation images this reached 38.8 dB against 35.5 dB for the linear value path with
# frozen frequencies, at ~1.25x the ms per outer step (the ablation's rows below)
ENF_CONFIG = {"num_latents": 24, "latent_dim": 33, "hidden": 64, "num_heads": 2, "k_nearest": 4,
              "num_rff": 32, "template": "rings", "ring_counts": [12, 12],
              "ring_radii": [0.32, 0.48], "value_mlp": True, "learn_rff": True}  # fmt: skip
ENF_ADAPTER = {"lr_positions": 2.5, "lr_orientations": 1.0, "lr_contexts": 150.0,
               "equivariant_start": True, "fit_radius": 1.0,
               "lr_bounds": {"positions": [2.5, 10.0], "orientations": [1e-6, 10.0]},
               "max_pose_step": [0.0625, 0.0873]}  # fmt: skip
# CNF decoder (enflens.fields.cnf.CNFConfig fields); latent_dim is set to the ENF's latent floats
CNF_CONFIG = {"hidden": 128, "num_layers": 3, "w0": 30.0}
CNF_ADAPTER = {"lr_init": 1.0}
# Meta-SGD settings (enflens.metalearn.outer.MetaConfig fields) of both models, then per-model
# changes (the SIREN CNF needs a much lower outer rate than the ENF). num_steps is the budget:
# the same number of outer steps for both fields (measured on 2 cores: ENF ~5.1, CNF ~8.3
# steps/s, so 1,200 steps take ~4 and ~2.5 minutes).
META = {"inner_steps": 3, "inner_pixels": 256, "outer_pixels": 512, "batch_size": 8,
        "outer_lr": 1e-2, "lr_lr": 1e-2, "warmup_steps": 50, "first_order": False,
        "num_steps": 1200, "eval_every": 150}  # fmt: skip
META_OVERRIDES = {"enf": {}, "cnf": {"outer_lr": 3e-4}}
EVAL_IMAGES = 64  # validation images of the PSNR logged during training
FIT = {"pixels": 1024, "sampling": "stratified", "batch_size": 64}  # encoding (inner steps: META)
N_CLEAN = 300  # validation images scored against their noise-free re-render
N_ROTATION = 64  # validation images of the rotation check (FIT batch_size: no recompilation)
# Decoder ablation: each row is one change of the study's field (keys replace those of
# ENF_CONFIG / ENF_ADAPTER / CNF_CONFIG / META), meta-trained for ABLATION_STEPS outer steps and
# scored against the noise-free renders of the first ABLATION_IMAGES validation images
ABLATION_STEPS = 200
ABLATION_IMAGES = 64
ABLATION = {
    "study ENF": {},
    "linear value path": {"enf_config": {"value_mlp": False}},
    "frozen Fourier features": {"enf_config": {"learn_rff": False}},
    "linear value, frozen features": {"enf_config": {"value_mlp": False, "learn_rff": False}},
    "value frequencies x2": {"enf_config": {"rff_std_value": 8.0}},
    "k = 9": {"enf_config": {"k_nearest": 9}},
    "hidden 96": {"enf_config": {"hidden": 96}},
    "rings 4 / 8 / 12 at 0.2 / 0.42 / 0.66": {
        "enf_config": {"ring_counts": [4, 8, 12], "ring_radii": [0.2, 0.42, 0.66]}},
    "rings 8 / 8 / 8 at 0.28 / 0.4 / 0.52": {
        "enf_config": {"ring_counts": [8, 8, 8], "ring_radii": [0.28, 0.4, 0.52]}},
    "5 x 5 grid template": {"enf_config": {"template": "grid", "num_latents": 25}},
    "no rate bounds": {"enf_adapter": {"lr_bounds": None, "max_pose_step": None}},
    "CNF": {"kind": "cnf"},
}
ABLATION_ROWS = list(ABLATION)  # the rows that run (a profile may run fewer)

# %%
import json
import time

import numpy as np

from enflens.data.renders import noise_free_images
from enflens.evaluate import reconstruction, rotation
from enflens.study import figures, stages
from enflens.study.results import save_results, savefig

KINDS = stages.FIELD_KINDS
t_notebook = time.perf_counter()

# %% [markdown]
# ## Data
#
# The study dataset is found from the common profile parameters (notebook 01 made it). Images
# are $64\times64$, normalised per image by their maximum, labels `no_sub`, `cdm`, `axion`.

# %%
ds = stages.dataset(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED, generate=False)
CLASSES = ds.splits["train"].class_names
for s, d in ds.splits.items():
    print(f"{s:5s} {d.images.shape}")

# %% [markdown]
# ## Meta-training with equal step budgets
#
# Both decoders are built from the parameter cell; the CNF latent dimension is set to the
# number of floats the ENF fits per image, $N\,(2 + 1 + D)$. Each is meta-trained for exactly
# `META["num_steps"]` outer steps (warm-up, then cosine decay over exactly those steps), with
# the validation PSNR after $K$ inner steps logged every `META["eval_every"]` steps on
# `EVAL_IMAGES` images.
#
# **Caching.** `stages.decoder` stores the trained decoder as an orbax checkpoint at
# `checkpoints/<kind>_decoder-<hash>`, the hash taken over everything that determines it:
# dataset, model and Meta-SGD configs (step count included), seed and the stage's code version.
# A rerun restores it with its training history; the numbers do not depend on the machine.

# %%
field_cfg = {"enf_config": ENF_CONFIG, "enf_adapter": ENF_ADAPTER, "cnf_config": CNF_CONFIG,
             "cnf_adapter": CNF_ADAPTER, "seed": SEED}  # fmt: skip
decs = {
    k: stages.decoder(k, ds, adapter=stages.field_adapter(k, **field_cfg),
                      meta={**META, **META_OVERRIDES.get(k, {})}, seed=SEED,
                      eval_images=EVAL_IMAGES)
    for k in KINDS
}  # fmt: skip
for k, d in decs.items():
    print(f"{k}: {'restored' if d.cached else 'trained'} {d.path.name}: {d.num_params:,} decoder "
          f"parameters, {d.latent_floats} latent floats, {d.meta['outer_steps']} outer steps in "
          f"{d.meta['train_seconds']:.0f} s")  # fmt: skip

# %% [markdown]
# ### Training curves
#
# The outer loss (median over the logging interval, on the training batches after $K$ inner
# steps) and the validation PSNR after $K$ steps, against outer steps and against wall time.

# %%
fig = figures.training_curves({k: d.meta["history"] for k, d in decs.items()}, META["inner_steps"])
savefig(fig, "03_meta_learning_training")

# %% [markdown]
# ## Encoding every image into a latent store
#
# Each split is encoded with the trained decoder: $K$ inner steps from the learned
# initialisation, `FIT["pixels"]` pixels per step, `FIT["batch_size"]` images per jitted call.
# A store (`enflens.metalearn.latent_store`) keeps the latents, labels, the PSNR of each fit
# and the hash of its decoder; its file name carries a hash of the decoder hash, the split and
# these settings, so a rerun reuses it. The throughput is one timed batch (a timing only).

# %%
K = META["inner_steps"]
fit_settings = {"steps": K, **FIT, "seed": SEED}
lat = {k: stages.latent_stores(d, ds, **fit_settings) for k, d in decs.items()}
fit_ips = {k: stages.fit_throughput(d, ds.splits["val"].images, steps=K, pixels=FIT["pixels"],
                                    sampling=FIT["sampling"], batch_size=FIT["batch_size"])
           for k, d in decs.items()}  # fmt: skip
for k, st in lat.items():
    print(k, {s: f"{v.psnr.mean():.2f} dB" for s, v in st.stores.items()},
          f"{fit_ips[k]:.1f} images/s")  # fmt: skip

# %% [markdown]
# ## Reconstruction quality against the noise-free images
#
# The stored images are noisy. The simulator re-renders the noise-free image of each sample
# from its stored description (`lensing.render(..., noise=False)`), divided by the *same*
# per-image maximum as the stored image. A field that fits the lens but not the noise scores
# higher against the noise-free image than against the noisy one. We score the first `N_CLEAN`
# validation images after each of the $0..K$ inner steps with the encoding settings, so step
# $K$ reproduces the latent store (checked).

# %%
n_clean = min(N_CLEAN, len(ds.splits["val"]))
noisy = ds.splits["val"].images[:n_clean]
clean = noise_free_images(ds.path, "val", np.arange(n_clean))
curves = {k: reconstruction.noise_free_psnr(d.adapter, d.params, ds.path, "val", noisy,
                                            clean=clean, **fit_settings)
          for k, d in decs.items()}  # fmt: skip
for k, c in curves.items():
    diff = np.abs(c.noisy[-1] - lat[k].stores["val"].psnr[:n_clean]).max()
    assert diff < 0.05, f"{k}: path PSNR differs from the store by {diff:.3f} dB"
    print(f"{k}: vs noisy {np.round(c.noisy.mean(1), 2).tolist()}, "
          f"vs noise-free {np.round(c.clean.mean(1), 2).tolist()} dB")
print(f"noise floor (noisy vs noise-free): {curves['enf'].noise_floor.mean():.1f} dB")

# %% [markdown]
# ### Ablation: what makes the ENF sharp
#
# Each row changes one thing of the study's ENF (the CNF row is the baseline), is meta-trained from
# scratch for the same `ABLATION_STEPS` outer steps with the same Meta-SGD settings, and is scored
# against the noise-free renders after $0..K$ inner steps with the encoding settings. For the ENF
# rows, *frozen* is the PSNR of the same fit with the poses frozen at their start and *motion* the
# median latent displacement over the $K$ steps (px): the template rows are the evidence for the
# study's two rings. Rows are cached decoder stages; ms per outer step is a timing (it depends on
# what else the machine runs), the PSNRs are not.

# %%
ablation = stages.ablation(
    ds, {r: ABLATION[r] for r in ABLATION_ROWS}, field_cfg=field_cfg, meta=META,
    steps=ABLATION_STEPS, seed=SEED, clean=clean[:ABLATION_IMAGES], fit=fit_settings,
    eval_images=EVAL_IMAGES,
)  # fmt: skip
print(f"{'row':38s} {'PSNR after 0..K steps (dB)':>30s} {'frozen':>7s} {'motion':>7s} "
      f"{'params':>8s} {'floats':>6s} {'ms/step':>8s}")
for r in ablation:
    frozen = f"{r['psnr_frozen_poses']:7.2f}" if "psnr_frozen_poses" in r else f"{'-':>7s}"
    motion = f"{r['pose_motion_px']:7.3f}" if "pose_motion_px" in r else f"{'-':>7s}"
    print(f"{r['name']:38s} {' '.join(f'{v:6.2f}' for v in r['psnr_clean']):>30s} {frozen} "
          f"{motion} {r['decoder_params']:8,d} {r['latent_floats']:6d} "
          f"{r['ms_per_outer_step']:8.0f}")

# %% [markdown]
# ### PSNR after each inner step
#
# Step 0 is the learned initialisation decoded (the same field for every image); the learned
# rates make the first step do most of the work. Bands: 16-84 % of the images.

# %%
savefig(figures.psnr_by_inner_step(curves), "03_meta_learning_inner_steps")

# %% [markdown]
# ### Reconstructions per class
#
# One validation image per class: the noisy input, the noise-free render, each field after $K$
# steps and its residual against the noise-free image (same colour scale for both fields).

# %%
show = [int(np.flatnonzero(ds.splits["val"].labels[:n_clean] == c)[0]) for c in range(3)]
fits = {k: stages.reconstruct(d, noisy[show], **fit_settings) for k, d in decs.items()}
fig = figures.reconstructions(noisy[show], clean[show], fits, [CLASSES[c] for c in range(3)])
savefig(fig, "03_meta_learning_reconstructions")

# %% [markdown]
# ## Rotating the image: fit of the rotated image vs the rotated fit
#
# Rotate an image by a random angle $a$ and fit it again: $z_r = \mathrm{fit}(I \circ R_{-a})$.
# For an equivariant model *and* an equivariant fitting procedure, the field of $z_r$ is the
# rotated field of $z = \mathrm{fit}(I)$. `rotation.rotation_consistency` measures the PSNR
# between $f(x; z_r)$ and $f(R_{-a}x; z)$ inside the inscribed disk (corners leave the frame).
# With the equivariant start both fits begin from the same template in the image's frame, so
# they agree up to resampling and pixel subsets; notebook 04 measures the latents themselves,
# with the fixed start as the control.

# %%
n_rot = min(N_ROTATION, len(ds.splits["val"]))
angles = np.random.default_rng(SEED).uniform(0.0, 2 * np.pi, n_rot)
rot = {k: {name: float(np.mean(v)) for name, v in rotation.rotation_consistency(
           d.adapter, d.params, ds.splits["val"].images[:n_rot], angles, steps=K,
           pixels=FIT["pixels"]).items()}
       for k, d in decs.items()}  # fmt: skip
print(json.dumps(rot, indent=1))

# %% [markdown]
# ## Results
#
# `latent_stores` and `decoders` (paths relative to the repository root) are what notebooks 04
# and 05 read.

# %%
results = {
    "dataset": ds.path.name,
    "psnr_db": {k: {**c.summary(), **{f"{s}_noisy": float(lat[k].stores[s].psnr.mean())
                                      for s in ("train", "test")}} for k, c in curves.items()},
    "noise_floor_psnr_db": float(curves["enf"].noise_floor.mean()),
    "ablation": {"outer_steps": ABLATION_STEPS, "images": min(ABLATION_IMAGES, n_clean),
                 "rows": ablation},
    "rotation_psnr_db": rot,
    "outer_steps": {k: d.meta["outer_steps"] for k, d in decs.items()},
    "train_seconds": {k: d.meta["train_seconds"] for k, d in decs.items()},
    "outer_steps_per_second": {k: d.meta["outer_steps"] / d.meta["train_seconds"]
                               for k, d in decs.items()},  # fmt: skip
    # what writing the stores cost (recorded with each store, so also when it was reused here)
    "encode_seconds": {k: v.total_encode_seconds for k, v in lat.items()},
    "fit_images_per_second": fit_ips,
    "latent_floats": {k: d.latent_floats for k, d in decs.items()},
    "decoder_params": {k: d.num_params for k, d in decs.items()},
    "model_configs": {k: d.adapter.model_config for k, d in decs.items()},
    "meta_configs": {k: d.meta["meta_config"] for k, d in decs.items()},
    "fit_settings": fit_settings,
    "decoder_hashes": {k: d.meta["hash"] for k, d in decs.items()},
    "reused_cached": {**{f"{k}_decoder": d.cached for k, d in decs.items()},
                      **{f"{k}_{s}": c for k, v in lat.items() for s, c in v.cached.items()}},
    "latent_stores": {k: {s: stages.rel(p) for s, p in v.paths.items()} for k, v in lat.items()},
    "decoders": {k: stages.rel(d.path) for k, d in decs.items()},
    "notebook_seconds": time.perf_counter() - t_notebook,
}  # fmt: skip
print(save_results("03_meta_learning", PROFILE, results))
print(json.dumps({k: results[k] for k in ("psnr_db", "rotation_psnr_db")}, indent=1))
