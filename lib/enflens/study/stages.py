"""One cached function per stage of the study; the notebooks call these and show what they return.

* dataset: :func:`dataset`, cached as ``data/<recipe>-<hash>.h5``;
* decoders: :func:`decoder`, cached as ``checkpoints/<kind>_decoder-<hash>``;
* latent stores: :func:`latent_stores`, cached as ``data/latents_<kind>_<split>-<hash>.h5``.

The classifier stages (classifier training, data efficiency, rotation curves) follow below the
meta-learning ones.

**Reproducible by construction.** Every budget is a step count written in the profile; nothing
here reads the clock to decide how much to compute. A stage's cache key (:func:`stage_key`) holds
everything that determines its output: its parameters (step counts included), the keys of the
stages it reads, and the stage's code version :data:`STAGE_VERSIONS`, which is bumped whenever a
change of the code changes the stage's output. The same code, seed and profile therefore give the
same files and numbers on any machine; only the recorded timings differ.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from enflens import data
from enflens.config import from_dict
from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.fields.enf import ENFConfig
from enflens.io import repo_path
from enflens.metalearn import encode, outer
from enflens.metalearn.latent_store import LatentStore, read_latent_store
from enflens.nn import count_params
from enflens.study.cache import is_cached, record_params, stage_path

#: Code version of every stage: bump a stage's number whenever a code change alters its output,
#: so that its cache entries (and those of every stage downstream) are recomputed.
STAGE_VERSIONS: dict[str, int] = {
    "dataset": 1,
    "decoder": 2,  # 2: step budgets instead of wall-time budgets
    "latents": 2,
    "classifier": 2,
    "data_efficiency": 2,
    "rotation": 2,
}

FIELD_KINDS: tuple[str, ...] = ("enf", "cnf")


def stage_key(stage: str, **params: Any) -> dict[str, Any]:
    """The cache key of ``stage``: its parameters plus ``stage`` and ``code_version``.

    >>> stage_key("dataset", n=3)
    {'n': 3, 'stage': 'dataset', 'code_version': 1}
    """
    if stage not in STAGE_VERSIONS:
        raise ValueError(f"stage_key: unknown stage {stage!r}; known {sorted(STAGE_VERSIONS)}")
    return {**params, "stage": stage, "code_version": STAGE_VERSIONS[stage]}


def rel(path: str | Path) -> str:
    """``path`` relative to the repository root, as recorded in results files."""
    return str(Path(path).resolve().relative_to(repo_path()))


# ----------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class DatasetStage:
    """The study dataset.

    Attributes:
        path: the HDF5 store (``data/<recipe>-<hash>.h5``).
        splits: split name -> :class:`enflens.data.LensingSet` (images (n, H, W) in [0, 1]).
        cached: True when the file was reused rather than generated.
        seconds: wall time of the generation (0 when cached).
    """

    path: Path
    splits: dict[str, data.LensingSet]
    cached: bool
    seconds: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images."""
        return (*self.splits["train"].images.shape[1:], 1)


def dataset_path(
    recipe: str, n_train: int, n_val: int, n_test: int, seed: int
) -> tuple[Path, dict[str, Any]]:
    """Cached location ``data/<recipe>-<hash>.h5`` of the study dataset (``n_*`` per class) and
    its cache key."""
    key = stage_key(
        "dataset", recipe=recipe, n_train=int(n_train), n_val=int(n_val), n_test=int(n_test),
        seed=int(seed), format=data.FORMAT,
    )  # fmt: skip
    return stage_path("data", recipe, key, ".h5"), key


def dataset(
    recipe: str,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    *,
    workers: int = 1,
    generate: bool = True,
    progress: bool = True,
) -> DatasetStage:
    """The study dataset: generated (``generate=True``) or found in the cache.

    Args:
        recipe: DeepLenseSim recipe (``model_i``, ``model_ii``, ``model_iii``).
        n_train, n_val, n_test: images **per class** of each split.
        seed: dataset seed; the images do not depend on ``workers``.
        generate: if False, a missing dataset is an error (later notebooks only read it).

    Returns:
        :class:`DatasetStage`.
    """
    path, key = dataset_path(recipe, n_train, n_val, n_test, seed)
    cached = is_cached(path)
    seconds = 0.0
    if not cached:
        if not generate:
            raise FileNotFoundError(
                f"study dataset {path} not found: run notebook 01 (stage `dataset`) with the same "
                "RECIPE / N_TRAIN / N_VAL / N_TEST / DATA_SEED first"
            )
        t0 = time.perf_counter()
        data.generate(
            recipe, n_train, seed, path, workers=workers, n_val=n_val, n_test=n_test,
            progress=progress,
        )  # fmt: skip
        record_params(path, key)
        seconds = time.perf_counter() - t0
    splits = {s: data.load(path, s, recipe=recipe, verify=True) for s in data.SPLITS}
    return DatasetStage(path=path, splits=splits, cached=cached, seconds=seconds)


# ----------------------------------------------------------------------------- decoders


def field_adapter(
    kind: str,
    *,
    enf_config: dict[str, Any],
    enf_adapter: dict[str, Any],
    cnf_config: dict[str, Any],
    cnf_adapter: dict[str, Any],
    seed: int,
) -> adapters.FieldAdapter:
    """The untrained field ``kind`` of the study. The CNF's latent size is set to the ENF's
    number of latent floats N (2 + 1 + D), so both fields get the same latent budget."""
    enf = adapters.enf_adapter(from_dict(ENFConfig, enf_config, "ENF_CONFIG"), seed=seed,
                               **enf_adapter)  # fmt: skip
    if kind == "enf":
        return enf
    if kind != "cnf":
        raise ValueError(f"field_adapter: unknown kind {kind!r}; choose from {FIELD_KINDS}")
    cfg = from_dict(CNFConfig, {**cnf_config, "latent_dim": adapters.latent_floats(enf)},
                    "CNF_CONFIG")  # fmt: skip
    return adapters.cnf_adapter(cfg, seed=seed, **cnf_adapter)


@dataclasses.dataclass(frozen=True)
class DecoderStage:
    """A meta-learned field.

    Attributes:
        kind: "enf" or "cnf".
        path: the orbax checkpoint directory (``checkpoints/<kind>_decoder-<hash>``).
        adapter, params: the field and its trained parameters (as loaded from ``path``).
        meta: the checkpoint's metadata: ``hash``, ``meta_config``, ``outer_steps``,
            ``history`` (training loss and validation PSNR by step), ``train_seconds``.
        cached: True when the checkpoint was reused.
    """

    kind: str
    path: Path
    adapter: adapters.FieldAdapter
    params: dict
    meta: dict
    cached: bool

    @property
    def num_params(self) -> int:
        """Trainable decoder parameters."""
        return count_params(self.params["decoder"])

    @property
    def latent_floats(self) -> int:
        """Floats of one image's latent that the inner loop fits."""
        return adapters.latent_floats(self.adapter)


def decoder(
    kind: str,
    ds: DatasetStage,
    *,
    adapter: adapters.FieldAdapter,
    meta: dict[str, Any],
    seed: int,
    eval_images: int = 64,
    progress: bool = True,
) -> DecoderStage:
    """Meta-learn field ``kind`` on the training split for exactly ``meta["num_steps"]`` outer
    steps (or restore it from the cache).

    Args:
        ds: the dataset stage.
        adapter: the untrained field (:func:`field_adapter`).
        meta: :class:`enflens.metalearn.outer.MetaConfig` fields, ``num_steps`` included.
        seed: data order and pixel subsets.
        eval_images: validation images of the PSNR logged ``meta["eval_every"]`` steps apart.

    Returns:
        :class:`DecoderStage`.
    """
    cfg = from_dict(outer.MetaConfig, {**meta, "seed": seed, "eval_images": eval_images,
                                       "checkpoint_every": 0}, "META")  # fmt: skip
    key = stage_key(
        "decoder", dataset=ds.path.name, kind=kind, model_config=adapter.model_config,
        meta_config=dataclasses.asdict(cfg),
    )  # fmt: skip
    path = stage_path("checkpoints", f"{kind}_decoder", key)
    cached = is_cached(path)
    if not cached:
        t0 = time.perf_counter()
        result = outer.meta_train(
            adapter, ds.splits["train"].images, cfg,
            val_images=ds.splits["val"].images[:eval_images], progress=progress,
            log_every=max(1, cfg.num_steps // 40),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        extra = {
            "dataset": ds.path.name,
            "meta_config": dataclasses.asdict(cfg),
            "history": result.history,
            "train_seconds": seconds,
            "outer_steps": cfg.num_steps,
        }
        adapters.save_trained(path, adapter, result.state.params, ds.image_shape, extra)
        record_params(path, key)
    loaded, params, meta_out = adapters.load_trained(path)
    return DecoderStage(kind, path, loaded, params, meta_out, cached)


# ----------------------------------------------------------------------------- latent stores


@dataclasses.dataclass(frozen=True)
class LatentStages:
    """The latent stores of one field, one per split.

    Attributes:
        paths: split -> store path; stores: split -> :class:`LatentStore`.
        cached: split -> True when reused; seconds: split -> encoding wall time (0 if cached).
    """

    paths: dict[str, Path]
    stores: dict[str, LatentStore]
    cached: dict[str, bool]
    seconds: dict[str, float]


def latent_stores(
    dec: DecoderStage,
    ds: DatasetStage,
    *,
    steps: int,
    pixels: int | None,
    sampling: str,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> LatentStages:
    """Encode every split with a trained decoder into latent stores (or reuse them).

    Each image gets ``steps`` inner steps from the learned initialisation with ``pixels``
    pixels per step; batch ``i`` of ``batch_size`` images uses ``fold_in(PRNGKey(seed), i)``.

    Returns:
        :class:`LatentStages`; every store is checked against the decoder hash and the labels.
    """
    settings = {"steps": steps, "pixels": pixels, "sampling": sampling,
                "batch_size": batch_size, "seed": seed}  # fmt: skip
    paths, stores, cached, seconds = {}, {}, {}, {}
    for split, d in ds.splits.items():
        key = stage_key("latents", decoder_hash=dec.meta["hash"], dataset=ds.path.name,
                        split=split, **settings)  # fmt: skip
        path = stage_path("data", f"latents_{dec.kind}_{split}", key, ".h5")
        cached[split] = is_cached(path)
        seconds[split] = 0.0
        if not cached[split]:
            t0 = time.perf_counter()
            encode.encode_dataset(
                dec.adapter, dec.params, d.images, d.labels, path,
                decoder_path=rel(dec.path), decoder_hash=dec.meta["hash"],
                decoder_image_shape=ds.image_shape, steps=steps, pixels=pixels,
                sampling=sampling, batch_size=batch_size, seed=seed, progress=progress,
                extra_attrs={"dataset": ds.path.name, "split": split, "batch_size": batch_size},
            )  # fmt: skip
            record_params(path, key)
            seconds[split] = time.perf_counter() - t0
        store = read_latent_store(path, expected_hash=dec.meta["hash"], expected_kind=dec.kind)
        if not np.array_equal(store.labels, d.labels):
            raise ValueError(f"latent store {path} does not match the labels of split {split!r}")
        paths[split], stores[split] = path, store
    return LatentStages(paths, stores, cached, seconds)


def fit_throughput(
    dec: DecoderStage, images: np.ndarray, *, steps: int, pixels: int | None, sampling: str,
    batch_size: int, repeats: int = 3,
) -> float:
    """Images per second of one jitted encoding batch (median of ``repeats`` timed calls after a
    compiling call). A timing: it is reported, never used to decide anything."""
    batch = encode.pad_batch(np.asarray(images[:batch_size]), batch_size)
    times = []
    for rep in range(repeats + 1):
        t0 = time.perf_counter()
        _, s = encode.fit_latents(
            dec.adapter, dec.params, batch, steps=steps, pixels=pixels, sampling=sampling,
            key=jax.random.PRNGKey(rep),
        )  # fmt: skip
        jax.block_until_ready(s)
        times.append(time.perf_counter() - t0)
    return batch_size / float(np.median(times[1:]))


def reconstruct(
    dec: DecoderStage, images: np.ndarray, *, steps: int, pixels: int | None, sampling: str,
    batch_size: int, seed: int,
) -> np.ndarray:
    """The fields of ``images`` (n, H, W) after ``steps`` inner steps, decoded on the full
    grid: (n, H, W). Encoding settings as :func:`latent_stores` (one padded batch)."""
    n = len(images)
    batch = encode.pad_batch(np.asarray(images, np.float32), max(n, batch_size))
    _, recs = encode.fit_path(
        dec.adapter, dec.params, batch, steps=steps, pixels=pixels, sampling=sampling,
        key=jax.random.fold_in(jax.random.PRNGKey(seed), 0),
    )  # fmt: skip
    return recs[-1, :n, ..., 0]


# ----------------------------------------------------------------------------- classifier stages
# (classifier training, data efficiency, rotation curves) follow here.
