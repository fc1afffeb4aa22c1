"""The Meta-SGD outer loop: settings, state, optimiser and :func:`meta_train`.

The outer loop updates the decoder, the learned inner rates and the learned initialisation with
optax Adam on the MSE after the K inner steps (:mod:`enflens.metalearn.inner`), measured on an
independently drawn pixel subset. Gradients flow through the inner loop (second order) unless
``first_order=True``, which stops the gradient of the inner gradients (the latents still depend
on the rates and the initialisation, so those keep a gradient).

A run is defined by its step count ``MetaConfig.num_steps`` (never by wall time). Data order and
pixel subsets are pure functions of (seed, step) (:func:`batch_indices`, ``fold_in(key, step)``),
so the same config gives the same decoder on any machine, and a run resumed from a checkpoint
reproduces an uninterrupted run bit for bit.

Units: images are float32 in [0, 1]; PSNR in dB with peak value 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from enflens import parallel
from enflens.checkpoint import CheckpointManager
from enflens.fields.adapters import FieldAdapter
from enflens.grid import as_nhwc, image_to_pixels, make_grid
from enflens.metalearn.encode import psnr_per_step
from enflens.metalearn.inner import SAMPLINGS, inner_loop, pixel_subset

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Meta-learning (outer loop) and fitting (inner loop) settings.

    Defaults are what trained the ENF fastest on 64x64 Model II images on a 2-core CPU
    (bench/fitting.py; ENFConfig(hidden=64, k_nearest=4)): second order, 256 stratified pixels
    per inner step, 512 for the outer loss, batch 8, Adam 1e-2 (the ENF wanted a high outer
    rate: 1e-3 < 3e-3 < 6e-3 < 1e-2 in validation PSNR at equal time). The SIREN-based CNF needs a
    much lower outer rate (3e-4; it collapses at 3e-3).

    Attributes:
        inner_steps: K inner gradient steps per image.
        inner_pixels: pixels sampled (without replacement) per image at each inner step;
            None uses all pixels.
        outer_pixels: pixels per image of the outer (meta) loss; None uses all pixels.
        sampling: how pixel subsets are drawn: "stratified" (one random pixel in every block of
            H W / pixels pixels; low variance) or "random" (uniform without replacement).
        batch_size: images per outer step.
        num_steps: outer steps of the run (sets the learning-rate schedule).
        outer_lr: peak Adam learning rate of the decoder and the latent init.
        lr_lr: Adam learning rate of the log of the Meta-SGD inner rates (a relative change of
            about ``lr_lr`` per step).
        warmup_steps: linear warm-up of the outer learning rate, then cosine decay.
        final_lr_fraction: the cosine decay ends at ``outer_lr * final_lr_fraction``.
        grad_clip: global-norm clipping of the outer gradient (0 disables).
        first_order: stop gradients through the inner gradients (cheaper, first order).
        learn_init: learn the shared latent initialisation (else it stays fixed).
        seed: seeds data order, pixel subsets and nothing else (the decoder init seed is the
            adapter's).
        checkpoint_every: save a checkpoint every this many steps (0: only at the end).
        eval_every: validation PSNR every this many steps (0: only at the end).
        eval_images: validation images used for the periodic evaluation.
    """

    inner_steps: int = 3
    inner_pixels: int | None = 256
    outer_pixels: int | None = 512
    sampling: str = "stratified"
    batch_size: int = 8
    num_steps: int = 4000
    outer_lr: float = 1e-2
    lr_lr: float = 1e-2
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0
    first_order: bool = False
    learn_init: bool = True
    seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 250
    eval_images: int = 128

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"MetaConfig.inner_steps must be >= 0, got {self.inner_steps}")
        for name in ("batch_size", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"MetaConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_pixels", "outer_pixels"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"MetaConfig.{name} must be None or >= 1, got {v}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"MetaConfig.sampling={self.sampling!r}; expected one of {SAMPLINGS}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MetaState:
    """Everything a meta-learning run needs to continue.

    Attributes:
        step: () int32, outer steps done.
        params: dict(decoder, buffers, log_lrs, init) -- see :meth:`FieldAdapter.init_params`.
        opt_state: optax state of the outer optimiser.
        key: (2,) uint32 base PRNG key; step s uses ``fold_in(key, s)``.
    """

    step: Array
    params: dict
    opt_state: PyTree
    key: Array


def make_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
    """Outer optimiser: clip, then Adam with warm-up + cosine decay (decoder, init) and a
    constant-rate Adam for the inner learning rates; buffers are frozen."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.outer_lr,
        warmup_steps=max(1, min(cfg.warmup_steps, cfg.num_steps - 1)),
        decay_steps=max(cfg.num_steps, 2),
        end_value=cfg.outer_lr * cfg.final_lr_fraction,
    )
    labels = {
        "decoder": "model",
        "buffers": "frozen",
        "log_lrs": "lrs",
        "init": "model" if cfg.learn_init else "frozen",
    }
    parts = {
        "model": optax.adam(schedule),
        "lrs": optax.adam(cfg.lr_lr),
        "frozen": optax.set_to_zero(),
    }

    def label_fn(params: dict) -> dict:
        return {k: jax.tree.map(lambda _, lab=labels[k]: lab, v) for k, v in params.items()}

    tx = optax.multi_transform(parts, label_fn)
    if cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


def init_state(adapter: FieldAdapter, cfg: MetaConfig) -> MetaState:
    """Fresh meta-learning state: the adapter's initial parameters, step 0."""
    params = adapter.init_params()
    return MetaState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(cfg).init(params),
        key=jax.random.PRNGKey(cfg.seed),
    )


def batch_indices(seed: int, step: int, num_images: int, batch_size: int) -> np.ndarray:
    """Image indices of outer step ``step``: a pure function of (seed, step).

    Epoch e = step // (num_images // batch_size) uses the permutation
    ``default_rng([seed, e]).permutation(num_images)``; incomplete last batches are dropped.
    """
    if num_images < batch_size:
        raise ValueError(f"batch_indices: {num_images} images < batch_size {batch_size}")
    per_epoch = num_images // batch_size
    epoch, pos = divmod(int(step), per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_images)
    return perm[pos * batch_size : (pos + 1) * batch_size]


@functools.lru_cache(maxsize=16)
def _train_step_fn(
    adapter: FieldAdapter, cfg: MetaConfig, height: int, width: int, mesh: Any = None
):
    """The jitted outer step; with a data ``mesh`` the pixel batch (B, HW, C) is split over its
    devices and the state is replicated (the gradient mean becomes an all-reduce)."""
    coords = make_grid(height, width)
    tx = make_optimizer(cfg)

    def outer_loss(params: dict, px: Array, key: Array) -> Array:
        k_in, k_out = jax.random.split(key)
        lat0 = adapter.start_latents(params, px, (height, width))
        lat = inner_loop(
            adapter, params, lat0, coords, px, k_in, cfg.inner_steps, cfg.inner_pixels,
            cfg.first_order, sampling=cfg.sampling, image_shape=(height, width),
        )  # fmt: skip
        c, t = pixel_subset(k_out, coords, px, cfg.outer_pixels, cfg.sampling, (height, width))
        return jnp.mean((adapter.decode(params, lat, c) - t) ** 2)

    def step(state: MetaState, px: Array) -> tuple[MetaState, Array]:
        key = jax.random.fold_in(state.key, state.step)
        loss, grads = jax.value_and_grad(outer_loss)(state.params, px, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = adapter.clip_log_lrs(optax.apply_updates(state.params, updates))
        return MetaState(state.step + 1, params, opt_state, state.key), loss

    if mesh is None:
        return jax.jit(step)
    rep = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(rep, parallel.batch_sharding(mesh)), out_shardings=rep)


def train_step(
    adapter: FieldAdapter, cfg: MetaConfig, state: MetaState, images: Array
) -> tuple[MetaState, Array]:
    """One jitted outer step on a batch of images (B, H, W[, C]); returns (state, outer MSE)."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
        images = images[..., None]
    _, h, w, c = images.shape
    if c != adapter.out_channels:
        raise ValueError(
            f"train_step: images have {c} channels, the decoder outputs {adapter.out_channels}"
        )
    return _train_step_fn(adapter, _step_key(cfg), h, w)(state, image_to_pixels(images))


def _step_key(cfg: MetaConfig) -> MetaConfig:
    """The config with the fields that do not change the compiled step zeroed (cache key)."""
    return dataclasses.replace(cfg, seed=0, checkpoint_every=0, eval_every=0, eval_images=0)


@dataclasses.dataclass
class MetaResult:
    """Outcome of :func:`meta_train`: final state and the logged history (list of dicts)."""

    state: MetaState
    history: list[dict]


def meta_train(
    adapter: FieldAdapter,
    train_images: Any,
    cfg: MetaConfig,
    *,
    val_images: Any = None,
    state: MetaState | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    stop_at: int | None = None,
    progress: bool = True,
    log_every: int = 50,
    mesh: Any = None,
) -> MetaResult:
    """Meta-learn the decoder, inner rates and latent init on ``train_images``.

    Args:
        adapter: the model (:func:`enf_adapter`, :func:`cnf_adapter`).
        train_images: (n, H, W[, C]) float32 in [0, 1].
        cfg: settings; runs until ``cfg.num_steps`` outer steps are done.
        val_images: optional (m, H, W[, C]); the first ``cfg.eval_images`` are fitted every
            ``cfg.eval_every`` steps and their PSNR after 0..K inner steps is logged.
        state: start from this state (default: fresh, or the latest checkpoint when resuming).
        checkpoint_dir: orbax checkpoints every ``cfg.checkpoint_every`` steps and at the end.
        resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one.
        stop_at: stop after this step (simulates an interruption; checkpoint saved there).
        progress: show a tqdm bar.
        log_every: record the (median) outer loss every this many steps.
        mesh: the data mesh (:func:`enflens.parallel.data_mesh`; default: all devices of all
            processes). Each global batch of ``cfg.batch_size`` images is split over its
            devices, which must divide it; each process transfers only its own rows.

    Returns:
        :class:`MetaResult` with the final state and history entries
        ``{"step", "loss", "train_psnr", "seconds"}`` and ``{"step", "val_psnr_per_step"}``.
    """
    images = as_nhwc(train_images, "meta_train(train_images)")
    if images.shape[-1] != adapter.out_channels:
        raise ValueError(
            f"meta_train: images have {images.shape[-1]} channels, the decoder outputs "
            f"{adapter.out_channels}"
        )
    val = None if val_images is None else as_nhwc(val_images, "meta_train(val_images)")
    n, h, w, _ = images.shape
    manager = None  # process 0 writes the checkpoints and restores them for every process
    if checkpoint_dir is not None and parallel.is_main_process():
        manager = CheckpointManager(checkpoint_dir, save_every=cfg.checkpoint_every)
    if state is None:
        state = init_state(adapter, cfg)
        if manager is not None and resume and manager.latest_step() is not None:
            state = manager.restore(state)
        if checkpoint_dir is not None and resume:
            state = parallel.broadcast_from_main(state)
    mesh = parallel.data_mesh() if mesh is None else mesh
    parallel.check_batch(cfg.batch_size, mesh, "MetaConfig.batch_size")
    state = parallel.replicate(state, mesh)
    step_fn = _train_step_fn(adapter, _step_key(cfg), h, w, mesh)
    end = cfg.num_steps if stop_at is None else min(stop_at, cfg.num_steps)
    start = int(state.step)
    history: list[dict] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(start, end), disable=not progress, desc=f"meta-train {adapter.kind}")
    for s in bar:
        idx = parallel.local_rows(np.sort(batch_indices(cfg.seed, s, n, cfg.batch_size)), mesh)
        px = image_to_pixels(np.asarray(images[idx]))
        state, loss = step_fn(state, parallel.shard_batch(px, mesh, cfg.batch_size))
        losses.append(float(loss))
        done = s + 1
        if done % log_every == 0 or done == end:
            med = float(np.median(losses))
            history.append(
                {
                    "step": done,
                    "loss": med,
                    "train_psnr": -10 * math.log10(max(med, 1e-12)),
                    "seconds": time.perf_counter() - t0,
                }
            )
            bar.set_postfix(loss=f"{med:.2e}", psnr=f"{history[-1]['train_psnr']:.1f}")
            losses = []
        if val is not None and (
            (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.num_steps
        ):
            per_step = psnr_per_step(adapter, state.params, val[: cfg.eval_images], cfg)
            history.append({"step": done, "val_psnr_per_step": per_step.mean(1).tolist()})
        if manager is not None and (manager.should_save(done) or done == end):
            manager.save(done, parallel.to_host(state))
    if manager is not None:
        manager.close()
    return MetaResult(state=state, history=history)


def history_table(history: list[dict]) -> dict[str, np.ndarray]:
    """Split a :func:`enflens.outer.meta_train` history into arrays.

    Returns:
        dict with ``step``, ``loss``, ``train_psnr``, ``seconds`` (training-loss entries) and
        ``val_step``, ``val_seconds`` (wall time interpolated from the loss entries),
        ``val_psnr`` ((n_val_points, K+1) dB).
    """
    tr = [h for h in history if "loss" in h]
    va = [h for h in history if "val_psnr_per_step" in h]
    step = np.array([h["step"] for h in tr], float)
    sec = np.array([h["seconds"] for h in tr], float)
    vstep = np.array([h["step"] for h in va], float)
    return {
        "step": step,
        "loss": np.array([h["loss"] for h in tr], float),
        "train_psnr": np.array([h["train_psnr"] for h in tr], float),
        "seconds": sec,
        "val_step": vstep,
        "val_seconds": np.interp(vstep, step, sec) if len(step) else vstep,
        "val_psnr": np.array([h["val_psnr_per_step"] for h in va], float),
    }
