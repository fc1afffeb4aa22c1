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
# # 02 · Equivariant neural fields: why moving the latents moves the image
#
# **Neural fields.** A neural field represents one image as a function
# $f_\theta:\mathbb{R}^2\to\mathbb{R}^C$ from a pixel coordinate $x$ to its value: a small
# network (typically with a Fourier-feature embedding of $x$) fitted to that one image. The
# image is stored in the weights $\theta$.
#
# **Conditional neural fields.** To represent a whole dataset, the weights are shared and each
# image gets a *latent* $z$: $f_\theta(x; z)$. Fitting an image means finding its $z$, usually
# with a few meta-learned gradient steps (Functa, Meta-SGD; notebook 03). The latents are then
# the input of a classifier. A single latent *vector* has no geometry, though: rotating the
# image changes $z$ in some entangled way, so a classifier on $z$ has to learn rotations from
# data.
#
# **Equivariant neural fields** (Wessels, Knigge et al., ICLR 2025) make the latent a *point
# cloud* $z=\{(p_i,\theta_i,c_i,s_i)\}_{i=1}^N$: a pose in SE(2) (position $p_i$, orientation
# $\theta_i$), a context vector $c_i$ and a Gaussian window width $s_i$. A group element
# $g=(\varphi,t)$ acts on coordinates by $gx = R_\varphi x + t$ and on the cloud by moving the
# poses, $g z=\{(R_\varphi p_i+t,\ \theta_i+\varphi,\ c_i,\ s_i)\}$. The decoder is built so that
#
# $$f_\theta(gx;\,gz) = f_\theta(x;\,z)\qquad\text{for all } g,$$
#
# i.e. the field of the transformed latent is the transformed field: a rotated lens image is
# represented by the rotated point cloud with *the same* contexts. A classifier that is
# invariant on point clouds (PONITA, notebook 05) then gives rotation-invariant predictions.
#
# ## Bi-invariants
#
# A **bi-invariant** is a function $a(x, p)$ of a query coordinate and a latent pose with
# $a(gx, gp)=a(x,p)$ for every $g$ of the group. The ENF decoder reads coordinates and poses
# *only* through $a(x,p_i)$ and the distance $\lVert x-p_i\rVert$; contexts and windows are
# untouched by $g$. So every input of the decoder is the same for $(gx, gz)$ as for $(x,z)$,
# and equivariance follows without any constraint on the weights. For SE(2):
#
# $$a(gx, gp_i) = R_{\theta_i+\varphi}^{\top}\big(R_\varphi x + t - R_\varphi p_i - t\big)
#   = R_{\theta_i}^{\top}R_\varphi^{\top}R_\varphi(x-p_i) = R_{\theta_i}^{\top}(x-p_i)
#   = a(x,p_i).$$
#
# | `bi_invariant` | $a(x, p_i)$ | equivariant to |
# |---|---|---|
# | `translation` | $x - p_i$ | translations |
# | `roto_translation` | $R(\theta_i)^\top (x - p_i)$ | SE(2): rotations + translations |
# | `isotropic` | $\lVert x - p_i\rVert$ | SE(2) (and reflections); orientations ignored |
# | `absolute` | $x$ | nothing: the **negative control** |
#
# ## The decoder (`enflens.fields.enf.ENFDecoder`)
#
# For a pixel $x$ and its $k$ nearest latents $i\in\mathcal{N}_k(x)$ (nearest by
# $\lVert x-p_i\rVert$, itself invariant, so the same latents are selected for $(gx,gz)$):
#
# $$q = \mathrm{MLP}\big(\gamma_q(a_i)\big),\quad k_i = W_k c_i,\quad
#   v_i = W_v c_i \odot \big(1+\gamma(a_i)\big) + \beta(a_i),$$
# $$\alpha_i = \operatorname{softmax}_{i\in\mathcal{N}_k(x)}
#   \Big(\tfrac{q\cdot k_i}{\sqrt{d}} - \tfrac{\lVert x-p_i\rVert^2}{s_i^2}\Big),\qquad
#   f(x;z) = \mathrm{MLP}_{\mathrm{out}}\Big(\textstyle\sum_i \alpha_i v_i\Big),$$
#
# with $\gamma_q$ and $(\gamma,\beta)$ computed from random Fourier features
# $[\sin 2\pi Ba,\ \cos 2\pi Ba]$ of the bi-invariant, $B$ frozen Gaussian frequencies, one
# softmax per attention head. The Gaussian window makes each latent local; the $k$-nearest
# restriction makes the cost linear in pixels $\times k$ instead of pixels $\times N$.
#
# Below we check all this numerically: with random continuous group elements (never only
# multiples of 90°) and random latent clouds, the relative error
# $\max|f(gx;gz)-f(x;z)| / \max|f(x;z)|$ must sit at float32 rounding level ($\le 10^{-5}$)
# for the equivariant bi-invariants, and be large for the control.

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"  # common profile parameters (this notebook uses no data)
N_TRAIN = 3000
N_VAL = 300
N_TEST = 1000
DATA_SEED = 0
WORKERS = 2
SEED = 0
GRID = 64  # decoding grid (pixels per side) for figures and timing
NUM_ELEMENTS = 16  # random group elements per equivariance check
NUM_ANGLES = 36  # rotation angles in the error-vs-angle sweep
EQ_BATCH = 4  # images per equivariance check
EQ_PIXELS = 512  # random pixels per image in the equivariance checks
K_VALUES = [1, 2, 4, 9, 16, 25]  # k-nearest sweep, 25: all latents
TIMING_BATCH = 8  # images per timed decode (GRID x GRID pixels each)
TIMING_REPEATS = 3  # timed decodes; the median is reported
EQ_CHECK_ALL = True  # also check the decoders that attend to all latents

# %%
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens.evaluate import decoder as checks
from enflens.fields.enf import EQUIVARIANT_GROUPS, ENFConfig, ENFDecoder
from enflens.geometry import SE2
from enflens.nn import count_params
from enflens.study import figures
from enflens.study.results import save_results, savefig

BASE = ENFConfig()
key = jax.random.PRNGKey(SEED)
n_params = count_params(ENFDecoder(BASE, rngs=nnx.Rngs(SEED)))
print(BASE)
print(f"trainable parameters: {n_params:,}")

# %% [markdown]
# ## Seeing it: a random latent cloud and its moved copy
#
# An untrained decoder (random weights) and a random cloud of 25 latents (jittered grid
# positions, random orientations shown as arrows, random contexts and windows) give a random
# smooth field. We move the cloud by $g$ = (rotation 50°, translation (0.25, −0.1)) and decode
# again (third column), and compare with the original field moved by $g$, i.e. decoded at
# $g^{-1}x$ (second column). For `roto_translation` they coincide to rounding error; for the
# `absolute` control the decoded field does not follow its latents.

# %%
g_demo = SE2(jnp.float32(np.deg2rad(50.0)), jnp.array([0.25, -0.1], jnp.float32))
demos = {bi: checks.moved_fields(BASE, bi, g_demo, GRID, jax.random.fold_in(key, 1), SEED)
         for bi in ("roto_translation", "absolute")}  # fmt: skip
demo_err = {bi: d["relative_error"] for bi, d in demos.items()}
savefig(figures.moved_fields(demos), "02_enf_theory_decoded")

# %% [markdown]
# ## Equivariance error of every bi-invariant
#
# Each bi-invariant is checked against the group it is built for (translations for
# `translation`, SE(2) for the others and for the control), with `NUM_ELEMENTS` random
# elements (angles uniform in $[0, 2\pi)$, translations uniform in $[-0.5, 0.5]^2$), random
# clouds and random pixels, with the default $k$-nearest selection and (`EQ_CHECK_ALL`)
# attending to all latents. Reported: the largest relative error over the elements tried.

# %%
eq_kw = {"num_elements": NUM_ELEMENTS, "batch": EQ_BATCH, "num_pixels": EQ_PIXELS}
eq_ks = (BASE.k_nearest, None) if EQ_CHECK_ALL else (BASE.k_nearest,)
eq_by_k = checks.equivariance_table(BASE, jax.random.fold_in(key, 2), eq_ks, **eq_kw)
equivariance = {bi: max(v.values()) for bi, v in eq_by_k.items()}
for bi, err in equivariance.items():
    status = "FAILS (control)" if bi == "absolute" else "ok" if err <= 1e-5 else "FAIL"
    print(f"{bi:>17} [{checks.CHECK_GROUP[bi]:>11}]  max rel. error {err:.2e}  {status}   "
          f"by k: {eq_by_k[bi]}")  # fmt: skip

# %% [markdown]
# ### Error against the rotation angle
#
# Now one random cloud and translation, and the rotation angle swept over the circle. At angle
# 0 only the control fails; as soon as the angle is non-zero the `translation` bi-invariant
# fails too (it has no frame to rotate), while `roto_translation` and `isotropic` stay at
# float32 rounding level for every angle.

# %%
angles = np.linspace(0.0, 2 * np.pi, NUM_ANGLES, endpoint=False)
angle_sweep = checks.angle_sweep(BASE, key, angles, batch=EQ_BATCH, num_pixels=EQ_PIXELS)
savefig(figures.error_vs_angle(angles, angle_sweep, BASE.k_nearest), "02_enf_theory_error_vs_angle")

# %% [markdown]
# ## What the k-nearest restriction buys and costs
#
# Restricting each pixel to its $k$ nearest latents keeps equivariance (the selection uses the
# invariant distance) but changes the field: latents beyond the $k$-th are cut even where
# their Gaussian window is not negligible, which makes the field jump where the set of
# nearest latents changes. We measure, for each $k$, the equivariance error
# (`roto_translation`), the deviation from attending to all latents (relative, on the
# `GRID`×`GRID` grid) and the decoding speed (pixels per second, jitted, median of
# `TIMING_REPEATS`, `TIMING_BATCH` images). The equivariance error does not depend on $k$; the
# deviation does. Here it is large because the Gaussian windows overlap: with $s$ about one grid
# spacing (the default), a latent 1.5 spacings from the pixel still gets weight
# $e^{-2.25}\approx 0.1$ relative to one on top of it, so the latents beyond the 9th carry a
# noticeable share of the attention that $k=9$ cuts off; the content term $q\cdot k_i/\sqrt{d}$
# of this untrained decoder is small next to the window term. Training (and fitted windows)
# decide how local the attention becomes; the cost grows linearly with $k$.


# %%
k_sweep = checks.k_sweep(BASE, key, K_VALUES, grid_size=GRID, batch=TIMING_BATCH,
                         repeats=TIMING_REPEATS, num_elements=NUM_ELEMENTS, eq_batch=EQ_BATCH,
                         num_pixels=EQ_PIXELS)  # fmt: skip
for row in k_sweep:
    print(row)
fig = figures.k_nearest_tradeoff(k_sweep, BASE.num_latents, f"{TIMING_BATCH} x {GRID}x{GRID}")
savefig(fig, "02_enf_theory_k_nearest")

# %% [markdown]
# ## An equivariant decoder is not yet an equivariant encoder
#
# Everything above is a property of the decoder: $f(gx; gz) = f(x; z)$. The latents of an image
# are *found* by fitting (notebook 03), and the fitted latents rotate with the image only if the
# fitting procedure is equivariant too. Gradient steps are: the loss of the rotated image at
# rotated latents equals the loss of the original at the original latents, so its gradient
# rotates with them. The start is the weak point: a start shared by all images does not rotate
# with the image. Notebook 03 therefore starts every fit from a template rotated into the
# image's own frame, an angle computed from the image's moments about the lens centre
# (`enflens.fields.frame`), and notebook 04 measures how closely the refit of a rotated image
# matches the rotated latents.

# %% [markdown]
# ## Results
#
# The default decoder (`ENFConfig()`) decodes at the speed below on this machine; the
# equivariance errors are the maxima over all elements and both $k$ settings tried above.

# %%
decode_pps = (
    next(r["pixels_per_second"] for r in k_sweep if r["k"] == BASE.k_nearest)
    if BASE.k_nearest in K_VALUES
    else checks.k_sweep(BASE, key, [BASE.k_nearest], grid_size=GRID, batch=TIMING_BATCH,
                        repeats=TIMING_REPEATS, num_elements=1, eq_batch=1,
                        num_pixels=EQ_PIXELS)[0]["pixels_per_second"]
)  # fmt: skip
results = dict(
    equivariance_error=equivariance,
    equivariance_error_by_k=eq_by_k,
    equivariance_group=checks.CHECK_GROUP,
    decode_pixels_per_second=decode_pps,
    n_params=n_params,
    config=dataclasses.asdict(BASE),
    demo_relative_error=demo_err,
    angle_sweep=dict(angles_deg=np.rad2deg(angles), **{bi: v for bi, v in angle_sweep.items()}),
    k_sweep=k_sweep,
    timing=dict(batch=TIMING_BATCH, grid=GRID, repeats=TIMING_REPEATS),
)
assert all(equivariance[bi] <= 1e-5 for bi in EQUIVARIANT_GROUPS), equivariance
assert equivariance["absolute"] >= 1e-2, equivariance
print(f"decode: {decode_pps:,.0f} pixels/s; parameters: {n_params:,}")
print(save_results("02_enf_theory", PROFILE, results))
