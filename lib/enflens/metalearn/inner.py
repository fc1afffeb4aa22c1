"""The Meta-SGD inner loop: K gradient steps on a batch of latents, on pixel subsets.

Every image ``f`` gets its own latent ``z`` (an ENF point cloud or a CNF vector), found by K
gradient steps (default 3) from a shared, learned initialisation ``z_0``:

    z_{k+1} = z_k - lr (.) grad_z MSE(decoder(x_S_k; z_k), f(x_S_k)),

with learned per-parameter inner learning rates ``lr`` (Meta-SGD, Li et al. 2017,
arXiv:1707.09835; one per context channel, one for all positions, one for all orientations for
the ENF; one per latent dimension for the CNF) and a fresh random subset ``S_k`` of pixels at each
step (:func:`pixel_subset`).

Units: images are float32 in [0, 1]; coordinates in [-1, 1]^2 (:mod:`enflens.grid`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from enflens.fields.adapters import FieldAdapter

Array = jax.Array
PyTree = Any


SAMPLINGS = ("stratified", "random")


def _blocks(height: int, width: int, num: int) -> tuple[int, int]:
    """Block shape (bh, bw) with bh * bw = H W / num, bh | H, bw | W, as square as possible."""
    ratio, rem = divmod(height * width, num)
    if rem:
        raise ValueError(
            f"stratified pixel sampling: {num} pixels do not tile a {height}x{width} image "
            "(H*W/pixels must be an integer); use another pixel count or sampling='random'"
        )
    best = None
    for bh in range(1, ratio + 1):
        if ratio % bh == 0 and height % bh == 0 and width % (ratio // bh) == 0:
            if best is None or abs(bh - ratio // bh) < abs(best[0] - best[1]):
                best = (bh, ratio // bh)
    if best is None:
        raise ValueError(
            f"stratified pixel sampling: no block of {ratio} pixels tiles a {height}x{width} image"
        )
    return best


def pixel_subset(
    key: Array,
    coords: Array,
    targets: Array,
    num: int | None,
    sampling: str = "stratified",
    shape: tuple[int, int] | None = None,
) -> tuple[Array, Array]:
    """Pixel subset per image: coords (HW, 2), targets (B, HW, C) -> ((B, P, 2), (B, P, C)).

    ``sampling="random"``: ``num`` pixels uniformly without replacement. ``"stratified"``: the
    image is tiled by blocks of H W / num pixels and one uniformly random pixel is taken in every
    block (unbiased like random sampling, with much lower variance for smooth images).
    All pixels when ``num`` is None or >= HW. ``shape`` = (H, W) (default: square).
    """
    b, hw, _ = targets.shape
    if num is None or num >= hw:
        return jnp.broadcast_to(coords, (b, hw, 2)), targets
    if sampling == "random":
        # Without replacement: the indices of the `num` largest of HW uniforms.
        _, idx = jax.lax.top_k(jax.random.uniform(key, (b, hw)), num)  # (B, P)
    elif sampling == "stratified":
        if shape is None:
            side = int(round(math.sqrt(hw)))
            shape = (side, hw // side)
        h, w = shape
        bh, bw = _blocks(h, w, num)
        kr, kc = jax.random.split(key)
        nr, nc = h // bh, w // bw
        rows = jnp.arange(nr)[:, None] * bh + jax.random.randint(kr, (b, nr, nc), 0, bh)
        cols = jnp.arange(nc)[None, :] * bw + jax.random.randint(kc, (b, nr, nc), 0, bw)
        idx = (rows * w + cols).reshape(b, nr * nc)  # (B, P)
    else:
        raise ValueError(f"pixel sampling {sampling!r} unknown; expected one of {SAMPLINGS}")
    return coords[idx], jnp.take_along_axis(targets, idx[..., None], axis=1)


def _sum_mse(adapter: FieldAdapter, params: dict, latents: PyTree, coords, targets) -> Array:
    """Sum over images of the per-image mean squared error; its gradient w.r.t. the batched
    latents is each image's own MSE gradient."""
    pred = adapter.decode(params, latents, coords)
    err = (pred - targets) ** 2
    if adapter.fit_radius is not None:  # fit on a disk, a rotation-invariant support
        inside = jnp.sum(coords * coords, -1, keepdims=True) <= adapter.fit_radius**2
        err = jnp.where(inside, err, 0.0)
    return jnp.sum(jnp.mean(err, axis=(1, 2)))


def inner_loop(
    adapter: FieldAdapter,
    params: dict,
    latents: PyTree,
    coords: Array,
    targets: Array,
    key: Array,
    steps: int,
    pixels: int | None,
    first_order: bool = False,
    return_path: bool = False,
    sampling: str = "stratified",
    image_shape: tuple[int, int] | None = None,
) -> PyTree:
    """K Meta-SGD steps on a batch.

    Args:
        adapter: the model.
        params: dict(decoder, buffers, log_lrs, init).
        latents: batched initial latents (B, ...).
        coords: (HW, 2) pixel coordinates of the full grid.
        targets: (B, HW, C) pixel values.
        key: PRNG key for the pixel subsets (step k uses ``fold_in(key, k)``).
        steps: K.
        pixels: pixels per image per step (None: all).
        first_order: stop the gradient through the inner gradients.
        return_path: also return the list of the K+1 latents along the way.
        sampling: pixel subset sampling, "stratified" or "random" (see :func:`pixel_subset`).
        image_shape: (H, W) of the images (default: square).

    Returns:
        Latents after K steps (and the path if ``return_path``).
    """
    path = [latents]
    grad_fn = jax.grad(_sum_mse, argnums=2)
    for k in range(steps):
        k_sub = jax.random.fold_in(key, k)
        c, t = pixel_subset(k_sub, coords, targets, pixels, sampling, image_shape)
        g = grad_fn(adapter, params, latents, c, t)
        if first_order:
            g = jax.lax.stop_gradient(g)
        latents = jax.tree.map(
            lambda z, lr, gz, on: z - lr * gz if on else z,
            latents,
            adapter.inner_rates(params, k),
            g,
            adapter.adapt,
        )
        if adapter.limit_step is not None:
            latents = adapter.limit_step(path[-1], latents)
        path.append(latents)
    return (latents, path) if return_path else latents
