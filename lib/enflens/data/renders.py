"""Noise-free renders of stored samples: the reference that reconstruction PSNR is measured
against (a field that fits the lens but not the noise scores higher against it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from enflens.data.lensing import render
from enflens.data.store import sample_params


def noise_free_images(dataset_path: str | Path, split: str, indices: Any) -> np.ndarray:
    """Noise-free renders of stored samples, normalised like the stored (noisy) images.

    The dataset stores ``clip(noisy, 0) / max(noisy)``; the noise-free image of sample ``i`` is
    re-rendered by the simulator (:func:`enflens.data.lensing.render`) and divided by the *same*
    per-image maximum (the stored ``image_scale``), so that both live on one scale.

    Args:
        dataset_path: a generated study dataset (.h5) (imported DeepLense files have no
            simulator description and raise ValueError).
        split: split name; indices: (n,) sample indices in that split.

    Returns:
        (n, H, W) float32, >= 0 (may slightly exceed 1 where noise pulled the maximum down).
    """
    path = Path(dataset_path)
    if not path.is_file():
        raise FileNotFoundError(f"noise_free_images: dataset file {path} does not exist")
    out = []
    with h5py.File(path, "r") as f:
        for i in np.asarray(indices, int).reshape(-1):
            p = sample_params(f, split, int(i))
            clean = render(p, noise=False)
            out.append(np.clip(clean, 0.0, None) / p["image_scale"])
    if not out:
        raise ValueError("noise_free_images: no indices given")
    return np.stack(out).astype(np.float32)
