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
# # 06 · Results: the whole study in one table
#
# This notebook runs last. It reads what notebooks 01–05 measured
# (`results/<profile>/NN_*.json`), adds one experiment of its own (data efficiency), and writes
# everything into one citable file, `results/<profile>/metrics.json`, together with the profile,
# the package versions, the JAX devices and the wall time of every notebook.
#
# The questions of the study, and where each answer comes from:
#
# 1. *Do equivariant latents classify dark-matter substructure as well as the best image
#    networks?* The classification table (notebook 05) next to the published anchors.
# 2. *Are they robust to rotation where CNNs are not?* Accuracy against rotation angle.
# 3. *Does equivariance help the neural field itself?* ENF vs the Functa-style CNF at the same
#    number of latent floats: reconstruction PSNR (notebook 03) and downstream accuracy.
# 4. *How much labelled data do they need?* Test accuracy of `enf_ponita` and `resnet18`
#    trained on 1 %, 10 % and 100 % of the training split (below).

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"  # common profile parameters: locate the dataset
N_TRAIN = 3000
N_VAL = 300
N_TEST = 1000
DATA_SEED = 0
WORKERS = 2  # unused here (common profile parameter)
DE_MODELS = ["enf_ponita", "resnet18"]  # models of the data-efficiency curve
DE_FRACTIONS = [0.01, 0.1, 1.0]  # fractions of the training split (1.0 reuses notebook 05)
DE_TRAIN_SECONDS = 60  # wall-time budget per run for fractions < 1
DE_MAX_EPOCHS = 300  # cap on the epochs of the small-fraction runs

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np

from enflens import data
from enflens.classify import registry
from enflens.evaluate import metrics
from enflens.io import write_json
from enflens.nn import count_params


from enflens.study.cache import is_cached
from enflens.study.results import repo_path, save_results, savefig

T_START = time.perf_counter()
metrics = report.collect(PROFILE)
r01, r02, r03, r05 = (
    metrics[k] for k in ("01_lensing_data", "02_enf_theory", "03_meta_learning", "05_classifiers")
)
models = r05["models"]
COLORS = dict(zip(registry.MODEL_NAMES, plt.get_cmap("tab10").colors, strict=False))
print(f"profile {PROFILE}: devices {metrics['jax_devices']}")
print("notebook wall times (s):", metrics["notebook_seconds"])

# %% [markdown]
# ## 1 · Classification
#
# Test accuracy and macro one-vs-rest ROC AUC of every model, each trained within the profile's
# wall-time budget with model selection on the validation split; the test split was used once
# per model. `rotated` is the mean accuracy over random rotation angles (latent models: rotated
# images re-encoded with the trained decoder); `inv. error` is the largest relative change of the
# logits under random SE(2) transforms of the latents (exactly invariant models: float rounding).

# %%
print(report.results_table(models))

# %% [markdown]
# **Published anchors**: numbers reported by other work on the same simulation recipe
# (DeepLenseSim Model II), **not on these images**: they trained on 30,000 images per class on a
# GPU, upsampled to 128 px and picked the best epoch on the test set (`RECIPES.md`, section 1).
# They show where full-scale training ends up; the `cpu` profile trains on a tenth of the data
# for minutes, so its numbers are below them by construction.

# %%
n_train = r01["n_images"]["train"]
rows = [
    (f"{name} (this repo, {PROFILE}, {n_train} train images)", 100 * m["accuracy"], m["auc_macro"])
    for name, m in models.items()
]
rows += [
    (f"{a['model']} [published: {a['source']}]", a["accuracy"], a["auc_macro"])
    for a in report.PUBLISHED_ANCHORS
]
print(f"{'model':78s} {'accuracy %':>10s} {'AUC':>8s}")
for label, acc, auc in rows:
    print(f"{label:78s} {acc:10.2f} {'-' if auc is None else f'{auc:.5f}':>8s}")

fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
ours = list(models)
ax.barh(
    range(len(ours)), [100 * models[m]["accuracy"] for m in ours], color=[COLORS[m] for m in ours]
)
pub = report.PUBLISHED_ANCHORS
ax.barh(
    range(len(ours), len(ours) + len(pub)),
    [a["accuracy"] for a in pub],
    color="lightgrey",
    hatch="//",
    edgecolor="grey",
)
ax.set_yticks(
    range(len(ours) + len(pub)),
    [f"{m} (this repo)" for m in ours] + [f"{a['model']} (published)" for a in pub],
    fontsize=8,
)
ax.invert_yaxis()
ax.set_xlabel("test accuracy (%)")
ax.axvline(100 / 3, color="k", ls=":", lw=0.8)
ax.set_title(
    f"{PROFILE} profile vs published anchors (other runs, same recipe, not same images)", fontsize=9
)
savefig(fig, "06_results_accuracy")

# %% [markdown]
# ## 2 · ROC curves and rotation robustness

# %%
fig, axes = plt.subplots(1, 4, figsize=(17, 4), layout="constrained")
for c, cls in enumerate(metrics.CLASS_NAMES):
    for name, m in models.items():
        roc = m["roc"][cls]
        axes[c].plot(roc["fpr"], roc["tpr"], color=COLORS[name], label=name)
    axes[c].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[c].set_title(f"ROC: {cls} vs rest")
    axes[c].set_xlabel("false-positive rate")
axes[0].set_ylabel("true-positive rate")
axes[0].legend(fontsize=7, loc="lower right")
ax = axes[3]
for name, m in models.items():
    curve = m["rotation_curve"]
    ax.plot(curve["angles_deg"], curve["accuracy"], "o-", color=COLORS[name], label=name)
ax.axhline(1 / 3, color="k", ls=":", lw=0.8)
ax.set_xlabel("rotation angle (degrees)")
ax.set_ylabel("test accuracy")
ax.set_title("accuracy vs rotation")
savefig(fig, "06_results_roc_rotation")

# %% [markdown]
# ## 3 · ENF vs CNF
#
# Both fields were meta-learned with the same Meta-SGD loop and the same number of latent floats
# per image (notebook 03). Left: validation PSNR against the noise-free images after each inner
# step. Right: the classifiers on their latents.

# %%
psnr = r03["psnr_db"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for kind, style in (("enf", "o-"), ("cnf", "s--")):
    steps = psnr[kind].get("per_inner_step_clean")
    if steps is not None:
        axes[0].plot(range(len(steps)), steps, style, label=kind.upper())
    print(
        f"{kind.upper()}: val PSNR vs noise-free {psnr[kind]['val_clean']:.2f} dB, "
        f"vs noisy {psnr[kind]['val_noisy']:.2f} dB"
    )
axes[0].set_xlabel("inner step")
axes[0].set_ylabel("validation PSNR vs noise-free (dB)")
axes[0].legend()
latent_models = [m for m in models if registry.input_kind(m) in ("enf", "cnf")]
axes[1].bar(
    range(len(latent_models)),
    [100 * models[m]["accuracy"] for m in latent_models],
    color=[COLORS[m] for m in latent_models],
)
axes[1].set_xticks(range(len(latent_models)), latent_models, fontsize=8)
axes[1].set_ylabel("test accuracy (%)")
savefig(fig, "06_results_enf_vs_cnf")

# %% [markdown]
# Equivariance in numbers: the decoder's equivariance error per bi-invariant (notebook 02,
# max relative error over random SE(2) elements; `absolute` is the deliberately
# non-equivariant control) and the pose error of a refitted rotated image (notebook 04).

# %%
print("decoder equivariance error:", json.dumps(r02["equivariance_error"], indent=1))
print(
    "pose error under rotation (notebook 04):",
    json.dumps(metrics["04_latent_visualization"]["pose_error"], indent=1),
)

# %% [markdown]
# ## 4 · Data efficiency
#
# `enf_ponita` and `resnet18` trained on stratified fractions of the training split, model
# selection on the full validation split, evaluated once on the test split. The 100 % points are
# notebook 05's runs, restored from the classifier cache (same configs, same data). Smaller
# fractions get `DE_TRAIN_SECONDS` of wall time each and proportionally more epochs (capped at
# `DE_MAX_EPOCHS`), so a small training set is not also starved of optimisation steps.

# %%
dataset_path = data.study_dataset_path(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED)
if not is_cached(dataset_path):
    raise FileNotFoundError(f"{dataset_path} not found: run notebook 01 with profile {PROFILE}")
meta03 = study_clf.read_meta_learning(repo_path("results", PROFILE, "03_meta_learning.json"))
cache_dir = repo_path("checkpoints", "classifiers")
efficiency = {}
for name in DE_MODELS:
    splits = {
        s: study_clf.load_inputs(name, s, dataset_path=dataset_path, latent_stores=meta03.latent_stores)
        for s in data.SPLITS
    }
    (x_tr, y_tr), val, (x_te, y_te) = splits["train"], splits["val"], splits["test"]
    budget = dict(r05["budgets"][name])
    efficiency[name] = []
    for fraction in DE_FRACTIONS:
        cfg = dict(budget)
        if fraction < 1.0:
            cfg["train_seconds"] = DE_TRAIN_SECONDS
            cfg["epochs"] = int(min(DE_MAX_EPOCHS, np.ceil(budget["epochs"] / fraction)))
        idx = study_clf.subsample(y_tr, fraction, seed=r05["seed"])
        model, hist = study_clf.train_classifier(
            name,
            (study.train.take(x_tr, idx), y_tr[idx]) if fraction < 1.0 else (x_tr, y_tr),
            val,
            model_cfg=r05["model_configs"].get(name, {}),
            train_cfg=cfg,
            augment_cfg=r05["augment"][registry.input_kind(name)],
            seed=r05["seed"],
            cache_dir=cache_dir,
            data_tag=study_clf.data_tag(
                name,
                dataset_path,
                meta03.latent_stores,
                **({"fraction": fraction} if fraction < 1.0 else {}),
            ),
            progress=False,
        )
        test = metrics.evaluate(model, x_te, y_te)
        efficiency[name].append(
            {
                "fraction": fraction,
                "n_train": int(len(idx)),
                "accuracy": test["accuracy"],
                "auc_macro": test["auc_macro"],
                "train_seconds": hist["train_seconds"],
                "epochs_run": hist["epochs_run"],
                "restored_from_cache": bool(hist["cached"]),
                "n_params": count_params(model),
            }
        )
        e = efficiency[name][-1]
        print(
            f"{name:11s} {fraction:6.0%} ({e['n_train']:5d} images): accuracy {e['accuracy']:.4f}"
            f" AUC {e['auc_macro']:.4f}, {e['train_seconds']:.0f} s"
            f"{' (restored)' if e['restored_from_cache'] else ''}"
        )

fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
for name, points in efficiency.items():
    ax.plot(
        [p["n_train"] for p in points],
        [100 * p["accuracy"] for p in points],
        "o-",
        color=COLORS[name],
        label=name,
    )
ax.set_xscale("log")
ax.set_xlabel("training images (all classes)")
ax.set_ylabel("test accuracy (%)")
ax.axhline(100 / 3, color="k", ls=":", lw=0.8)
ax.legend()
savefig(fig, "06_results_data_efficiency")

# %% [markdown]
# ## The results file
#
# `results/<profile>/metrics.json` holds everything above: the per-notebook results, the data
# efficiency runs, the profile, package versions, devices and wall times. Cite it together with
# the commit it came from.

# %%
metrics["data_efficiency"] = efficiency
metrics["published_anchors"] = report.PUBLISHED_ANCHORS
metrics["notebook_seconds"]["06_results"] = round(time.perf_counter() - T_START, 2)
metrics["total_seconds"] = round(sum(metrics["notebook_seconds"].values()), 2)
summary = {
    k: metrics[k]
    for k in (
        "profile",
        "package_versions",
        "jax_devices",
        "notebook_seconds",
        "total_seconds",
        "data_efficiency",
    )
}
print(save_results("06_results", PROFILE, summary))
print(write_json(repo_path("results", PROFILE, "metrics.json"), metrics))
print(json.dumps(metrics["notebook_seconds"], indent=1))
