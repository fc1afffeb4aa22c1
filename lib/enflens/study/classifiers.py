"""Classifier inputs and cache keys, shared by the classifier stages (:mod:`enflens.study.stages`).

* :func:`read_meta_learning` reads ``results/<profile>/03_meta_learning.json`` (written by
  notebook 03): the latent stores per kind and split, and the decoder checkpoints.
* :func:`load_inputs` returns (x, y) of one split for a model; :func:`subsample` draws a
  stratified fraction of a split (data efficiency).
* :func:`cache_params` lists everything that determines a trained classifier: model name, full
  model config, trainer config (step counts included), augmentation, seed, content hashes of the
  training and validation data and a free-form ``data_tag`` (paths, fraction). The stage
  :func:`enflens.study.stages.classifier` adds its code version and trains or restores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from enflens.checkpoint import tree_hash
from enflens.classify import train
from enflens.classify.registry import (
    augment_settings,
    full_model_config,
    input_kind,
)
from enflens.config import from_dict
from enflens.data.store import load
from enflens.geometry import Latents
from enflens.io import repo_path
from enflens.metalearn.latent_store import read_latent_store
from enflens.study.cache import param_hash

META_LEARNING_NOTEBOOK = "03_meta_learning"


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
    """How a latent store was encoded: {steps, pixels (None = all), sampling, seed, and
    batch_size when the store records it}.

    Refits of rotated images (:func:`enflens.evaluate.rotation.refit_rotated`) use the same
    settings, so that a refit at angle 0 of the whole split reproduces the stored latents.
    """
    a = read_latent_store(store_path).attrs
    pixels = a.get("inner_pixels", -1)
    out = {
        "steps": int(a.get("inner_steps", 3)),
        "pixels": None if pixels is None or int(pixels) < 0 else int(pixels),
        "sampling": str(a.get("sampling", "stratified")),
        "seed": int(a.get("seed", 0)),
    }
    if "batch_size" in a:
        out["batch_size"] = int(a["batch_size"])
    return out


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
    tcfg = dataclasses.asdict(
        from_dict(train.TrainConfig, {**(train_cfg or {}), "seed": seed}, "train_cfg")
    )
    for k in _UNHASHED_TRAIN_KEYS:
        tcfg.pop(k)
    return {
        "model": name,
        "model_cfg": full_model_config(name, model_cfg or {}),
        "train_cfg": tcfg,
        "augment": augment_settings(kind, augment_cfg),
        "seed": int(seed),
        "data": {
            "train": tree_hash((train_data[0], np.asarray(train_data[1], np.int64))),
            "val": tree_hash((val_data[0], np.asarray(val_data[1], np.int64))),
        },
        "data_tag": data_tag or {},
    }


def cache_dir_for(cache_dir: str | Path, name: str, params: dict[str, Any]) -> Path:
    """``<cache_dir>/<name>-<param_hash(params)>``."""
    return Path(cache_dir) / f"{name}-{param_hash(params)}"

