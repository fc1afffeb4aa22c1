"""Reconstruction quality of a meta-learned field: PSNR after each inner step against the noisy
image that was fitted and against the noise-free render of the same sample."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from enflens.data.renders import noise_free_images
from enflens.fields.adapters import FieldAdapter
from enflens.grid import psnr
from enflens.metalearn.encode import psnr_path


@dataclasses.dataclass(frozen=True)
class Reconstruction:
    """PSNR of fitted images, per inner step.

    Attributes:
        noisy: (K+1, n) dB against the fitted (noisy) images.
        clean: (K+1, n) dB against the noise-free renders.
        noise_floor: (n,) dB of the noisy image against its noise-free render.
        indices: (n,) sample indices of the split.
    """

    noisy: np.ndarray
    clean: np.ndarray
    noise_floor: np.ndarray
    indices: np.ndarray

    def summary(self) -> dict[str, Any]:
        """Means for the results file: after K steps and per inner step, in dB."""
        return {
            "val_noisy": float(self.noisy[-1].mean()),
            "val_clean": float(self.clean[-1].mean()),
            "per_inner_step_noisy": self.noisy.mean(1).tolist(),
            "per_inner_step_clean": self.clean.mean(1).tolist(),
            "n_clean_images": int(len(self.indices)),
        }


def noise_free_psnr(
    adapter: FieldAdapter,
    params: dict,
    dataset_path: str | Path,
    split: str,
    images: np.ndarray,
    *,
    steps: int,
    pixels: int | None,
    sampling: str,
    batch_size: int,
    seed: int,
    clean: np.ndarray | None = None,
) -> Reconstruction:
    """PSNR after 0..K inner steps of fitting the first ``len(images)`` samples of ``split``.

    Args:
        images: (n, H, W) the stored (noisy) images of samples 0..n-1 of ``split``.
        steps, pixels, sampling, batch_size, seed: the encoding settings, so that step K
            reproduces the latent store.
        clean: the noise-free renders, if already computed (else re-rendered from the store).
    """
    idx = np.arange(len(images))
    if clean is None:
        clean = noise_free_images(dataset_path, split, idx)
    curves = psnr_path(
        adapter, params, images, {"clean": clean}, steps=steps, pixels=pixels,
        sampling=sampling, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    floor = np.asarray(psnr(images, clean))
    return Reconstruction(curves["fitted"], curves["clean"], floor, idx)
