"""Subprocess of tests/test_parallel.py: meta-training steps, an encoding and classifier steps
on the data mesh of all (simulated) devices against the mesh of the first device alone.

Prints one JSON line: per loop the largest absolute difference between the two runs, and that of
a negative control (the all-devices run on a deliberately different batch order).
"""

import json

import jax
import numpy as np

from enflens import parallel
from enflens.classify import registry, train
from enflens.fields import adapters
from enflens.fields.enf import ENFConfig
from enflens.metalearn import encode, outer
from enflens.testing import lens_like_images

ENF = ENFConfig(num_latents=8, latent_dim=8, hidden=16, num_rff=8, template="rings",
                ring_counts=(4, 4), ring_radii=(0.3, 0.6))  # fmt: skip
META = outer.MetaConfig(inner_steps=1, inner_pixels=64, outer_pixels=64, batch_size=8,
                        num_steps=3, warmup_steps=1, eval_every=0, checkpoint_every=0)  # fmt: skip
TRAIN = train.TrainConfig(steps=3, eval_every=3, batch_size=8, eval_batch_size=6, progress=False)


def max_diff(a, b) -> float:
    leaves = zip(jax.tree.leaves(parallel.to_host(a)), jax.tree.leaves(parallel.to_host(b)),
                 strict=True)  # fmt: skip
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - y))) for x, y in leaves)


def main() -> None:
    one, every = parallel.data_mesh(jax.devices()[:1]), parallel.data_mesh()
    adapter = adapters.enf_adapter(ENF, seed=0)
    images = lens_like_images(16, size=16)
    out = {"devices": parallel.num_devices(every), "diff": {}, "control": {}}

    def meta(mesh, imgs):
        return outer.meta_train(adapter, imgs, META, progress=False, mesh=mesh).state.params

    params = meta(one, images)
    out["diff"]["meta_train"] = max_diff(params, meta(every, images))
    out["control"]["meta_train"] = max_diff(params, meta(every, images[::-1]))

    def enc(mesh, imgs):
        lat, psnr = encode.encode(adapter, params, imgs, steps=1, pixels=64, batch_size=8,
                                  progress=False, mesh=mesh)  # fmt: skip
        return lat, psnr

    ref = enc(one, images[:12])  # 12 images: the last batch is padded
    out["diff"]["encode"] = max_diff(ref, enc(every, images[:12]))
    rev = enc(every, images[:12][::-1])  # other batches: other pixel subsets per image
    out["control"]["encode"] = max_diff(ref, jax.tree.map(lambda a: a[::-1], rev))

    x, y = ref[0], np.arange(12) % 3

    def clf(mesh, order):
        model = registry.build_model("enf_mlp", train.take(x, np.arange(1)), {"hidden": 16}, 0)
        hist = train.fit(model, (train.take(x, order), y[order]), (x, y), TRAIN, mesh=mesh)
        return (nnx_params(model), hist["val_loss"])

    out["diff"]["classifier"] = max_diff(clf(one, np.arange(12)), clf(every, np.arange(12)))
    out["control"]["classifier"] = max_diff(clf(one, np.arange(12)),
                                            clf(every, np.arange(12)[::-1]))  # fmt: skip
    print(json.dumps(out))


def nnx_params(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


if __name__ == "__main__":
    main()
