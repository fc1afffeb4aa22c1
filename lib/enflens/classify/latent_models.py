"""Classifiers on ENF latent point clouds and on CNF global latents (Flax NNX).

All latent-cloud models take a batched :class:`enflens.geometry.Latents` (positions (B, N, 2),
orientations (B, N), contexts (B, N, D), windows (B, N)) and return logits (B, num_classes).

* ``enf_mlp`` (:class:`LatentMLP`): MLP on the flattened contexts and poses
  [c_i, p_i, cos theta_i, sin theta_i, s_i] -- ignores the geometry, not invariant.
* ``enf_ponita`` (:class:`Ponita`): PONITA-style message passing, fully connected over the
  latents. Edge attributes are the exact SE(2) pair invariants
  ``[R(theta_i)^T (p_j - p_i), cos(theta_j - theta_i), sin(theta_j - theta_i)]``
  (:func:`enflens.geometry.pair_invariants`, orientations kept). They are embedded by a
  polynomial (degree <= 3) and/or random-Fourier-feature basis and an MLP into a kernel basis
  shared by all layers; each layer maps the basis linearly to per-channel kernels and runs a
  ConvNeXt block: depthwise message passing ``sum_j k_ij * h_j / N``, LayerNorm, pointwise MLP
  with expansion, layer scale, residual. Readout: attention pooling (or mean), LayerNorm, MLP.
* ``enf_transformer`` (:class:`LatentTransformer`): pre-LN transformer over the latents whose
  attention logits are ``q_i . k_j / sqrt(d) + b_h(inv_ij)`` and whose values are modulated
  ``v_j * m(inv_ij)``, with b, m per-layer linear maps of the same invariant embedding.
  Readout as PONITA's.
* ``cnf_mlp`` (:class:`CNFMLP`): MLP on a global latent vector (B, D_cnf).

Node features of the two invariant models (:func:`node_features`): the contexts, standardised
per channel with training-split statistics stored in the model (:class:`Statistic`, set by
:meth:`InvariantLatentModel.set_context_statistics`; the reference PONITA code normalises its
inputs too), and -- with ``node_geometry`` -- each latent's distance from the lens centre
``|p_i|`` and its orientation relative to the radial direction,
``(cos, sin)(theta_i - atan2(p_i))``. No constant input (the log-window is the same for every
latent of every image when windows are not fitted, so it is not used).

Which group each model is invariant to (checked in ``tests/test_classifiers.py`` with random
continuous elements, the MLP failing the same check):

* ``node_geometry=True`` (default): rotations about the image centre (the lens), SO(2), and
  permutations of the latents. Not translations: the radius is measured from the centre. This
  is the problem's symmetry -- the lens sits at the centre of every image.
* ``node_geometry=False``: all of SE(2) (rotations and translations) and permutations.
* ``slot_embedding=True`` or ``pool="slots"``: rotations about the centre, SO(2), but not
  permutations: latent i is read as template slot i. The fit starts each image from the
  template turned into the image's own frame, so slot i sits at the same angle from the frame
  direction in every image and in every rotation of it. Measured for PONITA on the cpu-profile
  latents, best validation accuracy: at the default sizes and 1,500 steps, 86.1 % with slot
  embeddings against 85.0 % without; with basis 16, degree 2 and 3,000 steps, 86.4 % with slot
  embeddings and 87.2 % with the slot-order readout as well; a small PONITA (hidden 32, basis 8)
  with both, at about the default's wall time (4,800 steps), 88.8 % against 85.8 % without
  (``bench/latent_classifiers.py``, figures in ``bench/RESULTS.md``). At the wall time of
  ``enf_mlp``'s 73,000 steps, that small PONITA (15,000 steps) reached 93.1 % against the MLP's
  93.4 %. The dataclass defaults stay permutation invariant; notebook 05 runs the small slot
  config.

:func:`make_classifier` builds any of them by name from its config dataclass.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens.config import from_dict
from enflens.geometry import Latents, pair_invariants

Array = jax.Array
NUM_CLASSES = 3  # no_sub = 0, cdm = 1, axion = 2


class Statistic(nnx.Variable):
    """An input statistic stored with the model (saved in its checkpoint, never trained)."""


def context_statistics(contexts: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32, (D,)) of contexts (n, N, D) over images and latents.

    Channels with std < 1e-8 get std 1 (they are then only centred)."""
    c = np.asarray(contexts, np.float64)
    if c.ndim != 3:
        raise ValueError(f"context_statistics: contexts must be (n, N, D), got {c.shape}")
    mean, std = c.mean(axis=(0, 1)), c.std(axis=(0, 1))
    return mean.astype(np.float32), np.where(std < 1e-8, 1.0, std).astype(np.float32)


def radial_features(positions: Array, orientations: Array) -> Array:
    """Features of each latent invariant to rotations about the origin: (..., N, 3) =
    ``[|p|, cos(theta - phi), sin(theta - phi)]`` with ``phi = atan2(p_y, p_x)`` the direction
    of the position (computed without atan2: smooth everywhere except at p = 0)."""
    r = jnp.sqrt(jnp.sum(positions * positions, -1) + 1e-12)
    ux, uy = positions[..., 0] / r, positions[..., 1] / r
    ox, oy = jnp.cos(orientations), jnp.sin(orientations)
    return jnp.stack([r, ox * ux + oy * uy, oy * ux - ox * uy], -1)


def node_features(z: Latents, mean: Array, std: Array, geometry: bool) -> Array:
    """Invariant node features: standardised contexts, plus :func:`radial_features` when
    ``geometry``: (B, N, D [+ 3])."""
    c = (z.contexts - mean) / std
    if not geometry:
        return c
    return jnp.concatenate([c, radial_features(z.positions, z.orientations)], -1)


def _check_latents(z: Latents, num_latents: int, context_dim: int, who: str) -> None:
    if not isinstance(z, Latents):
        raise ValueError(f"{who}: expected a batched Latents, got {type(z).__name__}")
    if z.positions.ndim != 3 or z.positions.shape[-2:] != (num_latents, 2):
        raise ValueError(
            f"{who}: positions must be (B, {num_latents}, 2), got {tuple(z.positions.shape)}"
        )
    if z.contexts.shape[-2:] != (num_latents, context_dim):
        raise ValueError(
            f"{who}: contexts must be (B, {num_latents}, {context_dim}), "
            f"got {tuple(z.contexts.shape)}"
        )


class MLP(nnx.Module):
    """Linear -> [act -> Linear]*: (..., din) -> (..., dout); optional LayerNorm before each act."""

    def __init__(
        self,
        din: int,
        hidden: int,
        dout: int,
        layers: int,
        *,
        layer_norm: bool = False,
        rngs: nnx.Rngs,
    ):
        if layers < 1:
            raise ValueError(f"MLP: layers must be >= 1, got {layers}")
        dims = [din] + [hidden] * (layers - 1) + [dout]
        self.linears = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.norms = nnx.List(
            [nnx.LayerNorm(hidden, rngs=rngs) for _ in range(layers - 1)] if layer_norm else []
        )

    def __call__(self, x: Array) -> Array:
        for i, lin in enumerate(self.linears):
            x = lin(x)
            if i < len(self.linears) - 1:
                if len(self.norms):
                    x = self.norms[i](x)
                x = nnx.gelu(x)
        return x


# ----------------------------------------------------------------------------- enf_mlp


@dataclasses.dataclass(frozen=True)
class LatentMLPConfig:
    """enf_mlp: hidden width and number of linear layers (incl. the output layer)."""

    hidden: int = 128
    layers: int = 3
    num_classes: int = NUM_CLASSES


class LatentMLP(nnx.Module):
    """MLP on flattened [c_i, p_i, cos theta_i, sin theta_i, s_i] of all latents (not invariant)."""

    def __init__(self, cfg: LatentMLPConfig, *, context_dim: int, num_latents: int, rngs: nnx.Rngs):
        self.cfg, self.context_dim, self.num_latents = cfg, context_dim, num_latents
        din = num_latents * (context_dim + 5)
        self.mlp = MLP(din, cfg.hidden, cfg.num_classes, cfg.layers, layer_norm=True, rngs=rngs)

    def __call__(self, z: Latents) -> Array:
        _check_latents(z, self.num_latents, self.context_dim, "enf_mlp")
        feats = jnp.concatenate(
            [
                z.contexts,
                z.positions,
                jnp.cos(z.orientations)[..., None],
                jnp.sin(z.orientations)[..., None],
                z.windows[..., None],
            ],
            axis=-1,
        )  # (B, N, D + 5)
        return self.mlp(feats.reshape(feats.shape[0], -1))


# ----------------------------------------------------------------------------- invariant basis


def polynomial_features(x: Array, degree: int) -> Array:
    """All monomials of the last axis of x of total degree 1..degree: (..., F) -> (..., M)."""
    f = x.shape[-1]
    cols = [x[..., i] for i in range(f)]
    feats = []
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(f), d):
            term = cols[combo[0]]
            for i in combo[1:]:
                term = term * cols[i]
            feats.append(term)
    return jnp.stack(feats, axis=-1)


class InvariantEmbedding(nnx.Module):
    """Pair invariants (B, N, N, 4) -> kernel basis (B, N, N, basis_dim).

    Basis of the invariants: polynomial monomials up to ``degree`` (0 disables) concatenated with
    ``rff_dim`` random Fourier features [cos(W x), sin(W x)] (fixed W ~ N(0, rff_scale^2));
    then a 2-layer MLP with GELU. Relative positions are multiplied by ``position_scale`` first.
    """

    def __init__(
        self,
        basis_dim: int,
        *,
        degree: int = 3,
        rff_dim: int = 0,
        rff_scale: float = 2.0,
        position_scale: float = 1.0,
        rngs: nnx.Rngs,
    ):
        if degree < 0 or degree > 4 or rff_dim < 0 or (degree == 0 and rff_dim == 0):
            raise ValueError(
                f"InvariantEmbedding: need degree in 0..4 and rff_dim >= 0, not both zero "
                f"(got degree={degree}, rff_dim={rff_dim})"
            )
        self.degree, self.rff_dim, self.position_scale = degree, rff_dim, position_scale
        n_in = 4
        n_poly = (
            sum(len(list(itertools.combinations_with_replacement(range(n_in), d)))
                for d in range(1, degree + 1))
        )  # fmt: skip
        if rff_dim:
            w = jax.random.normal(rngs.params(), (n_in, rff_dim)) * rff_scale
            self.rff_w = nnx.Variable(w)  # fixed (not a Param): not trained
        else:
            self.rff_w = None
        din = n_poly + 2 * rff_dim
        self.lin1 = nnx.Linear(din, basis_dim, rngs=rngs)
        self.lin2 = nnx.Linear(basis_dim, basis_dim, rngs=rngs)

    def __call__(self, inv: Array) -> Array:
        inv = inv.at[..., :2].multiply(self.position_scale)
        parts = []
        if self.degree:
            parts.append(polynomial_features(inv, self.degree))
        if self.rff_w is not None:
            proj = inv @ self.rff_w[...]
            parts += [jnp.cos(proj), jnp.sin(proj)]
        x = jnp.concatenate(parts, axis=-1)
        return nnx.gelu(self.lin2(nnx.gelu(self.lin1(x))))


# ----------------------------------------------------------------------------- enf_ponita


@dataclasses.dataclass(frozen=True)
class PonitaConfig:
    """enf_ponita hyper-parameters.

    Attributes:
        hidden: node channels.
        basis_dim: kernel-basis size (output of the invariant-embedding MLP).
        layers: ConvNeXt message-passing blocks.
        expansion: widening factor of the pointwise MLP in each block.
        degree: polynomial degree of the invariant basis (0 = none).
        rff_dim: random Fourier features of the invariants (0 = none).
        rff_scale: std of the RFF frequencies (invariants are O(1)).
        position_scale: factor on relative positions before the basis.
        layer_scale_init: initial value of the per-channel residual scale.
        node_geometry: add the radius and radial orientation of each latent to its node features
            (invariance to rotations about the centre; False: to all of SE(2)).
        slot_embedding: add a learned vector per template slot (latent index) to the node
            embeddings. The fit starts every image from the template turned into the image's own
            frame (:mod:`enflens.fields.frame`), so latent i is the same template slot, at the
            same angle from the frame direction, in every image and in every rotation of it:
            the index is invariant to rotations about the centre, but the model is then no
            longer invariant to permutations of the latents.
        pool: readout over the latents, ``attention`` (:class:`AttentionPool`), ``mean``, or
            ``slots`` (:class:`SlotReadout`: the node features concatenated in template-slot
            order; invariant to rotations about the centre for the reason given under
            ``slot_embedding``, not to permutations).
        pool_heads: heads of the attention pooling.
        num_classes: output logits.
    """

    hidden: int = 64
    basis_dim: int = 64
    layers: int = 3
    expansion: int = 4
    degree: int = 3
    rff_dim: int = 0
    rff_scale: float = 2.0
    position_scale: float = 1.0
    layer_scale_init: float = 0.1
    node_geometry: bool = True
    slot_embedding: bool = False
    pool: str = "attention"
    pool_heads: int = 4
    num_classes: int = NUM_CLASSES


class ConvNeXtBlock(nnx.Module):
    """h <- h + gamma * MLP(LN(conv(h))), conv_i = sum_j k_ij * h_j / N (depthwise, per channel)."""

    def __init__(self, hidden: int, basis_dim: int, expansion: int, ls: float, *, rngs: nnx.Rngs):
        self.kernel = nnx.Linear(basis_dim, hidden, use_bias=False, rngs=rngs)
        self.conv_bias = nnx.Param(jnp.zeros((hidden,), jnp.float32))
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.fc1 = nnx.Linear(hidden, expansion * hidden, rngs=rngs)
        self.fc2 = nnx.Linear(expansion * hidden, hidden, rngs=rngs)
        self.gamma = nnx.Param(jnp.full((hidden,), ls, jnp.float32))

    def __call__(self, h: Array, basis: Array) -> Array:
        # h (B, N, H); basis (B, N, N, K). The kernel is linear in the basis,
        # k_ijc = sum_k basis_ijk W_kc, so the message sum_j k_ijc h_jc can also be computed as
        # sum_k W_kc (sum_j basis_ijk h_jc) without forming the (B, N, N, H) kernels. That
        # order is cheaper when K < N: on 2 cores, hidden 32 with K = 8 and N = 24 latents, a
        # training step of two blocks took 9.9 ms against 26.2 ms (bench/RESULTS.md); with
        # K = 64 > N it is slower (258 ms against 121 ms), so the order follows the shapes.
        # Both are the same sum, equal up to float rounding.
        n, kdim = h.shape[1], basis.shape[-1]
        if kdim < n:
            t = jnp.einsum("bijk,bjc->bikc", basis, h)  # (B, N_i, K, H)
            msg = jnp.einsum("bikc,kc->bic", t, self.kernel.kernel[...])
        else:
            msg = jnp.einsum("bijc,bjc->bic", self.kernel(basis), h)  # kernels (B, N, N, H)
        msg = msg / n + self.conv_bias[...]
        y = self.fc2(nnx.gelu(self.fc1(self.norm(msg))))
        return h + self.gamma[...] * y


class AttentionPool(nnx.Module):
    """Multi-head attention pooling over the latents (Ilse et al. 2018): each head weighs the
    latents by ``softmax_i(w_h . LN(h_i))`` and averages its share of the channels with those
    weights, so a few informative latents are not drowned by the rest as in a mean. Permutation
    invariant; (B, N, H) -> (B, H). Starts as the mean (zero-initialised scores)."""

    def __init__(self, hidden: int, heads: int, *, rngs: nnx.Rngs):
        if heads < 1 or hidden % heads:
            raise ValueError(f"AttentionPool: pool_heads={heads} must divide hidden={hidden}")
        self.heads = heads
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.score = nnx.Linear(hidden, heads, kernel_init=nnx.initializers.zeros_init(),
                                rngs=rngs)  # fmt: skip

    def __call__(self, h: Array) -> Array:
        b, n, c = h.shape
        w = jax.nn.softmax(self.score(self.norm(h)), axis=1)  # (B, N, heads)
        return jnp.einsum("bnk,bnkc->bkc", w, h.reshape(b, n, self.heads, c // self.heads)).reshape(
            b, c
        )


class SlotReadout(nnx.Module):
    """Readout of the latents in template-slot order: LN(h) (B, N, H) flattened to (B, N * H) and
    mapped linearly to (B, H). Every slot keeps its own weights, as in ``enf_mlp``; the order
    is the template's, which the equivariant start keeps fixed under rotations of the image."""

    def __init__(self, hidden: int, num_latents: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.proj = nnx.Linear(num_latents * hidden, hidden, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        return self.proj(self.norm(h).reshape(h.shape[0], -1))


POOLS = ("attention", "mean", "slots")


class InvariantLatentModel(nnx.Module):
    """What PONITA and the transformer share: stored context statistics, invariant node
    features, the pair-invariant basis and the readout. Subclasses define ``blocks`` and
    ``head`` and call :meth:`features` / :meth:`readout`."""

    def _init_common(self, cfg: Any, context_dim: int, num_latents: int, rngs: nnx.Rngs) -> None:
        if cfg.pool not in POOLS:
            raise ValueError(f"pool={cfg.pool!r}; expected one of {POOLS}")
        self.cfg, self.context_dim, self.num_latents = cfg, context_dim, num_latents
        self.context_mean = Statistic(jnp.zeros((context_dim,), jnp.float32))
        self.context_std = Statistic(jnp.ones((context_dim,), jnp.float32))
        self.embed = nnx.Linear(context_dim + 3 * cfg.node_geometry, cfg.hidden, rngs=rngs)
        self.slot = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_latents, cfg.hidden)))
            if cfg.slot_embedding
            else None
        )
        # the pair basis only feeds the blocks: a model without blocks (layers=0, the per-latent
        # invariants read in slot order) neither builds nor evaluates it
        self.basis = (
            InvariantEmbedding(
                cfg.basis_dim, degree=cfg.degree, rff_dim=cfg.rff_dim, rff_scale=cfg.rff_scale,
                position_scale=cfg.position_scale, rngs=rngs,
            )
            if cfg.layers > 0
            else None
        )  # fmt: skip
        if cfg.pool == "attention":
            self.pool = AttentionPool(cfg.hidden, cfg.pool_heads, rngs=rngs)
        elif cfg.pool == "slots":
            self.pool = SlotReadout(cfg.hidden, num_latents, rngs=rngs)
        else:
            self.pool = None
        self.out_norm = nnx.LayerNorm(cfg.hidden, rngs=rngs)

    def set_context_statistics(self, contexts: Any) -> None:
        """Store the per-channel mean / std of training contexts (n, N, D) in the model."""
        mean, std = context_statistics(contexts)
        if mean.shape != (self.context_dim,):
            raise ValueError(
                f"set_context_statistics: contexts have {mean.shape[0]} channels, the model "
                f"expects {self.context_dim}"
            )
        self.context_mean[...] = jnp.asarray(mean)
        self.context_std[...] = jnp.asarray(std)

    def features(self, z: Latents, who: str) -> tuple[Array, Array]:
        """Node embeddings (B, N, hidden) and the pair basis (B, N, N, basis_dim); the basis is
        None for a model without blocks."""
        _check_latents(z, self.num_latents, self.context_dim, who)
        basis = (
            None if self.basis is None
            else self.basis(pair_invariants(z.positions, z.orientations))
        )  # fmt: skip
        x = node_features(z, self.context_mean[...], self.context_std[...],
                          self.cfg.node_geometry)  # fmt: skip
        h = self.embed(x)
        return (h if self.slot is None else h + self.slot[...]), basis

    def readout(self, h: Array) -> Array:
        """Pool over the latents and normalise: (B, N, hidden) -> (B, hidden)."""
        pooled = h.mean(axis=1) if self.pool is None else self.pool(h)
        return self.out_norm(pooled)


class Ponita(InvariantLatentModel):
    """PONITA on the SE(2) latent point cloud: Latents (B, N, ...) -> logits (B, num_classes)."""

    def __init__(self, cfg: PonitaConfig, *, context_dim: int, num_latents: int, rngs: nnx.Rngs):
        self._init_common(cfg, context_dim, num_latents, rngs)
        self.blocks = nnx.List(
            [
                ConvNeXtBlock(
                    cfg.hidden, cfg.basis_dim, cfg.expansion, cfg.layer_scale_init, rngs=rngs
                )
                for _ in range(cfg.layers)
            ]
        )
        self.head = MLP(cfg.hidden, cfg.hidden, cfg.num_classes, 2, rngs=rngs)

    def __call__(self, z: Latents) -> Array:
        h, basis = self.features(z, "enf_ponita")  # (B, N, H), (B, N, N, K)
        for blk in self.blocks:
            h = blk(h, basis)
        return self.head(self.readout(h))


# ----------------------------------------------------------------------------- enf_transformer


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """enf_transformer hyper-parameters.

    Attributes:
        hidden: token width.
        heads: attention heads (must divide ``hidden``).
        layers: pre-LN transformer blocks.
        mlp_ratio: widening of the feed-forward MLP.
        basis_dim: size of the shared invariant embedding.
        degree, rff_dim, rff_scale, position_scale: invariant basis (see :class:`PonitaConfig`).
        node_geometry, slot_embedding, pool, pool_heads: node features and readout (see
            :class:`PonitaConfig`).
        num_classes: output logits.
    """

    hidden: int = 64
    heads: int = 4
    layers: int = 3
    mlp_ratio: int = 2
    basis_dim: int = 32
    degree: int = 3
    rff_dim: int = 0
    rff_scale: float = 2.0
    position_scale: float = 1.0
    node_geometry: bool = True
    slot_embedding: bool = False
    pool: str = "attention"
    pool_heads: int = 4
    num_classes: int = NUM_CLASSES


class InvariantAttentionBlock(nnx.Module):
    """Pre-LN block: h += Attn(LN h; inv), h += MLP(LN h).  h (B, N, H), inv emb (B, N, N, K)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: int, basis_dim: int, *, rngs: nnx.Rngs):
        if hidden % heads:
            raise ValueError(f"TransformerConfig: heads={heads} must divide hidden={hidden}")
        self.heads = heads
        self.norm1 = nnx.LayerNorm(hidden, rngs=rngs)
        self.qkv = nnx.Linear(hidden, 3 * hidden, rngs=rngs)
        self.bias = nnx.Linear(basis_dim, heads, rngs=rngs)  # attention-logit bias per head
        self.vmod = nnx.Linear(
            basis_dim,
            hidden,
            kernel_init=nnx.initializers.zeros_init(),
            bias_init=nnx.initializers.ones_init(),
            rngs=rngs,
        )  # value modulation, starts at identity
        self.proj = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm2 = nnx.LayerNorm(hidden, rngs=rngs)
        self.mlp = MLP(hidden, mlp_ratio * hidden, hidden, 2, rngs=rngs)

    def __call__(self, h: Array, emb: Array) -> Array:
        b, n, c = h.shape
        nh, dh = self.heads, c // self.heads
        q, k, v = jnp.split(self.qkv(self.norm1(h)), 3, axis=-1)
        q, k, v = (t.reshape(b, n, nh, dh) for t in (q, k, v))
        logits = jnp.einsum("bihd,bjhd->bhij", q, k) / np.sqrt(dh)
        logits = logits + jnp.moveaxis(self.bias(emb), -1, 1)  # (B, heads, N_i, N_j)
        att = jax.nn.softmax(logits, axis=-1)
        mod = self.vmod(emb).reshape(b, n, n, nh, dh)  # (B, N_i, N_j, heads, dh)
        out = jnp.einsum("bhij,bijhd,bjhd->bihd", att, mod, v).reshape(b, n, c)
        h = h + self.proj(out)
        return h + self.mlp(self.norm2(h))


class LatentTransformer(InvariantLatentModel):
    """SE(2)-invariant transformer on latents: Latents (B, N, ...) -> logits (B, num_classes)."""

    def __init__(
        self, cfg: TransformerConfig, *, context_dim: int, num_latents: int, rngs: nnx.Rngs
    ):
        self._init_common(cfg, context_dim, num_latents, rngs)
        self.blocks = nnx.List(
            [
                InvariantAttentionBlock(
                    cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.basis_dim, rngs=rngs
                )
                for _ in range(cfg.layers)
            ]
        )
        self.head = nnx.Linear(cfg.hidden, cfg.num_classes, rngs=rngs)

    def __call__(self, z: Latents) -> Array:
        h, emb = self.features(z, "enf_transformer")  # (B, N, H), (B, N, N, K)
        for blk in self.blocks:
            h = blk(h, emb)
        return self.head(self.readout(h))


# ----------------------------------------------------------------------------- cnf_mlp


@dataclasses.dataclass(frozen=True)
class CNFMLPConfig:
    """cnf_mlp: hidden width and number of linear layers (incl. the output layer)."""

    hidden: int = 128
    layers: int = 3
    num_classes: int = NUM_CLASSES


class CNFMLP(nnx.Module):
    """MLP on a global CNF latent: (B, D_cnf) -> logits (B, num_classes)."""

    def __init__(self, cfg: CNFMLPConfig, *, cnf_dim: int, rngs: nnx.Rngs):
        self.cfg, self.cnf_dim = cfg, cnf_dim
        self.mlp = MLP(cnf_dim, cfg.hidden, cfg.num_classes, cfg.layers, layer_norm=True, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if x.ndim != 2 or x.shape[-1] != self.cnf_dim:
            raise ValueError(f"cnf_mlp: expected (B, {self.cnf_dim}) latents, got {x.shape}")
        return self.mlp(x)


# ----------------------------------------------------------------------------- factory

CLASSIFIER_CONFIGS: dict[str, type] = {
    "enf_mlp": LatentMLPConfig,
    "enf_ponita": PonitaConfig,
    "enf_transformer": TransformerConfig,
    "cnf_mlp": CNFMLPConfig,
}
_MODELS: dict[str, type] = {
    "enf_mlp": LatentMLP,
    "enf_ponita": Ponita,
    "enf_transformer": LatentTransformer,
    "cnf_mlp": CNFMLP,
}
INVARIANT_CLASSIFIERS = ("enf_ponita", "enf_transformer")


def make_config(name: str, **cfg: Any) -> Any:
    """The config dataclass of classifier ``name`` with fields overridden by ``cfg``."""
    if name not in CLASSIFIER_CONFIGS:
        raise ValueError(f"unknown classifier {name!r}; choose from {sorted(CLASSIFIER_CONFIGS)}")
    return from_dict(CLASSIFIER_CONFIGS[name], cfg, f"classifier {name!r} config")


def make_classifier(
    name: str,
    *,
    context_dim: int,
    num_latents: int,
    cnf_dim: int | None = None,
    rngs: nnx.Rngs,
    **cfg: Any,
) -> nnx.Module:
    """Build a classifier by name.

    Args:
        name: "enf_mlp", "enf_ponita", "enf_transformer" (input: batched Latents with N =
            ``num_latents`` latents of context dim ``context_dim``) or "cnf_mlp" (input:
            (B, ``cnf_dim``) global latents; ``context_dim``/``num_latents`` are ignored).
        rngs: parameter initialisation.
        **cfg: overrides of the model's config dataclass fields (see ``CLASSIFIER_CONFIGS``).

    Returns:
        An NNX module mapping its input to logits (B, 3).
    """
    config = make_config(name, **cfg)
    if name == "cnf_mlp":
        if cnf_dim is None or cnf_dim < 1:
            raise ValueError(
                f"make_classifier('cnf_mlp'): cnf_dim must be a positive int, got {cnf_dim}"
            )
        return CNFMLP(config, cnf_dim=cnf_dim, rngs=rngs)
    if context_dim < 1 or num_latents < 1:
        raise ValueError(
            f"make_classifier({name!r}): context_dim and num_latents must be positive, "
            f"got {context_dim}, {num_latents}"
        )
    return _MODELS[name](config, context_dim=context_dim, num_latents=num_latents, rngs=rngs)
