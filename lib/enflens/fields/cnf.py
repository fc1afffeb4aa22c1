"""Functa-style conditional neural field (CNF): the non-equivariant baseline.

One global latent vector ``z`` (dimension d) per image conditions a SIREN through *shift
modulations* (Dupont et al. 2022, "From data to functa"): every hidden layer computes

    h_{l+1} = sin(w0 * (W_l h_l + b_l + s_l(z))),      s(z) = M z + m  (one linear map),

and a linear read-out gives the pixel values. The latent is fitted per image with the same
Meta-SGD loop as the ENF (:mod:`enflens.metalearn`) with learned per-dimension inner rates.

For a fair comparison the CNF gets as many latent floats per image as the ENF:
:func:`enf_latent_floats` counts N * (2 + 1 + D [+ 1]) for N latents with 2 position
coordinates, 1 orientation, D context channels (and 1 window width if windows are fitted).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def enf_latent_floats(num_latents: int, latent_dim: int, with_windows: bool = False) -> int:
    """Floats in one ENF latent point cloud: N * (2 position + 1 orientation + D [+ 1 window])."""
    if num_latents < 1 or latent_dim < 1:
        raise ValueError(
            f"enf_latent_floats: num_latents={num_latents} and latent_dim={latent_dim} must be >= 1"
        )
    return num_latents * (2 + 1 + latent_dim + (1 if with_windows else 0))


def cnf_latent_dim_matching_enf(
    num_latents: int, latent_dim: int, with_windows: bool = False
) -> int:
    """CNF global latent dimension with the same number of floats per image as the ENF."""
    return enf_latent_floats(num_latents, latent_dim, with_windows)


@dataclasses.dataclass(frozen=True)
class CNFConfig:
    """Architecture of the CNF decoder.

    Attributes:
        latent_dim: d, size of the global latent vector of one image.
        hidden: width of the SIREN hidden layers.
        num_layers: number of modulated sine layers.
        w0: SIREN frequency factor (30 in the SIREN paper; lower is smoother).
        out_channels: channels C of the decoded signal.
        latent_init_scale: scale of the learned latent initialisation at the start (0 = zeros).
    """

    latent_dim: int = 900
    hidden: int = 128
    num_layers: int = 4
    w0: float = 30.0
    out_channels: int = 1
    latent_init_scale: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden", "num_layers", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"CNFConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.w0 <= 0:
            raise ValueError(f"CNFConfig.w0 must be > 0, got {self.w0}")


def _uniform(key: Array, shape: tuple[int, ...], bound: float) -> Array:
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class CNFDecoder(nnx.Module):
    """SIREN with shift modulations from a global latent.

    Call: ``decoder(coords, z)`` with coords (B, P, 2) in [-1, 1]^2 and z (B, d) -> (B, P, C).
    """

    def __init__(self, cfg: CNFConfig, rngs: nnx.Rngs | None = None):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        h, w0 = cfg.hidden, cfg.w0
        # SIREN initialisation (Sitzmann et al. 2020): first layer U(-1/in, 1/in), later layers
        # U(-sqrt(6/in)/w0, sqrt(6/in)/w0).
        weights, biases = [], []
        fan_in = 2
        for layer in range(cfg.num_layers):
            bound = 1.0 / fan_in if layer == 0 else float(np.sqrt(6.0 / fan_in) / w0)
            weights.append(nnx.Param(_uniform(rngs.params(), (fan_in, h), bound)))
            biases.append(nnx.Param(_uniform(rngs.params(), (h,), 1.0 / np.sqrt(fan_in))))
            fan_in = h
        self.weights = nnx.List(weights)
        self.biases = nnx.List(biases)
        # Latent -> shifts of all layers: one linear map, small init so that the unmodulated
        # SIREN starts as a plain SIREN.
        self.to_shift = nnx.Param(
            jax.random.normal(rngs.params(), (cfg.latent_dim, cfg.num_layers * h), jnp.float32)
            / np.sqrt(cfg.latent_dim)
        )
        bound = float(np.sqrt(6.0 / h) / w0)
        self.out_w = nnx.Param(_uniform(rngs.params(), (h, cfg.out_channels), bound))
        self.out_b = nnx.Param(jnp.zeros((cfg.out_channels,), jnp.float32))

    def __call__(self, coords: Array, z: Array) -> Array:
        """Decode: coords (B, P, 2), z (B, d) -> values (B, P, C)."""
        cfg = self.cfg
        if z.shape[-1] != cfg.latent_dim:
            raise ValueError(f"CNFDecoder: latent dim {z.shape[-1]} != config {cfg.latent_dim}")
        shifts = (z @ self.to_shift[...]).reshape(z.shape[0], cfg.num_layers, cfg.hidden)
        h = coords
        for layer in range(cfg.num_layers):
            pre = h @ self.weights[layer][...] + self.biases[layer][...]
            h = jnp.sin(cfg.w0 * (pre + shifts[:, None, layer, :]))  # (B, P, hidden)
        return h @ self.out_w[...] + self.out_b[...]

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self, nnx.Param)))
