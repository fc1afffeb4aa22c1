"""Measurements of issue 12: do fitted latents rotate with the image, and do the poses move?

* :func:`end_to_end_equivariance`: for images f and angles beta, fit f and the rotated image
  ``R_beta f`` (:func:`enflens.grid.rotate_images`, Fourier shears) and compare the latents of the
  second fit with the rotated latents of the first, ``R_beta z(f)``. For an exactly equivariant
  pipeline (equivariant start, equivariant decoder, equivariant inner loop) they are equal; the
  remaining error comes from resampling the rotated image and from pixel subsets that do not
  rotate with it.
* :func:`latent_motion`: how far poses move over the inner steps, and what adapting them buys
  (PSNR of the same fit with poses frozen).

Matching (``matching=``): ``"index"`` pairs latent i of the refit with latent i of the rotated
original, up to the rotation symmetries of the template
(:func:`enflens.fields.frame.symmetry_permutations`; the permutation with the smallest mean
position error is used per image). With an equivariant start this is the exact correspondence
(both fits start from the same template, rotated), except that an image fitted on its
quadrupole branch may start from the template rotated by an extra pi, which is one of those
symmetries.
``"nearest"`` matches every rotated-original latent to the nearest refit latent
(:func:`enflens.evaluate.rotation.match_poses`), the kinder choice for a fixed start, where no
correspondence by index exists.

Units: positions in px (1 px = 2 / W grid units), angles in degrees, PSNR in dB (peak 1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from enflens import grid
from enflens.evaluate import rotation
from enflens.fields import adapters
from enflens.fields.frame import rotate_latents, symmetry_permutations
from enflens.grid import rotate_images
from enflens.metalearn import encode as encode_mod

Array = jax.Array

STARTS = ("adapter", "fixed")
MATCHINGS = ("index", "nearest")


def _unbatch(z: Any, i: int) -> Any:
    return jax.tree.map(lambda a: np.asarray(a)[i], z)


def _fit_batches(adapter, params, x, *, steps, pixels, sampling, seed, batch_size, fixed_start):
    """Fit all images in padded batches; returns (latents after K steps (n, ...),
    reconstructions (n, H, W, C), starting latents (n, ...))."""
    key = jax.random.PRNGKey(seed)
    lats, recs, starts = [], [], []
    for i, s in enumerate(range(0, len(x), batch_size)):
        m = min(batch_size, len(x) - s)
        chunk = encode_mod.pad_batch(x[s : s + m], batch_size)
        lat0 = adapter.expand(params["init"], batch_size) if fixed_start else None
        path, rec = encode_mod.fit_path(
            adapter, params, chunk, steps=steps, pixels=pixels, sampling=sampling,
            key=jax.random.fold_in(key, i), latents0=lat0,
        )  # fmt: skip
        lats.append(jax.tree.map(lambda a, m=m: a[-1, :m], path))
        starts.append(jax.tree.map(lambda a, m=m: a[0, :m], path))
        recs.append(rec[-1, :m])
    cat = lambda zs: jax.tree.map(lambda *a: np.concatenate(a), *zs)  # noqa: E731
    return cat(lats), np.concatenate(recs), cat(starts)


def end_to_end_equivariance(
    adapter: adapters.FieldAdapter,
    params: dict,
    images: Any,
    angles: Any,
    *,
    steps: int = 3,
    pixels: int | None = None,
    sampling: str = "stratified",
    start: str = "adapter",
    matching: str = "index",
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Refit rotated images and compare with the rotated latents of the original fits.

    Args:
        adapter, params: a trained ENF.
        images: (n, H, W[, C]) in [0, 1].
        angles: (n,) radians (counter-clockwise, :mod:`enflens.grid` convention).
        steps, pixels, sampling: inner-loop settings of both fits (``pixels=None``: all pixels,
            which removes the pixel-subset noise from the comparison).
        start: ``"adapter"`` (the adapter's start: equivariant when it has one) or ``"fixed"``
            (the unrotated learned initialisation for every image: the control).
        matching: ``"index"`` or ``"nearest"`` (module docstring).
        batch_size, seed: batches and pixel-subset keys as
            :func:`enflens.metalearn.encode.encode`; the original and the rotated image of one
            index get the same key.

    Returns:
        dict: ``pose_error_px`` (median over all matched latents of all images),
        ``orientation_error_deg`` (median), ``context_rel_error`` (median over images of
        ``|C_refit - C_rotated| / |C_rotated|``, Frobenius norms over the matched latents),
        ``psnr_db`` (mean PSNR of the refit against the rotated image), ``consistency_db``
        (mean PSNR between the refit and the original fit decoded on rotated coordinates, inside
        the disk of radius 1 - 1/H), ``n_images``, ``start``, ``matching``, and per-image
        arrays under ``per_image``.
    """
    if start not in STARTS or matching not in MATCHINGS:
        raise ValueError(f"end_to_end_equivariance: start in {STARTS}, matching in {MATCHINGS}")
    x = grid.as_nhwc(images, "end_to_end_equivariance(images)")
    n, h, w, _ = x.shape
    beta = np.asarray(angles, np.float32).reshape(-1)
    if beta.shape != (n,):
        raise ValueError(f"end_to_end_equivariance: {beta.shape} angles for {n} images")
    xr = np.asarray(rotate_images(x, beta))
    kw = dict(
        steps=steps, pixels=pixels, sampling=sampling, seed=seed, batch_size=batch_size,
        fixed_start=start == "fixed",
    )  # fmt: skip
    z, rec, _ = _fit_batches(adapter, params, x, **kw)
    zr, rec_r, _ = _fit_batches(adapter, params, xr, **kw)
    goal = rotate_latents(z, beta)
    perms = symmetry_permutations(_unbatch(adapter.expand(params["init"], 1), 0))
    px = 2.0 / w
    pos_err, ori_err, ctx_err = [], [], []
    for i in range(n):
        g, f = _unbatch(goal, i), _unbatch(zr, i)
        if matching == "nearest":
            idx = rotation.match_poses(g, f, inside=np.inf)["index"]
        else:
            errs = [np.linalg.norm(g.positions - f.positions[p], axis=-1).mean() for p in perms]
            idx = perms[int(np.argmin(errs))]
        pos_err.append(np.linalg.norm(g.positions - f.positions[idx], axis=-1) / px)
        dth = np.asarray(g.orientations, np.float64) - f.orientations[idx]
        ori_err.append(np.degrees(np.abs((dth + np.pi) % (2 * np.pi) - np.pi)))
        ctx_err.append(
            np.linalg.norm(f.contexts[idx] - g.contexts) / max(np.linalg.norm(g.contexts), 1e-12)
        )
    refit = grid.psnr(rec_r, xr)
    consistency = _consistency(adapter, params, z, zr, beta, h, w)
    return {
        "pose_error_px": float(np.median(np.concatenate(pos_err))),
        "orientation_error_deg": float(np.median(np.concatenate(ori_err))),
        "context_rel_error": float(np.median(ctx_err)),
        "psnr_db": float(np.mean(refit)),
        "consistency_db": float(np.mean(consistency)),
        "n_images": int(n),
        "start": start,
        "matching": matching,
        "per_image": {
            "pose_error_px": np.array([np.median(e) for e in pos_err]),
            "orientation_error_deg": np.array([np.median(e) for e in ori_err]),
            "context_rel_error": np.asarray(ctx_err),
            "psnr_db": refit,
            "consistency_db": consistency,
        },
    }


def _consistency(adapter, params, z, zr, beta, h, w, chunk: int = 64) -> np.ndarray:
    """PSNR between decode(z_r, x) and decode(z, R(-beta) x) inside the disk, per image."""
    out = []
    for s in range(0, len(beta), chunk):
        sl = slice(s, s + chunk)
        zz = jax.tree.map(lambda a, sl=sl: jnp.asarray(a[sl]), z)
        zzr = jax.tree.map(lambda a, sl=sl: jnp.asarray(a[sl]), zr)
        fn = rotation.consistency_fn(adapter, h, w)
        out.append(np.asarray(fn(params, zz, zzr, jnp.asarray(beta[sl]))))
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def frozen_poses(adapter: adapters.FieldAdapter) -> adapters.FieldAdapter:
    """The same adapter with positions and orientations not adapted by the inner loop."""
    adapt = dataclasses.replace(adapter.adapt, positions=False, orientations=False)
    return dataclasses.replace(adapter, adapt=adapt)


def latent_motion(
    adapter: adapters.FieldAdapter,
    params: dict,
    images: Any,
    *,
    steps: int = 3,
    pixels: int | None = 1024,
    sampling: str = "stratified",
    batch_size: int = 64,
    seed: int = 0,
    targets: Any = None,
) -> dict[str, Any]:
    """Pose displacement over the inner steps, and PSNR with poses frozen vs adapted.

    Args:
        adapter, params: a trained ENF.
        images: (n, H, W[, C]) in [0, 1].
        steps, pixels, sampling, batch_size, seed: fit settings (defaults: the study's encoding,
            3 steps on 1024 stratified pixels); both fits use the same pixel subsets.
        targets: optional (n, H, W[, C]) images to score against instead of ``images`` (e.g.
            noise-free renders).

    Returns:
        dict: ``median_position_px`` (median over latents and images of ``|p_K - p_0|``),
        ``median_orientation_deg`` (median ``|theta_K - theta_0|``, wrapped),
        ``psnr_adapted_poses_db`` and ``psnr_frozen_poses_db`` (mean PSNR after K steps),
        ``n_images``.
    """
    x = grid.as_nhwc(images, "latent_motion(images)")
    tg = x if targets is None else grid.as_nhwc(targets, "latent_motion(targets)")
    kw = dict(
        steps=steps, pixels=pixels, sampling=sampling, seed=seed, batch_size=batch_size,
        fixed_start=False,
    )  # fmt: skip
    z, rec, z0 = _fit_batches(adapter, params, x, **kw)
    _, rec_frozen, _ = _fit_batches(frozen_poses(adapter), params, x, **kw)
    px = 2.0 / x.shape[2]
    dpos = np.linalg.norm(np.asarray(z.positions) - np.asarray(z0.positions), axis=-1) / px
    dth = np.asarray(z.orientations, np.float64) - np.asarray(z0.orientations, np.float64)
    dth = np.degrees(np.abs((dth + np.pi) % (2 * np.pi) - np.pi))
    return {
        "median_position_px": float(np.median(dpos)),
        "median_orientation_deg": float(np.median(dth)),
        "psnr_adapted_poses_db": float(np.mean(grid.psnr(rec, tg))),
        "psnr_frozen_poses_db": float(np.mean(grid.psnr(rec_frozen, tg))),
        "n_images": int(len(x)),
    }


_SUMMARY_KEYS = (
    "pose_error_px", "orientation_error_deg", "context_rel_error", "psnr_db", "n_images",
)  # fmt: skip


def end_to_end_summary(
    adapter: adapters.FieldAdapter, params: dict, images: Any, angles: Any, **kwargs
) -> dict[str, Any]:
    """The ``end_to_end`` block of ``results/<profile>/04_latent_visualization.json``.

    The adapter's start with index matching, and as ``control`` the fixed start with
    nearest-neighbour matching (keyword arguments go to :func:`end_to_end_equivariance`).

    Returns:
        ``{pose_error_px, orientation_error_deg, context_rel_error, psnr_db, n_images,
        control: {same keys}}``.
    """
    kwargs = {k: v for k, v in kwargs.items() if k not in ("start", "matching")}
    eq = end_to_end_equivariance(adapter, params, images, angles, start="adapter", **kwargs)
    ctrl = end_to_end_equivariance(
        adapter, params, images, angles, start="fixed", matching="nearest", **kwargs
    )
    return {
        **{k: eq[k] for k in _SUMMARY_KEYS},
        "control": {k: ctrl[k] for k in _SUMMARY_KEYS},
    }


def demo_refit(
    adapter: adapters.FieldAdapter, params: dict, image: Any, angle: float, *, steps: int = 3
) -> dict[str, Any]:
    """One image for a figure: its fit ``fit``, the rotated image ``rotated_image`` (H, W), the
    rotated latents ``goal`` = g z, and the refits of the rotated image from the adapter's start
    (``refit``) and from the fixed, unrotated start (``control``); unbatched latents, all
    pixels."""
    x = grid.as_nhwc(np.asarray(image)[None], "demo_refit(image)")
    beta = np.asarray([angle], np.float32)
    xr = np.asarray(rotate_images(x, beta))
    kw = dict(steps=steps, pixels=None, sampling="stratified", seed=0, batch_size=1)
    z, _, _ = _fit_batches(adapter, params, x, fixed_start=False, **kw)
    zr, _, _ = _fit_batches(adapter, params, xr, fixed_start=False, **kw)
    zc, _, _ = _fit_batches(adapter, params, xr, fixed_start=True, **kw)
    return {
        "rotated_image": xr[0, ..., 0],
        "fit": _unbatch(z, 0),
        "goal": _unbatch(rotate_latents(z, beta), 0),
        "refit": _unbatch(zr, 0),
        "control": _unbatch(zc, 0),
    }
