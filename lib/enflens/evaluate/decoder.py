"""The ENF decoder's equivariance, measured: per bi-invariant, against the rotation angle and
against the number k of nearest latents, with the decoding speed (notebook 02).

All checks use randomly initialised decoders (one seed for all) and random clouds, pixels and
continuous group elements (:func:`enflens.testing.equivariance_error`): equivariance is a
property of the architecture, so it must hold before any training. The ``absolute``
bi-invariant reads raw coordinates and is the negative control that must fail.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens.fields.enf import EQUIVARIANT_GROUPS, ENFConfig, ENFDecoder
from enflens.geometry import SE2, Latents
from enflens.grid import make_grid
from enflens.testing import act, equivariance_error, random_coords, random_latents

Array = jax.Array
#: The bi-invariants of the study and the control, in the order of the tables.
BI_INVARIANTS: tuple[str, ...] = ("translation", "roto_translation", "isotropic", "absolute")
#: The group each bi-invariant is checked against (the control against SE(2)).
CHECK_GROUP: dict[str, str] = {**EQUIVARIANT_GROUPS, "absolute": "se2"}


def decoder_fn(
    base: ENFConfig, bi_invariant: str | None = None, k_nearest: int | None | str = "base",
    seed: int = 0,
) -> Callable[[Array, Latents], Array]:
    """A randomly initialised decoder as a jitted ``(coords (B, P, 2), latents) -> (B, P, C)``.

    ``k_nearest`` >= N means all latents (``None``); ``"base"`` keeps ``base.k_nearest``.
    Cached, so equal requests share one compilation.
    """
    k = base.k_nearest if k_nearest == "base" else k_nearest
    if k is not None and k >= base.num_latents:
        k = None
    return _decoder_fn(base, bi_invariant or base.bi_invariant, k, seed)


@functools.cache
def _decoder_fn(base: ENFConfig, bi_invariant: str, k_nearest: int | None, seed: int):
    cfg = dataclasses.replace(base, bi_invariant=bi_invariant, k_nearest=k_nearest)
    model = ENFDecoder(cfg, rngs=nnx.Rngs(seed))
    return jax.jit(lambda x, z: model(x, z))


def moved_fields(
    base: ENFConfig, bi_invariant: str, g: SE2, grid_size: int, key: Array, seed: int = 0
) -> dict[str, Any]:
    """One random cloud z and its copy g z: the fields f(x; z), f(g^-1 x; z) (the field moved
    by g) and f(x; g z) (decoded from the moved latents) on a ``grid_size`` square grid.

    Returns:
        dict with ``base``, ``moved``, ``decoded_moved`` ((G, G) arrays), ``latents``,
        ``moved_latents`` (batched, one cloud) and ``relative_error`` (max |decoded_moved -
        moved| / max |base|).
    """
    f = decoder_fn(base, bi_invariant, seed=seed)
    grid = make_grid(grid_size)[None]  # (1, G^2, 2)
    z = random_latents(key, 1, base.num_latents, base.latent_dim)
    _, gz = act(g, grid, z)
    inv = g.inverse()
    grid_back = SE2(inv.angle[None], inv.translation[None]).apply(grid)  # g^-1 x
    shape = (grid_size, grid_size)
    out = {
        "base": np.asarray(f(grid, z)[0, :, 0]).reshape(shape),
        "moved": np.asarray(f(grid_back, z)[0, :, 0]).reshape(shape),
        "decoded_moved": np.asarray(f(grid, gz)[0, :, 0]).reshape(shape),
        "latents": z,
        "moved_latents": gz,
    }
    diff = np.abs(out["decoded_moved"] - out["moved"]).max()
    out["relative_error"] = float(diff / np.abs(out["base"]).max())
    return out


def equivariance_table(
    base: ENFConfig,
    key: Array,
    ks: Sequence[int | None],
    *,
    num_elements: int,
    batch: int,
    num_pixels: int,
    bi_invariants: Sequence[str] = BI_INVARIANTS,
) -> dict[str, dict[str, float]]:
    """Max relative equivariance error of each bi-invariant (against :data:`CHECK_GROUP`) and
    each k (``None``: all latents), over ``num_elements`` random elements: {bi: {k: error}}."""
    kw = {"num_elements": num_elements, "batch": batch, "num_pixels": num_pixels,
          "num_latents": base.num_latents, "context_dim": base.latent_dim}  # fmt: skip
    table: dict[str, dict[str, float]] = {}
    for bi in bi_invariants:
        table[bi] = {}
        for k in ks:
            errs = equivariance_error(decoder_fn(base, bi, k), key, group=CHECK_GROUP[bi], **kw)
            table[bi]["all" if k is None else str(k)] = float(errs.max())
    return table


def angle_sweep(
    base: ENFConfig,
    key: Array,
    angles: np.ndarray,
    *,
    translation: tuple[float, float] = (0.3, -0.2),
    batch: int,
    num_pixels: int,
    bi_invariants: Sequence[str] = BI_INVARIANTS,
) -> dict[str, np.ndarray]:
    """Equivariance error of one random cloud batch against the rotation angle (radians), with
    a fixed translation: {bi: (A,) errors} (floored at 1e-9 for log axes)."""
    t = jnp.broadcast_to(jnp.asarray(translation, jnp.float32), (len(angles), 2))
    elements = SE2(jnp.asarray(angles, jnp.float32), t)
    x = random_coords(jax.random.fold_in(key, 3), batch, num_pixels)
    z = random_latents(jax.random.fold_in(key, 4), batch, base.num_latents, base.latent_dim)
    return {
        bi: np.maximum(
            equivariance_error(decoder_fn(base, bi), key, coords=x, latents=z, elements=elements),
            1e-9,
        )
        for bi in bi_invariants
    }


def pixels_per_second(fn: Callable, coords: Array, latents: Latents, repeats: int) -> float:
    """Decoded pixels per second: median of ``repeats`` timed calls after a compiling call."""
    jax.block_until_ready(fn(coords, latents))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(coords, latents))
        times.append(time.perf_counter() - t0)
    return coords.shape[0] * coords.shape[1] / statistics.median(times)


def k_sweep(
    base: ENFConfig,
    key: Array,
    ks: Sequence[int],
    *,
    grid_size: int,
    batch: int,
    repeats: int,
    num_elements: int,
    eq_batch: int,
    num_pixels: int,
) -> list[dict[str, float]]:
    """For each k: the SE(2) equivariance error, the deviation from attending to all latents
    (max relative, on the full grid) and the decoding speed (pixels/s, a timing)."""
    grid = jnp.broadcast_to(make_grid(grid_size), (batch, grid_size**2, 2))
    z = random_latents(jax.random.fold_in(key, 5), batch, base.num_latents, base.latent_dim)
    full = np.asarray(decoder_fn(base, k_nearest=None)(grid, z))
    rows = []
    for k in ks:
        f = decoder_fn(base, k_nearest=k)
        err = equivariance_table(base, key, [k], num_elements=num_elements, batch=eq_batch,
                                 num_pixels=num_pixels, bi_invariants=["roto_translation"])
        out = np.asarray(f(grid, z))
        rows.append({
            "k": int(k),
            "equivariance_error": next(iter(err["roto_translation"].values())),
            "deviation_from_all": float(np.abs(out - full).max() / np.abs(full).max()),
            "pixels_per_second": pixels_per_second(f, grid, z, repeats),
        })  # fmt: skip
    return rows
