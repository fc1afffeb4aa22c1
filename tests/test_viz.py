"""viz: latents drawn where they act on the image (grid convention, arrows along orientations)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402

from enflens import viz  # noqa: E402
from enflens.geometry import Latents  # noqa: E402


def cloud(n: int = 5, seed: int = 0, batch: tuple[int, ...] = ()) -> Latents:
    rng = np.random.default_rng(seed)
    return Latents(
        positions=rng.uniform(-0.8, 0.8, (*batch, n, 2)).astype(np.float32),
        orientations=rng.uniform(0, 2 * np.pi, (*batch, n)).astype(np.float32),
        contexts=rng.normal(size=(*batch, n, 3)).astype(np.float32),
        windows=rng.uniform(0.1, 0.3, (*batch, n)).astype(np.float32),
    )


def test_show_image_uses_the_grid_convention():
    fig, ax = plt.subplots()
    img = np.zeros((4, 4), np.float32)
    img[0, 3] = 1.0  # row 0 = lowest y, column 3 = largest x: bottom right on screen
    im = viz.show_image(ax, img[..., None])
    assert tuple(im.get_extent()) == viz.EXTENT
    assert im.origin == "lower"
    with pytest.raises(ValueError, match="image"):
        viz.show_image(ax, np.zeros((2, 4, 4)))
    plt.close(fig)


def test_draw_latents_points_arrows_and_windows():
    z = cloud(6, seed=1)
    fig, ax = plt.subplots()
    viz.draw_latents(ax, z, arrow_length=0.2)
    (q,) = [c for c in ax.collections if isinstance(c, matplotlib.quiver.Quiver)]
    np.testing.assert_allclose(q.U, 0.2 * np.cos(z.orientations), atol=1e-6)
    np.testing.assert_allclose(q.V, 0.2 * np.sin(z.orientations), atol=1e-6)
    np.testing.assert_allclose(q.get_offsets(), z.positions, atol=1e-6)
    (circles,) = [c for c in ax.collections if isinstance(c, PatchCollection)]
    assert len(circles.get_paths()) == 6
    pts = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    np.testing.assert_allclose(pts[0].get_offsets(), z.positions, atol=1e-6)
    with pytest.raises(ValueError, match="unbatched"):
        viz.draw_latents(ax, cloud(6, batch=(2,)))
    plt.close(fig)


def test_unbatch_and_paths():
    zb = cloud(4, seed=2, batch=(3,))
    one = viz.unbatch(zb, 1)
    np.testing.assert_array_equal(one.contexts, zb.contexts[1])
    assert one.positions.shape == (4, 2)
    fig, ax = plt.subplots()
    path = np.stack([zb.positions[0] + 0.01 * k for k in range(4)])  # (K+1, N, 2)
    viz.draw_paths(ax, path)
    assert len(ax.lines) == 4
    np.testing.assert_allclose(ax.lines[2].get_xydata(), path[:, 2], atol=1e-6)
    with pytest.raises(ValueError, match="K\\+1"):
        viz.draw_paths(ax, path[0])
    plt.close(fig)
