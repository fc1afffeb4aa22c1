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
same files and numbers on any machine with the same CPU model; only the recorded timings differ.
XLA compiles for the host's instruction set, so another CPU model rounds some float32 sums
differently: the dataset stays bitwise equal, the equivariance errors agree to rounding, and
Meta-SGD amplifies the rounding into another decoder (``bench/RESULTS.md``). Each trained
decoder records its ``host_cpu`` (:func:`enflens.study.report.host_cpu`).

**Scaling out.** The hot loops run on every device (:mod:`enflens.parallel`). In a multi-process
run every process runs every stage; process 0 alone decides whether a cache entry exists (so all
take the same branch), writes the stage's files, and the others wait for it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from enflens import data, parallel
from enflens.checkpoint import read_decoder_meta, tree_hash
from enflens.classify import registry, train
from enflens.config import from_dict
from enflens.evaluate import equivariance, metrics, reconstruction, rotation
from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig
from enflens.fields.enf import ENFConfig
from enflens.io import repo_path, write_json
from enflens.metalearn import encode, outer
from enflens.metalearn.latent_store import LatentStore, read_latent_store
from enflens.nn import count_params
from enflens.study import classifiers as study_clf
from enflens.study import report
from enflens.study.cache import (
    is_cached,
    param_hash,
    record_params,
    record_seconds,
    recorded_seconds,
    stage_path,
)

#: Code version of every stage: bump a stage's number whenever a code change alters its output,
#: so that its cache entries (and those of every stage downstream) are recomputed.
STAGE_VERSIONS: dict[str, int] = {
    "dataset": 1,
    "decoder": 2,  # 2: step budgets instead of wall-time budgets
    "latents": 2,
    "classifier": 5,  # 3: standardised contexts, radial node features, attention pooling;
    # 4: PONITA messages summed basis-first when the basis is smaller than the cloud (rounding);
    # 5: models without blocks build no pair basis (other initial parameters for layers=0)
    "data_efficiency": 3,
    "rotation": 4,  # 3: invariance to rotations about the centre; 4: Fourier image rotation
}

FIELD_KINDS: tuple[str, ...] = ("enf", "cnf")


#: Stages whose output is the same on any number of devices (numpy / lenstronomy only).
LAYOUT_FREE_STAGES: frozenset[str] = frozenset({"dataset"})


def stage_key(stage: str, **params: Any) -> dict[str, Any]:
    """The cache key of ``stage``: its parameters plus ``stage`` and ``code_version``, and the
    number of devices of the data mesh when it is more than one.

    The device count is in the key because the JAX stages do not round the same way on D
    devices as on one: a batch split over D devices is a different XLA program per device and
    its gradients are summed in a different order (``bench/RESULTS.md``: Meta-SGD parameters
    differ by ~1e-3 after 8 outer steps on 4 simulated devices). Without it, a decoder trained
    on 4 GPUs would be reused as if it were the one-device result. One device adds nothing, so
    one-device keys (those of the committed cpu run) are unchanged.

    >>> stage_key("dataset", n=3)
    {'n': 3, 'stage': 'dataset', 'code_version': 1}
    """
    if stage not in STAGE_VERSIONS:
        raise ValueError(f"stage_key: unknown stage {stage!r}; known {sorted(STAGE_VERSIONS)}")
    key = {**params, "stage": stage, "code_version": STAGE_VERSIONS[stage]}
    devices = parallel.num_devices(parallel.data_mesh())  # the mesh the stages train on
    if devices > 1 and stage not in LAYOUT_FREE_STAGES:
        key["devices"] = devices
    return key


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
    cached = parallel.agree(is_cached(path))  # every process takes process 0's branch
    seconds = 0.0
    if not cached:
        if not generate:
            raise FileNotFoundError(
                f"study dataset {path} not found: run notebook 01 (stage `dataset`) with the same "
                "RECIPE / N_TRAIN / N_VAL / N_TEST / DATA_SEED first"
            )
        t0 = time.perf_counter()
        # force: a file here that the cache does not vouch for (no record, or newer than its
        # record) is left over from an interrupted or foreign run and is replaced
        if parallel.is_main_process():
            data.generate(
                recipe, n_train, seed, path, workers=workers, n_val=n_val, n_test=n_test,
                progress=progress, force=True,
            )  # fmt: skip
            record_params(path, key)
        parallel.barrier(f"dataset {path.name}")
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
    cached = parallel.agree(is_cached(path))
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
            "host_cpu": report.host_cpu(),  # bitwise reproduction needs the same CPU model
        }
        if parallel.is_main_process():  # every process trained; process 0 writes
            adapters.save_trained(path, adapter, result.state.params, ds.image_shape, extra)
            record_params(path, key)
        parallel.barrier(f"decoder {path.name}")
    loaded, params, meta_out = adapters.load_trained(path)
    return DecoderStage(kind, path, loaded, params, meta_out, cached)


# ----------------------------------------------------------------------------- latent stores


@dataclasses.dataclass(frozen=True)
class LatentStages:
    """The latent stores of one field, one per split.

    Attributes:
        paths: split -> store path; stores: split -> :class:`LatentStore`.
        cached: split -> True when reused; seconds: split -> encoding wall time (0 if cached).
        encode_seconds: split -> wall time of the run that wrote the store (this run's when it
            encoded, the recorded one when it reused the store; None for a store written
            before timings were recorded).
    """

    paths: dict[str, Path]
    stores: dict[str, LatentStore]
    cached: dict[str, bool]
    seconds: dict[str, float]
    encode_seconds: dict[str, float | None]

    @property
    def total_encode_seconds(self) -> float | None:
        """Wall time of writing every split's store; None if a store has no recorded time."""
        times = list(self.encode_seconds.values())
        return None if any(t is None for t in times) else float(sum(times))


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
    paths, stores, cached, seconds, encode_seconds = {}, {}, {}, {}, {}
    for split, d in ds.splits.items():
        key = stage_key("latents", decoder_hash=dec.meta["hash"], dataset=ds.path.name,
                        split=split, **settings)  # fmt: skip
        path = stage_path("data", f"latents_{dec.kind}_{split}", key, ".h5")
        cached[split] = parallel.agree(is_cached(path))
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
            seconds[split] = time.perf_counter() - t0
            if parallel.is_main_process():
                record_seconds(path, seconds[split])
                record_params(path, key)
        encode_seconds[split] = recorded_seconds(path) if cached[split] else seconds[split]
        store = read_latent_store(path, expected_hash=dec.meta["hash"], expected_kind=dec.kind)
        if not np.array_equal(store.labels, d.labels):
            raise ValueError(f"latent store {path} does not match the labels of split {split!r}")
        paths[split], stores[split] = path, store
    return LatentStages(paths, stores, cached, seconds, encode_seconds)


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


# ----------------------------------------------------------------------------- decoder ablation


def outer_step_ms(history: list[dict]) -> float:
    """Median-free ms per outer step of a meta-training history: the time between the first
    and the last logged loss over the steps between them (so compilation, which happens before
    the first log, is left out). A timing only."""
    logs = [e for e in history if "seconds" in e]
    if len(logs) < 2:
        raise ValueError("outer_step_ms: the history needs at least two loss logs")
    first, last = logs[0], logs[-1]
    return 1000.0 * (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])


def ablation(
    ds: DatasetStage,
    rows: dict[str, dict[str, Any]],
    *,
    field_cfg: dict[str, Any],
    meta: dict[str, Any],
    steps: int,
    seed: int,
    clean: np.ndarray,
    fit: dict[str, Any],
    eval_images: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Meta-train one field per row for exactly ``steps`` outer steps and score it.

    Args:
        rows: row name -> change of the study's field: ``kind`` ("enf", default, or "cnf"),
            ``enf_config`` / ``enf_adapter`` / ``cnf_config`` (keys replacing those of
            ``field_cfg``'s dicts; ``None`` values replace too) and ``meta`` (keys replacing
            ``meta``'s).
        field_cfg: the study's :func:`field_adapter` keyword arguments.
        meta: the study's Meta-SGD settings (``num_steps`` is replaced by ``steps``; a row
            equal to the study's field at its own step count is the study's cached decoder).
        clean: (n, H, W) noise-free renders of validation images 0..n-1.
        fit: encoding settings (``steps``, ``pixels``, ``sampling``, ``batch_size``, ``seed``).

    Returns:
        One dict per row: ``name``, ``kind``, ``psnr_clean`` (mean PSNR against the noise-free
        renders after 0..K inner steps), ``decoder_params``, ``latent_floats``, ``outer_steps``,
        ``ms_per_outer_step`` (a timing), ``cached``; ENF rows add ``pose_motion_px`` (median latent
        displacement over the inner steps) and ``psnr_frozen_poses`` / ``psnr_adapted_poses`` (the
        same fit with poses frozen at their start / adapted, against the noise-free renders), from
        :func:`enflens.evaluate.equivariance.latent_motion`. Every decoder is a :func:`decoder`
        stage, so a rerun restores it.
    """
    known = {"kind", "enf_config", "enf_adapter", "cnf_config", "meta"}
    noisy = ds.splits["val"].images[: len(clean)]
    out = []
    for name, change in rows.items():
        if set(change) - known:
            raise ValueError(f"ablation row {name!r}: unknown keys {sorted(set(change) - known)}")
        kind = change.get("kind", "enf")
        cfg = dict(field_cfg)
        for part in ("enf_config", "enf_adapter", "cnf_config"):
            cfg[part] = {**field_cfg[part], **change.get(part, {})}
        m = {**meta, **change.get("meta", {}), "num_steps": int(steps)}
        dec = decoder(kind, ds, adapter=field_adapter(kind, **cfg), meta=m, seed=seed,
                      eval_images=eval_images, progress=progress)  # fmt: skip
        rec = reconstruction.noise_free_psnr(dec.adapter, dec.params, ds.path, "val", noisy,
                                             clean=clean, **fit)  # fmt: skip
        row = {
            "name": name, "kind": kind, "psnr_clean": rec.clean.mean(1).tolist(),
            "decoder_params": dec.num_params, "latent_floats": dec.latent_floats,
            "outer_steps": dec.meta["outer_steps"],
            "ms_per_outer_step": outer_step_ms(dec.meta["history"]), "cached": dec.cached,
        }  # fmt: skip
        if kind == "enf":
            mo = equivariance.latent_motion(
                dec.adapter, dec.params, noisy, steps=fit["steps"], pixels=fit["pixels"],
                sampling=fit["sampling"], batch_size=fit["batch_size"], seed=fit["seed"],
                targets=clean,
            )  # fmt: skip
            row["pose_motion_px"] = mo["median_position_px"]
            row["psnr_frozen_poses"] = mo["psnr_frozen_poses_db"]
            row["psnr_adapted_poses"] = mo["psnr_adapted_poses_db"]
        out.append(row)
    return out


# ----------------------------------------------------------------------------- classifier stages
# (classifier training, data efficiency, rotation curves) follow here.
#
# Classifiers read the study dataset and the latent stores through :class:`ClassifierInputs`.
# :func:`classifier` trains (or restores) one model for a step count written in the profile and
# evaluates it on the test split once; :func:`rotation_curves` measures every model under
# rotations; :func:`data_efficiency` retrains on fractions of the training split, reusing the
# 100 % runs of :func:`classifier` from the cache.

#: Input kind -> the model whose inputs :func:`classifier_inputs` loads for it.
_KIND_MODEL = {"enf": "enf_mlp", "cnf": "cnf_mlp", "image": "resnet18"}


def classifier_cache_dir() -> Path:
    """Default folder of the classifier, rotation and data-efficiency caches."""
    return repo_path("checkpoints", "classifiers")


@dataclasses.dataclass(frozen=True)
class ClassifierInputs:
    """What the classifiers see, per input kind ("enf", "cnf", "image").

    Attributes:
        splits: kind -> split -> (x, y): images (n, H, W) float32 in [0, 1] for "image",
            batched :class:`enflens.geometry.Latents` (numpy) for "enf", (n, d) float32 for
            "cnf"; labels (n,) int64, the same for every kind.
        tags: kind -> provenance recorded in the cache keys (dataset file, latent store names).
        decoders: latent kind -> decoder checkpoint (the rotation refits re-encode with it).
        encodings: latent kind -> how its test store was encoded (``steps``, ``pixels``,
            ``sampling``, ``seed``, ``batch_size``), the settings of the refits.
    """

    splits: dict[str, dict[str, tuple[Any, np.ndarray]]]
    tags: dict[str, dict[str, Any]]
    decoders: dict[str, Path] = dataclasses.field(default_factory=dict)
    encodings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def split(self, name: str, split: str) -> tuple[Any, np.ndarray]:
        """(x, y) of ``split`` for model ``name``."""
        kind = registry.input_kind(name)
        if kind not in self.splits:
            raise ValueError(f"ClassifierInputs: no {kind!r} inputs for model {name!r}")
        return self.splits[kind][split]


def classifier_inputs(
    dataset_file: str | Path,
    meta: study_clf.MetaLearningOutputs,
    kinds: tuple[str, ...] = ("enf", "cnf", "image"),
) -> ClassifierInputs:
    """Load every split of the study dataset and of notebook 03's latent stores.

    Args:
        dataset_file: the study dataset (:func:`dataset_path`).
        meta: :func:`enflens.study.classifiers.read_meta_learning` of notebook 03's results.
        kinds: input kinds to load.

    Returns:
        :class:`ClassifierInputs`; each latent store is checked against its decoder's hash and
        the dataset's labels.
    """
    dataset_file = Path(dataset_file)
    if not is_cached(dataset_file):
        raise FileNotFoundError(f"{dataset_file} not found: run notebook 01 with this profile")
    splits, tags, decoders, encodings = {}, {}, {}, {}
    for kind in kinds:
        name = _KIND_MODEL[kind]
        expected = None
        if kind != "image":
            decoders[kind] = meta.decoders[kind]
            expected = read_decoder_meta(meta.decoders[kind])["hash"]
            encodings[kind] = study_clf.encoding_settings(meta.latent_stores[kind]["test"])
        splits[kind] = {
            s: study_clf.load_inputs(name, s, dataset_path=dataset_file,
                                     latent_stores=meta.latent_stores,
                                     expected_decoder_hash=expected)  # fmt: skip
            for s in data.SPLITS
        }
        tags[kind] = study_clf.data_tag(name, dataset_file, meta.latent_stores)
    return ClassifierInputs(splits, tags, decoders, encodings)


@dataclasses.dataclass
class ClassifierStage:
    """One trained classifier and its test metrics.

    Attributes:
        name: model name (:data:`enflens.classify.registry.MODEL_NAMES`).
        model: the trained model in evaluation mode (best validation state).
        history: :func:`enflens.classify.train.fit`'s history (restored: the original one).
        test: :func:`enflens.evaluate.metrics.evaluate` on the whole test split.
        path: the run folder ``<cache_dir>/<name>-<hash>`` (orbax state, history, params).
        key: the cache key (:func:`stage_key` ``"classifier"``).
        cached: True when restored instead of trained.
        n_train: training examples used.
    """

    name: str
    model: nnx.Module
    history: dict[str, Any]
    test: dict[str, Any]
    path: Path
    key: dict[str, Any]
    cached: bool
    n_train: int

    def entry(self) -> dict[str, Any]:
        """The model's record in ``05_classifiers.json`` (:func:`report.model_entry`)."""
        return report.model_entry({**self.history, "cached": self.cached}, self.test,
                                  count_params(self.model))  # fmt: skip


def _classifier_run(
    name: str,
    inputs: ClassifierInputs,
    train_cfg: dict[str, Any],
    *,
    model_cfg: dict[str, Any] | None,
    augment_cfg: dict[str, Any] | None,
    seed: int,
    fraction: float,
    cache_dir: str | Path | None,
) -> tuple[tuple[Any, np.ndarray], dict[str, Any], Path]:
    """(training data, cache key, run folder) of one classifier run."""
    x_tr, y_tr = inputs.split(name, "train")
    if fraction < 1.0:
        idx = study_clf.subsample(y_tr, fraction, seed=seed)
        x_tr, y_tr = train.take(x_tr, idx), y_tr[idx]
    tag = {**inputs.tags.get(registry.input_kind(name), {}), "fraction": float(fraction)}
    params = study_clf.cache_params(
        name, (x_tr, y_tr), inputs.split(name, "val"), model_cfg=model_cfg, train_cfg=train_cfg,
        augment_cfg=augment_cfg, seed=seed, data_tag=tag,
    )  # fmt: skip
    key = stage_key("classifier", **params)
    run_dir = Path(cache_dir or classifier_cache_dir()) / f"{name}-{param_hash(key)}"
    return (x_tr, y_tr), key, run_dir


def _run_complete(run_dir: Path) -> bool:
    return all((run_dir / f).exists() for f in ("state", "history.json", "params.json"))


def classifier(
    name: str,
    inputs: ClassifierInputs,
    train_cfg: dict[str, Any],
    *,
    model_cfg: dict[str, Any] | None = None,
    augment_cfg: dict[str, Any] | None = None,
    seed: int = 0,
    fraction: float = 1.0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> ClassifierStage:
    """Train classifier ``name`` for exactly ``train_cfg["steps"]`` steps (or restore it from the
    cache), selecting on the validation split, then evaluate it once on the test split (the
    metrics are stored beside the run, keyed by the content hash of the test inputs, so a
    restored run is not evaluated again).

    Args:
        name: one of :data:`enflens.classify.registry.MODEL_NAMES`.
        inputs: :class:`ClassifierInputs`.
        train_cfg: :class:`enflens.classify.train.TrainConfig` fields (``steps``,
            ``eval_every``, ``batch_size``, ``learning_rate``, ``patience``, ...; ``seed`` comes
            from ``seed``).
        model_cfg: overrides of the model's config dataclass.
        augment_cfg: overrides of :data:`enflens.classify.registry.DEFAULT_AUGMENT` for the
            model's input kind.
        seed: initialisation, data order, augmentation and subsample seed.
        fraction: stratified fraction of the training split (:func:`subsample`), in (0, 1].
        cache_dir: folder of the run folders (default ``checkpoints/classifiers``).

    Returns:
        :class:`ClassifierStage`. The cache key holds the step counts, all configs, the content
        hashes of the training and validation data, their provenance and the code version.
    """
    (x_tr, y_tr), key, run_dir = _classifier_run(
        name, inputs, train_cfg, model_cfg=model_cfg, augment_cfg=augment_cfg, seed=seed,
        fraction=fraction, cache_dir=cache_dir,
    )  # fmt: skip
    kind = registry.input_kind(name)
    model = registry.build_model(name, x_tr, model_cfg or {}, seed)
    cached = parallel.agree(_run_complete(run_dir))
    if cached:
        train.restore_checkpoint(model, run_dir)
        model.eval()
        hist = json.loads((run_dir / "history.json").read_text())
    else:
        augment = registry.make_augmentation(kind, registry.augment_settings(kind, augment_cfg),
                                             x_tr)  # fmt: skip
        cfg = from_dict(train.TrainConfig, {**train_cfg, "seed": seed, "progress": progress},
                        "train_cfg")  # fmt: skip
        hist = train.fit(model, (x_tr, y_tr), inputs.split(name, "val"), cfg, augment=augment)
        if parallel.is_main_process():
            train.save_checkpoint(model, run_dir)
            write_json(run_dir / "history.json", hist)
            write_json(run_dir / "params.json", key)  # written last: marks the run complete
        parallel.barrier(f"classifier {run_dir.name}")
    x_te, y_te = inputs.split(name, "test")
    test_file = run_dir / f"test-{tree_hash((x_te, np.asarray(y_te, np.int64)))}.json"
    if parallel.agree(test_file.is_file()):  # this model on these inputs was evaluated before
        test = json.loads(test_file.read_text())
    else:
        test = metrics.evaluate(model, x_te, y_te)
        if parallel.is_main_process():
            write_json(test_file, test)
    return ClassifierStage(name, model, hist, test, run_dir, key, cached, len(y_tr))


@dataclasses.dataclass(frozen=True)
class RotationStage:
    """Rotation robustness of every model (what notebook 05 plots and records).

    Attributes:
        angles_deg: (A,) rotation angles in degrees, 0 first (:func:`rotation.rotation_angles`).
        curves: model -> {``accuracy`` (A,) (CNNs: rotated test images; latent models: the
            rotated images re-encoded), ``n_images``, ``latent_action_accuracy`` (A,) or None
            (ENF models: the SE(2) action on the stored test latents), ``latent_action_n_images``,
            ``rotated_accuracy`` / ``rotated_accuracy_latent_action`` (means over the nonzero
            angles), ``invariance_error`` (ENF models; else None)}.
        refit_psnr_db: latent kind -> (A,) mean reconstruction PSNR of the refits in dB.
        refit_seconds: latent kind -> wall time of the refits (a timing; 0 when cached).
        n_images, refit_images, invariance_images: test images of each measure.
        path: the cached JSON; cached: True when read from it.
    """

    angles_deg: list[float]
    curves: dict[str, dict[str, Any]]
    refit_psnr_db: dict[str, list[float]]
    refit_seconds: dict[str, float]
    n_images: int
    refit_images: int
    invariance_images: int
    path: Path
    cached: bool

    def model_fields(self, name: str) -> dict[str, Any]:
        """What model ``name``'s record in ``05_classifiers.json`` gets from this stage:
        ``rotated_accuracy``, ``rotated_accuracy_latent_action``, ``invariance_error`` and the
        ``rotation_curve`` (angles, accuracies and image counts)."""
        c = self.curves[name]
        curve = {"angles_deg": self.angles_deg, "accuracy": c["accuracy"],
                 "n_images": c["n_images"], "latent_action_accuracy": c["latent_action_accuracy"],
                 "latent_action_n_images": c["latent_action_n_images"]}  # fmt: skip
        return {
            "rotated_accuracy": c["rotated_accuracy"],
            "rotated_accuracy_latent_action": c["rotated_accuracy_latent_action"],
            "invariance_error": c["invariance_error"],
            "rotation_curve": curve,
        }

    def summary(self) -> dict[str, Any]:
        """The ``rotation`` record of ``05_classifiers.json`` (curves are in the model records)."""
        return {
            "angles_deg": self.angles_deg, "n_images": self.n_images,
            "refit_images": self.refit_images, "refit_psnr_db": self.refit_psnr_db,
            "refit_seconds": self.refit_seconds, "invariance_images": self.invariance_images,
        }  # fmt: skip


def _subset(y: np.ndarray, count: int, seed: int) -> np.ndarray:
    return study_clf.subsample(y, min(1.0, count / len(y)), seed=seed)


def rotation_curves(
    runs: dict[str, ClassifierStage],
    inputs: ClassifierInputs,
    *,
    n_angles: int,
    rot_images: int,
    refit_images: int,
    invariance_images: int,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> RotationStage:
    """Accuracy of every model against the rotation angle of the test images (or the cache).

    CNNs classify the rotated test images (``rot_images`` of them, stratified); latent models
    classify the rotated images re-encoded with their decoder and the test store's encoding
    settings (``refit_images``; :func:`rotation.refit_rotated`), and ENF models also the SE(2)
    action (a, 0) applied to the stored test latents (``rot_images``). The invariance error of
    the ENF models' logits uses ``invariance_images`` test latents. Angles: 0 and
    ``n_angles - 1`` random ones (:func:`rotation.rotation_angles` with ``seed``).

    Returns:
        :class:`RotationStage`, cached as ``<cache_dir>/rotation-<hash>.json``; the key holds
        the classifier runs, the decoders, the encodings, the counts, the seed and the code
        version.
    """
    y_te = next(iter(inputs.splits.values()))["test"][1]
    rot_idx = _subset(y_te, rot_images, seed)
    refit_idx = _subset(y_te, refit_images, seed + 1)
    inv_idx = _subset(y_te, invariance_images, seed + 2)
    latent_kinds = sorted({registry.input_kind(n) for n in runs} - {"image"})
    key = stage_key(
        "rotation", runs={n: r.path.name for n, r in runs.items()},
        decoders={k: read_decoder_meta(inputs.decoders[k])["hash"] for k in latent_kinds},
        encodings={k: inputs.encodings.get(k, {}) for k in latent_kinds},
        test_labels=tree_hash(np.asarray(y_te, np.int64)), n_angles=n_angles,
        rot_images=len(rot_idx), refit_images=len(refit_idx),
        invariance_images=len(inv_idx), seed=seed,
    )  # fmt: skip
    path = Path(cache_dir or classifier_cache_dir()) / f"rotation-{param_hash(key)}.json"
    counts = dict(n_images=len(rot_idx), refit_images=len(refit_idx),
                  invariance_images=len(inv_idx))  # fmt: skip
    if is_cached(path):
        saved = json.loads(path.read_text())
        return RotationStage(**saved, **counts, path=path, cached=True)
    angles = rotation.rotation_angles(n_angles, seed=seed)
    images = _test_images(inputs)
    refits, refit_psnr, refit_seconds = {}, {}, {}
    for kind in latent_kinds:
        t0 = time.perf_counter()
        refits[kind], psnr = rotation.refit_rotated(
            inputs.decoders[kind], images[refit_idx], angles, progress=progress,
            **inputs.encodings.get(kind, {}),
        )  # fmt: skip
        refit_seconds[kind] = time.perf_counter() - t0
        refit_psnr[kind] = psnr.mean(1).tolist()
    curves = {}
    for name, run in runs.items():
        kind = registry.input_kind(name)
        x_te = inputs.split(name, "test")[0]
        curve: dict[str, Any] = {"latent_action_accuracy": None, "latent_action_n_images": 0}
        if kind == "image":
            curve["accuracy"] = rotation.image_rotation_curve(run.model, images[rot_idx],
                                                              y_te[rot_idx], angles)  # fmt: skip
            curve["n_images"] = len(rot_idx)
        else:
            curve["accuracy"] = rotation.refit_curve(run.model, refits[kind], y_te[refit_idx])
            curve["n_images"] = len(refit_idx)
        if kind == "enf":
            curve["latent_action_accuracy"] = rotation.latent_action_curve(
                run.model, train.take(x_te, rot_idx), y_te[rot_idx], angles
            )
            curve["latent_action_n_images"] = len(rot_idx)
        curve["rotated_accuracy"] = rotation.mean_rotated(angles, curve["accuracy"])
        la = curve["latent_action_accuracy"]
        curve["rotated_accuracy_latent_action"] = (
            None if la is None else rotation.mean_rotated(angles, la)
        )
        curve["invariance_error"] = rotation.invariance_error(
            name, run.model, train.take(x_te, inv_idx), seed=seed
        )
        curves[name] = curve
    saved = {"angles_deg": [float(a) for a in angles], "curves": curves,
             "refit_psnr_db": refit_psnr, "refit_seconds": refit_seconds}  # fmt: skip
    write_json(path, saved)
    record_params(path, key)
    return RotationStage(**saved, **counts, path=path, cached=False)


def _test_images(inputs: ClassifierInputs) -> np.ndarray:
    if "image" not in inputs.splits:
        raise ValueError("rotation_curves: the inputs hold no test images (kind 'image')")
    return np.asarray(inputs.splits["image"]["test"][0], np.float32)


@dataclasses.dataclass(frozen=True)
class DataEfficiencyStage:
    """Test accuracy against the size of the training set.

    Attributes:
        points: model -> one record per fraction: ``fraction``, ``n_train``, ``steps``,
            ``accuracy``, ``auc_macro``, ``n_params``, ``restored_from_cache``,
            ``train_seconds`` (a timing: the original one when restored).
        path: the cached JSON summary; cached: True when read from it.
    """

    points: dict[str, list[dict[str, Any]]]
    path: Path
    cached: bool


def data_efficiency(
    names: list[str],
    inputs: ClassifierInputs,
    train_cfgs: dict[str, dict[str, Any]],
    fractions: list[float],
    *,
    steps: dict[str, int],
    evaluations: int = 2,
    model_cfgs: dict[str, dict[str, Any]] | None = None,
    augment: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> DataEfficiencyStage:
    """Train every model of ``names`` on stratified fractions of the training split.

    A fraction of 1 is the run of notebook 05 (``train_cfgs[name]``, restored from the
    :func:`classifier` cache when 05 ran); a smaller fraction gets ``steps[name]`` steps,
    ``evaluations`` validations evenly spaced over them and 05's other settings. Model selection
    uses the full validation split; each run is evaluated once on the test split.

    Args:
        names: models; train_cfgs: model -> notebook 05's train config.
        fractions: in (0, 1].
        steps, evaluations: step budget and number of validations of the runs on fractions
            below 1.
        model_cfgs: model -> config overrides; augment: input kind -> augmentation overrides.
        seed: as notebook 05's (also draws the subsets).

    Returns:
        :class:`DataEfficiencyStage`, cached as ``<cache_dir>/data_efficiency-<hash>.json``
        whose key holds every run's classifier key (step counts included) and the code version.
    """
    model_cfgs, augment = model_cfgs or {}, augment or {}
    plan = []
    for name in names:
        for fraction in fractions:
            cfg = dict(train_cfgs[name])
            if fraction < 1.0:
                n = int(steps[name])
                cfg.update(steps=n, eval_every=max(1, -(-n // int(evaluations))))
            kw = dict(model_cfg=model_cfgs.get(name, {}), seed=seed, fraction=float(fraction),
                      augment_cfg=augment.get(registry.input_kind(name)))  # fmt: skip
            _, key, _ = _classifier_run(name, inputs, cfg, cache_dir=cache_dir, **kw)
            plan.append((name, cfg, kw, param_hash(key)))
    key = stage_key("data_efficiency", runs=[(n, kw["fraction"], h) for n, _, kw, h in plan])
    path = Path(cache_dir or classifier_cache_dir()) / f"data_efficiency-{param_hash(key)}.json"
    if is_cached(path):
        points = json.loads(path.read_text())
        for pts in points.values():
            for p in pts:
                p["restored_from_cache"] = True
        return DataEfficiencyStage(points, path, True)
    points: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for name, cfg, kw, _ in plan:
        run = classifier(name, inputs, cfg, cache_dir=cache_dir, progress=progress, **kw)
        points[name].append({
            "fraction": kw["fraction"], "n_train": run.n_train, "steps": run.history["steps"],
            "accuracy": run.test["accuracy"], "auc_macro": run.test["auc_macro"],
            "n_params": count_params(run.model), "restored_from_cache": run.cached,
            "train_seconds": run.history["train_seconds"],
        })  # fmt: skip
    write_json(path, points)
    record_params(path, key)
    return DataEfficiencyStage(points, path, False)
