"""Image rotation, ResNet18 and the C8 G-CNN: shapes, invariance (with a negative control),
BatchNorm modes, parameter counts and overfitting a tiny batch."""

import jax
import numpy as np
import pytest
from flax import nnx

from enflens.classify import image_models as cnn
from enflens.classify.train import fit, predict
from enflens.grid import rot90_images, rotate_images
from enflens.nn import count_params


def rotation_error(model, images, angle):
    """max |l(R x) - l(x)| / max |l(x)| of the logits l under the image rotation R (Fourier)."""
    base = predict(model, images)
    rotated = predict(model, np.asarray(rotate_images(images, angle)))
    return float(np.abs(rotated - base).max() / np.abs(base).max())


def _rngs(seed: int = 0) -> nnx.Rngs:
    """RBG keys: same statistics for initialisation, much faster to compile on CPU."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _toy_classes(rng, n=12, size=16):
    """A learnable rotation-invariant toy task: 0 = blob, 1 = ring, 2 = pair of blobs."""
    c = -1 + (2 * np.arange(size) + 1) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    y = np.arange(n) % 3
    out = np.zeros((n, size, size), np.float32)
    for i, k in enumerate(y):
        x0, y0 = rng.uniform(-0.2, 0.2, 2)
        r = np.hypot(xx - x0, yy - y0)
        if k == 0:
            out[i] = np.exp(-(r**2) / rng.uniform(0.1, 0.2))
        elif k == 1:
            out[i] = np.exp(-((r - rng.uniform(0.4, 0.6)) ** 2) / 0.01)
        else:
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.5)
            for sg in (1, -1):
                dx, dy = xx - x0 - sg * d * np.cos(a), yy - y0 - sg * d * np.sin(a)
                out[i] += np.exp(-(dx**2 + dy**2) / 0.02)
    return out / out.max(axis=(1, 2), keepdims=True), y


def _smooth_images(rng, b=4, size=32):
    """Sums of random Gaussian blobs and arcs-like ellipses, normalised to [0, 1]."""
    c = -1 + (2 * np.arange(size) + 1) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    out = np.zeros((b, size, size), np.float32)
    for i in range(b):
        for _ in range(4):
            x0, y0 = rng.uniform(-0.5, 0.5, 2)
            sx, sy = rng.uniform(0.08, 0.3, 2)
            out[i] += rng.uniform(0.3, 1) * np.exp(
                -((xx - x0) ** 2 / sx**2 + (yy - y0) ** 2 / sy**2)
            )
    return out / out.max(axis=(1, 2), keepdims=True)


def test_rotate_images_conventions():
    rng = np.random.default_rng(0)
    img = rng.random((3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(rotate_images(img, 0.0), img, atol=1e-6)
    # +90 degrees: either rotation equals the exact rot90 (float rounding only)
    for method in ("fourier", "bilinear"):
        np.testing.assert_allclose(
            rotate_images(img, np.pi / 2, method=method), rot90_images(img, 1), atol=1e-5
        )
    # counter-clockwise in (x, y): a pixel at (x>0, y~0) moves to (x~0, y>0), i.e. a high row
    a = np.zeros((1, 8, 8), np.float32)
    a[0, 3, 7] = 1.0  # x = +0.875, y = -0.125
    assert tuple(np.argwhere(np.asarray(rot90_images(a, 1))[0])[0]) == (7, 4)
    # per-image angles and a channel axis
    out = rotate_images(img[..., None], np.array([0.0, np.pi / 2, np.pi], np.float32))
    assert out.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(out[2, ..., 0], img[2, ::-1, ::-1], atol=1e-5)
    # continuous angle: a smooth off-centre Gaussian lands where the analytic rotation puts it
    c = -1 + (2 * np.arange(32) + 1) / 32
    yy, xx = np.meshgrid(c, c, indexing="ij")
    th, (x0, y0), s = 0.7, (0.3, 0.1), 0.25
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / s**2)[None].astype(np.float32)
    x1, y1 = np.cos(th) * x0 - np.sin(th) * y0, np.sin(th) * x0 + np.cos(th) * y0
    expected = np.exp(-((xx - x1) ** 2 + (yy - y1) ** 2) / s**2)
    for method, tol in (("fourier", 0.04), ("bilinear", 0.04)):
        err = np.abs(np.asarray(rotate_images(blob, th, method=method))[0] - expected).max()
        assert err < tol, (method, err)  # interpolation error only
        # wrong sense (negative control for the convention)
        wrong = np.asarray(rotate_images(blob, -th, method=method))[0]
        assert np.abs(wrong - expected).max() > 0.5


def _blob(size, x0, y0, s):
    c = -1 + (2 * np.arange(size) + 1) / size
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s**2)).astype(np.float32)


def test_fourier_rotation_is_exact_for_band_limited_content_and_bilinear_is_not():
    rng = np.random.default_rng(7)
    x0, y0, s = 0.35, -0.15, 0.08  # ~2.6 px wide: band-limited at 64 px, like a lensed arc
    img = _blob(64, x0, y0, s)[None]
    for th in rng.uniform(-np.pi, np.pi, 4):
        x1, y1 = np.cos(th) * x0 - np.sin(th) * y0, np.sin(th) * x0 + np.cos(th) * y0
        expected = _blob(64, x1, y1, s)
        fourier = np.abs(np.asarray(rotate_images(img, th))[0] - expected).max()
        bilinear = np.abs(np.asarray(rotate_images(img, th, method="bilinear"))[0] - expected)
        assert fourier < 1e-5, (th, fourier)
        assert bilinear.max() > 1e-2, (th, bilinear.max())  # the control fails the same bound
    # a rotation by a then by b is the rotation by a + b
    a, b = rng.uniform(-np.pi, np.pi, 2)
    twice = rotate_images(rotate_images(img, a), b)
    np.testing.assert_allclose(twice, rotate_images(img, a + b), atol=1e-5)


def test_fourier_rotation_keeps_pixel_noise_and_bilinear_smooths_it():
    rng = np.random.default_rng(8)
    noise = rng.normal(size=(8, 64, 64)).astype(np.float32)
    c = -1 + (2 * np.arange(64) + 1) / 64
    yy, xx = np.meshgrid(c, c, indexing="ij")
    inner = np.hypot(xx, yy) < 0.6  # away from the frame and the zero-filled corners
    angles = rng.uniform(0.2, 1.3, 8).astype(np.float32)  # generic, not near a quarter turn
    fourier = np.asarray(rotate_images(noise, angles))[:, inner].std()
    bilinear = np.asarray(rotate_images(noise, angles, method="bilinear"))[:, inner].std()
    assert abs(fourier / noise[:, inner].std() - 1.0) < 0.03, fourier
    assert bilinear / noise[:, inner].std() < 0.8, bilinear  # the control


def test_rotate_images_rejects_bad_arguments():
    img = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="method must be one of"):
        rotate_images(img, 0.3, method="cubic")
    with pytest.raises(ValueError, match="needs square images"):
        rotate_images(np.zeros((1, 8, 6), np.float32), 0.3)
    np.testing.assert_allclose(  # bilinear takes any shape
        rotate_images(np.zeros((1, 8, 6), np.float32), 0.3, method="bilinear"), 0.0
    )


def test_rot45_filter_matrix_preserves_a_radial_filter():
    k = 5
    mask = cnn._disk_mask(k)
    r = np.arange(k) - 2.0
    yy, xx = np.meshgrid(r, r, indexing="ij")
    radial = np.exp(-(xx**2 + yy**2) / 2.0) * mask
    rotated = (cnn._rot45_matrix(k) @ radial.ravel()).reshape(k, k)
    assert rotated[2, 2] == pytest.approx(radial[2, 2])
    assert np.abs(rotated - radial).max() < 0.15 * radial.max()
    # the first-order (x) moment turns into a 45-degree direction: equal x and y moments
    lin = xx * mask
    rl = (cnn._rot45_matrix(k) @ lin.ravel()).reshape(k, k)
    assert (rl * xx).sum() == pytest.approx((rl * yy).sum(), rel=1e-5)


def test_group_conv_is_equivariant_to_90_degrees():
    rngs = nnx.Rngs(0)
    conv = cnn.GroupConv(3, 4, 3, rngs=rngs)
    f = jax.random.normal(jax.random.key(1), (2, 12, 12, 8, 3))
    # rotating the input by 90 degrees = rot90 in space + shift by 2 on the group axis
    rot = lambda x: np.roll(np.asarray(rot90_images(x, 1)), 2, axis=3)  # noqa: E731
    np.testing.assert_allclose(conv(rot(f)), rot(conv(f)), atol=1e-5)
    # negative control: without the group shift the identity fails
    plain = np.asarray(rot90_images(conv(f), 1))
    assert np.abs(np.asarray(conv(rot(f))) - plain).max() > 0.1


def test_lifting_conv_is_nearly_equivariant_to_45_degrees():
    # rotating the image by 45 degrees ~ rotating the lifted features and shifting the group
    # axis by one; the shift must beat no shift / the wrong shift by a wide margin
    img = _smooth_images(np.random.default_rng(0), 4, 32)[..., None]
    lift = cnn.LiftingConv(1, 4, 5, rngs=_rngs())
    f = np.asarray(lift(img))  # (B, H, W, 8, C)
    f_of_rotated = np.asarray(lift(np.asarray(rotate_images(img, np.pi / 4))))
    b, h, w, g, c = f.shape
    rotated_f = np.asarray(rotate_images(f.reshape(b, h, w, g * c), np.pi / 4))
    rotated_f = rotated_f.reshape(b, h, w, g, c)
    cc = -1 + (2 * np.arange(h) + 1) / h
    disk = np.hypot(*np.meshgrid(cc, cc)) < 0.8  # away from the corners cut by the rotation

    def err(shift):
        d = f_of_rotated - np.roll(rotated_f, shift, axis=3)
        return np.abs(d)[:, disk].max() / np.abs(f).max()

    print(f"lifting 45deg: shift +1 {err(1):.2f}, none {err(0):.2f}, -1 {err(-1):.2f}")
    assert err(1) < 0.3 and err(1) < 0.5 * min(err(0), err(-1))


def test_c8_invariance_and_resnet_control():
    rng = np.random.default_rng(0)
    imgs = _smooth_images(rng, 4, 32)
    noise = rng.random((4, 32, 32)).astype(np.float32)
    c8 = cnn.make_cnn("c8_gcnn", channels=(4, 8), rngs=_rngs())
    res = cnn.make_cnn("resnet18", width=8, rngs=_rngs())
    e90 = rotation_error(c8, noise, np.pi / 2)
    e180 = rotation_error(c8, imgs, np.pi)
    e45 = rotation_error(c8, imgs, np.pi / 4)
    e30 = rotation_error(c8, imgs, np.pi / 6)
    r90 = rotation_error(res, noise, np.pi / 2)
    r45 = rotation_error(res, imgs, np.pi / 4)
    print(f"C8 rel. logit change: 90deg {e90:.1e}, 180 {e180:.1e}, 45 {e45:.2e}, 30 {e30:.2e}")
    print(f"ResNet18 rel. logit change: 90deg {r90:.2e}, 45 {r45:.2e}")
    assert e90 < 1e-5 and e180 < 1e-5
    # 45 degrees: filter and image interpolation only -> near-invariant (loose bound; random
    # white-noise filters at initialisation are the worst case for the 45-degree filter rotation)
    assert e45 < 0.15 and e30 < 0.15
    assert r90 > 0.05 and r45 > 2 * e45  # the plain CNN is clearly not invariant


def test_input_shapes_and_errors():
    m = cnn.make_cnn("c8_gcnn", channels=(4, 8), rngs=_rngs())
    x = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(predict(m, x), predict(m, x[..., None]))
    assert predict(m, x).shape == (2, 3)
    with pytest.raises(ValueError, match="divisible"):
        m(np.zeros((1, 15, 15), np.float32))
    with pytest.raises(ValueError, match="unknown model"):
        cnn.make_cnn("vgg", rngs=_rngs())
    with pytest.raises(ValueError, match="unknown keys"):
        cnn.make_cnn("resnet18", depth=50, rngs=_rngs())
    with pytest.raises(ValueError, match="stem"):
        cnn.make_cnn("resnet18", stem="huge", rngs=_rngs())


def test_batchnorm_train_and_eval_modes():
    m = cnn.make_cnn("resnet18", width=8, rngs=_rngs())
    rng = np.random.default_rng(0)
    a = rng.random((4, 16, 16)).astype(np.float32)
    b = np.concatenate([a[:1], 3 * rng.random((3, 16, 16)).astype(np.float32)])
    # eval mode: an example's logits do not depend on the rest of the batch
    np.testing.assert_allclose(predict(m, a)[0], predict(m, b)[0], atol=1e-5)
    m.train()
    assert np.abs(np.asarray(m(a))[0] - np.asarray(m(b))[0]).max() > 1e-3  # batch statistics


def test_default_parameter_counts():
    # abstract initialisation: shapes only, nothing is computed
    res = nnx.eval_shape(lambda: cnn.make_cnn("resnet18", rngs=nnx.Rngs(0)))
    c8 = nnx.eval_shape(lambda: cnn.make_cnn("c8_gcnn", rngs=nnx.Rngs(0)))
    n_res, n_c8 = count_params(res), count_params(c8)
    print(f"params: resnet18 {n_res:,}  c8_gcnn {n_c8:,}")
    # torchvision resnet18 (11,689,512) with a 1-channel 3x3 stem and a 3-class head
    assert n_res == 11_689_512 - 9408 - 513_000 + 576 + 1539
    # C8 (8, 16, 32, 32), layers (1, 1, 2, 2): a 5x5 lifting filter per channel, then group
    # convolutions with cin x 8 x cout 3x3 filters, a bias and BatchNorm (2 cout) per layer
    def layer(cin, cout, taps):
        return cin * cout * taps + cout + 2 * cout

    convs = [(8, 16), (16, 32), (32, 32), (32, 32), (32, 32)]
    expected = layer(1, 8, 25) + sum(layer(a * 8, b, 9) for a, b in convs) + 32 * 3 + 3
    assert n_c8 == expected == 268_019


@pytest.mark.parametrize(
    "name, cfg", [("c8_gcnn", {"channels": (4, 8)}), ("resnet18", {"width": 8})]
)
def test_cnn_overfits_tiny_batch(name, cfg):
    x, y = _toy_classes(np.random.default_rng(0), 12, 16)
    m = cnn.make_cnn(name, rngs=_rngs(), **cfg)
    hist = fit(
        m, (x, y), (x, y), steps=60, eval_every=3, batch_size=4, learning_rate=3e-3,
        weight_decay=0.0, warmup_fraction=0.0, patience=None, progress=False,
    )  # fmt: skip
    print(f"{name}: train acc {hist['train_acc'][-1]:.2f}, eval acc {hist['best_val_acc']:.2f}")
    assert hist["train_acc"][-1] == 1.0
    assert hist["best_val_acc"] == 1.0  # evaluation mode (BatchNorm running statistics)
    assert (predict(m, x).argmax(-1) == y).all()
