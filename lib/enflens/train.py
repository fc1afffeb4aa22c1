"""Generic supervised trainer for the NNX classifiers, augmentations, prediction, checkpoints.

Data are host arrays: inputs ``x`` are a numpy array (images (n, H, W), CNF latents (n, D)) or a
pytree of arrays with a common leading axis (e.g. a :class:`enflens.geometry.Latents` with
positions (n, N, 2) ...), labels ``y`` are integers (n,) in {0, 1, 2}. Minibatches are taken by
index arrays and moved to the device per step.

:func:`fit` trains with AdamW (decoupled weight decay on weight matrices / kernels only) on an
optax warmup-cosine learning-rate schedule, evaluates on the validation split after every epoch,
keeps the state with the best validation accuracy (ties broken by lower validation loss), stops
early after ``patience`` epochs without improvement or when the wall-time budget
``train_seconds`` is spent, and loads the best state back into the model. The test split is never
seen. The training step is one ``jax.jit`` of a pure function of (params, other state,
optimizer state, batch, key) built with ``nnx.split`` / ``nnx.merge``.

Augmentations are jax-traceable functions ``augment(key, x_batch) -> x_batch`` run inside the
jitted step: :func:`latent_augmentation` (Gaussian pose/context noise, optional random global
SE(2) transform via ``Latents.transform``) and :func:`image_augmentation` (random continuous
rotation, bilinear, as torchvision's ``RandomRotation(180)`` in the published runs).

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

from enflens.checkpoint import DIGESTS, check_digests, with_digests
from enflens.cnn import rotate_images
from enflens.geometry import Latents, random_se2
from enflens.integrity import IntegrityError
from enflens.io import write_json

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


def latent_augmentation(
    *,
    position_noise: float = 0.0,
    orientation_noise: float = 0.0,
    context_noise: float = 0.0,
    random_transform: bool = False,
    max_translation: float = 0.0,
) -> Augment:
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
        ``augment(key, latents) -> latents``, jax-traceable.
    """
    if min(position_noise, orientation_noise, context_noise, max_translation) < 0:
        raise ValueError("latent_augmentation: noise levels and max_translation must be >= 0")

    def augment(key: Array, z: Latents) -> Latents:
        kp, ko, kc, kg = jax.random.split(key, 4)
        pos, ori, ctx = z.positions, z.orientations, z.contexts
        if position_noise:
            pos = pos + position_noise * jax.random.normal(kp, pos.shape, pos.dtype)
        if orientation_noise:
            ori = ori + orientation_noise * jax.random.normal(ko, ori.shape, ori.dtype)
        if context_noise:
            ctx = ctx + context_noise * jax.random.normal(kc, ctx.shape, ctx.dtype)
        z = dataclasses.replace(z, positions=pos, orientations=ori, contexts=ctx)
        if random_transform:
            g = random_se2(kg, pos.shape[:-2], max_translation=max_translation)
            z = z.transform(g)
        return z

    return augment


def image_augmentation(max_angle: float = math.pi) -> Augment:
    """Random rotation of each image by an angle uniform in [-max_angle, max_angle] (radians).

    Bilinear interpolation with zero fill (:func:`enflens.cnn.rotate_images`); ``max_angle = pi``
    matches torchvision's ``RandomRotation(180)``. Returns ``augment(key, images) -> images``.
    """

    def augment(key: Array, images: Array) -> Array:
        angles = jax.random.uniform(key, (images.shape[0],), jnp.float32, -max_angle, max_angle)
        return rotate_images(images, angles)

    return augment


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
    """Trainer settings.

    Attributes:
        epochs: maximum number of epochs (also sets the length of the cosine schedule).
        batch_size: training minibatch size (incomplete last batch dropped, reshuffled each
            epoch; a training set smaller than this is one full batch).
        learning_rate: peak learning rate of the warmup-cosine schedule.
        warmup_fraction: fraction of all steps spent in linear warmup from 0.
        end_lr_fraction: final learning rate as a fraction of the peak.
        weight_decay: AdamW decoupled weight decay (applied to arrays with ndim >= 2 only).
        grad_clip: global-norm gradient clipping (None = off).
        label_smoothing: label smoothing of the training cross-entropy.
        patience: stop after this many epochs without a better validation accuracy
            (None = never).
        train_seconds: wall-time budget in seconds (None = none). Checked after every step; when
            spent, the epoch is cut short, validated, and training stops. Includes compilation
            and validation time.
        seed: seeds shuffling and augmentation randomness (initialisation is the model's).
        eval_batch_size: batch size for validation / prediction.
        num_classes: number of classes.
        progress: show a tqdm bar over epochs.
        checkpoint_dir: if set, the best state is saved there (orbax) whenever it improves,
            with ``history.json`` beside it at the end.
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    end_lr_fraction: float = 0.01
    weight_decay: float = 1e-4
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    patience: int | None = 10
    train_seconds: float | None = None
    seed: int = 0
    eval_batch_size: int = 256
    num_classes: int = 3
    progress: bool = True
    checkpoint_dir: str | None = None


def _decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW on a warmup-cosine schedule (+ optional global-norm clipping)."""
    schedule = make_optimizer_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask)
    if cfg.grad_clip:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    return float(-np.mean(logp[np.arange(len(y)), y]))


def fit(
    model: nnx.Module,
    train_data: tuple[PyTree, np.ndarray],
    val_data: tuple[PyTree, np.ndarray],
    cfg: TrainConfig | None = None,
    *,
    augment: Augment | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``model`` in place; select the best epoch on the validation split.

    Args:
        model: NNX classifier mapping a batch of inputs to logits (B, num_classes).
        train_data: (x_train, y_train) -- inputs with leading axis n, integer labels (n,).
        val_data: (x_val, y_val), used for model selection and early stopping only.
        cfg: :class:`TrainConfig` (defaults if None); ``overrides`` replace its fields.
        augment: optional ``augment(key, x_batch) -> x_batch`` applied to training batches
            inside the jitted step.

    Returns:
        History dict: per epoch ``train_loss``, ``train_acc`` (running, on augmented batches),
        ``val_loss``, ``val_acc``, ``lr`` (at the end of the epoch), ``epoch_seconds``; and
        ``best_epoch`` (0-based), ``best_val_acc``, ``best_val_loss``, ``epochs_run``,
        ``steps``, ``train_seconds`` (whole wall time of training incl. compilation and
        validation), ``stop_reason`` ("epochs", "patience" or "time_budget"), ``num_params``.
        On return the model holds the best state and is in evaluation mode.
    """
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(
            f"fit: epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}"
        )
    x_tr, y_tr = train_data
    x_va, y_va = val_data
    y_tr = _check_split(x_tr, y_tr, cfg.num_classes, "train_data")
    y_va = _check_split(x_va, y_va, cfg.num_classes, "val_data")
    n_tr = num_examples(x_tr)
    if n_tr == 0 or num_examples(x_va) == 0:
        raise ValueError("fit: train and validation splits must be non-empty")
    bs = min(cfg.batch_size, n_tr)
    steps_per_epoch = n_tr // bs
    tx = make_optimizer(cfg, cfg.epochs * steps_per_epoch)

    t0 = time.perf_counter()
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    smoothing = cfg.label_smoothing

    @jax.jit
    def train_step(params, rest, opt_state, x, y, key):
        if augment is not None:
            x = augment(key, x)

        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            logits = m(x)
            targets = optax.smooth_labels(jax.nn.one_hot(y, cfg.num_classes), smoothing)
            loss = optax.softmax_cross_entropy(logits, targets).mean()
            _, _, new_rest = nnx.split(m, nnx.Param, ...)
            return loss, (logits, new_rest)

        (loss, (logits, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return params, new_rest, opt_state, loss, acc

    schedule_lr = make_optimizer_schedule(cfg, cfg.epochs * steps_per_epoch)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    hist: dict[str, Any] = {
        k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds")
    }
    best = (-1.0, math.inf)
    best_state = (params, rest)
    best_epoch, since_best, steps = -1, 0, 0
    stop_reason = "epochs"
    bar = tqdm(range(cfg.epochs), disable=not cfg.progress, desc="train", leave=False)
    for epoch in bar:
        te = time.perf_counter()
        perm = rng.permutation(n_tr)
        losses, accs = [], []
        out_of_time = False
        for s in range(steps_per_epoch):
            idx = perm[s * bs : (s + 1) * bs]
            key, sub = jax.random.split(key)
            params, rest, opt_state, loss, acc = train_step(
                params, rest, opt_state, take(x_tr, idx), y_tr[idx], sub
            )
            losses.append(float(loss))
            accs.append(float(acc))
            steps += 1
            if cfg.train_seconds is not None and time.perf_counter() - t0 > cfg.train_seconds:
                out_of_time = True
                break
        logits_va = _predict_split(graphdef_eval, (params, rest), x_va, cfg.eval_batch_size)
        val_acc = float(np.mean(logits_va.argmax(-1) == y_va))
        val_loss = _cross_entropy(logits_va, y_va)
        hist["train_loss"].append(float(np.mean(losses)))
        hist["train_acc"].append(float(np.mean(accs)))
        hist["val_loss"].append(val_loss)
        hist["val_acc"].append(val_acc)
        hist["lr"].append(float(schedule_lr(steps)))
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_state, best_epoch, since_best = (val_acc, val_loss), (params, rest), epoch, 0
            if cfg.checkpoint_dir is not None:
                nnx.update(model, *best_state)
                save_checkpoint(model, cfg.checkpoint_dir)
        else:
            since_best += 1
        hist["epoch_seconds"].append(time.perf_counter() - te)
        bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", val_acc=f"{val_acc:.3f}")
        if out_of_time:
            stop_reason = "time_budget"
            break
        if cfg.patience is not None and since_best >= cfg.patience:
            stop_reason = "patience"
            break
    bar.close()
    nnx.update(model, *best_state)
    model.eval()
    hist.update(
        best_epoch=best_epoch,
        best_val_acc=best[0],
        best_val_loss=best[1],
        epochs_run=len(hist["val_acc"]),
        steps=steps,
        train_seconds=time.perf_counter() - t0,
        stop_reason=stop_reason,
        num_params=int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
    )
    if cfg.checkpoint_dir is not None:
        write_json(Path(cfg.checkpoint_dir) / "history.json", hist)
    return hist


def make_optimizer_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule used by :func:`make_optimizer` (for logging / plotting)."""
    warmup = int(round(cfg.warmup_fraction * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.end_lr_fraction,
    )


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nnx.Module, directory: str | Path) -> Path:
    """Save the full state of ``model`` (params + BatchNorm statistics) with orbax.

    Writes ``<directory>/state`` (orbax; atomic: written to a temporary folder and renamed),
    replacing any previous checkpoint there. Returns that path.
    """
    path = Path(directory).absolute() / "state"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    with ocp.StandardCheckpointer() as ckptr:
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
    with ocp.StandardCheckpointer() as ckptr:
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
