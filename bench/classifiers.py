"""Classifier throughput on CPU: median training-step and inference times per model (defaults).

For every model of :mod:`enflens.classify.latent_models` and
:mod:`enflens.classify.image_models` with its default config, runs the library's own training
step :func:`enflens.classify.train.train_step` (AdamW, BatchNorm in training mode, the input
kind's default augmentation, exactly as :func:`enflens.classify.train.fit` calls it), compiles it
once, then times ``--repeats`` steps on a random batch and prints the median milliseconds per
step, examples per second, the extrapolated seconds per epoch of ``--epoch-size`` examples, and
the median evaluation time per example. CPU-seconds per step (process time) are printed too,
since other jobs may share the cores. Use the ms/step to choose a profile's step counts
(``STEPS`` in notebook 05): the counts are what gets written down, never the seconds.

    .venv/bin/python bench/classifiers.py [--batch 64] [--latents 25] [--context-dim 32]
        [--image-size 64] [--repeats 5] [--epoch-size 3000] [--models enf_ponita,resnet18]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from enflens.classify import registry, train
from enflens.classify.image_models import CNN_CONFIGS, make_cnn
from enflens.classify.latent_models import CLASSIFIER_CONFIGS, make_classifier
from enflens.geometry import Latents
from enflens.nn import count_params


def _inputs(name: str, args: argparse.Namespace, rng: np.random.Generator):
    b = args.batch
    if name in CNN_CONFIGS:
        return rng.random((b, args.image_size, args.image_size)).astype(np.float32)
    if name == "cnf_mlp":
        return rng.normal(size=(b, args.cnf_dim)).astype(np.float32)
    n, d = args.latents, args.context_dim
    return Latents(
        rng.uniform(-1, 1, (b, n, 2)).astype(np.float32),
        rng.uniform(0, 2 * np.pi, (b, n)).astype(np.float32),
        rng.normal(size=(b, n, d)).astype(np.float32),
        rng.uniform(0.1, 0.3, (b, n)).astype(np.float32),
    )


def _model(name: str, args: argparse.Namespace) -> nnx.Module:
    rngs = nnx.Rngs(0)
    if name in CNN_CONFIGS:
        return make_cnn(name, rngs=rngs)
    return make_classifier(
        name, context_dim=args.context_dim, num_latents=args.latents, cnf_dim=args.cnf_dim,
        rngs=rngs,
    )  # fmt: skip


def bench(name: str, args: argparse.Namespace) -> float:
    """Time the library's train step for model ``name``; print and return ms per step."""
    rng = np.random.default_rng(0)
    x = _inputs(name, args, rng)
    y = rng.integers(0, 3, args.batch).astype(np.int32)
    model = _model(name, args)
    kind = registry.input_kind(name)
    augment = registry.make_augmentation(kind, registry.augment_settings(kind, None), x)
    train_model = nnx.view(model, use_running_average=False, deterministic=False,
                           raise_if_not_found=False)  # fmt: skip
    optimizer = nnx.Optimizer(train_model, train.make_optimizer(train.TrainConfig()), wrt=nnx.Param)
    metrics = train.make_metrics()

    def step(i: int) -> None:
        train.train_step(train_model, optimizer, metrics, x, y, jax.random.key(i), augment=augment)
        jax.block_until_ready(nnx.state(model))

    t0 = time.perf_counter()
    step(0)
    compile_s = time.perf_counter() - t0
    wall, cpu = [], []
    for i in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step(i + 1)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    train.predict(model, x, batch_size=args.batch)
    ev = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        train.predict(model, x, batch_size=args.batch)
        ev.append(time.perf_counter() - t0)
    s = statistics.median(wall)
    epoch_s = args.epoch_size / args.batch * s
    print(
        f"{name:16s} params {count_params(model):>10,d}  compile {compile_s:6.1f} s  "
        f"step {s * 1e3:8.1f} ms (cpu {statistics.median(cpu) * 1e3:8.1f} ms)  "
        f"{args.batch / s:8.0f} ex/s  epoch({args.epoch_size}) {epoch_s:7.1f} s"
        f"  eval {statistics.median(ev) / args.batch * 1e3:6.2f} ms/ex",
        flush=True,
    )
    return s * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--latents", type=int, default=25)
    p.add_argument("--context-dim", type=int, default=32)
    p.add_argument("--cnf-dim", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epoch-size", type=int, default=3000)
    p.add_argument("--models", default=",".join([*CLASSIFIER_CONFIGS, *CNN_CONFIGS]))
    args = p.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch}; "
          f"latents N={args.latents} D={args.context_dim}; images {args.image_size}px")  # fmt: skip
    for name in args.models.split(","):
        bench(name, args)


if __name__ == "__main__":
    main()
