"""Trainer: learning, validation-only model selection, step budgets and their schedule, early
stopping, seeds, augmentations, prediction batching and checkpoint round trips."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from enflens.classify import train
from enflens.classify.image_models import make_cnn
from enflens.classify.latent_models import make_classifier
from enflens.geometry import pair_invariants
from enflens.grid import rotate_images
from enflens.testing import numpy_latents


def _rngs(seed: int = 0) -> nnx.Rngs:
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _blobs(seed: int, n: int, d: int = 8):
    """Three Gaussian clusters in d dimensions (a learnable, slightly noisy problem)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.random.default_rng(99).normal(size=(3, d)) * 1.5
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _mlp(seed: int = 0):
    return make_classifier(
        "cnf_mlp", context_dim=0, num_latents=0, cnf_dim=8, hidden=32, rngs=_rngs(seed)
    )


def test_fit_learns_and_selects_on_validation():
    tr, va = _blobs(0, 192), _blobs(1, 96)
    m = _mlp()
    hist = train.fit(m, tr, va, steps=48, eval_every=6, batch_size=32, learning_rate=3e-3,
                     progress=False)  # fmt: skip
    n = hist["evaluations"]
    assert n == 8 and hist["step"] == [6, 12, 18, 24, 30, 36, 42, 48]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert len(hist[k]) == n
    assert hist["train_loss"][-1] < hist["train_loss"][0]
    assert hist["best_val_acc"] == max(hist["val_acc"]) > 0.8
    # the model holds the best-validation state; the device-side accuracy equals a host count
    logits = train.predict(m, va[0])
    assert float(np.mean(logits.argmax(-1) == va[1])) == hist["best_val_acc"]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert hist["best_val_loss"] == pytest.approx(-logp[np.arange(96), va[1]].mean(), rel=1e-5)
    assert hist["steps"] == 48 and hist["epochs"] == 8.0 and hist["stop_reason"] == "steps"
    assert hist["num_params"] > 0 and hist["train_seconds"] > 0
    assert hist["lr"][-1] < hist["lr"][0]  # cosine decay


def test_schedule_spans_exactly_the_step_budget():
    cfg = train.TrainConfig(steps=200, learning_rate=2e-3, warmup_fraction=0.1,
                            end_lr_fraction=0.01)  # fmt: skip
    s = train.make_schedule(cfg)
    # by hand: linear warmup over 20 steps, then cosine from 2e-3 to 2e-5 at step 200
    assert float(s(10)) == pytest.approx(1e-3)
    assert float(s(20)) == pytest.approx(2e-3)
    mid = 2e-5 + 0.5 * (2e-3 - 2e-5) * (1 + np.cos(np.pi * 90 / 180))
    assert float(s(110)) == pytest.approx(mid, rel=1e-5)
    assert float(s(200)) == pytest.approx(2e-5, rel=1e-5)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train.TrainConfig(steps=0)


def test_batch_indices_walk_through_permutations():
    order = train.batch_indices(10, 4, 7, seed=0)
    assert order.shape == (7, 4)
    # two batches per epoch (the remainder of 2 dropped): each epoch's 8 indices are distinct
    for e in range(3):
        rows = order[2 * e : 2 * e + 2].ravel()
        assert len(set(rows.tolist())) == len(rows)
    assert np.array_equal(order, train.batch_indices(10, 4, 7, seed=0))
    assert not np.array_equal(order, train.batch_indices(10, 4, 7, seed=1))
    assert train.batch_indices(3, 64, 2, seed=0).shape == (2, 3)  # small set: one full batch


def test_best_step_is_restored_not_last():
    # large learning rate on noisy labels: validation accuracy peaks early, then degrades
    tr, va = _blobs(0, 96), _blobs(1, 96)
    tr = (tr[0], np.random.default_rng(5).integers(0, 3, 96))  # random training labels
    m = _mlp()
    hist = train.fit(m, tr, va, steps=36, eval_every=6, batch_size=16, learning_rate=3e-2,
                     progress=False, warmup_fraction=0.0)  # fmt: skip
    best = hist["step"].index(hist["best_step"])
    assert best < hist["evaluations"] - 1  # the last validation is worse: restoring matters
    assert hist["val_acc"][best] == max(hist["val_acc"])
    acc = float(np.mean(train.predict(m, va[0]).argmax(-1) == va[1]))
    assert acc == hist["val_acc"][best]


def test_early_stopping_in_validations():
    tr, va = _blobs(0, 64), _blobs(1, 32)
    # learning rate 0: validation never improves after the first one -> stop `patience` later
    hist = train.fit(_mlp(), tr, va, steps=80, eval_every=4, batch_size=16, learning_rate=0.0,
                     patience=2, progress=False)  # fmt: skip
    assert hist["stop_reason"] == "patience" and hist["evaluations"] == 3
    assert hist["best_step"] == 4 and hist["steps"] == 12
    # without patience the whole budget runs; the last step is validated even off the grid
    hist = train.fit(_mlp(), tr, va, steps=10, eval_every=4, batch_size=16, progress=False)
    assert hist["step"] == [4, 8, 10] and hist["stop_reason"] == "steps"


def test_seeded_runs_are_reproducible():
    tr, va = _blobs(0, 64), _blobs(1, 32)
    kw = dict(steps=12, eval_every=4, batch_size=16, progress=False)
    h1 = train.fit(_mlp(), tr, va, seed=3, **kw)
    h2 = train.fit(_mlp(), tr, va, seed=3, **kw)
    h3 = train.fit(_mlp(), tr, va, seed=4, **kw)
    assert h1["train_loss"] == h2["train_loss"] and h1["val_loss"] == h2["val_loss"]
    assert h1["train_loss"] != h3["train_loss"]  # the seed drives the shuffling


def test_augmented_runs_are_reproducible_and_use_the_key():
    rng = np.random.default_rng(0)
    z, y = numpy_latents(rng, b=24, n=9, d=4), rng.integers(0, 3, 24)

    def run(seed, aug):
        m = make_classifier("enf_mlp", context_dim=4, num_latents=9, hidden=16, rngs=_rngs())
        return train.fit(m, (z, y), (z, y), steps=6, eval_every=3, batch_size=8, augment=aug,
                         seed=seed, progress=False)  # fmt: skip

    aug = train.latent_augmentation(position_noise=0.01, random_transform=True)
    h1, h2 = run(0, aug), run(0, aug)
    assert h1["steps"] == 6 and np.isfinite(h1["train_loss"]).all()
    assert h1["train_loss"] == h2["train_loss"]
    assert h1["train_loss"] != run(0, None)["train_loss"]  # the augmentation is applied


def test_bad_inputs_raise():
    x, y = _blobs(0, 16)
    with pytest.raises(ValueError, match="labels must have shape"):
        train.fit(_mlp(), (x, y[:-1]), (x, y), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        train.fit(_mlp(), (x, y + 3), (x, y), steps=1, progress=False)
    with pytest.raises(ValueError, match="integers"):
        train.fit(_mlp(), (x, y.astype(float)), (x, y), steps=1, progress=False)
    with pytest.raises(TypeError):
        train.fit(_mlp(), (x, y), (x, y), steps=1, progress=False, epochz=3)


def test_predict_batching_and_probabilities():
    x, _ = _blobs(0, 23)
    m = _mlp()
    full = train.predict(m, x, batch_size=64)
    np.testing.assert_allclose(train.predict(m, x, batch_size=5), full, atol=1e-6)
    p = train.predict(m, x, batch_size=5, probabilities=True)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    assert p.shape == (23, 3) and (p.argmax(-1) == full.argmax(-1)).all()


def test_latent_augmentation():
    z = numpy_latents(np.random.default_rng(0))
    key = jax.random.key(0)
    aug = train.latent_augmentation(random_transform=True, max_translation=0.3)
    za = aug(key, z)
    # a genuine group action: poses move, pair invariants, contexts and windows do not
    assert np.abs(np.asarray(za.positions) - z.positions).max() > 0.1
    np.testing.assert_allclose(
        pair_invariants(za.positions, za.orientations),
        pair_invariants(z.positions, z.orientations), atol=1e-5,
    )  # fmt: skip
    np.testing.assert_array_equal(za.contexts, z.contexts)
    big = numpy_latents(np.random.default_rng(1), b=64, n=16, d=8)
    noisy = train.latent_augmentation(
        position_noise=0.01, orientation_noise=0.05, context_noise=0.1
    )(key, big)
    for got, ref, sd in [(noisy.positions, big.positions, 0.01),
                         (noisy.orientations, big.orientations, 0.05),
                         (noisy.contexts, big.contexts, 0.1)]:  # fmt: skip
        assert np.std(np.asarray(got) - ref) == pytest.approx(sd, rel=0.1)
    np.testing.assert_array_equal(noisy.windows, big.windows)
    with pytest.raises(ValueError, match=">= 0"):
        train.latent_augmentation(context_noise=-1.0)


def test_image_augmentation_rotates():
    rng = np.random.default_rng(0)
    imgs = rng.random((8, 16, 16)).astype(np.float32)
    key = jax.random.key(0)
    np.testing.assert_allclose(train.image_augmentation(0.0)(key, imgs), imgs, atol=1e-6)
    out = np.asarray(train.image_augmentation()(key, imgs))
    angles = np.asarray(jax.random.uniform(key, (8,), minval=-np.pi, maxval=np.pi))
    np.testing.assert_allclose(out, rotate_images(imgs, angles), atol=1e-6)
    assert np.abs(out - imgs).max() > 0.5
    # the interpolation is a static field: jit-compatible, and bilinear on request
    bilinear = jax.jit(train.image_augmentation(method="bilinear"))(key, imgs)
    np.testing.assert_allclose(bilinear, rotate_images(imgs, angles, method="bilinear"), atol=1e-6)
    assert np.abs(np.asarray(bilinear) - out).max() > 1e-2
    with pytest.raises(ValueError, match="method must be one of"):
        train.image_augmentation(method="nearest")


def test_checkpoint_round_trip(tmp_path):
    # a model with BatchNorm statistics: those must be saved too
    x = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)
    y = np.arange(12) % 3
    m = make_cnn("c8_gcnn", channels=(4,), rngs=_rngs(0))
    hist = train.fit(m, (x, y), (x, y), steps=4, eval_every=2, batch_size=6, progress=False,
                     checkpoint_dir=str(tmp_path / "ck"))  # fmt: skip
    assert (tmp_path / "ck" / "state").is_dir()
    saved = json.loads((tmp_path / "ck" / "history.json").read_text())
    assert saved["best_step"] == hist["best_step"]
    fresh = make_cnn("c8_gcnn", channels=(4,), rngs=_rngs(1))
    assert np.abs(train.predict(fresh, x) - train.predict(m, x)).max() > 1e-4
    train.restore_checkpoint(fresh, tmp_path / "ck")
    np.testing.assert_array_equal(train.predict(fresh, x), train.predict(m, x))
    # explicit save/restore of the current state
    train.save_checkpoint(m, tmp_path / "again")
    other = make_cnn("c8_gcnn", channels=(4,), rngs=_rngs(2))
    train.restore_checkpoint(other, tmp_path / "again")
    np.testing.assert_array_equal(train.predict(other, x), train.predict(m, x))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.restore_checkpoint(other, tmp_path / "missing")


TRACES: list[float] = []


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _CountingNoise:
    """NoiseAugmentation that records each trace (its body runs only when jax traces it)."""

    std: float

    def __call__(self, key, x):
        TRACES.append(1.0)
        return train.NoiseAugmentation(self.std)(key, x)


def test_train_step_is_compiled_once_for_equal_settings():
    TRACES.clear()
    cfg = train.TrainConfig(steps=4, eval_every=2, batch_size=16, progress=False)
    for seed, std in ((0, 0.1), (1, 0.3)):  # other data, other noise level, a new model
        tr, va = _blobs(seed, 48), _blobs(seed + 10, 16)
        train.fit(_mlp(seed), tr, va, cfg, augment=_CountingNoise(std))
    assert len(TRACES) == 1
    # a different step count is a different schedule: one more compilation
    train.fit(_mlp(), _blobs(0, 48), _blobs(1, 16), dataclasses.replace(cfg, steps=6),
              augment=_CountingNoise(0.1))  # fmt: skip
    assert len(TRACES) == 2
