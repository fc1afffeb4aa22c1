"""Strong-lensing simulator for the three dark-matter classes, built on lenstronomy.

Replicates the DeepLenseSim recipes (``model_i``, ``model_ii``, ``model_iii``; Alexander et al.
2020, mwt5345/DeepLenseSim) with classes ``no_sub`` (label 0), ``cdm`` (1) and ``axion`` (2):

- main halo: SIE of 1e12 solar masses at z = 0.5, source at z = 1.0, Einstein radius from the
  point-mass formula with the published luminosity-distance convention (about 1.28 arcsec),
  e1 = 0.1, e2 = 0, plus external shear gamma1 = 0.05, gamma2 = 0;
- source: elliptical Sersic, R = 0.25 arcsec, n = 1, e1 = -0.1, e2 = 0.1, centre uniform in
  [-0.35, 0.35]^2 arcsec;
- ``cdm``: 25 point masses, dN/dm ~ m^-0.9 in [1e6, 1e10] solar masses, radius uniform in
  [0.25, 2.0] arcsec, angle uniform in [0, 2 pi);
- ``axion``: a vortex of 3e10 solar masses in 100 equal point masses on a line through the lens
  centre at a random angle, half-length 0.03 * (1e-22 eV / m_a) arcsec,
  log10(m_a / eV) ~ U[-24, -22].

Every sample is fully described by plain lenstronomy keyword arguments (:func:`describe`), so
anyone with lenstronomy can re-render it; :func:`render` does that here. Randomness comes from a
per-sample ``numpy.random.Generator`` seeded with ``[seed, split_id, index]``
(:func:`sample_rng`), and the noise from ``numpy.random.RandomState(noise_seed)`` inside
lenstronomy's ``SingleBand.noise_for_model``, so results never depend on how work is split.

Pixel convention: lenstronomy's default pixel grid (``DataAPI``) puts ``image[i, j]`` at
``center_x = (j - (n - 1) / 2) * pixel_scale`` and ``center_y = (i - (n - 1) / 2) * pixel_scale``
arcsec, i.e. exactly :mod:`enflens.grid`'s convention scaled by the half field of view
``n * pixel_scale / 2``: x along columns, y along rows, shown with ``origin="lower"``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import warnings
from typing import Any

import numpy as np

#: Class names in label order.
CLASS_NAMES: tuple[str, ...] = ("no_sub", "cdm", "axion")

# --- physical set-up shared by all recipes (docs/references.md §2) ---------------------------
Z_LENS = 0.5
Z_SOURCE = 1.0
#: Cosmology of the published ``mass_to_radius`` (astropy FlatLambdaCDM).
COSMOLOGY = {"H0": 70.0, "Om0": 0.3, "Ob0": 0.05}
MAIN_HALO_MASS = 1e12  # solar masses
MAIN_HALO_SHAPE = {"e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}
SHEAR = {"gamma1": 0.05, "gamma2": 0.0}
SOURCE_SHAPE = {"R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1}  # arcsec, -, -, -
SOURCE_CENTER_RANGE = 0.35  # arcsec, each coordinate uniform in [-r, r]
CDM_N_SUB = 25
CDM_MASS_RANGE = (1e6, 1e10)  # solar masses
CDM_MASS_SLOPE = -0.9  # dN/dm ~ m^slope (the published code; its docstring says -1.9)
CDM_RADIUS_RANGE = (0.25, 2.0)  # arcsec, uniform in r
AXION_MASS = 3e10  # solar masses, total vortex mass
AXION_N_POINTS = 100
AXION_LOG10_MA_RANGE = (-24.0, -22.0)  # log10(m_a / eV)
AXION_LENGTH_COEFF = 0.03  # half-length = coeff * (1e-22 eV / m_a) arcsec
#: Maximum number of stored substructure point masses (CDM); the vortex is stored by its line.
MAX_SUB = CDM_N_SUB

KWARGS_NUMERICS = {"supersampling_factor": 1, "supersampling_convolution": False}

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi


@functools.cache
def _einstein_coefficient() -> float:
    """theta_E / sqrt(M / Msun) in arcsec, luminosity-distance convention of the published code.

    ``theta_E = sqrt(4 G M / c^2 * D_LS / (D_L D_S))`` with ``D_L``, ``D_S`` *luminosity*
    distances and ``D_LS = D_S - D_L`` (as DeepLenseSim ``mass_to_radius`` does); this gives
    1.28 arcsec for 1e12 solar masses, where angular-diameter distances would give 1.66.
    """
    from astropy import units as u
    from astropy.constants import G, M_sun, c
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(**COSMOLOGY)
    d_l = cosmo.luminosity_distance(Z_LENS).to(u.m)
    d_s = cosmo.luminosity_distance(Z_SOURCE).to(u.m)
    theta = np.sqrt(4 * G * M_sun / c**2 * (d_s - d_l) / (d_l * d_s)).decompose()
    return float(theta.value) * _ARCSEC_PER_RAD


def einstein_radius(mass: float | np.ndarray) -> np.ndarray:
    """Point-mass Einstein radius in arcsec of ``mass`` (solar masses; any shape)."""
    return np.sqrt(np.asarray(mass, dtype=np.float64)) * _einstein_coefficient()


# --- recipes --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Recipe:
    """One DeepLenseSim instrument recipe.

    Attributes:
        name: ``model_i``, ``model_ii`` or ``model_iii``.
        title: human-readable description.
        num_pix: image side in pixels.
        kwargs_band: lenstronomy ``SingleBand`` keyword arguments (pixel scale in arcsec,
            exposure time in s, ...). For ``model_i`` the exposure time here is nominal: each
            sample draws its own.
        source_magnitude: apparent source magnitude (converted to lenstronomy ``amp`` with the
            band's zero point), or None when ``source_amp`` is given directly.
        source_amp: lenstronomy ``amp`` of the source when no magnitude is used.
        log10_exposure_range: if set, exposure time = 10^U(lo, hi) s per sample.
        kwargs_numerics: lenstronomy ``ImageNumerics`` settings.
    """

    name: str
    title: str
    num_pix: int
    kwargs_band: dict[str, Any]
    source_magnitude: float | None = None
    source_amp: float | None = None
    log10_exposure_range: tuple[float, float] | None = None
    kwargs_numerics: dict[str, Any] = dataclasses.field(
        default_factory=lambda: dict(KWARGS_NUMERICS)
    )

    @property
    def pixel_scale(self) -> float:
        """Arcsec per pixel."""
        return float(self.kwargs_band["pixel_scale"])

    @property
    def half_fov(self) -> float:
        """Half the field of view in arcsec: image coordinate 1.0 of :mod:`enflens.grid`."""
        return self.num_pix * self.pixel_scale / 2.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (stored in every dataset file)."""
        d = dataclasses.asdict(self)
        if d["log10_exposure_range"] is not None:
            d["log10_exposure_range"] = list(d["log10_exposure_range"])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Recipe:
        d = dict(d)
        if d.get("log10_exposure_range") is not None:
            d["log10_exposure_range"] = tuple(d["log10_exposure_range"])
        return Recipe(**d)


def _euclid_band() -> dict[str, Any]:
    from lenstronomy.SimulationAPI.ObservationConfig.Euclid import Euclid

    return dict(Euclid(band="VIS", psf_type="GAUSSIAN", coadd_years=6).kwargs_single_band())


def _hst_band() -> dict[str, Any]:
    from lenstronomy.SimulationAPI.ObservationConfig.HST import HST

    # HST() mutates a module-level dict; kwargs_single_band() returns a fresh merged copy.
    return dict(HST(band="WFC3_F160W", psf_type="GAUSSIAN").kwargs_single_band())


def _model_i_band() -> dict[str, Any]:
    # Published Model I (DeepLenseSim ``simple_sim``): 0.05"/px, Gaussian PSF FWHM 0.087"
    # truncated at 3 sigma, background rms 0.01 (data units), Poisson noise at the exposure time.
    return {
        "pixel_scale": 0.05,
        "exposure_time": float(10**3.25),  # nominal; drawn per sample
        "magnitude_zero_point": None,  # unused: the source is given by its amplitude
        "background_noise": 0.01,
        "seeing": 0.087,
        "psf_type": "GAUSSIAN",
        "truncation": 3,
        "num_exposures": 1,
    }


@functools.cache
def _recipes() -> dict[str, Recipe]:
    return {
        "model_i": Recipe(
            name="model_i",
            title='Model I: 150x150 px, 0.05"/px, Gaussian PSF 0.087", bkg rms 0.01, '
            "exposure 10^U(3,3.5) s",
            num_pix=150,
            kwargs_band=_model_i_band(),
            source_amp=20.0,
            log10_exposure_range=(3.0, 3.5),
        ),
        "model_ii": Recipe(
            name="model_ii",
            title="Model II: 64x64 px, lenstronomy Euclid VIS (6-year coadd), source mag 20",
            num_pix=64,
            kwargs_band=_euclid_band(),
            source_magnitude=20.0,
        ),
        "model_iii": Recipe(
            name="model_iii",
            title="Model III: 64x64 px, lenstronomy HST WFC3 F160W, source mag 20",
            num_pix=64,
            kwargs_band=_hst_band(),
            source_magnitude=20.0,
        ),
    }


RECIPE_NAMES: tuple[str, ...] = ("model_i", "model_ii", "model_iii")


def get_recipe(recipe: str | Recipe) -> Recipe:
    """The :class:`Recipe` called ``recipe`` (a Recipe passes through)."""
    if isinstance(recipe, Recipe):
        return recipe
    recipes = _recipes()
    if recipe not in recipes:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPE_NAMES)}")
    return recipes[recipe]


@functools.cache
def _source_amp_for_magnitude(num_pix: int, band_json: str, magnitude: float) -> float:
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    sim = SimAPI(
        num_pix=num_pix,
        kwargs_single_band=json.loads(band_json),
        kwargs_model={"source_light_model_list": ["SERSIC_ELLIPSE"]},
    )
    kwargs = [{"magnitude": magnitude, **SOURCE_SHAPE, "center_x": 0.0, "center_y": 0.0}]
    _, kwargs_source, _ = sim.magnitude2amplitude(None, kwargs)
    return float(kwargs_source[0]["amp"])


def source_amplitude(recipe: str | Recipe) -> float:
    """lenstronomy ``amp`` of the Sersic source (data units per second; independent of centre)."""
    r = get_recipe(recipe)
    if r.source_magnitude is None:
        return float(r.source_amp)
    band = json.dumps(r.kwargs_band, sort_keys=True)
    return _source_amp_for_magnitude(r.num_pix, band, float(r.source_magnitude))


# --- per-sample draws -----------------------------------------------------------------------
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def sample_rng(seed: int, split_id: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of split ``split_id`` of a dataset with ``seed``."""
    if seed < 0 or split_id < 0 or index < 0:
        raise ValueError(
            f"sample_rng: seed, split_id, index must be >= 0, got {seed, split_id, index}"
        )
    return np.random.default_rng([int(seed), int(split_id), int(index)])


@dataclasses.dataclass
class SampleDraw:
    """The random quantities of one sample (everything else is fixed by the recipe).

    Attributes:
        label: class index (0 no_sub, 1 cdm, 2 axion).
        source_center: (2,) source centre (x, y) in arcsec.
        source_amp: lenstronomy amplitude of the source.
        exposure_time: exposure time per exposure in s (drawn for model_i).
        noise_seed: seed of ``numpy.random.RandomState`` for the noise realisation.
        sub_mass: (MAX_SUB,) CDM subhalo masses in solar masses, 0 where unused.
        sub_pos: (MAX_SUB, 2) CDM subhalo positions (x, y) in arcsec, 0 where unused.
        n_sub: number of CDM subhalos used (25 for cdm, 0 otherwise).
        vortex_angle: vortex direction in radians (NaN unless axion).
        vortex_half_length: vortex half-length in arcsec (NaN unless axion).
        m_a: axion mass in eV (NaN unless axion).
    """

    label: int
    source_center: np.ndarray
    source_amp: float
    exposure_time: float
    noise_seed: int
    sub_mass: np.ndarray
    sub_pos: np.ndarray
    n_sub: int = 0
    vortex_angle: float = float("nan")
    vortex_half_length: float = float("nan")
    m_a: float = float("nan")


def cdm_masses(u: np.ndarray) -> np.ndarray:
    """Inverse CDF of dN/dm ~ m^-0.9 on [1e6, 1e10] solar masses, for uniforms ``u`` in [0, 1)."""
    lo, hi = CDM_MASS_RANGE
    a = CDM_MASS_SLOPE + 1.0
    return (lo**a + (hi**a - lo**a) * u) ** (1.0 / a)


def vortex_half_length(m_a: float | np.ndarray) -> np.ndarray:
    """Vortex half-length in arcsec for axion mass ``m_a`` in eV: 0.03 * (1e-22 / m_a)."""
    return AXION_LENGTH_COEFF * (1e-22 / np.asarray(m_a, dtype=np.float64))


def draw_sample(recipe: str | Recipe, label: int, rng: np.random.Generator) -> SampleDraw:
    """Draw the random quantities of one sample of class ``label`` from the recipe distributions.

    Order of draws from ``rng``: source centre, exposure time (model_i only), class quantities,
    noise seed.
    """
    r = get_recipe(recipe)
    if label not in (0, 1, 2):
        raise ValueError(f"draw_sample: label must be 0, 1 or 2, got {label!r}")
    center = rng.uniform(-SOURCE_CENTER_RANGE, SOURCE_CENTER_RANGE, 2)
    if r.log10_exposure_range is not None:
        exposure = float(10 ** rng.uniform(*r.log10_exposure_range))
    else:
        exposure = float(r.kwargs_band["exposure_time"])
    sub_mass = np.zeros(MAX_SUB)
    sub_pos = np.zeros((MAX_SUB, 2))
    draw = SampleDraw(
        label=int(label),
        source_center=center,
        source_amp=source_amplitude(r),
        exposure_time=exposure,
        noise_seed=0,
        sub_mass=sub_mass,
        sub_pos=sub_pos,
    )
    if label == 1:
        sub_mass[:] = cdm_masses(rng.uniform(0.0, 1.0, CDM_N_SUB))
        radius = rng.uniform(*CDM_RADIUS_RANGE, CDM_N_SUB)
        angle = rng.uniform(0.0, 2 * np.pi, CDM_N_SUB)
        sub_pos[:, 0] = radius * np.cos(angle)
        sub_pos[:, 1] = radius * np.sin(angle)
        draw.n_sub = CDM_N_SUB
    elif label == 2:
        m_a = float(10 ** rng.uniform(*AXION_LOG10_MA_RANGE))
        draw.m_a = m_a
        draw.vortex_angle = float(rng.uniform(0.0, 2 * np.pi))
        draw.vortex_half_length = float(vortex_half_length(m_a))
    draw.noise_seed = int(rng.integers(0, 2**32))
    return draw


def vortex_positions(angle: float, half_length: float) -> np.ndarray:
    """(100, 2) arcsec positions of the vortex point masses: evenly spaced on a line through 0."""
    t = np.linspace(-half_length, half_length, AXION_N_POINTS)
    return np.stack([t * np.cos(angle), t * np.sin(angle)], axis=-1)


def _band_for(recipe: Recipe, exposure_time: float) -> dict[str, Any]:
    band = copy.deepcopy(recipe.kwargs_band)
    band["exposure_time"] = float(exposure_time)
    return band


def describe(recipe: str | Recipe, draw: SampleDraw) -> dict[str, Any]:
    """Full lenstronomy description of one sample.

    Returns:
        dict with ``lens_model_list``, ``kwargs_lens``, ``source_model_list``, ``kwargs_source``
        (lenstronomy ``amp`` units), ``kwargs_band`` (``SingleBand`` kwargs, arcsec and s),
        ``kwargs_numerics``, ``num_pix``, ``noise_seed``, ``m_a`` (eV, None unless axion),
        ``label``, ``class_name``, ``recipe``, ``z_lens``, ``z_source``. ``render`` (or any
        lenstronomy user) re-renders the sample from it.
    """
    r = get_recipe(recipe)
    theta_main = float(einstein_radius(MAIN_HALO_MASS))
    lens_model_list = ["SIE", "SHEAR"]
    kwargs_lens: list[dict[str, float]] = [
        {"theta_E": theta_main, **MAIN_HALO_SHAPE},
        dict(SHEAR),
    ]
    if draw.label == 1:
        n = int(draw.n_sub)
        thetas = einstein_radius(draw.sub_mass[:n])
        for k in range(n):
            lens_model_list.append("POINT_MASS")
            kwargs_lens.append(
                {
                    "theta_E": float(thetas[k]),
                    "center_x": float(draw.sub_pos[k, 0]),
                    "center_y": float(draw.sub_pos[k, 1]),
                }
            )
    elif draw.label == 2:
        pos = vortex_positions(draw.vortex_angle, draw.vortex_half_length)
        theta = float(einstein_radius(AXION_MASS / AXION_N_POINTS))
        for k in range(AXION_N_POINTS):
            lens_model_list.append("POINT_MASS")
            kwargs_lens.append(
                {"theta_E": theta, "center_x": float(pos[k, 0]), "center_y": float(pos[k, 1])}
            )
    kwargs_source = [
        {
            "amp": float(draw.source_amp),
            **SOURCE_SHAPE,
            "center_x": float(draw.source_center[0]),
            "center_y": float(draw.source_center[1]),
        }
    ]
    return {
        "recipe": r.name,
        "label": int(draw.label),
        "class_name": CLASS_NAMES[draw.label],
        "num_pix": r.num_pix,
        "lens_model_list": lens_model_list,
        "kwargs_lens": kwargs_lens,
        "source_model_list": ["SERSIC_ELLIPSE"],
        "kwargs_source": kwargs_source,
        "kwargs_band": _band_for(r, draw.exposure_time),
        "kwargs_numerics": dict(r.kwargs_numerics),
        "noise_seed": int(draw.noise_seed),
        "m_a": None if draw.label != 2 else float(draw.m_a),
        "z_lens": Z_LENS,
        "z_source": Z_SOURCE,
    }


# --- rendering ------------------------------------------------------------------------------
def _build_image_model(
    num_pix: int,
    kwargs_band: dict[str, Any],
    lens_model_list: list[str],
    source_model_list: list[str],
    kwargs_numerics: dict[str, Any],
) -> Any:
    """A lenstronomy ``ImageModel`` via ``SimAPI`` (single lens plane, default pixel grid)."""
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    sim = SimAPI(
        num_pix=num_pix,
        kwargs_single_band=kwargs_band,
        kwargs_model={
            "lens_model_list": list(lens_model_list),
            "source_light_model_list": list(source_model_list),
        },
    )
    return sim.image_model_class(dict(kwargs_numerics))


@functools.lru_cache(maxsize=32)
def _cached_image_model(key: str) -> Any:
    d = json.loads(key)
    return _build_image_model(**d)


def _model_key(params: dict[str, Any], band: dict[str, Any]) -> str:
    return json.dumps(
        {
            "num_pix": int(params["num_pix"]),
            "kwargs_band": band,
            "lens_model_list": list(params["lens_model_list"]),
            "source_model_list": list(params["source_model_list"]),
            "kwargs_numerics": dict(params["kwargs_numerics"]),
        },
        sort_keys=True,
    )


def add_noise(model: np.ndarray, kwargs_band: dict[str, Any], noise_seed: int) -> np.ndarray:
    """``model`` plus lenstronomy's background + Poisson noise realisation for ``noise_seed``.

    Uses ``SingleBand(**kwargs_band).noise_for_model(model, seed=noise_seed)`` (Gaussian
    background of the band's rms, Gaussian approximation of the Poisson noise at the exposure
    time), in the model's units (counts per second).
    """
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    band = SingleBand(**kwargs_band)
    return model + band.noise_for_model(model, seed=int(noise_seed))


def render(params: dict[str, Any], noise: bool = False) -> np.ndarray:
    """Re-render one sample from its lenstronomy description (see :func:`describe`).

    Args:
        params: the dict of :func:`describe` or :func:`enflens.data.sample_params`.
        noise: add the stored noise realisation (``noise_seed``).

    Returns:
        (num_pix, num_pix) float64 image in data units per second (un-normalised; the dataset
        stores ``clip(image, 0) / max(image)`` of the noisy render).
    """
    for key in ("num_pix", "lens_model_list", "kwargs_lens", "source_model_list"):
        if key not in params:
            raise ValueError(f"render: params lack {key!r} (need the dict from describe())")
    band = dict(params["kwargs_band"])
    image_model = _cached_image_model(_model_key(params, band))
    image = image_model.image(params["kwargs_lens"], params["kwargs_source"], None)
    if noise:
        image = add_noise(image, band, params["noise_seed"])
    return image


def normalise(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-image normalisation of the dataset: ``(clip(image, 0) / max(image), max(image))``.

    Args:
        image: (H, W) raw image.

    Returns:
        (H, W) float32 in [0, 1] with maximum 1, and the raw maximum (data units per second).
    """
    scale = float(np.max(image))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"normalise: image maximum is {scale}; cannot normalise")
    return (np.clip(image, 0.0, None) / scale).astype(np.float32), scale


class Simulator:
    """Renders samples of one recipe; lenstronomy objects are built once, here.

    One ``ImageModel`` per class (the lens model list differs by class) and one ``SingleBand``
    for the noise are made in the constructor; :meth:`sample` then only evaluates them. Output
    equals :func:`render` of :func:`describe` bit for bit.
    """

    def __init__(self, recipe: str | Recipe):
        from lenstronomy.SimulationAPI.observation_api import SingleBand

        self.recipe = get_recipe(recipe)
        r = self.recipe
        n_pm = {0: 0, 1: CDM_N_SUB, 2: AXION_N_POINTS}
        self._models = {
            label: _build_image_model(
                r.num_pix,
                r.kwargs_band,
                ["SIE", "SHEAR"] + ["POINT_MASS"] * n_pm[label],
                ["SERSIC_ELLIPSE"],
                r.kwargs_numerics,
            )
            for label in (0, 1, 2)
        }
        self._band = SingleBand(**r.kwargs_band)
        self._fixed_exposure = r.log10_exposure_range is None
        source_amplitude(r)  # warm the cache

    def draw(self, label: int, rng: np.random.Generator) -> SampleDraw:
        """:func:`draw_sample` for this recipe."""
        return draw_sample(self.recipe, label, rng)

    def image(self, draw: SampleDraw, noise: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """Render ``draw``: (num_pix, num_pix) float64 image (data units / s), description."""
        params = describe(self.recipe, draw)
        image = self._models[draw.label].image(params["kwargs_lens"], params["kwargs_source"], None)
        if noise:
            if self._fixed_exposure:
                image = image + self._band.noise_for_model(image, seed=params["noise_seed"])
            else:
                image = add_noise(image, params["kwargs_band"], params["noise_seed"])
        return image, params

    def sample(
        self, seed: int, split_id: int, index: int, noise: bool = True
    ) -> tuple[np.ndarray, SampleDraw]:
        """Sample ``index`` of split ``split_id`` (label ``index % 3``): raw image and draw."""
        label = index % len(CLASS_NAMES)
        draw = draw_sample(self.recipe, label, sample_rng(seed, split_id, index))
        image, _ = self.image(draw, noise=noise)
        return image, draw


def lens_maps(params: dict[str, Any], diff: float | None = None) -> dict[str, np.ndarray]:
    """Convergence and deflection of a sample's lens on its pixel grid (lenstronomy LensModel).

    Args:
        params: a sample description (:func:`describe`).
        diff: finite-difference step in arcsec for the convergence; point masses have a delta
            convergence that only a finite difference (e.g. a fraction of a pixel) makes visible.

    Returns:
        dict with ``kappa``, ``alpha_x``, ``alpha_y`` (num_pix, num_pix) (alpha in arcsec),
        and ``x``, ``y`` (num_pix, num_pix) pixel-centre coordinates in arcsec.
    """
    from lenstronomy.LensModel.lens_model import LensModel

    n = int(params["num_pix"])
    scale = float(params["kwargs_band"]["pixel_scale"])
    c = (np.arange(n) - (n - 1) / 2.0) * scale
    y, x = np.meshgrid(c, c, indexing="ij")
    lm = LensModel(list(params["lens_model_list"]))
    kw = params["kwargs_lens"]
    kappa = lm.kappa(x.ravel(), y.ravel(), kw, diff=diff).reshape(n, n)
    ax, ay = lm.alpha(x.ravel(), y.ravel(), kw)
    return {
        "kappa": kappa,
        "alpha_x": ax.reshape(n, n),
        "alpha_y": ay.reshape(n, n),
        "x": x,
        "y": y,
    }


def macro_lens(params: dict[str, Any]) -> dict[str, Any]:
    """The sample description with only the smooth lens (SIE + external shear, the first two
    lens profiles): the reference for the deflection the substructure adds."""
    return {**params, "lens_model_list": params["lens_model_list"][:2],
            "kwargs_lens": params["kwargs_lens"][:2]}  # fmt: skip


def substructure_deflection(params: dict[str, Any], diff: float) -> dict[str, np.ndarray]:
    """Convergence of the full lens (finite-difference step ``diff`` arcsec) and the magnitude
    of the deflection the substructure adds, |alpha - alpha_SIE+shear| (arcsec), on the pixel
    grid: {"kappa": (n, n), "extra_deflection": (n, n)}."""
    maps, macro = lens_maps(params, diff=diff), lens_maps(macro_lens(params))
    extra = np.hypot(maps["alpha_x"] - macro["alpha_x"], maps["alpha_y"] - macro["alpha_y"])
    return {"kappa": maps["kappa"], "extra_deflection": extra}


def class_statistics(recipe: str | Recipe, seed: int, n: int) -> dict[str, np.ndarray]:
    """Parameter draws of ``n`` CDM and ``n`` axion samples (no rendering; split id 9, unused
    by the datasets): total CDM subhalo mass (solar masses), axion mass m_a (eV) and vortex
    length (arcsec), each (n,)."""
    rngs = [sample_rng(seed, 9, i) for i in range(n)]
    cdm = [draw_sample(recipe, 1, g) for g in rngs]
    axion = [draw_sample(recipe, 2, g) for g in rngs]
    return {
        "cdm_total_mass": np.array([d.sub_mass.sum() for d in cdm]),
        "m_a": np.array([d.m_a for d in axion]),
        "vortex_length": 2 * np.array([d.vortex_half_length for d in axion]),
    }


def published_deflection_scale(z_source_convention: float = 2.5) -> float:
    """Factor by which DeepLenseSim Model II/III's set-up shrinks every deflection.

    The published ``simple_sim_2`` passes ``lens_redshift_list`` and ``z_source_convention=2.5``
    with the source at z = 1 to lenstronomy's ``SimAPI``, which then ray-traces in multi-plane
    mode and reads each ``theta_E`` as a reduced deflection for a source at z = 2.5. For a source
    at z = 1 every deflection is scaled by ``(D_ds / D_s)(z=1) / (D_ds / D_s)(z=2.5)``. This
    measures that factor with lenstronomy (our cosmology, an SIE + shear) against the
    single-plane model used here.
    """
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.LensModel.lens_model import LensModel

    kwargs = [{"theta_E": float(einstein_radius(MAIN_HALO_MASS)), **MAIN_HALO_SHAPE}]
    with warnings.catch_warnings():  # "Cosmology is provided ..." is expected here
        warnings.simplefilter("ignore", UserWarning)
        published = LensModel(
            ["SIE"],
            z_source=Z_SOURCE,
            lens_redshift_list=[Z_LENS],
            multi_plane=True,
            cosmo=FlatLambdaCDM(**COSMOLOGY),
            z_source_convention=z_source_convention,
        )
    single = LensModel(["SIE"])
    x, y = np.array([1.0]), np.array([0.3])
    bx_pub, _ = published.ray_shooting(x, y, kwargs)
    bx_one, _ = single.ray_shooting(x, y, kwargs)
    return float((x - bx_pub)[0] / (x - bx_one)[0])
