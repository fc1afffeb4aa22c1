"""Rotation robustness: of the fitting procedure, of the latents and of the classifiers.

Rotation convention: :func:`enflens.grid.rotate_images` by angle ``a`` maps the content at
``(x, y)`` to ``R(a) (x, y)`` (counter-clockwise in the (x, y) plane of :mod:`enflens.grid`), and
the ENF field satisfies ``f(g x; g z) = f(x; z)``; so rotating the image by ``a`` corresponds to
the group element ``g = (a, 0)`` acting on its latents (``Latents.transform``). The tests check
both signs.

* :func:`rotation_consistency`: the field of the rotated image's fit against the rotated field of
  the original fit (PSNR), for any field.
* :func:`match_poses`: pose errors between two latent clouds of one image.
* Classifier curves over angles from :func:`rotation_angles` (0 plus random continuous angles):
  :func:`image_rotation_curve` (CNNs: rotated test images), :func:`latent_action_curve` (latent
  models: the SE(2) element (a, 0) applied to the test latents), :func:`refit_rotated` +
  :func:`refit_curve` (latent models: the rotated test images re-encoded with the trained decoder,
  the end-to-end measure), :func:`invariance_error` (logits under random SE(2) transforms).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens.classify.registry import input_kind
from enflens.classify.train import predict
from enflens.evaluate import metrics
from enflens.fields.adapters import FieldAdapter, load_trained
from enflens.geometry import SE2, Latents, rotate
from enflens.grid import as_nhwc, image_to_pixels, make_grid, psnr, rotate_images
from enflens.metalearn.encode import encode, fit_latents

Array = jax.Array


def rotation_consistency(
    adapter: FieldAdapter,
    params: dict,
    images: Any,
    angles: Any,
    *,
    steps: int = 3,
    pixels: int | None = None,
    key: Array | None = None,
) -> dict[str, np.ndarray]:
    """Fit of the rotated image vs the rotated fit.

    For each image f and angle a: z = fit(f), z_r = fit(f o R(-a)). The fit of the rotated image
    ``decode(z_r, x)`` is compared with the fit of the original decoded on rotated coordinates
    ``decode(z, R(-a) x)`` (for an equivariant ENF and an equivariant fit these agree). Pixels
    outside the disk of radius 1 - 1/H are excluded (they leave the image under rotation).

    Returns:
        dict of (B,) arrays in dB: ``consistency`` (PSNR between the two decodings),
        ``fit_rotated`` (fit of the rotated image vs the rotated image), ``fit_original``.
    """
    imgs = as_nhwc(images, "rotation_consistency(images)")
    b, h, w, c = imgs.shape
    angles = jnp.asarray(angles, jnp.float32).reshape(b)
    key = jax.random.PRNGKey(0) if key is None else key
    rot = rotate_images(jnp.asarray(imgs), angles)
    z, s0 = fit_latents(adapter, params, imgs, steps=steps, pixels=pixels, key=key)
    z_r, _ = fit_latents(adapter, params, rot, steps=steps, pixels=pixels, key=key)
    consistency = consistency_fn(adapter, h, w)(params, z, z_r, angles)
    fit_rot = _fit_vs_image(adapter, h, w)(params, z_r, rot)
    return {
        "consistency": np.asarray(consistency),
        "fit_rotated": np.asarray(fit_rot),
        "fit_original": np.asarray(s0),
    }


@functools.lru_cache(maxsize=8)
def consistency_fn(adapter: FieldAdapter, height: int, width: int):
    """Jitted ``(params, z, z_r, angles (B,)) -> (B,)``: PSNR between the field of ``z_r`` and
    the field of ``z`` rotated by ``angles`` (decoded at R(-angle) x), inside the disk of radius
    1 - 1/H (the corners leave the frame under rotation)."""
    coords = make_grid(height, width)
    mask = jnp.linalg.norm(coords, axis=-1) <= 1.0 - 1.0 / height  # (HW,)

    @jax.jit
    def consistency(params, z, z_r, angles):
        full = jnp.broadcast_to(coords, (angles.shape[0], *coords.shape))
        a = adapter.decode(params, z_r, full)  # fit of the rotated image
        bb = adapter.decode(params, z, rotate(-angles[:, None], full))  # rotated fit
        return psnr(a, bb, mask)

    return consistency


@functools.lru_cache(maxsize=8)
def _fit_vs_image(adapter: FieldAdapter, height: int, width: int):
    coords = make_grid(height, width)
    mask = jnp.linalg.norm(coords, axis=-1) <= 1.0 - 1.0 / height

    @jax.jit
    def score(params, z_r, rot):
        full = jnp.broadcast_to(coords, (rot.shape[0], *coords.shape))
        return psnr(adapter.decode(params, z_r, full), image_to_pixels(rot), mask)

    return score


def match_poses(reference: Latents, fitted: Latents, *, inside: float = 1.0) -> dict[str, Any]:
    """Pose errors between two latent clouds of one image by nearest-neighbour matching.

    Every reference latent whose position lies inside ``[-inside, inside]^2`` (e.g. the rotated
    latents of an original fit, of which those rotated out of the frame are dropped) is matched
    to the fitted latent nearest to it in position.

    Args:
        reference, fitted: unbatched :class:`Latents` (positions (N, 2), orientations (N,)).
        inside: half-size of the square in which reference latents are kept.

    Returns:
        dict with ``position`` (n,) distances in coordinate units, ``orientation`` (n,)
        absolute wrapped angle differences in radians, ``index`` (n,) matched fitted latents and
        ``kept`` (N,) bool mask of the reference latents used.
    """
    ref_p = np.asarray(reference.positions, np.float64)
    fit_p = np.asarray(fitted.positions, np.float64)
    if ref_p.ndim != 2 or fit_p.ndim != 2:
        raise ValueError(
            f"match_poses: expected unbatched latents, got positions {ref_p.shape}, {fit_p.shape}"
        )
    kept = np.all(np.abs(ref_p) <= inside, axis=-1)
    d = np.linalg.norm(ref_p[kept, None, :] - fit_p[None, :, :], axis=-1)  # (n, M)
    nn = np.argmin(d, axis=1) if d.size else np.zeros(0, int)
    dtheta = (
        np.asarray(reference.orientations, np.float64)[kept]
        - np.asarray(fitted.orientations, np.float64)[nn]
    )
    return {
        "position": d[np.arange(len(nn)), nn],
        "orientation": np.abs((dtheta + np.pi) % (2 * np.pi) - np.pi),
        "index": nn,
        "kept": kept,
    }


def rotation_angles(n: int, seed: int = 0) -> np.ndarray:
    """Evaluation angles in degrees: 0 followed by ``n - 1`` sorted uniform draws in (0, 360).

    Random continuous angles (not multiples of 45 or 90 degrees, which favour the C8 CNN and the
    90-degree symmetric ENF latent grid); 0 is the unrotated reference.
    """
    if n < 1:
        raise ValueError(f"rotation_angles: n must be >= 1, got {n}")
    rng = np.random.default_rng([seed, 360])
    return np.concatenate([[0.0], np.sort(rng.uniform(0.0, 360.0, n - 1))])


def mean_rotated(angles_deg: Sequence[float], accuracy: Sequence[float]) -> float:
    """Mean accuracy over the nonzero angles (all angles if there are none)."""
    a, acc = np.asarray(angles_deg, float), np.asarray(accuracy, float)
    keep = a != 0.0
    return float(acc[keep].mean() if keep.any() else acc.mean())


def image_rotation_curve(
    model: nnx.Module, images: Any, labels: Any, angles_deg: Sequence[float]
) -> list[float]:
    """Accuracy on the images rotated by each angle (degrees; Fourier rotation, zero fill): (A,)."""
    rad = [math.radians(a) for a in angles_deg]
    return metrics.accuracy_under_rotation(model, images, labels, rad).tolist()


def rotate_latents(latents: Latents, angle_deg: float) -> Latents:
    """The SE(2) element (angle, 0) (rotation about the image centre) applied to every latent
    cloud; the counterpart of rotating the image by ``angle_deg`` counter-clockwise."""
    n = latents.positions.shape[0]
    g = SE2(jnp.full((n,), math.radians(angle_deg), jnp.float32), jnp.zeros((n, 2), jnp.float32))
    z = latents.transform(g)
    return jax.tree.map(np.asarray, z)


def latent_action_curve(
    model: nnx.Module, latents: Latents, labels: Any, angles_deg: Sequence[float]
) -> list[float]:
    """Accuracy of a latent-cloud classifier on the test latents rotated by each angle: (A,)."""
    return [
        metrics.accuracy(labels, predict(model, rotate_latents(latents, a)))
        for a in angles_deg
    ]


def refit_rotated(
    decoder_path: str | Path,
    images: Any,
    angles_deg: Sequence[float],
    *,
    steps: int = 3,
    pixels: int | None = None,
    sampling: str = "stratified",
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[Any], np.ndarray]:
    """Latents of the rotated images, fitted with the trained decoder.

    Args:
        decoder_path: a decoder checkpoint (:func:`enflens.fields.adapters.save_trained`).
        images: (n, H, W) in [0, 1].
        angles_deg: rotation angles (counter-clockwise, degrees).
        steps, pixels, sampling, seed: inner-loop settings; use the latent store's
            (:func:`encoding_settings`) so that the refit matches the stored latents.
        batch_size: images per jitted fitting call.

    Returns:
        (one latent batch per angle (ENF: :class:`Latents`, CNF: (n, d)), numpy;
        reconstruction PSNR (A, n) in dB of each rotated image).
    """
    adapter, params, _ = load_trained(decoder_path)
    images = np.asarray(images, np.float32)
    latents, scores = [], []
    for a in angles_deg:
        rot = np.asarray(rotate_images(jnp.asarray(images), math.radians(float(a))))
        lat, psnr = encode(
            adapter, params, rot, steps=steps, pixels=pixels, sampling=sampling, seed=seed,
            batch_size=min(batch_size, len(images)), progress=progress,
        )  # fmt: skip
        latents.append(lat)
        scores.append(np.asarray(psnr))
    return latents, np.stack(scores)


def refit_curve(model: nnx.Module, refits: Sequence[Any], labels: Any) -> list[float]:
    """Accuracy of a latent classifier on each angle's refitted latents: (A,)."""
    return [metrics.accuracy(labels, predict(model, z)) for z in refits]


def invariance_error(
    name: str, model: nnx.Module, latents: Any, seed: int = 0, n: int = 8
) -> float | None:
    """:func:`enflens.evaluate.metrics.invariance_error` for ``enf_*`` models under random
    continuous rotations about the image centre (the lens: the study's symmetry, to which the
    invariant models are exactly invariant), None for the CNNs and ``cnf_mlp`` (no group
    action on their inputs)."""
    if input_kind(name) != "enf":
        return None
    key = jax.random.key(seed)
    return float(metrics.invariance_error(model, latents, key, n=n, max_translation=0.0))
