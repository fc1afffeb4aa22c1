"""The frame of a lensing image: masked image moments, a rotation-equivariant frame angle, and
the ring template of latent poses rotated into that frame (the equivariant start of a fit).

Why a frame. An ENF decoder is exactly equivariant, ``f(g x; g z) = f(x; z)``, and gradient
descent on the latents commutes with a rotation ``g`` about the lens centre *when the start
commutes with it too*: if ``z_0(R f) = R z_0(f)`` then every inner step keeps
``z_k(R f) = R z_k(f)``. A fixed start (the same point cloud for every image, as in Meta-SGD with
a learned initialisation) breaks this: the fit of a rotated image starts from the unrotated cloud
and ends somewhere else. Here the start is ``z_0(f) = R(alpha(f)) T``, a fixed template ``T``
rotated by an angle ``alpha(f)`` computed from the image with ``alpha(R_beta f) = alpha(f) + beta``.
Only the template is rotated, never the image, so nothing is resampled.

The angle. With image coordinates ``x + i y`` (grid convention of :mod:`enflens.grid`, centre
at 0, angles counter-clockwise) and weights ``w = I^p`` on the pixels inside the disk
``|x| <= radius`` (default p = 1, radius 0.95):

* dipole ``D = sum w (x + i y)``, strength ``|D| / sum w |x|``;
* quadrupole ``Q = sum w (x + i y)^2``, strength ``|Q| / sum w |x|^2`` (axis ``arg Q / 2``,
  defined mod pi).

``alpha = arg D`` when the dipole strength is at least ``min_dipole``; otherwise the quadrupole
axis ``arg Q / 2``, of the two opposite directions the one on the dipole's side (that choice is
arbitrary for a weak dipole, hence the template is symmetric under a rotation by pi, see
:func:`ring_template`). Both moments are sums over pixels of functions of the continuous image,
and rotate with it: ``D(R_beta f) = e^{i beta} D(f)``, ``Q(R_beta f) = e^{2 i beta} Q(f)``.

What is exact and what is approximate:

* exact (float rounding) for rotations by multiples of 90 degrees (the pixel grid and the disk
  mask map onto themselves);
* for continuous angles the sums are Riemann sums over a pixel grid that does not rotate with the
  image, and a rotated image is a resampling (:func:`enflens.grid.rotate_images`): the angle is
  then equivariant up to interpolation and mask-edge errors. Measured on 300 Model II validation
  images with random angles (dipole angle error, median / 99th percentile): with the project's
  Fourier rotation 0.008 / 0.10 deg for p = 1 and 0.0001 / 0.001 deg for p = 2; with a bilinear
  rotation 0.007 / 0.08 deg for p = 1 and 0.05 / 1.2 deg for p = 2. p = 1 is the default because
  it was chosen when images were rotated bilinearly, which smooths the pixel noise and so
  changes I^2-weighted sums; under the Fourier rotation p = 2 is the more accurate choice, but
  switching would change every trained decoder and p = 1's error is already far below the
  latents' pose error (notebook 04);
* an image symmetric under all rotations (a perfect Einstein ring) has neither moment: the angle
  is then undefined and carries only noise (mode 2 of :func:`image_frame`); an image with a weak
  dipole but a clear axis gets the quadrupole axis, equivariant only mod pi (mode 1);
* switching between the dipole and the quadrupole at ``min_dipole`` is discontinuous: an image
  whose dipole strength sits on the threshold may take one branch and its rotation the other.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from enflens.geometry import SE2, Latents, wrap_angle
from enflens.grid import make_grid

Array = jax.Array

#: Modes returned by :func:`image_frame`.
DIPOLE, QUADRUPOLE, UNDEFINED = 0, 1, 2


def _as_bhw(images: Array) -> Array:
    x = jnp.asarray(images, jnp.float32)
    if x.ndim == 4:  # (B, H, W, C): the frame of the summed channels
        x = jnp.sum(x, axis=-1)
    if x.ndim != 3:
        raise ValueError(f"frame: images must be (B, H, W) or (B, H, W, C), got {x.shape}")
    return x


@functools.partial(jax.jit, static_argnames=("radius", "power"))
def masked_moments(images: Array, *, radius: float = 0.95, power: float = 1.0) -> dict[str, Array]:
    """Intensity-weighted moments of the pixels inside a disk about the image centre.

    Weights ``w = max(I, 0)^power`` on pixels whose centre satisfies ``|x| <= radius``
    (coordinates of :func:`enflens.grid.make_grid`, in [-1, 1]).

    Args:
        images: (B, H, W) or (B, H, W, C) (channels are summed).
        radius: disk radius in grid units (1 = half the image width).
        power: p of the weights.

    Returns:
        dict of (B,) float32 arrays: ``mass`` (sum w), ``dipole_x``, ``dipole_y``
        (sum w x, sum w y), ``quad_c``, ``quad_s`` (sum w (x^2 - y^2), sum w 2 x y),
        ``dipole_strength`` = |D| / sum w |x| and ``quadrupole_strength`` = |Q| / sum w |x|^2,
        both in [0, 1] (0 for an image without light in the disk).

    Examples:
        >>> import numpy as np
        >>> img = np.zeros((1, 4, 4), np.float32); img[0, 1, 3] = 1.0  # pixel at (0.75, -0.25)
        >>> m = masked_moments(img)
        >>> float(m["dipole_x"][0]), float(m["dipole_y"][0]), float(m["dipole_strength"][0])
        (0.75, -0.25, 1.0)
    """
    x = _as_bhw(images)
    b, h, w = x.shape
    g = make_grid(h, w)  # (HW, 2)
    gx, gy = g[:, 0], g[:, 1]
    r2 = gx * gx + gy * gy
    inside = (r2 <= radius * radius).astype(jnp.float32)
    wgt = jnp.maximum(x.reshape(b, h * w), 0.0) ** power * inside  # (B, HW)
    dx, dy = wgt @ gx, wgt @ gy
    qc, qs = wgt @ (gx * gx - gy * gy), wgt @ (2.0 * gx * gy)
    tiny = jnp.float32(1e-30)
    return {
        "mass": jnp.sum(wgt, -1),
        "dipole_x": dx,
        "dipole_y": dy,
        "quad_c": qc,
        "quad_s": qs,
        "dipole_strength": jnp.hypot(dx, dy) / jnp.maximum(wgt @ jnp.sqrt(r2), tiny),
        "quadrupole_strength": jnp.hypot(qc, qs) / jnp.maximum(wgt @ r2, tiny),
    }


@functools.partial(jax.jit, static_argnames=("radius", "power", "min_dipole", "min_quadrupole"))
def image_frame(
    images: Array,
    *,
    radius: float = 0.95,
    power: float = 1.0,
    min_dipole: float = 0.01,
    min_quadrupole: float = 0.01,
) -> tuple[Array, Array]:
    """Frame angle of each image and which moment gave it.

    Args:
        images: (B, H, W) or (B, H, W, C).
        radius, power: see :func:`masked_moments`.
        min_dipole: below this dipole strength the quadrupole axis is used.
        min_quadrupole: below this quadrupole strength (and a weak dipole) the angle is flagged
            as undefined.

    Returns:
        (angles (B,) float32 radians in [-pi, pi), modes (B,) int32: :data:`DIPOLE` (0),
        :data:`QUADRUPOLE` (1, equivariant mod pi only) or :data:`UNDEFINED` (2, noise)).
        For a rotation by beta about the centre, ``alpha(R_beta f) = alpha(f) + beta`` up to
        pixel interpolation (see the module docstring for what is exact).

    Examples:
        >>> import numpy as np
        >>> from enflens.grid import rot90_images
        >>> img = np.zeros((1, 8, 8), np.float32); img[0, 2, 6] = 1.0; img[0, 4, 5] = 0.5
        >>> a0, _ = image_frame(img)
        >>> a1, mode = image_frame(rot90_images(img, 1))
        >>> round(float(np.degrees(a1[0] - a0[0])), 3), int(mode[0])
        (90.0, 0)
    """
    m = masked_moments(images, radius=radius, power=power)
    a_dip = jnp.arctan2(m["dipole_y"], m["dipole_x"])
    a_axis = 0.5 * jnp.arctan2(m["quad_s"], m["quad_c"])
    # of the two directions of the axis, the one on the side of the dipole
    a_quad = jnp.where(jnp.cos(a_dip - a_axis) < 0, a_axis + jnp.pi, a_axis)
    strong_dip = m["dipole_strength"] >= min_dipole
    strong_quad = m["quadrupole_strength"] >= min_quadrupole
    angle = jax.lax.stop_gradient(wrap_angle(jnp.where(strong_dip, a_dip, a_quad)))
    mode = jnp.where(strong_dip, DIPOLE, jnp.where(strong_quad, QUADRUPOLE, UNDEFINED))
    return angle, mode.astype(jnp.int32)


def frame_angle(images: Array, **kwargs) -> Array:
    """Frame angle alpha(f) (B,) in radians: :func:`image_frame` without the modes.

    Keyword arguments go to :func:`image_frame`.
    """
    return image_frame(images, **kwargs)[0]


# ----------------------------------------------------------------------------- ring template

#: Default rings: 12 + 12 = 24 latents, every ring C4-symmetric, both inside the band where
#: Model II light lies (86 % of the I-weighted light between radius 0.3 and 0.6 in grid units,
#: measured on 3000 training images), on either side of the Einstein ring. An earlier
#: 4 + 8 + 12 template at 0.2 / 0.42 / 0.66 put half of its latents on empty sky, and their poses
#: hardly moved (docs/equivariant_start.md).
RING_COUNTS = (12, 12)
RING_RADII = (0.32, 0.48)


def ring_template(
    counts: tuple[int, ...] = RING_COUNTS,
    radii: tuple[float, ...] = RING_RADII,
    context_dim: int = 32,
    window: float | None = None,
) -> Latents:
    """Latent poses on concentric rings about the centre, with radial orientations.

    Ring j holds ``counts[j]`` latents at radius ``radii[j]`` and polar angles
    ``(k + j / 2) * 2 pi / counts[j]`` (k = 0 .. counts[j] - 1; odd rings are staggered by half a
    step); each latent's orientation is its polar angle (pointing away from the centre). The
    cloud is symmetric under rotations by ``2 pi / gcd(counts)``: with even counts a rotation by
    pi maps it onto itself (needed for the quadrupole branch of :func:`image_frame`), with
    counts divisible by 4 also a rotation by pi / 2.

    Args:
        counts: latents per ring (each >= 1).
        radii: ring radii in grid units (> 0, same length as ``counts``).
        context_dim: D; contexts are zeros.
        window: window width of every latent; default ``2 / sqrt(N)`` (as
            :attr:`enflens.fields.enf.ENFConfig.window`).

    Returns:
        Unbatched :class:`Latents` with N = sum(counts) latents.

    Examples:
        >>> t = ring_template((4,), (0.5,), context_dim=1)
        >>> t.positions.round(3).tolist()
        [[0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [-0.0, -0.5]]
    """
    counts, radii = tuple(int(c) for c in counts), tuple(float(r) for r in radii)
    if not counts or len(counts) != len(radii):
        raise ValueError(f"ring_template: counts {counts} and radii {radii} must pair up")
    if min(counts) < 1 or min(radii) <= 0:
        raise ValueError(f"ring_template: counts must be >= 1, radii > 0: {counts}, {radii}")
    phi = np.concatenate(
        [(np.arange(c) + 0.5 * (j % 2)) * 2 * np.pi / c for j, c in enumerate(counts)]
    )
    r = np.concatenate([np.full(c, rad) for c, rad in zip(counts, radii, strict=True)])
    n = len(phi)
    w = 2.0 / math.sqrt(n) if window is None else float(window)
    return Latents(
        positions=jnp.asarray(np.stack([r * np.cos(phi), r * np.sin(phi)], -1), jnp.float32),
        orientations=jnp.asarray(wrap_angle(phi), jnp.float32),
        contexts=jnp.zeros((n, context_dim), jnp.float32),
        windows=jnp.full((n,), w, jnp.float32),
    )


def rotate_latents(latents: Latents, angles: Array) -> Latents:
    """Rotate batched latents (B, N, ...) about the centre by ``angles`` (B,) radians.

    Positions ``p -> R(alpha) p``, orientations ``theta -> theta + alpha``; contexts and windows
    unchanged (:meth:`enflens.geometry.Latents.transform` with a pure rotation).
    """
    angles = jnp.asarray(angles, jnp.float32)
    return latents.transform(SE2(angles, jnp.zeros((*angles.shape, 2), jnp.float32)))


def equivariant_start(template: Latents, images: Array, **frame_kwargs) -> Latents:
    """The start of a fit of each image: the template rotated by the image's frame angle.

    Args:
        template: batched latents (B, N, ...) (e.g. the broadcast learned initialisation).
        images: (B, H, W[, C]) the images to be fitted.
        **frame_kwargs: settings of :func:`image_frame`.

    Returns:
        ``rotate_latents(template, frame_angle(images))``.
    """
    return rotate_latents(template, frame_angle(images, **frame_kwargs))


def symmetry_permutations(template: Latents, tol: float = 1e-4) -> list[np.ndarray]:
    """Index permutations of an unbatched template under its rotations about the centre.

    For each rotation by ``2 pi m / M`` (M = 1..N tried) that maps the poses onto themselves,
    ``perm`` with ``R template[i] == template[perm[i]]`` (positions within ``tol``, orientations
    within ``tol`` radians). Always contains the identity first.

    Returns:
        list of (N,) int arrays.
    """
    p = np.asarray(template.positions, np.float64)
    th = np.asarray(template.orientations, np.float64)
    n = len(p)
    out = [np.arange(n)]
    for m in range(2, n + 1):
        a = 2 * np.pi / m
        c, s = np.cos(a), np.sin(a)
        q = np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], -1)
        d = np.linalg.norm(q[:, None] - p[None], axis=-1)
        perm = np.argmin(d, axis=1)
        dth = np.abs(np.angle(np.exp(1j * (th + a - th[perm]))))
        if d[np.arange(n), perm].max() < tol and dth.max() < tol and len(set(perm)) == n:
            k = perm
            while not np.array_equal(k, np.arange(n)):
                if not any(np.array_equal(k, e) for e in out):
                    out.append(k)
                k = perm[k]
    return out
