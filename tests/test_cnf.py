"""CNF baseline: shapes, parameter count, modulation, latent-size matching with the ENF."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from enflens.fields.cnf import CNFConfig, CNFDecoder, cnf_latent_dim_matching_enf, enf_latent_floats
from enflens.grid import make_grid


def test_latent_float_count_matches_enf():
    assert enf_latent_floats(25, 32) == 25 * 35 == 875
    assert enf_latent_floats(25, 32, with_windows=True) == 900
    assert cnf_latent_dim_matching_enf(16, 64) == 16 * 67
    with pytest.raises(ValueError, match="num_latents"):
        enf_latent_floats(0, 4)


def test_shapes_and_parameter_count():
    cfg = CNFConfig(latent_dim=10, hidden=16, num_layers=3, out_channels=2)
    model = CNFDecoder(cfg, rngs=nnx.Rngs(0))
    coords = jnp.broadcast_to(make_grid(5), (4, 25, 2))
    out = model(coords, jnp.zeros((4, 10)))
    assert out.shape == (4, 25, 2) and out.dtype == jnp.float32
    # layers: 2*16+16, 2 x (16*16+16); shifts 10*48; read-out 16*2+2
    assert model.num_params() == (48 + 2 * 272) + 480 + 34
    with pytest.raises(ValueError, match="latent dim"):
        model(coords, jnp.zeros((4, 9)))
    with pytest.raises(ValueError, match="hidden"):
        CNFConfig(hidden=0)


def test_latent_modulates_each_image_independently():
    cfg = CNFConfig(latent_dim=8, hidden=16, num_layers=2, w0=10.0)
    model = CNFDecoder(cfg, rngs=nnx.Rngs(1))
    coords = jnp.broadcast_to(make_grid(6), (2, 36, 2))
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 8))
    out = model(coords, z)
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3  # different latents, different fields
    z2 = z.at[1].set(-z[1])
    out2 = model(coords, z2)
    np.testing.assert_allclose(out2[0], out[0], atol=1e-6)  # image 0 unaffected by image 1
    assert float(jnp.abs(out2[1] - out[1]).max()) > 1e-3


def test_not_rotation_equivariant_negative_control():
    """The CNF has no built-in symmetry: rotating the coordinates changes its output."""
    from enflens.geometry import rotate

    model = CNFDecoder(CNFConfig(latent_dim=4, hidden=16, num_layers=2), rngs=nnx.Rngs(2))
    coords = jnp.broadcast_to(make_grid(8), (1, 64, 2))
    z = jnp.ones((1, 4))
    angle = float(np.random.default_rng(0).uniform(0.2, 3.0))
    diff = jnp.abs(model(rotate(angle, coords), z) - model(coords, z)).max()
    assert float(diff) > 1e-2
