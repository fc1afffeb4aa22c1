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
# 4. *How much labelled data do they need?* Test accuracy of every model trained on 1 %, 10 %
#    and 100 % of the training split (below, `enflens.study.stages.data_efficiency`).

# %% tags=["parameters"]
PROFILE = "cpu"
RECIPE = "model_ii"  # common profile parameters: locate the dataset
N_TRAIN = 3000
N_VAL = 300
N_TEST = 1000
DATA_SEED = 0
WORKERS = 2  # unused here (common profile parameter)
DE_MODELS = ["enf_mlp", "enf_ponita", "enf_transformer", "cnf_mlp", "resnet18", "c8_gcnn"]
DE_FRACTIONS = [0.01, 0.1, 1.0]  # fractions of the training split (1.0 reuses notebook 05)
# Optimiser steps of every run on a fraction below 1 (batch 64), on notebook 05's rule of
# equal wall time: ~25-30 s per run for every model (measured on 2 cores, one validation and
# the compilation included: 320 x ~0.09 s for enf_transformer, 20 x ~1.4 s, 30 x ~0.9 s,
# 15,000 x ~1.8 ms; ~6 min for the 12 runs); enf_ponita's slot-reading config (notebook 05)
# takes 4.5-4.7x enf_mlp's time per step (bench/latent_classifiers.py), so 3,000 steps;
# plus one compilation per model, one validation per run and the test evaluations (the CNNs'
# ~10-15 ms per image dominate).
DE_STEPS = {
    "enf_mlp": 15000,
    "enf_ponita": 3000,
    "enf_transformer": 320,
    "cnf_mlp": 15000,
    "resnet18": 20,
    "c8_gcnn": 30,
}
DE_EVALUATIONS = 1  # validations per run on a fraction below 1 (evenly spaced, the last at the end)

# %%
import json
import time

from enflens.classify import registry
from enflens.study import plots, report, stages
from enflens.study.classifiers import read_meta_learning
from enflens.study.results import repo_path, save_results, savefig

T_START = time.perf_counter()
collected = report.collect(PROFILE)
r01, r02, r03, r05 = (
    collected[k] for k in ("01_lensing_data", "02_enf_theory", "03_meta_learning", "05_classifiers")
)
models = {m: r05["models"][m] for m in registry.MODEL_NAMES if m in r05["models"]}  # table order
print(f"profile {PROFILE}: devices {collected['jax_devices']}, host CPU {collected['host_cpu']}")
print("notebook wall times (s):", collected["notebook_seconds"])

# %% [markdown]
# ## 1 · Classification
#
# Test accuracy and macro one-vs-rest ROC AUC of every model, each trained for the profile's
# step budget with model selection on the validation split; the test split was used once
# per model. `rotated` is the mean accuracy over random rotation angles (latent models: rotated
# images re-encoded with the trained decoder); `inv. error` is the largest relative change of the
# logits under random SE(2) transforms of the latents (exactly invariant models: float rounding).

# %%
print(report.results_table(models))

# %% [markdown]
# **What each route cost**, in seconds on the machine of this run: the field's meta-learning and
# the encoding of every split (paid once, shared by the three ENF classifiers: each row shows the
# full route) and the classifier's own training. The image CNNs pay only for their training.

# %%
print(report.pipeline_costs_table(report.pipeline_costs(r03, models), models))

# %% [markdown]
# **Published anchors**: numbers reported by other work on the same simulation recipe
# (DeepLenseSim Model II), **not on these images**: they trained on 30,000 images per class on a
# GPU, upsampled to 128 px and picked the best epoch on the test set (`docs/references.md`,
# section 1). They show where full-scale training ends up; the `cpu` profile trains on a tenth of
# the data for minutes, so its numbers are below them by construction.

# %%
n_train = r01["n_images"]["train"]
rows = [(f"{name} (this repo, {PROFILE}, {n_train} train images)", 100 * m["accuracy"],
         m["auc_macro"]) for name, m in models.items()]  # fmt: skip
rows += [(f"{a['model']} [published: {a['source']}]", a["accuracy"], a["auc_macro"])
         for a in report.PUBLISHED_ANCHORS]  # fmt: skip
print(f"{'model':78s} {'accuracy %':>10s} {'AUC':>8s}")
for label, acc, auc in rows:
    print(f"{label:78s} {acc:10.2f} {'-' if auc is None else f'{auc:.5f}':>8s}")
title = f"{PROFILE} profile vs published anchors (other runs, same recipe, not same images)"
savefig(plots.accuracy_vs_anchors(models, report.PUBLISHED_ANCHORS, title), "06_results_accuracy")

# %% [markdown]
# ## 2 · ROC curves and rotation robustness

# %%
fig, axes = plots.roc_curves(models, extra_axis=True)
curves = {name: m["rotation_curve"] for name, m in models.items()}
plots.rotation_curves(r05["rotation"]["angles_deg"], curves, ax=axes[-1])
axes[-1].set_title("accuracy vs rotation")
savefig(fig, "06_results_roc_rotation")

# %% [markdown]
# ## 3 · ENF vs CNF
#
# Both fields were meta-learned with the same Meta-SGD loop and the same number of latent floats
# per image (notebook 03). Left: validation PSNR against the noise-free images after each inner
# step. Right: the classifiers on their latents.

# %%
psnr = r03["psnr_db"]
for kind in ("enf", "cnf"):
    if kind in psnr:
        print(f"{kind.upper()}: val PSNR vs noise-free {psnr[kind]['val_clean']:.2f} dB, "
              f"vs noisy {psnr[kind]['val_noisy']:.2f} dB")  # fmt: skip
savefig(plots.enf_vs_cnf(psnr, models), "06_results_enf_vs_cnf")

# %% [markdown]
# Equivariance in numbers: the decoder's equivariance error per bi-invariant (notebook 02,
# max relative error over random SE(2) elements; `absolute` is the deliberately
# non-equivariant control) and the end-to-end equivariance of fitting: rotated images refitted
# from the equivariant start against the rotated latents, with the fixed start as the control
# (notebook 04).

# %%
print("decoder equivariance error:", json.dumps(r02["equivariance_error"], indent=1))
print(
    "end-to-end equivariance of fitting (notebook 04):",
    json.dumps(collected["04_latent_visualization"]["end_to_end"], indent=1),
)

# %% [markdown]
# ## 4 · Data efficiency
#
# Every model trained on stratified fractions of the training split, model selection on the
# full validation split, evaluated once on the test split. The 100 % points are notebook 05's
# runs, restored from the classifier cache (same configs, same data, same steps). Smaller
# fractions get `DE_STEPS[model]` optimiser steps each (fewer than notebook 05's, to keep the
# notebook short: read the curve as "what a short run on little data gives"), with
# notebook 05's other settings.

# %%
dataset_file, _ = stages.dataset_path(RECIPE, N_TRAIN, N_VAL, N_TEST, DATA_SEED)
meta03 = read_meta_learning(repo_path("results", PROFILE, "03_meta_learning.json"))
kinds = tuple(sorted({registry.input_kind(m) for m in DE_MODELS}))
inputs = stages.classifier_inputs(dataset_file, meta03, kinds)
de = stages.data_efficiency(
    DE_MODELS, inputs, r05["train_configs"], DE_FRACTIONS, steps=DE_STEPS,
    evaluations=DE_EVALUATIONS, model_cfgs=r05["model_configs"], augment=r05["augment"],
    seed=r05["seed"],
)  # fmt: skip
for name, points in de.points.items():
    for p in points:
        print(f"{name:16s} {p['fraction']:6.0%} ({p['n_train']:5d} images, {p['steps']:5d} steps):"
              f" accuracy {p['accuracy']:.4f} AUC {p['auc_macro']:.4f}, {p['train_seconds']:.0f} s"
              f"{' (restored)' if p['restored_from_cache'] else ''}")  # fmt: skip
savefig(plots.data_efficiency(de.points), "06_results_data_efficiency")

# %% [markdown]
# ## The results file
#
# `results/<profile>/metrics.json` holds everything above: the per-notebook results, the data
# efficiency runs, the profile, package versions, devices and wall times. Cite it together with
# the commit it came from.

# %%
collected["data_efficiency"] = de.points
collected["published_anchors"] = report.PUBLISHED_ANCHORS
collected["notebook_seconds"]["06_results"] = round(time.perf_counter() - T_START, 2)
collected["total_seconds"] = round(sum(collected["notebook_seconds"].values()), 2)
keys = ("profile", "package_versions", "jax_devices", "host_cpu", "notebook_seconds",
        "total_seconds", "data_efficiency")  # fmt: skip
print(save_results("06_results", PROFILE, {k: collected[k] for k in keys}))
print(save_results("metrics", PROFILE, collected))
print(json.dumps(collected["notebook_seconds"], indent=1))
