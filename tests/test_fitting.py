"""Meta-SGD fitting: learning, first/second order, batching, encoding, PSNR, rotation metric."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enflens import grid
from enflens.evaluate import rotation
from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.fields.enf import ENFConfig
from enflens.grid import image_to_pixels, make_grid
from enflens.metalearn import encode as encode_mod
from enflens.metalearn import inner, outer

SIZE = 16


def rings(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Synthetic lens-like images: an elliptical Gaussian ring with an arc, plus a central blob."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(make_grid(size)).reshape(size, size, 2)
    xs, ys = grid[..., 0], grid[..., 1]
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        cx, cy = rng.uniform(-0.15, 0.15, 2)
        r, q, phi = rng.uniform(0.35, 0.6), rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
        u = np.cos(phi) * (xs - cx) + np.sin(phi) * (ys - cy)
        v = -np.sin(phi) * (xs - cx) + np.cos(phi) * (ys - cy)
        rad = np.sqrt(u**2 / q + v**2 * q)
        arc = 1 + rng.uniform(0, 1) * np.cos(np.arctan2(v, u) - rng.uniform(0, 2 * np.pi))
        img = arc * np.exp(-0.5 * ((rad - r) / 0.12) ** 2)
        img += 0.5 * np.exp(-0.5 * ((xs - cx) ** 2 + (ys - cy) ** 2) / 0.15**2)
        out[i] = img / img.max()
    return out


@functools.cache
def tiny_cnf(seed: int = 0) -> adapters.FieldAdapter:
    return adapters.cnf_adapter(
        CNFConfig(latent_dim=16, hidden=32, num_layers=2, w0=10.0), seed=seed, lr_init=1.0
    )


@functools.cache
def tiny_enf(bi_invariant: str = "roto_translation") -> adapters.FieldAdapter:
    cfg = ENFConfig(
        num_latents=9, latent_dim=8, hidden=16, num_heads=2, k_nearest=4, num_rff=8,
        bi_invariant=bi_invariant,
    )  # fmt: skip
    return adapters.enf_adapter(cfg, lr_contexts=5.0)


CFG = outer.MetaConfig(
    inner_steps=2, inner_pixels=64, outer_pixels=128, batch_size=8, num_steps=60, outer_lr=3e-3,
    warmup_steps=5, checkpoint_every=0, eval_every=0,
)  # fmt: skip


def test_meta_training_improves_reconstruction():
    adapter = tiny_cnf()
    train, val = rings(64, seed=1), rings(16, seed=2)
    before = encode_mod.psnr_per_step(adapter, adapter.init_params(), val, CFG, pixels=None)
    result = outer.meta_train(adapter, train, CFG, val_images=val, progress=False, log_every=20)
    after = encode_mod.psnr_per_step(adapter, result.state.params, val, CFG, pixels=None)
    assert after.shape == (CFG.inner_steps + 1, 16)
    assert after[-1].mean() > before[-1].mean() + 3.0  # the decoder learned
    assert after[-1].mean() > after[0].mean() + 1.0  # inner steps help
    assert int(result.state.step) == CFG.num_steps
    vals = [h for h in result.history if "val_psnr_per_step" in h]
    assert vals and len(vals[-1]["val_psnr_per_step"]) == CFG.inner_steps + 1
    assert [h["step"] for h in result.history if "loss" in h] == [20, 40, 60]


def _outer_grads(adapter, cfg, params, px, key):
    coords = make_grid(SIZE)

    def loss(p):
        k_in, k_out = jax.random.split(key)
        lat = inner.inner_loop(
            adapter, p, adapter.expand(p["init"], px.shape[0]), coords, px, k_in,
            cfg.inner_steps, cfg.inner_pixels, cfg.first_order,
        )  # fmt: skip
        c, t = inner.pixel_subset(k_out, coords, px, cfg.outer_pixels)
        return jnp.mean((adapter.decode(p, lat, c) - t) ** 2), lat

    return jax.jit(jax.grad(loss, has_aux=True))(params)


def test_first_order_ignores_inner_gradient_dependence_second_order_does_not():
    adapter = tiny_cnf()
    params = adapter.init_params()
    px = image_to_pixels(jnp.asarray(rings(4)))
    key = jax.random.PRNGKey(3)
    fo = outer.MetaConfig(**{**CFG.__dict__, "first_order": True, "outer_pixels": None})
    so = outer.MetaConfig(**{**CFG.__dict__, "first_order": False, "outer_pixels": None})
    g_fo, lat = _outer_grads(adapter, fo, params, px, key)
    g_so, _ = _outer_grads(adapter, so, params, px, key)
    # First order: the decoder gradient is that of the outer loss at the adapted latents, held
    # fixed.
    full = jnp.broadcast_to(make_grid(SIZE), (4, SIZE * SIZE, 2))
    g_fixed = jax.jit(jax.grad(lambda p: jnp.mean((adapter.decode(p, lat, full) - px) ** 2)))(
        params
    )
    a = jax.tree.leaves(g_fo["decoder"])
    b = jax.tree.leaves(g_fixed["decoder"])
    assert all(np.allclose(x, y, rtol=1e-4, atol=1e-7) for x, y in zip(a, b, strict=True))
    # Second order differs (gradient flows through the inner updates) ...
    c = jax.tree.leaves(g_so["decoder"])
    assert max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, c, strict=True)) > 1e-5
    # ... and both give the inner learning rates and the latent init a gradient.
    for g in (g_fo, g_so):
        assert float(jnp.abs(g["log_lrs"]).max()) > 0
        assert float(jnp.abs(g["init"]).max()) > 0


def test_second_order_gradient_matches_finite_difference():
    adapter = tiny_cnf()
    params = adapter.init_params()
    px = image_to_pixels(jnp.asarray(rings(2)))
    coords = make_grid(SIZE)
    full = jnp.broadcast_to(coords, (2, SIZE * SIZE, 2))
    key = jax.random.PRNGKey(0)
    leaves, treedef = jax.tree.flatten(params["decoder"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    direction = jax.tree.unflatten(
        treedef, [0.05 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )

    def loss(decoder):
        p = {**params, "decoder": decoder}
        lat = inner.inner_loop(adapter, p, adapter.expand(p["init"], 2), coords, px, key, 2, None)
        return jnp.mean((adapter.decode(p, lat, full) - px) ** 2)

    loss = jax.jit(loss)
    grad = jax.jit(jax.grad(loss))(params["decoder"])
    directional = sum(
        float(jnp.vdot(g, d))
        for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True)
    )

    def shifted(eps):
        return jax.tree.map(lambda x, d: x + eps * d, params["decoder"], direction)

    eps = 1e-2
    fd = (float(loss(shifted(eps))) - float(loss(shifted(-eps)))) / (2 * eps)
    assert abs(directional - fd) < 0.03 * abs(fd) + 1e-6

    # the first-order gradient is measurably different along the same direction
    def loss_fo(decoder):
        p = {**params, "decoder": decoder}
        lat = inner.inner_loop(
            adapter, p, adapter.expand(p["init"], 2), coords, px, key, 2, None, first_order=True
        )
        return jnp.mean((adapter.decode(p, lat, full) - px) ** 2)

    grad_fo = jax.jit(jax.grad(loss_fo))(params["decoder"])
    directional_fo = sum(
        float(jnp.vdot(g, d))
        for g, d in zip(jax.tree.leaves(grad_fo), jax.tree.leaves(direction), strict=True)
    )
    assert abs(directional_fo - fd) > 3 * abs(directional - fd)


def test_train_step_updates_decoder_rates_init_not_buffers():
    adapter = tiny_enf()
    cfg = outer.MetaConfig(**{**CFG.__dict__, "first_order": True})  # first order: faster compile
    state = outer.init_state(adapter, cfg)
    new, loss = outer.train_step(adapter, cfg, state, rings(cfg.batch_size))
    # step 0 has lr 0 (warm-up)
    new, loss = outer.train_step(adapter, cfg, new, rings(cfg.batch_size))
    assert np.isfinite(float(loss))
    assert int(new.step) == 2

    def changed(a, b):
        return any(
            not np.array_equal(x, y)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    assert changed(state.params["decoder"], new.params["decoder"])
    assert changed(state.params["log_lrs"].contexts, new.params["log_lrs"].contexts)
    assert changed(state.params["init"], new.params["init"])
    assert jax.tree.leaves(state.params["buffers"])  # the ENF has frozen RFF frequencies
    assert not changed(state.params["buffers"], new.params["buffers"])


def test_enf_inner_loop_moves_fitted_fields_only():
    adapter = tiny_enf()
    params = adapter.init_params()
    lat, _ = encode_mod.fit_latents(adapter, params, rings(3), steps=2)
    lat0 = adapter.expand(params["init"], 3)
    assert not np.allclose(lat.positions, lat0.positions)
    assert not np.allclose(lat.contexts, lat0.contexts)
    assert not np.allclose(lat.orientations, lat0.orientations)
    np.testing.assert_array_equal(lat.windows, lat0.windows)  # windows not fitted by default
    assert adapters.latent_floats(adapter) == 9 * (2 + 1 + 8)


def test_per_step_rates_select_one_rate_set_per_inner_step():
    cfg = CNFConfig(latent_dim=16, hidden=32, num_layers=2, w0=10.0)
    one = tiny_cnf()
    per = adapters.cnf_adapter(cfg, seed=0, lr_init=1.0, rate_steps=2)
    assert adapters.make_adapter("cnf", per.model_config).rate_steps == 2
    assert "rate_steps" not in one.model_config  # default: the configs of old checkpoints
    p1, p2 = one.init_params(), per.init_params()
    assert p2["log_lrs"].shape == (2, 16)
    coords = make_grid(SIZE)
    px = image_to_pixels(rings(3)[..., None])
    z0 = one.expand(p1["init"], 3)
    key = jax.random.PRNGKey(0)
    fit = functools.partial(inner.inner_loop, coords=coords, targets=px, key=key, steps=3,
                            pixels=None)  # fmt: skip
    # equal rate sets: the same fit as one shared set
    np.testing.assert_allclose(fit(per, p2, z0), fit(one, p1, z0), rtol=1e-6, atol=1e-7)
    # set 0 drives step 0 only, the last set drives steps 1.. (here 1 and 2)
    p2 = {**p2, "log_lrs": p2["log_lrs"].at[0].set(jnp.log(0.0))}
    _, path = fit(per, p2, z0, return_path=True)
    np.testing.assert_array_equal(path[1], z0)
    assert not np.allclose(path[2], path[1]) and not np.allclose(path[3], path[2])
    with pytest.raises(ValueError, match="rate_steps"):
        adapters.cnf_adapter(cfg, rate_steps=0)


def test_fit_is_independent_per_image_and_encode_pads():
    adapter = tiny_cnf()
    params = adapter.init_params()
    imgs = rings(5, seed=4)
    lat_ab, s_ab = encode_mod.fit_latents(adapter, params, imgs[[0, 1]], steps=2)
    lat_ac, s_ac = encode_mod.fit_latents(adapter, params, imgs[[0, 2]], steps=2)
    np.testing.assert_allclose(lat_ab[0], lat_ac[0], atol=1e-5)
    np.testing.assert_allclose(s_ab[0], s_ac[0], atol=1e-3)
    assert not np.allclose(lat_ab[1], lat_ac[1])
    # encode: 5 images in batches of 2 (last one padded) equals fitting all at once
    lat_enc, s_enc = encode_mod.encode(adapter, params, imgs, steps=2, batch_size=2, progress=False)
    lat_all, s_all = encode_mod.fit_latents(adapter, params, imgs, steps=2)
    assert lat_enc.shape == (5, 16) and s_enc.shape == (5,)
    np.testing.assert_allclose(lat_enc, lat_all, atol=1e-5)
    np.testing.assert_allclose(s_enc, s_all, atol=1e-3)


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="channels"):
        encode_mod.fit_latents(tiny_cnf(), tiny_cnf().init_params(), np.zeros((2, SIZE, SIZE, 3)))


def test_batch_indices_pure_function_of_seed_and_step():
    a = outer.batch_indices(0, 7, 100, 8)
    np.testing.assert_array_equal(a, outer.batch_indices(0, 7, 100, 8))
    assert not np.array_equal(a, outer.batch_indices(1, 7, 100, 8))
    epoch = np.concatenate([outer.batch_indices(0, s, 100, 8) for s in range(12)])
    assert len(np.unique(epoch)) == 96  # one epoch: no repeats
    assert not np.array_equal(outer.batch_indices(0, 0, 100, 8), outer.batch_indices(0, 12, 100, 8))


def test_psnr_values_and_mask():
    target = np.zeros((2, 4, 4), np.float32)
    pred = target + np.array([0.1, 0.01], np.float32)[:, None, None]
    np.testing.assert_allclose(grid.psnr(pred, target), [20.0, 40.0], rtol=1e-5)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    pred2 = pred.copy()
    pred2[:, 1:, :] = 0.5  # outside the mask: ignored
    np.testing.assert_allclose(grid.psnr(pred2, target, mask), [20.0, 40.0], rtol=1e-5)


def test_rotate_images_moves_a_blob_by_a_random_angle():
    rng = np.random.default_rng(0)
    angle = float(rng.uniform(0.3, 2 * np.pi - 0.3))
    size = 32
    xy = np.asarray(make_grid(size))
    c = np.array([0.4, -0.1])
    img = np.exp(-np.sum((xy - c) ** 2, -1) / (2 * 0.08**2)).reshape(1, size, size)
    rot = np.asarray(grid.rotate_images(img, [angle]))[0].reshape(-1)
    centroid = (rot[:, None] * xy).sum(0) / rot.sum()
    expect = np.array([np.cos(angle) * c[0] - np.sin(angle) * c[1],
                       np.sin(angle) * c[0] + np.cos(angle) * c[1]])  # fmt: skip
    np.testing.assert_allclose(centroid, expect, atol=0.02)
    wrong = np.array([np.cos(-angle) * c[0] - np.sin(-angle) * c[1],
                      np.sin(-angle) * c[0] + np.cos(-angle) * c[1]])  # fmt: skip
    assert np.linalg.norm(centroid - wrong) > 0.05  # negative control: the opposite direction


def test_rotation_consistency_metric():
    adapter = tiny_cnf()
    params = adapter.init_params()
    imgs = rings(2)
    same = rotation.rotation_consistency(adapter, params, imgs, [0.0, 0.0], steps=1)
    assert np.all(same["consistency"] > 60)  # no rotation: both fits decode identically
    angle = float(np.random.default_rng(1).uniform(0.3, 1.2))
    rot = rotation.rotation_consistency(adapter, params, imgs, [angle, angle], steps=1)
    assert np.all(rot["consistency"] < same["consistency"])
    assert set(rot) == {"consistency", "fit_rotated", "fit_original"}


def test_stratified_sampling_takes_one_pixel_per_block():
    px = jnp.arange(2 * 64 * 64, dtype=jnp.float32).reshape(2, 4096, 1)
    # blocks of 2 x 4
    coords, vals = inner.pixel_subset(jax.random.PRNGKey(0), make_grid(64), px, 512)
    idx = np.asarray(vals[..., 0]).astype(int) - np.array([0, 4096])[:, None]
    assert idx.shape == (2, 512)
    np.testing.assert_array_equal(coords, np.asarray(make_grid(64))[idx])
    rows, cols = idx // 64, idx % 64
    blocks = (rows // 2) * 16 + cols // 4
    for b in range(2):
        assert sorted(blocks[b]) == list(range(512))  # every block exactly once
    assert not np.array_equal(idx[0], idx[1])  # each image its own draw
    _, other = inner.pixel_subset(jax.random.PRNGKey(1), make_grid(64), px, 512)
    assert not np.array_equal(other, vals)
    # random sampling: without replacement
    _, rnd = inner.pixel_subset(jax.random.PRNGKey(0), make_grid(64), px, 500, "random")
    assert len(np.unique(np.asarray(rnd[0]))) == 500
    with pytest.raises(ValueError, match="do not tile"):
        inner.pixel_subset(jax.random.PRNGKey(0), make_grid(64), px, 500)
