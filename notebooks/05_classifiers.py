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
# # 05 · Classifiers on ENF latents and the published image baselines, side by side
#
# Notebook 03 turned every image into two compact representations with a trained decoder:
# an **ENF latent point cloud** $z = \{(p_i, \theta_i, c_i, s_i)\}$ (poses in SE(2), context
# vectors, window widths) and, for comparison, one **CNF latent vector** (a Functa-style
# conditional neural field with the same number of floats per image). Here we train
# classifiers on those latents and on the images themselves, for the three classes
# `no_sub`, `cdm`, `axion`, and compare them on equal terms:
#
# * the same training / validation / test images (the study dataset of notebook 01);
# * model selection on the **validation split only**; the test split is used once per model,
#   for the numbers reported below;
# * a **wall-time budget** per model: `enf_ponita` and `resnet18` get the same budget, so that
#   "at least as accurate as a ResNet18 trained for the same wall time" can be read off directly;
# * the same rotation-robustness measures for every model.
#
# The orchestration (loading, training with caching, metrics, rotations) lives in
# `enflens.study`; the models in `enflens.classify.latent_models` and `enflens.classify.image_models`; the trainer in
# `enflens.classify.train`.

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"
N_TRAIN = 3000  # training images per class (common profile parameters: locate the dataset)
N_VAL = 300
N_TEST = 1000
DATA_SEED = 0
WORKERS = 2  # unused here (common profile parameter)
MODELS = ["enf_mlp", "enf_ponita", "enf_transformer", "cnf_mlp", "resnet18", "c8_gcnn"]
# wall-time budget per model in seconds (includes compilation and validation)
TRAIN_SECONDS = {
    "enf_mlp": 45,
    "enf_ponita": 300,
    "enf_transformer": 150,
    "cnf_mlp": 45,
    "resnet18": 300,
    "c8_gcnn": 150,
}
# maximum epochs (also the length of the cosine schedule); chosen to roughly fill the budget
EPOCHS = {
    "enf_mlp": 100,
    "enf_ponita": 10,
    "enf_transformer": 4,
    "cnf_mlp": 100,
    "resnet18": 1,
    "c8_gcnn": 1,
}
LEARNING_RATE = {
    "enf_mlp": 1e-3,
    "enf_ponita": 1e-3,
    "enf_transformer": 1e-3,
    "cnf_mlp": 1e-3,
    "resnet18": 1e-3,
    "c8_gcnn": 1e-3,
}
MODEL_CONFIGS = {}  # per-model overrides of the config dataclasses (defaults otherwise)
AUGMENT = {}  # per input kind ("enf", "cnf", "image") overrides of registry.DEFAULT_AUGMENT
BATCH_SIZE = 64
PATIENCE = 10
SEED = 0
ROT_ANGLES = 5  # rotation angles: 0 and ROT_ANGLES - 1 random angles in (0, 360)
ROT_IMAGES = 900  # test images (stratified) for the image-rotation and latent-action curves
REFIT_IMAGES = 240  # test images (stratified) whose rotated versions are re-encoded
INVARIANCE_IMAGES = 256  # test latents for the SE(2) invariance error of the logits

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from enflens import data
from enflens.checkpoint import read_decoder_meta
from enflens.classify import registry
from enflens.classify.train import take
from enflens.evaluate import metrics, rotation
from enflens.nn import count_params


from enflens.study.cache import is_cached
from enflens.study.report import PUBLISHED_ANCHORS
from enflens.study.results import repo_path, save_results, savefig

T_START = time.perf_counter()
CLASSES = metrics.CLASS_NAMES
CACHE_DIR = repo_path("checkpoints", "classifiers")
COLORS = dict(zip(registry.MODEL_NAMES, plt.get_cmap("tab10").colors, strict=False))

# %% [markdown]
# ## Inputs
#
# The dataset is found from the common profile parameters, the latent stores and decoders from
# notebook 03's results file. Each latent store records the decoder it was fitted with; we check
# that it is the decoder notebook 03 names, and that its labels are those of the dataset split.

# %%
dataset_path = data.study_dataset_path(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED)
if not is_cached(dataset_path):
    raise FileNotFoundError(f"{dataset_path} not found: run notebook 01 with profile {PROFILE}")
meta03 = study_clf.read_meta_learning(repo_path("results", PROFILE, "03_meta_learning.json"))
decoder_hash = {}
for kind, path in meta03.decoders.items():
    decoder_meta = read_decoder_meta(path)
    decoder_hash[kind] = decoder_meta["hash"]
    print(f"{kind} decoder {path.relative_to(repo_path())}: {decoder_meta['model_config']}")

kinds = sorted({registry.input_kind(m) for m in MODELS})
inputs = {}  # kind -> split -> (x, y)
for kind in kinds:
    name = {"enf": "enf_mlp", "cnf": "cnf_mlp", "image": "resnet18"}[kind]
    inputs[kind] = {
        split: study_clf.load_inputs(
            name,
            split,
            dataset_path=dataset_path,
            latent_stores=meta03.latent_stores,
            expected_decoder_hash=decoder_hash.get(kind),
        )
        for split in data.SPLITS
    }
for kind, splits in inputs.items():
    x = splits["train"][0]
    shape = x.contexts.shape if kind == "enf" else np.shape(x)
    sizes = {s: len(y) for s, (_, y) in splits.items()}
    print(f"{kind:5s} train inputs {shape}, sizes {sizes}")

# %% [markdown]
# ## The six models
#
# **On ENF latents** (a cloud of $N$ latents, each a pose $(p_i, \theta_i)$, a context $c_i$ and
# a window $s_i$):
#
# * `enf_mlp` flattens everything $[c_i, p_i, \cos\theta_i, \sin\theta_i, s_i]$ into one vector
#   and applies an MLP. It ignores the geometry: rotating the image moves the poses and changes
#   its input. It is the control that shows what the geometry-aware models add.
# * `enf_ponita` is PONITA-style message passing. Each pair of latents is described by the
#   exact SE(2) invariant $[R(\theta_i)^\top(p_j - p_i), \cos(\theta_j-\theta_i),
#   \sin(\theta_j-\theta_i)]$, embedded into a kernel basis; ConvNeXt blocks pass messages
#   weighted by these kernels; mean pooling and an MLP head give the logits. Because only
#   invariants enter, the output is exactly invariant to rotating and translating the cloud.
# * `enf_transformer` is a transformer over the latents whose attention logits get a bias, and
#   whose values a modulation, from the same pair invariants: exactly invariant as well.
#
# **On CNF latents**: `cnf_mlp` is an MLP on the global latent vector of the Functa-style
# field, the "plain conditional neural field + MLP" of the ENF slides.
#
# **On images** (the published baselines, trained from scratch):
#
# * `resnet18`: the standard ResNet18 (11 M parameters) with a stride-2 3x3 stem for 64 px
#   inputs, so that its first stage runs at 32x32 like the published runs at 128 px.
# * `c8_gcnn`: a group-equivariant CNN for the rotation group C8 (exact for multiples of 90°,
#   bilinear filter rotation for 45°), pooled over the group: rotation invariant up to
#   interpolation.
#
# **Training**: AdamW with a warm-up + cosine schedule, batch 64, the best validation epoch is
# kept. Augmentation follows each input: latents get small Gaussian noise on poses and contexts
# and a random rotation about the image centre (the group action, see below); CNF latents get
# Gaussian noise; images get a random rotation in $[-180°, 180°]$ as in the published runs.
# Every trained model is cached under `checkpoints/classifiers/` with a hash of everything that
# determines it (model, configs, augmentation, seed, data content), so a rerun with the same
# parameters restores it (its training time is then the one measured originally).

# %%
histories, trained, summaries = {}, {}, {}
budgets = {}
for name in MODELS:
    kind = registry.input_kind(name)
    train_cfg = {
        "epochs": EPOCHS[name],
        "train_seconds": TRAIN_SECONDS[name],
        "learning_rate": LEARNING_RATE[name],
        "batch_size": BATCH_SIZE,
        "patience": PATIENCE,
    }
    budgets[name] = train_cfg
    model, hist = study_clf.train_classifier(
        name,
        inputs[kind]["train"],
        inputs[kind]["val"],
        model_cfg=MODEL_CONFIGS.get(name, {}),
        train_cfg=train_cfg,
        augment_cfg=AUGMENT.get(kind),
        seed=SEED,
        cache_dir=CACHE_DIR,
        data_tag=study_clf.data_tag(name, dataset_path, meta03.latent_stores),
        progress=False,
    )
    trained[name], histories[name] = model, hist
    print(
        f"{name:16s} {'restored' if hist['cached'] else 'trained '} {hist['train_seconds']:6.0f} s"
        f"  {hist['epochs_run']} epochs / {hist['steps']} steps ({hist['stop_reason']}), "
        f"best val acc {hist['best_val_acc']:.3f} at epoch {hist['best_epoch']}"
    )

# %% [markdown]
# ## Training curves
#
# Validation accuracy against wall time: the horizontal axis is what the budgets equalise.
# A budget shorter than one epoch (the image CNNs on CPU) shows as a single point.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for name, h in histories.items():
    t = np.cumsum(h["epoch_seconds"])
    axes[0].plot(t, h["val_acc"], "o-", ms=3, color=COLORS[name], label=name)
    axes[1].plot(t, h["train_loss"], "o-", ms=3, color=COLORS[name], label=name)
axes[0].set_ylabel("validation accuracy")
axes[1].set_ylabel("training loss (augmented batches)")
for ax in axes:
    ax.set_xlabel("training wall time (s)")
    ax.set_xscale("log")
axes[0].axhline(1 / 3, color="k", ls=":", lw=0.8)
axes[0].legend(fontsize=8)
savefig(fig, "05_classifiers_training")

# %% [markdown]
# ## Test results
#
# Each model sees the test split once, here. AUC is the macro average of the three
# one-vs-rest ROC AUCs.

# %%
x_test = {kind: inputs[kind]["test"][0] for kind in kinds}
y_test = inputs[kinds[0]]["test"][1]
eval_seconds = {}
for name in MODELS:
    kind = registry.input_kind(name)
    assert np.array_equal(inputs[kind]["test"][1], y_test)
    test, eval_seconds[name] = study.timed(
        lambda name=name, kind=kind: metrics.evaluate(trained[name], x_test[kind], y_test)
    )
    summaries[name] = report.model_entry(histories[name], test, count_params(trained[name]))

# %% [markdown]
# ROC curves (one panel per class, one-vs-rest) and confusion matrices (rows: true class).

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
for c, cls in enumerate(CLASSES):
    for name, r in summaries.items():
        roc = r["roc"][cls]
        auc = r["auc_per_class"][cls]
        axes[c].plot(roc["fpr"], roc["tpr"], color=COLORS[name], label=f"{name} ({auc:.3f})")
    axes[c].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[c].set_title(f"{cls} vs rest")
    axes[c].set_xlabel("false-positive rate")
    axes[c].legend(fontsize=7, loc="lower right")
axes[0].set_ylabel("true-positive rate")
savefig(fig, "05_classifiers_roc")

fig, axes = plt.subplots(1, len(summaries), figsize=(2.6 * len(summaries), 2.9), squeeze=False)
for ax, (name, r) in zip(axes[0], summaries.items(), strict=True):
    cm = np.asarray(r["confusion"])
    ax.imshow(cm / cm.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(3), CLASSES, fontsize=7, rotation=30)
    ax.set_yticks(range(3), CLASSES if ax is axes[0, 0] else [], fontsize=7)
    ax.set_title(f"{name}\nacc {r['accuracy']:.3f}", fontsize=8)
fig.tight_layout()
savefig(fig, "05_classifiers_confusion")

# %% [markdown]
# ## Rotation robustness
#
# A rotation of the sky about the lens centre does not change the class, so a good classifier
# should not care. We rotate by 0° and by `ROT_ANGLES - 1` random angles (random continuous
# angles, because multiples of 45° and 90° are special for the C8 CNN and for the square latent
# grid the ENF fit starts from) and measure:
#
# * **CNNs**: accuracy on the rotated test images (bilinear rotation, zero fill, the same as
#   the training augmentation).
# * **Latent models, refit** (end to end): the rotated images are encoded again with the trained
#   decoder and the same inner-loop settings as the stored latents, then classified. This is
#   what a rotated observation would go through. Costly, so on `REFIT_IMAGES` test images.
# * **ENF models, latent action**: the group element $(a, 0)$ applied to the stored test
#   latents (positions rotated about the image centre, orientations $+a$). The ENF decoder
#   satisfies $f(g x; g z) = f(x; z)$, so $g z$ decodes to the rotated image: if fitting were
#   equivariant, refit and action would agree. (`enflens.study` tests that the image rotation
#   and the action turn the same way.) CNF latents have no such action.
#
# `rotated_accuracy` is the mean over the nonzero angles. The **invariance error** is the
# largest relative change of the logits under random SE(2) transforms (rotation and
# translation) of the latents: 0 up to float rounding for an invariant model.

# %%
angles = rotation.rotation_angles(ROT_ANGLES, seed=SEED)
n_test = len(y_test)
rot_idx = study_clf.subsample(y_test, min(1.0, ROT_IMAGES / n_test), seed=SEED)
refit_idx = study_clf.subsample(y_test, min(1.0, REFIT_IMAGES / n_test), seed=SEED + 1)
inv_idx = study_clf.subsample(y_test, min(1.0, INVARIANCE_IMAGES / n_test), seed=SEED + 2)
test_images = inputs["image"]["test"][0] if "image" in inputs else None
if test_images is None:
    test_images = study_clf.load_inputs("resnet18", "test", dataset_path=dataset_path)[0]
print(f"angles (deg): {np.round(angles, 1).tolist()}")
print(f"{len(rot_idx)} images for rotation curves, {len(refit_idx)} refit, {len(inv_idx)} inv.")

refits, refit_psnr, refit_seconds = {}, {}, {}
for kind in sorted({registry.input_kind(m) for m in MODELS} - {"image"}):
    settings = study_clf.encoding_settings(meta03.latent_stores[kind]["test"])
    t0 = time.perf_counter()
    refits[kind], psnr = rotation.refit_rotated(
        meta03.decoders[kind], test_images[refit_idx], angles, **settings
    )
    refit_seconds[kind] = time.perf_counter() - t0
    refit_psnr[kind] = psnr.mean(1).tolist()
    print(
        f"{kind} refit of {len(refit_idx)} images x {len(angles)} angles "
        f"({settings}): {refit_seconds[kind]:.0f} s, PSNR per angle "
        f"{np.round(refit_psnr[kind], 1).tolist()} dB"
    )

# %%
for name in MODELS:
    kind = registry.input_kind(name)
    r = summaries[name]
    t0 = time.perf_counter()
    curve = {"angles_deg": [round(float(a), 3) for a in angles]}
    if kind == "image":
        curve["accuracy"] = rotation.image_rotation_curve(
            trained[name], test_images[rot_idx], y_test[rot_idx], angles
        )
        curve["n_images"] = len(rot_idx)
        r["rotated_accuracy_latent_action"] = None
    else:
        curve["accuracy"] = rotation.refit_curve(trained[name], refits[kind], y_test[refit_idx])
        curve["n_images"] = len(refit_idx)
        curve["latent_action_accuracy"] = None
        if kind == "enf":
            z_rot = take(x_test[kind], rot_idx)
            curve["latent_action_accuracy"] = rotation.latent_action_curve(
                trained[name], z_rot, y_test[rot_idx], angles
            )
            curve["latent_action_n_images"] = len(rot_idx)
        r["rotated_accuracy_latent_action"] = (
            None
            if curve["latent_action_accuracy"] is None
            else rotation.mean_rotated(angles, curve["latent_action_accuracy"])
        )
    r["rotation_curve"] = curve
    r["rotated_accuracy"] = rotation.mean_rotated(angles, curve["accuracy"])
    r["invariance_error"] = rotation.invariance_error(
        name, trained[name], take(x_test[kind], inv_idx), seed=SEED
    )
    eval_seconds[name] += time.perf_counter() - t0
    r["eval_seconds"] = eval_seconds[name]

fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
for name, r in summaries.items():
    c = r["rotation_curve"]
    how = "images" if registry.input_kind(name) == "image" else "refit"
    ax.plot(c["angles_deg"], c["accuracy"], "o-", color=COLORS[name], label=f"{name} ({how})")
    if c.get("latent_action_accuracy") is not None:
        ax.plot(
            c["angles_deg"],
            c["latent_action_accuracy"],
            "s--",
            color=COLORS[name],
            alpha=0.6,
            label=f"{name} (latent action)",
        )
ax.axhline(1 / 3, color="k", ls=":", lw=0.8)
ax.set_xlabel("rotation angle (degrees)")
ax.set_ylabel("test accuracy")
ax.set_xlim(-5, 365)
ax.legend(fontsize=7, ncol=2)
savefig(fig, "05_classifiers_rotation")

# %% [markdown]
# ## Summary
#
# Accuracy and AUC on the full test split; rotated accuracy (mean over the random angles) on
# the rotation subsets (refit for the latent models); invariance error of the logits under
# random SE(2) transforms of the latents; trainable parameters; training wall time (budget
# included compilation and validation) and the epoch picked on validation.

# %%
print(report.results_table(summaries))
ponita, resnet = summaries.get("enf_ponita"), summaries.get("resnet18")
if ponita and resnet:
    same_budget = TRAIN_SECONDS["enf_ponita"] == TRAIN_SECONDS["resnet18"]
    print(
        f"\nenf_ponita {ponita['accuracy']:.4f} vs resnet18 {resnet['accuracy']:.4f} test accuracy"
        f" ({'same' if same_budget else 'DIFFERENT'} budget: {TRAIN_SECONDS['enf_ponita']} s vs "
        f"{TRAIN_SECONDS['resnet18']} s; measured {ponita['train_seconds']:.0f} s vs "
        f"{resnet['train_seconds']:.0f} s)"
    )

# %% [markdown]
# For context, published numbers on DeepLenseSim Model II (other images of the same recipe,
# full 30k-per-class training sets, GPU training, 128 px upsampling, and a "best epoch" chosen
# on the test set; see `RECIPES.md`, section 1). They are not a comparison on identical data
# or compute; the profile's budgets above are far smaller.

# %%
for a in PUBLISHED_ANCHORS:
    auc = "-" if a["auc_macro"] is None else f"{a['auc_macro']:.5f}"
    print(f"{a['model']:45s} accuracy {a['accuracy']:6.2f} %  AUC {auc}  ({a['source']})")

# %% [markdown]
# ## Results file

# %%
results = {
    "profile": PROFILE,
    "dataset": dataset_path.name,
    "latent_stores": {
        k: {s: str(p.relative_to(repo_path())) for s, p in v.items()}
        for k, v in meta03.latent_stores.items()
    },
    "decoders": {k: str(p.relative_to(repo_path())) for k, p in meta03.decoders.items()},
    "decoder_hashes": decoder_hash,
    "seed": SEED,
    "budgets": budgets,
    "model_configs": MODEL_CONFIGS,
    "augment": {k: {**registry.DEFAULT_AUGMENT[k], **AUGMENT.get(k, {})} for k in kinds},
    "rotation": {
        "angles_deg": [float(a) for a in angles],
        "n_images": len(rot_idx),
        "refit_images": len(refit_idx),
        "refit_psnr_db": refit_psnr,
        "refit_seconds": refit_seconds,
        "invariance_images": len(inv_idx),
    },
    "models": summaries,
    "notebook_seconds": time.perf_counter() - T_START,
}
print(save_results("05_classifiers", PROFILE, results))
print(f"notebook wall time {results['notebook_seconds']:.0f} s")
