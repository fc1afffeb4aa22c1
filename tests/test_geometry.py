"""SE(2) group laws, the action on latent clouds, grid latents and PONITA pair invariants."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enflens.geometry import (
    SE2,
    Latents,
    grid_latents,
    pair_invariants,
    random_se2,
    rotate,
    wrap_angle,
)
from enflens.testing import random_latents

ATOL = 2e-6  # float32 rounding for coordinates of order 1


def _points(key, shape=(3, 17)):
    return jax.random.uniform(key, (*shape, 2), jnp.float32, -1.0, 1.0)


def _elements(key, shape=(3,)):
    g = random_se2(key, shape, max_translation=0.7)
    # continuous angles: never (only) multiples of 90 degrees
    frac = np.asarray(g.angle) / (np.pi / 2)
    assert np.all(np.abs(frac - np.round(frac)) > 1e-3)
    return g


def test_random_se2_ranges_and_shapes(key):
    g = random_se2(key, (1000,), max_translation=0.3)
    assert g.angle.shape == (1000,) and g.translation.shape == (1000, 2)
    assert g.angle.dtype == jnp.float32
    assert float(g.angle.min()) >= 0 and float(g.angle.max()) < 2 * np.pi
    assert float(jnp.abs(g.translation).max()) <= 0.3
    assert float(g.angle.std()) > 1.0  # spread over the circle, not a constant


def test_rotation_is_counter_clockwise():
    np.testing.assert_allclose(
        rotate(jnp.float32(np.pi / 2), jnp.array([1.0, 0.0])), [0, 1], atol=1e-7
    )


def test_identity(keys):
    g = _elements(next(keys))
    x = _points(next(keys))
    e = SE2.identity((3,))
    np.testing.assert_array_equal(e.apply(x), x)
    for h in (g.compose(e), e.compose(g)):
        np.testing.assert_allclose(h.angle, g.angle, atol=ATOL)
        np.testing.assert_allclose(h.translation, g.translation, atol=ATOL)


def test_action_is_compatible_with_composition(keys):
    g1, g2 = _elements(next(keys)), _elements(next(keys))
    x = _points(next(keys))
    np.testing.assert_allclose(g1.compose(g2).apply(x), g1.apply(g2.apply(x)), atol=ATOL)


def test_composition_is_associative(keys):
    g1, g2, g3 = (_elements(next(keys)) for _ in range(3))
    x = _points(next(keys))
    a = g1.compose(g2).compose(g3)
    b = g1.compose(g2.compose(g3))
    np.testing.assert_allclose(a.apply(x), b.apply(x), atol=ATOL)
    np.testing.assert_allclose(a.translation, b.translation, atol=ATOL)


def test_inverse(keys):
    g = _elements(next(keys))
    x = _points(next(keys))
    for h in (g.inverse().compose(g), g.compose(g.inverse())):
        np.testing.assert_allclose(h.apply(x), x, atol=ATOL)
        np.testing.assert_allclose(wrap_angle(h.angle), 0.0, atol=ATOL)
    # negative control: a wrong inverse (negated translation only) does not undo g
    wrong = SE2(-g.angle, -g.translation)
    assert float(jnp.abs(wrong.apply(g.apply(x)) - x).max()) > 1e-2


def test_action_is_an_isometry(keys):
    g = _elements(next(keys))
    x = _points(next(keys))
    d = jnp.linalg.norm(x[:, :, None] - x[:, None], axis=-1)
    gx = g.apply(x)
    np.testing.assert_allclose(jnp.linalg.norm(gx[:, :, None] - gx[:, None], axis=-1), d, atol=4e-6)


def test_unbatched_element_on_batched_points(keys):
    g = _elements(next(keys), ())
    x = _points(next(keys), (4, 9))
    gx = g.apply(x)
    assert gx.shape == (4, 9, 2)
    np.testing.assert_allclose(gx[2], g.apply(x[2]), atol=ATOL)


def test_wrap_angle():
    theta = jnp.linspace(-20, 20, 1001)
    w = wrap_angle(theta)
    assert float(w.min()) >= -np.pi and float(w.max()) < np.pi
    np.testing.assert_allclose(jnp.cos(w), jnp.cos(theta), atol=1e-5)
    np.testing.assert_allclose(jnp.sin(w), jnp.sin(theta), atol=1e-5)


def test_latents_transform(keys):
    z = random_latents(next(keys), batch=3, num_latents=16, context_dim=1)
    g = _elements(next(keys))
    gz = z.transform(g)
    np.testing.assert_allclose(gz.positions, g.apply(z.positions), atol=ATOL)
    np.testing.assert_allclose(gz.orientations, z.orientations + g.angle[:, None], atol=ATOL)
    np.testing.assert_array_equal(gz.contexts, z.contexts)
    np.testing.assert_array_equal(gz.windows, z.windows)
    # group action on clouds: (g1 g2) z = g1 (g2 z)
    g2 = _elements(next(keys))
    a, b = z.transform(g.compose(g2)), z.transform(g2).transform(g)
    np.testing.assert_allclose(a.positions, b.positions, atol=ATOL)
    np.testing.assert_allclose(wrap_angle(a.orientations - b.orientations), 0, atol=4e-6)


def test_latents_is_a_pytree(keys):
    z = random_latents(next(keys), batch=3, num_latents=16, context_dim=1)
    leaves = jax.tree.leaves(z)
    assert len(leaves) == 4
    doubled = jax.tree.map(lambda a: 2 * a, z)
    assert isinstance(doubled, Latents)
    np.testing.assert_array_equal(doubled.windows, 2 * z.windows)
    assert z.num_latents == 16 and z.context_dim == 1


def test_grid_latents():
    z = grid_latents(16, 8, window=0.3)
    assert z.positions.shape == (16, 2) and z.contexts.shape == (16, 8)
    assert z.orientations.shape == (16,) and z.windows.shape == (16,)
    np.testing.assert_allclose(np.unique(np.asarray(z.positions[:, 0])), [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(z.windows, 0.3, rtol=1e-6)
    np.testing.assert_array_equal(z.orientations, 0.0)
    assert float(jnp.abs(z.contexts).max()) == 0.0
    np.testing.assert_allclose(grid_latents(25, 2).windows, 0.4, rtol=1e-6)  # default: spacing


def test_grid_latents_jitter_and_errors(key):
    z = grid_latents(25, 4, key=key, jitter=0.5, context_init=1.0)
    base = grid_latents(25, 4)
    shift = jnp.abs(z.positions - base.positions)
    assert 0 < float(shift.max()) <= 0.5 * 0.4 * 0.5 + 1e-6
    assert float(z.contexts.std()) > 0.5
    with pytest.raises(ValueError, match="perfect square"):
        grid_latents(10, 4)
    with pytest.raises(ValueError, match="key"):
        grid_latents(9, 4, jitter=0.1)


def _pose_transform(g, positions, orientations):
    return g.apply(positions), orientations + g.angle[..., None]


def test_pair_invariants_are_se2_invariant(keys):
    z = random_latents(next(keys), batch=3, num_latents=16, context_dim=1)
    g = _elements(next(keys))
    inv = pair_invariants(z.positions, z.orientations)
    assert inv.shape == (3, 16, 16, 4)
    ginv = pair_invariants(*_pose_transform(g, z.positions, z.orientations))
    err = float(jnp.abs(ginv - inv).max() / jnp.abs(inv).max())
    assert err < 1e-5, err
    # diagonal: zero offset, zero relative angle
    np.testing.assert_allclose(jnp.diagonal(inv, axis1=1, axis2=2)[:, :2], 0.0, atol=1e-7)
    np.testing.assert_allclose(jnp.diagonal(inv, axis1=1, axis2=2)[:, 2], 1.0, atol=1e-7)


def test_pair_invariants_negative_control(keys):
    """Without the local frame (R(theta_i)^T) the offsets are not rotation invariant."""
    z = random_latents(next(keys), batch=3, num_latents=16, context_dim=1)
    g = _elements(next(keys))

    def broken(positions, orientations):
        rel = positions[..., None, :, :] - positions[..., :, None, :]
        return jnp.concatenate([rel, pair_invariants(positions, orientations)[..., 2:]], -1)

    inv = broken(z.positions, z.orientations)
    ginv = broken(*_pose_transform(g, z.positions, z.orientations))
    assert float(jnp.abs(ginv - inv).max() / jnp.abs(inv).max()) > 1e-2
    # and the real invariant does change when the cloud is deformed (not a constant)
    moved = dataclasses.replace(z, positions=z.positions.at[:, 0].add(0.1))
    assert float(jnp.abs(pair_invariants(moved.positions, z.orientations) - ginv).max()) > 1e-2
