"""What the fitted latent clouds carry: context embeddings and rotation-invariant summaries per
class (notebook 04).

Contexts are invariant under the group action (only poses move), so per-image summaries of them
are rotation invariant; so are the distance of a latent from the lens centre (the image centre),
its window, and its orientation relative to the radial direction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from enflens.geometry import Latents


@dataclasses.dataclass(frozen=True)
class ContextEmbedding:
    """2-D maps of the context vectors of ``n`` images.

    Attributes:
        per_latent: (m, 2) PCA of individual latents' contexts (a random subset of m);
            per_latent_labels: (m,) the class of each latent's image.
        per_image_pca, per_image_tsne: (n, 2) of each image's mean context; labels: (n,).
        explained_variance: PCA explained-variance ratios {"per_latent", "per_image_mean"}.
    """

    per_latent: np.ndarray
    per_latent_labels: np.ndarray
    per_image_pca: np.ndarray
    per_image_tsne: np.ndarray
    labels: np.ndarray
    explained_variance: dict[str, list[float]]


def context_embedding(
    latents: Latents, labels: np.ndarray, *, seed: int, perplexity: float,
    max_latents: int = 5000,
) -> ContextEmbedding:
    """PCA of per-latent contexts and PCA / t-SNE of per-image mean contexts (seeded).

    Args:
        latents: batched clouds (n, N, ...); labels: (n,).
        perplexity: t-SNE perplexity (capped at (n - 1) / 3).
    """
    ctx = np.asarray(latents.contexts)  # (n, N, D)
    mean_ctx = ctx.mean(axis=1)
    flat = ctx.reshape(-1, ctx.shape[-1])
    flat_y = np.repeat(labels, ctx.shape[1])
    sub = np.random.default_rng(seed + 1).choice(len(flat), min(max_latents, len(flat)),
                                                 replace=False)  # fmt: skip
    pca_latent = PCA(2).fit(flat[sub])
    pca_image = PCA(2).fit(mean_ctx)
    tsne = TSNE(2, perplexity=min(perplexity, (len(ctx) - 1) / 3), init="pca",
                random_state=seed).fit_transform(mean_ctx)  # fmt: skip
    return ContextEmbedding(
        per_latent=pca_latent.transform(flat[sub]),
        per_latent_labels=flat_y[sub],
        per_image_pca=pca_image.transform(mean_ctx),
        per_image_tsne=tsne,
        labels=np.asarray(labels),
        explained_variance={
            "per_latent": pca_latent.explained_variance_ratio_.tolist(),
            "per_image_mean": pca_image.explained_variance_ratio_.tolist(),
        },
    )


def invariant_summaries(latents: Latents, arcsec_per_unit: float) -> dict[str, np.ndarray]:
    """Per-latent rotation-invariant quantities, each (n, N): ``context_norm``,
    ``radius_arcsec`` (distance from the image centre), ``window`` and
    ``relative_orientation_deg`` (orientation minus the radial direction, in (-180, 180]).

    >>> z = Latents(positions=np.array([[[0.0, 1.0]]]), orientations=np.array([[np.pi / 2]]),
    ...             contexts=np.ones((1, 1, 2)), windows=np.ones((1, 1)))
    >>> {k: round(float(v[0, 0]), 3) for k, v in invariant_summaries(z, 3.0).items()}
    {'context_norm': 1.414, 'radius_arcsec': 3.0, 'window': 1.0, 'relative_orientation_deg': 0.0}
    """
    pos = np.asarray(latents.positions)
    rel = np.asarray(latents.orientations) - np.arctan2(pos[..., 1], pos[..., 0])
    return {
        "context_norm": np.linalg.norm(np.asarray(latents.contexts), axis=-1),
        "radius_arcsec": np.linalg.norm(pos, axis=-1) * arcsec_per_unit,
        "window": np.asarray(latents.windows),
        "relative_orientation_deg": np.degrees((rel + np.pi) % (2 * np.pi) - np.pi),
    }


def per_class_moments(
    summaries: dict[str, np.ndarray], labels: np.ndarray, class_names: Any
) -> dict[str, dict[str, dict[str, float]]]:
    """{quantity: {class: {"mean", "std"}}} over the latents of each class's images."""
    return {
        name: {class_names[c]: {"mean": float(v[labels == c].mean()),
                                "std": float(v[labels == c].std())}
               for c in range(len(class_names))}
        for name, v in summaries.items()
    }  # fmt: skip
