"""Frame angle (masked image moments) and the ring template of the equivariant start."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from enflens.fields import adapters, frame
from enflens.fields.enf import ENFConfig
from enflens.grid import image_to_pixels, make_grid, rot90_images, rotate_images
from enflens.metalearn import outer
from enflens.testing import lens_like_images


def _wrap_deg(a):
    return np.degrees(np.abs((np.asarray(a) + np.pi) % (2 * np.pi) - np.pi))


def _corner_angle(images):
    """Negative control: the intensity-weighted mean direction measured from the corner pixel
    (0, 0) of the array instead of the image centre (not equivariant about the centre)."""
    x = np.asarray(images, np.float64)
    h, w = x.shape[1:3]
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    m = x.reshape(len(x), -1)
    return np.arctan2(m @ ii.ravel(), m @ jj.ravel())


def test_frame_angle_rotates_with_continuous_rotations():
    rng = np.random.default_rng(0)
    x = lens_like_images(16, size=64, seed=1)
    beta = rng.uniform(0, 2 * np.pi, len(x)).astype(np.float32)
    xr = np.asarray(rotate_images(x, beta))
    a0, m0 = frame.image_frame(x)
    a1, m1 = frame.image_frame(xr)
    assert np.all(np.asarray(m0) == frame.DIPOLE) and np.all(np.asarray(m1) == frame.DIPOLE)
    err = _wrap_deg(np.asarray(a1) - np.asarray(a0) - beta)
    assert np.median(err) < 0.1 and err.max() < 1.0, err
    # negative control: a frame measured about the wrong point does not follow the rotation
    bad = _wrap_deg(_corner_angle(xr) - _corner_angle(x) - beta)
    assert np.median(bad) > 10.0, bad


def test_frame_angle_exact_for_quarter_turns_and_channels():
    x = lens_like_images(4, size=32, seed=2)
    a0 = np.asarray(frame.frame_angle(x))
    for k in (1, 2, 3):
        ak = np.asarray(frame.frame_angle(rot90_images(x, k)))
        np.testing.assert_allclose(_wrap_deg(ak - a0 - k * np.pi / 2), 0.0, atol=1e-3)
    both = np.stack([x, 0.5 * x], -1)  # (B, H, W, 2): channels are summed
    np.testing.assert_allclose(np.asarray(frame.frame_angle(both)), a0, atol=1e-5)


def test_weak_dipole_falls_back_to_the_quadrupole_axis_and_symmetric_images_are_flagged():
    g = np.asarray(make_grid(64)).reshape(64, 64, 2)
    rng = np.random.default_rng(3)
    phi = rng.uniform(0, np.pi)
    c = 0.45 * np.array([np.cos(phi), np.sin(phi)])
    blob = lambda p: np.exp(-np.sum((g - p) ** 2, -1) / (2 * 0.08**2))  # noqa: E731
    pair = (blob(c) + blob(-c))[None].astype(np.float32)  # no dipole, axis phi (mod pi)
    ring = np.exp(-0.5 * ((np.linalg.norm(g, axis=-1) - 0.4) / 0.1) ** 2)[None]
    a, mode = frame.image_frame(np.concatenate([pair, ring.astype(np.float32)]))
    assert np.asarray(mode).tolist() == [frame.QUADRUPOLE, frame.UNDEFINED]
    assert min(_wrap_deg(a[0] - phi), _wrap_deg(a[0] - phi - np.pi)) < 0.1
    beta = np.float32(rng.uniform(0, 2 * np.pi))
    ar, mr = frame.image_frame(rotate_images(pair, beta))
    assert int(mr[0]) == frame.QUADRUPOLE
    d = _wrap_deg(np.asarray(ar) - np.asarray(a[0]) - beta)[0]
    assert min(d, 180.0 - d) < 0.5  # equivariant mod pi


def test_masked_moments_by_hand():
    img = np.zeros((1, 4, 4), np.float32)
    img[0, 0, 0] = 2.0  # pixel centre (-0.75, -0.75), radius 1.06: outside the 0.95 disk
    img[0, 2, 1] = 1.0  # (-0.25, 0.25)
    m = frame.masked_moments(img)
    assert float(m["mass"][0]) == pytest.approx(1.0)
    assert float(m["dipole_x"][0]) == pytest.approx(-0.25)
    assert float(m["quad_s"][0]) == pytest.approx(2 * -0.25 * 0.25)
    m2 = frame.masked_moments(img, radius=1.5, power=2.0)
    assert float(m2["mass"][0]) == pytest.approx(5.0)


def test_ring_template_radial_and_symmetric():
    t = frame.ring_template((4, 8, 12), (0.2, 0.42, 0.66), context_dim=3)
    p = np.asarray(t.positions)
    assert p.shape == (24, 2) and t.contexts.shape == (24, 3)
    np.testing.assert_allclose(np.sort(np.unique(np.round(np.hypot(*p.T), 5))), [0.2, 0.42, 0.66])
    np.testing.assert_allclose(
        _wrap_deg(np.asarray(t.orientations) - np.arctan2(p[:, 1], p[:, 0])), 0, atol=1e-4
    )
    perms = frame.symmetry_permutations(t)
    assert len(perms) == 4  # C4: identity, pi/2, pi, 3 pi/2
    assert len(frame.symmetry_permutations(frame.ring_template((4, 6), (0.3, 0.5)))) == 2
    assert len(frame.symmetry_permutations(frame.ring_template((3,), (0.3,)))) == 3
    with pytest.raises(ValueError, match="pair up"):
        frame.ring_template((4, 8), (0.3,))


def _ring_adapter(**kw) -> adapters.FieldAdapter:
    cfg = ENFConfig(
        num_latents=8, latent_dim=4, hidden=16, num_heads=2, k_nearest=4, num_rff=8,
        template="rings", ring_counts=(4, 4), ring_radii=(0.25, 0.5),
    )  # fmt: skip
    return adapters.enf_adapter(cfg, **kw)


def test_equivariant_start_is_the_rotated_template_and_round_trips():
    ad = _ring_adapter(equivariant_start=True, lr_bounds={"positions": (0.5, 2.0)})
    params = ad.init_params()
    x = lens_like_images(3, size=32, seed=5)
    px = image_to_pixels(jnp.asarray(x))
    z0 = ad.start_latents(params, px, (32, 32))
    alpha = np.asarray(frame.frame_angle(x))
    want = frame.rotate_latents(ad.expand(params["init"], 3), alpha)
    np.testing.assert_allclose(z0.positions, want.positions, atol=1e-6)
    np.testing.assert_allclose(z0.orientations, want.orientations, atol=1e-6)
    # the standard start is the same template for every image (control)
    std = _ring_adapter()
    z_std = std.start_latents(params, px, (32, 32))
    np.testing.assert_allclose(z_std.positions[0], z_std.positions[1])
    assert not np.allclose(z0.positions[0], z0.positions[1])
    # rebuilt from the stored config: same start and bounds
    again = adapters.make_adapter("enf", ad.model_config)
    assert again.start is not None and again.lr_bounds.positions == (0.5, 2.0)
    np.testing.assert_allclose(again.start_latents(params, px, (32, 32)).positions, z0.positions)
    with pytest.raises(ValueError, match="sum"):
        ENFConfig(num_latents=9, template="rings")


def test_lr_bounds_clip_the_inner_rates_and_the_outer_update():
    ad = _ring_adapter(lr_positions=10.0, lr_orientations=0.01,
                       lr_bounds={"positions": (0.5, 2.0), "orientations": (0.1, 1.0)})  # fmt: skip
    params = ad.init_params()
    rates = ad.inner_rates(params)
    assert float(rates.positions) == pytest.approx(2.0)
    assert float(rates.orientations) == pytest.approx(0.1)
    assert float(rates.contexts[0]) == pytest.approx(150.0, rel=1e-5)  # unbounded
    cfg = outer.MetaConfig(inner_steps=1, inner_pixels=64, outer_pixels=64, batch_size=2,
                       num_steps=3, first_order=True)  # fmt: skip
    state = outer.init_state(ad, cfg)
    new, _ = outer.train_step(ad, cfg, state, lens_like_images(2, size=16))
    assert float(new.params["log_lrs"].positions) <= np.log(2.0) + 1e-6
    unbounded = dataclasses.replace(ad, lr_bounds=None)
    assert float(unbounded.inner_rates(params).positions) == pytest.approx(10.0)


def test_max_pose_step_bounds_each_inner_step():
    from enflens.metalearn.encode import fit_path

    x = lens_like_images(2, size=16, seed=6)
    free = _ring_adapter(lr_positions=50.0, lr_orientations=50.0, equivariant_start=True)
    capped = _ring_adapter(lr_positions=50.0, lr_orientations=50.0, equivariant_start=True,
                           max_pose_step=(0.01, 0.02))  # fmt: skip
    params = free.init_params()
    moved = {}
    for name, ad in (("free", free), ("capped", capped)):
        path, _ = fit_path(ad, params, x, steps=2, pixels=None)
        moved[name] = (
            np.linalg.norm(np.diff(path.positions, axis=0), axis=-1),
            np.abs(np.diff(path.orientations, axis=0)),
        )
    assert moved["capped"][0].max() <= 0.01 + 1e-6 and moved["capped"][1].max() <= 0.02 + 1e-6
    assert moved["free"][0].max() > 0.01 and moved["free"][1].max() > 0.02  # the cap acted
    assert adapters.make_adapter("enf", capped.model_config).limit_step is not None
