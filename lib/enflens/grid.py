"""Pixel grids: the map between an image array and coordinates in [-1, 1]^2.

Convention used everywhere in the project: pixel ``image[i, j]`` (row ``i``, column ``j``) of an
``H x W`` image sits at the pixel centre ``(x, y) = (-1 + (2j + 1) / W, -1 + (2i + 1) / H)``:
x grows with the column, y grows with the row. Displayed with ``imshow(..., origin="lower")`` the
x axis points right and y points up, so a positive angle rotates counter-clockwise on screen.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


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
