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
