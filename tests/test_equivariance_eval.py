"""End-to-end equivariance of fitting (issue 12): with the equivariant start the latents of a
rotated image are the rotated latents; with the standard (fixed) start they are not."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from enflens.evaluate import equivariance as Q
from enflens.fields import adapters
from enflens.fields.enf import ENFConfig
from enflens.testing import lens_like_images

SIZE = 32


@functools.cache
def tiny(fit_radius: float | None = 1.0) -> adapters.FieldAdapter:
    """A small untrained ENF with the equivariant ring start; the inner loss on the unit disk."""
    cfg = ENFConfig(
        num_latents=12, latent_dim=4, hidden=16, num_heads=2, k_nearest=4, num_rff=8,
        rff_std_value=1.0, template="rings", ring_counts=(4, 8), ring_radii=(0.25, 0.5),
    )  # fmt: skip
    return adapters.enf_adapter(
        cfg, lr_contexts=20.0, lr_positions=1.0, equivariant_start=True, fit_radius=fit_radius
    )


def _params(adapter: adapters.FieldAdapter) -> dict:
    """Initial parameters with a small random learned init, so that fits depend on the image."""
    p = adapter.init_params()
    p["init"] = 0.05 * jax.random.normal(jax.random.PRNGKey(1), jnp.shape(p["init"]), jnp.float32)
    return p


def test_fitted_latents_follow_a_random_continuous_rotation():
    x = lens_like_images(4, size=SIZE, seed=7)
    angles = np.random.default_rng(0).uniform(0, 2 * np.pi, len(x))
    ad = tiny()
    params = _params(ad)
    good = Q.end_to_end_equivariance(ad, params, x, angles, steps=3, pixels=None, batch_size=4)
    assert good["n_images"] == 4 and set(good["per_image"]) >= {"pose_error_px", "psnr_db"}
    assert good["pose_error_px"] < 0.1 and good["orientation_error_deg"] < 0.2, good
    assert good["context_rel_error"] < 0.05 and good["consistency_db"] > 40, good
    # control: the standard start (the same template for every image) does not rotate; even
    # matched to the nearest refit latent its poses are off
    ctrl = Q.end_to_end_equivariance(
        ad, params, x, angles, steps=3, pixels=None, batch_size=4, start="fixed",
        matching="nearest",
    )  # fmt: skip
    assert ctrl["pose_error_px"] > 10 * good["pose_error_px"], ctrl
    assert ctrl["orientation_error_deg"] > 10 * good["orientation_error_deg"], ctrl
    assert ctrl["consistency_db"] < good["consistency_db"] - 15, ctrl
    # fitting the whole square (whose corners do not rotate onto themselves) is less exact
    square = tiny(None)
    sq = Q.end_to_end_equivariance(square, params, x, angles, steps=3, pixels=None, batch_size=4)
    assert sq["context_rel_error"] > 2 * good["context_rel_error"], sq
    # nearest-neighbour matching agrees with index matching for the equivariant start
    near = Q.end_to_end_equivariance(
        ad, params, x, angles, steps=3, pixels=None, batch_size=4, matching="nearest"
    )
    assert abs(near["pose_error_px"] - good["pose_error_px"]) < 0.05


def test_latent_motion_frozen_poses_do_not_move():
    ad = tiny()
    params = _params(ad)
    x = lens_like_images(4, size=SIZE, seed=8)
    m = Q.latent_motion(ad, params, x, steps=2, pixels=256, batch_size=4)
    assert m["median_position_px"] > 0.0 and m["median_orientation_deg"] > 0.0
    assert np.isfinite(m["psnr_frozen_poses_db"]) and m["n_images"] == 4
    frozen = Q.frozen_poses(ad)
    assert frozen is Q.frozen_poses(ad)  # cached: one compilation
    mf = Q.latent_motion(frozen, params, x, steps=2, pixels=256, batch_size=4)
    assert mf["median_position_px"] == 0.0 and mf["median_orientation_deg"] == 0.0
    assert mf["psnr_adapted_poses_db"] == mf["psnr_frozen_poses_db"]
