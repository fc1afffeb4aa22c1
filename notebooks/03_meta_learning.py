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
# at once. The ENF initialisation puts the positions on a $5\times5$ grid with orientations $0$
# and one learned context vector shared by all latents (`enflens.fitting`), so the starting
# cloud carries no image-specific information.
#
# **The baseline** is a Functa-style conditional neural field (`enflens.fields.cnf`): a SIREN whose
# layers are shifted by a linear function of one global latent *vector*, fitted by the same
# Meta-SGD loop. It gets exactly as many latent floats per image as the ENF (positions +
# orientations + contexts), and the same wall-time training budget.
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
# ENF decoder (enflens.fields.enf.ENFConfig fields) and its Meta-SGD adapter (enflens.adapters.enf_adapter):
# the cpu-sized decoder (hidden 64, k = 4) and the rates that trained it fastest (bench/fitting.py)
ENF_CONFIG = {"num_latents": 25, "latent_dim": 32, "hidden": 64, "num_heads": 2, "k_nearest": 4,
              "num_rff": 32}  # fmt: skip
ENF_ADAPTER = {"lr_positions": 1.0, "lr_orientations": 1.0, "lr_contexts": 150.0}
# CNF decoder (enflens.fields.cnf.CNFConfig fields); latent_dim is set to the ENF's latent floats
CNF_CONFIG = {"hidden": 128, "num_layers": 3, "w0": 30.0}
CNF_ADAPTER = {"lr_init": 1.0}
# Meta-SGD settings (enflens.outer.MetaConfig fields) of both models, then per-model changes
# (the SIREN CNF needs a much lower outer rate than the ENF)
META = {"inner_steps": 3, "inner_pixels": 256, "outer_pixels": 512, "batch_size": 8,
        "outer_lr": 1e-2, "lr_lr": 1e-2, "warmup_steps": 50, "first_order": False}  # fmt: skip
META_OVERRIDES = {"enf": {}, "cnf": {"outer_lr": 3e-4}}
TRAIN_SECONDS = 270  # wall-time budget of each model's meta-training (the same for both)
EVAL_IMAGES = 64  # validation images of the PSNR logged during training
FIT = {"pixels": 1024, "sampling": "stratified", "batch_size": 64}  # encoding (inner steps: META)
N_CLEAN = 300  # validation images scored against their noise-free re-render
N_ROTATION = 64  # validation images of the rotation check (FIT batch_size: no recompilation)

# %%
import dataclasses
import json
import time

import jax
import matplotlib.pyplot as plt
import numpy as np

from enflens import data, grid
from enflens.data import renders
from enflens.evaluate import rotation
from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.fields.enf import ENFConfig
from enflens.metalearn import encode as encode_mod
from enflens.metalearn import outer
from enflens.metalearn.latent_store import read_latent_store
from enflens.study.cache import is_cached, record_params, stage_path
from enflens.study.results import repo_path, save_results, savefig
from enflens.viz import show_image

KINDS = ("enf", "cnf")
COLORS = {"enf": "tab:blue", "cnf": "tab:orange"}
t_notebook = time.perf_counter()

# %% [markdown]
# ## Data
#
# The study dataset is found from the common profile parameters (notebook 01 made it). Images
# are $64\times64$, normalised per image by their maximum, labels `no_sub`, `cdm`, `axion`.

# %%
ds_path = data.study_dataset_path(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED)
if not is_cached(ds_path):
    raise FileNotFoundError(f"{ds_path} not found: run notebook 01 with profile {PROFILE!r} first")
splits = {s: data.load(ds_path, s, recipe=RECIPE) for s in data.SPLITS}
CLASSES = splits["train"].class_names
image_shape = (*splits["train"].images.shape[1:], 1)  # (H, W, C)
for s, d in splits.items():
    print(f"{s:5s} {d.images.shape}")

# %% [markdown]
# ## The two models
#
# Both decoders are built from the parameter cell. The CNF latent dimension is set to the
# number of floats the ENF fits per image, $N\,(2 + 1 + D)$.

# %%
enf_adapter = adapters.enf_adapter(ENFConfig(**ENF_CONFIG), seed=SEED, **ENF_ADAPTER)
n_floats = adapters.latent_floats(enf_adapter)
cnf_adapter = adapters.cnf_adapter(
    CNFConfig(**{**CNF_CONFIG, "latent_dim": n_floats}), seed=SEED, **CNF_ADAPTER
)
adapters = {"enf": enf_adapter, "cnf": cnf_adapter}
meta_cfgs = {
    k: outer.MetaConfig(
        **{**META, **META_OVERRIDES.get(k, {})}, seed=SEED, eval_images=EVAL_IMAGES
    )
    for k in KINDS
}
n_params = {k: int(sum(x.size for x in jax.tree.leaves(a.params))) for k, a in adapters.items()}
for k, a in adapters.items():
    print(f"{k}: {n_params[k]:,} decoder parameters, {adapters.latent_floats(a)} latent floats")
    print(f"     {json.dumps(a.model_config)}")
print(meta_cfgs["enf"])

# %% [markdown]
# ## Meta-training with equal wall-time budgets
#
# Each model gets `TRAIN_SECONDS` of wall time. The learning-rate schedule (warm-up, then cosine
# decay) needs the number of outer steps in advance, so `fit_eval.meta_train_for` first times a
# few steps and then runs `outer.meta_train` for as many steps as fit the budget; a tenth of
# the budget is left for the validation PSNR logged along the way (on `EVAL_IMAGES` images).
#
# **Caching.** The trained decoder is an orbax checkpoint at
# `checkpoints/<kind>_decoder-<hash>`, the hash taken over everything that determines it (dataset
# file, model and Meta-SGD configs, budget, seed). If it exists it is reused together with its
# training history (stored in its `meta.json`); delete it to retrain.


# %%
def decoder_cache_params(kind: str) -> dict:
    cfg = dataclasses.asdict(meta_cfgs[kind])
    for name in ("num_steps", "eval_every", "checkpoint_every"):  # set by meta_train_for
        cfg.pop(name)
    return {
        "dataset": ds_path.name,
        "kind": kind,
        "model_config": adapters[kind].model_config,
        "meta_config": cfg,
        "train_seconds": TRAIN_SECONDS,
        "seed": SEED,
    }


decoder_paths, reused = {}, {}
for kind in KINDS:
    params = decoder_cache_params(kind)
    path = stage_path("checkpoints", f"{kind}_decoder", params)
    reused[f"{kind}_decoder"] = is_cached(path)
    if not reused[f"{kind}_decoder"]:
        run = fit_eval.meta_train_for(
            adapters[kind], splits["train"].images, meta_cfgs[kind], TRAIN_SECONDS,
            val_images=splits["val"].images[:EVAL_IMAGES],
        )  # fmt: skip
        extra = {
            "dataset": ds_path.name,
            "meta_config": dataclasses.asdict(run.config),
            "history": run.result.history,
            "train_seconds": run.seconds,
            "outer_steps": run.config.num_steps,
            "calibration_steps_per_second": run.calibration_steps_per_second,
        }
        adapters.save_trained(path, adapters[kind], run.result.state.params, image_shape, extra)
        record_params(path, params)
    decoder_paths[kind] = path
    print(f"{kind}: {'reused' if reused[f'{kind}_decoder'] else 'trained'} {path.name}")

# The rest of the notebook uses the decoders as stored (identical whether trained or reused).
models = {k: adapters.load_trained(p) for k, p in decoder_paths.items()}  # (adapter, params, meta)
for kind, (_, params, meta) in models.items():
    rates = jax.tree.map(lambda a: float(np.mean(a)), models[kind][0].inner_rates(params))
    print(
        f"{kind}: {meta['outer_steps']} outer steps in {meta['train_seconds']:.0f} s "
        f"({meta['outer_steps'] / meta['train_seconds']:.2f} steps/s); "
        f"mean learned inner rates {rates}"
    )

# %% [markdown]
# ### Training curves
#
# The outer loss (median over the logging interval, on the training batches after $K$ inner
# steps) and the validation PSNR after $K$ steps, against outer steps and against wall time.
# The right-hand column is the comparison at **equal training time**.

# %%
hist = {k: outer.history_table(m[2]["history"]) for k, m in models.items()}
fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
for kind, h in hist.items():
    kw = {"color": COLORS[kind], "label": kind.upper()}
    axes[0, 0].semilogy(h["step"], h["loss"], **kw)
    axes[0, 1].semilogy(h["seconds"], h["loss"], **kw)
    if len(h["val_step"]):
        axes[1, 0].plot(h["val_step"], h["val_psnr"][:, -1], "o-", **kw)
        axes[1, 1].plot(h["val_seconds"], h["val_psnr"][:, -1], "o-", **kw)
for ax in axes[:, 0]:
    ax.set_xlabel("outer step")
for ax in axes[:, 1]:
    ax.set_xlabel("wall time (s)")
    ax.axvline(TRAIN_SECONDS, color="k", ls=":", lw=0.8)
for ax in axes[0]:
    ax.set_ylabel("outer MSE (train batches)")
for ax in axes[1]:
    ax.set_ylabel(f"val PSNR after {META['inner_steps']} steps (dB)")
axes[0, 0].legend()
fig.suptitle(f"Meta-SGD training, {TRAIN_SECONDS} s budget each")
savefig(fig, "03_meta_learning_training")

# %% [markdown]
# ## Encoding every image into a latent store
#
# Each split is encoded with the trained decoder: $K$ inner steps from the learned
# initialisation, `FIT["pixels"]` pixels per step (as in training), `FIT["batch_size"]` images
# per jitted call. A store (`enflens.metalearn.latent_store`) keeps the latents, labels, the PSNR of each
# fit and the hash of its decoder; its file name carries a hash of the decoder hash, the split
# and these settings, so a rerun reuses it.

# %%
K = META["inner_steps"]
fit_settings = {
    "steps": K,
    "pixels": FIT["pixels"],
    "sampling": FIT["sampling"],
    "batch_size": FIT["batch_size"],
    "seed": SEED,
}
store_paths: dict[str, dict] = {k: {} for k in KINDS}
stores: dict[str, dict] = {k: {} for k in KINDS}
for kind, (adapter, params, meta) in models.items():
    for split, d in splits.items():
        sp = {"decoder_hash": meta["hash"], "dataset": ds_path.name, "split": split, **fit_settings}
        path = stage_path("data", f"latents_{kind}_{split}", sp, ".h5")
        reused[f"{kind}_{split}"] = is_cached(path)
        if not reused[f"{kind}_{split}"]:
            t0 = time.perf_counter()
            encode_mod.encode_dataset(
                adapter, params, d.images, d.labels, path,
                decoder_path=str(decoder_paths[kind].relative_to(repo_path())),
                decoder_hash=meta["hash"], decoder_image_shape=image_shape,
                steps=K, pixels=FIT["pixels"], sampling=FIT["sampling"],
                batch_size=FIT["batch_size"], seed=SEED,
                extra_attrs={"dataset": ds_path.name, "split": split,
                             "batch_size": FIT["batch_size"]},
            )  # fmt: skip
            record_params(path, sp)
            print(f"{kind} {split}: encoded {len(d)} images in {time.perf_counter() - t0:.0f} s")
        stores[kind][split] = read_latent_store(
            path, expected_hash=meta["hash"], expected_kind=kind
        )
        assert np.array_equal(stores[kind][split].labels, d.labels), path
        store_paths[kind][split] = path
    print(kind, {s: f"{st.psnr.mean():.2f} dB" for s, st in stores[kind].items()})

# %% [markdown]
# Fitting throughput: one jitted batch of `FIT["batch_size"]` validation images, median of three
# timed calls after a warm-up call (the cost of one encoding, independent of the cache).

# %%
fit_ips = {}
batch = splits["val"].images[: FIT["batch_size"]]
batch = np.concatenate([batch] * -(-FIT["batch_size"] // len(batch)))[: FIT["batch_size"]]
for kind, (adapter, params, _) in models.items():
    times = []
    for rep in range(4):
        t0 = time.perf_counter()
        _, s = encode_mod.fit_latents(
            adapter, params, batch, steps=K, pixels=FIT["pixels"], sampling=FIT["sampling"],
            key=jax.random.PRNGKey(rep),
        )  # fmt: skip
        jax.block_until_ready(s)
        times.append(time.perf_counter() - t0)
    fit_ips[kind] = len(batch) / float(np.median(times[1:]))
    print(f"{kind}: {fit_ips[kind]:.1f} images/s")

# %% [markdown]
# ## Reconstruction quality against the noise-free images
#
# The stored images are noisy. The simulator re-renders the noise-free image of each sample
# from its stored description (`lensing.render(..., noise=False)`), which we divide by the
# *same* per-image maximum as the stored image. A field that fits the lens but not the noise
# scores higher against the noise-free image than against the noisy one. We score the first
# `N_CLEAN` validation images (classes interleaved) after each of the $0..K$ inner steps, with
# the encoding settings, so that step $K$ reproduces the latent store.

# %%
n_clean = min(N_CLEAN, len(splits["val"]))
idx = np.arange(n_clean)
noisy = splits["val"].images[idx]
t0 = time.perf_counter()
clean = renders.noise_free_images(ds_path, "val", idx)
noise_floor = grid.psnr(noisy, clean)
print(
    f"re-rendered {n_clean} noise-free images in {time.perf_counter() - t0:.1f} s; "
    f"noisy vs noise-free: {noise_floor.mean():.1f} dB (median {np.median(noise_floor):.1f})"
)
curves = {}
for kind, (adapter, params, _) in models.items():
    curves[kind] = encode_mod.psnr_path(
        adapter, params, noisy, {"clean": clean}, steps=K, pixels=FIT["pixels"],
        sampling=FIT["sampling"], batch_size=FIT["batch_size"], seed=SEED,
    )  # fmt: skip
    # step K of the path is the stored encoding of these images
    diff = np.abs(curves[kind]["fitted"][-1] - stores[kind]["val"].psnr[:n_clean])
    assert diff.max() < 0.05, f"{kind}: path PSNR differs from the store by {diff.max():.3f} dB"
    print(
        f"{kind}: PSNR after 0..{K} steps vs noisy "
        f"{np.round(curves[kind]['fitted'].mean(1), 2).tolist()}, vs noise-free "
        f"{np.round(curves[kind]['clean'].mean(1), 2).tolist()} dB"
    )

# %% [markdown]
# ### PSNR after each inner step
#
# Step 0 is the learned initialisation decoded (the same field for every image); the learned
# rates make the first step do most of the work. Bands: 16-84 % of the images.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", sharey=True)
steps = np.arange(K + 1)
for ax, target in zip(axes, ("fitted", "clean"), strict=True):
    for kind in KINDS:
        c = curves[kind][target]
        lo, hi = np.percentile(c, [16, 84], axis=1)
        ax.fill_between(steps, lo, hi, color=COLORS[kind], alpha=0.2)
        ax.plot(steps, c.mean(1), "o-", color=COLORS[kind], label=kind.upper())
    ax.set_xticks(steps)
    ax.set_xlabel("inner step")
    ax.set_title(
        "against the noisy image" if target == "fitted" else "against the noise-free image"
    )
axes[0].set_ylabel("PSNR (dB)")
axes[0].legend()
savefig(fig, "03_meta_learning_inner_steps")

# %% [markdown]
# ### Reconstructions per class
#
# One validation image per class: the noisy input, the noise-free render, each model's field
# after $K$ steps and its residual against the noise-free image (same colour scale for both
# models).

# %%
bs = FIT["batch_size"]
first = np.resize(noisy[:bs], (bs, *noisy.shape[1:]))  # the first encoding batch (padded)
show = [int(np.flatnonzero(splits["val"].labels[: min(bs, n_clean)] == c)[0]) for c in range(3)]
recs = {}
for kind, (adapter, params, _) in models.items():
    _, path_recs = encode_mod.fit_path(
        adapter, params, first, steps=K, pixels=FIT["pixels"], sampling=FIT["sampling"],
        key=jax.random.fold_in(jax.random.PRNGKey(SEED), 0),  # as batch 0 of the encoding
    )  # fmt: skip
    recs[kind] = path_recs[-1, show, ..., 0]  # (3, H, W)
lim = max(np.abs(recs[k] - clean[show]).max() for k in KINDS)
cols = ["noisy input", "noise-free", "ENF", "ENF - noise-free", "CNF", "CNF - noise-free"]
fig, axes = plt.subplots(3, 6, figsize=(13, 6.6), layout="constrained")
for r, i in enumerate(show):
    panels = [noisy[i], clean[i], recs["enf"][r], recs["enf"][r] - clean[i], recs["cnf"][r],
              recs["cnf"][r] - clean[i]]  # fmt: skip
    for c, (ax, img) in enumerate(zip(axes[r], panels, strict=True)):
        resid = c in (3, 5)
        vrange = {"vmin": -lim, "vmax": lim} if resid else {"vmin": 0, "vmax": 1}
        im = show_image(ax, img, cmap="RdBu_r" if resid else "magma", **vrange)
        if r == 0:
            ax.set_title(cols[c], fontsize=9)
        if c in (2, 4):
            ax.set_xlabel(f"{grid.psnr(img[None], clean[i][None])[0]:.1f} dB", fontsize=8)
    axes[r, 0].set_ylabel(CLASSES[splits["val"].labels[i]])
fig.colorbar(im, ax=axes[:, 5], shrink=0.6, label="residual")
savefig(fig, "03_meta_learning_reconstructions")

# %% [markdown]
# ## Rotating the image: fit of the rotated image vs the rotated fit
#
# Rotate an image by a random angle $a$ and fit it again: $z_r = \mathrm{fit}(I \circ R_{-a})$.
# For an equivariant model *and* an equivariant fitting procedure, the field of $z_r$ is the
# rotated field of $z = \mathrm{fit}(I)$. `rotation.rotation_consistency` measures the PSNR
# between $f(x; z_r)$ and $f(R_{-a}x; z)$ inside the inscribed disk (corners leave the frame).
# The ENF decoder is exactly equivariant, but the inner loop starts from the *same* grid of
# latents (orientations 0) for every image, which is only symmetric under multiples of
# $90°$; notebook 04 looks at what this does to the latent poses.

# %%
n_rot = min(N_ROTATION, len(splits["val"]))
angles = np.random.default_rng(SEED).uniform(0.0, 2 * np.pi, n_rot)
rotation = {}
for kind, (adapter, params, _) in models.items():
    rc = rotation.rotation_consistency(
        adapter, params, splits["val"].images[:n_rot], angles, steps=K, pixels=FIT["pixels"],
        key=jax.random.PRNGKey(SEED),
    )  # fmt: skip
    rotation[kind] = {name: float(np.mean(v)) for name, v in rc.items()}
    print(
        f"{kind}: rotated fit vs fit of rotated image {rotation[kind]['consistency']:.2f} dB; "
        f"fit of rotated image {rotation[kind]['fit_rotated']:.2f} dB, "
        f"of the original {rotation[kind]['fit_original']:.2f} dB"
    )

# %% [markdown]
# ## Results
#
# `latent_stores` and `decoders` (paths relative to the repository root) are what notebook 05
# reads.

# %%
rel = lambda p: str(p.relative_to(repo_path()))  # noqa: E731
psnr_db = {
    kind: {
        "val_noisy": float(stores[kind]["val"].psnr.mean()),
        "val_clean": float(curves[kind]["clean"][-1].mean()),
        "per_inner_step_clean": curves[kind]["clean"].mean(1).tolist(),
        "per_inner_step_noisy": curves[kind]["fitted"].mean(1).tolist(),
        "train_noisy": float(stores[kind]["train"].psnr.mean()),
        "test_noisy": float(stores[kind]["test"].psnr.mean()),
        "n_clean_images": n_clean,
    }
    for kind in KINDS
}
results = {
    "dataset": ds_path.name,
    "psnr_db": psnr_db,
    "noise_floor_psnr_db": float(noise_floor.mean()),
    "rotation_psnr_db": rotation,
    "outer_steps_per_second": {
        k: m[2]["outer_steps"] / m[2]["train_seconds"] for k, m in models.items()
    },
    "outer_steps_per_second_calibrated": {  # pure step rate, before the run
        k: m[2]["calibration_steps_per_second"] for k, m in models.items()
    },
    "fit_images_per_second": fit_ips,
    "train_seconds": {k: m[2]["train_seconds"] for k, m in models.items()},
    "train_budget_seconds": TRAIN_SECONDS,
    "outer_steps": {k: m[2]["outer_steps"] for k, m in models.items()},
    "latent_floats": {k: adapters.latent_floats(m[0]) for k, m in models.items()},
    "decoder_params": n_params,
    "model_configs": {k: m[0].model_config for k, m in models.items()},
    "meta_configs": {k: m[2]["meta_config"] for k, m in models.items()},
    "fit_settings": fit_settings,
    "decoder_hashes": {k: m[2]["hash"] for k, m in models.items()},
    "reused_cached": reused,
    "latent_stores": {k: {s: rel(p) for s, p in v.items()} for k, v in store_paths.items()},
    "decoders": {k: rel(p) for k, p in decoder_paths.items()},
    "notebook_seconds": time.perf_counter() - t_notebook,
}
print(save_results("03_meta_learning", PROFILE, results))
print(json.dumps({k: results[k] for k in ("psnr_db", "rotation_psnr_db")}, indent=1))
