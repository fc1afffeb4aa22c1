"""fit_eval: inner-loop paths agree with fitting/encode, PSNR against other targets, pose
matching, fits from a rotated initialisation, noise-free targets and budgeted training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enflens import grid
from enflens.data import renders
from enflens.evaluate import rotation
from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.fields.enf import ENFConfig
from enflens.geometry import SE2, Latents
from enflens.grid import make_grid, rot90_images
from enflens.metalearn import encode as encode_mod
from enflens.metalearn import outer

SIZE = 16


def blobs(n: int, seed: int = 0) -> np.ndarray:
    """(n, SIZE, SIZE) smooth random images in [0, 1]: two Gaussian blobs each."""
    rng = np.random.default_rng(seed)
    g = np.asarray(make_grid(SIZE)).reshape(SIZE, SIZE, 2)
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        for _ in range(2):
            c = rng.uniform(-0.6, 0.6, 2)
            out[i] += np.exp(-np.sum((g - c) ** 2, -1) / (2 * rng.uniform(0.1, 0.3) ** 2))
        out[i] /= out[i].max()
    return out


@functools.cache
def tiny_enf(k_nearest: int | None = 4) -> adapters.FieldAdapter:
    cfg = ENFConfig(
        num_latents=9, latent_dim=4, hidden=16, num_heads=2, k_nearest=k_nearest, num_rff=8
    )
    return adapters.enf_adapter(cfg, lr_contexts=20.0)


@functools.cache
def tiny_cnf() -> adapters.FieldAdapter:
    return adapters.cnf_adapter(CNFConfig(latent_dim=8, hidden=16, num_layers=2, w0=10.0))


def _perturbed(adapter: adapters.FieldAdapter, seed: int = 0) -> dict:
    """Initial params with a random learned init, so that fits are image dependent."""
    p = adapter.init_params()
    k = jax.random.PRNGKey(seed)
    p["init"] = 0.5 * jax.random.normal(k, jnp.shape(p["init"]), jnp.float32)
    return p


def test_fit_path_ends_where_fit_latents_does():
    ad = tiny_enf()
    params = _perturbed(ad)
    x = blobs(4)
    key = jax.random.PRNGKey(3)
    lats, recs = encode_mod.fit_path(ad, params, x, steps=3, pixels=64, key=key)
    z, score = encode_mod.fit_latents(ad, params, x, steps=3, pixels=64, key=key)
    assert lats.positions.shape == (4, 4, 9, 2) and recs.shape == (4, 4, SIZE, SIZE, 1)
    np.testing.assert_allclose(lats.contexts[-1], z.contexts, atol=1e-5)
    np.testing.assert_allclose(lats.positions[-1], z.positions, atol=1e-6)
    np.testing.assert_allclose(grid.psnr(recs[-1, ..., 0], x), score, atol=1e-3)
    # entry 0 is the initialisation: the same field for every image
    np.testing.assert_allclose(recs[0, 0], recs[0, 1], atol=1e-6)
    assert not np.allclose(recs[-1, 0], recs[-1, 1], atol=1e-3)


def test_psnr_path_matches_encode_and_scores_other_targets():
    ad = tiny_cnf()
    params = _perturbed(ad)
    x = blobs(7, seed=1)
    other = blobs(7, seed=2)
    out = encode_mod.psnr_path(ad, params, x, {"same": x, "other": other}, steps=2, pixels=64,
                      batch_size=3, seed=5)  # fmt: skip
    assert out["fitted"].shape == (3, 7)
    np.testing.assert_allclose(out["same"], out["fitted"], atol=1e-6)
    _, enc = encode_mod.encode(
        ad, params, x, steps=2, pixels=64, batch_size=3, seed=5, progress=False
    )
    np.testing.assert_allclose(out["fitted"][-1], enc, atol=1e-3)  # same batches and keys
    _, recs = encode_mod.fit_path(ad, params, x[:3], steps=2, pixels=64,
                         key=jax.random.fold_in(jax.random.PRNGKey(5), 0))  # fmt: skip
    want = np.stack([grid.psnr(r[..., 0], other[:3]) for r in recs])  # (3, 3)
    np.testing.assert_allclose(out["other"][:, :3], want, atol=1e-5)
    assert np.abs(out["other"] - out["fitted"]).mean() > 0.1
    with pytest.raises(ValueError, match="targets"):
        encode_mod.psnr_path(ad, params, x, {"bad": other[:3]}, steps=1)


def test_match_poses_by_hand():
    ref = Latents(
        positions=np.array([[0.0, 0.0], [0.5, 0.5], [1.3, 0.0]], np.float32),  # last: outside
        orientations=np.radians(np.array([359.0, 10.0, 0.0], np.float32)),
        contexts=np.zeros((3, 2), np.float32),
        windows=np.ones(3, np.float32),
    )
    fit = Latents(
        positions=np.array([[0.5, 0.4], [0.1, 0.0], [0.9, 0.0]], np.float32),
        orientations=np.radians(np.array([40.0, 1.0, 0.0], np.float32)),
        contexts=np.zeros((3, 2), np.float32),
        windows=np.ones(3, np.float32),
    )
    m = rotation.match_poses(ref, fit)
    assert m["kept"].tolist() == [True, True, False]
    assert m["index"].tolist() == [1, 0]
    np.testing.assert_allclose(m["position"], [0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(np.degrees(m["orientation"]), [2.0, 30.0], atol=1e-4)  # wrapped
    with pytest.raises(ValueError, match="unbatched"):
        rotation.match_poses(jax.tree.map(lambda a: a[None], ref), fit)


def test_fit_from_rotated_init_follows_an_exact_rotation():
    """A 90-degree rotation maps the pixel grid onto itself, so a fit of the rotated image that
    starts from the rotated initialisation (all pixels, all latents attended) must return the
    rotated latents; the standard start (orientations 0) must not (control). Continuous angles
    are not exact here: the pixel grid itself is only symmetric under multiples of 90 degrees."""
    ad = tiny_enf(k_nearest=None)
    params = _perturbed(ad, seed=1)
    x = blobs(3, seed=4)
    xr = np.asarray(rot90_images(x, 1))
    z, _ = encode_mod.fit_path(ad, params, x, steps=3, pixels=None)
    g = SE2(jnp.full((3,), np.pi / 2, jnp.float32), jnp.zeros((3, 2), jnp.float32))
    init_rot = ad.expand(params["init"], 3).transform(g)
    z_rot, rec_rot = encode_mod.fit_path(ad, params, xr, steps=3, pixels=None, latents0=init_rot)
    z_std, _ = encode_mod.fit_path(ad, params, xr, steps=3, pixels=None)
    goal = jax.tree.map(lambda a: np.asarray(a[-1]), z).transform(g)
    for i in range(3):
        one = lambda t, i=i: jax.tree.map(lambda a: np.asarray(a)[i], t)  # noqa: E731
        good = rotation.match_poses(one(goal), one(jax.tree.map(lambda a: a[-1], z_rot)))
        bad = rotation.match_poses(one(goal), one(jax.tree.map(lambda a: a[-1], z_std)))
        assert good["kept"].all()
        assert good["position"].max() < 1e-4 and good["orientation"].max() < 1e-4
        assert np.degrees(bad["orientation"].mean()) > 45.0
    rec = encode_mod.fit_path(ad, params, x, steps=3, pixels=None)[1][-1, ..., 0]
    want = np.asarray(rot90_images(rec, 1))  # the rotated fit
    err_rot = np.abs(rec_rot[-1, ..., 0] - want).max()
    rec_std = encode_mod.fit_path(ad, params, xr, steps=3, pixels=None)[1][-1, ..., 0]
    err_std = np.abs(rec_std - want).max()
    assert err_rot < 5e-3  # float rounding amplified by the inner learning rates
    assert err_std > 10 * err_rot


def test_noise_free_images_match_the_stored_scale(tmp_path):
    from enflens import data

    path = data.generate("model_ii", 1, 3, tmp_path / "d.h5", n_val=1, n_test=1, progress=False)
    stored = data.load(path, "val").images
    clean = renders.noise_free_images(path, "val", np.arange(len(stored)))
    assert clean.shape == stored.shape and clean.dtype == np.float32
    p = grid.psnr(clean, stored)
    assert np.all(p > 35.0) and np.all(p < 90.0)  # same scale, but not the noisy image itself
    assert abs(float(clean.max()) - 1.0) < 0.05
    with pytest.raises(FileNotFoundError):
        renders.noise_free_images(tmp_path / "missing.h5", "val", [0])


def test_meta_train_runs_its_step_count_and_logs_a_history():
    ad = tiny_cnf()
    x = blobs(16, seed=6)
    cfg = outer.MetaConfig(
        inner_steps=2, inner_pixels=64, outer_pixels=64, batch_size=4, outer_lr=3e-3,
        warmup_steps=5, eval_images=4, num_steps=12, eval_every=6,
    )  # fmt: skip
    run = outer.meta_train(ad, x, cfg, val_images=x[:4], progress=False, log_every=3)
    assert int(run.state.step) == 12
    t = outer.history_table(run.history)
    assert t["step"].tolist() == [3, 6, 9, 12] and t["val_step"].tolist() == [6, 12]
    assert t["val_psnr"].shape == (2, 3) and np.all(np.diff(t["seconds"]) >= 0)
