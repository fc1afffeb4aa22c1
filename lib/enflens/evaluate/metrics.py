"""Evaluation metrics and rotation-robustness checks for the substructure classifiers.

Classification metrics are plain numpy on host arrays: labels (n,) integers in
{0, ..., C-1} (no_sub = 0, cdm = 1, axion = 2) and scores (n, C) (probabilities or logits; the
ROC quantities only use the ranking of each column). The ROC AUC is computed from ranks
(Mann-Whitney U statistic with average ranks for ties), which equals the area under the
empirical ROC curve with ties counted one half.

Robustness helpers: :func:`invariance_error` (random continuous SE(2) transforms of latent point
clouds), :func:`accuracy_under_rotation` (image rotations with
:func:`enflens.grid.rotate_images`, the same Fourier rotation as the training augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from enflens.classify.train import predict
from enflens.data.lensing import CLASS_NAMES
from enflens.geometry import Latents, random_se2
from enflens.grid import rotate_images


def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"expected labels (n,) and scores (n, C), got {y.shape} and {s.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got {y.min()}..{y.max()}")
    return y, s


def accuracy(labels: Any, scores_or_preds: Any) -> float:
    """Fraction of correct predictions.

    Args:
        labels: (n,) integer classes.
        scores_or_preds: (n, C) scores (argmax is taken) or (n,) predicted classes.
    """
    y = np.asarray(labels)
    p = np.asarray(scores_or_preds)
    if p.ndim == 2:
        p = p.argmax(-1)
    if p.shape != y.shape or y.ndim != 1:
        raise ValueError(f"accuracy: labels {y.shape} and predictions {p.shape} do not match")
    if len(y) == 0:
        raise ValueError("accuracy: empty input")
    return float(np.mean(p == y))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def binary_roc_auc(is_positive: Any, scores: Any) -> float:
    """Area under the ROC curve of a binary problem, from ranks (ties count one half).

    Args:
        is_positive: (n,) booleans (or 0/1).
        scores: (n,) scores, larger = more positive.
    """
    pos = np.asarray(is_positive).astype(bool)
    s = np.asarray(scores, np.float64)
    if pos.shape != s.shape or pos.ndim != 1:
        raise ValueError(f"binary_roc_auc: shapes {pos.shape} and {s.shape} must be equal (n,)")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("binary_roc_auc: need at least one positive and one negative example")
    r = average_ranks(s)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(labels: Any, scores: Any, average: str = "macro") -> float | np.ndarray:
    """One-vs-rest ROC AUC of a multi-class problem.

    Args:
        labels: (n,) integer classes.
        scores: (n, C) scores (e.g. softmax probabilities).
        average: "macro" (unweighted mean over classes) or "none" (per-class array (C,)).
    """
    y, s = _labels_scores(labels, scores)
    per_class = np.array([binary_roc_auc(y == c, s[:, c]) for c in range(s.shape[1])])
    if average == "macro":
        return float(per_class.mean())
    if average == "none":
        return per_class
    raise ValueError(f"roc_auc_ovr: average must be 'macro' or 'none', got {average!r}")


def confusion_matrix(labels: Any, preds: Any, num_classes: int = 3) -> np.ndarray:
    """(C, C) integer counts, entry [t, p] = number of examples of true class t predicted p.

    ``preds`` may be (n,) classes or (n, C) scores (argmax is taken).
    """
    y = np.asarray(labels)
    p = np.asarray(preds)
    if p.ndim == 2:
        p = p.argmax(-1)
    if p.shape != y.shape or y.ndim != 1:
        raise ValueError(f"confusion_matrix: labels {y.shape} and predictions {p.shape} differ")
    if len(y) and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: classes must lie in [0, {num_classes})")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def roc_curve(is_positive: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical ROC curve of a binary problem.

    Returns:
        (fpr, tpr, thresholds): for each distinct score t (descending, plus +inf first) the
        false- and true-positive rates of the rule ``score >= t``; starts at (0, 0), ends at
        (1, 1). Its trapezoidal area equals :func:`binary_roc_auc`.
    """
    pos = np.asarray(is_positive).astype(bool)
    s = np.asarray(scores, np.float64)
    if pos.shape != s.shape or pos.ndim != 1:
        raise ValueError(f"roc_curve: shapes {pos.shape} and {s.shape} must be equal (n,)")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve: need at least one positive and one negative example")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, pos_sorted = s[order], pos[order]
    tp = np.cumsum(pos_sorted)
    fp = np.cumsum(~pos_sorted)
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # keep the end of each tie run
    tpr = np.r_[0.0, tp[last_of_run] / n_pos]
    fpr = np.r_[0.0, fp[last_of_run] / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def roc_curves_ovr(labels: Any, scores: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One-vs-rest :func:`roc_curve` (fpr, tpr, thresholds) for every class column of scores."""
    y, s = _labels_scores(labels, scores)
    return [roc_curve(y == c, s[:, c]) for c in range(s.shape[1])]


def classification_report(labels: Any, probabilities: Any) -> dict[str, Any]:
    """Accuracy, macro one-vs-rest AUC, per-class AUC and confusion matrix as plain Python."""
    return {
        "accuracy": accuracy(labels, probabilities),
        "auc_macro": roc_auc_ovr(labels, probabilities),
        "auc_per_class": dict(
            zip(CLASS_NAMES, roc_auc_ovr(labels, probabilities, "none").tolist(), strict=False)
        ),
        "confusion_matrix": confusion_matrix(
            labels, probabilities, np.shape(probabilities)[1]
        ).tolist(),
    }


# ----------------------------------------------------------------------------- robustness


def _relative_change(base: np.ndarray, other: np.ndarray) -> float:
    return float(np.abs(other - base).max() / np.abs(base).max())


def invariance_error(
    model: nnx.Module,
    latents: Latents,
    key: jax.Array,
    n: int = 8,
    *,
    max_translation: float = 0.5,
    batch_size: int = 256,
) -> float:
    """Largest relative change of the logits under random SE(2) transforms of the latents.

    For ``n`` draws, every example gets its own random element g (angle uniform in [0, 2 pi),
    translation uniform in [-max_translation, max_translation]^2) and the error is
    ``max |l(g z) - l(z)| / max |l(z)|`` over the batch and classes; the maximum over the draws
    is returned. 0 for an exactly invariant model (up to float rounding).

    Args:
        model: classifier on batched Latents, evaluated in evaluation mode.
        latents: batched Latents (B, N, ...).
        key: PRNG key for the group elements.
        n: number of random draws.
    """
    base = predict(model, latents, batch_size=batch_size)
    batch = latents.positions.shape[0]
    errs = []
    for k in jax.random.split(key, n):
        g = random_se2(k, (batch,), max_translation=max_translation)
        errs.append(
            _relative_change(base, predict(model, latents.transform(g), batch_size=batch_size))
        )
    return max(errs)


def accuracy_under_rotation(
    model: nnx.Module,
    images: Any,
    labels: Any,
    angles: Sequence[float],
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Accuracy of ``model`` on the images rotated by each of ``angles`` (radians): (A,)."""
    out = []
    for a in angles:
        rotated = np.asarray(rotate_images(images, float(a)))
        out.append(accuracy(labels, predict(model, rotated, batch_size=batch_size)))
    return np.asarray(out)


def downsample_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 101) -> dict:
    """At most ``max_points`` points of a ROC curve (evenly spaced in index, ends kept)."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    if len(fpr) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def evaluate_scores(labels: Any, probabilities: Any, max_roc_points: int = 101) -> dict:
    """Test metrics from class probabilities.

    Args:
        labels: (n,) ints; probabilities: (n, 3) scores (rows sum to 1 for probabilities; the
            ROC quantities only use each column's ranking).

    Returns:
        {accuracy, auc_macro, auc_per_class {class: auc}, confusion (3x3 list, [true][pred]),
        roc {class: {fpr: [...], tpr: [...]}} with at most ``max_roc_points`` points each}.
    """
    rep = classification_report(labels, probabilities)
    curves = roc_curves_ovr(labels, probabilities)
    return {
        "accuracy": rep["accuracy"],
        "auc_macro": rep["auc_macro"],
        "auc_per_class": rep["auc_per_class"],
        "confusion": rep["confusion_matrix"],
        "roc": {
            CLASS_NAMES[c]: downsample_curve(fpr, tpr, max_roc_points)
            for c, (fpr, tpr, _) in enumerate(curves)
        },
    }


def evaluate(model: nnx.Module, x_test: Any, y_test: Any, *, batch_size: int = 256) -> dict:
    """:func:`evaluate_scores` of the model's softmax probabilities on the test inputs."""
    probs = predict(model, x_test, batch_size=batch_size, probabilities=True)
    return evaluate_scores(y_test, probs)
