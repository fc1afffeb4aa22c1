"""Classifier study: the orchestration shared by notebooks 05 (comparison) and 06 (data efficiency).

The six classifiers of the study and what each reads:

===================  ===========  ====================================================
model                input kind   input
===================  ===========  ====================================================
``enf_mlp``          ``enf``      :class:`~enflens.geometry.Latents` (n, N, ...), ENF
``enf_ponita``       ``enf``      same
``enf_transformer``  ``enf``      same
``cnf_mlp``          ``cnf``      (n, d) global CNF latents
``resnet18``         ``image``    (n, 64, 64) images in [0, 1]
``c8_gcnn``          ``image``    same
===================  ===========  ====================================================

Pieces:

* :func:`read_meta_learning` reads ``results/<profile>/03_meta_learning.json`` (written by
  notebook 03): the latent stores per kind and split, and the decoder checkpoints.
* :func:`load_inputs` returns (x, y) of one split for a model; :func:`subsample` draws a
  stratified fraction of a split (notebook 06).
* :func:`train_classifier` builds the model (:func:`enflens.classifiers.make_classifier` /
  :func:`enflens.cnn.make_cnn`), trains it with :func:`enflens.train.fit` and the augmentation of
  its input kind (latents: pose and context noise plus a random global rotation about the image
  centre; CNF vectors: Gaussian noise; images: a random rotation), and caches the result: the
  trained state (orbax) and the history live in ``<cache_dir>/<model>-<hash>/`` where the hash
  (:func:`enflens.cache.param_hash`) covers everything that determines the result: model name,
  full model config, trainer config, augmentation, seed, content hashes of the training and
  validation data, a free-form ``data_tag`` (paths, fraction) and the package version. A rerun
  with identical parameters restores instead of training.
* :func:`evaluate` (test split, touched once per model): accuracy, macro one-vs-rest AUC,
  confusion matrix and ROC curves (at most 101 points per class).
* Rotation robustness, with angles from :func:`rotation_angles` (0 plus random angles):
  :func:`image_rotation_curve` (CNNs: rotated test images), :func:`latent_action_curve`
  (latent models: the SE(2) element (a, 0) applied to the test latents), :func:`refit_rotated`
  + :func:`refit_curve` (latent models: the rotated test images re-encoded with the trained
  decoder, the end-to-end measure), :func:`invariance_error` (logits under random SE(2)
  transforms of the latents).

Rotation convention: :func:`enflens.cnn.rotate_images` by angle ``a`` maps the content at
``(x, y)`` to ``R(a) (x, y)`` (counter-clockwise in the (x, y) plane of :mod:`enflens.grid`), and
the ENF field satisfies ``f(g x; g z) = f(x; z)``; so rotating the image by ``a`` corresponds to
the group element ``g = (a, 0)`` acting on its latents (``Latents.transform``). The tests check
both signs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from enflens import __version__, metrics, train
from enflens.cache import param_hash
from enflens.checkpoint import tree_hash
from enflens.classifiers import CLASSIFIER_CONFIGS, count_params, make_classifier, make_config
from enflens.cnn import CNN_CONFIGS, make_cnn, rotate_images
from enflens.geometry import SE2, Latents
from enflens.io import write_json
from enflens.results import repo_path

PyTree = Any

#: The study's models, in the order of the tables.
MODEL_NAMES: tuple[str, ...] = (
    "enf_mlp",
    "enf_ponita",
    "enf_transformer",
    "cnf_mlp",
    "resnet18",
    "c8_gcnn",
)
_KINDS = {
    "enf_mlp": "enf",
    "enf_ponita": "enf",
    "enf_transformer": "enf",
    "cnf_mlp": "cnf",
    "resnet18": "image",
    "c8_gcnn": "image",
}
CLASS_NAMES = metrics.CLASS_NAMES
META_LEARNING_NOTEBOOK = "03_meta_learning"


def input_kind(model_name: str) -> str:
    """The input kind of a model: "enf" (point clouds), "cnf" (latent vectors) or "image"."""
    if model_name not in _KINDS:
        raise ValueError(f"unknown model {model_name!r}; choose from {list(MODEL_NAMES)}")
    return _KINDS[model_name]


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class MetaLearningOutputs:
    """What notebook 03 produced (absolute paths).

    Attributes:
        latent_stores: {"enf": {"train": Path, "val": Path, "test": Path}, "cnf": {...}}.
        decoders: {"enf": Path, "cnf": Path} trained decoder checkpoints (orbax directories).
        source: the JSON file read.
    """

    latent_stores: dict[str, dict[str, Path]]
    decoders: dict[str, Path]
    source: Path


def read_meta_learning(path: str | Path) -> MetaLearningOutputs:
    """Read the latent-store and decoder locations from notebook 03's results JSON.

    Args:
        path: ``results/<profile>/03_meta_learning.json``. Its ``latent_stores`` maps kind ->
            split -> path and ``decoders`` maps kind -> path; paths are relative to the repository
            root (absolute paths are kept).

    Raises:
        FileNotFoundError: the JSON file is missing (run notebook 03 with the same profile first).
        ValueError: the file lacks ``latent_stores`` / ``decoders`` or they are malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run notebook {META_LEARNING_NOTEBOOK} with this profile first "
            "(it writes the latent stores and decoder checkpoints that notebook 05 classifies)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    stores, decoders = meta.get("latent_stores"), meta.get("decoders")
    if not isinstance(stores, dict) or not isinstance(decoders, dict):
        raise ValueError(
            f"{path} lacks the 'latent_stores' and/or 'decoders' mappings "
            f"(keys present: {sorted(meta)})"
        )
    out_stores: dict[str, dict[str, Path]] = {}
    for kind, splits in stores.items():
        if not isinstance(splits, dict):
            raise ValueError(f"{path}: latent_stores[{kind!r}] must map split -> path")
        out_stores[kind] = {s: repo_path(str(p)) for s, p in splits.items()}
    return MetaLearningOutputs(
        latent_stores=out_stores,
        decoders={k: repo_path(str(p)) for k, p in decoders.items()},
        source=path,
    )


def _dataset_labels(dataset_path: Path, split: str) -> np.ndarray:
    """Labels (n,) of one split of a lensing store, without reading the images."""
    if not dataset_path.is_file():
        raise FileNotFoundError(f"dataset file {dataset_path} does not exist")
    with h5py.File(dataset_path, "r") as f:
        if split not in f or "labels" not in f[split]:
            raise ValueError(f"dataset file {dataset_path} has no labels for split {split!r}")
        return np.asarray(f[split]["labels"][()])


def load_inputs(
    model_name: str,
    split: str,
    *,
    dataset_path: str | Path,
    latent_stores: dict[str, dict[str, str | Path]] | None = None,
    expected_decoder_hash: str | None = None,
) -> tuple[Any, np.ndarray]:
    """Inputs and labels of one split for a model.

    Args:
        model_name: one of :data:`MODEL_NAMES`.
        split: "train", "val" or "test".
        dataset_path: the study dataset (.h5, :func:`enflens.data.study_dataset_path`).
        latent_stores: kind -> split -> latent store path (:class:`MetaLearningOutputs`); needed
            for the latent models.
        expected_decoder_hash: if given, the latent store must come from this decoder.

    Returns:
        (x, y) with y (n,) int labels and x: images (n, H, W) float32 for CNNs, batched
        :class:`Latents` (numpy) for ``enf_*``, (n, d) float32 for ``cnf_mlp``.

    Raises:
        FileNotFoundError: the dataset or the latent store is missing (the message names it).
        ValueError: the store does not belong to the dataset (labels differ) or to the decoder.
    """
    from enflens.data import load
    from enflens.latent_store import read_latent_store

    kind = input_kind(model_name)
    dataset_path = Path(dataset_path)
    if kind == "image":
        d = load(dataset_path, split)
        return np.asarray(d.images, np.float32), np.asarray(d.labels, np.int64)
    if not latent_stores or kind not in latent_stores or split not in latent_stores[kind]:
        raise ValueError(f"load_inputs({model_name!r}): no {kind} latent store given for {split!r}")
    store_path = Path(latent_stores[kind][split])
    if not store_path.is_file():
        raise FileNotFoundError(
            f"latent store {store_path} ({kind}, {split}) not found: rerun notebook "
            f"{META_LEARNING_NOTEBOOK} with this profile"
        )
    store = read_latent_store(store_path, expected_hash=expected_decoder_hash, expected_kind=kind)
    labels = _dataset_labels(dataset_path, split)
    if not np.array_equal(np.asarray(store.labels), labels):
        raise ValueError(
            f"latent store {store_path} does not match split {split!r} of {dataset_path} "
            f"({len(store.labels)} vs {len(labels)} labels, or different order); re-encode it"
        )
    x = store.latents
    if kind == "enf" and not isinstance(x, Latents):
        raise ValueError(f"latent store {store_path} holds no ENF point clouds")
    if kind == "cnf":
        x = np.asarray(x, np.float32)
        if x.ndim != 2:
            raise ValueError(f"latent store {store_path}: CNF latents are {x.shape}, not (n, d)")
    return x, labels.astype(np.int64)


def data_tag(
    model_name: str,
    dataset_path: str | Path,
    latent_stores: dict[str, dict[str, str | Path]] | None = None,
    fraction: float = 1.0,
) -> dict[str, Any]:
    """Provenance of a model's training data for the cache key: the dataset file name, the names
    of the latent stores it reads (latent models) and the training fraction. Notebooks 05 and 06
    build it the same way, so 06 restores 05's full-data runs instead of retraining them."""
    kind = input_kind(model_name)
    tag: dict[str, Any] = {"dataset": Path(dataset_path).name, "fraction": float(fraction)}
    if kind != "image" and latent_stores and kind in latent_stores:
        tag["latent_stores"] = {s: Path(p).name for s, p in sorted(latent_stores[kind].items())}
    return tag


def encoding_settings(store_path: str | Path) -> dict[str, Any]:
    """How a latent store was encoded: {steps, pixels (None = all), sampling, seed}.

    Refits of rotated images (:func:`refit_rotated`) use the same settings.
    """
    from enflens.latent_store import read_latent_store

    a = read_latent_store(store_path).attrs
    pixels = a.get("inner_pixels", -1)
    return {
        "steps": int(a.get("inner_steps", 3)),
        "pixels": None if pixels is None or int(pixels) < 0 else int(pixels),
        "sampling": str(a.get("sampling", "stratified")),
        "seed": int(a.get("seed", 0)),
    }


def subsample(y: Any, fraction: float, seed: int) -> np.ndarray:
    """Stratified random subset of a split.

    Args:
        y: (n,) integer labels.
        fraction: in (0, 1]; each class keeps ``round(fraction * n_c)`` examples (at least 1).
        seed: numpy seed of the draw.

    Returns:
        Sorted indices (m,) into ``y``; all indices when ``fraction == 1``.
    """
    y = np.asarray(y)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subsample: fraction must be in (0, 1], got {fraction}")
    if y.ndim != 1:
        raise ValueError(f"subsample: labels must be (n,), got {y.shape}")
    if fraction == 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


# ----------------------------------------------------------------------------- training

#: Default augmentation per input kind (overridden field by field by ``augment_cfg``).
DEFAULT_AUGMENT: dict[str, dict[str, Any]] = {
    # noise stds: positions in image units ([-1, 1]^2), orientations in radians, contexts as a
    # fraction of the std of the training contexts; random rotation about the image centre
    "enf": {
        "position_noise": 0.01,
        "orientation_noise": 0.05,
        "context_noise": 0.05,
        "random_transform": True,
        "max_translation": 0.0,
    },
    "cnf": {"noise": 0.05},  # Gaussian noise, fraction of the std of the training latents
    "image": {"max_angle_deg": 180.0},  # uniform in [-max, max] (torchvision RandomRotation)
}


def _augment_settings(kind: str, augment_cfg: dict[str, Any] | None) -> dict[str, Any]:
    base = dict(DEFAULT_AUGMENT[kind])
    extra = dict(augment_cfg or {})
    bad = sorted(set(extra) - set(base))
    if bad:
        raise ValueError(
            f"augment_cfg for {kind} inputs: unknown keys {bad}; allowed {sorted(base)}"
        )
    base.update(extra)
    return base


def make_augmentation(kind: str, settings: dict[str, Any], x_train: Any) -> train.Augment:
    """The training augmentation of an input kind (see :data:`DEFAULT_AUGMENT`).

    Context / latent noise levels are relative to the std of the training inputs ``x_train``.
    """
    if kind == "enf":
        scale = float(np.std(np.asarray(x_train.contexts)))
        return train.latent_augmentation(
            position_noise=float(settings["position_noise"]),
            orientation_noise=float(settings["orientation_noise"]),
            context_noise=float(settings["context_noise"]) * scale,
            random_transform=bool(settings["random_transform"]),
            max_translation=float(settings["max_translation"]),
        )
    if kind == "cnf":
        std = float(settings["noise"]) * float(np.std(np.asarray(x_train)))

        def augment(key: jax.Array, z: jax.Array) -> jax.Array:
            return z + std * jax.random.normal(key, z.shape, z.dtype)

        return augment
    return train.image_augmentation(math.radians(float(settings["max_angle_deg"])))


def build_model(name: str, x_example: Any, model_cfg: dict[str, Any], seed: int) -> nnx.Module:
    """Build classifier ``name`` for inputs shaped like ``x_example`` (a batch), init seed."""
    rngs = nnx.Rngs(seed)
    kind = input_kind(name)
    if kind == "image":
        return make_cnn(name, rngs=rngs, **model_cfg)
    if kind == "cnf":
        return make_classifier(
            name, context_dim=0, num_latents=0, cnf_dim=int(np.shape(x_example)[-1]), rngs=rngs,
            **model_cfg,
        )  # fmt: skip
    return make_classifier(
        name, context_dim=x_example.context_dim, num_latents=x_example.num_latents, rngs=rngs,
        **model_cfg,
    )  # fmt: skip


def _full_model_config(name: str, model_cfg: dict[str, Any]) -> dict[str, Any]:
    if name in CLASSIFIER_CONFIGS:
        return dataclasses.asdict(make_config(name, **model_cfg))
    cls = CNN_CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(model_cfg) - fields)
    if bad:
        raise ValueError(f"model_cfg for {name!r}: unknown keys {bad}; allowed {sorted(fields)}")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in model_cfg.items()}
    return dataclasses.asdict(cls(**cfg))


_UNHASHED_TRAIN_KEYS = ("progress", "checkpoint_dir")


def cache_params(
    name: str,
    train_data: tuple[Any, Any],
    val_data: tuple[Any, Any],
    *,
    model_cfg: dict[str, Any] | None = None,
    train_cfg: dict[str, Any] | None = None,
    augment_cfg: dict[str, Any] | None = None,
    seed: int = 0,
    data_tag: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that determines a trained classifier (the input of its cache hash)."""
    kind = input_kind(name)
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    bad = sorted(set(train_cfg or {}) - fields)
    if bad:
        raise ValueError(f"train_cfg: unknown keys {bad}; allowed {sorted(fields)}")
    tcfg = dataclasses.asdict(train.TrainConfig(**{**(train_cfg or {}), "seed": seed}))
    for k in _UNHASHED_TRAIN_KEYS:
        tcfg.pop(k)
    return {
        "model": name,
        "model_cfg": _full_model_config(name, model_cfg or {}),
        "train_cfg": tcfg,
        "augment": _augment_settings(kind, augment_cfg),
        "seed": int(seed),
        "data": {
            "train": tree_hash((train_data[0], np.asarray(train_data[1], np.int64))),
            "val": tree_hash((val_data[0], np.asarray(val_data[1], np.int64))),
        },
        "data_tag": data_tag or {},
        "enflens_version": __version__,
    }


def cache_dir_for(cache_dir: str | Path, name: str, params: dict[str, Any]) -> Path:
    """``<cache_dir>/<name>-<param_hash(params)>``."""
    return Path(cache_dir) / f"{name}-{param_hash(params)}"


def _is_complete(run_dir: Path) -> bool:
    return all((run_dir / f).exists() for f in ("state", "history.json", "params.json"))


def train_classifier(
    name: str,
    train_data: tuple[Any, Any],
    val_data: tuple[Any, Any],
    *,
    model_cfg: dict[str, Any] | None = None,
    train_cfg: dict[str, Any] | None = None,
    augment_cfg: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    data_tag: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[nnx.Module, dict[str, Any]]:
    """Train (or restore from the cache) classifier ``name``; model selection on val only.

    Args:
        name: one of :data:`MODEL_NAMES`.
        train_data, val_data: (x, y) as returned by :func:`load_inputs` (or subsets).
        model_cfg: overrides of the model's config dataclass.
        train_cfg: :class:`enflens.train.TrainConfig` fields (epochs, train_seconds, ...;
            ``seed`` is taken from ``seed``).
        augment_cfg: overrides of :data:`DEFAULT_AUGMENT` for the model's input kind.
        seed: initialisation, shuffling and augmentation seed.
        cache_dir: if given, the trained state and history are stored in / restored from
            ``<cache_dir>/<name>-<hash>`` (see :func:`cache_params`); None: always train.
        data_tag: provenance recorded in (and hashed into) the cache key, e.g. dataset name,
            latent store names, fraction.
        progress: tqdm bar over epochs.

    Returns:
        (model in evaluation mode, history): :func:`enflens.train.fit`'s history plus
        ``cached`` (True when restored), ``cache_dir`` (str or None), ``num_params``.
    """
    model_cfg, train_cfg = dict(model_cfg or {}), dict(train_cfg or {})
    kind = input_kind(name)
    x_tr, y_tr = train_data
    params = cache_params(
        name,
        train_data,
        val_data,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        augment_cfg=augment_cfg,
        seed=seed,
        data_tag=data_tag,
    )
    model = build_model(name, train.take(x_tr, np.arange(1)), model_cfg, seed)
    run_dir = None
    if cache_dir is not None:
        run_dir = cache_dir_for(cache_dir, name, params)
        if _is_complete(run_dir):
            train.restore_checkpoint(model, run_dir)
            model.eval()
            hist = json.loads((run_dir / "history.json").read_text())
            hist.update(cached=True, cache_dir=str(run_dir))
            return model, hist
    augment = make_augmentation(kind, _augment_settings(kind, augment_cfg), x_tr)
    cfg = train.TrainConfig(**{**train_cfg, "seed": seed, "progress": progress})
    cfg = dataclasses.replace(cfg, checkpoint_dir=None)
    hist = train.fit(model, (x_tr, np.asarray(y_tr)), (val_data[0], np.asarray(val_data[1])),
                     cfg, augment=augment)  # fmt: skip
    hist["num_params"] = count_params(model)
    if run_dir is not None:
        train.save_checkpoint(model, run_dir)
        write_json(run_dir / "history.json", hist)
        write_json(run_dir / "params.json", params)  # written last: marks the run complete
    hist.update(cached=False, cache_dir=None if run_dir is None else str(run_dir))
    return model, hist


# ----------------------------------------------------------------------------- evaluation


def downsample_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 101) -> dict:
    """At most ``max_points`` points of a ROC curve (evenly spaced in index, ends kept)."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    if len(fpr) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def evaluate_scores(labels: Any, probabilities: Any, max_roc_points: int = 101) -> dict:
    """Test metrics from class probabilities.

    Args:
        labels: (n,) ints; probabilities: (n, 3) scores (rows sum to 1 for probabilities; the
            ROC quantities only use each column's ranking).

    Returns:
        {accuracy, auc_macro, auc_per_class {class: auc}, confusion (3x3 list, [true][pred]),
        roc {class: {fpr: [...], tpr: [...]}} with at most ``max_roc_points`` points each}.
    """
    rep = metrics.classification_report(labels, probabilities)
    curves = metrics.roc_curves_ovr(labels, probabilities)
    return {
        "accuracy": rep["accuracy"],
        "auc_macro": rep["auc_macro"],
        "auc_per_class": rep["auc_per_class"],
        "confusion": rep["confusion_matrix"],
        "roc": {
            CLASS_NAMES[c]: downsample_curve(fpr, tpr, max_roc_points)
            for c, (fpr, tpr, _) in enumerate(curves)
        },
    }


def evaluate(model: nnx.Module, x_test: Any, y_test: Any, *, batch_size: int = 256) -> dict:
    """:func:`evaluate_scores` of the model's softmax probabilities on the test inputs."""
    probs = train.predict(model, x_test, batch_size=batch_size, probabilities=True)
    return evaluate_scores(y_test, probs)


def model_entry(hist: dict[str, Any], test: dict[str, Any], n_params: int) -> dict[str, Any]:
    """One model's results record: test metrics (:func:`evaluate`), size, training summary and
    the per-epoch curves (``history``: val_acc, val_loss, train_loss, epoch_seconds)."""
    return {
        **test,
        "n_params": int(n_params),
        "train_seconds": float(hist["train_seconds"]),
        "best_epoch": int(hist["best_epoch"]),
        "best_val_acc": float(hist["best_val_acc"]),
        "epochs_run": int(hist["epochs_run"]),
        "steps": int(hist["steps"]),
        "stop_reason": hist["stop_reason"],
        "restored_from_cache": bool(hist.get("cached", False)),
        "history": {
            k: [float(v) for v in hist[k]]
            for k in ("val_acc", "val_loss", "train_loss", "epoch_seconds")
        },
    }


# ----------------------------------------------------------------------------- rotations


def rotation_angles(n: int, seed: int = 0) -> np.ndarray:
    """Evaluation angles in degrees: 0 followed by ``n - 1`` sorted uniform draws in (0, 360).

    Random continuous angles (not multiples of 45 or 90 degrees, which favour the C8 CNN and the
    90-degree symmetric ENF latent grid); 0 is the unrotated reference.
    """
    if n < 1:
        raise ValueError(f"rotation_angles: n must be >= 1, got {n}")
    rng = np.random.default_rng([seed, 360])
    return np.concatenate([[0.0], np.sort(rng.uniform(0.0, 360.0, n - 1))])


def mean_rotated(angles_deg: Sequence[float], accuracy: Sequence[float]) -> float:
    """Mean accuracy over the nonzero angles (all angles if there are none)."""
    a, acc = np.asarray(angles_deg, float), np.asarray(accuracy, float)
    keep = a != 0.0
    return float(acc[keep].mean() if keep.any() else acc.mean())


def image_rotation_curve(
    model: nnx.Module, images: Any, labels: Any, angles_deg: Sequence[float]
) -> list[float]:
    """Accuracy on the images rotated by each angle (degrees, bilinear, zero fill): (A,)."""
    rad = [math.radians(a) for a in angles_deg]
    return metrics.accuracy_under_rotation(model, images, labels, rad).tolist()


def rotate_latents(latents: Latents, angle_deg: float) -> Latents:
    """The SE(2) element (angle, 0) (rotation about the image centre) applied to every latent
    cloud; the counterpart of rotating the image by ``angle_deg`` counter-clockwise."""
    n = latents.positions.shape[0]
    g = SE2(jnp.full((n,), math.radians(angle_deg), jnp.float32), jnp.zeros((n, 2), jnp.float32))
    z = latents.transform(g)
    return jax.tree.map(np.asarray, z)


def latent_action_curve(
    model: nnx.Module, latents: Latents, labels: Any, angles_deg: Sequence[float]
) -> list[float]:
    """Accuracy of a latent-cloud classifier on the test latents rotated by each angle: (A,)."""
    return [
        metrics.accuracy(labels, train.predict(model, rotate_latents(latents, a)))
        for a in angles_deg
    ]


def refit_rotated(
    decoder_path: str | Path,
    images: Any,
    angles_deg: Sequence[float],
    *,
    steps: int = 3,
    pixels: int | None = None,
    sampling: str = "stratified",
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[Any], np.ndarray]:
    """Latents of the rotated images, fitted with the trained decoder.

    Args:
        decoder_path: a decoder checkpoint (:func:`enflens.fitting.save_trained`).
        images: (n, H, W) in [0, 1].
        angles_deg: rotation angles (counter-clockwise, degrees).
        steps, pixels, sampling, seed: inner-loop settings; use the latent store's
            (:func:`encoding_settings`) so that the refit matches the stored latents.
        batch_size: images per jitted fitting call.

    Returns:
        (one latent batch per angle (ENF: :class:`Latents`, CNF: (n, d)), numpy;
        reconstruction PSNR (A, n) in dB of each rotated image).
    """
    from enflens.fitting import encode, load_trained

    adapter, params, _ = load_trained(decoder_path)
    images = np.asarray(images, np.float32)
    latents, scores = [], []
    for a in angles_deg:
        rot = np.asarray(rotate_images(images, math.radians(float(a))))
        lat, psnr = encode(
            adapter, params, rot, steps=steps, pixels=pixels, sampling=sampling, seed=seed,
            batch_size=min(batch_size, len(images)), progress=progress,
        )  # fmt: skip
        latents.append(lat)
        scores.append(np.asarray(psnr))
    return latents, np.stack(scores)


def refit_curve(model: nnx.Module, refits: Sequence[Any], labels: Any) -> list[float]:
    """Accuracy of a latent classifier on each angle's refitted latents: (A,)."""
    return [metrics.accuracy(labels, train.predict(model, z)) for z in refits]


def invariance_error(
    name: str, model: nnx.Module, latents: Any, seed: int = 0, n: int = 8
) -> float | None:
    """:func:`enflens.metrics.invariance_error` for ``enf_*`` models (random SE(2) elements
    with translations up to 0.5), None for the CNNs and ``cnf_mlp`` (no group action)."""
    if input_kind(name) != "enf":
        return None
    return float(metrics.invariance_error(model, latents, jax.random.key(seed), n=n))


def results_table(models: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the per-model results (accuracy, AUC, rotations, size, time)."""
    head = (
        "| model | accuracy | AUC (macro) | rotated acc. | latent-action acc. | "
        "invariance err. | params | train s | best epoch |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [
        f"| {name} | {f(r['accuracy'], '.4f')} | {f(r['auc_macro'], '.4f')} | "
        f"{f(r.get('rotated_accuracy'), '.4f')} | "
        f"{f(r.get('rotated_accuracy_latent_action'), '.4f')} | "
        f"{f(r.get('invariance_error'), '.1e')} | {r['n_params']:,} | "
        f"{f(r['train_seconds'], '.0f')} | {r['best_epoch']} |"
        for name, r in models.items()
    ]
    return head + "\n".join(rows)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
