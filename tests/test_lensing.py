"""Tests of the lenstronomy simulator: recipe distributions, determinism, exact re-rendering."""

from __future__ import annotations

import numpy as np
import pytest
from lenstronomy.SimulationAPI.data_api import DataAPI

from enflens.data import lensing as L
from enflens.testing import lenstronomy_render


def _draws(label: int, n: int, recipe: str = "model_ii") -> list[L.SampleDraw]:
    return [L.draw_sample(recipe, label, L.sample_rng(7, 0, i)) for i in range(n)]


def test_einstein_radius_published_convention():
    # Luminosity-distance convention of the published mass_to_radius: about 1.28 arcsec.
    assert L.einstein_radius(1e12) == pytest.approx(1.2815, abs=2e-3)
    assert L.einstein_radius(4e12) == pytest.approx(2 * L.einstein_radius(1e12))


def test_recipes_band_settings():
    r1, r2, r3 = (L.get_recipe(n) for n in L.RECIPE_NAMES)
    assert (r1.num_pix, r1.pixel_scale, r1.kwargs_band["seeing"]) == (150, 0.05, 0.087)
    assert r1.kwargs_band["background_noise"] == 0.01 and r1.source_amp == 20.0
    assert (r2.num_pix, r2.pixel_scale, r2.kwargs_band["seeing"]) == (64, 0.101, 0.16)
    assert r2.kwargs_band["num_exposures"] == 4 and r2.source_magnitude == 20.0
    assert (r3.num_pix, r3.pixel_scale, r3.kwargs_band["exposure_time"]) == (64, 0.08, 5400.0)
    with pytest.raises(ValueError, match="unknown recipe 'model_x'"):
        L.get_recipe("model_x")


def test_no_sub_description_is_the_macro_model():
    (d,) = _draws(0, 1)
    p = L.describe("model_ii", d)
    assert p["lens_model_list"] == ["SIE", "SHEAR"]
    sie, shear = p["kwargs_lens"]
    assert sie["theta_E"] == pytest.approx(1.2815, abs=2e-3)
    assert (sie["e1"], sie["e2"], sie["center_x"], sie["center_y"]) == (0.1, 0.0, 0.0, 0.0)
    assert shear == {"gamma1": 0.05, "gamma2": 0.0}
    src = p["kwargs_source"][0]
    assert (src["R_sersic"], src["n_sersic"], src["e1"], src["e2"]) == (0.25, 1.0, -0.1, 0.1)
    assert p["m_a"] is None and p["class_name"] == "no_sub"


def test_source_centre_uniform_in_box():
    c = np.array([d.source_center for d in _draws(0, 2000)])
    assert np.all(np.abs(c) <= 0.35)
    assert np.abs(c.mean(0)).max() < 0.02  # U[-0.35, 0.35]: mean 0, sd of mean 0.0045
    assert c.std(0) == pytest.approx([0.7 / np.sqrt(12)] * 2, rel=0.05)


def test_cdm_counts_masses_radii():
    draws = _draws(1, 1000)
    assert all(d.n_sub == 25 for d in draws)
    m = np.concatenate([d.sub_mass for d in draws])
    assert m.min() >= 1e6 and m.max() <= 1e10
    # dN/dm ~ m^-0.9  ->  CDF(m) = (m^0.1 - lo^0.1) / (hi^0.1 - lo^0.1)
    for q in (1e7, 1e8, 1e9):
        cdf = (q**0.1 - 1e6**0.1) / (1e10**0.1 - 1e6**0.1)
        assert np.mean(m < q) == pytest.approx(cdf, abs=0.01)
    pos = np.concatenate([d.sub_pos for d in draws])
    r = np.hypot(pos[:, 0], pos[:, 1])
    assert r.min() >= 0.25 and r.max() <= 2.0
    # uniform in r (not in area): median at 1.125
    assert np.median(r) == pytest.approx(1.125, abs=0.02)
    ang = np.arctan2(pos[:, 1], pos[:, 0])
    assert np.histogram(ang, 8, (-np.pi, np.pi))[0].min() > 0.9 * len(ang) / 8
    p = L.describe("model_ii", draws[0])
    assert p["lens_model_list"] == ["SIE", "SHEAR"] + ["POINT_MASS"] * 25
    thetas = np.array([k["theta_E"] for k in p["kwargs_lens"][2:]])
    np.testing.assert_allclose(thetas, L.einstein_radius(draws[0].sub_mass))


def test_axion_vortex_line_through_centre_with_length_law():
    draws = _draws(2, 500)
    log_ma = np.log10([d.m_a for d in draws])
    assert log_ma.min() >= -24 and log_ma.max() <= -22
    assert np.mean(log_ma < -23) == pytest.approx(0.5, abs=0.07)
    for d in draws[:20]:
        p = L.describe("model_ii", d)
        assert p["m_a"] == d.m_a
        pm = p["kwargs_lens"][2:]
        assert len(pm) == 100
        xy = np.array([[k["center_x"], k["center_y"]] for k in pm])
        theta = np.array([k["theta_E"] for k in pm])
        # 100 equal masses totalling 3e10 Msun: theta_E^2 is proportional to mass
        np.testing.assert_allclose(theta, L.einstein_radius(3e10 / 100))
        np.testing.assert_allclose(xy.mean(0), 0.0, atol=1e-12)  # centred on the lens
        u = np.array([np.cos(d.vortex_angle), np.sin(d.vortex_angle)])
        np.testing.assert_allclose(xy[:, 0] * u[1] - xy[:, 1] * u[0], 0.0, atol=1e-12)
        half = np.abs(xy @ u).max()
        assert half == pytest.approx(0.03 * 1e-22 / d.m_a, rel=1e-12)
        assert np.diff(xy @ u) == pytest.approx(np.full(99, 2 * half / 99), rel=1e-9)


def test_same_seed_same_image_other_index_differs():
    sim = L.Simulator("model_ii")
    a, da = sim.sample(3, 1, 5)
    b, db = sim.sample(3, 1, 5)
    c, _ = sim.sample(3, 2, 5)
    assert np.array_equal(a, b) and da.noise_seed == db.noise_seed
    assert not np.allclose(a, c)
    assert da.label == 5 % 3


@pytest.mark.parametrize("recipe,label", [("model_ii", 1), ("model_iii", 2), ("model_i", 1)])
def test_simulator_equals_lenstronomy_render(recipe, label):
    sim = L.Simulator(recipe)
    raw, draw = sim.sample(11, 0, label)
    p = L.describe(recipe, draw)
    np.testing.assert_array_equal(raw, lenstronomy_render(p))
    np.testing.assert_array_equal(raw, L.render(p, noise=True))
    clean = L.render(p, noise=False)
    assert raw.shape == clean.shape == (sim.recipe.num_pix,) * 2
    assert not np.allclose(raw, clean)  # noise was added
    # lensed arc/ring: the brightest pixel lies near the Einstein radius, not at the centre
    i, j = np.unravel_index(np.argmax(clean), clean.shape)
    r = (
        np.hypot(j - (clean.shape[1] - 1) / 2, i - (clean.shape[0] - 1) / 2)
        * sim.recipe.pixel_scale
    )
    assert 0.5 < r < 2.2


def test_model_i_draws_exposure_time():
    t = np.array([d.exposure_time for d in _draws(0, 400, "model_i")])
    assert t.min() >= 10**3 and t.max() <= 10**3.5
    assert len(np.unique(t)) == 400


def test_lens_maps_subhalo_deflection_and_pixel_convention():
    d_no, d_cdm = _draws(0, 1)[0], _draws(1, 1)[0]
    p0, p1 = L.describe("model_ii", d_no), L.describe("model_ii", d_cdm)
    m0, m1 = L.lens_maps(p0), L.lens_maps(p1)
    # image[i, j] sits at x = column offset, y = row offset (enflens.grid convention)
    xg, yg = DataAPI(64, **p0["kwargs_band"]).data_class.pixel_coordinates
    np.testing.assert_allclose(m0["x"], xg)
    np.testing.assert_allclose(m0["y"], yg)
    assert m0["x"][0, 1] > m0["x"][0, 0] and m0["y"][1, 0] > m0["y"][0, 0]
    # the extra deflection of the CDM sample is the sum of point-mass terms theta_E^2 d / |d|^2
    want_x, want_y = np.zeros((64, 64)), np.zeros((64, 64))
    for k in range(25):
        dx, dy = m0["x"] - d_cdm.sub_pos[k, 0], m0["y"] - d_cdm.sub_pos[k, 1]
        t2 = L.einstein_radius(d_cdm.sub_mass[k]) ** 2
        want_x += t2 * dx / (dx**2 + dy**2)
        want_y += t2 * dy / (dx**2 + dy**2)
    np.testing.assert_allclose(m1["alpha_x"] - m0["alpha_x"], want_x, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m1["alpha_y"] - m0["alpha_y"], want_y, rtol=1e-6, atol=1e-9)
    assert np.abs(want_x).max() > 1e-3
    assert m0["kappa"].shape == (64, 64) and m0["kappa"].max() > 1.0  # SIE cusp


def test_normalise():
    img = np.array([[-1.0, 2.0], [4.0, 1.0]])
    n, s = L.normalise(img)
    assert s == 4.0 and n.dtype == np.float32
    np.testing.assert_array_equal(n, [[0.0, 0.5], [1.0, 0.25]])
    with pytest.raises(ValueError, match="maximum"):
        L.normalise(np.zeros((2, 2)))


def test_published_multi_plane_convention_scales_deflections():
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(**L.COSMOLOGY)

    def ratio(zs):
        return (
            cosmo.angular_diameter_distance(0.5, zs) / cosmo.angular_diameter_distance(zs)
        ).value

    s = L.published_deflection_scale()
    assert s == pytest.approx(ratio(1.0) / ratio(2.5), rel=1e-4)
    assert 0.6 < s < 0.67
    assert L.published_deflection_scale(z_source_convention=1.0) == pytest.approx(1.0, rel=1e-6)
