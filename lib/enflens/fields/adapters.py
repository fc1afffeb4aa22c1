"""Field adapters: what the Meta-SGD loop needs to know about a conditional neural field.

The loop (:mod:`enflens.metalearn`) is generic over the model through a :class:`FieldAdapter`:
a pure decode function built with ``nnx.split``/``nnx.merge``, the structure of the latent and of
its learning rates, and how to expand the shared initialisation to a batch. :func:`cnf_adapter`
and :func:`enf_adapter` build the two models of the study; :func:`save_trained` /
:func:`load_trained` store a meta-learned field (decoder, inner rates, latent init) as an orbax
directory with a content hash.

ENF initialisation (documented choice): positions on a fixed sqrt(N) x sqrt(N) grid over
[-1, 1]^2 (not learned; the grid is symmetric under 90 degree rotations), orientations 0, windows
equal to the grid spacing (not fitted by default), contexts from one learned vector of D channels
shared by all latents (``shared_context_init=True``), so that the initial point cloud carries no
position-dependent information. With ``enf_adapter(equivariant_start=True)`` and
``ENFConfig(template="rings")`` every image instead starts from a ring template rotated into its
own frame (:mod:`enflens.fields.frame`): the fit then rotates with the image, up to pixel
interpolation and pixel subsets (``docs/equivariant_start.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens.checkpoint import load_decoder, read_decoder_meta, save_decoder
from enflens.config import from_dict
from enflens.fields.cnf import CNFConfig, CNFDecoder
from enflens.fields.enf import ENFConfig, ENFDecoder, init_latents
from enflens.fields.frame import equivariant_start as rotated_start
from enflens.geometry import Latents

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class FieldAdapter:
    """What the Meta-SGD loop needs to know about a conditional neural field.

    Attributes:
        kind: model name ("enf", "cnf", ...), recorded in checkpoints and latent stores.
        model_config: JSON-serialisable dict that rebuilds the model with :func:`make_adapter`.
        graphdef: the NNX graph definition of the decoder (static structure).
        params: initial trainable decoder parameters (``nnx.State`` of ``nnx.Param``).
        buffers: the decoder's other state (e.g. frozen Fourier frequencies), never trained.
        latent_init: learned part of the shared latent initialisation (unbatched pytree).
        lr_init: initial inner learning rates: a pytree with the structure of the latents, each
            leaf broadcastable against the (batched) latent leaf.
        adapt: pytree of Python bools with the structure of the latents: which leaves the inner
            loop updates (the others stay at their initial value).
        expand: ``expand(latent_init, batch) -> latents`` batched initial latents.
        out_channels: channels C of the decoded signal.
        start: optional ``start(latent_init, pixels (B, HW, C), (H, W)) -> latents``: an
            image-dependent start of the inner loop (the equivariant start of
            :mod:`enflens.fields.frame`); None starts every image from ``expand``.
        lr_bounds: optional pytree with the structure of ``lr_init`` whose leaves are
            ``(low, high)`` bounds of the inner rates, or None (unbounded).
        fit_radius: when set, the inner-loop loss counts only pixels with ``|x| <= fit_radius``
            (a rotation-invariant support; the square's corners are not), else all pixels.
        limit_step: optional ``limit_step(old, new) -> new`` applied after every inner step
            (e.g. a bound on how far a pose may move in one step), or None.
        rate_steps: 1 (default): one set of inner rates for every inner step (Meta-SGD). R > 1:
            R sets, inner step k uses set ``min(k, R - 1)`` (per-step rates as in MAML++,
            Antoniou et al. 2019, arXiv:1810.09502); every leaf of ``log_lrs`` then has a
            leading axis of size R.
    """

    kind: str
    model_config: dict
    graphdef: Any
    params: PyTree
    buffers: PyTree
    latent_init: PyTree
    lr_init: PyTree
    adapt: PyTree
    expand: Callable[[PyTree, int], PyTree]
    out_channels: int
    start: Callable[[PyTree, Array, tuple[int, int]], PyTree] | None = None
    lr_bounds: PyTree | None = None
    fit_radius: float | None = None
    limit_step: Callable[[PyTree, PyTree], PyTree] | None = None
    rate_steps: int = 1

    def __post_init__(self):
        if not isinstance(self.rate_steps, int) or self.rate_steps < 1:
            raise ValueError(f"rate_steps must be an integer >= 1, got {self.rate_steps!r}")

    def decode(self, params: dict, latents: PyTree, coords: Array) -> Array:
        """Pure decode: params (see :func:`init_params`), latents (B, ...), coords (B, P, 2)
        -> values (B, P, C)."""
        model = nnx.merge(self.graphdef, params["decoder"], params["buffers"])
        return model(coords, latents)

    def init_params(self) -> dict:
        """All arrays needed to fit and decode: decoder, buffers, log inner rates, latent init.

        The inner rates are stored as their natural logarithm (``params["log_lrs"]``): they stay
        positive and the outer Adam step changes them by a relative amount, whatever their
        scale. Leaves that are not adapted keep log(1) = 0 (unused).
        """
        log_lrs = jax.tree.map(
            lambda lr, on: jnp.log(jnp.asarray(lr, jnp.float32)) if on else jnp.zeros_like(lr),
            self.lr_init,
            self.adapt,
        )
        if self.rate_steps > 1:  # one copy per inner step, all starting at lr_init
            log_lrs = jax.tree.map(lambda x: jnp.stack([x] * self.rate_steps), log_lrs)
        return {
            "decoder": self.params,
            "buffers": self.buffers,
            "log_lrs": log_lrs,
            "init": self.latent_init,
        }

    def inner_rates(self, params: dict, step: int = 0) -> PyTree:
        """The inner learning rates exp(log_lrs) of inner step ``step`` (0-based), same
        structure as the latents (clipped to ``lr_bounds`` when set)."""
        log_lrs = self.clip_log_lrs(params)["log_lrs"]
        if self.rate_steps > 1:
            log_lrs = jax.tree.map(lambda x: x[min(step, self.rate_steps - 1)], log_lrs)
        return jax.tree.map(jnp.exp, log_lrs)

    def clip_log_lrs(self, params: dict) -> dict:
        """``params`` with the log inner rates clipped to ``log(lr_bounds)``."""
        if self.lr_bounds is None:
            return params
        clipped = jax.tree.map(
            lambda x, b: x if b is None else jnp.clip(x, math.log(b[0]), math.log(b[1])),
            params["log_lrs"],
            self.lr_bounds,
            is_leaf=lambda b: b is None or isinstance(b, tuple),
        )
        return {**params, "log_lrs": clipped}

    def start_latents(self, params: dict, px: Array, image_shape: tuple[int, int]) -> PyTree:
        """Starting latents of the inner loop for a batch of images: ``px`` (B, H W, C),
        ``image_shape`` (H, W). The image-dependent (equivariant) start when the adapter has
        one, else the learned initialisation ``expand(params["init"], B)``."""
        if self.start is None:
            return self.expand(params["init"], px.shape[0])
        return self.start(params["init"], px, tuple(image_shape))


def _split_module(module: nnx.Module) -> tuple[Any, PyTree, PyTree]:
    graphdef, params, buffers = nnx.split(module, nnx.Param, ...)
    return graphdef, params, buffers


def cnf_adapter(
    cfg: Any, *, seed: int = 0, lr_init: float = 1.0, rate_steps: int = 1
) -> FieldAdapter:
    """Adapter for the CNF baseline (:class:`enflens.fields.cnf.CNFDecoder`).

    Latent: one vector z (B, d); learned init (d,) (starts at ``cfg.latent_init_scale`` * N(0,1));
    learned per-dimension inner rates (d,) starting at ``lr_init`` (``rate_steps`` sets of them:
    see :class:`FieldAdapter`).
    """
    if not isinstance(cfg, CNFConfig):
        raise TypeError(f"cnf_adapter: expected a CNFConfig, got {type(cfg).__name__}")
    decoder = CNFDecoder(cfg, rngs=nnx.Rngs(seed))
    graphdef, params, buffers = _split_module(decoder)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    z0 = cfg.latent_init_scale * jax.random.normal(key, (cfg.latent_dim,), jnp.float32)

    def expand(init: PyTree, batch: int) -> Array:
        return jnp.broadcast_to(init, (batch, cfg.latent_dim))

    return FieldAdapter(
        kind="cnf",
        model_config={
            **dataclasses.asdict(cfg),
            "seed": seed,
            "lr_init": lr_init,
            **_rate_steps_entry(rate_steps),
        },
        graphdef=graphdef,
        params=params,
        buffers=buffers,
        latent_init=z0,
        lr_init=jnp.full((cfg.latent_dim,), lr_init, jnp.float32),
        adapt=True,
        expand=expand,
        out_channels=cfg.out_channels,
        rate_steps=rate_steps,
    )


def _rate_steps_entry(rate_steps: int) -> dict:
    """The ``model_config`` entry of ``rate_steps``: absent at its default 1, so that configs,
    cache keys and checkpoints from before per-step rates existed stay valid."""
    return {} if rate_steps == 1 else {"rate_steps": rate_steps}


def enf_adapter(
    cfg: Any,
    *,
    seed: int = 0,
    lr_positions: float = 1.0,
    lr_orientations: float = 1.0,
    lr_contexts: float = 150.0,
    lr_windows: float = 0.1,
    fit_windows: bool = False,
    shared_context_init: bool = True,
    equivariant_start: bool = False,
    lr_bounds: dict | None = None,
    fit_radius: float | None = None,
    max_pose_step: tuple[float, float] | None = None,
    rate_steps: int = 1,
) -> FieldAdapter:
    """Adapter for the ENF (:class:`enflens.fields.enf.ENFDecoder`).

    Latents: :class:`enflens.geometry.Latents` from :func:`enflens.fields.enf.init_latents`
    (positions on
    a fixed grid, optionally jittered once with ``seed``; orientations 0; windows
    ``cfg.window``), none of which is learned in the outer loop; plus a learned context init of
    shape (D,) shared by all latents (``shared_context_init``) or (N, D), starting at
    ``cfg.context_init`` * N(0, 1). Inner rates: one for positions, one for orientations, one per
    context channel (D,), one for windows (used only when ``fit_windows``).

    Rate scales: the per-image loss is the mean squared error over the sampled pixels, contexts
    start at 0 and a context only sees the pixels near its latent, so context gradients are small;
    the learned context rate settles at about 150-190 from any start in 30-300 (the published 5.0
    belongs to another loss normalisation). Positions settle near 0.5, orientations near 1.2-2.

    Equivariant start: with ``equivariant_start`` every image starts from the template rotated
    by its frame angle (:func:`enflens.fields.frame.equivariant_start`); the template is
    ``cfg.template`` (``"rings"``: :func:`enflens.fields.frame.ring_template`). ``lr_bounds``
    maps latent field names ("positions", "orientations", "contexts", "windows") to
    ``(low, high)`` bounds of the learned inner rates (the ENF reference code clips all rates to
    [1e-6, 10]). ``fit_radius`` (e.g. 1.0) restricts the inner-loop loss to the disk
    ``|x| <= fit_radius``: the square image is not rotation invariant, its corners are (the outer
    loss keeps all pixels). ``max_pose_step = (dp, dtheta)`` bounds one inner step of a latent:
    its position moves at most ``dp`` (grid units; the displacement vector is shortened, which
    commutes with rotations) and its orientation at most ``dtheta`` radians; it keeps large
    learned pose rates from throwing latents across the image early in meta-learning.
    ``rate_steps`` > 1 gives every inner step its own rates (see :class:`FieldAdapter`).
    """
    decoder = ENFDecoder(cfg, rngs=nnx.Rngs(seed))
    graphdef, params, buffers = _split_module(decoder)
    n, d = cfg.num_latents, cfg.latent_dim
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    template = jax.tree.map(lambda a: a[0], init_latents(cfg, 1, key))
    shape = (d,) if shared_context_init else (n, d)
    ctx0 = cfg.context_init * jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32)

    def expand(init: PyTree, batch: int) -> Latents:
        ctx = jnp.broadcast_to(init, (n, d))
        return Latents(
            positions=jnp.broadcast_to(template.positions, (batch, n, 2)),
            orientations=jnp.broadcast_to(template.orientations, (batch, n)),
            contexts=jnp.broadcast_to(ctx, (batch, n, d)),
            windows=jnp.broadcast_to(template.windows, (batch, n)),
        )

    def start(init: PyTree, px: Array, shape: tuple[int, int]) -> Latents:
        return rotated_start(expand(init, px.shape[0]), px.reshape(px.shape[0], *shape, -1))

    def limit(old: Latents, new: Latents) -> Latents:
        dp_max, dt_max = max_pose_step
        d = new.positions - old.positions
        norm = jnp.sqrt(jnp.sum(d * d, -1, keepdims=True) + 1e-24)
        dt = jnp.clip(new.orientations - old.orientations, -dt_max, dt_max)
        return dataclasses.replace(
            new,
            positions=old.positions + d * jnp.minimum(1.0, dp_max / norm),
            orientations=old.orientations + dt,
        )

    bounds = {k: tuple(float(x) for x in v) for k, v in (lr_bounds or {}).items()}
    if set(bounds) - set(_LATENT_FIELDS):
        raise ValueError(f"enf_adapter: unknown lr_bounds keys {sorted(bounds)}")

    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    return FieldAdapter(
        kind="enf",
        model_config={
            **dataclasses.asdict(cfg),
            "seed": seed,
            "lr_positions": lr_positions,
            "lr_orientations": lr_orientations,
            "lr_contexts": lr_contexts,
            "lr_windows": lr_windows,
            "fit_windows": fit_windows,
            "shared_context_init": shared_context_init,
            "equivariant_start": equivariant_start,
            "lr_bounds": {k: list(v) for k, v in bounds.items()} if bounds else None,
            "fit_radius": fit_radius,
            "max_pose_step": None if max_pose_step is None else list(max_pose_step),
            **_rate_steps_entry(rate_steps),
        },
        graphdef=graphdef,
        params=params,
        buffers=buffers,
        latent_init=ctx0,
        lr_init=Latents(
            positions=f32(lr_positions),
            orientations=f32(lr_orientations),
            contexts=jnp.full((d,), lr_contexts, jnp.float32),
            windows=f32(lr_windows),
        ),
        adapt=Latents(positions=True, orientations=True, contexts=True, windows=fit_windows),
        expand=expand,
        out_channels=cfg.out_channels,
        start=start if equivariant_start else None,
        lr_bounds=Latents(**{f: bounds.get(f) for f in _LATENT_FIELDS}) if bounds else None,
        fit_radius=fit_radius,
        limit_step=None if max_pose_step is None else limit,
        rate_steps=rate_steps,
    )


_LATENT_FIELDS = ("positions", "orientations", "contexts", "windows")


_ADAPTER_KEYS = {
    "cnf": ("seed", "lr_init", "rate_steps"),
    "enf": (
        "seed",
        "lr_positions",
        "lr_orientations",
        "lr_contexts",
        "lr_windows",
        "fit_windows",
        "shared_context_init",
        "equivariant_start",
        "lr_bounds",
        "fit_radius",
        "max_pose_step",
        "rate_steps",
    ),
}


def make_adapter(kind: str, model_config: dict) -> FieldAdapter:
    """Rebuild an adapter from its ``kind`` and ``model_config`` (as stored in checkpoints)."""
    if kind not in _ADAPTER_KEYS:
        raise ValueError(f"make_adapter: unknown model kind {kind!r} (known: cnf, enf)")
    conf = dict(model_config)
    extra = {k: conf.pop(k) for k in _ADAPTER_KEYS[kind] if k in conf}
    if kind == "cnf":
        return cnf_adapter(from_dict(CNFConfig, conf, "CNF model_config"), **extra)
    return enf_adapter(from_dict(ENFConfig, conf, "ENF model_config"), **extra)


def latent_floats(adapter: FieldAdapter) -> int:
    """Number of floats of one image's latent that the inner loop fits."""
    lat = adapter.expand(adapter.latent_init, 1)
    leaves = jax.tree.leaves(lat)
    flags = jax.tree.leaves(adapter.adapt)
    return int(sum(np.prod(x.shape) for x, f in zip(leaves, flags, strict=True) if f))


def save_trained(
    path: str | Path,
    adapter: FieldAdapter,
    params: dict,
    image_shape: tuple[int, ...],
    extra: dict | None = None,
) -> str:
    """Save a trained model (decoder, buffers, inner rates, latent init) as an orbax directory.

    Args:
        image_shape: (H, W, C) of the training images (checked when encoding).
        extra: more metadata (e.g. the MetaConfig as a dict, final validation PSNR).

    Returns:
        The content hash that latent stores record.
    """
    meta = {
        "kind": adapter.kind,
        "model_config": adapter.model_config,
        "image_shape": list(image_shape),
        **(extra or {}),
    }
    return save_decoder(path, params, meta)


def load_trained(path: str | Path) -> tuple[FieldAdapter, dict, dict]:
    """Load :func:`save_trained` output: (adapter, params, meta) (``meta["hash"]`` included)."""
    meta = read_decoder_meta(path)
    adapter = make_adapter(meta["kind"], meta["model_config"])
    params = load_decoder(path, adapter.init_params())
    return adapter, params, meta

