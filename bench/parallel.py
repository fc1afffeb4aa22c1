"""Data parallelism: the three hot loops on every device against the first device alone.

Runs Meta-SGD outer steps (:func:`enflens.metalearn.outer.meta_train`), an encoding
(:func:`enflens.metalearn.encode.encode`) and classifier steps (:func:`enflens.classify.train.fit`)
with the same global batch on the data mesh of all devices and on a mesh of the first device,
and prints the largest absolute difference of the results (decoder parameters, latents and PSNR,
classifier parameters) and the images per second of both runs (each timed on a second,
compiled run; classifier time includes its one validation). The last line printed is one
JSON object (images per second of the all-devices run):
``{"devices", "processes", "max_abs_diff": {meta_train, encode, classifier},
"images_per_second": {...}}``.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 .venv/bin/python bench/parallel.py \
        [--images 64] [--size 32] [--batch 16] [--meta-steps 8] [--clf-steps 8]

Single process (the 1-device reference needs every device in this process).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

from enflens import parallel
from enflens.classify import registry, train
from enflens.fields import adapters
from enflens.fields.enf import ENFConfig
from enflens.metalearn import encode, outer
from enflens.testing import lens_like_images

ENF = ENFConfig(num_latents=8, latent_dim=8, hidden=16, num_rff=8, template="rings",
                ring_counts=(4, 4), ring_radii=(0.3, 0.6))  # fmt: skip


def max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(parallel.to_host(a)), jax.tree.leaves(parallel.to_host(b)),
                strict=True)  # fmt: skip
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in pairs)


def timed(fn):
    """(result, seconds) of the second call (the first compiles)."""
    fn()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--meta-steps", type=int, default=8)
    p.add_argument("--clf-steps", type=int, default=8)
    args = p.parse_args()
    one, every = parallel.data_mesh(jax.devices()[:1]), parallel.data_mesh()
    adapter = adapters.enf_adapter(ENF, seed=0)
    images = lens_like_images(args.images, size=args.size)
    pixels = args.size * args.size // 4
    cfg = outer.MetaConfig(inner_steps=2, inner_pixels=pixels, outer_pixels=pixels,
                           batch_size=args.batch, num_steps=args.meta_steps, warmup_steps=1,
                           eval_every=0, checkpoint_every=0)  # fmt: skip
    diff, speed, speed1 = {}, {}, {}

    def compare(name, fn, count):
        (ref, sec1), (got, sec) = timed(lambda: fn(one)), timed(lambda: fn(every))
        diff[name], speed[name], speed1[name] = max_diff(ref, got), count / sec, count / sec1
        return ref

    def meta(mesh):
        return outer.meta_train(adapter, images, cfg, progress=False, mesh=mesh).state.params

    ref = compare("meta_train", meta, cfg.num_steps * args.batch)

    def enc(mesh):
        return encode.encode(adapter, ref, images, steps=2, pixels=pixels, batch_size=args.batch,
                             progress=False, mesh=mesh)  # fmt: skip

    x, y = compare("encode", enc, args.images)[0], np.arange(args.images) % 3
    tcfg = train.TrainConfig(
        steps=args.clf_steps, eval_every=args.clf_steps, batch_size=args.batch,
        eval_batch_size=args.batch, progress=False,
    )  # fmt: skip

    def clf(mesh):
        model = registry.build_model("enf_mlp", train.take(x, np.arange(1)), {"hidden": 32}, 0)
        train.fit(model, (x, y), (x, y), tcfg, mesh=mesh)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    compare("classifier", clf, tcfg.steps * args.batch)
    d = parallel.num_devices(every)
    for k in diff:
        print(f"{k:11s} max |{d} devices - 1 device| {diff[k]:.3g}   images/s: "
              f"{speed[k]:.1f} on {d} devices, {speed1[k]:.1f} on 1")  # fmt: skip
    print(json.dumps({"devices": d, "processes": jax.process_count(),
                      "max_abs_diff": diff, "images_per_second": speed}))  # fmt: skip


if __name__ == "__main__":
    main()
