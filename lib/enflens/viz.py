"""Plot helpers for images on the [-1, 1]^2 grid and ENF latent point clouds drawn over them.

Images are shown with ``origin="lower"`` and ``extent=(-1, 1, -1, 1)``, the convention of
:mod:`enflens.grid` (x to the right, y up, positive angles counter-clockwise on screen), so a
latent at position ``p`` is drawn where it acts on the image. A latent is drawn as a point at
its position, an arrow along its orientation ``(cos theta, sin theta)`` and a circle of radius
its Gaussian window width ``s`` (where its attention logit has dropped by 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.patches import Circle

from enflens.geometry import Latents

#: Image extent of the coordinate convention: (left, right, bottom, top).
EXTENT = (-1.0, 1.0, -1.0, 1.0)


def unbatch(latents: Latents, index: int) -> Latents:
    """Latents of one image from a batched cloud (leading dim n) as numpy arrays (N, ...)."""
    return Latents(
        positions=np.asarray(latents.positions[index]),
        orientations=np.asarray(latents.orientations[index]),
        contexts=np.asarray(latents.contexts[index]),
        windows=np.asarray(latents.windows[index]),
    )


def show_image(ax: Any, image: Any, *, cmap: str = "magma", **kwargs: Any) -> Any:
    """``imshow`` of an (H, W[, 1]) image on [-1, 1]^2 with origin lower; returns the image."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"show_image: expected an (H, W) or (H, W, 1) image, got {img.shape}")
    im = ax.imshow(img, origin="lower", extent=EXTENT, cmap=cmap, **kwargs)
    ax.set_xlim(EXTENT[0], EXTENT[1])
    ax.set_ylim(EXTENT[2], EXTENT[3])
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def draw_latents(
    ax: Any,
    latents: Latents,
    *,
    color: Any = "cyan",
    arrow_length: float = 0.12,
    windows: bool = True,
    labels: bool = False,
    size: float = 12.0,
    alpha: float = 0.9,
) -> None:
    """Draw one image's latent point cloud: points, orientation arrows, window circles.

    Args:
        ax: matplotlib axes showing the image on [-1, 1]^2 (:func:`show_image`).
        latents: unbatched :class:`Latents`: positions (N, 2), orientations (N,) radians,
            windows (N,) coordinate units.
        color: one colour, or (N,) values / colours per latent.
        arrow_length: arrow length in coordinate units.
        windows: draw a circle of radius ``s_i`` around each latent.
        labels: write each latent's index next to it.
    """
    pos = np.asarray(latents.positions)
    theta = np.asarray(latents.orientations)
    if pos.ndim != 2 or pos.shape[-1] != 2 or theta.shape != pos.shape[:1]:
        raise ValueError(
            f"draw_latents: expected unbatched latents, positions (N, 2) and orientations (N,), "
            f"got {pos.shape} and {theta.shape} (use unbatch(latents, i))"
        )
    if windows:
        circles = [
            Circle(tuple(p), float(s))
            for p, s in zip(pos, np.asarray(latents.windows), strict=True)
        ]
        coll = PatchCollection(circles, facecolor="none", edgecolor=color, lw=0.6, alpha=0.45)
        ax.add_collection(coll)
    ax.scatter(pos[:, 0], pos[:, 1], s=size, c=color, edgecolors="k", linewidths=0.3, zorder=3)
    ax.quiver(
        pos[:, 0], pos[:, 1], arrow_length * np.cos(theta), arrow_length * np.sin(theta),
        color=color, angles="xy", scale_units="xy", scale=1.0, width=0.008, alpha=alpha,
        zorder=4,
    )  # fmt: skip
    if labels:
        for i, p in enumerate(pos):
            ax.annotate(str(i), tuple(p), fontsize=6, color="w", xytext=(2, 2),
                        textcoords="offset points")  # fmt: skip


def draw_paths(ax: Any, positions: Any, *, color: Any = "w", lw: float = 0.8) -> None:
    """Trajectories of latent positions over the inner steps.

    Args:
        positions: (K+1, N, 2) positions of one image's latents after 0..K inner steps; the
            start is marked with a small open circle, the end with a dot.
    """
    p = np.asarray(positions)
    if p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"draw_paths: expected positions (K+1, N, 2), got {p.shape}")
    for n in range(p.shape[1]):
        ax.plot(p[:, n, 0], p[:, n, 1], "-", color=color, lw=lw, alpha=0.8)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=10, facecolors="none", edgecolors=color, lw=0.6)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=8, c=[color], zorder=3)
