"""ENF decoder: equivariance per bi-invariant (with a failing control), k-nearest selection,
parameter count, gradients and shapes.

Equivariance error (see enflens.testing): max|f(g x, g z) - f(x, z)| / max|f(x, z)| over batch,
pixels and channels, for random continuous group elements; must be <= 1e-5 in float32.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from enflens.fields.enf import (
    EQUIVARIANT_GROUPS,
    ENFConfig,
    ENFDecoder,
    Frozen,
    decode_chunked,
    init_latents,
    sincos,
)
from enflens.geometry import Latents
from enflens.nn import count_params
from enflens.testing import (
    assert_equivariant,
    equivariance_error,
    random_coords,
    random_latents,
)

SMALL = dict(num_latents=16, latent_dim=8, hidden=32, num_heads=2, num_rff=16, k_nearest=4)
DEFAULT_NUM_PARAMS = 54_273


def _decoder(**kw) -> ENFDecoder:
    return ENFDecoder(ENFConfig(**{**SMALL, **kw}), rngs=nnx.Rngs(0))


@functools.cache
def _jitted(**kw):
    """Jitted pure function (coords, latents) -> values of a small decoder (seed 0), cached so
    that tests sharing a config share the compilation."""
    model = _decoder(**kw)
    return jax.jit(lambda x, z: model(x, z))


def _fn(model):
    """The decoder as a jitted pure function of (coords, latents) (eager NNX calls are slow)."""
    return jax.jit(lambda x, z: model(x, z))


# random inputs of every test: B = 2 images, P = 128 pixels, N = 16 latents, D = 8
B, P, N, D = 2, 128, 16, 8
EQ_KW = dict(num_elements=6, batch=B, num_pixels=P, num_latents=N, context_dim=D)


def _inputs(keys):
    return random_coords(next(keys), B, P), random_latents(next(keys), B, N, D)


def test_default_parameter_count():
    # abstract construction: shapes only, no initialiser compiles
    model = nnx.eval_shape(lambda: ENFDecoder(ENFConfig(), rngs=nnx.Rngs(0)))
    assert count_params(model) == DEFAULT_NUM_PARAMS
    # the RFF frequencies are stored but not trainable
    frozen = jax.tree.leaves(nnx.state(model, Frozen))
    assert len(frozen) == 2 and all(f.shape == (2, 16) for f in frozen)
    params = nnx.state(model, nnx.Param)
    assert "frequencies" not in str(jax.tree_util.tree_structure(params))


def test_sincos_matches_numpy():
    x = jnp.linspace(-100.0, 100.0, 200_001, dtype=jnp.float32)
    s, c = jax.jit(sincos)(x)
    xd = np.asarray(x, np.float64)
    assert np.abs(np.asarray(s) - np.sin(xd)).max() < 6e-7
    assert np.abs(np.asarray(c) - np.cos(xd)).max() < 6e-7
    ds = jax.jit(jax.vmap(jax.grad(lambda t: sincos(t)[0])))(x)
    assert np.abs(np.asarray(ds) - np.cos(xd)).max() < 2e-6


@pytest.mark.parametrize("bi", sorted(EQUIVARIANT_GROUPS))
@pytest.mark.parametrize("k", [4, None])
def test_equivariance(bi, k, key):
    fn = _jitted(bi_invariant=bi, k_nearest=k)
    err = assert_equivariant(fn, key, group=EQUIVARIANT_GROUPS[bi], **EQ_KW)
    assert err <= 1e-5


@pytest.mark.parametrize("k", [4, None])
def test_absolute_control_fails(k, key):
    fn = _jitted(bi_invariant="absolute", k_nearest=k)
    errs = equivariance_error(fn, key, group="se2", **EQ_KW)
    assert errs.min() >= 1e-2, errs
    with pytest.raises(AssertionError, match="not se2-equivariant"):
        assert_equivariant(fn, key, group="se2", **EQ_KW)


def test_value_mlp_and_learned_frequencies_stay_equivariant(key):
    """The issue-13 options (a nonlinear per-pair value, trained Fourier frequencies) act only
    on the bi-invariant: SE(2) equivariance stays at float32 rounding; with the absolute
    position as bi-invariant (control) the same decoder fails."""
    opts = dict(value_mlp=True, learn_rff=True)
    err = assert_equivariant(_jitted(**opts), key, group="se2", **EQ_KW)
    assert err <= 1e-5
    errs = equivariance_error(_jitted(bi_invariant="absolute", **opts), key, group="se2", **EQ_KW)
    assert errs.min() >= 1e-2, errs
    model = _decoder(**opts)
    params = nnx.state(model, nnx.Param)
    assert "frequencies" in str(jax.tree_util.tree_structure(params))  # trained now
    assert count_params(model) > count_params(_decoder())  # the value network


def test_translation_invariant_is_not_rotation_equivariant(key):
    """x - p carries no frame: rotating the cloud does not rotate the field (a second control)."""
    fn = _jitted(bi_invariant="translation", k_nearest=4)
    errs = equivariance_error(fn, key, group="rotation", **EQ_KW)
    assert errs.min() >= 1e-2, errs


def test_orientation_dependence(keys):
    """roto_translation reads the latent orientations; isotropic ignores them."""
    x, z = _inputs(keys)
    spun = dataclasses.replace(z, orientations=z.orientations + 0.7)
    roto = _jitted(bi_invariant="roto_translation", k_nearest=4)
    iso = _jitted(bi_invariant="isotropic", k_nearest=4)
    assert float(jnp.abs(roto(x, spun) - roto(x, z)).max()) > 1e-3
    np.testing.assert_array_equal(iso(x, spun), iso(x, z))


def test_k_nearest_matches_attention_restricted_by_hand(keys):
    """k nearest == all latents of a cloud cut by hand to the k nearest of each pixel."""
    k = 4
    x, z = _inputs(keys)
    out = np.asarray(_jitted(bi_invariant="roto_translation", k_nearest=k)(x, z))
    # one sub-cloud per pixel: (B * P, k, ...), decoded at that pixel alone with all latents
    d2 = np.sum((np.asarray(x)[:, :, None] - np.asarray(z.positions)[:, None]) ** 2, -1)
    nearest = np.argsort(d2, axis=-1)[..., :k]  # (B, P, k)
    sub = jax.tree.map(
        lambda a: jnp.asarray(np.take_along_axis(np.asarray(a)[:, None], nearest.reshape(
            *nearest.shape, *([1] * (a.ndim - 2))), axis=2)).reshape(B * P, k, *a.shape[2:]), z
    )  # fmt: skip
    model_all = _fn(_decoder(k_nearest=None))  # same seed: same parameters
    ref = model_all(x.reshape(B * P, 1, 2), sub).reshape(B, P, -1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # and the restriction matters: all latents give a different field
    all_latents = _jitted(bi_invariant="roto_translation", k_nearest=None)(x, z)
    assert float(jnp.abs(all_latents - out).max()) > 1e-3


def test_k_at_least_num_latents_is_all(keys):
    x, z = _inputs(keys)
    ref = _jitted(bi_invariant="roto_translation", k_nearest=None)(x, z)
    np.testing.assert_allclose(_fn(_decoder(k_nearest=N))(x, z), ref)
    assert (
        ENFConfig(k_nearest=99).neighbours(N) == N and ENFConfig(k_nearest=None).neighbours(N) == N
    )


def test_batched_unbatched_and_vmap_agree(keys):
    model = _decoder(out_channels=3)
    x, z = _inputs(keys)  # different pixels per image
    out = _fn(model)(x, z)
    assert out.shape == (B, P, 3) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3
    vm = jax.jit(jax.vmap(lambda xi, zi: model(xi, zi)))(x, z)  # unbatched calls
    np.testing.assert_allclose(vm, out, rtol=1e-5, atol=1e-6)


def test_decode_chunked_matches_one_shot(keys):
    x, z = _inputs(keys)
    fn = _jitted(bi_invariant="roto_translation", k_nearest=4)
    chunked = jax.jit(lambda x, z: decode_chunked(fn, x, z, chunk_pixels=48))(x, z)  # 128 = 2*48+32
    np.testing.assert_allclose(chunked, fn(x, z), rtol=1e-5, atol=1e-6)


def test_memory_is_linear_in_pixels_times_k(keys):
    """No (B, P, N, hidden) tensor in the forward or backward pass when k < N."""
    b, p, n, hidden = 2, 64, 16, 32

    def largest_intermediate(k):
        model = _decoder(k_nearest=k)
        graph, params, rest = nnx.split(model, nnx.Param, ...)
        x = random_coords(jax.random.PRNGKey(0), b, p)
        z = random_latents(jax.random.PRNGKey(1), b, n, 8)

        def loss(params, z):
            return jnp.sum(nnx.merge(graph, params, rest)(x, z) ** 2)

        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, z)
        sizes = [v.aval.size for e in jaxpr.eqns for v in e.outvars if hasattr(v.aval, "size")]
        return max(sizes)

    assert largest_intermediate(4) < b * p * n * hidden
    assert largest_intermediate(None) >= b * p * n * hidden  # control: all latents do build it


@pytest.mark.parametrize("bi", ["roto_translation", "isotropic"])
def test_gradients_finite_and_nonzero(bi, keys):
    model = _decoder(bi_invariant=bi)
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    x, z = _inputs(keys)
    y = jax.random.uniform(next(keys), (B, P, 1))

    def loss(params, z):
        return jnp.mean((nnx.merge(graph, params, rest)(x, z) - y) ** 2)

    g_params, g_z = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, z)
    for path, leaf in jax.tree_util.tree_leaves_with_path(g_params):
        assert bool(jnp.all(jnp.isfinite(leaf))), path
        assert float(jnp.abs(leaf).max()) > 0, path
    fields = ["positions", "contexts", "windows"]
    fields += ["orientations"] if bi == "roto_translation" else []
    for name in fields:
        leaf = getattr(g_z, name)
        assert bool(jnp.all(jnp.isfinite(leaf))), name
        assert float(jnp.abs(leaf).max()) > 0, name
    if bi != "roto_translation":  # orientations are not read
        assert float(jnp.abs(g_z.orientations).max()) == 0


def test_second_order_meta_gradient_is_finite(keys):
    """grad w.r.t. parameters through one inner gradient step on the latents (Meta-SGD)."""
    model = _decoder()
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    x = random_coords(next(keys), B, P)
    z = init_latents(model.cfg, B)
    y = jax.random.uniform(next(keys), (B, P, 1))

    def loss(z, params):
        return jnp.mean((nnx.merge(graph, params, rest)(x, z) - y) ** 2)

    def outer(params):
        gz = jax.grad(loss)(z, params)
        return loss(jax.tree.map(lambda a, g: a - 0.5 * g, z, gz), params)

    g = jax.jit(jax.grad(outer))(params)
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0


def test_init_latents():
    cfg = ENFConfig()
    z = init_latents(cfg, 3)
    assert isinstance(z, Latents)
    assert z.positions.shape == (3, 25, 2) and z.contexts.shape == (3, 25, 32)
    np.testing.assert_array_equal(z.orientations, 0.0)
    np.testing.assert_allclose(z.windows, 0.4, rtol=1e-6)  # grid spacing of a 5 x 5 grid
    np.testing.assert_array_equal(z.positions[0], z.positions[2])
    np.testing.assert_allclose(
        init_latents(dataclasses.replace(cfg, window_init=0.25), 1).windows, 0.25
    )
    noisy = dataclasses.replace(cfg, latent_jitter=0.2, context_init=0.1)
    zn = init_latents(noisy, 2, jax.random.PRNGKey(0))
    assert float(jnp.abs(zn.positions[0] - zn.positions[1]).max()) > 0  # per-image draws
    with pytest.raises(ValueError, match="key"):
        init_latents(noisy, 2)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(bi_invariant="se3"), "bi_invariant"),
        (dict(num_latents=24), "perfect square"),
        (dict(hidden=100, num_heads=3), "num_heads"),
        (dict(num_rff=15), "num_rff"),
        (dict(k_nearest=0), "k_nearest"),
        (dict(window_init=-1.0), "window_init"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        ENFConfig(**kw)


def test_bad_shapes_are_named(keys):
    model = _decoder()
    z = random_latents(next(keys), B, N, D)
    with pytest.raises(ValueError, match="coords"):
        model(jnp.zeros((2, 10, 3)), z)
    with pytest.raises(ValueError, match="latents.contexts"):
        model(jnp.zeros((2, 10, 2)), dataclasses.replace(z, contexts=jnp.zeros((2, 16, 5))))
    with pytest.raises(ValueError, match="latents.positions"):
        model(jnp.zeros((3, 10, 2)), z)
