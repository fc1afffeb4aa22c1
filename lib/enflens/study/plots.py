"""The figures of notebooks 05 (classifiers) and 06 (results), drawn from their results records.

Every function takes the records the stages return or the notebooks save (a model's record is
:func:`enflens.study.report.model_entry` plus the rotation curve) and returns the matplotlib
figure; the notebooks save it with :func:`enflens.study.results.savefig`. One colour per model
(:data:`COLORS`) throughout.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from enflens.classify import registry
from enflens.evaluate.metrics import CLASS_NAMES

#: One colour per model of :data:`enflens.classify.registry.MODEL_NAMES`.
COLORS: dict[str, Any] = dict(zip(registry.MODEL_NAMES, plt.get_cmap("tab10").colors, strict=False))

Records = dict[str, dict[str, Any]]


def training_curves(models: Records) -> plt.Figure:
    """Validation accuracy and training loss against the optimiser step, one line per model
    (``record["history"]``: ``step``, ``val_acc``, ``train_loss``)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    for name, r in models.items():
        h = r["history"]
        axes[0].plot(h["step"], h["val_acc"], "o-", ms=3, color=COLORS[name], label=name)
        axes[1].plot(h["step"], h["train_loss"], "o-", ms=3, color=COLORS[name], label=name)
    axes[0].set_ylabel("validation accuracy")
    axes[1].set_ylabel("training loss (augmented batches)")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.set_xscale("log")
    axes[0].axhline(1 / 3, color="k", ls=":", lw=0.8)
    axes[0].legend(fontsize=8)
    return fig


def roc_curves(models: Records, extra_axis: bool = False) -> tuple[plt.Figure, Any]:
    """One-vs-rest ROC curves, one panel per class (``record["roc"]``, ``auc_per_class``).
    With ``extra_axis`` a fourth, empty panel is returned for another plot."""
    n = len(CLASS_NAMES) + int(extra_axis)
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 4), layout="constrained")
    for c, cls in enumerate(CLASS_NAMES):
        for name, r in models.items():
            roc, auc = r["roc"][cls], r["auc_per_class"][cls]
            axes[c].plot(roc["fpr"], roc["tpr"], color=COLORS[name], label=f"{name} ({auc:.3f})")
        axes[c].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[c].set_title(f"{cls} vs rest")
        axes[c].set_xlabel("false-positive rate")
        axes[c].legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("true-positive rate")
    return fig, axes


def confusion_matrices(models: Records) -> plt.Figure:
    """Test confusion matrix of every model (rows: true class; colour: row-normalised)."""
    fig, axes = plt.subplots(1, len(models), figsize=(2.6 * len(models), 2.9), squeeze=False)
    for ax, (name, r) in zip(axes[0], models.items(), strict=True):
        cm = np.asarray(r["confusion"])
        ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for i in range(len(CLASS_NAMES)):
            for j in range(len(CLASS_NAMES)):
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7, rotation=30)
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES if ax is axes[0, 0] else [], fontsize=7)
        ax.set_title(f"{name}\nacc {r['accuracy']:.3f}", fontsize=8)
    fig.tight_layout()
    return fig


def rotation_curves(angles_deg: list[float], curves: Records, ax: Any = None) -> plt.Figure:
    """Test accuracy against the rotation angle: rotated images (CNNs) or refits (latent
    models), solid; the latent action on the stored latents (ENF models), dashed."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    for name, c in curves.items():
        how = "images" if registry.input_kind(name) == "image" else "refit"
        ax.plot(angles_deg, c["accuracy"], "o-", color=COLORS[name], label=f"{name} ({how})")
        if c.get("latent_action_accuracy") is not None:
            ax.plot(angles_deg, c["latent_action_accuracy"], "s--", color=COLORS[name],
                    alpha=0.6, label=f"{name} (latent action)")  # fmt: skip
    ax.axhline(1 / 3, color="k", ls=":", lw=0.8)
    ax.set_xlabel("rotation angle (degrees)")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(-5, 365)
    ax.legend(fontsize=7, ncol=2)
    return ax.figure


def accuracy_vs_anchors(models: Records, anchors: list[dict[str, Any]], title: str) -> plt.Figure:
    """Horizontal bars: this repository's test accuracies (colours) and the published anchors
    (grey, hatched: other runs on the same recipe, not the same images)."""
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    ours = list(models)
    ax.barh(range(len(ours)), [100 * models[m]["accuracy"] for m in ours],
            color=[COLORS[m] for m in ours])  # fmt: skip
    ax.barh(range(len(ours), len(ours) + len(anchors)), [a["accuracy"] for a in anchors],
            color="lightgrey", hatch="//", edgecolor="grey")  # fmt: skip
    labels = [f"{m} (this repo)" for m in ours] + [f"{a['model']} (published)" for a in anchors]
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")
    ax.axvline(100 / 3, color="k", ls=":", lw=0.8)
    ax.set_title(title, fontsize=9)
    return fig


def enf_vs_cnf(psnr_db: dict[str, dict[str, Any]], models: Records) -> plt.Figure:
    """Left: validation PSNR (vs the noise-free images) after each inner step, ENF and CNF
    (``psnr_db[kind]["per_inner_step_clean"]``, notebook 03). Right: the latent classifiers'
    test accuracy."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for kind, style in (("enf", "o-"), ("cnf", "s--")):
        steps = psnr_db.get(kind, {}).get("per_inner_step_clean")
        if steps is not None:
            axes[0].plot(range(len(steps)), steps, style, label=kind.upper())
    axes[0].set_xlabel("inner step")
    axes[0].set_ylabel("validation PSNR vs noise-free (dB)")
    axes[0].legend()
    latent = [m for m in models if registry.input_kind(m) in ("enf", "cnf")]
    axes[1].bar(range(len(latent)), [100 * models[m]["accuracy"] for m in latent],
                color=[COLORS[m] for m in latent])  # fmt: skip
    axes[1].set_xticks(range(len(latent)), latent, fontsize=8)
    axes[1].set_ylabel("test accuracy (%)")
    return fig


def data_efficiency(points: dict[str, list[dict[str, Any]]]) -> plt.Figure:
    """Test accuracy against the number of training images, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for name, pts in points.items():
        ax.plot([p["n_train"] for p in pts], [100 * p["accuracy"] for p in pts], "o-",
                color=COLORS[name], label=name)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training images (all classes)")
    ax.set_ylabel("test accuracy (%)")
    ax.axhline(100 / 3, color="k", ls=":", lw=0.8)
    ax.legend(fontsize=8)
    return fig
