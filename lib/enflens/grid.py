"""Pixel grids: the map between an image array and coordinates in [-1, 1]^2, the one image
rotation of the project, the image-shape check and PSNR.

Convention used everywhere in the project: pixel ``image[i, j]`` (row ``i``, column ``j``) of an
``H x W`` image sits at the pixel centre ``(x, y) = (-1 + (2j + 1) / W, -1 + (2i + 1) / H)``:
x grows with the column, y grows with the row. Displayed with ``imshow(..., origin="lower")`` the
x axis points right and y points up, so a positive angle rotates counter-clockwise on screen.
"""

from __future__ import annotations

import functools

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

ROTATION_METHODS: tuple[str, ...] = ("fourier", "bilinear")


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


def _shift_rows(image: Array, shifts: Array) -> Array:
    """Shift row r of a real (R, N, C) array by ``shifts[r]`` pixels along axis 1 (towards
    larger column index), by a phase ramp on its DFT: an exact, norm-preserving shift of the
    band-limited periodic interpolant of the row."""
    n = image.shape[1]
    k = jnp.fft.rfftfreq(n).astype(jnp.float32)  # cycles per pixel
    phase = jnp.exp(-2j * jnp.pi * k[None, :] * shifts[:, None])  # (R, N // 2 + 1)
    spec = jnp.fft.rfft(image, axis=1) * phase[..., None]
    return jnp.fft.irfft(spec, n=n, axis=1).astype(jnp.float32)


def _rotate_one_fourier(image: Array, angle: Array) -> Array:
    """Rotate one square (H, H, C) image by ``angle`` radians counter-clockwise: an exact
    ``rot90`` by the nearest multiple of 90 degrees, then the remaining |angle| <= 45 degrees
    as three Fourier shears, R(a) = X(-tan(a/2)) Y(sin a) X(-tan(a/2)), on the image zero-padded
    to twice its size (so no content wraps around), cropped back."""
    h, w, _ = image.shape
    k = jnp.round(angle / (jnp.pi / 2))
    rest = angle - k * (jnp.pi / 2)
    quarter = jnp.mod(k, 4).astype(jnp.int32)
    turned = jax.lax.switch(
        quarter, [lambda x, i=i: jnp.rot90(x, -i, axes=(0, 1)) for i in range(4)], image
    )
    ph, pw = h // 2, w // 2
    x = jnp.pad(turned, ((ph, ph), (pw, pw), (0, 0)))
    n = x.shape[0]
    c = jnp.arange(n, dtype=jnp.float32) - (n - 1) / 2.0  # pixel offsets from the centre
    t, s = jnp.tan(rest / 2.0), jnp.sin(rest)
    x = _shift_rows(x, -t * c)  # x-shear: the row at height y moves by -t * y
    x = jnp.swapaxes(_shift_rows(jnp.swapaxes(x, 0, 1), s * c), 0, 1)  # y-shear by s * x
    x = _shift_rows(x, -t * c)
    return x[ph : ph + h, pw : pw + w]


@functools.partial(jax.jit, static_argnames="method")
def rotate_images(images: Array, angles: Array, method: str = "fourier") -> Array:
    """Rotate images counter-clockwise about the image centre, zero fill.

    ``method="fourier"`` (the default, and the project's image rotation): a rotation by the
    nearest multiple of 90 degrees (exact), then three shears, each a per-row phase ramp on the
    DFT (the three-pass rotation of Unser, Thevenaz & Yaroslavsky 1995, IEEE Trans. Image
    Process. 4, 1371, and Larkin, Oldfield & Klemm 1997, Opt. Commun. 139, 99). Each shear is
    unitary, so the rotation keeps the pixel noise's variance and its spectrum up to the padding
    and the frame, and it rotates band-limited content to float32 rounding.

    ``method="bilinear"``: bilinear interpolation. It low-pass filters: at a generic angle it
    scales white pixel noise's standard deviation by about 0.66, so a bilinearly rotated
    observation is smoother than any unrotated one. Kept as the comparison that shows why the
    default is Fourier (``tests/test_cnn.py``).

    Args:
        images: (B, H, W) or (B, H, W, C); square (H == W) for ``"fourier"``.
        angles: scalar or (B,) angles in radians (counter-clockwise in the (x, y) plane of
            :mod:`enflens.grid`).
        method: ``"fourier"`` or ``"bilinear"``.

    Returns:
        Rotated images, same shape as ``images``, float32. Multiples of 90 degrees on a square
        image reproduce ``rot90`` up to float rounding with either method. Content that leaves
        the H x W frame is lost and the corners that enter it are zero (``"fourier"``: up to
        the ringing of the frame's edge, which decays away from it).
    """
    if method not in ROTATION_METHODS:
        raise ValueError(f"rotate_images: method must be one of {ROTATION_METHODS}, got {method!r}")
    x = jnp.asarray(images, jnp.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"rotate_images: images must be (B, H, W) or (B, H, W, C), got {x.shape}")
    if method == "fourier" and x.shape[1] != x.shape[2]:
        raise ValueError(f"rotate_images: method 'fourier' needs square images, got {x.shape}")
    angles = jnp.broadcast_to(jnp.asarray(angles, jnp.float32), (x.shape[0],))
    one = _rotate_one_fourier if method == "fourier" else _rotate_one
    out = jax.vmap(one)(x, angles)
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
