"""Metrics on hand-made cases, the rank AUC against scikit-learn, robustness helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from enflens.evaluate import metrics
from enflens.geometry import Latents
from enflens.testing import numpy_latents


def test_accuracy_hand_cases():
    y = np.array([0, 1, 2, 2])
    assert metrics.accuracy(y, np.array([0, 1, 1, 2])) == 0.75
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.2, 0.8], [0.5, 0.3, 0.2]])
    assert metrics.accuracy(y, scores) == 0.75
    with pytest.raises(ValueError, match="do not match"):
        metrics.accuracy(y, np.array([0, 1]))


def test_average_ranks_with_ties():
    r = metrics.average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0]))
    np.testing.assert_array_equal(r, [4.0, 1.0, 4.0, 2.0, 4.0])


def test_binary_auc_hand_cases():
    # scikit-learn's documented example: 0.75
    assert metrics.binary_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.binary_roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
    assert metrics.binary_roc_auc([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]) == 0.0
    assert metrics.binary_roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts one half
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.binary_roc_auc([1, 1], [0.2, 0.3])


def test_macro_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert metrics.roc_auc_ovr(y, probs) == pytest.approx(ref, abs=1e-12)
    # with many ties (rounded scores), per class against sklearn's binary AUC
    tied = np.round(probs, 1)
    per = metrics.roc_auc_ovr(y, tied, average="none")
    ref_per = [roc_auc_score(y == c, tied[:, c]) for c in range(3)]
    np.testing.assert_allclose(per, ref_per, atol=1e-12)
    assert per.shape == (3,) and 0.5 < per.min() < per.max() < 1.0


def test_confusion_matrix_hand_case():
    cm = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert cm.sum() == 6
    with pytest.raises(ValueError, match="classes must lie"):
        metrics.confusion_matrix([0, 3], [0, 0])


def test_roc_curve_matches_sklearn_and_area():
    rng = np.random.default_rng(1)
    pos = rng.random(200) < 0.4
    s = np.round(rng.normal(size=200) + pos, 1)
    fpr, tpr, thr = metrics.roc_curve(pos, s)
    sk_fpr, sk_tpr, _ = sk_roc_curve(pos, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.isinf(thr[0])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(metrics.binary_roc_auc(pos, s), abs=1e-12)
    curves = metrics.roc_curves_ovr(rng.integers(0, 3, 50), rng.random((50, 3)))
    assert len(curves) == 3


def test_classification_report_fields():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.eye(3)[[0, 1, 2, 0, 2, 2]] * 0.8 + 0.1
    rep = metrics.classification_report(y, p)
    assert rep["accuracy"] == pytest.approx(5 / 6)
    assert set(rep["auc_per_class"]) == {"no_sub", "cdm", "axion"}
    assert rep["confusion_matrix"][1] == [0, 1, 1]


class _SumContexts(nnx.Module):
    """Invariant toy model: logits from the summed contexts."""

    def __call__(self, z: Latents) -> jax.Array:
        return z.contexts.sum(1)[:, :3]


class _MeanPosition(nnx.Module):
    """Non-invariant toy model: logits from the mean position."""

    def __call__(self, z: Latents) -> jax.Array:
        m = z.positions.mean(1)
        return jnp.concatenate([m, m[:, :1] * m[:, 1:]], -1)


def test_invariance_error_toy_models():
    z = numpy_latents(np.random.default_rng(0))
    key = jax.random.key(0)
    assert metrics.invariance_error(_SumContexts(), z, key, n=3) == 0.0
    assert metrics.invariance_error(_MeanPosition(), z, key, n=3) > 0.1


class _PixelSum(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.sum((1, 2))
        return jnp.stack([s, -s, 0.5 * s], -1)


class _CornerPixel(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x[:, 2, 3] + x[:, 5, 1]
        return jnp.stack([c, -c, 1 - c], -1)


def test_accuracy_under_rotation():
    # a spot on pixel [2, 3] (x = -0.5625, y = -0.6875): the corner-pixel model says class 0
    # (c > 0.5); rotated by 90 degrees the spot leaves that pixel and the answer is class 2
    y, x = np.meshgrid(-1 + (2 * np.arange(16) + 1) / 16, -1 + (2 * np.arange(16) + 1) / 16,
                       indexing="ij")  # fmt: skip
    spot = np.exp(-((x + 0.5625) ** 2 + (y + 0.6875) ** 2) / 0.01).astype(np.float32)[None]
    acc = metrics.accuracy_under_rotation(_CornerPixel(), spot, np.zeros(1, int), [0.0, np.pi / 2])
    np.testing.assert_array_equal(acc, [1.0, 0.0])
    # a centred bright blob: class 0 wins under any rotation for the pixel-sum model
    yy, xx = np.mgrid[-1:1:16j, -1:1:16j]
    blob = np.exp(-(xx**2 + yy**2) / 0.1).astype(np.float32)[None].repeat(3, 0)
    acc = metrics.accuracy_under_rotation(_PixelSum(), blob, np.zeros(3, int), [0.0, 0.7, 2.0])
    np.testing.assert_array_equal(acc, [1.0, 1.0, 1.0])
