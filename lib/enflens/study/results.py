"""Where notebooks put what they measured: results/<profile>/<notebook>.json and figures/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from enflens.io import atomic_path, repo_path, write_json


def save_results(notebook: str, profile: str, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` to ``results/<profile>/<notebook>.json`` (atomic) and return the path."""
    if not notebook or not profile:
        raise ValueError(f"save_results: notebook={notebook!r} and profile={profile!r} must be set")
    return write_json(repo_path("results", profile, f"{notebook}.json"), metrics)


def savefig(fig: Any, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as ``figures/<name>.png`` atomically and return the path.

    ``name`` follows the convention ``<notebook>_<what>``, e.g. ``01_lensing_data_samples``;
    the folder is :func:`figures_dir`.
    """
    out = figures_dir() / f"{name}.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return out


#: Environment variable the pipeline sets to the running profile (see :func:`figures_dir`).
PROFILE_ENV = "ENFLENS_PROFILE"


def figures_dir() -> Path:
    """``figures/`` for the default cpu profile (the committed figures, also when a notebook is
    run by hand), ``figures/<profile>/`` when the pipeline runs another profile, so a smoke or
    full run never overwrites the figures the README shows."""
    profile = os.environ.get(PROFILE_ENV, "cpu")
    return repo_path("figures") if profile == "cpu" else repo_path("figures", profile)


#: Keys each notebook promises in ``results/<profile>/<notebook>.json`` (checked by the tests).
PROMISED_KEYS: dict[str, tuple[str, ...]] = {
    "01_lensing_data": ("recipe", "n_images", "sim_images_per_second", "sha256"),
    "02_enf_theory": ("equivariance_error", "decode_pixels_per_second", "n_params"),
    "03_meta_learning": (
        "psnr_db",
        "outer_steps_per_second",
        "fit_images_per_second",
        "train_seconds",
        "ablation",
    ),
    "04_latent_visualization": ("end_to_end", "latent_motion"),
    "05_classifiers": ("models", "pipeline_costs"),
    "06_results": ("profile", "package_versions", "jax_devices", "notebook_seconds"),
}
