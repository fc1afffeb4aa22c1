"""Classifier throughput on CPU: median training-step and inference times per model (defaults).

For every model of :mod:`enflens.classify.latent_models` and
:mod:`enflens.classify.image_models` with its default config,
builds one jitted training step exactly as :func:`enflens.classify.train.fit` does (AdamW,
BatchNorm in
training mode), compiles it once, then times ``--repeats`` steps on a random batch and prints
the median seconds per step, examples per second, the extrapolated seconds per epoch of
``--epoch-size`` examples, and the median evaluation time per example. CPU-seconds per step
(process time) are printed too, since other jobs may share the cores.

    .venv/bin/python bench/classifiers.py [--batch 64] [--latents 25] [--context-dim 32]
        [--image-size 64] [--repeats 5] [--epoch-size 3000] [--models enf_ponita,resnet18]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx

from enflens.classify.image_models import CNN_CONFIGS, make_cnn
from enflens.classify.latent_models import CLASSIFIER_CONFIGS, make_classifier
from enflens.classify.train import TrainConfig, make_optimizer, predict
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


def bench(name: str, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    x = _inputs(name, args, rng)
    y = rng.integers(0, 3, args.batch)
    model = _model(name, args)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(TrainConfig(), 1000)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state, x, y):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
            return loss, nnx.split(m, nnx.Param, ...)[2]

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state, loss

    t0 = time.perf_counter()
    out = step(params, rest, opt_state, x, y)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    wall, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = step(*out[:3], x, y)
        jax.block_until_ready(out)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    predict(model, x, batch_size=args.batch)
    ev = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        predict(model, x, batch_size=args.batch)
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
