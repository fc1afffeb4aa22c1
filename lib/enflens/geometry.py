"""SE(2) geometry: group elements, their action on coordinates and on latent point clouds.

An element ``g = (theta, t)`` of SE(2) acts on a point ``x`` in the plane by
``g x = R(theta) x + t``, with ``R(theta)`` the counter-clockwise rotation by ``theta`` radians.
Composition: ``(g1 g2) x = g1 (g2 x)``. Everything is batched: leading dimensions of the angle
broadcast against those of the points.

A :class:`Latents` point cloud is the ENF latent of one signal (or a batch of signals): poses
``(p_i, theta_i)`` in SE(2), context vectors ``c_i`` and Gaussian window widths ``s_i``.
Under ``g`` positions move as points, orientations add ``theta``; contexts and windows
are unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def rotate(theta: Array, x: Array) -> Array:
    """R(theta) x for points x (..., 2); theta broadcasts against x[..., 0]."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]], -1)


def wrap_angle(theta: Array) -> Array:
    """Map angles to [-pi, pi)."""
    return (theta + jnp.pi) % (2 * jnp.pi) - jnp.pi


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SE2:
    """A (batch of) SE(2) element(s).

    Attributes:
        angle: (...,) rotation angle theta in radians.
        translation: (..., 2) translation t.
    """

    angle: Array
    translation: Array

    @staticmethod
    def identity(shape: tuple[int, ...] = ()) -> SE2:
        return SE2(jnp.zeros(shape, jnp.float32), jnp.zeros((*shape, 2), jnp.float32))

    def apply(self, x: Array) -> Array:
        """g x = R(theta) x + t for points x (..., P, 2) when g has batch shape (...)."""
        return rotate(self.angle[..., None], x) + self.translation[..., None, :]

    def compose(self, other: SE2) -> SE2:
        """self * other: (theta1 + theta2, R(theta1) t2 + t1)."""
        return SE2(
            self.angle + other.angle, rotate(self.angle, other.translation) + self.translation
        )

    def inverse(self) -> SE2:
        """g^-1 = (-theta, -R(-theta) t)."""
        return SE2(-self.angle, -rotate(-self.angle, self.translation))


def random_se2(key: Array, shape: tuple[int, ...] = (), max_translation: float = 0.5) -> SE2:
    """Random SE(2) elements: angle uniform in [0, 2 pi), translation uniform in a square.

    Args:
        key: PRNG key.
        shape: batch shape of the elements.
        max_translation: translations are uniform in [-max_translation, max_translation]^2
            (coordinates live in [-1, 1]^2); 0 gives pure rotations about the origin.
    """
    k1, k2 = jax.random.split(key)
    angle = jax.random.uniform(k1, shape, jnp.float32, 0.0, 2 * np.pi)
    t = jax.random.uniform(k2, (*shape, 2), jnp.float32, -max_translation, max_translation)
    return SE2(angle, t)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Latents:
    """An ENF latent point cloud (optionally batched over leading dimensions).

    Attributes:
        positions: (..., N, 2) latent positions p_i in image coordinates ([-1, 1]^2).
        orientations: (..., N) orientation angles theta_i in radians.
        contexts: (..., N, D) context vectors c_i.
        windows: (..., N) Gaussian window widths s_i (same units as positions), > 0.
    """

    positions: Array
    orientations: Array
    contexts: Array
    windows: Array

    @property
    def num_latents(self) -> int:
        return self.positions.shape[-2]

    @property
    def context_dim(self) -> int:
        return self.contexts.shape[-1]

    def transform(self, g: SE2) -> Latents:
        """The group action g z: positions -> R p + t, orientations -> theta_i + theta.

        ``g`` has the batch shape of the latents (leading dims without N), or is unbatched.
        """
        return dataclasses.replace(
            self,
            positions=g.apply(self.positions),
            orientations=self.orientations + g.angle[..., None],
        )


def grid_latents(
    num_latents: int,
    context_dim: int,
    *,
    key: Array | None = None,
    jitter: float = 0.0,
    context_init: float = 0.0,
    window: float | None = None,
    extent: float = 1.0,
) -> Latents:
    """Latents on a regular sqrt(N) x sqrt(N) grid covering [-extent, extent]^2.

    Args:
        num_latents: N, must be a perfect square.
        context_dim: D.
        key: PRNG key, needed when ``jitter > 0`` or ``context_init > 0``.
        jitter: positions are perturbed by uniform noise of this amplitude times the grid spacing.
        context_init: contexts are N(0, context_init^2); 0 gives zeros.
        window: window width; defaults to the grid spacing.
        extent: half-size of the covered square.

    Returns:
        Unbatched :class:`Latents` with orientations 0.
    """
    side = int(round(np.sqrt(num_latents)))
    if side * side != num_latents:
        raise ValueError(f"grid_latents: num_latents={num_latents} is not a perfect square")
    spacing = 2.0 * extent / side
    centres = -extent + spacing * (np.arange(side) + 0.5)
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    pos = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    ctx = jnp.zeros((num_latents, context_dim), jnp.float32)
    if jitter > 0 or context_init > 0:
        if key is None:
            raise ValueError("grid_latents: a PRNG `key` is needed for jitter or context_init")
        k1, k2 = jax.random.split(key)
        pos = pos + jitter * spacing * jax.random.uniform(k1, pos.shape, jnp.float32, -0.5, 0.5)
        ctx = context_init * jax.random.normal(k2, ctx.shape, jnp.float32)
    w = spacing if window is None else window
    return Latents(
        positions=pos,
        orientations=jnp.zeros((num_latents,), jnp.float32),
        contexts=ctx,
        windows=jnp.full((num_latents,), w, jnp.float32),
    )


def pair_invariants(positions: Array, orientations: Array) -> Array:
    """SE(2)-invariant features of every ordered pair of poses (PONITA's pair invariant).

    For poses (x_i, theta_i), (x_j, theta_j) returns
    ``[R(theta_i)^T (x_j - x_i), cos(theta_j - theta_i), sin(theta_j - theta_i)]``.

    Args:
        positions: (..., N, 2).
        orientations: (..., N).

    Returns:
        (..., N, N, 4) with entry [i, j] the invariant of receiver i and sender j.
    """
    rel = positions[..., None, :, :] - positions[..., :, None, :]  # (..., N_i, N_j, 2)
    local = rotate(-orientations[..., :, None], rel)
    dtheta = orientations[..., None, :] - orientations[..., :, None]
    return jnp.concatenate([local, jnp.cos(dtheta)[..., None], jnp.sin(dtheta)[..., None]], -1)
