"""Evaluation helpers for meta-learned fields: the inner-loop path, PSNR against any target,
noise-free targets and meta-training under a wall-time budget.

:mod:`enflens.fitting` fits latents and scores them against the images they were fitted to.
Notebooks 03 and 04 also need

* the whole inner-loop path: the latents and the reconstruction after each of the 0..K inner
  steps (:func:`fit_path`), e.g. to watch latents move or to score every step;
* PSNR against a *different* target than the fitted image, namely the noise-free render of a
  noisy observation (:func:`psnr_path`, :func:`noise_free_images`);
* a comparison of two models at equal training time (:func:`meta_train_for`).

Batches and PRNG keys follow :func:`enflens.fitting.encode`: batch ``i`` of ``batch_size`` images
uses ``fold_in(PRNGKey(seed), i)`` and the last batch is padded, so the latents after K steps are
those that ``encode`` (and hence a latent store) gives for the same settings.

Units: images and targets are float32 in [0, 1]; PSNR in dB with peak value 1.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from enflens import fitting
from enflens.geometry import Latents
from enflens.grid import image_to_pixels, make_grid

Array = jax.Array
PyTree = Any


def _as_nhwc(images: Any, what: str) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images (n, H, W[, C]), got shape {x.shape}")
    return x


@functools.lru_cache(maxsize=16)
def _path_fn(
    adapter: fitting.FieldAdapter,
    height: int,
    width: int,
    steps: int,
    pixels: int | None,
    sampling: str,
):
    coords = make_grid(height, width)  # (HW, 2)

    @jax.jit
    def run(params: dict, px: Array, key: Array, lat0: PyTree) -> tuple[PyTree, Array]:
        _, path = fitting.inner_loop(
            adapter, params, lat0, coords, px, key, steps, pixels, True, return_path=True,
            sampling=sampling, image_shape=(height, width),
        )  # fmt: skip
        full = jnp.broadcast_to(coords, (px.shape[0], *coords.shape))
        recs = jnp.stack([adapter.decode(params, z, full) for z in path])  # (K+1, B, HW, C)
        return jax.tree.map(lambda *xs: jnp.stack(xs), *path), recs

    return run


def fit_path(
    adapter: fitting.FieldAdapter,
    params: dict,
    images: Any,
    *,
    steps: int = 3,
    pixels: int | None = None,
    sampling: str = "stratified",
    key: Array | None = None,
    latents0: PyTree | None = None,
) -> tuple[PyTree, np.ndarray]:
    """Fit one batch and return the latents and reconstructions after each inner step.

    Same inner loop, keys and pixel subsets as :func:`enflens.fitting.fit_latents`, so entry K
    equals its result.

    Args:
        adapter, params: the model and its trained parameters.
        images: (B, H, W[, C]) in [0, 1].
        steps: K inner steps; pixels: pixels per inner step (None: all); sampling: subset rule.
        key: PRNG key of the pixel subsets (default PRNGKey(0), as ``fit_latents``).
        latents0: batched starting latents (B, ...); default
            :func:`enflens.fitting.start_latents` (the learned initialisation, rotated into the
            image's frame when the adapter has an equivariant start; e.g. pass a rotated copy
            of it to fit a rotated image from the rotated initialisation).

    Returns:
        (latents with a leading (K+1) axis before the batch axis, as numpy arrays;
        reconstructions (K+1, B, H, W, C) float32 numpy).
    """
    x = _as_nhwc(images, "fit_path(images)")
    b, h, w, c = x.shape
    if c != adapter.out_channels:
        raise ValueError(
            f"fit_path: images have {c} channels, the decoder outputs {adapter.out_channels}"
        )
    key = jax.random.PRNGKey(0) if key is None else key
    px = image_to_pixels(jnp.asarray(x))
    if latents0 is None:  # issue 12: the adapter's (possibly image-dependent) start
        latents0 = fitting.start_latents(adapter, params, px, (h, w))
    lats, recs = _path_fn(adapter, h, w, steps, pixels, sampling)(
        params, px, key, jax.tree.map(jnp.asarray, latents0)
    )
    return jax.tree.map(np.asarray, lats), np.asarray(recs).reshape(steps + 1, b, h, w, c)


def psnr_np(pred: Any, target: Any) -> np.ndarray:
    """PSNR in dB (peak 1) over all but the first axis: (n, ...) x (n, ...) -> (n,)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"psnr_np: shapes differ, {pred.shape} vs {target.shape}")
    mse = np.mean((pred - target).reshape(len(pred), -1) ** 2, axis=1)
    return -10.0 * np.log10(np.maximum(mse, 1e-12))


def psnr_path(
    adapter: fitting.FieldAdapter,
    params: dict,
    images: Any,
    targets: dict[str, Any] | None = None,
    *,
    steps: int = 3,
    pixels: int | None = None,
    sampling: str = "stratified",
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """PSNR after each of 0..K inner steps of fitting ``images``, against several targets.

    Args:
        images: (n, H, W[, C]) the images that are fitted (e.g. the noisy observations).
        targets: name -> (n, H, W[, C]) images to score the reconstructions against (e.g.
            ``{"clean": noise_free}``); the fitted images themselves are always scored as
            ``"fitted"``.
        steps, pixels, sampling: inner-loop settings.
        batch_size, seed: batching and keys as :func:`enflens.fitting.encode`.

    Returns:
        name -> (K+1, n) PSNR in dB.
    """
    x = _as_nhwc(images, "psnr_path(images)")
    tg = {"fitted": x}
    for name, t in (targets or {}).items():
        t = _as_nhwc(t, f"psnr_path(targets[{name!r}])")
        if t.shape != x.shape:
            raise ValueError(f"psnr_path: targets[{name!r}] is {t.shape}, images are {x.shape}")
        tg[name] = t
    key = jax.random.PRNGKey(seed)
    out: dict[str, list[np.ndarray]] = {name: [] for name in tg}
    for i, start in enumerate(range(0, len(x), batch_size)):
        m = min(batch_size, len(x) - start)
        _, recs = fit_path(
            adapter, params, fitting._pad(x[start : start + m], batch_size), steps=steps,
            pixels=pixels, sampling=sampling, key=jax.random.fold_in(key, i),
        )  # fmt: skip
        recs = recs[:, :m]  # (K+1, m, H, W, C)
        for name, t in tg.items():
            ref = t[start : start + m]
            out[name].append(np.stack([psnr_np(r, ref) for r in recs]))
    return {name: np.concatenate(v, axis=1) for name, v in out.items()}


def noise_free_images(dataset_path: str | Path, split: str, indices: Any) -> np.ndarray:
    """Noise-free renders of stored samples, normalised like the stored (noisy) images.

    The dataset stores ``clip(noisy, 0) / max(noisy)``; the noise-free image of sample ``i`` is
    re-rendered by the simulator (:func:`enflens.lensing.render`) and divided by the *same*
    per-image maximum (the stored ``image_scale``), so that both live on one scale.

    Args:
        dataset_path: a generated study dataset (.h5) (imported DeepLense files have no
            simulator description and raise ValueError).
        split: split name; indices: (n,) sample indices in that split.

    Returns:
        (n, H, W) float32, >= 0 (may slightly exceed 1 where noise pulled the maximum down).
    """
    import h5py

    from enflens import data, lensing

    path = Path(dataset_path)
    if not path.is_file():
        raise FileNotFoundError(f"noise_free_images: dataset file {path} does not exist")
    out = []
    with h5py.File(path, "r") as f:
        for i in np.asarray(indices, int).reshape(-1):
            p = data.sample_params(f, split, int(i))
            clean = lensing.render(p, noise=False)
            out.append(np.clip(clean, 0.0, None) / p["image_scale"])
    if not out:
        raise ValueError("noise_free_images: no indices given")
    return np.stack(out).astype(np.float32)


@dataclasses.dataclass
class BudgetedRun:
    """Outcome of :func:`meta_train_for`.

    Attributes:
        result: the :class:`enflens.fitting.MetaResult` (final state, history).
        config: the MetaConfig actually run (``num_steps`` chosen from the budget).
        calibration_steps_per_second: outer steps per second measured before the run.
        seconds: wall time of the run itself (periodic validation included, calibration
            and compilation of the calibration step excluded).
    """

    result: fitting.MetaResult
    config: fitting.MetaConfig
    calibration_steps_per_second: float
    seconds: float


def meta_train_for(
    adapter: fitting.FieldAdapter,
    train_images: Any,
    cfg: fitting.MetaConfig,
    seconds: float,
    *,
    val_images: Any = None,
    calibration_steps: int = 3,
    min_steps: int = 2,
    max_steps: int | None = None,
    eval_fraction: float = 0.1,
    progress: bool = True,
    log_every: int | None = None,
) -> BudgetedRun:
    """Meta-train for about ``seconds`` of wall time.

    The learning-rate schedule needs the number of steps in advance, so the step rate is first
    measured on a throw-away state: one compiling step (``t_first`` seconds), then
    ``calibration_steps`` timed steps (``rate`` steps/s). The run gets
    ``num_steps = (seconds * (1 - eval_fraction) - t_first) * rate`` (clipped to
    ``[min_steps, max_steps]``): the run compiles its own step again (the schedule is part of
    the compiled function), and ``eval_fraction`` of the budget is left to the periodic
    validation. The run itself is an ordinary :func:`enflens.fitting.meta_train`, deterministic
    given ``num_steps``; on shared machines the step count (not the result for a given count)
    depends on the load.

    Args:
        cfg: settings; its ``num_steps`` is replaced. ``eval_every`` is set so that there are
            about 8 validation points when ``val_images`` is given.
        seconds: wall-time budget (> 0).
        log_every: history interval of the training loss (default: about 40 points).

    Returns:
        :class:`BudgetedRun`.
    """
    if not seconds > 0:
        raise ValueError(f"meta_train_for: seconds={seconds} must be > 0")
    x = _as_nhwc(train_images, "meta_train_for(train_images)")
    bs = cfg.batch_size
    if len(x) < bs:
        raise ValueError(f"meta_train_for: {len(x)} training images < batch_size {bs}")
    state = fitting.init_state(adapter, cfg)
    t0 = time.perf_counter()
    state, loss = fitting.train_step(adapter, cfg, state, x[:bs])  # compiles
    jax.block_until_ready(loss)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(calibration_steps):
        idx = fitting.batch_indices(cfg.seed, i, len(x), bs)
        state, loss = fitting.train_step(adapter, cfg, state, x[np.sort(idx)])
        jax.block_until_ready(loss)
    rate = calibration_steps / max(time.perf_counter() - t0, 1e-9)
    n = int((seconds * (1.0 - eval_fraction) - t_first) * rate)
    n = max(min_steps, n if max_steps is None else min(n, max_steps))
    eval_every = max(1, n // 8) if val_images is not None else 0
    run_cfg = dataclasses.replace(
        cfg, num_steps=n, eval_every=eval_every, checkpoint_every=0,
        warmup_steps=min(cfg.warmup_steps, max(1, n // 10)),
    )  # fmt: skip
    t0 = time.perf_counter()
    result = fitting.meta_train(
        adapter, x, run_cfg, val_images=val_images, progress=progress,
        log_every=log_every or max(1, n // 40),
    )  # fmt: skip
    return BudgetedRun(result, run_cfg, rate, time.perf_counter() - t0)


def history_table(history: list[dict]) -> dict[str, np.ndarray]:
    """Split a :func:`enflens.fitting.meta_train` history into arrays.

    Returns:
        dict with ``step``, ``loss``, ``train_psnr``, ``seconds`` (training-loss entries) and
        ``val_step``, ``val_seconds`` (wall time interpolated from the loss entries),
        ``val_psnr`` ((n_val_points, K+1) dB).
    """
    tr = [h for h in history if "loss" in h]
    va = [h for h in history if "val_psnr_per_step" in h]
    step = np.array([h["step"] for h in tr], float)
    sec = np.array([h["seconds"] for h in tr], float)
    vstep = np.array([h["step"] for h in va], float)
    return {
        "step": step,
        "loss": np.array([h["loss"] for h in tr], float),
        "train_psnr": np.array([h["train_psnr"] for h in tr], float),
        "seconds": sec,
        "val_step": vstep,
        "val_seconds": np.interp(vstep, step, sec) if len(step) else vstep,
        "val_psnr": np.array([h["val_psnr_per_step"] for h in va], float),
    }


def match_poses(reference: Latents, fitted: Latents, *, inside: float = 1.0) -> dict[str, Any]:
    """Pose errors between two latent clouds of one image by nearest-neighbour matching.

    Every reference latent whose position lies inside ``[-inside, inside]^2`` (e.g. the rotated
    latents of an original fit, of which those rotated out of the frame are dropped) is matched
    to the fitted latent nearest to it in position.

    Args:
        reference, fitted: unbatched :class:`Latents` (positions (N, 2), orientations (N,)).
        inside: half-size of the square in which reference latents are kept.

    Returns:
        dict with ``position`` (n,) distances in coordinate units, ``orientation`` (n,)
        absolute wrapped angle differences in radians, ``index`` (n,) matched fitted latents and
        ``kept`` (N,) bool mask of the reference latents used.
    """
    ref_p = np.asarray(reference.positions, np.float64)
    fit_p = np.asarray(fitted.positions, np.float64)
    if ref_p.ndim != 2 or fit_p.ndim != 2:
        raise ValueError(
            f"match_poses: expected unbatched latents, got positions {ref_p.shape}, {fit_p.shape}"
        )
    kept = np.all(np.abs(ref_p) <= inside, axis=-1)
    d = np.linalg.norm(ref_p[kept, None, :] - fit_p[None, :, :], axis=-1)  # (n, M)
    nn = np.argmin(d, axis=1) if d.size else np.zeros(0, int)
    dtheta = (
        np.asarray(reference.orientations, np.float64)[kept]
        - np.asarray(fitted.orientations, np.float64)[nn]
    )
    return {
        "position": d[np.arange(len(nn)), nn],
        "orientation": np.abs((dtheta + np.pi) % (2 * np.pi) - np.pi),
        "index": nn,
        "kept": kept,
    }
