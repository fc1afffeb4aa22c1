"""Pixel grids: the map between an image array and coordinates in [-1, 1]^2, the one image
rotation of the project, the image-shape check and PSNR.

Convention used everywhere in the project: pixel ``image[i, j]`` (row ``i``, column ``j``) of an
``H x W`` image sits at the pixel centre ``(x, y) = (-1 + (2j + 1) / W, -1 + (2i + 1) / H)``:
x grows with the column, y grows with the row. Displayed with ``imshow(..., origin="lower")`` the
x axis points right and y points up, so a positive angle rotates counter-clockwise on screen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def make_grid(height: int, width: int | None = None) -> jnp.ndarray:
    """Pixel-centre coordinates of an image, flattened row-major.

    Args:
        height: number of rows H.
        width: number of columns W (defaults to ``height``).

    Returns:
        (H * W, 2) float32 array of (x, y) in (-1, 1); entry ``i * W + j`` is pixel ``[i, j]``.
    """
    width = height if width is None else width
    if height < 1 or width < 1:
        raise ValueError(f"make_grid: height and width must be >= 1, got {height}x{width}")
    xs = -1.0 + (2.0 * np.arange(width) + 1.0) / width
    ys = -1.0 + (2.0 * np.arange(height) + 1.0) / height
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return jnp.asarray(np.stack([xx.ravel(), yy.ravel()], axis=-1), dtype=jnp.float32)


def as_nhwc(images: object, what: str) -> np.ndarray | Array:
    """Images (n, H, W) or (n, H, W, C) as float32 (n, H, W, C): a numpy array, or a jax array
    when ``images`` is one (also inside ``jit``).

    Raises ValueError naming ``what`` (the argument, e.g. ``"encode(images)"``) for any other
    shape.

    >>> as_nhwc(np.zeros((2, 4, 4)), "demo").shape
    (2, 4, 4, 1)
    """
    xp = jnp if isinstance(images, jax.Array) else np
    x = xp.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images (n, H, W[, C]), got shape {x.shape}")
    return x


def image_to_pixels(images: jnp.ndarray) -> jnp.ndarray:
    """Flatten images (B, H, W) or (B, H, W, C) to pixel values (B, H*W, C), row-major."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"image_to_pixels: expected (B, H, W[, C]) images, got {images.shape}")
    b, h, w, c = images.shape
    return images.reshape(b, h * w, c)


def pixels_to_image(values: jnp.ndarray, height: int, width: int | None = None) -> jnp.ndarray:
    """Inverse of :func:`image_to_pixels`: (B, H*W, C) -> (B, H, W, C)."""
    width = height if width is None else width
    b, p, c = values.shape
    if p != height * width:
        raise ValueError(f"pixels_to_image: {p} pixels do not fill a {height}x{width} image")
    return values.reshape(b, height, width, c)


# ----------------------------------------------------------------------------- rotation


def _rotate_one(image: Array, angle: Array) -> Array:
    """Rotate one (H, W, C) image by ``angle`` radians counter-clockwise (bilinear, zero fill)."""
    h, w, _ = image.shape
    ys = -1.0 + (2.0 * jnp.arange(h, dtype=jnp.float32) + 1.0) / h
    xs = -1.0 + (2.0 * jnp.arange(w, dtype=jnp.float32) + 1.0) / w
    yy, xx = jnp.meshgrid(ys, xs, indexing="ij")  # (H, W) output pixel centres
    c, s = jnp.cos(angle), jnp.sin(angle)
    # out(p) = in(R(-angle) p)
    xsrc = c * xx + s * yy
    ysrc = -s * xx + c * yy
    jsrc = ((xsrc + 1.0) * w - 1.0) / 2.0  # fractional column index
    isrc = ((ysrc + 1.0) * h - 1.0) / 2.0  # fractional row index

    def one_channel(ch: Array) -> Array:
        return jax.scipy.ndimage.map_coordinates(
            ch, [isrc, jsrc], order=1, mode="constant", cval=0.0
        )

    return jax.vmap(one_channel, in_axes=-1, out_axes=-1)(image)


@jax.jit
def rotate_images(images: Array, angles: Array) -> Array:
    """Rotate images counter-clockwise about the image centre, bilinear, zero fill.

    Args:
        images: (B, H, W) or (B, H, W, C).
        angles: scalar or (B,) angles in radians (counter-clockwise in the (x, y) plane of
            :mod:`enflens.grid`).

    Returns:
        Rotated images, same shape as ``images``, float32. Multiples of 90 degrees on a square
        image reproduce ``rot90`` up to float rounding.
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"rotate_images: images must be (B, H, W) or (B, H, W, C), got {x.shape}")
    angles = jnp.broadcast_to(jnp.asarray(angles, jnp.float32), (x.shape[0],))
    out = jax.vmap(_rotate_one)(x, angles)
    return out.reshape(jnp.shape(images))


def rot90_images(images: Array, k: int = 1) -> Array:
    """Exact rotation by k * 90 degrees counter-clockwise (same sense as :func:`rotate_images`).

    Args:
        images: (B, H, W) or (B, H, W, C).
    """
    # np.rot90(., -1) on (row=y, col=x) axes is +90 degrees in the (x, y) plane
    return jnp.rot90(jnp.asarray(images), -k, axes=(1, 2))


# ----------------------------------------------------------------------------- quality


def psnr(pred: Array, target: Array, mask: Array | None = None) -> Array:
    """Per-image PSNR in dB for values in [0, 1] (peak 1): ``-10 log10(MSE)``.

    Args:
        pred, target: (B, P, C), (B, H, W) or (B, H, W, C) (jax or numpy).
        mask: optional pixel mask, (P,) or (H, W), broadcast over batch and channels.

    Returns:
        (B,) PSNR in dB (MSE floored at 1e-12, so at most 120 dB).

    >>> round(float(psnr(np.zeros((1, 4)), np.full((1, 4), 0.1))[0]), 3)  # MSE 0.01
    20.0
    """
    err = (jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)) ** 2
    b = err.shape[0]
    if mask is None:
        mse = jnp.mean(err.reshape(b, -1), axis=1)
    else:
        m = jnp.asarray(mask, jnp.float32).reshape(-1)  # (P,)
        err = err.reshape(b, m.size, -1)  # (B, P, C)
        mse = jnp.sum(err * m[None, :, None], axis=(1, 2)) / (jnp.sum(m) * err.shape[2])
    return -10.0 * jnp.log10(jnp.maximum(mse, 1e-12))
