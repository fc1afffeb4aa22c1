"""Collect the study's measured numbers into one citable ``metrics.json`` (notebook 06).

Also holds the published anchors the results are shown next to. These are other runs on the same
simulation recipe (DeepLenseSim Model II), not on our images: they are context, not a comparison
on identical data.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

from enflens.classify.registry import input_kind
from enflens.io import repo_path
from enflens.study.results import PROMISED_KEYS

#: Published results on DeepLenseSim Model II ("Model A" in the slides) and the ENF slides.
#: Source: Cheeramvelil et al., NeurIPS 2023 ML4PS workshop; ML4SCI/DeepLense
#: (docs/references.md §1).
PUBLISHED_ANCHORS: list[dict[str, Any]] = [
    {
        "model": "C8 steerable CNN (e2cnn; code builds C4)",
        "accuracy": 99.02,
        "auc_macro": 0.99967,
        "source": "Cheeramvelil et al. 2023",
    },
    {
        "model": "ResNet50 from scratch",
        "accuracy": 96.87,
        "auc_macro": 0.99742,
        "source": "Cheeramvelil et al. 2023",
    },
    {
        "model": "Equivariant transformer",
        "accuracy": 92.41,
        "auc_macro": 0.99321,
        "source": "Cheeramvelil et al. 2023",
    },
    {
        "model": "Harmonic Net",
        "accuracy": 90.95,
        "auc_macro": 0.98516,
        "source": "Cheeramvelil et al. 2023",
    },
    {
        "model": "ResNet18 ImageNet-pretrained",
        "accuracy": 99.13,
        "auc_macro": 0.99959,
        "source": "Cheeramvelil et al. 2023",
    },
    {
        "model": "CvT transformer",
        "accuracy": 99.41,
        "auc_macro": None,
        "source": "K. Sachdev, DeepLense repository",
    },
]

STUDY_PACKAGES = (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "lenstronomy", "h5py", "numpy",
    "scipy", "scikit-learn", "papermill", "jupytext", "matplotlib", "seaborn",
)  # fmt: skip


def package_versions(packages: tuple[str, ...] = STUDY_PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` if absent), plus Python."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def host_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The host CPU the numbers were computed on: ``model`` (the ``model name`` line of
    ``cpuinfo``, followed by its ``cpu family`` and ``model`` numbers where it lists them, else
    :func:`platform.processor` or :func:`platform.machine`) and ``isa`` (which of AVX2 / AVX-512F
    its flags list; empty where ``cpuinfo`` cannot be read). The numbers matter: some virtual
    machines name every AMD EPYC generation just "AMD EPYC".

    XLA compiles CPU programs for the host's instruction set, so two CPU models can round
    float32 sums differently. Bitwise equal stages need the same CPU model as well as the same
    code, seed and profile (``bench/RESULTS.md``: notebooks 01-03 on an AVX2-only AMD EPYC against
    the committed run)."""
    model, isa = platform.processor() or platform.machine(), []
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return {"model": model, "isa": isa}
    numbers = {}
    for line in lines:  # the first processor's block: its flags line ends it
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name":
            model = value
        elif key in ("cpu family", "model"):
            numbers[key] = value
        elif key == "flags":
            flags = set(value.split())
            isa = [name for name in ("avx2", "avx512f") if name in flags]
            break
    if len(numbers) == 2:
        model += f" (family {numbers['cpu family']}, model {numbers['model']})"
    return {"model": model, "isa": isa}


def jax_devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.device_kind}" for d in jax.devices()]


def collect(profile: str, results_dir: Path | None = None) -> dict[str, Any]:
    """Read ``results/<profile>/NN_*.json`` of notebooks 01-05 and the pipeline timings.

    Returns a dict with ``profile``, ``package_versions``, ``jax_devices``, ``host_cpu``,
    ``notebook_seconds``
    (from ``runs/<profile>/timings.json``) and one entry per notebook found. Raises
    ``FileNotFoundError`` naming the first missing result file.
    """
    results_dir = results_dir or repo_path("results", profile)
    out: dict[str, Any] = {
        "profile": profile,
        "package_versions": package_versions(),
        "jax_devices": jax_devices(),
        "host_cpu": host_cpu(),
    }
    for name in PROMISED_KEYS:
        if name == "06_results":
            continue
        path = results_dir / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run notebook {name} with profile {profile}")
        try:
            out[name] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
    timings = repo_path("runs", profile, "timings.json")
    out["notebook_seconds"] = json.loads(timings.read_text()) if timings.exists() else {}
    return out


def model_entry(hist: dict[str, Any], test: dict[str, Any], n_params: int) -> dict[str, Any]:
    """One model's results record: test metrics (:func:`evaluate`), size, training summary and
    the curves per validation (``history``: step, val_acc, val_loss, train_loss, seconds).
    ``train_seconds`` and ``history["seconds"]`` are timings; everything else is a result."""
    return {
        **test,
        "n_params": int(n_params),
        "steps": int(hist["steps"]),
        "epochs": float(hist["epochs"]),
        "best_step": int(hist["best_step"]),
        "best_val_acc": float(hist["best_val_acc"]),
        "evaluations": int(hist["evaluations"]),
        "stop_reason": hist["stop_reason"],
        "train_seconds": float(hist["train_seconds"]),
        "restored_from_cache": bool(hist.get("cached", False)),
        "history": {
            k: [float(v) for v in hist[k]]
            for k in ("step", "val_acc", "val_loss", "train_loss", "seconds")
        },
    }


def results_table(models: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the per-model results (accuracy, AUC, rotations, size, time)."""
    head = (
        "| model | accuracy | AUC (macro) | rotated acc. | latent-action acc. | "
        "invariance err. | params | steps | best step | train s |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [
        f"| {name} | {f(r['accuracy'], '.4f')} | {f(r['auc_macro'], '.4f')} | "
        f"{f(r.get('rotated_accuracy'), '.4f')} | "
        f"{f(r.get('rotated_accuracy_latent_action'), '.4f')} | "
        f"{f(r.get('invariance_error'), '.1e')} | {r['n_params']:,} | {r['steps']} | "
        f"{r['best_step']} | {f(r['train_seconds'], '.0f')} |"
        for name, r in models.items()
    ]
    return head + "\n".join(rows)


def pipeline_costs(meta03: dict[str, Any], models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Wall time of each model's whole route: field meta-learning, encoding, classifier training.

    A latent classifier pays for its field: the meta-learning of the decoder (notebook 03's
    ``train_seconds[kind]``) and the encoding of the train, validation and test splits into
    latent stores (``encode_seconds[kind]``, recorded with the stores, so also known when they
    were reused). The three ENF classifiers share one decoder and one set of stores, so each row
    shows the full cost of its route, not a share. The image CNNs pay only for their training.
    All values are timings (seconds on the machine that produced them).

    Args:
        meta03: notebook 03's results (``results/<profile>/03_meta_learning.json``).
        models: model name -> results record (:func:`model_entry`; ``train_seconds`` used).

    Returns:
        model name -> ``{"meta_learning_seconds", "encoding_seconds", "classifier_seconds",
        "total_seconds"}``; a field cost that was not recorded is None, and so is the total.

    Raises:
        KeyError: ``meta03`` lacks the field of a latent model (naming model and field).
    """
    out: dict[str, Any] = {}
    for name, record in models.items():
        kind = input_kind(name)
        if kind == "image":
            meta_s, enc_s = 0.0, 0.0
        else:
            try:
                meta_s = meta03["train_seconds"][kind]
                enc_s = meta03["encode_seconds"][kind]
            except KeyError as e:
                raise KeyError(
                    f"pipeline_costs: notebook 03 results lack {e} for model {name!r} "
                    f"(field {kind!r}); rerun notebook 03"
                ) from None
        clf_s = float(record["train_seconds"])
        parts = [meta_s, enc_s, clf_s]
        out[name] = {
            "meta_learning_seconds": meta_s,
            "encoding_seconds": enc_s,
            "classifier_seconds": clf_s,
            "total_seconds": None if None in parts else float(sum(parts)),
        }
    return out


def pipeline_costs_table(costs: dict[str, Any], models: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`pipeline_costs` next to each model's test accuracy and steps."""

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.0f}"

    head = (
        "| model | test accuracy | classifier steps | meta-learning s | encoding s | "
        "classifier s | total s |\n|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {name} | {models[name]['accuracy']:.4f} | {models[name]['steps']} | "
        f"{f(c['meta_learning_seconds'])} | {f(c['encoding_seconds'])} | "
        f"{f(c['classifier_seconds'])} | {f(c['total_seconds'])} |"
        for name, c in costs.items()
    ]
    return head + "\n".join(rows)
