"""The figures of notebooks 01-04, one function each: ``fig = figure_name(...)``.

Every function returns a matplotlib figure and draws nothing else; the notebooks save it with
:func:`enflens.study.results.savefig`. Images are drawn on the [-1, 1]^2 grid with
``origin="lower"`` (:mod:`enflens.viz`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from enflens.grid import psnr
from enflens.metalearn.outer import history_table
from enflens.viz import show_image

COLORS = {"enf": "tab:blue", "cnf": "tab:orange"}


def training_curves(histories: Mapping[str, list[dict]], inner_steps: int) -> Any:
    """Outer loss and validation PSNR after K inner steps, against outer steps and wall time.

    Args:
        histories: field kind -> :func:`enflens.metalearn.outer.meta_train` history.
        inner_steps: K (for the axis label).
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
    for kind, history in histories.items():
        h = history_table(history)
        kw = {"color": COLORS.get(kind), "label": kind.upper()}
        axes[0, 0].semilogy(h["step"], h["loss"], **kw)
        axes[0, 1].semilogy(h["seconds"], h["loss"], **kw)
        if len(h["val_step"]):
            axes[1, 0].plot(h["val_step"], h["val_psnr"][:, -1], "o-", **kw)
            axes[1, 1].plot(h["val_seconds"], h["val_psnr"][:, -1], "o-", **kw)
    for ax in axes[:, 0]:
        ax.set_xlabel("outer step")
    for ax in axes[:, 1]:
        ax.set_xlabel("wall time (s)")
    for ax in axes[0]:
        ax.set_ylabel("outer MSE (train batches)")
    for ax in axes[1]:
        ax.set_ylabel(f"val PSNR after {inner_steps} steps (dB)")
    axes[0, 0].legend()
    return fig


def psnr_by_inner_step(curves: Mapping[str, Any]) -> Any:
    """Mean PSNR (and the 16-84 % band) after each inner step, against the noisy and the
    noise-free images. ``curves``: kind -> :class:`enflens.evaluate.reconstruction.
    Reconstruction`."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", sharey=True)
    for ax, target in zip(axes, ("noisy", "clean"), strict=True):
        for kind, rec in curves.items():
            c = getattr(rec, target)
            steps = np.arange(len(c))
            lo, hi = np.percentile(c, [16, 84], axis=1)
            ax.fill_between(steps, lo, hi, color=COLORS.get(kind), alpha=0.2)
            ax.plot(steps, c.mean(1), "o-", color=COLORS.get(kind), label=kind.upper())
            ax.set_xticks(steps)
        ax.set_xlabel("inner step")
        ax.set_title(f"against the {'noisy' if target == 'noisy' else 'noise-free'} image")
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend()
    return fig


def reconstructions(
    noisy: np.ndarray,
    clean: np.ndarray,
    fits: Mapping[str, np.ndarray],
    row_names: Sequence[str],
) -> Any:
    """Rows: images; columns: noisy input, noise-free render, then per field its fit and the
    residual against the noise-free render (one colour scale for all residuals).

    Args:
        noisy, clean: (R, H, W); fits: kind -> (R, H, W) reconstructions; row_names: (R,).
    """
    lim = max(float(np.abs(f - clean).max()) for f in fits.values())
    cols = ["noisy input", "noise-free"]
    for kind in fits:
        cols += [kind.upper(), f"{kind.upper()} - noise-free"]
    fig, axes = plt.subplots(len(noisy), len(cols), figsize=(2.2 * len(cols), 2.2 * len(noisy)),
                             layout="constrained", squeeze=False)  # fmt: skip
    for r in range(len(noisy)):
        panels = [noisy[r], clean[r]]
        for f in fits.values():
            panels += [f[r], f[r] - clean[r]]
        for c, (ax, img) in enumerate(zip(axes[r], panels, strict=True)):
            resid = c >= 2 and c % 2 == 1
            vrange = {"vmin": -lim, "vmax": lim} if resid else {"vmin": 0, "vmax": 1}
            im = show_image(ax, img, cmap="RdBu_r" if resid else "magma", **vrange)
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
            if c >= 2 and c % 2 == 0:
                score = float(psnr(img[None], clean[r][None])[0])
                ax.set_xlabel(f"{score:.1f} dB", fontsize=8)
        axes[r, 0].set_ylabel(row_names[r])
    fig.colorbar(im, ax=axes[:, -1], shrink=0.6, label="residual")
    return fig


# ----------------------------------------------------------------------------- notebook 02

BI_COLORS = {"translation": "tab:blue", "roto_translation": "tab:green",
             "isotropic": "tab:orange", "absolute": "tab:red"}  # fmt: skip


def _field(ax: Any, img: np.ndarray, title: str, latents: Any = None, vlim: Any = None) -> Any:
    im = ax.imshow(img, origin="lower", extent=(-1, 1, -1, 1), cmap="magma",
                   vmin=vlim[0] if vlim else None, vmax=vlim[1] if vlim else None)  # fmt: skip
    if latents is not None:
        p, th = np.asarray(latents.positions[0]), np.asarray(latents.orientations[0])
        ax.quiver(p[:, 0], p[:, 1], np.cos(th), np.sin(th), color="cyan", scale=18, width=0.006)
        ax.scatter(p[:, 0], p[:, 1], s=8, c="cyan")
    ax.set(title=title, xlim=(-1, 1), ylim=(-1, 1), xticks=[], yticks=[])
    return im


def moved_fields(demos: Mapping[str, Mapping[str, Any]]) -> Any:
    """One row per bi-invariant: f(x; z), the field moved by g, the field of the moved latents
    and their difference. ``demos``: bi -> :func:`enflens.evaluate.decoder.moved_fields`."""
    fig, axes = plt.subplots(len(demos), 4, figsize=(15, 3.8 * len(demos)), squeeze=False)
    for row, (bi, d) in zip(axes, demos.items(), strict=True):
        vlim = (float(d["base"].min()), float(d["base"].max()))
        _field(row[0], d["base"], f"{bi}: f(x; z)", d["latents"], vlim)
        _field(row[1], d["moved"], "field moved by g: f(g⁻¹x; z)", d["moved_latents"], vlim)
        _field(row[2], d["decoded_moved"], "latents moved by g: f(x; g z)", d["moved_latents"],
               vlim)  # fmt: skip
        diff = np.abs(d["decoded_moved"] - d["moved"])
        im = _field(row[3], diff, f"|difference|, max rel. {d['relative_error']:.1e}")
        fig.colorbar(im, ax=row[3], fraction=0.046)
    fig.suptitle("Equivariance by construction: moving the latents moves the field, unless the "
                 "decoder reads absolute coordinates")  # fmt: skip
    fig.tight_layout()
    return fig


def error_vs_angle(angles: np.ndarray, sweep: Mapping[str, np.ndarray], k: int | None) -> Any:
    """Equivariance error per bi-invariant against the rotation angle (radians)."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for bi, errs in sweep.items():
        ax.semilogy(np.rad2deg(angles), errs, "o-", ms=3, color=BI_COLORS.get(bi), label=bi)
    ax.axhline(1e-5, color="k", ls="--", lw=1, label="tolerance 1e-5")
    ax.set(xlabel="rotation angle (degrees), translation (0.3, -0.2)",
           ylabel="max |f(gx;gz) - f(x;z)| / max |f|",
           title=f"Equivariance error vs rotation angle (k = {k})")  # fmt: skip
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    return fig


def k_nearest_tradeoff(rows: Sequence[Mapping[str, float]], num_latents: int, label: str) -> Any:
    """Equivariance error, deviation from all latents and decode speed against k."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ks = [r["k"] for r in rows]
    ax1.semilogy(ks, [r["equivariance_error"] for r in rows], "o-", label="equivariance error")
    partial = [r for r in rows if r["k"] < num_latents]  # k = N is "all": deviation 0
    ax1.semilogy([r["k"] for r in partial], [r["deviation_from_all"] for r in partial], "s-",
                 label="deviation from all latents")  # fmt: skip
    ax1.axhline(1e-5, color="k", ls="--", lw=1)
    ax1.set(xlabel="k nearest latents", ylabel="max relative difference", title="Accuracy")
    ax1.legend()
    ax2.plot(ks, [r["pixels_per_second"] / 1e3 for r in rows], "o-", color="tab:purple")
    ax2.set(xlabel="k nearest latents", ylabel="thousand pixels / s",
            title=f"Decode speed ({label}, this CPU)", ylim=(0, None))  # fmt: skip
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- notebook 01


def _imshow(ax: Any, img: np.ndarray, extent: Any, cmap: str = "magma", **kw: Any) -> Any:
    im = ax.imshow(img, origin="lower", cmap=cmap, extent=extent, **kw)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def class_samples(
    images: np.ndarray, labels: np.ndarray, m_a: np.ndarray, n_show: int, half_fov: float,
    class_names: Sequence[str],
) -> Any:
    """A grid of samples, one row per class (axion samples titled with their m_a in eV)."""
    extent = (-half_fov, half_fov, -half_fov, half_fov)
    fig, axes = plt.subplots(3, n_show, figsize=(1.9 * n_show, 6.0), squeeze=False)
    for label in range(3):
        for ax, i in zip(axes[label], np.flatnonzero(labels == label)[:n_show], strict=False):
            _imshow(ax, images[i], extent)
            if label == 2:
                ax.set_title(f"m_a={m_a[i]:.1e}", fontsize=7)
        axes[label, 0].set_ylabel(class_names[label])
    return fig


def recipe_panel(panels: Mapping[str, Sequence[np.ndarray]], half_fovs: Mapping[str, float],
                 class_names: Sequence[str]) -> Any:
    """One column per recipe, one row per class: ``panels[recipe][label]`` (H, W)."""
    fig, axes = plt.subplots(3, len(panels), figsize=(2.5 * len(panels), 7.5), squeeze=False)
    for col, (name, imgs) in enumerate(panels.items()):
        h = half_fovs[name]
        for label, img in enumerate(imgs):
            _imshow(axes[label, col], img, (-h, h, -h, h))
            if label == 0:
                axes[label, col].set_title(name)
            if col == 0:
                axes[label, col].set_ylabel(class_names[label])
    return fig


def noise_panel(clean: Sequence[np.ndarray], noisy: Sequence[np.ndarray], half_fov: float,
                titles: Sequence[str]) -> Any:
    """Columns: samples; rows: noise-free render, stored noisy image, their difference."""
    extent = (-half_fov, half_fov, -half_fov, half_fov)
    fig, axes = plt.subplots(3, len(clean), figsize=(2.5 * len(clean), 7.5), squeeze=False)
    for j, (c, n) in enumerate(zip(clean, noisy, strict=True)):
        lim = float(np.abs(n - c).max())
        _imshow(axes[0, j], c, extent)
        _imshow(axes[1, j], n, extent)
        _imshow(axes[2, j], n - c, extent, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[0, j].set_title(titles[j])
    for i, name in enumerate(("noise-free", "noisy (stored)", "noise")):
        axes[i, 0].set_ylabel(name)
    return fig


def lens_maps(rows: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
              half_fov: float) -> Any:
    """Per row (name, image, :func:`enflens.data.lensing.substructure_deflection` maps): the
    image, log10 kappa and log10 of the deflection the substructure adds."""
    extent = (-half_fov, half_fov, -half_fov, half_fov)
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3.15 * len(rows)), layout="constrained",
                             squeeze=False)  # fmt: skip
    for r, (name, image, maps) in enumerate(rows):
        panels = [(image, "image", "magma"),
                  (np.log10(np.clip(maps["kappa"], 1e-3, None)), "log10 kappa", "viridis"),
                  (np.log10(np.clip(maps["extra_deflection"], 1e-5, None)),
                   "log10 |extra deflection| (arcsec)", "cividis")]  # fmt: skip
        for ax, (img, title, cmap) in zip(axes[r], panels, strict=True):
            fig.colorbar(ax.imshow(img, origin="lower", cmap=cmap, extent=extent), ax=ax,
                         shrink=0.8)  # fmt: skip
            ax.set_title(f"{name}: {title}", fontsize=9)
    return fig


def class_stats(stats: Mapping[str, np.ndarray], image_scale: np.ndarray, labels: np.ndarray,
                *, axion_mass: float, field_width: float, ring_diameter: float,
                class_names: Sequence[str]) -> Any:
    """Total CDM mass, vortex length against m_a, and the raw image maximum per class."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    axes[0].hist(np.log10(stats["cdm_total_mass"]), bins=40, color="tab:blue")
    axes[0].axvline(np.log10(axion_mass), color="tab:red", ls="--", label="vortex mass")
    axes[0].set_xlabel("log10 total CDM subhalo mass (Msun)")
    axes[0].legend()
    axes[1].loglog(stats["m_a"], stats["vortex_length"], ".", ms=2, color="tab:red")
    axes[1].axhline(field_width, color="k", ls=":", label="field width")
    axes[1].axhline(ring_diameter, color="tab:gray", ls="--", label="Einstein ring diameter")
    axes[1].set(xlabel="m_a (eV)", ylabel="vortex length (arcsec)")
    axes[1].legend()
    for label in range(3):
        axes[2].hist(image_scale[labels == label], bins=20, histtype="step",
                     label=class_names[label])  # fmt: skip
    axes[2].set_xlabel("raw image maximum (e-/s)")
    axes[2].legend()
    return fig


def class_means(images: np.ndarray, labels: np.ndarray, half_fov: float,
                class_names: Sequence[str]) -> Any:
    """The mean image per class and the differences of the substructure classes from no_sub."""
    extent = (-half_fov, half_fov, -half_fov, half_fov)
    means = [images[labels == k].mean(0) for k in range(3)]
    fig, axes = plt.subplots(1, 5, figsize=(15, 3), layout="constrained")
    for k in range(3):
        _imshow(axes[k], means[k], extent)
        axes[k].set_title(f"mean {class_names[k]}")
    lim = max(float(np.abs(means[k] - means[0]).max()) for k in (1, 2))
    for j, k in enumerate((1, 2)):
        im = _imshow(axes[3 + j], means[k] - means[0], extent, cmap="RdBu_r", vmin=-lim,
                     vmax=lim)  # fmt: skip
        axes[3 + j].set_title(f"{class_names[k]} - no_sub")
    fig.colorbar(im, ax=axes[3:], shrink=0.8)
    return fig


# ----------------------------------------------------------------------------- notebook 04

CLASS_COLORS = ["tab:green", "tab:red", "tab:purple"]


def context_embedding(emb: Any, class_names: Sequence[str]) -> Any:
    """The three maps of :func:`enflens.evaluate.latents.context_embedding`, coloured by class."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3), layout="constrained")
    panels = [(emb.per_latent, emb.per_latent_labels, "PCA, one point per latent", 2),
              (emb.per_image_pca, emb.labels, "PCA, mean context per image", 6),
              (emb.per_image_tsne, emb.labels, "t-SNE, mean context per image", 6)]  # fmt: skip
    for ax, (xy, lab, title, size) in zip(axes, panels, strict=True):
        for c in range(len(class_names)):
            m = lab == c
            ax.scatter(xy[m, 0], xy[m, 1], s=size, alpha=0.5, color=CLASS_COLORS[c],
                       label=class_names[c])  # fmt: skip
        ax.set_title(title)
    axes[0].legend(markerscale=3)
    return fig


def invariant_histograms(
    summaries: Mapping[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str]
) -> Any:
    """One histogram per invariant quantity, one line per class (density)."""
    fig, axes = plt.subplots(1, len(summaries), figsize=(3.8 * len(summaries), 3.4),
                             layout="constrained", squeeze=False)  # fmt: skip
    for ax, (name, v) in zip(axes[0], summaries.items(), strict=True):
        lo, hi = np.percentile(v, [0.5, 99.5])
        bins = np.linspace(lo, hi + 1e-6, 40) if hi - lo > 1e-6 else np.linspace(lo - 0.01,
                                                                                 lo + 0.01, 5)
        for c in range(len(class_names)):
            ax.hist(v[labels == c].ravel(), bins=bins, histtype="step", density=True,
                    color=CLASS_COLORS[c], label=class_names[c])  # fmt: skip
        ax.set_xlabel(name.replace("_", " "))
        if np.ptp(v) < 1e-6:
            ax.set_title("all equal (not fitted)", fontsize=9)
    axes[0, 0].legend()
    return fig


def latent_clouds(images: np.ndarray, labels: np.ndarray, latents: Any, psnr_db: np.ndarray,
                  n_show: int, class_names: Sequence[str]) -> Any:
    """``n_show`` images per class (rows) with their latent clouds; titles: the fit's PSNR."""
    from enflens.viz import draw_latents, unbatch

    fig, axes = plt.subplots(3, n_show, figsize=(2.6 * n_show, 7.8), squeeze=False,
                             layout="constrained")  # fmt: skip
    for c in range(3):
        for ax, i in zip(axes[c], np.flatnonzero(labels == c)[:n_show], strict=False):
            show_image(ax, images[i])
            draw_latents(ax, unbatch(latents, i), color="cyan")
            ax.set_title(f"{class_names[c]}  {psnr_db[i]:.1f} dB", fontsize=9)
    return fig


def inner_paths(images: np.ndarray, labels: np.ndarray, path: Any, recs: np.ndarray,
                class_names: Sequence[str]) -> Any:
    """One image per class: the path of every latent over the inner steps (top) and the PSNR
    of the fit after each step (bottom). ``path``: latents with a leading (K+1) axis;
    ``recs``: (K+1, B, H, W, C)."""
    from enflens.viz import draw_paths

    k1 = recs.shape[0]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.8), layout="constrained")
    for c in range(3):
        j = int(np.flatnonzero(labels == c)[0])
        show_image(axes[0, c], images[j])
        draw_paths(axes[0, c], np.asarray(path.positions)[:, j], color="cyan")
        axes[0, c].set_title(class_names[c])
        scores = np.asarray(psnr(recs[:, j, ..., 0], np.repeat(images[j][None], k1, 0)))
        axes[1, c].plot(np.arange(k1), scores, "o-", color=CLASS_COLORS[c])
        axes[1, c].set(xlabel="inner step", xticks=np.arange(k1))
    axes[1, 0].set_ylabel("PSNR of this fit (dB)")
    return fig


def rotated_refit(image: np.ndarray, rotated: np.ndarray, fit: Any, goal: Any, refit: Any,
                  control: Any, angle_deg: float) -> Any:
    """The original with its fit z; the rotated image with the rotated latents g z (cyan) and
    the refit of the rotated image from the equivariant start (yellow); the same with the refit
    from the fixed, unrotated start (the control). Unbatched latents."""
    from enflens.viz import draw_latents

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.7), layout="constrained")
    show_image(axes[0], image)
    draw_latents(axes[0], fit, color="cyan")
    axes[0].set_title("original fit z", fontsize=9)
    for ax, (name, z) in zip(axes[1:], [("equivariant start", refit), ("fixed start", control)],
                             strict=True):  # fmt: skip
        show_image(ax, rotated)
        draw_latents(ax, goal, color="cyan", windows=False)
        draw_latents(ax, z, color="yellow", windows=False)
        ax.set_title(f"rotated {angle_deg:.0f}°: g z (cyan), refit from {name} (yellow)",
                     fontsize=8)  # fmt: skip
    return fig
