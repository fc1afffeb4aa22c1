"""Numerical equivariance checks for fields decoded from latent point clouds.

A decoder ``fn(coords, latents) -> values`` with coords (B, P, 2), batched
:class:`~enflens.geometry.Latents` and values (B, P, C) is *equivariant* to a group G when
``fn(g x, g z) = fn(x, z)`` for every g in G: moving the latents moves the field with them.

:func:`equivariance_error` measures, for random *continuous* group elements (angles uniform in
[0, 2 pi), never only multiples of 90 degrees) and random inputs (jittered latent positions,
random orientations, contexts and windows, random pixel coordinates), the relative error

    err(g) = max |fn(g x, g z) - fn(x, z)| / max |fn(x, z)|

(maxima over batch, pixels and channels). :func:`assert_equivariant` raises when the largest
error over the elements tried exceeds ``rtol``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from enflens.geometry import SE2, Latents, grid_latents, random_se2

Array = jax.Array
Decoder = Callable[[Array, Latents], Array]

#: Groups :func:`random_group_elements` can draw from.
GROUPS = ("se2", "translation", "rotation")


def random_latents(
    key: Array,
    batch: int,
    num_latents: int = 25,
    context_dim: int = 32,
    *,
    jitter: float = 0.6,
    window_range: tuple[float, float] = (0.25, 0.6),
) -> Latents:
    """Random latents: jittered grid positions, uniform orientations, N(0, 1) contexts.

    Positions: a sqrt(N) x sqrt(N) grid on [-1, 1]^2 (spacing 2 / sqrt(N)), each point moved by
    uniform noise in [-jitter/2, jitter/2] spacings. Jitter avoids exact distance ties
    (k-nearest selection is then unambiguous).

    Returns:
        :class:`Latents` with positions (B, N, 2), orientations (B, N) in [0, 2 pi),
        contexts (B, N, D), windows (B, N) uniform in ``window_range``.
    """
    return _random_latents(key, batch, num_latents, context_dim, jitter, tuple(window_range))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _random_latents(
    key: Array,
    batch: int,
    num_latents: int,
    context_dim: int,
    jitter: float,
    window_range: tuple[float, float],
) -> Latents:
    grid = grid_latents(num_latents, context_dim)  # regular grid, orientations 0
    spacing = 2.0 / np.sqrt(num_latents)
    # a single PRNG draw for all fields: each threefry call costs ~0.4 s of XLA compile on CPU
    u = jax.random.uniform(key, (batch, num_latents, 4 + context_dim), jnp.float32, 1e-6, 1 - 1e-6)
    lo, hi = window_range
    return Latents(
        positions=grid.positions + jitter * spacing * (u[..., 0:2] - 0.5),
        orientations=2 * np.pi * u[..., 2],
        contexts=jax.scipy.special.ndtri(u[..., 4:]),  # N(0, 1) by inverse-CDF sampling
        windows=lo + (hi - lo) * u[..., 3],
    )


def random_coords(key: Array, batch: int, num_pixels: int) -> Array:
    """Random query coordinates, uniform in [-1, 1]^2, different per image: (B, P, 2)."""
    return jax.random.uniform(key, (batch, num_pixels, 2), jnp.float32, -1.0, 1.0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def random_group_elements(
    key: Array, num: int, group: str = "se2", max_translation: float = 0.5
) -> SE2:
    """``num`` random elements of ``group`` (batch shape (num,)).

    ``se2``: angle uniform in [0, 2 pi) and translation uniform in [-max_translation,
    max_translation]^2; ``translation``: angle 0; ``rotation``: translation 0 (about the origin).
    """
    if group not in GROUPS:  # checked at trace time (group is static)
        raise ValueError(f"random_group_elements: group={group!r}; expected one of {GROUPS}")
    g = random_se2(key, (num,), max_translation=max_translation)
    if group == "translation":
        return SE2(jnp.zeros_like(g.angle), g.translation)
    if group == "rotation":
        return SE2(g.angle, jnp.zeros_like(g.translation))
    return g


@jax.jit
def act(g: SE2, coords: Array, latents: Latents) -> tuple[Array, Latents]:
    """Apply one element g (unbatched) to coords (B, P, 2) and batched latents.

    Uses :meth:`SE2.apply` and :meth:`Latents.transform` (float32, as a user would).
    """
    b = coords.shape[0]
    gb = SE2(jnp.broadcast_to(g.angle, (b,)), jnp.broadcast_to(g.translation, (b, 2)))
    return gb.apply(coords), latents.transform(gb)


def equivariance_error(
    fn: Decoder,
    key: Array,
    *,
    group: str = "se2",
    num_elements: int = 8,
    batch: int = 2,
    num_pixels: int = 256,
    num_latents: int = 25,
    context_dim: int = 32,
    max_translation: float = 0.5,
    coords: Array | None = None,
    latents: Latents | None = None,
    elements: SE2 | None = None,
) -> np.ndarray:
    """Relative equivariance error of ``fn`` for each of ``num_elements`` random elements.

    Args:
        fn: decoder ``(coords (B, P, 2), latents) -> (B, P, C)``.
        key: PRNG key for inputs and group elements.
        group: ``se2`` | ``translation`` | ``rotation``.
        num_elements: how many random elements to try.
        batch, num_pixels, num_latents, context_dim: sizes of the random inputs.
        max_translation: translations uniform in [-max_translation, max_translation]^2.
        coords, latents: inputs to use instead of random ones.
        elements: group elements (batch shape (M,)) to use instead of random ones.

    Returns:
        (M,) float64 array of ``max|fn(g x, g z) - fn(x, z)| / max|fn(x, z)|``.
    """
    kx, kz, kg = jax.random.split(key, 3)
    if coords is None:
        coords = random_coords(kx, batch, num_pixels)
    if latents is None:
        latents = random_latents(kz, coords.shape[0], num_latents, context_dim)
    if elements is None:
        elements = random_group_elements(kg, num_elements, group, max_translation)
    jfn = jax.jit(fn)
    ref = np.asarray(jfn(coords, latents), np.float64)
    scale = np.max(np.abs(ref))
    if not np.isfinite(scale) or scale == 0:
        raise ValueError(f"equivariance_error: decoder output max|f| = {scale}; cannot normalise")
    errs = []
    for i in range(elements.angle.shape[0]):
        g = SE2(elements.angle[i], elements.translation[i])
        out = np.asarray(jfn(*act(g, coords, latents)), np.float64)
        errs.append(np.max(np.abs(out - ref)) / scale)
    return np.asarray(errs)


def assert_equivariant(
    fn: Decoder, key: Array, *, rtol: float = 1e-5, group: str = "se2", **kwargs
) -> float:
    """Assert ``fn(g x, g z) == fn(x, z)`` to relative error ``rtol`` for random g in ``group``.

    Keyword arguments go to :func:`equivariance_error`. Returns the largest error found.

    Raises:
        AssertionError: naming the worst element and its error when it exceeds ``rtol``.
    """
    errs = equivariance_error(fn, key, group=group, **kwargs)
    worst = float(errs.max())
    if not worst <= rtol:
        raise AssertionError(
            f"not {group}-equivariant: relative error {worst:.3e} > rtol {rtol:.1e} "
            f"(element {int(errs.argmax())} of {errs.size}; "
            f"errors {np.array2string(errs, precision=2)})"
        )
    return worst


def numpy_latents(rng: np.random.Generator, b: int = 6, n: int = 9, d: int = 4) -> Latents:
    """Random numpy latents for classifier/trainer tests: positions uniform in [-1, 1]^2,
    orientations uniform in [0, 2 pi), N(0, 1) contexts, windows uniform in [0.1, 0.3].

    Returns:
        :class:`Latents` of float32 numpy arrays, shapes (b, n, 2), (b, n), (b, n, d), (b, n).
    """
    return Latents(
        rng.uniform(-1, 1, (b, n, 2)).astype(np.float32),
        rng.uniform(0, 2 * np.pi, (b, n)).astype(np.float32),
        rng.normal(size=(b, n, d)).astype(np.float32),
        rng.uniform(0.1, 0.3, (b, n)).astype(np.float32),
    )


def lenstronomy_render(p: dict, noise: bool = True) -> np.ndarray:
    """Independent reference render of a stored sample description with lenstronomy's own
    classes (ImageModel + SingleBand noise), for tests of :mod:`enflens.data.lensing` and
    :mod:`enflens.data`.

    Args:
        p: a sample description (``enflens.data.sample_params`` / the simulator's params).
        noise: add the band's noise, seeded by ``p["noise_seed"]``.

    Returns:
        (H, W) raw image in counts per second.
    """
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.SimulationAPI.data_api import DataAPI
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    api = DataAPI(p["num_pix"], **p["kwargs_band"])
    model = ImageModel(
        api.data_class,
        api.psf_class,
        lens_model_class=LensModel(p["lens_model_list"]),
        source_model_class=LightModel(p["source_model_list"]),
        kwargs_numerics=p["kwargs_numerics"],
    )
    image = model.image(p["kwargs_lens"], p["kwargs_source"])
    if not noise:
        return image
    band = SingleBand(**p["kwargs_band"])
    return image + band.noise_for_model(image, seed=p["noise_seed"])


def lens_like_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth lens-like test images about the image centre (issue 12 tests): a Gaussian ring of
    random radius whose brightness varies with the polar angle (an arc, so the image has a
    dipole), plus an off-centre blob; normalised to a maximum of 1.

    Returns:
        (n, size, size) float32 in [0, 1].
    """
    from enflens.grid import make_grid

    rng = np.random.default_rng(seed)
    g = np.asarray(make_grid(size)).reshape(size, size, 2)
    x, y = g[..., 0], g[..., 1]
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        rad, width = rng.uniform(0.35, 0.55), rng.uniform(0.12, 0.2)
        arc = 1.0 + rng.uniform(0.4, 0.9) * np.cos(phi - rng.uniform(0, 2 * np.pi))
        img = arc * np.exp(-0.5 * ((r - rad) / width) ** 2)
        c = rng.uniform(-0.5, 0.5, 2)
        img += 0.6 * np.exp(-0.5 * ((x - c[0]) ** 2 + (y - c[1]) ** 2) / 0.15**2)
        out[i] = img / img.max()
    return out
