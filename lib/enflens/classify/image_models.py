"""Image baselines: continuous image rotation, a ResNet18 and a C8 group-equivariant CNN.

Images follow the project's pixel convention (:mod:`enflens.grid`): ``image[i, j]`` sits at
``(x, y) = (-1 + (2j + 1) / W, -1 + (2i + 1) / H)``, so a positive angle rotates
counter-clockwise in the (x, y) plane (on screen with ``imshow(..., origin="lower")``).

* :func:`rotate_images` rotates a batch of images by arbitrary angles with bilinear
  interpolation (zero fill outside the frame). The trainer's rotation augmentation and the
  rotation-robustness metrics both use it.
* :class:`ResNet18`: standard BasicBlock ResNet with stages [2, 2, 2, 2] and widths
  (w, 2w, 4w, 8w), w = 64 by default (11.2 M parameters). The stem is adapted to 64 x 64 inputs:
  ``stem="s2"`` (default) is one 3x3 convolution with stride 2 and no max-pool, so the first
  stage runs at 32 x 32 -- the same feature-map size as the published runs, which upsampled
  to 128 px and used the standard 7x7/2 + max-pool stem. ``"standard"`` (7x7/2 + 3x3/2
  max-pool, first stage at 16 x 16; fewer FLOPs, yet measured ~2.5x slower per training step
  than ``"s2"`` on XLA CPU, see ``bench/classifiers.py``) and ``"cifar"`` (3x3/1, no pool,
  first stage at 64 x 64, ~4x the FLOPs of ``"s2"``) are available. BatchNorm
  (``nnx.BatchNorm``, momentum 0.9 as torchvision's 0.1): batch statistics in
  ``model.train()`` mode, running averages in ``model.eval()`` mode.
* :class:`C8GCNN`: lifting convolution and regular group convolutions for the rotation group
  C8. Filters are rotated by multiples of 90 degrees exactly (``rot90``) and by the odd
  multiples of 45 degrees with a fixed bilinear interpolation on a circular support
  (corners masked); group convolutions also cyclically shift the group axis. Features are
  max-pooled over the group, averaged over space and fed to a linear head. The network is
  exactly invariant to 90-degree rotations of the input (up to float rounding) and nearly
  invariant to 45-degree ones (interpolation error).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens.config import from_dict
from enflens.grid import as_nhwc

Array = jax.Array
GROUP_ORDER = 8  # C8: rotations by multiples of 45 degrees


# ----------------------------------------------------------------------------- ResNet18


def _he_init() -> Any:
    return nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nnx.Module):
    """ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU.  (B,H,W,C)->(B,H',W',C')"""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(
            cin, cout, (3, 3), stride, padding=1, use_bias=False, kernel_init=_he_init(), rngs=rngs
        )
        self.bn1 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(
            cout, cout, (3, 3), 1, padding=1, use_bias=False, kernel_init=_he_init(), rngs=rngs
        )
        self.bn2 = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        if stride != 1 or cin != cout:
            self.down_conv = nnx.Conv(
                cin, cout, (1, 1), stride, use_bias=False, kernel_init=_he_init(), rngs=rngs
            )
            self.down_bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        else:
            self.down_conv = None
            self.down_bn = None

    def __call__(self, x: Array) -> Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        sc = x if self.down_conv is None else self.down_bn(self.down_conv(x))
        return nnx.relu(y + sc)


@dataclasses.dataclass(frozen=True)
class ResNet18Config:
    """ResNet18 hyper-parameters.

    Attributes:
        width: channels of the first stage (64 = standard ResNet18); stages use w, 2w, 4w, 8w.
        stem: "s2" (3x3 stride-2 conv, no max-pool; default), "standard" (7x7/2 + max-pool) or
            "cifar" (3x3 stride 1, no max-pool).
        in_channels: image channels.
        num_classes: output logits.
    """

    width: int = 64
    stem: str = "s2"
    in_channels: int = 1
    num_classes: int = 3


class ResNet18(nnx.Module):
    """ResNet18 classifier on images (B, H, W[, C]) -> logits (B, num_classes)."""

    def __init__(self, cfg: ResNet18Config = ResNet18Config(), *, rngs: nnx.Rngs):
        if cfg.stem not in ("s2", "standard", "cifar"):
            raise ValueError(
                f"ResNet18Config.stem must be 's2', 'standard' or 'cifar', got {cfg.stem!r}"
            )
        self.cfg = cfg
        w = cfg.width
        if cfg.stem == "standard":
            self.stem = nnx.Conv(
                cfg.in_channels, w, (7, 7), 2, padding=3, use_bias=False,
                kernel_init=_he_init(), rngs=rngs,
            )  # fmt: skip
        else:
            stride = 2 if cfg.stem == "s2" else 1
            self.stem = nnx.Conv(
                cfg.in_channels, w, (3, 3), stride, padding=1, use_bias=False,
                kernel_init=_he_init(), rngs=rngs,
            )  # fmt: skip
        self.stem_bn = nnx.BatchNorm(w, momentum=0.9, rngs=rngs)
        blocks = []
        cin = w
        for stage, mult in enumerate((1, 2, 4, 8)):
            cout = w * mult
            for b in range(2):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(cin, cfg.num_classes, rngs=rngs)

    def __call__(self, images: Array) -> Array:
        x = as_nhwc(jnp.asarray(images), f"{type(self).__name__}(images)")
        x = nnx.relu(self.stem_bn(self.stem(x)))
        if self.cfg.stem == "standard":
            x = nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(axis=(1, 2)))  # (B, num_classes)


# ----------------------------------------------------------------------------- C8 G-CNN


def _disk_mask(k: int) -> np.ndarray:
    """(k, k) mask of the pixels whose centre lies within radius k/2 of the filter centre."""
    r = np.arange(k) - (k - 1) / 2.0
    yy, xx = np.meshgrid(r, r, indexing="ij")
    return (xx**2 + yy**2 <= (k / 2.0) ** 2 + 1e-9).astype(np.float32)


def _rot45_matrix(k: int) -> np.ndarray:
    """(k*k, k*k) linear map of a masked k x k filter to its 45-degree rotated version.

    Row index = target pixel, column = source pixel (both row-major). Bilinear interpolation of
    the source filter (zero outside the disk) at R(-45 deg) y for each target pixel y inside the
    disk; targets outside the disk are zero. Same rotation sense as :func:`rotate_images`.
    """
    mask = _disk_mask(k)
    c = (k - 1) / 2.0
    a = np.pi / 4
    m = np.zeros((k * k, k * k), np.float64)
    for i in range(k):
        for j in range(k):
            if not mask[i, j]:
                continue
            x, y = j - c, i - c
            xs = np.cos(a) * x + np.sin(a) * y
            ys = -np.sin(a) * x + np.cos(a) * y
            jf, if_ = xs + c, ys + c
            j0, i0 = int(np.floor(jf + 1e-9)), int(np.floor(if_ + 1e-9))
            for di in (0, 1):
                for dj in (0, 1):
                    ii, jj = i0 + di, j0 + dj
                    wgt = (1 - abs(if_ - ii)) * (1 - abs(jf - jj))
                    if wgt <= 1e-9 or not (0 <= ii < k and 0 <= jj < k) or not mask[ii, jj]:
                        continue
                    m[i * k + j, ii * k + jj] += wgt
    return m.astype(np.float32)


@functools.cache
def _filter_constants(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Disk mask (k, k) and 45-degree rotation matrix (k*k, k*k) for k x k filters."""
    return _disk_mask(k), _rot45_matrix(k)


def rotate_filters(w: Array, r: int, rot45: Array) -> Array:
    """Rotate spatial filters w (k, k, ...) by r * 45 degrees counter-clockwise.

    rot_r = rot90^(r // 2) o B^(r % 2) with B the fixed bilinear 45-degree map, so that
    rot_(r+2) = rot90 o rot_r holds exactly.
    """
    k = w.shape[0]
    if r % 2:
        w = jnp.einsum("pq,q...->p...", rot45, w.reshape(k * k, *w.shape[2:]))
        w = w.reshape(k, k, *w.shape[1:])
    return jnp.rot90(w, -(r // 2), axes=(0, 1))


class LiftingConv(nnx.Module):
    """Lifting convolution Z^2 -> C8: (B, H, W, Cin) -> (B, H, W, 8, Cout).

    out[..., r, :] is the correlation of the input with the filter rotated by r * 45 degrees.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, *, rngs: nnx.Rngs):
        self.kernel_size = kernel_size
        fan_in = float(_disk_mask(kernel_size).sum()) * cin
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), (kernel_size, kernel_size, cin, cout))
            * np.sqrt(2.0 / fan_in)
        )
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.cout = cout

    def __call__(self, x: Array) -> Array:
        mask, rot45 = _filter_constants(self.kernel_size)
        w = self.kernel[...] * mask[:, :, None, None]
        ws = jnp.stack([rotate_filters(w, r, rot45) for r in range(GROUP_ORDER)], axis=3)
        k, _, cin = ws.shape[:3]
        y = jax.lax.conv_general_dilated(
            x, ws.reshape(k, k, cin, GROUP_ORDER * self.cout), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        b, h, wd, _ = y.shape
        return y.reshape(b, h, wd, GROUP_ORDER, self.cout) + self.bias[...]


class GroupConv(nnx.Module):
    """Regular C8 group convolution: (B, H, W, 8, Cin) -> (B, H, W, 8, Cout).

    out_r(x) = sum_{s, y} f_s(x + y) Psi(s - r, R_r^{-1} y): the filter is rotated by r * 45
    degrees and cyclically shifted by r along the group axis. Equivariant:
    rotating the input by 45 degrees rotates the output and shifts its group axis by one.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, *, rngs: nnx.Rngs):
        self.kernel_size = kernel_size
        fan_in = float(_disk_mask(kernel_size).sum()) * cin * GROUP_ORDER
        self.kernel = nnx.Param(
            jax.random.normal(rngs.params(), (kernel_size, kernel_size, GROUP_ORDER, cin, cout))
            * np.sqrt(2.0 / fan_in)
        )
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.cin, self.cout = cin, cout

    def __call__(self, x: Array) -> Array:
        mask, rot45 = _filter_constants(self.kernel_size)
        w = self.kernel[...] * mask[:, :, None, None, None]
        ws = jnp.stack(
            [rotate_filters(jnp.roll(w, r, axis=2), r, rot45) for r in range(GROUP_ORDER)],
            axis=4,
        )  # (k, k, 8_in, Cin, 8_out, Cout)
        k = ws.shape[0]
        ws = ws.reshape(k, k, GROUP_ORDER * self.cin, GROUP_ORDER * self.cout)
        b, h, wd = x.shape[:3]
        y = jax.lax.conv_general_dilated(
            x.reshape(b, h, wd, GROUP_ORDER * self.cin), ws, (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        return y.reshape(b, h, wd, GROUP_ORDER, self.cout) + self.bias[...]


@dataclasses.dataclass(frozen=True)
class C8GCNNConfig:
    """C8 G-CNN hyper-parameters.

    Attributes:
        channels: channels per group element of each stage; stage s runs at resolution
            H / 2^s (2x2 average pooling between stages). The default (8, 16, 32, 32) with
            layers (1, 1, 2, 2) was chosen on the validation split: at 100 steps of batch 64
            (lr 1e-3) it reached 0.64 validation accuracy where the earlier three-stage
            (8, 16, 16) network stayed at chance (0.33); four stages reach a 8 x 8 map, so the
            group pooling sees a receptive field the size of the Einstein ring.
        layers_per_stage: convolutions per stage (one number per stage, or one int for all);
            the first layer of stage 0 is the lifting convolution. None (default) means 1 for
            the first two stages and 2 for every later stage: only the lifting layer runs at
            full resolution and one group convolution at half resolution, since a group
            convolution with 8 x 8 channels at 64 x 64 would cost as much as the rest of the
            network.
        lift_kernel: lifting filter size (odd).
        kernel: group-convolution filter size (odd).
        in_channels: image channels.
        num_classes: output logits.
    """

    channels: tuple[int, ...] = (8, 16, 32, 32)
    layers_per_stage: int | tuple[int, ...] | None = None
    lift_kernel: int = 5
    kernel: int = 3
    in_channels: int = 1
    num_classes: int = 3


class C8GCNN(nnx.Module):
    """C8-invariant CNN on images (B, H, W[, C]) -> logits (B, num_classes).

    BatchNorm statistics are shared across the group axis (per channel), which keeps every
    layer equivariant. Input sizes must be divisible by 2^(len(channels) - 1) so that the
    average pooling commutes exactly with 90-degree rotations.
    """

    def __init__(self, cfg: C8GCNNConfig = C8GCNNConfig(), *, rngs: nnx.Rngs):
        if cfg.kernel % 2 == 0 or cfg.lift_kernel % 2 == 0:
            raise ValueError("C8GCNNConfig: kernel sizes must be odd")
        layers = cfg.layers_per_stage
        if layers is None:
            layers = ((1, 1) + (2,) * len(cfg.channels))[: len(cfg.channels)]
        elif isinstance(layers, int):
            layers = (layers,) * len(cfg.channels)
        layers = tuple(layers)
        if not cfg.channels or len(layers) != len(cfg.channels) or min(layers) < 1:
            raise ValueError(
                "C8GCNNConfig: need at least one stage, one layer per stage and one "
                f"layers_per_stage entry per stage (channels={cfg.channels}, "
                f"layers_per_stage={cfg.layers_per_stage})"
            )
        self.cfg = cfg
        self.layers = layers
        self.lift = LiftingConv(cfg.in_channels, cfg.channels[0], cfg.lift_kernel, rngs=rngs)
        self.lift_bn = nnx.BatchNorm(cfg.channels[0], momentum=0.9, rngs=rngs)
        convs, bns = [], []
        cin = cfg.channels[0]
        for s, c in enumerate(cfg.channels):
            n = layers[s] - 1 if s == 0 else layers[s]
            for _ in range(n):
                convs.append(GroupConv(cin, c, cfg.kernel, rngs=rngs))
                bns.append(nnx.BatchNorm(c, momentum=0.9, rngs=rngs))
                cin = c
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)
        self.head = nnx.Linear(cin, cfg.num_classes, rngs=rngs)

    def features(self, images: Array) -> Array:
        """Rotation-invariant features (B, C_last): group max-pool then spatial mean."""
        x = as_nhwc(jnp.asarray(images), f"{type(self).__name__}(images)")
        div = 2 ** (len(self.cfg.channels) - 1)
        if x.shape[1] % div or x.shape[2] % div:
            raise ValueError(f"C8GCNN: image size {x.shape[1:3]} must be divisible by {div}")
        x = nnx.relu(self.lift_bn(self.lift(x)))  # (B, H, W, 8, C0)
        i = 0
        for s in range(len(self.cfg.channels)):
            if s > 0:
                b, h, w, g, c = x.shape
                x = x.reshape(b, h // 2, 2, w // 2, 2, g, c).mean(axis=(2, 4))
            n = self.layers[s] - 1 if s == 0 else self.layers[s]
            for _ in range(n):
                x = nnx.relu(self.bns[i](self.convs[i](x)))
                i += 1
        return x.max(axis=3).mean(axis=(1, 2))

    def __call__(self, images: Array) -> Array:
        return self.head(self.features(images))


# ----------------------------------------------------------------------------- factory

CNN_CONFIGS: dict[str, type] = {"resnet18": ResNet18Config, "c8_gcnn": C8GCNNConfig}
_CNN_MODELS: dict[str, type] = {"resnet18": ResNet18, "c8_gcnn": C8GCNN}


def make_cnn(name: str, *, rngs: nnx.Rngs, **cfg: Any) -> nnx.Module:
    """Build an image classifier by name ("resnet18" or "c8_gcnn").

    ``cfg`` overrides fields of the model's config dataclass (:class:`ResNet18Config`,
    :class:`C8GCNNConfig`). The model maps images (B, H, W[, C]) to logits (B, num_classes).
    """
    if name not in _CNN_MODELS:
        raise ValueError(f"make_cnn: unknown model {name!r}; choose from {sorted(_CNN_MODELS)}")
    return _CNN_MODELS[name](from_dict(CNN_CONFIGS[name], cfg, f"make_cnn({name!r})"), rngs=rngs)
