"""What the trained decoders can represent, apart from the 3-step Meta-SGD fit (issue 13).

Fits the first N validation images with the decoders and the encoding settings that notebook
03 recorded in ``results/<profile>/03_meta_learning.json`` (3 inner steps on 1,024 stratified
pixels in the cpu profile), then keeps optimising the same latents with Adam on all pixels,
and prints the PSNR against the noise-free renders after 0 (the Meta-SGD latents), 30, 100
and 300 Adam steps. A decoder whose PSNR rises far above its 3-step value is limited by the
fit, not by what its latents can express.

    PYTHONPATH=lib .venv/bin/python bench/latent_capacity.py [--profile cpu] [--images 32]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from enflens import data
from enflens.data.renders import noise_free_images
from enflens.fields.adapters import load_trained
from enflens.grid import make_grid, psnr
from enflens.metalearn.encode import fit_path
from enflens.study.classifiers import read_meta_learning
from enflens.study.results import repo_path

CHECKPOINTS = (30, 100, 300)


def mean_psnr(rec: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(psnr(rec, ref)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    results03 = repo_path("results", args.profile, "03_meta_learning.json")
    outputs = read_meta_learning(results03)  # one named error if notebook 03 has not run
    recorded = json.loads(results03.read_text())
    fit = {k: recorded["fit_settings"][k] for k in ("steps", "pixels", "sampling")}
    dataset_file = repo_path("data", recorded["dataset"])
    n = args.images
    imgs = data.load(dataset_file, "val").images[:n].astype(np.float32)
    clean = noise_free_images(dataset_file, "val", np.arange(n)).astype(np.float32)
    h, w = imgs.shape[1:3]
    coords = jnp.broadcast_to(make_grid(h, w), (n, h * w, 2))
    target = jnp.asarray(imgs.reshape(n, h * w, 1))
    for kind in ("enf", "cnf"):
        ad, params, meta = load_trained(outputs.decoders[kind])
        lats, recs = fit_path(ad, params, imgs, **fit)
        z = jax.tree.map(lambda a: jnp.asarray(a[-1]), lats)
        opt = optax.adam(args.lr)

        def loss(z, ad=ad, params=params):
            return jnp.sum(jnp.mean((ad.decode(params, z, coords) - target) ** 2, axis=(1, 2)))

        @jax.jit
        def step(z, state, ad=ad, opt=opt, loss=loss):
            g = jax.grad(loss)(z)
            g = jax.tree.map(lambda gi, on: gi if on else jnp.zeros_like(gi), g, ad.adapt)
            upd, state = opt.update(g, state, z)
            return optax.apply_updates(z, upd), state

        row = {
            "kind": ad.kind,
            "hash": meta["hash"],
            "meta_sgd_3": mean_psnr(recs[-1][..., 0], clean),
        }
        state, t0 = opt.init(z), time.perf_counter()
        for i in range(1, CHECKPOINTS[-1] + 1):
            z, state = step(z, state)
            if i in CHECKPOINTS:
                rec = np.asarray(ad.decode(params, z, coords)).reshape(n, h, w)
                row[f"adam_{i}"] = mean_psnr(rec, clean)
        row["seconds"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
