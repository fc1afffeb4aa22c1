"""Benchmark of Meta-SGD fitting on this machine: outer steps/s and encoding images/s.

For the ENF (default cpu-profile config: hidden 64, k_nearest 4, 25 latents of dimension 32) and
the CNF baseline with the same number of latent floats, in second- and first-order mode, with the
default :class:`enflens.outer.MetaConfig` (batch 8, 3 inner steps on 256 stratified pixels,
outer loss on 512 pixels). Prints medians over repeats (after compilation), wall-clock and per
CPU-second (cores shared with other jobs dilute wall-clock rates, not CPU-second rates).

Optionally (``--quality SECONDS``) meta-trains each model for that long on freshly simulated
Model II images and reports validation PSNR after 0..3 inner steps (encoding with 1024 pixels
per inner step, as :func:`enflens.encode_mod.encode` does by default, and with all pixels).

    python bench/fitting.py [--models enf cnf] [--repeats 5] [--quality 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from enflens.fields import adapters
from enflens.fields.cnf import CNFConfig, cnf_latent_dim_matching_enf
from enflens.fields.enf import ENFConfig
from enflens.metalearn import encode as encode_mod
from enflens.metalearn import outer

ENF_CPU = ENFConfig(hidden=64, k_nearest=4)
CNF_CPU = CNFConfig(
    latent_dim=cnf_latent_dim_matching_enf(ENF_CPU.num_latents, ENF_CPU.latent_dim),
    hidden=128,
    num_layers=3,
)
#: Outer learning rate per model (the SIREN CNF collapses at the ENF's 1e-2).
OUTER_LR = {"enf": 1e-2, "cnf": 3e-4}


def make_adapter(model: str) -> adapters.FieldAdapter:
    return adapters.enf_adapter(ENF_CPU) if model == "enf" else adapters.cnf_adapter(CNF_CPU)


def simulated(n_per_class: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model II train and validation images from the project's simulator (temporary file)."""
    from enflens import data

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        data.generate("model_ii", n_per_class, seed, path, n_val=n_val, n_test=1, progress=False)
        return data.load(path, "train").images, data.load(path, "val").images


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls (after one warm-up)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def bench_speed(model: str, images: np.ndarray, repeats: int) -> None:
    adapter = make_adapter(model)
    print(f"\n{model}: {adapters.latent_floats(adapter)} latent floats per image")
    for first_order in (False, True):
        cfg = outer.MetaConfig(first_order=first_order, outer_lr=OUTER_LR[model])
        holder = {"state": outer.init_state(adapter, cfg)}
        batch = images[: cfg.batch_size]

        def step(cfg=cfg, holder=holder, batch=batch):
            holder["state"], loss = outer.train_step(adapter, cfg, holder["state"], batch)
            loss.block_until_ready()

        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
        wall, cpu = timed(step, repeats)
        order = "first" if first_order else "second"
        print(
            f"  train {order:6s} order: {1 / wall:6.2f} outer steps/s "
            f"({cfg.batch_size / wall:6.1f} images/s, {cfg.batch_size / cpu:6.1f} images/CPU-s); "
            f"first call {compile_s:.1f} s"
        )
    params = adapter.init_params()
    n = 64
    for pixels in (1024, None):
        chunk = images[:n]

        def enc(chunk=chunk, pixels=pixels):
            encode_mod.encode(adapter, params, chunk, pixels=pixels, batch_size=n, progress=False)

        wall, cpu = timed(enc, max(1, repeats // 2))
        print(
            f"  encode (3 steps, {pixels or 'all'} pixels/step, batch {n}): "
            f"{n / wall:6.1f} images/s, {n / cpu:6.1f} images/CPU-s"
        )


def bench_quality(model: str, train: np.ndarray, val: np.ndarray, seconds: float) -> None:
    adapter = make_adapter(model)
    cfg = outer.MetaConfig(outer_lr=OUTER_LR[model])
    probe = outer.init_state(adapter, cfg)
    step = lambda: outer.train_step(adapter, cfg, probe, train[:8])[1].block_until_ready()  # noqa: E731
    wall, _ = timed(step, 3)
    steps = max(20, int(seconds / wall))
    cfg = dataclasses.replace(cfg, num_steps=steps, checkpoint_every=0, eval_every=0)
    t0 = time.perf_counter()
    result = outer.meta_train(adapter, train, cfg, progress=False)
    took = time.perf_counter() - t0
    line = []
    for pixels in (1024, None):
        scores = encode_mod.psnr_per_step(adapter, result.state.params, val, cfg, pixels=pixels)
        line.append(f"{pixels or 'all'} px: " + " ".join(f"{v:.2f}" for v in scores.mean(1)))
    print(
        f"  {model}: {steps} outer steps ({steps * cfg.batch_size / len(train):.2f} epochs) in "
        f"{took:.0f} s -> validation PSNR (dB) after 0..{cfg.inner_steps} steps: " + "; ".join(line)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["enf", "cnf"], choices=["enf", "cnf"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quality", type=float, default=0.0, help="seconds of training per model")
    ap.add_argument("--n-per-class", type=int, default=1000)
    args = ap.parse_args()
    n_per_class = args.n_per_class if args.quality > 0 else 30
    train, val = simulated(n_per_class, 34, seed=123)
    print(f"{len(train)} training / {len(val)} validation Model II images of {train.shape[1:]}")
    for model in args.models:
        bench_speed(model, train, args.repeats)
    if args.quality > 0:
        print(f"\nquality after {args.quality:.0f} s of meta-learning:")
        for model in args.models:
            bench_quality(model, train, val, args.quality)


if __name__ == "__main__":
    main()
