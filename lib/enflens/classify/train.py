"""Generic supervised trainer for the NNX classifiers, augmentations, prediction, checkpoints.

Data are host arrays: inputs ``x`` are a numpy array (images (n, H, W), CNF latents (n, D)) or a
pytree of arrays with a common leading axis (e.g. a :class:`enflens.geometry.Latents` with
positions (n, N, 2) ...), labels ``y`` are integers (n,) in {0, 1, 2}. Minibatches are taken by
index arrays and moved to the device per step.

:func:`fit` trains with AdamW (decoupled weight decay on weight matrices / kernels only) on an
optax warmup-cosine learning-rate schedule over exactly ``TrainConfig.steps`` optimiser steps,
validates every ``eval_every`` steps, keeps the state with the best validation accuracy (ties
broken by lower validation loss), optionally stops after ``patience`` validations without
improvement, and loads the best state back into the model. The test split is never seen. As in
the flax examples (``examples/mnist/train.py``), :func:`train_step` and :func:`eval_step` are
module-level ``nnx.jit`` functions compiled once per configuration, and the running metrics
(``nnx.MultiMetric``) stay on the device until they are read once per validation. Nothing reads
the clock to decide how much to train: the same seed and config give the same model anywhere.

Augmentations are jax-traceable functions ``augment(key, x_batch) -> x_batch`` run inside the
jitted step: :func:`latent_augmentation` (Gaussian pose/context noise, optional random global
SE(2) transform via ``Latents.transform``) and :func:`image_augmentation` (random continuous
rotation, by Fourier shears, over the angle range of torchvision's ``RandomRotation(180)`` in
the published runs).

Checkpoints (:func:`save_checkpoint` / :func:`restore_checkpoint`) are orbax directories of
the full model state (parameters and BatchNorm statistics) with each entry's sha256
(:func:`enflens.checkpoint.with_digests`), checked on restore; orbax writes them atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from enflens import parallel
from enflens.checkpoint import DIGESTS, check_digests, standard_checkpointer, with_digests
from enflens.geometry import Latents, random_se2
from enflens.grid import ROTATION_METHODS, rotate_images
from enflens.integrity import IntegrityError
from enflens.io import write_json
from enflens.nn import count_params

Array = jax.Array
PyTree = Any
Augment = Callable[[Array, PyTree], PyTree]


# ----------------------------------------------------------------------------- data helpers


def num_examples(x: PyTree) -> int:
    """Leading-axis length shared by all leaves of ``x``; ValueError if they disagree."""
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("inputs contain no arrays")
    sizes = {int(np.shape(a)[0]) for a in leaves}
    if len(sizes) != 1:
        raise ValueError(f"input arrays disagree on the number of examples: {sorted(sizes)}")
    return sizes.pop()


def take(x: PyTree, idx: np.ndarray) -> PyTree:
    """Rows ``idx`` of every leaf of ``x`` (host numpy indexing)."""
    return jax.tree.map(lambda a: np.asarray(a)[idx], x)


def _check_split(x: PyTree, y: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    n = num_examples(x)
    if y.shape != (n,):
        raise ValueError(f"{name}: labels must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got {y.min()}..{y.max()}")
    return y.astype(np.int32)


# ----------------------------------------------------------------------------- augmentations


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LatentAugmentation:
    """Augmentation of a batched Latents (B, N, ...); see :func:`latent_augmentation`.

    A pytree: the noise levels are traced, so one compiled training step serves every level;
    ``random_transform`` is static.
    """

    position_noise: float = 0.0
    orientation_noise: float = 0.0
    context_noise: float = 0.0
    max_translation: float = 0.0
    random_transform: bool = dataclasses.field(default=False, metadata={"static": True})

    def __call__(self, key: Array, z: Latents) -> Latents:
        kp, ko, kc, kg = jax.random.split(key, 4)
        pos, ori, ctx = z.positions, z.orientations, z.contexts
        pos = pos + self.position_noise * jax.random.normal(kp, pos.shape, pos.dtype)
        ori = ori + self.orientation_noise * jax.random.normal(ko, ori.shape, ori.dtype)
        ctx = ctx + self.context_noise * jax.random.normal(kc, ctx.shape, ctx.dtype)
        z = dataclasses.replace(z, positions=pos, orientations=ori, contexts=ctx)
        if self.random_transform:
            z = z.transform(random_se2(kg, pos.shape[:-2], max_translation=self.max_translation))
        return z


def latent_augmentation(
    *,
    position_noise: float = 0.0,
    orientation_noise: float = 0.0,
    context_noise: float = 0.0,
    random_transform: bool = False,
    max_translation: float = 0.0,
) -> LatentAugmentation:
    """Augmentation of a batched Latents (B, N, ...).

    Args:
        position_noise: std of Gaussian noise added to positions (image units, [-1, 1]^2).
        orientation_noise: std of Gaussian noise added to orientations (radians).
        context_noise: std of Gaussian noise added to contexts.
        random_transform: apply an independent random global SE(2) element per example
            with ``Latents.transform``: angle uniform in [0, 2 pi), translation uniform in
            [-max_translation, max_translation]^2.
        max_translation: see ``random_transform``.

    Returns:
        ``augment(key, latents) -> latents``, jax-traceable (a :class:`LatentAugmentation`).
    """
    if min(position_noise, orientation_noise, context_noise, max_translation) < 0:
        raise ValueError("latent_augmentation: noise levels and max_translation must be >= 0")
    return LatentAugmentation(
        float(position_noise), float(orientation_noise), float(context_noise),
        float(max_translation), bool(random_transform),
    )  # fmt: skip


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
    """Random rotation of each image by an angle uniform in [-max_angle, max_angle] (radians);
    see :func:`image_augmentation`. A pytree (``max_angle`` is traced, ``method`` static)."""

    max_angle: float = math.pi
    method: str = dataclasses.field(default="fourier", metadata={"static": True})

    def __call__(self, key: Array, images: Array) -> Array:
        a = self.max_angle
        angles = jax.random.uniform(key, (images.shape[0],), jnp.float32, -a, a)
        return rotate_images(images, angles, method=self.method)


def image_augmentation(max_angle: float = math.pi, method: str = "fourier") -> ImageAugmentation:
    """Random rotation of each image by an angle uniform in [-max_angle, max_angle] (radians).

    :func:`enflens.grid.rotate_images` with zero fill, by default the Fourier rotation, which
    keeps the pixel noise of the observation (a bilinear rotation smooths it, so that unrotated
    test images would look unlike every training image). ``max_angle = pi`` matches
    torchvision's ``RandomRotation(180)``. Returns ``augment(key, images) -> images``.
    """
    if method not in ROTATION_METHODS:
        raise ValueError(
            f"image_augmentation: method must be one of {ROTATION_METHODS}, got {method!r}"
        )
    return ImageAugmentation(float(max_angle), method)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoiseAugmentation:
    """Gaussian noise of standard deviation ``std`` added to every input (e.g. CNF latent
    vectors (B, d)). A pytree (``std`` is traced).

    >>> NoiseAugmentation(0.0)(jax.random.key(0), jnp.ones(3)).tolist()
    [1.0, 1.0, 1.0]
    """

    std: float = 0.0

    def __call__(self, key: Array, x: Array) -> Array:
        return x + self.std * jax.random.normal(key, x.shape, x.dtype)


# ----------------------------------------------------------------------------- prediction


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef: Any, states: tuple[Any, ...], x: PyTree) -> Array:
    return nnx.merge(graphdef, *states)(x)


def _eval_split(model: nnx.Module) -> tuple[Any, tuple[Any]]:
    """(graphdef, (state,)) of an evaluation-mode view of ``model`` (model itself untouched)."""
    view = nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)
    graphdef, state = nnx.split(view)
    return graphdef, (state,)


def _predict_split(
    graphdef: Any, states: tuple[Any, ...], x: PyTree, batch_size: int
) -> np.ndarray:
    n = num_examples(x)
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        pad = batch_size - len(idx) if n > batch_size else 0
        xb = take(x, np.concatenate([idx, np.full(pad, idx[-1])]) if pad else idx)
        out.append(np.asarray(_apply(graphdef, states, xb))[: len(idx)])
    return np.concatenate(out, 0) if out else np.zeros((0, 0), np.float32)


def predict(
    model: nnx.Module, x: PyTree, *, batch_size: int = 256, probabilities: bool = False
) -> np.ndarray:
    """Logits (or softmax probabilities) of ``model`` on inputs ``x`` in evaluation mode.

    Args:
        model: NNX classifier (BatchNorm uses running statistics; the model is not modified).
        x: inputs with leading axis n (array or pytree, e.g. batched Latents).
        batch_size: examples per jitted call (the last batch is padded, so one compilation).
        probabilities: return softmax probabilities instead of logits.

    Returns:
        (n, num_classes) float32 numpy array.
    """
    graphdef, states = _eval_split(model)
    logits = _predict_split(graphdef, states, x, batch_size)
    if probabilities:
        return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    return logits


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Trainer settings. A run is defined by its step count, never by wall time.

    Attributes:
        steps: optimiser steps of the run (also the length of the warmup-cosine schedule).
        eval_every: steps between two validations (the last step is always validated).
        batch_size: training minibatch size (a training set smaller than this is one full
            batch). Batches walk through a fresh permutation of the training set per epoch;
            the incomplete last batch of an epoch is dropped.
        learning_rate: peak learning rate of the warmup-cosine schedule.
        warmup_fraction: fraction of ``steps`` spent in linear warmup from 0.
        end_lr_fraction: final learning rate as a fraction of the peak.
        weight_decay: AdamW decoupled weight decay (applied to arrays with ndim >= 2 only).
        grad_clip: global-norm gradient clipping (None = off).
        label_smoothing: label smoothing of the training cross-entropy.
        patience: stop after this many validations without a better validation accuracy
            (None = never).
        seed: seeds shuffling and augmentation randomness (initialisation is the model's).
        eval_batch_size: batch size for validation / prediction.
        num_classes: number of classes.
        progress: show a tqdm bar over the steps.
        checkpoint_dir: if set, the best state is saved there (orbax) whenever it improves,
            with ``history.json`` beside it at the end.
    """

    steps: int = 1000
    eval_every: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    end_lr_fraction: float = 0.01
    weight_decay: float = 1e-4
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    patience: int | None = None
    seed: int = 0
    eval_batch_size: int = 256
    num_classes: int = 3
    progress: bool = True
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be None or >= 1, got {self.patience}")


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """The warmup-cosine learning-rate schedule over exactly ``cfg.steps`` steps.

    >>> s = make_schedule(TrainConfig(steps=100, learning_rate=1.0, warmup_fraction=0.1))
    >>> float(s(0)), float(s(10)), round(float(s(100)), 6)
    (0.0, 1.0, 0.01)
    """
    warmup = int(round(cfg.warmup_fraction * cfg.steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )


@functools.lru_cache(maxsize=64)
def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW on :func:`make_schedule` (+ optional global-norm clipping). Cached: equal configs
    give the same transformation, so runs with equal settings share the compiled step."""
    adamw = optax.adamw(make_schedule(cfg), weight_decay=cfg.weight_decay, mask=_decay_mask)
    if cfg.grad_clip:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def make_metrics() -> nnx.MultiMetric:
    """Device-side running ``loss`` (mean cross-entropy) and ``accuracy``."""
    return nnx.MultiMetric(loss=nnx.metrics.Average("loss"), accuracy=nnx.metrics.Accuracy())


@nnx.jit(static_argnames=("label_smoothing",))
def train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    metrics: nnx.MultiMetric,
    x: PyTree,
    y: Array,
    key: Array,
    augment: Augment | None = None,
    label_smoothing: float = 0.0,
) -> None:
    """One optimiser step on a batch, in place: augment ``x`` with ``key`` (inside the jit),
    cross-entropy (with label smoothing) of the logits (B, C) against labels ``y`` (B,), update
    ``model`` through ``optimizer`` and accumulate loss and accuracy in ``metrics``.

    ``model`` must be in training mode (e.g. an ``nnx.view`` with ``use_running_average=False``).
    ``augment`` is a pytree (:class:`LatentAugmentation`, :class:`ImageAugmentation`,
    :class:`NoiseAugmentation`, or None) whose levels are traced, ``label_smoothing`` is static:
    one compilation per model, batch shape, optimiser and augmentation kind.
    """
    if augment is not None:
        x = augment(key, x)

    def loss_fn(model):
        logits = model(x)
        targets = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics.update(loss=loss, logits=logits, labels=y)


@nnx.jit
def eval_step(
    model: nnx.Module, metrics: nnx.MultiMetric, x: PyTree, y: Array, mask: Array
) -> None:
    """Accumulate the cross-entropy and accuracy of ``model`` (evaluation mode) on a batch in
    ``metrics``; ``mask`` (B,) bool drops padding examples."""
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    metrics.update(loss=loss, logits=logits, labels=y, mask=mask)


def _exact_mean(avg: nnx.metrics.Average) -> float:
    """total / count of an Average in float64 (the accuracy as a fraction of examples)."""
    count = float(avg.count[...])
    return float(avg.total[...]) / count if count else math.nan


def evaluate_split(
    model: nnx.Module, x: PyTree, y: np.ndarray, batch_size: int = 256, mesh: Any = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` (evaluation mode) on a split, with the
    metrics accumulated on the device and read once. The last batch is padded and masked, so
    one compilation per batch shape.

    With a data ``mesh`` (:func:`enflens.parallel.data_mesh`) each batch is split over its
    devices; the batch is rounded up to a multiple of the device count (the padding masked),
    and ``model`` should be replicated on the mesh (as :func:`fit` leaves it)."""
    n = num_examples(x)
    bs = min(batch_size, n)
    d = 1 if mesh is None else parallel.num_devices(mesh)
    bs = -(-bs // d) * d
    metrics = make_metrics()
    if mesh is not None:
        nnx.update(metrics, parallel.replicate(nnx.state(metrics), mesh))
    for start in range(0, n, bs):
        idx = np.arange(start, min(start + bs, n))
        mask = np.ones(bs, bool)
        if len(idx) < bs:
            mask[len(idx) :] = False
            idx = np.concatenate([idx, np.full(bs - len(idx), idx[-1])])
        batch = (take(x, idx), np.asarray(y)[idx], mask)
        if mesh is not None:
            part = parallel.local_slice(bs, mesh)
            batch = parallel.shard_batch(jax.tree.map(lambda a, p=part: a[p], batch), mesh, bs)
        eval_step(model, metrics, *batch)
    return _exact_mean(metrics.accuracy), _exact_mean(metrics.loss)


def _eval_view(model: nnx.Module) -> nnx.Module:
    return nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)


def _train_view(model: nnx.Module) -> nnx.Module:
    return nnx.view(model, use_running_average=False, deterministic=False, raise_if_not_found=False)


def _pure_state(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model))


def _load_pure_state(model: nnx.Module, pure: dict) -> None:
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Training example indices of every step, (steps, B): a fresh permutation of ``range(n)``
    per epoch (numpy ``default_rng(seed)``), cut into ``n // B`` batches of ``B = min(batch_size,
    n)``; a pure function of its arguments.

    >>> batch_indices(4, 2, 3, seed=0).shape
    (3, 2)
    """
    bs = min(batch_size, n)
    per_epoch = n // bs
    rng = np.random.default_rng(seed)
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n)[: per_epoch * bs].reshape(per_epoch, bs) for _ in range(epochs)]
    return np.concatenate(rows, 0)[:steps]


def fit(
    model: nnx.Module,
    train_data: tuple[PyTree, np.ndarray],
    val_data: tuple[PyTree, np.ndarray],
    cfg: TrainConfig | None = None,
    *,
    augment: Augment | None = None,
    mesh: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``model`` in place for ``cfg.steps`` steps; select the best validation state.

    The module-level :func:`train_step` / :func:`eval_step` are compiled once per
    configuration; training loss and accuracy stay on the device and are read once per
    validation (every ``cfg.eval_every`` steps and after the last step). The state with the best
    validation accuracy (ties: lower validation loss) is kept; with ``cfg.patience`` set,
    training stops after that many validations without improvement. The test split is never
    seen. Data order and augmentation keys are pure functions of (seed, step).

    Args:
        model: NNX classifier mapping a batch of inputs to logits (B, num_classes).
        train_data: (x_train, y_train) -- inputs with leading axis n, integer labels (n,).
        val_data: (x_val, y_val), used for model selection and early stopping only.
        cfg: :class:`TrainConfig` (defaults if None); ``overrides`` replace its fields.
        augment: optional augmentation pytree, ``augment(key, x_batch) -> x_batch``, applied
            to training batches inside the jitted step (:class:`LatentAugmentation`,
            :class:`ImageAugmentation`, :class:`NoiseAugmentation`).
        mesh: the data mesh (:func:`enflens.parallel.data_mesh`; default: all devices of all
            processes). Every batch is split over its devices, which must divide the training
            batch ``min(cfg.batch_size, n_train)``; the model's state is replicated on it (and
            stays there). Only process 0 writes ``cfg.checkpoint_dir``.

    Returns:
        History dict: per validation ``step`` (steps done), ``train_loss``, ``train_acc``
        (running means over the steps since the previous validation, augmented batches),
        ``val_loss``, ``val_acc``, ``lr`` (at that step), ``seconds`` (wall time since the
        start, a timing only); and ``best_step``, ``best_val_acc``, ``best_val_loss``,
        ``evaluations``, ``steps`` (done), ``epochs`` (steps x batch / n_train),
        ``stop_reason`` ("steps" or "patience"), ``num_params``, ``train_seconds`` (wall time
        incl. compilation and validation, a timing only). On return the model holds the best
        state and is in evaluation mode.
    """
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    x_tr, y_tr = train_data
    x_va, y_va = val_data
    y_tr = _check_split(x_tr, y_tr, cfg.num_classes, "train_data")
    y_va = _check_split(x_va, y_va, cfg.num_classes, "val_data")
    n_tr = num_examples(x_tr)
    if n_tr == 0 or num_examples(x_va) == 0:
        raise ValueError("fit: train and validation splits must be non-empty")
    order = batch_indices(n_tr, cfg.batch_size, cfg.steps, cfg.seed)
    bs = order.shape[1]
    mesh = parallel.data_mesh() if mesh is None else mesh
    parallel.check_batch(bs, mesh, "fit: the training batch min(TrainConfig.batch_size, n_train)")
    part = parallel.local_slice(bs, mesh)
    schedule = make_schedule(cfg)
    main = parallel.is_main_process()

    t0 = time.perf_counter()
    nnx.update(model, parallel.replicate(nnx.state(model), mesh))
    train_model, eval_model = _train_view(model), _eval_view(model)
    optimizer = nnx.Optimizer(train_model, make_optimizer(cfg), wrt=nnx.Param)
    metrics = make_metrics()
    for obj in (optimizer, metrics):
        nnx.update(obj, parallel.replicate(nnx.state(obj), mesh))
    key = jax.random.key(cfg.seed)
    names = ("step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
    hist: dict[str, Any] = {k: [] for k in names}
    best, best_state, best_step, since_best = (-1.0, math.inf), None, 0, 0
    stop_reason = "steps"
    bar = tqdm(range(cfg.steps), disable=not cfg.progress, desc="train", leave=False)
    for step in bar:
        idx = order[step][part]  # this process's rows of the global batch
        xb, yb = parallel.shard_batch((take(x_tr, idx), y_tr[idx]), mesh, bs)
        train_step(
            train_model, optimizer, metrics, xb, yb,
            parallel.replicate(jax.random.fold_in(key, step), mesh), augment=augment,
            label_smoothing=cfg.label_smoothing,
        )  # fmt: skip
        done = step + 1
        if done % cfg.eval_every and done != cfg.steps:
            continue
        train = metrics.compute()
        metrics.reset()
        val_acc, val_loss = evaluate_split(eval_model, x_va, y_va, cfg.eval_batch_size, mesh)
        row = (done, float(train["loss"]), float(train["accuracy"]), val_loss, val_acc,
               float(schedule(done)), time.perf_counter() - t0)  # fmt: skip
        for k, v in zip(names, row, strict=True):
            hist[k].append(v)
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_step, since_best = (val_acc, val_loss), done, 0
            best_state = _pure_state(model)
            if cfg.checkpoint_dir is not None and main:
                save_checkpoint(model, cfg.checkpoint_dir)
        else:
            since_best += 1
        bar.set_postfix(loss=f"{row[1]:.3f}", val_acc=f"{val_acc:.3f}")
        if cfg.patience is not None and since_best >= cfg.patience:
            stop_reason = "patience"
            break
    bar.close()
    _load_pure_state(model, best_state)
    model.eval()
    steps = hist["step"][-1]
    hist.update(
        best_step=best_step,
        best_val_acc=best[0],
        best_val_loss=best[1],
        evaluations=len(hist["step"]),
        steps=steps,
        epochs=steps * min(cfg.batch_size, n_tr) / n_tr,
        stop_reason=stop_reason,
        num_params=count_params(model),
        train_seconds=time.perf_counter() - t0,
    )
    if cfg.checkpoint_dir is not None and main:
        write_json(Path(cfg.checkpoint_dir) / "history.json", hist)
    return hist


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nnx.Module, directory: str | Path) -> Path:
    """Save the full state of ``model`` (params + BatchNorm statistics) with orbax, with each
    entry's sha256 (:func:`enflens.checkpoint.with_digests`) checked on restore.

    Writes ``<directory>/state`` (orbax; atomic: written to a temporary folder and renamed),
    replacing any previous checkpoint there. Returns that path.
    """
    path = Path(directory).absolute() / "state"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = parallel.to_host(nnx.to_pure_dict(nnx.state(model)))
    with standard_checkpointer() as ckptr:
        ckptr.save(path, with_digests(state), force=True)
    return path


def restore_checkpoint(model: nnx.Module, directory: str | Path) -> nnx.Module:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (same architecture).

    Raises FileNotFoundError if ``<directory>/state`` does not exist, IntegrityError (naming
    the checkpoint and the entry) if it is unreadable, of another architecture or corrupted.
    Checkpoints saved without digests restore with a warning. Returns ``model``.
    """
    path = Path(directory).absolute() / "state"
    if not path.is_dir():
        raise FileNotFoundError(f"restore_checkpoint: no checkpoint at {path}")
    state = nnx.state(model)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
    digests = jax.tree.map(lambda _: jax.ShapeDtypeStruct((32,), np.uint8), abstract)
    with standard_checkpointer() as ckptr:
        try:
            meta = ckptr.metadata(path)
            saved_keys = set(getattr(meta, "item_metadata", meta).keys())
            if DIGESTS in saved_keys:  # else: saved before digests existed
                abstract = {**abstract, DIGESTS: digests}
            restored = ckptr.restore(path, abstract)
        except Exception as err:  # noqa: BLE001 - orbax / tensorstore raise many types
            raise IntegrityError(
                path,
                "cannot be restored into this model (other architecture, truncated or "
                f"corrupt?): {type(err).__name__}: {err}",
            ) from err
    restored = check_digests(restored, path)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model
