"""ENF decoder throughput and memory on this machine's CPU.

For k = 4, 9 and all latents, at 64x64 and 150x150 pixels, batch 32 (default config otherwise:
25 latents, context 32, hidden 128, 2 heads, roto_translation), prints a table of

* decode throughput: pixels per second (wall clock), median over ``--repeats`` calls of a jitted
  decoder (``block_until_ready``), and the median process CPU seconds per batch;
* memory: XLA's compiled temporary-buffer size (``memory_analysis().temp_size_in_bytes``) of a
  one-shot decode of the whole batch. When it exceeds ``--max-temp-gib`` the timing is done with
  :func:`enflens.fields.enf.decode_chunked` (the chunk size and its temp size are printed) instead;
* latent-gradient throughput (the Meta-SGD inner step): ``value_and_grad`` of an MSE w.r.t. the
  latents on 1024 random pixels per image, pixels per second.

Usage: ``.venv/bin/python bench/enf.py [--batch 32] [--sizes 64 150] [--ks 4 9 all]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from enflens.fields.enf import ENFConfig, ENFDecoder, decode_chunked
from enflens.grid import make_grid
from enflens.testing import random_coords, random_latents

GIB = 1024**3


def _median_seconds(fn, *args, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of ``repeats`` calls (compiled already).

    No separate warm-up call: the first call's page faults are discarded by the median.
    CPU time (all threads) is less sensitive than wall time to other jobs on shared cores.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _temp_bytes(compiled) -> int:
    return int(compiled.memory_analysis().temp_size_in_bytes)


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB


def bench_decode(cfg: ENFConfig, size: int, batch: int, repeats: int, max_temp_gib: float):
    """One row of the decode table."""
    model = ENFDecoder(cfg, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    coords = jnp.broadcast_to(make_grid(size), (batch, size * size, 2))
    latents = random_latents(jax.random.PRNGKey(0), batch, cfg.num_latents, cfg.latent_dim)

    def decode(state, coords, latents):
        return nnx.merge(graph, state)(coords, latents)

    one_shot = jax.jit(decode).lower(state, coords, latents).compile()
    temp_one_shot = _temp_bytes(one_shot)
    chunk = size * size
    run, temp_run = one_shot, temp_one_shot
    if temp_one_shot > max_temp_gib * GIB:
        per_pixel = temp_one_shot / (size * size)
        chunk = max(256, int(max_temp_gib * GIB / per_pixel) // 256 * 256)

        def chunked(state, coords, latents):
            return decode_chunked(lambda x, z: decode(state, x, z), coords, latents, chunk)

        run = jax.jit(chunked).lower(state, coords, latents).compile()
        temp_run = _temp_bytes(run)
    seconds, cpu = _median_seconds(run, state, coords, latents, repeats=repeats)
    return dict(
        pixels_per_s=batch * size * size / seconds,
        seconds=seconds,
        cpu_seconds=cpu,
        temp_one_shot_gib=temp_one_shot / GIB,
        chunk=chunk,
        temp_run_gib=temp_run / GIB,
    )


def bench_latent_grad(cfg: ENFConfig, batch: int, pixels: int, repeats: int):
    """Pixels per second of value_and_grad w.r.t. the latents (one Meta-SGD inner step)."""
    model = ENFDecoder(cfg, rngs=nnx.Rngs(0))
    graph, state = nnx.split(model)
    coords = random_coords(jax.random.PRNGKey(1), batch, pixels)
    latents = random_latents(jax.random.PRNGKey(0), batch, cfg.num_latents, cfg.latent_dim)
    target = jax.random.uniform(jax.random.PRNGKey(2), (batch, pixels, cfg.out_channels))

    def loss(latents, state):
        return jnp.mean((nnx.merge(graph, state)(coords, latents) - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss)).lower(latents, state).compile()
    seconds, cpu = _median_seconds(step, latents, state, repeats=repeats)
    return dict(
        pixels_per_s=batch * pixels / seconds,
        seconds=seconds,
        cpu_seconds=cpu,
        temp_gib=_temp_bytes(step) / GIB,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 150])
    parser.add_argument("--ks", nargs="+", default=["4", "9", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-temp-gib", type=float, default=2.0)
    parser.add_argument("--grad-pixels", type=int, default=1024, help="0 skips the grad table")
    args = parser.parse_args()
    ks = [None if k == "all" else int(k) for k in args.ks]
    base = ENFConfig()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; config: {base}")
    print(f"batch {args.batch}; times are medians of {args.repeats} calls\n")
    header = (
        f"{'image':>8} {'k':>4} {'Mpix/s':>8} {'s/batch':>8} {'cpu s':>7} "
        f"{'temp one-shot GiB':>18} {'chunk px':>9} {'temp run GiB':>13}"
    )
    print("decode\n" + header)
    for size in args.sizes:
        for k in ks:
            cfg = dataclasses.replace(base, k_nearest=k)
            r = bench_decode(cfg, size, args.batch, args.repeats, args.max_temp_gib)
            label = "all" if k is None else str(k)
            print(
                f"{size:>4}x{size:<3} {label:>4} {r['pixels_per_s'] / 1e6:>8.3f} "
                f"{r['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} {r['temp_one_shot_gib']:>18.2f} "
                f"{r['chunk']:>9d} "
                f"{r['temp_run_gib']:>13.2f}",
                flush=True,
            )
    if args.grad_pixels > 0:
        print(f"\nlatent gradient (value_and_grad of MSE), {args.grad_pixels} random pixels/image")
        print(f"{'k':>4} {'Mpix/s':>8} {'s/batch':>8} {'cpu s':>7} {'temp GiB':>9}")
        for k in ks:
            cfg = dataclasses.replace(base, k_nearest=k)
            r = bench_latent_grad(cfg, args.batch, args.grad_pixels, args.repeats)
            label = "all" if k is None else str(k)
            print(
                f"{label:>4} {r['pixels_per_s'] / 1e6:>8.3f} {r['seconds']:>8.2f} "
                f"{r['cpu_seconds']:>7.2f} {r['temp_gib']:>9.2f}",
                flush=True,
            )
    print(f"\nprocess peak RSS {_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
